"""RL training runs for the multi-process tests; every rank writes what it saw to `--out`/rank{r}.pt.

`gather`: short runs of several RL configurations (global in-batch candidates on and off), recording
the logged history, the updated weights, each rank's metrics before the cross-rank reduction, and what
the rewards received. A 2-process run on local batch B is compared with a 1-process run on 2B rows.

`resume`: a GRPO run (sampled actions) with checkpoints, or its continuation from one
(`--resume_from`), recording each rank's sampled actions per step; it logs rollout tables (6 queries: the
first 4 of rank 0, then 2 of rank 1).

Run with `python -m torch.distributed.run --standalone --nproc_per_node N rl_runs.py gather resume ...` (one or
both modes), or plainly for one process; the tests also import `run_gather` for the in-process 1-process reference.
"""

from __future__ import annotations

import argparse
import os
import sys
from typing import Any

import datasets
import torch

from clip_trl import ClipRLConfig, ClipRLTrainer
from clip_trl.data.rows import image_key
from clip_trl.offline import build_clip, load_emoji_dataset

# (name, ClipRLConfig overrides). Every run has `advantage="exact"`: no sampling, so a 1-process and a
# 2-process run can agree to float precision. The entropy bonus makes the logged loss non-zero (the exact
# policy term is 0 in value), and with beta > 0 the KL is non-zero from step 2 on.
GATHER_VARIANTS: list[tuple[str, dict[str, Any]]] = [
    ("image_to_text", dict(beta=0.0, entropy_coef=0.1)),
    ("image_to_text_kl", dict(beta=0.1)),
    ("text_to_image", dict(beta=0.0, entropy_coef=0.1, direction="text_to_image")),
]


class RecordingTrainer(ClipRLTrainer):
    """Keeps this rank's own metric means at each log, before `log` reduces them over processes."""

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self.local_metrics: list[dict[str, float]] = []
        self.sampling_seeds: list[tuple[int, int, int]] = []  # (global step, micro-step, generator seed)

    def _generator(self) -> torch.Generator:
        generator = super()._generator()
        self.sampling_seeds.append((self.state.global_step, self._micro_step[1], generator.initial_seed()))
        return generator

    def log(self, logs: dict[str, float], start_time: float | None = None) -> None:
        if "loss" in logs and self._metrics:
            self.local_metrics.append(
                {k: float(torch.stack(v).mean()) for k, v in self._metrics.items() if v}
            )
        super().log(logs, start_time)


class RecordingReward:
    """The `correctness` reward, remembering per step what it was given (`chosen`, candidates, truth)."""

    __name__ = "correctness"

    def __init__(self) -> None:
        self.calls: list[dict[str, Any]] = []

    def __call__(self, completions: list[str], **kwargs: Any) -> list[float]:
        self.calls.append(
            {
                "step": kwargs["trainer_state"].global_step,
                "chosen": list(kwargs["chosen"]),
                "completions": list(completions),
                "candidates": list(kwargs["candidates"][0]),
                "ground_truth": list(kwargs["ground_truth"]),
                "images": [
                    image_key(image) for image in kwargs["images"]
                ],  # content hashes of the images seen
            }
        )
        return [1.0 if c == g else 0.0 for c, g in zip(completions, kwargs["ground_truth"])]


# (image, caption) emoji indices of the 16 rows, read in order (`train_sampling_strategy="sequential"`): with
# 2 processes × 4 rows, rows 0-3 go to rank 0 and 4-7 to rank 1 in step 1, rows 8-11 and 12-15 in step 2. They
# repeat rows within a rank (0/3, 6/7, 8/11) and across ranks (1/4, 9/12, 10/15), and give one caption to two
# different images on different ranks (0/5, 8/13): what the global de-duplication must get right.
DUPLICATED_ROWS = [
    (0, 0),
    (1, 1),
    (2, 2),
    (0, 0),
    (1, 1),
    (3, 0),
    (4, 4),
    (4, 4),
    (5, 5),
    (2, 2),
    (3, 3),
    (5, 5),
    (2, 2),
    (1, 5),
    (0, 0),
    (3, 3),
]


def duplicated_rows() -> datasets.Dataset:
    base = load_emoji_dataset()["train"].select(range(6))
    rows = base.select([image for image, _ in DUPLICATED_ROWS])
    captions = [base[caption]["caption"] for _, caption in DUPLICATED_ROWS]
    return rows.remove_columns("caption").add_column("caption", captions)


def common_args(output_dir: str, per_device_batch: int, **overrides: Any) -> dict[str, Any]:
    return (
        dict(
            output_dir=output_dir,
            per_device_train_batch_size=per_device_batch,
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
            dataloader_num_workers=0,
        )
        | overrides
    )


def run_gather(output_dir: str, per_device_batch: int, gather_options: tuple[bool, ...]) -> dict[str, Any]:
    data = duplicated_rows()
    results: dict[str, Any] = {}
    for name, overrides in GATHER_VARIANTS:
        for gather in gather_options:
            model, processor = build_clip("tiny", seed=0)
            reward = RecordingReward()
            args = ClipRLConfig(
                **common_args(
                    os.path.join(output_dir, f"{name}-{gather}"),
                    per_device_batch,
                    max_steps=2,
                    advantage="exact",
                    gather_candidates=gather,
                    train_sampling_strategy="sequential",
                ),
                **overrides,
            )
            trainer = RecordingTrainer(
                model=model, reward_funcs=reward, args=args, train_dataset=data, processing_class=processor
            )
            trainer.train()
            results[f"{name}/gather={gather}"] = {
                "log_history": trainer.state.log_history,
                "local_metrics": trainer.local_metrics,
                "reward_calls": reward.calls,
                "weights": {k: v.detach().clone() for k, v in model.state_dict().items()},
            }
    return results


def run_resume(output_dir: str, per_device_batch: int, resume_from: str | None) -> dict[str, Any]:
    data = load_emoji_dataset()["train"].select(range(64))
    model, processor = build_clip("tiny", seed=0)
    reward = RecordingReward()
    # GRPO samples actions, so the per-(step, micro-step, rank) generator is exercised, with accumulation.
    args = ClipRLConfig(
        **common_args(
            output_dir,
            per_device_batch,
            max_steps=4,
            save_strategy="steps",
            save_steps=2,
            gradient_accumulation_steps=2,
            learning_rate=0.05,
        ),
        advantage="grpo",
        num_samples=4,
        beta=0.1,
        log_rollouts=True,
        num_rollouts_to_log=6,
    )
    trainer = RecordingTrainer(
        model=model, reward_funcs=reward, args=args, train_dataset=data, processing_class=processor
    )
    trainer.train(resume_from_checkpoint=resume_from)
    return {
        "log_history": trainer.state.log_history,
        "local_metrics": trainer.local_metrics,
        "reward_calls": reward.calls,
        "sampling_seeds": trainer.sampling_seeds,
        "weights": {k: v.detach().clone() for k, v in model.state_dict().items()},
    }


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("modes", nargs="+", choices=["gather", "resume"], help="runs to do, in one launch")
    parser.add_argument("--per_device_batch", type=int, required=True)
    parser.add_argument("--out", required=True, help="folder for rank{r}.pt")
    parser.add_argument("--output_dir", required=True)
    parser.add_argument("--resume_from", default=None, help="resume: the checkpoint to continue from")
    args = parser.parse_args()
    torch.use_deterministic_algorithms(True)
    # One launch can do both kinds of run: starting processes costs more than these tiny runs.
    result: dict[str, Any] = {"world_size": int(os.environ.get("WORLD_SIZE", "1"))}
    if "gather" in args.modes:
        result["gather"] = run_gather(
            os.path.join(args.output_dir, "gather"), args.per_device_batch, (True, False)
        )
    if "resume" in args.modes:
        result["resume"] = run_resume(
            os.path.join(args.output_dir, "resume"), args.per_device_batch, args.resume_from
        )
    os.makedirs(args.out, exist_ok=True)
    torch.save(result, os.path.join(args.out, f"rank{os.environ.get('RANK', '0')}.pt"))


if __name__ == "__main__":
    from _exit import leave_together

    status = main()
    leave_together()
    sys.exit(status)
