"""clip_trl: contrastive and reinforcement-learning fine-tuning of CLIP-style dual encoders."""

from . import evaluation, rewards
from .trainer import (
    ClipBaseConfig,
    ClipContrastiveConfig,
    ClipContrastiveTrainer,
    ClipRLConfig,
    ClipRLTrainer,
)

__version__ = "0.1.0.dev0"

__all__ = [
    "ClipBaseConfig",
    "ClipContrastiveConfig",
    "ClipContrastiveTrainer",
    "ClipRLConfig",
    "ClipRLTrainer",
    "__version__",
    "evaluation",
    "rewards",
]
