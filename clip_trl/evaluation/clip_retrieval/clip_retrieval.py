"""CLIP retrieval recall@k as an `evaluate` module.

This file is loaded by `evaluate.load(<this folder>)`, which copies it into evaluate's module cache and
imports it on its own, so it depends only on numpy, datasets and evaluate (not on clip_trl). Its numbers
match `clip_trl.evaluation.scores.retrieval_scores`, including the tie convention.
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from typing import Any

import datasets
import evaluate
import numpy as np

_DESCRIPTION = """\
Recall@k for image-text retrieval with a CLIP-style dual encoder, in both directions over a whole
evaluation set.

Each example is one image (the image-to-text query): `predictions` holds its similarity to each of the M
texts (one row of the N x M similarity matrix, every row the same length) and `references` the indices
of its positive texts (several for COCO-style data). Text-to-image queries are the M columns of the same
matrix, with positives read from the transpose, so both directions come from one compute call.

A query is a hit at k when any of its positives is in its top k (the CLIP paper convention). Ties count
against the query: it is a hit only when fewer than k negatives score at least as high as its best
positive. A k at least as large as the candidate count is clamped, giving recall 1.0.
"""

_KWARGS_DESCRIPTION = """
Args:
    predictions (`list[list[float]]`): for each image, its similarity to every text (an N x M matrix).
    references (`list[list[int]]`): for each image, the indices (in [0, M)) of its positive texts.
    ks (`int` or `Iterable[int]`, defaults to `(1, 5, 10)`): the cut-offs k.
    direction (`str`, defaults to `"both"`): `"both"`, `"image_to_text"` or `"text_to_image"`. Every
        query of a computed direction needs at least one positive.

Returns:
    `dict[str, float]`: `image_to_text_recall@{k}` and/or `text_to_image_recall@{k}` for each k.

Examples:
    >>> import evaluate
    >>> from clip_trl.evaluation import CLIP_RETRIEVAL_METRIC_PATH
    >>> metric = evaluate.load(CLIP_RETRIEVAL_METRIC_PATH)
    >>> metric.compute(predictions=[[0.9, 0.1], [0.7, 0.3]], references=[[0], [1]], ks=[1, 2])
    {'image_to_text_recall@1': 0.5, 'image_to_text_recall@2': 1.0, 'text_to_image_recall@1': 1.0, \
'text_to_image_recall@2': 1.0}
"""

_CITATION = """\
@inproceedings{radford2021learning,
  title     = {Learning Transferable Visual Models From Natural Language Supervision},
  author    = {Radford, Alec and Kim, Jong Wook and Hallacy, Chris and Ramesh, Aditya and Goh, Gabriel and
               Agarwal, Sandhini and Sastry, Girish and Askell, Amanda and Mishkin, Pamela and Clark, Jack and
               Krueger, Gretchen and Sutskever, Ilya},
  booktitle = {Proceedings of the 38th International Conference on Machine Learning},
  pages     = {8748--8763},
  year      = {2021}
}
"""

_DIRECTIONS = ("both", "image_to_text", "text_to_image")


def _cutoffs(ks: int | Iterable[int]) -> list[int]:
    values = [ks] if isinstance(ks, int) else list(ks)
    checked: list[int] = []
    for k in values:
        if isinstance(k, bool) or not isinstance(k, (int, np.integer)) or k < 1:
            raise ValueError(f"Every k must be a positive integer, got {k!r}.")
        if int(k) not in checked:
            checked.append(int(k))
    return checked


def _ranks(scores: np.ndarray, positives: np.ndarray, query: str, candidate: str) -> np.ndarray:
    """Per query: how many negatives score at least as high as its best positive (ties count against it)."""
    empty = np.flatnonzero(~positives.any(axis=1))
    if empty.size:
        raise ValueError(
            f"{empty.size} {query} queries have no positive {candidate} (first: {query} {int(empty[0])}); "
            "recall is undefined for them."
        )
    best = np.where(positives, scores, -np.inf).max(axis=1, keepdims=True)
    return ((scores >= best) & ~positives).sum(axis=1)


@evaluate.utils.file_utils.add_start_docstrings(_DESCRIPTION, _KWARGS_DESCRIPTION)
class ClipRetrieval(evaluate.Metric):
    """Image-to-text and text-to-image recall@k from a similarity matrix and positive indices."""

    def _info(self) -> evaluate.MetricInfo:
        return evaluate.MetricInfo(
            module_type="metric",
            description=_DESCRIPTION,
            citation=_CITATION,
            inputs_description=_KWARGS_DESCRIPTION,
            # float64 so that float32 scores arrive unchanged (a float32 column would round float64 inputs
            # and could create ties that the caller's own scores do not have).
            features=datasets.Features(
                {
                    "predictions": datasets.Sequence(datasets.Value("float64")),
                    "references": datasets.Sequence(datasets.Value("int64")),
                }
            ),
            reference_urls=["https://arxiv.org/abs/2103.00020"],
        )

    def _compute(
        self,
        predictions: Sequence[Sequence[float]],
        references: Sequence[Sequence[int]],
        ks: int | Iterable[int] = (1, 5, 10),
        direction: str = "both",
    ) -> dict[str, Any]:
        if direction not in _DIRECTIONS:
            raise ValueError(f"`direction` must be one of {_DIRECTIONS}, got {direction!r}.")
        cutoffs = _cutoffs(ks)
        if len(predictions) == 0:
            raise ValueError("There are no predictions: recall needs at least one image.")
        lengths = {len(row) for row in predictions}
        if len(lengths) != 1 or 0 in lengths:
            raise ValueError(
                "Every prediction row must hold one score per text, all rows the same non-zero length; got "
                f"lengths {sorted(lengths)[:10]}."
            )
        scores = np.asarray(predictions, dtype=np.float64)
        if not np.isfinite(scores).all():
            raise ValueError("`predictions` contains NaN or infinite scores.")
        n, m = scores.shape
        positives = np.zeros((n, m), dtype=bool)
        for i, indices in enumerate(references):
            indices = np.asarray(indices, dtype=np.int64)
            if indices.size and (indices.min() < 0 or indices.max() >= m):
                raise ValueError(f"references[{i}] = {indices.tolist()} has indices outside [0, {m}).")
            positives[i, indices] = True

        results: dict[str, Any] = {}
        if direction in ("both", "image_to_text"):
            ranks = _ranks(scores, positives, "image", "text")
            results.update({f"image_to_text_recall@{k}": int((ranks < k).sum()) / n for k in cutoffs})
        if direction in ("both", "text_to_image"):
            ranks = _ranks(scores.T, positives.T, "text", "image")
            results.update({f"text_to_image_recall@{k}": int((ranks < k).sum()) / m for k in cutoffs})
        return results
