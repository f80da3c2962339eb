"""Reward callables for [`ClipRLTrainer`], and the one place rewards are resolved, called, checked and combined
([`RewardSet`]).

A reward is any callable with TRL's signature

```python
def my_reward(completions: list[str], **kwargs) -> list[float | None]: ...
```

It is called once per RL step with one entry per scored action (query x sample). `completions[i]` is
the chosen candidate; the keyword arguments are lists aligned with `completions` (`images`,
`queries`, `candidates`, `chosen`, `candidate_texts`, `chosen_text`, `chosen_row`, `probs`,
`ground_truth` and every other dataset column), except
`trainer_state`, which is the single `TrainerState` of the run. A reward returns one float per action,
or `None` where it does not apply (the trainer then leaves that action out of the baseline and the
means). Built-ins accept and ignore keyword arguments they do not use, so that one call signature
serves every reward.

Built-ins, also reachable by name (`reward_funcs=["correctness"]`, see [`get_reward_function`]):

- [`correctness`]: 1 if the chosen candidate is the ground truth, else 0.
- [`confidence_correctness`]: correctness x pi(chosen | x), the reward of the original CLIP_RL_FT project.
- [`caption_similarity`]: partial credit, the word-overlap F1 between the choice and the ground truth.
- [`ClipScoreReward`]: a frozen (typically larger) CLIP as a teacher, scoring CLIPScore of the text
  the policy scored. It needs a model, so it is instantiated by the user rather than named.
- [`TeacherProbabilityReward`]: the teacher's softmax probability of the chosen candidate over the
  candidate set — a calibrated teacher reward, for distillation on unlabeled images.
"""

from __future__ import annotations

import dataclasses
import functools
import math
import os
import re
import unicodedata
from collections import Counter
from collections.abc import Callable, Sequence
from typing import Any

import numpy as np
import torch
from torch import nn
from transformers.utils import logging as hf_logging

from clip_trl.data.rows import ProcessorImageTransform, load_image, split_processor
from clip_trl.models import encoding
from clip_trl.models.modeling import check_clip_like, logit_scale
from clip_trl.rewards.graded import GradedReward

__all__ = [
    "REWARD_FUNCTIONS",
    "ClipScoreReward",
    "RewardFunction",
    "RewardScores",
    "RewardSet",
    "TeacherProbabilityReward",
    "call_reward",
    "score_rewards",
    "caption_similarity",
    "confidence_correctness",
    "correctness",
    "get_reward_function",
    "reward_name",
]

RewardFunction = Callable[..., list[float | None]]

# A ground-truth entry: one string, several acceptable strings (COCO has five captions per image), or
# None when the row has no label.
GroundTruth = str | Sequence[str] | None


# --------------------------------------------------------------------------------------------- helpers


def _aligned(values: Any, n: int, key: str, reward: str) -> list[Any]:
    """`values` as a list of length `n` (all `None` when the kwarg was not passed).

    A length mismatch is an error rather than a silent `zip` truncation: it means the caller's kwargs
    are not one-per-action, and every reward computed from them would be attached to the wrong action.
    """
    if values is None:
        return [None] * n
    if isinstance(values, str):  # a bare string would otherwise be "aligned" character by character
        raise TypeError(f"{reward}: `{key}` must be a list with one entry per completion, got a string.")
    values = list(values)
    if len(values) != n:
        raise ValueError(
            f"{reward}: `{key}` has {len(values)} entries but there are {n} completions; "
            "reward keyword arguments must hold one entry per completion."
        )
    return values


def _truths(ground_truth: GroundTruth) -> list[str] | None:
    """The acceptable answers of one action, or `None` when unknown (None, or an empty list)."""
    if ground_truth is None:
        return None
    if isinstance(ground_truth, str):
        return [ground_truth]
    truths = list(ground_truth)
    return truths or None


def _is_correct(completion: str, ground_truth: GroundTruth) -> float | None:
    truths = _truths(ground_truth)
    if truths is None:
        return None
    return 1.0 if any(completion == truth for truth in truths) else 0.0


# Apostrophes join rather than split, so "dog's" is the single word "dogs" rather than "dog" + "s"
# (a stray "s" token would count as overlap between unrelated possessives).
_APOSTROPHES = re.compile(r"['\u2019\u02bc]")
# A word is a run of Unicode letters or digits: `\w` minus the underscore. Everything else
# (punctuation, symbols, emoji, whitespace, "_") separates words.
_WORD = re.compile(r"[^\W_]+")


def _words(text: str) -> list[str]:
    # NFKC first so that composed and decomposed accents ("café") give the same single word, and
    # full-width or ligature forms match their plain spelling.
    text = unicodedata.normalize("NFKC", text).casefold()
    return _WORD.findall(_APOSTROPHES.sub("", text))


def _token_f1(prediction: str, truth: str) -> float:
    predicted, expected = _words(prediction), _words(truth)
    if not predicted or not expected:
        # Texts with no words at all (e.g. a bare emoji): only an exact match earns credit.
        return 1.0 if not predicted and not expected and prediction.strip() == truth.strip() else 0.0
    # Multiset overlap: a word repeated in the prediction only counts as often as the truth has it,
    # so "dog dog dog" does not get full precision against "a dog".
    overlap = sum((Counter(predicted) & Counter(expected)).values())
    return 2.0 * overlap / (len(predicted) + len(expected))


# -------------------------------------------------------------------------------------- text rewards


def correctness(
    completions: list[str], ground_truth: Sequence[GroundTruth] | None = None, **kwargs: Any
) -> list[float | None]:
    """1.0 where the chosen candidate equals the ground truth, 0.0 where it does not.

    Strings are compared exactly (no case or whitespace folding: the candidates come from the same
    caption column as the ground truth, so an exact match is the meaningful one). A ground truth that
    is a list of strings (COCO-style rows with several captions) is matched if any of them is equal.

    Args:
        completions (`list[str]`):
            The chosen candidate of each action.
        ground_truth (`list[str | list[str] | None]`, *optional*):
            The correct answer(s) of each action, aligned with `completions`.
        **kwargs:
            Other reward inputs (`probs`, `images`, `trainer_state`, dataset columns, ...); ignored.

    Returns:
        `list[float | None]`: 1.0 / 0.0 per action; `None` where the ground truth is `None` (or an
        empty list), and everywhere when `ground_truth` is not passed at all.

    Example:

    ```python
    >>> from clip_trl.rewards import correctness
    >>> correctness(["a cat", "a dog", "a cow"], ground_truth=["a cat", ["a puppy", "a dog"], None])
    [1.0, 1.0, None]

    ```
    """
    truths = _aligned(ground_truth, len(completions), "ground_truth", "correctness")
    return [_is_correct(completion, truth) for completion, truth in zip(completions, truths, strict=True)]


def confidence_correctness(
    completions: list[str],
    ground_truth: Sequence[GroundTruth] | None = None,
    probs: Sequence[float] | None = None,
    **kwargs: Any,
) -> list[float | None]:
    """Correctness times the policy's probability of its choice: `correct x pi(chosen | x)`.

    This is the reward of the research project `clip_trl` grew out of. A correct choice made with
    confidence earns more than a lucky one; a wrong choice earns 0 whatever its probability (with a
    group baseline, confident wrong choices are still pushed down relative to their group).

    Args:
        completions (`list[str]`):
            The chosen candidate of each action.
        ground_truth (`list[str | list[str] | None]`, *optional*):
            The correct answer(s) of each action; a list entry matches any of its strings.
        probs (`list[float]`, *optional*):
            pi(chosen | x) of each action, as passed by the trainer. Required whenever some ground
            truth is known.
        **kwargs:
            Other reward inputs; ignored.

    Returns:
        `list[float | None]`: `probs[i]` where the choice is correct, 0.0 where it is wrong, `None`
        where the ground truth is unknown (everywhere when `ground_truth` is not passed).

    Raises:
        ValueError: some ground truth is known but `probs` was not passed.

    Example:

    ```python
    >>> from clip_trl.rewards import confidence_correctness
    >>> confidence_correctness(["a cat", "a dog", "a cow"], ground_truth=["a cat", "a cat", None], probs=[0.5, 0.9, 0.2])
    [0.5, 0.0, None]

    ```
    """
    n = len(completions)
    correct = correctness(completions, ground_truth=ground_truth)
    if probs is None:
        if any(c is not None for c in correct):
            raise ValueError(
                "confidence_correctness needs `probs` (pi(chosen | x) of each action); the RL trainer "
                "passes it, so pass it yourself when calling the reward directly."
            )
        return correct
    probabilities = _aligned(probs, n, "probs", "confidence_correctness")
    return [None if c is None else c * float(p) for c, p in zip(correct, probabilities, strict=True)]


def caption_similarity(
    completions: list[str], ground_truth: Sequence[GroundTruth] | None = None, **kwargs: Any
) -> list[float | None]:
    """Partial credit in [0, 1]: the word-overlap F1 between the chosen caption and the ground truth.

    Both texts are split into words the same way: Unicode NFKC normalisation, case folding,
    apostrophes removed ("dog's" -> "dogs"), then every maximal run of letters and digits is a word;
    punctuation, symbols and whitespace only separate words. With `P` the completion's words and `G`
    the ground truth's (as multisets, so a repeated word counts at most as often as the other side
    has it), the score is the F1 of precision `|P & G| / |P|` and recall `|P & G| / |G|`, i.e.
    `2 |P & G| / (|P| + |G|)` (the SQuAD token-F1, without SQuAD's removal of articles). Word order is
    ignored. A text with no words at all (say a bare emoji) scores 1.0 only against an identical one.

    With a list of ground truths the best-matching one counts (max over the list).

    Args:
        completions (`list[str]`):
            The chosen caption of each action.
        ground_truth (`list[str | list[str] | None]`, *optional*):
            The reference caption(s) of each action, aligned with `completions`.
        **kwargs:
            Other reward inputs; ignored.

    Returns:
        `list[float | None]`: the F1 per action; `None` where the ground truth is unknown (everywhere
        when `ground_truth` is not passed).

    Example:

    ```python
    >>> from clip_trl.rewards import caption_similarity
    >>> caption_similarity(["A red car.", "a blue bus"], ground_truth=["a red CAR", ["a dog", "a bus"]])
    [1.0, 0.8]

    ```
    """
    truths = _aligned(ground_truth, len(completions), "ground_truth", "caption_similarity")
    scores: list[float | None] = []
    for completion, truth in zip(completions, truths, strict=True):
        options = _truths(truth)
        scores.append(None if options is None else max(_token_f1(completion, option) for option in options))
    return scores


# ------------------------------------------------------------------------------------ the CLIP teacher


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
            from transformers import AutoModel

            name = os.fspath(model)
            model = AutoModel.from_pretrained(name)
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
            chunks.append(encoding.embed_images(self.model, None, pil, self.batch_size, image_transform=transform))
        return torch.cat(chunks).to(self.device)

    def _embed_texts(self, texts: list[str]) -> torch.Tensor:
        # The family's padding rule (SigLIP: max length), the same as in training and evaluation.
        return encoding.embed_texts(self.model, self.tokenizer, texts, self.batch_size, self.max_length).to(self.device)

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
        missing = [key for key, value in (("images", images), ("candidate_texts", candidate_texts),
                                          ("chosen", chosen)) if value is None]
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
# ------------------------------------------------------------------------------------------- registry

REWARD_FUNCTIONS: dict[str, RewardFunction] = {
    "correctness": correctness,
    "confidence_correctness": confidence_correctness,
    "caption_similarity": caption_similarity,
    # Partial credit for a caption of the right `group` (the offline default's recipe; see clip_trl.rewards.graded).
    "graded_group": GradedReward(column="group"),
}
"""Built-in rewards by the name `reward_funcs` accepts."""


def get_reward_function(name: str) -> RewardFunction:
    """The built-in reward registered under `name` in [`REWARD_FUNCTIONS`].

    Args:
        name (`str`): e.g. `"correctness"`.

    Returns:
        `Callable`: the reward function.

    Raises:
        ValueError: no built-in has that name (the message lists those that exist).
        TypeError: `name` is not a string.

    Example:

    ```python
    >>> from clip_trl.rewards import get_reward_function
    >>> get_reward_function("correctness")(["a cat"], ground_truth=["a cat"])
    [1.0]

    ```
    """
    if not isinstance(name, str):
        raise TypeError(
            f"get_reward_function takes the name of a built-in reward, got {type(name).__name__}; "
            "pass callables to the trainer directly."
        )
    if name not in REWARD_FUNCTIONS:
        raise ValueError(
            f"Unknown reward function '{name}'. Built-in rewards: {', '.join(sorted(REWARD_FUNCTIONS))}. "
            "Pass a callable for anything else."
        )
    return REWARD_FUNCTIONS[name]


def reward_name(func: Callable[..., Any]) -> str:
    """The name a reward is logged under (`rewards/{name}/mean`).

    `functools.partial` wrappers (nested ones too) are unwrapped, so `partial(my_reward, k=3)` logs as
    `my_reward`; then the callable's `__name__` is used, or, for a callable instance without one,
    its class name.

    Args:
        func (`Callable`): a reward function, partial, or callable object.

    Returns:
        `str`: the name.

    Example:

    ```python
    >>> import functools
    >>> from clip_trl.rewards import correctness, reward_name
    >>> reward_name(functools.partial(functools.partial(correctness), ground_truth=None))
    'correctness'

    ```
    """
    while isinstance(func, functools.partial):
        func = func.func
    name = getattr(func, "__name__", None)
    return name if isinstance(name, str) else type(func).__name__


# ------------------------------------------------------------------------------------------- scoring


@dataclasses.dataclass
class RewardScores:
    """What [`RewardSet`] returns for one batch of actions.

    Attributes:
        total (`torch.Tensor` `[N]`): the weighted sum over the reward functions, ignoring the ones that
            returned `None` for an action; NaN where every function returned `None`.
        per_function (`torch.Tensor` `[N, F]`): each function's raw values, NaN for `None`.
        names (`list[str]`): the functions' logged names, in column order.
    """

    total: torch.Tensor
    per_function: torch.Tensor
    names: list[str]

    def metrics(self) -> dict[str, torch.Tensor]:
        """`rewards/{name}/mean` and `rewards/{name}/std` over each function's non-`None` values (a function
        that applied to no action is left out)."""
        out: dict[str, torch.Tensor] = {}
        for name, column in zip(self.names, self.per_function.T):
            valid = column[~torch.isnan(column)]
            if valid.numel():
                out[f"rewards/{name}/mean"] = valid.mean()
                out[f"rewards/{name}/std"] = valid.std(unbiased=False)
        return out


class RewardSet:
    """Reward functions resolved, named, weighted and checked: the one place rewards are scored.

    Used by [`ClipRLTrainer`] every step and by the pipeline's greedy evaluation, so both apply the same
    rules (TRL's): a function returns one number or `None` per completion; `None` means "does not apply"
    and becomes NaN; the total is the weighted sum over the functions that apply, NaN where none does.

    Args:
        reward_funcs (callable, `str`, or a list of them): reward callables and/or names of built-ins
            ([`REWARD_FUNCTIONS`]). Two functions with the same name get `_2`, `_3`... suffixes, so their
            logged metrics stay apart.
        weights (`Sequence[float]`, *optional*): one weight per function; all 1 by default.

    Raises:
        ValueError: no reward, an unknown built-in name, or a wrong number of weights.
        TypeError: an entry that is neither a callable nor a string.

    Example:

    ```python
    >>> from clip_trl.rewards import RewardSet
    >>> rewards = RewardSet(["correctness", "caption_similarity"], weights=[1.0, 0.5])
    >>> scores = rewards(["a red car", "a cat"], ground_truth=["a red car", None])
    >>> scores.names, scores.total.tolist()
    (['correctness', 'caption_similarity'], [1.5, nan])

    ```
    """

    def __init__(self, reward_funcs: Any, weights: Sequence[float] | None = None) -> None:
        funcs = reward_funcs if isinstance(reward_funcs, (list, tuple)) else [reward_funcs]
        if not funcs:
            raise ValueError("`reward_funcs` is empty; pass at least one reward, e.g. `reward_funcs='correctness'`.")
        self.funcs: list[RewardFunction] = []
        self.names: list[str] = []
        for func in funcs:
            if isinstance(func, str):
                func = get_reward_function(func)
            elif not callable(func):
                raise TypeError(
                    f"Each reward must be a callable or a built-in's name, got {type(func).__name__} {func!r}."
                )
            name = base = reward_name(func)
            suffix = 2
            while name in self.names:  # two rewards of the same name must not share a logged metric
                name, suffix = f"{base}_{suffix}", suffix + 1
            self.funcs.append(func)
            self.names.append(name)
        if weights is not None and len(weights) != len(self.funcs):
            raise ValueError(
                f"`reward_weights` has {len(weights)} entries but there are {len(self.funcs)} reward "
                f"functions ({', '.join(self.names)}); give one weight per function."
            )
        self.weights = torch.tensor(list(weights) if weights is not None else [1.0] * len(self.funcs),
                                    dtype=torch.float32)

    def __len__(self) -> int:
        return len(self.funcs)

    def __call__(self, completions: list[str], **kwargs: Any) -> RewardScores:
        """Call every function once on the actions and combine; see the class docstring."""
        columns = []
        for func, name in zip(self.funcs, self.names):
            values = call_reward(func, name, completions, kwargs)
            columns.append(torch.tensor([math.nan if v is None else float(v) for v in values], dtype=torch.float32))
        matrix = torch.stack(columns, dim=1) if completions else torch.zeros(0, len(self.funcs))
        total = torch.nansum(matrix * self.weights[None, :], dim=1)
        total[torch.isnan(matrix).all(dim=1)] = math.nan
        return RewardScores(total=total, per_function=matrix, names=list(self.names))


def call_reward(func: RewardFunction, name: str, completions: list[str], kwargs: dict[str, Any]) -> list:
    """Call one reward function once and check what it returned: one finite number or `None` per completion.

    Raises:
        RuntimeError: the function raised (chained to its exception). When it failed while handling one
            completion (a local variable of the failing frame is one of the completions passed), that
            completion and its index are named; the function is never called again to find out.
        ValueError: it returned something other than a list (a tensor or NumPy array is accepted), a list of
            the wrong length, a non-number, NaN or ±inf — naming the index.
    """
    try:
        values = func(completions, **kwargs)
    except Exception as error:
        index = _failing_completion(error, completions)
        where = f"at index {index} (completion {completions[index]!r})" if index is not None else "on the batch"
        raise RuntimeError(
            f"Reward function '{name}' raised {type(error).__name__}: {error} {where}, while scoring "
            f"{len(completions)} completions. Fix the reward, or return None for completions it cannot score."
        ) from error
    if isinstance(values, (torch.Tensor, np.ndarray)):
        values = values.tolist()
    if not isinstance(values, (list, tuple)):
        raise ValueError(
            f"Reward function '{name}' returned a {type(values).__name__}; it must return a list with one float "
            f"(or None) per completion ({len(completions)} here)."
        )
    if len(values) != len(completions):
        raise ValueError(
            f"Reward function '{name}' returned {len(values)} rewards for {len(completions)} completions; it must "
            "return one float (or None) per completion."
        )
    for index, value in enumerate(values):
        if value is None:
            continue
        if isinstance(value, bool) or not isinstance(value, (int, float, np.number)):
            raise ValueError(
                f"Reward function '{name}' returned {value!r} ({type(value).__name__}) at index {index}; "
                "rewards must be numbers, or None for completions the reward does not apply to."
            )
        if not math.isfinite(float(value)):
            raise ValueError(
                f"Reward function '{name}' returned {value} at index {index} (completion {completions[index]!r}); "
                "rewards must be finite. Return None for completions the reward does not apply to."
            )
    if values and all(value is None for value in values):
        # Legal (None = "does not apply"), but a reward that never applies is usually a bug: say so, once.
        hf_logging.get_logger(__name__).warning_once(
            f"Reward function '{name}' returned None for every completion of a step, so it gave that step no signal "
            "(when no reward applies, only the KL and entropy terms train). Check the reward if it should apply; "
            "this is reported once per reward function."
        )
    return list(values)


def _failing_completion(error: BaseException, completions: list[str]) -> int | None:
    """The index of the completion a reward was handling when it raised, read from the failing call's own
    frames (innermost first): a local variable that *is* one of the completion objects passed — the loop
    variable of the usual `for completion in completions`. `None` when no frame holds one, or when that
    object sits at several indices."""
    positions: dict[int, list[int]] = {}
    for index, completion in enumerate(completions):
        positions.setdefault(id(completion), []).append(index)
    frames = []
    tb = error.__traceback__.tb_next if error.__traceback__ is not None else None  # skip call_reward's frame
    while tb is not None:
        frames.append(tb.tb_frame)
        tb = tb.tb_next
    for frame in reversed(frames):
        for value in frame.f_locals.values():
            found = positions.get(id(value))
            if found is not None and isinstance(value, str):
                return found[0] if len(found) == 1 else None
    return None


def score_rewards(
    reward_funcs: Any, completions: list[str], *, reward_weights: Sequence[float] | None = None, **kwargs: Any
) -> RewardScores:
    """Score `completions` with `reward_funcs` once: `RewardSet(reward_funcs, reward_weights)(completions, **kwargs)`.

    For one-off scoring (tests, notebooks, evaluation scripts); a training loop keeps one [`RewardSet`].

    Example:

    ```python
    >>> from clip_trl.rewards import score_rewards
    >>> score_rewards("correctness", ["a cat", "a dog"], ground_truth=["a cat", "a cat"]).total.tolist()
    [1.0, 0.0]

    ```
    """
    return RewardSet(reward_funcs, reward_weights)(completions, **kwargs)
