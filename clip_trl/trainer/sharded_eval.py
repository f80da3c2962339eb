"""Evaluation under several processes: each rank embeds a contiguous block of the eval set, and the blocks are
gathered so that every rank scores the whole set (retrieval needs every image against every caption).

The gathered [`~clip_trl.evaluation.EmbeddingSet`] is the one a single process builds: images in dataset order,
unique captions in order of first appearance, the same positives — so the metrics do not depend on the number
of processes, while each rank encodes only `1 / world_size` of the images and captions.
"""

from __future__ import annotations

from typing import Any

import torch
import torch.distributed as dist

from ..evaluation import EmbeddingSet, index_captions


def _world() -> tuple[int, int]:
    if dist.is_available() and dist.is_initialized():
        return dist.get_rank(), dist.get_world_size()
    return 0, 1


def shard(dataset: Any) -> tuple[Any, bool]:
    """This rank's contiguous block of `dataset`, and whether it was sharded at all.

    Not sharded (every rank embeds everything, as before): one process; a dataset without a length (a stream,
    whose order across shards is not the dataset's); fewer rows than processes.
    """
    rank, world_size = _world()
    if world_size == 1 or not hasattr(dataset, "__len__") or len(dataset) < world_size:
        return dataset, False
    total = len(dataset)
    start, end = rank * total // world_size, (rank + 1) * total // world_size
    if hasattr(dataset, "select"):
        return dataset.select(range(start, end)), True
    return [dataset[i] for i in range(start, end)], True


def _row_captions(local: EmbeddingSet) -> list[list[str]]:
    """Each row's captions (its first caption first), recovered from the set's positives.

    Within a row, captions new to the block keep their order (they were indexed in it), which is all that
    re-indexing the concatenated blocks needs to reproduce the single-process caption order.
    """
    rows = []
    for first, positives in zip(local.first_caption.tolist(), local.positives):
        others = [j for j in positives.nonzero().flatten().tolist() if j != first]
        rows.append([local.captions[first]] + [local.captions[j] for j in others])
    return rows


def gather_embedding_set(local: EmbeddingSet) -> EmbeddingSet:
    """The whole eval set's embeddings from every rank's block (a collective: every rank must call it)."""
    _, world_size = _world()
    parts: list[Any] = [None] * world_size
    dist.all_gather_object(parts, (local.image_embeds.cpu(), _row_captions(local), local.captions,
                                   local.text_embeds.cpu()))
    row_captions = [row for _, rows, _, _ in parts for row in rows]
    captions, positives, first = index_captions(row_captions)
    # A caption embedded on several ranks: the first rank's embedding (the same text, the same model).
    by_caption: dict[str, torch.Tensor] = {}
    for _, _, names, embeds in parts:
        for name, embed in zip(names, embeds):
            by_caption.setdefault(name, embed)
    image_embeds = torch.cat([images for images, _, _, _ in parts])
    text_embeds = torch.stack([by_caption[name] for name in captions])
    return EmbeddingSet(image_embeds, text_embeds, captions, positives, first)
