"""The whole workflow in one command: split, contrastive fine-tuning, RL fine-tuning, test, report.

`clip-trl pipeline` (or [`run_pipeline`]) reproduces what the research project clip_trl grew out of did, with
the evaluation done on held-out data:

1. **Data**: the data set's own train / validation / test splits, or a seeded 80/10/10 split of its train split
   (the offline default: the emoji set of [`clip_trl.offline.load_emoji_dataset`]).
2. **Base**: the starting model (`--model`, or a random small CLIP built offline), scored on the test split.
3. **Contrastive**: [`~clip_trl.ClipContrastiveTrainer`], evaluated on the validation split every epoch; saved to
   `<output_dir>/clip_finetuned/`.
4. **RL**: [`~clip_trl.ClipRLTrainer`] from the contrastive model with the recipe that beats more contrastive
   training on the offline default (docs/rl.md): partial credit for a caption of the right `group`
   ([`clip_trl.rewards.graded.GradedReward`]; `correctness` for data without that column), exact policy gradient over
   in-batch candidates; validated every epoch; saved to
   `<output_dir>/clip_rl_finetuned/`.
5. **Test**: the three models on the test split — recall@1/5/10 both ways, in-batch accuracy at batch size 32,
   the graded reward of the greedy choice among all test captions (the metric the RL recipe improves) and the
   mean reward of the greedy policy over in-batch sets (see [`greedy_rewards`]) — written to `results.json` and
   `results.md` with training curves and a picture of retrieval examples."""

from __future__ import annotations

import dataclasses
import logging
import math
import os
import time
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

import numpy as np
import torch

from clip_trl.evaluation.embeddings import EmbeddingSet
from clip_trl.offline.recipes import DEFAULT_CONTRASTIVE, DEFAULT_OFFLINE_IMAGE_SIZE, DEFAULT_RL, GRADED_GROUP
from clip_trl.scripts.pipeline_results import (
    evaluate_model,
    graded_metric,
    plot_curves,
    results_table,
    write_markdown,
)

if TYPE_CHECKING:
    pass


logger = logging.getLogger(__name__)


#: Stage names, in order: the keys of `results.json["stages"]` and the rows of the results table.
STAGES = ("base", "contrastive", "contrastive+rl")


# What `--quick` changes (only where the user kept the default): a tiny model on tiny data, for tests.
_QUICK = {
    "offline_model_size": "tiny",
    "max_train_samples": 64,
    "max_eval_samples": 32,
    "contrastive_epochs": 1.0,
    "rl_epochs": 1.0,
    "contrastive_batch_size": 16,
    "rl_batch_size": 16,
    "num_samples": 4,
    "eval_batch_size": 64,
    "num_examples": 3,
}


@dataclass
class PipelineArguments:
    r"""
    Arguments of `clip-trl pipeline` (flags of the same names, or keys of a `--config` YAML file).

    Parameters:
        output_dir (`str`, defaults to `"clip_trl_pipeline"`):
            Folder of everything the run writes (see docs/pipeline.md).
        model (`str` or `None`, defaults to `None`):
            Starting model: a Hub id such as `openai/clip-vit-base-patch32` or a local folder. `None`: a random
            small CLIP built offline ([`clip_trl.offline.build_clip`]), saved to `<output_dir>/base_model`.
        dataset (`str` or `None`, defaults to `None`):
            A Hub data set id, a `save_to_disk` folder, or a `datasets.load_dataset` path. `None`: the offline
            emoji set. Splits: see [`clip_trl.scripts.data.load_data`].
        dataset_config (`str` or `None`): the data set's configuration name.
        image_column (`str`, defaults to `"image"`), caption_column (`str`, defaults to `"caption"`): columns.
        seed (`int`, defaults to 42): seed of the split, the weights of the offline model, and training.
        contrastive_epochs, contrastive_learning_rate, contrastive_batch_size: the contrastive stage.
        rl_epochs, rl_learning_rate, rl_batch_size: the RL stage (the batch is also the candidate set).
        num_samples (`int`, defaults to 8): actions sampled per image in RL.
        advantage (`str`, defaults to `"exact"`): `grpo`, `rloo` or `exact` (see [`~clip_trl.ClipRLConfig`]).
        beta (`float`, defaults to 0.0): weight of the KL to the contrastive model during RL.
        contrastive_coef (`float`, defaults to 0.0): weight of the contrastive loss mixed into the RL loss.
        policy_temperature (`float`, defaults to 1.0): τ of the policy, in training and in the reported reward.
        reward_funcs (`list[str]` or `None`, defaults to `None`): built-in rewards of [`clip_trl.rewards`], or
            `graded_group` ([`clip_trl.rewards.graded.GradedReward`]: 1 for the right caption, 0.5 for a caption of the same
            `group`). `None`: `graded_group` when the training data has a `group` column (the offline default
            does), else `correctness`.
        eval_batch_size (`int`, defaults to 256): images per forward pass in the test evaluation (a speed knob
            only). The validation during training runs in batches of the stage's training size, so that its loss
            is comparable with the training loss.
        in_batch_size (`int`, defaults to 32): candidate-set size of `in_batch_accuracy` and of the mean reward.
        max_train_samples, max_eval_samples (`int` or `None`): seeded random subsets of the splits.
        offline_model_size (`str`, defaults to `"small"`), image_size (`int` or `None`, defaults to 32):
            the random CLIP used without `--model` (`image_size` is ignored with `--model`).
        num_examples (`int`, defaults to 6): test images in the retrieval-examples picture (0: no picture).
        dataloader_num_workers (`int`, defaults to 0): DataLoader worker processes.
        use_cpu (`bool`, defaults to `False`): train on the CPU even when a GPU is present.
        report_to (`str`, defaults to `"none"`): trackers (`"tensorboard"`, `"wandb"`, ...).
        quick (`bool`, defaults to `False`): a tiny run for tests and smoke checks — a tiny model, 64 training
            and 32 eval/test rows, one epoch per stage — applied to the fields left at their defaults.
    """

    output_dir: str = field(
        default="clip_trl_pipeline", metadata={"help": "Folder of everything the run writes."}
    )
    model: str | None = field(
        default=None,
        metadata={
            "help": "Hub id or folder of the starting model (default: a random small CLIP, built offline)."
        },
    )
    dataset: str | None = field(
        default=None,
        metadata={
            "help": "Hub id, save_to_disk folder or load_dataset path (default: the offline emoji set)."
        },
    )
    dataset_config: str | None = field(default=None, metadata={"help": "Data set configuration name."})
    image_column: str = field(default="image", metadata={"help": "Column holding the images."})
    caption_column: str = field(default="caption", metadata={"help": "Column holding the captions."})
    seed: int = field(
        default=42, metadata={"help": "Seed of the split, the offline model's weights and training."}
    )
    contrastive_epochs: float = field(
        default=DEFAULT_CONTRASTIVE["epochs"], metadata={"help": "Contrastive epochs."}
    )
    contrastive_learning_rate: float = field(
        default=DEFAULT_CONTRASTIVE["learning_rate"],
        metadata={"help": "Contrastive peak learning rate (cosine)."},
    )
    contrastive_batch_size: int = field(
        default=DEFAULT_CONTRASTIVE["batch_size"], metadata={"help": "Contrastive batch size (per device)."}
    )
    rl_epochs: float = field(default=DEFAULT_RL["epochs"], metadata={"help": "RL epochs."})
    rl_learning_rate: float = field(
        default=DEFAULT_RL["learning_rate"], metadata={"help": "RL learning rate."}
    )
    rl_batch_size: int = field(
        default=DEFAULT_RL["batch_size"], metadata={"help": "RL batch size (per device): the candidate set."}
    )
    num_samples: int = field(
        default=DEFAULT_RL["num_samples"], metadata={"help": "RL actions sampled per image."}
    )
    advantage: str = field(
        default=DEFAULT_RL["advantage"],
        metadata={"help": "RL advantage estimator.", "choices": ["grpo", "rloo", "exact"]},
    )
    beta: float = field(
        default=DEFAULT_RL["beta"], metadata={"help": "RL KL weight to the contrastive model."}
    )
    contrastive_coef: float = field(
        default=DEFAULT_RL["contrastive_coef"],
        metadata={"help": "Weight of the contrastive loss mixed into RL."},
    )
    policy_temperature: float = field(default=1.0, metadata={"help": "Softmax temperature of the policy."})
    reward_funcs: list[str] | None = field(
        default=None,
        metadata={
            "help": "Reward names for RL and the report (built-ins or graded_group); default: graded_group when "
            "the data has a `group` column, else correctness."
        },
    )
    eval_batch_size: int = field(
        default=256,
        metadata={"help": "Images per forward pass in the test evaluation (validation: the training batch)."},
    )
    in_batch_size: int = field(
        default=32, metadata={"help": "Candidate-set size of in_batch_accuracy and of the mean reward."}
    )
    max_train_samples: int | None = field(
        default=None, metadata={"help": "Seeded subset of the training rows."}
    )
    max_eval_samples: int | None = field(
        default=None, metadata={"help": "Seeded subset of the validation rows and of the test rows."}
    )
    offline_model_size: str = field(
        default="small",
        metadata={"help": "Random CLIP preset used without --model.", "choices": ["small", "tiny"]},
    )
    image_size: int | None = field(
        default=DEFAULT_OFFLINE_IMAGE_SIZE,
        metadata={"help": "Input size of the random CLIP (multiple of 8; ignored with --model)."},
    )
    num_examples: int = field(default=6, metadata={"help": "Test images in the retrieval-examples picture."})
    dataloader_num_workers: int = field(default=0, metadata={"help": "DataLoader worker processes."})
    use_cpu: bool = field(default=False, metadata={"help": "Train on the CPU even when a GPU is present."})
    report_to: str = field(
        default="none", metadata={"help": "Trackers to report to (tensorboard, wandb, ...)."}
    )
    quick: bool = field(
        default=False,
        metadata={"help": "Tiny smoke run (tiny model, 64/32/32 rows, 1 epoch per stage) for tests."},
    )

    def __post_init__(self) -> None:
        if self.quick:
            defaults = {f.name: f.default for f in dataclasses.fields(self)}
            for name, value in _QUICK.items():
                if getattr(self, name) == defaults[name]:
                    setattr(self, name, value)
        if self.reward_funcs is not None and not self.reward_funcs:
            raise ValueError(
                "`reward_funcs` is empty; name at least one reward, e.g. --reward_funcs correctness."
            )
        for name in ("contrastive_batch_size", "rl_batch_size", "in_batch_size"):
            if getattr(self, name) < 2:
                raise ValueError(
                    f"`{name}` must be at least 2 (the batch is the set of negatives/candidates)."
                )
        if self.num_examples < 0:
            raise ValueError(f"`num_examples` must be 0 or more, got {self.num_examples}.")


def _check_pipeline_rewards(names: Sequence[str], columns: Sequence[str]) -> list[str]:
    """The reward names, after checking that `graded_group` (a built-in of [`clip_trl.rewards`]) has its
    `group` column: without it that reward would return `None` for every wrong choice."""
    if GRADED_GROUP in names and "group" not in columns:
        raise ValueError(
            f"`--reward_funcs {GRADED_GROUP}` grades choices by the `group` column, which the training data "
            f"lacks (columns: {list(columns)}); use e.g. `--reward_funcs correctness`."
        )
    return list(names)


def _trainer_kwargs(
    args: PipelineArguments, output_dir: str, epochs: float, batch_size: int, lr: float, steps_per_epoch: int
) -> dict[str, Any]:
    return {
        "output_dir": output_dir,
        "num_train_epochs": epochs,
        "per_device_train_batch_size": batch_size,
        # Validation in batches of the training size (the config's default): the contrastive loss grows with the
        # batch, so only then are the training and validation loss curves comparable.
        "learning_rate": lr,
        "eval_strategy": "epoch",
        "save_strategy": "no",
        # About five points per epoch on the curves, whatever the data size.
        "logging_steps": max(1, steps_per_epoch // 5),
        "seed": args.seed,
        "report_to": args.report_to,
        "use_cpu": args.use_cpu,
        "dataloader_num_workers": args.dataloader_num_workers,
        "dataloader_pin_memory": torch.cuda.is_available(),  # pinning is for copies to a GPU; CPU runs warn
        "image_column": args.image_column,
        "caption_column": args.caption_column,
        "eval_in_batch_size": args.in_batch_size,
        "disable_tqdm": True,
    }


def _card_with_test_metrics(trainer: Any, metrics: dict[str, float]) -> None:
    """Log a stage's test metrics (`test_*`, as `Trainer.evaluate(metric_key_prefix="test")` names them) and
    rewrite its model card, so that the card shows the numbers of `results.md`, split `test`."""
    from clip_trl.scripts.common import refresh_model_card

    trainer.log({f"test_{name}": value for name, value in metrics.items() if math.isfinite(value)})
    refresh_model_card(trainer)


def run_pipeline(args: PipelineArguments) -> dict[str, Any]:
    """Run the whole workflow (see the module docstring) and write its report; returns `results.json`'s content.

    Files written under `args.output_dir`: `base_model/` (only for the offline random model), `clip_finetuned/`,
    `clip_rl_finetuned/` (model, processor, model card, training curves), `results.json`, `results.md`,
    `contrastive_curves.png` and `rl_curves.png` (when `clip_trl.reporting.curves` is available) and
    `retrieval_examples.png`.

    Example:

    ```python
    >>> from clip_trl.scripts.pipeline import PipelineArguments, run_pipeline
    >>> results = run_pipeline(PipelineArguments(output_dir="/tmp/pipeline", quick=True))  # doctest: +SKIP
    >>> list(results["stages"])  # doctest: +SKIP
    ['base', 'contrastive', 'contrastive+rl']

    ```
    """
    from transformers import AutoProcessor, set_seed
    from trl import ModelConfig

    from clip_trl.models import modeling
    from clip_trl.scripts.arguments import ScriptArguments
    from clip_trl.scripts.common import dump_json, resolve_model, save_trainer
    from clip_trl.scripts.data import load_data
    from clip_trl.trainer import ClipContrastiveConfig, ClipContrastiveTrainer, ClipRLConfig, ClipRLTrainer

    started = time.perf_counter()
    out = args.output_dir
    os.makedirs(out, exist_ok=True)
    set_seed(args.seed)
    timing: dict[str, float] = {}

    script_args = ScriptArguments(
        dataset_name=args.dataset,
        dataset_config=args.dataset_config,
        max_train_samples=args.max_train_samples,
        max_eval_samples=args.max_eval_samples,
        split_seed=args.seed,
        offline_model_size=args.offline_model_size,
        offline_image_size=args.image_size,
    )
    data = load_data(script_args)
    train, validation, test = data["train"], data["validation"], data["test"]
    reward_names = (
        list(args.reward_funcs)
        if args.reward_funcs is not None
        else ([DEFAULT_RL["reward"]] if "group" in train.column_names else ["correctness"])
    )
    reward_funcs = _check_pipeline_rewards(reward_names, train.column_names)
    eval_kwargs = {
        "reward_funcs": reward_funcs,
        "image_column": args.image_column,
        "caption_column": args.caption_column,
        "batch_size": args.eval_batch_size,
        "in_batch_size": args.in_batch_size,
        "policy_temperature": args.policy_temperature,
    }

    # ---- base
    contrastive_dir = os.path.join(out, "clip_finetuned")
    rl_dir = os.path.join(out, "clip_rl_finetuned")
    contrastive_args = ClipContrastiveConfig(
        **_trainer_kwargs(
            args,
            contrastive_dir,
            args.contrastive_epochs,
            args.contrastive_batch_size,
            args.contrastive_learning_rate,
            math.ceil(len(train) / args.contrastive_batch_size),
        ),
        weight_decay=DEFAULT_CONTRASTIVE["weight_decay"],
        warmup_steps=DEFAULT_CONTRASTIVE["warmup"],
        lr_scheduler_type="cosine",
    )
    base = resolve_model(
        script_args,
        contrastive_args,
        ModelConfig(model_name_or_path=args.model),
        base_dir=os.path.join(out, "base_model"),
    )
    base_model = modeling.load_pretrained(base)
    processor = AutoProcessor.from_pretrained(base)
    tick = time.perf_counter()
    metrics: dict[str, dict[str, float]] = {}
    embeddings: dict[str, EmbeddingSet] = {}
    metrics["base"], embeddings["base"] = evaluate_model(base_model, processor, test, **eval_kwargs)
    metrics["base"].update(graded_metric(embeddings["base"], test))
    timing["evaluation"] = time.perf_counter() - tick
    logger.info("Base model on the test split: %s", metrics["base"])

    # ---- contrastive
    tick = time.perf_counter()
    trainer = ClipContrastiveTrainer(
        model=base_model,
        args=contrastive_args,
        train_dataset=train,
        eval_dataset=validation,
        processing_class=processor,
    )
    trainer.train()
    timing["contrastive_train"] = time.perf_counter() - tick
    save_trainer(trainer)
    contrastive_history = list(trainer.state.log_history)
    tick = time.perf_counter()
    metrics["contrastive"], embeddings["contrastive"] = evaluate_model(
        trainer.model, processor, test, **eval_kwargs
    )
    metrics["contrastive"].update(graded_metric(embeddings["contrastive"], test))
    timing["evaluation"] += time.perf_counter() - tick
    _card_with_test_metrics(trainer, metrics["contrastive"])
    del trainer

    # ---- RL, from the saved contrastive model (a fresh load: the base model object was trained in place)
    tick = time.perf_counter()
    rl_args = ClipRLConfig(
        **_trainer_kwargs(
            args,
            rl_dir,
            args.rl_epochs,
            args.rl_batch_size,
            args.rl_learning_rate,
            math.ceil(len(train) / args.rl_batch_size),
        ),
        num_samples=args.num_samples,
        advantage=args.advantage,
        beta=args.beta,
        contrastive_coef=args.contrastive_coef,
        policy_temperature=args.policy_temperature,
    )
    trainer = ClipRLTrainer(
        model=contrastive_dir,
        reward_funcs=reward_funcs,
        args=rl_args,
        train_dataset=train,
        eval_dataset=validation,
        processing_class=processor,
    )
    trainer.train()
    timing["rl_train"] = time.perf_counter() - tick
    save_trainer(trainer)
    rl_history = list(trainer.state.log_history)
    tick = time.perf_counter()
    metrics["contrastive+rl"], embeddings["contrastive+rl"] = evaluate_model(
        trainer.model, processor, test, **eval_kwargs
    )
    metrics["contrastive+rl"].update(graded_metric(embeddings["contrastive+rl"], test))
    timing["evaluation"] += time.perf_counter() - tick
    _card_with_test_metrics(trainer, metrics["contrastive+rl"])
    is_main = trainer.is_world_process_zero()
    del trainer

    # ---- report (main process only: the others have the same numbers)
    pictures: dict[str, str | None] = {
        "contrastive_curves": None,
        "rl_curves": None,
        "retrieval_examples": None,
    }
    if is_main:
        for key, history in (("contrastive_curves", contrastive_history), ("rl_curves", rl_history)):
            written = plot_curves(history, os.path.join(out, f"{key}.png"))
            pictures[key] = os.path.basename(written) if written else None
        if args.num_examples > 0:
            from clip_trl.reporting.retrieval_grid import RETRIEVAL_EXAMPLES_FILENAME, plot_retrieval_examples

            count = min(args.num_examples, len(test))
            # A seeded draw, not hand-picked examples: the picture shows typical results.
            rows = sorted(
                np.random.default_rng(args.seed).choice(len(test), size=count, replace=False).tolist()
            )
            shown = {"base": embeddings["base"], "contrastive + RL": embeddings["contrastive+rl"]}
            plot_retrieval_examples(
                test.select(rows)[args.image_column],
                rows,
                shown,
                os.path.join(out, RETRIEVAL_EXAMPLES_FILENAME),
            )
            pictures["retrieval_examples"] = RETRIEVAL_EXAMPLES_FILENAME
    timing["total"] = time.perf_counter() - started
    results = {
        "model": args.model or f"random {args.offline_model_size} CLIP (clip_trl.offline.build_clip)",
        "dataset": args.dataset or "offline emoji set (clip_trl.offline.load_emoji_dataset)",
        "args": dataclasses.asdict(args),
        "rewards": reward_names,
        "data": {
            "train_rows": len(train),
            "validation_rows": len(validation),
            "test_rows": len(test),
            "test_captions": embeddings["base"].num_texts,
        },
        "stages": metrics,
        "validation_history": {
            "contrastive": [e for e in contrastive_history if any(k.startswith("eval_") for k in e)],
            "contrastive+rl": [e for e in rl_history if any(k.startswith("eval_") for k in e)],
        },
        "models": {"base": base, "contrastive": contrastive_dir, "contrastive+rl": rl_dir},
        "pictures": pictures,
        "timing_seconds": {k: round(v, 1) for k, v in timing.items()},
    }
    if is_main:
        dump_json(results, os.path.join(out, "results.json"))
        write_markdown(os.path.join(out, "results.md"), results)
        print(f"\nTest split ({len(test)} rows) — {out}/results.md\n")
        print(results_table(metrics))
        print(f"\nTotal wall time: {timing['total']:.0f} s")
    return results
