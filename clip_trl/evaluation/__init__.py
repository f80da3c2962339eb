"""Retrieval, in-batch and zero-shot metrics for CLIP-style dual encoders, usable without a trainer.

The work splits in two layers:

1. [`compute_embeddings`] (in `clip_trl.evaluation.embeddings`) runs the model once over a dataset and returns
   an [`EmbeddingSet`]: one L2-normalised embedding per image (dataset row), one per *unique* caption string,
   and the image-caption positives as an index list (`positive_pairs`, `clip_trl.evaluation.positives`; the dense
   boolean matrix `positives` is built on demand). Every metric below is a cheap function of that set, so a
   trainer encodes its eval set once and derives all metrics from it ([`evaluate_all`],
   [`scores_from_embeddings`]).
2. Pure functions on tensors ([`retrieval_scores`], [`in_batch_accuracy_from_embeddings`],
   [`zero_shot_scores`], in `clip_trl.evaluation.scores`) that tests and users can drive with hand-built
   embeddings. Recall@k reads the similarity matrix once, in tiles, keeping each query's best negatives
   (`clip_trl.evaluation.ranking`; memory bounded by a tile), or goes through FAISS (`faiss_ranking`, optional).

The functions of a model on a dataset ([`retrieval_metrics`], [`in_batch_accuracy`], [`zero_shot_accuracy`],
[`evaluate_all`]) are in `clip_trl.evaluation.metrics`; every public name is re-exported here.

Metric names are the library's public ones (see the Evaluation metrics docs page): `image_to_text_recall@{k}`,
`text_to_image_recall@{k}`, `in_batch_accuracy` and `zero_shot_accuracy`.

Tie convention (all metrics): *ties count against the query*. A query is a hit at `k` only when fewer than
`k` negative candidates score **at least as high** as its best-scoring positive. A positive that ties with a
negative is therefore ranked behind it, so a degenerate model (e.g. one that maps everything to the same
vector) scores 0 instead of being rewarded by a lucky index order. Ties *between positives* never hurt: any
positive in the top `k` is a hit. The same rule makes top-1 metrics (in-batch and zero-shot accuracy) a hit
only when a positive strictly beats every negative; with real-valued scores this differs from a plain
`argmax` only on exact ties."""

from __future__ import annotations

import os

from clip_trl.evaluation.embeddings import EmbeddingSet, compute_embeddings, index_captions
from clip_trl.evaluation.metrics import evaluate_all, in_batch_accuracy, retrieval_metrics, zero_shot_accuracy
from clip_trl.evaluation.scores import (
    in_batch_accuracy_from_embeddings,
    retrieval_scores,
    scores_from_embeddings,
    zero_shot_scores,
)

# The same metrics as an `evaluate` module: `evaluate.load` takes a folder holding `<folder name>.py`; loading it
# by path needs no Hub access.
CLIP_RETRIEVAL_METRIC_PATH: str = os.path.join(os.path.dirname(os.path.abspath(__file__)), "clip_retrieval")
"""The folder of the `clip_retrieval` `evaluate` module (recall@k in both directions, the same numbers as
[`retrieval_scores`]): `evaluate.load(CLIP_RETRIEVAL_METRIC_PATH)` loads it without Hub access.

Example:

```python
>>> import evaluate
>>> from clip_trl.evaluation import CLIP_RETRIEVAL_METRIC_PATH
>>> metric = evaluate.load(CLIP_RETRIEVAL_METRIC_PATH)  # doctest: +SKIP
>>> metric.compute(predictions=[[0.9, 0.1], [0.2, 0.8]], references=[[0], [1]], ks=[1])  # doctest: +SKIP
{'image_to_text_recall@1': 1.0, 'text_to_image_recall@1': 1.0}

```
"""

__all__ = [
    "CLIP_RETRIEVAL_METRIC_PATH",
    "EmbeddingSet",
    "compute_embeddings",
    "evaluate_all",
    "in_batch_accuracy",
    "in_batch_accuracy_from_embeddings",
    "index_captions",
    "retrieval_metrics",
    "retrieval_scores",
    "scores_from_embeddings",
    "zero_shot_accuracy",
    "zero_shot_scores",
]
