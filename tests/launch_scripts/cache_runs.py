"""Runs with the frozen-tower embedding cache, for the multi-process test: LiT (`freeze_vision`, contrastive) and
RL over label candidates with a frozen text tower, 2 epochs each so the second reads the cache back.

Run under `python -m torch.distributed.run --nproc_per_node 2 cache_runs.py --per_device_batch 4 --out f.pt` (or
plainly with `--per_device_batch 8`); rank 0 saves each run's logged losses, hit rates and final weights.
"""

import argparse
import sys

import torch

from clip_trl import ClipContrastiveConfig, ClipContrastiveTrainer, ClipRLConfig, ClipRLTrainer
from clip_trl.offline import build_clip, load_emoji_dataset


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--per_device_batch", type=int, required=True)
    parser.add_argument("--out", required=True)
    parser.add_argument("--output_dir", required=True)
    parser.add_argument("--cache", default="auto")
    args = parser.parse_args()
    torch.use_deterministic_algorithms(True)
    data = load_emoji_dataset()["train"].select(range(16))
    common = dict(
        per_device_train_batch_size=args.per_device_batch,
        num_train_epochs=2,
        learning_rate=0.5,
        optim="sgd",
        max_grad_norm=0.0,
        report_to="none",
        save_strategy="no",
        logging_steps=1,
        seed=0,
        use_cpu=True,
        disable_tqdm=True,
        lr_scheduler_type="constant",
        cache_frozen_embeddings=args.cache,
    )
    results = {}
    for name in ("lit", "rl_labels"):
        model, processor = build_clip("tiny", seed=0)
        output_dir = f"{args.output_dir}/{name}"
        if name == "lit":
            config = ClipContrastiveConfig(output_dir=output_dir, **common, freeze_vision=True)
            trainer = ClipContrastiveTrainer(
                model=model, args=config, train_dataset=data, processing_class=processor
            )
        else:
            config = ClipRLConfig(
                output_dir=output_dir,
                **common,
                freeze_text=True,
                candidate_labels=sorted(set(data["group"])),
                label_column="group",
                advantage="exact",
                beta=0.0,
            )
            trainer = ClipRLTrainer(
                model=model,
                reward_funcs="correctness",
                args=config,
                train_dataset=data,
                processing_class=processor,
            )
        trainer.train()
        logs = [entry for entry in trainer.state.log_history if "loss" in entry]
        results[name] = {
            "losses": [entry["loss"] for entry in logs],
            "hit_rates": [{k: v for k, v in entry.items() if k.startswith("cache/")} for entry in logs],
            "weights": {k: v.detach().clone() for k, v in model.state_dict().items()},
        }
        results["world_size"] = trainer.args.world_size
        is_main = trainer.args.process_index == 0
    if is_main:
        torch.save(results, args.out)


if __name__ == "__main__":
    from _exit import leave_together

    status = main()
    leave_together()
    sys.exit(status)
