"""clip_trl: contrastive and reinforcement-learning fine-tuning of CLIP-style dual encoders."""

from . import evaluation, hub, rewards
from .hub import default_lora_config, load_model
from .interpolation import wise_ft
from .rerank import generate_candidates, rerank
from .trainer import (
    ClipBaseConfig,
    ClipContrastiveConfig,
    ClipContrastiveTrainer,
    ClipDPOConfig,
    ClipDPOTrainer,
    ClipRLConfig,
    ClipRLTrainer,
)

__version__ = "0.1.0.dev0"

__all__ = [
    "ClipBaseConfig",
    "ClipContrastiveConfig",
    "ClipContrastiveTrainer",
    "ClipDPOConfig",
    "ClipDPOTrainer",
    "ClipRLConfig",
    "ClipRLTrainer",
    "__version__",
    "default_lora_config",
    "evaluation",
    "generate_candidates",
    "hub",
    "load_model",
    "rerank",
    "rewards",
    "wise_ft",
]
