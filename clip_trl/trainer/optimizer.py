"""The optimizer side of every clip_trl trainer: the temperature in its own parameter group, non-finite steps
skipped, and the logit-scale clamp after each step."""

from __future__ import annotations

from typing import Any

import torch
from torch import nn
from transformers import TrainerCallback
from transformers.utils import logging

from clip_trl.models import modeling

logger = logging.get_logger(__name__)


class LogitScaleClampCallback(TrainerCallback):
    """Clamp `exp(logit_scale)` to `max_logit_scale` after every optimizer step (CLIP's practice).

    Only a temperature that trains is clamped: a loaded model's value is never altered at construction, nor a
    frozen one (e.g. under LoRA, where the base model must stay untouched).
    """

    def __init__(self, max_logit_scale: float) -> None:
        self.max_logit_scale = max_logit_scale

    def on_step_end(
        self, args: Any, state: Any, control: Any, model: nn.Module | None = None, **kwargs: Any
    ) -> None:
        if model is not None and modeling.temperature_parameter(model).requires_grad:
            modeling.clamp_logit_scale(model, self.max_logit_scale)


def total_norm(tensors: list[torch.Tensor]) -> torch.Tensor:
    """The 2-norm of all `tensors` together (non-finite if any entry is), grouped per device."""
    get_total_norm = getattr(torch.nn.utils, "get_total_norm", None)  # torch >= 2.6
    if get_total_norm is not None:
        return get_total_norm(tensors, error_if_nonfinite=False)
    return torch.stack([t.detach().float().norm().to(tensors[0].device) for t in tensors]).norm()


class GuardedOptimizerMixin:
    """`create_optimizer` for the clip_trl trainers (mixed into `ClipBaseTrainer`, before `Trainer`)."""

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
            grads = [
                p.grad for group in optimizer.param_groups for p in group["params"] if p.grad is not None
            ]
            # One fused norm and one host sync (a per-tensor isfinite check costs ~140 syncs per step).
            finite = not grads or bool(torch.isfinite(total_norm(grads)))
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
