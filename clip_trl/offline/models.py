"""Small random CLIPs (and a SigLIP) of the real architectures, with the real CLIP tokenizer: the offline default's
model and the tests' tiny ones."""

from __future__ import annotations

import copy
import os
from typing import TYPE_CHECKING, Any

from clip_trl.offline.tokenizer import clip_tokenizer

if TYPE_CHECKING:
    from transformers import CLIPModel, CLIPProcessor


# Keyword arguments of `CLIPTextConfig` / `CLIPVisionConfig` and the shared projection size. The
# token ids and vocabulary size are filled in from the tokenizer by `build_clip`.
OFFLINE_MODEL_SIZES: dict[str, dict[str, Any]] = {
    # For tests: a forward and backward pass take milliseconds on a CPU.
    "tiny": {
        "projection_dim": 32,
        "text_config": {
            "hidden_size": 32,
            "intermediate_size": 64,
            "num_hidden_layers": 2,
            "num_attention_heads": 2,
            "max_position_embeddings": 77,
            "hidden_act": "quick_gelu",
        },
        "vision_config": {
            "hidden_size": 32,
            "intermediate_size": 64,
            "num_hidden_layers": 2,
            "num_attention_heads": 2,
            "image_size": 32,
            "patch_size": 8,
            "hidden_act": "quick_gelu",
        },
    },
    # The offline default: about 19M parameters (two thirds of them the token embedding), trains on
    # the emoji set in minutes on a CPU. 64 px with 8 px patches gives 64 patches per image.
    "small": {
        "projection_dim": 256,
        "text_config": {
            "hidden_size": 256,
            "intermediate_size": 1024,
            "num_hidden_layers": 4,
            "num_attention_heads": 4,
            "max_position_embeddings": 77,
            "hidden_act": "quick_gelu",
        },
        "vision_config": {
            "hidden_size": 256,
            "intermediate_size": 1024,
            "num_hidden_layers": 4,
            "num_attention_heads": 4,
            "image_size": 64,
            "patch_size": 8,
            "hidden_act": "quick_gelu",
        },
    },
    # OpenAI's ViT-B/32 architecture (~151M parameters), randomly initialised: for benchmarks on an
    # accelerator without downloading weights. Too slow to train on a CPU in CI.
    "vit-b-32": {
        "projection_dim": 512,
        "text_config": {
            "hidden_size": 512,
            "intermediate_size": 2048,
            "num_hidden_layers": 12,
            "num_attention_heads": 8,
            "max_position_embeddings": 77,
            "hidden_act": "quick_gelu",
        },
        "vision_config": {
            "hidden_size": 768,
            "intermediate_size": 3072,
            "num_hidden_layers": 12,
            "num_attention_heads": 12,
            "image_size": 224,
            "patch_size": 32,
            "hidden_act": "quick_gelu",
        },
    },
}
"""The presets of [`build_clip`] and [`build_siglip`]: for each size (`"tiny"` for tests, `"small"` for the offline
default, `"vit-b-32"` for benchmarks), the `projection_dim` and the keyword arguments of the text and vision
tower configs."""


def _clip_image_processor(image_size: int) -> Any:
    """OpenAI CLIP's preprocessing at `image_size`: bicubic short-side resize, centre crop, normalise."""
    from transformers.image_utils import OPENAI_CLIP_MEAN, OPENAI_CLIP_STD, PILImageResampling
    from transformers.utils import is_torchvision_available

    # transformers 5 split CLIP's image processor into a torchvision class (`CLIPImageProcessor`) and a
    # PIL one; merely importing the former without torchvision logs a fallback warning, so choose
    # before importing. transformers 4.x has only `CLIPImageProcessor` (PIL based).
    processor_cls: Any
    if is_torchvision_available():
        from transformers import CLIPImageProcessor as processor_cls
    else:
        try:
            from transformers import CLIPImageProcessorPil as processor_cls
        except ImportError:
            from transformers import CLIPImageProcessor as processor_cls
    return processor_cls(
        do_resize=True,
        size={"shortest_edge": image_size},
        resample=PILImageResampling.BICUBIC,
        do_center_crop=True,
        crop_size={"height": image_size, "width": image_size},
        do_rescale=True,
        do_normalize=True,
        image_mean=list(OPENAI_CLIP_MEAN),
        image_std=list(OPENAI_CLIP_STD),
        do_convert_rgb=True,  # composites transparent pixels (all emoji have them) onto white
    )


def build_clip(
    size: str = "small",
    *,
    image_size: int | None = None,
    seed: int = 0,
    output_dir: str | os.PathLike[str] | None = None,
) -> tuple[CLIPModel, CLIPProcessor]:
    """A randomly initialised `CLIPModel` with OpenAI CLIP's architecture, and its `CLIPProcessor`.

    The model is a plain transformers `CLIPModel` (ViT image tower, causal text transformer,
    `quick_gelu`, EOS pooling, learnt `logit_scale`), just smaller: see [`OFFLINE_MODEL_SIZES`]. Its
    text config takes the vocabulary size and BOS/EOS/PAD ids from [`clip_tokenizer`], so the text
    tower pools the hidden state at the first `<|endoftext|>` token.

    Args:
        size (`str`, *optional*, defaults to `"small"`):
            A key of [`OFFLINE_MODEL_SIZES`]: `"tiny"` for tests, `"small"` for the offline default,
            `"vit-b-32"` (OpenAI ViT-B/32's shapes) for benchmarks.
        image_size (`int`, *optional*):
            Override the preset's input resolution (a multiple of its patch size).
        seed (`int`, *optional*, defaults to 0):
            Seed for the weight initialisation; the global torch RNG is left as it was.
        output_dir (`str` or `os.PathLike`, *optional*):
            If given, save the model and processor there, so that `AutoModel.from_pretrained(output_dir)`
            and `AutoProcessor.from_pretrained(output_dir)` load them (and trainers accept the path).

    Returns:
        `tuple[CLIPModel, CLIPProcessor]`: the model (float32, on the CPU, SDPA attention) and the
        processor (OpenAI's mean/std, short-side resize and centre crop to the image size, and the
        CLIP tokenizer with `model_max_length` equal to the text positions).

    Raises:
        ValueError: unknown `size`, or an `image_size` that is not a positive multiple of the patch size.
    """
    import torch
    from transformers import CLIPConfig, CLIPModel, CLIPProcessor

    if size not in OFFLINE_MODEL_SIZES:
        raise ValueError(f"Unknown size {size!r}; choose one of {sorted(OFFLINE_MODEL_SIZES)}.")
    preset = copy.deepcopy(OFFLINE_MODEL_SIZES[size])
    text_kwargs: dict[str, Any] = preset["text_config"]
    vision_kwargs: dict[str, Any] = preset["vision_config"]
    projection_dim: int = preset["projection_dim"]
    if image_size is not None:
        patch = vision_kwargs["patch_size"]
        if image_size <= 0 or image_size % patch:
            raise ValueError(
                f"`image_size` must be a positive multiple of the patch size {patch}, got {image_size}."
            )
        vision_kwargs["image_size"] = image_size

    tokenizer = clip_tokenizer(model_max_length=text_kwargs["max_position_embeddings"])
    # The text tower pools at the first position holding `eos_token_id` (and only when that id is 2
    # does it fall back to the legacy "largest id" rule). Our EOS is also the padding token, so
    # "first" is what makes padded and unpadded texts give the same features.
    text_kwargs.update(
        vocab_size=len(tokenizer),
        bos_token_id=tokenizer.bos_token_id,
        eos_token_id=tokenizer.eos_token_id,
        pad_token_id=tokenizer.pad_token_id,
        projection_dim=projection_dim,
    )
    vision_kwargs["projection_dim"] = projection_dim
    config = CLIPConfig(
        text_config=text_kwargs,
        vision_config=vision_kwargs,
        projection_dim=projection_dim,
        attn_implementation="sdpa",
    )
    # A private RNG stream: the same seed gives the same weights, and the caller's global torch RNG
    # (data order, dropout elsewhere) is not disturbed by building a model.
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        model = CLIPModel(config)

    processor = CLIPProcessor(
        image_processor=_clip_image_processor(vision_kwargs["image_size"]), tokenizer=tokenizer
    )
    if output_dir is not None:
        os.makedirs(output_dir, exist_ok=True)
        from clip_trl.models.modeling import quiet_weight_loading

        with quiet_weight_loading():
            model.save_pretrained(output_dir)
        processor.save_pretrained(output_dir)
    return model, processor


# SigLIP's text tower has 64 positions (and its processor pads every text to them).
_SIGLIP_TEXT_POSITIONS = 64


def build_siglip(
    size: str = "tiny",
    *,
    seed: int = 0,
    output_dir: str | os.PathLike[str] | None = None,
) -> tuple[Any, Any]:
    """A randomly initialised transformers `SiglipModel` with the shapes of [`build_clip`]'s preset, and its
    `SiglipProcessor`: the offline stand-in for `google/siglip-base-patch16-224` in examples and tests.

    SigLIP's architecture (last-position text pooling, attention-pooling image head, `logit_scale` and
    `logit_bias` for the sigmoid loss) with [`clip_tokenizer`] as its tokenizer, 64 text positions (what
    SigLIP's processor pads every text to), and [`build_clip`]'s image preprocessing at the preset's size.

    Example:

    ```python
    >>> from clip_trl.offline import build_siglip
    >>> model, processor = build_siglip("tiny")
    >>> type(model).__name__, type(processor).__name__, model.logit_bias is not None
    ('SiglipModel', 'SiglipProcessor', True)

    ```
    """
    import torch
    from transformers import SiglipConfig, SiglipModel, SiglipProcessor

    if size not in OFFLINE_MODEL_SIZES:
        raise ValueError(f"Unknown size {size!r}; choose one of {sorted(OFFLINE_MODEL_SIZES)}.")
    preset = copy.deepcopy(OFFLINE_MODEL_SIZES[size])
    tokenizer = clip_tokenizer(model_max_length=_SIGLIP_TEXT_POSITIONS)
    text_kwargs = {key: value for key, value in preset["text_config"].items() if key != "hidden_act"}
    text_kwargs.update(
        max_position_embeddings=_SIGLIP_TEXT_POSITIONS,
        vocab_size=len(tokenizer),
        bos_token_id=tokenizer.bos_token_id,
        eos_token_id=tokenizer.eos_token_id,
        pad_token_id=tokenizer.pad_token_id,
    )
    vision_kwargs = {key: value for key, value in preset["vision_config"].items() if key != "hidden_act"}
    config = SiglipConfig(text_config=text_kwargs, vision_config=vision_kwargs, attn_implementation="sdpa")
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        model = SiglipModel(config)
    processor = SiglipProcessor(
        image_processor=_clip_image_processor(vision_kwargs["image_size"]), tokenizer=tokenizer
    )
    if output_dir is not None:
        os.makedirs(output_dir, exist_ok=True)
        from clip_trl.models.modeling import quiet_weight_loading

        with quiet_weight_loading():
            model.save_pretrained(output_dir)
        processor.save_pretrained(output_dir)
    return model, processor
