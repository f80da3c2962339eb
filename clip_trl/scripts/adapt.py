"""The run of `clip-trl adapt`: a model, its teacher(s), a split of unlabelled inputs, test-time adaptation, the
predictions and the report (and the online mode's weights, when asked)."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

from clip_trl.scripts.arguments import ScriptArguments

__all__ = ["AdaptScriptArguments", "run_adapt_command"]


@dataclass
class AdaptScriptArguments(ScriptArguments):
    r"""
    [`~clip_trl.scripts.arguments.ScriptArguments`] (the data; the inputs are `--dataset_test_split`) plus the
    models and rewards of `clip-trl adapt`.

    Parameters:
        model_name_or_path (`str`): the model to adapt (a folder or Hub id; a LoRA adapter folder works too).
        teacher_model_name_or_path (`list[str]`, defaults to `[]`): teacher models, each with its own processor.
        teacher_reward (`str`, defaults to `"clip_score"`): how a teacher rewards: `"clip_score"` (RLCF's
            CLIPScore) or `"teacher_probability"` (its softmax over the policy's candidates).
        reward_funcs (`list[str]`, defaults to `[]`): more rewards, by built-in name or dotted path.
        reward_weights (`list[float]` or `None`, defaults to `None`): one weight per reward (teachers first).
        label_column (`str` or `None`, defaults to `None`): a column of true labels, to report the accuracy.
        save_model (`bool`, defaults to `False`): online mode: save the final weights (their moving average) and
            a model card to `output_dir/model`.
    """

    model_name_or_path: str | None = field(default=None, metadata={"help": "The model to adapt (required)."})
    teacher_model_name_or_path: list[str] = field(
        default_factory=list,
        metadata={"help": "Teacher models (folders or Hub ids), each with its processor."},
    )
    teacher_reward: str = field(
        default="clip_score", metadata={"help": "'clip_score' (RLCF) or 'teacher_probability'."}
    )
    reward_funcs: list[str] = field(
        default_factory=list, metadata={"help": "More rewards: names or dotted paths."}
    )
    reward_weights: list[float] | None = field(default=None, metadata={"help": "One weight per reward."})
    label_column: str | None = field(default=None, metadata={"help": "True labels, to report the accuracy."})
    save_model: bool = field(default=False, metadata={"help": "Online mode: save the final weights + card."})

    def __post_init__(self) -> None:
        super().__post_init__()
        if self.teacher_reward not in ("clip_score", "teacher_probability"):
            raise ValueError(
                f"`teacher_reward` must be 'clip_score' or 'teacher_probability', got {self.teacher_reward!r}."
            )


def run_adapt_command(parsed: tuple[Any, ...]) -> int:
    import json

    from clip_trl.adaptation import ClipTestTimeAdapter
    from clip_trl.rewards import ClipScoreReward, TeacherProbabilityReward
    from clip_trl.scripts.data import load_data

    script_args, args = parsed
    if not script_args.model_name_or_path:
        raise ValueError("`clip-trl adapt` needs --model_name_or_path: the model to adapt at test time.")
    if args.candidate_labels is None:
        raise ValueError(
            "`clip-trl adapt` needs --candidate_labels (class names; prompts via --label_template)."
        )
    if torch_world() > 1:
        from accelerate import PartialState

        PartialState()  # the process group of torchrun / accelerate launch
    teacher_cls = (
        TeacherProbabilityReward if script_args.teacher_reward == "teacher_probability" else ClipScoreReward
    )
    rewards: list[Any] = [teacher_cls(path) for path in script_args.teacher_model_name_or_path]
    rewards += list(script_args.reward_funcs)
    inputs = load_data(script_args)[script_args.dataset_test_split]
    adapter = ClipTestTimeAdapter(
        script_args.model_name_or_path,
        args,
        reward_funcs=rewards or None,
        reward_weights=script_args.reward_weights,
    )
    result = adapter.adapt(inputs)
    summary = dict(result.stats)
    if script_args.label_column:
        summary["accuracy"] = result.accuracy(list(inputs[script_args.label_column]))
    if script_args.save_model and args.output_dir:
        adapter.save_model(f"{args.output_dir}/model")
    summary.pop("label_counts", None)
    print(json.dumps(summary, indent=2, default=str))
    return 0


def torch_world() -> int:
    import os

    return int(os.environ.get("WORLD_SIZE", "1") or 1)
