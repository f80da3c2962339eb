"""What the example scripts and the `clip-trl` command share: script arguments, data loading, and the two runs.

The scripts follow TRL's layout: `trl.TrlParser` parses three dataclasses — [`ScriptArguments`] (the data),
a trainer config ([`~clip_trl.ClipContrastiveConfig`] or [`~clip_trl.ClipRLConfig`]) and trl's `ModelConfig`
(the model, and LoRA through `--use_peft --lora_r ...`) — from flags and/or a `--config file.yaml`, then
hand them to [`run_contrastive`] or [`run_rl`]. Everything here also works under `accelerate launch`.

Offline defaults: without `--dataset_name` the data is the emoji set of [`clip_trl.offline.load_emoji_dataset`];
without `--model_name_or_path` the model is a randomly initialised small CLIP from
[`clip_trl.offline.build_clip`], saved to `<output_dir>/base_model` so that the run (and its model card) can
point at it. [`run_rl`] without a model starts from the contrastive model in `--contrastive_model_dir`,
training one first when that folder holds none.
"""

from __future__ import annotations

import dataclasses
import json
import logging
import os
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

import numpy as np

# trl's `ModelConfig` leaves `lora_target_modules` unset, which peft cannot resolve for a dual encoder.
from clip_trl.models.lora import DEFAULT_LORA_TARGET_MODULES
from clip_trl.offline.recipes import DEFAULT_CONTRASTIVE

if TYPE_CHECKING:
    import datasets
    from trl import ModelConfig

    from clip_trl.trainer import ClipContrastiveConfig, ClipContrastiveTrainer, ClipRLConfig, ClipRLTrainer

logger = logging.getLogger(__name__)

__all__ = [
    "DEFAULT_LORA_TARGET_MODULES",
    "RLScriptArguments",
    "ScriptArguments",
    "clip_peft_config",
    "evaluate_on_test",
    "load_data",
    "model_init_kwargs_from",
    "resolve_model",
    "run_contrastive",
    "run_rl",
    "save_trainer",
]


# Below this learning rate a randomly initialised CLIP barely moves in a few epochs; the offline default model
# is random, so we warn instead of silently wasting the run (the config default, 1e-5, suits pretrained CLIP).
_RANDOM_INIT_MIN_LR = 1e-4


@dataclass
class ScriptArguments:
    r"""
    Data arguments of the clip_trl scripts (`examples/contrastive.py`, `examples/rl.py`, `clip-trl ...`).

    The field names follow `trl.ScriptArguments`, so TRL users' flags and YAML files carry over.

    Parameters:
        dataset_name (`str` or `None`, defaults to `None`):
            `None`: the offline emoji data set ([`clip_trl.offline.load_emoji_dataset`]). Otherwise a Hub data set
            id, a folder written by `Dataset.save_to_disk` / `DatasetDict.save_to_disk`, or any path
            `datasets.load_dataset` understands (e.g. an `imagefolder` folder of images with a `metadata.jsonl`).
        dataset_config (`str` or `None`, defaults to `None`):
            Configuration name, the `name` argument of `datasets.load_dataset`.
        dataset_train_split (`str`, defaults to `"train"`):
            Split to train on.
        dataset_eval_split (`str`, defaults to `"validation"`):
            Split evaluated during training (`--eval_strategy epoch`). When the data has no such split, it is
            carved out of the training split (`validation_size`, seeded by `split_seed`).
        dataset_test_split (`str`, defaults to `"test"`):
            Split of the final test evaluation. When the data has neither it nor the eval split, the training
            split is shuffled with `split_seed` and cut 80/10/10 into train / validation / test.
        max_train_samples (`int` or `None`, defaults to `None`):
            Keep a seeded random subset of this many training rows (for quick runs).
        max_eval_samples (`int` or `None`, defaults to `None`):
            Keep a seeded random subset of this many rows of the eval split and of the test split.
        split_seed (`int`, defaults to `42`):
            Seed of every split and subset made here, independent of the training `seed`.
        validation_size (`float`, defaults to `0.1`), test_size (`float`, defaults to `0.1`):
            Fractions of the rows that go to the splits made here.
        offline_model_size (`str`, defaults to `"small"`):
            Preset of the random CLIP used without `--model_name_or_path`: `"small"` or `"tiny"` (tests).
        offline_image_size (`int` or `None`, defaults to `None`):
            Input resolution of that model (a multiple of 8); `None` keeps the preset's.
        train_shards (`str` or `None`, defaults to `None`):
            Train on webdataset `.tar` shards instead of the training split: a glob (`"/data/shards/*.tar"`) or
            comma-separated paths, streamed by [`clip_trl.data.shards.ShardStream`] (each process reads its own
            shards; `--max_steps` is required). Evaluation and test still use the splits above.
        shuffle_buffer (`int`, defaults to `1000`):
            Rows in each shard reader's shuffle buffer (`train_shards` only).

    Example:

    ```python
    >>> from clip_trl.scripts import ScriptArguments, load_data
    >>> data = load_data(ScriptArguments(max_train_samples=64, max_eval_samples=16))
    >>> {name: split.num_rows for name, split in data.items()}
    {'train': 64, 'validation': 16, 'test': 16}

    ```
    """

    dataset_name: str | None = field(
        default=None,
        metadata={
            "help": "Hub data set id, save_to_disk folder or load_dataset path (e.g. an imagefolder). "
            "Default: the offline emoji data set."
        },
    )
    dataset_config: str | None = field(
        default=None, metadata={"help": "Data set configuration name (`name` of datasets.load_dataset)."}
    )
    dataset_train_split: str = field(default="train", metadata={"help": "Split to train on."})
    dataset_eval_split: str = field(
        default="validation",
        metadata={"help": "Split evaluated during training; carved out of train (seeded) when missing."},
    )
    dataset_test_split: str = field(
        default="test",
        metadata={"help": "Split of the final test evaluation; made by a seeded 80/10/10 split when missing."},
    )
    max_train_samples: int | None = field(
        default=None, metadata={"help": "Keep a seeded random subset of this many training rows."}
    )
    max_eval_samples: int | None = field(
        default=None, metadata={"help": "Keep a seeded random subset of this many eval rows and test rows."}
    )
    split_seed: int = field(default=42, metadata={"help": "Seed of the splits and subsets made by the script."})
    validation_size: float = field(default=0.1, metadata={"help": "Fraction of rows for a split-made validation set."})
    test_size: float = field(default=0.1, metadata={"help": "Fraction of rows for a split-made test set."})
    offline_model_size: str = field(
        default="small",
        metadata={
            "help": "Random CLIP preset used when --model_name_or_path is not given.",
            "choices": ["small", "tiny"],
        },
    )
    offline_image_size: int | None = field(
        default=None, metadata={"help": "Input resolution of that random CLIP (multiple of 8); default: preset's."}
    )
    train_shards: str | None = field(
        default=None,
        metadata={"help": "Train on webdataset .tar shards (glob or comma-separated paths) instead of the train "
                  "split; needs --max_steps."},
    )
    shuffle_buffer: int = field(default=1000, metadata={"help": "Shuffle buffer rows per shard reader."})

    def __post_init__(self) -> None:
        for name in ("validation_size", "test_size"):
            value = getattr(self, name)
            if not 0 < value < 1:
                raise ValueError(f"`{name}` must be in (0, 1), got {value}.")
        if self.validation_size + self.test_size >= 1:
            raise ValueError("`validation_size` + `test_size` must be below 1 to leave rows for training.")
        for name in ("max_train_samples", "max_eval_samples"):
            value = getattr(self, name)
            if value is not None and value < 1:
                raise ValueError(f"`{name}` must be a positive integer, got {value}.")


@dataclass
class RLScriptArguments(ScriptArguments):
    r"""
    [`ScriptArguments`] plus what only the RL script needs.

    Parameters:
        reward_funcs (`list[str]`, defaults to `["correctness"]`):
            Names of built-in rewards of [`clip_trl.rewards`] (`correctness`, `confidence_correctness`,
            `caption_similarity`); weigh them with `--reward_weights`.
        contrastive_model_dir (`str`, defaults to `"clip_finetuned"`):
            Used only when `--model_name_or_path` is not given: RL starts from the contrastive model saved in this
            folder (what `examples/contrastive.py --output_dir clip_finetuned` writes).
        train_missing_contrastive (`bool`, defaults to `False`):
            When `contrastive_model_dir` holds no model: `True` trains one there first (see [`run_rl`]); `False`
            stops with an error that says how to get one. Never a hidden second training run.
    """

    reward_funcs: list[str] = field(
        default_factory=lambda: ["correctness"],
        metadata={"help": "Built-in reward names, e.g. --reward_funcs correctness confidence_correctness."},
    )
    contrastive_model_dir: str = field(
        default="clip_finetuned",
        metadata={
            "help": "Without --model_name_or_path, RL starts from the contrastive model in this folder "
            "(see --train_missing_contrastive)."
        },
    )
    train_missing_contrastive: bool = field(
        default=False,
        metadata={"help": "Train the contrastive model in --contrastive_model_dir first when it is missing."},
    )

    def __post_init__(self) -> None:
        super().__post_init__()
        if not self.reward_funcs:
            raise ValueError("`reward_funcs` is empty; name at least one reward, e.g. --reward_funcs correctness.")


# ------------------------------------------------------------------------------------------------- data


def _is_saved_dataset(path: str) -> bool:
    """A folder written by `save_to_disk` (a `DatasetDict` or a single `Dataset`)."""
    return os.path.isfile(os.path.join(path, "dataset_dict.json")) or os.path.isfile(
        os.path.join(path, "state.json")
    )


def _take(dataset: datasets.Dataset, rows: Any) -> datasets.Dataset:
    # In memory: never write index files into the user's data folder (nor race other processes doing the same
    # under `accelerate launch`).
    return dataset.select([int(i) for i in rows], keep_in_memory=True)


def _subset(dataset: datasets.Dataset, limit: int | None, seed: int) -> datasets.Dataset:
    # A seeded random subset rather than the first rows: splits are often sorted (the emoji set is in code-point
    # order), and the first N rows would all be one kind of image.
    if limit is None or limit >= len(dataset):
        return dataset
    return _take(dataset, np.random.default_rng(seed).permutation(len(dataset))[:limit])


def _cut(dataset: datasets.Dataset, fractions: list[float], seed: int) -> list[datasets.Dataset]:
    """Shuffle with `seed` (numpy's PCG64: the same on every platform) and cut off the given fractions, in order;
    the rest comes first. Every cut gets at least one row."""
    order = np.random.default_rng(seed).permutation(len(dataset))
    sizes = [max(1, int(len(dataset) * fraction + 0.5)) for fraction in fractions]
    if sum(sizes) >= len(dataset):
        raise ValueError(f"{len(dataset)} rows are too few to split off {fractions} and keep some for training.")
    parts, end = [], len(dataset)
    for size in reversed(sizes):
        parts.insert(0, _take(dataset, order[end - size : end]))
        end -= size
    return [_take(dataset, order[:end]), *parts]


def load_data(script_args: ScriptArguments) -> datasets.DatasetDict:
    """Load the data of a run as a `DatasetDict` with the train, eval and test splits that `script_args` names.

    - No `dataset_name`: the offline emoji set, split 80/10/10 by `split_seed` (see
      [`~clip_trl.offline.load_emoji_dataset`]), with the splits named as `script_args` says.
    - A `save_to_disk` folder: `datasets.load_from_disk`; anything else: `datasets.load_dataset(dataset_name,
      dataset_config)` (Hub ids, `imagefolder` folders, csv/json/parquet files ...).
    - Missing splits are made from the training split, seeded by `split_seed`: with neither eval nor test split,
      a shuffled 80/10/10 cut (with the default sizes); with only one of them, the other is carved out of train.
    - `max_train_samples` / `max_eval_samples` then keep seeded random subsets.

    Args:
        script_args ([`ScriptArguments`]): which data, which splits, how to subsample.

    Returns:
        `datasets.DatasetDict`: exactly the splits `dataset_train_split`, `dataset_eval_split` and
        `dataset_test_split` (other splits of the source are dropped).

    Raises:
        ValueError: the training split is missing (the message lists the splits present).

    Example:

    ```python
    >>> from clip_trl.scripts import ScriptArguments, load_data
    >>> data = load_data(ScriptArguments())  # the offline emoji set
    >>> sorted(data)
    ['test', 'train', 'validation']

    ```
    """
    import datasets

    args = script_args
    train_name, eval_name, test_name = args.dataset_train_split, args.dataset_eval_split, args.dataset_test_split
    if args.dataset_name is None:
        from clip_trl.offline import load_emoji_dataset

        emoji = load_emoji_dataset(
            seed=args.split_seed, validation_size=args.validation_size, test_size=args.test_size
        )
        splits = {train_name: emoji["train"], eval_name: emoji["validation"], test_name: emoji["test"]}
    else:
        name = os.path.expanduser(args.dataset_name)
        if os.path.isdir(name) and _is_saved_dataset(name):
            loaded = datasets.load_from_disk(name)
        else:
            loaded = datasets.load_dataset(name, args.dataset_config)
        if isinstance(loaded, datasets.Dataset):  # a single saved Dataset is its training split
            loaded = datasets.DatasetDict({train_name: loaded})
        if train_name not in loaded:
            raise ValueError(
                f"The data set {args.dataset_name!r} has no split {train_name!r} (set by `dataset_train_split`). "
                f"Splits present: {sorted(loaded)}."
            )
        splits = dict(loaded)
        train = splits[train_name]
        if eval_name not in splits and test_name not in splits:
            splits[train_name], splits[eval_name], splits[test_name] = _cut(
                train, [args.validation_size, args.test_size], args.split_seed
            )
            logger.info(
                "%r has only a %r split: cut it %d/%d/%d (seed %d) into %s / %s / %s.",
                args.dataset_name, train_name, round(100 * (1 - args.validation_size - args.test_size)),
                round(100 * args.validation_size), round(100 * args.test_size), args.split_seed,
                train_name, eval_name, test_name,
            )
        elif eval_name not in splits or test_name not in splits:
            missing = eval_name if eval_name not in splits else test_name
            size = args.validation_size if missing == eval_name else args.test_size
            splits[train_name], splits[missing] = _cut(train, [size], args.split_seed)
            logger.info("Carved the missing %r split out of %r (%.0f%%, seed %d).", missing, train_name,
                        100 * size, args.split_seed)
    result = datasets.DatasetDict(
        {
            train_name: _subset(splits[train_name], args.max_train_samples, args.split_seed),
            eval_name: _subset(splits[eval_name], args.max_eval_samples, args.split_seed),
            test_name: _subset(splits[test_name], args.max_eval_samples, args.split_seed),
        }
    )
    for split_name, split in result.items():
        if len(split) == 0:
            raise ValueError(f"Split {split_name!r} of {args.dataset_name or 'the emoji data set'!r} is empty.")
    return result


# ------------------------------------------------------------------------------------------------ model


def clip_peft_config(model_args: ModelConfig) -> Any:
    """`trl.get_peft_config(model_args)`, adjusted for dual encoders; `None` without `--use_peft`.

    trl's defaults target causal language models: `lora_task_type="CAUSAL_LM"` would wrap CLIP in
    `PeftModelForCausalLM`, so that task type becomes none (a plain `PeftModel`). Unset `lora_target_modules` stay
    unset: the trainers then put adapters on the attention projections of both towers, named as each tower names
    them ([`clip_trl.models.lora.default_lora_targets`]: `q_proj`/`v_proj` in CLIP, `query`/`value` in a BERT tower).

    Example:

    ```python
    >>> from trl import ModelConfig
    >>> from clip_trl.scripts import clip_peft_config
    >>> config = clip_peft_config(ModelConfig(use_peft=True, lora_r=8))
    >>> config.r, config.target_modules, config.task_type
    (8, None, None)

    ```
    """
    from trl import get_peft_config

    peft_config = get_peft_config(model_args)
    if peft_config is None:
        return None
    if str(peft_config.task_type) in ("CAUSAL_LM", "TaskType.CAUSAL_LM"):
        peft_config.task_type = None
    return peft_config


def model_init_kwargs_from(model_args: ModelConfig, training_args: Any) -> dict[str, Any]:
    """What `AutoModel.from_pretrained` gets from `ModelConfig` (as trl's own scripts pass it), for the
    trainers' `model_init_kwargs`; an explicit `--model_init_kwargs` wins.

    Example:

    ```python
    >>> from trl import ModelConfig
    >>> from clip_trl import ClipRLConfig
    >>> from clip_trl.scripts import model_init_kwargs_from
    >>> model_init_kwargs_from(ModelConfig(model_revision="main", dtype="bfloat16"), ClipRLConfig(output_dir="out"))
    {'revision': 'main', 'dtype': 'bfloat16'}

    ```
    """
    kwargs: dict[str, Any] = {"revision": model_args.model_revision}
    if model_args.dtype not in (None, "auto"):
        kwargs["dtype"] = model_args.dtype
    if model_args.attn_implementation is not None:
        kwargs["attn_implementation"] = model_args.attn_implementation
    kwargs.update(training_args.model_init_kwargs or {})  # explicit --model_init_kwargs win
    return kwargs


def resolve_model(
    script_args: ScriptArguments, training_args: Any, model_args: ModelConfig, base_dir: str | None = None
) -> str:
    """The model to train, as a hub id or a folder; builds the offline random CLIP when none is given.

    Without `model_name_or_path`, a random CLIP (`script_args.offline_model_size`, seeded by `training_args.seed`)
    is saved to `base_dir` (default `<output_dir>/base_model`) unless one is there already — the main process
    first, so that several processes never write it together — and that folder is returned.
    """
    if model_args.model_name_or_path:
        return model_args.model_name_or_path
    base_dir = base_dir or os.path.join(training_args.output_dir, "base_model")
    with training_args.main_process_first(desc="building the offline base model"):
        if not os.path.isfile(os.path.join(base_dir, "config.json")):
            from clip_trl.offline import build_clip

            logger.info("No --model_name_or_path: building a random %s CLIP in %s.", script_args.offline_model_size,
                        base_dir)
            build_clip(
                script_args.offline_model_size,
                image_size=script_args.offline_image_size,
                seed=training_args.seed,
                output_dir=base_dir,
            )
    if training_args.learning_rate < _RANDOM_INIT_MIN_LR:
        logger.warning(
            "The default model is a randomly initialised CLIP, and learning_rate=%g is meant for pretrained ones: "
            "it will hardly learn. Use e.g. --learning_rate 1e-3, or --config examples/configs/contrastive.yaml.",
            training_args.learning_rate,
        )
    return base_dir


# ------------------------------------------------------------------------------------------------- runs


def save_trainer(trainer: Any, output_dir: str | None = None) -> str:
    """Save the model and processor (the Trainer's `save_model`), and the model card when the save wrote none.

    Returns:
        `str`: the folder written.
    """
    output_dir = output_dir or trainer.args.output_dir
    trainer.save_model(output_dir)
    card = os.path.join(output_dir, "README.md")
    if trainer.is_world_process_zero() and not os.path.isfile(card) and hasattr(trainer, "create_model_card"):
        try:
            trainer.create_model_card()
        except Exception as error:  # a card is a nicety: never lose a finished training run over it
            logger.warning("Could not write the model card in %s: %s", output_dir, error)
    return output_dir


def evaluate_on_test(
    trainer: Any, data: datasets.DatasetDict, script_args: ScriptArguments, metric_key_prefix: str = "test"
) -> dict[str, float]:
    """Evaluate on the test split, log the metrics and write `<output_dir>/test_results.json` (main process).

    Returns:
        `dict[str, float]`: `test_image_to_text_recall@1`, ..., `test_in_batch_accuracy`, `test_loss`, ...
    """
    metrics = trainer.evaluate(data[script_args.dataset_test_split], metric_key_prefix=metric_key_prefix)
    trainer.log_metrics(metric_key_prefix, metrics)
    trainer.save_metrics(metric_key_prefix, metrics, combined=False)
    return metrics


def run_contrastive(
    script_args: ScriptArguments,
    training_args: ClipContrastiveConfig,
    model_args: ModelConfig,
    data: datasets.DatasetDict | None = None,
) -> ClipContrastiveTrainer:
    """Contrastive fine-tuning from parsed arguments: load data and model, train, save. Returns the trainer.

    The model and processor (and the model card) are saved to `training_args.output_dir`; evaluate on the test
    split afterwards with [`evaluate_on_test`].

    Args:
        script_args ([`ScriptArguments`]): the data.
        training_args ([`~clip_trl.ClipContrastiveConfig`]): the training configuration.
        model_args (`trl.ModelConfig`): the model (`model_name_or_path`, `dtype`, ...) and LoRA (`use_peft`, ...).
        data (`datasets.DatasetDict`, *optional*): already loaded data (from [`load_data`]).

    Example:

    ```python
    >>> from trl import ModelConfig
    >>> from clip_trl import ClipContrastiveConfig
    >>> from clip_trl.scripts import ScriptArguments, run_contrastive
    >>> trainer = run_contrastive(  # doctest: +SKIP
    ...     ScriptArguments(max_train_samples=64, max_eval_samples=32, offline_model_size="tiny"),
    ...     ClipContrastiveConfig(output_dir="/tmp/clip-c", max_steps=2, learning_rate=1e-3, report_to="none"),
    ...     ModelConfig(),
    ... )

    ```
    """
    from clip_trl.trainer import ClipContrastiveTrainer

    data = data if data is not None else load_data(script_args)
    model = resolve_model(script_args, training_args, model_args)
    training_args.model_init_kwargs = model_init_kwargs_from(model_args, training_args)
    trainer = ClipContrastiveTrainer(
        model=model,
        args=training_args,
        train_dataset=train_dataset(script_args, training_args, data),
        eval_dataset=data[script_args.dataset_eval_split],
        peft_config=clip_peft_config(model_args),
    )
    trainer.train(resume_from_checkpoint=training_args.resume_from_checkpoint)
    save_trainer(trainer)
    return trainer


def _contrastive_args_for(training_args: ClipRLConfig, output_dir: str) -> ClipContrastiveConfig:
    """The config of the contrastive run that [`run_rl`] makes when it has no model to start from.

    Only run-wide settings are copied from the RL config (seed, device, columns, batch sizes, logging); the
    optimisation settings are the pipeline's contrastive defaults, since RL's learning rate and epochs suit a
    different objective.
    """
    from clip_trl.trainer import ClipBaseConfig, ClipContrastiveConfig

    shared = {f.name for f in dataclasses.fields(ClipBaseConfig) if f.init}
    keep = {
        "seed", "data_seed", "use_cpu", "bf16", "fp16", "report_to", "logging_steps", "dataloader_num_workers",
        "per_device_eval_batch_size", "image_column", "caption_column", "skip_bad_rows", "max_length",
        "eval_ks", "eval_in_batch_size", "candidate_labels", "label_template", "label_column", "model_init_kwargs",
    } & shared
    values = {name: getattr(training_args, name) for name in keep}
    values.update(
        output_dir=output_dir,
        num_train_epochs=DEFAULT_CONTRASTIVE["epochs"],
        learning_rate=DEFAULT_CONTRASTIVE["learning_rate"],
        per_device_train_batch_size=DEFAULT_CONTRASTIVE["batch_size"],
        weight_decay=DEFAULT_CONTRASTIVE["weight_decay"],
        warmup_steps=DEFAULT_CONTRASTIVE["warmup"],
        lr_scheduler_type="cosine",
        eval_strategy="epoch",
        save_strategy="no",
    )
    values["report_to"] = values.get("report_to") or "none"
    return ClipContrastiveConfig(**values)


def run_rl(
    script_args: RLScriptArguments,
    training_args: ClipRLConfig,
    model_args: ModelConfig,
    data: datasets.DatasetDict | None = None,
) -> ClipRLTrainer:
    """RL fine-tuning from parsed arguments: load data and model, train, save. Returns the trainer.

    The starting model is `model_args.model_name_or_path` when given. Otherwise it is the contrastive model in
    `script_args.contrastive_model_dir` (default `clip_finetuned/`, what `examples/contrastive.py
    --output_dir clip_finetuned` writes). When that folder holds no model, `script_args.train_missing_contrastive`
    decides: [`run_contrastive`] trains one there first, from the offline random CLIP, with the pipeline's
    contrastive settings (run-wide settings such as the seed and columns come from `training_args`), or the run
    stops with an error saying how to get one. RL from a random model would learn nothing useful: the policy's
    first choices would be uniform guesses.

    Args:
        script_args ([`RLScriptArguments`]): the data and `reward_funcs`.
        training_args ([`~clip_trl.ClipRLConfig`]): the training configuration.
        model_args (`trl.ModelConfig`): the model and LoRA settings.
        data (`datasets.DatasetDict`, *optional*): already loaded data (from [`load_data`]).

    Example:

    ```python
    >>> from trl import ModelConfig
    >>> from clip_trl import ClipRLConfig
    >>> from clip_trl.scripts import RLScriptArguments, run_rl
    >>> trainer = run_rl(  # doctest: +SKIP
    ...     RLScriptArguments(max_train_samples=64, max_eval_samples=32, reward_funcs=["correctness"]),
    ...     ClipRLConfig(output_dir="/tmp/clip-rl", max_steps=2, num_samples=4, report_to="none"),
    ...     ModelConfig(model_name_or_path="/tmp/clip-c"),
    ... )

    ```
    """
    from clip_trl.trainer import ClipRLTrainer

    data = data if data is not None else load_data(script_args)
    model = model_args.model_name_or_path
    if not model:
        model = script_args.contrastive_model_dir
        if not os.path.isfile(os.path.join(model, "config.json")):
            if not script_args.train_missing_contrastive:
                raise ValueError(
                    f"No --model_name_or_path was given and {model!r} holds no contrastive model to start RL from. "
                    "Train one first (`python examples/contrastive.py --output_dir "
                    f"{model}`), pass --model_name_or_path, or pass --train_missing_contrastive true to have this "
                    "run train it there first."
                )
            logger.warning(
                "No --model_name_or_path and no contrastive model in %r: training one there first "
                "(--train_missing_contrastive).", model
            )
            # Full fine-tuning for this stage even under --use_peft: LoRA applies to the RL run the user asked for.
            run_contrastive(
                script_args,
                _contrastive_args_for(training_args, model),
                dataclasses.replace(model_args, use_peft=False),
                data=data,
            )
    training_args.model_init_kwargs = model_init_kwargs_from(model_args, training_args)
    trainer = ClipRLTrainer(
        model=model,
        reward_funcs=list(script_args.reward_funcs),
        args=training_args,
        train_dataset=train_dataset(script_args, training_args, data),
        eval_dataset=data[script_args.dataset_eval_split],
        peft_config=clip_peft_config(model_args),
    )
    trainer.train(resume_from_checkpoint=training_args.resume_from_checkpoint)
    save_trainer(trainer)
    return trainer


def train_dataset(script_args: ScriptArguments, training_args: Any, data: datasets.DatasetDict) -> Any:
    """The training data: a [`~clip_trl.data.shards.ShardStream`] over `--train_shards`, else the training split."""
    if not script_args.train_shards:
        return data[script_args.dataset_train_split]
    from clip_trl.data.shards import ShardStream

    if training_args.max_steps is None or training_args.max_steps <= 0:
        raise ValueError("`--train_shards` streams the data (no length is known): set `--max_steps`.")
    files = [f.strip() for f in script_args.train_shards.split(",") if f.strip()]
    return ShardStream(files, image_column=training_args.image_column, caption_column=training_args.caption_column,
                       shuffle_buffer=script_args.shuffle_buffer, seed=training_args.seed)


def print_metrics(metrics: dict[str, float], title: str) -> None:
    """Print metrics as an aligned two-column table (call on the main process only)."""
    print(f"\n{title}")
    width = max((len(name) for name in metrics), default=0)
    for name, value in metrics.items():
        shown = f"{value:.4f}" if isinstance(value, float) else str(value)
        print(f"  {name:<{width}}  {shown}")


def dump_json(payload: Any, path: str) -> None:
    """Write `payload` as indented JSON (parents created)."""
    os.makedirs(os.path.dirname(os.path.abspath(path)), exist_ok=True)
    with open(path, "w", encoding="utf-8") as handle:
        json.dump(payload, handle, indent=2, ensure_ascii=False, default=str)
        handle.write("\n")
