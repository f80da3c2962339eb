"""From dataset rows to model tensors: row-indexed datasets and the batch collator.

Decoding one row's image and checking its caption live in [`clip_trl.data.rows`]. Everything
here runs inside DataLoader workers, so decoding and resizing images happen in parallel
with the training step (`dataloader_num_workers`). Bad rows are never dropped silently: they raise
a [`BadRowError`] that names the row and the column, unless the user opted into skipping them, in
which case the collator counts them and the trainer logs the count.
"""

from __future__ import annotations

import logging
import os
import random
from collections.abc import Callable, Iterator, Mapping, Sequence
from typing import Any

import torch
from PIL import Image

from clip_trl.data.image_processing import FastImageTransform
from clip_trl.data.rows import (
    BadRowError,
    caption_choices,
    check_caption,
    content_key,
    image_key,
    load_image,
    split_processor,
)
from clip_trl.models.encoding import image_batch, text_max_length, tokenize

__all__ = [
    "ROW_INDEX_KEY",
    "ClipDataCollator",
    "IndexedDataset",
    "IndexedIterableDataset",
    "check_columns",
    "with_row_index",
]

logger = logging.getLogger(__name__)

# The trainer wraps datasets so every row carries its index; error messages quote it.
ROW_INDEX_KEY = "__row_index__"

# `skip_bad_rows=True` is for a few bad rows, not for data that is mostly bad: training stops with a `BadRowError`
# listing the first bad rows when a batch loses every row, or when more than `MAX_SKIPPED_SHARE` of the rows read
# so far (counted per DataLoader worker, from `SKIPPED_SHARE_MIN_ROWS` rows on) were bad.
MAX_SKIPPED_SHARE = 0.5
SKIPPED_SHARE_MIN_ROWS = 64
# How many of the first bad rows that error lists.
FIRST_BAD_ROWS_SHOWN = 5


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


# ------------------------------------------------------------------------------------------- collator


def _in_shard(error: BadRowError, row: Mapping[str, Any]) -> BadRowError:
    """A webdataset row ([`clip_trl.data.shards.ShardStream`]) is named by its shard file and sample key as well: its
    index counts rows of one reader's stream, which does not say where to look."""
    key, url = row.get("__key__"), row.get("__url__")
    if key is None and url is None:
        return error
    shard = f"shard '{os.path.basename(str(url))}', " if url else ""
    return error.located(f"{error.row} ({shard}key '{key}')")


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
            the trainers pass the model's rule ([`clip_trl.models.encoding.text_padding`]).
        image_transform: images -> pixel_values; defaults to a [`~clip_trl.data.image_processing.FastImageTransform`]
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
        # With `skip_bad_rows`: rows read and skipped so far, and the first bad rows' messages.
        self._rows_read = 0
        self._rows_skipped = 0
        self._first_bad_rows: list[str] = []

    def tokenize(self, texts: list[str]) -> dict[str, torch.Tensor]:
        """`input_ids` (and `attention_mask` when the tokenizer makes one) by [`clip_trl.models.encoding.tokenize`]."""
        return tokenize(None, self.tokenizer, texts, self.max_length, self.text_padding)

    def parse_row(self, row: Mapping[str, Any]) -> dict[str, Any]:
        """Decode one row; raises [`BadRowError`] on bad input."""
        index = row.get(ROW_INDEX_KEY)
        required = (self.image_column, self.caption_column) if self.require_caption else (self.image_column,)
        for column in required:
            if column not in row:
                raise BadRowError(
                    index, column, f"the column is missing; the row has {sorted(set(row) - {ROW_INDEX_KEY})}"
                )
        # A transform with JPEG draft decoding says at what size it needs each image (`draft_size`).
        draft = getattr(self.image_transform, "draft_size", None)
        image = load_image(row[self.image_column], row=index, column=self.image_column, draft=draft)
        captions: list[str] = []
        if self.require_caption or row.get(self.caption_column) is not None:
            captions = caption_choices(row[self.caption_column], row=index, column=self.caption_column)
        caption = random.choice(captions) if captions else None
        parsed = {"image": image, "captions": captions, "caption": caption, "index": index}
        if self.negative_column is not None:
            value = row.get(self.negative_column)
            negatives = [value] if isinstance(value, str) else list(value or [])
            parsed["negatives"] = [
                check_caption(v, row=index, column=f"{self.negative_column}[{i}]")
                for i, v in enumerate(negatives)
            ]
        return parsed

    def parse_rows(
        self, rows: Sequence[Mapping[str, Any]]
    ) -> tuple[list[dict[str, Any]], list[Mapping[str, Any]], int]:
        parsed, kept, skipped = [], [], 0
        for row in rows:
            try:
                parsed.append(self.parse_row(row))
                kept.append(row)
            except BadRowError as error:
                located = _in_shard(error, row)
                if not self.skip_bad_rows:
                    if located is error:
                        raise
                    raise located from error.__cause__
                skipped += 1
                # The hint would suggest `skip_bad_rows=True`, which is on: log what is wrong and where only.
                logger.warning("Skipping a bad row: %s", located.summary)
                if len(self._first_bad_rows) < FIRST_BAD_ROWS_SHOWN:
                    self._first_bad_rows.append(located.summary)
        if self.skip_bad_rows:
            self._stop_if_mostly_bad(rows, skipped)
        return parsed, kept, skipped

    def _stop_if_mostly_bad(self, rows: Sequence[Mapping[str, Any]], skipped: int) -> None:
        """Raise a [`BadRowError`] listing the first bad rows when this batch lost every row, or when more than
        `MAX_SKIPPED_SHARE` of the rows read so far were bad: the run would otherwise go on with nothing (or little)
        to learn from, and end looking like a success."""
        self._rows_read += len(rows)
        self._rows_skipped += skipped
        if not rows:
            return
        if skipped == len(rows):
            first = rows[0].get(ROW_INDEX_KEY)
            what = (
                f"every row of a batch of {len(rows)} row(s){'' if first is None else f' (from row {first})'}"
            )
        elif (
            self._rows_read >= SKIPPED_SHARE_MIN_ROWS
            and self._rows_skipped > MAX_SKIPPED_SHARE * self._rows_read
        ):
            what = f"more than {MAX_SKIPPED_SHARE:.0%} of the rows"
        else:
            return
        listed = "\n".join(f"  {message}" for message in self._first_bad_rows)
        raise BadRowError(
            f"`skip_bad_rows=True` skipped {what} ({self._rows_skipped} of the {self._rows_read} rows read so far "
            f"were bad), so training stops instead of going on with nothing to learn from. The first bad rows:\n"
            f"{listed}\nFix the data, or remove the bad rows (e.g. with `dataset.filter`): `skip_bad_rows` is for a "
            f"few bad rows (training stops when a batch loses every row, or when more than {MAX_SKIPPED_SHARE:.0%} "
            f"of the rows read, from {SKIPPED_SHARE_MIN_ROWS} on, are bad)."
        )

    def __call__(self, rows: Sequence[Mapping[str, Any]]) -> dict[str, Any]:
        return self.collate(*self.parse_rows(rows))

    def image_batch(self, parsed: list[dict[str, Any]], skipped: int) -> dict[str, Any]:
        """The part every batch shares: bookkeeping, and `pixel_values` / `image_keys` when rows survived."""
        batch: dict[str, Any] = {
            "num_skipped_rows": torch.tensor(skipped),
            "row_index": torch.tensor(
                [-1 if p["index"] is None else p["index"] for p in parsed], dtype=torch.long
            ),
        }
        if parsed:
            images = [p["image"] for p in parsed]
            batch.update(image_batch(self.image_transform, images))
            batch["image_keys"] = torch.tensor([image_key(im) for im in images], dtype=torch.long)
        return batch

    def collate(
        self, parsed: list[dict[str, Any]], kept: list[Mapping[str, Any]], skipped: int
    ) -> dict[str, Any]:
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
