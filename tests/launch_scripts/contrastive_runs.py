"""Contrastive runs for the multi-process tests; rank 0 writes what it saw to `--out`.

- `clip` / `siglip`: one SGD step on 8 rows with hard negatives — rank 0's rows carry 1 negative in all, rank 1's
  carry 3 (the collator concatenates a list per row, so ranks hold different numbers) — and a caption shared by
  rows on different ranks (row 5 repeats row 1's caption on another image: a cross-rank positive). Records the
  logged loss and the updated weights.
- `eval`: `trainer.evaluate()` on 9 rows (5 and 4 per rank when sharded), with list captions and captions
  shared across the shard boundary. Records the metrics.

Run with `python -m torch.distributed.run --standalone --nproc_per_node 2 contrastive_runs.py --out f.pt`, or
import `run_all` for the 1-process reference (8 rows per step).
"""

from __future__ import annotations

import argparse
import os
import sys
from typing import Any

import torch

from clip_trl import ClipContrastiveConfig, ClipContrastiveTrainer
from clip_trl.evaluation import embeddings
from clip_trl.offline import build_clip, load_emoji_dataset

NEGATIVES = [["a cat"], [], [], [], ["a tree", "a car"], [], ["<caption 2>"], []]


def train_rows():
    data = load_emoji_dataset()["train"].select(range(16))
    captions = list(data["caption"][:8])
    captions[5] = captions[1]  # rank 1's row 5 shares rank 0's row 1 caption (another image)
    negatives = [[captions[2] if n == "<caption 2>" else n for n in row] for row in NEGATIVES]
    rows = data.select(range(8)).remove_columns("caption")
    return rows.add_column("caption", captions).add_column("negatives", negatives)


def eval_rows():
    data = load_emoji_dataset()["train"].select(range(8, 17))
    captions: list[Any] = [[caption] for caption in data["caption"]]
    captions[6] = captions[1]  # shared across the shard boundary (rows 0-3 | 4-8)
    captions[2] = captions[2] + ["a small extra caption"]
    captions[7] = captions[7] + ["a small extra caption"] + captions[0]
    return data.remove_columns("caption").add_column("caption", captions)


def evaluate_counting_rows(trainer: ClipContrastiveTrainer) -> tuple[dict[str, float], list[int]]:
    """`trainer.evaluate(eval_rows())`, and how many rows this rank embedded (its block, when sharded)."""
    embedded = []
    compute_embeddings = embeddings.compute_embeddings  # what the trainer's (sharded) evaluation calls

    def counting(model, processor, dataset, **kwargs):
        embedded.append(len(dataset))
        return compute_embeddings(model, processor, dataset, **kwargs)

    embeddings.compute_embeddings = counting
    try:
        metrics = trainer.evaluate(eval_rows())
    finally:
        embeddings.compute_embeddings = compute_embeddings
    return {k: v for k, v in metrics.items() if not k.endswith(("_runtime", "per_second"))}, embedded


def run_all(output_dir: str, per_device_batch: int) -> dict[str, Any]:
    torch.use_deterministic_algorithms(True)
    results: dict[str, Any] = {}
    for loss_type in ("clip", "siglip"):
        model, processor = build_clip("tiny", seed=0)
        args = ClipContrastiveConfig(
            output_dir=os.path.join(output_dir, loss_type),
            per_device_train_batch_size=per_device_batch,
            max_steps=1,
            learning_rate=0.5,
            optim="sgd",
            max_grad_norm=0.0,
            report_to="none",
            save_strategy="no",
            logging_steps=1,
            seed=0,
            use_cpu=True,
            disable_tqdm=True,
            lr_scheduler_type="constant",
            train_sampling_strategy="sequential",
            loss_type=loss_type,
            negative_column="negatives",
            per_device_eval_batch_size=4,
            eval_in_batch_size=3,
        )
        trainer = ClipContrastiveTrainer(
            model=model, args=args, train_dataset=train_rows(), processing_class=processor
        )
        trainer.train()
        results[loss_type] = {
            "world_size": trainer.args.world_size,
            "loss": next(entry["loss"] for entry in trainer.state.log_history if "loss" in entry),
            "weights": {k: v.detach().clone() for k, v in model.state_dict().items()},
        }
        if loss_type == "clip":
            results["eval"], results["eval_rows_embedded"] = evaluate_counting_rows(trainer)
    return results


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--out", required=True)
    parser.add_argument("--output_dir", required=True)
    options = parser.parse_args()
    results = run_all(options.output_dir, per_device_batch=4)
    if int(os.environ.get("RANK", "0")) == 0:
        torch.save(results, options.out)


if __name__ == "__main__":
    from _exit import leave_together

    status = main()
    leave_together()
    sys.exit(status)
