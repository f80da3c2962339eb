"""clip_trl's `retrieval_scores` before the index-list version (git history; input checks removed): a dense
`[N, M]` positives mask and two passes over the similarity matrix. `benchmarks/retrieval_scale.py` compares with it."""

import math

import torch


def dense_retrieval_scores(image_embeds, text_embeds, positives, ks=(1, 5, 10)):
    ks = list(dict.fromkeys(ks))
    n, m = image_embeds.shape[0], text_embeds.shape[0]
    if tuple(positives.shape) != (n, m):
        raise ValueError(f"`positives` has shape {tuple(positives.shape)}, expected ({n}, {m}).")
    if n == 0 or m == 0:
        raise ValueError("Retrieval needs at least one image and one text.")
    device = image_embeds.device
    images = image_embeds.float()
    texts = text_embeds.to(device=device, dtype=torch.float32)
    positives = positives.to(device=device, dtype=torch.bool)

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
    block = max(1, (1 << 24) // m)
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
