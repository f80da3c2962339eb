"""`evaluate` modules shipped inside clip_trl, loadable offline by path.

Example:

```python
>>> import evaluate
>>> from clip_trl.metrics import CLIP_RETRIEVAL_METRIC_PATH
>>> metric = evaluate.load(CLIP_RETRIEVAL_METRIC_PATH)  # doctest: +SKIP
>>> metric.compute(predictions=[[0.9, 0.1], [0.2, 0.8]], references=[[0], [1]], ks=[1])  # doctest: +SKIP
{'image_to_text_recall@1': 1.0, 'text_to_image_recall@1': 1.0}

```
"""

from __future__ import annotations

import os

__all__ = ["CLIP_RETRIEVAL_METRIC_PATH"]

# `evaluate.load` takes a folder holding `<folder name>.py`; loading by path needs no Hub access.
CLIP_RETRIEVAL_METRIC_PATH: str = os.path.join(os.path.dirname(os.path.abspath(__file__)), "clip_retrieval")
