"""Fields shared by every clip_trl config: columns, towers, evaluation, model loading."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, ClassVar

from transformers import TrainingArguments

# Settings every model card shows (when set and "on"); each config appends its method's own `_card_fields`.
_SHARED_CARD_FIELDS = (
    "learning_rate",
    "per_device_train_batch_size",
    "gradient_accumulation_steps",
    "num_train_epochs",
    "max_steps",
    "lr_scheduler_type",
    "warmup_steps",
    "weight_decay",
    "max_grad_norm",
    "seed",
    "bf16",
    "fp16",
    "freeze_vision",
    "freeze_text",
    "max_logit_scale",
    "logit_scale_learning_rate",
)


@dataclass
class ClipBaseConfig(TrainingArguments):
    r"""
    Configuration shared by [`ClipContrastiveConfig`], [`ClipRLConfig`] and [`ClipDPOConfig`].

    Only the fields specific to CLIP training are listed here; every [`~transformers.TrainingArguments`]
    field works as usual. Defaults that differ from `TrainingArguments`: `logging_steps=10`,
    `learning_rate=1e-5`, `remove_unused_columns=False` (extra columns reach reward functions), and
    `per_device_eval_batch_size=None`, which means `per_device_train_batch_size`: a contrastive loss depends on
    the batch size (more negatives, a higher loss), so the `eval_loss` is computed over batches of the training
    size and its curve is comparable with the training loss. Set it to evaluate in other batches (the retrieval
    metrics do not depend on it; the `eval_loss` does). The value is resolved when the config is created:
    `dataclasses.replace(args, per_device_train_batch_size=...)` keeps the resolved eval batch size.

    Types: every `int`, `float` and `bool` field (of this class and its subclasses) is checked first, naming the
    field and the type it wants (`TypeError`). Strings are read as the command line reads them (`"1e-4"`,
    `"8"`, `"true"`) and stored converted, so a dict loaded from YAML (PyYAML reads `1e-4` as a string) can be
    passed as keyword arguments. See [`clip_trl.trainer.config_types`].

    Parameters:
        image_column (`str`, defaults to `"image"`):
            Column holding images: `datasets.Image` / PIL images, file paths, or bytes.
        caption_column (`str`, defaults to `"caption"`):
            Column holding captions: a string, or a list of strings per image (COCO style; one is sampled
            per training step and all count as positives in evaluation).
        skip_bad_rows (`bool`, defaults to `False`):
            Skip rows whose image cannot be decoded or whose caption is missing/empty (counted and logged as
            `skipped_rows`) instead of raising an error naming the row. It is for a few bad rows: a batch that
            loses every row, or more than half of the rows read (from the 64th on), stops training with an
            error listing the first bad rows.
        max_length (`int` or `None`, defaults to `None`):
            Token limit for captions; `None` uses the tokenizer's `model_max_length` (77 for CLIP).
        freeze_vision (`bool`, defaults to `False`):
            Freeze the vision tower (encoder and projection).
        freeze_text (`bool`, defaults to `False`):
            Freeze the text tower (encoder and projection).
        max_logit_scale (`float` or `None`, defaults to `None`):
            After each optimizer step `exp(logit_scale)` is clamped to this value, as in CLIP and open_clip. `None`
            uses the model family's own bound: 100 for CLIP-style models (CLIP's practice, or the config's
            `max_logit_scale`), none for SigLIP and ALIGN-style models (SigLIP checkpoints sit near 112). The
            loaded model's value is never changed before training.
        logit_scale_learning_rate (`float` or `None`, defaults to `None`):
            Learning rate of `logit_scale` (and `logit_bias`), which never get weight decay; `None` uses
            `learning_rate`, `0.0` keeps the temperature fixed (useful in RL, where a policy can otherwise make
            itself confident by raising the logit scale instead of improving the embeddings).
        model_init_kwargs (`dict` or `None`, defaults to `None`):
            Keyword arguments for `AutoModel.from_pretrained` when `model` is a string (e.g. `{"dtype": "bfloat16"}`).
        eval_ks (`list[int]`, defaults to `[1, 5, 10]`):
            The k of the `image_to_text_recall@k` / `text_to_image_recall@k` evaluation metrics.
        eval_in_batch_size (`int`, defaults to `32`):
            Batch size of the `in_batch_accuracy` metric (the original project's test accuracy).
        candidate_labels (`list[str]` or `None`, defaults to `None`):
            Class names; when set, evaluation also reports `zero_shot_accuracy` from `label_column`.
        label_template (`str`, defaults to `"a photo of a {}."`):
            Prompt template that turns a label name into a caption.
        label_column (`str`, defaults to `"label"`):
            Column with each row's true label (a label name or an index into `candidate_labels`).
        max_nonfinite_steps (`int`, defaults to `5`):
            An optimizer step whose gradients are not all finite is skipped (logged as
            `nonfinite_steps_skipped`); this many skipped steps in a row stop training with an error.
        image_processing (`str`, defaults to `"fast"`):
            `"fast"`: clip_trl's resize / center-crop / normalise
            ([`~clip_trl.data.image_processing.FastImageTransform`]), bitwise equal to the model's image processor and
            faster; it falls back to the processor by itself for processors it does not implement. `"draft"`: the
            same, but JPEGs are decoded reduced (JPEG draft mode) to about the resize's size first — much faster on
            large photos, not bitwise equal (see the performance docs). `"processor"`: always call the model's
            image processor.
        cache_frozen_embeddings (`str` or `bool`, defaults to `"auto"`):
            Compute a frozen tower's embeddings once and reuse them (`freeze_vision`: each image's, the LiT
            recipe; `freeze_text`: each caption's, label prompt's or candidate's), for the contrastive, RL and
            distillation trainers. `"auto"`: on for every frozen tower where that gives exactly the uncached
            values: the tower has no LoRA layers and no active dropout, and the image transform is clip_trl's own
            (deterministic: no random augmentation); entries are dropped when the tower changes (unfrozen, other
            dtype/device/weights, another transform). `True`: the same, and a custom image transform is trusted
            to be deterministic. `False`: off. Logged as `cache/vision_hit_rate` and `cache/text_hit_rate`.
        cache_frozen_embeddings_memory_mb (`float`, defaults to `1024`):
            CPU memory per process and tower for cached embeddings; rows beyond it are written to memory-mapped
            files under `output_dir/embedding_cache/` (deleted at the end of training).

    Speed options inherited from `TrainingArguments`, with the defaults clip_trl gives them:

    - Attention: transformers gives CLIP PyTorch's scaled-dot-product attention (`"sdpa"`) by default. To pick
      another kernel, pass `model_init_kwargs={"attn_implementation": "flash_attention_2"}` (with a model id;
      `--attn_implementation` of trl's `ModelConfig` in the scripts) or call `model.set_attn_implementation()`.
    - `bf16` defaults to `None`, meaning: on when a CUDA device that supports bfloat16 is present (autocast;
      the weights and the optimizer stay float32), off otherwise. Set it to `False` to train in float32.
    - `optim` is transformers' default, `"adamw_torch_fused"` (one fused kernel per step).
    - `torch_compile=True` compiles the model (`torch_compile_mode`, `torch_compile_backend` as usual).
    - `activation_checkpointing=True` (transformers' new name for `gradient_checkpointing`) re-computes
      activations in the backward pass: less memory, about a third more compute.
    """

    image_column: str = field(
        default="image", metadata={"help": "Column holding images (PIL, path or bytes)."}
    )
    caption_column: str = field(
        default="caption", metadata={"help": "Column holding a caption, or a list of captions, per image."}
    )
    skip_bad_rows: bool = field(
        default=False,
        metadata={
            "help": "Skip undecodable images / empty captions (counted and logged) instead of raising."
        },
    )
    max_length: int | None = field(
        default=None, metadata={"help": "Caption token limit; default: the tokenizer's model_max_length."}
    )
    freeze_vision: bool = field(
        default=False, metadata={"help": "Freeze the vision tower and its projection."}
    )
    freeze_text: bool = field(default=False, metadata={"help": "Freeze the text tower and its projection."})
    max_logit_scale: float | None = field(
        default=None,
        metadata={
            "help": "Clamp exp(logit_scale) to this value after each step; default: the model family's "
            "bound (100 for CLIP, none for SigLIP)."
        },
    )
    logit_scale_learning_rate: float | None = field(
        default=None, metadata={"help": "Learning rate for logit_scale/logit_bias; default: learning_rate."}
    )
    model_init_kwargs: dict[str, Any] | str | None = field(
        default=None,
        metadata={"help": "Keyword arguments for AutoModel.from_pretrained when `model` is a string."},
    )
    eval_ks: list[int] = field(
        default_factory=lambda: [1, 5, 10], metadata={"help": "k values for recall@k evaluation metrics."}
    )
    eval_in_batch_size: int = field(
        default=32, metadata={"help": "Batch size of the in_batch_accuracy evaluation metric."}
    )
    candidate_labels: list[str] | None = field(
        default=None, metadata={"help": "Class names for zero-shot evaluation (and RL candidate sets)."}
    )
    label_template: str = field(
        default="a photo of a {}.", metadata={"help": "Template turning a label name into a caption."}
    )
    label_column: str = field(default="label", metadata={"help": "Column holding each row's true label."})
    max_nonfinite_steps: int = field(
        default=5,
        metadata={
            "help": "Steps with a non-finite loss/gradient are skipped; this many in a row stop training."
        },
    )

    image_processing: str = field(
        default="fast",
        metadata={
            "help": "Image preprocessing: 'fast' (bitwise equal to the model's processor, faster), 'draft' (fast "
            "plus reduced JPEG decoding: faster on large photos, not bitwise equal) or 'processor'.",
            "choices": ["fast", "processor", "draft"],
        },
    )
    cache_frozen_embeddings: str = field(
        default="auto",
        metadata={
            "help": "Compute a frozen tower's embeddings once and reuse them: 'auto' (where exact: no LoRA or "
            "dropout in the tower, a deterministic image transform), 'true' (also trust a custom image transform) "
            "or 'false'.",
        },
    )
    cache_frozen_embeddings_memory_mb: float = field(
        default=1024.0,
        metadata={
            "help": "CPU memory (MB) per process and tower for cached embeddings; beyond it rows spill to files "
            "under output_dir/embedding_cache/."
        },
    )

    # Defaults that differ from TrainingArguments.
    bf16: bool | None = field(
        default=None,
        metadata={
            "help": "bfloat16 autocast; default: on when a CUDA device supports bfloat16, else off.",
            "nargs": "?",  # `--bf16` alone means true, as for the other boolean flags
            "const": True,
        },
    )
    learning_rate: float = field(default=1e-5, metadata={"help": "The initial learning rate for AdamW."})
    per_device_eval_batch_size: int | None = field(
        default=None,
        metadata={
            "help": "Batch size per device for evaluation; default: per_device_train_batch_size, so that the "
            "eval loss (which depends on the batch size for contrastive losses) is comparable with the training loss."
        },
    )
    logging_steps: float = field(default=10, metadata={"help": "Log every X update steps (or ratio if < 1)."})
    remove_unused_columns: bool = field(
        default=False,
        metadata={"help": "Keep False: the collator (and reward functions) read columns by name."},
    )

    # The method's settings worth a line in the model card, after the shared ones (not dataclass fields).
    _card_fields: ClassVar[tuple[str, ...]] = ()

    # ------------------------------------------------------------------------------------ model card
    # What the model card says about the method comes from here, so that a new trainer (with its own config)
    # needs no change in `clip_trl/hub/model_card.py`.

    def model_card_fields(self) -> list[str]:
        r"""
        Names of the settings the model card's table shows: the shared ones, then the method's, skipping unset
        or switched-off values and those the chosen options ignore (`_card_shows`).

        Example:

        ```python
        >>> from clip_trl import ClipContrastiveConfig
        >>> fields = ClipContrastiveConfig(output_dir="out", max_steps=10, loss_type="siglip").model_card_fields()
        >>> "siglip_bias_init" in fields, "num_train_epochs" in fields
        (True, False)

        ```
        """
        return [
            name
            for name in (*_SHARED_CARD_FIELDS, *self._card_fields)
            if hasattr(self, name) and self._card_shows(name, getattr(self, name))
        ]

    def _card_shows(self, name: str, value: Any) -> bool:
        """Whether a setting is worth a line; subclasses add their method's rules and call this."""
        if value is None or value is False or (isinstance(value, (list, tuple, str)) and not value):
            return False
        if name in ("warmup_steps", "weight_decay") and value == 0:
            return False
        if name == "gradient_accumulation_steps" and value == 1:
            return False
        if name == "max_steps" and value <= 0:
            return False
        return not (name == "num_train_epochs" and self.max_steps > 0)  # max_steps wins over epochs

    def model_card_description(self, adapter: bool = False) -> str:
        """One paragraph for the model card: what the method optimises (`adapter`: only LoRA adapters train)."""
        return "Fine-tuning of a CLIP-style dual encoder."

    def model_card_citations(self) -> list[str]:
        """Keys in [`clip_trl.hub.citations.BIBTEX`] of the works the method rests on (CLIP and LoRA are added by
        the card), or whole BibTeX entries."""
        return []

    def __post_init__(self) -> None:
        # First: a wrong type would otherwise fail deep inside TrainingArguments with a bare TypeError.
        from clip_trl.trainer.config_types import check_field_types

        check_field_types(self)
        if self.per_device_eval_batch_size is None:
            # The contrastive loss depends on the batch size: an eval loss over batches of another size would
            # not be comparable with the training loss on the same plot.
            self.per_device_eval_batch_size = self.per_device_train_batch_size
        if self.accelerator_config is None:
            # Batches carry Python lists (candidates, rows for rewards); accelerate's dispatching of
            # IterableDataset batches from the main process can only concatenate tensors.
            self.accelerator_config = {"dispatch_batches": False}
        if self.bf16 is None:
            # Safe where it is fast: bf16 autocast keeps float32 master weights; on CPU it is slower, so off.
            self.bf16 = not self.fp16 and _cuda_supports_bf16()
        from clip_trl.data.image_processing import check_image_processing_mode

        check_image_processing_mode(self.image_processing)
        from clip_trl.trainer.embedding_cache import check_cache_mode

        self.cache_frozen_embeddings = check_cache_mode(self.cache_frozen_embeddings)
        if self.cache_frozen_embeddings_memory_mb < 0:
            raise ValueError(
                "`cache_frozen_embeddings_memory_mb` must be 0 or more (0: every cached row goes to disk), got "
                f"{self.cache_frozen_embeddings_memory_mb}."
            )
        super().__post_init__()
        from clip_trl.trainer.launch_check import pin_memory_useful

        # Pinning helps copies to an accelerator only; without one the DataLoader warns at every epoch.
        self.dataloader_pin_memory = self.dataloader_pin_memory and pin_memory_useful(self.use_cpu)
        if isinstance(self.model_init_kwargs, str):  # from the command line: a JSON string
            import json

            self.model_init_kwargs = json.loads(self.model_init_kwargs)
        if self.max_logit_scale is not None and self.max_logit_scale <= 0:
            raise ValueError(f"`max_logit_scale` must be positive, got {self.max_logit_scale}.")
        if not self.eval_ks or any(k < 1 for k in self.eval_ks):
            raise ValueError(f"`eval_ks` must be positive integers, got {self.eval_ks}.")
        if self.eval_in_batch_size < 2:
            raise ValueError(f"`eval_in_batch_size` must be at least 2, got {self.eval_in_batch_size}.")


def _cuda_supports_bf16() -> bool:
    import torch

    return torch.cuda.is_available() and torch.cuda.is_bf16_supported()
