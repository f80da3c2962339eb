"""Under `torch.distributed.run`: ranks that recorded different metrics log each metric's mean over the ranks
that have it (rank 0 records `a` and `b`, rank 1 only `b` and `c`). Writes rank 0's logged entry to --out."""

import argparse
import json
import tempfile

from clip_trl import ClipContrastiveConfig, ClipContrastiveTrainer
from clip_trl.offline import build_clip, load_emoji_dataset

parser = argparse.ArgumentParser()
parser.add_argument("--out", required=True)
options = parser.parse_args()

model, processor = build_clip("tiny", seed=0)
args = ClipContrastiveConfig(output_dir=tempfile.mkdtemp(), report_to="none", use_cpu=True)
trainer = ClipContrastiveTrainer(
    model=model,
    args=args,
    processing_class=processor,
    train_dataset=load_emoji_dataset(max_examples=16)["train"],
)
rank = args.process_index
if rank == 0:
    trainer._record(a=1.0, b=2.0)
    trainer._record(a=3.0)  # a: mean 2.0 on this rank
else:
    trainer._record(b=4.0, c=10.0)
trainer.log({"loss": 0.5})
if rank == 0:
    with open(options.out, "w") as f:
        json.dump(trainer.state.log_history[-1], f)
from _exit import leave_together  # noqa: E402

del trainer
leave_together()
