"""Retrieval ranks through FAISS (optional: the `faiss` extra, `pip install "clip_trl[faiss]"`).

An exact flat inner-product index (`faiss.IndexFlatIP`) returns each query's `max_k + (its most positives)` best
candidates; a query's rank is the number of negatives among them scoring at least as high as its best positive
there, and a miss (`max_k`) when no positive is among them — then at least `max_k` negatives score at least as high.
The scores are FAISS's own (all of one query's list from the same search), so ties count against the query as in
[`clip_trl.evaluation.ranking`]; the two backends can differ only where two scores differ in the last bit.
`retrieval_scores(backend="auto")` uses FAISS on CPU for pools of at least `FAISS_MIN_SCORES` image-text scores:
`benchmarks/retrieval_scale.py` measured it slower than the torch backend below 5e8 scores and at parity (within
5%, one thread) from there to 2e9 (docs/benchmarks/retrieval.md).
"""

from __future__ import annotations

import functools
from typing import Any

import torch

from clip_trl.evaluation.positives import pair_membership

# N x M scores from which `backend="auto"` prefers FAISS (see docs/benchmarks/retrieval.md).
FAISS_MIN_SCORES = 2 * 10**9
INSTALL_HINT = 'pip install "clip_trl[faiss]" (faiss-cpu)'


@functools.lru_cache(maxsize=1)
def faiss_module() -> Any:
    """The `faiss` module, or `None` when it is not installed."""
    try:
        import faiss
    except ImportError:
        return None
    return faiss


def use_faiss(num_images: int, num_texts: int, device: torch.device) -> bool:
    """Whether `backend="auto"` takes FAISS: installed, CPU tensors, and a pool of at least `FAISS_MIN_SCORES`."""
    return device.type == "cpu" and num_images * num_texts >= FAISS_MIN_SCORES and faiss_module() is not None


def faiss_retrieval_ranks(
    images: torch.Tensor, texts: torch.Tensor, pairs: torch.Tensor, max_k: int
) -> tuple[torch.Tensor, torch.Tensor]:
    """`(image_ranks [N], text_ranks [M])` as [`clip_trl.evaluation.ranking.retrieval_ranks`] returns them."""
    faiss = faiss_module()
    if faiss is None:
        raise ImportError(f"`backend='faiss'` needs FAISS, which is not installed: {INSTALL_HINT}.")
    images, texts, pairs = images.cpu().contiguous(), texts.cpu().contiguous(), pairs.cpu()
    n, m = images.shape[0], texts.shape[0]
    threads = faiss.omp_get_max_threads()
    faiss.omp_set_num_threads(torch.get_num_threads())  # the caller's thread budget, as torch's backend uses
    try:
        image_ranks = _ranks(faiss, images, texts, pairs, max_k, m, swap=False)
        text_ranks = _ranks(faiss, texts, images, pairs[:, [1, 0]], max_k, n, swap=True)
    finally:
        faiss.omp_set_num_threads(threads)
    return image_ranks, text_ranks


def _ranks(
    faiss: Any,
    queries: torch.Tensor,
    candidates: torch.Tensor,
    pairs: torch.Tensor,
    max_k: int,
    num_candidates: int,
    swap: bool,
) -> torch.Tensor:
    """Ranks of `queries` among `candidates`; `pairs` are (query, candidate), sorted by query when not `swap`."""
    if swap:  # sort by the new first column, as `pair_membership` needs
        keys = pairs[:, 0] * num_candidates + pairs[:, 1]
        pairs = pairs[torch.argsort(keys)]
    most_positives = int(torch.bincount(pairs[:, 0], minlength=queries.shape[0]).max())
    kept = min(num_candidates, max_k + most_positives)
    index = faiss.IndexFlatIP(candidates.shape[1])
    index.add(candidates.numpy())
    scores, found = index.search(queries.numpy(), kept)
    scores, found = torch.from_numpy(scores), torch.from_numpy(found).long()
    rows = torch.arange(queries.shape[0])[:, None]
    is_positive = pair_membership(pairs, num_candidates, rows, found)
    best = scores.masked_fill(~is_positive, -torch.inf).amax(dim=1)
    ranks = ((scores >= best[:, None]) & ~is_positive).sum(dim=1)
    return torch.where(is_positive.any(dim=1), ranks, torch.full_like(ranks, max_k)).clamp_(max=max_k)
