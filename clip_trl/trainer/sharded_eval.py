"""Evaluation under several processes: each rank embeds a contiguous block of the eval set, and the blocks are
gathered so that every rank scores the whole set (retrieval needs every image against every caption).

The gathered [`~clip_trl.evaluation.embeddings.EmbeddingSet`] is the one a single process builds: images in dataset order,
unique captions in order of first appearance, the same positives — so the metrics do not depend on the number
of processes, while each rank encodes only `1 / world_size` of the images and captions.
"""

from __future__ import annotations

import contextlib
from collections.abc import Iterator
from typing import Any

import torch
import torch.distributed as dist

from clip_trl.data.rows import EVAL_HINT, BadRowError
from clip_trl.evaluation import embeddings
from clip_trl.evaluation.embeddings import EmbeddingSet, index_captions


def _world() -> tuple[int, int]:
    if dist.is_available() and dist.is_initialized():
        return dist.get_rank(), dist.get_world_size()
    return 0, 1


def shard(dataset: Any) -> tuple[Any, int | None]:
    """This rank's contiguous block of `dataset`, and the index of its first row (`None`: not sharded).

    Not sharded (every rank embeds everything): one process; a dataset without a length (a stream, whose order
    across shards is not the dataset's); fewer rows than processes.
    """
    rank, world_size = _world()
    if world_size == 1 or not hasattr(dataset, "__len__") or len(dataset) < world_size:
        return dataset, None
    total = len(dataset)
    start, end = rank * total // world_size, (rank + 1) * total // world_size
    if hasattr(dataset, "select"):
        return dataset.select(range(start, end)), start
    return [dataset[i] for i in range(start, end)], start


@contextlib.contextmanager
def dataset_row_numbers(start: int | None) -> Iterator[None]:
    """Errors about a bad row of a block name the row's index in the whole eval set, not in the block."""
    try:
        yield
    except BadRowError as error:
        if not start or not isinstance(error.row, int):
            raise
        moved = BadRowError(error.row + start, error.column, error.problem, hint=EVAL_HINT)
        raise moved from error.__cause__


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
    dist.all_gather_object(
        parts, (local.image_embeds.cpu(), _row_captions(local), local.captions, local.text_embeds.cpu())
    )
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


def compute_embeddings(model: Any, processor: Any, dataset: Any, **kwargs: Any) -> EmbeddingSet:
    """[`clip_trl.evaluation.embeddings.compute_embeddings`] of the whole `dataset`, each rank embedding only its block.

    A collective under several processes (every rank must call it); with one process, the plain function.
    """
    rows, first_row = shard(dataset)
    with dataset_row_numbers(first_row):
        local = embeddings.compute_embeddings(model, processor, rows, **kwargs)
    return local if first_row is None else gather_embedding_set(local)
