"""Where only RL can go: rewards that no supervised loss over the same information can use (issue #25, item 3).

`benchmarks/rl_quality.py` shows that where a reward scores every candidate, the reward as a soft target (or, for
a teacher, pseudo-labels and distillation) matches or beats RL. This script measures the settings where that
supervised twin does not exist, each against the best honest baseline from the same checkpoint, with the same
steps, rows, batch and learning rate, on held-out rows, over seeds:

  shortlist        Fashion-MNIST. The action is a ranked top-3 list of the 10 labels (`ClipRLConfig.list_size=3`,
                   Plackett–Luce). Reward of the whole list: DCG of the right label (1 at rank 1, 0.63 at 2, 0.5
                   at 3) + 0.5 × the share of distinct kinds in the list (tops / shoes / trousers / bags) — "the
                   right item first, and the alternatives cover other kinds". A set property: no per-candidate
                   score expresses it. Baselines: more contrastive; the per-candidate reward as a soft target
                   (a single-item list scores the right label 1.5, others 0.5: cross-entropy toward the label).
  shortlist-emoji  The offline emoji set, the same reward over a top-4 list of the batch's captions (kinds: the
                   emoji `group`); held out: the top-4 among every held-out caption.
  budget           An expensive black-box reward under a call budget: a student that saw 15% of the labels, the
                   other images unlabelled, and an oracle (a person, a VQA model) that answers "is this label
                   right?" for K labels per image per step — counted by a wrapper, equal for every arm. RL: GRPO and
                   RLOO with K samples. Baselines with the same calls: best-of-K pseudo-labels (score the student's
                   current top-K, cross-entropy on the best when one is right), a soft target over the K scored
                   labels, and more contrastive training on the labelled rows.

Verdict (the issue's rule): RL beats the best baseline on the reward's own metric by more than twice the larger
seed std, without lowering the guard metric (zero-shot accuracy / image→text R@1) by more than one std.

    python benchmarks/rl_only.py --setting shortlist --seeds 0 1 2 --json shortlist.json
    python benchmarks/rl_only.py --setting shortlist-emoji --seeds 0 1 2 --json shortlist_emoji.json
    python benchmarks/rl_only.py --setting budget --seeds 0 1 2 --json budget.json
"""

from __future__ import annotations

import argparse
import json
import math
import os
import statistics
import sys
import time
from typing import Any

import datasets
import numpy as np
import torch
from transformers.utils import logging as hf_logging

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from rl_quality import (  # noqa: E402  (the data and the contrastive runs are rl_quality's, not copies)
    FASHION_KIND,
    FASHION_LABELS,
    IMAGE_SIZE,
    TEMPLATE,
    RewardSoftTargetTrainer,
    common_args,
    contrastive,
    load_emoji,
    load_fashion,
    run_seeds,
)

from clip_trl import ClipRLConfig, ClipRLTrainer, evaluation  # noqa: E402
from clip_trl.hub import load_model  # noqa: E402
from clip_trl.losses.ranking import greedy_lists  # noqa: E402
from clip_trl.models import modeling  # noqa: E402
from clip_trl.models.encoding import embed_texts  # noqa: E402
from clip_trl.offline import build_clip  # noqa: E402

# ------------------------------------------------------------------------------------------------ rewards


def shortlist_value(ranked: list[str], truth: str, kind_of: dict[str, str]) -> tuple[float, float, float]:
    """(reward, DCG of the right answer, share of distinct kinds) of one ranked list."""
    dcg = sum(1.0 / math.log2(i + 2) for i, c in enumerate(ranked) if c == truth)
    kinds = len({kind_of.get(c, c) for c in ranked}) / len(ranked)
    return dcg + 0.5 * kinds, dcg, kinds


class ShortlistReward:
    """A list reward (docs/rewards.md, "List rewards"): each completion is a ranked list of names."""

    __name__ = "shortlist"

    def __init__(self, kind_of: dict[str, str]) -> None:
        self.kind_of = kind_of

    def __call__(self, completions: list, ground_truth: list, **kwargs: Any) -> list[float]:
        return [shortlist_value(list(c), t, self.kind_of)[0] for c, t in zip(completions, ground_truth)]


class SingleItemShortlist(ShortlistReward):
    """The per-candidate view of the same reward: a candidate scored as a one-item list (what a soft target can
    use): 1.5 for the right answer, 0.5 otherwise."""

    __name__ = "shortlist_single"

    def __call__(self, completions: list, ground_truth: list, **kwargs: Any) -> list[float]:
        return [shortlist_value([c], t, self.kind_of)[0] for c, t in zip(completions, ground_truth)]


class CountingOracle:
    """The expensive black box: 1 when the label is the image's (hidden) label. Counts every call."""

    __name__ = "oracle"

    def __init__(self) -> None:
        self.calls = 0

    def __call__(self, completions: list, hidden_label: list, **kwargs: Any) -> list[float]:
        self.calls += len(completions)
        return [float(c == h) for c, h in zip(completions, hidden_label)]


# ---------------------------------------------------------------------------------------- budget baselines


class TopKScoredTrainer(ClipRLTrainer):
    """The supervised uses of K reward calls per image: score the student's current top-K labels, then
    `mode="best"`: cross-entropy on the best-scoring one when it has a positive reward (best-of-K pseudo-labels);
    `mode="soft"`: cross-entropy of π restricted to the K toward `softmax(r / 0.1)` over them."""

    mode = "best"

    def compute_loss(
        self, model: Any, inputs: dict[str, Any], return_outputs: bool = False, num_items_in_batch: Any = None
    ) -> torch.Tensor:
        self._pop_bookkeeping(inputs)
        image_embeds, text_embeds = modeling.encode_batch(model, inputs)
        log_probs = self._policy_log_probs(image_embeds, text_embeds, modeling.logit_scale(model), inputs)
        top = log_probs.detach().topk(self.args.num_samples, dim=1).indices
        entries = [(b, k) for b, row in enumerate(top.tolist()) for k in row]
        rewards = self._score(entries, inputs, log_probs).total.view(top.shape).to(log_probs.device)
        if self.mode == "best":
            keep = rewards.max(dim=1).values > 0
            target = top.gather(1, rewards.argmax(dim=1, keepdim=True))
            nll = -log_probs.gather(1, target).squeeze(1)
            return nll[keep].mean() if keep.any() else log_probs.sum() * 0.0
        restricted = log_probs.gather(1, top).log_softmax(dim=1)
        target = torch.softmax(rewards / 0.1, dim=1)
        return -(target * restricted).sum(dim=1).mean()


class BestOfKTrainer(TopKScoredTrainer):
    mode = "best"


class SoftOverKTrainer(TopKScoredTrainer):
    mode = "soft"


# ------------------------------------------------------------------------------------------------ metrics


@torch.no_grad()
def held_out(model: Any, processor: Any, test: datasets.Dataset, task: dict[str, Any]) -> dict[str, float]:
    embeds = evaluation.compute_embeddings(model, processor, test, batch_size=256)
    scores = evaluation.scores_from_embeddings(embeds, ks=(1, 5), in_batch_size=32)
    answers = task["answers"] if task["answers"] is not None else embeds.captions
    names = task["names"] if task["answers"] is not None else answers
    similarity = embeds.image_embeds @ embed_texts(model, processor.tokenizer, answers, 256).T
    truth = list(test[task["truth_column"]])
    metrics = {
        "accuracy": float(np.mean([names[g] == t for g, t in zip(similarity.argmax(1).tolist(), truth)])),
        "i2t_R@1": scores["image_to_text_recall@1"],
    }
    if task.get("list_size"):
        lists = greedy_lists(similarity, task["list_size"]).tolist()
        values = [
            shortlist_value([names[k] for k in row], t, task["kind_of"]) for row, t in zip(lists, truth)
        ]
        metrics["shortlist"], metrics["dcg"], metrics["kinds"] = (float(np.mean(v)) for v in zip(*values))
    return metrics


# ------------------------------------------------------------------------------------------------ runs


def rl_args(seed: int, workdir: str, settings: argparse.Namespace, **overrides: Any) -> ClipRLConfig:
    config = dict(
        learning_rate=settings.rl_lr,
        max_steps=settings.steps,
        per_device_train_batch_size=settings.batch,
        beta=0.0,
        **common_args(seed, f"{workdir}/rl"),
    )
    config.update(overrides)
    return ClipRLConfig(**config)


def train_start(data: datasets.Dataset, seed: int, workdir: str, settings: argparse.Namespace, epochs: float):
    model, processor = build_clip("tiny", image_size=IMAGE_SIZE, seed=seed)
    contrastive(model, processor, data, seed, workdir, epochs=epochs, lr=settings.lr, batch=settings.batch)
    path = f"{workdir}/start-{seed}"
    model.save_pretrained(path)
    processor.save_pretrained(path)
    return model, processor, path


def run_shortlist(seed: int, data: dict, settings: argparse.Namespace, workdir: str) -> dict:
    train, test = data["train"], data["test"]
    fashion = settings.setting == "shortlist"
    if fashion:
        kind_of = dict(FASHION_KIND)
        task = dict(
            answers=[TEMPLATE.format(n) for n in FASHION_LABELS], names=FASHION_LABELS, truth_column="label"
        )
        candidates = dict(candidates="labels", candidate_labels=FASHION_LABELS, label_template=TEMPLATE)
    else:
        kind_of = dict(
            zip(list(train["caption"]) + list(test["caption"]), list(train["group"]) + list(test["group"]))
        )
        task = dict(answers=None, names=None, truth_column="caption")
        candidates = dict(candidates="in_batch")
    task.update(list_size=settings.list_size, kind_of=kind_of)
    results: dict[str, dict[str, float]] = {}

    def record(name: str, model: Any, processor: Any) -> None:
        results[name] = held_out(model, processor, test, task)
        print(
            f"seed {seed} {name}: {json.dumps({k: round(v, 4) for k, v in results[name].items()})}",
            flush=True,
        )

    model, processor, start = train_start(train, seed, workdir, settings, settings.epochs)
    record("start (contrastive)", model, processor)
    arms = settings.arms or ["contrastive", "soft", "rl", "rl+contrastive"]
    for arm in arms:
        if arm == "contrastive":
            m, p = load_model(start)
            contrastive(
                m, p, train, seed, workdir, steps=settings.steps, lr=settings.rl_lr, batch=settings.batch
            )
            record("baseline: more contrastive", m, p)
        elif arm == "soft":
            args = rl_args(seed, workdir, settings, advantage="exact", **candidates)
            trainer = RewardSoftTargetTrainer(
                model=start, reward_funcs=SingleItemShortlist(kind_of), args=args, train_dataset=train
            )
            trainer.train()
            record("baseline: per-candidate reward as soft target", trainer.model, trainer.processing_class)
        elif arm.startswith("rl"):
            extra = dict(contrastive_coef=1.0) if arm == "rl+contrastive" else {}
            args = rl_args(
                seed,
                workdir,
                settings,
                advantage="grpo",
                num_samples=settings.num_samples,
                list_size=settings.list_size,
                **candidates,
                **extra,
            )
            trainer = ClipRLTrainer(
                model=start, reward_funcs=ShortlistReward(kind_of), args=args, train_dataset=train
            )
            trainer.train()
            name = f"RL: list_size={settings.list_size}, GRPO" + (" + contrastive_coef=1" if extra else "")
            record(name, trainer.model, trainer.processing_class)
    return results


def run_budget(seed: int, data: dict, settings: argparse.Namespace, workdir: str) -> dict:
    train, test = data["train"], data["test"]
    task = dict(
        answers=[TEMPLATE.format(n) for n in FASHION_LABELS], names=FASHION_LABELS, truth_column="label"
    )
    order = np.random.default_rng(seed).permutation(len(train)).tolist()
    cut = int(settings.labeled_fraction * len(train))
    labelled, unlabelled = train.select(sorted(order[:cut])), train.select(sorted(order[cut:]))
    # Truly unlabelled for the step: the label moves to a column only the oracle reads.
    unlabelled = unlabelled.add_column("hidden_label", list(unlabelled["label"])).remove_columns(
        ["label", "caption"]
    )
    results: dict[str, dict[str, float]] = {}
    calls: dict[str, int] = {}

    def record(name: str, model: Any, processor: Any, oracle: CountingOracle | None = None) -> None:
        results[name] = held_out(model, processor, test, task)
        if oracle is not None:
            calls[name] = oracle.calls
            results[name]["reward_calls"] = float(oracle.calls)
        print(
            f"seed {seed} {name}: {json.dumps({k: round(v, 4) for k, v in results[name].items()})}",
            flush=True,
        )

    model, processor, start = train_start(
        labelled, seed, workdir, settings, settings.epochs / settings.labeled_fraction
    )
    record("student (few labels)", model, processor)
    contrastive(
        model,
        processor,
        labelled,
        seed,
        workdir,
        steps=settings.steps,
        lr=settings.rl_lr,
        batch=settings.batch,
    )
    record("baseline: more contrastive on labelled", model, processor)
    labels = dict(candidates="labels", candidate_labels=FASHION_LABELS, label_template=TEMPLATE)
    k = settings.num_samples
    arms = [
        (f"baseline: best-of-{k} pseudo-labels", BestOfKTrainer, "grpo"),
        (f"baseline: soft target over the {k} scored", SoftOverKTrainer, "grpo"),
        (f"RL: GRPO, {k} samples", ClipRLTrainer, "grpo"),
        (f"RL: RLOO, {k} samples", ClipRLTrainer, "rloo"),
    ]
    for name, trainer_class, advantage in arms:
        oracle = CountingOracle()
        args = rl_args(seed, workdir, settings, advantage=advantage, num_samples=k, **labels)
        trainer = trainer_class(model=start, reward_funcs=oracle, args=args, train_dataset=unlabelled)
        trainer.train()
        record(name, trainer.model, trainer.processing_class, oracle)
    budget = settings.steps * settings.batch * k
    assert set(calls.values()) == {budget}, f"unequal reward-call budgets: {calls} (expected {budget} each)"
    print(f"seed {seed}: every arm called the oracle {budget} times ({k} per image per step)", flush=True)
    return results


# ------------------------------------------------------------------------------------------------ table


def summarize(per_seed: list[dict], setting: str) -> str:
    def stats(stage: str, metric: str) -> tuple[float, float]:
        values = [r[stage][metric] for r in per_seed if stage in r and metric in r[stage]]
        return statistics.mean(values), statistics.stdev(values) if len(values) > 1 else 0.0

    if setting == "budget":
        metric, guard, shown = "accuracy", "accuracy", ["accuracy", "reward_calls"]
    else:
        metric = "shortlist"
        guard = "accuracy" if setting == "shortlist" else "i2t_R@1"
        shown = ["shortlist", "dcg", "kinds", guard]
    lines = ["| run | " + " | ".join(shown) + " |", "| --- |" + " --- |" * len(shown)]
    for stage in per_seed[0]:
        cells = [
            (lambda m, s: f"{m:.0f}" if name == "reward_calls" else f"{m:.3f} ± {s:.3f}")(*stats(stage, name))
            if name in per_seed[0][stage]
            else ""
            for name in shown
        ]
        lines.append(f"| {stage} | " + " | ".join(cells) + " |")
    baselines = [s for s in per_seed[0] if s.startswith("baseline")]
    best = max(baselines, key=lambda b: stats(b, metric)[0])
    lines += [
        "",
        f"| recipe | best baseline ({metric}) | RL | Δ | 2×std | paired Δ | {guard}: baseline → RL | verdict |",
        "| --- | --- | --- | --- | --- | --- | --- | --- |",
    ]
    for recipe in (s for s in per_seed[0] if s.startswith("RL")):
        (b_mean, b_std), (r_mean, r_std) = stats(best, metric), stats(recipe, metric)
        (gb, gb_std), (gr, gr_std) = stats(best, guard), stats(recipe, guard)
        diffs = [r[recipe][metric] - r[best][metric] for r in per_seed]
        paired_std = statistics.stdev(diffs) if len(diffs) > 1 else 0.0
        threshold = 2 * max(b_std, r_std)
        guard_ok = gr >= gb - max(gb_std, gr_std)
        if guard_ok and r_mean - b_mean > threshold:
            verdict = "**RL wins**"
        elif guard_ok and statistics.mean(diffs) > max(2 * paired_std, 0.0):
            verdict = "RL wins on the paired rule only"  # every seed's start is shared by its arms
        else:
            verdict = "no win"
        lines.append(
            f"| {recipe} | {best.split(': ', 1)[1]}: {b_mean:.3f} ± {b_std:.3f} | {r_mean:.3f} ± {r_std:.3f} | "
            f"{r_mean - b_mean:+.3f} | {threshold:.3f} | {statistics.mean(diffs):+.3f} ± {paired_std:.3f} | "
            f"{gb:.3f} → {gr:.3f} | {verdict} |"
        )
    return "\n".join(lines)


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--setting", choices=["shortlist", "shortlist-emoji", "budget"], default="shortlist")
    parser.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2])
    parser.add_argument(
        "--epochs", type=float, default=2, help="Contrastive epochs of the starting checkpoint."
    )
    parser.add_argument("--steps", type=int, default=100, help="Optimizer steps of every arm.")
    parser.add_argument("--batch", type=int, default=32)
    parser.add_argument("--lr", type=float, default=1e-3, help="Learning rate of the starting checkpoint.")
    parser.add_argument("--rl_lr", type=float, default=2e-4, help="Learning rate of every arm.")
    parser.add_argument("--list_size", type=int, default=None, help="Default: 3 (fashion), 4 (emoji).")
    parser.add_argument("--num_samples", type=int, default=None, help="Lists per image (8) / budget K (4).")
    parser.add_argument("--labeled_fraction", type=float, default=0.15)
    parser.add_argument("--num_train", type=int, default=1000)
    parser.add_argument("--num_test", type=int, default=500)
    parser.add_argument("--test_size", type=float, default=0.25, help="Emoji: held-out share.")
    parser.add_argument(
        "--arms", nargs="+", default=None, help="shortlist: contrastive soft rl rl+contrastive."
    )
    parser.add_argument("--json", default=None)
    parser.add_argument(
        "--summarize", default=None, help="Only print the tables of a JSON this script wrote."
    )
    settings = parser.parse_args()
    if settings.summarize:
        with open(settings.summarize) as handle:
            saved = json.load(handle)
        print(summarize(saved["results"], saved["settings"]["setting"]))
        return
    settings.list_size = settings.list_size or (4 if settings.setting == "shortlist-emoji" else 3)
    settings.num_samples = settings.num_samples or (4 if settings.setting == "budget" else 8)
    hf_logging.set_verbosity_error()
    start = time.time()
    if settings.setting == "shortlist-emoji":
        data = load_emoji(settings.test_size)
    else:
        data = load_fashion(settings.num_train, settings.num_test)
    print(f"{settings.setting}: {len(data['train'])} train / {len(data['test'])} held-out rows", flush=True)
    run = run_budget if settings.setting == "budget" else run_shortlist
    per_seed = run_seeds(run, data, settings, start)
    print(
        f"\n{settings.setting}, held-out rows, seeds {settings.seeds}, mean ± std; every arm: "
        f"{settings.steps} steps × {settings.batch} rows, lr {settings.rl_lr}, from the same checkpoint.\n"
    )
    print(summarize(per_seed, settings.setting))
    print(f"\nwall time {time.time() - start:.0f} s; settings {vars(settings)}")


if __name__ == "__main__":
    main()
