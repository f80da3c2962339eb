"""Does JPEG draft decoding (`image_processing="draft"`) change what a model learns? Held-out metrics, seeds.

The offline emoji set (real artwork, real names) is turned into 640x480 JPEG "photos": each emoji upscaled to
400 px and pasted at a random place on a textured background (random gradient + noise, blurred), quality 90 — emoji PNGs are not
photos, so this only checks that training and evaluating on draft-decoded JPEGs reaches the same held-out
quality, not photo statistics. A tiny random CLIP at 64 px input (so 640x480 JPEGs decode at 1/4, 160x120;
`--image_size 224`: at 1/2, 320x240, with larger pixel differences) is
trained contrastively with `image_processing="fast"` (bitwise equal to the processor) and `"draft"`, for
several seeds each, and evaluated with the same mode on held-out photos: new renderings (other background and
position) of training emoji, retrieved among their captions. The table gives every run's
retrieval recall and the per-mode mean and spread; the verdict compares the gap between the means with the
seed-to-seed spread.

    python benchmarks/draft_quality.py                 # 3 seeds, 512 training rows, 150 steps
    python benchmarks/draft_quality.py --image_size 224 --steps 100   # CLIP's input size: decoded at 1/2
    python benchmarks/draft_quality.py --quick         # 2 seeds, fewer rows and steps
    python benchmarks/draft_quality.py --modes processor,draft   # the processor vs draft's SIMD backend
"""

from __future__ import annotations

import argparse
import io
import os
import statistics
import tempfile
import time

os.environ.setdefault("OMP_NUM_THREADS", "1")

import numpy as np  # noqa: E402
import torch  # noqa: E402
from PIL import Image, ImageFilter  # noqa: E402

from clip_trl import ClipContrastiveConfig, ClipContrastiveTrainer  # noqa: E402
from clip_trl.data.rows import load_image  # noqa: E402
from clip_trl.offline import build_clip, load_emoji_dataset  # noqa: E402


def as_photo(cell: dict, index: int) -> dict:
    generator = np.random.default_rng(index)
    y, x = np.mgrid[0:480, 0:640]
    colours = generator.uniform(60, 200, (2, 3))
    t = (x / 640.0 * generator.uniform(0.3, 1) + y / 480.0 * generator.uniform(0.3, 1))[..., None] / 2
    background = colours[0] * (1 - t) + colours[1] * t + generator.normal(0, 25, (480, 640, 3))
    canvas = Image.fromarray(np.clip(background, 0, 255).astype(np.uint8)).filter(
        ImageFilter.GaussianBlur(1.2)
    )
    emoji = load_image(cell).resize((400, 400), Image.Resampling.BICUBIC)  # RGB on white
    mask = Image.fromarray((np.asarray(emoji).min(axis=-1) < 250).astype(np.uint8) * 255)
    left, top = int(generator.integers(0, 240)), int(generator.integers(0, 80))
    canvas.paste(emoji, (left, top), mask)
    buffer = io.BytesIO()
    canvas.save(buffer, format="JPEG", quality=90)
    return {"bytes": buffer.getvalue(), "path": None}


def photo_split(split, count: int, variant: int = 0):
    import datasets

    split = split.select(range(min(count, len(split)))).cast_column("image", datasets.Image(decode=False))
    images = [as_photo(cell, i + 100_000 * variant) for i, cell in enumerate(split["image"])]
    return datasets.Dataset.from_dict(
        {"image": images, "caption": split["caption"]},
        features=datasets.Features({"image": datasets.Image(), "caption": datasets.Value("string")}),
    )


def run(mode: str, seed: int, train, test, steps: int, image_size: int) -> dict[str, float]:
    model, processor = build_clip("tiny", image_size=image_size, seed=seed)
    args = ClipContrastiveConfig(
        output_dir=tempfile.mkdtemp(),
        report_to="none",
        max_steps=steps,
        per_device_train_batch_size=32,
        learning_rate=1e-3,
        warmup_steps=10,
        save_strategy="no",
        seed=seed,
        disable_tqdm=True,
        image_processing=mode,
        per_device_eval_batch_size=64,
        use_cpu=True,
    )
    trainer = ClipContrastiveTrainer(
        model=model, args=args, processing_class=processor, train_dataset=train, eval_dataset=test
    )
    trainer.train()
    metrics = trainer.evaluate()
    return {
        k: 100 * metrics[f"eval_{k}"]
        for k in (
            "image_to_text_recall@1",
            "image_to_text_recall@5",
            "text_to_image_recall@1",
            "text_to_image_recall@5",
        )
    }


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--seeds", type=int, default=3)
    parser.add_argument("--train_rows", type=int, default=512)
    parser.add_argument("--test_rows", type=int, default=128)
    parser.add_argument("--steps", type=int, default=150)
    parser.add_argument(
        "--image_size", type=int, default=64, help="model input: 64 (decoded at 1/4), 224 (1/2)"
    )
    parser.add_argument(
        "--modes",
        default="fast,draft",
        help="image_processing modes, the first is the reference: e.g. processor,draft (draft uses the SIMD "
        "backend when the fast-jpeg extra is installed)",
    )
    parser.add_argument("--quick", action="store_true")
    args = parser.parse_args()
    if args.quick:
        args.seeds, args.train_rows, args.test_rows, args.steps = 2, 128, 64, 30
    torch.set_num_threads(1)
    emoji = load_emoji_dataset()
    # Held out: new photos (other background, position) of the first `test_rows` training emoji; unseen emoji
    # names would leave a model this small at chance level, where no difference could show.
    train, test = photo_split(emoji["train"], args.train_rows), photo_split(emoji["train"], args.test_rows, 1)
    print(
        f"{len(train)} training / {len(test)} held-out 640x480 JPEGs, tiny CLIP at {args.image_size} px, {args.steps} steps "
        f"of 32, {args.seeds} seeds\n"
    )
    print("| mode | seed | i2t R@1 | i2t R@5 | t2i R@1 | t2i R@5 | seconds |")
    print("| --- | --- | --- | --- | --- | --- | --- |")
    from clip_trl.data.simd_jpeg import simd_available

    print(f"draft JPEG backend: {'simd (simplejpeg + OpenCV)' if simd_available() else 'pillow'}\n")
    results: dict[str, list[dict[str, float]]] = {mode: [] for mode in args.modes.split(",")}
    for seed in range(args.seeds):
        for mode in results:
            start = time.perf_counter()
            metrics = run(mode, seed, train, test, args.steps, args.image_size)
            results[mode].append(metrics)
            cells = " | ".join(f"{v:.1f}" for v in metrics.values())
            print(f"| {mode} | {seed} | {cells} | {time.perf_counter() - start:.0f} |", flush=True)
    print()
    for mode, runs in results.items():
        cells = " | ".join(
            f"{statistics.mean(r[k] for r in runs):.1f} ± {statistics.stdev(r[k] for r in runs):.1f}"
            for k in runs[0]
        )
        print(f"| {mode} | mean ± std | {cells} | |")
    reference, *others = list(results)
    keys = list(results[reference][0])
    for other in others:
        gaps = {
            k: statistics.mean(r[k] for r in results[other])
            - statistics.mean(r[k] for r in results[reference])
            for k in keys
        }
        # The standard error of a difference of two means of n seeds each.
        noise = {
            k: (
                statistics.variance([r[k] for r in results[reference]]) / args.seeds
                + statistics.variance([r[k] for r in results[other]]) / args.seeds
            )
            ** 0.5
            for k in keys
        }
        within = all(abs(gaps[k]) <= 2 * noise[k] for k in keys)
        paired = {
            k: [o[k] - r[k] for o, r in zip(results[other], results[reference])] for k in keys
        }  # same seed: same initial weights and data order
        print(
            f"\npaired ({other} - {reference}, per seed): "
            + ", ".join(
                f"{k} {statistics.mean(v):+.1f} ± {statistics.stdev(v) if len(v) > 1 else 0:.1f}"
                for k, v in paired.items()
            )
        )
        print(
            f"\n{other} - {reference}: "
            + ", ".join(f"{k} {gaps[k]:+.1f} (2 s.e. {2 * noise[k]:.1f})" for k in keys)
        )
        print("verdict: " + ("within seed noise" if within else "OUTSIDE seed noise"))


if __name__ == "__main__":
    main()
