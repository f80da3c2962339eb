"""The GPU suite's measurements (run by `benchmarks/gpu_suite.sh`): training throughput and MFU of both
trainers, and whether CPU workers decoding JPEG shards keep up with the GPU.

1. `contrastive`, `rl-exact`, `rl-grpo`: a randomly initialised CLIP with ViT-B/32's shapes
   (`build_clip("vit-b-32")`) trained in bf16 autocast at batch 256 on a fixed, pre-collated batch (data loading
   is measured apart, in part 2). Reports the median step time after warm-up, images/s, the model FLOPs of one
   step (counted by `torch.utils.flop_counter.FlopCounterMode` over a real training step of that trainer: the
   RL step's reference forward and candidate encoding included) and MFU against both the card's dense bf16
   peak (from a table of data-sheet figures, or `--peak_tflops`) and the GEMM peak measured in the same run.
2. `loader`: `--num_images` 640x480 JPEGs (views of a real photograph, see `preprocess.py`) written as
   webdataset shards, read by a `ShardStream` through a DataLoader with `--workers` worker processes and the
   trainer's own collator (decode + preprocess + tokenize), for `image_processing` "fast" and "draft". Reports
   images/s produced against the images/s the contrastive step consumes.

`--dry-run`: the same code on CPU at toy sizes (tiny model, batch 8, a few steps, 64 images, 2 workers), to
check the suite end to end without a GPU. Figures from a dry run mean nothing.

    python benchmarks/gpu_train.py                 # on the GPU machine
    python benchmarks/gpu_train.py --dry-run       # anywhere, ~20 s
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import tempfile
import time

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))

import _steps  # noqa: E402
import torch  # noqa: E402
from mfu import device_name, gemm_peak  # noqa: E402
from torch.utils.flop_counter import FlopCounterMode  # noqa: E402

from clip_trl import ClipContrastiveConfig, ClipContrastiveTrainer, ClipRLConfig, ClipRLTrainer  # noqa: E402
from clip_trl.offline import build_clip, load_emoji_dataset  # noqa: E402

# Dense (no sparsity) bf16 tensor-core peaks from NVIDIA's data sheets, TFLOP/s; matched against the device name.
DENSE_BF16_PEAK_TFLOPS = {
    "H200": 989.4,
    "H100 SXM": 989.4,
    "H100 80GB HBM3": 989.4,
    "H100 NVL": 835.0,
    "H100 PCIe": 756.0,
    "H100": 756.0,
    "GH200": 989.4,
    "B200": 2250.0,
    "A100": 312.0,
    "L40S": 362.0,
    "A10G": 70.0,
    "L4": 121.0,
}


def card_peak(name: str) -> float | None:
    for key in sorted(DENSE_BF16_PEAK_TFLOPS, key=len, reverse=True):  # most specific first
        if key in name:
            return DENSE_BF16_PEAK_TFLOPS[key] * 1e12
    return None


class CountFlops:
    """Mixin for a trainer: count the FLOPs of its first training step (a warm-up step, not timed)."""

    step_flops: int | None = None

    def training_step(self, *args, **kwargs):
        if self.step_flops is not None:
            return super().training_step(*args, **kwargs)
        with FlopCounterMode(display=False) as counter:
            loss = super().training_step(*args, **kwargs)
        type(self).step_flops = counter.get_total_flops()
        return loss


class Contrastive(CountFlops, ClipContrastiveTrainer):
    pass


class RL(CountFlops, ClipRLTrainer):
    pass


def rows_for(count: int):
    rows = load_emoji_dataset()["train"]
    return rows.select([i % len(rows) for i in range(count)])


def train_step_figures(kind: str, args: argparse.Namespace, device: torch.device) -> dict:
    """Median step seconds and FLOPs per step of one trainer on a fixed batch."""
    model, processor = build_clip(args.model, seed=0)
    common = dict(
        output_dir=tempfile.mkdtemp(),
        report_to="none",
        save_strategy="no",
        disable_tqdm=True,
        seed=0,
        per_device_train_batch_size=args.batch,
        max_steps=args.warmup + args.steps,
        logging_steps=10**6,
        bf16=device.type == "cuda",
        learning_rate=1e-5,
        dataloader_num_workers=0,
        use_cpu=device.type != "cuda",
        torch_compile=args.compile,
    )
    rows = rows_for(args.batch)
    if kind == "contrastive":
        config, cls, extra = ClipContrastiveConfig(**common), Contrastive, {}
    else:
        config = ClipRLConfig(**common, advantage=kind.split("-")[1], beta=0.04)
        cls, extra = RL, {"reward_funcs": "correctness"}
    cls.step_flops = None
    timer = _steps.StepTimer()
    trainer = cls(
        model=model, args=config, processing_class=processor, train_dataset=rows, callbacks=[timer], **extra
    )
    indexed = [dict(row, __row_index__=i) for i, row in enumerate(rows)]
    batch = trainer.data_collator(indexed)  # collated once: the step alone is timed
    trainer.data_collator = _steps.ConstantBatch(batch)
    trainer.train_dataset = _steps.dummy_rows(args.batch * (args.warmup + args.steps))
    trainer.train()
    seconds = sorted(timer.seconds[args.warmup :])[len(timer.seconds[args.warmup :]) // 2]
    return {"seconds": seconds, "flops": cls.step_flops, "images_per_s": args.batch / seconds}


def loader_figures(args: argparse.Namespace, consumed_per_s: float) -> list[dict]:
    """Images/s that `args.workers` DataLoader workers produce from JPEG shards, per image_processing mode."""
    import datasets
    from preprocess import real_photos

    from clip_trl.data.collator import ClipDataCollator
    from clip_trl.data.image_processing import image_transform_for
    from clip_trl.data.shards import ShardStream, write_shards

    _, processor = build_clip(args.model, seed=0)
    unique = real_photos(min(args.num_images, 256), 640, 480)
    captions = rows_for(args.num_images)["caption"]
    table = datasets.Dataset.from_dict(
        {
            "image": [{"bytes": unique[i % len(unique)], "path": None} for i in range(args.num_images)],
            "caption": captions,
        },
        features=datasets.Features({"image": datasets.Image(), "caption": datasets.Value("string")}),
    )
    folder = tempfile.mkdtemp()
    shards = write_shards(table, folder, num_shards=max(args.workers, 1) * 2)
    results = []
    for mode in ("fast", "draft"):
        collator = ClipDataCollator(
            processor, image_transform=image_transform_for(processor.image_processor, mode)
        )
        stream = ShardStream(shards, shuffle_buffer=0, num_epochs=None)
        prefetch = 2
        loader = torch.utils.data.DataLoader(
            stream,
            batch_size=args.batch,
            num_workers=args.workers,
            collate_fn=collator,
            prefetch_factor=prefetch if args.workers else None,
            persistent_workers=False,
        )
        iterator = iter(loader)
        # Drain what the workers prefetch while starting up, then time the steady state.
        for _ in range(max(args.workers, 1) * prefetch):
            next(iterator)
        batches = max(args.loader_batches, 2 * max(args.workers, 1))
        start = time.perf_counter()
        for _ in range(batches):
            next(iterator)
        produced = batches * args.batch / (time.perf_counter() - start)
        del iterator
        results.append({"mode": mode, "images_per_s": produced, "feeds": produced >= consumed_per_s})
    return results


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument(
        "--dry-run", action="store_true", help="CPU, toy sizes: checks the code, not the speed"
    )
    parser.add_argument("--model", default="vit-b-32")
    parser.add_argument("--batch", type=int, default=256)
    parser.add_argument("--steps", type=int, default=20)
    parser.add_argument("--warmup", type=int, default=5)
    parser.add_argument(
        "--compile", action="store_true", help="torch.compile the model (Trainer's torch_compile)"
    )
    parser.add_argument("--workers", type=int, default=16)
    parser.add_argument("--num_images", type=int, default=4096)
    parser.add_argument("--loader_batches", type=int, default=12)
    parser.add_argument(
        "--peak_tflops", type=float, default=None, help="the card's dense bf16 peak, if not known"
    )
    parser.add_argument("--json", default=None, help="also write the figures here")
    args = parser.parse_args()
    if args.dry_run:
        args.model, args.batch, args.steps, args.warmup = "tiny", 8, 2, 1
        args.workers, args.num_images, args.loader_batches = 2, 32, 2
    device = torch.device("cuda" if torch.cuda.is_available() and not args.dry_run else "cpu")
    if device.type != "cuda" and not args.dry_run:
        sys.exit("No CUDA device: run on the GPU machine, or pass --dry-run to check the code on CPU.")

    name = device_name(device)
    dtype = torch.bfloat16 if device.type == "cuda" else torch.float32
    measured_peak = gemm_peak(device, dtype, 8192 if device.type == "cuda" else 512)
    peak = (
        args.peak_tflops * 1e12 if args.peak_tflops else (card_peak(name) if device.type == "cuda" else None)
    )
    print(
        f"device: {name}; torch {torch.__version__}; {dtype}; model {args.model}; batch {args.batch}"
        + (" (DRY RUN: toy sizes on CPU, figures meaningless)" if args.dry_run else "")
    )
    print(
        f"dense bf16 peak (data sheet): {peak / 1e12:.0f} TFLOP/s"
        if peak
        else "dense bf16 peak: unknown (pass --peak_tflops)"
    )
    print(f"measured GEMM peak ({dtype}): {measured_peak / 1e12:.1f} TFLOP/s\n")
    print(
        "| trainer | step (ms) | images/s | GFLOP/step | TFLOP/s | MFU (card peak) | MFU (measured GEMM peak) |"
    )
    print("| --- | --- | --- | --- | --- | --- | --- |")
    figures = {}
    for kind in ("contrastive", "rl-exact", "rl-grpo"):
        f = train_step_figures(kind, args, device)
        figures[kind] = f
        achieved = f["flops"] / f["seconds"]
        card = f"{achieved / peak:.1%}" if peak else "–"
        print(
            f"| {kind} | {f['seconds'] * 1e3:.1f} | {f['images_per_s']:.0f} | {f['flops'] / 1e9:.3g} | "
            f"{achieved / 1e12:.3g} | {card} | {achieved / measured_peak:.1%} |",
            flush=True,
        )

    consumed = figures["contrastive"]["images_per_s"]
    print(
        f"\n| loader ({args.workers} workers, 640x480 JPEG shards) | images/s produced | contrastive step consumes "
        "| feeds the GPU |"
    )
    print("| --- | --- | --- | --- |")
    loader = loader_figures(args, consumed)
    for row in loader:
        print(
            f"| image_processing={row['mode']} | {row['images_per_s']:.0f} | {consumed:.0f} | "
            f"{'yes' if row['feeds'] else 'NO'} |"
        )
    if device.type == "cuda":
        print(f"\npeak GPU memory: {torch.cuda.max_memory_allocated() / 2**30:.1f} GiB")
    if args.json:
        with open(args.json, "w") as f:
            json.dump(
                {"device": name, "train": figures, "loader": loader, "dry_run": args.dry_run}, f, indent=1
            )


if __name__ == "__main__":
    main()
