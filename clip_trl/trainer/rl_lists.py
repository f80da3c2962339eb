r"""Ranked lists as the RL action (`ClipRLConfig.list_size`): each query's action is a ranked list of
`list_size` distinct candidates drawn from the Plackett–Luce policy ([`clip_trl.losses.ranking`]), and a reward
scores the whole list — a ranking metric (NDCG@k, recall@k with several positives) or a property of the set
(its diversity, its coverage of a group) that no per-candidate score expresses.

The reward convention extends the single-action one (docs/rewards.md, "List rewards"): a reward is still called
once per step with one entry per sampled action, but each entry is a list. `completions[i]` is the ranked list
of candidate names, `chosen[i]` their indices in `candidates[i]`, `chosen_text[i]` the texts the policy scored,
`chosen_row[i]` the rows they came from (in-batch sets; else `None`), `probs[i]` the list's Plackett–Luce
probability, plus `list_size`; `ground_truth`, `images`, `candidates` and the other columns are per query as
before.
"""

from __future__ import annotations

from typing import Any

import torch

from clip_trl.losses.policy import group_advantages
from clip_trl.losses.ranking import plackett_luce_log_prob, sample_lists
from clip_trl.trainer.rl_data import Rollout


def list_reward_kwargs(
    trainer: Any, lists: torch.Tensor, inputs: dict[str, Any], log_probs: torch.Tensor
) -> tuple[list[list[str]], dict[str, Any]]:
    """`(completions, kwargs)` of one list-reward call: `lists` `[B, S, k]`, one entry per (query, sample)."""
    flat = [(b, row) for b, rows in enumerate(lists.tolist()) for row in rows]
    # The per-query keywords (rows, images, ground truth, columns) exactly as for single actions ...
    _, kwargs = trainer._reward_kwargs([(b, row[0]) for b, row in flat], inputs, log_probs)
    # ... and the list-valued ones.
    candidates, texts = inputs["candidates"], inputs["candidate_texts"]
    candidate_rows = inputs.get("candidate_rows")
    list_probs = plackett_luce_log_prob(log_probs.detach(), lists).exp().flatten().tolist()
    completions = [[candidates[b][k] for k in row] for b, row in flat]
    kwargs.update(
        chosen=[list(row) for _, row in flat],
        chosen_text=[[texts[b][k] for k in row] for b, row in flat],
        chosen_row=[None if candidate_rows is None else [candidate_rows[k] for k in row] for _, row in flat],
        probs=list_probs,
        list_size=lists.shape[-1],
    )
    return completions, kwargs


def list_rollout(trainer: Any, inputs: dict[str, Any], log_probs: torch.Tensor) -> Rollout:
    """Sample `num_samples` ranked lists per query, score each list once, and form GRPO / RLOO advantages
    over each query's group of lists. The rollout's `actions` are the lists, `[B, S, list_size]`; its entries
    (for the rollout table) name each list's first candidate."""
    args = trainer.args
    lists = sample_lists(log_probs, args.num_samples, args.list_size, trainer._generator())
    completions, kwargs = list_reward_kwargs(trainer, lists, inputs, log_probs)
    scores = trainer.rewards(completions, **kwargs)
    trainer._record(**scores.metrics())
    rewards = scores.total.to(log_probs.device).view(lists.shape[:2])
    advantages = group_advantages(rewards, args.advantage, args.scale_rewards)
    entries = [(b, int(row[0])) for b, rows in enumerate(lists.tolist()) for row in rows]
    return Rollout(lists, rewards, advantages, log_probs.detach(), {}, entries, scores)
