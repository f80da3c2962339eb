"""Captioner reranking: a captioning model proposes several captions per image, a CLIP model picks among them.

A captioner (BLIP, for instance) writes fluent captions but samples them with no notion of which one fits the
image best; a contrastive model scores image–caption fit directly. [`generate_candidates`] draws
`num_candidates` captions per image from an image-to-text model, and [`rerank`] sorts any candidate lists by
CLIP score — so a CLIP fine-tuned with clip_trl on your images can choose the captioner's best guess.

```python
from transformers import BlipForConditionalGeneration, BlipProcessor
from clip_trl.inference.rerank import generate_candidates, rerank

captioner = BlipForConditionalGeneration.from_pretrained("Salesforce/blip-image-captioning-base")
blip_processor = BlipProcessor.from_pretrained("Salesforce/blip-image-captioning-base")
candidates = generate_candidates(images, captioner, num_candidates=5, processor=blip_processor)
ranked = rerank(images, candidates, "runs/emoji/clip_rl_finetuned")   # [[(caption, score), ...], ...]
best = [options[0][0] for options in ranked]
```
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import torch

from clip_trl.data.image_processing import FastImageTransform
from clip_trl.data.rows import load_image, split_processor
from clip_trl.models import encoding
from clip_trl.models.modeling import check_clip_like, logit_scale

__all__ = ["generate_candidates", "rerank"]


def _load_clip(model: Any, processor: Any) -> tuple[Any, Any]:
    """A model and its processor from a model object or a Hub id / folder (full model or LoRA adapter)."""
    if isinstance(model, str):
        from clip_trl.hub.loading import load_model

        loaded, loaded_processor = load_model(model)
        return loaded, processor if processor is not None else loaded_processor
    if processor is None:
        source = getattr(getattr(model, "config", None), "_name_or_path", None)
        if not source:
            raise ValueError(
                "`processor` is required when `model` is a model object that was not loaded from a path."
            )
        from transformers import AutoProcessor

        processor = AutoProcessor.from_pretrained(source)
    return model, processor


def rerank(
    images: Sequence[Any],
    candidates: Sequence[Sequence[str]] | Sequence[str],
    model: Any,
    processor: Any = None,
    batch_size: int = 32,
) -> list[list[tuple[str, float]]]:
    """Sort each image's candidate captions by a CLIP model's score, best first.

    The score is the model's logit, `exp(logit_scale) · cos(image, caption)` (what CLIP's softmax is taken
    over), so scores of one image are comparable with each other; across images, compare ranks. Each image is
    embedded once and each distinct caption once per batch of images, however many images share it.

    Args:
        images (`Sequence`): PIL images, paths, bytes or `datasets.Image` cells (any PIL mode; transparency is
            composited onto white).
        candidates (`Sequence[Sequence[str]]` or `Sequence[str]`): the captions to rank for each image (one list
            per image, e.g. from [`generate_candidates`] or a data set column), or one list for every image.
        model (`str` or `PreTrainedModel`): a CLIP-like model, or its Hub id / folder (a LoRA adapter folder
            too, through `clip_trl.hub.load_model`).
        processor (*optional*): its processor; loaded from `model`'s path when omitted.
        batch_size (`int`, defaults to 32): images per forward pass.

    Returns:
        `list[list[tuple[str, float]]]`: per image, `(caption, score)` pairs sorted by decreasing score (ties keep
        the given order). Duplicate captions in one image's list are kept, with equal scores.

    Raises:
        ValueError: `candidates` has not one list per image, or an image has no candidates.

    Example:

    ```python
    >>> from PIL import Image
    >>> from clip_trl.offline import build_clip
    >>> from clip_trl.inference.rerank import rerank
    >>> model, processor = build_clip("tiny")
    >>> ranked = rerank([Image.new("RGB", (32, 32), "red")], [["a red square", "a cat"]], model, processor)
    >>> sorted(caption for caption, _ in ranked[0])
    ['a cat', 'a red square']

    ```
    """
    if batch_size < 1:
        raise ValueError(f"`batch_size` must be positive, got {batch_size}.")
    images = list(images)
    if candidates and all(isinstance(c, str) for c in candidates):
        candidates = [list(candidates)] * len(images)  # one shared list
    candidates = [list(c) for c in candidates]
    if len(candidates) != len(images):
        raise ValueError(
            f"{len(candidates)} candidate lists for {len(images)} images; pass one list per image."
        )
    for index, options in enumerate(candidates):
        if not options:
            raise ValueError(f"Image {index} has no candidate captions.")
        if not all(isinstance(option, str) for option in options):
            raise ValueError(f"Image {index}'s candidates must be strings, got {options!r}.")
    model, processor = _load_clip(model, processor)
    check_clip_like(model)
    image_processor, tokenizer = split_processor(processor)
    transform = FastImageTransform(image_processor)
    scale = float(logit_scale(model).detach().float().exp())
    ranked: list[list[tuple[str, float]]] = []
    with encoding.eval_mode(model), torch.no_grad():
        for start in range(0, len(images), batch_size):
            batch = [
                load_image(cell, row=start + i) for i, cell in enumerate(images[start : start + batch_size])
            ]
            image_embeds = encoding.embed_images(model, None, batch, len(batch), image_transform=transform)
            lists = candidates[start : start + batch_size]
            texts = list(dict.fromkeys(text for options in lists for text in options))
            text_embeds = encoding.embed_texts(model, tokenizer, texts, batch_size=max(batch_size, 64))
            position = {text: i for i, text in enumerate(texts)}
            scores = scale * image_embeds @ text_embeds.T  # [images in batch, distinct texts]
            for row, options in enumerate(lists):
                values = scores[row, [position[o] for o in options]].tolist()
                order = sorted(range(len(options)), key=lambda i: -values[i])  # stable: ties keep input order
                ranked.append([(options[i], float(values[i])) for i in order])
    return ranked


def _load_captioner(captioner: str) -> Any:
    from transformers import AutoModelForImageTextToText

    try:
        return AutoModelForImageTextToText.from_pretrained(captioner)
    except ValueError:  # an image-to-text model that the image-text-to-text auto class does not map
        from transformers import AutoModelForVision2Seq

        return AutoModelForVision2Seq.from_pretrained(captioner)


def generate_candidates(
    images: Sequence[Any],
    captioner: Any,
    num_candidates: int = 5,
    *,
    processor: Any = None,
    prompt: str | None = None,
    batch_size: int = 8,
    **gen_kwargs: Any,
) -> list[list[str]]:
    """Sample `num_candidates` captions per image from an image-to-text model (BLIP-style `generate`).

    By default the captions are drawn by nucleus sampling (`do_sample=True, top_p=0.9`, `max_new_tokens=30`),
    so the candidates differ; pass `do_sample=False, num_beams=num_candidates` for the beam search's best
    distinct beams instead. Sampling can repeat a caption: the lists always have exactly `num_candidates`
    entries, in generation order. Seed with `transformers.set_seed` for reproducible samples.

    Args:
        images (`Sequence`): PIL images, paths, bytes or `datasets.Image` cells.
        captioner (`str` or `PreTrainedModel`): a captioning model such as `BlipForConditionalGeneration`
            (`"Salesforce/blip-image-captioning-base"`), or its Hub id / folder.
        num_candidates (`int`, defaults to 5): captions per image (`num_return_sequences`).
        processor (*optional*): the captioner's processor (image preprocessing and decoding); loaded from the
            captioner's path when omitted.
        prompt (`str`, *optional*): a caption prefix for conditional captioning, e.g. `"a picture of"` (BLIP
            keeps it at the start of every caption).
        batch_size (`int`, defaults to 8): images per `generate` call.
        **gen_kwargs: passed to `generate` (they override the defaults above).

    Returns:
        `list[list[str]]`: per image, its `num_candidates` captions (special tokens removed, whitespace stripped).

    Example:

    ```python
    >>> from transformers import BlipForConditionalGeneration, BlipProcessor  # doctest: +SKIP
    >>> name = "Salesforce/blip-image-captioning-base"
    >>> blip = BlipForConditionalGeneration.from_pretrained(name)  # doctest: +SKIP
    >>> blip_processor = BlipProcessor.from_pretrained(name)  # doctest: +SKIP
    >>> generate_candidates(images, blip, num_candidates=3, processor=blip_processor)  # doctest: +SKIP
    [['a red apple on a table', 'an apple on a wooden table', 'a close up of an apple'], ...]

    ```
    """
    if num_candidates < 1:
        raise ValueError(f"`num_candidates` must be positive, got {num_candidates}.")
    if batch_size < 1:
        raise ValueError(f"`batch_size` must be positive, got {batch_size}.")
    if isinstance(captioner, str):
        name = captioner
        captioner = _load_captioner(name)
    else:
        name = getattr(getattr(captioner, "config", None), "_name_or_path", None)
    if processor is None:
        if not name:
            raise ValueError(
                "`processor` is required when `captioner` is a model object not loaded from a path."
            )
        from transformers import AutoProcessor

        processor = AutoProcessor.from_pretrained(name)
    settings: dict[str, Any] = {"do_sample": True, "top_p": 0.9, "max_new_tokens": 30}
    settings.update(gen_kwargs)
    settings["num_return_sequences"] = num_candidates
    device = next(captioner.parameters()).device
    floating = next((p.dtype for p in captioner.parameters() if p.is_floating_point()), torch.float32)
    images = list(images)
    results: list[list[str]] = []
    was_training = captioner.training
    captioner.eval()
    try:
        with torch.no_grad():
            for start in range(0, len(images), batch_size):
                batch = [
                    load_image(cell, row=start + i)
                    for i, cell in enumerate(images[start : start + batch_size])
                ]
                kwargs: dict[str, Any] = {"images": batch, "return_tensors": "pt"}
                if prompt is not None:
                    kwargs["text"] = [prompt] * len(batch)
                inputs = processor(**kwargs)
                inputs = {
                    key: value.to(device=device, dtype=floating if value.is_floating_point() else value.dtype)
                    for key, value in inputs.items()
                    if isinstance(value, torch.Tensor)
                }
                output = captioner.generate(**inputs, **settings)
                texts = [text.strip() for text in processor.batch_decode(output, skip_special_tokens=True)]
                # `generate` returns the sequences of image i at rows i*n ... i*n + n - 1.
                results.extend(
                    texts[i * num_candidates : (i + 1) * num_candidates] for i in range(len(batch))
                )
    finally:
        captioner.train(was_training)
    return results
