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
- `model-index` holds the final `eval_*` metrics under that task, each named as the trainer logs it.
"""

from __future__ import annotations

import enum
import importlib.metadata
import math
import os
from collections.abc import Iterable, Sequence
from typing import Any

from huggingface_hub import EvalResult, ModelCard, ModelCardData

from .plotting import TRAINING_CURVES_FILENAME

__all__ = [
    "MODEL_CARD_TEMPLATE",
    "PIPELINE_TAG",
    "build_model_card",
    "citations",
    "final_eval_metrics",
    "final_training_metrics",
    "framework_versions",
]

MODEL_CARD_TEMPLATE = os.path.join(os.path.dirname(__file__), "templates", "model_card.md")
PIPELINE_TAG = "zero-shot-image-classification"

#: Packages whose versions the card records (distribution names).
FRAMEWORKS: tuple[str, ...] = ("clip_trl", "transformers", "torch", "datasets", "peft", "trl")

# Logged evaluation values that describe the run, not the model.
_BOOKKEEPING_SUFFIXES = ("runtime", "samples_per_second", "steps_per_second", "samples", "epoch")

# Settings shown in the card, per method, when the config has them and they are "on". Shared settings
# come first; a name missing from the config (an older or newer version) is skipped, not an error.
_SHARED_FIELDS = (
    "learning_rate", "per_device_train_batch_size", "gradient_accumulation_steps", "num_train_epochs",
    "max_steps", "lr_scheduler_type", "warmup_steps", "weight_decay", "max_grad_norm", "seed",
    "bf16", "fp16", "freeze_vision", "freeze_text", "max_logit_scale", "logit_scale_learning_rate",
)
_METHOD_FIELDS: dict[str, tuple[str, ...]] = {
    "contrastive": ("loss_type", "siglip_bias_init", "negative_column", "contrastive_chunk_size"),
    "rl": (
        "candidates", "direction", "candidate_column", "candidate_labels", "label_template", "advantage",
        "num_samples", "scale_rewards", "beta", "policy_temperature", "entropy_coef", "contrastive_coef",
    ),
}
# Fields whose value only matters in some settings; `_relevant` decides.
_LORA_FIELDS = ("r", "lora_alpha", "lora_dropout", "target_modules", "use_dora")

_METHOD_DESCRIPTIONS = {
    "contrastive": (
        "Supervised contrastive fine-tuning: for each batch of image–caption pairs, the {loss} over the "
        "image–text similarity matrix `S = exp(logit_scale) · norm(f_img) · norm(f_txt)ᵀ`; rows sharing a "
        "caption or an image count as positives."
    ),
    "rl": (
        "Reinforcement-learning fine-tuning: the model is a policy `π(c | x) = softmax_c(s(x, c) / τ)` over a "
        "candidate set of {candidates} for each {query}. Each step {sampling}, scores the choices with the "
        "reward functions below and follows the policy gradient with {advantage}, plus `β · KL(π ‖ π_ref)` "
        "(exact over the candidates) to the {reference}."
    ),
}

_BIBTEX = {
    "clip": """@inproceedings{radford2021clip,
  title     = {Learning Transferable Visual Models From Natural Language Supervision},
  author    = {Radford, Alec and Kim, Jong Wook and Hallacy, Chris and Ramesh, Aditya and Goh, Gabriel and
               Agarwal, Sandhini and Sastry, Girish and Askell, Amanda and Mishkin, Pamela and Clark, Jack and
               Krueger, Gretchen and Sutskever, Ilya},
  booktitle = {Proceedings of the 38th International Conference on Machine Learning (ICML)},
  series    = {Proceedings of Machine Learning Research},
  volume    = {139},
  pages     = {8748--8763},
  year      = {2021}
}""",
    "siglip": """@inproceedings{zhai2023siglip,
  title     = {Sigmoid Loss for Language Image Pre-Training},
  author    = {Zhai, Xiaohua and Mustafa, Basil and Kolesnikov, Alexander and Beyer, Lucas},
  booktitle = {Proceedings of the IEEE/CVF International Conference on Computer Vision (ICCV)},
  pages     = {11975--11986},
  year      = {2023}
}""",
    "grpo": """@article{shao2024deepseekmath,
  title   = {{DeepSeekMath}: Pushing the Limits of Mathematical Reasoning in Open Language Models},
  author  = {Shao, Zhihong and Wang, Peiyi and Zhu, Qihao and Xu, Runxin and Song, Junxiao and Bi, Xiao and
             Zhang, Haowei and Zhang, Mingchuan and Li, Y. K. and Wu, Y. and Guo, Daya},
  journal = {arXiv preprint arXiv:2402.03300},
  year    = {2024}
}""",
    "rloo": """@inproceedings{ahmadian2024rloo,
  title     = {Back to Basics: Revisiting {REINFORCE}-Style Optimization for Learning from Human Feedback
               in {LLMs}},
  author    = {Ahmadian, Arash and Cremer, Chris and Gall{\\'e}, Matthias and Fadaee, Marzieh and Kreutzer, Julia
               and Pietquin, Olivier and {\\"U}st{\\"u}n, Ahmet and Hooker, Sara},
  booktitle = {Proceedings of the 62nd Annual Meeting of the Association for Computational Linguistics (ACL)},
  year      = {2024}
}""",
    "reinforce": """@article{williams1992reinforce,
  title   = {Simple Statistical Gradient-Following Algorithms for Connectionist Reinforcement Learning},
  author  = {Williams, Ronald J.},
  journal = {Machine Learning},
  volume  = {8},
  pages   = {229--256},
  year    = {1992}
}""",
    "lora": """@inproceedings{hu2022lora,
  title     = {{LoRA}: Low-Rank Adaptation of Large Language Models},
  author    = {Hu, Edward J. and Shen, Yelong and Wallis, Phillip and Allen-Zhu, Zeyuan and Li, Yuanzhi and
               Wang, Shean and Wang, Lu and Chen, Weizhu},
  booktitle = {International Conference on Learning Representations (ICLR)},
  year      = {2022}
}""",
}


# ------------------------------------------------------------------------------------------- pieces


def final_eval_metrics(log_history: Sequence[dict[str, Any]]) -> dict[str, float]:
    r"""
    The last logged value of every evaluation metric (`eval_*` keys, without timing and sample counts).

    Metrics of several evaluation sets (`eval_{name}_...`) may be logged in separate entries; each key keeps
    its own latest value.

    Args:
        log_history (sequence of `dict`): `trainer.state.log_history`.

    Returns:
        `dict[str, float]`: e.g. `{"eval_image_to_text_recall@1": 0.41, "eval_loss": 2.3}`.

    Example:

    ```python
    >>> from clip_trl.model_card import final_eval_metrics
    >>> final_eval_metrics([{"eval_loss": 3.0, "eval_runtime": 1.2, "step": 5}, {"loss": 2.0, "step": 10},
    ...                     {"eval_loss": 2.5, "step": 10}])
    {'eval_loss': 2.5}

    ```
    """
    metrics: dict[str, float] = {}
    for entry in log_history:
        for key, value in entry.items():
            if not key.startswith("eval_") or key.endswith(_BOOKKEEPING_SUFFIXES):
                continue
            if isinstance(value, (int, float)) and not isinstance(value, bool) and math.isfinite(value):
                metrics[key] = value
    return metrics


def final_training_metrics(log_history: Sequence[dict[str, Any]],
                           names: Sequence[str] = ("reward", "reward_std", "kl", "accuracy")) -> dict[str, Any]:
    r"""
    The RL training metrics of the last logging step that has a `reward` (`reward`, `kl`, ... and its `step`).

    Example:

    ```python
    >>> from clip_trl.model_card import final_training_metrics
    >>> final_training_metrics([{"loss": 1.0, "reward": 0.2, "kl": 0.0, "step": 5},
    ...                         {"loss": 0.9, "reward": 0.4, "kl": 0.01, "step": 10}, {"eval_loss": 2.0, "step": 10}])
    {'step': 10, 'reward': 0.4, 'kl': 0.01}

    ```
    """
    for entry in reversed(log_history):
        if "reward" in entry:
            values = {name: entry[name] for name in names
                      if isinstance(entry.get(name), (int, float)) and math.isfinite(entry[name])}
            return {"step": entry.get("step"), **values}
    return {}


def framework_versions(packages: Iterable[str] = FRAMEWORKS) -> dict[str, str]:
    """Installed version of each package, or `"not installed"`.

    Example:

    ```python
    >>> from clip_trl.model_card import framework_versions
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


def citations(method: str, loss_type: str | None = None, advantage: str | None = None,
              adapter: bool = False) -> list[str]:
    r"""
    BibTeX entries for what a run used: CLIP always; SigLIP for the sigmoid loss; GRPO (Shao et al., 2024),
    RLOO (Ahmadian et al., 2024) or REINFORCE (Williams, 1992, for the exact policy gradient) for RL; LoRA
    for adapters.

    Example:

    ```python
    >>> from clip_trl.model_card import citations
    >>> [entry.split("{")[1].split(",")[0] for entry in citations("rl", advantage="grpo")]
    ['radford2021clip', 'shao2024deepseekmath']

    ```
    """
    keys = ["clip"]
    if loss_type == "siglip":
        keys.append("siglip")
    if method == "rl":
        keys.append({"grpo": "grpo", "rloo": "rloo"}.get(advantage or "", "reinforce"))
    if adapter:
        keys.append("lora")
    return [_BIBTEX[key] for key in keys]


def _is_hub_id(name: str | None) -> bool:
    """A string that names a Hub repository rather than a local folder (only those go in `base_model`)."""
    if not name or os.path.isabs(name) or os.path.exists(name) or name.startswith((".", "~")):
        return False
    return name.count("/") <= 1


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


def _relevant(name: str, value: Any, args: Any) -> bool:
    """Whether a setting is worth a line: skip unset/off values and those the chosen options ignore."""
    if value is None or value is False or (isinstance(value, (list, tuple, str)) and not value):
        return False
    if name in ("entropy_coef", "contrastive_coef", "warmup_steps", "weight_decay") and value == 0:
        return False
    if name == "gradient_accumulation_steps" and value == 1:
        return False
    if name == "max_steps" and value <= 0:
        return False
    if name == "num_train_epochs" and getattr(args, "max_steps", -1) > 0:
        return False  # max_steps wins over epochs
    advantage = getattr(args, "advantage", None)
    if name == "num_samples" and advantage == "exact":
        return False
    if name == "scale_rewards" and advantage != "grpo":
        return False
    if name == "siglip_bias_init" and getattr(args, "loss_type", None) != "siglip":
        return False
    if name in ("candidate_labels", "label_template") and getattr(args, "candidates", None) != "labels":
        return False
    return not (name == "candidate_column" and getattr(args, "candidates", None) != "column")


def _hyperparameters(args: Any, method: str, world_size: int, global_step: int) -> list[tuple[str, str]]:
    rows = []
    for name in (*_SHARED_FIELDS, *_METHOD_FIELDS.get(method, ())):
        if hasattr(args, name) and _relevant(name, getattr(args, name), args):
            rows.append((name, _format_value(getattr(args, name))))
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
    return configs.get(active) if isinstance(active, str) and active in configs else next(iter(configs.values()))


def _base_model_of(model: Any) -> Any:
    return model.get_base_model() if hasattr(model, "get_base_model") else model


def _quick_start(repo: str, base_name: str | None, class_name: str, adapter: bool, model_type: str,
                 labels: list[str]) -> str:
    """The card's usage snippet: it must run as written once `repo` (and an adapter's base) can be reached."""
    import transformers

    # Custom lookalike classes are not importable from transformers; AutoModel finds them by config.
    import_name = class_name if hasattr(transformers, class_name) else "AutoModel"
    siglip = "siglip" in model_type
    lines = [
        "import torch",
        "from PIL import Image",
        f"from transformers import AutoProcessor, {import_name}",
    ]
    if adapter:
        if not base_name:
            base_line = (f'base = {import_name}.from_pretrained("<base model id or folder>")'
                         "  # the adapter config names none")
        elif _is_hub_id(base_name):
            base_line = f'base = {import_name}.from_pretrained("{base_name}")'
        else:
            base_line = (f'base = {import_name}.from_pretrained("{base_name}")'
                         "  # a local folder where this was trained: use its Hub id elsewhere")
        lines += [
            "from peft import PeftModel",
            "",
            base_line,
            f'model = PeftModel.from_pretrained(base, "{repo}").eval()',
            "model = model.merge_and_unload()  # optional: plain transformers model, no adapter overhead",
            # An adapter repository has no config.json, which AutoProcessor looks for (offline, it fails on
            # that): the processor comes from the base model, whose preprocessing the adapter was trained with.
            f'processor = AutoProcessor.from_pretrained("{base_name or "<base model id or folder>"}")',
        ]
    else:
        lines += [
            "",
            f'model = {import_name}.from_pretrained("{repo}").eval()',
            f'processor = AutoProcessor.from_pretrained("{repo}")',
        ]
    lines += [
        "",
        f"labels = {labels!r}",
        'image = Image.open("photo.jpg").convert("RGB")',
        # SigLIP was trained on texts padded to the full length; its text features depend on the padding.
        "inputs = processor(text=labels, images=image, return_tensors=\"pt\", "
        + ('padding="max_length")' if siglip else "padding=True)"),
        "with torch.no_grad():",
        "    logits = model(**inputs).logits_per_image[0]",
        # SigLIP scores each label independently; CLIP's scores compete in a softmax.
        "probs = torch.sigmoid(logits)" if siglip else "probs = logits.softmax(dim=-1)",
        "print({label: round(p, 3) for label, p in zip(labels, probs.tolist())})",
    ]
    return "\n".join(lines)


def _eval_results(metrics: dict[str, float], eval_names: Sequence[str], dataset_name: str | None
                  ) -> list[EvalResult]:
    results = []
    for key, value in metrics.items():
        name, split = key.removeprefix("eval_"), None
        for eval_name in eval_names:  # `eval_{name}_metric` for a dict of eval sets
            if name.startswith(f"{eval_name}_"):
                name, split = name.removeprefix(f"{eval_name}_"), eval_name
                break
        metric_type = "recall" if "recall" in name else "accuracy" if "accuracy" in name else name
        task = "Zero-shot image classification" if "zero_shot" in name else "Image-text retrieval"
        results.append(EvalResult(
            task_type=PIPELINE_TAG,
            task_name=task,
            dataset_type=dataset_name or "custom",
            dataset_name=dataset_name or "evaluation set",
            dataset_split=split,
            metric_type=metric_type,
            metric_name=name,
            metric_value=value,
        ))
    return results


# ---------------------------------------------------------------------------------------------- card


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
    >>> from clip_trl.model_card import build_model_card
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
    from . import modeling

    args = trainer.args
    method = getattr(trainer, "_method_name", "clip")
    accelerator = getattr(trainer, "accelerator", None)
    model = accelerator.unwrap_model(trainer.model) if accelerator is not None else modeling.unwrap(trainer.model)
    lora = _adapter_config(model)
    adapter = lora is not None
    base = _base_model_of(model)
    config = getattr(base, "config", None)
    model_type = getattr(config, "model_type", "") or ""

    named_base = finetuned_from or (getattr(lora, "base_model_name_or_path", None) if adapter else None) or (
        getattr(config, "_name_or_path", None)
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
    metrics = final_eval_metrics(trainer.state.log_history)
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
        eval_results=_eval_results(metrics, eval_names, main_dataset) or None,
    )
    if base_repo:
        card_data.base_model_relation = "adapter" if adapter else "finetune"

    loss_type = getattr(args, "loss_type", None)
    description = _describe_method(method, args, loss_type, adapter)
    rewards = []
    if hasattr(trainer, "reward_names"):
        weights = getattr(trainer, "reward_weights", None)
        weights = weights.tolist() if hasattr(weights, "tolist") else list(weights or [1.0] * len(trainer.reward_names))
        rewards = [(name, _format_value(float(w))) for name, w in zip(trainer.reward_names, weights)]
    lora_rows = [(name, _format_value(getattr(lora, name))) for name in _LORA_FIELDS
                 if adapter and _relevant(name, getattr(lora, name, None), lora)]
    labels = getattr(args, "candidate_labels", None)
    template = getattr(args, "label_template", "a photo of a {}.")
    example_labels = [template.format(label) for label in labels[:3]] if labels else [
        "a photo of a cat", "a photo of a dog"]
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
        num_train_rows=len(train_dataset) if train_dataset is not None and hasattr(train_dataset, "__len__") else None,
        hyperparameters=_hyperparameters(args, method, getattr(args, "world_size", 1), trainer.state.global_step),
        lora=lora_rows,
        rewards=rewards,
        metrics=[(key.removeprefix("eval_"), f"{value:.4f}") for key, value in metrics.items()],
        training_metrics=final_training_metrics(trainer.state.log_history),
        quick_start=_quick_start(repo, named_base if adapter else base_repo, type(base).__name__, adapter,
                                 model_type, example_labels),
        curves=TRAINING_CURVES_FILENAME if os.path.isfile(os.path.join(folder, TRAINING_CURVES_FILENAME)) else None,
        versions=framework_versions(),
        citations=citations(method, loss_type, getattr(args, "advantage", None), adapter),
    )


def _describe_method(method: str, args: Any, loss_type: str | None, adapter: bool) -> str:
    if method == "contrastive":
        loss = "pairwise sigmoid loss (SigLIP)" if loss_type == "siglip" else "symmetric InfoNCE loss (CLIP)"
        return _METHOD_DESCRIPTIONS["contrastive"].format(loss=loss)
    if method == "rl":
        direction = getattr(args, "direction", "image_to_text")
        candidates = {"in_batch": "the batch's", "column": "the row's", "labels": "the label set's"}.get(
            getattr(args, "candidates", "in_batch"), "the")
        kind = "images" if direction == "text_to_image" else "captions"
        advantage = getattr(args, "advantage", "grpo")
        sampling = ("scores every candidate (no sampling)" if advantage == "exact"
                    else f"samples {getattr(args, 'num_samples', '?')} choices per query")
        advantage_text = {
            "grpo": "GRPO-style group-normalised advantages",
            "rloo": "a leave-one-out (RLOO) baseline",
            "exact": "the exact expected-reward gradient",
        }.get(advantage, f"`{advantage}` advantages")
        beta = getattr(args, "beta", 0.0)
        reference = ("starting model (the same weights with the adapters disabled)" if adapter
                     else "starting model") if beta > 0 else "starting model, here switched off (`β = 0`)"
        return _METHOD_DESCRIPTIONS["rl"].format(
            candidates=f"{candidates} {kind}", query="caption" if direction == "text_to_image" else "image",
            sampling=sampling, advantage=advantage_text, reference=reference,
        )
    return "Fine-tuning of a CLIP-style dual encoder."
