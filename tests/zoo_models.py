"""Tiny random image–text dual encoders of every family in transformers, built offline, for the zoo tests.

Each entry builds a model from a tiny config (widths 32, one layer, 32-pixel images) and a processor made of a
real image processor class and the offline CLIP BPE tokenizer (`clip_trl.offline.clip_tokenizer`): no download.
The text towers' vocabulary size and special ids come from that tokenizer; what the test checks (padding, the
temperature, LoRA in both towers, save and reload) does not depend on which vocabulary a tower was trained with.
"""

from __future__ import annotations

import copy
import functools
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import torch

from clip_trl.offline import clip_tokenizer

IMAGE = 32
TEXT_POSITIONS = 16
WIDTH = 32
PROJECTION = 16


@functools.cache
def _tokenizer_ids() -> tuple[int, int, int, int]:
    tokenizer = clip_tokenizer(model_max_length=TEXT_POSITIONS)
    return len(tokenizer), tokenizer.bos_token_id, tokenizer.eos_token_id, tokenizer.pad_token_id


@functools.cache
def _cached_tokenizer(positions: int) -> Any:
    return clip_tokenizer(model_max_length=positions)


def _tokenizer(
    padding_side: str = "right", positions: int = TEXT_POSITIONS, pad_id: int | None = None
) -> Any:
    tokenizer = copy.deepcopy(_cached_tokenizer(positions))
    tokenizer.padding_side = padding_side
    if (
        pad_id is not None
    ):  # the text tower's own padding id (the Trainer aligns the config with the tokenizer's)
        tokenizer.pad_token = tokenizer.convert_ids_to_tokens(pad_id)
    return tokenizer


def _vit(**extra: Any) -> dict[str, Any]:
    return {
        "hidden_size": WIDTH,
        "intermediate_size": 37,
        "num_hidden_layers": 1,
        "num_attention_heads": 2,
        "image_size": IMAGE,
        "patch_size": 8,
        **extra,
    }


def _text(**extra: Any) -> dict[str, Any]:
    vocab, bos, eos, pad = _tokenizer_ids()
    return {
        "vocab_size": vocab,
        "hidden_size": WIDTH,
        "intermediate_size": 37,
        "num_hidden_layers": 1,
        "num_attention_heads": 2,
        "max_position_embeddings": TEXT_POSITIONS,
        "bos_token_id": bos,
        "eos_token_id": eos,
        "pad_token_id": pad,
    } | extra


def _bert(**extra: Any) -> dict[str, Any]:
    # BERT / XLM-R style towers: positions beyond the text length (XLM-R offsets its positions by the pad id).
    return _text(max_position_embeddings=TEXT_POSITIONS + 4) | extra


def _clip_image_processor() -> Any:
    from transformers import CLIPImageProcessor

    return CLIPImageProcessor(size={"shortest_edge": IMAGE}, crop_size={"height": IMAGE, "width": IMAGE})


@dataclass(frozen=True)
class ZooEntry:
    """One model class of the zoo: how to build it tiny, and what the test expects of it."""

    name: str
    build_model: Callable[[], torch.nn.Module]
    build_processor: Callable[[], Any]
    notes: str = ""


def _processor(
    processor_class: str,
    image_processor: Callable[[], Any],
    padding_side: str = "right",
    positions: int = TEXT_POSITIONS,
    pad_id: int | None = None,
) -> Callable[[], Any]:
    def build() -> Any:
        import transformers

        cls = getattr(transformers, processor_class)
        return cls(image_processor=image_processor(), tokenizer=_tokenizer(padding_side, positions, pad_id))

    return build


def _model(model_class: str, config_class: str, **config: Any) -> Callable[[], torch.nn.Module]:
    def build() -> torch.nn.Module:
        import transformers

        with torch.random.fork_rng(devices=[]):
            torch.manual_seed(0)
            cfg = getattr(transformers, config_class)(
                **{k: v() if callable(v) else v for k, v in config.items()}
            )
            return getattr(transformers, model_class)(cfg).eval()

    return build


def _clip_like(prefix: str, **extra: Any) -> Callable[[], torch.nn.Module]:
    return _model(
        f"{prefix}Model",
        f"{prefix}Config",
        text_config=_text,
        vision_config=_vit,
        projection_dim=PROJECTION,
        **extra,
    )


def _siglip2_image_processor() -> Any:
    from transformers import Siglip2ImageProcessor

    return Siglip2ImageProcessor(patch_size=8, max_num_patches=16)


def _vtde() -> torch.nn.Module:
    from transformers import (
        BertConfig,
        CLIPVisionConfig,
        VisionTextDualEncoderConfig,
        VisionTextDualEncoderModel,
    )

    config = VisionTextDualEncoderConfig.from_vision_text_configs(
        CLIPVisionConfig(**_vit()), BertConfig(**_bert()), projection_dim=PROJECTION
    )
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(0)
        return VisionTextDualEncoderModel(config).eval()


ZOO: list[ZooEntry] = [
    ZooEntry("CLIPModel", _clip_like("CLIP"), _processor("CLIPProcessor", _clip_image_processor)),
    ZooEntry("MetaClip2Model", _clip_like("MetaClip2"), _processor("CLIPProcessor", _clip_image_processor)),
    ZooEntry(
        "CLIPSegModel",
        _clip_like("CLIPSeg", extract_layers=[0]),
        _processor("CLIPSegProcessor", _clip_image_processor),
    ),
    ZooEntry("OwlViTModel", _clip_like("OwlViT"), _processor("OwlViTProcessor", _clip_image_processor)),
    ZooEntry("Owlv2Model", _clip_like("Owlv2"), _processor("Owlv2Processor", _clip_image_processor)),
    ZooEntry("Aimv2Model", _clip_like("Aimv2"), _processor("CLIPProcessor", _clip_image_processor)),
    ZooEntry(
        "SiglipModel",
        _model("SiglipModel", "SiglipConfig", text_config=_text, vision_config=_vit),
        _processor("SiglipProcessor", _clip_image_processor),
    ),
    ZooEntry(
        "Siglip2Model",
        # 64 text positions: Siglip2Processor pads to 64 by default, as SigLIP 2 was trained.
        _model(
            "Siglip2Model",
            "Siglip2Config",
            text_config=lambda: _text(max_position_embeddings=64),
            vision_config=lambda: {**_vit(), "num_patches": 16},
        ),
        _processor("Siglip2Processor", _siglip2_image_processor, padding_side="left", positions=64),
    ),
    ZooEntry(
        "AlignModel",
        _model(
            "AlignModel",
            "AlignConfig",
            text_config=_bert,
            projection_dim=PROJECTION,
            vision_config=lambda: {
                "image_size": IMAGE,
                "width_coefficient": 1.0,
                "depth_coefficient": 1.0,
                "kernel_sizes": [3],
                "in_channels": [32],
                "out_channels": [16],
                "strides": [2],
                "num_block_repeats": [1],
                "expand_ratios": [1],
                "hidden_dim": PROJECTION,
            },
        ),
        _processor("AlignProcessor", _clip_image_processor),
    ),
    ZooEntry(
        "AltCLIPModel",
        _model(
            "AltCLIPModel",
            "AltCLIPConfig",
            text_config=lambda: _bert(project_dim=PROJECTION, pad_token_id=1),
            vision_config=_vit,
            projection_dim=PROJECTION,
        ),
        _processor("AltCLIPProcessor", _clip_image_processor, pad_id=1),
    ),
    ZooEntry(
        "ChineseCLIPModel",
        _model(
            "ChineseCLIPModel",
            "ChineseCLIPConfig",
            text_config=_bert,
            vision_config=_vit,
            projection_dim=PROJECTION,
        ),
        _processor("ChineseCLIPProcessor", _clip_image_processor),
    ),
    ZooEntry(
        "VisionTextDualEncoderModel",
        _vtde,
        _processor("VisionTextDualEncoderProcessor", _clip_image_processor),
    ),
    ZooEntry(
        "BlipModel",
        _model(
            "BlipModel",
            "BlipConfig",
            text_config=lambda: _bert(encoder_hidden_size=WIDTH),
            vision_config=_vit,
            projection_dim=PROJECTION,
            image_text_hidden_size=PROJECTION,
        ),
        _processor("BlipProcessor", _clip_image_processor),
    ),
    ZooEntry(
        "GroupViTModel",
        _model(
            "GroupViTModel",
            "GroupViTConfig",
            text_config=_text,
            projection_dim=PROJECTION,
            projection_intermediate_dim=PROJECTION,
            vision_config=lambda: {
                **_vit(),
                "num_hidden_layers": 2,
                "depths": [1, 1],
                "num_group_tokens": [4, 0],
                "num_output_groups": [4, 4],
            },
        ),
        _processor("CLIPProcessor", _clip_image_processor),
    ),
    ZooEntry(
        "FlavaModel",
        _model(
            "FlavaModel",
            "FlavaConfig",
            text_config=_bert,
            image_config=_vit,
            multimodal_config=lambda: {
                "hidden_size": WIDTH,
                "intermediate_size": 37,
                "num_hidden_layers": 1,
                "num_attention_heads": 2,
            },
            image_codebook_config=lambda: {
                "hidden_size": 8,
                "num_groups": 1,
                "num_blocks_per_group": 1,
                "vocab_size": 16,
            },
            hidden_size=WIDTH,
            projection_dim=PROJECTION,
            init_codebook=False,
        ),
        _processor("FlavaProcessor", _clip_image_processor),
    ),
    ZooEntry(
        "Tipsv2Model",
        _model(
            "Tipsv2Model",
            "Tipsv2Config",
            text_config=_text,
            vision_config=lambda: {
                "hidden_size": WIDTH,
                "num_hidden_layers": 1,
                "num_attention_heads": 2,
                "mlp_ratio": 1,
                "image_size": IMAGE,
                "patch_size": 8,
            },
        ),
        _processor("CLIPProcessor", _clip_image_processor),
    ),
]

ZOO_BY_NAME = {entry.name: entry for entry in ZOO}


# ------------------------------------------------------------------------------------- the docs page's table

# What tests/models/test_model_zoo.py runs for every class (the "tested" column).
TESTED = "contrastive (InfoNCE, sigmoid), RL, evaluation, save/reload, LoRA both towers + reload, padding"
TABLE_START = "<!-- zoo-table: generated by `PYTHONPATH=. python tests/zoo_models.py --write`; checked by tests/models/test_model_zoo.py -->"
TABLE_END = "<!-- /zoo-table -->"


def supported_models_table() -> str:
    """The "Supported models" table: one row per zoo class, then the classes that raise, with their reasons."""
    from clip_trl.models import lora, modeling
    from clip_trl.models.families import ADAPTERS

    lines = [
        TABLE_START,
        "",
        "| model class | tested | text padding | temperature | LoRA targets (vision / text) | notes |",
        "| --- | --- | --- | --- | --- | --- |",
    ]
    for entry in ZOO:
        model = entry.build_model()
        adapter = modeling.adapter(model)
        targets = " / ".join(
            ", ".join(f"`{n}`" for n in lora.tower_lora_targets(model, tower)) or "–"
            for tower in ("vision", "text")
        )
        bound = f", clamped ≤ {adapter.max_logit_scale:g}" if adapter.max_logit_scale else ", not clamped"
        bound += ", own `logit_bias`" if adapter.logit_bias else ""
        lines.append(
            f"| `{entry.name}` | {TESTED} | {adapter.text_padding} | `{adapter.temperature}`{bound} | {targets} | "
            f"{adapter.notes} |"
        )
    lines += [
        "",
        "| model class | why it cannot be trained (raises `UnsupportedModelError`) |",
        "| --- | --- |",
    ]
    for name, adapter in ADAPTERS.items():
        if adapter.unsupported:
            lines.append(f"| `{name}` | {adapter.unsupported} |")
    lines += ["", TABLE_END]
    return "\n".join(lines)


if __name__ == "__main__":
    import os
    import sys

    page = os.path.join(os.path.dirname(__file__), "..", "docs", "supported_models.md")
    table = supported_models_table()
    if "--write" in sys.argv:
        with open(page, encoding="utf-8") as file:
            text = file.read()
        start, end = text.index(TABLE_START), text.index(TABLE_END) + len(TABLE_END)
        with open(page, "w", encoding="utf-8") as file:
            file.write(text[:start] + table + text[end:])
    else:
        print(table)
