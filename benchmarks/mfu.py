"""Model FLOPs utilisation: achieved FLOP/s of a training step as a fraction of the machine's measured GEMM peak.

Two contenders train the same randomly initialised CLIP (`clip_trl.offline.build_clip(--model)`, seed 0) on
the same fixed batch (collated once; see `_steps.py`), with the same optimizer (fused AdamW), clipping and
precision:

- `ours`:  `ClipContrastiveTrainer`;
- `plain`: `transformers.Trainer` on `CLIPModel(return_loss=True)` (what run_clip.py does).

Model FLOPs per step are counted once with `torch.utils.flop_counter.FlopCounterMode` over a forward and backward
pass of the model and its loss (eager attention, so that attention's two matmuls per head are counted in full;
the optimizer's element-wise work is not counted, as usual for MFU). The peak is measured in the same run: the
best FLOP/s of a square matrix multiply of the training dtype on the same device and threads. MFU = FLOPs per
step / median step time / peak.

Each repetition runs both contenders, in alternating order (ours first, then plain first, ...); the tables
give the median over repetitions of each one's median step time, and ours/plain per repetition (median and
range: a pair ran back to back, so it shares the machine's load of that moment).

    python benchmarks/mfu.py                                          # CPU: small model, batch 64
    python benchmarks/mfu.py --model vit-b-32 --batch 256 --bf16      # the GPU run (ViT-B/32 shapes, bf16)
"""

from __future__ import annotations

import argparse
import os
import platform
import statistics
import sys
import tempfile
import time

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))

import _steps  # noqa: E402
import torch  # noqa: E402
from torch.utils.flop_counter import FlopCounterMode  # noqa: E402
from transformers import Trainer, TrainingArguments  # noqa: E402

from clip_trl import ClipContrastiveConfig, ClipContrastiveTrainer  # noqa: E402
from clip_trl.data.collator import ClipDataCollator  # noqa: E402
from clip_trl.offline import build_clip, load_emoji_dataset  # noqa: E402


def device_name(device: torch.device) -> str:
    if device.type == "cuda":
        return torch.cuda.get_device_name(device)
    return f"{platform.processor() or platform.machine()} CPU, {torch.get_num_threads()} threads"


def gemm_peak(device: torch.device, dtype: torch.dtype, size: int, repeats: int = 10) -> float:
    """Best FLOP/s of `size x size` @ `size x size` in `dtype` on `device`."""
    a = torch.randn(size, size, device=device, dtype=dtype)
    b = torch.randn(size, size, device=device, dtype=dtype)
    best = float("inf")
    for _ in range(repeats + 2):
        if device.type == "cuda":
            torch.cuda.synchronize()
        start = time.perf_counter()
        torch.mm(a, b)
        if device.type == "cuda":
            torch.cuda.synchronize()
        best = min(best, time.perf_counter() - start)
    return 2 * size**3 / best


def model_flops_per_step(model_name: str, batch: dict, device: torch.device, dtype: torch.dtype) -> int:
    model, _ = build_clip(model_name, seed=0)
    model.set_attn_implementation("eager")
    model.to(device)
    inputs = {k: batch[k].to(device) for k in ("pixel_values", "input_ids", "attention_mask")}
    with (
        FlopCounterMode(display=False) as counter,
        torch.autocast(device.type, dtype=dtype, enabled=dtype != torch.float32),
    ):
        model(**inputs, return_loss=True).loss.backward()
    return counter.get_total_flops()


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--model", default="small", help="a build_clip size: tiny, small, vit-b-32")
    parser.add_argument("--batch", type=int, default=64)
    parser.add_argument("--steps", type=int, default=8, help="timed steps per run (after --warmup)")
    parser.add_argument("--warmup", type=int, default=2)
    parser.add_argument(
        "--repetitions", type=int, default=3, help="rounds of both contenders (order alternates)"
    )
    parser.add_argument("--bf16", action="store_true", help="bf16 autocast (on a GPU; default there anyway)")
    parser.add_argument(
        "--gemm_size", type=int, default=None, help="peak GEMM size (default 2048 CPU, 8192 GPU)"
    )
    args = parser.parse_args()
    device = torch.device("cuda" if torch.cuda.is_available() else "cpu")
    dtype = torch.bfloat16 if args.bf16 else torch.float32

    _, processor = build_clip(args.model, seed=0)
    rows = load_emoji_dataset()["train"]
    rows = rows.select([i % len(rows) for i in range(args.batch)])
    batch = ClipDataCollator(processor)(
        list(rows.map(lambda row, i: {"__row_index__": i}, with_indices=True))
    )
    plain_batch = {k: batch[k] for k in ("pixel_values", "input_ids", "attention_mask")} | {
        "return_loss": True
    }
    flops = model_flops_per_step(args.model, batch, device, dtype)
    peak = gemm_peak(device, dtype, args.gemm_size or (8192 if device.type == "cuda" else 2048))

    common = dict(
        output_dir=tempfile.mkdtemp(),
        report_to="none",
        save_strategy="no",
        disable_tqdm=True,
        seed=0,
        per_device_train_batch_size=args.batch,
        max_steps=args.warmup + args.steps,
        logging_steps=10**6,
        bf16=args.bf16,
        learning_rate=1e-5,
        max_grad_norm=1.0,
        dataloader_num_workers=0,
    )
    dummy = _steps.dummy_rows(args.batch * (args.warmup + args.steps))

    def ours(timer: _steps.StepTimer) -> ClipContrastiveTrainer:
        model, processor = build_clip(args.model, seed=0)
        return ClipContrastiveTrainer(
            model=model,
            args=ClipContrastiveConfig(**common),
            processing_class=processor,
            train_dataset=dummy,
            data_collator=_steps.ConstantBatch(batch),
            callbacks=[timer],
        )

    def plain(timer: _steps.StepTimer) -> Trainer:
        model, _ = build_clip(args.model, seed=0)  # a plain transformers CLIPModel, same weights as ours
        return Trainer(
            model=model,
            args=TrainingArguments(**common, remove_unused_columns=False),
            train_dataset=dummy,
            data_collator=_steps.ConstantBatch(plain_batch),
            callbacks=[timer],
        )

    runs = _steps.alternate_all(
        {
            "ours": lambda: _steps.median_step_seconds(ours, args.warmup),
            "plain": lambda: _steps.median_step_seconds(plain, args.warmup),
        },
        args.repetitions,
    )
    seconds = {name: statistics.median(values) for name, values in runs.items()}
    print(
        f"device: {device_name(device)}; torch {torch.__version__}; dtype {dtype}; model {args.model}; "
        f"batch {args.batch}"
    )
    print(
        f"model FLOPs per step (forward + backward): {flops / 1e9:.1f} GFLOP; measured GEMM peak: "
        f"{peak / 1e12:.3f} TFLOP/s\n"
    )
    print("| trainer | step (ms) | samples/s | achieved TFLOP/s | MFU |")
    print("| --- | --- | --- | --- | --- |")
    for name, label in (("ours", "`ClipContrastiveTrainer`"), ("plain", "plain `Trainer`")):
        step = seconds[name]
        print(
            f"| {label} | {step * 1e3:.0f} | {args.batch / step:.1f} | {flops / step / 1e12:.3f} | "
            f"{flops / step / peak:.1%} |"
        )
    ratios = [p / o for o, p in zip(runs["ours"], runs["plain"])]
    mfus = {name: ", ".join(f"{flops / s / peak:.1%}" for s in values) for name, values in runs.items()}
    print(
        f"\n{args.repetitions} repetitions, order alternating (ours first in odd ones). MFU per repetition: "
        f"ours {mfus['ours']}; plain {mfus['plain']}"
    )
    print(
        f"ours / plain samples/s per repetition: median {statistics.median(ratios):.3f}, "
        f"range {min(ratios):.3f}–{max(ratios):.3f}"
    )
    if device.type == "cuda":
        print(f"peak GPU memory: {torch.cuda.max_memory_allocated() / 2**30:.1f} GiB (both contenders, max)")


if __name__ == "__main__":
    main()
