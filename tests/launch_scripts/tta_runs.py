"""Episodic test-time adaptation of a stream, for the multi-process equivalence test: rank 0 writes the predictions
(gathered from every process) to `--out` as JSON.

Run with `python -m torch.distributed.run --standalone --nproc_per_node N tta_runs.py --out FILE` (or plainly).
"""

import argparse
import json
import os

import torch
from PIL import Image

from clip_trl.adaptation import ClipTestTimeAdapter, ClipTestTimeConfig
from clip_trl.offline import build_clip
from clip_trl.rewards import TeacherProbabilityReward


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--out", required=True)
    args = parser.parse_args()
    if int(os.environ.get("WORLD_SIZE", "1")) > 1:
        torch.distributed.init_process_group("gloo")
    torch.use_deterministic_algorithms(True)
    student, processor = build_clip("tiny", seed=0)
    teacher = TeacherProbabilityReward(*build_clip("tiny", seed=1))
    config = ClipTestTimeConfig(
        candidate_labels=["red", "green", "blue", "white"],
        learning_rate=0.05,
        n_views=4,
        selection_fraction=0.5,
        num_samples=4,
        batch_size=2,
    )
    colours = [(220, 30, 30), (30, 200, 40), (40, 40, 230), (250, 250, 250), (120, 60, 200)]
    images = [Image.new("RGB", (32, 32), colours[i % 5]).rotate(7 * i) for i in range(7)]
    result = ClipTestTimeAdapter(student, config, processor, reward_funcs=teacher).adapt(images)
    if int(os.environ.get("RANK", "0")) == 0:
        with open(args.out, "w") as handle:
            json.dump({"predictions": result.predictions, "stats": result.stats}, handle)
    if torch.distributed.is_initialized():
        torch.distributed.destroy_process_group()


if __name__ == "__main__":
    main()
