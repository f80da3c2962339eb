"""RL step cost: `ClipRLTrainer` step time against a `ClipContrastiveTrainer` step, same model and batch.

The design's promise (docs: DESIGN.md, "RL trainer"): the candidate embeddings are computed once per step and
shared by all samples, so an RL step costs about one contrastive step, not `num_samples` of them. Target:
RL step time ≤ 1.2 × the contrastive step.

Contenders (each in its own child process, run in lock-step with the others, see `_harness.py`):

- `contrastive`: `ClipContrastiveTrainer`, `loss_type="clip"`.
- `{grpo,rloo,exact}-beta{0,0.04}`: `ClipRLTrainer` with in-batch candidates (the batch's 64 captions),
  reward `"correctness"`, `num_samples=8` (grpo, rloo; `exact` scores every candidate), and `beta` 0 (no
  reference model) or 0.04 (a frozen copy of the starting model gives `π_ref`).
- `grpo-beta0.04-log1` and `grpo-beta0.04-rollouts`: that GRPO run logging at every step, without and with
  `log_rollouts=True` (8 queries: thumbnails, parquet, `index.html`, the console table): the cost of rollout
  tables at their most frequent. (The other contenders log every 10 steps, i.e. never inside the timed steps.)

All use `build_clip("small")` (4 layers x 256 per tower, 64 px, patch 8), batch 64, the same emoji rows in the
same order, their own default collators (which decode the PNGs), AdamW (fused) and the same threads.

Besides the wall-clock step time, each contender reports where its step goes: the policy forward
(`modeling.encode_pair` with grad), the reference forward (the same call under `no_grad`), the reward
scoring (`ClipRLTrainer._score`: building the reward kwargs + calling the rewards), the backward
(`accelerator.backward`), the collator, and the rest (optimizer, gradient clipping, loss math, bookkeeping).

    python benchmarks/rl_step.py                       # ~5 min on 2 CPU cores (--threads 1 on a busy machine)
    python benchmarks/rl_step.py --contenders contrastive,grpo-beta0.04
"""

from __future__ import annotations

import argparse
import os
import sys
import tempfile

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))

import _harness as h  # noqa: E402

CONTENDERS = (
    "contrastive",
    "grpo-beta0",
    "grpo-beta0.04",
    "rloo-beta0",
    "rloo-beta0.04",
    "exact-beta0",
    "exact-beta0.04",
    "grpo-beta0.04-log1",
    "grpo-beta0.04-rollouts",
)
LOGGING_VARIANTS = ("-log1", "-rollouts")
NUM_SAMPLES = 8
TARGET = 1.2
PARTS = ("forward", "ref_forward", "rewards", "backward")


def parse(name: str) -> tuple[str, float]:
    for suffix in LOGGING_VARIANTS:
        name = name.removesuffix(suffix)
    advantage, beta = name.split("-beta")
    return advantage, float(beta)


def run_child(args: argparse.Namespace) -> None:
    channel = h.child_channel(args.fds)
    h.set_threads(args.threads)
    import torch

    import clip_trl.models.modeling as modeling
    from clip_trl import ClipContrastiveConfig, ClipContrastiveTrainer, ClipRLConfig, ClipRLTrainer
    from clip_trl.offline import build_clip

    cuda = torch.cuda.is_available()
    total_steps = args.warmup + args.steps * args.repeats
    dataset = h.emoji_train_rows()
    total_rows = (total_steps + 1) * args.batch_size  # +1: accelerate collates one batch ahead
    if total_rows > len(dataset):
        raise SystemExit(f"{total_steps} steps x {args.batch_size} rows exceed the {len(dataset)} train rows")
    dataset = dataset.select(range(total_rows)).flatten_indices()
    model, processor = build_clip(args.size, seed=0)

    counters: dict[str, float] = {}
    modeling.encode_pair = h.timed(
        modeling.encode_pair, counters, lambda: "forward" if torch.is_grad_enabled() else "ref_forward", cuda
    )
    common = dict(
        output_dir=tempfile.mkdtemp(prefix=f"bench-{args.child}-"),
        per_device_train_batch_size=args.batch_size,
        max_steps=total_steps,
        learning_rate=1e-5,
        optim="adamw_torch_fused",
        lr_scheduler_type="constant",
        logging_steps=10,
        save_strategy="no",
        report_to="none",
        disable_tqdm=True,
        dataloader_num_workers=0,
        dataloader_pin_memory=cuda,
        train_sampling_strategy="sequential",
        seed=0,
    )
    if args.child == "contrastive":
        trainer = ClipContrastiveTrainer(
            model=model,
            args=ClipContrastiveConfig(**common),
            train_dataset=dataset,
            processing_class=processor,
        )
    else:
        advantage, beta = parse(args.child)
        logging = {}
        if args.child.endswith(LOGGING_VARIANTS):
            logging = {"logging_steps": 1, "log_rollouts": args.child.endswith("-rollouts")}
        config = ClipRLConfig(
            **(common | logging),
            advantage=advantage,
            beta=beta,
            num_samples=NUM_SAMPLES,
            candidates="in_batch",
        )
        trainer = ClipRLTrainer(
            model=model,
            reward_funcs="correctness",
            args=config,
            train_dataset=dataset,
            processing_class=processor,
        )
        trainer._score = h.timed(trainer._score, counters, "rewards", cuda)
    trainer.accelerator.backward = h.timed(trainer.accelerator.backward, counters, "backward", cuda)
    collator = h.TimedCollator(trainer.data_collator)
    trainer.data_collator = collator
    clock = h.StepClock(channel, args.warmup, args.steps, args.repeats, collator, cuda, counters)
    trainer.add_callback(h.trainer_clock_callback(clock))
    channel.send(event="ready", rss=h.current_rss())
    trainer.train()
    h.finish_child(channel)


def report(results: dict[str, h.Result], args: argparse.Namespace, machine: dict[str, str]) -> str:
    base = results.get("contrastive")
    base_step = h.median(base.seconds_per_step()) if base else float("nan")
    base_cpu = h.median(base.cpu_per_step()) if base else float("nan")
    base_best_cpu = min(base.cpu_per_step()) if base else float("nan")
    rows = []
    for name in CONTENDERS:
        if name not in results:
            continue
        r = results[name]
        step = h.median(r.seconds_per_step())
        cpu = h.median(r.cpu_per_step())
        best_cpu = min(r.cpu_per_step())
        parts = {p: h.median(r.counter_per_step(p)) for p in PARTS}
        collate = h.median(r.collate_per_step())
        rest = step - sum(parts.values()) - collate
        if name == "contrastive":
            label, verdict = "contrastive (`ClipContrastiveTrainer`)", "—"
        else:
            advantage, beta = parse(name)
            samples = "all 64 candidates" if advantage == "exact" else f"{NUM_SAMPLES} samples"
            label = f"RL `{advantage}` ({samples}), β={beta:g}"
            if name.endswith("-log1"):
                label += ", logging every step"
            elif name.endswith("-rollouts"):
                label += ", logging every step with `log_rollouts`"
            verdict = "—" if base is None else "met" if step / base_step <= TARGET else "**missed**"
        rows.append(
            [
                label,
                f"{1000 * step:.0f}",
                f"{step / base_step:.2f}",
                f"{cpu:.2f}",
                f"{cpu / base_cpu:.2f}",
                f"{best_cpu / base_best_cpu:.2f}",
                *(f"{1000 * parts[p]:.0f}" for p in PARTS),
                f"{1000 * collate:.0f}",
                f"{1000 * rest:.0f}",
                h.mib(r.peak_rss),
                verdict,
            ]
        )
    header = [
        "step",
        "ms/step (median)",
        "× contrastive",
        "CPU s/step",
        "CPU × contrastive",
        "best-rep CPU × contrastive",
        "forward ms",
        "ref forward ms",
        "rewards ms",
        "backward ms",
        "collate ms",
        "rest ms",
        "peak RSS MiB",
        f"≤ {TARGET}× target",
    ]
    overhead = []
    if "grpo-beta0.04-log1" in results and "grpo-beta0.04-rollouts" in results:
        plain, tables = (
            h.median(results[n].seconds_per_step()) for n in ("grpo-beta0.04-log1", "grpo-beta0.04-rollouts")
        )
        overhead = [
            "",
            f"Rollout tables at every step: {tables / plain:.2f}× the step time of the same run logging "
            f"every step without them (+{1000 * (tables - plain):.0f} ms/step).",
        ]
    parts_text = [
        f"### RL step vs contrastive step — batch {args.batch_size}, in-batch candidates, reward `correctness`, "
        f"{args.threads} threads, {args.repeats} × {args.steps} steps after {args.warmup} warm-up",
        "",
        h.markdown_table(header, rows),
        *overhead,
        "",
        "Machine: " + "; ".join(f"{k}: {v}" for k, v in machine.items()),
    ]
    return "\n".join(parts_text)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    h.common_arguments(parser, steps=2, repeats=4, warmup=1)
    parser.add_argument("--json", default=None, help="also write every repetition's raw numbers here")
    parser.add_argument(
        "--contenders",
        default=",".join(CONTENDERS),
        help=f"comma-separated subset of {', '.join(CONTENDERS)}",
    )
    args = parser.parse_args()
    if args.child:
        run_child(args)
        return
    log_dir = args.log_dir or tempfile.mkdtemp(prefix="clip-trl-bench-rl-")
    load_at_start = h.load_average()
    names = [n for n in args.contenders.split(",") if n]
    unknown = sorted(set(names) - set(CONTENDERS))
    if unknown:
        raise SystemExit(f"unknown contenders {unknown}; choose from {', '.join(CONTENDERS)}")
    script = os.path.abspath(__file__)
    passthrough = [
        "--steps",
        str(args.steps),
        "--repeats",
        str(args.repeats),
        "--warmup",
        str(args.warmup),
        "--threads",
        str(args.threads),
        "--batch-size",
        str(args.batch_size),
        "--size",
        args.size,
    ]
    print(f"contenders' logs: {log_dir}", file=sys.stderr)
    results = h.run_contenders(
        names, lambda name: [sys.executable, script, "--child", name, *passthrough], args.repeats, log_dir
    )
    if args.json:
        h.write_json(args.json, results, vars(args))
    machine = h.machine_description(args.threads)
    machine["load average at end"] = machine.pop("load average now", "n/a")
    print(
        report(
            results,
            args,
            {
                "command": " ".join(["python", "benchmarks/rl_step.py", *sys.argv[1:]]),
                "load average at start": load_at_start,
                **machine,
            },
        )
    )


if __name__ == "__main__":
    main()
