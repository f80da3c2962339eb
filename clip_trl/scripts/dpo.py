"""The DPO run of `examples/dpo.py` and `clip-trl dpo`: preference data, a starting model, train, save."""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

from clip_trl.scripts.arguments import ScriptArguments
from clip_trl.scripts.common import clip_peft_config, model_init_kwargs_from, save_trainer
from clip_trl.scripts.data import load_data

if TYPE_CHECKING:
    import datasets
    from trl import ModelConfig

    from clip_trl.trainer import ClipDPOConfig, ClipDPOTrainer

__all__ = ["DPOScriptArguments", "load_preference_data", "run_dpo"]


@dataclass
class DPOScriptArguments(ScriptArguments):
    r"""
    [`~clip_trl.scripts.arguments.ScriptArguments`] plus how to get preference pairs.

    A data set that already has the config's `rejected_column` is used as it is. Otherwise pairs are made from
    its captions with [`~clip_trl.data.preference_pairs.near_miss_pairs`]: the chosen caption is the row's own, the
    rejected one the caption of another row of the same `group_column` value that shares the most words with it
    (drawn from every row of every split, so that held-out pairs are as hard as training pairs).

    Parameters:
        pairs_from_column (`str`, defaults to `"caption"`): the caption column pairs are made from.
        group_column (`str` or `None`, defaults to `"group"`): rejected captions come from the same group (the CLDR
            group of the offline emoji data); `None`: from any row.
        num_rejected (`int`, defaults to `1`): rejected captions per row.
    """

    pairs_from_column: str = field(
        default="caption",
        metadata={"help": "Caption column that preference pairs are made from (when needed)."},
    )
    group_column: str | None = field(
        default="group",
        metadata={"help": "Rejected captions come from rows of the same value of this column."},
    )
    num_rejected: int = field(default=1, metadata={"help": "Rejected (near-miss) captions per row."})


def load_preference_data(
    script_args: DPOScriptArguments, training_args: ClipDPOConfig
) -> datasets.DatasetDict:
    """The run's splits (see [`~clip_trl.scripts.data.load_data`]) with `chosen` / `rejected` columns.

    Example:

    ```python
    >>> from clip_trl import ClipDPOConfig
    >>> from clip_trl.scripts.dpo import DPOScriptArguments, load_preference_data
    >>> data = load_preference_data(DPOScriptArguments(max_train_samples=32, max_eval_samples=8),
    ...                             ClipDPOConfig(output_dir="out"))
    >>> row = data["test"][0]
    >>> row["chosen"] != row["rejected"], sorted(data)
    (True, ['test', 'train', 'validation'])

    ```
    """
    from clip_trl.data.preference_pairs import near_miss_pairs

    data = load_data(script_args)
    train = data[script_args.dataset_train_split]
    if training_args.rejected_column in train.column_names:
        return data
    column, group = script_args.pairs_from_column, script_args.group_column
    if group is not None and group not in train.column_names:
        raise ValueError(
            f"Cannot make preference pairs by {group!r}: the data has no such column ({sorted(train.column_names)}). "
            "Set --group_column to one of them, or to None to draw rejected captions from any row."
        )
    # Rejected captions come from every row of every split, before any `max_*_samples` subsampling: a subsample
    # may leave a group with a single row, and held-out pairs should be as hard as training pairs.
    full = (
        data
        if script_args.max_train_samples is None and script_args.max_eval_samples is None
        else load_data(dataclasses.replace(script_args, max_train_samples=None, max_eval_samples=None))
    )
    pool = [
        (caption, row_group)
        for split in full.values()
        for caption, row_group in zip(split[column], split[group] if group else [None] * len(split))
    ]
    return data.__class__(
        {
            name: near_miss_pairs(
                split,
                caption_column=column,
                group_column=group,
                pool=pool,
                num_rejected=script_args.num_rejected,
                chosen_column=training_args.chosen_column,
                rejected_column=training_args.rejected_column,
                seed=script_args.split_seed,
            )
            for name, split in data.items()
        }
    )


def run_dpo(
    script_args: DPOScriptArguments,
    training_args: ClipDPOConfig,
    model_args: ModelConfig,
    data: Any = None,
) -> ClipDPOTrainer:
    """DPO from parsed arguments: preference data, the starting model (`--model_name_or_path`, required: DPO
    refines a model that already ranks captions), train, save. Returns the trainer."""
    from clip_trl.trainer import ClipDPOTrainer

    if not model_args.model_name_or_path:
        raise ValueError(
            "DPO needs a starting model that already ranks captions: pass --model_name_or_path (a Hub id or a "
            "folder, e.g. the output of `clip-trl contrastive --output_dir clip_finetuned`)."
        )
    data = data if data is not None else load_preference_data(script_args, training_args)
    training_args.model_init_kwargs = model_init_kwargs_from(model_args, training_args)
    trainer = ClipDPOTrainer(
        model=model_args.model_name_or_path,
        args=training_args,
        train_dataset=data[script_args.dataset_train_split],
        eval_dataset=data[script_args.dataset_eval_split],
        peft_config=clip_peft_config(model_args),
    )
    trainer.train(resume_from_checkpoint=training_args.resume_from_checkpoint)
    save_trainer(trainer)
    return trainer
