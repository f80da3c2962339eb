"""One distillation step per configuration, for the multi-process equivalence test: rank 0 saves each run's logged
loss and updated weights to `--out`. A 2-process run on a local batch of B rows is compared with a 1-process run on
2B rows (the same global batch).

Run with `python -m torch.distributed.run --standalone --nproc_per_node N distill_runs.py --per_device_batch B ...`.
"""

import argparse
import sys

import torch

from clip_trl import ClipDistillationConfig, ClipDistillationTrainer
from clip_trl.offline import build_clip, load_emoji_dataset

VARIANTS = [
    # Global in-batch candidates, both directions, two weighted teachers, soft targets at T = 2.
    (
        "in_batch_both",
        dict(gather_candidates=True, direction="both", temperature=2.0, teacher_weights=[3.0, 1.0]),
    ),
    # A label set, both directions (text queries are split between ranks), hard pseudo-labels.
    ("labels_both_hard", dict(gather_candidates=True, direction="both", target="hard", labels=True)),
    # A label set, image to text, without gathering: rows are independent.
    ("labels_soft", dict(labels=True, temperature=0.5)),
]


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--per_device_batch", type=int, required=True)
    parser.add_argument("--out", required=True)
    parser.add_argument("--output_dir", required=True)
    args = parser.parse_args()
    torch.use_deterministic_algorithms(True)
    data = load_emoji_dataset()["train"].select(range(16))
    labels = sorted(set(data["caption"]))[:5]
    results = {}
    for name, overrides in VARIANTS:
        overrides = dict(overrides)
        if overrides.pop("labels", False):
            overrides.update(candidate_labels=labels, label_template="{}")
        model, processor = build_clip("tiny", seed=0)
        teachers = [build_clip("tiny", seed=1)[0], build_clip("tiny", seed=2)[0]]
        config = ClipDistillationConfig(
            output_dir=f"{args.output_dir}/{name}",
            per_device_train_batch_size=args.per_device_batch,
            max_steps=1,
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
            **overrides,
        )
        trainer = ClipDistillationTrainer(
            model=model, teacher_model=teachers, args=config, train_dataset=data, processing_class=processor
        )
        trainer.train()
        loss = next(entry["loss"] for entry in trainer.state.log_history if "loss" in entry)
        results[name] = {
            "loss": loss,
            "world_size": trainer.args.world_size,
            "weights": {k: v.detach().clone() for k, v in model.state_dict().items()},
        }
        del trainer
    if torch.distributed.is_initialized() is False or torch.distributed.get_rank() == 0:
        torch.save(results, args.out)


if __name__ == "__main__":
    from _exit import leave_together

    status = main()
    leave_together()
    sys.exit(status)
