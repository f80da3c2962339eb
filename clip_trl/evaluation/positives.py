"""Image-caption positives as an index list: `[P, 2]` (image, text) pairs instead of a dense `[N, M]` mask.

A COCO-style eval set has about five captions per image, so the pairs take `5N` entries where the dense mask takes
`N x 5N` (10 GB of booleans for 100k captions). [`as_positive_pairs`] accepts either form (and per-image lists of
caption indices) and returns the sorted, de-duplicated pairs every metric uses; [`dense_positives`] builds the mask
back where code wants it ([`~clip_trl.evaluation.embeddings.EmbeddingSet.positives`] is built lazily this way).
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import torch


def as_positive_pairs(positives: Any, num_images: int, num_texts: int) -> torch.Tensor:
    """The positives as a sorted, unique `[P, 2]` LongTensor of (image, text) index pairs.

    Args:
        positives: a boolean `[num_images, num_texts]` mask (`positives[i, j]`: text `j` is one of image `i`'s
            captions), an integer `[P, 2]` tensor or array of (image, text) pairs, or one sequence of text indices
            per image (COCO style: `[[0, 1, 2, 3, 4], [5, 6, 7, 8, 9], ...]`).
        num_images, num_texts: `N` and `M`, to check shapes and index ranges.

    Example:

    ```python
    >>> import torch
    >>> from clip_trl.evaluation.positives import as_positive_pairs
    >>> as_positive_pairs([[1, 0], [2]], 2, 3).tolist()
    [[0, 0], [0, 1], [1, 2]]
    >>> as_positive_pairs(torch.eye(2, dtype=torch.bool), 2, 2).tolist()
    [[0, 0], [1, 1]]

    ```
    """
    if isinstance(positives, torch.Tensor) and positives.dtype == torch.bool:
        if tuple(positives.shape) != (num_images, num_texts):
            raise ValueError(
                f"`positives` has shape {tuple(positives.shape)}, expected ({num_images}, {num_texts})."
            )
        return positives.nonzero()  # row-major: already sorted and unique
    if isinstance(positives, torch.Tensor) or hasattr(positives, "__array__"):
        pairs = torch.as_tensor(positives)
        if pairs.dtype.is_floating_point or pairs.dim() != 2 or pairs.shape[1] != 2:
            raise ValueError(
                "`positives` must be a boolean [N, M] mask, an integer [P, 2] tensor of (image, text) pairs, or "
                f"one list of text indices per image; got a {pairs.dtype} tensor of shape {tuple(pairs.shape)}."
            )
        pairs = pairs.long()
    elif isinstance(positives, Sequence):
        if len(positives) != num_images:
            raise ValueError(
                f"`positives` has {len(positives)} lists of text indices for {num_images} images."
            )
        rows = [(i, int(j)) for i, texts in enumerate(positives) for j in texts]
        pairs = torch.tensor(rows, dtype=torch.long).reshape(-1, 2)
    else:
        raise TypeError(f"`positives` must be a tensor or a list of lists, got {type(positives).__name__}.")
    for column, (name, bound) in enumerate((("image", num_images), ("text", num_texts))):
        values = pairs[:, column]
        if len(values) and (int(values.min()) < 0 or int(values.max()) >= bound):
            bad = int(((values < 0) | (values >= bound)).nonzero()[0])
            raise ValueError(
                f"Positive pair {bad} has {name} index {int(values[bad])}, outside [0, {bound}) ({bound} {name}s)."
            )
    width = max(num_texts, 1)
    keys = torch.unique(pairs[:, 0] * width + pairs[:, 1])  # sorted: by image, then text
    return torch.stack([keys // width, keys % width], dim=1)


def dense_positives(pairs: torch.Tensor, num_images: int, num_texts: int) -> torch.Tensor:
    """The boolean `[num_images, num_texts]` mask of `pairs` (an `[N, M]` allocation: small sets only)."""
    mask = torch.zeros(num_images, num_texts, dtype=torch.bool, device=pairs.device)
    mask[pairs[:, 0], pairs[:, 1]] = True
    return mask


def check_every_query_has_positive(pairs: torch.Tensor, num_images: int, num_texts: int) -> None:
    """A `ValueError` naming the first image (then text) without a positive: recall is undefined for it."""
    for column, (query, candidate, count) in enumerate(
        (("image", "text", num_images), ("text", "image", num_texts))
    ):
        has = torch.zeros(count, dtype=torch.bool, device=pairs.device)
        has[pairs[:, column]] = True
        empty = (~has).nonzero().flatten()
        if len(empty):
            raise ValueError(
                f"{len(empty)} {query} quer{'y has' if len(empty) == 1 else 'ies have'} no positive {candidate} "
                f"(first: {query} {int(empty[0])}); recall is undefined for them. Every {query} needs at "
                "least one positive in `positives`."
            )


def pair_membership(
    pairs: torch.Tensor, num_texts: int, images: torch.Tensor, texts: torch.Tensor
) -> torch.Tensor:
    """Boolean tensor (the broadcast shape of `images` and `texts`): is each (image, text) a positive pair?"""
    keys = pairs[:, 0] * num_texts + pairs[:, 1]  # sorted (see `as_positive_pairs`)
    query = (images * num_texts + texts).to(keys.device)
    if len(keys) == 0:
        return torch.zeros(query.shape, dtype=torch.bool, device=keys.device)
    where = torch.searchsorted(keys, query).clamp_(max=len(keys) - 1)
    return keys[where] == query


def index_caption_pairs(
    row_captions: Sequence[str | Sequence[str]],
) -> tuple[list[str], torch.Tensor, torch.Tensor]:
    """[`~clip_trl.evaluation.embeddings.index_captions`] with the positives as `[P, 2]` (row, caption) pairs:
    the unique captions in order of first appearance, the pairs, and each row's first caption index.

    Example:

    ```python
    >>> from clip_trl.evaluation.positives import index_caption_pairs
    >>> captions, pairs, first = index_caption_pairs([["a cat", "a kitten"], "a dog", "a cat"])
    >>> pairs.tolist(), first.tolist()
    ([[0, 0], [0, 1], [1, 2], [2, 0]], [0, 2, 0])

    ```
    """
    ids: dict[str, int] = {}
    rows: list[tuple[int, int]] = []
    first: list[int] = []
    for i, value in enumerate(row_captions):
        captions = [value] if isinstance(value, str) else list(value)
        if not captions:
            raise ValueError(f"Row {i} has no caption.")
        for caption in captions:
            rows.append((i, ids.setdefault(caption, len(ids))))
        first.append(ids[captions[0]])
    pairs = as_positive_pairs(torch.tensor(rows, dtype=torch.long).reshape(-1, 2), len(first), len(ids))
    return list(ids), pairs, torch.tensor(first, dtype=torch.long)
