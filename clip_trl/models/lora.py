"""LoRA on a dual encoder: adapters in *both* towers, whatever each tower calls its attention projections.

peft matches `target_modules` by module name, and the families name their attention projections differently:
`q_proj`/`v_proj` (CLIP-style ViTs and text transformers), `query`/`value` (BERT / XLM-R text towers of AltCLIP,
ChineseCLIP, BLIP, ALIGN, FLAVA), a fused `qkv` (BLIP's ViT). A list made for one family silently skips a tower
of another, so:

- unset `target_modules` become [`default_lora_targets`]: per tower, the names that tower uses
  ([`clip_trl.models.families.LORA_NAME_GROUPS`], or the family's own list);
- after wrapping, [`warn_on_missed_towers`] warns when a tower got no adapter, naming the modules to add;
- [`freeze_batch_norm_statistics`] keeps BatchNorm running statistics (GroupViT's projection heads, ALIGN's
  EfficientNet) from moving: they are base-model state that an adapter does not save, so a reloaded adapter
  would otherwise not reproduce the trained model, and LoRA promises to leave the base model untouched.
"""

from __future__ import annotations

import contextlib
import copy
import logging
import warnings
from collections.abc import Iterator
from typing import Any

from torch import nn

from clip_trl.models import modeling
from clip_trl.models.families import LORA_NAME_GROUPS

logger = logging.getLogger(__name__)

__all__ = [
    "DEFAULT_LORA_TARGET_MODULES",
    "default_lora_targets",
    "freeze_batch_norm_statistics",
    "quiet_adapter_save",
    "tower_lora_targets",
    "warn_on_missed_towers",
    "with_default_targets",
]

#: The attention query and value projections of transformers' CLIP and SigLIP, where both towers name them this
#: way. Other families' names come from [`default_lora_targets`].
DEFAULT_LORA_TARGET_MODULES: tuple[str, ...] = ("q_proj", "v_proj")

_ADAPTABLE = (nn.Linear, nn.Conv1d, nn.Conv2d)


def _leaf_names(modules: list[nn.Module]) -> set[str]:
    return {
        name.rsplit(".", 1)[-1]
        for module in modules
        for name, sub in module.named_modules()
        if isinstance(sub, _ADAPTABLE)
    }


def tower_lora_targets(model: nn.Module, tower: str) -> tuple[str, ...]:
    """The module names LoRA should target in one tower (`"vision"` or `"text"`) of `model`; empty if none fit."""
    explicit = modeling.adapter(model).lora_targets
    if explicit is not None:
        return explicit[tower]
    names = _leaf_names(modeling.tower_modules(model, tower))
    return next((group for group in LORA_NAME_GROUPS if set(group) <= names), ())


def default_lora_targets(model: nn.Module) -> list[str]:
    """LoRA `target_modules` that put adapters in both towers of `model`.

    Example:

    ```python
    >>> from clip_trl.models.lora import default_lora_targets
    >>> from clip_trl.offline import build_clip
    >>> default_lora_targets(build_clip("tiny")[0])
    ['q_proj', 'v_proj']

    ```
    """
    targets: list[str] = []
    for tower in ("vision", "text"):
        targets += [name for name in tower_lora_targets(model, tower) if name not in targets]
    if not targets:
        raise ValueError(
            f"Found no attention projections to put LoRA adapters on in {type(modeling.base_model(model)).__name__}; "
            "pass `LoraConfig(target_modules=[...])` with the names of its linear layers."
        )
    return targets


def with_default_targets(model: nn.Module, peft_config: Any) -> Any:
    """`peft_config` itself, or a copy whose unset `target_modules` are [`default_lora_targets`] of `model`."""
    if getattr(peft_config, "target_modules", None) or getattr(peft_config, "target_parameters", None):
        return peft_config
    if not hasattr(peft_config, "target_modules"):  # not a LoRA-like config: peft decides
        return peft_config
    peft_config = copy.deepcopy(peft_config)
    peft_config.target_modules = set(default_lora_targets(model))
    return peft_config


def _has_adapter(module: nn.Module) -> bool:
    return any(hasattr(sub, "lora_A") for sub in module.modules())


def warn_on_missed_towers(peft_model: nn.Module) -> list[str]:
    """Warn for each tower of a wrapped model that holds no LoRA layer; returns those towers' names."""
    missed = []
    for tower in ("vision", "text"):
        try:
            modules = modeling.tower_modules(peft_model, tower)
        except ValueError:
            continue
        if not any(_has_adapter(module) for module in modules):
            missed.append(tower)
    if missed:
        config = getattr(peft_model, "peft_config", {})
        config = config.get("default") if isinstance(config, dict) else config
        targets = sorted(getattr(config, "target_modules", None) or [])
        hints = "; ".join(
            f"the {tower} tower names them {list(tower_lora_targets(peft_model, tower)) or 'differently'}"
            for tower in missed
        )
        logger.warning(
            "LoRA target_modules %s match no module in the %s tower of %s, so only the other tower is adapted "
            "(%s). Add those names to `target_modules`, or leave `target_modules` unset to get adapters in both "
            "towers.",
            targets,
            " and ".join(missed),
            type(modeling.base_model(peft_model)).__name__,
            hints,
        )
    return missed


def freeze_batch_norm_statistics(peft_model: nn.Module) -> int:
    """Stop the running statistics of frozen BatchNorm layers from moving in training (`momentum = 0`).

    Returns the number of layers changed. BatchNorm layers whose weights train (e.g. in `modules_to_save`) are
    left alone: they are saved with the adapter.
    """
    count = 0
    for module in peft_model.modules():
        frozen = not any(p.requires_grad for p in module.parameters(recurse=False))
        if isinstance(module, nn.modules.batchnorm._BatchNorm) and module.track_running_stats and frozen:
            module.momentum = 0.0
            count += 1
    if count:
        logger.info(
            "Froze the running statistics of %d BatchNorm layer(s) of the base model under LoRA.", count
        )
    return count


# Parameters clip_trl adds to a model (the sigmoid loss's `logit_bias` on a CLIP) live on the base model, which an
# adapter folder does not hold: they are saved next to the adapter in this file and put back by `load_model`.
ADDED_PARAMETERS_FILE = "clip_trl_parameters.safetensors"


def save_added_parameters(model: nn.Module, folder: str) -> list[str]:
    """For a peft model, write the base model's `logit_bias` (and any other parameter clip_trl may add) into
    `folder/clip_trl_parameters.safetensors`; returns the names written (none for a plain model, whose weights
    file already holds them)."""
    import os

    from safetensors.torch import save_file

    inner = modeling.unwrap(model)
    base = modeling.base_model(model)
    if base is inner:
        return []
    tensors = {
        name: getattr(base, name).detach().cpu().contiguous()
        for name in modeling.ADDED_PARAMETERS
        if isinstance(getattr(base, name, None), nn.Parameter)
    }
    if tensors:
        os.makedirs(folder, exist_ok=True)
        save_file(tensors, os.path.join(folder, ADDED_PARAMETERS_FILE))
    return sorted(tensors)


def load_added_parameters(model: nn.Module, id_or_path: str, **file_kwargs: Any) -> list[str]:
    """Put the parameters of [`save_added_parameters`] back onto the base model of `model` (a peft model loaded
    from `id_or_path`); returns their names (none when the folder has no such file)."""
    from safetensors.torch import load_file
    from transformers.utils import cached_file

    path = cached_file(
        id_or_path,
        ADDED_PARAMETERS_FILE,
        _raise_exceptions_for_missing_entries=False,
        _raise_exceptions_for_connection_errors=False,
        **file_kwargs,
    )
    if path is None:
        return []
    base = modeling.base_model(model)
    reference = modeling.temperature_parameter(base)
    for name, value in load_file(path).items():
        parameter = nn.Parameter(
            value.to(device=reference.device, dtype=reference.dtype), requires_grad=False
        )
        base.register_parameter(name, parameter)
    return sorted(load_file(path))


@contextlib.contextmanager
def quiet_adapter_save() -> Iterator[None]:
    """Silence peft's "Could not find a config file in <base> - will assume that the vocabulary was not
    modified" while an adapter is saved: peft looks the base model's config up to detect a resized vocabulary,
    which clip_trl never resizes, so offline (or for a base that is not on the Hub yet) it warns on every save
    about nothing."""
    with warnings.catch_warnings():
        warnings.filterwarnings(
            "ignore", message=r"Could not find a config file in .* the vocabulary was not modified"
        )
        yield


def prepare_peft_model(model: nn.Module, peft_config: Any) -> nn.Module:
    """Wrap `model` with `get_peft_model(model, peft_config)` after checking the combination makes sense.

    Unset `target_modules` become the attention projections of *both* towers, named as the model names them
    ([`clip_trl.models.lora.default_lora_targets`]); targets that leave a tower without adapters are warned about.
    """
    from peft import (  # a dependency; imported here to keep start-up light
        PeftConfig,
        PeftModel,
        get_peft_model,
    )

    if not isinstance(peft_config, PeftConfig):
        raise TypeError(
            f"`peft_config` must be a peft `PeftConfig` (e.g. `LoraConfig(target_modules=['q_proj', 'v_proj'])`), "
            f"got {type(peft_config).__name__}."
        )
    if isinstance(model, PeftModel):
        raise ValueError(
            "`model` is already a PeftModel and a `peft_config` was given too. Pass the base model with "
            "`peft_config`, or the PeftModel without it (to keep training its adapters)."
        )
    peft_config = with_default_targets(model, peft_config)
    with warnings.catch_warnings():
        # peft reads transformers' deprecated `is_gradient_checkpointing` alias; the FutureWarning is about peft's
        # code, not the user's, and would print on every LoRA run.
        warnings.filterwarnings(
            "ignore", message=r"`is_gradient_checkpointing` is deprecated", category=FutureWarning
        )
        wrapped = get_peft_model(model, peft_config)
    warn_on_missed_towers(wrapped)
    freeze_batch_norm_statistics(wrapped)
    return wrapped
