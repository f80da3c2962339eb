r"""On-policy candidate sets and rollout reuse for [`ClipRLTrainer`].

- [`RetrievedCandidates`]: `candidates="retrieved"`. Each image's candidates are the current model's
  top-`num_candidates` texts of a pool (hard negatives the policy actually confuses), refreshed every
  `candidate_refresh_steps` through the library's own text-embedding path
  (`clip_trl.models.encoding.embed_texts`). Under several processes every process embeds one shard of the pool and the
  shards are all-gathered, so the index is built once per refresh and is identical everywhere.
- [`RepeatBatchSampler`]: `num_iterations > 1`. Serves each group of rows (one optimizer step's worth, over
  all processes) `num_iterations` times in a row, so the trainer can compute a rollout (actions, rewards,
  old log-probabilities) once and reuse it for several updates, as TRL's GRPO does.
"""

from __future__ import annotations

import math
from collections.abc import Iterator, Sequence
from typing import Any

import numpy as np
import torch
import torch.distributed as dist
import torch.nn.functional as F
from torch.utils.data import Sampler

from clip_trl.losses.contrastive import gather_with_grad
from clip_trl.models import modeling


def _distinct_strings(values: Sequence[Any], where: str) -> list[str]:
    texts: dict[str, None] = {}
    for index, value in enumerate(values):
        items = value if isinstance(value, (list, tuple)) else [value]
        for item in items:
            if not isinstance(item, str) or not item.strip():
                raise ValueError(
                    f"{where}, row {index}: pool entries must be non-empty strings, got {item!r}."
                )
            texts.setdefault(item)
    return list(texts)


def resolve_candidate_pool(pool: str | Sequence[str] | None, dataset: Any, caption_column: str) -> list[str]:
    """The retrieval pool as a list of distinct texts (first-appearance order).

    `pool` is `None` (the distinct values of `caption_column` in `dataset`), a column name of `dataset`, or
    the texts themselves.

    Example:

    ```python
    >>> import datasets
    >>> from clip_trl.trainer.rl_candidates import resolve_candidate_pool
    >>> rows = datasets.Dataset.from_dict({"caption": ["a cat", "a dog", "a cat"], "alt": [["x", "y"], ["y"], ["z"]]})
    >>> resolve_candidate_pool(None, rows, "caption")
    ['a cat', 'a dog']
    >>> resolve_candidate_pool("alt", rows, "caption")
    ['x', 'y', 'z']

    ```
    """
    if pool is None or isinstance(pool, str):
        column = caption_column if pool is None else pool
        names = getattr(dataset, "column_names", None)
        if dataset is None or names is None:
            raise ValueError(
                "`candidates='retrieved'` builds its pool from the training set's columns, which needs a "
                "`train_dataset` with named columns (a `datasets.Dataset`); pass the texts as `candidate_pool=[...]`."
            )
        if column not in names:
            raise ValueError(
                f"`candidate_pool={column!r}` is not a column of train_dataset (columns: {names}); give a column "
                "name or the list of texts."
            )
        texts = _distinct_strings(dataset[column], f"Column '{column}' (candidate_pool)")
    else:
        texts = _distinct_strings(list(pool), "`candidate_pool`")
    if len(texts) < 2:
        raise ValueError(
            f"The candidate pool holds {len(texts)} distinct text(s); retrieval needs at least 2."
        )
    return texts


def _all_gather(tensor: torch.Tensor) -> list[torch.Tensor]:

    if not (dist.is_available() and dist.is_initialized()) or dist.get_world_size() == 1:
        return [tensor]
    gathered = [torch.empty_like(tensor) for _ in range(dist.get_world_size())]
    dist.all_gather(gathered, tensor)
    return gathered


class RetrievedCandidates:
    """The pool, its embeddings under the model as of the last refresh, and per-image top-k selection.

    Args:
        pool (`list[str]`): the distinct texts to retrieve from.
        num_candidates (`int`): candidates per image (capped at the pool size).
        refresh_steps (`int`): re-embed the pool when the optimizer step crosses a multiple of this.
        include_ground_truth (`bool`): keep a row's caption in its set (replacing the least similar candidate).
        batch_size (`int`): texts per forward when embedding the pool.
    """

    def __init__(
        self,
        pool: list[str],
        num_candidates: int,
        refresh_steps: int,
        include_ground_truth: bool = True,
        batch_size: int = 256,
    ) -> None:
        self.pool = list(pool)
        self.num_candidates = min(num_candidates, len(self.pool))
        self.refresh_steps = refresh_steps
        self.include_ground_truth = include_ground_truth
        self.batch_size = batch_size
        self.embeds: torch.Tensor | None = None  # [P, d], L2-normalised, float32, CPU
        self.built_at: int | None = None  # the optimizer step of the last refresh
        self.refreshes = 0

    def needs_refresh(self, step: int) -> bool:
        return self.built_at is None or step // self.refresh_steps != self.built_at // self.refresh_steps

    def refresh(self, model: Any, tokenizer: Any, step: int, device: torch.device | None = None) -> None:
        """Embed the pool with `model` (each process a contiguous shard, then all-gathered)."""
        import torch.distributed as dist

        from clip_trl.models.encoding import (
            embed_texts,  # the library's text-embedding path (eval mode, no grad)
        )

        distributed = dist.is_available() and dist.is_initialized() and dist.get_world_size() > 1
        world, rank = (dist.get_world_size(), dist.get_rank()) if distributed else (1, 0)
        shard = math.ceil(len(self.pool) / world)
        mine = self.pool[rank * shard : (rank + 1) * shard]
        inner = modeling.unwrap(model)
        # A process whose shard is empty (tiny pools) still embeds one text so that every block has the width.
        local = embed_texts(inner, tokenizer, mine or self.pool[:1], self.batch_size)
        if distributed:
            padded = F.pad(local, (0, 0, 0, shard - local.shape[0])).to(
                device if device is not None else "cpu"
            )
            blocks = _all_gather(padded.contiguous())
            counts = [len(self.pool[r * shard : (r + 1) * shard]) for r in range(world)]
            local = torch.cat([block[:count].cpu() for block, count in zip(blocks, counts)])
        self.embeds = local.float()
        self.built_at = step
        self.refreshes += 1

    def select(self, image_embeds: torch.Tensor, truths: Sequence[Sequence[str]]) -> list[list[str]]:
        """Each image's candidates: its top-`num_candidates` pool texts by similarity, most similar first; with
        `include_ground_truth`, a row whose captions are all missing gets its first caption in the last slot."""
        if self.embeds is None:
            raise RuntimeError("The candidate pool has not been embedded yet; call `refresh` first.")
        queries = F.normalize(image_embeds.detach().float(), dim=-1).cpu()
        top = (queries @ self.embeds.T).topk(self.num_candidates, dim=1).indices.tolist()
        sets = []
        for row, captions in zip(top, truths):
            names = [self.pool[i] for i in row]
            if self.include_ground_truth and captions and not any(c in names for c in captions):
                names[-1] = captions[0]
            sets.append(names)
        return sets


class RepeatBatchSampler(Sampler[int]):
    """Row indices in seeded random order, each group of `group_size` rows repeated `repeat_count` times.

    `group_size` is one optimizer step's rows over every process (per-device batch × processes × accumulation
    steps); the DataLoader then cuts the stream into per-device batches and accelerate deals them out, so each
    process sees the same micro-batches, in the same order, on each of the `repeat_count` consecutive steps.
    Rows left over after the last full group are dropped (they are in other groups in other epochs: the order
    is reshuffled per epoch from `(seed, epoch)`, so a resumed run replays it).
    """

    def __init__(self, num_rows: int, group_size: int, repeat_count: int, seed: int) -> None:
        if num_rows < group_size:
            raise ValueError(
                f"`num_iterations > 1` reuses whole optimizer steps' worth of rows ({group_size} = per-device batch "
                f"× processes × gradient accumulation), but the training set has only {num_rows} rows; lower the "
                "batch size or `gradient_accumulation_steps`."
            )
        self.num_rows = num_rows
        self.group_size = group_size
        self.repeat_count = repeat_count
        self.seed = seed
        self.epoch = 0

    def set_epoch(self, epoch: int) -> None:
        self.epoch = epoch

    def __iter__(self) -> Iterator[int]:
        order = np.random.default_rng([self.seed, self.epoch]).permutation(self.num_rows).tolist()
        for start in range(0, len(order) - self.group_size + 1, self.group_size):
            group = order[start : start + self.group_size]
            for _ in range(self.repeat_count):
                yield from group

    def __len__(self) -> int:
        return (self.num_rows // self.group_size) * self.group_size * self.repeat_count


class GlobalCandidates:
    """The in-batch candidate set of the global batch, for `gather_candidates=True`.

    Each rank contributes its batch's distinct candidates (captions, or images for `text_to_image`); the
    global set is their concatenation in rank order, de-duplicated by first occurrence — captions by their
    text, images by their content hash, as the collator does within a batch — so it is exactly the set a
    single process would build from the global batch. Names, keys and (for `text_to_image`) the candidate
    images travel as Python objects; embeddings are gathered with gradient by [`embed`].
    """

    def __init__(self, inputs: dict[str, Any], direction: str, image_column: str) -> None:
        # In-batch candidate sets are the same list for every query of a batch: the first row describes them.
        names: list[str] = list(inputs["candidates"][0])
        rows: list[Any] = list(inputs["candidate_rows"])
        images = None
        if direction == "image_to_text":
            keys: list[Any] = names
            query_keys: list[Any] = list(inputs["ground_truth"])
        else:
            image_rows = inputs["distinct_image_rows"].tolist()
            image_keys = inputs["image_keys"].tolist()
            keys = [image_keys[row] for row in image_rows]
            query_keys = image_keys
            # Rewards receive the chosen images, which may live on another rank.
            images = [inputs["rows"][row][image_column] for row in image_rows]
        per_rank = all_gather_objects((keys, names, images, rows))
        # Embeddings are gathered as equal-sized blocks (padded to the largest rank's count); `selection`
        # picks, in global order, the first copy of each distinct candidate out of those blocks.
        self.width = max(len(rank_keys) for rank_keys, *_ in per_rank)
        position: dict[Any, int] = {}
        selection: list[int] = []
        self.names: list[str] = []
        self.rows: list[Any] = []
        self.images: list[Any] | None = [] if images is not None else None
        for rank, (rank_keys, rank_names, rank_images, rank_rows) in enumerate(per_rank):
            for i, key in enumerate(rank_keys):
                if key in position:
                    continue
                position[key] = len(self.names)
                selection.append(rank * self.width + i)
                self.names.append(rank_names[i])
                self.rows.append(rank_rows[i])
                if self.images is not None:
                    self.images.append(rank_images[i])
        device = inputs["candidate_index"].device
        self.local_index = inputs["candidate_index"][0]  # this rank's candidates among its embedded keys
        self.selection = torch.tensor(selection, device=device)
        num_queries = len(query_keys)
        self.candidate_index = torch.arange(len(self.names), device=device).expand(num_queries, -1)
        self.overrides: dict[str, Any] = {
            "candidate_index": self.candidate_index,
            "target_index": torch.tensor([position[key] for key in query_keys], device=device),
            "candidates": [self.names] * num_queries,
            "candidate_texts": [self.names] * num_queries,
            "candidate_rows": self.rows,
        }
        if self.images is not None:
            self.overrides["candidate_images"] = self.images

    def embed(self, keys: torch.Tensor) -> torch.Tensor:
        """The global candidates' embeddings `[K, d]` from this rank's `keys`; gradients reach the rank
        that owns each (first) copy, so DDP's average equals the single-process gradient."""
        local = keys[self.local_index]
        padded = F.pad(local, (0, 0, 0, self.width - local.shape[0]))
        return gather_with_grad(padded)[self.selection.to(keys.device)]


def all_gather_objects(obj: Any) -> list[Any]:
    """`obj` from every rank, in rank order (`[obj]` with one process)."""
    if not (dist.is_available() and dist.is_initialized()) or dist.get_world_size() == 1:
        return [obj]
    gathered: list[Any] = [None] * dist.get_world_size()
    dist.all_gather_object(gathered, obj)
    return gathered
