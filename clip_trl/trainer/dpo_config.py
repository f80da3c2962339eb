"""Configuration of [`ClipDPOTrainer`]."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, ClassVar

from clip_trl.losses.preference import LOSS_TYPES
from clip_trl.trainer.base_config import ClipBaseConfig


@dataclass
class ClipDPOConfig(ClipBaseConfig):
    r"""
    Configuration for [`ClipDPOTrainer`]: preference optimization (DPO / IPO) of a dual encoder.

    Rows hold an image, a chosen caption and a rejected caption (or a list of rejected captions). The policy
    over a row's captions is `π(c|x) = softmax_c(s(x, c))` (`s` = the CLIP logit); the loss pushes the
    log-ratio `log π/π_ref` of the chosen caption above that of each rejected one, with the reference `π_ref`
    the frozen starting model. See [`clip_trl.losses.preference.preference_loss`].

    Every [`~transformers.TrainingArguments`] field and the shared fields of [`ClipBaseConfig`] apply.
    `caption_column` is not used: the chosen captions (`chosen_column`) are the captions of retrieval evaluation.

    Parameters:
        chosen_column (`str`, defaults to `"chosen"`):
            Column holding the preferred caption of each image (a string).
        rejected_column (`str`, defaults to `"rejected"`):
            Column holding the dispreferred caption, or a list of them (each makes a pair with the chosen one).
        beta (`float`, defaults to `0.1`):
            β, the strength of the implicit KL leash to the reference: the implicit reward of a caption is
            `β · (log π − log π_ref)`. Must be positive (β → 0 makes the sigmoid loss flat, and the IPO target
            `1 / (2β)` infinite).
        loss_type (`str`, defaults to `"sigmoid"`):
            `"sigmoid"`: DPO's `−log σ(β h)`; `"ipo"`: IPO's `(h − 1/(2β))²`, where `h` is the chosen log-ratio
            minus the rejected one.
        label_smoothing (`float`, defaults to `0.0`):
            Sigmoid loss only: the assumed probability that a pair's preference is flipped (conservative DPO),
            in [0, 0.5).

    Example:

    ```python
    >>> from clip_trl import ClipDPOConfig
    >>> args = ClipDPOConfig(output_dir="clip-dpo", beta=0.1, loss_type="ipo")
    >>> args.caption_column, args.rejected_column
    ('chosen', 'rejected')

    ```
    """

    chosen_column: str = field(default="chosen", metadata={"help": "Column holding the preferred caption."})
    rejected_column: str = field(
        default="rejected", metadata={"help": "Column holding the dispreferred caption (or a list of them)."}
    )
    beta: float = field(default=0.1, metadata={"help": "β: implicit reward = β·(log π − log π_ref); > 0."})
    loss_type: str = field(
        default="sigmoid", metadata={"help": "Preference loss.", "choices": list(LOSS_TYPES)}
    )
    label_smoothing: float = field(
        default=0.0, metadata={"help": "Sigmoid loss: assumed rate of flipped preferences, in [0, 0.5)."}
    )

    _card_fields: ClassVar[tuple[str, ...]] = ("loss_type", "beta", "label_smoothing")

    def _card_shows(self, name: str, value: Any) -> bool:
        if name == "label_smoothing" and (value == 0 or self.loss_type != "sigmoid"):
            return False
        return super()._card_shows(name, value)

    def model_card_description(self, adapter: bool = False) -> str:
        loss = "the DPO loss `−log σ(β h)`" if self.loss_type == "sigmoid" else "the IPO loss `(h − 1/(2β))²`"
        reference = (
            "the starting model (the same weights with the adapters disabled)"
            if adapter
            else ("the frozen starting model")
        )
        return (
            "Preference optimization: the model is a policy `π(c | x) = softmax_c(s(x, c))` over each image's "
            "chosen and rejected captions, and training minimises " + loss + ", where `h` is the log-ratio "
            f"`log π / π_ref` of the chosen caption minus that of a rejected one, with `π_ref` {reference}."
        )

    def model_card_citations(self) -> list[str]:
        return ["dpo" if self.loss_type == "sigmoid" else "ipo", "clip_po"]

    def __post_init__(self) -> None:
        # `caption_column` is where the shared code (collator, evaluation) reads captions: the chosen ones.
        if self.caption_column not in ("caption", self.chosen_column):
            raise ValueError(
                f"`caption_column={self.caption_column!r}` has no meaning for DPO; set `chosen_column` (the column "
                "of preferred captions) instead."
            )
        self.caption_column = self.chosen_column
        super().__post_init__()
        if self.loss_type not in LOSS_TYPES:
            raise ValueError(f"`loss_type` must be one of {LOSS_TYPES}, got {self.loss_type!r}.")
        if not self.beta > 0:
            raise ValueError(
                f"`beta` must be positive, got {self.beta}: β → 0 makes the sigmoid loss flat (log 2, no gradient) "
                "and the IPO target 1/(2β) infinite. DPO's usual range is 0.1 to 0.5."
            )
        if not 0 <= self.label_smoothing < 0.5:
            raise ValueError(f"`label_smoothing` must be in [0, 0.5), got {self.label_smoothing}.")
        if self.label_smoothing > 0 and self.loss_type != "sigmoid":
            raise ValueError(
                f"`label_smoothing` applies to the sigmoid loss only; `loss_type={self.loss_type!r}` would ignore "
                "it. Set `label_smoothing=0` or `loss_type='sigmoid'`."
            )
        if self.chosen_column == self.rejected_column:
            raise ValueError(f"`chosen_column` and `rejected_column` are both {self.chosen_column!r}.")
