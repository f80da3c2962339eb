"""Preference optimization (DPO / IPO) of CLIP-style dual encoders."""

from __future__ import annotations

from typing import Any

import torch
from torch import nn
from transformers import PreTrainedModel

from clip_trl.data.collator import with_row_index
from clip_trl.losses.policy import policy_log_probs
from clip_trl.losses.preference import preference_loss
from clip_trl.models import modeling
from clip_trl.trainer.base import ClipBaseTrainer
from clip_trl.trainer.dpo_config import ClipDPOConfig
from clip_trl.trainer.dpo_data import ClipDPODataCollator


class ClipDPOTrainer(ClipBaseTrainer):
    r"""
    Fine-tune a CLIP-style dual encoder on preference data `(image, chosen caption, rejected caption)` with the
    DPO or IPO loss, as a [`~transformers.Trainer`] (Afzali et al., ICLR 2025, apply these objectives to CLIP).

    The model is a one-step policy over captions: for an image `x`, `π(c|x) = softmax_c(s(x, c))` with `s` the
    CLIP logit, over the row's **candidate set: its chosen caption and its rejected caption(s), nothing else**.
    In-batch captions are deliberately not added: the loss depends on `log π(chosen) − log π(rejected)`, in
    which the softmax normaliser cancels, so extra candidates would change only the logged `logps/*`, never the
    loss or its gradient, while costing text forwards; and another row's caption is not known to be worse for
    this image (it may even be a correct description), so it is no preference signal. Use
    [`ClipContrastiveTrainer`] (or a list of rejected captions) to push against many captions at once.

    The reference `π_ref` is the frozen starting model: a copy of it, or, with `peft_config`, the same model
    with its adapters disabled (no second copy of the weights), as in [`ClipRLTrainer`].

    Logged every `logging_steps` (and by `evaluate()`, prefixed `eval_`), with TRL's names: `rewards/chosen`,
    `rewards/rejected`, `rewards/accuracies`, `rewards/margins`, `logps/chosen`, `logps/rejected`. `evaluate()`
    also returns the retrieval metrics of the shared trainer, with the chosen captions as positives, and the
    preference `loss`.

    Args:
        model (`str` or `PreTrainedModel`): a hub id, a local folder (e.g. a contrastive checkpoint) or a model.
        args ([`ClipDPOConfig`], *optional*): training configuration.
        train_dataset / eval_dataset: rows with an image column, a chosen caption and a rejected caption (or a
            list of rejected captions); column names in `args`. `eval_dataset` may be a dict of named sets.
        processing_class (*optional*): a CLIP processor; loaded from `model` when it is a string/path.
        peft_config (`peft.PeftConfig`, *optional*): train adapters only.

    Example:

    ```python
    >>> import datasets
    >>> from clip_trl import ClipDPOConfig, ClipDPOTrainer
    >>> from clip_trl.offline import build_clip, load_emoji_dataset
    >>> emoji = load_emoji_dataset(max_examples=32)["train"]
    >>> captions = emoji["caption"]
    >>> pairs = emoji.map(lambda row, i: {"chosen": row["caption"], "rejected": captions[(i + 1) % len(captions)]},
    ...                   with_indices=True)
    >>> model, processor = build_clip("tiny")
    >>> args = ClipDPOConfig(output_dir="/tmp/clip-dpo", max_steps=2, per_device_train_batch_size=8,
    ...                      report_to="none", save_strategy="no")
    >>> trainer = ClipDPOTrainer(model=model, args=args, train_dataset=pairs, processing_class=processor)
    >>> metrics = trainer.evaluate(pairs)  # before `trainer.train()`, the policy is its reference: log 2, no margin
    >>> round(metrics["eval_loss"], 4), metrics["eval_rewards/margins"]
    (0.6931, 0.0)

    ```
    """

    _method_name = "dpo"
    _config_class = ClipDPOConfig
    _tag_names = ["clip_trl", "dpo"]

    args: ClipDPOConfig

    def __init__(
        self,
        model: str | PreTrainedModel | nn.Module,
        args: ClipDPOConfig | None = None,
        train_dataset: Any = None,
        eval_dataset: Any = None,
        processing_class: Any = None,
        peft_config: Any = None,
        **kwargs: Any,
    ) -> None:
        super().__init__(
            model=model,
            args=args,
            train_dataset=train_dataset,
            eval_dataset=eval_dataset,
            processing_class=processing_class,
            peft_config=peft_config,
            **kwargs,
        )
        self._create_reference_model()

    def _required_columns(self, args: ClipDPOConfig) -> dict[str, str | None]:
        return {
            "image_column": args.image_column,
            "chosen_column": args.chosen_column,
            "rejected_column": args.rejected_column,
        }

    def _make_collator(self, processing_class: Any, args: ClipDPOConfig) -> ClipDPODataCollator:
        return ClipDPODataCollator(
            processing_class,
            rejected_column=args.rejected_column,
            **self._collator_kwargs(processing_class, args),
        )

    # --------------------------------------------------------------------------------------------- loss

    @staticmethod
    def _log_probs(
        model: nn.Module, inputs: dict[str, Any]
    ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """`log π(chosen|x)` `[B]`, `log π(rejected|x)` `[B, R]` and the mask of real rejected entries."""
        image_embeds, text_embeds = modeling.encode_pair(
            model, inputs["pixel_values"], inputs["input_ids"], inputs["attention_mask"]
        )
        candidates = torch.cat([inputs["chosen_index"][:, None], inputs["rejected_index"]], dim=1)
        mask = candidates >= 0
        logits = modeling.logit_scale(model).exp() * image_embeds @ text_embeds.T
        log_probs = policy_log_probs(logits.gather(1, candidates.clamp(min=0)).float(), mask, 1.0)
        return log_probs[:, 0], log_probs[:, 1:], mask[:, 1:]

    def _preference(self, model: nn.Module, inputs: dict[str, Any]) -> tuple[Any, dict[str, torch.Tensor]]:
        chosen, rejected, mask = self._log_probs(model, inputs)
        with torch.no_grad(), self._reference(model) as reference:
            ref_chosen, ref_rejected, _ = self._log_probs(reference, inputs)
        out = preference_loss(
            chosen,
            rejected,
            ref_chosen,
            ref_rejected,
            beta=self.args.beta,
            loss_type=self.args.loss_type,
            label_smoothing=self.args.label_smoothing,
            mask=mask,
        )
        rejected = torch.where(mask, rejected.detach(), torch.zeros_like(rejected))
        metrics = {
            **out.metrics(),
            "logps/chosen": chosen.detach().mean(),
            "logps/rejected": (rejected.sum(dim=1) / mask.sum(dim=1).clamp(min=1)).mean(),
        }
        return out, metrics

    def compute_loss(
        self,
        model: nn.Module,
        inputs: dict[str, Any],
        return_outputs: bool = False,
        num_items_in_batch: Any = None,
    ) -> torch.Tensor | tuple[torch.Tensor, dict[str, Any]]:
        self._pop_bookkeeping(inputs)
        if "pixel_values" not in inputs:  # every row of this batch was a skipped bad row
            loss = self._zero_loss(model)
            return (loss, {}) if return_outputs else loss
        out, metrics = self._preference(model, inputs)
        if model.training:
            self._record(**metrics)
        return (out.loss, metrics) if return_outputs else out.loss

    # ------------------------------------------------------------------------------------- evaluation

    def _eval_method_metrics(self, model: nn.Module, dataset: Any) -> dict[str, float]:
        """The preference loss and TRL's reward / log-prob metrics over the whole eval set (row-weighted)."""
        rows = with_row_index(dataset, [self.args.image_column])
        batch_size = self.args.per_device_eval_batch_size
        totals: dict[str, float] = {}
        count = 0
        was_training = model.training
        model.eval()
        try:
            batch: list[Any] = []
            for row in rows:
                batch.append(row)
                if len(batch) == batch_size:
                    count += self._accumulate_eval(model, batch, totals)
                    batch = []
            if batch:
                count += self._accumulate_eval(model, batch, totals)
        finally:
            model.train(was_training)
        return {name: value / max(count, 1) for name, value in totals.items()}

    def _accumulate_eval(self, model: nn.Module, rows: list[Any], totals: dict[str, float]) -> int:
        collated = self.data_collator(rows)
        if "pixel_values" not in collated:
            return 0
        scale = modeling.logit_scale(model)
        inputs = {k: v.to(scale.device) if torch.is_tensor(v) else v for k, v in collated.items()}
        inputs["pixel_values"] = inputs["pixel_values"].to(scale.dtype)  # e.g. bf16 weights
        size = inputs["pixel_values"].shape[0]
        with torch.no_grad():
            out, metrics = self._preference(model, inputs)
        for name, value in {"loss": out.loss, **metrics}.items():
            totals[name] = totals.get(name, 0.0) + float(value) * size
        return size
