"""Timing whole Trainer steps on a fixed batch: what `mfu.py` and `scaling.py` share.

The batch is collated once and handed to the Trainer again at every step (a fresh shallow copy: trainers
pop bookkeeping keys), so the figures are the training step itself — forward, backward, gradient clipping,
optimizer, callbacks — without data loading, which `preprocess.py` measures on its own.
"""

from __future__ import annotations

import statistics
import time
from collections.abc import Callable, Mapping
from typing import Any

import torch
from transformers import TrainerCallback


class ConstantBatch:
    """A collator that ignores its rows and returns (a copy of) the same batch every time."""

    def __init__(self, batch: Mapping[str, Any]) -> None:
        self.batch = dict(batch)

    def __call__(self, rows: Any) -> dict[str, Any]:
        return dict(self.batch)


class StepTimer(TrainerCallback):
    """Wall time of each optimizer step (synchronising the accelerator, so queued kernels count)."""

    def __init__(self) -> None:
        self.seconds: list[float] = []
        self._start = 0.0

    @staticmethod
    def _sync() -> None:
        if torch.cuda.is_available():
            torch.cuda.synchronize()

    def on_step_begin(self, args: Any, state: Any, control: Any, **kwargs: Any) -> None:
        self._sync()
        self._start = time.perf_counter()

    def on_step_end(self, args: Any, state: Any, control: Any, **kwargs: Any) -> None:
        self._sync()
        self.seconds.append(time.perf_counter() - self._start)


def median_step_seconds(build: Callable[[StepTimer], Any], warmup: int) -> float:
    """Build a trainer (with `timer` among its callbacks), train it, return its median step time after warm-up."""
    timer = StepTimer()
    trainer = build(timer)
    trainer.train()
    steps = timer.seconds[warmup:]
    if not steps:
        raise ValueError(
            f"Only {len(timer.seconds)} steps ran; raise max_steps above the {warmup} warm-up steps."
        )
    return statistics.median(steps)


def alternate_all(builders: Mapping[str, Callable[[], float]], repetitions: int) -> dict[str, list[float]]:
    """Every run of each contender: `repetitions` rounds, the order reversed every other round (so neither
    contender always runs first, and load changes hit both); entry i of each list is round i."""
    runs: dict[str, list[float]] = {name: [] for name in builders}
    for repetition in range(repetitions):
        for name in list(builders)[:: 1 if repetition % 2 == 0 else -1]:
            runs[name].append(builders[name]())
    return runs


def alternate(builders: Mapping[str, Callable[[], float]], repetitions: int) -> dict[str, float]:
    """Best of `repetitions` runs of each contender, alternating the order each time (so load changes hit all)."""
    return {name: min(values) for name, values in alternate_all(builders, repetitions).items()}


def dummy_rows(count: int) -> Any:
    """A data set of `count` placeholder rows, for trainers whose collator is a [`ConstantBatch`]."""
    import datasets

    return datasets.Dataset.from_dict({"image": [None] * count, "caption": ["unused"] * count})
