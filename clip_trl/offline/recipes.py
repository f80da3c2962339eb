"""The offline default's tested recipes: the hyper-parameters `clip-trl pipeline` and the example scripts use.

Kept apart from [`clip_trl.scripts.pipeline`] so that the scripts (which the pipeline runs) can read them without
importing the pipeline.
"""

from __future__ import annotations

from typing import Any

# The recipe of the default, offline run (random small CLIP at 32 px on the emoji set), measured to finish in
# under 10 minutes on 2 CPU cores with a test recall@1 well above chance. See docs/pipeline.md.
DEFAULT_CONTRASTIVE: dict[str, Any] = {
    "epochs": 5.0,
    "learning_rate": 1e-3,  # 3e-3 collapses the random model (every embedding the same); 1e-3 does not
    "batch_size": 64,
    "weight_decay": 0.1,
    "warmup": 0.1,  # fraction of the steps
}
# The RL recipe measured against more contrastive training on the offline default (benchmarks/rl_quality.py,
# docs/rl.md "When does RL help?"): partial credit for a caption of the right emoji group, the exact policy
# gradient over in-batch candidates (mixing the contrastive loss in did worse there: `contrastive_coef` 0).
DEFAULT_RL: dict[str, Any] = {
    "epochs": 1.0,
    # 1e-3 (the benchmark's tiny model) flattens the small model's policy (entropy up, graded reward 0.205 → 0.118)
    "learning_rate": 1e-4,
    "batch_size": 32,  # the candidate set: 32 captions, as in in-batch accuracy
    "num_samples": 8,
    "advantage": "exact",
    "beta": 0.0,
    "contrastive_coef": 0.0,
    "reward": "graded_group",  # when the data has a `group` column; else "correctness"
}
# Reward names the pipeline resolves itself (on top of clip_trl.rewards' built-ins).
GRADED_GROUP = "graded_group"
# The offline model's input size: the emoji are 72 px drawings, still recognisable at 32 px, where the vision
# tower costs a quarter of what it does at the preset's 64 px — the difference between fitting the time budget
# and not.
DEFAULT_OFFLINE_IMAGE_SIZE = 32
