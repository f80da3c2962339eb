"""A picture of retrieval results: test images next to each model's top-k captions, the right ones marked.

Used by the pipeline (`clip-trl pipeline`) to show what the numbers of its results table mean. It draws on
matplotlib's object-oriented API with the Agg canvas: no pyplot state and no GUI backend, so it is safe in a
training process and on headless machines.
"""

from __future__ import annotations

import os
import textwrap
from collections.abc import Mapping, Sequence
from typing import TYPE_CHECKING

import numpy as np
import torch

from clip_trl.data.rows import load_image

if TYPE_CHECKING:
    from PIL import Image

    from clip_trl.evaluation.embeddings import EmbeddingSet

__all__ = ["RETRIEVAL_EXAMPLES_FILENAME", "plot_retrieval_examples", "top_captions"]

#: File name of the picture in the pipeline's output folder; results.md links to it by this name.
RETRIEVAL_EXAMPLES_FILENAME = "retrieval_examples.png"

_FONT_SIZE = 10  # points: every caption is drawn at this size, titles one point larger
_CORRECT = "#1a7f37"  # green, readable on white
_WRONG = "#24292f"
_CAPTION_WIDTH = 34  # characters per line before a caption wraps (two lines at most)


def top_captions(embeddings: EmbeddingSet, row: int, k: int = 3) -> list[tuple[str, bool]]:
    """The `k` best-scoring captions of the whole caption set for image `row`, and whether each is a positive.

    Example:

    ```python
    >>> import torch
    >>> from clip_trl.evaluation.embeddings import EmbeddingSet, index_captions
    >>> from clip_trl.reporting.retrieval_grid import top_captions
    >>> captions, positives, first = index_captions(["a cat", "a dog"])
    >>> top_captions(EmbeddingSet(torch.eye(2), torch.eye(2), captions, positives, first), row=1, k=2)
    [('a dog', True), ('a cat', False)]

    ```
    """
    scores = embeddings.image_embeds[row].float() @ embeddings.text_embeds.float().T
    order = torch.argsort(scores, descending=True, stable=True)[:k].tolist()
    return [(embeddings.captions[j], bool(embeddings.positives[row, j])) for j in order]


def _short(caption: str) -> str:
    lines = textwrap.wrap(caption, _CAPTION_WIDTH, max_lines=2, placeholder=" …")
    return "\n    ".join(lines) if lines else caption


def plot_retrieval_examples(
    images: Sequence[Image.Image | object],
    rows: Sequence[int],
    embeddings: Mapping[str, EmbeddingSet],
    path: str | os.PathLike[str],
    k: int = 3,
) -> str:
    """Draw `len(rows)` test images, each with every model's top-`k` retrieved captions, and save a PNG.

    One figure row per image: the image (upscaled with nearest-neighbour sampling, so small images stay crisp),
    then one column per model in the order of `embeddings`, listing its top-`k` captions among all captions of
    the evaluation set. A caption that belongs to the image is drawn bold and green with a ✓, the others plain
    with a ✗; the image's true caption is printed under it.

    Args:
        images (`Sequence`): the image cell of each row in `rows` (PIL images, bytes, paths, `datasets.Image`
            dicts: anything [`~clip_trl.data.rows.load_image`] reads), aligned with `rows`.
        rows (`Sequence[int]`): the rows' indices in the evaluation set the embeddings were computed on.
        embeddings (`Mapping[str, EmbeddingSet]`): model name (column title) -> its [`EmbeddingSet`] of that set.
        path (`str` or `os.PathLike`): where to write the PNG.
        k (`int`, defaults to 3): captions shown per model.

    Returns:
        `str`: the path written.

    Example:

    ```python
    >>> from clip_trl.evaluation.embeddings import compute_embeddings
    >>> from clip_trl.reporting.retrieval_grid import plot_retrieval_examples
    >>> sets = {"base": compute_embeddings(base, processor, test),  # doctest: +SKIP
    ...         "tuned": compute_embeddings(tuned, processor, test)}
    >>> plot_retrieval_examples(test.select(range(6))["image"], range(6), sets, "examples.png")  # doctest: +SKIP
    'examples.png'

    ```
    """
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    rows = list(rows)
    if len(images) != len(rows):
        raise ValueError(f"{len(images)} images for {len(rows)} rows; pass one image per row.")
    if not rows or not embeddings:
        raise ValueError("Nothing to draw: pass at least one row and one model.")
    names = list(embeddings)
    first = next(iter(embeddings.values()))
    text_width = 3.1  # inches per model column: room for _CAPTION_WIDTH characters at _FONT_SIZE
    row_height = 0.42 * k + 0.75
    figure = Figure(figsize=(1.7 + text_width * len(names), 0.9 + row_height * len(rows)), dpi=110)
    FigureCanvasAgg(figure)
    grid = figure.add_gridspec(
        len(rows),
        1 + len(names),
        width_ratios=[1.7] + [text_width] * len(names),
        left=0.01,
        right=0.99,
        top=1 - 0.4 / figure.get_figheight(),
        bottom=0.45 / figure.get_figheight(),
        wspace=0.04,
        hspace=0.25,
    )
    for i, (row, cell) in enumerate(zip(rows, images)):
        image_axes = figure.add_subplot(grid[i, 0])
        image_axes.imshow(np.asarray(load_image(cell)), interpolation="nearest")
        image_axes.set_xticks([])
        image_axes.set_yticks([])
        truth = [first.captions[j] for j in first.positives[row].nonzero().flatten().tolist()]
        image_axes.set_xlabel(_short(truth[0] if truth else "?"), fontsize=_FONT_SIZE - 1, style="italic")
        for c, name in enumerate(names):
            axes = figure.add_subplot(grid[i, 1 + c])
            axes.set_axis_off()
            if i == 0:
                axes.set_title(name, fontsize=_FONT_SIZE + 1, fontweight="bold", loc="left")
            y = 0.95
            for rank, (caption, correct) in enumerate(top_captions(embeddings[name], row, k), start=1):
                mark = "✓" if correct else "✗"
                text = f"{rank}. {mark} {_short(caption)}"
                axes.text(
                    0.02,
                    y,
                    text,
                    transform=axes.transAxes,
                    va="top",
                    ha="left",
                    fontsize=_FONT_SIZE,
                    color=_CORRECT if correct else _WRONG,
                    fontweight="bold" if correct else "normal",
                )
                y -= (0.9 / k) * (1 + text.count("\n") * 0.55)
    os.makedirs(os.path.dirname(os.path.abspath(path)), exist_ok=True)
    figure.savefig(path)
    return os.fspath(path)
