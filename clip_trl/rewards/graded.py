r"""Partial credit by kind: a reward that knows something the captions do not, and its held-out metric.

A caption is either right or wrong for contrastive training; many tasks grade mistakes. [`GradedReward`] pays
1 for the right answer, `partial` (0.5) for a wrong answer of the same *kind* (the emoji's CLDR `group`, a
product's category) and 0 otherwise. [`greedy_graded_reward`] is the matching held-out metric: the mean graded
reward of the model's greedy choice among every caption of the evaluation set.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

import numpy as np

from clip_trl.evaluation.embeddings import EmbeddingSet
from clip_trl.rewards.registry import register_reward


class GradedReward:
    """1 for the ground truth, `partial` for a wrong choice of the same kind, 0 otherwise.

    The kinds come either from `kind_of` (a mapping from a completion / ground-truth string to its kind) or, for
    in-batch candidate sets, from a dataset column: the chosen candidate's row (`chosen_row[column]`, which the
    RL trainer passes) against the query row's own value (`kwargs[column]`). `None` where a kind is unknown and
    the choice is wrong (the reward does not apply).

    Args:
        column (`str`, defaults to `"group"`): the column holding each row's kind.
        kind_of (`Mapping[str, str]`, *optional*): kind of each completion / ground truth instead of the column.
        partial (`float`, defaults to 0.5): the reward of a wrong choice of the right kind.

    Example:

    ```python
    >>> from clip_trl.rewards.graded import GradedReward
    >>> reward = GradedReward(kind_of={"cat": "animal", "dog": "animal", "car": "vehicle"})
    >>> reward(["cat", "dog", "car"], ground_truth=["cat", "cat", "cat"])
    [1.0, 0.5, 0.0]

    ```
    """

    def __init__(
        self, column: str = "group", kind_of: Mapping[str, str] | None = None, partial: float = 0.5
    ) -> None:
        self.column = column
        self.kind_of = dict(kind_of) if kind_of is not None else None
        self.partial = float(partial)
        self.__name__ = f"graded_{column}" if kind_of is None else "graded"

    def __call__(
        self, completions: list[str], ground_truth: Sequence[Any], **kwargs: Any
    ) -> list[float | None]:
        rewards: list[float | None] = []
        for i, (completion, truth) in enumerate(zip(completions, ground_truth)):
            truths = truth if isinstance(truth, (list, tuple)) else [truth]
            if completion in truths:
                rewards.append(1.0)
                continue
            if self.kind_of is not None:
                chosen_kind, own_kind = self.kind_of.get(completion), self.kind_of.get(truths[0])
            else:
                chosen_row = (kwargs.get("chosen_row") or [None] * len(completions))[i]
                own = kwargs.get(self.column)
                if chosen_row is None or own is None:
                    raise ValueError(
                        f"GradedReward(column={self.column!r}) needs the `{self.column}` column and `chosen_row` "
                        "(in-batch candidate sets); for other candidate sets pass `kind_of`."
                    )
                chosen_kind, own_kind = chosen_row.get(self.column), own[i]
            if chosen_kind is None or own_kind is None:
                rewards.append(None)
            else:
                rewards.append(self.partial if chosen_kind == own_kind else 0.0)
        return rewards


def greedy_graded_reward(embeddings: EmbeddingSet, kinds: Sequence[str], partial: float = 0.5) -> float:
    """Mean graded reward of each image's greedy choice among every caption of the set.

    `kinds[i]` is row `i`'s kind; a caption's kind is that of the first row holding it. A hit (any of the row's
    captions) scores 1, a wrong caption of the same kind `partial`, else 0.

    Example:

    ```python
    >>> import torch
    >>> from clip_trl.evaluation.embeddings import EmbeddingSet, index_captions
    >>> from clip_trl.rewards.graded import greedy_graded_reward
    >>> captions, positives, first = index_captions(["a cat", "a dog", "a car"])
    >>> images = torch.eye(3)[[0, 0, 0]]  # every image looks like "a cat"
    >>> greedy_graded_reward(EmbeddingSet(images, torch.eye(3), captions, positives, first),
    ...                      ["animal", "animal", "vehicle"])
    0.5

    ```
    """
    if len(kinds) != embeddings.num_images:
        raise ValueError(f"{len(kinds)} kinds for {embeddings.num_images} images; give one kind per row.")
    caption_kind: dict[int, str] = {}
    for row, caption in enumerate(embeddings.first_caption.tolist()):
        caption_kind.setdefault(caption, kinds[row])
    for row in range(embeddings.num_images):
        for caption in embeddings.positives[row].nonzero().flatten().tolist():
            caption_kind.setdefault(caption, kinds[row])
    greedy = (embeddings.image_embeds.float() @ embeddings.text_embeds.float().T).argmax(dim=1).tolist()
    scores = [
        1.0 if embeddings.positives[row, choice] else partial if caption_kind[choice] == kinds[row] else 0.0
        for row, choice in enumerate(greedy)
    ]
    return float(np.mean(scores))


# Partial credit for a caption of the right `group`: the offline default's recipe.
register_reward("graded_group")(GradedReward(column="group"))
