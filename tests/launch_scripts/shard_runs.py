"""One process of a multi-process run over webdataset shards (launched by tests/data/test_shards.py with torchrun).

Reads the shards once through a `ShardStream` + 2 DataLoader workers (records the keys it saw), then trains the
tiny CLIP contrastively on the stream for a few steps and saves the final weights (rank 0).
"""

import argparse
import json
import os

import torch

from clip_trl import ClipContrastiveConfig, ClipContrastiveTrainer
from clip_trl.data.shards import ShardStream
from clip_trl.offline import build_clip


def keys(rows):
    return [row["__key__"] for row in rows]


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--shards", nargs="+", required=True)
    parser.add_argument("--out", required=True)
    parsed = parser.parse_args()
    torch.set_num_threads(1)
    rank, world = int(os.environ["RANK"]), int(os.environ["WORLD_SIZE"])

    stream = ShardStream(parsed.shards, num_epochs=1, shuffle_buffer=4, rank=rank, world_size=world)
    loader = torch.utils.data.DataLoader(stream, batch_size=3, num_workers=2, collate_fn=keys)
    seen = [key for batch in loader for key in batch]

    model, processor = build_clip("tiny", seed=0)
    args = ClipContrastiveConfig(
        output_dir=os.path.join(parsed.out, "run"),
        report_to="none",
        max_steps=3,
        per_device_train_batch_size=4,
        learning_rate=1e-3,
        save_strategy="no",
        use_cpu=True,
        seed=0,
        disable_tqdm=True,
    )
    trainer = ClipContrastiveTrainer(
        model=model,
        args=args,
        processing_class=processor,
        train_dataset=ShardStream(parsed.shards, shuffle_buffer=4),
    )
    trainer.train()
    with open(os.path.join(parsed.out, f"seen-{rank}.json"), "w") as f:
        json.dump({"rank": rank, "world_size": world, "seen": seen}, f)
    if rank == 0:
        torch.save(
            {k: v.detach().clone() for k, v in trainer.model.state_dict().items()},
            os.path.join(parsed.out, "weights.pt"),
        )


if __name__ == "__main__":
    main()
