"""Test-time adaptation under a generated shift: does test-time RL with a teacher beat TPT and no adaptation?

Fashion-MNIST (Zalando's product photos, 28 px, resized to 32 px; Debian package `dataset-fashion-mnist`) under
the corruptions of `clip_trl.adaptation.shifts` (Gaussian noise, Gaussian blur, contrast; CIFAR-10-C's parameters)
at the chosen severities. The student is a tiny CLIP (`build_clip("tiny", image_size=32)`) trained contrastively on
clean training rows for `--student_epochs`; the teacher the same architecture trained `--teacher_epochs` (longer)
on the same clean rows, once for every seed. Nothing is trained on corrupted images. The ten class prompts
("a photo of a {label}.") are the candidate set.

Contenders, on the same test images, from the same student checkpoint:

- `unadapted`: the student's zero-shot prediction;
- `teacher`: the teacher's;
- `TPT`: episodic entropy minimisation over the confident views (no teacher);
- `distill`: episodic KL to the teacher's softmax over the candidates, the same views and steps;
- `RL episodic`: RLCF — episodic REINFORCE (mean baseline) over the student's top-k, reward the teacher's;
- `RL online`: the same, carried over the stream, predictions from the moving average of the weights.

Each adapts the image tower's LayerNorms with AdamW for `--steps` steps on `--n_views` views (the most confident
`--selection_fraction` kept). Prints accuracy per shift and severity (mean ± std over seeds), the paired
differences of test-time RL with the unadapted model and TPT, and the cost per adapted input (seconds on this
machine, reward calls: reward-function calls plus teacher image passes).

    python benchmarks/tta_quality.py --json tta_quality.json          # 3 shifts x 300 images: long on 2 busy CPUs
    python benchmarks/tta_quality.py --num_test 100 --shifts gaussian_noise   # the recorded run (~8 min)
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import sys
import tempfile
import time
from typing import Any

import torch
from transformers.utils import logging as hf_logging

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from rl_quality import FASHION_LABELS, IMAGE_SIZE, TEMPLATE, contrastive, load_fashion  # noqa: E402

from clip_trl.adaptation import ClipTestTimeAdapter, ClipTestTimeConfig  # noqa: E402
from clip_trl.adaptation.shifts import corrupt_images  # noqa: E402
from clip_trl.hub import load_model  # noqa: E402
from clip_trl.offline import build_clip  # noqa: E402
from clip_trl.rewards import ClipScoreReward, TeacherProbabilityReward  # noqa: E402

METHODS = ("unadapted", "teacher", "TPT", "distill", "RL episodic", "RL online")


def trained(
    size: str, seed: int, epochs: float, data: Any, settings: argparse.Namespace, workdir: str
) -> tuple:
    """A CLIP trained contrastively on the clean rows (cached in `--cache_dir` when given)."""
    folder = os.path.join(
        settings.cache_dir or workdir, f"{size}-seed{seed}-epochs{epochs:g}-rows{len(data)}"
    )
    if os.path.isdir(folder):
        return load_model(folder)
    model, processor = build_clip(size, image_size=IMAGE_SIZE, seed=seed)
    contrastive(model, processor, data, seed, workdir, epochs=epochs, lr=settings.lr, batch=32)
    model.save_pretrained(folder)
    processor.save_pretrained(folder)
    return model.eval(), processor


def method_config(name: str, settings: argparse.Namespace, seed: int) -> ClipTestTimeConfig:
    common = dict(
        candidate_labels=FASHION_LABELS,
        label_template=TEMPLATE,
        steps=settings.steps,
        learning_rate=settings.tta_lr,
        n_views=settings.n_views,
        selection_fraction=settings.selection_fraction,
        top_k=settings.top_k,
        num_samples=settings.num_samples,
        seed=seed,
    )
    if name in ("unadapted", "teacher"):
        return ClipTestTimeConfig(**{**common, "objective": "none", "n_views": 1})
    if name == "TPT":
        return ClipTestTimeConfig(objective="entropy", **common)
    if name == "distill":
        return ClipTestTimeConfig(objective="distillation", **common)
    mode = "online" if name == "RL online" else "episodic"
    return ClipTestTimeConfig(objective="reward", advantage=settings.advantage, mode=mode, **common)


def run_seed(seed: int, data: dict, shifted: dict, settings: argparse.Namespace, workdir: str) -> dict:
    student, processor = trained("tiny", seed, settings.student_epochs, data["train"], settings, workdir)
    teacher, teacher_processor = trained(
        settings.teacher_size, 1000, settings.teacher_epochs, data["train"], settings, workdir
    )
    reward_cls = TeacherProbabilityReward if settings.reward == "teacher_probability" else ClipScoreReward
    reward = reward_cls(teacher, teacher_processor)
    truth = list(data["test"]["label"])
    start = {k: v.clone() for k, v in student.state_dict().items()}
    results: dict[str, dict[str, dict[str, float]]] = {}
    for key, images in shifted.items():
        results[key] = {}
        for name in settings.methods:
            model, proc = (teacher, teacher_processor) if name == "teacher" else (student, processor)
            adapter = ClipTestTimeAdapter(
                model, method_config(name, settings, seed), proc, reward_funcs=reward
            )
            outcome = adapter.adapt(images)
            results[key][name] = {
                "accuracy": outcome.accuracy(truth),
                "seconds_per_input": outcome.stats["seconds_per_input"],
                "reward_calls_per_input": outcome.stats["reward_calls_per_input"],
            }
            student.load_state_dict(
                start
            )  # the online mode leaves its weights: every contender starts afresh
        print(
            f"seed {seed} {key}: " + ", ".join(f"{m} {r['accuracy']:.3f}" for m, r in results[key].items()),
            flush=True,
        )
    return results


def summarize(per_seed: list[dict], methods: list[str]) -> str:
    keys = list(per_seed[0])

    def values(key: str, method: str, metric: str = "accuracy") -> list[float]:
        return [seed[key][method][metric] for seed in per_seed]

    def fmt(xs: list[float], scale: float = 100.0) -> str:
        std = statistics.stdev(xs) if len(xs) > 1 else 0.0
        return f"{scale * statistics.mean(xs):.1f} ± {scale * std:.1f}"

    lines = ["| method | " + " | ".join(keys) + " | s / input | reward calls / input |"]
    lines.append("| --- " * (len(keys) + 3) + "|")
    for method in methods:
        cost = [x for key in keys for x in values(key, method, "seconds_per_input")]
        calls = [x for key in keys for x in values(key, method, "reward_calls_per_input")]
        lines.append(
            f"| {method} | "
            + " | ".join(fmt(values(key, method)) for key in keys)
            + f" | {statistics.mean(cost):.4f} | {statistics.mean(calls):.1f} |"
        )
    for rl in ("RL episodic", "RL online"):
        for other in ("unadapted", "TPT", "teacher", "distill"):
            if rl not in methods or other not in methods:
                continue
            cells = []
            for key in keys:
                diffs = [a - b for a, b in zip(values(key, rl), values(key, other))]
                std = statistics.stdev(diffs) if len(diffs) > 1 else 0.0
                stds = [statistics.stdev(values(key, m)) if len(per_seed) > 1 else 0.0 for m in (rl, other)]
                mark = " ✓" if statistics.mean(diffs) > 2 * max(stds) else ""
                cells.append(f"{100 * statistics.mean(diffs):+.1f} ± {100 * std:.1f}{mark}")
            lines.append(f"| {rl} − {other} (paired) | " + " | ".join(cells) + " | | |")
    return "\n".join(lines)


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2])
    parser.add_argument("--num_train", type=int, default=2000)
    parser.add_argument("--num_test", type=int, default=300, help="Test images per shift.")
    parser.add_argument("--shifts", nargs="+", default=["gaussian_noise", "gaussian_blur", "contrast"])
    parser.add_argument("--severities", type=int, nargs="+", default=[5])
    parser.add_argument("--student_epochs", type=float, default=2)
    parser.add_argument("--teacher_epochs", type=float, default=6)
    parser.add_argument("--teacher_size", default="tiny")
    parser.add_argument("--lr", type=float, default=1e-3, help="Learning rate of the contrastive training.")
    parser.add_argument("--tta_lr", type=float, default=1e-2, help="Learning rate of every test-time method.")
    parser.add_argument("--steps", type=int, default=3)
    parser.add_argument("--n_views", type=int, default=8)
    parser.add_argument("--selection_fraction", type=float, default=0.25)
    parser.add_argument("--top_k", type=int, default=3)
    parser.add_argument("--num_samples", type=int, default=8)
    parser.add_argument("--advantage", default="reinforce", choices=["reinforce", "grpo", "exact"])
    parser.add_argument("--reward", default="clip_score", choices=["clip_score", "teacher_probability"])
    parser.add_argument("--methods", nargs="+", default=list(METHODS), choices=list(METHODS))
    parser.add_argument("--cache_dir", default=None, help="Keep the trained checkpoints here for later runs.")
    parser.add_argument("--json", default=None)
    parser.add_argument(
        "--summarize", default=None, help="Only print the table of a JSON file this script wrote."
    )
    settings = parser.parse_args()
    if settings.summarize:
        with open(settings.summarize) as handle:
            saved = json.load(handle)
        print(summarize(saved["results"], saved["settings"]["methods"]))
        return
    hf_logging.set_verbosity_error()
    begin = time.time()
    data = load_fashion(settings.num_train, settings.num_test)
    clean = list(data["test"]["image"])
    shifted = {
        f"{shift} {severity}": corrupt_images(clean, shift, severity, seed=0)
        for shift in settings.shifts
        for severity in settings.severities
    }
    print(f"{len(clean)} test images per shift; {torch.get_num_threads()} threads", flush=True)
    per_seed = []
    with tempfile.TemporaryDirectory() as workdir:
        for seed in settings.seeds:
            per_seed.append(run_seed(seed, data, shifted, settings, workdir))
            print(f"seed {seed} done after {time.time() - begin:.0f} s", flush=True)
            if settings.json:
                with open(settings.json, "w") as handle:
                    json.dump({"settings": vars(settings), "results": per_seed}, handle, indent=2)
    print(
        f"\nFashion-MNIST, {len(clean)} test images per shift, seeds {settings.seeds}, accuracy % mean ± std\n"
    )
    print(summarize(per_seed, settings.methods))
    print(f"\nwall time {time.time() - begin:.0f} s; settings {vars(settings)}")


if __name__ == "__main__":
    main()
