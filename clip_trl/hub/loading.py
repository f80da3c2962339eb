"""One loader for what clip_trl saves (full models and LoRA adapters, local or from the Hub), and the LoRA preset."""

from __future__ import annotations

import contextlib
import json
import os
from collections.abc import Iterable
from typing import TYPE_CHECKING, Any

from transformers import AutoModel, AutoProcessor
from transformers.utils import cached_file, find_adapter_config_file

from clip_trl.models import lora, modeling
from clip_trl.models.locate import check_model_source

if TYPE_CHECKING:
    from peft import LoraConfig
    from torch import nn


# Keyword arguments that say *where* files are. They describe the repository being loaded, so for an
# adapter they apply to the adapter and not to its base model (whose location is in the adapter config).
_LOCATION_KWARGS = ("revision", "subfolder")
# Keyword arguments about *how* to reach the Hub; they apply to every download.
_HUB_KWARGS = ("cache_dir", "token", "local_files_only", "force_download", "proxies")
# Files whose presence means a processor (or at least its tokenizer) was saved next to the weights.
_PROCESSOR_FILES = ("processor_config.json", "preprocessor_config.json", "tokenizer_config.json")


def default_lora_config(
    r: int = 16,
    alpha: int = 32,
    dropout: float = 0.05,
    target_modules: Iterable[str] | None = None,
    *,
    model: nn.Module | None = None,
    **kwargs: Any,
) -> LoraConfig:
    r"""
    A LoRA configuration that suits image–text dual encoders: adapters on the attention query and value
    projections of **both** the vision and the text tower, named as each family names them (`q_proj`/`v_proj`
    for CLIP and SigLIP, BERT's `query`/`value`, BLIP's fused `qkv`, ALIGN's `project_conv`: see the
    "Supported models" page).

    Left unset, `target_modules` is `None`: the trainers resolve it when they wrap the model
    ([`clip_trl.models.lora.default_lora_targets`]). With `model=`, it is resolved now, for calling
    `peft.get_peft_model(model, default_lora_config(model=model))` yourself (peft alone cannot guess the
    targets of a dual encoder).

    Only the adapters train. `logit_scale` (and a SigLIP `logit_bias`) are parameters, not modules, so they
    stay at the base model's values; the trainers' `freeze_vision` / `freeze_text` also freeze the adapters
    placed in that tower.

    Args:
        r (`int`, *optional*, defaults to 16):
            Rank of the low-rank update.
        alpha (`int`, *optional*, defaults to 32):
            LoRA scaling numerator (`lora_alpha`); the update is scaled by `alpha / r`.
        dropout (`float`, *optional*, defaults to 0.05):
            Dropout on the adapter input (`lora_dropout`), active in training mode only.
        target_modules (iterable of `str`, *optional*):
            Names of the layers that get adapters, instead of the family's attention query and value
            projections (e.g. add `"k_proj"`, `"out_proj"`, `"fc1"`, `"fc2"` on a CLIP for more capacity).
            Targets that leave a tower without adapters are warned about when a trainer wraps the model.
        model (`nn.Module`, *optional*, keyword only):
            The model the config is for: resolves the default targets now, from its family.
        **kwargs:
            Any other [`peft.LoraConfig`] field (e.g. `use_dora=True`, `bias="lora_only"`).

    Returns:
        [`peft.LoraConfig`]: pass it as `peft_config=` to [`ClipContrastiveTrainer`] or [`ClipRLTrainer`].

    Raises:
        ImportError: peft is not installed.

    Example:

    ```python
    >>> from clip_trl.hub import default_lora_config
    >>> from clip_trl.offline import build_clip
    >>> config = default_lora_config(r=8)
    >>> config.target_modules, config.r, config.lora_alpha  # the trainers pick both towers' projections
    (None, 8, 32)
    >>> sorted(default_lora_config(model=build_clip("tiny")[0]).target_modules)
    ['q_proj', 'v_proj']

    ```
    """
    import peft  # a dependency; imported on use to keep `import clip_trl` light

    if target_modules is not None:
        # A string is peft's regular expression over module names; keep it as one.
        targets: str | list[str] | None = (
            target_modules if isinstance(target_modules, str) else list(target_modules)
        )
    elif model is not None:
        targets = lora.default_lora_targets(model)
    else:
        targets = None
    options: dict[str, Any] = {"bias": "none", **kwargs}
    return peft.LoraConfig(r=r, lora_alpha=alpha, lora_dropout=dropout, target_modules=targets, **options)


def load_model(
    id_or_path: str | os.PathLike[str],
    merge: bool = False,
    *,
    base_model: str | os.PathLike[str] | None = None,
    **kwargs: Any,
) -> tuple[nn.Module, Any]:
    r"""
    Load what a clip_trl run saved or pushed, full model or LoRA adapter, together with its processor.

    - A **full model** folder/repository is loaded with `AutoModel.from_pretrained` and
      `AutoProcessor.from_pretrained`.
    - An **adapter** folder/repository (it has `adapter_config.json`) is put onto its base model: the base
      is loaded from the adapter config's `base_model_name_or_path` (or `base_model=`), then
      `peft.PeftModel.from_pretrained` adds the adapter. The processor comes from the adapter folder when
      one was saved there (clip_trl saves it), otherwise from the base model.

    Hub ids go through the Hub cache, so with `HF_HUB_OFFLINE=1` everything loads from files downloaded
    earlier, and nothing is fetched.

    Args:
        id_or_path (`str` or `os.PathLike`):
            A local folder or a Hub repository id (`"org/name"`).
        merge (`bool`, *optional*, defaults to `False`):
            For an adapter, fold the LoRA weights into the base weights (`merge_and_unload()`) and return the
            plain transformers model: no peft needed at inference and no adapter overhead per forward, but no
            way back to the base model either. Ignored for a full model (there is nothing to merge).
        base_model (`str` or `os.PathLike`, *optional*):
            For an adapter, the base model to load instead of the one its config names — e.g. a local copy,
            or when the adapter was trained on a model built in memory and so names none.
        **kwargs:
            `revision` and `subfolder` locate `id_or_path` (for an adapter, the adapter itself);
            `cache_dir`, `token`, `local_files_only`, `force_download` and `proxies` apply to every file
            fetched; anything else (`dtype`, `device_map`, `attn_implementation`, ...) goes to the model's
            `from_pretrained` (the base model's, for an adapter).

    Returns:
        `tuple[model, processor]`: the model in evaluation mode (a `peft.PeftModel` for an unmerged adapter,
        the transformers model class otherwise, e.g. `CLIPModel`) and its processor.

    Raises:
        ValueError: an adapter whose config names no base model, and no `base_model=` given.
        OSError: an adapter whose base model cannot be loaded here (the message names it; pass `base_model=`).
        FileNotFoundError: a local folder with no model in it but training checkpoints (`checkpoint-N/`): the
            message names the latest one to pass instead. Or a folder that does not exist (a path, or a name
            that is not in the Hub cache while the Hub cannot be reached): the message names the closest
            existing folders (`clip_trl.models.locate.check_model_source`).
        ImportError: an adapter, and peft is not installed.

    Example:

    ```python
    >>> import tempfile, torch
    >>> from clip_trl.hub import load_model
    >>> from clip_trl.offline import build_clip
    >>> folder = tempfile.mkdtemp()
    >>> _ = build_clip("tiny", output_dir=folder)
    >>> model, processor = load_model(folder)
    >>> type(model).__name__, type(processor).__name__
    ('CLIPModel', 'CLIPProcessor')

    ```

    With the Hub: `load_model("your-name/clip-emoji-lora", merge=True)`.
    """
    id_or_path = os.fspath(id_or_path)
    location = {key: kwargs.pop(key) for key in _LOCATION_KWARGS if key in kwargs}
    hub = {key: kwargs.pop(key) for key in _HUB_KWARGS if key in kwargs}
    model_kwargs = kwargs
    check_model_source(id_or_path, hub.get("cache_dir"), bool(hub.get("local_files_only")))
    if os.path.isdir(id_or_path) and "subfolder" not in location:
        _check_not_only_checkpoints(id_or_path)

    adapter_config_file = find_adapter_config_file(id_or_path, **location, **hub)
    if adapter_config_file is None:
        # `load_pretrained`: AutoModel, keeping parameters clip_trl added (a sigmoid loss's `logit_bias`).
        model = modeling.load_pretrained(id_or_path, **location, **hub, **model_kwargs)
        processor = AutoProcessor.from_pretrained(id_or_path, **location, **hub)
        return model.eval(), forget_loading_options(processor)

    import peft  # a dependency; imported on use to keep `import clip_trl` light

    with open(adapter_config_file, encoding="utf-8") as file:
        named_base = json.load(file).get("base_model_name_or_path")
    base = os.fspath(base_model) if base_model is not None else named_base
    if not base:
        raise ValueError(
            f"The adapter at {id_or_path!r} does not say which base model it was trained on (its "
            "adapter_config.json has no `base_model_name_or_path`, as happens when the base model was built in "
            "memory). Pass it: `load_model(..., base_model=<base model id or folder>)`."
        )
    try:
        check_model_source(base, hub.get("cache_dir"), bool(hub.get("local_files_only")))
        with modeling.quiet_weight_loading():
            model = AutoModel.from_pretrained(base, **hub, **model_kwargs)
    except OSError as error:
        # transformers' message says the files are missing, not that they are the *base* of an adapter.
        reason = str(error).strip().splitlines()[0]
        if base_model is not None:
            raise OSError(f"Cannot load the base model {base!r} given as `base_model=`: {reason}") from error
        raise OSError(
            f"The adapter {id_or_path!r} was trained on the base model {base!r} (its adapter_config.json's "
            f"`base_model_name_or_path`), which cannot be loaded here: {reason} If that is a folder of the "
            "machine the adapter was trained on, or a repository you cannot reach, pass the base model yourself: "
            f"`load_model({id_or_path!r}, base_model=<Hub id or local folder of that model>)`."
        ) from error
    with modeling.quiet_weight_loading():
        model = peft.PeftModel.from_pretrained(model, id_or_path, **location, **hub)
    lora.load_added_parameters(model, id_or_path, **location, **hub)  # e.g. a sigmoid loss's `logit_bias`
    if merge:
        model = model.merge_and_unload()
    # A processor saved with the adapter reflects what training used (e.g. a changed `model_max_length`).
    processor_class = _saved_processor_class(id_or_path, location, hub)
    if processor_class is not None:
        # An adapter repository has no config.json, and transformers' tokenizer loader looks one up: offline,
        # from a cache that does not record the file as missing, that lookup fails. The base model's config
        # is the right answer to it anyway.
        processor = processor_class.from_pretrained(id_or_path, config=model.config, **location, **hub)
    else:
        processor = AutoProcessor.from_pretrained(base, **hub)
    return model.eval(), forget_loading_options(processor)


# What transformers records in a loaded tokenizer's `init_kwargs` about *how* it was loaded; `save_pretrained`
# would write them into `tokenizer_config.json`, where they describe this machine and this run, not the model.
_LOADING_OPTIONS = ("local_files_only", "is_local")


def forget_loading_options(processor: Any) -> Any:
    """Drop the loading options (`local_files_only`, `is_local`) that transformers keeps in a loaded tokenizer's
    `init_kwargs`, so that saving the processor does not write them to `tokenizer_config.json` (a processor or a
    tokenizer; returned as given). The trainers call it before every save.

    Example:

    ```python
    >>> from clip_trl.hub.loading import forget_loading_options
    >>> from clip_trl.offline import build_clip
    >>> _, processor = build_clip("tiny")
    >>> processor.tokenizer.init_kwargs["local_files_only"] = True  # as a load under HF_HUB_OFFLINE=1 leaves it
    >>> "local_files_only" in forget_loading_options(processor).tokenizer.init_kwargs
    False

    ```
    """
    for holder in (processor, getattr(processor, "tokenizer", None)):
        init_kwargs = getattr(holder, "init_kwargs", None)
        if isinstance(init_kwargs, dict):
            for key in _LOADING_OPTIONS:
                init_kwargs.pop(key, None)
    return processor


def _check_not_only_checkpoints(folder: str) -> None:
    """A training output folder without the final model (no `save_model()` call) but with checkpoints: say so."""
    if any(os.path.isfile(os.path.join(folder, name)) for name in ("config.json", "adapter_config.json")):
        return
    steps = {}
    for name in os.listdir(folder):
        step = name.removeprefix("checkpoint-")
        if name.startswith("checkpoint-") and step.isdigit() and os.path.isdir(os.path.join(folder, name)):
            steps[int(step)] = name
    if steps:
        latest = os.path.join(folder, steps[max(steps)])
        others = f" (and {len(steps) - 1} earlier)" if len(steps) > 1 else ""
        raise FileNotFoundError(
            f"No model in {folder!r} (no config.json or adapter_config.json); found {steps[max(steps)]}{others} — "
            f"pass that folder: {latest!r}. To have the final model in {folder!r}, call `trainer.save_model()` "
            "after `trainer.train()`."
        )


def warn_if_base_is_local(model: Any) -> str | None:
    r"""
    Warn when `model` is a peft adapter whose recorded base model is a local path: saved or pushed, the adapter
    then names a base that nobody else can load (peft and [`load_model`] look for that path, and fail).

    The trainers call this on every save and push; it warns once per model and base path. Returns the warning's
    text, or `None` when there is nothing to warn about (a full model, or a base recorded by Hub id).

    Example:

    ```python
    >>> from clip_trl.hub import default_lora_config, warn_if_base_is_local
    >>> from clip_trl.offline import build_clip
    >>> from peft import get_peft_model
    >>> base = build_clip("tiny")[0]
    >>> model = get_peft_model(base, default_lora_config(r=2, model=base))
    >>> model.peft_config["default"].base_model_name_or_path = "openai/clip-vit-base-patch32"
    >>> warn_if_base_is_local(model) is None
    True

    ```
    """
    import warnings

    from clip_trl.hub.model_card import _is_hub_id

    configs = getattr(model, "peft_config", None)
    if not isinstance(configs, dict):
        return None
    for name, config in configs.items():
        base = getattr(config, "base_model_name_or_path", None)
        if not base or _is_hub_id(base):
            continue
        message = (
            # No folder in the text: Python shows a warning once per text, and each checkpoint is a new folder.
            f"The adapter being saved names its base model by a local path, {base!r} "
            f"(adapter_config.json's `base_model_name_or_path`): on the Hub or another machine, loading it will "
            "look for that path and fail. Train from the base model's Hub id, or record it before saving: "
            f'`model.peft_config[{name!r}].base_model_name_or_path = "<org>/<base model>"`; whoever loads this '
            "adapter can also pass `clip_trl.hub.load_model(..., base_model=<id or folder>)`."
        )
        # Once per model and base: every checkpoint save calls this, and one warning says it all.
        warned = getattr(model, "_clip_trl_warned_local_bases", None)
        if warned is None:
            warned = set()
            with contextlib.suppress(AttributeError, TypeError):
                object.__setattr__(model, "_clip_trl_warned_local_bases", warned)
        if base not in warned:
            warned.add(base)
            warnings.warn(message, UserWarning, stacklevel=2)
        return message
    return None


def _find(repo: str, filename: str, location: dict[str, Any], hub: dict[str, Any]) -> str | None:
    """Path of `filename` in a local folder or (cached or remote) Hub repository, or `None` if it has none."""
    return cached_file(
        repo,
        filename,
        **location,
        **hub,
        _raise_exceptions_for_gated_repo=False,
        _raise_exceptions_for_missing_entries=False,
        _raise_exceptions_for_connection_errors=False,
    )


def _saved_processor_class(repo: str, location: dict[str, Any], hub: dict[str, Any]) -> type | None:
    """The processor class saved in `repo` (from its processor, image-processor or tokenizer config), if any."""
    from transformers.models.auto.processing_auto import processor_class_from_name

    for filename in _PROCESSOR_FILES:
        path = _find(repo, filename, location, hub)
        if path is None:
            continue
        with open(path, encoding="utf-8") as file:
            name = json.load(file).get("processor_class")
        if name and (processor_class := processor_class_from_name(name)) is not None:
            return processor_class
    return None
