"""What differs between the image–text dual encoders of transformers, in one table.

clip_trl trains any model with `get_image_features`, `get_text_features` and a learnable temperature. The
families differ in a handful of ways, and each difference is a field of a [`ModelAdapter`] rather than a
special case somewhere in the trainers:

- **text padding**: SigLIP-family text towers pool the *last* position and were trained on texts padded to the
  full length, so their embedding of a caption changes with the padding; they get `"max_length"` (what their
  processors do). Towers that pool at the end-of-text token (CLIP) or the first token with an attention mask
  (BERT-style) give the same embedding for any padding, so batches are padded to their longest text.
- **extra image inputs**: SigLIP 2's processor returns `pixel_attention_mask` and `spatial_shapes` with the
  `pixel_values`, and the vision tower needs all three.
- **pooling**: FLAVA's `get_*_features` return one projected vector per token; its contrastive embedding is
  token 0 (what FLAVA's own contrastive loss uses), and its `forward` runs the multimodal encoder too, so the
  towers are called directly.
- **temperature**: a log-scale `logit_scale` (CLIP: logits = `exp(logit_scale)·cos`) or a `temperature`
  (ALIGN, TIPSv2: logits = `cos / temperature`); clip_trl works in log-scale internally (`-log(temperature)`),
  so gradients reach whichever parameter the model has. Each family also says up to which scale the trainers
  clamp it by default (CLIP's 100; none for SigLIP, whose checkpoints sit above it).
- **LoRA targets**: which linear layers hold the attention query/value projections *in each tower*
  (`q_proj`/`v_proj`, BERT's `query`/`value`, BLIP's fused `qkv`, or ALIGN's EfficientNet convolutions).

Classes not in the table use the generic CLIP-like path (the [`GENERIC`] adapter), so a lookalike keeps working.

Example:

```python
>>> from clip_trl.models.families import adapter_for_class
>>> adapter_for_class("SiglipModel").text_padding
'max_length'
>>> adapter_for_class("AlignModel").temperature
'temperature'
>>> adapter_for_class("SomeFutureClipModel") is adapter_for_class("CLIPModel")
True

```
"""

from __future__ import annotations

from dataclasses import dataclass, field, replace

__all__ = [
    "ADAPTERS",
    "GENERIC",
    "LORA_NAME_GROUPS",
    "ModelAdapter",
    "UnsupportedModelError",
    "adapter_for_class",
]

#: Attention projections LoRA targets, in order of preference: the first group whose names occur in a tower
#: is that tower's default (transformers' CLIP-style attention, BERT / XLM-R attention, a fused projection).
LORA_NAME_GROUPS: tuple[tuple[str, ...], ...] = (("q_proj", "v_proj"), ("query", "value"), ("qkv",))

# CLIP trains `logit_scale` clamped to ln(100) (open_clip does the same); AIMv2 and others copy it.
CLIP_MAX_LOGIT_SCALE = 100.0


class UnsupportedModelError(TypeError):
    """A model class that clip_trl cannot train, with the reason (see the "Supported models" docs page)."""


@dataclass(frozen=True)
class ModelAdapter:
    """How clip_trl drives one family of dual encoders (see the module docstring for each difference).

    Attributes:
        text_padding (`str`): `"longest"` (pad each batch to its longest text) or `"max_length"` (pad every
            text to the tower's full length, as SigLIP's processor does).
        image_inputs (`tuple[str, ...]`): the image processor outputs the vision tower takes.
        pool_first_token (`bool`): the `get_*_features` output is per token; the embedding is token 0.
        use_forward (`bool`): training encodes through the model's `forward` (what DDP expects); `False` when
            the forward does more than the two towers (FLAVA) or does not return `image_embeds`/`text_embeds`.
        temperature (`str`): `"logit_scale"` (log-scale) or `"temperature"` (logits divided by it).
        max_logit_scale (`float` or `None`): the default clamp of `exp(logit_scale)` during training; `None`:
            no clamp unless the user sets `max_logit_scale`.
        logit_bias (`bool`): the class has its own learnable `logit_bias` (SigLIP's sigmoid loss); for the others
            `loss_type="siglip"` adds one (saved and reloaded with the model).
        towers (`dict`): attribute names of each tower's modules (`"vision"`, `"text"`).
        lora_targets (`dict` or `None`): module names LoRA targets per tower; `None` detects them from
            [`LORA_NAME_GROUPS`].
        notes (`str`): what a user should know (shown on the "Supported models" page).
        unsupported (`str` or `None`): why the class cannot be trained; set, the trainers raise
            [`UnsupportedModelError`] with it.
    """

    text_padding: str = "longest"
    image_inputs: tuple[str, ...] = ("pixel_values",)
    pool_first_token: bool = False
    use_forward: bool = True
    temperature: str = "logit_scale"
    max_logit_scale: float | None = CLIP_MAX_LOGIT_SCALE
    logit_bias: bool = False
    towers: dict[str, tuple[str, ...]] = field(
        default_factory=lambda: {
            "vision": ("vision_model", "visual_projection"),
            "text": ("text_model", "text_projection"),
        }
    )
    lora_targets: dict[str, tuple[str, ...]] | None = None
    notes: str = ""
    unsupported: str | None = None


GENERIC = ModelAdapter(notes="The reference architecture.")

_SIGLIP = ModelAdapter(
    text_padding="max_length",
    max_logit_scale=None,
    logit_bias=True,
    notes='Text padded to the tower\'s full length (`padding="max_length"`) everywhere, as SigLIP was trained: '
    "its text tower pools the last position, so other padding changes the embedding. `logit_scale` is not "
    "clamped by default (SigLIP checkpoints sit near exp(4.7) ≈ 112).",
)

_BERT_TEXT = (
    "Text tower is BERT / XLM-R style: LoRA targets `query`/`value` there, `q_proj`/`v_proj` in the ViT."
)

ADAPTERS: dict[str, ModelAdapter] = {
    "CLIPModel": GENERIC,
    "MetaClip2Model": replace(GENERIC, notes="Same architecture as CLIP."),
    "CLIPSegModel": replace(GENERIC, notes="The dual encoder only (not the segmentation decoder)."),
    "OwlViTModel": replace(GENERIC, notes="The image–text dual encoder (not the detection heads)."),
    "Owlv2Model": replace(GENERIC, notes="The image–text dual encoder (not the detection heads)."),
    "Aimv2Model": replace(GENERIC, notes="`logit_scale` clamped to the config's `max_logit_scale`."),
    "GroupViTModel": replace(
        GENERIC,
        notes="The projection heads hold BatchNorm layers: under LoRA their running statistics are kept "
        "frozen (momentum 0), so the base model stays untouched and a saved adapter reproduces the model.",
    ),
    "SiglipModel": _SIGLIP,
    "Siglip2Model": replace(
        _SIGLIP,
        image_inputs=("pixel_values", "pixel_attention_mask", "spatial_shapes"),
        notes=_SIGLIP.notes + " The processor's `pixel_attention_mask` and `spatial_shapes` go to the vision "
        "tower with the patches (NaFlex).",
    ),
    "AlignModel": ModelAdapter(
        temperature="temperature",
        max_logit_scale=None,
        towers={"vision": ("vision_model",), "text": ("text_model", "text_projection")},
        lora_targets={"vision": ("project_conv",), "text": ("query", "value")},
        notes="Temperature parameterised as `temperature` (logits = cos / temperature), trained as "
        "-log(temperature). The EfficientNet vision tower has no attention: LoRA targets its 1x1 `project_conv` "
        "convolutions, and its BatchNorm statistics are kept frozen under LoRA.",
    ),
    "Tipsv2Model": ModelAdapter(
        temperature="temperature",
        max_logit_scale=None,
        notes="Temperature parameterised as `temperature` (logits = cos / temperature).",
    ),
    "AltCLIPModel": replace(GENERIC, notes=_BERT_TEXT),
    "ChineseCLIPModel": replace(GENERIC, notes=_BERT_TEXT),
    "VisionTextDualEncoderModel": replace(
        GENERIC, notes="Any vision and text tower (run_clip.py's model); LoRA targets are found per tower."
    ),
    "BlipModel": replace(
        GENERIC,
        notes="The ITC (contrastive) heads. The ViT has a fused `qkv` projection (LoRA targets it) and the "
        "BERT text tower `query`/`value`.",
    ),
    "FlavaModel": ModelAdapter(
        pool_first_token=True,
        use_forward=False,
        towers={"vision": ("image_model", "image_projection"), "text": ("text_model", "text_projection")},
        lora_targets={"vision": ("query", "value"), "text": ("query", "value")},
        notes="The unimodal towers' token 0, projected (FLAVA's own contrastive embedding); the towers are "
        "called directly, not FLAVA's multimodal `forward`, so under several processes the trainers average the "
        "gradients themselves (DDP's hooks need its `forward`; 2 processes == 1 tested). LoRA's `query`/`value` "
        "also match the multimodal encoder, whose adapters stay unused.",
    ),
    # Classes with image–text (or other) feature methods that are not image–text dual encoders: a clear error
    # instead of a confusing failure halfway through a step.
    "Blip2Model": ModelAdapter(
        unsupported="its `get_text_features` runs the language model (there is no contrastive text embedding and "
        "no temperature); BLIP-2's contrastive heads are in `Blip2ForImageTextRetrieval`, whose text features "
        "need the Q-Former's query tokens and which exposes no `get_text_features` / `get_image_features`.",
    ),
    "XCLIPModel": ModelAdapter(
        unsupported="it is a video–text model (`get_video_features` over frames, a prompt generator conditioned "
        "on the video); clip_trl's data and collators are image–text.",
    ),
    "ClapModel": ModelAdapter(
        unsupported="it is an audio–text model (`get_audio_features`); clip_trl's data and collators are "
        "image–text.",
    ),
}


def adapter_for_class(class_name: str) -> ModelAdapter:
    """The adapter of a model class (by class name); [`GENERIC`] for classes not in [`ADAPTERS`]."""
    return ADAPTERS.get(class_name, GENERIC)
