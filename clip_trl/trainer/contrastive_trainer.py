"""Supervised contrastive fine-tuning of CLIP-style dual encoders."""

from __future__ import annotations

import functools
from typing import Any

import torch
from accelerate.utils import DistributedType
from torch import nn

from clip_trl.data.collator import ClipDataCollator
from clip_trl.losses.contrastive import clip_loss, contrastive_loss, siglip_loss
from clip_trl.losses.gradcache import cached_backward, split_into_chunks
from clip_trl.models import modeling
from clip_trl.trainer.base import ClipBaseTrainer
from clip_trl.trainer.contrastive_config import ClipContrastiveConfig


class ClipContrastiveTrainer(ClipBaseTrainer):
    r"""
    Fine-tune a CLIP-style dual encoder with a contrastive loss, as a [`~transformers.Trainer`].

    The loss is symmetric InfoNCE over the image–text similarity matrix (or the SigLIP sigmoid loss),
    where rows sharing a caption or an image count as positives. Under several processes the
    features are gathered with gradient, so negatives span the global batch.
    With `args.contrastive_chunk_size`, batches larger than that are encoded in chunks with cached
    embeddings (GradCache): the same loss and gradients as the whole batch, at one chunk's activation memory.

    Args:
        model (`str` or `PreTrainedModel`):
            A hub id, a local folder, or an instantiated CLIP-like model.
        args ([`ClipContrastiveConfig`], *optional*):
            Training configuration; defaults to `ClipContrastiveConfig(output_dir="<model name>-contrastive")`.
        data_collator (*optional*): defaults to a [`~clip_trl.data.collator.ClipDataCollator`].
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
    >>> before = {name: weight.clone() for name, weight in model.state_dict().items()}
    >>> _ = trainer.train()
    >>> sorted(name for name, weight in model.state_dict().items() if weight.equal(before[name]))  # all trained
    []
    >>> metrics = trainer.evaluate()
    >>> 0.0 <= metrics["eval_image_to_text_recall@1"] <= 1.0
    True

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

    def _uses_logit_bias(self) -> bool:
        return self.args.loss_type == "siglip"

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
            loss = self._zero_loss(model)
            return (loss, {}) if return_outputs else loss
        # Captions first, then hard negatives (if any): one text forward, as DDP expects one per backward.
        num_captions = inputs["pixel_values"].shape[0]
        image_embeds, text_embeds = modeling.encode_batch(model, inputs, self._embedding_cache)
        loss = self._loss_from_embeddings(model, inputs, image_embeds, text_embeds)
        if model.training:
            self._record(logit_scale=modeling.logit_scale(model).detach().exp())
        outputs = {"image_embeds": image_embeds, "text_embeds": text_embeds[:num_captions]}
        return (loss, outputs) if return_outputs else loss

    def _loss_from_embeddings(
        self, model: nn.Module, inputs: dict[str, Any], image_embeds: torch.Tensor, text_embeds: torch.Tensor
    ) -> torch.Tensor:
        """The batch's loss from its normalised embeddings: `text_embeds` holds the B captions, then the hard
        negatives. Shared by the ordinary step and the chunked one, so both compute the same function."""
        num_captions = image_embeds.shape[0]
        return contrastive_loss(
            image_embeds,
            text_embeds[:num_captions],
            modeling.logit_scale(model),
            image_keys=inputs.get("image_keys"),
            caption_keys=inputs.get("caption_keys"),
            loss_type=self.args.loss_type,
            logit_bias=modeling.logit_bias(model),
            negative_text_embeds=text_embeds[num_captions:],
            negative_keys=inputs.get("negative_keys"),
        )

    def training_step(
        self, model: nn.Module, inputs: dict[str, Any], num_items_in_batch: Any = None
    ) -> torch.Tensor:
        r"""
        One micro-batch: forward, loss and backward. With `contrastive_chunk_size` set and a per-device batch
        larger than it, the batch is encoded in chunks with cached features (see [`clip_trl.losses.gradcache`]); the
        loss and the gradients are the same as the ordinary step's.

        Returns:
            `torch.Tensor`: the detached loss divided by the number of accumulated micro-batches, as
            [`~transformers.Trainer.training_step`] returns it (the training loop sums these for logging).
        """
        chunk_size = self.args.contrastive_chunk_size
        if (
            chunk_size is None
            or "pixel_values" not in inputs
            or inputs["pixel_values"].shape[0] <= chunk_size
        ):
            return super().training_step(model, inputs, num_items_in_batch)
        return self._chunked_training_step(model, inputs, chunk_size)

    def _chunked_training_step(
        self, model: nn.Module, inputs: dict[str, Any], chunk_size: int
    ) -> torch.Tensor:
        if self.accelerator.distributed_type == DistributedType.DEEPSPEED:
            raise ValueError(
                "`contrastive_chunk_size` does not work with DeepSpeed; use DDP or FSDP instead."
            )
        model.train()
        if hasattr(self.optimizer, "train") and callable(self.optimizer.train):
            self.optimizer.train()
        inputs = self._prepare_inputs(inputs)
        self._pop_bookkeeping(inputs)
        # As `Trainer.training_step`: our loss is a batch mean, so each micro-batch's share of an accumulated
        # step is 1 / (number of micro-batches in it). Outside `train()` the attribute is not set yet.
        accumulation = getattr(
            self, "current_gradient_accumulation_steps", self.args.gradient_accumulation_steps
        )
        scale = modeling.logit_scale(model)

        def encode(chunk: dict[str, Any]) -> tuple[torch.Tensor, torch.Tensor]:
            # Through the (wrapped) model's forward, so that DDP sees each re-forward it must reduce.
            return modeling.encode_batch(model, chunk)

        def loss_fn(image_embeds: torch.Tensor, text_embeds: torch.Tensor) -> torch.Tensor:
            return self._loss_from_embeddings(model, inputs, image_embeds, text_embeds) / accumulation

        output = cached_backward(
            encode,
            split_into_chunks(inputs, chunk_size),
            loss_fn,
            parameters=modeling.temperature_parameters(model),
            backward=self.accelerator.backward,
            no_sync=functools.partial(self.accelerator.no_sync, model),
            forward_context=self.compute_loss_context_manager,
        )
        self._record(logit_scale=scale.detach().exp())
        self._reduce_gradients_outside_ddp(model)
        return output.loss

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
                loss = siglip_loss(
                    image_embeds[rows],
                    text_embeds[rows],
                    scale,
                    bias if bias is not None else 0.0,
                    chunk_positives,
                )
            else:
                loss = clip_loss(image_embeds[rows], text_embeds[rows], scale, chunk_positives)
            losses.append(float(loss))
            weights.append(chunk_positives.shape[0])
        return sum(loss * n for loss, n in zip(losses, weights)) / max(sum(weights), 1)
