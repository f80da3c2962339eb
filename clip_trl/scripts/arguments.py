"""The script arguments of the example scripts and the `clip-trl` command: the data, and for RL the candidate
set's source."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    pass

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
    >>> from clip_trl.scripts.arguments import ScriptArguments
    >>> from clip_trl.scripts.data import load_data
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
        metadata={
            "help": "Split of the final test evaluation; made by a seeded 80/10/10 split when missing."
        },
    )
    max_train_samples: int | None = field(
        default=None, metadata={"help": "Keep a seeded random subset of this many training rows."}
    )
    max_eval_samples: int | None = field(
        default=None, metadata={"help": "Keep a seeded random subset of this many eval rows and test rows."}
    )
    split_seed: int = field(
        default=42, metadata={"help": "Seed of the splits and subsets made by the script."}
    )
    validation_size: float = field(
        default=0.1, metadata={"help": "Fraction of rows for a split-made validation set."}
    )
    test_size: float = field(default=0.1, metadata={"help": "Fraction of rows for a split-made test set."})
    offline_model_size: str = field(
        default="small",
        metadata={
            "help": "Random CLIP preset used when --model_name_or_path is not given.",
            "choices": ["small", "tiny"],
        },
    )
    offline_image_size: int | None = field(
        default=None,
        metadata={"help": "Input resolution of that random CLIP (multiple of 8); default: preset's."},
    )
    train_shards: str | None = field(
        default=None,
        metadata={
            "help": "Train on webdataset .tar shards (glob or comma-separated paths) instead of the train "
            "split; needs --max_steps."
        },
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
            Rewards by name, as TRL's `grpo.py` takes them: built-ins of [`clip_trl.rewards`] (`correctness`,
            `confidence_correctness`, `caption_similarity`, `graded_group`), dotted import paths
            (`my_rewards.short_caption`, found from the current folder too), or a CLIP model's folder or hub id
            (a `ClipScoreReward` teacher); weigh them with `--reward_weights`.
        contrastive_model_dir (`str`, defaults to `"clip_finetuned"`):
            Used only when `--model_name_or_path` is not given: RL starts from the contrastive model saved in this
            folder (what `examples/contrastive.py --output_dir clip_finetuned` writes).
        train_missing_contrastive (`bool`, defaults to `False`):
            When `contrastive_model_dir` holds no model: `True` trains one there first (see [`run_rl`]); `False`
            stops with an error that says how to get one. Never a hidden second training run.
    """

    reward_funcs: list[str] = field(
        default_factory=lambda: ["correctness"],
        metadata={
            "help": "Rewards: built-in names, dotted import paths (module.function) or CLIP model folders/hub ids "
            "(teacher rewards), e.g. --reward_funcs correctness my_rewards.short_caption."
        },
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
            raise ValueError(
                "`reward_funcs` is empty; name at least one reward, e.g. --reward_funcs correctness."
            )
