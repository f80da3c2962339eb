"""The model card of an online adaptation run's saved weights (episodic adaptation saves none)."""

from __future__ import annotations

import os
from typing import Any

import transformers

import clip_trl

__all__ = ["write_card"]


def write_card(adapter: Any, output_dir: str) -> str:
    """Write `README.md` beside the weights [`ClipTestTimeAdapter.save_model`] saved: what adapted, how, on
    what rewards, and how to load the result."""
    args = adapter.args
    rewards = ", ".join(adapter.rewards.names) if adapter.rewards is not None else "none"
    base = getattr(getattr(adapter.model, "config", None), "_name_or_path", "") or "a CLIP model"
    text = f"""---
library_name: transformers
tags:
- clip_trl
- clip
- test-time-adaptation
---

# Test-time adapted CLIP

{base} adapted online on an unlabelled test stream with `clip_trl.adaptation.ClipTestTimeAdapter`
(objective `{args.objective}`, rewards: {rewards}). These are the moving average (decay {args.ema_decay}) of the
weights after the stream; only `{args.adapt_parameters}` changed.

| setting | value |
| --- | --- |
| steps per batch | {args.steps} |
| learning rate | {args.learning_rate} |
| batch size | {args.batch_size} |
| top-k candidates | {args.top_k} |
| advantage | {args.advantage} |
| views (kept) | {args.n_views} ({args.num_selected_views}) |
| reset every | {args.reset_every or "never"} |

## Use

```python
from transformers import AutoModel, AutoProcessor

model = AutoModel.from_pretrained("{output_dir}")
processor = AutoProcessor.from_pretrained("{output_dir}")
```

Framework versions: clip_trl {clip_trl.__version__}, transformers {transformers.__version__}.
"""
    path = os.path.join(output_dir, "README.md")
    with open(path, "w") as handle:
        handle.write(text)
    return path
