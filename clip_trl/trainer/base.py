"""What both clip_trl trainers share: model and processor loading, tower freezing, peft wrapping,
row-indexed data, the logit-scale clamp and optimizer groups, metric logging, and retrieval evaluation.

Method-specific work (the loss) lives in the subclasses; nothing here is copied between them.
"""

from __future__ import annotations

import math
import os
import time
from collections import defaultdict
from collections.abc import Callable
from typing import Any

import torch
from torch import nn
from transformers import AutoModel, AutoProcessor, PreTrainedModel, Trainer, TrainerCallback
from transformers.utils import logging

from .. import modeling
from ..data import ClipDataCollator, ProcessorImageTransform, check_columns, split_processor, with_row_index
from .base_config import ClipBaseConfig

logger = logging.get_logger(__name__)


class LogitScaleClampCallback(TrainerCallback):
    """Clamp `logit_scale` to `ln(max_logit_scale)` after every optimizer step (CLIP's practice)."""

    def __init__(self, max_logit_scale: float) -> None:
        self.max_log = math.log(max_logit_scale)

    def on_step_end(self, args: Any, state: Any, control: Any, model: nn.Module | None = None, **kwargs: Any) -> None:
        if model is not None:
            with torch.no_grad():
                modeling.logit_scale(model).clamp_(max=self.max_log)


def _prepare_peft_model(model: nn.Module, peft_config: Any) -> nn.Module:
    try:
        from peft import PeftConfig, PeftModel, get_peft_model
    except ImportError as error:  # pragma: no cover - peft is a dependency
        raise ImportError("`peft_config` needs the peft library: `pip install peft`.") from error
    if not isinstance(peft_config, PeftConfig):
        raise TypeError(
            f"`peft_config` must be a peft `PeftConfig` (e.g. `LoraConfig(target_modules=['q_proj', 'v_proj'])`), "
            f"got {type(peft_config).__name__}."
        )
    if isinstance(model, PeftModel):
        raise ValueError(
            "`model` is already a PeftModel and a `peft_config` was given too. Pass the base model with "
            "`peft_config`, or the PeftModel without it (to keep training its adapters)."
        )
    return get_peft_model(model, peft_config)


class ClipTrainerBase(Trainer):
    """Shared machinery of [`ClipContrastiveTrainer`] and [`ClipRLTrainer`]; not used directly."""

    _method_name: str = "clip"
    _config_class: type[ClipBaseConfig] = ClipBaseConfig
    _tag_names: list[str] = ["clip_trl"]

    def __init__(
        self,
        model: str | PreTrainedModel | nn.Module,
        args: ClipBaseConfig | None = None,
        data_collator: Callable | None = None,
        train_dataset: Any = None,
        eval_dataset: Any = None,
        processing_class: Any = None,
        peft_config: Any = None,
        callbacks: list[TrainerCallback] | None = None,
        optimizers: tuple[torch.optim.Optimizer | None, Any] = (None, None),
        **kwargs: Any,
    ) -> None:
        if args is None:
            name = model if isinstance(model, str) else getattr(getattr(model, "config", None), "_name_or_path", "")
            name = os.path.basename(str(name).rstrip("/")) or "clip"
            args = self._config_class(output_dir=f"{name}-{self._method_name}")
        if not isinstance(args, ClipBaseConfig):
            raise TypeError(
                f"`args` must be a {self._config_class.__name__}, got {type(args).__name__}; build it with "
                f"`{self._config_class.__name__}(output_dir=...)`."
            )
        model_id = model if isinstance(model, str) else None
        if isinstance(model, str):
            model = AutoModel.from_pretrained(model, **(args.model_init_kwargs or {}))
        elif args.model_init_kwargs:
            logger.warning("`model_init_kwargs` is ignored because `model` is already instantiated.")
        modeling.check_clip_like(model)
        if processing_class is None:
            processing_class = self._load_processor(model, model_id)
        split_processor(processing_class)  # fail early with a clear message

        self._freeze_towers(model, args)
        self._add_parameters(model, args)
        if peft_config is not None:
            model = _prepare_peft_model(model, peft_config)

        check_columns(train_dataset, self._required_columns(args), "train_dataset")
        if isinstance(eval_dataset, dict):
            for name, dataset in eval_dataset.items():
                check_columns(dataset, self._required_columns(args), f"eval_dataset['{name}']")
        else:
            check_columns(eval_dataset, self._required_columns(args), "eval_dataset")
        if train_dataset is not None and hasattr(train_dataset, "__len__") and len(train_dataset) == 0:
            raise ValueError("`train_dataset` is empty: there is nothing to train on.")
        # Evaluation reads the raw rows; training reads row-indexed views (indices go into error messages).
        self._raw_eval_dataset = eval_dataset

        if data_collator is None:
            data_collator = self._make_collator(processing_class, args)
        self._metrics: dict[str, list[float]] = defaultdict(list)
        self._skipped_rows = 0

        super().__init__(
            model=model,
            args=args,
            data_collator=data_collator,
            train_dataset=with_row_index(train_dataset, [args.image_column]),
            eval_dataset=eval_dataset,
            processing_class=processing_class,
            callbacks=callbacks,
            optimizers=optimizers,
            **kwargs,
        )
        # Our losses are means over the batch; let the Trainer divide by the accumulation steps.
        self.model_accepts_loss_kwargs = False
        self.add_callback(LogitScaleClampCallback(args.max_logit_scale))
        with torch.no_grad():  # a checkpoint above the clamp would otherwise train one step unclamped
            modeling.logit_scale(self.model).clamp_(max=math.log(args.max_logit_scale))

    # ------------------------------------------------------------------------------------- set-up hooks

    @staticmethod
    def _load_processor(model: nn.Module, model_id: str | None) -> Any:
        source = model_id or getattr(getattr(model, "config", None), "_name_or_path", None)
        if not source:
            raise ValueError(
                "No `processing_class` was given and the model does not say where it was loaded from. Pass "
                "`processing_class=AutoProcessor.from_pretrained(<model id>)`."
            )
        try:
            return AutoProcessor.from_pretrained(source)
        except (OSError, ValueError) as error:
            raise ValueError(
                f"Could not load a processor from {source!r} ({error}). Pass `processing_class=` explicitly."
            ) from error

    @staticmethod
    def _freeze_towers(model: nn.Module, args: ClipBaseConfig) -> None:
        for tower, frozen in (("vision", args.freeze_vision), ("text", args.freeze_text)):
            if frozen:
                for module in modeling.tower_modules(model, tower):
                    module.requires_grad_(False)

    def _add_parameters(self, model: nn.Module, args: ClipBaseConfig) -> None:
        """Subclasses add method-specific parameters to the model (e.g. a SigLIP bias)."""

    def _required_columns(self, args: ClipBaseConfig) -> dict[str, str | None]:
        return {"image_column": args.image_column, "caption_column": args.caption_column}

    def _image_transform(self, processing_class: Any) -> Callable:
        return ProcessorImageTransform(split_processor(processing_class)[0])

    def _make_collator(self, processing_class: Any, args: ClipBaseConfig) -> Callable:
        return ClipDataCollator(
            processing_class,
            image_column=args.image_column,
            caption_column=args.caption_column,
            skip_bad_rows=args.skip_bad_rows,
            max_length=args.max_length,
            image_transform=self._image_transform(processing_class),
        )

    # ---------------------------------------------------------------------------------------- optimizer

    def create_optimizer(self, model: nn.Module | None = None) -> torch.optim.Optimizer:
        """The Trainer's optimizer, with `logit_scale`/`logit_bias` in their own group: no weight decay,
        and `logit_scale_learning_rate` when set (temperature wants a different step size than weights)."""
        optimizer = super().create_optimizer(model) if model is not None else super().create_optimizer()
        inner = modeling.unwrap(self.model)
        special = [p for p in (getattr(inner, "logit_scale", None), getattr(inner, "logit_bias", None))
                   if isinstance(p, nn.Parameter) and p.requires_grad]
        if not special or getattr(optimizer, "_clip_trl_grouped", False):
            return optimizer
        special_ids = {id(p) for p in special}
        for group in optimizer.param_groups:
            group["params"] = [p for p in group["params"] if id(p) not in special_ids]
        optimizer.add_param_group(
            {"params": special, "weight_decay": 0.0, "lr": self.args.logit_scale_learning_rate or self.args.learning_rate}
        )
        optimizer._clip_trl_grouped = True
        return optimizer

    # ------------------------------------------------------------------------------------------ logging

    def _pop_bookkeeping(self, inputs: dict[str, Any]) -> None:
        skipped = inputs.pop("num_skipped_rows", None)
        if skipped is not None:
            self._skipped_rows += int(skipped)
        inputs.pop("row_index", None)

    def _record(self, **values: float | torch.Tensor) -> None:
        for name, value in values.items():
            self._metrics[name].append(float(value))

    def log(self, logs: dict[str, float], start_time: float | None = None) -> None:
        """Add the averaged per-step metrics (reduced over processes) to the Trainer's train logs."""
        if "loss" in logs and not any(key.startswith("eval_") for key in logs):
            averaged = {name: sum(v) / len(v) for name, v in self._metrics.items() if v}
            if averaged:
                names = sorted(averaged)
                values = torch.tensor([averaged[n] for n in names], device=self.args.device)
                values = self.accelerator.reduce(values, reduction="mean")
                logs.update({n: round(float(v), 6) for n, v in zip(names, values.tolist())})
            if self.args.skip_bad_rows:
                logs["skipped_rows"] = self._skipped_rows
            self._metrics.clear()
        super().log(logs, start_time)

    # --------------------------------------------------------------------------------------- evaluation

    def evaluate(
        self,
        eval_dataset: Any = None,
        ignore_keys: list[str] | None = None,
        metric_key_prefix: str = "eval",
    ) -> dict[str, float]:
        """Retrieval metrics over the whole evaluation set (not a per-batch average).

        Returns `{prefix}_image_to_text_recall@k`, `{prefix}_text_to_image_recall@k`, `{prefix}_in_batch_accuracy`,
        `{prefix}_loss` (the training loss over consecutive eval batches) and, with `candidate_labels`,
        `{prefix}_zero_shot_accuracy`.
        """
        dataset = eval_dataset if eval_dataset is not None else self._raw_eval_dataset
        if isinstance(dataset, dict):
            metrics: dict[str, float] = {}
            for name, split in dataset.items():
                metrics.update(self.evaluate(split, ignore_keys, f"{metric_key_prefix}_{name}"))
            return metrics
        if dataset is None:
            raise ValueError("Evaluation needs an `eval_dataset` (pass one to the trainer or to `evaluate()`).")
        from .. import evaluation

        self._memory_tracker.start()
        start = time.time()
        model = self.accelerator.unwrap_model(self.model)
        embeddings = evaluation.compute_embeddings(
            model,
            self.processing_class,
            dataset,
            image_column=self.args.image_column,
            caption_column=self.args.caption_column,
            batch_size=self.args.per_device_eval_batch_size,
            image_transform=self._image_transform(self.processing_class),
        )
        results = evaluation.scores_from_embeddings(
            embeddings, ks=tuple(self.args.eval_ks), in_batch_size=self.args.eval_in_batch_size
        )
        if self.args.candidate_labels:
            results.update(
                evaluation.zero_shot_accuracy(
                    model,
                    self.processing_class,
                    dataset,
                    labels=self.args.candidate_labels,
                    template=self.args.label_template,
                    label_column=self.args.label_column,
                    image_column=self.args.image_column,
                    batch_size=self.args.per_device_eval_batch_size,
                    image_embeds=embeddings.image_embeds,
                )
            )
        loss = self._eval_loss(model, embeddings)
        if loss is not None:
            results["loss"] = loss
        metrics = {f"{metric_key_prefix}_{name}": float(value) for name, value in results.items()}
        metrics[f"{metric_key_prefix}_runtime"] = round(time.time() - start, 4)
        metrics[f"{metric_key_prefix}_samples"] = int(embeddings.image_embeds.shape[0])
        self.log(metrics)
        self.control = self.callback_handler.on_evaluate(self.args, self.state, self.control, metrics)
        self._memory_tracker.stop_and_update_metrics(metrics)
        return metrics

    def _eval_loss(self, model: nn.Module, embeddings: Any) -> float | None:
        """The method's loss on the eval set, in consecutive batches of `per_device_eval_batch_size`
        (`None`: the method has no sampling-free loss to report)."""
        return None
