"""Shared machinery of the benchmark scripts: one child process per contender, run in lock-step.

Why children: peak RSS (`ru_maxrss`) is a per-process high-water mark, so each contender gets a fresh
process and its peak cannot mix with another's. Why lock-step: the parent tells one child at a time to
run its next repetition of N steps while the others wait (blocked on a pipe, using no CPU), rotating
the order every round. A change in background load during the run then hits every contender about
equally instead of whichever happened to run last, and no two contenders ever train at the same time.

Protocol (JSON lines over a pipe pair passed with `pass_fds`):

    child  -> {"event": "ready", "rss": bytes}         after imports, data and model set-up
    parent -> {"cmd": "go"}                             run the next repetition (round 0 is warm-up)
    child  -> {"event": "rep", "seconds": s, "cpu_seconds": u, "steps": n, "collate_seconds": c}
    ...
    child  -> {"event": "done", "peak_rss": bytes, ...} after the last repetition, then exits
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import resource
import statistics
import subprocess
import sys
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Any

BATCH_SIZE = 64


# ------------------------------------------------------------------------------------------ child side


class Channel:
    def __init__(self, read_fd: int, write_fd: int) -> None:
        self._reader = os.fdopen(read_fd, "r", buffering=1)
        self._writer = os.fdopen(write_fd, "w", buffering=1)

    def send(self, **message: Any) -> None:
        self._writer.write(json.dumps(message) + "\n")
        self._writer.flush()

    def recv(self) -> dict[str, Any]:
        line = self._reader.readline()
        if not line:
            raise SystemExit("benchmark parent went away")
        return json.loads(line)


def current_rss() -> int:
    """Resident set size now, in bytes (from /proc; falls back to the peak)."""
    try:
        with open("/proc/self/statm") as f:
            return int(f.read().split()[1]) * os.sysconf("SC_PAGE_SIZE")
    except OSError:
        return peak_rss()


def peak_rss() -> int:
    """This process's peak resident set size in bytes (`ru_maxrss` is KiB on Linux, bytes on macOS)."""
    value = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    return value if sys.platform == "darwin" else value * 1024


class TimedCollator:
    """Wrap a collator and add up the time spent in it (data decoding / tokenising / stacking)."""

    def __init__(self, collator: Callable) -> None:
        self.collator = collator
        self.seconds = 0.0

    def __call__(self, rows: Any) -> Any:
        start = time.perf_counter()
        try:
            return self.collator(rows)
        finally:
            self.seconds += time.perf_counter() - start

    def __getattr__(self, name: str) -> Any:  # e.g. the RL trainer reads attributes of its collator
        return getattr(self.__dict__["collator"], name)


class StepClock:
    """Counts optimizer steps and reports to the parent at repetition boundaries.

    Call `start()` once, right before the first step is fetched, and `step_end()` after every optimizer
    step. Round 0 (`warmup` steps) is reported like the others; the parent discards it.
    """

    def __init__(
        self,
        channel: Channel,
        warmup: int,
        steps: int,
        repeats: int,
        collator: TimedCollator | None = None,
        cuda: bool = False,
        counters: dict[str, float] | None = None,
    ) -> None:
        self.channel = channel
        self.counters = counters if counters is not None else {}  # cumulative seconds, reported per rep
        self._counters0: dict[str, float] = {}
        self.boundaries = [warmup + i * steps for i in range(repeats + 1)]
        self.total_steps = self.boundaries[-1]
        self.collator = collator
        self.cuda = cuda
        self.step = 0
        self._t0 = 0.0
        self._cpu0 = 0.0
        self._c0 = 0.0
        self._s0 = 0

    def _sync(self) -> None:
        if self.cuda:
            import torch

            torch.cuda.synchronize()

    def start(self) -> None:
        self.channel.recv()  # wait for "go" of round 0
        self._restart()

    def _restart(self) -> None:
        self._t0 = time.perf_counter()
        self._cpu0 = time.process_time()
        self._c0 = self.collator.seconds if self.collator is not None else 0.0
        self._s0 = self.step
        self._counters0 = dict(self.counters)

    def step_end(self) -> None:
        self.step += 1
        if self.step not in self.boundaries:
            return
        self._sync()
        seconds = time.perf_counter() - self._t0
        cpu_seconds = time.process_time() - self._cpu0
        collate = (self.collator.seconds if self.collator is not None else 0.0) - self._c0
        counters = {k: v - self._counters0.get(k, 0.0) for k, v in self.counters.items()}
        self.channel.send(
            event="rep",
            seconds=seconds,
            cpu_seconds=cpu_seconds,
            steps=self.step - self._s0,
            collate_seconds=collate,
            counters=counters,
        )
        if self.step < self.total_steps:
            self.channel.recv()  # block, using no CPU, until our next turn
            self._restart()


def timed(
    function: Callable, counters: dict[str, float], name: str | Callable[[], str], cuda: bool = False
) -> Callable:
    """Wrap `function` so the seconds spent in it add up in `counters[name]` (`name` may be a callable)."""
    import functools

    @functools.wraps(function)
    def wrapper(*args: Any, **kwargs: Any) -> Any:
        start = time.perf_counter()
        try:
            return function(*args, **kwargs)
        finally:
            if cuda:
                import torch

                torch.cuda.synchronize()
            key = name() if callable(name) else name
            counters[key] = counters.get(key, 0.0) + time.perf_counter() - start

    return wrapper


def trainer_clock_callback(clock: StepClock) -> Any:
    """A `TrainerCallback` that starts the clock at `on_train_begin` and ticks it at `on_step_end`."""
    from transformers import TrainerCallback

    class _ClockCallback(TrainerCallback):
        def on_train_begin(self, args: Any, state: Any, control: Any, **kwargs: Any) -> None:
            clock.start()

        def on_step_end(self, args: Any, state: Any, control: Any, **kwargs: Any) -> None:
            clock.step_end()

    return _ClockCallback()


def child_channel(argv_fds: str) -> Channel:
    read_fd, write_fd = (int(x) for x in argv_fds.split(","))
    return Channel(read_fd, write_fd)


def finish_child(channel: Channel, **extra: Any) -> None:
    payload: dict[str, Any] = {"peak_rss": peak_rss()}
    try:
        import torch

        if torch.cuda.is_available():
            payload["cuda_max_memory"] = torch.cuda.max_memory_allocated()
    except Exception:  # pragma: no cover - torch is always there
        pass
    payload.update(extra)
    channel.send(event="done", **payload)


def set_threads(threads: int) -> None:
    import torch

    torch.set_num_threads(threads)


def emoji_train_rows(seed: int = 0) -> Any:
    """The offline emoji train split in one fixed, seeded order (every contender reads the same rows)."""
    import numpy as np

    from clip_trl.offline import load_emoji_dataset

    train = load_emoji_dataset()["train"]
    order = np.random.default_rng(seed).permutation(len(train))
    return train.select(order.tolist()).flatten_indices()


# ----------------------------------------------------------------------------------------- parent side


@dataclass
class Result:
    name: str
    reps: list[dict[str, Any]] = field(default_factory=list)
    ready_rss: int = 0
    done: dict[str, Any] = field(default_factory=dict)
    returncode: int | None = None

    @property
    def timed(self) -> list[dict[str, Any]]:
        return self.reps[1:]  # round 0 is the warm-up

    def samples_per_second(self, batch_size: int = BATCH_SIZE) -> list[float]:
        return [r["steps"] * batch_size / r["seconds"] for r in self.timed]

    def seconds_per_step(self) -> list[float]:
        return [r["seconds"] / r["steps"] for r in self.timed]

    def cpu_per_step(self) -> list[float]:
        return [r["cpu_seconds"] / r["steps"] for r in self.timed]

    def collate_per_step(self) -> list[float]:
        return [r["collate_seconds"] / r["steps"] for r in self.timed]

    def counter_per_step(self, name: str) -> list[float]:
        return [r.get("counters", {}).get(name, 0.0) / r["steps"] for r in self.timed]

    @property
    def peak_rss(self) -> int:
        return int(self.done.get("peak_rss", 0))


class _Child:
    def __init__(self, name: str, command: list[str], log_dir: str) -> None:
        parent_read, child_write = os.pipe()
        child_read, parent_write = os.pipe()
        self.log_path = os.path.join(log_dir, f"{name}.log")
        self.log = open(self.log_path, "w")  # noqa: SIM115 - open for the child's whole life
        self.proc = subprocess.Popen(
            [*command, "--fds", f"{child_read},{child_write}"],
            pass_fds=(child_read, child_write),
            stdout=self.log,
            stderr=subprocess.STDOUT,
        )
        os.close(child_read)
        os.close(child_write)
        self.channel = Channel(parent_read, parent_write)
        self.result = Result(name)

    def expect(self, event: str) -> dict[str, Any]:
        try:
            message = self.channel.recv()
        except SystemExit:
            self.proc.wait()
            self.log.flush()
            with open(self.log_path) as f:
                tail = f.read()[-4000:]
            raise RuntimeError(
                f"contender '{self.result.name}' died (exit {self.proc.returncode}):\n{tail}"
            ) from None
        if message.get("event") != event:
            raise RuntimeError(f"contender '{self.result.name}' sent {message}, expected {event!r}")
        return message


def run_contenders(
    names: Sequence[str],
    command_for: Callable[[str], list[str]],
    repeats: int,
    log_dir: str,
    progress: Callable[[str], None] = lambda s: print(s, file=sys.stderr, flush=True),
) -> dict[str, Result]:
    """Start one child per contender, wait until all are set up, then run `repeats + 1` rounds
    (round 0 = warm-up) one child at a time, rotating the order each round."""
    os.makedirs(log_dir, exist_ok=True)
    children = [_Child(name, command_for(name), log_dir) for name in names]
    try:
        for child in children:  # set-up runs concurrently; nothing is timed until every child is ready
            child.result.ready_rss = int(child.expect("ready")["rss"])
            progress(f"  ready: {child.result.name} (RSS {child.result.ready_rss / 2**20:.0f} MiB)")
        for round_index in range(repeats + 1):
            shift = round_index % len(children)
            for child in children[shift:] + children[:shift]:
                child.channel.send(cmd="go")
                rep = child.expect("rep")
                child.result.reps.append(rep)
                label = "warm-up" if round_index == 0 else f"rep {round_index}/{repeats}"
                progress(
                    f"  {label:>9} {child.result.name:<24} {rep['steps']} steps in {rep['seconds']:.2f} s"
                )
        for child in children:
            child.result.done = child.expect("done")
            child.result.returncode = child.proc.wait(timeout=120)
    finally:
        for child in children:
            if child.proc.poll() is None:
                child.proc.kill()
                child.proc.wait()
            child.log.close()
    return {child.result.name: child.result for child in children}


def write_json(path: str, results: dict[str, Result], arguments: dict[str, Any]) -> None:
    payload = {
        "arguments": arguments,
        "contenders": {
            name: {"ready_rss": r.ready_rss, "reps": r.reps, "done": r.done, "returncode": r.returncode}
            for name, r in results.items()
        },
    }
    with open(path, "w") as f:
        json.dump(payload, f, indent=1)


def median(values: Sequence[float]) -> float:
    return statistics.median(values) if values else float("nan")


def mib(value: float) -> str:
    return f"{value / 2**20:,.0f}"


def machine_description(threads: int) -> dict[str, str]:
    import torch
    import transformers

    model_name = platform.processor() or platform.machine()
    try:
        out = subprocess.run(["lscpu"], capture_output=True, text=True, check=False).stdout
        for line in out.splitlines():
            if line.lower().startswith("model name"):
                model_name = line.split(":", 1)[1].strip()
                break
    except OSError:
        pass
    info = {
        "cpu": f"{model_name}, {os.cpu_count()} logical CPUs",
        "torch": torch.__version__,
        "transformers": transformers.__version__,
        "python": platform.python_version(),
        "threads": str(threads),
        "device": torch.cuda.get_device_name(0) if torch.cuda.is_available() else "CPU only (no GPU)",
    }
    info["load average now"] = load_average()
    return info


def load_average() -> str:
    """1/5/15-minute load averages: other work on the machine inflates wall-clock times."""
    try:
        return " / ".join(f"{x:.2f}" for x in os.getloadavg())
    except OSError:
        return "n/a"


def markdown_table(header: Sequence[str], rows: Sequence[Sequence[Any]]) -> str:
    lines = ["| " + " | ".join(header) + " |", "| " + " | ".join("---" for _ in header) + " |"]
    lines += ["| " + " | ".join(str(cell) for cell in row) + " |" for row in rows]
    return "\n".join(lines)


def common_arguments(parser: argparse.ArgumentParser, steps: int, repeats: int, warmup: int) -> None:
    parser.add_argument("--steps", type=int, default=steps, help="optimizer steps per timed repetition")
    parser.add_argument("--repeats", type=int, default=repeats, help="timed repetitions per contender")
    parser.add_argument("--warmup", type=int, default=warmup, help="untimed warm-up steps per contender")
    parser.add_argument(
        "--threads", type=int, default=os.cpu_count(), help="torch.set_num_threads in every contender"
    )
    parser.add_argument("--batch-size", type=int, default=BATCH_SIZE)
    parser.add_argument("--size", default="small", help="clip_trl.offline.build_clip size")
    parser.add_argument("--log-dir", default=None, help="where the contenders' logs go (default: a temp dir)")
    parser.add_argument("--child", default=None, help=argparse.SUPPRESS)
    parser.add_argument("--fds", default=None, help=argparse.SUPPRESS)
