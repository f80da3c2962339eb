"""CPU threads on a shared machine: contrastive steps with 1 and with all threads, as found and beside a busy process.

torch uses one OpenMP thread per core by default. When another process keeps a core busy, the OpenMP threads
of a step wait for each other at every barrier while one of them is descheduled, and the step time can grow
several-fold. Each contender runs `--steps` contrastive steps of the offline default (the small CLIP at 32 px,
batch 64) in a fresh interpreter with `OMP_NUM_THREADS` set, after one warm-up step, optionally beside a
background process that multiplies matrices on one thread (a stand-in for another job on the machine).
Rounds rotate the order; the table gives the median and range of the step time and each ratio to 1 thread.

    python benchmarks/threads.py                # 3 rounds, ~3 min on 2 CPUs
    python benchmarks/threads.py --rounds 5 --steps 20
"""

from __future__ import annotations

import argparse
import os
import statistics
import subprocess
import sys
import time

WORKER = r"""
import sys, time, torch
from clip_trl import ClipContrastiveConfig, ClipContrastiveTrainer, offline
from transformers import TrainerCallback
steps = int(sys.argv[1])
data = offline.load_emoji_dataset()["train"].select(range(64 * (steps + 1)))
model, processor = offline.build_clip("small", image_size=32)
class Clock(TrainerCallback):
    def on_step_end(self, args, state, control, **kwargs):
        if state.global_step == 1:
            self.start = time.perf_counter()
clock = Clock()
args = ClipContrastiveConfig(output_dir="/tmp/clip_trl_threads", max_steps=steps + 1, per_device_train_batch_size=64,
                             save_strategy="no", report_to="none", disable_tqdm=True, logging_strategy="no",
                             use_cpu=True, dataloader_num_workers=0)
trainer = ClipContrastiveTrainer(model=model, args=args, train_dataset=data, processing_class=processor,
                                 callbacks=[clock])
trainer.train()
print((time.perf_counter() - clock.start) / steps)
"""

LOAD = "import torch\ntorch.set_num_threads(1)\na = torch.randn(512, 512)\nwhile True:\n    a @ a\n"


def step_seconds(threads: int, busy: bool, steps: int) -> float:
    env = {**os.environ, "OMP_NUM_THREADS": str(threads), "TOKENIZERS_PARALLELISM": "false"}
    load = subprocess.Popen([sys.executable, "-c", LOAD]) if busy else None
    try:
        if load is not None:
            time.sleep(1.0)  # let the load start spinning before the measured process does
        out = subprocess.run(
            [sys.executable, "-c", WORKER, str(steps)], env=env, check=True, capture_output=True, text=True
        ).stdout
    finally:
        if load is not None:
            load.kill()
            load.wait()
    return float(out.strip().splitlines()[-1])


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--steps", type=int, default=10)
    args = parser.parse_args()
    cpus = os.cpu_count() or 1
    contenders = [(threads, busy) for busy in (False, True) for threads in sorted({1, cpus})]
    times: dict[tuple[int, bool], list[float]] = {c: [] for c in contenders}
    for round_ in range(args.rounds):
        shift = round_ % len(contenders)
        for threads, busy in contenders[shift:] + contenders[:shift]:
            times[threads, busy].append(step_seconds(threads, busy, args.steps))
    print(
        f"| machine | OMP_NUM_THREADS | s/step median | range | vs 1 thread |  ({args.rounds} rounds, {cpus} CPUs)"
    )
    print("| --- | --- | --- | --- | --- |")
    for threads, busy in contenders:
        values = times[threads, busy]
        median = statistics.median(values)
        one = statistics.median(times[1, busy])
        print(
            f"| {'+ one busy process' if busy else 'as found'} | {threads} | {median:.3f} | "
            f"{min(values):.3f}–{max(values):.3f} | {median / one:.2f}× |"
        )


if __name__ == "__main__":
    main()
