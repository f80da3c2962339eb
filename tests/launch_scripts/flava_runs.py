"""FLAVA (towers called directly, not through DDP's `forward`) under several processes; every rank writes its
weights after training to `--out`/rank{r}.pt.

- `contrastive`: two SGD steps with gradient clipping on 8 rows (2 ranks × 4, or 1 × 8 for the reference).
- `rl`: two exact-gradient RL steps over the global in-batch candidates (`gather_candidates=True`).

Run with `python -m torch.distributed.run --standalone --nproc_per_node 2 flava_runs.py --out DIR --output_dir DIR`,
or import `run_all` for the 1-process reference.
"""

from __future__ import annotations

import argparse
import os
import sys
from typing import Any

import torch

sys.path.insert(0, os.path.join(os.path.dirname(__file__), ".."))

from zoo_models import ZOO_BY_NAME  # noqa: E402

from clip_trl import ClipContrastiveConfig, ClipContrastiveTrainer, ClipRLConfig, ClipRLTrainer  # noqa: E402
from clip_trl.offline import load_emoji_dataset  # noqa: E402


def _common(output_dir: str, per_device_batch: int) -> dict[str, Any]:
    return dict(
        output_dir=output_dir,
        per_device_train_batch_size=per_device_batch,
        max_steps=2,
        learning_rate=1e-3,
        optim="sgd",
        max_grad_norm=1.0,
        report_to="none",
        save_strategy="no",
        logging_steps=1,
        seed=0,
        use_cpu=True,
        disable_tqdm=True,
        lr_scheduler_type="constant",
        train_sampling_strategy="sequential",
        dataloader_num_workers=0,
    )


def run_all(output_dir: str, per_device_batch: int) -> dict[str, Any]:
    torch.use_deterministic_algorithms(True)
    entry = ZOO_BY_NAME["FlavaModel"]
    data = load_emoji_dataset()["train"].select(range(16))
    results: dict[str, Any] = {}
    for method in ("contrastive", "rl"):
        torch.manual_seed(0)
        model, processor = entry.build_model(), entry.build_processor()
        common = _common(os.path.join(output_dir, method), per_device_batch)
        if method == "contrastive":
            trainer = ClipContrastiveTrainer(
                model=model,
                args=ClipContrastiveConfig(**common),
                train_dataset=data,
                processing_class=processor,
            )
        else:
            args = ClipRLConfig(**common, advantage="exact", beta=0.0, gather_candidates=True)
            trainer = ClipRLTrainer(
                model=model,
                reward_funcs="correctness",
                args=args,
                train_dataset=data,
                processing_class=processor,
            )
        trainer.train()
        results[method] = {
            "grad_norms": [entry["grad_norm"] for entry in trainer.state.log_history if "grad_norm" in entry],
            "weights": {k: v.detach().clone() for k, v in model.state_dict().items()},
        }
    return results


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--out", required=True)
    parser.add_argument("--output_dir", required=True)
    options = parser.parse_args()
    results = run_all(options.output_dir, per_device_batch=4)
    os.makedirs(options.out, exist_ok=True)
    torch.save(results, os.path.join(options.out, f"rank{os.environ.get('RANK', '0')}.pt"))


if __name__ == "__main__":
    from _exit import leave_together

    status = main()
    leave_together()
    sys.exit(status)
