"""Model cards for what the clip_trl trainers save and push.

[`build_model_card`] reads a trainer (its arguments, model, state and rewards) and fills the package's
template `templates/model_card.md` through `huggingface_hub.ModelCard`. The trainers call it from
`create_model_card()` (on every save, and from `push_to_hub`), so a pushed repository always explains
itself: base model, method and settings, how to load it, final evaluation metrics, curves and citations.

Front matter decisions, for the Hub's benefit:

- `library_name` is `transformers` for a full model (it is a plain transformers model: the Hub then shows
  a transformers loading snippet) and `peft` for a LoRA adapter (what peft itself writes, and what the Hub
  expects for an adapter repository). `clip_trl` is a tag, not the library: nothing of clip_trl is needed
  to *use* the result.
- `pipeline_tag` is `zero-shot-image-classification`, the Hub task of CLIP-style models.
- `model-index` holds the final metrics under that task, each named as the trainer logs it, with its split:
  `test` for the scripts' test evaluation (`test_*`), `validation` (or the eval set's name) for `eval_*`.
"""

from __future__ import annotations

import enum
import importlib.metadata
import math
import os
from collections.abc import Iterable, Sequence
from typing import Any

from huggingface_hub import EvalResult, ModelCard, ModelCardData

from clip_trl.hub.card_snippet import _is_hub_id, quick_start
from clip_trl.hub.citations import bibtex_entries
from clip_trl.reporting.curves import TRAINING_CURVES_FILENAME

__all__ = [
    "MODEL_CARD_TEMPLATE",
    "PIPELINE_TAG",
    "build_model_card",
    "citations",
    "final_eval_metrics",
    "final_training_metrics",
    "framework_versions",
    "split_metrics",
]

MODEL_CARD_TEMPLATE = os.path.join(os.path.dirname(__file__), "templates", "model_card.md")
PIPELINE_TAG = "zero-shot-image-classification"

#: Packages whose versions the card records (distribution names).
FRAMEWORKS: tuple[str, ...] = ("clip_trl", "transformers", "torch", "datasets", "peft", "trl")

# Logged evaluation values that describe the run, not the model.
_BOOKKEEPING_SUFFIXES = ("runtime", "samples_per_second", "steps_per_second", "samples", "epoch")

# What each method shows (its settings, description and citations) comes from the trainer's config: see
# `ClipBaseConfig.model_card_fields` / `model_card_description` / `model_card_citations`. This module knows
# no method by name, so a new trainer needs no change here.
_LORA_FIELDS = ("r", "lora_alpha", "lora_dropout", "target_modules", "use_dora")


# ------------------------------------------------------------------------------------------- pieces


def final_eval_metrics(log_history: Sequence[dict[str, Any]], prefix: str = "eval") -> dict[str, float]:
    r"""
    The last logged value of every evaluation metric (`{prefix}_*` keys, without timing and sample counts):
    `prefix="eval"` for the evaluations of `eval_dataset`, `"test"` for `evaluate(test, metric_key_prefix="test")`.

    Metrics of several evaluation sets (`eval_{name}_...`) may be logged in separate entries; each key keeps
    its own latest value.

    Args:
        log_history (sequence of `dict`): `trainer.state.log_history`.

    Returns:
        `dict[str, float]`: e.g. `{"eval_image_to_text_recall@1": 0.41, "eval_loss": 2.3}`.

    Example:

    ```python
    >>> from clip_trl.hub.model_card import final_eval_metrics
    >>> final_eval_metrics([{"eval_loss": 3.0, "eval_runtime": 1.2, "step": 5}, {"loss": 2.0, "step": 10},
    ...                     {"eval_loss": 2.5, "step": 10}])
    {'eval_loss': 2.5}

    ```
    """
    metrics: dict[str, float] = {}
    for entry in log_history:
        for key, value in entry.items():
            if not key.startswith(f"{prefix}_") or key.endswith(_BOOKKEEPING_SUFFIXES):
                continue
            if isinstance(value, (int, float)) and not isinstance(value, bool) and math.isfinite(value):
                metrics[key] = value
    return metrics


def final_training_metrics(
    log_history: Sequence[dict[str, Any]], names: Sequence[str] = ("reward", "reward_std", "kl", "accuracy")
) -> dict[str, Any]:
    r"""
    The RL training metrics of the last logging step that has a `reward` (`reward`, `kl`, ... and its `step`).

    Example:

    ```python
    >>> from clip_trl.hub.model_card import final_training_metrics
    >>> final_training_metrics([{"loss": 1.0, "reward": 0.2, "kl": 0.0, "step": 5},
    ...                         {"loss": 0.9, "reward": 0.4, "kl": 0.01, "step": 10}, {"eval_loss": 2.0, "step": 10}])
    {'step': 10, 'reward': 0.4, 'kl': 0.01}

    ```
    """
    for entry in reversed(log_history):
        if "reward" in entry:
            values = {
                name: entry[name]
                for name in names
                if isinstance(entry.get(name), (int, float)) and math.isfinite(entry[name])
            }
            return {"step": entry.get("step"), **values}
    return {}


def framework_versions(packages: Iterable[str] = FRAMEWORKS) -> dict[str, str]:
    """Installed version of each package, or `"not installed"`.

    Example:

    ```python
    >>> from clip_trl.hub.model_card import framework_versions
    >>> sorted(framework_versions())
    ['clip_trl', 'datasets', 'peft', 'torch', 'transformers', 'trl']

    ```
    """
    versions = {}
    for package in packages:
        try:
            versions[package] = importlib.metadata.version(package)
        except importlib.metadata.PackageNotFoundError:
            versions[package] = "not installed"
    return versions


def citations(keys: Iterable[str] = (), adapter: bool = False) -> list[str]:
    r"""
    BibTeX entries for what a run used: CLIP always, then the method's works (`keys`, from
    [`ClipBaseConfig.model_card_citations`][clip_trl.ClipBaseConfig.model_card_citations]), then LoRA for adapters.

    Keys are looked up in [`clip_trl.hub.citations.BIBTEX`]; a key that starts with `@` is a whole entry.

    Example:

    ```python
    >>> from clip_trl import ClipRLConfig
    >>> from clip_trl.hub.model_card import citations
    >>> keys = ClipRLConfig(output_dir="out", advantage="grpo").model_card_citations()
    >>> [entry.split("{")[1].split(",")[0] for entry in citations(keys, adapter=True)]
    ['radford2021clip', 'shao2024deepseekmath', 'hu2022lora']

    ```
    """
    return bibtex_entries(["clip", *keys, *(["lora"] if adapter else [])])


def _format_value(value: Any) -> str:
    if isinstance(value, enum.Enum):  # e.g. `SchedulerType.LINEAR` -> "linear"
        value = value.value
    if isinstance(value, float):
        return f"{value:g}"
    if isinstance(value, (set, frozenset)):
        value = sorted(value)
    if isinstance(value, (list, tuple)):
        return ", ".join(str(v) for v in value) if len(value) <= 8 else f"{len(value)} values"
    return str(value)


def _is_set(value: Any) -> bool:
    """Whether a LoRA setting is worth a line (not unset, off or empty)."""
    return not (value is None or value is False or (isinstance(value, (list, tuple, str)) and not value))


def _hyperparameters(args: Any, world_size: int, global_step: int) -> list[tuple[str, str]]:
    names = args.model_card_fields() if hasattr(args, "model_card_fields") else []
    rows = [(name, _format_value(getattr(args, name))) for name in names]
    batch = getattr(args, "per_device_train_batch_size", 0) * getattr(args, "gradient_accumulation_steps", 1)
    rows.insert(2, ("total_train_batch_size", str(batch * world_size)))
    rows.append(("optimizer steps done", str(global_step)))
    return rows


def _adapter_config(model: Any) -> Any:
    """The active peft adapter's config, or `None` for a plain model."""
    configs = getattr(model, "peft_config", None)
    if not isinstance(configs, dict) or not configs:
        return None
    active = getattr(model, "active_adapter", None)
    return (
        configs.get(active) if isinstance(active, str) and active in configs else next(iter(configs.values()))
    )


def _base_model_of(model: Any) -> Any:
    return model.get_base_model() if hasattr(model, "get_base_model") else model


#: The split each metric prefix names in `model-index` and in the card: `evaluate()` during training reads
#: `eval_dataset` (a validation set; a dict of named sets gives each set's name), the scripts' final
#: `evaluate(test, metric_key_prefix="test")` the held-out test split.
SPLITS = {"test": "test", "eval": "validation"}


def split_metrics(
    log_history: Sequence[dict[str, Any]], eval_names: Sequence[str] = ()
) -> list[tuple[str, str, float]]:
    r"""
    `(split, metric, value)` of the final metrics, test split first: `test_*` keys name the split `test`,
    `eval_*` keys `validation`, or the set's name for `eval_{name}_*` keys of a dict of eval sets.

    Example:

    ```python
    >>> from clip_trl.hub.model_card import split_metrics
    >>> split_metrics([{"eval_loss": 2.0, "step": 5}, {"test_image_to_text_recall@1": 0.5, "test_runtime": 1.0}])
    [('test', 'image_to_text_recall@1', 0.5), ('validation', 'loss', 2.0)]

    ```
    """
    rows = []
    for prefix, split in SPLITS.items():
        for key, value in final_eval_metrics(log_history, prefix).items():
            name, named = key.removeprefix(f"{prefix}_"), split
            for eval_name in eval_names if prefix == "eval" else ():  # `eval_{name}_metric` for named sets
                if name.startswith(f"{eval_name}_"):
                    name, named = name.removeprefix(f"{eval_name}_"), eval_name
                    break
            rows.append((named, name, value))
    return rows


def _eval_results(rows: Sequence[tuple[str, str, float]], dataset_name: str | None) -> list[EvalResult]:
    results = []
    for split, name, value in rows:
        metric_type = "recall" if "recall" in name else "accuracy" if "accuracy" in name else name
        task = "Zero-shot image classification" if "zero_shot" in name else "Image-text retrieval"
        results.append(
            EvalResult(
                task_type=PIPELINE_TAG,
                task_name=task,
                dataset_type=dataset_name or "custom",
                dataset_name=dataset_name or "custom",
                dataset_split=split,
                metric_type=metric_type,
                metric_name=name,
                metric_value=value,
            )
        )
    return results


# ---------------------------------------------------------------------------------------------- card


def _rollouts_section(output_dir: str, folder: str) -> dict[str, Any] | None:
    """The last logged step's first rollouts (`log_rollouts=True`), as a Markdown table whose thumbnails are
    linked relative to the card's folder; None when the run logged none."""
    from clip_trl.reporting.rollouts import CARD_ROLLOUTS, ROLLOUTS_DIRNAME, latest_rollouts, markdown_table

    rollouts = latest_rollouts(output_dir, CARD_ROLLOUTS)
    if not rollouts:
        return None
    # A checkpoint's card is written in a staging folder but lives in `output_dir/checkpoint-N`, one level down.
    same = os.path.abspath(folder) == os.path.abspath(output_dir)
    prefix = ROLLOUTS_DIRNAME if same else f"../{ROLLOUTS_DIRNAME}"
    return {
        "step": rollouts[0].step,
        "folder": prefix,
        "table": markdown_table(rollouts, image_prefix=prefix),
    }


def build_model_card(
    trainer: Any,
    model_name: str | None = None,
    dataset_name: str | list[str] | None = None,
    tags: str | list[str] | None = None,
    *,
    folder: str | os.PathLike[str] | None = None,
    language: str | list[str] | None = None,
    license: str | None = None,
    finetuned_from: str | None = None,
) -> ModelCard:
    r"""
    The model card of a clip_trl trainer's result, from `templates/model_card.md`.

    Args:
        trainer ([`ClipContrastiveTrainer`] or [`ClipRLTrainer`]): the trainer (trained or not).
        model_name (`str`, *optional*): title and `model-index` name; defaults to the output folder's name.
        dataset_name (`str` or `list[str]`, *optional*): Hub dataset id(s) trained on, for `datasets:`.
        tags (`str` or `list[str]`, *optional*): extra tags; `clip_trl`, the method and the model type are
            always added.
        folder (`str`, *optional*): where the card will live (defaults to `args.output_dir`); the training
            curves picture is shown when `training_curves.png` exists there.
        language, license (*optional*): front-matter fields.
        finetuned_from (`str`, *optional*): the base model's Hub id, when the model does not know it.

    Returns:
        `huggingface_hub.ModelCard`: call `.save(path)` or `.push_to_hub(repo_id)`.

    Example:

    ```python
    >>> import tempfile
    >>> from clip_trl import ClipContrastiveConfig, ClipContrastiveTrainer
    >>> from clip_trl.hub.model_card import build_model_card
    >>> from clip_trl.offline import build_clip, load_emoji_dataset
    >>> model, processor = build_clip("tiny")
    >>> args = ClipContrastiveConfig(output_dir=tempfile.mkdtemp(), report_to="none")
    >>> trainer = ClipContrastiveTrainer(model=model, args=args, processing_class=processor,
    ...                                  train_dataset=load_emoji_dataset(max_examples=16)["train"])
    >>> card = build_model_card(trainer, tags=["emoji"])
    >>> card.data.pipeline_tag, sorted(card.data.tags)
    ('zero-shot-image-classification', ['clip', 'clip_trl', 'contrastive', 'emoji'])

    ```
    """
    from clip_trl.models import modeling

    args = trainer.args
    method = getattr(trainer, "_method_name", "clip")
    accelerator = getattr(trainer, "accelerator", None)
    model = (
        accelerator.unwrap_model(trainer.model) if accelerator is not None else modeling.unwrap(trainer.model)
    )
    lora = _adapter_config(model)
    adapter = lora is not None
    base = _base_model_of(model)
    config = getattr(base, "config", None)
    model_type = getattr(config, "model_type", "") or ""

    named_base = (
        finetuned_from
        or (getattr(lora, "base_model_name_or_path", None) if adapter else None)
        or (getattr(config, "_name_or_path", None))
    )
    base_repo = named_base if _is_hub_id(named_base) else None
    folder = os.fspath(folder if folder is not None else args.output_dir)
    model_name = model_name or os.path.basename(os.path.abspath(args.output_dir))
    repo = getattr(trainer, "hub_model_id", None) or getattr(args, "hub_model_id", None) or args.output_dir

    tag_list = [tags] if isinstance(tags, str) else list(tags or [])
    for tag in [*getattr(trainer, "_tag_names", ["clip_trl"]), model_type, *(["lora"] if adapter else [])]:
        if tag and tag not in tag_list:
            tag_list.append(tag)
    datasets_list = [dataset_name] if isinstance(dataset_name, str) else list(dataset_name or []) or None

    eval_set = getattr(trainer, "_raw_eval_dataset", None)
    eval_names = sorted(eval_set, key=len, reverse=True) if isinstance(eval_set, dict) else []
    metrics = split_metrics(trainer.state.log_history, eval_names)
    main_dataset = datasets_list[0] if datasets_list else None
    card_data = ModelCardData(
        base_model=base_repo,
        datasets=datasets_list,
        language=language,
        license=license,
        library_name="peft" if adapter else "transformers",
        pipeline_tag=PIPELINE_TAG,
        tags=tag_list,
        model_name=model_name,
        eval_results=_eval_results(metrics, main_dataset) or None,
    )
    if base_repo:
        card_data.base_model_relation = "adapter" if adapter else "finetune"

    description = (
        args.model_card_description(adapter)
        if hasattr(args, "model_card_description")
        else "Fine-tuning of a CLIP-style dual encoder."
    )
    rewards = []
    if hasattr(trainer, "reward_names"):
        weights = getattr(trainer, "reward_weights", None)
        weights = (
            weights.tolist()
            if hasattr(weights, "tolist")
            else list(weights or [1.0] * len(trainer.reward_names))
        )
        rewards = [(name, _format_value(float(w))) for name, w in zip(trainer.reward_names, weights)]
    lora_rows = [
        (name, _format_value(getattr(lora, name)))
        for name in _LORA_FIELDS
        if adapter and _is_set(getattr(lora, name, None))
    ]
    labels = getattr(args, "candidate_labels", None)
    template = getattr(args, "label_template", "a photo of a {}.")
    example_labels = (
        [template.format(label) for label in labels[:3]]
        if labels
        else ["a photo of a cat", "a photo of a dog"]
    )
    train_dataset = getattr(trainer, "train_dataset", None)

    return ModelCard.from_template(
        card_data,
        template_path=MODEL_CARD_TEMPLATE,
        model_title=model_name,
        repo=repo,
        base_model=named_base if base_repo else None,
        model_class=type(base).__name__,
        adapter=adapter,
        trainer_class=type(trainer).__name__,
        method=method,
        method_description=description,
        dataset_names=datasets_list or [],
        num_train_rows=len(train_dataset)
        if train_dataset is not None and hasattr(train_dataset, "__len__")
        else None,
        hyperparameters=_hyperparameters(args, getattr(args, "world_size", 1), trainer.state.global_step),
        lora=lora_rows,
        rewards=rewards,
        metrics=[(split, name, f"{value:.4f}") for split, name, value in metrics],
        metric_splits=list(dict.fromkeys(split for split, _, _ in metrics)),
        training_metrics=final_training_metrics(trainer.state.log_history),
        quick_start=quick_start(
            repo, named_base if adapter else base_repo, type(base).__name__, adapter, example_labels
        ),
        curves=TRAINING_CURVES_FILENAME
        if os.path.isfile(os.path.join(folder, TRAINING_CURVES_FILENAME))
        else None,
        rollouts=_rollouts_section(args.output_dir, folder),
        versions=framework_versions(),
        citations=citations(
            args.model_card_citations() if hasattr(args, "model_card_citations") else (), adapter
        ),
    )
