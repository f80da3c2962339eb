"""The stream's plumbing: which parameters adapt, the inputs as a list, per-input seeds, processes."""

from __future__ import annotations

from collections.abc import Iterable
from typing import Any

import numpy as np
import torch
from torch import nn

from clip_trl.adaptation.report import TestTimeResult
from clip_trl.models import modeling

__all__ = ["gather_result", "select_parameters", "stream_items"]


def select_parameters(model: nn.Module, which: str) -> dict[str, nn.Parameter]:
    """The parameters that adapt, by name: the image tower's LayerNorms (`"image_norms"`), the LoRA adapters
    (`"lora"`), a tower (`"image_tower"`, `"text_tower"`) or `"all"`; never the temperature / logit bias."""
    named = dict(model.named_parameters())
    frozen = {id(p) for p in modeling.temperature_parameters(model)}
    if which == "lora":
        chosen = {name: p for name, p in named.items() if "lora_" in name}
    elif which == "all":
        chosen = dict(named)
    else:
        tower = modeling.tower_modules(model, "text" if which == "text_tower" else "vision")
        modules = [m for root in tower for m in root.modules()]
        if which == "image_norms":
            modules = [m for m in modules if isinstance(m, (nn.LayerNorm, nn.GroupNorm, nn.BatchNorm2d))]
        ids = {id(p) for m in modules for p in m.parameters(recurse=which != "image_norms")}
        chosen = {name: p for name, p in named.items() if id(p) in ids}
    return {name: p for name, p in chosen.items() if id(p) not in frozen}


def _world() -> tuple[int, int]:
    if torch.distributed.is_available() and torch.distributed.is_initialized():
        return torch.distributed.get_rank(), torch.distributed.get_world_size()
    return 0, 1


def _input_seed(seed: int, index: int) -> int:
    return int(np.random.SeedSequence([seed, index]).generate_state(1)[0])


def stream_items(inputs: Iterable[Any], column: str) -> list[Any]:
    """The stream's inputs as a list; a `datasets.Dataset`'s `column`, left undecoded so a bad image is named."""
    if hasattr(inputs, "column_names") and hasattr(inputs, "features"):  # a datasets.Dataset
        if column not in inputs.column_names:
            raise ValueError(f"The inputs have no column {column!r}; columns: {inputs.column_names}.")
        if hasattr(inputs.features[column], "decode"):  # decode here, so a bad image is named, not raised
            import datasets

            inputs = inputs.cast_column(column, datasets.Image(decode=False))
        items = list(inputs[column])
    else:
        items = list(inputs)
    return items


def gather_result(result: TestTimeResult) -> TestTimeResult:
    """Every process's predictions, skipped inputs and costs, merged in stream order (on every process)."""
    parts: list[Any] = [None] * torch.distributed.get_world_size()
    torch.distributed.all_gather_object(parts, (result.predictions, result.skipped, result.stats))
    merged = TestTimeResult(settings=result.settings)
    for predictions, skipped, _ in parts:
        merged.predictions.extend(predictions)
        merged.skipped.extend(skipped)
    merged.predictions.sort(key=lambda p: p["index"])
    merged.skipped.sort(key=lambda s: s["index"])
    merged.stats = {
        "inputs": sum(s["inputs"] for *_, s in parts),
        "seconds": max(s["seconds"] for *_, s in parts),
        "reward_calls": sum(s["reward_calls"] for *_, s in parts),
    }
    return merged
