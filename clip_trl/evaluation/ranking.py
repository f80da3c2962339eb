"""Blocked retrieval ranks: each query's count of negatives scoring at least as high as its best positive, in one
pass over the similarity matrix in tiles, with memory bounded by a tile (no `[N, M]` matrix, no dense mask).

Per tile of `images[i0:i1] @ texts[t0:t1].T` (at most `tile_elements` scores), the positive pairs falling in it
have their scores read from the tile, and are then set to -inf; each image keeps the `K` highest negative scores
seen so far (`K` = the largest recall cut-off), and so does each text. After the pass, each query's rank is the
number of its kept negatives that score at least as high as its best positive: exact below `K`, and `K` (a miss
for every cut-off) when all `K` kept ones do, since then at least `K` negatives do. Both directions read the same
tiles, so a positive and a negative that tie in the matrix tie in both directions (ties count against the query:
see [`clip_trl.evaluation`]). One matrix multiplication per score, where the previous two-pass version took two; a
row (or column) of a tile is merged into its kept top-`K` only when its best score beats the `K`-th kept one.
"""

from __future__ import annotations

import math

import torch

# A tile holds at most this many float32 scores (64 MiB).
TILE_ELEMENTS = 1 << 24


def retrieval_ranks(
    images: torch.Tensor,
    texts: torch.Tensor,
    pairs: torch.Tensor,
    max_k: int,
    tile_elements: int = TILE_ELEMENTS,
) -> tuple[torch.Tensor, torch.Tensor]:
    """`(image_ranks [N], text_ranks [M])`: negatives at least as high as the best positive, capped at `max_k`.

    Args:
        images (`[N, d]`), texts (`[M, d]`): float32 embeddings on one device.
        pairs (`[P, 2]` long): the (image, text) positive pairs, every image and text in at least one.
        max_k: the largest recall cut-off; ranks are exact below it.
        tile_elements: the most scores held at once (the memory bound).
    """
    n, m = images.shape[0], texts.shape[0]
    device = images.device
    pairs = pairs.to(device)
    side = max(1, math.isqrt(tile_elements))
    tile_images, tile_texts = min(n, side), min(m, max(side, tile_elements // min(n, side)))
    image_k, text_k = min(max_k, m), min(max_k, n)
    image_top = torch.full((n, image_k), -math.inf, device=device)
    text_top = torch.full((text_k, m), -math.inf, device=device)
    # The pairs, bucketed by tile.
    text_tiles = -(-m // tile_texts)
    tile_of_pair = (pairs[:, 0] // tile_images) * text_tiles + pairs[:, 1] // tile_texts
    order = torch.argsort(tile_of_pair, stable=True)
    pair_images, pair_texts = pairs[order, 0], pairs[order, 1]
    pair_scores = torch.empty(len(pairs), device=device)
    tile_count = -(-n // tile_images) * text_tiles
    bounds = torch.searchsorted(
        tile_of_pair[order], torch.arange(tile_count + 1, device=device, dtype=tile_of_pair.dtype)
    ).tolist()
    for i0 in range(0, n, tile_images):
        i1 = min(i0 + tile_images, n)
        for t0 in range(0, m, tile_texts):
            t1 = min(t0 + tile_texts, m)
            scores = images[i0:i1] @ texts[t0:t1].T
            tile = (i0 // tile_images) * text_tiles + t0 // tile_texts
            lo, hi = bounds[tile], bounds[tile + 1]
            if hi > lo:
                rows, columns = pair_images[lo:hi] - i0, pair_texts[lo:hi] - t0
                pair_scores[lo:hi] = scores[rows, columns]
                scores[rows, columns] = -math.inf  # negatives only from here on
            _merge_top(image_top[i0:i1], scores)
            _merge_top_columns(text_top[:, t0:t1], scores)
    best_image = torch.full((n,), -math.inf, device=device).scatter_reduce_(
        0, pair_images, pair_scores, "amax"
    )
    best_text = torch.full((m,), -math.inf, device=device).scatter_reduce_(0, pair_texts, pair_scores, "amax")
    image_ranks = (image_top >= best_image[:, None]).sum(dim=1)
    text_ranks = (text_top >= best_text[None, :]).sum(dim=0)
    return image_ranks, text_ranks


def _merge_top(kept: torch.Tensor, scores: torch.Tensor) -> None:
    """Merge each row of `scores` ([rows, columns]) into `kept` ([rows, K], in place: the K highest values seen per
    row). Rows whose best score does not beat their K-th kept one are skipped (after the first tiles, most are)."""
    needed = scores.amax(dim=1) > kept.amin(dim=1)
    if not bool(needed.any()):
        return
    k = kept.shape[1]
    rows = slice(None) if bool(needed.all()) else needed.nonzero().flatten()
    best = scores[rows].topk(min(k, scores.shape[1]), dim=1, sorted=False).values
    kept[rows] = torch.cat([kept[rows], best], dim=1).topk(k, dim=1, sorted=False).values


def _merge_top_columns(kept: torch.Tensor, scores: torch.Tensor) -> None:
    """[`_merge_top`] down the columns: `kept` is [K, columns], `scores` [rows, columns]."""
    needed = scores.amax(dim=0) > kept.amin(dim=0)
    if not bool(needed.any()):
        return
    k = kept.shape[0]
    columns = slice(None) if bool(needed.all()) else needed.nonzero().flatten()
    best = column_top_values(scores[:, columns], min(k, scores.shape[0]))
    kept[:, columns] = torch.cat([kept[:, columns], best], dim=0).topk(k, dim=0, sorted=False).values


def column_top_values(scores: torch.Tensor, k: int, group: int = 32) -> torch.Tensor:
    """The `k` highest values of each column of `scores` ([k, columns], unsorted): `scores.topk(k, dim=0).values`
    as a multiset, about twice as fast on tall tiles (a top-k down the columns of a row-major matrix is slow).
    The rows are cut into groups of `group`; only the `k` groups with the highest maxima in a column can hold its
    `k` highest values (a value in another group is beaten by `k` group maxima), so the top-k runs on `k * group`
    candidates per column: one contiguous pass for the group maxima, a little work after."""
    rows = scores.shape[0]
    if rows < 2 * group * (k + 1):
        return scores.topk(k, dim=0, sorted=False).values
    whole = rows - rows % group
    blocks = scores[:whole].unflatten(0, (whole // group, group))  # [groups, group, columns] (a view)
    chosen = blocks.amax(dim=1).topk(k, dim=0, sorted=False).indices  # [k, columns]
    candidates = blocks.gather(0, chosen[:, None, :].expand(-1, group, -1)).flatten(0, 1)
    if whole < rows:
        candidates = torch.cat([candidates, scores[whole:]], dim=0)
    return candidates.topk(k, dim=0, sorted=False).values
