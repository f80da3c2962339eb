"""Fine-tuning that does not forget: tune on some CLDR groups of the offline emoji data, watch the others.

1. A base model: a random tiny CLIP trained contrastively on the whole train split (stands in for a pretrained
   CLIP that knows every group).
2. Fine-tuning on the train rows of a few groups only (`--groups`), with two named eval sets evaluated during
   training — `in_domain` (held-out rows of those groups) and `retention` (held-out rows of every other group) —
   so forgetting shows as it happens (`eval_retention_*` in the log).
3. WiSE-FT: `clip_trl.wise_ft(base, tuned, alpha)` for a sweep of alpha, both eval sets, and the plot.

Held-out rows are the validation and test splits. Prints Markdown tables and writes the plot:

    python benchmarks/wise_ft_retention.py --seeds 0 1 2 --plot docs/images/wise_ft_sweep.png
"""

from __future__ import annotations

import argparse
import copy
import json
import statistics
import time

import datasets
import torch
from transformers.utils import logging as hf_logging

from clip_trl import ClipContrastiveConfig, ClipContrastiveTrainer
from clip_trl.models.wise_ft import best_alpha, plot_wise_ft_sweep, wise_ft_sweep
from clip_trl.offline import build_clip, load_emoji_dataset

IN_DOMAIN = ["People & Body", "Smileys & Emotion", "Animals & Nature", "Food & Drink"]


def run_seed(seed: int, args: argparse.Namespace) -> tuple[dict, list[dict[str, float]], dict[str, int]]:
    data = load_emoji_dataset(seed=seed)
    groups = set(args.groups)
    held_out = datasets.concatenate_datasets([data["validation"], data["test"]])
    eval_sets = {
        "in_domain": held_out.filter(lambda group: group in groups, input_columns="group"),
        "retention": held_out.filter(lambda group: group not in groups, input_columns="group"),
    }
    tune_rows = data["train"].filter(lambda group: group in groups, input_columns="group")
    common = dict(
        report_to="none",
        save_strategy="no",
        seed=seed,
        disable_tqdm=True,
        use_cpu=True,
        logging_steps=50,
        dataloader_num_workers=0,
        per_device_train_batch_size=64,
        per_device_eval_batch_size=256,
        learning_rate=args.lr,
    )

    base, processor = build_clip("tiny", seed=seed)
    ClipContrastiveTrainer(
        model=base,
        processing_class=processor,
        train_dataset=data["train"],
        args=ClipContrastiveConfig(
            output_dir="/tmp/wise-base", max_steps=args.base_steps, warmup_steps=5, **common
        ),
    ).train()
    tuned = copy.deepcopy(base)
    trainer = ClipContrastiveTrainer(
        model=tuned,
        processing_class=processor,
        train_dataset=tune_rows,
        eval_dataset=eval_sets,
        args=ClipContrastiveConfig(
            output_dir="/tmp/wise-tuned",
            max_steps=args.tune_steps,
            eval_strategy="steps",
            eval_steps=max(args.tune_steps // 4, 1),
            **common,
        ),
    )
    at_start = trainer.evaluate()
    trainer.train()
    # Each evaluation logs one entry per named set: merge them by step.
    curve: dict[int, dict[str, float]] = {0: dict(at_start)}
    for entry in trainer.state.log_history:
        if any(f"eval_{name}_{args.metric}" in entry for name in eval_sets):
            curve.setdefault(entry["step"], {}).update(entry)
    rows = wise_ft_sweep(base, tuned, processor, eval_sets, args.alphas, metric=args.metric, batch_size=256)
    sizes = {"tune": len(tune_rows), **{name: len(split) for name, split in eval_sets.items()}}
    print(f"seed {seed}: {json.dumps(rows)}", flush=True)
    return curve, rows, sizes


def _mean_std(values: list[float]) -> str:
    spread = statistics.stdev(values) if len(values) > 1 else 0.0
    return f"{statistics.mean(values):.3f} ± {spread:.3f}"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2])
    parser.add_argument("--groups", nargs="+", default=IN_DOMAIN, help="CLDR groups to fine-tune on")
    parser.add_argument("--base_steps", type=int, default=150)
    parser.add_argument("--tune_steps", type=int, default=150)
    parser.add_argument("--lr", type=float, default=3e-3)
    parser.add_argument("--alphas", type=float, nargs="+", default=[0.0, 0.25, 0.5, 0.75, 1.0])
    parser.add_argument("--metric", default="image_to_text_recall@5")
    # One thread: on a shared, loaded machine two threads per process wait on each other.
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument(
        "--plot", default=None, help="write the alpha-sweep plot (mean over seeds) here (PNG)"
    )
    parser.add_argument("--json", default=None)
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    hf_logging.set_verbosity_error()
    start = time.time()
    results = [run_seed(seed, args) for seed in args.seeds]
    sizes = results[0][2]
    print(
        f"\nTune on {sorted(args.groups)} ({sizes['tune']} train rows, {args.tune_steps} steps); held-out in_domain "
        f"{sizes['in_domain']} rows, retention {sizes['retention']} rows; seeds {args.seeds}; "
        f"{time.time() - start:.0f} s\n"
    )
    print(f"During fine-tuning ({args.metric}, mean ± std over seeds):\n")
    print("| step | in_domain | retention |\n| --- | --- | --- |")
    for step in sorted(results[0][0]):
        cells = [
            _mean_std([curve[step][f"eval_{name}_{args.metric}"] for curve, _, _ in results if step in curve])
            for name in ("in_domain", "retention")
        ]
        print(f"| {step} | {cells[0]} | {cells[1]} |")
    metrics = ["image_to_text_recall@1", "image_to_text_recall@5", "text_to_image_recall@5"]
    header = [f"{name}/{metric}" for name in ("in_domain", "retention") for metric in metrics]
    mean_rows = []
    print("\nWiSE-FT sweep (alpha 0 = base, 1 = fine-tuned; mean ± std over seeds):\n")
    print("| alpha | " + " | ".join(header) + f" | mean {args.metric} |")
    print("| --- |" + " --- |" * (len(header) + 1))
    for index, alpha in enumerate(args.alphas):
        per_seed = [rows[index] for _, rows, _ in results]
        mean_rows.append({key: statistics.mean(row[key] for row in per_seed) for key in per_seed[0]})
        print(
            f"| {alpha:g} | "
            + " | ".join(_mean_std([row[key] for row in per_seed]) for key in header)
            + f" | {_mean_std([row['mean'] for row in per_seed])} |"
        )
    print(f"\nBest mean (over seeds) at alpha = {best_alpha(mean_rows):g}")
    if args.plot:
        plot_wise_ft_sweep(
            mean_rows,
            args.plot,
            metric=args.metric,
            title=f"WiSE-FT, tuned on {len(args.groups)} emoji groups (mean of {len(args.seeds)} seeds)",
        )
        print(f"Plot written to {args.plot}")
    if args.json:
        with open(args.json, "w") as handle:
            json.dump(
                {"arguments": vars(args), "per_seed": [{"curve": c, "sweep": r} for c, r, _ in results]},
                handle,
                indent=2,
            )


if __name__ == "__main__":
    main()
