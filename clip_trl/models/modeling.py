"""The small surface we need from a dual encoder, whatever its family.

We rely on `get_image_features`, `get_text_features` and a learnable temperature (transformers' `CLIPModel`,
`SiglipModel`, `AlignModel`, ..., peft wrappers of them, and lookalikes). What differs between families (extra
image inputs, pooling, how the temperature is parameterised, where the towers are) is looked up in
[`clip_trl.models.families`]. During training we go through the model's `forward` where the family allows it,
so that `DistributedDataParallel` sees the forward it expects.
"""

from __future__ import annotations

import contextlib
import math
from collections.abc import Iterator, Mapping
from dataclasses import replace
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn

from clip_trl.models.families import ADAPTERS, GENERIC, ModelAdapter, UnsupportedModelError, adapter_for_class

CLIP_LIKE_ATTRIBUTES = ("get_image_features", "get_text_features")
TEMPERATURE_GENERIC = replace(GENERIC, temperature="temperature", max_logit_scale=None)
TEMPERATURE_ATTRIBUTES = ("logit_scale", "temperature")


def unwrap(model: nn.Module) -> nn.Module:
    """Strip DDP / `torch.compile` wrappers (peft wrappers are kept: they forward attributes)."""
    while True:
        if hasattr(model, "module") and isinstance(
            model, (nn.parallel.DistributedDataParallel, nn.DataParallel)
        ):
            model = model.module
        elif hasattr(model, "_orig_mod"):
            model = model._orig_mod
        else:
            return model


def base_model(model: nn.Module) -> nn.Module:
    """The transformers model under every wrapper (DDP, `torch.compile`, peft)."""
    inner = unwrap(model)
    get_base_model = getattr(inner, "get_base_model", None)
    return get_base_model() if callable(get_base_model) else inner


def adapter(model: nn.Module) -> ModelAdapter:
    """The [`~clip_trl.models.families.ModelAdapter`] of `model`'s class (the generic one for unknown classes;
    for an unknown class with a `temperature` and no `logit_scale`, the generic one read as ALIGN's)."""
    inner = base_model(model)
    name = type(inner).__name__
    if (
        name not in ADAPTERS
        and not hasattr(inner, "logit_scale")
        and isinstance(getattr(inner, "temperature", None), torch.Tensor)
    ):
        return TEMPERATURE_GENERIC
    return adapter_for_class(name)


def check_clip_like(model: nn.Module) -> None:
    """Raise a `TypeError` naming what is missing when `model` is not a dual encoder clip_trl can train.

    Raises:
        UnsupportedModelError: the class is known and cannot be trained (the message says why).
        TypeError: the model lacks `get_image_features`, `get_text_features` or a temperature parameter.
    """
    inner = base_model(model)
    reason = adapter(inner).unsupported
    if reason is not None:
        raise UnsupportedModelError(f"{type(inner).__name__} cannot be trained with clip_trl: {reason}")
    missing = [name for name in CLIP_LIKE_ATTRIBUTES if not hasattr(inner, name)]
    if not any(isinstance(getattr(inner, name, None), torch.Tensor) for name in TEMPERATURE_ATTRIBUTES):
        missing.append("logit_scale (or temperature)")
    if missing:
        raise TypeError(
            f"{type(inner).__name__} is not a CLIP-like dual encoder: it has no {', '.join(missing)}. "
            "clip_trl trains models with `get_image_features`, `get_text_features` and a `logit_scale` (or "
            "`temperature`) parameter, such as transformers' `CLIPModel` (e.g. 'openai/clip-vit-base-patch32'); "
            "see the 'Supported models' page of the documentation."
        )


def _features(output: Any, first_token: bool = False) -> torch.Tensor:
    # transformers 5 returns a ModelOutput whose `pooler_output` is the projected embedding; 4.x a tensor.
    if isinstance(output, torch.Tensor):
        features = output
    else:
        features = next(
            (
                value
                for name in ("image_embeds", "text_embeds", "pooler_output")
                if (value := getattr(output, name, None)) is not None
            ),
            None,
        )
        if features is None:
            features = output[0]
    # FLAVA projects every token; its contrastive embedding is token 0.
    return features[:, 0] if first_token and features.dim() == 3 else features


def image_inputs(model: nn.Module, inputs: Mapping[str, Any]) -> dict[str, Any]:
    """The entries of `inputs` that `model`'s vision tower takes (`pixel_values`, and e.g. SigLIP 2's
    `pixel_attention_mask` / `spatial_shapes`)."""
    return {name: inputs[name] for name in adapter(model).image_inputs if inputs.get(name) is not None}


def image_features(
    model: nn.Module, pixel_values: torch.Tensor | Mapping[str, Any], **extra_image_inputs: Any
) -> torch.Tensor:
    """Projected (unnormalised) image embeddings.

    `pixel_values` is a tensor, or what an image transform returns as a whole: a mapping (a dict, a processor's
    `BatchFeature`) holding `pixel_values` and the family's other vision inputs (SigLIP 2's `pixel_attention_mask`
    and `spatial_shapes`), so `image_features(model, transform(images))` works for every family. A mapping's
    values go to the model's device (floating ones in its dtype); entries the vision tower does not take are
    dropped.
    """
    if isinstance(pixel_values, Mapping):
        if pixel_values.get("pixel_values") is None:
            raise ValueError(
                "`image_features` got a mapping without `pixel_values` (keys: "
                f"{sorted(pixel_values)}); pass the image transform's or processor's output for images."
            )
        extra_image_inputs = {**_vision_inputs_on_device(model, pixel_values), **extra_image_inputs}
        pixel_values = extra_image_inputs.pop("pixel_values")
    output = unwrap(model).get_image_features(pixel_values=pixel_values, **extra_image_inputs)
    return _features(output, adapter(model).pool_first_token)


def _vision_inputs_on_device(model: nn.Module, inputs: Mapping[str, Any]) -> dict[str, torch.Tensor]:
    parameter = next(iter(model.parameters()), None)
    floating = next((p for p in model.parameters() if p.is_floating_point()), parameter)
    moved = {}
    for name, value in image_inputs(model, inputs).items():
        tensor = torch.as_tensor(value)
        if parameter is not None:
            dtype = floating.dtype if tensor.is_floating_point() else tensor.dtype
            tensor = tensor.to(device=parameter.device, dtype=dtype)
        moved[name] = tensor
    return moved


def text_features(
    model: nn.Module, input_ids: torch.Tensor, attention_mask: torch.Tensor | None = None
) -> torch.Tensor:
    """Projected (unnormalised) text embeddings."""
    output = unwrap(model).get_text_features(input_ids=input_ids, attention_mask=attention_mask)
    return _features(output, adapter(model).pool_first_token)


def encode_pair(
    model: nn.Module,
    pixel_values: torch.Tensor,
    input_ids: torch.Tensor,
    attention_mask: torch.Tensor | None,
    **extra_image_inputs: Any,
) -> tuple[torch.Tensor, torch.Tensor]:
    """L2-normalised image and text embeddings, from one call of the model's `forward` where the family allows.

    The image and text batches may differ in size (e.g. B images against K candidate captions).
    `extra_image_inputs` are the vision tower's other inputs (SigLIP 2's `pixel_attention_mask`, `spatial_shapes`).
    """
    image_embeds = text_embeds = None
    if adapter(model).use_forward:
        output = model(
            pixel_values=pixel_values,
            input_ids=input_ids,
            attention_mask=attention_mask,
            **extra_image_inputs,
        )
        image_embeds = getattr(output, "image_embeds", None)
        text_embeds = getattr(output, "text_embeds", None)
    if image_embeds is None or text_embeds is None:  # a lookalike whose forward differs: use the towers
        image_embeds = image_features(model, pixel_values, **extra_image_inputs)
        text_embeds = text_features(model, input_ids, attention_mask)
    return F.normalize(image_embeds, dim=-1), F.normalize(text_embeds, dim=-1)


def encode_batch(
    model: nn.Module, inputs: Mapping[str, Any], cache: Any = None
) -> tuple[torch.Tensor, torch.Tensor]:
    """[`encode_pair`] on a collated batch: its `pixel_values` (and the family's other image inputs),
    `input_ids` and `attention_mask` (absent when the tokenizer returns none, as SigLIP's).

    With a `cache` (a [`~clip_trl.trainer.embedding_cache.FrozenEmbeddingCache`], the trainers' frozen-tower
    cache), the frozen towers' embeddings are read from it and the other towers are called directly."""
    if cache is not None:
        return cache.encode_batch(model, inputs)
    extra = {k: v for k, v in image_inputs(model, inputs).items() if k != "pixel_values"}
    return encode_pair(
        model, inputs["pixel_values"], inputs["input_ids"], inputs.get("attention_mask"), **extra
    )


def temperature_parameter(model: nn.Module) -> torch.Tensor:
    """The model's own temperature parameter: `logit_scale`, or `temperature` for ALIGN-style models."""
    inner = unwrap(model)
    return getattr(inner, adapter(model).temperature)


def logit_scale(model: nn.Module) -> torch.Tensor:
    """The log-scale that multiplies cosine similarities once exponentiated (`exp(logit_scale) · cos`).

    For `logit_scale` models this is the parameter itself; for `temperature` models (logits = cos / temperature)
    it is `-log(temperature)`, computed from the parameter so that gradients reach it.
    """
    parameter = temperature_parameter(model)
    if adapter(model).temperature == "temperature":
        return -parameter.log()
    return parameter


def logit_bias(model: nn.Module) -> torch.Tensor | None:
    return getattr(unwrap(model), "logit_bias", None)


def temperature_parameters(model: nn.Module) -> list[torch.Tensor]:
    """The temperature parameter and the bias (when there is one): no weight decay, their own learning rate."""
    return [p for p in (temperature_parameter(model), logit_bias(model)) if isinstance(p, nn.Parameter)]


def max_logit_scale(model: nn.Module, requested: float | None) -> float | None:
    """The bound of `exp(logit_scale)` during training: the user's, else the family's (see `ModelAdapter`)."""
    if requested is not None:
        return requested
    config_bound = getattr(getattr(base_model(model), "config", None), "max_logit_scale", None)
    if isinstance(config_bound, (int, float)) and config_bound > 0:
        return float(config_bound)
    return adapter(model).max_logit_scale


@torch.no_grad()
def clamp_logit_scale(model: nn.Module, max_scale: float) -> None:
    """Clamp `exp(logit_scale)` to `max_scale` in place (for `temperature` models: `temperature ≥ 1/max_scale`)."""
    parameter = temperature_parameter(model)
    if adapter(model).temperature == "temperature":
        parameter.clamp_(min=1.0 / max_scale)
    else:
        parameter.clamp_(max=math.log(max_scale))


def tower_modules(model: nn.Module, tower: str) -> list[nn.Module]:
    """The submodules that make up the vision or the text tower (encoder + projection)."""
    inner = base_model(model)
    names = adapter(inner).towers[tower]
    modules = [getattr(inner, name) for name in names if getattr(inner, name, None) is not None]
    if not modules:
        raise ValueError(
            f"Cannot find the {tower} tower of {type(inner).__name__} (looked for {', '.join(names)}); "
            f"freeze it yourself with `requires_grad_(False)` and leave `freeze_{tower}=False`."
        )
    return modules


def tower_module_names(model: nn.Module, tower: str) -> list[str]:
    """Attribute names (on the transformers model) of the modules of a tower, for matching LoRA targets."""
    inner = base_model(model)
    return [name for name in adapter(inner).towers[tower] if getattr(inner, name, None) is not None]


__all__ = [
    "UnsupportedModelError",
    "adapter",
    "base_model",
    "check_clip_like",
    "clamp_logit_scale",
    "encode_batch",
    "encode_pair",
    "image_features",
    "image_inputs",
    "logit_bias",
    "logit_scale",
    "max_logit_scale",
    "temperature_parameter",
    "temperature_parameters",
    "text_features",
    "tower_modules",
]


# Parameters clip_trl registers on a model that lacks them (the sigmoid loss's `logit_bias` on a CLIP). They are
# saved with the weights, but the model class does not declare them, so `from_pretrained` drops them as
# "unexpected": [`load_pretrained`] puts them back.
ADDED_PARAMETERS = ("logit_bias",)


@contextlib.contextmanager
def quiet_weight_loading() -> Iterator[None]:
    """Hide transformers' per-model "Loading weights" and "Writing model shards" progress bars (a bar per load or
    checkpoint is noise in a training log); the Hub's download bars stay."""
    from transformers.utils import logging as hf_logging

    if not hasattr(hf_logging, "_tqdm_active"):  # another transformers layout: leave its bars alone
        yield
        return
    was_active = hf_logging._tqdm_active
    hf_logging._tqdm_active = False
    try:
        yield
    finally:
        hf_logging._tqdm_active = was_active


def load_pretrained(name_or_path: str, **kwargs: Any) -> nn.Module:
    """`AutoModel.from_pretrained(name_or_path, **kwargs)`, keeping the parameters clip_trl added in training.

    Example:

    ```python
    >>> import tempfile, torch
    >>> from clip_trl.models.modeling import load_pretrained
    >>> from clip_trl.offline import build_clip
    >>> model, _ = build_clip("tiny")
    >>> model.register_parameter("logit_bias", torch.nn.Parameter(torch.tensor(-10.0)))
    >>> folder = tempfile.mkdtemp()
    >>> model.save_pretrained(folder)
    >>> load_pretrained(folder).logit_bias.item()
    -10.0

    ```
    """
    from transformers import AutoModel

    from clip_trl.models.locate import check_model_source

    # A mistyped local folder fails now, naming the closest folders, not after a minute of Hub retries.
    check_model_source(name_or_path, kwargs.get("cache_dir"), bool(kwargs.get("local_files_only")))
    with quiet_weight_loading():
        model, info = AutoModel.from_pretrained(name_or_path, output_loading_info=True, **kwargs)
    added = [name for name in ADDED_PARAMETERS if name in set(info.get("unexpected_keys") or ())]
    if added:
        location = {
            key: kwargs[key]
            for key in ("revision", "subfolder", "cache_dir", "token", "local_files_only")
            if key in kwargs
        }
        values = _read_saved_tensors(name_or_path, added, location)
        for name, value in values.items():
            reference = temperature_parameter(model)
            model.register_parameter(
                name, nn.Parameter(value.to(device=reference.device, dtype=reference.dtype))
            )
    return model


def _read_saved_tensors(
    name_or_path: str, names: list[str], location: dict[str, Any]
) -> dict[str, torch.Tensor]:
    import json

    from safetensors import safe_open
    from transformers.utils import cached_file

    def find(filename: str) -> str | None:
        return cached_file(name_or_path, filename, _raise_exceptions_for_missing_entries=False, **location)

    index = find("model.safetensors.index.json")
    if index is not None:
        with open(index, encoding="utf-8") as file:
            weight_map = json.load(file)["weight_map"]
        files = {name: find(weight_map[name]) for name in names if name in weight_map}
    else:
        files = dict.fromkeys(names, find("model.safetensors"))
    values: dict[str, torch.Tensor] = {}
    for name, path in files.items():
        if path is None:
            continue
        with safe_open(path, framework="pt") as handle:
            if name in handle.keys():  # noqa: SIM118 (a safetensors handle is not a mapping)
                values[name] = handle.get_tensor(name)
    return values
