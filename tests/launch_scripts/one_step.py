"""One training step of a clip_trl trainer, for the multi-process equivalence tests.

Run under `python -m torch.distributed.run --nproc_per_node N` (or plainly for one process); rank 0 saves the
logged loss and the updated weights to `--out`.
"""

import argparse
import sys

import torch

from clip_trl import ClipContrastiveConfig, ClipContrastiveTrainer, ClipRLConfig, ClipRLTrainer
from clip_trl.offline import build_clip, load_emoji_dataset


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--trainer", choices=["contrastive", "rl"], default="contrastive")
    parser.add_argument("--per_device_batch", type=int, required=True)
    parser.add_argument("--out", required=True)
    parser.add_argument("--output_dir", required=True)
    parser.add_argument(
        "--chunk_size", type=int, default=None, help="contrastive_chunk_size (GradCache); default off"
    )
    args = parser.parse_args()
    torch.use_deterministic_algorithms(True)
    data = load_emoji_dataset()["train"].select(range(32))
    model, processor = build_clip("tiny", seed=0)
    common = dict(
        output_dir=args.output_dir,
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
    )
    if args.trainer == "contrastive":
        config = ClipContrastiveConfig(**common, contrastive_chunk_size=args.chunk_size)
        trainer = ClipContrastiveTrainer(
            model=model, args=config, train_dataset=data, processing_class=processor
        )
        trainer.chunked_steps = 0
        chunked_step = trainer._chunked_training_step

        def counting(*a, **k):
            trainer.chunked_steps += 1
            return chunked_step(*a, **k)

        trainer._chunked_training_step = counting
    else:
        trainer = ClipRLTrainer(
            model=model,
            reward_funcs="correctness",
            train_dataset=data,
            processing_class=processor,
            args=ClipRLConfig(**common, advantage="exact", beta=0.0),
        )
    trainer.train()
    if trainer.args.process_index == 0:
        loss = next(entry["loss"] for entry in trainer.state.log_history if "loss" in entry)
        torch.save(
            {
                "loss": loss,
                "world_size": trainer.args.world_size,
                "chunked_steps": getattr(trainer, "chunked_steps", 0),
                "weights": {k: v.detach().clone() for k, v in model.state_dict().items()},
            },
            args.out,
        )


if __name__ == "__main__":
    from _exit import leave_together

    status = main()
    leave_together()
    sys.exit(status)
