"""LiT (locked-image tuning, `freeze_vision=True`): clip_trl's frozen-tower embedding cache vs a plain Trainer.

Three contenders train the same randomly initialised CLIP of ViT-B/32 shape (vision 12 x 768, patch 32, 224 px;
text 12 x 512; projection 512 — `transformers.CLIPConfig`, no download) with the vision tower frozen, from the
same initial weights, on the same rows of the offline emoji data set (decoded and pre-processed in the main
process), AdamW, batch `--batch`, for 2 epochs; samples/s is measured over the second epoch only:

- `cached`: `ClipContrastiveTrainer(freeze_vision=True)` as shipped (`cache_frozen_embeddings="auto"`): the first
  epoch stores each image's embedding, the second reads them back and runs only the text tower.
- `uncached`: the same trainer with `cache_frozen_embeddings=False` (the image tower runs at every step).
- `plain`: `transformers.Trainer` on `CLIPModel(return_loss=True)` with the vision tower's parameters frozen by
  hand and a run_clip-style collator (`CLIPProcessor`, captions padded to the batch's longest).

Repetitions rotate the contenders' order (a change in background load hits them about equally); each repetition
builds fresh trainers. Printed: each contender's samples/s (median, min-max) and the ratios to `plain` per
repetition (median, min-max).

    python benchmarks/frozen_tower_cache.py                   # about 4 min on 2 busy CPU cores
    python benchmarks/frozen_tower_cache.py --rows 512 --batch 64 --repeats 5     # on a GPU
    python benchmarks/frozen_tower_cache.py --dry-run         # toy sizes: checks the script
"""

from __future__ import annotations

import argparse
import copy
import statistics
import tempfile
import time
from typing import Any

import torch
from transformers import (
    CLIPConfig,
    CLIPImageProcessor,
    CLIPModel,
    CLIPProcessor,
    Trainer,
    TrainerCallback,
    TrainingArguments,
)

from clip_trl import ClipContrastiveConfig, ClipContrastiveTrainer
from clip_trl.offline import build_clip, load_emoji_dataset

CONTENDERS = ("cached", "uncached", "plain")


def vit_b32_config(dry_run: bool) -> CLIPConfig:
    if dry_run:  # toy sizes, same code path
        vision = dict(hidden_size=64, intermediate_size=128, num_hidden_layers=2, num_attention_heads=2,
                      image_size=64, patch_size=32)  # fmt: skip
        text = dict(hidden_size=64, intermediate_size=128, num_hidden_layers=2, num_attention_heads=2)
        projection = 64
    else:
        vision = dict(hidden_size=768, intermediate_size=3072, num_hidden_layers=12, num_attention_heads=12,
                      image_size=224, patch_size=32)  # fmt: skip
        text = dict(hidden_size=512, intermediate_size=2048, num_hidden_layers=12, num_attention_heads=8)
        projection = 512
    return CLIPConfig(
        text_config={**text, "vocab_size": 49408, "max_position_embeddings": 77, "pad_token_id": 49407},
        vision_config=vision,
        projection_dim=projection,
    )


class EpochClock(TrainerCallback):
    """Wall time of each epoch (synchronised with the device)."""

    def __init__(self) -> None:
        self.seconds: list[float] = []

    @staticmethod
    def _now() -> float:
        if torch.cuda.is_available():
            torch.cuda.synchronize()
        return time.perf_counter()

    def on_epoch_begin(self, args: Any, state: Any, control: Any, **kwargs: Any) -> None:
        self._start = self._now()

    def on_epoch_end(self, args: Any, state: Any, control: Any, **kwargs: Any) -> None:
        self.seconds.append(self._now() - self._start)


def plain_collator(processor: CLIPProcessor) -> Any:
    def collate(rows: list[dict[str, Any]]) -> dict[str, Any]:
        images = [row["image"].convert("RGB") for row in rows]
        batch = processor(images=images, text=[row["caption"] for row in rows], padding="longest",
                          truncation=True, return_tensors="pt")  # fmt: skip
        return {**batch, "return_loss": True}

    return collate


def train_once(
    name: str, model: CLIPModel, processor: CLIPProcessor, rows: Any, opts: argparse.Namespace
) -> float:
    """Samples/s of the second epoch."""
    clock = EpochClock()
    common = dict(
        output_dir=tempfile.mkdtemp(prefix=f"cache-bench-{name}-"),
        per_device_train_batch_size=opts.batch,
        num_train_epochs=2,
        learning_rate=1e-5,
        weight_decay=0.0,
        report_to="none",
        save_strategy="no",
        logging_steps=10_000,
        disable_tqdm=True,
        seed=0,
        dataloader_num_workers=0,
        use_cpu=not torch.cuda.is_available(),
        bf16=torch.cuda.is_available(),
    )
    if name == "plain":
        model.vision_model.requires_grad_(False)
        model.visual_projection.requires_grad_(False)
        trainer = Trainer(
            model=model,
            args=TrainingArguments(**common, remove_unused_columns=False),
            train_dataset=rows,
            data_collator=plain_collator(processor),
            callbacks=[clock],
        )
    else:
        args = ClipContrastiveConfig(
            **common, freeze_vision=True, cache_frozen_embeddings="auto" if name == "cached" else False
        )
        trainer = ClipContrastiveTrainer(
            model=model, args=args, train_dataset=rows, processing_class=processor, callbacks=[clock]
        )
        if name == "cached":
            assert trainer._embedding_cache is not None, "the cache should be on for LiT"
    trainer.train()
    return len(rows) // opts.batch * opts.batch / clock.seconds[1]


def spread(values: list[float]) -> str:
    return f"{statistics.median(values):.2f} ({min(values):.2f}-{max(values):.2f})"


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--rows", type=int, default=32, help="rows per epoch (default 32)")
    parser.add_argument("--batch", type=int, default=8, help="batch size (default 8)")
    parser.add_argument("--repeats", type=int, default=3, help="repetitions of every contender (default 3)")
    parser.add_argument("--threads", type=int, default=None, help="torch threads (default: torch's)")
    parser.add_argument("--dry-run", action="store_true", help="toy model and sizes")
    opts = parser.parse_args()
    if opts.dry_run:
        opts.rows, opts.batch, opts.repeats = 8, 4, 2
    if opts.threads:
        torch.set_num_threads(opts.threads)
    torch.manual_seed(0)
    config = vit_b32_config(opts.dry_run)
    base = CLIPModel(config).eval()
    image_size = config.vision_config.image_size
    tokenizer = build_clip("tiny")[1].tokenizer  # the real CLIP BPE tokenizer, shipped offline
    image_processor = CLIPImageProcessor(size={"shortest_edge": image_size},
                                         crop_size={"height": image_size, "width": image_size})  # fmt: skip
    processor = CLIPProcessor(image_processor=image_processor, tokenizer=tokenizer)
    rows = load_emoji_dataset()["train"].shuffle(seed=0).select(range(opts.rows))
    results: dict[str, list[float]] = {name: [] for name in CONTENDERS}
    for repeat in range(opts.repeats):
        order = CONTENDERS[repeat % 3 :] + CONTENDERS[: repeat % 3]
        for name in order:
            results[name].append(train_once(name, copy.deepcopy(base), processor, rows, opts))
            print(f"repeat {repeat} {name:9s} {results[name][-1]:.2f} samples/s (second epoch)", flush=True)
    device = (
        torch.cuda.get_device_name()
        if torch.cuda.is_available()
        else f"CPU, {torch.get_num_threads()} threads"
    )
    print(f"\nLiT at {'toy' if opts.dry_run else 'ViT-B/32'} shapes, batch {opts.batch}, {opts.rows} rows, "
          f"{opts.repeats} repeats, {device}\n")  # fmt: skip
    print("| contender | samples/s, 2nd epoch: median (min-max) | vs plain: median (min-max) | vs uncached |")
    print("| --- | --- | --- | --- |")
    for name in CONTENDERS:
        ratios = [a / b for a, b in zip(results[name], results["plain"])]
        to_uncached = [a / b for a, b in zip(results[name], results["uncached"])]
        print(f"| {name} | {spread(results[name])} | {spread(ratios)}x | {spread(to_uncached)}x |")


if __name__ == "__main__":
    main()
