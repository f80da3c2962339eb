"""Long-run memory: does the process stay flat over ≥ 1,000 training steps, for both trainers?

Something kept per step (a metric buffer never cleared, a log entry per step, tensors held by a callback, a cache
keyed by batch) grows a process that runs for days. The question is *growth after warm-up*: the first steps
allocate the optimizer state, allocator arenas and caches once, and that is not a leak.

Each trainer runs in a child process of its own (a fresh RSS), trains `--steps` steps of a tiny model on the
offline emoji data (the collator decodes the PNGs every step; epochs cycle over `--rows` rows), and every
`--every` steps, after a `gc.collect()`, samples two things:

- RSS (`/proc/self/statm`): every kind of memory, tensors' storage and C++ caches included;
- the number of live objects the garbage collector tracks (tensors included): it sees an accumulation too small to
  move RSS yet, e.g. one 0-d tensor per step, which the allocator serves from memory the process already holds.

The table gives both at the end of warm-up and at the end, the growth in between (endpoints are the median of
3 samples, so one spike does not count) and the least-squares slope over the samples after warm-up.

    python benchmarks/long_run_memory.py                  # tiny model, 1,200 steps per trainer, ~2-3 min on 2 CPUs
    python benchmarks/long_run_memory.py --leak           # the same with a per-step leak injected (see `measure`)
    python benchmarks/long_run_memory.py --steps 5000 --size small --batch-size 16

`tests/trainer/test_long_run_memory.py` runs the children of this script in CI with bounds on both growths.
"""

from __future__ import annotations

import argparse
import gc
import json
import os
import subprocess
import sys
import tempfile
from collections import defaultdict
from collections.abc import Sequence
from typing import Any

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))

import _harness as h  # noqa: E402

TRAINERS = ("contrastive", "rl")

Sample = tuple[int, int, int]  # (step, RSS bytes, live gc-tracked objects)


def measure(
    trainer_name: str,
    *,
    steps: int,
    every: int,
    batch_size: int = 4,
    size: str = "tiny",
    rows: int = 64,
    logging_steps: int = 50,
    leak: bool = False,
) -> list[Sample]:
    """Train `steps` steps; return samples taken before training (step 0) and every `every` steps.

    `leak=True` makes the trainer's metric buffer (`_metrics`, cleared at each log) keep everything: a deliberate
    per-step accumulation (1 tensor per step for the contrastive trainer, about 12 for RL) to check that the
    measurement catches one.
    """
    from transformers import TrainerCallback

    from clip_trl import ClipContrastiveConfig, ClipContrastiveTrainer, ClipRLConfig, ClipRLTrainer
    from clip_trl.offline import build_clip, load_emoji_dataset

    data = load_emoji_dataset()["train"].select(range(rows))
    model, processor = build_clip(size, seed=0)
    common: dict[str, Any] = dict(
        output_dir=tempfile.mkdtemp(prefix=f"long-run-{trainer_name}-"),
        per_device_train_batch_size=batch_size,
        max_steps=steps,
        learning_rate=1e-4,
        logging_steps=logging_steps,
        save_strategy="no",
        report_to="none",
        disable_tqdm=True,
        dataloader_num_workers=0,
        use_cpu=True,
        seed=0,
    )
    if trainer_name == "contrastive":
        trainer: Any = ClipContrastiveTrainer(
            model=model, args=ClipContrastiveConfig(**common), train_dataset=data, processing_class=processor
        )
    else:
        trainer = ClipRLTrainer(
            model=model,
            reward_funcs="correctness",
            train_dataset=data,
            processing_class=processor,
            args=ClipRLConfig(**common, num_samples=4, beta=0.04),
        )
    if leak:

        class KeepForever(defaultdict):  # `clear()`, which the trainer calls at each log, does nothing
            def clear(self) -> None:
                pass

        trainer._metrics = KeepForever(list)

    samples: list[Sample] = []

    def sample(step: int) -> None:
        gc.collect()  # garbage that merely awaits the cycle collector is not a leak
        rss = h.current_rss()  # before `get_objects` builds its (temporary) list
        samples.append((step, rss, len(gc.get_objects())))

    class Sampler(TrainerCallback):
        def on_step_end(self, args: Any, state: Any, control: Any, **kwargs: Any) -> None:
            if state.global_step % every == 0:
                sample(state.global_step)

    trainer.add_callback(Sampler())
    sample(0)
    trainer.train()
    return samples


def growth(samples: Sequence[Sample], warmup: int) -> dict[str, float]:
    """Growth after `warmup` steps: RSS in MB (10^6 bytes) and %, objects in count; endpoint difference (median of
    3 samples at each end) and least-squares slope per 1,000 steps."""
    after = [s for s in samples if s[0] >= warmup]
    if len(after) < 4:
        raise ValueError(f"need at least 4 samples after step {warmup}, got {len(after)}")
    steps = [s[0] for s in after]

    def ends(values: list[int]) -> tuple[float, float]:
        return sorted(values[:3])[1], sorted(values[-3:])[1]

    def slope(values: list[int]) -> float:
        ms, mv = sum(steps) / len(steps), sum(values) / len(values)
        return sum((s - ms) * (v - mv) for s, v in zip(steps, values)) / sum((s - ms) ** 2 for s in steps)

    rss, objects = [s[1] for s in after], [s[2] for s in after]
    (rss0, rss1), (obj0, obj1) = ends(rss), ends(objects)
    return {
        "start_step": steps[0],
        "end_step": steps[-1],
        "rss_start_mb": rss0 / 1e6,
        "rss_end_mb": rss1 / 1e6,
        "rss_growth_mb": (rss1 - rss0) / 1e6,
        "rss_growth_pct": 100.0 * (rss1 - rss0) / rss0,
        "rss_slope_mb_per_1000": slope(rss) * 1000 / 1e6,
        "objects_start": obj0,
        "objects_end": obj1,
        "objects_growth": obj1 - obj0,
        "objects_slope_per_1000": slope(objects) * 1000,
    }


def child_command(
    name: str,
    *,
    steps: int,
    every: int,
    batch_size: int = 4,
    size: str = "tiny",
    rows: int = 64,
    logging_steps: int = 50,
    threads: int = 1,
    leak: bool = False,
) -> list[str]:
    return [
        sys.executable,
        os.path.abspath(__file__),
        "--child",
        name,
        "--steps",
        str(steps),
        "--every",
        str(every),
        "--batch-size",
        str(batch_size),
        "--size",
        size,
        "--rows",
        str(rows),
        "--logging-steps",
        str(logging_steps),
        "--threads",
        str(threads),
        *(["--leak"] if leak else []),
    ]


def parse_child_output(stdout: str) -> list[Sample] | None:
    line = next((x for x in stdout.splitlines() if x.startswith("RESULT ")), None)
    return None if line is None else [tuple(s) for s in json.loads(line[len("RESULT ") :])]


def run_child(args: argparse.Namespace) -> None:
    h.set_threads(args.threads)
    samples = measure(
        args.child,
        steps=args.steps,
        every=args.every,
        batch_size=args.batch_size,
        size=args.size,
        rows=args.rows,
        logging_steps=args.logging_steps,
        leak=args.leak,
    )
    print("RESULT " + json.dumps(samples), flush=True)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--steps", type=int, default=1200, help="optimizer steps per trainer (≥ 1,000)")
    parser.add_argument("--warmup", type=int, default=200, help="steps excluded from the growth")
    parser.add_argument("--every", type=int, default=50, help="sample every this many steps")
    parser.add_argument("--batch-size", type=int, default=4)
    parser.add_argument("--size", default="tiny", help="clip_trl.offline.build_clip size")
    parser.add_argument("--rows", type=int, default=64, help="emoji rows the epochs cycle over")
    parser.add_argument("--logging-steps", type=int, default=50)
    parser.add_argument("--threads", type=int, default=1, help="torch.set_num_threads in each child")
    parser.add_argument("--trainers", default=",".join(TRAINERS))
    parser.add_argument(
        "--leak", action="store_true", help="inject a per-step leak (metric buffer never cleared)"
    )
    parser.add_argument("--child", default=None, help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.child:
        run_child(args)
        return
    load_at_start = h.load_average()
    rows = []
    for name in [n for n in args.trainers.split(",") if n]:
        command = child_command(
            name,
            steps=args.steps,
            every=args.every,
            batch_size=args.batch_size,
            size=args.size,
            rows=args.rows,
            logging_steps=args.logging_steps,
            threads=args.threads,
            leak=args.leak,
        )
        print(f"  running {name} ({args.steps} steps) ...", file=sys.stderr, flush=True)
        done = subprocess.run(command, capture_output=True, text=True, check=False)
        samples = parse_child_output(done.stdout)
        if done.returncode != 0 or samples is None:
            raise SystemExit(
                f"{name} failed (exit {done.returncode}):\n{done.stdout[-3000:]}\n{done.stderr[-3000:]}"
            )
        g = growth(samples, args.warmup)
        rows.append(
            [
                name,
                f"{samples[0][1] / 1e6:.0f}",
                f"{g['rss_start_mb']:.1f}",
                f"{g['rss_end_mb']:.1f}",
                f"{g['rss_growth_mb']:+.2f} ({g['rss_growth_pct']:+.2f}%)",
                f"{g['rss_slope_mb_per_1000']:+.2f}",
                f"{g['objects_start']:,.0f}",
                f"{g['objects_growth']:+,.0f}",
                f"{g['objects_slope_per_1000']:+,.0f}",
            ]
        )
    machine = h.machine_description(args.threads)
    machine["load average at start"] = load_at_start
    # Each end is the median of 3 samples: steps warm-up..warm-up + 2 × every, and the last three.
    header = [
        "trainer",
        "RSS before training (MB)",
        "RSS after warm-up (MB)",
        "RSS at end (MB)",
        "RSS growth (MB)",
        "RSS slope (MB / 1,000 steps)",
        "objects after warm-up",
        "objects growth",
        "objects slope (/ 1,000 steps)",
    ]
    print(
        f"### Memory over a long run — {args.steps} steps, `{args.size}` model, batch {args.batch_size}, "
        f"{args.rows} rows cycled, warm-up {args.warmup} steps{', LEAK INJECTED' if args.leak else ''}\n"
    )
    print(h.markdown_table(header, rows))
    print("\nCommand: python benchmarks/long_run_memory.py " + " ".join(sys.argv[1:]))
    print("Machine: " + "; ".join(f"{k}: {v}" for k, v in machine.items()))


if __name__ == "__main__":
    main()
