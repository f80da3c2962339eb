"""What every clip_trl trainer shares: model and processor loading, tower freezing, peft wrapping, the reference model,
row-indexed data and the step's bookkeeping.

Method-specific work (the loss) lives in the subclasses; nothing here is copied between them. The other shared
concerns have their own modules and are mixed in: crash-safe checkpoints ([`clip_trl.trainer.checkpointing`]), the
model card written on every save ([`clip_trl.trainer.cards`]), retrieval evaluation
([`clip_trl.trainer.eval_loop`]), per-step metrics ([`clip_trl.trainer.step_metrics`]) and the guarded optimizer
with its temperature group ([`clip_trl.trainer.optimizer`]); what DDP does not do for us is in
[`clip_trl.trainer.distributed`].
"""

from __future__ import annotations

import contextlib
import copy
import os
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
from clip_trl.models import encoding, lora, modeling
from clip_trl.reporting.curves import TrainingCurvesCallback
from clip_trl.trainer.base_config import ClipBaseConfig
from clip_trl.trainer.cards import ModelCardMixin
from clip_trl.trainer.checkpointing import CrashSafeCheckpointMixin
from clip_trl.trainer.distributed import average_gradients, destroy_process_group_at_exit
from clip_trl.trainer.embedding_cache import cache_for_trainer
from clip_trl.trainer.eval_loop import RetrievalEvaluationMixin
from clip_trl.trainer.optimizer import GuardedOptimizerMixin, LogitScaleClampCallback
from clip_trl.trainer.step_metrics import StepMetricsMixin

logger = logging.get_logger(__name__)


class ClipBaseTrainer(
    CrashSafeCheckpointMixin,
    ModelCardMixin,
    RetrievalEvaluationMixin,
    StepMetricsMixin,
    GuardedOptimizerMixin,
    Trainer,
):
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
            name = (
                model
                if isinstance(model, str)
                else getattr(getattr(model, "config", None), "_name_or_path", "")
            )
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
            model = lora.prepare_peft_model(model, peft_config)
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
        self._text_max_length = encoding.text_max_length(
            model, split_processor(processing_class)[1], args.max_length
        )
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
        # Frozen towers' embeddings computed once and reused (`cache_frozen_embeddings`; None when off).
        self._embedding_cache = cache_for_trainer(self)
        self._reference_cache = None  # the frozen reference model's, see `_create_reference_model`
        if self.args.world_size > 1:
            destroy_process_group_at_exit()
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
            # It never trains: both towers' embeddings are cached (`cache_frozen_embeddings`).
            self._reference_cache = cache_for_trainer(self, frozen_model="reference")

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

    # ------------------------------------------------------------------------------------------ logging

    def training_step(
        self, model: nn.Module, inputs: dict[str, Any], num_items_in_batch: Any = None
    ) -> torch.Tensor:
        loss = super().training_step(model, inputs, num_items_in_batch)
        self._reduce_gradients_outside_ddp(model)
        return loss

    def _reduce_gradients_outside_ddp(self, model: nn.Module) -> None:
        """Families whose towers are called directly rather than through `forward` (FLAVA, whose `forward` also
        runs its multimodal encoder) never enter DDP's forward, so DDP reduces none of their gradients and each
        process would step on its own. At each optimizer step's last micro-batch (before clipping) their
        gradients are averaged here instead, as DDP would; the same when the frozen-tower embedding cache called the
        towers directly."""
        if (
            self.args.world_size > 1
            and self.accelerator.sync_gradients
            and isinstance(model, nn.parallel.DistributedDataParallel)
            and (
                not modeling.adapter(model).use_forward
                or getattr(self._embedding_cache, "bypassed_forward", False)
            )
        ):
            average_gradients([p for p in model.parameters() if p.requires_grad])

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
