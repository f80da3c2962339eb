"""Start-up cost: `clip-trl --help`, `import clip_trl` and `from clip_trl import ClipRLTrainer` beside `import trl`.

Each command runs in a fresh interpreter, in rotating order (a change in background load hits every contender
alike), `--repeats` times; the table gives the best and the median wall time and each contender's ratio to
`import trl` (best over best, and median over median). Target: `clip-trl --help` within 1.5x of `import trl`.

    python benchmarks/startup.py            # 10 rounds, ~1 min
    python benchmarks/startup.py --repeats 20
"""

from __future__ import annotations

import argparse
import os
import shutil
import statistics
import subprocess
import sys
import time

CLI = shutil.which("clip-trl", path=os.path.dirname(sys.executable)) or "clip-trl"
CONTENDERS = {
    "python -c 'import trl'": [sys.executable, "-c", "import trl"],
    "clip-trl --help": [CLI, "--help"],
    "python -c 'import clip_trl'": [sys.executable, "-c", "import clip_trl"],
    "python -c 'from clip_trl import ClipRLTrainer'": [
        sys.executable,
        "-c",
        "from clip_trl import ClipRLTrainer",
    ],
}
BASELINE = "python -c 'import trl'"
TARGET = "clip-trl --help"


def seconds(command: list[str]) -> float:
    start = time.perf_counter()
    subprocess.run(command, check=True, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    return time.perf_counter() - start


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--repeats", type=int, default=10)
    args = parser.parse_args()
    names = list(CONTENDERS)
    times: dict[str, list[float]] = {name: [] for name in names}
    for name in names:  # warm the page cache once
        seconds(CONTENDERS[name])
    for round_ in range(args.repeats):
        for name in names[round_ % len(names) :] + names[: round_ % len(names)]:
            times[name].append(seconds(CONTENDERS[name]))
    best = {name: min(values) for name, values in times.items()}
    median = {name: statistics.median(values) for name, values in times.items()}
    print(
        f"| command | best s | median s | best / trl | median / trl |  ({args.repeats} rounds, {os.cpu_count()} CPUs)"
    )
    print("| --- | --- | --- | --- | --- |")
    for name in names:
        print(
            f"| `{name}` | {best[name]:.3f} | {median[name]:.3f} | {best[name] / best[BASELINE]:.2f}x "
            f"| {median[name] / median[BASELINE]:.2f}x |"
        )
    ratio = best[TARGET] / best[BASELINE]
    print(
        f"\n`{TARGET}` / `import trl` (best): {ratio:.2f}x — target <= 1.5x: {'met' if ratio <= 1.5 else 'MISSED'}"
    )


if __name__ == "__main__":
    main()
