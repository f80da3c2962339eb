"""Retrieved candidate sets under one or several processes, for the multi-process test.

Two RL steps with `candidates="retrieved"`, the pool re-embedded every step (sharded over the processes and
all-gathered). Rank 0 saves, per row caption, the candidate set of each step, the final pool index and the loss.
Run plainly for one process or under `python -m torch.distributed.run --nproc_per_node N`.
"""

import argparse
import sys

import torch
import torch.distributed as dist

from clip_trl import ClipRLConfig, ClipRLTrainer
from clip_trl.offline import build_clip, load_emoji_dataset


class SetRecorder:
    __name__ = "correctness"

    def __init__(self):
        self.sets = {}

    def __call__(self, completions, **kwargs):
        step = kwargs["trainer_state"].global_step
        for truth, candidates in zip(kwargs["ground_truth"], kwargs["candidates"]):
            self.sets[(step, truth)] = list(candidates)
        return [1.0 if c == g else 0.0 for c, g in zip(completions, kwargs["ground_truth"])]


def run(per_device_batch: int, output_dir: str) -> dict:
    """Train two steps; return (on rank 0; None elsewhere) the candidate sets, the pool index and the loss."""
    data = load_emoji_dataset()["train"].select(range(32))
    model, processor = build_clip("tiny", seed=0)
    recorder = SetRecorder()
    config = ClipRLConfig(
        output_dir=output_dir,
        per_device_train_batch_size=per_device_batch,
        max_steps=2,
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
        advantage="exact",
        beta=0.0,
        candidates="retrieved",
        num_candidates=4,
        candidate_refresh_steps=1,
    )
    trainer = ClipRLTrainer(
        model=model, reward_funcs=recorder, train_dataset=data, processing_class=processor, args=config
    )
    trainer.train()
    sets = recorder.sets
    if dist.is_initialized():
        gathered = [None] * dist.get_world_size()
        dist.all_gather_object(gathered, sets)
        sets = {key: value for part in gathered for key, value in part.items()}
    if trainer.args.process_index != 0:
        return None
    loss = next(entry["loss"] for entry in trainer.state.log_history if "loss" in entry)
    return {
        "sets": sets,
        "index": trainer.retrieved_candidates.embeds,
        "loss": loss,
        "world_size": trainer.args.world_size,
    }


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--per_device_batch", type=int, required=True)
    parser.add_argument("--out", required=True)
    parser.add_argument("--output_dir", required=True)
    args = parser.parse_args()
    record = run(args.per_device_batch, args.output_dir)
    if record is not None:
        torch.save(record, args.out)


if __name__ == "__main__":
    from _exit import leave_together

    status = main()
    leave_together()
    sys.exit(status)
