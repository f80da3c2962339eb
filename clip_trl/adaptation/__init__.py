"""Test-time adaptation: a dual encoder adapts on unlabelled test inputs with rewards, then predicts.

`config` holds [`ClipTestTimeConfig`], `adapter` the [`ClipTestTimeAdapter`] (the stream, the episodes, the reset
and the moving average), `objectives` the losses of one step (test-time RL, TPT's entropy, distillation),
`stream_rewards` the teachers' tables and the other rewards' calls, `views` the augmented views and their
confidence selection, `shifts` generated corruptions (blur, noise, contrast) to measure a shift, `report` and
`card` what a run returns and writes.
"""

from __future__ import annotations

from clip_trl.adaptation.adapter import ClipTestTimeAdapter
from clip_trl.adaptation.config import ClipTestTimeConfig
from clip_trl.adaptation.report import TestTimeAdaptationError, TestTimeResult
from clip_trl.adaptation.stream import select_parameters

__all__ = [
    "ClipTestTimeAdapter",
    "ClipTestTimeConfig",
    "TestTimeAdaptationError",
    "TestTimeResult",
    "select_parameters",
]
