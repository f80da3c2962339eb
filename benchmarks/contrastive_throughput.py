"""Contrastive training throughput: `ClipContrastiveTrainer` vs a plain `transformers.Trainer` vs a raw loop.

Three contenders train the same model (`clip_trl.offline.build_clip("small")`: 4 layers x 256 wide per tower,
64 px images, 8 px patches, the real CLIP BPE tokenizer), same initial weights (seed 0), on the same rows of
the offline emoji data set in the same order (a fixed seeded permutation, read sequentially), batch 64,
the same number of torch threads, AdamW (fused, lr 1e-5, no weight decay), gradient clipping at 1.0:

- `ours`:  `ClipContrastiveTrainer` as shipped, with its default data collator (`clip_trl.data.collator.ClipDataCollator`)
  and default image pipeline (`image_processing="fast"`, `clip_trl.data.image_processing.FastImageTransform`).
- `ours_processor`: the same trainer with `image_processing="processor"`: images through transformers' own
  image processor, the *same image pipeline as `plain`* — so `ours_processor / plain` compares the trainers
  alone, and `ours / plain` each with its own default pipeline.
- `plain`: `transformers.Trainer` on `CLIPModel` with `return_loss=True` and a minimal collator built after
  transformers' `examples/pytorch/contrastive-image-text/run_clip.py` (its `CLIPProcessor`: transformers'
  PIL-backend image processor — the fallback when torchvision is absent, as here — and captions padded to
  the batch's longest).
- `raw`:   a hand-written PyTorch loop: `DataLoader` -> `model(**batch, return_loss=True)` -> backward ->
  `clip_grad_norm_` -> `AdamW.step()`, with `plain`'s collator.
- opt-in (`--contenders`): `plain_fixed`, the plain Trainer with every caption padded to 77 tokens
  (`padding="max_length"`, as run_clip.py's preprocessing does). It is not run_clip.py itself.

Data (`--data`):

- `decode` (default): every contender decodes the same PNG bytes and runs the same `CLIPProcessor` (image
  processor + tokenizer, captions padded to the longest in the batch) in its collator, in the main process
  (`--workers 0`). `ours` uses its own collator (which also hashes images/captions to find duplicate
  positives and records row indices); `plain` and `raw` use the minimal run_clip-style collator.
- `tensors`: the rows are pre-processed once into tensors before timing; every contender, ours included
  (through `data_collator=`), only pads and stacks them. This isolates the training step from data loading.

Each contender runs in its own child process (so peak RSS is per contender) and the children run their
repetitions in lock-step, one at a time, in rotating order (see `_harness.py`). Prints Markdown tables.

    python benchmarks/contrastive_throughput.py                    # 2-3 min on 2 idle CPU cores
    python benchmarks/contrastive_throughput.py --data tensors
    python benchmarks/contrastive_throughput.py --profile ours     # torch.profiler table of a few steps
"""

from __future__ import annotations

import argparse
import os
import sys
import tempfile
from typing import Any

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))

import _harness as h  # noqa: E402

CONTENDERS = ("ours", "ours_processor", "plain", "raw", "plain_fixed")
DEFAULT_CONTENDERS = ("ours", "ours_processor", "plain", "raw")
LABELS = {
    "ours": "`ClipContrastiveTrainer` (default: fast image pipeline)",
    "ours_processor": '`ClipContrastiveTrainer`, `image_processing="processor"` (plain\'s images)',
    "plain": "plain `Trainer` + `CLIPModel(return_loss=True)`",
    "raw": "raw PyTorch loop",
    "plain_fixed": "plain `Trainer`, captions padded to 77 tokens",
}
LEARNING_RATE = 1e-5
MAX_GRAD_NORM = 1.0
TARGETS = {"speed_vs_plain": 1.10, "speed_vs_raw": 0.95, "rss_vs_plain": 1.05}


# ------------------------------------------------------------------------------------------- data


class MinimalCollator:
    """What run_clip.py's `collate_fn` amounts to: processor on images and captions, plus `return_loss`.

    `padding=True` pads captions to the batch's longest (as `ClipDataCollator` does); run_clip.py itself pads
    every caption to a fixed `max_length` (`padding="max_length"`, the `plain_fixed` contender).
    """

    def __init__(self, processor: Any, padding: bool | str = True) -> None:
        self.processor = processor
        self.padding = padding

    def __call__(self, rows: list[dict[str, Any]]) -> dict[str, Any]:
        batch = self.processor(
            images=[row["image"] for row in rows],
            text=[row["caption"] for row in rows],
            padding=self.padding,
            truncation=True,
            max_length=self.processor.tokenizer.model_max_length,
            return_tensors="pt",
        )
        return {
            "pixel_values": batch["pixel_values"],
            "input_ids": batch["input_ids"],
            "attention_mask": batch["attention_mask"],
            "return_loss": True,
        }


class TensorRows:
    """Pre-processed rows (`pixel_values` [3, H, W], unpadded `input_ids`) as a map-style dataset."""

    def __init__(self, rows: list[dict[str, Any]]) -> None:
        self.rows = rows

    def __len__(self) -> int:
        return len(self.rows)

    def __getitem__(self, index: int) -> dict[str, Any]:
        return self.rows[index]


class StackCollator:
    """Pad token ids to the batch's longest and stack: the only data work in `--data tensors`."""

    def __init__(self, pad_token_id: int, return_loss: bool, fixed_length: int | None = None) -> None:
        self.pad_token_id = pad_token_id
        self.return_loss = return_loss
        self.fixed_length = fixed_length

    def __call__(self, rows: list[dict[str, Any]]) -> dict[str, Any]:
        import torch

        width = self.fixed_length or max(len(row["input_ids"]) for row in rows)
        input_ids = torch.full((len(rows), width), self.pad_token_id, dtype=torch.long)
        attention_mask = torch.zeros((len(rows), width), dtype=torch.long)
        for i, row in enumerate(rows):
            n = len(row["input_ids"])
            input_ids[i, :n] = row["input_ids"]
            attention_mask[i, :n] = 1
        batch = {
            "pixel_values": torch.stack([row["pixel_values"] for row in rows]),
            "input_ids": input_ids,
            "attention_mask": attention_mask,
        }
        if self.return_loss:
            batch["return_loss"] = True
        return batch


def tensor_rows(dataset: Any, processor: Any, count: int) -> TensorRows:
    rows = []
    for start in range(0, count, h.BATCH_SIZE):
        chunk = dataset.select(range(start, min(start + h.BATCH_SIZE, count)))
        pixels = processor.image_processor(images=list(chunk["image"]), return_tensors="pt")["pixel_values"]
        tokens = processor.tokenizer(
            list(chunk["caption"]), truncation=True, max_length=processor.tokenizer.model_max_length
        )["input_ids"]
        for pixel_values, ids in zip(pixels, tokens):
            rows.append({"pixel_values": pixel_values, "input_ids": __import__("torch").tensor(ids)})
    return TensorRows(rows)


# ------------------------------------------------------------------------------------------- child


def run_child(args: argparse.Namespace) -> None:
    channel = h.child_channel(args.fds)
    h.set_threads(args.threads)
    import torch
    from transformers import Trainer

    from clip_trl import ClipContrastiveConfig, ClipContrastiveTrainer
    from clip_trl.offline import build_clip

    total_steps = args.warmup + args.steps * args.repeats
    # One spare batch: accelerate's DataLoaderShard collates one batch ahead, so without it the Trainers'
    # last repetition would time one collate fewer than the raw loop's.
    total_rows = (total_steps + 1) * args.batch_size
    dataset = h.emoji_train_rows()
    if total_rows > len(dataset):
        raise SystemExit(f"{total_steps} steps x {args.batch_size} rows exceed the {len(dataset)} train rows")
    dataset = dataset.select(range(total_rows)).flatten_indices()
    model, processor = build_clip(args.size, seed=0)
    if args.data == "tensors":
        dataset = tensor_rows(dataset, processor, total_rows)
    cuda = torch.cuda.is_available()

    if args.child == "raw":
        collator = h.TimedCollator(
            StackCollator(processor.tokenizer.pad_token_id, return_loss=True)
            if args.data == "tensors"
            else MinimalCollator(processor)
        )
        device = torch.device("cuda" if cuda else "cpu")
        model.to(device).train()
        loader = torch.utils.data.DataLoader(
            dataset,
            batch_size=args.batch_size,
            shuffle=False,
            collate_fn=collator,
            num_workers=args.workers,
            drop_last=True,
        )
        optimizer = torch.optim.AdamW(model.parameters(), lr=LEARNING_RATE, weight_decay=0.0, fused=True)
        clock = h.StepClock(channel, args.warmup, args.steps, args.repeats, collator, cuda)
        channel.send(event="ready", rss=h.current_rss())
        clock.start()
        batches = iter(loader)
        for _ in range(total_steps):
            batch = next(batches)
            batch = {k: v.to(device) if isinstance(v, torch.Tensor) else v for k, v in batch.items()}
            loss = model(**batch).loss
            loss.backward()
            torch.nn.utils.clip_grad_norm_(model.parameters(), MAX_GRAD_NORM)
            optimizer.step()
            optimizer.zero_grad(set_to_none=True)
            clock.step_end()
        h.finish_child(channel)
        return

    common = dict(
        output_dir=tempfile.mkdtemp(prefix=f"bench-{args.child}-"),
        per_device_train_batch_size=args.batch_size,
        max_steps=total_steps,
        learning_rate=LEARNING_RATE,
        weight_decay=0.0,
        max_grad_norm=MAX_GRAD_NORM,
        optim="adamw_torch_fused",
        lr_scheduler_type="constant",
        logging_steps=10,
        save_strategy="no",
        report_to="none",
        disable_tqdm=True,
        dataloader_num_workers=args.workers,
        dataloader_pin_memory=cuda,
        train_sampling_strategy="sequential",
        remove_unused_columns=False,
        seed=0,
    )
    if args.child in ("ours", "ours_processor"):
        collator = None
        if args.data == "tensors":
            collator = h.TimedCollator(StackCollator(processor.tokenizer.pad_token_id, return_loss=False))
        image_processing = "processor" if args.child == "ours_processor" else "fast"
        config = ClipContrastiveConfig(**common, image_processing=image_processing)
        trainer = ClipContrastiveTrainer(
            model=model,
            args=config,
            train_dataset=dataset,
            processing_class=processor,
            data_collator=collator,
        )
        if collator is None:  # time our own default collator in place
            collator = h.TimedCollator(trainer.data_collator)
            trainer.data_collator = collator
    else:
        from transformers import TrainingArguments

        fixed = args.child == "plain_fixed"
        max_length = processor.tokenizer.model_max_length
        collator = h.TimedCollator(
            StackCollator(
                processor.tokenizer.pad_token_id, return_loss=True, fixed_length=max_length if fixed else None
            )
            if args.data == "tensors"
            else MinimalCollator(processor, padding="max_length" if fixed else True)
        )
        trainer = Trainer(
            model=model, args=TrainingArguments(**common), train_dataset=dataset, data_collator=collator
        )
    clock = h.StepClock(channel, args.warmup, args.steps, args.repeats, collator, cuda)
    trainer.add_callback(h.trainer_clock_callback(clock))
    channel.send(event="ready", rss=h.current_rss())
    trainer.train()
    h.finish_child(channel)


# ------------------------------------------------------------------------------------------ profile


def run_profile(args: argparse.Namespace) -> None:
    """A few steps of one contender under torch.profiler (after 2 warm-up steps); prints the top ops."""
    h.set_threads(args.threads)
    from torch.profiler import ProfilerActivity, profile, record_function
    from transformers import Trainer, TrainerCallback, TrainingArguments

    from clip_trl import ClipContrastiveConfig, ClipContrastiveTrainer
    from clip_trl.offline import build_clip

    steps = 2 + args.steps
    dataset = h.emoji_train_rows().select(range(steps * args.batch_size)).flatten_indices()
    model, processor = build_clip(args.size, seed=0)
    common = dict(
        output_dir=tempfile.mkdtemp(),
        per_device_train_batch_size=args.batch_size,
        max_steps=steps,
        learning_rate=LEARNING_RATE,
        optim="adamw_torch_fused",
        lr_scheduler_type="constant",
        logging_steps=10,
        save_strategy="no",
        report_to="none",
        disable_tqdm=True,
        train_sampling_strategy="sequential",
        remove_unused_columns=False,
        seed=0,
    )
    if args.profile == "ours":
        trainer = ClipContrastiveTrainer(
            model=model,
            args=ClipContrastiveConfig(**common),
            train_dataset=dataset,
            processing_class=processor,
        )
    else:
        trainer = Trainer(
            model=model,
            args=TrainingArguments(**common),
            train_dataset=dataset,
            data_collator=MinimalCollator(processor),
        )
    collate = trainer.data_collator

    def labelled_collate(rows: Any) -> Any:
        with record_function("## collate"):
            return collate(rows)

    trainer.data_collator = labelled_collate
    original_compute_loss = trainer.compute_loss

    def labelled_compute_loss(*a: Any, **k: Any) -> Any:
        with record_function("## compute_loss (forward + loss)"):
            return original_compute_loss(*a, **k)

    trainer.compute_loss = labelled_compute_loss
    prof = profile(activities=[ProfilerActivity.CPU], record_shapes=False)

    class Window(TrainerCallback):
        def on_step_end(self, a: Any, state: Any, control: Any, **kwargs: Any) -> None:
            if state.global_step == 2:
                prof.__enter__()

    trainer.add_callback(Window())
    trainer.train()
    prof.__exit__(None, None, None)
    print(prof.key_averages().table(sort_by=args.profile_sort, row_limit=args.profile_rows))


# ------------------------------------------------------------------------------------------- parent


def ratio(a: float, b: float) -> float:
    return a / b if b else float("nan")


def verdict(value: float, target: float, higher_is_better: bool) -> str:
    ok = value >= target if higher_is_better else value <= target
    return "met" if ok else "**missed**"


def paired_ratios(a: h.Result, b: h.Result, batch_size: int) -> list[float]:
    """`a / b` samples/s per repetition: the contenders ran one repetition each in turn, so a pair shares the
    machine's load of that moment."""
    return [x / y for x, y in zip(a.samples_per_second(batch_size), b.samples_per_second(batch_size))]


def paired_cpu_ratios(a: h.Result, b: h.Result) -> list[float]:
    """`b`'s CPU seconds per step over `a`'s, per repetition (> 1: `a` needs less CPU per step). Process CPU time
    counts only this process's work, so it is less disturbed by other jobs than wall time."""
    return [y / x for x, y in zip(a.cpu_per_step(), b.cpu_per_step())]


def spread(values: list[float]) -> str:
    return f"{h.median(values):.3f} ({min(values):.3f}–{max(values):.3f})" if values else "n/a"


def report(results: dict[str, h.Result], args: argparse.Namespace, machine: dict[str, str]) -> str:
    speed = {name: h.median(r.samples_per_second(args.batch_size)) for name, r in results.items()}
    rss = {name: r.peak_rss for name, r in results.items()}
    rows = []
    for name in CONTENDERS:
        if name not in results:
            continue
        r = results[name]
        sps = r.samples_per_second(args.batch_size)
        rows.append(
            [
                LABELS[name],
                f"{speed[name]:.1f}",
                f"{min(sps):.1f}–{max(sps):.1f}",
                f"{1000 * h.median(r.seconds_per_step()):.0f}",
                f"{h.median(r.cpu_per_step()):.2f}",
                f"{min(r.cpu_per_step()):.2f}",
                f"{1000 * h.median(r.collate_per_step()):.0f}",
                h.mib(rss[name]),
                h.mib(rss[name] - r.ready_rss),
                f"{ratio(speed[name], speed.get('plain', float('nan'))):.3f}",
                f"{ratio(rss[name], rss.get('plain', 0)):.3f}",
            ]
        )
    header = [
        "contender",
        "samples/s (median)",
        "samples/s (min–max)",
        "ms/step",
        "CPU s/step",
        "CPU s/step (best rep)",
        "collate ms/step",
        "peak RSS MiB",
        "RSS growth in training MiB",
        "speed / plain",
        "peak RSS / plain",
    ]
    parts = [
        f"### Contrastive throughput — data `{args.data}`, batch {args.batch_size}, {args.threads} threads, "
        f"{args.repeats} × {args.steps} steps after {args.warmup} warm-up",
        "",
        h.markdown_table(header, rows),
    ]
    pairs = [
        ("ours", "plain", "ours / plain Trainer, each with its default image pipeline", "speed_vs_plain"),
        (
            "ours_processor",
            "plain",
            "ours / plain Trainer, the same image pipeline (transformers')",
            "speed_vs_plain",
        ),
        ("ours", "raw", "ours / raw loop, each with its default image pipeline", "speed_vs_raw"),
        ("ours_processor", "raw", "ours / raw loop, the same image pipeline", "speed_vs_raw"),
        ("ours", "plain_fixed", "ours / plain Trainer with captions padded to 77 tokens", "speed_vs_plain"),
        (
            "ours_processor",
            "plain_fixed",
            "ours (same images) / plain Trainer with captions padded to 77",
            "speed_vs_plain",
        ),
    ]
    checks = []
    for a, b, label, target in pairs:
        if a in results and b in results:
            ratios = paired_ratios(results[a], results[b], args.batch_size)
            checks.append(
                [
                    label,
                    spread(ratios),
                    spread(paired_cpu_ratios(results[a], results[b])),
                    f"≥ {TARGETS[target]:.2f}",
                    verdict(h.median(ratios), TARGETS[target], True),
                ]
            )
    if "ours" in results and "plain" in results:
        v = ratio(rss["ours"], rss["plain"])
        checks.append(
            [
                "peak RSS ours / plain Trainer",
                f"{v:.3f}",
                "",
                f"≤ {TARGETS['rss_vs_plain']:.2f}",
                verdict(v, TARGETS["rss_vs_plain"], False),
            ]
        )
    if checks:
        parts += [
            "",
            "Ratios per repetition (the contenders of a round ran back to back), median (min–max):",
            "",
            h.markdown_table(
                ["ratio", "samples/s (wall)", "by CPU s/step", "target", "verdict (wall)"], checks
            ),
        ]
    parts += ["", "Machine: " + "; ".join(f"{k}: {v}" for k, v in machine.items())]
    return "\n".join(parts)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    h.common_arguments(parser, steps=2, repeats=6, warmup=2)
    parser.add_argument("--data", choices=("decode", "tensors"), default="decode")
    parser.add_argument("--workers", type=int, default=0, help="DataLoader workers (all contenders)")
    parser.add_argument("--json", default=None, help="also write every repetition's raw numbers here")
    parser.add_argument(
        "--contenders",
        default=",".join(DEFAULT_CONTENDERS),
        help=f"comma-separated subset of {', '.join(CONTENDERS)}",
    )
    parser.add_argument("--profile", choices=("ours", "plain"), default=None)
    parser.add_argument("--profile-rows", type=int, default=25)
    parser.add_argument(
        "--profile-sort",
        default="self_cpu_time_total",
        help="torch.profiler key_averages sort key, e.g. cpu_time_total",
    )
    args = parser.parse_args()
    if args.child:
        run_child(args)
        return
    if args.profile:
        run_profile(args)
        return
    log_dir = args.log_dir or tempfile.mkdtemp(prefix="clip-trl-bench-")
    load_at_start = h.load_average()
    names = [n for n in args.contenders.split(",") if n]
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
        "--data",
        args.data,
        "--workers",
        str(args.workers),
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
                "command": " ".join(["python", "benchmarks/contrastive_throughput.py", *sys.argv[1:]]),
                "load average at start": load_at_start,
                **machine,
            },
        )
    )


if __name__ == "__main__":
    main()
