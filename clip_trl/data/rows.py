"""One dataset row: decoding its image, checking its caption, and the error that names a bad row and column.

These are the leaves of the data path, shared by the collators ([`clip_trl.data.collator`]), the image pipeline
([`clip_trl.data.image_processing`]), evaluation and the reward functions; they depend on nothing else in the package.
"""

from __future__ import annotations

import hashlib
import io
import os
from collections.abc import Callable, Mapping
from typing import Any

import numpy as np
import torch
from PIL import Image

SKIP_HINT = (
    "Fix or remove the row, or pass `skip_bad_rows=True` to skip such rows (they are counted and logged)."
)
# Evaluation scores every row, so `skip_bad_rows` (a training option) does not apply there.
EVAL_HINT = (
    "Evaluation does not skip bad rows (`skip_bad_rows` applies to training only): fix the row, or remove it from "
    "the evaluation set (e.g. with `dataset.filter`) before evaluating."
)


class BadRowError(ValueError):
    """A dataset row that cannot be turned into a training example (bad image or caption).

    The message is `Row <index>, column '<name>': <problem>. <hint>`; `hint` says what to do about it.
    """

    def __init__(
        self,
        row: int | str | None,
        column: str | None = None,
        problem: str | None = None,
        hint: str = SKIP_HINT,
    ) -> None:
        if column is None and isinstance(row, str):
            # A DataLoader worker's error is re-raised in the main process as `type(message)`; keep the type.
            super().__init__(row)
            self.row, self.column, self.problem = None, None, row
            return
        where = f"Row {row}" if row is not None else "A row"
        super().__init__(f"{where}, column '{column}': {problem}. {hint}")
        self.row = row
        self.column = column
        self.problem = problem
        self.hint = hint

    @property
    def summary(self) -> str:
        """The message without its hint: `Row <index>, column '<name>': <problem>.` (what a skipped row logs)."""
        if self.column is None:
            return str(self)
        where = f"Row {self.row}" if self.row is not None else "A row"
        return f"{where}, column '{self.column}': {self.problem}."

    def with_hint(self, hint: str) -> BadRowError:
        """The same error with another hint (e.g. [`EVAL_HINT`] where rows cannot be skipped)."""
        return self._replace(self.row, hint)

    def located(self, where: str) -> BadRowError:
        """The same error with the row described by `where` (e.g. its index, shard file and sample key).

        Example:

        ```python
        >>> from clip_trl.data.rows import BadRowError
        >>> str(BadRowError(3, "image", "the file is empty", hint="").located("3 (shard 'a.tar', key '07')"))
        "Row 3 (shard 'a.tar', key '07'), column 'image': the file is empty. "

        ```
        """
        return self._replace(where, self.hint)

    def _replace(self, row: int | str | None, hint: str) -> BadRowError:
        if self.column is None:  # a message re-raised from a DataLoader worker: keep it as it is
            return self
        error = BadRowError(row, self.column, self.problem, hint=hint)
        error.__cause__ = self.__cause__
        return error


# --------------------------------------------------------------------------------------------- images


def to_rgb(image: Image.Image) -> Image.Image:
    """Convert any PIL mode to RGB.

    Transparent pixels are composited onto white (a plain `convert("RGB")` keeps whatever colour
    hides under alpha 0, usually black, which turns every emoji or logo into a black square), and
    16/32-bit greyscale is rescaled to 8 bits instead of being clipped.
    """
    if image.mode == "RGB":
        return image
    if image.mode in ("I;16", "I;16B", "I;16L", "I;16N", "I", "F"):
        array = np.asarray(image, dtype=np.float64)
        top = 65535.0 if image.mode.startswith("I;16") else max(float(array.max()), 1.0)
        array = np.clip(array / top * 255.0, 0, 255).astype(np.uint8)
        return Image.fromarray(array, mode="L").convert("RGB")
    if image.mode == "P" and "transparency" in image.info:
        image = image.convert("RGBA")
    if image.mode in ("RGBA", "LA", "PA", "RGBa", "La"):
        rgba = image.convert("RGBA")
        background = Image.new("RGBA", rgba.size, (255, 255, 255, 255))
        return Image.alpha_composite(background, rgba).convert("RGB")
    return image.convert("RGB")


def load_image(
    value: Any,
    *,
    row: int | None = None,
    column: str = "image",
    draft: Callable[[int, int], Any] | None = None,
) -> Image.Image:
    """Decode one image cell (PIL image, path, bytes, `datasets.Image` dict, or pixels: a NumPy array, a torch
    tensor or nested lists as Arrow returns them, read by [`image_from_array`]) to RGB.

    `draft(width, height)`, when given, returns the smallest size a JPEG may be decoded at (or `None`): JPEG
    draft mode then decodes it reduced by 1/2, 1/4 or 1/8 (see `FastImageTransform(draft=True)`).

    Raises:
        BadRowError: the cell is empty, the file does not exist, the bytes are not an image, or the pixels do not
            have an image's shape or value range.
    """
    try:
        # A SIMD draft decoder (`FastImageTransform(draft=True)` with the fast-jpeg extra) decodes JPEGs itself.
        decoded = draft.decode(value) if hasattr(draft, "decode") else None
        if decoded is not None:
            return decoded
        if isinstance(value, Image.Image):
            image = value
        elif isinstance(value, dict):  # datasets.Image(decode=False): {"bytes": ..., "path": ...}
            if value.get("bytes") is not None:
                image = Image.open(io.BytesIO(value["bytes"]))
            elif value.get("path"):
                image = _open_path(value["path"], row, column)
            else:
                raise BadRowError(row, column, "the image cell has neither bytes nor a path")
        elif isinstance(value, (str, os.PathLike)):
            image = _open_path(os.fspath(value), row, column)
        elif isinstance(value, (bytes, bytearray)):
            image = Image.open(io.BytesIO(value))
        elif isinstance(value, (np.ndarray, list, tuple, torch.Tensor)):
            image = image_from_array(value, row=row, column=column)
        elif value is None:
            raise BadRowError(row, column, "the image is missing (None)")
        else:
            raise BadRowError(row, column, f"cannot read an image from a {type(value).__name__}")
        if draft is not None and getattr(image, "format", None) == "JPEG":
            size = draft(*image.size)
            if size is not None:
                image.draft(None, size)
        image.load()  # decode now, so truncated files fail here and not in a later transform
        return to_rgb(image)
    except BadRowError:
        raise
    except (OSError, ValueError, SyntaxError, Image.DecompressionBombError) as error:
        raise BadRowError(
            row, column, f"cannot decode the image ({type(error).__name__}: {error})"
        ) from error


# The channel counts an array image may have: greyscale, RGB, RGBA (alpha composited onto white by `to_rgb`).
_ARRAY_CHANNELS = (1, 3, 4)
_ARRAY_MODES = {1: "L", 3: "RGB", 4: "RGBA"}


def image_from_array(value: Any, *, row: int | None = None, column: str = "image") -> Image.Image:
    """A PIL image from pixels: a NumPy array, a torch tensor, or nested lists (what a `datasets` column of arrays
    returns, e.g. `Dataset.from_dict({"image": [np.ndarray, ...]})`).

    Accepted, as transformers' image processors accept them:

    - shapes `(height, width)` (greyscale), `(height, width, channels)` and `(channels, height, width)` with 1, 3
      or 4 (RGBA) channels; when both ends could be the channels (an image 1, 3 or 4 pixels tall), channels
      first is assumed, as transformers does;
    - integer pixels in 0..255 (uint8, or the int64 that nested lists become), or floats in [0, 1] (scaled by
      255 and rounded).

    Example:

    ```python
    >>> import numpy as np
    >>> from clip_trl.data.rows import image_from_array
    >>> image_from_array(np.full((3, 8, 6), 0.5, dtype=np.float32)).getpixel((0, 0))  # CHW floats
    (128, 128, 128)
    >>> image_from_array([0, 128, 255], row=4)  # doctest: +ELLIPSIS
    Traceback (most recent call last):
    ...
    clip_trl.data.rows.BadRowError: Row 4, column 'image': the image array has shape (3,): expected ...

    ```

    Raises:
        BadRowError: naming the row and column, for another shape, ragged lists, values out of range (or NaN),
            or a non-numeric array.
    """
    if isinstance(value, torch.Tensor):
        value = value.detach().cpu().numpy()
    try:
        array = np.asarray(value)
    except ValueError:  # ragged nested lists (NumPy 2 refuses to build them)
        raise BadRowError(
            row, column, "the image is a ragged nested list (rows of different lengths)"
        ) from None
    if array.dtype == object:
        raise BadRowError(row, column, "the image is a ragged nested list (rows of different lengths)")
    expected = (
        "expected (height, width) for greyscale, or (height, width, channels) / (channels, height, width) with "
        f"{', '.join(map(str, _ARRAY_CHANNELS[:-1]))} or {_ARRAY_CHANNELS[-1]} channels"
    )
    shape = tuple(array.shape)
    if array.ndim == 3 and shape[0] in _ARRAY_CHANNELS:
        array = np.moveaxis(
            array, 0, -1
        )  # channels first (also when both ends could be: transformers' choice)
    elif not (array.ndim == 2 or (array.ndim == 3 and shape[2] in _ARRAY_CHANNELS)):
        raise BadRowError(row, column, f"the image array has shape {shape}: {expected}")
    if array.shape[0] == 0 or array.shape[1] == 0:
        raise BadRowError(row, column, f"the image array is empty (shape {shape})")
    if array.ndim == 3 and array.shape[2] == 1:
        array = array[..., 0]
    array = _pixels_as_uint8(array, row, column)
    return Image.fromarray(
        np.ascontiguousarray(array), mode=_ARRAY_MODES[1 if array.ndim == 2 else array.shape[2]]
    )


def _pixels_as_uint8(array: np.ndarray, row: int | None, column: str) -> np.ndarray:
    if array.dtype == np.uint8:
        return array
    if array.dtype.kind in "iu":
        low, high = int(array.min()), int(array.max())
        if low < 0 or high > 255:
            raise BadRowError(
                row,
                column,
                f"integer pixel values must be in 0..255, got {low}..{high} (dtype {array.dtype})",
            )
        return array.astype(np.uint8)
    if array.dtype.kind == "f":
        if not np.isfinite(array).all():
            raise BadRowError(row, column, "the image array holds NaN or infinite values")
        low, high = float(array.min()), float(array.max())
        if low < 0.0 or high > 1.0:
            raise BadRowError(
                row,
                column,
                f"float pixel values must be in [0, 1], got {low:g}..{high:g} (dtype {array.dtype}); for values "
                "in 0..255 cast the array to uint8",
            )
        return np.rint(array.astype(np.float64) * 255.0).astype(np.uint8)
    raise BadRowError(
        row,
        column,
        f"cannot read an image from an array of dtype {array.dtype}: use uint8 (0..255) or floats (0..1)",
    )


def _open_path(path: str, row: int | None, column: str) -> Image.Image:
    if not os.path.exists(path):
        raise BadRowError(row, column, f"image file '{path}' does not exist")
    return Image.open(path)


def content_key(data: bytes | str) -> int:
    """A stable 63-bit key of an image's pixels or a caption's text (same on every process)."""
    if isinstance(data, str):
        data = data.encode("utf-8")
    return int.from_bytes(hashlib.blake2b(data, digest_size=8).digest(), "little") >> 1


def image_key(image: Image.Image) -> int:
    return content_key(
        image.size[0].to_bytes(4, "little") + image.size[1].to_bytes(4, "little") + image.tobytes()
    )


# ------------------------------------------------------------------------------------------- captions


def check_caption(value: Any, *, row: int | None, column: str) -> str:
    """Return a usable caption or raise a [`BadRowError`] saying what is wrong with it."""
    if value is None:
        raise BadRowError(row, column, "the caption is missing (None)")
    if not isinstance(value, str):
        raise BadRowError(row, column, f"the caption must be a string, got {type(value).__name__} {value!r}")
    if not value.strip():
        raise BadRowError(row, column, f"the caption is empty ({value!r})")
    return value


def caption_choices(value: Any, *, row: int | None, column: str) -> list[str]:
    """All captions of a row: a string gives one, a list (COCO style) gives each of its entries."""
    if isinstance(value, (list, tuple)):
        if not value:
            raise BadRowError(row, column, "the caption list is empty")
        return [check_caption(v, row=row, column=f"{column}[{i}]") for i, v in enumerate(value)]
    return [check_caption(value, row=row, column=column)]


# ---------------------------------------------------------------------------------------- processors


def split_processor(processing_class: Any) -> tuple[Any, Any]:
    """Return `(image_processor, tokenizer)` from a CLIP-style processor."""
    image_processor = getattr(processing_class, "image_processor", None)
    tokenizer = getattr(processing_class, "tokenizer", None)
    if image_processor is None or tokenizer is None:
        raise TypeError(
            "`processing_class` must be a processor with both an `image_processor` and a `tokenizer` "
            f"(e.g. `CLIPProcessor`), got {type(processing_class).__name__}. Load one with "
            "`AutoProcessor.from_pretrained(<model id>)`."
        )
    return image_processor, tokenizer


class ProcessorImageTransform:
    """Images -> `pixel_values` with the model's own image processor (the reference path)."""

    def __init__(self, image_processor: Any) -> None:
        self.image_processor = image_processor

    def __call__(self, images: list[Image.Image]) -> torch.Tensor | dict[str, torch.Tensor]:
        return processor_image_inputs(self.image_processor(images=images, return_tensors="pt"))


def processor_image_inputs(output: Mapping[str, Any]) -> torch.Tensor | dict[str, torch.Tensor]:
    """An image processor's output as the collator passes it on: the `pixel_values` tensor, or all its tensors
    when it has more (SigLIP 2's `pixel_attention_mask` and `spatial_shapes` belong with the patches)."""
    tensors = {key: value for key, value in output.items() if isinstance(value, torch.Tensor)}
    return tensors["pixel_values"] if set(tensors) == {"pixel_values"} else tensors
