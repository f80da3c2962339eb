"""The configuration of test-time adaptation: [`ClipTestTimeConfig`]."""

from __future__ import annotations

from dataclasses import asdict, dataclass, field
from typing import Any

__all__ = ["ADAPT_PARAMETERS", "ADVANTAGES", "MODES", "OBJECTIVES", "ClipTestTimeConfig"]

MODES = ("episodic", "online")
OBJECTIVES = ("reward", "entropy", "distillation", "none")
ADVANTAGES = ("reinforce", "grpo", "exact")
ADAPT_PARAMETERS = ("image_norms", "lora", "image_tower", "text_tower", "all")


@dataclass
class ClipTestTimeConfig:
    r"""
    Configuration of [`ClipTestTimeAdapter`]: how a dual encoder adapts to unlabelled test inputs.

    The defaults are RLCF's for classification (Zhao et al., ICLR 2024): episodic, 3 steps at learning rate
    1e-5 with AdamW, the policy over the student's top 3 candidates, rewarded by a teacher; tune the learning rate
    to your model (small models trained from scratch want larger steps, see the adaptation benchmark).

    Parameters:
        mode (`str`, *optional*, defaults to `"episodic"`):
            `"episodic"`: each batch of `batch_size` inputs is adapted for `steps` steps, predicted, and the
            trainable parameters and the optimizer state are put back to where the stream started (RLCF, TPT).
            `"online"`: adaptation carries on over the stream; predictions use an exponential moving average of
            the adapted weights (`ema_decay`), reset every `reset_every` batches if set.
        objective (`str`, *optional*, defaults to `"reward"`):
            `"reward"`: the policy gradient of the reward functions (test-time RL); `"entropy"`: TPT, the entropy
            of the mean prediction over the confident views (no reward, no teacher); `"distillation"`: the KL to
            the teachers' softmax over the candidates (the teachers are the `ClipScoreReward` /
            `TeacherProbabilityReward` among the reward functions); `"none"`: no adaptation (the baseline).
        steps (`int`, *optional*, defaults to 3):
            Optimizer steps per batch of inputs.
        learning_rate (`float`, *optional*, defaults to 1e-5):
            Learning rate of the optimizer.
        optimizer (`str`, *optional*, defaults to `"adamw"`):
            `"adamw"` or `"sgd"`.
        weight_decay (`float`, *optional*, defaults to 0.0):
            Weight decay of the optimizer.
        adapt_parameters (`str`, *optional*, defaults to `"image_norms"`):
            What adapts: `"image_norms"` (the image tower's LayerNorm weights and biases: few parameters, TENT's
            and RLCF-style classification's choice), `"lora"` (the LoRA adapters: pass a `PeftModel` or a
            `peft_config`), `"image_tower"`, `"text_tower"` or `"all"`. The temperature never adapts.
        batch_size (`int`, *optional*, defaults to 1):
            Inputs adapted together per episode (1: each input on its own).
        top_k (`int`, *optional*, defaults to 3):
            The policy chooses among the student's `top_k` candidates for the view (recomputed at each step;
            0 = every candidate). The prediction is still the argmax over every candidate.
        advantage (`str`, *optional*, defaults to `"reinforce"`):
            `"reinforce"`: sampled actions, advantage `r - mean(r)` over the view's samples (REINFORCE with the
            mean baseline, RLCF's); `"grpo"`: the same divided by the samples' std; `"exact"`: every one of the
            `top_k` candidates is scored and the exact policy gradient is taken (no sampling variance).
        num_samples (`int`, *optional*, defaults to 8):
            Actions sampled per view for the sampled advantages.
        policy_temperature (`float`, *optional*, defaults to 1.0):
            `τ` of the policy `softmax(logit / τ)` (and of the entropy objective).
        n_views (`int`, *optional*, defaults to 1):
            Views per input: the input itself and `n_views - 1` random crops / flips (TPT uses 64).
        selection_fraction (`float`, *optional*, defaults to 1.0):
            The fraction of the views, lowest prediction entropy first, that the update uses (TPT: 0.1).
        min_crop_scale (`float`, *optional*, defaults to 0.5):
            The smallest share of the image's area a random view covers.
        flip (`bool`, *optional*, defaults to `True`):
            Flip random views left-right with probability 1/2.
        distillation_temperature (`float`, *optional*, defaults to 1.0):
            `T` of the `"distillation"` objective (the KL is multiplied by `T²`).
        ema_decay (`float`, *optional*, defaults to 0.99):
            Online mode: `ema ← decay · ema + (1 - decay) · weights` after each batch's steps.
        reset_every (`int`, *optional*, defaults to 0):
            Online mode: put the weights, their average and the optimizer back to the start every this many
            batches (0: never).
        candidate_labels (`list[str]`, *optional*):
            Class names; the candidate texts are `label_template.format(label)`. May instead be passed to
            [`~ClipTestTimeAdapter.adapt`] as `candidates`.
        label_template (`str`, *optional*, defaults to `"a photo of a {}."`):
            The prompt of each label.
        image_column (`str`, *optional*, defaults to `"image"`):
            The image column when the inputs are a `datasets.Dataset`.
        on_bad_image (`str`, *optional*, defaults to `"raise"`):
            An input that cannot be decoded: `"raise"` (an error naming the input; the predictions already
            made are attached to it) or `"skip"` (listed in the result's `skipped`, with the reason).
        output_dir (`str`, *optional*):
            Where to write `predictions.jsonl` (one line per input, as it is predicted) and the run's report
            (`adaptation_report.json`, `adaptation_report.md`).
        seed (`int`, *optional*, defaults to 0):
            The random views and sampled actions of input `i` are drawn from a generator seeded with
            `(seed, i)`: a prediction does not depend on the other inputs, their order or the process count.

    Example:

    ```python
    >>> from clip_trl.adaptation import ClipTestTimeConfig
    >>> args = ClipTestTimeConfig(n_views=16, selection_fraction=0.25, learning_rate=1e-3)
    >>> args.mode, args.steps, args.top_k, args.num_selected_views
    ('episodic', 3, 3, 4)

    ```
    """

    mode: str = field(
        default="episodic", metadata={"help": "'episodic' (reset after each batch) or 'online'."}
    )
    objective: str = field(
        default="reward",
        metadata={"help": "'reward' (test-time RL), 'entropy' (TPT), 'distillation' or 'none'."},
    )
    steps: int = field(default=3, metadata={"help": "Optimizer steps per batch of inputs."})
    learning_rate: float = field(default=1e-5, metadata={"help": "Learning rate."})
    optimizer: str = field(default="adamw", metadata={"help": "'adamw' or 'sgd'."})
    weight_decay: float = field(default=0.0, metadata={"help": "Weight decay."})
    adapt_parameters: str = field(
        default="image_norms",
        metadata={"help": "What adapts: 'image_norms', 'lora', 'image_tower', 'text_tower' or 'all'."},
    )
    batch_size: int = field(default=1, metadata={"help": "Inputs adapted together per episode."})
    top_k: int = field(default=3, metadata={"help": "The policy's candidates: the student's top k (0: all)."})
    advantage: str = field(default="reinforce", metadata={"help": "'reinforce', 'grpo' or 'exact'."})
    num_samples: int = field(default=8, metadata={"help": "Sampled actions per view."})
    policy_temperature: float = field(default=1.0, metadata={"help": "τ of the policy softmax(logit / τ)."})
    n_views: int = field(default=1, metadata={"help": "Views per input (the input and random crops/flips)."})
    selection_fraction: float = field(
        default=1.0, metadata={"help": "Share of the views kept, lowest entropy first (TPT: 0.1)."}
    )
    min_crop_scale: float = field(default=0.5, metadata={"help": "Smallest area share of a random view."})
    flip: bool = field(default=True, metadata={"help": "Flip random views left-right half of the time."})
    distillation_temperature: float = field(
        default=1.0, metadata={"help": "T of the distillation objective."}
    )
    ema_decay: float = field(default=0.99, metadata={"help": "Online mode: decay of the weights' average."})
    reset_every: int = field(
        default=0, metadata={"help": "Online mode: reset every this many batches (0: never)."}
    )
    candidate_labels: list[str] | None = field(
        default=None, metadata={"help": "Class names (candidate texts: label_template.format(label))."}
    )
    label_template: str = field(default="a photo of a {}.", metadata={"help": "Prompt of each label."})
    image_column: str = field(default="image", metadata={"help": "Image column of a dataset of inputs."})
    on_bad_image: str = field(default="raise", metadata={"help": "An undecodable input: 'raise' or 'skip'."})
    output_dir: str | None = field(
        default=None, metadata={"help": "Write predictions.jsonl and the run's report here."}
    )
    seed: int = field(default=0, metadata={"help": "Seed of the views and sampled actions (per input)."})

    def __post_init__(self) -> None:
        choices = {
            "mode": MODES,
            "objective": OBJECTIVES,
            "advantage": ADVANTAGES,
            "adapt_parameters": ADAPT_PARAMETERS,
            "optimizer": ("adamw", "sgd"),
            "on_bad_image": ("raise", "skip"),
        }
        for name, allowed in choices.items():
            if getattr(self, name) not in allowed:
                raise ValueError(f"`{name}` must be one of {allowed}, got {getattr(self, name)!r}.")
        for name in ("batch_size", "n_views", "num_samples"):
            if getattr(self, name) < 1:
                raise ValueError(f"`{name}` must be at least 1, got {getattr(self, name)}.")
        for name in ("steps", "top_k", "reset_every"):
            if getattr(self, name) < 0:
                raise ValueError(f"`{name}` must be 0 or more, got {getattr(self, name)}.")
        if self.top_k == 1 and self.objective == "reward":
            raise ValueError(
                "`top_k=1` leaves the policy one candidate: nothing to choose; use 2 or more (or 0)."
            )
        if not 0.0 < self.selection_fraction <= 1.0:
            raise ValueError(f"`selection_fraction` must be in (0, 1], got {self.selection_fraction}.")
        if not 0.0 <= self.ema_decay < 1.0:
            raise ValueError(f"`ema_decay` must be in [0, 1), got {self.ema_decay}.")
        for name in ("learning_rate", "policy_temperature", "distillation_temperature"):
            if getattr(self, name) <= 0:
                raise ValueError(f"`{name}` must be positive, got {getattr(self, name)}.")
        if self.candidate_labels is not None and "{}" not in self.label_template:
            raise ValueError(
                f"`label_template` must contain '{{}}' for the label, got {self.label_template!r}."
            )

    @property
    def num_selected_views(self) -> int:
        """How many views of each input the update uses."""
        return max(1, min(self.n_views, round(self.selection_fraction * self.n_views)))

    def to_dict(self) -> dict[str, Any]:
        """The settings as a plain dict (for the report)."""
        return asdict(self)
