"""Big contrastive batches: peak memory and samples/s vs batch size, unchunked vs `contrastive_chunk_size`.

A contrastive loss wants big batches (more negatives), and activation memory grows with the batch. With
`ClipContrastiveConfig(contrastive_chunk_size=c)` the trainer computes the *same* full-batch loss and
gradients (GradCache: cached embeddings, chunked re-forward; see `clip_trl/losses/gradcache.py`) with the activations
of `c` rows at a time, for about one extra forward pass. This script measures what that buys:

- contenders `u<B>` train unchunked batches of B rows, `c<B>` batches of B rows in chunks of `--chunk`;
- every contender is a fresh child process (`_harness.py`), so its peak RSS (`ru_maxrss`, the kernel's
  high-water mark of resident memory: weights, gradients, AdamW state, activations, the collated batch and
  the interpreter) is its own. `step memory` is that peak minus the RSS after set-up (imports, model, one
  collated batch), i.e. what training steps added. RSS rather than `tracemalloc` (which does not see torch's
  allocations) or the torch profiler (which adds its own overhead); on a GPU the harness also records
  `torch.cuda.max_memory_allocated`, shown when present;
- each contender runs `ClipContrastiveTrainer.training_step` + gradient clipping + `AdamW.step()` on one
  pre-collated batch of the offline emoji data (the same first B rows of a fixed permutation for both
  modes), so data loading is out of the picture; contenders take turns in lock-step (see `_harness.py`);
- the first step's loss is printed too: for the same B, chunked and unchunked must agree;
- speed is given as samples/s (wall clock) and samples per CPU-second (process CPU time, all threads): on a
  shared machine the second is the steadier one, especially with `--threads 1` (no spin-waiting threads).

The summary compares each chunked run with the *smallest unchunked batch that needed at least as much
memory*: a chunked batch of B_c rows fits in the memory of an unchunked batch of B_u rows, so at equal memory
the batch is at least B_c / B_u times larger; its samples/s are compared with that unchunked run's.

    python benchmarks/big_batch.py                       # small model, batches 32..512, chunk 32, all threads
    python benchmarks/big_batch.py --threads 1 --unchunked 32,64,128,256 --chunked 64,128,256,512   # shorter
"""

from __future__ import annotations

import argparse
import os
import sys
import tempfile
from typing import Any

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))

import _harness as h  # noqa: E402

LEARNING_RATE = 1e-5
MAX_GRAD_NORM = 1.0
TARGETS = {"batch_multiplier": 8.0, "speed_ratio": 0.6}


def parse_batches(text: str) -> list[int]:
    return [int(x) for x in text.split(",") if x.strip()]


def contender_batch(name: str) -> tuple[bool, int]:
    """`"c512"` -> (chunked, 512)."""
    return name[0] == "c", int(name[1:])


# ------------------------------------------------------------------------------------------ child side


def run_child(args: argparse.Namespace) -> None:
    channel = h.child_channel(args.fds)
    h.set_threads(args.threads)
    import torch

    from clip_trl import ClipContrastiveConfig, ClipContrastiveTrainer
    from clip_trl.offline import build_clip

    chunked, batch_size = contender_batch(args.child)
    model, processor = build_clip(args.size, seed=0, image_size=args.image_size)
    rows = h.emoji_train_rows().select(range(batch_size))
    config = ClipContrastiveConfig(
        output_dir=tempfile.mkdtemp(prefix="big-batch-"),
        per_device_train_batch_size=batch_size,
        contrastive_chunk_size=args.chunk if chunked else None,
        learning_rate=LEARNING_RATE,
        weight_decay=0.0,
        report_to="none",
        save_strategy="no",
        use_cpu=not torch.cuda.is_available(),
        disable_tqdm=True,
    )
    trainer = ClipContrastiveTrainer(model=model, args=config, train_dataset=rows, processing_class=processor)
    trainer.current_gradient_accumulation_steps = 1  # what `train()` sets for a step without accumulation
    model = trainer.model
    optimizer = trainer.create_optimizer()
    batch = trainer.data_collator([trainer.train_dataset[i] for i in range(batch_size)])
    cuda = torch.cuda.is_available()
    if cuda:
        torch.cuda.reset_peak_memory_stats()
    channel.send(event="ready", rss=h.current_rss())

    clock = h.StepClock(channel, args.warmup, args.steps, args.repeats, cuda=cuda)
    losses: list[float] = []
    clock.start()
    for _ in range(clock.total_steps):
        loss = trainer.training_step(model, dict(batch))
        torch.nn.utils.clip_grad_norm_(model.parameters(), MAX_GRAD_NORM)
        optimizer.step()
        optimizer.zero_grad(set_to_none=True)
        losses.append(float(loss))
        clock.step_end()
    h.finish_child(channel, first_loss=losses[0])


# ----------------------------------------------------------------------------------------- parent side


def samples_per_second(result: h.Result, batch: int) -> float:
    """`batch / median(seconds per step)`: consistent with the s/step column (a median of per-repetition
    samples/s would not be, with an even number of repetitions)."""
    return batch / h.median(result.seconds_per_step())


def summary_rows(results: dict[str, h.Result], chunk: int) -> list[list[Any]]:
    unchunked = sorted((contender_batch(n)[1], r) for n, r in results.items() if not contender_batch(n)[0])
    rows = []
    for name, result in results.items():
        chunked, batch = contender_batch(name)
        if not chunked:
            continue
        # The smallest unchunked batch that needed at least as much memory as this chunked one.
        match = next(((b, r) for b, r in unchunked if r.peak_rss >= result.peak_rss), None)
        if match is None:
            rows.append(
                [
                    f"{batch} (chunk {chunk})",
                    h.mib(result.peak_rss),
                    "none measured needs as much",
                    "",
                    "",
                    "",
                    "",
                ]
            )
            continue
        base_batch, base = match
        multiplier = batch / base_batch
        speed = samples_per_second(result, batch) / samples_per_second(base, base_batch)
        cpu_speed = h.median(base.cpu_per_step()) * batch / (h.median(result.cpu_per_step()) * base_batch)
        verdict = (
            "yes" if multiplier >= TARGETS["batch_multiplier"] and speed >= TARGETS["speed_ratio"] else "no"
        )
        rows.append(
            [
                f"{batch} (chunk {chunk})",
                h.mib(result.peak_rss),
                f"{base_batch} ({h.mib(base.peak_rss)})",
                f"{multiplier:.1f}×",
                f"{speed:.2f}×",
                f"{cpu_speed:.2f}×",
                verdict,
            ]
        )
    return rows


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    h.common_arguments(parser, steps=1, repeats=2, warmup=1)
    parser.add_argument("--unchunked", default="32,64,128,256,512", help="batch sizes trained in one piece")
    parser.add_argument("--chunked", default="64,128,256,512", help="batch sizes trained with chunking")
    parser.add_argument("--chunk", type=int, default=32, help="contrastive_chunk_size of the chunked runs")
    parser.add_argument("--image-size", type=int, default=None, help="override the preset's image size")
    parser.add_argument("--json", default=None, help="write every repetition's raw numbers here")
    args = parser.parse_args()
    if args.child:
        run_child(args)
        return

    names = [f"u{b}" for b in parse_batches(args.unchunked)] + [f"c{b}" for b in parse_batches(args.chunked)]
    log_dir = args.log_dir or tempfile.mkdtemp(prefix="big-batch-logs-")
    passthrough = [
        "--steps",
        str(args.steps),
        "--repeats",
        str(args.repeats),
        "--warmup",
        str(args.warmup),
        "--threads",
        str(args.threads),
        "--size",
        args.size,
        "--chunk",
        str(args.chunk),
    ]
    if args.image_size:
        passthrough += ["--image-size", str(args.image_size)]

    def command_for(name: str) -> list[str]:
        return [sys.executable, os.path.abspath(__file__), "--child", name, *passthrough]

    print(f"Contenders: {', '.join(names)}; logs in {log_dir}", file=sys.stderr)
    results = h.run_contenders(names, command_for, args.repeats, log_dir)
    if args.json:
        h.write_json(args.json, results, vars(args))
    print_report(results, args)


def print_report(results: dict[str, h.Result], args: argparse.Namespace) -> None:
    cuda = any("cuda_max_memory" in r.done for r in results.values())
    header = [
        "mode",
        "batch",
        "peak RSS (MiB)",
        "step memory (MiB)",
        "samples/s (min–max)",
        "s/step",
        "CPU s/step",
        "samples/CPU-s",
        "loss, step 1",
    ] + (["CUDA max allocated (MiB)"] if cuda else [])
    rows = []
    for name, result in results.items():
        chunked, batch = contender_batch(name)
        speeds = result.samples_per_second(batch)
        row = [
            f"chunked ({args.chunk})" if chunked else "unchunked",
            batch,
            h.mib(result.peak_rss),
            h.mib(result.peak_rss - result.ready_rss),
            f"{samples_per_second(result, batch):.1f} ({min(speeds):.1f}–{max(speeds):.1f})",
            f"{h.median(result.seconds_per_step()):.2f}",
            f"{h.median(result.cpu_per_step()):.2f}",
            f"{batch / h.median(result.cpu_per_step()):.1f}",
            f"{result.done.get('first_loss', float('nan')):.6f}",
        ]
        if cuda:
            row.append(h.mib(result.done.get("cuda_max_memory", 0)))
        rows.append(row)
    image_size = args.image_size or "preset"
    print(f"\n### Big batches: `build_clip({args.size!r})`, image size {image_size}\n")
    for key, value in h.machine_description(args.threads).items():
        print(f"- {key}: {value}")
    print(f"- repetitions: {args.warmup} warm-up + {args.repeats} × {args.steps} timed steps per contender")
    print()
    print(h.markdown_table(header, rows))
    print(
        "\nAt equal memory (each chunked run vs the smallest unchunked batch that needed at least as much):\n"
    )
    print(
        h.markdown_table(
            [
                "chunked batch",
                "its peak RSS (MiB)",
                "unchunked batch (peak MiB)",
                "batch ×",
                "samples/s ratio",
                "samples/CPU-s ratio",
                f"target ≥ {TARGETS['batch_multiplier']:.0f}× at ≥ {TARGETS['speed_ratio']}×",
            ],
            summary_rows(results, args.chunk),
        )
    )


if __name__ == "__main__":
    main()
