"""Embed images and texts with a dual encoder: the one place that turns captions into token batches.

Training collators, evaluation, rewards (`ClipScoreReward`), reranking and the model card's snippet must feed a
model the same tokens for the same caption, or a caption gets one embedding in training and another in
evaluation. SigLIP makes this concrete: its text tower pools the *last* position and was trained on texts padded
to the full length, so a caption padded to the longest caption of its batch gets another embedding (cos 0.86
with itself beside a long caption; SigLIP 2, left-padded, 0.40). The rule, per family (from
[`clip_trl.models.families`]):

- SigLIP-family towers: `padding="max_length"`, the processor's own padding, to [`text_max_length`];
- every other tower (CLIP's end-of-text pooling, BERT's first token under an attention mask): pad each batch to
  its longest text, which gives the same embedding as any other padding and costs less.

Whatever the tokenizer returns besides `input_ids` (the `attention_mask`, or nothing, as SigLIP's tokenizer)
goes to the model as a processor call would pass it.

Example:

```python
>>> from PIL import Image
>>> from clip_trl.models import encoding
>>> from clip_trl.offline import build_clip
>>> model, processor = build_clip("tiny")
>>> texts = encoding.embed_texts(model, processor, ["a cat", "a red square on a white background"])
>>> images = encoding.embed_images(model, processor, [Image.new("RGB", (40, 40), "red")])
>>> texts.shape, images.shape, round(float(texts[0].norm()), 4)
(torch.Size([2, 32]), torch.Size([1, 32]), 1.0)

```
"""

from __future__ import annotations

import contextlib
from collections.abc import Callable, Iterator, Mapping, Sequence
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn

from clip_trl.data.image_processing import FastImageTransform
from clip_trl.models import modeling

__all__ = [
    "MAX_TEXT_TOKENS",
    "device_and_dtype",
    "embed_images",
    "embed_texts",
    "eval_mode",
    "image_batch",
    "text_max_length",
    "text_padding",
    "tokenize",
]

# CLIP's text tower has 77 positions; a tokenizer saved without a limit reports a huge sentinel (1e30).
MAX_TEXT_TOKENS = 77
_SANE_LIMIT = 1_000_000


def _tokenizer(processor_or_tokenizer: Any) -> Any:
    return getattr(processor_or_tokenizer, "tokenizer", None) or processor_or_tokenizer


def text_padding(model: nn.Module) -> str:
    """`"max_length"` for SigLIP-family text towers, `"longest"` for the others (see the module docstring)."""
    return modeling.adapter(model).text_padding


def text_max_length(model: nn.Module | None, tokenizer: Any, max_length: int | None = None) -> int:
    """The token limit of captions: `max_length` if given, else the tokenizer's `model_max_length` capped by
    the text tower's positions (and by 77 when neither says: CLIP's length)."""
    if max_length is not None:
        return int(max_length)
    limits = [getattr(_tokenizer(tokenizer), "model_max_length", None)]
    if model is not None:
        config = getattr(modeling.base_model(model), "config", None)
        text_config = getattr(config, "text_config", None) or config
        limits.append(getattr(text_config, "max_position_embeddings", None))
    limits = [int(limit) for limit in limits if isinstance(limit, int) and 0 < limit < _SANE_LIMIT]
    return min(limits) if limits else MAX_TEXT_TOKENS


def tokenize(
    model: nn.Module | None,
    tokenizer: Any,
    texts: Sequence[str],
    max_length: int | None = None,
    padding: str | None = None,
) -> dict[str, torch.Tensor]:
    """Token tensors for `texts` by the family's padding rule: `input_ids`, and `attention_mask` when the
    tokenizer returns one.

    Args:
        model: the dual encoder (its family decides the padding); `None` with an explicit `padding`.
        tokenizer: a tokenizer or a processor holding one.
        texts: the captions.
        max_length: token limit; default [`text_max_length`].
        padding: override the family's rule (`"max_length"` or `"longest"`).
    """
    padding = padding or (text_padding(model) if model is not None else "longest")
    encoded = _tokenizer(tokenizer)(
        list(texts),
        padding=padding,
        truncation=True,
        max_length=text_max_length(model, tokenizer, max_length),
        return_tensors="pt",
    )
    return {key: encoded[key] for key in ("input_ids", "attention_mask") if encoded.get(key) is not None}


def image_batch(transform: Callable[[list[Any]], Any], images: list[Any]) -> dict[str, torch.Tensor]:
    """The vision inputs of `images`: `{"pixel_values": ...}`, plus whatever else the transform returns (a
    processor's `BatchFeature`, e.g. SigLIP 2's `pixel_attention_mask` and `spatial_shapes`)."""
    output = transform(images)
    if isinstance(output, Mapping):
        return {key: torch.as_tensor(value) for key, value in output.items() if value is not None}
    return {"pixel_values": torch.as_tensor(output)}


@contextlib.contextmanager
def eval_mode(model: nn.Module) -> Iterator[None]:
    """Put `model` in eval mode and restore every submodule's own mode afterwards.

    Restoring module by module (not `model.train(was_training)`) keeps deliberately frozen parts, such as
    a tower the user put in eval mode, as they were.
    """
    modes = [(module, module.training) for module in model.modules()]
    model.eval()
    try:
        yield
    finally:
        for module, training in modes:
            module.training = training


def device_and_dtype(model: nn.Module) -> tuple[torch.device, torch.dtype]:
    """Where the inputs must go, and the floating dtype pixel values must have (e.g. bf16 weights)."""
    device, dtype = torch.device("cpu"), torch.float32
    for index, parameter in enumerate(model.parameters()):
        if index == 0:
            device = parameter.device
        if parameter.is_floating_point():
            return device, parameter.dtype
    return device, dtype


def _image_transform(processor_or_transform: Any) -> Callable[[list[Any]], Any]:
    image_processor = getattr(processor_or_transform, "image_processor", None)
    if image_processor is not None:  # a processor: the fast pipeline of its image processor
        return FastImageTransform(image_processor)
    if hasattr(processor_or_transform, "preprocess"):  # an image processor
        return FastImageTransform(processor_or_transform)
    return processor_or_transform


def embed_images(
    model: nn.Module,
    processor: Any,
    images: Sequence[Any],
    batch_size: int = 64,
    image_transform: Callable[[list[Any]], Any] | None = None,
) -> torch.Tensor:
    """L2-normalised float32 CPU embeddings of `images` (decoded PIL images), in order, in eval mode.

    Args:
        model: the dual encoder.
        processor: its processor (or image processor); ignored when `image_transform` is given.
        images: PIL images (already RGB; see `clip_trl.data.rows.load_image` for other inputs).
        batch_size: images per forward.
        image_transform: images -> `pixel_values` (or a mapping of vision inputs); default: the fast pipeline
            of the processor's image processor.
    """
    if image_transform is None and processor is None:
        raise ValueError("`embed_images` needs the model's `processor` (or an `image_transform`).")
    transform = image_transform or _image_transform(processor)
    device, dtype = device_and_dtype(model)
    chunks: list[torch.Tensor] = []
    with eval_mode(model), torch.no_grad():
        for start in range(0, len(images), batch_size):
            inputs = image_batch(transform, list(images[start : start + batch_size]))
            inputs = {
                key: value.to(device=device, dtype=dtype if value.is_floating_point() else value.dtype)
                for key, value in modeling.image_inputs(model, inputs).items()
            }
            features = modeling.image_features(model, **inputs)
            # Normalise in float32: a bf16 norm loses enough precision to reorder close candidates.
            chunks.append(F.normalize(features.float(), dim=-1).cpu())
    if not chunks:
        raise ValueError("There are no images to embed.")
    return torch.cat(chunks)


def embed_texts(
    model: nn.Module,
    tokenizer: Any,
    texts: Sequence[str],
    batch_size: int = 64,
    max_length: int | None = None,
) -> torch.Tensor:
    """L2-normalised float32 CPU embeddings of `texts`, in the given order, in eval mode.

    Texts are tokenised by [`tokenize`] (the family's padding rule); with batch padding, texts of similar length
    are batched together, so short captions are not padded to the longest one of a random batch.
    """
    if not texts:
        raise ValueError("There are no texts to embed.")
    device, _ = device_and_dtype(model)
    order = sorted(range(len(texts)), key=lambda i: len(texts[i]))
    chunks: list[torch.Tensor] = []
    with eval_mode(model), torch.no_grad():
        for start in range(0, len(order), batch_size):
            encoded = tokenize(
                model, tokenizer, [texts[i] for i in order[start : start + batch_size]], max_length
            )
            mask = encoded.get("attention_mask")
            features = modeling.text_features(
                model, encoded["input_ids"].to(device), None if mask is None else mask.to(device)
            )
            chunks.append(F.normalize(features.float(), dim=-1).cpu())
    stacked = torch.cat(chunks)
    embeds = torch.empty_like(stacked)
    embeds[torch.tensor(order, dtype=torch.long)] = stacked
    return embeds
