"""Supervised contrastive fine-tuning of CLIP-style dual encoders."""

from __future__ import annotations

from typing import Any

import torch
from torch import nn

from .. import modeling
from ..data import ClipDataCollator
from ..losses import contrastive_loss
from .base import ClipTrainerBase
from .contrastive_config import ClipContrastiveConfig


class ClipContrastiveTrainer(ClipTrainerBase):
    r"""
    Fine-tune a CLIP-style dual encoder with a contrastive loss, as a [`~transformers.Trainer`].

    The loss is symmetric InfoNCE over the image–text similarity matrix (or the SigLIP sigmoid loss),
    where rows sharing a caption or an image count as positives. Under several processes the
    features are gathered with gradient, so negatives span the global batch.

    Args:
        model (`str` or `PreTrainedModel`):
            A hub id, a local folder, or an instantiated CLIP-like model.
        args ([`ClipContrastiveConfig`], *optional*):
            Training configuration; defaults to `ClipContrastiveConfig(output_dir="<model name>-contrastive")`.
        data_collator (*optional*): defaults to a [`~clip_trl.data.ClipDataCollator`].
        train_dataset / eval_dataset (`datasets.Dataset` or `IterableDataset`):
            Rows with an image column and a caption column (names in `args`).
        processing_class (*optional*): a CLIP processor; loaded from `model` when it is a string/path.
        peft_config (`peft.PeftConfig`, *optional*): wrap the model with these adapters (e.g. LoRA).

    Example:

    ```python
    >>> from clip_trl import ClipContrastiveConfig, ClipContrastiveTrainer
    >>> from clip_trl.offline import build_clip, load_emoji_dataset
    >>> data = load_emoji_dataset(max_examples=64)
    >>> model, processor = build_clip("tiny")
    >>> args = ClipContrastiveConfig(output_dir="/tmp/clip-emoji", max_steps=2, per_device_train_batch_size=8,
    ...                              report_to="none", save_strategy="no")
    >>> trainer = ClipContrastiveTrainer(model=model, args=args, train_dataset=data["train"],
    ...                                  eval_dataset=data["validation"], processing_class=processor)
    >>> _ = trainer.train()
    >>> sorted(trainer.evaluate())[:2]
    ['epoch', 'eval_image_to_text_recall@1']
    ```
    """

    _method_name = "contrastive"
    _config_class = ClipContrastiveConfig
    _tag_names = ["clip_trl", "contrastive"]

    args: ClipContrastiveConfig

    def _add_parameters(self, model: nn.Module, args: ClipContrastiveConfig) -> None:
        # The sigmoid loss needs a learnable bias. SigLIP models have one; for CLIP we register it on the
        # model so it is optimised, saved and resumed with the weights (CLIPModel ignores it when loading).
        if args.loss_type == "siglip" and modeling.logit_bias(model) is None:
            inner = modeling.unwrap(model)
            inner.register_parameter("logit_bias", nn.Parameter(torch.tensor(float(args.siglip_bias_init))))

    def _required_columns(self, args: ClipContrastiveConfig) -> dict[str, str | None]:
        return {**super()._required_columns(args), "negative_column": args.negative_column}

    def _make_collator(self, processing_class: Any, args: ClipContrastiveConfig) -> ClipDataCollator:
        collator = super()._make_collator(processing_class, args)
        collator.negative_column = args.negative_column
        return collator

    def compute_loss(
        self,
        model: nn.Module,
        inputs: dict[str, Any],
        return_outputs: bool = False,
        num_items_in_batch: Any = None,
    ) -> torch.Tensor | tuple[torch.Tensor, dict[str, torch.Tensor]]:
        self._pop_bookkeeping(inputs)
        if "pixel_values" not in inputs:  # every row of this batch was a skipped bad row
            loss = sum(p.sum() * 0.0 for p in model.parameters() if p.requires_grad)
            return (loss, {}) if return_outputs else loss
        # Captions first, then hard negatives (if any): one text forward, as DDP expects one per backward.
        num_captions = inputs["pixel_values"].shape[0]
        image_embeds, text_embeds = modeling.encode_pair(
            model, inputs["pixel_values"], inputs["input_ids"], inputs["attention_mask"]
        )
        scale = modeling.logit_scale(model)
        loss = contrastive_loss(
            image_embeds,
            text_embeds[:num_captions],
            scale,
            image_keys=inputs.get("image_keys"),
            caption_keys=inputs.get("caption_keys"),
            loss_type=self.args.loss_type,
            logit_bias=modeling.logit_bias(model),
            negative_text_embeds=text_embeds[num_captions:],
            negative_keys=inputs.get("negative_keys"),
        )
        if model.training:
            self._record(logit_scale=scale.detach().exp())
        outputs = {"image_embeds": image_embeds, "text_embeds": text_embeds[:num_captions]}
        return (loss, outputs) if return_outputs else loss

    def _eval_loss(self, model: nn.Module, embeddings: Any) -> float:
        batch = self.args.per_device_eval_batch_size
        image_embeds, positives = embeddings.image_embeds, embeddings.positives
        text_embeds = embeddings.text_embeds[embeddings.first_caption]
        scale = modeling.logit_scale(model).detach().float().cpu()
        bias = modeling.logit_bias(model)
        bias = None if bias is None else bias.detach().float().cpu()
        losses, weights = [], []
        for start in range(0, image_embeds.shape[0], batch):
            rows = slice(start, start + batch)
            # Rows i, j are positives of each other when row j's first caption is a caption of row i.
            chunk_positives = positives[rows][:, embeddings.first_caption[rows]]
            chunk_positives = chunk_positives | chunk_positives.T
            if self.args.loss_type == "siglip":
                from ..losses import siglip_loss

                loss = siglip_loss(image_embeds[rows], text_embeds[rows], scale, bias if bias is not None else 0.0,
                                   chunk_positives)
            else:
                from ..losses import clip_loss

                loss = clip_loss(image_embeds[rows], text_embeds[rows], scale, chunk_positives)
            losses.append(float(loss))
            weights.append(chunk_positives.shape[0])
        return sum(loss * n for loss, n in zip(losses, weights)) / max(sum(weights), 1)

