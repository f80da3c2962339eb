"""The SIMD backend of JPEG draft decoding: libjpeg-turbo's reduced-size decoding (`simplejpeg`) and OpenCV's resize.

`image_processing="draft"` decodes a JPEG already reduced by 1/2, 1/4 or 1/8 in the DCT domain, then resizes. With
the optional `fast-jpeg` extra installed (`pip install "clip_trl[fast-jpeg]"`: `simplejpeg` and
`opencv-python-headless`) both steps leave Pillow: `simplejpeg.decode_jpeg` decodes straight into a NumPy array
(same power-of-two scale as Pillow's `Image.draft` would pick, so the same decoded size), and `cv2.resize`
(vectorised) does the resize. Without the extra, draft mode uses Pillow as before; nothing else changes.

Only what this module decodes takes the OpenCV resize: it marks its images (`SIMD_MARK` in `image.info`), and the
image pipeline resizes every other image (PNGs, images handed over already decoded, CMYK JPEGs) with Pillow, exactly
as without the extra. JPEGs in CMYK or YCCK go to Pillow, whose CMYK -> RGB conversion the rest of the library uses;
greyscale and YCbCr JPEGs decode here (to the same RGB as Pillow's decode + `convert("RGB")`). EXIF orientation is
not applied, as Pillow's `Image.open` (and so the model's processor) does not apply it. Files that libjpeg-turbo
reports as corrupt or truncated are left to Pillow, which decodes what it can or raises the row's error.
"""

from __future__ import annotations

import functools
import os
from collections.abc import Callable
from typing import Any

import numpy as np
from PIL import Image

# `image.info` key set on images decoded here: the image pipeline resizes those with OpenCV.
SIMD_MARK = "clip_trl_simd_decoded"
_JPEG_MAGIC = b"\xff\xd8\xff"
# JPEG colour spaces libjpeg-turbo turns into the same RGB as Pillow; CMYK and YCCK go to Pillow.
_DECODED_HERE = ("YCbCr", "Gray", "RGB")
INSTALL_HINT = 'pip install "clip_trl[fast-jpeg]" (simplejpeg and opencv-python-headless)'


@functools.lru_cache(maxsize=1)
def simd_modules() -> tuple[Any, Any] | None:
    """`(simplejpeg, cv2)` when both import, else `None` (the draft path then uses Pillow)."""
    try:
        import cv2
        import simplejpeg
    except ImportError:
        return None
    return simplejpeg, cv2


def simd_available() -> bool:
    """Whether the SIMD JPEG backend can be used here (the `fast-jpeg` extra is installed)."""
    return simd_modules() is not None


def draft_scale(width: int, height: int, size: tuple[int, int] | None) -> int:
    """The reduction (1, 2, 4 or 8) Pillow's `Image.draft(None, size)` picks for a `width` x `height` JPEG: the
    largest whose floor ratio still fits `size` (the decoded image is then `ceil(width / scale)` wide)."""
    if size is None:
        return 1
    ratio = min(width // max(size[0], 1), height // max(size[1], 1))
    return next((scale for scale in (8, 4, 2) if scale <= ratio), 1)


def _jpeg_bytes(value: Any) -> bytes | None:
    """The bytes of an image cell when it is a JPEG (bytes, a `datasets.Image` dict or a path), else `None`."""
    if isinstance(value, dict):
        value = value.get("bytes") if value.get("bytes") is not None else value.get("path")
    if isinstance(value, (bytes, bytearray, memoryview)):
        data = bytes(value)
        return data if data[:3] == _JPEG_MAGIC else None
    if isinstance(value, (str, os.PathLike)) and os.path.isfile(value):
        with open(value, "rb") as file:
            head = file.read(3)
            return head + file.read() if head == _JPEG_MAGIC else None
    return None


def decode_array(value: Any, needed: Callable[[int, int], tuple[int, int] | None]) -> np.ndarray | None:
    """Decode `value` (JPEG bytes, a dataset cell or a path) to an (H, W, 3) uint8 RGB array, reduced to at least
    `needed(width, height)` (in full when that is `None`); `None` when it is not a JPEG this backend decodes (not a
    JPEG, CMYK/YCCK, corrupt, or the backend is not installed): the caller then uses Pillow."""
    modules = simd_modules()
    if modules is None:
        return None
    data = _jpeg_bytes(value)
    if data is None:
        return None
    simplejpeg = modules[0]
    try:
        height, width, colorspace, _ = simplejpeg.decode_jpeg_header(data)
        if colorspace not in _DECODED_HERE:
            return None
        scale = draft_scale(width, height, needed(width, height))
        return simplejpeg.decode_jpeg(
            data, colorspace="RGB", min_width=-(-width // scale), min_height=-(-height // scale)
        )
    except (ValueError, RuntimeError):  # corrupt or truncated: Pillow decodes what it can, or names the error
        return None


def decode_jpeg(value: Any, needed: Callable[[int, int], tuple[int, int] | None]) -> Image.Image | None:
    """[`decode_array`] as an RGB PIL image marked with `SIMD_MARK` (what `load_image` returns), or `None`."""
    pixels = decode_array(value, needed)
    if pixels is None:
        return None
    image = Image.fromarray(pixels)
    image.info[SIMD_MARK] = True
    return image


def simd_resize(array: np.ndarray, size: tuple[int, int], resample: int) -> np.ndarray:
    """`array` (H, W, 3) resized to `size` (width, height) by OpenCV, with the interpolation closest to Pillow's
    `resample`; shrinking by more than 2x in a direction uses area averaging (the others would alias)."""
    modules = simd_modules()
    assert modules is not None, INSTALL_HINT
    cv2 = modules[1]
    if (array.shape[1], array.shape[0]) == size:
        return array
    if size[0] * 2 < array.shape[1] or size[1] * 2 < array.shape[0]:
        interpolation = cv2.INTER_AREA
    else:
        interpolation = {
            int(Image.Resampling.NEAREST): cv2.INTER_NEAREST,
            int(Image.Resampling.BILINEAR): cv2.INTER_LINEAR,
            int(Image.Resampling.BICUBIC): cv2.INTER_CUBIC,
            int(Image.Resampling.LANCZOS): cv2.INTER_LANCZOS4,
            int(Image.Resampling.BOX): cv2.INTER_AREA,
        }.get(int(resample), cv2.INTER_LINEAR)
    return cv2.resize(array, size, interpolation=interpolation)
