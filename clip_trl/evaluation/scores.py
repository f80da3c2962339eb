"""Metrics as pure functions of embeddings: recall@k, in-batch accuracy and zero-shot accuracy from tensors or an
[`EmbeddingSet`][clip_trl.evaluation.embeddings.EmbeddingSet], blocked so no full similarity matrix is held at once.

Tie convention (all metrics): *ties count against the query* (see [`clip_trl.evaluation`])."""

from __future__ import annotations

import math
from collections.abc import Iterable
from typing import Any

import torch
import torch.nn.functional as F

from clip_trl.evaluation.embeddings import (
    EmbeddingSet,
    check_batch_size,
)
from clip_trl.evaluation.faiss_ranking import use_faiss
from clip_trl.evaluation.positives import (
    as_positive_pairs,
    check_every_query_has_positive,
    pair_membership,
)
from clip_trl.evaluation.ranking import TILE_ELEMENTS, retrieval_ranks

DEFAULT_KS: tuple[int, ...] = (1, 5, 10)
RETRIEVAL_BACKENDS = ("auto", "torch", "faiss")


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


def retrieval_scores(
    image_embeds: torch.Tensor,
    text_embeds: torch.Tensor,
    positives: Any,
    ks: Iterable[int] = DEFAULT_KS,
    *,
    backend: str = "auto",
    tile_elements: int | None = None,
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
        positives:
            Which image-text pairs match: a `torch.BoolTensor` of shape `[N, M]`, or, for large sets, an index
            list — an integer `[P, 2]` tensor of (image, text) pairs, or one list of text indices per image (COCO
            style); see [`clip_trl.evaluation.positives.as_positive_pairs`]. Every image and every text needs at
            least one positive.
        ks (`Iterable[int]`, defaults to `(1, 5, 10)`):
            The cut-offs.
        backend (`str`, defaults to `"auto"`): `"torch"` (blocked top-k, [`clip_trl.evaluation.ranking`]: one
            pass over the similarity matrix in tiles, memory bounded by a tile), `"faiss"` (a FAISS flat
            inner-product index: the `faiss` extra), or `"auto"` (FAISS on CPU for pools of at least
            `FAISS_MIN_SCORES` scores when it is installed, else torch). Both are exact and follow the tie rule.
        tile_elements (`int`, *optional*): the torch backend's tile size in scores (default 2^24, 64 MiB).

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
    if n == 0 or m == 0:
        raise ValueError("Retrieval needs at least one image and one text.")
    pairs = as_positive_pairs(positives, n, m)
    _check_finite(image_embeds, "image_embeds")
    _check_finite(text_embeds, "text_embeds")
    device = image_embeds.device
    images = image_embeds.float()
    texts = text_embeds.to(device=device, dtype=torch.float32)
    pairs = pairs.to(device)
    check_every_query_has_positive(pairs, n, m)
    if backend not in RETRIEVAL_BACKENDS:
        raise ValueError(f"`backend` must be one of {RETRIEVAL_BACKENDS}, got {backend!r}.")
    if backend == "faiss" or (backend == "auto" and use_faiss(n, m, device)):
        from clip_trl.evaluation.faiss_ranking import faiss_retrieval_ranks

        image_ranks, text_ranks = faiss_retrieval_ranks(images, texts, pairs, max(ks))
    else:
        image_ranks, text_ranks = retrieval_ranks(
            images, texts, pairs, max(ks), tile_elements=tile_elements or TILE_ELEMENTS
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
    pairs, m = embeddings.positive_pairs.to(device), embeddings.num_texts
    first = embeddings.first_caption.to(device)
    # Each row's candidate text, gathered once: batches are then plain slices (per-batch fancy indexing
    # into the full text matrix costs more than the scoring itself on a CPU).
    candidate_texts = embeddings.text_embeds.to(device=device, dtype=torch.float32).index_select(0, first)
    hits = 0
    for start in range(0, n, batch_size):
        stop = min(start + batch_size, n)
        scores = embeddings.image_embeds[start:stop].float() @ candidate_texts[start:stop].T
        rows = torch.arange(start, stop, device=device)
        is_positive = pair_membership(pairs, m, rows[:, None], first[None, start:stop])
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
    results = retrieval_scores(embeddings.image_embeds, embeddings.text_embeds, embeddings.positive_pairs, ks)
    if in_batch_size is not None:
        results["in_batch_accuracy"] = in_batch_accuracy_from_embeddings(embeddings, in_batch_size)
    return results
