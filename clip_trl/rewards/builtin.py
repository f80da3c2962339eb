"""The built-in text rewards: `correctness`, `confidence_correctness` (the seed project's) and
`caption_similarity` (partial credit by word overlap)."""

from __future__ import annotations

import re
import unicodedata
from collections import Counter
from collections.abc import Sequence
from typing import Any

from clip_trl.rewards.registry import register_reward

# A ground-truth entry: one string, several acceptable strings (COCO has five captions per image), or
# None when the row has no label.
GroundTruth = str | Sequence[str] | None


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


@register_reward("correctness")
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


@register_reward("confidence_correctness")
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


@register_reward("caption_similarity")
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
