"""What every method's script shares: the starting model (and LoRA through trl's `ModelConfig`), saving, the
test-split evaluation and the printed metrics."""

from __future__ import annotations

import json
import logging
import os
from typing import TYPE_CHECKING, Any

from clip_trl.scripts.arguments import _RANDOM_INIT_MIN_LR, ScriptArguments

if TYPE_CHECKING:
    import datasets
    from trl import ModelConfig


logger = logging.getLogger(__name__)


def clip_peft_config(model_args: ModelConfig) -> Any:
    """`trl.get_peft_config(model_args)`, adjusted for dual encoders; `None` without `--use_peft`.

    trl's defaults target causal language models: `lora_task_type="CAUSAL_LM"` would wrap CLIP in
    `PeftModelForCausalLM`, so that task type becomes none (a plain `PeftModel`). Unset `lora_target_modules` stay
    unset: the trainers then put adapters on the attention projections of both towers, named as each tower names
    them ([`clip_trl.models.lora.default_lora_targets`]: `q_proj`/`v_proj` in CLIP, `query`/`value` in a BERT tower).

    Example:

    ```python
    >>> from trl import ModelConfig
    >>> from clip_trl.scripts.common import clip_peft_config
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
    >>> from clip_trl.scripts.common import model_init_kwargs_from
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

            logger.info(
                "No --model_name_or_path: building a random %s CLIP in %s.",
                script_args.offline_model_size,
                base_dir,
            )
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
    """Evaluate on the test split, log the metrics, write `<output_dir>/test_results.json` and rewrite the model
    card with them (main process): its Evaluation section and `model-index` then carry the test metrics, with
    the split named `test`.

    Returns:
        `dict[str, float]`: `test_image_to_text_recall@1`, ..., `test_in_batch_accuracy`, `test_loss`, ...
    """
    metrics = trainer.evaluate(data[script_args.dataset_test_split], metric_key_prefix=metric_key_prefix)
    trainer.log_metrics(metric_key_prefix, metrics)
    trainer.save_metrics(metric_key_prefix, metrics, combined=False)
    refresh_model_card(trainer)
    return metrics


def refresh_model_card(trainer: Any) -> None:
    """Rewrite `output_dir/README.md` from the trainer's log (which now holds the test metrics); never fails a
    finished run (main process only)."""
    if not trainer.is_world_process_zero() or not hasattr(trainer, "create_model_card"):
        return
    try:
        trainer.create_model_card()
    except Exception as error:  # a card is a nicety: never lose a finished training run over it
        logger.warning("Could not rewrite the model card in %s: %s", trainer.args.output_dir, error)


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
