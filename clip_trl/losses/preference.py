r"""Preference optimization of a dual encoder: DPO / IPO losses over caption log-probabilities.

For an image `x`, the policy over its candidate captions is `π(c|x) = softmax_c(s(x, c))` with `s` the CLIP logit
(`exp(logit_scale) · cos`). A preference pair `(y_w, y_l)` (chosen, rejected) gives the implicit rewards
`r_w = β · (log π(y_w|x) − log π_ref(y_w|x))` and `r_l = β · (log π(y_l|x) − log π_ref(y_l|x))`, and the losses
of TRL's `DPOTrainer`, in terms of `h = (r_w − r_l) / β`:

- `"sigmoid"` (DPO, Rafailov et al. 2023): `−(1 − ε) · log σ(β h) − ε · log σ(−β h)` (`ε = label_smoothing`,
  the conservative-DPO form);
- `"ipo"` (Azar et al. 2024): `(h − 1 / (2β))²`.

A row may have several rejected captions: each makes a pair with the chosen one, a row's loss is the mean over
its pairs, and the batch loss the mean over rows (each image weighs the same however many rejected captions
it has).

Everything here is a pure function of tensors, tested against hand computations.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn.functional as F

LOSS_TYPES = ("sigmoid", "ipo")


@dataclass
class PreferenceOutput:
    """The loss and TRL's logged quantities (batch means, detached except `loss`)."""

    loss: torch.Tensor
    chosen_rewards: torch.Tensor
    rejected_rewards: torch.Tensor
    accuracies: torch.Tensor
    margins: torch.Tensor

    def metrics(self) -> dict[str, torch.Tensor]:
        """The reward metrics under TRL's names (`rewards/chosen`, ...)."""
        return {
            "rewards/chosen": self.chosen_rewards,
            "rewards/rejected": self.rejected_rewards,
            "rewards/accuracies": self.accuracies,
            "rewards/margins": self.margins,
        }


def _row_mean(values: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
    """Mean over each row's valid entries `[B, R] -> [B]`."""
    return torch.where(mask, values, torch.zeros_like(values)).sum(dim=1) / mask.sum(dim=1).clamp(min=1)


def preference_loss(
    chosen_logps: torch.Tensor,
    rejected_logps: torch.Tensor,
    ref_chosen_logps: torch.Tensor,
    ref_rejected_logps: torch.Tensor,
    *,
    beta: float,
    loss_type: str = "sigmoid",
    label_smoothing: float = 0.0,
    mask: torch.Tensor | None = None,
) -> PreferenceOutput:
    r"""
    The DPO (`"sigmoid"`) or IPO (`"ipo"`) loss of a batch of preference pairs.

    Args:
        chosen_logps (`torch.Tensor` `[B]`): `log π(chosen | image)` under the policy.
        rejected_logps (`torch.Tensor` `[B, R]` or `[B]`): `log π(rejected | image)`, one column per rejected
            caption (padding columns are masked out by `mask`).
        ref_chosen_logps, ref_rejected_logps: the same under the reference model (no gradient needed).
        beta (`float`): the KL strength β (> 0).
        loss_type (`str`): `"sigmoid"` or `"ipo"`.
        label_smoothing (`float`): ε of the sigmoid loss, the assumed rate of flipped preference labels.
        mask (`torch.Tensor` `[B, R]` of `bool`, *optional*): which rejected entries are real.

    Returns:
        [`PreferenceOutput`]: the loss and the batch means of the implicit rewards, reward accuracy (chosen
        reward strictly above the rejected one) and margin.

    Example:

    ```python
    >>> import math, torch
    >>> from clip_trl.losses.preference import preference_loss
    >>> out = preference_loss(torch.tensor([-0.1]), torch.tensor([-2.0]), torch.tensor([-0.5]),
    ...                       torch.tensor([-1.0]), beta=0.5)
    >>> h = (-0.1 + 0.5) - (-2.0 + 1.0)  # policy-vs-reference log-ratio of chosen minus rejected: 1.4
    >>> round(out.loss.item(), 6) == round(-math.log(1 / (1 + math.exp(-0.5 * h))), 6)
    True
    >>> round(out.margins.item(), 6), out.accuracies.item()
    (0.7, 1.0)

    ```
    """
    if loss_type not in LOSS_TYPES:
        raise ValueError(f"`loss_type` must be one of {LOSS_TYPES}, got {loss_type!r}.")
    if not beta > 0:
        raise ValueError(f"`beta` must be positive, got {beta}.")
    if rejected_logps.dim() == 1:
        rejected_logps, ref_rejected_logps = rejected_logps[:, None], ref_rejected_logps[:, None]
        mask = None if mask is None else mask.reshape(-1, 1)
    if mask is None:
        mask = torch.ones_like(rejected_logps, dtype=torch.bool)
    # Padding entries may hold -inf; keep them out of the arithmetic (NaN gradients otherwise).
    rejected_logps = torch.where(mask, rejected_logps, torch.zeros_like(rejected_logps))
    ref_rejected_logps = torch.where(mask, ref_rejected_logps, torch.zeros_like(ref_rejected_logps))
    chosen_ratio = (chosen_logps - ref_chosen_logps)[:, None]
    rejected_ratio = rejected_logps - ref_rejected_logps
    h = chosen_ratio - rejected_ratio  # [B, R]
    if loss_type == "sigmoid":
        losses = -(1 - label_smoothing) * F.logsigmoid(beta * h) - label_smoothing * F.logsigmoid(-beta * h)
    else:
        losses = (h - 1 / (2 * beta)) ** 2
    loss = _row_mean(losses, mask).mean()

    chosen_rewards = beta * chosen_ratio.detach()  # [B, 1]
    rejected_rewards = beta * rejected_ratio.detach()  # [B, R]
    return PreferenceOutput(
        loss=loss,
        chosen_rewards=chosen_rewards.mean(),
        rejected_rewards=_row_mean(rejected_rewards, mask).mean(),
        accuracies=_row_mean((chosen_rewards > rejected_rewards).float(), mask).mean(),
        margins=_row_mean(chosen_rewards - rejected_rewards, mask).mean(),
    )
