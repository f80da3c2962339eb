"""Build a contrastive trainer and print its world size: run under a launcher to see what it started."""

import tempfile

from clip_trl import ClipContrastiveConfig, ClipContrastiveTrainer
from clip_trl.offline import build_clip, load_emoji_dataset

model, processor = build_clip("tiny", seed=0)
args = ClipContrastiveConfig(output_dir=tempfile.mkdtemp(), report_to="none", use_cpu=True)
trainer = ClipContrastiveTrainer(
    model=model,
    args=args,
    processing_class=processor,
    train_dataset=load_emoji_dataset(max_examples=16)["train"],
)
print(f"world_size={trainer.args.world_size}")
