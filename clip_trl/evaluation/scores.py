"""Metrics as pure functions of embeddings: recall@k, in-batch accuracy and zero-shot accuracy from tensors or an
[`EmbeddingSet`][clip_trl.evaluation.embeddings.EmbeddingSet], blocked so no full similarity matrix is held at once.

Tie convention (all metrics): *ties count against the query* (see [`clip_trl.evaluation`])."""

from __future__ import annotations

import math
from collections.abc import Iterable

import torch
import torch.nn.functional as F

from clip_trl.evaluation.embeddings import (
    EmbeddingSet,
    check_batch_size,
)

DEFAULT_KS: tuple[int, ...] = (1, 5, 10)


# Similarity blocks are computed this many scores at a time (64 MiB of float32), so that a large eval set
# (e.g. 5k images x 25k COCO captions) never materialises its full similarity matrix at once.
_SCORE_BLOCK_ELEMENTS = 1 << 24


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
    >>> from clip_trl.evaluation.scores import retrieval_scores
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
    >>> from clip_trl.evaluation.embeddings import EmbeddingSet, index_captions
    >>> from clip_trl.evaluation.scores import in_batch_accuracy_from_embeddings
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
    >>> from clip_trl.evaluation.scores import zero_shot_scores
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
    >>> from clip_trl.evaluation.embeddings import EmbeddingSet, index_captions
    >>> from clip_trl.evaluation.scores import scores_from_embeddings
    >>> captions, positives, first = index_captions(["a", "b"])
    >>> scores_from_embeddings(EmbeddingSet(torch.eye(2), torch.eye(2), captions, positives, first), ks=(1,))
    {'image_to_text_recall@1': 1.0, 'text_to_image_recall@1': 1.0, 'in_batch_accuracy': 1.0}

    ```
    """
    results = retrieval_scores(embeddings.image_embeds, embeddings.text_embeds, embeddings.positives, ks)
    if in_batch_size is not None:
        results["in_batch_accuracy"] = in_batch_accuracy_from_embeddings(embeddings, in_batch_size)
    return results
