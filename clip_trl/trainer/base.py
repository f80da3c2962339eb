"""What every clip_trl trainer shares: model and processor loading, tower freezing, peft wrapping, the reference model,
row-indexed data, the logit-scale clamp and optimizer groups, metric logging, and retrieval evaluation.

Method-specific work (the loss) lives in the subclasses; nothing here is copied between them. Two concerns have
their own modules and are mixed in: crash-safe checkpoints ([`clip_trl.trainer.checkpointing`]) and the model
card written on every save ([`clip_trl.trainer.cards`]).
"""

from __future__ import annotations

import atexit
import contextlib
import copy
import functools
import gc
import os
import time
from collections import defaultdict
from collections.abc import Callable, Iterator
from typing import Any

import torch
from torch import nn
from transformers import AutoProcessor, PreTrainedModel, Trainer, TrainerCallback
from transformers.utils import logging

from clip_trl.data.collator import ClipDataCollator, check_columns, with_row_index
from clip_trl.data.image_processing import image_transform_for
from clip_trl.data.rows import split_processor
from clip_trl.models import encoding, modeling
from clip_trl.reporting.curves import TrainingCurvesCallback
from clip_trl.trainer.base_config import ClipBaseConfig
from clip_trl.trainer.cards import ModelCardMixin
from clip_trl.trainer.checkpointing import CrashSafeCheckpointMixin

logger = logging.get_logger(__name__)


class LogitScaleClampCallback(TrainerCallback):
    """Clamp `exp(logit_scale)` to `max_logit_scale` after every optimizer step (CLIP's practice).

    Only a temperature that trains is clamped: a loaded model's value is never altered at construction, nor a
    frozen one (e.g. under LoRA, where the base model must stay untouched).
    """

    def __init__(self, max_logit_scale: float) -> None:
        self.max_logit_scale = max_logit_scale

    def on_step_end(self, args: Any, state: Any, control: Any, model: nn.Module | None = None, **kwargs: Any) -> None:
        if model is not None and modeling.temperature_parameter(model).requires_grad:
            modeling.clamp_logit_scale(model, self.max_logit_scale)


def _prepare_peft_model(model: nn.Module, peft_config: Any) -> nn.Module:
    """Wrap `model` with `get_peft_model(model, peft_config)` after checking the combination makes sense.

    Unset `target_modules` become the attention projections of *both* towers, named as the model names them
    ([`clip_trl.models.lora.default_lora_targets`]); targets that leave a tower without adapters are warned about.
    """
    from peft import (  # a dependency; imported here to keep start-up light
        PeftConfig,
        PeftModel,
        get_peft_model,
    )

    from clip_trl.models import lora

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
    peft_config = lora.with_default_targets(model, peft_config)
    wrapped = get_peft_model(model, peft_config)
    lora.warn_on_missed_towers(wrapped)
    lora.freeze_batch_norm_statistics(wrapped)
    return wrapped


@functools.cache
def _destroy_process_group_at_exit() -> None:
    """Destroy the default process group when the interpreter exits (registered once per process).

    The Trainer never does, and a gloo group still alive while Python shuts down can abort the process
    ("terminate called without an active exception", exit -6) after training finished — a failed launch for a
    run that succeeded. `atexit` runs before that shutdown.
    """

    def destroy() -> None:
        if torch.distributed.is_available() and torch.distributed.is_initialized():
            # A finished trainer caught in a reference cycle still holds its DDP wrapper (and the group): collect
            # it now, while Python is whole, rather than during shutdown.
            gc.collect()
            torch.distributed.destroy_process_group()

    atexit.register(destroy)


def _total_norm(tensors: list[torch.Tensor]) -> torch.Tensor:
    """The 2-norm of all `tensors` together (non-finite if any entry is), grouped per device."""
    get_total_norm = getattr(torch.nn.utils, "get_total_norm", None)  # torch >= 2.6
    if get_total_norm is not None:
        return get_total_norm(tensors, error_if_nonfinite=False)
    return torch.stack([t.detach().float().norm().to(tensors[0].device) for t in tensors]).norm()


def is_training_log(logs: dict[str, Any]) -> bool:
    """Whether a `Trainer.log` payload is a training-step log (it has `loss` and no `eval_*` metric)."""
    return "loss" in logs and not any(key.startswith("eval_") for key in logs)


def _average_gradients(parameters: list[torch.Tensor], bucket_bytes: int = 2**25) -> None:
    """Average the gradients of `parameters` over all processes, as DDP does (sum / world size), in flat buckets.

    A parameter without a gradient on every process keeps none; one with a gradient on some processes only is
    averaged with zeros from the others (what DDP's reduction of an unused parameter gives).
    """
    import torch.distributed as dist

    world = dist.get_world_size()
    device = parameters[0].device if parameters else torch.device("cpu")
    present = torch.tensor([float(p.grad is not None) for p in parameters], device=device)
    dist.all_reduce(present)
    grads = []
    for parameter, count in zip(parameters, present.tolist()):
        if count > 0:
            if parameter.grad is None:
                parameter.grad = torch.zeros_like(parameter)
            grads.append(parameter.grad)
    buckets: dict[tuple[torch.dtype, torch.device], list[list[torch.Tensor]]] = defaultdict(lambda: [[]])
    for grad in grads:
        bucket = buckets[grad.dtype, grad.device]
        if bucket[-1] and sum(g.numel() for g in bucket[-1]) * grad.element_size() >= bucket_bytes:
            bucket.append([])
        bucket[-1].append(grad)
    for bucket in (b for groups in buckets.values() for b in groups if b):
        flat = torch.cat([g.reshape(-1) for g in bucket])
        dist.all_reduce(flat)
        flat /= world
        offset = 0
        for grad in bucket:
            grad.copy_(flat[offset:offset + grad.numel()].view_as(grad))
            offset += grad.numel()


class ClipBaseTrainer(CrashSafeCheckpointMixin, ModelCardMixin, Trainer):
    """Shared machinery of [`ClipContrastiveTrainer`], [`ClipRLTrainer`] and [`ClipDPOTrainer`]; not used directly."""

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
            model = modeling.load_pretrained(model, **(args.model_init_kwargs or {}))
        elif args.model_init_kwargs:
            logger.warning("`model_init_kwargs` is ignored because `model` is already instantiated.")
        modeling.check_clip_like(model)
        if processing_class is None:
            processing_class = self._load_processor(model, model_id)
        split_processor(processing_class)  # fail early with a clear message

        self._add_parameters(model, args)
        if peft_config is not None:
            model = _prepare_peft_model(model, peft_config)
        # After wrapping, so that a frozen tower's LoRA layers are frozen too.
        self._freeze_towers(model, args)

        check_columns(train_dataset, self._required_columns(args), "train_dataset")
        if isinstance(eval_dataset, dict):
            for name, dataset in eval_dataset.items():
                check_columns(dataset, self._required_columns(args), f"eval_dataset['{name}']")
        else:
            check_columns(eval_dataset, self._required_columns(args), "eval_dataset")
        if train_dataset is not None and hasattr(train_dataset, "__len__") and len(train_dataset) == 0:
            raise ValueError(
                "`train_dataset` is empty (0 rows): there is nothing to train on. Check the split you passed and "
                "any `filter`/`select` that produced it."
            )
        # Evaluation reads the raw rows; training reads row-indexed views (indices go into error messages).
        self._raw_eval_dataset = eval_dataset

        # One text-encoding rule per architecture (SigLIP: the processor's max-length padding), used by the
        # collators here and by evaluation, rewards and reranking through `clip_trl.models.encoding`.
        self._text_padding = encoding.text_padding(model)
        self._text_max_length = encoding.text_max_length(model, split_processor(processing_class)[1], args.max_length)
        if data_collator is None:
            data_collator = self._make_collator(processing_class, args)
        self._metrics: dict[str, list[float]] = defaultdict(list)
        self._skipped_rows = 0
        self._nonfinite_steps = 0
        self._nonfinite_in_a_row = 0

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
        if self.args.world_size > 1:
            _destroy_process_group_at_exit()
        if self.args.process_index == 0:  # e.g. `accelerate launch --cpu --num_processes 2` without MPI
            from clip_trl.trainer.launch_check import warn_if_fewer_processes, warn_if_fsdp_inactive

            warn_if_fewer_processes(self.args.world_size)
            warn_if_fsdp_inactive(self.args.fsdp, getattr(self, "is_fsdp_enabled", False))
        # Our losses are means over the batch; let the Trainer divide by the accumulation steps.
        self.model_accepts_loss_kwargs = False
        bound = modeling.max_logit_scale(self.model, args.max_logit_scale)
        if bound is not None:
            self.add_callback(LogitScaleClampCallback(bound))
        # Model card support: the curves picture at the end of training, and tags that `push_to_hub` (and a
        # user's own `model.push_to_hub`) put on the repository.
        self._curves_callback = TrainingCurvesCallback()
        self.add_callback(self._curves_callback)
        if hasattr(self.model, "add_model_tags"):
            self.model.add_model_tags(self._tag_names)

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

    @staticmethod
    def _image_transform(processing_class: Any, args: ClipBaseConfig) -> Callable:
        return image_transform_for(split_processor(processing_class)[0], args.image_processing)

    def _collator_kwargs(self, processing_class: Any, args: ClipBaseConfig) -> dict[str, Any]:
        """The collator settings every method shares."""
        return {
            "image_column": args.image_column,
            "caption_column": args.caption_column,
            "skip_bad_rows": args.skip_bad_rows,
            "max_length": getattr(self, "_text_max_length", args.max_length),
            "image_transform": self._image_transform(processing_class, args),
            "text_padding": getattr(self, "_text_padding", "longest"),
        }

    def _make_collator(self, processing_class: Any, args: ClipBaseConfig) -> Callable:
        return ClipDataCollator(processing_class, **self._collator_kwargs(processing_class, args))

    def get_train_dataloader(self) -> Any:
        # A `ShardStream` (webdataset shards) is already split per process and resumes itself exactly: it gets its
        # own DataLoader and checkpointed position (clip_trl/data/shards.py says why accelerate's would not do).
        from clip_trl.data.shards import ShardStream, train_dataloader

        if isinstance(self.train_dataset, ShardStream):
            return train_dataloader(self)
        return super().get_train_dataloader()

    # ---------------------------------------------------------------------------------- reference model
    # Methods that compare the policy with its starting point (RL's KL leash, DPO's log-ratios) share this.

    @property
    def _uses_adapters(self) -> bool:
        return hasattr(modeling.unwrap(self.model), "disable_adapter")

    def _create_reference_model(self) -> None:
        """Set `self.ref_model` to a frozen copy of the starting model; with peft, to `None`: disabling the
        adapters gives the starting model without a second copy of the weights (see `_reference`)."""
        self.ref_model = None
        if not self._uses_adapters:
            self.ref_model = copy.deepcopy(modeling.unwrap(self.model)).eval().requires_grad_(False)
            self.ref_model.to(self.args.device)

    @contextlib.contextmanager
    def _reference(self, model: nn.Module) -> Iterator[nn.Module]:
        """The reference model: the frozen copy, or `model` with its adapters disabled."""
        if self.ref_model is not None:
            yield self.ref_model
        else:
            inner = modeling.unwrap(model)
            with inner.disable_adapter():
                yield inner

    def _build_accelerator_args(self, **kwargs: Any) -> dict[str, Any]:
        # The Trainer's default `find_unused_parameters=True` costs a graph traversal per step and makes DDP warn
        # that none were found: our losses use every trainable parameter, except a model's own `logit_bias` when
        # the method has no use for it. An explicit `ddp_find_unused_parameters` is left alone.
        accelerator_args = super()._build_accelerator_args(**kwargs)
        if self.args.ddp_find_unused_parameters is None:
            bias = getattr(modeling.unwrap(self.model), "logit_bias", None)
            unused = isinstance(bias, nn.Parameter) and bias.requires_grad and not self._uses_logit_bias()
            for handler in accelerator_args.get("kwargs_handlers", []):
                if hasattr(handler, "find_unused_parameters"):
                    handler.find_unused_parameters = unused
        return accelerator_args

    def _uses_logit_bias(self) -> bool:
        """Whether the method's loss uses the model's `logit_bias` (SigLIP's sigmoid loss does)."""
        return False

    # ---------------------------------------------------------------------------------------- optimizer

    def create_optimizer(self, model: nn.Module | None = None) -> torch.optim.Optimizer:
        """The Trainer's optimizer, with `logit_scale`/`logit_bias` in their own group: no weight decay,
        and `logit_scale_learning_rate` when set (temperature wants a different step size than weights)."""
        optimizer = super().create_optimizer(model) if model is not None else super().create_optimizer()
        self._guard_optimizer(optimizer)
        special = [p for p in modeling.temperature_parameters(self.model) if p.requires_grad]
        if not special or getattr(optimizer, "_clip_trl_grouped", False):
            return optimizer
        special_ids = {id(p) for p in special}
        for group in optimizer.param_groups:
            group["params"] = [p for p in group["params"] if id(p) not in special_ids]
        # `is None`, not `or`: a learning rate of 0.0 is a request to keep the temperature fixed.
        lr = self.args.logit_scale_learning_rate
        optimizer.add_param_group(
            {"params": special, "weight_decay": 0.0, "lr": self.args.learning_rate if lr is None else lr}
        )
        optimizer._clip_trl_grouped = True
        return optimizer

    def _guard_optimizer(self, optimizer: torch.optim.Optimizer) -> None:
        """Skip any optimizer step whose gradients are not all finite, so no NaN reaches the weights.

        Zeroing the gradients would not be enough: Adam would still move the weights with its momentum.
        After `max_nonfinite_steps` skipped steps in a row training stops with an error.
        """
        if getattr(optimizer, "_clip_trl_guarded", False):
            return
        step = optimizer.step

        def guarded_step(*args: Any, **kwargs: Any) -> Any:
            grads = [p.grad for group in optimizer.param_groups for p in group["params"] if p.grad is not None]
            # One fused norm and one host sync (a per-tensor isfinite check costs ~140 syncs per step).
            finite = not grads or bool(torch.isfinite(_total_norm(grads)))
            if finite:
                self._nonfinite_in_a_row = 0
                return step(*args, **kwargs)
            self._nonfinite_steps += 1
            self._nonfinite_in_a_row += 1
            logger.warning(
                f"Step {self.state.global_step + 1}: non-finite loss or gradient; the optimizer step is skipped "
                f"({self._nonfinite_steps} skipped so far)."
            )
            optimizer.zero_grad(set_to_none=True)
            if self._nonfinite_in_a_row >= self.args.max_nonfinite_steps:
                raise FloatingPointError(
                    f"{self._nonfinite_in_a_row} optimizer steps in a row had a non-finite loss or gradient. Check "
                    "the learning rate (lower it, or add warmup), the logit scale (`max_logit_scale`, "
                    "`logit_scale_learning_rate`), the reward scale of your reward functions, and the input data."
                )
            return None

        optimizer.step = guarded_step
        optimizer._clip_trl_guarded = True

    # ------------------------------------------------------------------------------------------ logging

    def training_step(self, model: nn.Module, inputs: dict[str, Any], num_items_in_batch: Any = None) -> torch.Tensor:
        loss = super().training_step(model, inputs, num_items_in_batch)
        self._reduce_gradients_outside_ddp(model)
        return loss

    def _reduce_gradients_outside_ddp(self, model: nn.Module) -> None:
        """Families whose towers are called directly rather than through `forward` (FLAVA, whose `forward` also
        runs its multimodal encoder) never enter DDP's forward, so DDP reduces none of their gradients and each
        process would step on its own. At each optimizer step's last micro-batch (before clipping) their
        gradients are averaged here instead, as DDP would."""
        if (
            self.args.world_size > 1
            and self.accelerator.sync_gradients
            and isinstance(model, nn.parallel.DistributedDataParallel)
            and not modeling.adapter(model).use_forward
        ):
            _average_gradients([p for p in model.parameters() if p.requires_grad])

    @staticmethod
    def _zero_loss(model: nn.Module) -> torch.Tensor:
        """A loss of 0 that reaches every trainable parameter, for a batch whose rows were all skipped as bad rows:
        the backward (and DDP's gradient reduction, which every rank must join) still happens."""
        return sum(p.sum() * 0.0 for p in model.parameters() if p.requires_grad)

    def _pop_bookkeeping(self, inputs: dict[str, Any]) -> None:
        skipped = inputs.pop("num_skipped_rows", None)
        if skipped is not None:
            self._skipped_rows += int(skipped)
        inputs.pop("row_index", None)

    def _record(self, **values: float | torch.Tensor) -> None:
        # Kept as tensors until `log()`: a float() per metric per step would be a host sync on GPU.
        for name, value in values.items():
            self._metrics[name].append(value.detach().float().reshape(()) if torch.is_tensor(value) else torch.tensor(float(value)))

    def log(self, logs: dict[str, float], start_time: float | None = None) -> None:
        """Add the averaged per-step metrics (reduced over processes) to the Trainer's train logs."""
        if is_training_log(logs):
            averaged = {
                name: torch.stack([t.to(self.args.device) for t in v]).mean() for name, v in self._metrics.items() if v
            }
            logs.update(self._mean_over_processes(averaged))
            if self.args.skip_bad_rows:
                logs["skipped_rows"] = self._skipped_rows
            if self._nonfinite_steps:
                logs["nonfinite_steps_skipped"] = self._nonfinite_steps
            self._metrics.clear()
        super().log(logs, start_time)

    def _mean_over_processes(self, averaged: dict[str, torch.Tensor]) -> dict[str, float]:
        """Each metric's mean over the processes that recorded it.

        Ranks may hold different metrics (e.g. `accuracy` only where a batch had a known label), so the names
        are agreed first; a fixed-order reduction of unequal lists would hang or mix metrics up.
        """
        names = sorted(averaged)
        if self.args.world_size > 1:
            from accelerate.utils import gather_object

            names = sorted({name for rank_names in gather_object([names]) for name in rank_names})
        if not names:
            return {}
        device = self.args.device
        values = torch.stack([averaged.get(n, torch.zeros((), device=device)).to(device) for n in names])
        present = torch.tensor([float(n in averaged) for n in names], device=device)
        totals = self.accelerator.reduce(torch.stack([values * present, present]), reduction="sum")
        means = totals[0] / totals[1].clamp(min=1)
        return {n: round(float(v), 6) for n, v in zip(names, means.tolist())}

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

        A dict of named eval sets (e.g. `{"in_domain": ..., "retention": ...}`, given to the trainer or here) is
        evaluated set by set, each metric named `{prefix}_{name}_...` — evaluations during training then show
        forgetting as it happens. `eval_dataset="retention"` evaluates one named set of the trainer's dict.
        """
        if isinstance(eval_dataset, str):  # a name of the trainer's eval sets (as `Trainer.evaluate` accepts)
            named = self._raw_eval_dataset
            if not isinstance(named, dict) or eval_dataset not in named:
                have = f"its eval sets are {sorted(named)}" if isinstance(named, dict) else "it has no named eval sets"
                raise KeyError(f"No eval set named {eval_dataset!r}: {have}. Pass `eval_dataset` as a dict of named sets.")
            eval_dataset = named[eval_dataset]
        dataset = eval_dataset if eval_dataset is not None else self._raw_eval_dataset
        if isinstance(dataset, dict):
            metrics: dict[str, float] = {}
            for name, split in dataset.items():
                metrics.update(self.evaluate(split, ignore_keys, f"{metric_key_prefix}_{name}"))
            return metrics
        if dataset is None:
            raise ValueError("Evaluation needs an `eval_dataset` (pass one to the trainer or to `evaluate()`).")
        from clip_trl import evaluation
        from clip_trl.trainer.sharded_eval import compute_embeddings

        self._memory_tracker.start()
        start = time.time()
        model = self.accelerator.unwrap_model(self.model)
        # Under several processes each rank embeds its block of rows, and every rank gets the whole set.
        embeddings = compute_embeddings(
            model,
            self.processing_class,
            dataset,
            image_column=self.args.image_column,
            caption_column=self.args.caption_column,
            batch_size=self.args.per_device_eval_batch_size,
            image_transform=self._image_transform(self.processing_class, self.args),
            max_length=self.args.max_length,  # the collators' token limit: the same tokens as in training
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
        results.update(self._eval_method_metrics(model, dataset))
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

    def _eval_method_metrics(self, model: nn.Module, dataset: Any) -> dict[str, float]:
        """Metrics only the method can compute on the eval set (names without the `eval_` prefix)."""
        return {}
