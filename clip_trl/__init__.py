"""clip_trl: contrastive and reinforcement-learning fine-tuning of CLIP-style dual encoders.

The names below are imported on first use (see `clip_trl.utils.lazy`), so `import clip_trl` loads no torch.
"""

from __future__ import annotations

from importlib.metadata import PackageNotFoundError, version
from typing import TYPE_CHECKING

from clip_trl.utils.lazy import lazy_namespace

try:
    __version__ = version("clip_trl")
except PackageNotFoundError:  # a source tree that was never installed
    __version__ = "0.0.0+unknown"

_import_structure = {
    "adaptation.adapter": ["ClipTestTimeAdapter"],
    "adaptation.config": ["ClipTestTimeConfig"],
    "trainer.base_config": ["ClipBaseConfig"],
    "trainer.contrastive_config": ["ClipContrastiveConfig"],
    "trainer.contrastive_trainer": ["ClipContrastiveTrainer"],
    "trainer.distillation_config": ["ClipDistillationConfig"],
    "trainer.distillation_trainer": ["ClipDistillationTrainer"],
    "trainer.dpo_config": ["ClipDPOConfig"],
    "trainer.dpo_trainer": ["ClipDPOTrainer"],
    "trainer.rl_config": ["ClipRLConfig"],
    "trainer.rl_trainer": ["ClipRLTrainer"],
    "hub": ["default_lora_config", "load_model"],
    "models.wise_ft": ["wise_ft"],
    "inference.rerank": ["generate_candidates", "rerank"],
}
_SUBMODULES = ("evaluation", "hub", "offline", "rewards")

__getattr__, __dir__, _public = lazy_namespace(__name__, _import_structure, _SUBMODULES)
__all__ = [*_public, "__version__"]

if TYPE_CHECKING:
    from clip_trl import evaluation, hub, offline, rewards
    from clip_trl.adaptation.adapter import ClipTestTimeAdapter
    from clip_trl.adaptation.config import ClipTestTimeConfig
    from clip_trl.hub import default_lora_config, load_model
    from clip_trl.inference.rerank import generate_candidates, rerank
    from clip_trl.models.wise_ft import wise_ft
    from clip_trl.trainer.base_config import ClipBaseConfig
    from clip_trl.trainer.contrastive_config import ClipContrastiveConfig
    from clip_trl.trainer.contrastive_trainer import ClipContrastiveTrainer
    from clip_trl.trainer.distillation_config import ClipDistillationConfig
    from clip_trl.trainer.distillation_trainer import ClipDistillationTrainer
    from clip_trl.trainer.dpo_config import ClipDPOConfig
    from clip_trl.trainer.dpo_trainer import ClipDPOTrainer
    from clip_trl.trainer.rl_config import ClipRLConfig
    from clip_trl.trainer.rl_trainer import ClipRLTrainer
