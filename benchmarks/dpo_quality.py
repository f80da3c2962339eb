"""Does DPO teach a preference? Near-miss pairs on the offline emoji data, several seeds.

Per seed: a random tiny CLIP is fine-tuned contrastively on the train split (the starting point), then, from
that same checkpoint and for the same number of steps,

- `+ DPO`: `ClipDPOTrainer` on pairs (the right emoji name vs the most similar name from the same CLDR group,
  `clip_trl.data.preference_pairs.near_miss_pairs`);
- `+ contrastive (control)`: more contrastive training on the same rows (does DPO beat just training longer?);
- `+ contrastive, hard negatives`: more contrastive training with the near miss as a hard negative
  (`negative_column`), the usual way to use such captions without a preference loss.

Measured on the held-out test split (its near misses drawn from every split's captions): preference accuracy
(the model scores the right name above its near miss) and retrieval recall@1 / @5 both ways; and the preference
accuracy on as many training pairs (learnt vs generalised). Prints a Markdown
table of mean ± std over seeds.

    python benchmarks/dpo_quality.py --seeds 0 1 2
"""

from __future__ import annotations

import argparse
import json
import statistics
import tempfile
import time
from typing import Any

import torch
from transformers.utils import logging as hf_logging

from clip_trl import ClipContrastiveConfig, ClipContrastiveTrainer, ClipDPOConfig, ClipDPOTrainer, evaluation
from clip_trl.data.preference_pairs import near_miss_pairs
from clip_trl.offline import build_clip, load_emoji_dataset

METRICS = [
    "train_preference_accuracy",
    "preference_accuracy",
    "image_to_text_recall@1",
    "image_to_text_recall@5",
    "text_to_image_recall@1",
    "text_to_image_recall@5",
]


def preference_accuracy(model: Any, processor: Any, pairs: Any) -> float:
    """Fraction of rows whose image is closer to the chosen caption than to the rejected one."""
    chosen = evaluation.compute_embeddings(model, processor, pairs, caption_column="chosen", batch_size=256)
    rejected = evaluation.compute_embeddings(
        model, processor, pairs, caption_column="rejected", batch_size=256
    )
    images = chosen.image_embeds
    good = (images * chosen.text_embeds[chosen.first_caption]).sum(dim=1)
    bad = (images * rejected.text_embeds[rejected.first_caption]).sum(dim=1)
    return float((good > bad).float().mean())


def test_metrics(model: Any, processor: Any, pairs: Any, train_pairs: Any) -> dict[str, float]:
    metrics = evaluation.retrieval_metrics(
        model, processor, pairs, image_column="image", caption_column="caption", ks=(1, 5), batch_size=256
    )
    return {
        "train_preference_accuracy": preference_accuracy(model, processor, train_pairs),
        "preference_accuracy": preference_accuracy(model, processor, pairs),
        **metrics,
    }


def run_seed(seed: int, args: argparse.Namespace, workdir: str) -> dict[str, dict[str, float]]:
    data = load_emoji_dataset(seed=seed)
    pool = [(c, g) for split in data.values() for c, g in zip(split["caption"], split["group"])]
    train = near_miss_pairs(data["train"], pool=pool, seed=seed)
    test = near_miss_pairs(data["test"], pool=pool, seed=seed)
    train_sample = train.select(range(0, len(train), max(len(train) // len(test), 1)))  # as many rows as test
    model, processor = build_clip(args.model_size, seed=seed)
    common = dict(
        report_to="none",
        save_strategy="no",
        seed=seed,
        disable_tqdm=True,
        use_cpu=True,
        logging_steps=50,
        dataloader_num_workers=0,
        per_device_train_batch_size=64,
    )
    contrastive = ClipContrastiveConfig(
        output_dir=f"{workdir}/c-{seed}",
        learning_rate=args.lr,
        warmup_steps=5,
        max_steps=args.contrastive_steps,
        **common,
    )
    ClipContrastiveTrainer(
        model=model, args=contrastive, train_dataset=data["train"], processing_class=processor
    ).train()
    checkpoint = f"{workdir}/c-{seed}/final"
    model.save_pretrained(checkpoint)
    processor.save_pretrained(checkpoint)
    results = {"contrastive (start)": test_metrics(model, processor, test, train_sample)}
    print(f"seed {seed} start {results['contrastive (start)']}", flush=True)

    def fresh() -> Any:
        return type(model).from_pretrained(checkpoint)

    variants = {
        "+ DPO": lambda: ClipDPOTrainer(
            model=fresh(),
            processing_class=processor,
            train_dataset=train,
            args=ClipDPOConfig(
                output_dir=f"{workdir}/d-{seed}",
                learning_rate=args.second_lr,
                beta=args.beta,
                max_steps=args.second_steps,
                **common,
            ),
        ),
        "+ contrastive (control)": lambda: ClipContrastiveTrainer(
            model=fresh(),
            processing_class=processor,
            train_dataset=train,
            args=ClipContrastiveConfig(
                output_dir=f"{workdir}/cc-{seed}",
                learning_rate=args.second_lr,
                max_steps=args.second_steps,
                **common,
            ),
        ),
        "+ contrastive, hard negatives": lambda: ClipContrastiveTrainer(
            model=fresh(),
            processing_class=processor,
            train_dataset=train,
            args=ClipContrastiveConfig(
                output_dir=f"{workdir}/ch-{seed}",
                learning_rate=args.second_lr,
                negative_column="rejected",
                max_steps=args.second_steps,
                **common,
            ),
        ),
    }
    for name, make in variants.items():
        trainer = make()
        trainer.train()
        results[name] = test_metrics(trainer.model, processor, test, train_sample)
        print(f"seed {seed} {name} {results[name]}", flush=True)
    return results


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2])
    parser.add_argument("--model_size", default="tiny", choices=["tiny", "small"])
    parser.add_argument("--contrastive_steps", type=int, default=150)
    parser.add_argument("--lr", type=float, default=3e-3)
    parser.add_argument("--second_steps", type=int, default=48, help="steps of DPO and of each control")
    parser.add_argument("--second_lr", type=float, default=3e-4)
    parser.add_argument("--beta", type=float, default=0.1)
    # One thread: on a shared, loaded machine two threads per process wait on each other (7x slower here).
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--json", default=None, help="also write the per-seed results here")
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    hf_logging.set_verbosity_error()
    start = time.time()
    per_seed = []
    with tempfile.TemporaryDirectory() as workdir:
        for seed in args.seeds:
            per_seed.append(run_seed(seed, args, workdir))
    print(
        f"\n{len(args.seeds)} seeds, {time.time() - start:.0f} s; held-out test split "
        f"({args.model_size} CLIP, {args.contrastive_steps} contrastive steps, then {args.second_steps} steps each)\n"
    )
    print("| model | " + " | ".join(METRICS) + " |")
    print("| --- |" + " --- |" * len(METRICS))
    for name in per_seed[0]:
        cells = []
        for metric in METRICS:
            values = [seed_results[name][metric] for seed_results in per_seed]
            spread = statistics.stdev(values) if len(values) > 1 else 0.0
            cells.append(f"{statistics.mean(values):.3f} ± {spread:.3f}")
        print(f"| {name} | " + " | ".join(cells) + " |")
    if args.json:
        with open(args.json, "w") as handle:
            json.dump({"arguments": vars(args), "per_seed": per_seed}, handle, indent=2)


if __name__ == "__main__":
    main()
