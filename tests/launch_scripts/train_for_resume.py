"""A short seeded training run that can SIGKILL itself, for the kill-and-resume tests (tests/trainer/test_kill_resume.py).

    python train_for_resume.py --trainer rl --output_dir out --kill_in_save 6      # dies while saving checkpoint-6
    python train_for_resume.py --trainer rl --output_dir out --resume --out w.pt   # resumes from the last checkpoint

The process kills itself at a chosen point instead of being killed from outside after a delay: the kill lands
at exactly the same place on every run, however busy the machine is. The test imports `build_trainer` to
run the same configuration uninterrupted in its own process.
"""

from __future__ import annotations

import argparse
import os
import signal
import sys
from typing import Any

import torch
from transformers import Trainer, TrainerCallback

from clip_trl import ClipContrastiveConfig, ClipContrastiveTrainer, ClipRLConfig, ClipRLTrainer
from clip_trl.offline import build_clip, load_emoji_dataset

MAX_STEPS = 8
SAVE_STEPS = 2
ROWS = 48  # 6 steps per epoch at batch 8: checkpoint-4 is mid-epoch, and the resumed run crosses an epoch


def _die() -> None:
    sys.stdout.flush()
    sys.stderr.flush()
    os.kill(os.getpid(), signal.SIGKILL)


class KillAtStep(TrainerCallback):
    """SIGKILL the process right after optimizer step `step` (before that step's checkpoint, if any)."""

    def __init__(self, step: int) -> None:
        self.step = step

    def on_step_end(self, args: Any, state: Any, control: Any, **kwargs: Any) -> None:
        if state.global_step == self.step:
            _die()


def kill_in_save(trainer: Trainer, step: int) -> None:
    """SIGKILL the process in the middle of saving checkpoint-`step`: after the weights, optimizer and scheduler
    are written, before the RNG states and `trainer_state.json`."""
    save_rng_state = trainer._save_rng_state

    def dying_save_rng_state(output_dir: str) -> None:
        if trainer.state.global_step == step:
            _die()
        save_rng_state(output_dir)

    trainer._save_rng_state = dying_save_rng_state


def build_trainer(name: str, output_dir: str, callbacks: list[TrainerCallback] | None = None) -> Trainer:
    data = load_emoji_dataset()["train"].select(range(ROWS))
    model, processor = build_clip("tiny", seed=0)
    common: dict[str, Any] = dict(
        output_dir=output_dir,
        per_device_train_batch_size=8,
        max_steps=MAX_STEPS,
        learning_rate=1e-3,
        save_strategy="steps",
        save_steps=SAVE_STEPS,
        logging_steps=1,
        seed=0,
        data_seed=0,
        use_cpu=True,
        report_to="none",
        disable_tqdm=True,
        dataloader_num_workers=0,
    )
    if name == "contrastive":
        return ClipContrastiveTrainer(
            model=model,
            args=ClipContrastiveConfig(**common),
            train_dataset=data,
            processing_class=processor,
            callbacks=callbacks,
        )
    # beta > 0: the reference model takes part; grpo samples actions, so the sampling RNG matters too. The
    # reference's embedding cache is off: a resumed run starts with an empty cache and recomputes in its own
    # batches what the uninterrupted run had cached from others, equal only to float rounding (docs/performance.md),
    # and this test asks for the uninterrupted weights to 1e-6.
    args = ClipRLConfig(**common, beta=0.1, advantage="grpo", num_samples=4, cache_frozen_embeddings=False)
    return ClipRLTrainer(
        model=model,
        reward_funcs="correctness",
        args=args,
        train_dataset=data,
        processing_class=processor,
        callbacks=callbacks,
    )


def summary(trainer: Trainer) -> dict[str, Any]:
    """What the test compares: final weights, the reference model's weights, and the logged losses per step."""
    ref = getattr(trainer, "ref_model", None)
    return {
        "global_step": trainer.state.global_step,
        "weights": {k: v.detach().clone() for k, v in trainer.model.state_dict().items()},
        "ref_weights": None if ref is None else {k: v.detach().clone() for k, v in ref.state_dict().items()},
        "losses": {e["step"]: e["loss"] for e in trainer.state.log_history if "loss" in e},
    }


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--trainer", choices=["contrastive", "rl"], required=True)
    parser.add_argument("--output_dir", required=True)
    parser.add_argument("--out", default=None, help="torch.save the summary of the finished run here")
    parser.add_argument("--resume", action="store_true", help="train(resume_from_checkpoint=True)")
    parser.add_argument("--kill_at_step", type=int, default=None)
    parser.add_argument("--kill_in_save", type=int, default=None)
    parser.add_argument(
        "--threads", type=int, default=None, help="torch.set_num_threads (match the reference run)"
    )
    args = parser.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)
    callbacks = [KillAtStep(args.kill_at_step)] if args.kill_at_step is not None else None
    trainer = build_trainer(args.trainer, args.output_dir, callbacks)
    if args.kill_in_save is not None:
        kill_in_save(trainer, args.kill_in_save)
    trainer.train(resume_from_checkpoint=True if args.resume else None)
    if args.out:
        torch.save(summary(trainer), args.out)


if __name__ == "__main__":
    main()
