"""Batches and teachers for [`ClipDistillationTrainer`].

- [`ClipDistillationDataCollator`]: the RL collator's candidate sets ([`ClipRLDataCollator`]), with captions
  optional outside in-batch sets (an unlabelled row has none) and, for `contrastive_coef > 0`, each labelled row's
  caption among the batch's texts (`caption_index`, -1 for unlabelled rows).
- [`load_teachers`]: the teacher models, loaded if named, frozen, in eval mode, on the training device, each
  checked against the student's processor (teachers score the student's pixels and token ids).
"""

from __future__ import annotations

import os
from collections.abc import Mapping, Sequence
from typing import Any

import torch
from torch import nn

from clip_trl.data.rows import content_key, split_processor
from clip_trl.models import modeling
from clip_trl.trainer.rl_data import ClipRLDataCollator, _UniqueTexts


class ClipDistillationDataCollator(ClipRLDataCollator):
    """Collate rows into a distillation batch: the keys of [`ClipRLDataCollator`] (direction image to text), plus
    `caption_index` / `caption_keys` / `labelled` when `contrastive` is set."""

    def __init__(self, processing_class: Any, *, contrastive: bool = False, **kwargs: Any) -> None:
        super().__init__(processing_class, direction="image_to_text", include_captions=False, **kwargs)
        self.contrastive = contrastive
        # Unlabelled rows (caption None) are welcome unless the captions are the candidates.
        self.require_caption = self.candidates == "in_batch"

    def collate(
        self, parsed: list[dict[str, Any]], kept: list[Mapping[str, Any]], skipped: int
    ) -> dict[str, Any]:
        batch = super().collate(parsed, kept, skipped)
        if (
            not parsed or not self.contrastive or self.candidates == "retrieved"
        ):  # retrieved: the trainer adds them
            return batch
        # The batch's texts, in token order, from each query's candidates and their positions.
        texts = _UniqueTexts()
        items: dict[int, str] = {}
        for positions, names in zip(batch["candidate_index"].tolist(), batch["candidate_texts"]):
            for position, text in zip(positions, names):
                items[position] = text
        for position in sorted(items):
            texts.add(items[position])
        before = len(texts.items)
        index = [texts.add(p["caption"]) if p["caption"] is not None else -1 for p in parsed]
        if len(texts.items) > before:
            batch.update(self.tokenize(texts.items))
        batch["caption_index"] = torch.tensor(index)
        batch["caption_keys"] = torch.tensor(
            [content_key(p["caption"]) if p["caption"] is not None else 0 for p in parsed], dtype=torch.long
        )
        return batch


def _name_of(teacher: Any) -> str:
    if isinstance(teacher, (str, os.PathLike)):
        return os.fspath(teacher)
    name = getattr(getattr(teacher, "config", None), "_name_or_path", "") or ""
    return name or type(teacher).__name__


def _vocabulary(tokenizer: Any) -> dict[str, int] | None:
    try:
        return tokenizer.get_vocab()
    except (AttributeError, NotImplementedError):
        return None


_SIZE_KEYS = ("height", "width", "shortest_edge", "longest_edge")


def _size(value: Any) -> Any:
    """A processor's size setting (a dict, or transformers' `SizeDict`) as a plain dict of its set keys."""
    if isinstance(value, Mapping):
        return {k: v for k, v in value.items() if v is not None}
    if any(hasattr(value, key) for key in _SIZE_KEYS):
        return {k: getattr(value, k) for k in _SIZE_KEYS if getattr(value, k, None) is not None}
    return value


def _pixel_settings(image_processor: Any) -> dict[str, Any]:
    settings = {}
    for name in (
        "size",
        "crop_size",
        "image_mean",
        "image_std",
        "do_center_crop",
        "do_normalize",
        "rescale_factor",
    ):
        value = getattr(image_processor, name, None)
        if value is not None:
            settings[name] = _size(value) if name.endswith("size") else value
            if isinstance(settings[name], tuple):
                settings[name] = list(settings[name])
    return settings


def check_teacher(teacher: nn.Module, processor: Any, where: str, teacher_processor: Any = None) -> None:
    """Raise when `teacher` cannot read the student's batches: teachers embed the student's pixels and token ids,
    so their tokenizer and image preprocessing must be the student's."""
    image_processor, tokenizer = split_processor(processor)
    text_config = getattr(getattr(teacher, "config", None), "text_config", None)
    vocab_size = getattr(text_config, "vocab_size", None)
    if vocab_size is not None and len(tokenizer) > vocab_size:
        raise ValueError(
            f"{where}: its text tower has a vocabulary of {vocab_size} tokens, but the student's tokenizer has "
            f"{len(tokenizer)}. Teachers read the student's token ids, so they must share its tokenizer; use a "
            "teacher of the same model family (e.g. another CLIP with the OpenAI BPE)."
        )
    vision_config = getattr(getattr(teacher, "config", None), "vision_config", None)
    teacher_size = getattr(vision_config, "image_size", None)
    crop = _size(getattr(image_processor, "crop_size", None) or getattr(image_processor, "size", None))
    student_size = None
    if isinstance(crop, Mapping):
        student_size = crop.get("height") or crop.get("shortest_edge")
    elif isinstance(crop, int):
        student_size = crop
    if teacher_size is not None and student_size is not None and teacher_size != student_size:
        raise ValueError(
            f"{where}: it takes {teacher_size}x{teacher_size} images, but the student's processor makes "
            f"{student_size}x{student_size} pixels. Teachers read the student's pixels, so their input "
            "resolution must match; pick a teacher with the student's image size."
        )
    if teacher_processor is None:
        return
    teacher_images, teacher_tokenizer = split_processor(teacher_processor)
    mine, theirs = _vocabulary(tokenizer), _vocabulary(teacher_tokenizer)
    if mine is not None and theirs is not None and mine != theirs:
        raise ValueError(
            f"{where}: its tokenizer does not match the student's ({len(theirs)} vs {len(mine)} tokens, or the "
            "same size with different ids). Teachers read the student's token ids, so they must share its "
            "tokenizer; use a teacher of the same model family."
        )
    ours, other = _pixel_settings(image_processor), _pixel_settings(teacher_images)
    differing = sorted(name for name in ours.keys() & other.keys() if ours[name] != other[name])
    if differing:
        details = ", ".join(f"{name} {other[name]} vs {ours[name]}" for name in differing)
        raise ValueError(
            f"{where}: its image processor differs from the student's ({details}; teacher vs student). Teachers "
            "read the student's pixels, so their preprocessing must match; pick a teacher with the same "
            "preprocessing."
        )


def load_teachers(
    teacher_model: Any,
    processor: Any,
    device: torch.device,
    init_kwargs: dict[str, Any] | None = None,
) -> tuple[list[nn.Module], list[str]]:
    """The teachers (`teacher_model`: a model, a Hub id or folder, or a list of them), frozen (`eval()`,
    `requires_grad_(False)`) on `device`, and their names for the model card."""
    items = list(teacher_model) if isinstance(teacher_model, (list, tuple)) else [teacher_model]
    if not items or any(item is None for item in items):
        raise ValueError(
            "ClipDistillationTrainer needs a teacher: pass `teacher_model=` (a model, a Hub id or a folder, or a "
            "list of them) or set `teacher_model_name_or_path` in ClipDistillationConfig."
        )
    teachers, names = [], []
    for index, item in enumerate(items):
        name = _name_of(item)
        where = f"Teacher {index} ({name})"
        teacher_processor = None
        if isinstance(item, (str, os.PathLike)):
            from transformers import AutoProcessor

            model = modeling.load_pretrained(os.fspath(item), **(init_kwargs or {}))
            try:
                teacher_processor = AutoProcessor.from_pretrained(os.fspath(item))
            except (OSError, ValueError):
                teacher_processor = None  # no processor saved: the model's config is checked alone
        else:
            model = item
        modeling.check_clip_like(model)
        check_teacher(model, processor, where, teacher_processor)
        teachers.append(model.eval().requires_grad_(False).to(device))
        names.append(name)
    return teachers, names


def labelled_rows(caption_index: torch.Tensor | None) -> torch.Tensor | None:
    """The rows that have a caption (`caption_index >= 0`), or `None` when the batch carries no captions."""
    return None if caption_index is None else caption_index >= 0


def distinct_pool_texts(values: Sequence[Any]) -> list[str]:
    """A column's distinct captions (first-appearance order), skipping the missing ones of unlabelled rows."""
    texts: dict[str, None] = {}
    for value in values:
        for item in value if isinstance(value, (list, tuple)) else [value]:
            if item is not None:
                texts.setdefault(item)
    return list(texts)
