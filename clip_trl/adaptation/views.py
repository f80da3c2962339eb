r"""Augmented views of a test input and the confidence selection of TPT.

Test-time prompt tuning (Shu et al., NeurIPS 2022, "Test-Time Prompt Tuning for Zero-Shot Generalization in
Vision-Language Models") makes `n_views` random views of one test image and keeps the fraction whose
prediction has the lowest entropy: views that cut the object away give flat, uninformative predictions, and
averaging over them would only add noise. RLCF adapts on the same selected views.

A view here is a random square crop covering `min_crop_scale` to all of the image's area, resized back to the
image's size, flipped left-right with probability 1/2. View 0 is always the image itself.

Example:

```python
>>> import torch
>>> from PIL import Image
>>> from clip_trl.adaptation.views import augmented_views, confident_views
>>> views = augmented_views(Image.new("RGB", (32, 32), "red"), 4, torch.Generator().manual_seed(0))
>>> len(views), views[0].size
(4, (32, 32))
>>> log_probs = torch.log_softmax(torch.tensor([[0.0, 0.0], [5.0, 0.0], [1.0, 0.0], [0.0, 9.0]]), dim=-1)
>>> confident_views(log_probs, 0.5).tolist()  # the two most peaked predictions
[3, 1]

```
"""

from __future__ import annotations

import math

import torch
from PIL import Image

from clip_trl.losses.policy import entropy

__all__ = ["augmented_views", "confident_views", "num_selected"]


def augmented_views(
    image: Image.Image,
    n_views: int,
    generator: torch.Generator,
    min_crop_scale: float = 0.5,
    flip: bool = True,
) -> list[Image.Image]:
    """`n_views` views of `image` (the first is `image` itself); randomness from `generator` only."""
    if n_views < 1:
        raise ValueError(f"`n_views` must be at least 1, got {n_views}.")
    if not 0.0 < min_crop_scale <= 1.0:
        raise ValueError(f"`min_crop_scale` must be in (0, 1], got {min_crop_scale}.")
    width, height = image.size
    views = [image]
    for _ in range(n_views - 1):
        draws = torch.rand(4, generator=generator).tolist()
        scale = min_crop_scale + (1.0 - min_crop_scale) * draws[0]
        side_w = max(1, round(width * math.sqrt(scale)))
        side_h = max(1, round(height * math.sqrt(scale)))
        left = int(draws[1] * (width - side_w + 1))
        top = int(draws[2] * (height - side_h + 1))
        view = image.crop((left, top, left + side_w, top + side_h)).resize((width, height), Image.BICUBIC)
        if flip and draws[3] < 0.5:
            view = view.transpose(Image.FLIP_LEFT_RIGHT)
        views.append(view)
    return views


def num_selected(n_views: int, fraction: float) -> int:
    """How many of `n_views` views [`confident_views`] keeps: `round(fraction · n_views)`, at least 1."""
    return max(1, min(n_views, round(fraction * n_views)))


def confident_views(log_probs: torch.Tensor, fraction: float) -> torch.Tensor:
    """Indices of the `fraction` of views (rows of `log_probs`, `[V, C]`) with the lowest prediction entropy,
    most confident first (ties: the lower index first)."""
    if not 0.0 < fraction <= 1.0:
        raise ValueError(f"`selection_fraction` must be in (0, 1], got {fraction}.")
    keep = num_selected(log_probs.shape[0], fraction)
    order = torch.sort(entropy(log_probs.detach().float()), stable=True).indices
    return order[:keep]
