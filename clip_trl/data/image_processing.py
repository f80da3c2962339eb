"""A fast image pipeline: resize, center-crop and normalise, bitwise equal to the model's processor.

transformers' PIL image processor (the one used when torchvision is absent) converts every image from PIL
to NumPy and back to PIL for resizing, then rescales in float64 and normalises in float32, one array pass
per step and per image. [`FastImageTransform`] reads the same settings from the processor, resizes straight
from PIL with the same Pillow call (so the same pixels), crops with a view, and maps the whole uint8 batch to
normalised float32 through a 256-entry lookup table per channel that is built with the processor's own
arithmetic. The output is bitwise equal to the processor's `pixel_values`.

Each instance compares itself with the processor on probe images when it is built and falls back to the
processor, with a warning, if they ever differ; processors whose settings it does not implement (padding,
longest-edge limits, other steps) are used directly. (Resizing only the cropped region, `resize(box=...)`,
would save a quarter of the resize on 4:3 photos, but Pillow then computes some rows differently — up to 20
levels on some sizes — so it is not done.)

`draft=True` (`image_processing="draft"`) gives up bitwise equality for speed on JPEG photos: a JPEG is decoded
already reduced by 1/2, 1/4 or 1/8 (JPEG "draft" mode scales in the DCT domain, so the reduced image costs a
fraction of the full decode), to the smallest such scale that is still at least the size the resize step
produces, and the resize then starts from that smaller image, resizing only the region the center crop keeps
(`resize(box=...)`). Other formats, and JPEGs too small to reduce, are decoded in full; the region-only resize
applies to every image in this mode. `benchmarks/preprocess.py` measures the speed and the pixel difference, and
`benchmarks/draft_quality.py` the effect on a trained model's held-out metrics.

With the optional `fast-jpeg` extra installed (`simplejpeg` + `opencv-python-headless`), draft mode picks its SIMD
backend by itself ([`clip_trl.data.simd_jpeg`]): libjpeg-turbo decodes the JPEG at the same reduced size straight
into an array, and OpenCV's vectorised resize replaces Pillow's for those images only (`jpeg_backend="auto"`;
`"pillow"` keeps Pillow, `"simd"` requires the extra). Other formats and CMYK JPEGs are handled as without it.
"""

from __future__ import annotations

import logging
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np
import torch
from PIL import Image

from clip_trl.data import simd_jpeg
from clip_trl.data.rows import ProcessorImageTransform, load_image, processor_image_inputs, to_rgb

logger = logging.getLogger(__name__)

# Processor steps the fast path implements; any other enabled `do_*` step means "use the processor".
_KNOWN_STEPS = {"do_resize", "do_center_crop", "do_rescale", "do_normalize", "do_convert_rgb"}


@dataclass(frozen=True)
class ImageSpec:
    """The preprocessing a CLIP-style image processor applies, in the order it applies it."""

    shortest_edge: int | None  # resize the short side to this, keeping the aspect ratio ...
    resize_to: tuple[int, int] | None  # ... or resize to exactly (height, width); both None: no resize
    resample: int
    crop: tuple[int, int] | None  # center crop (height, width)
    rescale_factor: float | None
    mean: tuple[float, ...] | None
    std: tuple[float, ...] | None

    @classmethod
    def from_processor(cls, image_processor: Any) -> ImageSpec | None:
        """Read the spec from `image_processor`, or return `None` if it does anything we do not implement."""
        enabled = {
            name
            for name in dir(image_processor)
            if name.startswith("do_") and getattr(image_processor, name, False) is True
        }
        if enabled - _KNOWN_STEPS:
            return None
        shortest_edge = resize_to = crop = None
        if getattr(image_processor, "do_resize", False):
            size = image_processor.size
            if _size_value(size, "longest_edge") or _size_value(size, "max_height"):
                return None
            if _size_value(size, "shortest_edge"):
                shortest_edge = int(_size_value(size, "shortest_edge"))
            elif _size_value(size, "height") and _size_value(size, "width"):
                resize_to = (int(_size_value(size, "height")), int(_size_value(size, "width")))
            else:
                return None
        if getattr(image_processor, "do_center_crop", False):
            crop_size = image_processor.crop_size
            if not (_size_value(crop_size, "height") and _size_value(crop_size, "width")):
                return None
            crop = (int(_size_value(crop_size, "height")), int(_size_value(crop_size, "width")))
        resample = getattr(image_processor, "resample", None)
        if resample is None:
            resample = Image.Resampling.BILINEAR  # the PIL backend's default
        if not isinstance(resample, int):  # a torchvision InterpolationMode: not ours to translate
            return None
        normalize = getattr(image_processor, "do_normalize", False)
        mean, std = image_processor.image_mean, image_processor.image_std
        if normalize:
            mean = (mean,) * 3 if isinstance(mean, (int, float)) else tuple(float(m) for m in mean)
            std = (std,) * 3 if isinstance(std, (int, float)) else tuple(float(s) for s in std)
            if len(mean) != 3 or len(std) != 3:
                return None
        return cls(
            shortest_edge=shortest_edge,
            resize_to=resize_to,
            resample=int(resample),
            crop=crop,
            rescale_factor=float(image_processor.rescale_factor)
            if getattr(image_processor, "do_rescale", False)
            else None,
            mean=mean if normalize else None,
            std=std if normalize else None,
        )

    def resized_size(self, width: int, height: int) -> tuple[int, int]:
        """(width, height) after the resize step, rounded exactly as transformers rounds it."""
        if self.resize_to is not None:
            return self.resize_to[1], self.resize_to[0]
        if self.shortest_edge is None:
            return width, height
        short, long = (width, height) if width <= height else (height, width)
        new_long = int(self.shortest_edge * long / short)
        return (self.shortest_edge, new_long) if width <= height else (new_long, self.shortest_edge)


class FastImageTransform:
    """Images -> `pixel_values`, bitwise equal to `image_processor(images=...)["pixel_values"]`, about 2x faster.

    Accepts PIL images in any mode, file paths, bytes, `datasets.Image` cells (`{"bytes", "path"}`) and pixel
    arrays (NumPy, torch, nested lists: see [`clip_trl.data.rows.image_from_array`]), so it can be used on its own
    as well as in the collator (where images arrive already decoded).

    Args:
        image_processor: the model's image processor (e.g. `processor.image_processor`).
        verify (`bool`, defaults to `True`): compare with the processor on probe images now, and fall back to
            it (with a warning) if the outputs are not equal.
        draft (`bool`, defaults to `False`): decode JPEGs reduced (1/2, 1/4, 1/8) to about the size the resize
            needs, then resize: several times faster on photos much larger than the model's input, no longer
            bitwise equal to the processor (see `docs/performance.md`). Applies where this transform decodes
            (bytes, paths, dataset cells) and in the collator and evaluation, which decode with `draft_size`.
        jpeg_backend (`str`, defaults to `"auto"`): how draft mode decodes and resizes JPEGs: `"simd"`
            (libjpeg-turbo through `simplejpeg`, OpenCV's resize: the `fast-jpeg` extra), `"pillow"`, or `"auto"`
            (`"simd"` when the extra is installed, else `"pillow"`). Ignored without `draft`.

    Example:

    ```python
    >>> from PIL import Image
    >>> from clip_trl.data.image_processing import FastImageTransform
    >>> from clip_trl.offline import build_clip
    >>> _, processor = build_clip("tiny")
    >>> transform = FastImageTransform(processor.image_processor)
    >>> transform.is_fast
    True
    >>> transform([Image.new("RGB", (64, 48), "red")]).shape
    torch.Size([1, 3, 32, 32])

    ```
    """

    def __init__(
        self, image_processor: Any, verify: bool = True, draft: bool = False, jpeg_backend: str = "auto"
    ) -> None:
        if jpeg_backend not in JPEG_BACKENDS:
            raise ValueError(f"`jpeg_backend` must be one of {JPEG_BACKENDS}, got {jpeg_backend!r}.")
        if jpeg_backend == "simd" and not simd_jpeg.simd_available():
            raise ImportError(
                f"`jpeg_backend='simd'` needs simplejpeg and OpenCV, which are not installed: "
                f"{simd_jpeg.INSTALL_HINT}, or use jpeg_backend='auto' (Pillow without them)."
            )
        self.image_processor = image_processor
        self.spec = ImageSpec.from_processor(image_processor)
        self.draft = draft
        self.simd = jpeg_backend != "pillow" and simd_jpeg.simd_available()
        if self.spec is None:
            logger.info(
                "%s has settings the fast image pipeline does not implement; using the processor itself.",
                type(image_processor).__name__,
            )
            return
        self._lookup = _value_lookup_table(self.spec)
        self._cv_lookup = [
            np.ascontiguousarray(self._lookup[channel]).reshape(1, 256) for channel in range(3)
        ]
        if verify:
            # Checks that the processor's settings were read right, on the exact path (draft mode's deviations
            # are by design and measured by the benchmarks).
            self.draft = False
            difference = self._probe_difference()
            self.draft = draft
            if difference > 0:
                logger.warning(
                    "The fast image pipeline differs from %s by up to %.3g on probe images; using the processor.",
                    type(image_processor).__name__,
                    difference,
                )
                self.spec = None

    @property
    def is_fast(self) -> bool:
        """Whether the fast path is in use (`False`: every call goes to the processor)."""
        return self.spec is not None

    @property
    def jpeg_backend(self) -> str | None:
        """What decodes JPEGs in draft mode: `"simd"` or `"pillow"`; `None` when draft decoding is off."""
        if not (self.draft and self.spec is not None):
            return None
        return "simd" if self.simd else "pillow"

    @property
    def draft_size(self) -> Any:
        """With `draft=True` on the fast path, `(width, height) -> smallest size to decode a JPEG at` (what
        `clip_trl.data.rows.load_image(draft=...)` takes; with the SIMD backend it also has a `decode(cell)` that
        `load_image` tries first); otherwise `None`."""
        if not (self.draft and self.spec is not None):
            return None
        return _SimdDraft(self._draft_size) if self.simd else self._draft_size

    def _draft_size(self, width: int, height: int) -> tuple[int, int] | None:
        assert self.spec is not None
        new_width, new_height = self.spec.resized_size(width, height)
        if self.spec.crop is not None:  # a crop larger than the resized image pads: keep the crop's size
            new_width, new_height = max(new_width, self.spec.crop[1]), max(new_height, self.spec.crop[0])
        if new_width * 2 > width or new_height * 2 > height:
            return None  # no reduction possible
        return new_width, new_height

    def __call__(self, images: Sequence[Any]) -> torch.Tensor | dict[str, torch.Tensor]:
        draft = self.draft_size
        # The SIMD backend decodes JPEG cells straight to arrays (no PIL image in between).
        simd_pixels = {}
        if self.jpeg_backend == "simd":
            for index, image in enumerate(images):
                if not isinstance(image, Image.Image):
                    pixels = simd_jpeg.decode_array(image, self._draft_size)
                    if pixels is not None:
                        simd_pixels[index] = pixels
        images = [
            simd_pixels.get(index, image)
            if isinstance(image, Image.Image) or index in simd_pixels
            else load_image(image, draft=draft)
            for index, image in enumerate(images)
        ]
        images = [image if isinstance(image, np.ndarray) else to_rgb(image) for image in images]
        if self.spec is None:
            return processor_image_inputs(self.image_processor(images=images, return_tensors="pt"))
        arrays = [self._resize_and_crop(image) for image in images]
        if len({a.shape for a in arrays}) > 1:  # no crop, aspect-preserving resize: sizes differ
            raise ValueError(
                f"Images of different sizes after preprocessing ({sorted({a.shape[:2] for a in arrays})}) cannot be "
                "batched; the image processor needs a center crop or a fixed (height, width) resize."
            )
        return torch.from_numpy(self._normalise(arrays))

    # ------------------------------------------------------------------------------------------- steps

    def _normalise(self, arrays: list[np.ndarray]) -> np.ndarray:
        """(H, W, 3) uint8 arrays -> (B, 3, H, W) float32 through the lookup table (OpenCV's LUT when it is
        installed: the same table entries, about twice as fast as NumPy's gather)."""
        height, width = arrays[0].shape[:2]
        out = np.empty((len(arrays), 3, height, width), dtype=np.float32)
        modules = simd_jpeg.simd_modules()
        if modules is not None:
            cv2 = modules[1]
            for index, array in enumerate(arrays):
                for channel, plane in enumerate(cv2.split(np.ascontiguousarray(array))):
                    cv2.LUT(plane, self._cv_lookup[channel], dst=out[index, channel])
            return out
        pixels = np.stack(arrays)  # (B, H, W, 3) uint8
        for channel in range(3):  # one gather per channel, straight into the channels-first layout
            np.take(self._lookup[channel], pixels[..., channel], out=out[:, channel])
        return out

    def _resize_and_crop(self, image: Image.Image | np.ndarray) -> np.ndarray:
        """Resize and crop one image; an array is a SIMD-decoded JPEG (so is a PIL image with `SIMD_MARK`), which
        OpenCV resizes."""
        spec = self.spec
        assert spec is not None
        if isinstance(image, np.ndarray):
            simd, (height, width) = True, image.shape[:2]
        else:
            # Marked images take OpenCV's resize only in this transform's own SIMD draft mode ("fast" stays exact).
            marked = bool(image.info.get(simd_jpeg.SIMD_MARK, False))
            simd, (width, height) = marked and self.jpeg_backend == "simd", image.size
        new_width, new_height = spec.resized_size(width, height)
        resized = (new_width, new_height) != (width, height)
        if simd:  # decoded by the SIMD backend: OpenCV resizes it (not bitwise equal to Pillow's filter)
            full = simd_jpeg.simd_resize(np.asarray(image), (new_width, new_height), spec.resample)
            if spec.crop is None:
                return full
        elif spec.crop is None:
            return np.asarray(
                image.resize((new_width, new_height), resample=spec.resample) if resized else image
            )
        crop_height, crop_width = spec.crop
        top, left = (new_height - crop_height) // 2, (new_width - crop_width) // 2
        if not simd and self.draft and resized and top >= 0 and left >= 0:
            # Not bitwise anyway: resize only the cropped region (the filter scale is the full resize's), a
            # quarter less work on 4:3 photos.
            sx, sy = width / new_width, height / new_height
            box = (left * sx, top * sy, (left + crop_width) * sx, (top + crop_height) * sy)
            return np.asarray(image.resize((crop_width, crop_height), resample=spec.resample, box=box))
        if not simd:
            full = np.asarray(
                image.resize((new_width, new_height), resample=spec.resample) if resized else image
            )
        if top < 0 or left < 0:
            return _center_crop_or_pad(full, crop_height, crop_width)
        return full[top : top + crop_height, left : left + crop_width]

    def _probe_difference(self) -> float:
        """Max abs difference from the processor on random images of awkward sizes."""
        generator = np.random.default_rng(0)
        probes = [
            Image.fromarray(generator.integers(0, 256, (height, width, 3), dtype=np.uint8))
            for height, width in ((61, 97), (120, 45), (33, 33))
        ]
        expected = self.image_processor(images=probes, return_tensors="pt")["pixel_values"]
        try:
            actual = self(probes)
        except ValueError:  # e.g. sizes that cannot be batched: let the processor decide what it does
            return float("inf")
        if actual.shape != expected.shape:
            return float("inf")
        return float((actual - expected).abs().max())


def _value_lookup_table(spec: ImageSpec) -> np.ndarray:
    """(3, 256) float32: the normalised value of each 8-bit pixel value per channel, in transformers' arithmetic
    (rescale in float64 then cast to float32; normalise in float32)."""
    values = np.arange(256, dtype=np.float64)
    if spec.rescale_factor is not None:
        values = values * spec.rescale_factor
    values = np.broadcast_to(values.astype(np.float32), (3, 256))
    if spec.mean is not None:
        mean = np.array(spec.mean, dtype=np.float32)[:, None]
        std = np.array(spec.std, dtype=np.float32)[:, None]
        values = (values - mean) / std
    return np.ascontiguousarray(values, dtype=np.float32)


def _size_value(mapping: Any, key: str) -> Any:
    """`mapping[key]` from a processor's size setting, a plain dict or transformers' `SizeDict` (None if absent)."""
    return mapping.get(key) if isinstance(mapping, dict) else getattr(mapping, key, None)


def _center_crop_or_pad(array: np.ndarray, crop_height: int, crop_width: int) -> np.ndarray:
    """transformers' `center_crop` for an image smaller than the crop: zero-pad around it, then crop."""
    height, width = array.shape[:2]
    padded_height, padded_width = max(crop_height, height), max(crop_width, width)
    canvas = np.zeros((padded_height, padded_width, array.shape[2]), dtype=array.dtype)
    top_pad, left_pad = -(-(padded_height - height) // 2), -(-(padded_width - width) // 2)
    canvas[top_pad : top_pad + height, left_pad : left_pad + width] = array
    top, left = (height - crop_height) // 2 + top_pad, (width - crop_width) // 2 + left_pad
    return canvas[top : top + crop_height, left : left + crop_width]


IMAGE_PROCESSING_MODES = ("fast", "processor", "draft")
JPEG_BACKENDS = ("auto", "simd", "pillow")


class _SimdDraft:
    """`FastImageTransform.draft_size` with the SIMD backend: the same size rule, and `decode(cell)`, which
    `load_image` tries before Pillow (it returns `None` for what it leaves to Pillow)."""

    def __init__(self, size: Any) -> None:
        self.size = size

    def __call__(self, width: int, height: int) -> tuple[int, int] | None:
        return self.size(width, height)

    def decode(self, value: Any) -> Image.Image | None:
        return simd_jpeg.decode_jpeg(value, self.size)


def check_image_processing_mode(mode: str) -> None:
    """Raise a `ValueError` naming the allowed values when `mode` is not one of [`IMAGE_PROCESSING_MODES`]."""
    if mode not in IMAGE_PROCESSING_MODES:
        raise ValueError(f"`image_processing` must be one of {IMAGE_PROCESSING_MODES}, got {mode!r}.")


def image_transform_for(image_processor: Any, mode: str = "fast") -> Any:
    """The image transform for `ClipBaseConfig.image_processing`: `"fast"` gives a [`FastImageTransform`]
    (which itself falls back to the processor when it must), `"draft"` the same with JPEG draft decoding
    (`draft=True`), `"processor"` the model's image processor."""
    check_image_processing_mode(mode)
    if mode == "processor":
        return ProcessorImageTransform(image_processor)
    return FastImageTransform(image_processor, draft=mode == "draft")
