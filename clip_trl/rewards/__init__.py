"""Reward callables for [`ClipRLTrainer`], and the one place rewards are resolved, called, checked and combined
([`RewardSet`]).

A reward is any callable with TRL's signature

```python
def my_reward(completions: list[str], **kwargs) -> list[float | None]: ...
```

It is called once per RL step with one entry per scored action (query x sample). `completions[i]` is
the chosen candidate; the keyword arguments are lists aligned with `completions` (`images`,
`queries`, `candidates`, `chosen`, `candidate_texts`, `chosen_text`, `chosen_row`, `probs`,
`ground_truth` and every other dataset column), except
`trainer_state`, which is the single `TrainerState` of the run, and TRL's `log_metric(name, value)` and
`log_extra(column, values)` for rewards that take them (or `**kwargs`). A reward returns one float per action,
or `None` where it does not apply (the trainer then leaves that action out of the baseline and the
means). Built-ins accept and ignore keyword arguments they do not use, so that one call signature
serves every reward. `async def` rewards are awaited, those of one step concurrently.

Built-ins, also reachable by name (`reward_funcs=["correctness"]`, see [`get_reward_function`]):

- [`correctness`]: 1 if the chosen candidate is the ground truth, else 0.
- [`confidence_correctness`]: correctness x pi(chosen | x), the reward of the original CLIP_RL_FT project.
- [`caption_similarity`]: partial credit, the word-overlap F1 between the choice and the ground truth.
- [`ClipScoreReward`]: a frozen (typically larger) CLIP as a teacher, scoring CLIPScore of the text
  the policy scored. Instantiated by the user, or named by the model's folder or hub id.
- [`TeacherProbabilityReward`]: the teacher's softmax probability of the chosen candidate over the
  candidate set — a calibrated teacher reward, for distillation on unlabeled images.

A name that is no built-in may also be a dotted import path (`"my_rewards.short_caption"`). The modules:
`builtin`, `graded`, `teachers` (the rewards), `registry` (names), `resolving` (what a name stands for),
`scoring` ([`RewardSet`]) and `calling` (calling one reward: async, logging, checks)."""

from __future__ import annotations

from clip_trl.rewards.builtin import caption_similarity, confidence_correctness, correctness
from clip_trl.rewards.calling import call_reward
from clip_trl.rewards.graded import GradedReward
from clip_trl.rewards.registry import (
    REWARD_FUNCTIONS,
    RewardFunction,
    register_reward,
    reward_name,
)
from clip_trl.rewards.resolving import get_reward_function
from clip_trl.rewards.scoring import RewardScores, RewardSet, score_rewards
from clip_trl.rewards.teachers import ClipScoreReward, TeacherProbabilityReward

__all__ = [
    "ClipScoreReward",
    "GradedReward",
    "REWARD_FUNCTIONS",
    "RewardFunction",
    "RewardScores",
    "RewardSet",
    "TeacherProbabilityReward",
    "call_reward",
    "caption_similarity",
    "confidence_correctness",
    "correctness",
    "get_reward_function",
    "register_reward",
    "reward_name",
    "score_rewards",
]
