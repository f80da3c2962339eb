"""The distillation run of `examples/distill.py` and `clip-trl distill`: data, a student, its teacher(s), train,
save, test."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import TYPE_CHECKING

from clip_trl.scripts.arguments import ScriptArguments
from clip_trl.scripts.common import clip_peft_config, model_init_kwargs_from, resolve_model, save_trainer
from clip_trl.scripts.data import load_data, train_dataset

if TYPE_CHECKING:
    import datasets
    from trl import ModelConfig

    from clip_trl.trainer import ClipDistillationConfig, ClipDistillationTrainer

__all__ = ["DistillScriptArguments", "run_distill"]


@dataclass
class DistillScriptArguments(ScriptArguments):
    r"""
    [`~clip_trl.scripts.arguments.ScriptArguments`] plus how much of the training data is unlabelled.

    Parameters:
        unlabelled_fraction (`float`, defaults to `0.0`): the caption of this fraction of the training rows (drawn
            with `split_seed`) is removed before training, so that those rows are trained by the teacher alone
            (the distillation loss). With in-batch candidates every row needs its caption: keep it at 0 there.
    """

    unlabelled_fraction: float = field(
        default=0.0,
        metadata={"help": "Remove the caption of this fraction of the training rows (teacher-only rows)."},
    )

    def __post_init__(self) -> None:
        super().__post_init__()
        if not 0.0 <= self.unlabelled_fraction <= 1.0:
            raise ValueError(f"`unlabelled_fraction` must be in [0, 1], got {self.unlabelled_fraction}.")


def _drop_captions(dataset: datasets.Dataset, column: str, fraction: float, seed: int) -> datasets.Dataset:
    import numpy as np

    count = int(round(fraction * len(dataset)))
    if count == 0:
        return dataset
    chosen = set(np.random.default_rng(seed).permutation(len(dataset))[:count].tolist())
    return dataset.map(
        lambda row, i: {column: None if i in chosen else row[column]},
        with_indices=True,
        desc="unlabelled rows",
    )


def run_distill(
    script_args: DistillScriptArguments,
    training_args: ClipDistillationConfig,
    model_args: ModelConfig,
    data: datasets.DatasetDict | None = None,
) -> ClipDistillationTrainer:
    """Distillation from parsed arguments: load data, the student (`--model_name_or_path`, or the offline random
    CLIP) and the teacher(s) (`--teacher_model_name_or_path`, required), train, save. Returns the trainer.

    Example:

    ```python
    >>> from trl import ModelConfig
    >>> from clip_trl import ClipDistillationConfig
    >>> from clip_trl.scripts.distill import DistillScriptArguments, run_distill
    >>> trainer = run_distill(  # doctest: +SKIP
    ...     DistillScriptArguments(max_train_samples=64, max_eval_samples=32, offline_model_size="tiny"),
    ...     ClipDistillationConfig(output_dir="/tmp/clip-d", max_steps=2, teacher_model_name_or_path=["/tmp/clip-c"],
    ...                            report_to="none"),
    ...     ModelConfig(),
    ... )

    ```
    """
    from clip_trl.trainer import ClipDistillationTrainer

    if not training_args.teacher_model_name_or_path:
        raise ValueError(
            "Distillation needs a teacher: pass --teacher_model_name_or_path (a Hub id or a folder, e.g. the output "
            "of `clip-trl contrastive --output_dir clip_finetuned`; several for an ensemble, weighted by "
            "--teacher_weights)."
        )
    data = data if data is not None else load_data(script_args)
    model = resolve_model(script_args, training_args, model_args)
    training_args.model_init_kwargs = model_init_kwargs_from(model_args, training_args)
    train = train_dataset(script_args, training_args, data)
    if script_args.unlabelled_fraction > 0:
        train = _drop_captions(
            train, training_args.caption_column, script_args.unlabelled_fraction, script_args.split_seed
        )
    trainer = ClipDistillationTrainer(
        model=model,
        args=training_args,
        train_dataset=train,
        eval_dataset=data[script_args.dataset_eval_split],
        peft_config=clip_peft_config(model_args),
    )
    trainer.train(resume_from_checkpoint=training_args.resume_from_checkpoint)
    save_trainer(trainer)
    return trainer
