"""clip_trl: contrastive and reinforcement-learning fine-tuning of CLIP-style dual encoders."""

from clip_trl import evaluation, hub, rewards
from clip_trl.hub import default_lora_config, load_model
from clip_trl.inference.rerank import generate_candidates, rerank
from clip_trl.models.wise_ft import wise_ft
from clip_trl.trainer import (
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
