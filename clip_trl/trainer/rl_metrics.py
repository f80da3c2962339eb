r"""What the RL trainer logs about each step's policy and rewards, beside each reward's own mean and std.

Under `advantage="exact"` nothing is sampled: every candidate is scored, so a plain mean over the scored
actions (`rewards/{name}/mean`) weighs every candidate alike and does not move with the policy, and the policy
term of the loss is 0 by construction (only its gradient is not). What moves is the expectation under the
policy, logged as `reward` (the weighted total) and `rewards/{name}/expected` (each reward), and the objective
the step climbs, `objective = E_π[r] − β·KL(π ‖ π_ref) + entropy_coef·H(π)`. Under `"grpo"` / `"rloo"` the
sampled actions are draws from π, so the plain means are already estimates of those expectations.
"""

from __future__ import annotations

from typing import Any

import torch

from clip_trl.losses.policy import nan_std


def expectation(probs: torch.Tensor, rewards: torch.Tensor) -> torch.Tensor:
    """`E_π[r] = Σ_c π(c|x)·r_c / Σ_c π(c|x)` per query, over the candidates with a reward (`rewards` `[B, K]`,
    NaN = none); NaN for a query where no candidate has one."""
    valid = ~torch.isnan(rewards)
    filled = torch.where(valid, rewards, torch.zeros_like(rewards))
    mass = (probs * valid).sum(dim=1)
    expected = (probs * filled).sum(dim=1) / mass.clamp(min=1e-12)
    return torch.where(valid.any(dim=1), expected, torch.full_like(expected, float("nan")))


def step_metrics(
    log_probs: torch.Tensor,
    rollout: Any,
    targets: torch.Tensor,
    out: Any,
    *,
    beta: float,
    entropy_coef: float,
) -> dict[str, torch.Tensor]:
    """The step's `reward`, `reward_std`, `rewards/{name}/expected`, `objective`, `accuracy` (when a target is
    known), `kl`, `entropy`, `policy_loss` and `frac_reward_zero_std`, as tensors (see the module docstring and
    docs/rl.md's metrics table).

    Args:
        log_probs: `log π(c|x)` `[B, K]` of the current policy.
        rollout ([`Rollout`]): its `actions` (`None` for exact), `rewards` (`[B, S]`, or `[B, K]` for exact),
            `entries` and `scores` (each reward function's values per entry).
        targets: the ground truth's candidate index per query, `-1` when unknown.
        out ([`PolicyLoss`]): the loss parts (`kl`, `entropy`, `policy_loss`).
        beta, entropy_coef: the config's coefficients, for `objective`.
    """
    probs = log_probs.detach().exp()
    rewards = rollout.rewards
    known = targets >= 0
    per_function = rollout.scores.per_function.to(probs.device)  # [N entries, F]
    metrics: dict[str, torch.Tensor] = {}
    if rollout.actions is None:  # exact: expectations under π
        expected = expectation(probs, rewards)
        has_reward = ~torch.isnan(expected)
        if has_reward.any():
            metrics["reward"] = expected[has_reward].mean()
            metrics["reward_std"] = expected[has_reward].std(unbiased=False)
        if rollout.entries:
            rows, cols = (list(index) for index in zip(*rollout.entries))
            for f, name in enumerate(rollout.scores.names):
                matrix = torch.full(probs.shape, float("nan"), device=probs.device)
                matrix[rows, cols] = per_function[:, f]
                per_query = expectation(probs, matrix)
                if (~torch.isnan(per_query)).any():
                    metrics[f"rewards/{name}/expected"] = per_query.nanmean()
        if known.any():
            metrics["accuracy"] = probs[known].gather(1, targets[known, None]).mean()
    else:  # sampled from π: the sample means estimate the expectations
        valid = rewards[~torch.isnan(rewards)]
        if valid.numel():
            metrics["reward"] = valid.mean()
            metrics["reward_std"] = valid.std(unbiased=False)
        for f, name in enumerate(rollout.scores.names):
            column = per_function[:, f]
            if (~torch.isnan(column)).any():
                metrics[f"rewards/{name}/expected"] = column.nanmean()
        if known.any():
            top = rollout.actions if rollout.actions.dim() == 2 else rollout.actions[..., 0]  # a list's first
            metrics["accuracy"] = (top[known] == targets[known, None]).float().mean()
    if "reward" in metrics:
        metrics["objective"] = metrics["reward"] - beta * out.kl + entropy_coef * out.entropy
    metrics.update(
        kl=out.kl,
        entropy=out.entropy,
        policy_loss=out.policy_loss,
        frac_reward_zero_std=(nan_std(rewards) == 0).float().mean(),
    )
    return metrics
