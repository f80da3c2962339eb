"""One config and one trainer per method, sharing `ClipBaseTrainer`."""

from clip_trl.trainer.base import ClipBaseTrainer
from clip_trl.trainer.base_config import ClipBaseConfig
from clip_trl.trainer.contrastive_config import ClipContrastiveConfig
from clip_trl.trainer.contrastive_trainer import ClipContrastiveTrainer
from clip_trl.trainer.dpo_config import ClipDPOConfig
from clip_trl.trainer.dpo_trainer import ClipDPOTrainer
from clip_trl.trainer.rl_config import ClipRLConfig
from clip_trl.trainer.rl_trainer import ClipRLTrainer

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
