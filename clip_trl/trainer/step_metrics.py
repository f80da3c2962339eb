"""Per-step metrics: recorded as tensors during the step, averaged over steps and processes at each log."""

from __future__ import annotations

from typing import Any

import torch


def is_training_log(logs: dict[str, Any]) -> bool:
    """Whether a `Trainer.log` payload is a training-step log (it has `loss` and no `eval_*` metric)."""
    return "loss" in logs and not any(key.startswith("eval_") for key in logs)


class StepMetricsMixin:
    """`_record` and `log` for the clip_trl trainers (mixed into `ClipBaseTrainer`, before `Trainer`)."""

    def _record(self, **values: float | torch.Tensor) -> None:
        # Kept as tensors until `log()`: a float() per metric per step would be a host sync on GPU.
        for name, value in values.items():
            self._metrics[name].append(
                value.detach().float().reshape(()) if torch.is_tensor(value) else torch.tensor(float(value))
            )

    def log(self, logs: dict[str, float], start_time: float | None = None) -> None:
        """Add the averaged per-step metrics (reduced over processes) to the Trainer's train logs."""
        if is_training_log(logs):
            averaged = {
                name: torch.stack([t.to(self.args.device) for t in v]).mean()
                for name, v in self._metrics.items()
                if v
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
