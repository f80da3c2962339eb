r"""WiSE-FT: weight-space ensembling of a base model and its fine-tuned version (Wortsman et al., CVPR 2022).

Fine-tuning CLIP on one domain usually costs accuracy elsewhere. Interpolating the weights,
`θ(α) = (1 − α) · θ_base + α · θ_tuned`, keeps most of the in-domain gain at a fraction of the loss elsewhere,
at no training cost: one model, the base model's speed. [`wise_ft`] builds `θ(α)` for full models and for LoRA
adapters (where `θ_tuned = θ_base + s · B A`, so `θ(α) = θ_base + s · (α B) A`: the adapter scaled by `α`);
[`wise_ft_sweep`] evaluates a range of `α` on an in-domain and a retention set, and [`plot_wise_ft_sweep`]
draws the trade-off.
"""

from __future__ import annotations

import copy
import math
import os
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

import torch
from torch import nn

__all__ = [
    "InterpolateArguments",
    "best_alpha",
    "plot_wise_ft_sweep",
    "run_interpolate",
    "wise_ft",
    "wise_ft_sweep",
]


def _load(model: Any) -> tuple[nn.Module, Any]:
    if isinstance(model, (str, os.PathLike)):
        from clip_trl.hub.loading import load_model

        return load_model(model)
    return model, None


def _is_peft(model: nn.Module) -> bool:
    return hasattr(model, "peft_config") and hasattr(model, "get_base_model")


def _check_alpha(alpha: float) -> float:
    alpha = float(alpha)
    if not math.isfinite(alpha):
        raise ValueError(f"`alpha` must be a finite number, got {alpha}.")
    return alpha


def _interpolate_into(
    target: nn.Module,
    base_state: Mapping[str, torch.Tensor],
    tuned_state: Mapping[str, torch.Tensor],
    alpha: float,
    what: str,
) -> None:
    """Set every floating tensor of `target` (same keys as both states) to `(1 − α)·base + α·tuned`."""
    missing = sorted(set(base_state) ^ set(tuned_state))
    if missing:
        raise ValueError(
            f"{what}: the two models do not have the same weights; {len(missing)} names are in only one of them, "
            f"e.g. {missing[:5]}. WiSE-FT interpolates a model with a fine-tuned copy of itself."
        )
    target_state = target.state_dict()
    with torch.no_grad():
        for name, base_value in base_state.items():
            tuned_value = tuned_state[name]
            if base_value.shape != tuned_value.shape:
                raise ValueError(
                    f"{what}: weight {name!r} has shape {tuple(base_value.shape)} in `base` and "
                    f"{tuple(tuned_value.shape)} in `tuned`; they must match."
                )
            if name not in target_state:
                continue
            if base_value.is_floating_point():
                mixed = torch.lerp(base_value.float(), tuned_value.to(base_value.device).float(), alpha)
                target_state[name].copy_(mixed.to(target_state[name].dtype))
            elif not torch.equal(base_value, tuned_value.to(base_value.device)):
                raise ValueError(f"{what}: non-float buffer {name!r} differs between `base` and `tuned`.")


def wise_ft(base: Any, tuned: Any, alpha: float = 0.5) -> nn.Module:
    r"""
    The WiSE-FT interpolation of `base` and `tuned`: a new model with weights `(1 − alpha)·base + alpha·tuned`.

    - **Full models**: every floating weight (and `logit_scale`) is interpolated; integer buffers must agree.
    - **LoRA** (`tuned` a peft model, or an adapter folder): the adapter's update `s · B A` is scaled by `alpha`
      (its `lora_B` weights are multiplied by `alpha`), which is exactly the interpolation of the base weights
      and the merged tuned weights, and is still an adapter (save it, or `merge_and_unload()` it). Modules the
      adapter trains in full (`modules_to_save`) are interpolated as weights. `base` may then be `None` (the
      adapter's own base is used) or the base model, which is checked to be the adapter's base. DoRA adapters
      are refused: their update is not linear in `B`.

    Neither input is modified. `alpha=0` gives the base model's function, `alpha=1` the tuned one; values
    outside `[0, 1]` extrapolate.

    Args:
        base (`nn.Module`, `str` or `None`): the model before fine-tuning (a model, a folder or a Hub id).
        tuned (`nn.Module` or `str`): the fine-tuned model, or its LoRA adapter (a `PeftModel`, or a folder / Hub
            id loaded with [`clip_trl.hub.load_model`]).
        alpha (`float`, defaults to 0.5): the weight of `tuned`.

    Returns:
        `nn.Module`: the interpolated model (a `PeftModel` for an adapter).

    Example:

    ```python
    >>> import torch
    >>> from clip_trl import wise_ft
    >>> from clip_trl.offline import build_clip
    >>> base, _ = build_clip("tiny", seed=0)
    >>> tuned, _ = build_clip("tiny", seed=1)  # stands in for a fine-tuned copy
    >>> mixed = wise_ft(base, tuned, alpha=0.25)
    >>> w = "text_projection.weight"
    >>> torch.allclose(mixed.state_dict()[w], 0.75 * base.state_dict()[w] + 0.25 * tuned.state_dict()[w])
    True

    ```
    """
    alpha = _check_alpha(alpha)
    tuned, _ = _load(tuned)
    if _is_peft(tuned):
        return _wise_ft_adapter(base, tuned, alpha)
    if base is None:
        raise ValueError("`base` is required unless `tuned` is a LoRA adapter (which knows its base model).")
    base, _ = _load(base)
    if _is_peft(base):
        raise ValueError(
            "`base` is a peft model; pass the plain base model (or `None`) and the adapter as `tuned`."
        )
    mixed = copy.deepcopy(base)
    _interpolate_into(mixed, base.state_dict(), tuned.state_dict(), alpha, "wise_ft")
    return mixed


def _wise_ft_adapter(base: Any, tuned: nn.Module, alpha: float) -> nn.Module:
    for name, config in tuned.peft_config.items():
        if getattr(config, "use_dora", False):
            raise ValueError(
                f"Adapter {name!r} is a DoRA adapter; its update is not linear in the adapter weights, "
                "so scaling it is no weight interpolation. Merge it and interpolate full models."
            )
        if type(config).__name__ != "LoraConfig":
            raise ValueError(
                f"Adapter {name!r} is a {type(config).__name__}; wise_ft scales LoRA adapters only."
            )
    if base is not None:
        base, _ = _load(base)
        _check_same_base(base, tuned)
    mixed = copy.deepcopy(tuned)
    with torch.no_grad():
        for name, parameter in mixed.named_parameters():
            if ".lora_B." in name or ".lora_embedding_B." in name:
                parameter.mul_(alpha)
        # Fully trained copies (`modules_to_save`): interpolate them with the originals they replace.
        for module in mixed.modules():
            original = getattr(module, "original_module", None)
            copies = getattr(module, "modules_to_save", None)
            if original is None or not isinstance(copies, nn.ModuleDict):
                continue
            for copy_module in copies.values():
                _interpolate_into(
                    copy_module,
                    original.state_dict(),
                    copy_module.state_dict(),
                    alpha,
                    "wise_ft (modules_to_save)",
                )
    return mixed


def _base_weights(model: nn.Module) -> dict[str, torch.Tensor]:
    """The weights of the model an adapter sits on, under their plain names (no peft wrappers or adapters)."""
    weights = {}
    for name, value in model.state_dict().items():
        if "lora_" in name or "modules_to_save" in name:
            continue
        name = (
            name.removeprefix("base_model.model.")
            .replace(".base_layer.", ".")
            .replace(".original_module.", ".")
        )
        weights[name] = value
    return weights


def _check_same_base(base: nn.Module, tuned: nn.Module) -> None:
    expected = _base_weights(tuned)
    for name, value in base.state_dict().items():
        other = expected.get(name)
        if other is not None and (
            other.shape != value.shape or not torch.equal(other.to(value.device), value)
        ):
            raise ValueError(
                f"`base` is not the model the adapter was trained on: weight {name!r} differs. Pass the adapter's "
                "base model, or `base=None` to use the one the adapter holds."
            )


# ------------------------------------------------------------------------------------------------- sweep


def wise_ft_sweep(
    base: Any,
    tuned: Any,
    processor: Any,
    eval_datasets: Mapping[str, Any],
    alphas: Sequence[float] = (0.0, 0.25, 0.5, 0.75, 1.0),
    *,
    metric: str = "image_to_text_recall@1",
    image_column: str = "image",
    caption_column: str = "caption",
    batch_size: int = 256,
    ks: Sequence[int] = (1, 5, 10),
) -> list[dict[str, float]]:
    r"""
    Evaluate the WiSE-FT model at each `alpha` on named eval sets (e.g. `{"in_domain": ..., "retention": ...}`).

    Returns one row per alpha: `{"alpha": a, "<set>/<metric>": value, ..., "mean": m}` with every retrieval
    metric of [`clip_trl.evaluation.metrics.retrieval_metrics`] per set, and `mean` the average of `metric` over the sets
    — the balanced choice of `alpha` is the row with the highest `mean` (see [`best_alpha`]).

    Example:

    ```python
    >>> from clip_trl.offline import build_clip, load_emoji_dataset
    >>> from clip_trl.models.wise_ft import best_alpha, wise_ft_sweep
    >>> data = load_emoji_dataset(max_examples=40)
    >>> base, processor = build_clip("tiny", seed=0)
    >>> tuned, _ = build_clip("tiny", seed=1)
    >>> rows = wise_ft_sweep(base, tuned, processor, {"a": data["train"], "b": data["test"]}, alphas=[0, 1])
    >>> [row["alpha"] for row in rows], "b/image_to_text_recall@1" in rows[0], best_alpha(rows) in (0.0, 1.0)
    ([0.0, 1.0], True, True)

    ```
    """
    from clip_trl.evaluation.metrics import retrieval_metrics

    if not eval_datasets:
        raise ValueError("`eval_datasets` is empty; pass e.g. {'in_domain': ..., 'retention': ...}.")
    base_model, _ = _load(base) if base is not None else (None, None)
    tuned_model, _ = _load(tuned)
    rows = []
    for alpha in alphas:
        model = wise_ft(base_model, tuned_model, alpha).eval()
        row: dict[str, float] = {"alpha": float(alpha)}
        for name, dataset in eval_datasets.items():
            metrics = retrieval_metrics(
                model,
                processor,
                dataset,
                image_column=image_column,
                caption_column=caption_column,
                ks=tuple(ks),
                batch_size=batch_size,
            )
            if metric not in metrics:
                raise ValueError(
                    f"`metric={metric!r}` is not a retrieval metric; choose one of {sorted(metrics)}."
                )
            row.update({f"{name}/{key}": float(value) for key, value in metrics.items()})
        row["mean"] = sum(row[f"{name}/{metric}"] for name in eval_datasets) / len(eval_datasets)
        rows.append(row)
    return rows


def best_alpha(rows: Sequence[Mapping[str, float]]) -> float:
    """The `alpha` of the sweep row with the highest `mean` (the first one on ties)."""
    return max(rows, key=lambda row: row["mean"])["alpha"]


def plot_wise_ft_sweep(
    rows: Sequence[Mapping[str, float]],
    path: str | os.PathLike[str],
    metric: str = "image_to_text_recall@1",
    title: str | None = None,
) -> str:
    """Draw a sweep of [`wise_ft_sweep`]: `metric` against `alpha`, one line per eval set; returns `path`."""
    import matplotlib

    matplotlib.use("Agg", force=False)
    from matplotlib.figure import Figure

    names = [key.removesuffix(f"/{metric}") for key in rows[0] if key.endswith(f"/{metric}")]
    alphas = [row["alpha"] for row in rows]
    figure = Figure(figsize=(5.5, 3.6), dpi=120)
    axes = figure.add_subplot()
    for name in names:
        axes.plot(alphas, [row[f"{name}/{metric}"] for row in rows], marker="o", label=name)
    axes.plot(alphas, [row["mean"] for row in rows], linestyle="--", color="grey", label="mean")
    chosen = best_alpha(rows)
    axes.axvline(chosen, color="grey", linewidth=0.8, linestyle=":")
    axes.set_xlabel("alpha  (0 = base model, 1 = fine-tuned)")
    axes.set_ylabel(metric)
    axes.set_title(title or f"WiSE-FT sweep (best mean at alpha = {chosen:g})")
    axes.grid(alpha=0.3)
    axes.legend()
    figure.tight_layout()
    figure.savefig(path)
    return os.fspath(path)


# ---------------------------------------------------------------------------------------------- command


@dataclass
class InterpolateArguments:
    r"""
    Arguments of `clip-trl interpolate`: write the WiSE-FT model `(1 − alpha)·base + alpha·tuned`.

    Parameters:
        tuned (`str`): the fine-tuned model or LoRA adapter (folder or Hub id).
        output_dir (`str`): where to write the interpolated model (or adapter) and the processor.
        base (`str` or `None`, defaults to `None`): the base model; may be left out for a LoRA adapter.
        alpha (`float`, defaults to 0.5): the weight of `tuned`.
        merge (`bool`, defaults to `False`): for an adapter, write a merged full model instead of an adapter.
    """

    tuned: str = field(metadata={"help": "Fine-tuned model or LoRA adapter (folder or Hub id)."})
    output_dir: str = field(metadata={"help": "Where to write the interpolated model and processor."})
    base: str | None = field(default=None, metadata={"help": "Base model (optional for a LoRA adapter)."})
    alpha: float = field(default=0.5, metadata={"help": "Weight of the tuned model: 0 = base, 1 = tuned."})
    merge: bool = field(default=False, metadata={"help": "For an adapter: write a merged full model."})


def run_interpolate(args: InterpolateArguments) -> str:
    """Write `wise_ft(args.base, args.tuned, args.alpha)` (and the tuned model's processor) to `args.output_dir`."""
    from clip_trl.hub.loading import load_model

    tuned, processor = load_model(args.tuned, base_model=args.base)
    mixed = wise_ft(args.base, tuned, args.alpha)
    if args.merge and _is_peft(mixed):
        mixed = mixed.merge_and_unload()
    os.makedirs(args.output_dir, exist_ok=True)
    mixed.save_pretrained(args.output_dir)
    if processor is not None:
        processor.save_pretrained(args.output_dir)
    return args.output_dir
