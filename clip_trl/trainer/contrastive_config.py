"""Configuration of [`ClipContrastiveTrainer`]."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, ClassVar

from clip_trl.trainer.base_config import ClipBaseConfig

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
            image-to-text negatives of every image in the batch: extra softmax entries with `loss_type="clip"`,
            extra negative pairs with `"siglip"`. Under several processes they are gathered like the captions
            (ranks may hold different numbers of them).
        contrastive_chunk_size (`int` or `None`, defaults to `None`):
            Compute the loss of each per-device batch exactly, but encode it in chunks of at most this many
            images (GradCache, Gao et al. 2021): a no-grad pass caches the embeddings, the full-batch loss gives
            their gradients, and each chunk is encoded again with autograd to backpropagate them. Loss and
            gradients equal the unchunked batch's, while activation memory is that of one chunk, for about one
            extra forward pass. Combines with gradient accumulation, gradient checkpointing, hard negatives,
            both loss types and several processes (not with DeepSpeed). `None`: no chunking; a batch that fits
            in one chunk is trained as usual.

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
    contrastive_chunk_size: int | None = field(
        default=None,
        metadata={
            "help": "Encode each batch in chunks of at most this many images, with the exact full-batch loss and "
            "gradients (GradCache): big batches at a chunk's activation memory. Default: no chunking."
        },
    )

    _card_fields: ClassVar[tuple[str, ...]] = (
        "loss_type",
        "siglip_bias_init",
        "negative_column",
        "contrastive_chunk_size",
    )

    def _card_shows(self, name: str, value: Any) -> bool:
        if name == "siglip_bias_init" and self.loss_type != "siglip":
            return False
        return super()._card_shows(name, value)

    def model_card_description(self, adapter: bool = False) -> str:
        loss = (
            "pairwise sigmoid loss (SigLIP)"
            if self.loss_type == "siglip"
            else "symmetric InfoNCE loss (CLIP)"
        )
        return (
            f"Supervised contrastive fine-tuning: for each batch of image–caption pairs, the {loss} over the "
            "image–text similarity matrix `S = exp(logit_scale) · norm(f_img) · norm(f_txt)ᵀ`; rows sharing a "
            "caption or an image count as positives."
        )

    def model_card_citations(self) -> list[str]:
        return ["siglip"] if self.loss_type == "siglip" else []

    def __post_init__(self) -> None:
        super().__post_init__()
        if self.loss_type not in LOSS_TYPES:
            raise ValueError(f"`loss_type` must be one of {LOSS_TYPES}, got {self.loss_type!r}.")
        chunk_size = self.contrastive_chunk_size
        if chunk_size is not None:
            if isinstance(chunk_size, bool) or not isinstance(chunk_size, int) or chunk_size < 1:
                raise ValueError(
                    f"`contrastive_chunk_size` must be a positive integer or None, got {chunk_size!r}."
                )
            if self.deepspeed:
                # DeepSpeed's engine counts one backward per micro-batch and reduces gradients in it; the chunked
                # step runs one backward per chunk.
                raise ValueError(
                    "`contrastive_chunk_size` does not work with DeepSpeed; use DDP or FSDP instead."
                )
