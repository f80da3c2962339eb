"""How step time scales: contrastive with batch size; RL with the candidate count and `num_samples`.

Same model for every row (`build_clip(--model)`, seed 0), whole Trainer steps on a batch collated once (see
`_steps.py`), median step time after warm-up, best of `--repetitions` runs. Times are relative, so read the
ratios: per-sample cost for the contrastive table, the ratio to a contrastive step on the same batch for the
RL tables.

- Contrastive: batch 16 .. 256. The logits matrix is B x B, so the loss grows as B^2 while the towers grow as B;
  per-sample time should stay flat until the B^2 part shows.
- RL, candidate count K (a `candidate_column` of K captions per image, one of them the true one), batch 32,
  `num_samples=4`, GRPO, β=0: the K candidate captions go through the text tower, so a step grows with K.
- RL, `num_samples` S (in-batch candidates, batch 32, GRPO, β=0): samples are drawn from a distribution that is
  already computed, so S should cost almost nothing.

    python benchmarks/scaling.py                 # ~5 min on 2 CPU cores
    python benchmarks/scaling.py --quick
"""

from __future__ import annotations

import argparse
import os
import random
import sys
import tempfile

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))

import _steps  # noqa: E402
import torch  # noqa: E402

from clip_trl import ClipContrastiveConfig, ClipContrastiveTrainer, ClipRLConfig, ClipRLTrainer  # noqa: E402
from clip_trl.data.collator import ROW_INDEX_KEY  # noqa: E402
from clip_trl.offline import build_clip, load_emoji_dataset  # noqa: E402


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--model", default="small")
    parser.add_argument("--steps", type=int, default=5)
    parser.add_argument("--warmup", type=int, default=2)
    parser.add_argument("--repetitions", type=int, default=2)
    parser.add_argument("--quick", action="store_true")
    args = parser.parse_args()
    if args.quick:
        args.steps, args.repetitions = 3, 1
    data = load_emoji_dataset()["train"]
    captions = data["caption"]

    def settings(batch: int) -> dict:
        return dict(
            output_dir=tempfile.mkdtemp(),
            report_to="none",
            save_strategy="no",
            disable_tqdm=True,
            seed=0,
            per_device_train_batch_size=batch,
            max_steps=args.warmup + args.steps,
            logging_steps=10**6,
            learning_rate=1e-5,
            dataloader_num_workers=0,
        )

    def rows(batch: int, candidates: int | None = None) -> list[dict]:
        chosen = [dict(data[i], **{ROW_INDEX_KEY: i}) for i in range(batch)]
        if candidates is not None:
            generator = random.Random(0)
            for row in chosen:
                others = generator.sample([c for c in captions if c != row["caption"]], candidates - 1)
                row["options"] = [row["caption"], *others]
        return chosen

    def contrastive(batch: int):
        def build(timer):
            model, processor = build_clip(args.model, seed=0)
            trainer = ClipContrastiveTrainer(
                model=model,
                args=ClipContrastiveConfig(**settings(batch)),
                processing_class=processor,
                train_dataset=_steps.dummy_rows(batch * (args.warmup + args.steps)),
                callbacks=[timer],
            )
            trainer.data_collator = _steps.ConstantBatch(trainer.data_collator(rows(batch)))
            return trainer

        return lambda: _steps.median_step_seconds(build, args.warmup)

    def rl(batch: int, num_samples: int, candidates: int | None):
        def build(timer):
            model, processor = build_clip(args.model, seed=0)
            extra = {"candidates": "column", "candidate_column": "options"} if candidates else {}
            config = ClipRLConfig(
                **settings(batch), num_samples=num_samples, advantage="grpo", beta=0.0, **extra
            )
            sample = rows(batch, candidates)
            import datasets

            dataset = datasets.Dataset.from_list(
                [{k: v for k, v in r.items() if k != ROW_INDEX_KEY} for r in sample]
            )
            trainer = ClipRLTrainer(
                model=model,
                args=config,
                processing_class=processor,
                train_dataset=dataset,
                reward_funcs=["correctness"],
                callbacks=[timer],
            )
            trainer.data_collator = _steps.ConstantBatch(trainer.data_collator(sample))
            return trainer

        return lambda: _steps.median_step_seconds(build, args.warmup)

    torch.manual_seed(0)
    print(
        f"model {args.model}; torch {torch.__version__}; {torch.get_num_threads()} threads; best of "
        f"{args.repetitions} runs of {args.steps} steps\n"
    )

    batches = (16, 32, 64, 128) if args.quick else (16, 32, 64, 128, 256)
    times = _steps.alternate({str(b): contrastive(b) for b in batches}, args.repetitions)
    base = times[str(batches[0])] / batches[0]
    print("Contrastive, step time vs batch size\n")
    print("| batch | step (ms) | per sample (ms) | per-sample cost vs batch 16 |")
    print("| --- | --- | --- | --- |")
    for b in batches:
        t = times[str(b)]
        print(f"| {b} | {t * 1e3:.0f} | {t / b * 1e3:.2f} | {t / b / base:.2f}x |")

    def rl_table(title: str, column: str, runs: dict) -> None:
        """One RL table: each setting's step time next to a contrastive step on the same batch, run alternately."""
        times = _steps.alternate({"contrastive": contrastive(batch)} | runs, args.repetitions)
        print(f"\n{title}, batch {batch}\n")
        print(f"| {column} | step (ms) | vs contrastive step |")
        print("| --- | --- | --- |")
        for name, seconds in times.items():
            print(f"| {name} | {seconds * 1e3:.0f} | {seconds / times['contrastive']:.2f}x |")

    batch = 32
    counts = (2, 4, 8, 16) if args.quick else (2, 4, 8, 16, 32)
    rl_table(
        "RL (GRPO, num_samples 4, β=0), step time vs candidates per image",
        "candidates K",
        {str(k): rl(batch, 4, k) for k in counts},
    )
    samples = (2, 8, 32) if args.quick else (2, 4, 8, 16, 32)
    rl_table(
        "RL (GRPO, in-batch candidates, β=0), step time vs num_samples",
        "num_samples",
        {str(s): rl(batch, s, None) for s in samples},
    )


if __name__ == "__main__":
    main()
