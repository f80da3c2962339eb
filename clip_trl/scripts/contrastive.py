"""The contrastive run of `examples/contrastive.py` and `clip-trl contrastive`: data, a starting model, train,
save, test."""

from __future__ import annotations

from typing import TYPE_CHECKING

from clip_trl.scripts.arguments import ScriptArguments
from clip_trl.scripts.common import clip_peft_config, model_init_kwargs_from, resolve_model, save_trainer
from clip_trl.scripts.data import load_data, train_dataset

if TYPE_CHECKING:
    import datasets
    from trl import ModelConfig

    from clip_trl.trainer import ClipContrastiveConfig, ClipContrastiveTrainer


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
    >>> from clip_trl.scripts.arguments import ScriptArguments
    >>> from clip_trl.scripts.contrastive import run_contrastive
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
