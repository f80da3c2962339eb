"""One config and one trainer per method (`<method>_config.py` + `<method>_trainer.py`), sharing `ClipBaseTrainer`
(`base.py`) and the mixins beside it. Names are imported on first use."""

from __future__ import annotations

from typing import TYPE_CHECKING

from clip_trl.utils.lazy import lazy_namespace

_import_structure = {
    "base": ["ClipBaseTrainer"],
    "base_config": ["ClipBaseConfig"],
    "contrastive_config": ["ClipContrastiveConfig"],
    "contrastive_trainer": ["ClipContrastiveTrainer"],
    "distillation_config": ["ClipDistillationConfig"],
    "distillation_trainer": ["ClipDistillationTrainer"],
    "dpo_config": ["ClipDPOConfig"],
    "dpo_trainer": ["ClipDPOTrainer"],
    "rl_config": ["ClipRLConfig"],
    "rl_trainer": ["ClipRLTrainer"],
}

__getattr__, __dir__, __all__ = lazy_namespace(__name__, _import_structure)

if TYPE_CHECKING:
    from clip_trl.trainer.base import ClipBaseTrainer
    from clip_trl.trainer.base_config import ClipBaseConfig
    from clip_trl.trainer.contrastive_config import ClipContrastiveConfig
    from clip_trl.trainer.contrastive_trainer import ClipContrastiveTrainer
    from clip_trl.trainer.distillation_config import ClipDistillationConfig
    from clip_trl.trainer.distillation_trainer import ClipDistillationTrainer
    from clip_trl.trainer.dpo_config import ClipDPOConfig
    from clip_trl.trainer.dpo_trainer import ClipDPOTrainer
    from clip_trl.trainer.rl_config import ClipRLConfig
    from clip_trl.trainer.rl_trainer import ClipRLTrainer
