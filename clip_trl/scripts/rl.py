"""The RL run of `examples/rl.py` and `clip-trl rl`: data, a starting model (optionally contrastive-tuned first),
train, save, test."""

from __future__ import annotations

import dataclasses
import logging
import os
from typing import TYPE_CHECKING

from clip_trl.offline.recipes import DEFAULT_CONTRASTIVE
from clip_trl.scripts.arguments import RLScriptArguments
from clip_trl.scripts.common import clip_peft_config, model_init_kwargs_from, save_trainer
from clip_trl.scripts.contrastive import run_contrastive
from clip_trl.scripts.data import load_data, train_dataset

if TYPE_CHECKING:
    import datasets
    from trl import ModelConfig

    from clip_trl.trainer import ClipContrastiveConfig, ClipRLConfig, ClipRLTrainer

logger = logging.getLogger(__name__)


def _contrastive_args_for(training_args: ClipRLConfig, output_dir: str) -> ClipContrastiveConfig:
    """The config of the contrastive run that [`run_rl`] makes when it has no model to start from.

    Only run-wide settings are copied from the RL config (seed, device, columns, logging); the
    optimisation settings are the pipeline's contrastive defaults, since RL's learning rate and epochs suit a
    different objective; the eval batch is the contrastive training batch (the config's default).
    """
    from clip_trl.trainer import ClipBaseConfig, ClipContrastiveConfig

    shared = {f.name for f in dataclasses.fields(ClipBaseConfig) if f.init}
    keep = {
        "seed",
        "data_seed",
        "use_cpu",
        "bf16",
        "fp16",
        "report_to",
        "logging_steps",
        "dataloader_num_workers",
        "image_column",
        "caption_column",
        "skip_bad_rows",
        "max_length",
        "eval_ks",
        "eval_in_batch_size",
        "candidate_labels",
        "label_template",
        "label_column",
        "model_init_kwargs",
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
    >>> from clip_trl.scripts.arguments import RLScriptArguments
    >>> from clip_trl.scripts.rl import run_rl
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
                "(--train_missing_contrastive).",
                model,
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
