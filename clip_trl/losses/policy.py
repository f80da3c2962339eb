r"""The RL formulation: CLIP as a policy over a small candidate set, and its policy-gradient loss.

For a query `x` and its candidates `C(x)` the policy is `π(c|x) = softmax_c(s(x, c) / τ)`, where `s` is
the CLIP logit. Candidates outside a query's set are masked out of the softmax. Rewards arrive as a
float tensor with NaN where a reward function said `None` ("not applicable"): such actions are left
out of baselines, means and the loss.

Everything here is a pure function of tensors so it can be tested against hand-worked numbers.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch

from clip_trl.losses.ranking import plackett_luce_log_prob

ADVANTAGES = ("grpo", "rloo", "exact")


def policy_log_probs(logits: torch.Tensor, mask: torch.Tensor | None, temperature: float) -> torch.Tensor:
    """`log π(c|x)` over candidates: `log_softmax(logits / τ)` with `mask == False` entries at `-inf`."""
    scaled = logits / temperature
    if mask is not None:
        scaled = scaled.masked_fill(~mask, float("-inf"))
    return torch.log_softmax(scaled, dim=-1)


def sample_actions(
    log_probs: torch.Tensor, num_samples: int, generator: torch.Generator | None = None
) -> torch.Tensor:
    """`num_samples` candidate indices per query, drawn from π with replacement: `[B, num_samples]`."""
    probs = log_probs.detach().float().exp()
    return torch.multinomial(probs.cpu(), num_samples, replacement=True, generator=generator).to(
        log_probs.device
    )


def group_advantages(
    rewards: torch.Tensor, mode: str = "grpo", scale_rewards: bool = True, eps: float = 1e-4
) -> torch.Tensor:
    """Advantages of `[B, S]` rewards (NaN = excluded) within each query's group of S samples.

    - `"grpo"`: `(r - mean) / (std + eps)` with the unbiased std over the group's valid rewards
      (`scale_rewards=False`: `r - mean`).
    - `"rloo"`: `r - mean of the other valid rewards` (leave-one-out).

    Excluded actions, and groups with fewer than two valid rewards (nothing to compare), get 0.
    """
    valid = ~torch.isnan(rewards)
    count = valid.sum(dim=1, keepdim=True)
    filled = torch.where(valid, rewards, torch.zeros_like(rewards))
    mean = filled.sum(dim=1, keepdim=True) / count.clamp(min=1)
    if mode == "grpo":
        advantages = rewards - mean
        if scale_rewards:
            variance = (torch.where(valid, advantages, torch.zeros_like(rewards)) ** 2).sum(
                dim=1, keepdim=True
            )
            std = (variance / (count - 1).clamp(min=1)).sqrt()
            # A group whose rewards are all equal carries no signal: its advantages are 0, not 0/0.
            advantages = torch.where(std > 0, advantages / (std + eps), torch.zeros_like(advantages))
    elif mode == "rloo":
        # r_i - (Σ_valid r - r_i) / (n - 1)  ==  n / (n - 1) · (r_i - mean)
        advantages = (rewards - mean) * count / (count - 1).clamp(min=1)
    else:
        raise ValueError(f"Unknown advantage {mode!r} for sampled actions; use 'grpo' or 'rloo'.")
    keep = valid & (count >= 2)
    return torch.where(keep, advantages, torch.zeros_like(advantages))


def exact_policy_loss(log_probs: torch.Tensor, rewards: torch.Tensor) -> torch.Tensor:
    r"""`-Σ_c π(c|x)·(r_c - Σ_c' π·r)` averaged over queries: the exact policy gradient, no sampling.

    `rewards` is `[B, K]` over every candidate (NaN for masked-out or not-applicable ones). The baseline
    `b = Σ π·r` (over valid candidates, renormalised) is detached, so the value is 0 while the gradient is
    exactly `-∇ E_π[r]`: `∇ Σ π (r - b) = Σ r ∇π - b ∇Σπ = ∇ E_π[r]`.
    """
    probs = log_probs.exp()
    return -(probs * exact_advantages(probs.detach(), rewards)).sum(dim=1).mean()


def exact_advantages(probs: torch.Tensor, rewards: torch.Tensor) -> torch.Tensor:
    r"""`A_c = r_c - Σ_c' π(c')·r_c' / Σ_c' π(c')` over the candidates with a reward (NaN rewards get 0): the
    advantage of every candidate under the exact policy gradient (`probs` and `rewards` are `[B, K]`)."""
    valid = ~torch.isnan(rewards)
    filled = torch.where(valid, rewards, torch.zeros_like(rewards))
    mass = (probs * valid).sum(dim=1, keepdim=True).clamp(min=1e-12)
    baseline = (probs * filled).sum(dim=1, keepdim=True) / mass
    return torch.where(valid, filled - baseline, torch.zeros_like(filled))


def clipped_policy_loss(
    log_probs: torch.Tensor,
    old_log_probs: torch.Tensor,
    *,
    actions: torch.Tensor | None,
    advantages: torch.Tensor | None,
    rewards: torch.Tensor | None,
    epsilon_low: float,
    epsilon_high: float,
) -> tuple[torch.Tensor, torch.Tensor]:
    r"""PPO's clipped surrogate for a rollout reused over several updates; returns `(loss, clip_fraction)`.

    With `ρ = π(a|x) / π_old(a|x)` (`old_log_probs` are detached, from when the rollout was made), each action
    contributes `-min(ρ·A, clip(ρ, 1 - epsilon_low, 1 + epsilon_high)·A)`:

    - sampled (`actions`, `advantages`, `rewards` are `[B, S]`): the mean over the actions that have a reward;
    - exact (`actions=None`, `rewards` `[B, K]` over every candidate): the sum over candidates weighted by
      `π_old(c|x)` with `A_c = r_c - Σ π_old·r`, averaged over queries. At `π = π_old` its gradient is exactly
      the gradient of [`exact_policy_loss`].

    `clip_fraction` is the share of (valid) actions whose ratio lies outside the clipping range.
    """
    if actions is None:
        if rewards is None:
            raise ValueError("The exact policy loss needs the rewards of every candidate.")
        old_probs = old_log_probs.exp()
        valid = ~torch.isnan(rewards) & (old_probs > 0)
        advantages = torch.where(valid, exact_advantages(old_probs, rewards), torch.zeros_like(old_probs))
        # Masked candidates are -inf on both sides: take the difference of finite stand-ins, or its gradient is NaN.
        zeros = torch.zeros_like(log_probs)
        ratio = (torch.where(valid, log_probs, zeros) - torch.where(valid, old_log_probs, zeros)).exp()
        clipped = ratio.clamp(1 - epsilon_low, 1 + epsilon_high)
        per_action = -torch.min(ratio * advantages, clipped * advantages)
        loss = (old_probs * torch.where(valid, per_action, torch.zeros_like(per_action))).sum(dim=1).mean()
        outside = ((ratio != clipped) & valid).float().sum() / valid.sum().clamp(min=1)
        return loss, outside.detach()
    valid = ~torch.isnan(rewards) if rewards is not None else torch.ones_like(advantages, dtype=torch.bool)
    ratio = (log_probs.gather(1, actions) - old_log_probs.gather(1, actions)).exp()
    clipped = ratio.clamp(1 - epsilon_low, 1 + epsilon_high)
    per_action = -torch.min(ratio * advantages, clipped * advantages)
    num_scored = valid.sum().clamp(min=1)
    loss = torch.where(valid, per_action, torch.zeros_like(per_action)).sum() / num_scored
    outside = ((ratio != clipped) & valid).float().sum() / num_scored
    return loss, outside.detach()


def kl_divergence(log_probs: torch.Tensor, ref_log_probs: torch.Tensor) -> torch.Tensor:
    """Exact `KL(π ‖ π_ref) = Σ_c π (log π - log π_ref)` per query (masked candidates contribute 0)."""
    probs = log_probs.exp()
    diff = torch.where(probs > 0, log_probs - ref_log_probs, torch.zeros_like(log_probs))
    return (probs * diff).sum(dim=-1)


def entropy(log_probs: torch.Tensor) -> torch.Tensor:
    """`H(π) = -Σ_c π log π` per query (masked candidates contribute 0)."""
    probs = log_probs.exp()
    return -(probs * torch.where(probs > 0, log_probs, torch.zeros_like(log_probs))).sum(dim=-1)


@dataclass
class PolicyLoss:
    """The RL loss and its parts (detached parts are for logging)."""

    loss: torch.Tensor
    policy_loss: torch.Tensor
    kl: torch.Tensor
    entropy: torch.Tensor
    clip_fraction: torch.Tensor | None = None


def rl_loss(
    log_probs: torch.Tensor,
    *,
    actions: torch.Tensor | None,
    advantages: torch.Tensor | None,
    rewards: torch.Tensor | None = None,
    ref_log_probs: torch.Tensor | None = None,
    beta: float = 0.0,
    entropy_coef: float = 0.0,
    old_log_probs: torch.Tensor | None = None,
    epsilon_low: float = 0.2,
    epsilon_high: float = 0.2,
) -> PolicyLoss:
    r"""`-mean(A · log π(a|x)) + β · KL(π ‖ π_ref) - entropy_coef · H(π)`.

    With `actions=None` the policy term is the exact expectation ([`exact_policy_loss`]) over `rewards`
    (`[B, K]`); otherwise `actions`, `advantages` and `rewards` are `[B, S]` and the mean runs over the
    actions that have a reward (NaN rewards are excluded; their advantage is 0). `actions` `[B, S, k]` are
    ranked lists (`ClipRLConfig.list_size`): `log π(a|x)` is then the list's Plackett–Luce log-probability.

    With `old_log_probs` (a rollout reused for several updates, `num_iterations > 1`) the policy term is
    [`clipped_policy_loss`] instead, and `clip_fraction` is filled in.
    """
    clip_fraction = None
    if old_log_probs is not None:
        policy_term, clip_fraction = clipped_policy_loss(
            log_probs,
            old_log_probs,
            actions=actions,
            advantages=advantages,
            rewards=rewards,
            epsilon_low=epsilon_low,
            epsilon_high=epsilon_high,
        )
    elif actions is None:
        if rewards is None:
            raise ValueError("The exact policy loss needs the rewards of every candidate.")
        policy_term = exact_policy_loss(log_probs, rewards)
    else:
        # `[B, S]` single candidates, or `[B, S, k]` ranked lists (their Plackett–Luce log-probability).
        chosen = (
            log_probs.gather(1, actions) if actions.dim() == 2 else plackett_luce_log_prob(log_probs, actions)
        )
        # Mean over the actions that have a reward; excluded ones (NaN reward) have advantage 0.
        num_scored = (
            (~torch.isnan(rewards)).sum() if rewards is not None else torch.tensor(advantages.numel())
        )
        policy_term = -(advantages * chosen).sum() / num_scored.clamp(min=1)
    kl = (
        kl_divergence(log_probs, ref_log_probs).mean()
        if ref_log_probs is not None
        else log_probs.new_zeros(())
    )
    ent = entropy(log_probs).mean()
    loss = policy_term + beta * kl - entropy_coef * ent
    return PolicyLoss(
        loss=loss,
        policy_loss=policy_term.detach(),
        kl=kl.detach(),
        entropy=ent.detach(),
        clip_fraction=clip_fraction,
    )


def nan_std(rewards: torch.Tensor) -> torch.Tensor:
    """Per-row population std over non-NaN entries (NaN-free rows of one value give 0)."""
    valid = ~torch.isnan(rewards)
    count = valid.sum(dim=1).clamp(min=1)
    filled = torch.where(valid, rewards, torch.zeros_like(rewards))
    mean = filled.sum(dim=1, keepdim=True) / count[:, None]
    return ((torch.where(valid, rewards - mean, torch.zeros_like(rewards)) ** 2).sum(dim=1) / count).sqrt()
