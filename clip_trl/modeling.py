"""The small surface we need from a CLIP-like dual encoder, and how to load one.

We rely on `get_image_features`, `get_text_features` and a `logit_scale` parameter (transformers'
`CLIPModel`, `SiglipModel`, peft wrappers of them, and lookalikes). During training we go through the
model's `forward` instead, so that `DistributedDataParallel` sees the forward it expects.
"""

from __future__ import annotations

import os
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn

CLIP_LIKE_ATTRIBUTES = ("get_image_features", "get_text_features", "logit_scale")


def unwrap(model: nn.Module) -> nn.Module:
    """Strip DDP / `torch.compile` wrappers (peft wrappers are kept: they forward attributes)."""
    while True:
        if hasattr(model, "module") and isinstance(model, (nn.parallel.DistributedDataParallel, nn.DataParallel)):
            model = model.module
        elif hasattr(model, "_orig_mod"):
            model = model._orig_mod
        else:
            return model


def check_clip_like(model: nn.Module) -> None:
    """Raise a `TypeError` naming what is missing when `model` is not a CLIP-style dual encoder."""
    inner = unwrap(model)
    missing = [name for name in CLIP_LIKE_ATTRIBUTES if not hasattr(inner, name)]
    if missing:
        raise TypeError(
            f"{type(inner).__name__} is not a CLIP-like dual encoder: it has no {', '.join(missing)}. "
            "clip_trl trains models with `get_image_features`, `get_text_features` and a `logit_scale` "
            "parameter, such as transformers' `CLIPModel` (e.g. 'openai/clip-vit-base-patch32')."
        )


def _features(output: Any) -> torch.Tensor:
    # transformers 5 returns a ModelOutput whose `pooler_output` is the projected embedding; 4.x a tensor.
    if isinstance(output, torch.Tensor):
        return output
    for name in ("image_embeds", "text_embeds", "pooler_output"):
        value = getattr(output, name, None)
        if value is not None:
            return value
    return output[0]


def image_features(model: nn.Module, pixel_values: torch.Tensor) -> torch.Tensor:
    """Projected (unnormalised) image embeddings."""
    return _features(unwrap(model).get_image_features(pixel_values=pixel_values))


def text_features(model: nn.Module, input_ids: torch.Tensor, attention_mask: torch.Tensor | None = None) -> torch.Tensor:
    """Projected (unnormalised) text embeddings."""
    return _features(unwrap(model).get_text_features(input_ids=input_ids, attention_mask=attention_mask))


def encode_pair(
    model: nn.Module, pixel_values: torch.Tensor, input_ids: torch.Tensor, attention_mask: torch.Tensor | None
) -> tuple[torch.Tensor, torch.Tensor]:
    """L2-normalised image and text embeddings from one call of the model's `forward`.

    The image and text batches may differ in size (e.g. B images against K candidate captions).
    """
    output = model(pixel_values=pixel_values, input_ids=input_ids, attention_mask=attention_mask)
    image_embeds = getattr(output, "image_embeds", None)
    text_embeds = getattr(output, "text_embeds", None)
    if image_embeds is None or text_embeds is None:  # a lookalike whose forward differs: use the towers
        image_embeds = image_features(model, pixel_values)
        text_embeds = text_features(model, input_ids, attention_mask)
    return F.normalize(image_embeds, dim=-1), F.normalize(text_embeds, dim=-1)


def logit_scale(model: nn.Module) -> nn.Parameter:
    """The model's log-temperature parameter (`exp(logit_scale)` multiplies cosine similarities)."""
    return unwrap(model).logit_scale


def logit_bias(model: nn.Module) -> torch.Tensor | None:
    return getattr(unwrap(model), "logit_bias", None)


def tower_modules(model: nn.Module, tower: str) -> list[nn.Module]:
    """The submodules that make up the vision or the text tower (encoder + projection)."""
    inner = unwrap(model)
    names = {
        "vision": ("vision_model", "visual_projection"),
        "text": ("text_model", "text_projection"),
    }[tower]
    modules = [getattr(inner, name) for name in names if getattr(inner, name, None) is not None]
    if not modules:
        raise ValueError(
            f"Cannot find the {tower} tower of {type(inner).__name__} (looked for {', '.join(names)}); "
            f"freeze it yourself with `requires_grad_(False)` and leave `freeze_{tower}=False`."
        )
    return modules


def is_local_path(name_or_path: str | os.PathLike) -> bool:
    return os.path.isdir(os.fspath(name_or_path))
