"""Configuration of [`ClipContrastiveTrainer`]."""

from __future__ import annotations

from dataclasses import dataclass, field

from .base_config import ClipBaseConfig

LOSS_TYPES = ("clip", "siglip")


@dataclass
class ClipContrastiveConfig(ClipBaseConfig):
    r"""
    Configuration for [`ClipContrastiveTrainer`]: supervised contrastive fine-tuning of a dual encoder.

    Every [`~transformers.TrainingArguments`] field and the shared fields of [`ClipBaseConfig`]
    (columns, tower freezing, logit-scale clamp, evaluation) apply; these are specific to the method.

    Parameters:
        loss_type (`str`, defaults to `"clip"`):
            `"clip"`: symmetric InfoNCE, `(CE(S) + CE(Sᵀ)) / 2`. `"siglip"`: the pairwise sigmoid loss. In both,
            rows that share a caption or an image are positives of each other, never negatives.
        siglip_bias_init (`float`, defaults to `-10.0`):
            Initial value of the learnable bias of the sigmoid loss, for models without a `logit_bias`
            (the SigLIP paper's initialisation).
        negative_column (`str` or `None`, defaults to `None`):
            Column of hard-negative captions (a string or a list of strings per row), added as extra
            image-to-text negatives.

    Example:

    ```python
    >>> from clip_trl import ClipContrastiveConfig
    >>> args = ClipContrastiveConfig(output_dir="clip-coco", per_device_train_batch_size=64, loss_type="clip")
    >>> args.learning_rate
    1e-05
    ```
    """

    loss_type: str = field(
        default="clip", metadata={"help": "Contrastive loss.", "choices": list(LOSS_TYPES)}
    )
    siglip_bias_init: float = field(
        default=-10.0, metadata={"help": "Initial sigmoid-loss bias for models that have no logit_bias."}
    )
    negative_column: str | None = field(
        default=None, metadata={"help": "Column of hard-negative captions (string or list per row)."}
    )

    def __post_init__(self) -> None:
        super().__post_init__()
        if self.loss_type not in LOSS_TYPES:
            raise ValueError(f"`loss_type` must be one of {LOSS_TYPES}, got {self.loss_type!r}.")
