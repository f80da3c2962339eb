r"""Ranked lists as actions: the Plackett–Luce policy over a candidate set.

With per-candidate log-probabilities `l_c = log π(c|x)` (a softmax over the query's candidates), a ranked list
`a_1, ..., a_k` of distinct candidates has the Plackett–Luce probability

    P(a_1..a_k | x) = Π_i exp(l_{a_i}) / Σ_{c ∉ {a_1..a_{i-1}}} exp(l_c)

— pick the first from π, then the next from π renormalised over what is left, and so on (sampling without
replacement). Adding independent Gumbel noise to `l` and keeping the `k` largest draws exactly such a list
(the Gumbel top-k trick), so sampling costs one `topk`. This is the policy of Neural PG-Rank (Gao et al., 2023,
arXiv:2310.04407): the policy gradient of a whole-list reward (NDCG@k, recall@k, the diversity of the set) through
`∇ log P(list)`. Masked candidates (`-inf`) are never drawn and contribute nothing.
"""

from __future__ import annotations

import torch


def plackett_luce_log_prob(log_probs: torch.Tensor, lists: torch.Tensor) -> torch.Tensor:
    """`log P(list | x)` under Plackett–Luce: `log_probs` `[B, K]` (`-inf` for masked candidates), `lists`
    `[B, S, k]` candidate indices (distinct within a list); returns `[B, S]`, differentiable in `log_probs`.

    Example:

    ```python
    >>> import torch
    >>> from clip_trl.losses.ranking import plackett_luce_log_prob
    >>> log_probs = torch.tensor([[0.5, 0.3, 0.2]]).log()
    >>> plackett_luce_log_prob(log_probs, torch.tensor([[[1, 0]]])).exp()  # 0.3 · 0.5 / (1 - 0.3)
    tensor([[0.2143]])

    ```
    """
    batch, samples, size = lists.shape
    scores = log_probs[:, None, :].expand(batch, samples, log_probs.shape[-1])
    taken = torch.zeros(scores.shape, dtype=torch.bool, device=scores.device)
    total = scores.new_zeros(batch, samples)
    for position in range(size):
        index = lists[..., position : position + 1]
        remaining = torch.logsumexp(scores.masked_fill(taken, float("-inf")), dim=-1)
        total = total + scores.gather(-1, index).squeeze(-1) - remaining
        taken = taken.scatter(-1, index, True)
    return total


def sample_lists(
    log_probs: torch.Tensor, num_samples: int, list_size: int, generator: torch.Generator | None = None
) -> torch.Tensor:
    """`num_samples` ranked lists of `list_size` distinct candidates per query, drawn from Plackett–Luce by
    Gumbel top-k: `[B, num_samples, list_size]` indices (on the device of `log_probs`).

    Raises:
        ValueError: a query has fewer than `list_size` candidates (its index is named).
    """
    scores = log_probs.detach().float().cpu()
    sizes = torch.isfinite(scores).sum(dim=-1)
    short = (sizes < list_size).nonzero().flatten().tolist()
    if short:
        raise ValueError(
            f"`list_size={list_size}` but query {short[0]} of the batch has only {int(sizes[short[0]])} "
            "candidates; lower `list_size` or give every query at least that many candidates."
        )
    uniform = torch.rand((scores.shape[0], num_samples, scores.shape[1]), generator=generator)
    gumbel = -torch.log(-torch.log(uniform.clamp(1e-12, 1 - 1e-7)))
    keys = scores[:, None, :] + gumbel  # -inf (masked) stays -inf: never among the top k
    return keys.topk(list_size, dim=-1).indices.to(log_probs.device)


def greedy_lists(scores: torch.Tensor, list_size: int) -> torch.Tensor:
    """The deterministic list a ranker shows: each query's `list_size` highest-scoring candidates, `[B, k]`."""
    return scores.topk(list_size, dim=-1).indices
