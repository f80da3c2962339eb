"""From dataset rows to model tensors: image decoding, caption checks, and the batch collator.

Everything here runs inside DataLoader workers, so decoding and resizing images happen in parallel
with the training step (`dataloader_num_workers`). Bad rows are never dropped silently: they raise
a [`BadRowError`] that names the row and the column, unless the user opted into skipping them, in
which case the collator counts them and the trainer logs the count.
"""

from __future__ import annotations

import hashlib
import io
import logging
import os
import random
from collections.abc import Callable, Iterator, Mapping, Sequence
from typing import Any

import numpy as np
import torch
from PIL import Image

from .encoding import image_batch, text_max_length, tokenize

logger = logging.getLogger(__name__)

# The trainer wraps datasets so every row carries its index; error messages quote it.
ROW_INDEX_KEY = "__row_index__"

SKIP_HINT = "Fix or remove the row, or pass `skip_bad_rows=True` to skip such rows (they are counted and logged)."
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
        self, row: int | str | None, column: str | None = None, problem: str | None = None, hint: str = SKIP_HINT
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

    def with_hint(self, hint: str) -> BadRowError:
        """The same error with another hint (e.g. [`EVAL_HINT`] where rows cannot be skipped)."""
        if self.column is None:  # a message re-raised from a DataLoader worker: keep it as it is
            return self
        error = BadRowError(self.row, self.column, self.problem, hint=hint)
        error.__cause__ = self.__cause__
        return error


def check_columns(dataset: Any, required: Mapping[str, str | None], dataset_name: str) -> None:
    """Raise if a configured column is missing, listing the columns the dataset has.

    Args:
        dataset: a `datasets.Dataset`/`IterableDataset` (anything with `column_names`), or `None`.
        required: config field name -> column name (entries whose column is `None` are skipped).
        dataset_name: "train_dataset" or "eval_dataset", for the message.
    """
    if dataset is None:
        return
    columns = getattr(dataset, "column_names", None)
    if columns is None:  # an IterableDataset with unknown features, or a torch Dataset: checked per row
        return
    if isinstance(columns, dict):  # a DatasetDict was passed where a split was expected
        raise TypeError(
            f"`{dataset_name}` is a DatasetDict with splits {sorted(columns)}; pass one split, "
            f"e.g. `{dataset_name}=dataset['train']`."
        )
    for field, column in required.items():
        if column is not None and column not in columns:
            raise ValueError(
                f"`{dataset_name}` has no column '{column}' (set by `{field}`). Columns present: "
                f"{sorted(columns)}. Set `{field}` to one of them or rename the column."
            )


class IndexedDataset(torch.utils.data.Dataset):
    """A map-style view of a dataset whose rows also carry their index (for error messages).

    Image columns are read undecoded (`datasets.Image(decode=False)`), so a corrupt image reaches
    our own decoder in the collator, which can name the row, instead of failing inside `datasets`.
    """

    def __init__(self, dataset: Any, image_columns: Sequence[str] = ()) -> None:
        self.dataset = _undecoded(dataset, image_columns)
        self.column_names = getattr(dataset, "column_names", None)

    def __len__(self) -> int:
        return len(self.dataset)

    def __getitem__(self, index: int) -> dict[str, Any]:
        row = dict(self.dataset[index])
        row[ROW_INDEX_KEY] = index
        return row


class IndexedIterableDataset(torch.utils.data.IterableDataset):
    """The streaming counterpart of [`IndexedDataset`]: numbers rows as they stream past."""

    def __init__(self, dataset: Any, image_columns: Sequence[str] = ()) -> None:
        self.dataset = _undecoded(dataset, image_columns)
        self.column_names = getattr(dataset, "column_names", None)

    def set_epoch(self, epoch: int) -> None:
        if hasattr(self.dataset, "set_epoch"):
            self.dataset.set_epoch(epoch)

    def __iter__(self) -> Iterator[dict[str, Any]]:
        for index, row in enumerate(self.dataset):
            row = dict(row)
            row[ROW_INDEX_KEY] = index
            yield row


def with_row_index(dataset: Any, image_columns: Sequence[str] = ()) -> Any:
    """Wrap `dataset` so that rows carry their index; `None` and already-wrapped datasets pass through."""
    if dataset is None or isinstance(dataset, (IndexedDataset, IndexedIterableDataset)):
        return dataset
    if isinstance(dataset, torch.utils.data.IterableDataset) or not hasattr(dataset, "__getitem__"):
        return IndexedIterableDataset(dataset, image_columns)
    return IndexedDataset(dataset, image_columns)


def _undecoded(dataset: Any, image_columns: Sequence[str]) -> Any:
    features = getattr(dataset, "features", None)
    if not features:
        return dataset
    import datasets

    for column in image_columns:
        feature = features.get(column)
        if isinstance(feature, datasets.Image) and feature.decode:
            dataset = dataset.cast_column(column, datasets.Image(decode=False))
    return dataset


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


def load_image(value: Any, *, row: int | None = None, column: str = "image") -> Image.Image:
    """Decode one image cell (PIL image, path, bytes, `datasets.Image` dict or array) to RGB.

    Raises:
        BadRowError: the cell is empty, the file does not exist, or the bytes are not an image.
    """
    try:
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
        elif isinstance(value, np.ndarray):
            image = Image.fromarray(value)
        elif value is None:
            raise BadRowError(row, column, "the image is missing (None)")
        else:
            raise BadRowError(row, column, f"cannot read an image from a {type(value).__name__}")
        image.load()  # decode now, so truncated files fail here and not in a later transform
        return to_rgb(image)
    except BadRowError:
        raise
    except (OSError, ValueError, SyntaxError, Image.DecompressionBombError) as error:
        raise BadRowError(row, column, f"cannot decode the image ({type(error).__name__}: {error})") from error


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
    return content_key(image.size[0].to_bytes(4, "little") + image.size[1].to_bytes(4, "little") + image.tobytes())


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


# ------------------------------------------------------------------------------------------- collator


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


class ClipDataCollator:
    """Turn dataset rows into a contrastive batch.

    Output keys: `pixel_values`, `input_ids`, `attention_mask` (what a CLIP model eats), plus
    `image_keys` / `caption_keys` (content hashes: rows sharing an image or a caption are positives
    of each other, not negatives), `row_index`, `num_skipped_rows`, and, with a `negative_column`,
    `negative_keys`: the hard-negative captions are then tokenised after the B captions, so
    `input_ids` has B + (number of negatives) rows.

    Args:
        processing_class: a CLIP processor (image processor + tokenizer).
        image_column / caption_column: column names.
        negative_column: optional column of hard-negative captions (a string or list per row).
        skip_bad_rows: drop undecodable / caption-less rows (counted) instead of raising.
        max_length: token limit (defaults to the tokenizer's `model_max_length`, capped by 77 if it has none).
        text_padding: `"longest"` (pad to the batch's longest caption) or `"max_length"` (SigLIP-family towers);
            the trainers pass the model's rule ([`clip_trl.encoding.text_padding`]).
        image_transform: images -> pixel_values; defaults to a [`~clip_trl.image_processing.FastImageTransform`]
            of the processor's image processor (bitwise-equal output, faster).
        keep_rows: also return the decoded rows under `"rows"` (the RL trainer's rewards need them).
    """

    def __init__(
        self,
        processing_class: Any,
        image_column: str = "image",
        caption_column: str = "caption",
        negative_column: str | None = None,
        skip_bad_rows: bool = False,
        max_length: int | None = None,
        image_transform: Callable[[list[Image.Image]], torch.Tensor] | None = None,
        keep_rows: bool = False,
        text_padding: str = "longest",
    ) -> None:
        image_processor, self.tokenizer = split_processor(processing_class)
        if image_transform is None:
            from .image_processing import FastImageTransform  # imports this module

            image_transform = FastImageTransform(image_processor)
        self.image_transform = image_transform
        self.image_column = image_column
        self.caption_column = caption_column
        self.negative_column = negative_column
        self.skip_bad_rows = skip_bad_rows
        self.max_length = text_max_length(None, self.tokenizer, max_length)
        self.text_padding = text_padding
        self.keep_rows = keep_rows
        # The RL trainer's label / column candidate sets do not need a caption on every row.
        self.require_caption = True

    def tokenize(self, texts: list[str]) -> dict[str, torch.Tensor]:
        """`input_ids` (and `attention_mask` when the tokenizer makes one) by [`clip_trl.encoding.tokenize`]."""
        return tokenize(None, self.tokenizer, texts, self.max_length, self.text_padding)

    def parse_row(self, row: Mapping[str, Any]) -> dict[str, Any]:
        """Decode one row; raises [`BadRowError`] on bad input."""
        index = row.get(ROW_INDEX_KEY)
        required = (self.image_column, self.caption_column) if self.require_caption else (self.image_column,)
        for column in required:
            if column not in row:
                raise BadRowError(index, column, f"the column is missing; the row has {sorted(set(row) - {ROW_INDEX_KEY})}")
        image = load_image(row[self.image_column], row=index, column=self.image_column)
        captions: list[str] = []
        if self.require_caption or row.get(self.caption_column) is not None:
            captions = caption_choices(row[self.caption_column], row=index, column=self.caption_column)
        caption = random.choice(captions) if captions else None
        parsed = {"image": image, "captions": captions, "caption": caption, "index": index}
        if self.negative_column is not None:
            value = row.get(self.negative_column)
            negatives = [value] if isinstance(value, str) else list(value or [])
            parsed["negatives"] = [
                check_caption(v, row=index, column=f"{self.negative_column}[{i}]") for i, v in enumerate(negatives)
            ]
        return parsed

    def parse_rows(self, rows: Sequence[Mapping[str, Any]]) -> tuple[list[dict[str, Any]], list[Mapping[str, Any]], int]:
        parsed, kept, skipped = [], [], 0
        for row in rows:
            try:
                parsed.append(self.parse_row(row))
                kept.append(row)
            except BadRowError as error:
                if not self.skip_bad_rows:
                    raise
                skipped += 1
                logger.warning("Skipping a bad row: %s", error)
        return parsed, kept, skipped

    def __call__(self, rows: Sequence[Mapping[str, Any]]) -> dict[str, Any]:
        return self.collate(*self.parse_rows(rows))

    def image_batch(self, parsed: list[dict[str, Any]], skipped: int) -> dict[str, Any]:
        """The part every batch shares: bookkeeping, and `pixel_values` / `image_keys` when rows survived."""
        batch: dict[str, Any] = {
            "num_skipped_rows": torch.tensor(skipped),
            "row_index": torch.tensor([-1 if p["index"] is None else p["index"] for p in parsed], dtype=torch.long),
        }
        if parsed:
            images = [p["image"] for p in parsed]
            batch.update(image_batch(self.image_transform, images))
            batch["image_keys"] = torch.tensor([image_key(im) for im in images], dtype=torch.long)
        return batch

    def collate(self, parsed: list[dict[str, Any]], kept: list[Mapping[str, Any]], skipped: int) -> dict[str, Any]:
        """Tensors from parsed rows (see [`parse_row`]); `kept` are the raw rows, `skipped` the bad-row count."""
        batch = self.image_batch(parsed, skipped)
        if not parsed:
            return batch
        captions = [p["caption"] for p in parsed]
        # Hard negatives ride in the same token batch, after the captions: one text forward for both.
        negatives = [n for p in parsed for n in p.get("negatives", ())]
        batch.update(self.tokenize(captions + negatives))
        batch["caption_keys"] = torch.tensor([content_key(c) for c in captions], dtype=torch.long)
        if self.negative_column is not None:
            batch["negative_keys"] = torch.tensor([content_key(n) for n in negatives], dtype=torch.long)
        if self.keep_rows:
            batch["rows"] = [
                {**{k: v for k, v in row.items() if k != ROW_INDEX_KEY}, self.image_column: p["image"]}
                | {"__caption__": p["caption"], "__captions__": p["captions"]}
                for row, p in zip(kept, parsed)
            ]
        return batch
