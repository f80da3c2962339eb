"""One config and one trainer per method, sharing `ClipTrainerBase`."""

from .base import ClipTrainerBase
from .base_config import ClipBaseConfig
from .contrastive_config import ClipContrastiveConfig
from .contrastive_trainer import ClipContrastiveTrainer

__all__ = ["ClipBaseConfig", "ClipContrastiveConfig", "ClipContrastiveTrainer", "ClipTrainerBase"]
