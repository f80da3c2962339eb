"""Preference pairs from captioned data: each image's own caption against a near miss.

A near miss is a caption of *another* row from the same group (e.g. the same CLDR emoji group) that shares the
most words with the right one — "grinning face with big eyes" against "grinning face with smiling eyes" rather
than against "flag: france". Such pairs carry a real preference (the right name beats a plausible wrong one)
that in-batch contrastive training rarely meets, since random batches seldom hold two such neighbours.
"""

from __future__ import annotations

import random
from collections.abc import Sequence
from typing import Any

__all__ = ["near_miss_pairs"]


def _words(text: str) -> set[str]:
    return set(text.lower().replace(":", " ").replace(",", " ").split())


def near_miss_pairs(
    dataset: Any,
    *,
    caption_column: str = "caption",
    group_column: str | None = "group",
    pool: Sequence[tuple[str, Any]] | None = None,
    num_rejected: int = 1,
    chosen_column: str = "chosen",
    rejected_column: str = "rejected",
    seed: int = 0,
) -> Any:
    r"""
    Add `chosen` (the row's caption) and `rejected` (near-miss captions) columns to a captioned dataset.

    For each row, the candidates are the captions of the pool (default: the dataset's own rows) with the same
    `group_column` value (any row when `group_column` is `None`) and a different caption; the `num_rejected` with
    the largest word overlap (Jaccard) with the row's caption are rejected, ties broken by a seeded shuffle.

    Args:
        dataset (`datasets.Dataset`): rows with `caption_column` (a string) and `group_column`.
        caption_column (`str`), group_column (`str` or `None`): the columns read.
        pool (sequence of `(caption, group)`, *optional*): where rejected captions come from, e.g. the captions of
            every split, so that held-out rows get near misses as hard as the training rows'.
        num_rejected (`int`): rejected captions per row; 1 gives a string column, more a list column.
        chosen_column, rejected_column (`str`): names of the added columns.
        seed (`int`): seed of the tie-breaking shuffle.

    Returns:
        `datasets.Dataset`: the rows with the two added columns.

    Raises:
        ValueError: a row has no other caption in its group to be rejected (the message names the row and group).

    Example:

    ```python
    >>> import datasets
    >>> from clip_trl.data.preference_pairs import near_miss_pairs
    >>> rows = datasets.Dataset.from_dict({
    ...     "caption": ["grinning face", "grinning cat", "red apple", "green apple", "grinning face with sweat"],
    ...     "group": ["smileys", "smileys", "food", "food", "smileys"]})
    >>> list(near_miss_pairs(rows)["rejected"])
    ['grinning face with sweat', 'grinning face', 'green apple', 'red apple', 'grinning face']

    ```
    """
    if num_rejected < 1:
        raise ValueError(f"`num_rejected` must be at least 1, got {num_rejected}.")
    for column in (caption_column, group_column):
        if column is not None and column not in dataset.column_names:
            raise ValueError(
                f"The dataset has no column {column!r}; columns present: {sorted(dataset.column_names)}."
            )
    groups = dataset[group_column] if group_column else [None] * len(dataset)
    if pool is None:
        pool = list(zip(dataset[caption_column], groups))
    by_group: dict[Any, list[str]] = {}
    for caption, group in pool:
        if caption not in by_group.setdefault(group, []):
            by_group[group].append(caption)
    rng = random.Random(seed)
    rejected: list[Any] = []
    for index, (caption, group) in enumerate(zip(dataset[caption_column], groups)):
        others = [c for c in by_group.get(group, []) if c != caption]
        if not others:
            raise ValueError(
                f"Row {index} ({caption!r}) has no other caption in its group {group!r} to be rejected; give a "
                "larger `pool`, drop such rows, or set `group_column=None`."
            )
        rng.shuffle(others)
        words = _words(caption)
        others.sort(key=lambda c: len(words & _words(c)) / max(len(words | _words(c)), 1), reverse=True)
        rejected.append(others[0] if num_rejected == 1 else others[:num_rejected])
    chosen = list(dataset[caption_column])
    return dataset.add_column(chosen_column, chosen).add_column(rejected_column, rejected)
