"""Memory stays flat over a long run: 1,000 tiny steps per trainer, growth after warm-up bounded.

Runs the children of `benchmarks/long_run_memory.py` (one process per trainer, both at once with one thread each,
so the two cores of a CI machine are used) and bounds two growths between step 200 and step 1,000:

- RSS: below 3 MB, where the measured growth is +0.02 MB for both trainers. Never clearing the metric buffer
  (`--leak`) grows the RL trainer's RSS by about 6 MB over those 800 steps;
- gc-tracked objects: below 300 (a log entry every 50 steps adds a handful). The same leak adds 800 tensors to
  the contrastive trainer (one per step), too little memory to move RSS in 800 steps, and about 10,000 to RL.

docs/reliability.md ("Long runs") has the benchmark's table, with and without the injected leak.
"""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).parents[2] / "benchmarks"))

import long_run_memory as bench  # noqa: E402

STEPS, EVERY, WARMUP = 1000, 100, 200
RSS_BOUND_MB = 3.0
OBJECTS_BOUND = 300


def test_memory_is_flat_after_warm_up():
    children = {
        name: subprocess.Popen(
            bench.child_command(name, steps=STEPS, every=EVERY, threads=1),
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
        )
        for name in bench.TRAINERS
    }
    report = {}
    for name, child in children.items():
        out, err = child.communicate(timeout=600)
        samples = bench.parse_child_output(out)
        assert child.returncode == 0 and samples is not None, f"{name}: {out[-2000:]}\n{err[-3000:]}"
        assert [s[0] for s in samples] == list(range(0, STEPS + 1, EVERY)), name  # it did train 1,000 steps
        report[name] = bench.growth(samples, WARMUP)
    for name, g in report.items():
        assert g["rss_growth_mb"] < RSS_BOUND_MB and g["rss_slope_mb_per_1000"] < RSS_BOUND_MB, (name, report)
        assert g["objects_growth"] < OBJECTS_BOUND, (name, report)


def test_growth_reads_a_leak_from_the_samples():
    # 10 KB and 12 objects per step after a warm-up jump: the numbers the test above bounds.
    samples = [(0, 500_000_000, 1000)] + [
        (s, 540_000_000 + 10_000 * s, 2000 + 12 * s) for s in range(100, 1001, 100)
    ]
    g = bench.growth(samples, WARMUP)
    assert (g["start_step"], g["end_step"]) == (200, 1000)
    # Endpoints are medians of 3 samples: steps 200-400 (300) and 800-1000 (900), 600 steps apart.
    assert round(g["rss_growth_mb"], 6) == 6.0 and round(g["rss_slope_mb_per_1000"], 6) == 10.0
    assert g["objects_growth"] == 12 * 600 and round(g["objects_slope_per_1000"]) == 12_000
