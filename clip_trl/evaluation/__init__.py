"""Retrieval, in-batch and zero-shot metrics for CLIP-style dual encoders, usable without a trainer.

The work splits in two layers:

1. [`compute_embeddings`] (in [`clip_trl.evaluation.embeddings`], re-exported here) runs the model once over a dataset and returns an [`EmbeddingSet`]: one
   L2-normalised embedding per image (dataset row), one per *unique* caption string, and the boolean
   image-caption positive matrix. Every metric below is a cheap function of that set, so a trainer
   encodes its eval set once and derives all metrics from it ([`evaluate_all`], [`scores_from_embeddings`]).
2. Pure functions on tensors ([`retrieval_scores`], [`in_batch_accuracy_from_embeddings`],
   [`zero_shot_scores`]) that tests and users can drive with hand-built embeddings.

Metric names are the library's public ones (see the Evaluation metrics docs page): `image_to_text_recall@{k}`, `text_to_image_recall@{k}`,
`in_batch_accuracy` and `zero_shot_accuracy`.

Tie convention (all metrics): *ties count against the query*. A query is a hit at `k` only when fewer than
`k` negative candidates score **at least as high** as its best-scoring positive. A positive that ties with a
negative is therefore ranked behind it, so a degenerate model (e.g. one that maps everything to the same
vector) scores 0 instead of being rewarded by a lucky index order. Ties *between positives* never hurt: any
positive in the top `k` is a hit. The same rule makes top-1 metrics (in-batch and zero-shot accuracy) a hit
only when a positive strictly beats every negative; with real-valued scores this differs from a plain
`argmax` only on exact ties.
"""

from __future__ import annotations

import logging
import math
import os
from collections.abc import Iterable, Sequence
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn

from clip_trl.data.collator import check_columns
from clip_trl.data.rows import split_processor

# The one pass over a dataset; `EmbeddingSet`, `compute_embeddings` and `index_captions` have always been importable
# from here and stay so.
from clip_trl.evaluation.embeddings import (
    EmbeddingSet,
    ImageTransform,
    check_batch_size,
    compute_embeddings,
    embedding_set,
    encode_rows,
    index_captions,
    iter_rows,
    row_cell,
)
from clip_trl.models import encoding

logger = logging.getLogger(__name__)

__all__ = [
    "CLIP_RETRIEVAL_METRIC_PATH",
    "EmbeddingSet",
    "compute_embeddings",
    "evaluate_all",
    "in_batch_accuracy",
    "in_batch_accuracy_from_embeddings",
    "index_captions",
    "retrieval_metrics",
    "retrieval_scores",
    "scores_from_embeddings",
    "zero_shot_accuracy",
    "zero_shot_scores",
]

# The same metrics as an `evaluate` module: `evaluate.load` takes a folder holding `<folder name>.py`; loading it
# by path needs no Hub access.
CLIP_RETRIEVAL_METRIC_PATH: str = os.path.join(os.path.dirname(os.path.abspath(__file__)), "clip_retrieval")

DEFAULT_KS: tuple[int, ...] = (1, 5, 10)
# Similarity blocks are computed this many scores at a time (64 MiB of float32), so that a large eval set
# (e.g. 5k images x 25k COCO captions) never materialises its full similarity matrix at once.
_SCORE_BLOCK_ELEMENTS = 1 << 24

# ------------------------------------------------------------------------------------ metrics on tensors


def _check_ks(ks: Iterable[int]) -> list[int]:
    checked: list[int] = []
    for k in ks:
        if isinstance(k, bool) or not isinstance(k, int) or k < 1:
            raise ValueError(f"Every k of recall@k must be a positive integer, got {k!r} in {ks!r}.")
        if k not in checked:
            checked.append(k)
    return checked


def _check_finite(tensor: torch.Tensor, name: str) -> None:
    # A NaN score compares false against everything and would silently count as a hit.
    if not torch.isfinite(tensor).all():
        raise ValueError(f"`{name}` contains NaN or infinite values.")


def _check_has_positive(positives: torch.Tensor, query: str, candidate: str) -> None:
    empty = (~positives.any(dim=1)).nonzero().flatten()
    if len(empty):
        raise ValueError(
            f"{len(empty)} {query} quer{'y has' if len(empty) == 1 else 'ies have'} no positive {candidate} "
            f"(first: {query} {int(empty[0])}); recall is undefined for them. Every {query} needs at "
            "least one positive in `positives`."
        )


def retrieval_scores(
    image_embeds: torch.Tensor,
    text_embeds: torch.Tensor,
    positives: torch.Tensor,
    ks: Iterable[int] = DEFAULT_KS,
) -> dict[str, float]:
    """Recall@k in both directions over a whole evaluation set (the CLIP paper's convention).

    A query is a hit at `k` when any of its positives is among its top-`k` candidates: every image queries the
    `M` texts, and every text queries the `N` images. A `k` at least as large as the candidate count is
    clamped, so its recall is 1.0. Ties count against the query (see the module docstring): a query is a hit
    only when fewer than `k` *negatives* score at least as high as its best positive.

    Args:
        image_embeds (`torch.Tensor` of shape `[N, d]`):
            Image embeddings, L2-normalised (scores are plain dot products).
        text_embeds (`torch.Tensor` of shape `[M, d]`):
            Text embeddings, L2-normalised.
        positives (`torch.BoolTensor` of shape `[N, M]`):
            Which image-text pairs match. Every image and every text needs at least one positive.
        ks (`Iterable[int]`, defaults to `(1, 5, 10)`):
            The cut-offs.

    Returns:
        `dict[str, float]`: `image_to_text_recall@{k}` and `text_to_image_recall@{k}` for each `k`.

    Example:

    ```python
    >>> import torch
    >>> from clip_trl.evaluation import retrieval_scores
    >>> images = torch.eye(3)
    >>> # image 0 prefers text 1 and image 1 prefers text 0; each one's own text comes second
    >>> texts = torch.tensor([[0.6, 0.8, 0.0], [0.8, 0.6, 0.0], [0.0, 0.0, 1.0]])
    >>> scores = retrieval_scores(images, texts, torch.eye(3, dtype=torch.bool), ks=(1, 2))
    >>> scores["image_to_text_recall@1"], scores["image_to_text_recall@2"]
    (0.3333333333333333, 1.0)

    ```
    """
    ks = _check_ks(ks)
    n, m = image_embeds.shape[0], text_embeds.shape[0]
    if tuple(positives.shape) != (n, m):
        raise ValueError(f"`positives` has shape {tuple(positives.shape)}, expected ({n}, {m}).")
    if n == 0 or m == 0:
        raise ValueError("Retrieval needs at least one image and one text.")
    _check_finite(image_embeds, "image_embeds")
    _check_finite(text_embeds, "text_embeds")
    device = image_embeds.device
    images = image_embeds.float()
    texts = text_embeds.to(device=device, dtype=torch.float32)
    positives = positives.to(device=device, dtype=torch.bool)
    _check_has_positive(positives, "image", "text")
    _check_has_positive(positives.T, "text", "image")

    # Both directions read the same image-major similarity blocks, so image->text and text->image see
    # bit-identical scores (a separately computed texts @ images.T could differ in the last bit and break
    # ties differently). Positives are few (a handful per image), so they are handled as an index list:
    # their scores are gathered from the blocks, and each query's rank is
    #   (candidates scoring >= its best positive) - (positives scoring >= it),
    # which needs one compare-and-count per dense block instead of several masked copies of it.
    pairs = positives.nonzero()  # row-major, so each block's pairs are one contiguous slice
    pair_images, pair_texts = pairs[:, 0], pairs[:, 1]
    pair_scores = torch.empty(len(pairs), device=device)
    best_for_image = torch.full((n,), -math.inf, device=device)
    best_for_text = torch.full((m,), -math.inf, device=device)
    image_at_least = torch.empty(n, dtype=torch.long, device=device)
    block = max(1, _SCORE_BLOCK_ELEMENTS // m)
    starts = list(range(0, n, block))
    bounds = torch.searchsorted(pair_images, torch.tensor([*starts, n], device=device)).tolist()
    # Pass 1: every image's best positive is complete within its block; texts accumulate across blocks.
    for b, start in enumerate(starts):
        scores = images[start : start + block] @ texts.T
        lo, hi = bounds[b], bounds[b + 1]
        gathered = scores[pair_images[lo:hi] - start, pair_texts[lo:hi]]
        pair_scores[lo:hi] = gathered
        best_for_image.scatter_reduce_(0, pair_images[lo:hi], gathered, "amax")
        best_for_text.scatter_reduce_(0, pair_texts[lo:hi], gathered, "amax")
        best = best_for_image[start : start + block, None]
        image_at_least[start : start + block] = (scores >= best).sum(dim=1, dtype=torch.int32)
    # Pass 2: with every text's best positive known, count the images scoring at least as much.
    text_at_least = torch.zeros(m, dtype=torch.long, device=device)
    for start in starts:
        scores = images[start : start + block] @ texts.T
        text_at_least += (scores >= best_for_text).sum(dim=0, dtype=torch.int32)
    image_ranks = image_at_least - torch.zeros_like(image_at_least).scatter_add_(
        0, pair_images, (pair_scores >= best_for_image[pair_images]).long()
    )
    text_ranks = text_at_least - torch.zeros_like(text_at_least).scatter_add_(
        0, pair_texts, (pair_scores >= best_for_text[pair_texts]).long()
    )

    results: dict[str, float] = {}
    for k in ks:
        # Integer counts over a Python division, so 1 of 3 prints as 0.333... rather than a float32 round-off.
        results[f"image_to_text_recall@{k}"] = int((image_ranks < k).sum()) / n
    for k in ks:
        results[f"text_to_image_recall@{k}"] = int((text_ranks < k).sum()) / m
    return results


def in_batch_accuracy_from_embeddings(embeddings: EmbeddingSet, batch_size: int = 32) -> float:
    """In-batch accuracy: pick the right caption among the batch's captions.

    Rows are split, in dataset order, into consecutive batches of `batch_size` (the last may be smaller).
    Each image scores the first captions of its batch's rows and is correct when the best-scoring one is one
    of its own captions; a row whose first caption duplicates another row's caption is therefore not
    penalised. Ties count against the image: a hit needs a positive to beat every negative strictly.

    Args:
        embeddings ([`EmbeddingSet`]): from [`compute_embeddings`] or built by hand.
        batch_size (`int`, defaults to 32): rows per batch.

    Returns:
        `float`: the fraction of images that picked a positive caption.

    Example:

    ```python
    >>> import torch
    >>> from clip_trl.evaluation import EmbeddingSet, in_batch_accuracy_from_embeddings, index_captions
    >>> captions, positives, first = index_captions(["a", "b", "c"])
    >>> images = torch.eye(3)[[0, 0, 2]]  # image 1 looks like caption "a"
    >>> es = EmbeddingSet(images, torch.eye(3), captions, positives, first)
    >>> in_batch_accuracy_from_embeddings(es, batch_size=2)  # batches {0, 1} and {2}: image 1 misses
    0.6666666666666666

    ```
    """
    check_batch_size(batch_size, "batch_size")
    _check_finite(embeddings.image_embeds, "image_embeds")
    _check_finite(embeddings.text_embeds, "text_embeds")
    n = embeddings.num_images
    if n == 0:
        raise ValueError("In-batch accuracy needs at least one image.")
    device = embeddings.image_embeds.device
    positives = embeddings.positives.to(device)
    first = embeddings.first_caption.to(device)
    # Each row's candidate text, gathered once: batches are then plain slices (per-batch fancy indexing
    # into the full text matrix costs more than the scoring itself on a CPU).
    candidate_texts = embeddings.text_embeds.to(device=device, dtype=torch.float32).index_select(0, first)
    hits = 0
    for start in range(0, n, batch_size):
        stop = min(start + batch_size, n)
        scores = embeddings.image_embeds[start:stop].float() @ candidate_texts[start:stop].T
        is_positive = positives[start:stop].index_select(1, first[start:stop])
        hits += int(_strict_top1(scores, is_positive).sum())
    return hits / n


def _strict_top1(scores: torch.Tensor, is_positive: torch.Tensor) -> torch.Tensor:
    """Per row: does the best positive strictly beat every negative? (A row without negatives is a hit.)"""
    best_positive = scores.masked_fill(~is_positive, -math.inf).amax(dim=1)
    best_negative = scores.masked_fill(is_positive, -math.inf).amax(dim=1)
    return best_positive > best_negative


def zero_shot_scores(
    image_embeds: torch.Tensor, label_text_embeds: torch.Tensor, labels_idx: torch.Tensor
) -> float:
    """Zero-shot classification accuracy from embeddings.

    Each image is assigned the label whose (templated) text embedding scores highest; it is correct when that
    is its true label `labels_idx[i]`. Ties count against the image: the true label must strictly beat every
    other label.

    Args:
        image_embeds (`torch.Tensor` of shape `[N, d]`): L2-normalised image embeddings.
        label_text_embeds (`torch.Tensor` of shape `[L, d]`): L2-normalised embeddings of the label prompts.
        labels_idx (`torch.LongTensor` of shape `[N]`): each image's true label index in `[0, L)`.

    Returns:
        `float`: the accuracy.

    Example:

    ```python
    >>> import torch
    >>> from clip_trl.evaluation import zero_shot_scores
    >>> zero_shot_scores(torch.eye(2), torch.eye(2), torch.tensor([0, 0]))
    0.5

    ```
    """
    n, num_labels = image_embeds.shape[0], label_text_embeds.shape[0]
    labels_idx = torch.as_tensor(labels_idx, dtype=torch.long, device=image_embeds.device).flatten()
    if n == 0:
        raise ValueError("Zero-shot accuracy needs at least one image.")
    if labels_idx.shape[0] != n:
        raise ValueError(f"{labels_idx.shape[0]} labels for {n} images.")
    if num_labels == 0:
        raise ValueError("Zero-shot accuracy needs at least one label.")
    if labels_idx.min() < 0 or labels_idx.max() >= num_labels:
        raise ValueError(
            f"Label indices must lie in [0, {num_labels}), got {labels_idx.min()}..{labels_idx.max()}."
        )
    _check_finite(image_embeds, "image_embeds")
    _check_finite(label_text_embeds, "label_text_embeds")
    labels = label_text_embeds.to(device=image_embeds.device, dtype=torch.float32)
    hits = 0
    block = max(1, _SCORE_BLOCK_ELEMENTS // num_labels)
    for start in range(0, n, block):
        scores = image_embeds[start : start + block].float() @ labels.T
        is_true = F.one_hot(labels_idx[start : start + block], num_labels).bool()
        hits += int(_strict_top1(scores, is_true).sum())
    return hits / n


def scores_from_embeddings(
    embeddings: EmbeddingSet, ks: Iterable[int] = DEFAULT_KS, in_batch_size: int | None = 32
) -> dict[str, float]:
    """Recall@k both ways and in-batch accuracy from one [`EmbeddingSet`] (what a trainer's `evaluate` logs).

    Args:
        embeddings ([`EmbeddingSet`]): from [`compute_embeddings`].
        ks (`Iterable[int]`, defaults to `(1, 5, 10)`): recall cut-offs.
        in_batch_size (`int`, *optional*, defaults to 32): batch size of `in_batch_accuracy`; `None` skips it.

    Example:

    ```python
    >>> import torch
    >>> from clip_trl.evaluation import EmbeddingSet, index_captions, scores_from_embeddings
    >>> captions, positives, first = index_captions(["a", "b"])
    >>> scores_from_embeddings(EmbeddingSet(torch.eye(2), torch.eye(2), captions, positives, first), ks=(1,))
    {'image_to_text_recall@1': 1.0, 'text_to_image_recall@1': 1.0, 'in_batch_accuracy': 1.0}

    ```
    """
    results = retrieval_scores(embeddings.image_embeds, embeddings.text_embeds, embeddings.positives, ks)
    if in_batch_size is not None:
        results["in_batch_accuracy"] = in_batch_accuracy_from_embeddings(embeddings, in_batch_size)
    return results


# ------------------------------------------------------------------------------------- labels (zero-shot)


def _label_prompts(labels: Sequence[str], template: str) -> list[str]:
    if isinstance(labels, str) or not labels:
        raise ValueError(f"`labels` must be a non-empty list of class names, got {labels!r}.")
    if len(set(labels)) != len(labels):
        duplicates = sorted({label for label in labels if labels.count(label) > 1})
        raise ValueError(f"`labels` has duplicates {duplicates}; each class must appear once.")
    prompts = [template.format(label) for label in labels]
    if len(set(prompts)) != len(prompts):
        raise ValueError(
            f"The template {template!r} gives the same prompt for different labels; it needs a '{{}}' "
            "placeholder for the label name."
        )
    return prompts


def _label_feature_names(dataset: Any, label_column: str) -> list[str] | None:
    features = getattr(dataset, "features", None)
    feature = features.get(label_column) if features else None
    return list(feature.names) if hasattr(feature, "names") and hasattr(feature, "int2str") else None


def _label_indices(
    cells: Sequence[Any], labels: Sequence[str], label_column: str, class_names: list[str] | None
) -> torch.Tensor:
    """Map label cells (an index into `labels`, or a label name) to indices into `labels`.

    When the column is a `datasets.ClassLabel` whose names are all in `labels` but in another order, integer
    cells are read through the ClassLabel's names: the integer indexes the *dataset's* class list, and going
    by name avoids silently scoring against the wrong class.
    """
    position = {label: i for i, label in enumerate(labels)}
    by_name = class_names is not None and class_names != list(labels) and set(class_names) <= set(position)
    indices: list[int] = []
    for row, cell in enumerate(cells):
        if hasattr(cell, "item") and not isinstance(cell, str):  # numpy / torch scalars
            cell = cell.item()
        if isinstance(cell, bool):
            raise ValueError(f"Row {row}, column '{label_column}': a boolean {cell!r} is not a label.")
        if isinstance(cell, int):
            names = class_names if by_name and class_names is not None else labels
            if not 0 <= cell < len(names):
                raise ValueError(
                    f"Row {row}, column '{label_column}': label index {cell} is outside the {len(names)} "
                    f"{'classes of the ClassLabel column' if names is class_names else 'candidate labels'}."
                )
            cell = names[cell]
        if isinstance(cell, str) and cell in position:
            indices.append(position[cell])
            continue
        raise ValueError(
            f"Row {row}, column '{label_column}': unknown label {cell!r}; it must be an index into `labels` "
            f"or one of {list(labels)[:20]}{' ...' if len(labels) > 20 else ''}."
        )
    return torch.tensor(indices, dtype=torch.long)


# ---------------------------------------------------------------------------------------- public metrics


def retrieval_metrics(
    model: nn.Module,
    processor: Any,
    dataset: Any,
    image_column: str = "image",
    caption_column: str = "caption",
    ks: Iterable[int] = DEFAULT_KS,
    batch_size: int = 64,
    image_transform: ImageTransform | None = None,
) -> dict[str, float]:
    """Image-to-text and text-to-image recall@k of a model over a whole dataset.

    Texts are the dataset's unique captions; a list-valued caption cell gives the row several positives, and a
    caption string shared by several rows is one text with all those images as positives. See
    [`retrieval_scores`] for the definition and the tie convention.

    Returns:
        `dict[str, float]`: `image_to_text_recall@{k}` and `text_to_image_recall@{k}` for each `k`.

    Example:

    ```python
    >>> from clip_trl import evaluation  # doctest: +SKIP
    >>> evaluation.retrieval_metrics(model, processor, dataset, caption_column="caption")  # doctest: +SKIP
    {'image_to_text_recall@1': 0.41, ..., 'text_to_image_recall@10': 0.93}

    ```
    """
    ks = _check_ks(ks)
    embeddings = compute_embeddings(
        model,
        processor,
        dataset,
        image_column=image_column,
        caption_column=caption_column,
        batch_size=batch_size,
        image_transform=image_transform,
    )
    return retrieval_scores(embeddings.image_embeds, embeddings.text_embeds, embeddings.positives, ks)


def in_batch_accuracy(
    model: nn.Module,
    processor: Any,
    dataset: Any,
    batch_size: int = 32,
    image_column: str = "image",
    caption_column: str = "caption",
    image_transform: ImageTransform | None = None,
) -> dict[str, float]:
    """In-batch accuracy over a dataset: see [`in_batch_accuracy_from_embeddings`].

    `batch_size` is the metric's batch (the candidate set), not a throughput knob: results change with it.

    Returns:
        `dict[str, float]`: `{"in_batch_accuracy": ...}`.

    Example:

    ```python
    >>> evaluation.in_batch_accuracy(model, processor, dataset, batch_size=32)  # doctest: +SKIP
    {'in_batch_accuracy': 0.87}

    ```
    """
    check_batch_size(batch_size, "batch_size")
    embeddings = compute_embeddings(
        model,
        processor,
        dataset,
        image_column=image_column,
        caption_column=caption_column,
        batch_size=max(batch_size, 64),
        image_transform=image_transform,
    )
    return {"in_batch_accuracy": in_batch_accuracy_from_embeddings(embeddings, batch_size)}


def zero_shot_accuracy(
    model: nn.Module,
    processor: Any,
    dataset: Any,
    labels: Sequence[str],
    template: str = "a photo of a {}.",
    label_column: str = "label",
    image_column: str = "image",
    batch_size: int = 64,
    image_transform: ImageTransform | None = None,
    image_embeds: torch.Tensor | None = None,
) -> dict[str, float]:
    """Zero-shot classification accuracy: each image against `template.format(label)` for every label.

    A label cell may be an integer index into `labels` (e.g. a `datasets.ClassLabel` column) or a label name;
    anything else is a `ValueError` naming the row. Ties count against the image (see [`zero_shot_scores`]).

    Args:
        labels (`Sequence[str]`): the class names, each once.
        template (`str`, defaults to `"a photo of a {}."`): the prompt, `{}` standing for the class name.
        label_column (`str`, defaults to `"label"`): the column with each row's true label.
        image_embeds (`torch.Tensor`, *optional*): the dataset's image embeddings if already computed (e.g.
            `compute_embeddings(...).image_embeds`); then images are not re-encoded, only labels are read.

    Returns:
        `dict[str, float]`: `{"zero_shot_accuracy": ...}`.

    Example:

    ```python
    >>> evaluation.zero_shot_accuracy(model, processor, dataset, labels=["cat", "dog"])  # doctest: +SKIP
    {'zero_shot_accuracy': 0.95}

    ```
    """
    prompts = _label_prompts(labels, template)
    if image_embeds is None:
        encoded = encode_rows(
            model,
            processor,
            dataset,
            image_column=image_column,
            caption_column=None,
            label_column=label_column,
            batch_size=batch_size,
            image_transform=image_transform,
        )
        image_embeds, cells = encoded.image_embeds, encoded.row_labels or []
    else:
        check_columns(dataset, {"label_column": label_column}, "dataset")
        # Read only the label column: decoding every image again just to reach the labels would be wasted.
        labels_only = (
            dataset.select_columns([label_column]) if hasattr(dataset, "select_columns") else dataset
        )
        cells = [row_cell(row, index, label_column) for index, row in iter_rows(labels_only, None)]
        if len(cells) != image_embeds.shape[0]:
            raise ValueError(
                f"`image_embeds` has {image_embeds.shape[0]} rows but the dataset has {len(cells)}."
            )
    targets = _label_indices(cells, labels, label_column, _label_feature_names(dataset, label_column))
    _, tokenizer = split_processor(processor)
    label_embeds = encoding.embed_texts(model, tokenizer, prompts, batch_size)
    return {"zero_shot_accuracy": zero_shot_scores(image_embeds, label_embeds, targets)}


def evaluate_all(
    model: nn.Module,
    processor: Any,
    dataset: Any,
    *,
    image_column: str = "image",
    caption_column: str | None = "caption",
    ks: Iterable[int] = DEFAULT_KS,
    batch_size: int = 64,
    in_batch_size: int | None = 32,
    candidate_labels: Sequence[str] | None = None,
    label_template: str = "a photo of a {}.",
    label_column: str = "label",
    image_transform: ImageTransform | None = None,
) -> dict[str, float]:
    """Every metric of this module from a single pass over the dataset.

    Images are embedded once and shared by retrieval, in-batch and zero-shot scoring, which is why a trainer's
    `evaluate()` calls this (or [`compute_embeddings`] + [`scores_from_embeddings`]) rather than the
    individual metric functions.

    Args:
        caption_column (`str`, *optional*, defaults to `"caption"`):
            `None` for a classification-only dataset: then only `zero_shot_accuracy` is computed.
        ks (`Iterable[int]`, defaults to `(1, 5, 10)`): recall cut-offs.
        batch_size (`int`, defaults to 64): images / texts per forward pass.
        in_batch_size (`int`, *optional*, defaults to 32): batch of `in_batch_accuracy`; `None` skips it.
        candidate_labels (`Sequence[str]`, *optional*): class names; when given, `zero_shot_accuracy` is
            added.
        label_template (`str`), label_column (`str`): as in [`zero_shot_accuracy`].

    Returns:
        `dict[str, float]`: `image_to_text_recall@{k}`, `text_to_image_recall@{k}`, `in_batch_accuracy` and,
        with `candidate_labels`, `zero_shot_accuracy`.

    Example:

    ```python
    >>> evaluation.evaluate_all(model, processor, dataset, candidate_labels=["cat", "dog"])  # doctest: +SKIP
    {'image_to_text_recall@1': ..., 'in_batch_accuracy': ..., 'zero_shot_accuracy': ...}

    ```
    """
    if caption_column is None and candidate_labels is None:
        raise ValueError("Nothing to evaluate: set `caption_column` and/or `candidate_labels`.")
    ks = _check_ks(ks)
    if in_batch_size is not None:
        check_batch_size(in_batch_size, "in_batch_size")
    # Validate labels before the (slow) encoding pass so a typo fails immediately.
    prompts = _label_prompts(candidate_labels, label_template) if candidate_labels is not None else None
    encoded = encode_rows(
        model,
        processor,
        dataset,
        image_column=image_column,
        caption_column=caption_column,
        label_column=label_column if candidate_labels is not None else None,
        batch_size=batch_size,
        image_transform=image_transform,
    )
    results: dict[str, float] = {}
    if caption_column is not None:
        embeddings = embedding_set(model, processor, encoded, batch_size)
        results.update(scores_from_embeddings(embeddings, ks, in_batch_size))
    if candidate_labels is not None and prompts is not None:
        targets = _label_indices(
            encoded.row_labels or [],
            candidate_labels,
            label_column,
            _label_feature_names(dataset, label_column),
        )
        _, tokenizer = split_processor(processor)
        label_embeds = encoding.embed_texts(model, tokenizer, prompts, batch_size)
        results["zero_shot_accuracy"] = zero_shot_scores(encoded.image_embeds, label_embeds, targets)
    return results
