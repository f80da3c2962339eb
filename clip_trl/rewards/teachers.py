"""Teacher rewards: a frozen (usually larger) dual encoder scores the policy's choices.

[`ClipScoreReward`] pays the teacher's CLIPScore of the chosen caption for the image;
[`TeacherProbabilityReward`] the teacher's probability of the choice over the same candidate set."""

from __future__ import annotations

import os
from collections.abc import Sequence
from typing import Any

import torch
from torch import nn

from clip_trl.data.rows import ProcessorImageTransform, load_image, split_processor
from clip_trl.models import encoding
from clip_trl.models.modeling import check_clip_like, logit_scale
from clip_trl.rewards.builtin import _aligned


class ClipScoreReward:
    """CLIPScore from a frozen CLIP teacher (Hessel et al., 2021, "CLIPScore: A Reference-free
    Evaluation Metric for Image Captioning"): `weight x max(cos(image, text), 0)`.

    The teacher is usually a larger CLIP than the policy, so the policy is rewarded for choices that
    a stronger model finds well matched, with no ground truth needed. Which pair is scored depends
    on the direction of the task:

    - image to text (no `queries` kwarg): the query image `images[i]` against the chosen caption
      `completions[i]`;
    - text to image (`queries` passed): the chosen image `images[i]` against the query text
      `queries[i]`.

    In the RL trainer the text scored is `chosen_text`, the text the policy scored (with
    `candidate_labels`, the templated prompt rather than the bare label name). The paper also prefixes
    captions with "A photo depicts"; this class scores the text as given, so add such a prefix to your
    candidates if you want it.

    CLIPScore is an absolute score: it is not calibrated across the candidates of one query (a teacher
    may give every candidate of a hard image a low cosine). For a reward that compares the choice with
    its alternatives, see [`TeacherProbabilityReward`]. Within one call each distinct image (by
    object identity: the trainer repeats the same PIL object for every sample of a query) and each
    distinct text is embedded once, in batches of `batch_size`.

    The model is frozen in place (`eval()`, `requires_grad_(False)`) and only run under
    `torch.no_grad()`, so do not pass the model you are training; load a separate copy.

    Args:
        model (`str`, `os.PathLike` or `nn.Module`):
            A hub id or local path, loaded with `AutoModel.from_pretrained` (and its processor with
            `AutoProcessor.from_pretrained` unless `processor` is given), or an instantiated CLIP-like
            model (anything with `get_image_features`, `get_text_features` and `logit_scale`).
        processor (`ProcessorMixin`, `str` or `os.PathLike`, *optional*):
            A processor with an `image_processor` and a `tokenizer` (e.g. `CLIPProcessor`), or where
            to load one from. Required when `model` is an instance.
        weight (`float`, *optional*, defaults to 2.5):
            The rescaling `w` of the paper (2.5 spreads scores of typical captions over about [0, 1]).
        batch_size (`int`, *optional*, defaults to 64):
            Images or texts per teacher forward.
        device (`str` or `torch.device`, *optional*):
            Where to run the teacher. By default an instance stays where it is, and a model loaded
            here goes to the current CUDA device when there is one (each process's own under
            `accelerate launch`), else the CPU.

    Raises:
        ValueError: `model` is an instance and no `processor` was given, or `batch_size < 1`.
        TypeError: the model is not CLIP-like, or the processor lacks an image processor or tokenizer.

    Example:

    ```python
    >>> from PIL import Image
    >>> from clip_trl.offline import build_clip
    >>> from clip_trl.rewards import ClipScoreReward
    >>> teacher, processor = build_clip("tiny")
    >>> reward = ClipScoreReward(teacher, processor)
    >>> image = Image.new("RGB", (32, 32), "red")
    >>> scores = reward(["a red square", "a cat"], images=[image, image])
    >>> len(scores), all(0.0 <= s <= 2.5 for s in scores)
    (2, True)

    ```
    """

    def __init__(
        self,
        model: str | os.PathLike[str] | nn.Module,
        processor: Any = None,
        weight: float = 2.5,
        batch_size: int = 64,
        device: str | torch.device | None = None,
    ) -> None:
        if batch_size < 1:
            raise ValueError(f"`batch_size` must be at least 1, got {batch_size}.")
        if isinstance(model, (str, os.PathLike)):
            # clip_trl's loader: a mistyped folder fails at once, and parameters clip_trl added (a sigmoid loss's
            # `logit_bias`) are kept.
            from clip_trl.models.modeling import load_pretrained

            name = os.fspath(model)
            model = load_pretrained(name)
            if processor is None:
                processor = name
            if device is None and torch.cuda.is_available():
                device = torch.device("cuda", torch.cuda.current_device())
        elif processor is None:
            raise ValueError(
                f"ClipScoreReward was given an instantiated {type(model).__name__} but no `processor`; pass "
                "the teacher's processor, e.g. `ClipScoreReward(model, AutoProcessor.from_pretrained(<model id>))`, "
                "or pass the model's hub id / path instead of the model to load both."
            )
        if isinstance(processor, (str, os.PathLike)):
            from transformers import AutoProcessor

            processor = AutoProcessor.from_pretrained(os.fspath(processor))
        check_clip_like(model)
        self.image_processor, self.tokenizer = split_processor(processor)
        if device is not None:
            model = model.to(device)
        # Frozen teacher: eval() turns off dropout so a score does not depend on the step's RNG, and
        # no parameter asks for a gradient, so an optimizer built over "all parameters that require
        # grad" can never pick the teacher up.
        model.eval()
        model.requires_grad_(False)
        self.model = model
        self.processor = processor
        self.weight = float(weight)
        self.batch_size = int(batch_size)
        # The trainer logs rewards under `rewards/{__name__}/...`.
        self.__name__ = "clip_score"

        # Truncate to what the text tower can embed (the same limit as training and evaluation use): a long
        # caption must not crash the step.
        self.max_length = encoding.text_max_length(model, self.tokenizer)

    def __repr__(self) -> str:
        return f"{type(self).__name__}(model={type(self.model).__name__}, weight={self.weight})"

    @property
    def device(self) -> torch.device:
        """Where the teacher's parameters live (read each time, in case the user moves the model)."""
        parameter = next(self.model.parameters(), None)
        return parameter.device if parameter is not None else torch.device("cpu")

    def _embed_images(self, images: list[Any]) -> torch.Tensor:
        transform = ProcessorImageTransform(self.image_processor)
        chunks = []
        for start in range(0, len(images), self.batch_size):
            # Decoded per batch, not all at once, to bound memory with many large images.
            pil = [load_image(image) for image in images[start : start + self.batch_size]]
            chunks.append(
                encoding.embed_images(self.model, None, pil, self.batch_size, image_transform=transform)
            )
        return torch.cat(chunks).to(self.device)

    def _embed_texts(self, texts: list[str]) -> torch.Tensor:
        # The family's padding rule (SigLIP: max length), the same as in training and evaluation.
        return encoding.embed_texts(self.model, self.tokenizer, texts, self.batch_size, self.max_length).to(
            self.device
        )

    def __call__(
        self,
        completions: list[str],
        images: Sequence[Any] | None = None,
        queries: Sequence[str | None] | None = None,
        chosen_text: Sequence[str | None] | None = None,
        **kwargs: Any,
    ) -> list[float | None]:
        """Score each action; see the class docstring for which image and text are paired.

        Args:
            completions (`list[str]`):
                The chosen caption of each action (image to text); unused in the text-to-image form, and
                replaced by `chosen_text` when that is passed.
            images (`list`):
                Image to text: the query image of each action; text to image: the chosen image. PIL
                images, paths, bytes or `datasets.Image` dicts (anything `clip_trl.data.rows.load_image`
                decodes).
            queries (`list[str]`, *optional*):
                Text to image: the query text of each action. Its presence selects that form.
            chosen_text (`list[str]`, *optional*):
                Image to text: the text the policy actually scored for the chosen candidate, as the RL
                trainer passes it. With `candidate_labels` it is the templated prompt ("a photo of a
                sneaker.") while the completion is the bare label ("sneaker"); the teacher scores the
                prompt, the text it was trained to match.
            **kwargs:
                Other reward inputs; ignored.

        Returns:
            `list[float | None]`: the CLIPScore per action, in `[0, weight]`; `None` where the image or
            the text of an action is `None`.

        Raises:
            ValueError: `images` was not passed, or a kwarg is not aligned with `completions`.
        """
        n = len(completions)
        if images is None:
            raise ValueError(
                "ClipScoreReward needs the `images` keyword argument (the query images for image to text, "
                "the chosen images for text to image), one per completion."
            )
        images = _aligned(images, n, "images", "clip_score")
        if queries is not None:
            texts = _aligned(queries, n, "queries", "clip_score")
        elif chosen_text is not None:
            texts = _aligned(chosen_text, n, "chosen_text", "clip_score")
        else:
            texts = list(completions)

        # Each distinct image and text is embedded once. `id()` is a sound key here: every image stays
        # referenced by `images` until the call returns, so no two live objects share an id, and
        # unlike hashing pixels it costs nothing (the trainer repeats one PIL object per sample).
        image_slot: dict[int, int] = {}
        text_slot: dict[str, int] = {}
        distinct_images: list[Any] = []
        distinct_texts: list[str] = []
        pairs: list[tuple[int, int] | None] = []
        for image, text in zip(images, texts, strict=True):
            if image is None or text is None:
                pairs.append(None)
                continue
            if id(image) not in image_slot:
                image_slot[id(image)] = len(distinct_images)
                distinct_images.append(image)
            if text not in text_slot:
                text_slot[text] = len(distinct_texts)
                distinct_texts.append(text)
            pairs.append((image_slot[id(image)], text_slot[text]))
        if not distinct_images:
            return [None] * n

        with torch.no_grad():
            image_embeds = self._embed_images(distinct_images)
            text_embeds = self._embed_texts(distinct_texts)
            kept = [pair for pair in pairs if pair is not None]
            image_index = torch.tensor([i for i, _ in kept], device=image_embeds.device)
            text_index = torch.tensor([t for _, t in kept], device=text_embeds.device)
            cosine = (image_embeds[image_index] * text_embeds[text_index]).sum(dim=-1)
            scores = (self.weight * cosine.clamp(min=0.0)).tolist()

        values = iter(scores)
        return [None if pair is None else next(values) for pair in pairs]


class TeacherProbabilityReward(ClipScoreReward):
    """A frozen CLIP teacher's probability of the chosen candidate among the action's candidates.

    For an image `x` with candidate texts `t_1..t_K` (the texts the policy scored: `candidate_texts`),
    the teacher's own policy is `p(k | x) = softmax_k(exp(teacher.logit_scale) · cos(x, t_k))`, and the
    reward of choosing `k` is `p(k | x)` (or `log p(k | x)` with `log_probability=True`). Unlike the
    absolute [`ClipScoreReward`], it is calibrated over the candidate set: it says how much better the
    choice is than its alternatives, in the teacher's judgement, so a student can be distilled from a
    teacher on unlabeled images. With `"exact"` advantages the expected reward `Σ_k π(k|x) p(k|x)` is
    maximised by putting π's mass on the teacher's favourite; `log_probability=True` instead rewards
    matching the teacher's ranking of the alternatives too (it penalises choices the teacher finds
    very unlikely much more strongly).

    Needs the `images`, `candidate_texts` and `chosen` keyword arguments the RL trainer passes for
    `direction="image_to_text"` (any candidate set). Each distinct image and text is embedded once per
    call.

    Args:
        model, processor, batch_size, device: as for [`ClipScoreReward`].
        log_probability (`bool`, *optional*, defaults to `False`):
            Return `log p(chosen | x)` instead of `p(chosen | x)`.

    Raises:
        ValueError: the text-to-image form (`queries` passed), or missing `images` / `candidate_texts` /
            `chosen`.

    Example:

    ```python
    >>> from PIL import Image
    >>> from clip_trl.offline import build_clip
    >>> from clip_trl.rewards import TeacherProbabilityReward
    >>> teacher, processor = build_clip("tiny")
    >>> reward = TeacherProbabilityReward(teacher, processor)
    >>> image = Image.new("RGB", (32, 32), "red")
    >>> options = ["a photo of a red square.", "a photo of a cat."]
    >>> p = reward(["red square", "cat"], images=[image, image], candidate_texts=[options, options], chosen=[0, 1])
    >>> round(sum(p), 6)  # the teacher's probabilities of the two candidates of one image
    1.0

    ```
    """

    def __init__(
        self,
        model: str | os.PathLike[str] | nn.Module,
        processor: Any = None,
        log_probability: bool = False,
        batch_size: int = 64,
        device: str | torch.device | None = None,
    ) -> None:
        super().__init__(model, processor, batch_size=batch_size, device=device)
        self.log_probability = bool(log_probability)
        self.__name__ = "teacher_log_probability" if self.log_probability else "teacher_probability"

    def __repr__(self) -> str:
        return f"{type(self).__name__}(model={type(self.model).__name__}, log_probability={self.log_probability})"

    def __call__(
        self,
        completions: list[str],
        images: Sequence[Any] | None = None,
        candidate_texts: Sequence[Sequence[str]] | None = None,
        chosen: Sequence[int] | None = None,
        queries: Sequence[str | None] | None = None,
        **kwargs: Any,
    ) -> list[float | None]:
        """The teacher's (log-)probability of each action's choice; `None` where the image is `None`.

        Args:
            completions (`list[str]`): the chosen candidates (used only for their count).
            images (`list`): the query image of each action.
            candidate_texts (`list[list[str]]`): the texts the policy scored for the action's candidates.
            chosen (`list[int]`): the index of the chosen candidate in `candidate_texts[i]`.
            **kwargs: other reward inputs; ignored.
        """
        name = self.__name__
        if queries is not None:
            raise ValueError(
                f"{name} scores an image's choice among candidate texts; it does not support "
                "`direction='text_to_image'`. Use `ClipScoreReward` there."
            )
        missing = [
            key
            for key, value in (("images", images), ("candidate_texts", candidate_texts), ("chosen", chosen))
            if value is None
        ]
        if missing:
            raise ValueError(
                f"{name} needs the keyword arguments {', '.join(missing)} (the RL trainer passes them); "
                "pass one entry per completion when calling it directly."
            )
        n = len(completions)
        images = _aligned(images, n, "images", name)
        candidate_texts = _aligned(candidate_texts, n, "candidate_texts", name)
        chosen = _aligned(chosen, n, "chosen", name)

        image_slot: dict[int, int] = {}
        distinct_images: list[Any] = []
        text_slot: dict[str, int] = {}
        distinct_texts: list[str] = []
        actions: list[tuple[int, list[int], int] | None] = []
        for image, texts, k in zip(images, candidate_texts, chosen, strict=True):
            if image is None:
                actions.append(None)
                continue
            if not 0 <= int(k) < len(texts):
                raise ValueError(f"{name}: `chosen` index {k} is outside its {len(texts)} candidates.")
            if id(image) not in image_slot:
                image_slot[id(image)] = len(distinct_images)
                distinct_images.append(image)
            slots = []
            for text in texts:
                if text not in text_slot:
                    text_slot[text] = len(distinct_texts)
                    distinct_texts.append(text)
                slots.append(text_slot[text])
            actions.append((image_slot[id(image)], slots, int(k)))
        if not distinct_images:
            return [None] * n

        with torch.no_grad():
            image_embeds = self._embed_images(distinct_images)
            text_embeds = self._embed_texts(distinct_texts)
            scale = logit_scale(self.model).detach().float().exp().to(image_embeds.device)
            logits = scale * image_embeds @ text_embeds.T  # [distinct images, distinct texts]
            scores: list[float | None] = []
            for action in actions:
                if action is None:
                    scores.append(None)
                    continue
                image, slots, k = action
                log_p = torch.log_softmax(logits[image, slots], dim=0)[k]
                scores.append(float(log_p if self.log_probability else log_p.exp()))
        return scores
