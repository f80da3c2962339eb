"""Images per second per core: clip_trl's fast image pipeline vs transformers' PIL-backend CLIP image processor.

The baseline is `CLIPImageProcessorPil`: transformers' PIL/NumPy image processor, the one `AutoImageProcessor`
falls back to when torchvision is absent (as on the machines these figures come from). With torchvision
installed, transformers' default is the torchvision-backed fast processor, which is not measured here.

Both turn the same photos into 224 px CLIP `pixel_values` (OpenAI CLIP's settings: shortest edge 224,
bicubic, center crop 224, normalise); the outputs are checked bitwise equal in the same run. One thread
(`torch.set_num_threads(1)`, no DataLoader workers): the figure is per core, and a host feeds its
accelerator with one worker process per core. The contenders alternate repetition by repetition, so a change
in background load hits both; the best of the repetitions is reported.

Rows: the preprocessing alone (from decoded PIL images, what the collator hands over), and decoding +
preprocessing from JPEG bytes (what a `datasets.Image` column holds).

    python benchmarks/preprocess.py            # 640x480 and 1280x960 photos, 64 each
    python benchmarks/preprocess.py --quick    # fewer images and repetitions
"""

from __future__ import annotations

import argparse
import io
import os
import platform
import time
from collections.abc import Callable

os.environ.setdefault("OMP_NUM_THREADS", "1")

import numpy as np  # noqa: E402
import torch  # noqa: E402
from PIL import Image, ImageFilter  # noqa: E402
from transformers.models.clip.image_processing_pil_clip import CLIPImageProcessorPil  # noqa: E402

from clip_trl.data import load_image  # noqa: E402
from clip_trl.image_processing import FastImageTransform  # noqa: E402


def synthetic_photos(count: int, width: int, height: int) -> list[bytes]:
    """JPEG bytes of photo-like images: smooth gradients, blurred texture and edges (quality 90)."""
    generator = np.random.default_rng(0)
    photos = []
    for _ in range(count):
        y, x = np.mgrid[0:height, 0:width]
        base = np.stack([x / width * 255, y / height * 255, (x + y) / (width + height) * 255], axis=-1)
        texture = generator.normal(0, 40, (height, width, 3))
        image = Image.fromarray(np.clip(base + texture, 0, 255).astype(np.uint8)).filter(ImageFilter.GaussianBlur(1))
        buffer = io.BytesIO()
        image.save(buffer, format="JPEG", quality=90)
        photos.append(buffer.getvalue())
    return photos


def best_rate(contenders: dict[str, Callable[[], object]], count: int, repetitions: int) -> dict[str, float]:
    """Images/s of each contender: best of `repetitions`, contenders alternating every repetition."""
    best = {name: float("inf") for name in contenders}
    for repetition in range(repetitions + 1):  # repetition 0 warms up
        for name in list(contenders)[:: 1 if repetition % 2 else -1]:
            start = time.perf_counter()
            contenders[name]()
            elapsed = time.perf_counter() - start
            if repetition:
                best[name] = min(best[name], elapsed)
    return {name: count / seconds for name, seconds in best.items()}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--count", type=int, default=64)
    parser.add_argument("--repetitions", type=int, default=5)
    parser.add_argument("--quick", action="store_true")
    args = parser.parse_args()
    if args.quick:
        args.count, args.repetitions = 16, 2
    torch.set_num_threads(1)
    processor = CLIPImageProcessorPil()
    fast = FastImageTransform(processor)
    assert fast.is_fast

    print(f"machine: {platform.processor() or platform.machine()}, torch {torch.__version__}, one thread\n")
    print("| photos | input | transformers (images/s) | clip_trl fast (images/s) | speed-up | outputs |")
    print("| --- | --- | --- | --- | --- | --- |")
    for width, height in ((640, 480), (1280, 960)):
        jpegs = synthetic_photos(args.count, width, height)
        decoded = [load_image(data) for data in jpegs]
        expected = processor(images=decoded, return_tensors="pt")["pixel_values"]
        equal = torch.equal(fast(decoded), expected)
        rows = {
            "decoded PIL": {
                "transformers": lambda decoded=decoded: processor(images=decoded, return_tensors="pt"),
                "fast": lambda decoded=decoded: fast(decoded),
            },
            "JPEG bytes": {
                "transformers": lambda jpegs=jpegs: processor(images=[load_image(d) for d in jpegs], return_tensors="pt"),
                "fast": lambda jpegs=jpegs: fast([load_image(d) for d in jpegs]),
            },
        }
        for source, contenders in rows.items():
            rates = best_rate(contenders, args.count, args.repetitions)
            print(
                f"| {width}x{height} | {source} | {rates['transformers']:.0f} | {rates['fast']:.0f} | "
                f"{rates['fast'] / rates['transformers']:.2f}x | {'bitwise equal' if equal else 'DIFFERENT'} |"
            )

    # Where the time goes: the resize (the same Pillow call in both, which bitwise equality requires) bounds
    # the speed-up; show it so the ratio above can be read against it.
    decoded = [load_image(d) for d in synthetic_photos(args.count, 640, 480)]
    resize = best_rate({"resize": lambda: [im.resize((298, 224), Image.Resampling.BICUBIC) for im in decoded]},
                       args.count, args.repetitions)["resize"]
    print(f"\nPillow's bicubic resize alone, 640x480 -> 298x224: {resize:.0f} images/s (the ceiling of any "
          "pipeline that must match the processor bitwise)")


if __name__ == "__main__":
    main()
