"""One config and one trainer per method, sharing `ClipBaseTrainer`."""

from .base import ClipBaseTrainer
from .base_config import ClipBaseConfig
from .contrastive_config import ClipContrastiveConfig
from .contrastive_trainer import ClipContrastiveTrainer
from .dpo_config import ClipDPOConfig
from .dpo_trainer import ClipDPOTrainer
from .rl_config import ClipRLConfig
from .rl_trainer import ClipRLTrainer

__all__ = [
    "ClipBaseConfig",
    "ClipContrastiveConfig",
    "ClipContrastiveTrainer",
    "ClipDPOConfig",
    "ClipDPOTrainer",
    "ClipRLConfig",
    "ClipRLTrainer",
    "ClipBaseTrainer",
]
