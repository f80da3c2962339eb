"""Batches for the DPO trainer: images, and each image's chosen and rejected captions."""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

import torch

from clip_trl.data.collator import ROW_INDEX_KEY, ClipDataCollator
from clip_trl.data.rows import BadRowError, check_caption


class ClipDPODataCollator(ClipDataCollator):
    """Collate preference rows (`image`, `chosen`, `rejected`) into a batch.

    The batch's distinct captions (chosen and rejected) are tokenised once. Output keys, besides `pixel_values`
    and the bookkeeping of [`~clip_trl.data.collator.ClipDataCollator`]:

    - `input_ids` / `attention_mask`: the batch's distinct captions;
    - `chosen_index` `[B]`: each row's chosen caption among them;
    - `rejected_index` `[B, R]`: each row's rejected captions among them, padded with -1.

    A row whose rejected caption equals its chosen one, or whose rejected list is empty, is a
    [`~clip_trl.data.rows.BadRowError`] naming the row and column (or skipped and counted with `skip_bad_rows`).
    """

    def __init__(self, processing_class: Any, *, rejected_column: str = "rejected", **kwargs: Any) -> None:
        super().__init__(processing_class, **kwargs)
        self.rejected_column = rejected_column

    def parse_row(self, row: Mapping[str, Any]) -> dict[str, Any]:
        index = row.get(ROW_INDEX_KEY)
        if self.rejected_column not in row:
            raise BadRowError(
                index,
                self.rejected_column,
                f"the column is missing; the row has {sorted(set(row) - {ROW_INDEX_KEY})}",
            )
        parsed = super().parse_row(row)
        chosen = row[self.caption_column]
        if not isinstance(chosen, str):
            raise BadRowError(
                index,
                self.caption_column,
                f"the chosen caption must be one string, got {type(chosen).__name__} {chosen!r}",
            )
        value = row[self.rejected_column]
        if isinstance(value, (list, tuple)):
            if not value:
                raise BadRowError(index, self.rejected_column, "the list of rejected captions is empty")
            columns = [f"{self.rejected_column}[{i}]" for i in range(len(value))]
        else:
            value, columns = [value], [self.rejected_column]
        rejected = [check_caption(v, row=index, column=c) for v, c in zip(value, columns)]
        for text, column in zip(rejected, columns):
            if text == chosen:
                raise BadRowError(
                    index,
                    column,
                    f"the rejected caption equals the chosen one ({chosen!r}), so the pair expresses no preference",
                )
        parsed["rejected"] = rejected
        return parsed

    def collate(
        self, parsed: list[dict[str, Any]], kept: Sequence[Mapping[str, Any]], skipped: int
    ) -> dict[str, Any]:
        batch = self.image_batch(parsed, skipped)
        if not parsed:
            return batch
        position: dict[str, int] = {}
        chosen = [position.setdefault(p["caption"], len(position)) for p in parsed]
        rejected = [[position.setdefault(t, len(position)) for t in p["rejected"]] for p in parsed]
        width = max(len(r) for r in rejected)
        batch.update(self.tokenize(list(position)))
        batch["chosen_index"] = torch.tensor(chosen)
        batch["rejected_index"] = torch.tensor([r + [-1] * (width - len(r)) for r in rejected])
        return batch
