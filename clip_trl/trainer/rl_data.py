"""Batches for the RL trainer: query images (or captions), and each query's candidate set.

Candidate texts are de-duplicated across the batch and tokenised once, in the DataLoader worker, so
the step embeds every distinct candidate a single time however many samples are drawn.
"""

from __future__ import annotations

import logging
from collections.abc import Mapping, Sequence
from typing import TYPE_CHECKING, Any

import torch

from clip_trl.data.collator import ROW_INDEX_KEY, ClipDataCollator
from clip_trl.data.rows import BadRowError, check_caption, content_key

logger = logging.getLogger(__name__)

if TYPE_CHECKING:
    from clip_trl.rewards.scoring import RewardScores


class _UniqueTexts:
    """An ordered set of strings: `add` returns each string's position."""

    def __init__(self) -> None:
        self.items: list[str] = []
        self._index: dict[str, int] = {}

    def add(self, text: str) -> int:
        if text not in self._index:
            self._index[text] = len(self.items)
            self.items.append(text)
        return self._index[text]


def _dedupe(values: Sequence[str]) -> list[str]:
    return list(dict.fromkeys(values))


class ClipRLDataCollator(ClipDataCollator):
    """Collate rows into an RL batch.

    Output keys, besides `pixel_values` and the bookkeeping of [`ClipDataCollator`]:
        - `input_ids` / `attention_mask`: the batch's distinct texts (candidates, and the captions when needed);
        - `candidate_index` `[B, K]`: for each query, its candidates' positions in those texts
          (`text_to_image`: in the batch's distinct images), padded with -1;
        - `target_index` `[B]`: the ground truth's position in the query's candidate list, -1 if unknown;
        - `caption_index` `[B]`: each row's caption among the texts (-1 when captions are not needed);
        - `distinct_image_rows` `[M]` (`text_to_image`): the row holding each of the batch's distinct images
          (candidate `k` is the image of row `distinct_image_rows[k]`);
        - `candidates` (list of lists of str: the names rewards receive), `candidate_texts` (the texts the policy
          scores: with `candidate_labels` the templated prompts, else the names), `ground_truth` (list), `rows`
          (decoded rows for rewards);
        - `candidate_rows` (in-batch sets only): for each candidate, the columns of the row it comes from, less the
          image.

    With `candidates="retrieved"` the candidate sets depend on the model, so the trainer builds them (and the
    texts, `candidate_index`, `target_index`, `candidate_texts`) in the step; the batch then carries the images,
    each row's `captions` (list of str), `ground_truth` and `rows`.
    """

    def __init__(
        self,
        processing_class: Any,
        *,
        candidates: str = "in_batch",
        direction: str = "image_to_text",
        candidate_column: str | None = None,
        candidate_labels: Sequence[str] | None = None,
        label_template: str = "a photo of a {}.",
        label_column: str = "label",
        include_captions: bool = False,
        **kwargs: Any,
    ) -> None:
        super().__init__(processing_class, keep_rows=True, **kwargs)
        self.candidates = candidates
        self.direction = direction
        self.candidate_column = candidate_column
        self.candidate_labels = list(candidate_labels or [])
        self.label_template = label_template
        self.label_column = label_column
        self.include_captions = include_captions or direction == "text_to_image"
        self.require_caption = candidates in ("in_batch", "retrieved") or self.include_captions

    def _label(self, row: Mapping[str, Any], index: int | None) -> str | None:
        if self.label_column not in row or row[self.label_column] is None:
            return None
        value = row[self.label_column]
        if isinstance(value, int) and not isinstance(value, bool):
            if not 0 <= value < len(self.candidate_labels):
                raise BadRowError(
                    index,
                    self.label_column,
                    f"label index {value} is outside candidate_labels (0..{len(self.candidate_labels) - 1})",
                )
            return self.candidate_labels[value]
        if value not in self.candidate_labels:
            raise BadRowError(index, self.label_column, f"label {value!r} is not one of `candidate_labels`")
        return value

    def _column_candidates(self, row: Mapping[str, Any], index: int | None) -> list[str]:
        column = self.candidate_column
        value = row.get(column)
        if not isinstance(value, (list, tuple)):
            raise BadRowError(
                index, column, f"expected a list of candidate captions, got {type(value).__name__}"
            )
        texts = _dedupe([check_caption(v, row=index, column=f"{column}[{i}]") for i, v in enumerate(value)])
        if len(texts) < 2:
            raise BadRowError(
                index, column, f"a candidate set needs at least 2 distinct captions, got {texts}"
            )
        if len(texts) < len(value) and not getattr(self, "_warned_duplicates", False):
            self._warned_duplicates = (
                True  # once per collator (per DataLoader worker): a hint, not a log flood
            )
            logger.warning(
                f"Row {index}, column '{column}': duplicate candidates are counted once (the policy chooses among "
                f"distinct captions): {len(value)} given, {len(texts)} kept: {texts}. Further rows with duplicates "
                "are not reported."
            )
        return texts

    def parse_row(self, row: Mapping[str, Any]) -> dict[str, Any]:
        parsed = super().parse_row(row)
        index = row.get(ROW_INDEX_KEY)
        if self.candidates == "column":
            parsed["candidates"] = self._column_candidates(row, index)
        elif self.candidates == "labels":
            parsed["label"] = self._label(row, index)
        return parsed

    def collate(
        self, parsed: list[dict[str, Any]], kept: list[Mapping[str, Any]], skipped: int
    ) -> dict[str, Any]:
        batch = self.image_batch(parsed, skipped)
        if not parsed:
            return batch
        keys = batch["image_keys"].tolist()
        if self.candidates == "retrieved":
            batch["captions"] = [list(p["captions"]) for p in parsed]
            batch["ground_truth"] = [
                p["captions"][0] if len(p["captions"]) == 1 else list(p["captions"]) for p in parsed
            ]
            batch["rows"] = [
                {k: v for k, v in row.items() if k != ROW_INDEX_KEY} | {self.image_column: p["image"]}
                for row, p in zip(kept, parsed)
            ]
            return batch
        texts = _UniqueTexts()
        candidate_positions: list[list[int]] = []
        completions: list[list[str]] = []
        scored_texts: list[list[str]] = []
        ground_truth: list[Any] = []
        targets: list[int] = []
        source_rows: list[int] | None = None  # the row each in-batch candidate comes from

        if self.direction == "text_to_image":
            first_row_of_image: dict[int, int] = {}
            for i, key in enumerate(keys):
                first_row_of_image.setdefault(key, i)
            distinct = list(first_row_of_image.values())  # rows holding each distinct image
            image_position = {keys[row]: pos for pos, row in enumerate(distinct)}
            batch["distinct_image_rows"] = torch.tensor(distinct)
            names = [parsed[row]["caption"] for row in distinct]  # an image is named by its caption
            source_rows = distinct
            for p, key in zip(parsed, keys):
                candidate_positions.append(list(range(len(distinct))))
                completions.append(names)
                scored_texts.append(names)
                ground_truth.append(p["caption"])
                targets.append(image_position[key])
        else:
            if self.candidates == "in_batch":
                first_row_of_caption: dict[str, int] = {}
                for i, p in enumerate(parsed):
                    first_row_of_caption.setdefault(p["caption"], i)
                batch_captions = list(first_row_of_caption)
                source_rows = list(first_row_of_caption.values())
            for p in parsed:
                if self.candidates == "in_batch":
                    names, prompts, truth = batch_captions, batch_captions, p["caption"]
                elif self.candidates == "column":
                    names = prompts = p["candidates"]
                    truth = p["captions"][0] if len(p["captions"]) == 1 else (p["captions"] or None)
                else:
                    names = self.candidate_labels
                    prompts = [self.label_template.format(label) for label in names]
                    truth = p["label"]
                candidate_positions.append([texts.add(t) for t in prompts])
                completions.append(names)
                scored_texts.append(prompts)
                ground_truth.append(truth)
                truths = truth if isinstance(truth, list) else [truth]
                targets.append(next((names.index(t) for t in truths if t in names), -1))

        if self.include_captions:
            batch["caption_index"] = torch.tensor([texts.add(p["caption"]) for p in parsed])
            batch["caption_keys"] = torch.tensor(
                [content_key(p["caption"]) for p in parsed], dtype=torch.long
            )
        width = max(len(c) for c in candidate_positions)
        if width < 2:  # only in-batch sets can be this small: column and label sets are checked to have 2
            logger.warning(
                f"A batch of {len(parsed)} row(s) (from row {parsed[0]['index']}) has a single distinct "
                f"{'image' if self.direction == 'text_to_image' else 'caption'}, so every in-batch candidate set of "
                "this step holds one choice and the policy gradient is zero (only the KL and entropy terms act). "
                "A last partial batch of 1 row does this: set `dataloader_drop_last=True`; so do batches whose rows "
                "all share a caption, or lost their other rows to `skip_bad_rows`."
            )
        batch["candidate_index"] = torch.tensor([c + [-1] * (width - len(c)) for c in candidate_positions])
        batch["target_index"] = torch.tensor(targets)
        if texts.items:
            batch.update(self.tokenize(texts.items))
        batch["candidates"] = completions
        batch["candidate_texts"] = scored_texts
        batch["ground_truth"] = ground_truth
        batch["rows"] = [
            {k: v for k, v in row.items() if k != ROW_INDEX_KEY} | {self.image_column: p["image"]}
            for row, p in zip(kept, parsed)
        ]
        if source_rows is not None:
            # Rewards get the chosen candidate's row without its image (the query's image is `images`).
            batch["candidate_rows"] = [
                {k: v for k, v in batch["rows"][r].items() if k != self.image_column} for r in source_rows
            ]
        return batch


class Rollout:
    """What one batch's rollout fixed: actions, rewards, advantages and `log π_old` (reused by later updates)."""

    def __init__(
        self,
        actions: torch.Tensor | None,
        rewards: torch.Tensor,
        advantages: torch.Tensor | None,
        old_log_probs: torch.Tensor,
        candidate_inputs: dict[str, Any],
        entries: list[tuple[int, int]],
        scores: RewardScores,
        row_index: torch.Tensor | None = None,
    ) -> None:
        self.actions = actions
        self.rewards = rewards
        self.advantages = advantages
        self.old_log_probs = old_log_probs
        self.candidate_inputs = candidate_inputs
        self.row_index = row_index
        self.entries = entries  # the (query, candidate) pairs scored, and their scores
        self.scores = scores
