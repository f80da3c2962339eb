r"""Knowledge distillation of a dual encoder: the student matches its teachers' softmax over a candidate set.

For a query `x` (an image, or a caption for the text-to-image direction) with candidates `C(x)`, student and
teacher each give CLIP logits `s(x, c)` (`exp(logit_scale) · cos`, each with its own scale). With a temperature
`T`, the target of teacher `j` is `p_j(c|x) = softmax_c(t_j(x, c) / T)` and several teachers are mixed with
their normalised weights, `p = Σ_j w_j p_j / Σ_j w_j`. Two losses:

- `"soft"` (Hinton et al., 2015): `T² · KL(p ‖ q)`, `q = softmax_c(s(x, c) / T)`. The factor `T²` keeps the
  gradient's size independent of `T` (the softened softmax's gradient shrinks as `1/T²`), so `T` can be tuned
  without re-tuning the learning rate; at `T = 1` it is the plain KL.
- `"hard"` (pseudo-labels): `-log softmax_c(s(x, c))[argmax_c p]`, the cross-entropy toward the teachers' top
  candidate. `T` does not change the argmax, and the student's softmax is not tempered.

Candidates outside a query's set (`mask == False`) are left out of both softmaxes. The per-query functions
return one value per query so that a trainer can form the mean of the global batch across processes.
Everything here is a pure function of tensors, tested against hand computations.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch

TARGETS = ("soft", "hard")


def _masked(logits: torch.Tensor, mask: torch.Tensor | None) -> torch.Tensor:
    return logits if mask is None else logits.masked_fill(~mask, float("-inf"))


def normalized_weights(weights: Sequence[float] | None, count: int) -> list[float]:
    """The teachers' weights divided by their sum (`None`: equal weights).

    Example:

    ```python
    >>> from clip_trl.losses.distillation import normalized_weights
    >>> normalized_weights([3.0, 1.0], 2), normalized_weights(None, 2)
    ([0.75, 0.25], [0.5, 0.5])

    ```
    """
    if weights is None:
        return [1.0 / count] * count
    if len(weights) != count:
        raise ValueError(
            f"{len(weights)} teacher weight(s) for {count} teacher(s); give one weight per teacher."
        )
    if any(w < 0 for w in weights) or sum(weights) <= 0:
        raise ValueError(f"Teacher weights must be non-negative with a positive sum, got {list(weights)}.")
    total = float(sum(weights))
    return [float(w) / total for w in weights]


def teacher_targets(
    teacher_logits: Sequence[torch.Tensor],
    mask: torch.Tensor | None = None,
    temperature: float = 1.0,
    weights: Sequence[float] | None = None,
) -> torch.Tensor:
    """The target distribution `[N, K]`: the weighted mixture of each teacher's `softmax(t / T)` over the
    masked candidates (rows of `teacher_logits[j]`, one per query). Detached: targets are constants."""
    if not teacher_logits:
        raise ValueError("Distillation needs at least one teacher's logits.")
    shares = normalized_weights(weights, len(teacher_logits))
    probs = None
    for share, logits in zip(shares, teacher_logits):
        p = torch.softmax(_masked(logits.detach().float(), mask) / temperature, dim=-1) * share
        probs = p if probs is None else probs + p
    return probs


def distillation_losses(
    student_logits: torch.Tensor,
    targets: torch.Tensor,
    mask: torch.Tensor | None = None,
    temperature: float = 1.0,
    target: str = "soft",
) -> torch.Tensor:
    """One loss per query `[N]`: `T² · KL(targets ‖ softmax(s / T))` (`"soft"`) or the cross-entropy toward
    `targets.argmax()` (`"hard"`). `targets` comes from [`teacher_targets`]."""
    if target not in TARGETS:
        raise ValueError(f"`target` must be one of {TARGETS}, got {target!r}.")
    logits = _masked(student_logits.float(), mask)
    if target == "hard":
        top = targets.argmax(dim=-1, keepdim=True)
        return -torch.log_softmax(logits, dim=-1).gather(1, top).squeeze(1)
    log_q = torch.log_softmax(logits / temperature, dim=-1)
    # 0 · log 0 = 0: candidates the target gives no mass (masked ones included) contribute nothing.
    positive = targets > 0
    terms = torch.where(positive, targets * (targets.clamp(min=1e-30).log() - log_q), torch.zeros_like(log_q))
    return temperature**2 * terms.sum(dim=-1)


def distillation_loss(
    student_logits: torch.Tensor,
    teacher_logits: torch.Tensor | Sequence[torch.Tensor],
    mask: torch.Tensor | None = None,
    *,
    temperature: float = 1.0,
    target: str = "soft",
    teacher_weights: Sequence[float] | None = None,
) -> torch.Tensor:
    r"""The mean over queries of [`distillation_losses`] against the teachers' [`teacher_targets`].

    Args:
        student_logits: `[N, K]` the student's logits of each query's candidates.
        teacher_logits: `[N, K]`, or a list of them (one per teacher; each with its own logit scale).
        mask: `[N, K]` booleans, `False` for padding (candidates a query does not have).
        temperature: `T` of both softmaxes (soft targets); the KL is multiplied by `T²`.
        target: `"soft"` (KL to the mixture) or `"hard"` (cross-entropy toward its top candidate).
        teacher_weights: one weight per teacher (normalised to sum 1); `None` weighs them equally.

    Example:

    ```python
    >>> import torch
    >>> from clip_trl.losses.distillation import distillation_loss
    >>> student = torch.tensor([[0.0, 0.0]])
    >>> teacher = torch.tensor([[0.0, 0.0]])
    >>> float(distillation_loss(student, teacher))  # the same distribution: no loss
    0.0
    >>> round(float(distillation_loss(student, torch.tensor([[5.0, 0.0]]), target="hard")), 4)  # log 2
    0.6931

    ```
    """
    teachers = [teacher_logits] if torch.is_tensor(teacher_logits) else list(teacher_logits)
    targets = teacher_targets(teachers, mask, temperature, teacher_weights)
    return distillation_losses(student_logits, targets, mask, temperature, target).mean()
