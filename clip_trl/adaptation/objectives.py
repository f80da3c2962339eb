r"""The losses of one test-time step, from the student's logits over the candidates of each selected view.

- `"reward"` (test-time RL, RLCF / GRPO-TTA): the policy `π = softmax(s / τ)` over the view's top-k candidates,
  [`clip_trl.losses.policy.rl_loss`] with sampled actions (advantage `r - mean`, or GRPO's scaled one) or the exact
  gradient over every one of the k candidates.
- `"entropy"` (TPT): the entropy of the mean of `softmax(s / τ)` over each input's selected views.
- `"distillation"`: [`clip_trl.losses.distillation.distillation_losses`] against the teachers' softmax over every
  candidate, for each view (the teachers see the input itself).
"""

from __future__ import annotations

from collections.abc import Callable

import torch

from clip_trl.losses.distillation import distillation_losses, teacher_targets
from clip_trl.losses.policy import entropy, group_advantages, policy_log_probs, rl_loss, sample_actions

__all__ = ["distillation_objective", "entropy_objective", "reward_objective", "top_k_mask"]


def top_k_mask(logits: torch.Tensor, k: int) -> torch.Tensor:
    """`[N, C]` booleans: each row's `k` largest logits (every candidate when `k` is 0 or at least `C`)."""
    if k <= 0 or k >= logits.shape[-1]:
        return torch.ones_like(logits, dtype=torch.bool)
    top = logits.detach().topk(k, dim=-1).indices
    return torch.zeros_like(logits, dtype=torch.bool).scatter_(1, top, True)


def reward_objective(
    logits: torch.Tensor,
    *,
    top_k: int,
    temperature: float,
    advantage: str,
    num_samples: int,
    generator: torch.Generator,
    score: Callable[[torch.Tensor | None, torch.Tensor, torch.Tensor], torch.Tensor],
) -> tuple[torch.Tensor, torch.Tensor]:
    """`(loss, rewards)` of one policy-gradient step; `score(actions, mask, probs)` returns the rewards of
    `actions` (`[N, S]`), or of every candidate of `mask` (`[N, C]`) when `actions` is `None`."""
    mask = top_k_mask(logits, top_k)
    log_probs = policy_log_probs(logits, mask, temperature)
    probs = log_probs.detach().exp()
    if advantage == "exact":
        rewards = score(None, mask, probs)
        return rl_loss(log_probs, actions=None, advantages=None, rewards=rewards).loss, rewards
    actions = sample_actions(log_probs, num_samples, generator)
    rewards = score(actions, mask, probs)
    advantages = group_advantages(rewards, "grpo", scale_rewards=advantage == "grpo")
    return rl_loss(log_probs, actions=actions, advantages=advantages, rewards=rewards).loss, rewards


def entropy_objective(
    logits: torch.Tensor, owner: torch.Tensor, num_inputs: int, temperature: float
) -> torch.Tensor:
    """TPT's loss: the mean over inputs of `H(mean of softmax(s / τ) over the input's views)`."""
    probs = torch.softmax(logits / temperature, dim=-1)
    total = torch.zeros(num_inputs, probs.shape[-1], dtype=probs.dtype, device=probs.device)
    total = total.index_add(0, owner, probs)
    counts = torch.bincount(owner, minlength=num_inputs).clamp(min=1).to(probs)
    mean = total / counts[:, None]
    return entropy(mean.clamp(min=1e-30).log()).mean()


def distillation_objective(
    logits: torch.Tensor, teacher_logits: list[torch.Tensor], owner: torch.Tensor, temperature: float
) -> torch.Tensor:
    """The mean over views of `T² · KL(teachers' softmax ‖ student's softmax)` over every candidate
    (`teacher_logits[j]` is `[B, C]`, one row per input; each view gets its input's row)."""
    targets = teacher_targets([t[owner] for t in teacher_logits], None, temperature)
    return distillation_losses(logits, targets.to(logits.device), None, temperature, "soft").mean()
