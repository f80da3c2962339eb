"""Embeddings of a frozen tower, computed once and reused (`cache_frozen_embeddings`).

With `freeze_vision=True` (LiT-style locked-image tuning) the image tower is a fixed function of its input, and
with a deterministic image transform the input of a row is fixed too: its embedding is the same at every epoch,
so it is computed the first time the row is seen and read back afterwards. The same holds for the text tower
with `freeze_text=True`, and especially for the RL and distillation trainers' fixed candidate texts (labels
through a template, a candidate column), which come back at every step.

Keys are contents, never positions alone: an image by the collator's `image_keys` (a hash of the decoded pixels
and size, computed for every row already), so a row's entry is found again whatever batch, epoch or rank it
lands in, and rows sharing an image share one entry; a text by a hash of its tokens (unpadded), so a caption,
a hard negative, a label prompt or a candidate are all found by what the tower reads. A tower's entries hold only
while the tower computes the same function, checked at every step: the tower is frozen (every parameter
`requires_grad=False`), has no adapter (LoRA) layers (adapters can be switched off or swapped without touching a
parameter), has no active dropout, its parameters are the same tensors on the same device in the same dtype,
unchanged in place (their version counters), under the same autocast, and — for images — the collator's image
transform is the same. Anything else clears that tower's entries (logged) and computes it again.

Processes: each rank caches the rows it computes, and at the end of every epoch the ranks exchange what they
computed (a shuffled sampler sends a row to another rank at the next epoch). Memory: rows are kept on the CPU up
to `cache_frozen_embeddings_memory_mb` per process and tower, then spilled to memory-mapped files under `output_dir/embedding_cache/rank<r>/`, deleted at the end of
training. A resumed run starts with an empty cache and rebuilds it as rows come back: the values are the same.

When a cache is in use the towers are called directly rather than through the model's `forward` (which runs both
towers), so under DDP the trainer averages the gradients itself (as for FLAVA, see
[`clip_trl.trainer.distributed.average_gradients`]).
"""

from __future__ import annotations

import logging
import os
import shutil
from collections.abc import Callable, Mapping
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn
from transformers import TrainerCallback

from clip_trl.data.rows import content_key
from clip_trl.models import modeling
from clip_trl.trainer.embedding_store import EmbeddingStore, quiet_os_error

logger = logging.getLogger(__name__)

CACHE_MODES = ("auto", "true", "false")
# clip_trl's own image transforms: a fixed function of the decoded image. Another transform may say so itself
# with a `deterministic = True` attribute (or be trusted with `cache_frozen_embeddings="true"`).
DETERMINISTIC_TRANSFORMS = ("FastImageTransform", "ProcessorImageTransform")
_STOCHASTIC_ATTRIBUTES = ("dropout", "attention_dropout", "dropout_p", "drop_path_rate", "drop_prob")


def check_cache_mode(value: Any) -> str:
    """The mode as one of `CACHE_MODES` (`True`/`False` and the command line's spellings are accepted)."""
    if isinstance(value, bool):
        return "true" if value else "false"
    text = str(value).strip().lower()
    text = {"yes": "true", "on": "true", "1": "true", "no": "false", "off": "false", "0": "false"}.get(
        text, text
    )
    if text not in CACHE_MODES:
        raise ValueError(
            f"`cache_frozen_embeddings` must be 'auto', True or False, got {value!r}: 'auto' caches a frozen tower "
            "when that is exact, True also trusts a custom image transform to be deterministic, False turns it off."
        )
    return text


def transform_is_deterministic(transform: Any) -> bool | None:
    """Whether `transform` maps a decoded image to the same pixels every time: what it declares (a
    `deterministic` attribute), else `True` for clip_trl's own transforms, else `None` (unknown)."""
    declared = getattr(transform, "deterministic", None)
    if declared is not None:
        return bool(declared)
    kind = type(transform)
    if kind.__name__ in DETERMINISTIC_TRANSFORMS and kind.__module__.startswith("clip_trl."):
        return True
    return None


def transform_fingerprint(transform: Any) -> tuple:
    """What identifies an image transform's function: the object and its settings."""
    return (type(transform).__qualname__, id(transform), repr(getattr(transform, "spec", None)),
            getattr(transform, "draft", None))  # fmt: skip


def token_keys(input_ids: torch.Tensor, attention_mask: torch.Tensor | None) -> list[int]:
    """One content key per text row: a hash of its tokens (without padding when there is a mask)."""
    ids = input_ids.detach().cpu().numpy()
    if attention_mask is None:
        return [content_key(row.tobytes()) for row in ids]
    mask = attention_mask.detach().cpu().numpy().astype(bool)
    return [content_key(row[keep].tobytes()) for row, keep in zip(ids, mask)]


# ----------------------------------------------------------------------------------------- tower state


def _tower_parameters(model: nn.Module, tower: str) -> tuple[list[nn.Module], list[torch.Tensor]]:
    modules = modeling.tower_modules(model, tower)
    return modules, [p for module in modules for p in module.parameters()]


def _has_adapters(modules: list[nn.Module]) -> bool:
    return any(type(m).__module__.startswith("peft.") for module in modules for m in module.modules())


def _has_dropout(modules: list[nn.Module]) -> bool:
    for module in (m for top in modules for m in top.modules()):
        if isinstance(module, nn.modules.dropout._DropoutNd) and module.p > 0:
            return True
        if any(isinstance(getattr(module, name, None), float) and getattr(module, name) > 0
               for name in _STOCHASTIC_ATTRIBUTES):  # fmt: skip
            return True
    return False


def tower_state(model: nn.Module, tower: str) -> tuple[str | None, tuple]:
    """`(why the tower cannot be cached, None when it can; the signature its entries hold under)`."""
    modules, parameters = _tower_parameters(model, tower)
    if not parameters:
        return "it has no parameters", ()
    if any(p.requires_grad for p in parameters):
        return "it is trainable", ()
    if _has_adapters(modules):
        return "it has adapter (LoRA) layers", ()
    dropout = _has_dropout(modules)
    if dropout and model.training:
        return "it has active dropout", ()
    first = parameters[0]
    kind = first.device.type
    autocast = torch.get_autocast_dtype(kind) if torch.is_autocast_enabled(kind) else None
    signature = (
        first.dtype,
        first.device,
        autocast,
        dropout and model.training,
        hash(tuple(id(p) for p in parameters)),
        sum(p._version for p in parameters),
    )
    return None, signature


# ----------------------------------------------------------------------------------------------- cache


class FrozenEmbeddingCache:
    """Cached embeddings of the frozen towers named in `towers`, used by [`encode_batch`] in place of
    [`clip_trl.models.modeling.encode_batch`].

    Args:
        towers: the towers to cache (`"vision"`, `"text"`).
        memory_mb: CPU memory for each tower's rows; beyond it rows go to files under `spill_dir`.
        spill_dir: where rows beyond the budget are written (`None`: not kept).
        transform: returns the image transform in use (its fingerprint is part of the image entries' signature).
        record: called with `<prefix><tower>_hit_rate` metrics at every training step (the trainer's `_record`).
        warn: log a warning (not an info line) when a tower cannot be cached.
        prefix: the metrics' prefix (`"cache/"`; a reference model's cache: `"cache/reference_"`).
    """

    def __init__(
        self,
        towers: tuple[str, ...],
        memory_mb: float = 1024.0,
        spill_dir: str | None = None,
        transform: Callable[[], Any] | None = None,
        record: Callable[..., None] | None = None,
        warn: bool = False,
        prefix: str = "cache/",
    ) -> None:
        self.towers = tuple(towers)
        self.prefix = prefix
        # A model that never trains (a reference, a teacher) is always in eval mode: its hits count at every step.
        self.frozen_model = prefix != "cache/"
        budget = int(memory_mb * 2**20)
        self.stores = {
            tower: EmbeddingStore(budget, spill_dir and os.path.join(spill_dir, tower), tower)
            for tower in towers
        }
        self.spill_dir = spill_dir
        self._transform = transform
        self._record = record
        self._warn = warn
        self._signatures: dict[str, tuple | None] = dict.fromkeys(towers)
        self._reasons: dict[str, str | None] = dict.fromkeys(towers)
        self._new: dict[str, list[int]] = {tower: [] for tower in towers}  # computed here, not yet shared
        self.hits = dict.fromkeys(towers, 0)
        self.lookups = dict.fromkeys(towers, 0)
        # Set at the first step that called the towers directly: DDP then reduced no gradient (the trainer does).
        self.bypassed_forward = False

    def close(self) -> None:
        """Drop every entry and the spill files."""
        for store in self.stores.values():
            store.clear()
        if self.spill_dir is not None:
            shutil.rmtree(self.spill_dir, ignore_errors=True)
            with quiet_os_error():  # `embedding_cache/`, once every rank's folder is gone
                os.rmdir(os.path.dirname(self.spill_dir))

    def share(self, device: torch.device | str = "cpu", chunk_rows: int = 8192) -> None:
        """Give every process the rows the others computed since the last call (a collective: every process calls
        it, at the end of each epoch). With a shuffled sampler a row lands on another rank at the next epoch; without
        this, a rank would find only about 1/world_size of its rows."""
        import torch.distributed as dist

        new, self._new = self._new, {tower: [] for tower in self.towers}
        if not (dist.is_available() and dist.is_initialized()) or dist.get_world_size() == 1:
            return
        world, rank = dist.get_world_size(), dist.get_rank()
        for tower in self.towers:
            store, keys = self.stores[tower], new[tower]
            meta = (len(keys), store.width, str(store.dtype), self._signatures[tower] is not None)
            metas: list[Any] = [None] * world
            dist.all_gather_object(metas, meta)
            filled = [m for m in metas if m[0]]
            if not filled or not all(m[3] for m in metas) or len({m[1:3] for m in filled}) > 1:
                continue  # nothing new, or the tower is not cached everywhere (or differs): keep what each has
            width, dtype = filled[0][1], getattr(torch, filled[0][2].removeprefix("torch."))
            carrier = torch.float64 if dtype == torch.float64 else torch.float32  # lossless for 16-bit values
            longest = max(m[0] for m in metas)
            for start in range(0, longest, chunk_rows):
                count = min(chunk_rows, longest - start)
                mine = keys[start : start + count]
                key_block = torch.full((count,), -1, dtype=torch.long, device=device)
                value_block = torch.zeros((count, width), dtype=carrier, device=device)
                if mine:
                    key_block[: len(mine)] = torch.tensor(mine, device=device)
                    value_block[: len(mine)] = store.get(mine).to(device=device, dtype=carrier)
                key_blocks = [torch.empty_like(key_block) for _ in range(world)]
                value_blocks = [torch.empty_like(value_block) for _ in range(world)]
                dist.all_gather(key_blocks, key_block)
                dist.all_gather(value_blocks, value_block)
                for other, (their_keys, their_values) in enumerate(zip(key_blocks, value_blocks)):
                    valid = their_keys >= 0
                    if other != rank and bool(valid.any()):
                        store.put(their_keys[valid].tolist(), their_values[valid].to(dtype))

    def _usable(self, model: nn.Module, tower: str, inputs: Mapping[str, Any]) -> EmbeddingStore | None:
        if tower not in self.stores:
            return None
        reason, signature = tower_state(model, tower)
        if reason is None and tower == "vision":
            if inputs.get("image_keys") is None:
                reason = "the batch has no `image_keys` (a custom collator)"
            elif self._transform is not None:
                signature = (*signature, transform_fingerprint(self._transform()))
        store = self.stores[tower]
        if reason is not None or signature != self._signatures[tower]:
            if len(store):
                logger.info("Embedding cache: the %s tower changed (%s); its %d rows are dropped.", tower,
                            reason or "another dtype, device, weights or transform", len(store))  # fmt: skip
                store.clear()
                self._new[tower] = []
            self._signatures[tower] = signature if reason is None else None
        if reason != self._reasons[tower]:
            self._reasons[tower] = reason
            if reason is not None:
                (logger.warning if self._warn else logger.info)(
                    "Embedding cache: the %s tower is computed at every step: %s.", tower, reason
                )
        return store if reason is None else None

    def encode_batch(self, model: nn.Module, inputs: Mapping[str, Any]) -> tuple[torch.Tensor, torch.Tensor]:
        """L2-normalised image and text embeddings of a collated batch, the cached towers read from the cache."""
        self.bypassed_forward = True
        images, texts = self.features(model, "vision", inputs), self.features(model, "text", inputs)
        return F.normalize(images, dim=-1), F.normalize(texts, dim=-1)

    def features(self, model: nn.Module, tower: str, inputs: Mapping[str, Any]) -> torch.Tensor:
        """One tower's projected (unnormalised) features of the batch: read from the cache where it applies,
        else computed (with gradient when the tower trains)."""
        extra = modeling.image_inputs(model, inputs)
        cached = self._lookup(model, tower, inputs, extra)
        if cached is not None:
            return cached
        if tower == "vision":
            pixels = extra.pop("pixel_values")
            return modeling.image_features(model, pixels, **extra)
        return modeling.text_features(model, inputs["input_ids"], inputs.get("attention_mask"))

    def _lookup(
        self, model: nn.Module, tower: str, inputs: Mapping[str, Any], extra: dict[str, Any]
    ) -> torch.Tensor | None:
        store = self._usable(model, tower, inputs)
        if store is None:
            return None
        if tower == "vision":
            keys = inputs["image_keys"].tolist()
            device = inputs["pixel_values"].device
        else:
            keys = token_keys(inputs["input_ids"], inputs.get("attention_mask"))
            device = inputs["input_ids"].device
        computed: dict[int, torch.Tensor] = {}
        missing = {key: row for row, key in reversed(list(enumerate(keys))) if key not in store.slots}
        if missing:
            rows = torch.tensor(sorted(missing.values()), device=device)
            with torch.no_grad():
                if tower == "vision":
                    chosen = {name: value[rows] for name, value in extra.items()}
                    values = modeling.image_features(model, chosen.pop("pixel_values"), **chosen)
                else:
                    mask = inputs.get("attention_mask")
                    values = modeling.text_features(
                        model, inputs["input_ids"][rows], None if mask is None else mask[rows]
                    )
            new_keys = [keys[row] for row in rows.tolist()]
            store.put(new_keys, values)
            self._new[tower].extend(key for key in new_keys if key in store.slots)
            computed = dict(zip(new_keys, values))
        self.lookups[tower] += len(keys)
        hits = len(keys) - len(missing)
        self.hits[tower] += hits
        if self._record is not None and (model.training or self.frozen_model):
            self._record(**{f"{self.prefix}{tower}_hit_rate": hits / max(len(keys), 1)})
        if not computed:
            return store.get(keys).to(device, non_blocking=True)
        stored = [key for key in keys if key not in computed]
        from_store = dict(zip(stored, store.get(stored).to(device))) if stored else {}
        return torch.stack([computed[key] if key in computed else from_store[key] for key in keys])


# ------------------------------------------------------------------------------------------ trainer glue


def cache_for_trainer(trainer: Any, frozen_model: str | None = None) -> FrozenEmbeddingCache | None:
    """The cache a trainer's config asks for (`cache_frozen_embeddings`), or `None` (off, nothing frozen, or not
    exact here: the reason is logged). `frozen_model` names a model that never trains (`"reference"`, the RL
    trainer's frozen copy; `"teacher0"`, ...): both its towers are cached, under that name."""
    args = trainer.args
    mode = check_cache_mode(getattr(args, "cache_frozen_embeddings", "false"))
    towers = [t for t, frozen in (("vision", args.freeze_vision), ("text", args.freeze_text)) if frozen]
    if frozen_model is not None:
        towers = ["vision", "text"]
    if mode == "false" or not towers:
        return None
    say = logger.warning if mode == "true" else logger.info
    if getattr(trainer, "is_deepspeed_enabled", False) or getattr(trainer, "is_fsdp_enabled", False):
        say(
            "Embedding cache: off under DeepSpeed / FSDP (the towers are sharded and must run through forward)."
        )
        return None
    transform = getattr(trainer.data_collator, "image_transform", None)
    deterministic = transform_is_deterministic(transform)
    if "vision" in towers and (deterministic is False or (deterministic is None and mode == "auto")):
        hint = (
            "it says `deterministic = False`"
            if deterministic is False
            else "it is not known to be deterministic (set `deterministic = True` on it, or "
            "`cache_frozen_embeddings=True` to trust it)"
        )
        say(
            "Embedding cache: the frozen vision tower is computed at every step: the image transform "
            f"{type(transform).__name__} may give other pixels at every epoch: {hint}."
        )
        towers.remove("vision")
    if not towers:
        return None
    folder = f"rank{args.process_index}" + (f"-{frozen_model}" if frozen_model else "")
    spill_dir = os.path.join(args.output_dir, "embedding_cache", folder)
    collator = trainer.data_collator
    cache = FrozenEmbeddingCache(
        tuple(towers),
        memory_mb=args.cache_frozen_embeddings_memory_mb,
        spill_dir=spill_dir,
        transform=(lambda: getattr(collator, "image_transform", None)) if "vision" in towers else None,
        record=trainer._record,
        warn=mode == "true",
        prefix=f"cache/{frozen_model}_" if frozen_model else "cache/",
    )
    trainer.add_callback(_CloseAtTrainEnd(cache))
    return cache


class _CloseAtTrainEnd(TrainerCallback):
    """Shares each epoch's new rows between processes; drops the entries and deletes the spill files when training
    ends (a later `train()` rebuilds them)."""

    def __init__(self, cache: FrozenEmbeddingCache) -> None:
        self.cache = cache

    def on_epoch_end(self, args: Any, state: Any, control: Any, **kwargs: Any) -> None:
        self.cache.share(args.device)

    def on_train_end(self, args: Any, state: Any, control: Any, **kwargs: Any) -> None:
        self.cache.close()
