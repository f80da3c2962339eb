"""Does RL help? base → contrastive → contrastive + RL on the offline emoji test split, several seeds.

Side by side from the same contrastive checkpoint: the original project's objective (no sampling:
`-mean(correct × max π)`, so mistakes get no gradient), our GRPO (sampled, 8 per query) and our exact
policy gradient. Prints a Markdown table of mean ± std over seeds.

    python benchmarks/rl_quality.py --seeds 0 1 2
"""

from __future__ import annotations

import argparse
import json
import statistics
import tempfile
import time
from typing import Any

import torch
from transformers.utils import logging as hf_logging

from clip_trl import ClipContrastiveConfig, ClipContrastiveTrainer, ClipRLConfig, ClipRLTrainer, evaluation
from clip_trl.offline import build_clip, load_emoji_dataset

METRICS = ["image_to_text_recall@1", "text_to_image_recall@1", "in_batch_accuracy"]


class OriginalObjectiveTrainer(ClipRLTrainer):
    """The seed project's "RL": reward = correct × max π on the greedy choice, loss = -mean(reward).

    No sampling and no log-probability: only queries already answered right get a gradient.
    """

    def compute_loss(self, model: Any, inputs: dict[str, Any], return_outputs: bool = False, num_items_in_batch: Any = None):
        from clip_trl import modeling

        self._pop_bookkeeping(inputs)
        image_embeds, text_embeds = modeling.encode_pair(
            model, inputs["pixel_values"], inputs["input_ids"], inputs["attention_mask"]
        )
        log_probs = self._policy_log_probs(image_embeds, text_embeds, modeling.logit_scale(model), inputs)
        max_prob, greedy = log_probs.exp().max(dim=1)
        correct = (greedy == inputs["target_index"]).float()
        loss = -(correct * max_prob).mean()
        self._record(reward=(correct * max_prob).mean().detach(), accuracy=correct.mean())
        return loss


def test_metrics(model: Any, processor: Any, test: Any) -> dict[str, float]:
    return evaluation.evaluate_all(model, processor, test, image_column="image", caption_column="caption",
                                   ks=(1, 5, 10), batch_size=128, in_batch_size=32)


def run_seed(seed: int, args: argparse.Namespace, workdir: str) -> dict[str, dict[str, float]]:
    data = load_emoji_dataset(seed=seed)
    model, processor = build_clip("small", seed=seed)
    results = {"base": test_metrics(model, processor, data["test"])}
    print(f"seed {seed} base {results['base']}", flush=True)
    common = dict(report_to="none", save_strategy="no", seed=seed, disable_tqdm=True, use_cpu=True,
                  logging_steps=50, dataloader_num_workers=0)
    contrastive_args = ClipContrastiveConfig(output_dir=f"{workdir}/contrastive-{seed}", learning_rate=args.lr,
                                             num_train_epochs=args.contrastive_epochs, per_device_train_batch_size=64,
                                             warmup_steps=10, **common)
    ClipContrastiveTrainer(model=model, args=contrastive_args, train_dataset=data["train"],
                           processing_class=processor).train()
    results["contrastive"] = test_metrics(model, processor, data["test"])
    print(f"seed {seed} contrastive {results['contrastive']}", flush=True)
    checkpoint = f"{workdir}/contrastive-{seed}/final"
    model.save_pretrained(checkpoint)
    processor.save_pretrained(checkpoint)

    variants = {
        "+ original objective": (OriginalObjectiveTrainer, dict(advantage="exact", beta=0.0)),
        "+ RL grpo": (ClipRLTrainer, dict(advantage="grpo", num_samples=8, beta=args.beta)),
        "+ RL exact": (ClipRLTrainer, dict(advantage="exact", beta=args.beta)),
    }
    for name, (trainer_class, overrides) in variants.items():
        rl_args = ClipRLConfig(output_dir=f"{workdir}/rl-{seed}", learning_rate=args.rl_lr,
                               num_train_epochs=args.rl_epochs, per_device_train_batch_size=32,
                               policy_temperature=args.temperature, **overrides, **common)
        trainer = trainer_class(model=checkpoint, reward_funcs="correctness", args=rl_args,
                                train_dataset=data["train"])
        trainer.train()
        results[name] = test_metrics(trainer.model, trainer.processing_class, data["test"])
        print(f"seed {seed} {name} {results[name]}", flush=True)
    return results


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2])
    parser.add_argument("--contrastive_epochs", type=float, default=10)
    parser.add_argument("--rl_epochs", type=float, default=2)
    parser.add_argument("--lr", type=float, default=5e-4)
    parser.add_argument("--rl_lr", type=float, default=5e-5)
    parser.add_argument("--beta", type=float, default=0.04)
    parser.add_argument("--temperature", type=float, default=1.0)
    parser.add_argument("--json", default=None, help="Also write the raw results here.")
    args = parser.parse_args()
    hf_logging.set_verbosity_error()
    torch.set_num_threads(torch.get_num_threads())
    start = time.time()
    per_seed = []
    with tempfile.TemporaryDirectory() as workdir:
        for seed in args.seeds:
            per_seed.append(run_seed(seed, args, workdir))
            print(f"seed {seed} done after {time.time() - start:.0f} s", flush=True)
            if args.json:  # after every seed, so a long run that is stopped still leaves its numbers
                with open(args.json, "w") as handle:
                    json.dump({"settings": vars(args), "results": per_seed}, handle, indent=2)
    stages = list(per_seed[0])
    n_test = len(load_emoji_dataset()["test"])
    print(f"\nTest split: {n_test} rows (chance recall@1 = {1 / n_test:.4f}; in-batch chance = 1/32 = 0.031). "
          f"Seeds {args.seeds}; mean ± std.\n")
    print("| stage | " + " | ".join(METRICS) + " |")
    print("| --- |" + " --- |" * len(METRICS))
    for stage in stages:
        cells = []
        for metric in METRICS:
            values = [result[stage][metric] for result in per_seed]
            spread = statistics.stdev(values) if len(values) > 1 else 0.0
            cells.append(f"{statistics.mean(values):.3f} ± {spread:.3f}")
        print(f"| {stage} | " + " | ".join(cells) + " |")
    print(f"\nwall time {time.time() - start:.0f} s; settings {vars(args)}")


if __name__ == "__main__":
    main()
