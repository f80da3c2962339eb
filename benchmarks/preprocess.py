"""Images per second per core: clip_trl's image pipelines vs transformers' PIL-backend CLIP image processor.

The baseline is `CLIPImageProcessorPil`: transformers' PIL/NumPy image processor, the one `AutoImageProcessor`
falls back to when torchvision is absent (as on the machines these figures come from). With torchvision
installed, transformers' default is the torchvision-backed fast processor, which is not measured here.

All turn the same photos into 224 px CLIP `pixel_values` (OpenAI CLIP's settings: shortest edge 224,
bicubic, center crop 224, normalise). Per core = images per CPU-second of this process (`time.process_time`),
which a busy shared machine disturbs far less than wall-clock time. One thread (`torch.set_num_threads(1)`, OpenCV at one thread, no DataLoader
workers): the figure is per core, and a host feeds its accelerator with one worker process per core. The
contenders alternate (order reversed every repetition), so a change in background load hits all; the best of the
repetitions is reported, and each ratio's median [min-max] over the repetitions (paired, same repetition).

Contenders, from JPEG bytes (what a `datasets.Image` column holds): the processor after a Pillow decode;
`fast` (`image_processing="fast"`, bitwise equal, checked in the run); `draft` with Pillow (`jpeg_backend="pillow"`:
`Image.draft` reduced decode + Pillow resize of the crop's region); `simd` (`image_processing="draft"` with the
`fast-jpeg` extra: libjpeg-turbo's reduced decode through simplejpeg + OpenCV's resize). The draft paths' largest
and mean difference from the processor's output are in 8-bit pixel levels (the normalised difference x std x 255).
A last table runs each through a DataLoader with 2 worker processes (images/s of the whole loader).

Photos: `--photos real` (default) cuts views (random crops, flips, brightness) out of the one real photograph
installed here, matplotlib's `grace_hopper.jpg` (512x600: the larger views are upscaled from it, so they are
smoother than camera photos of that size); `--photos synthetic` uses generated gradients + texture.

    python benchmarks/preprocess.py            # 320x240, 640x480 and 1280x960 photos, 64 each
    python benchmarks/preprocess.py --quick    # fewer images and repetitions
"""

from __future__ import annotations

import argparse
import io
import os
import platform
import statistics
import time
from collections.abc import Callable

os.environ.setdefault("OMP_NUM_THREADS", "1")

import numpy as np  # noqa: E402
import torch  # noqa: E402
from PIL import Image, ImageFilter  # noqa: E402
from transformers.models.clip.image_processing_pil_clip import CLIPImageProcessorPil  # noqa: E402

from clip_trl.data.image_processing import FastImageTransform  # noqa: E402
from clip_trl.data.rows import load_image  # noqa: E402
from clip_trl.data.simd_jpeg import INSTALL_HINT, simd_available, simd_modules  # noqa: E402


def synthetic_photos(count: int, width: int, height: int) -> list[bytes]:
    """JPEG bytes of photo-like images: smooth gradients, blurred texture and edges (quality 90)."""
    generator = np.random.default_rng(0)
    photos = []
    for _ in range(count):
        y, x = np.mgrid[0:height, 0:width]
        base = np.stack([x / width * 255, y / height * 255, (x + y) / (width + height) * 255], axis=-1)
        texture = generator.normal(0, 40, (height, width, 3))
        image = Image.fromarray(np.clip(base + texture, 0, 255).astype(np.uint8)).filter(
            ImageFilter.GaussianBlur(1)
        )
        buffer = io.BytesIO()
        image.save(buffer, format="JPEG", quality=90)
        photos.append(buffer.getvalue())
    return photos


def real_photos(count: int, width: int, height: int) -> list[bytes]:
    """JPEG bytes (quality 90) of `count` different views of matplotlib's sample photograph."""
    import matplotlib

    path = os.path.join(matplotlib.get_data_path(), "sample_data", "grace_hopper.jpg")
    source = Image.open(path).convert("RGB")
    generator = np.random.default_rng(0)
    photos = []
    for _ in range(count):
        # A random crop with the target's aspect ratio, 60-100% of the largest one that fits.
        scale = generator.uniform(0.6, 1.0)
        crop_w = int(min(source.width, source.height * width / height) * scale)
        crop_h = int(crop_w * height / width)
        left = int(generator.integers(0, source.width - crop_w + 1))
        top = int(generator.integers(0, source.height - crop_h + 1))
        view = source.crop((left, top, left + crop_w, top + crop_h)).resize(
            (width, height), Image.Resampling.LANCZOS
        )
        if generator.random() < 0.5:
            view = view.transpose(Image.Transpose.FLIP_LEFT_RIGHT)
        view = Image.fromarray(
            np.clip(np.asarray(view) * generator.uniform(0.7, 1.2), 0, 255).astype(np.uint8)
        )
        buffer = io.BytesIO()
        view.save(buffer, format="JPEG", quality=90)
        photos.append(buffer.getvalue())
    return photos


def timed(contenders: dict[str, Callable[[], object]], repetitions: int) -> dict[str, list[float]]:
    """CPU seconds of this process per repetition of each contender, contenders alternating (order reversed every
    repetition). CPU time, not wall-clock: on a shared machine, time spent waiting for the core is not counted."""
    times: dict[str, list[float]] = {name: [] for name in contenders}
    for repetition in range(repetitions + 1):  # repetition 0 warms up
        for name in list(contenders)[:: 1 if repetition % 2 else -1]:
            start = time.process_time()
            contenders[name]()
            elapsed = time.process_time() - start
            if repetition:
                times[name].append(elapsed)
    return times


def ratio_cell(times: dict[str, list[float]], name: str, count: int) -> str:
    """`rate | speed-up median [min-max]` of `name` against the processor, paired by repetition."""
    ratios = sorted(b / a for a, b in zip(times[name], times["transformers"]))
    return (
        f"{count / min(times[name]):.0f} | {statistics.median(ratios):.2f}x "
        f"[{ratios[0]:.2f}-{ratios[-1]:.2f}]"
    )


def loader_rate(collate: Callable[[list[bytes]], object], jpegs: list[bytes], workers: int) -> float:
    """Images/s through a DataLoader with `workers` processes, batch 32, second pass (workers already started)."""
    loader = torch.utils.data.DataLoader(
        jpegs, batch_size=32, num_workers=workers, collate_fn=collate, persistent_workers=workers > 0
    )
    for _ in loader:  # warm-up pass: worker start-up is not counted
        pass
    start = time.perf_counter()
    for _ in loader:
        pass
    return len(jpegs) / (time.perf_counter() - start)


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--count", type=int, default=64)
    parser.add_argument("--repetitions", type=int, default=5)
    parser.add_argument("--quick", action="store_true")
    parser.add_argument("--photos", choices=["real", "synthetic"], default="real")
    parser.add_argument("--workers", type=int, default=2, help="DataLoader workers for the last table")
    parser.add_argument("--sizes", default="320x240,640x480,1280x960")
    args = parser.parse_args()
    if args.quick:
        args.count, args.repetitions = 16, 2
    torch.set_num_threads(1)
    processor = CLIPImageProcessorPil()
    fast = FastImageTransform(processor)
    draft = FastImageTransform(processor, draft=True, jpeg_backend="pillow")
    simd = FastImageTransform(processor, draft=True) if simd_available() else None
    if simd is not None:
        simd_modules()[1].setNumThreads(1)  # per core: OpenCV's own thread pool off
    assert fast.is_fast and draft.is_fast
    make_photos = real_photos if args.photos == "real" else synthetic_photos
    levels = 255 * torch.tensor(processor.image_std).view(1, 3, 1, 1)
    sizes = [tuple(int(v) for v in size.split("x")) for size in args.sizes.split(",")]

    print(
        f"machine: {platform.processor() or platform.machine()}, {os.cpu_count()} CPUs, load average "
        f"{os.getloadavg()[0]:.1f}, torch {torch.__version__}, one thread, {args.photos} photos, "
        f"{args.count} per size, best of {args.repetitions}\n"
    )
    if simd is None:
        print(f"(SIMD backend not installed: {INSTALL_HINT}; its columns are empty)\n")
    print(
        "| photos (from JPEG bytes) | transformers (images/s) | fast (images/s) | speed-up | outputs "
        "| draft, Pillow (images/s) | speed-up | max / mean difference | draft, SIMD (images/s) | speed-up "
        "| max / mean difference |"
    )
    print("| --- | --- | --- | --- | --- | --- | --- | --- | --- | --- | --- |")
    loaders: dict[tuple[int, int], list[bytes]] = {}
    for width, height in sizes:
        jpegs = make_photos(args.count, width, height)
        loaders[(width, height)] = jpegs
        expected = processor(images=[load_image(d) for d in jpegs], return_tensors="pt")["pixel_values"]
        equal = torch.equal(fast([load_image(d) for d in jpegs]), expected)
        contenders = {
            "transformers": lambda jpegs=jpegs: processor(
                images=[load_image(d) for d in jpegs], return_tensors="pt"
            ),
            "fast": lambda jpegs=jpegs: fast([load_image(d) for d in jpegs]),
            "draft": lambda jpegs=jpegs: draft(jpegs),
        }
        if simd is not None:
            contenders["simd"] = lambda jpegs=jpegs: simd(jpegs)
        times = timed(contenders, args.repetitions)
        cells = [f"{width}x{height}", f"{args.count / min(times['transformers']):.0f}"]
        cells += [ratio_cell(times, "fast", args.count), "bitwise equal" if equal else "DIFFERENT"]
        for name, transform in (("draft", draft), ("simd", simd)):
            if transform is None:
                cells += ["–", "–", "–"]
                continue
            difference = ((transform(jpegs) - expected) * levels).abs()
            cells += [
                ratio_cell(times, name, args.count),
                f"{difference.max():.0f} / {difference.mean():.2f}",
            ]
        print("| " + " | ".join(cells) + " |", flush=True)

    print(f"\nDataLoader, {args.workers} workers, batch 32 (images/s of the loader; second pass):\n")
    names = ["transformers", "fast", "draft"] + (["simd"] if simd is not None else [])
    print("| photos | " + " | ".join(names) + " | simd / transformers |")
    print("| --- |" + " --- |" * (len(names) + 1))
    collates = {
        "transformers": ProcessorCollate(processor),
        "fast": DecodedCollate(fast),
        "draft": draft,
        "simd": simd,
    }
    for (width, height), jpegs in loaders.items():
        data = jpegs * max(1, 256 // len(jpegs))
        rates = {name: loader_rate(collates[name], data, args.workers) for name in names}
        ratio = f"{rates['simd'] / rates['transformers']:.2f}x" if "simd" in rates else "–"
        print(f"| {width}x{height} | " + " | ".join(f"{rates[n]:.0f}" for n in names) + f" | {ratio} |")


class ProcessorCollate:
    """A picklable DataLoader collate: Pillow decode + the processor."""

    def __init__(self, processor) -> None:
        self.processor = processor

    def __call__(self, batch: list[bytes]) -> torch.Tensor:
        return self.processor(images=[load_image(d) for d in batch], return_tensors="pt")["pixel_values"]


class DecodedCollate:
    """A picklable DataLoader collate: Pillow decode + a transform."""

    def __init__(self, transform) -> None:
        self.transform = transform

    def __call__(self, batch: list[bytes]) -> torch.Tensor:
        return self.transform([load_image(d) for d in batch])


if __name__ == "__main__":
    main()
