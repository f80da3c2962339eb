"""Fine-tuning that does not forget: tune on some CLDR groups of the offline emoji data, watch the others.

1. A base model: a random tiny CLIP trained contrastively on the whole train split (stands in for a pretrained
   CLIP that knows every group).
2. Fine-tuning on the train rows of a few groups only (`--groups`), with two named eval sets evaluated during
   training — `in_domain` (held-out rows of those groups) and `retention` (held-out rows of every other group) —
   so forgetting shows as it happens (`eval_retention_*` in the log).
3. WiSE-FT: `clip_trl.wise_ft(base, tuned, alpha)` for a sweep of alpha, both eval sets, and the plot.

Held-out rows are the validation and test splits. Prints Markdown tables and writes the plot:

    python benchmarks/wise_ft_retention.py --plot docs/images/wise_ft_sweep.png
"""

from __future__ import annotations

import argparse
import copy
import json
import time

import datasets
import torch
from transformers.utils import logging as hf_logging

from clip_trl import ClipContrastiveConfig, ClipContrastiveTrainer
from clip_trl.interpolation import best_alpha, plot_wise_ft_sweep, wise_ft_sweep
from clip_trl.offline import build_clip, load_emoji_dataset

IN_DOMAIN = ["People & Body", "Smileys & Emotion", "Animals & Nature", "Food & Drink"]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--groups", nargs="+", default=IN_DOMAIN, help="CLDR groups to fine-tune on")
    parser.add_argument("--base_steps", type=int, default=150)
    parser.add_argument("--tune_steps", type=int, default=60)
    parser.add_argument("--lr", type=float, default=3e-3)
    parser.add_argument("--alphas", type=float, nargs="+", default=[0.0, 0.25, 0.5, 0.75, 1.0])
    parser.add_argument("--metric", default="image_to_text_recall@5")
    # One thread: on a shared, loaded machine two threads per process wait on each other.
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--plot", default=None, help="write the alpha-sweep plot here (PNG)")
    parser.add_argument("--json", default=None)
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    hf_logging.set_verbosity_error()
    start = time.time()

    data = load_emoji_dataset(seed=args.seed)
    groups = set(args.groups)
    held_out = datasets.concatenate_datasets([data["validation"], data["test"]])
    eval_sets = {
        "in_domain": held_out.filter(lambda group: group in groups, input_columns="group"),
        "retention": held_out.filter(lambda group: group not in groups, input_columns="group"),
    }
    tune_rows = data["train"].filter(lambda group: group in groups, input_columns="group")
    common = dict(report_to="none", save_strategy="no", seed=args.seed, disable_tqdm=True, use_cpu=True,
                  logging_steps=50, dataloader_num_workers=0, per_device_train_batch_size=64,
                  per_device_eval_batch_size=256, learning_rate=args.lr)

    base, processor = build_clip("tiny", seed=args.seed)
    ClipContrastiveTrainer(model=base, processing_class=processor, train_dataset=data["train"],
                           args=ClipContrastiveConfig(output_dir="/tmp/wise-base", max_steps=args.base_steps,
                                                      warmup_steps=5, **common)).train()
    tuned = copy.deepcopy(base)
    trainer = ClipContrastiveTrainer(
        model=tuned, processing_class=processor, train_dataset=tune_rows, eval_dataset=eval_sets,
        args=ClipContrastiveConfig(output_dir="/tmp/wise-tuned", max_steps=args.tune_steps, eval_strategy="steps",
                                   eval_steps=max(args.tune_steps // 4, 1), **common))
    at_start = trainer.evaluate()
    trainer.train()
    during = [{"step": 0, **{k: v for k, v in at_start.items()}}] + [
        entry for entry in trainer.state.log_history if f"eval_retention_{args.metric}" in entry]
    # Merge each step's two entries (one per named set).
    curve: dict[int, dict[str, float]] = {}
    for entry in during:
        curve.setdefault(entry["step"], {}).update(entry)

    rows = wise_ft_sweep(base, tuned, processor, eval_sets, args.alphas, metric=args.metric, batch_size=256)
    elapsed = time.time() - start

    print(f"\nTune on {sorted(groups)} ({len(tune_rows)} train rows); held-out in_domain {len(eval_sets['in_domain'])} "
          f"rows, retention {len(eval_sets['retention'])} rows; seed {args.seed}; {elapsed:.0f} s\n")
    print(f"During fine-tuning ({args.metric}):\n")
    print("| step | in_domain | retention |\n| --- | --- | --- |")
    for step, entry in sorted(curve.items()):
        print(f"| {step} | {entry[f'eval_in_domain_{args.metric}']:.3f} | {entry[f'eval_retention_{args.metric}']:.3f} |")
    metrics = ["image_to_text_recall@1", "image_to_text_recall@5", "text_to_image_recall@5"]
    print("\nWiSE-FT sweep (alpha 0 = base, 1 = fine-tuned):\n")
    header = [f"{name}/{metric}" for name in eval_sets for metric in metrics]
    print("| alpha | " + " | ".join(header) + f" | mean {args.metric} |")
    print("| --- |" + " --- |" * (len(header) + 1))
    for row in rows:
        print(f"| {row['alpha']:g} | " + " | ".join(f"{row[key]:.3f}" for key in header) + f" | {row['mean']:.3f} |")
    print(f"\nBest mean at alpha = {best_alpha(rows):g}")
    if args.plot:
        plot_wise_ft_sweep(rows, args.plot, metric=args.metric,
                           title=f"WiSE-FT on the emoji data: tuned on {len(groups)} CLDR groups")
        print(f"Plot written to {args.plot}")
    if args.json:
        with open(args.json, "w") as handle:
            json.dump({"arguments": vars(args), "curve": curve, "sweep": rows}, handle, indent=2)


if __name__ == "__main__":
    main()
