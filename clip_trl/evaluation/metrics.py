"""Metrics of a model on a dataset, without a trainer: one embedding pass ([`clip_trl.evaluation.embeddings`]), then
the scores of [`clip_trl.evaluation.scores`]."""

from __future__ import annotations

import logging
from collections.abc import Iterable, Sequence
from typing import Any

import torch
from torch import nn

from clip_trl.data.collator import check_columns
from clip_trl.data.rows import split_processor
from clip_trl.evaluation.embeddings import (
    ImageTransform,
    check_batch_size,
    compute_embeddings,
    embedding_set,
    encode_rows,
    iter_rows,
    row_cell,
)
from clip_trl.evaluation.scores import (
    DEFAULT_KS,
    _check_ks,
    in_batch_accuracy_from_embeddings,
    retrieval_scores,
    scores_from_embeddings,
    zero_shot_scores,
)
from clip_trl.models import encoding

logger = logging.getLogger(__name__)


def _label_prompts(labels: Sequence[str], template: str) -> list[str]:
    if isinstance(labels, str) or not labels:
        raise ValueError(f"`labels` must be a non-empty list of class names, got {labels!r}.")
    if len(set(labels)) != len(labels):
        duplicates = sorted({label for label in labels if labels.count(label) > 1})
        raise ValueError(f"`labels` has duplicates {duplicates}; each class must appear once.")
    prompts = [template.format(label) for label in labels]
    if len(set(prompts)) != len(prompts):
        raise ValueError(
            f"The template {template!r} gives the same prompt for different labels; it needs a '{{}}' "
            "placeholder for the label name."
        )
    return prompts


def _label_feature_names(dataset: Any, label_column: str) -> list[str] | None:
    features = getattr(dataset, "features", None)
    feature = features.get(label_column) if features else None
    return list(feature.names) if hasattr(feature, "names") and hasattr(feature, "int2str") else None


def _label_indices(
    cells: Sequence[Any], labels: Sequence[str], label_column: str, class_names: list[str] | None
) -> torch.Tensor:
    """Map label cells (an index into `labels`, or a label name) to indices into `labels`.

    When the column is a `datasets.ClassLabel` whose names are all in `labels` but in another order, integer
    cells are read through the ClassLabel's names: the integer indexes the *dataset's* class list, and going
    by name avoids silently scoring against the wrong class.
    """
    position = {label: i for i, label in enumerate(labels)}
    by_name = class_names is not None and class_names != list(labels) and set(class_names) <= set(position)
    indices: list[int] = []
    for row, cell in enumerate(cells):
        if hasattr(cell, "item") and not isinstance(cell, str):  # numpy / torch scalars
            cell = cell.item()
        if isinstance(cell, bool):
            raise ValueError(f"Row {row}, column '{label_column}': a boolean {cell!r} is not a label.")
        if isinstance(cell, int):
            names = class_names if by_name and class_names is not None else labels
            if not 0 <= cell < len(names):
                raise ValueError(
                    f"Row {row}, column '{label_column}': label index {cell} is outside the {len(names)} "
                    f"{'classes of the ClassLabel column' if names is class_names else 'candidate labels'}."
                )
            cell = names[cell]
        if isinstance(cell, str) and cell in position:
            indices.append(position[cell])
            continue
        raise ValueError(
            f"Row {row}, column '{label_column}': unknown label {cell!r}; it must be an index into `labels` "
            f"or one of {list(labels)[:20]}{' ...' if len(labels) > 20 else ''}."
        )
    return torch.tensor(indices, dtype=torch.long)


def retrieval_metrics(
    model: nn.Module,
    processor: Any,
    dataset: Any,
    image_column: str = "image",
    caption_column: str = "caption",
    ks: Iterable[int] = DEFAULT_KS,
    batch_size: int = 64,
    image_transform: ImageTransform | None = None,
) -> dict[str, float]:
    """Image-to-text and text-to-image recall@k of a model over a whole dataset.

    Texts are the dataset's unique captions; a list-valued caption cell gives the row several positives, and a
    caption string shared by several rows is one text with all those images as positives. See
    [`retrieval_scores`] for the definition and the tie convention.

    Returns:
        `dict[str, float]`: `image_to_text_recall@{k}` and `text_to_image_recall@{k}` for each `k`.

    Example:

    ```python
    >>> from clip_trl import evaluation  # doctest: +SKIP
    >>> evaluation.retrieval_metrics(model, processor, dataset, caption_column="caption")  # doctest: +SKIP
    {'image_to_text_recall@1': 0.41, ..., 'text_to_image_recall@10': 0.93}

    ```
    """
    ks = _check_ks(ks)
    embeddings = compute_embeddings(
        model,
        processor,
        dataset,
        image_column=image_column,
        caption_column=caption_column,
        batch_size=batch_size,
        image_transform=image_transform,
    )
    return retrieval_scores(embeddings.image_embeds, embeddings.text_embeds, embeddings.positive_pairs, ks)


def in_batch_accuracy(
    model: nn.Module,
    processor: Any,
    dataset: Any,
    batch_size: int = 32,
    image_column: str = "image",
    caption_column: str = "caption",
    image_transform: ImageTransform | None = None,
) -> dict[str, float]:
    """In-batch accuracy over a dataset: see [`in_batch_accuracy_from_embeddings`].

    `batch_size` is the metric's batch (the candidate set), not a throughput knob: results change with it.

    Returns:
        `dict[str, float]`: `{"in_batch_accuracy": ...}`.

    Example:

    ```python
    >>> evaluation.in_batch_accuracy(model, processor, dataset, batch_size=32)  # doctest: +SKIP
    {'in_batch_accuracy': 0.87}

    ```
    """
    check_batch_size(batch_size, "batch_size")
    embeddings = compute_embeddings(
        model,
        processor,
        dataset,
        image_column=image_column,
        caption_column=caption_column,
        batch_size=max(batch_size, 64),
        image_transform=image_transform,
    )
    return {"in_batch_accuracy": in_batch_accuracy_from_embeddings(embeddings, batch_size)}


def zero_shot_accuracy(
    model: nn.Module,
    processor: Any,
    dataset: Any,
    labels: Sequence[str],
    template: str = "a photo of a {}.",
    label_column: str = "label",
    image_column: str = "image",
    batch_size: int = 64,
    image_transform: ImageTransform | None = None,
    image_embeds: torch.Tensor | None = None,
) -> dict[str, float]:
    """Zero-shot classification accuracy: each image against `template.format(label)` for every label.

    A label cell may be an integer index into `labels` (e.g. a `datasets.ClassLabel` column) or a label name;
    anything else is a `ValueError` naming the row. Ties count against the image (see [`zero_shot_scores`]).

    Args:
        labels (`Sequence[str]`): the class names, each once.
        template (`str`, defaults to `"a photo of a {}."`): the prompt, `{}` standing for the class name.
        label_column (`str`, defaults to `"label"`): the column with each row's true label.
        image_embeds (`torch.Tensor`, *optional*): the dataset's image embeddings if already computed (e.g.
            `compute_embeddings(...).image_embeds`); then images are not re-encoded, only labels are read.

    Returns:
        `dict[str, float]`: `{"zero_shot_accuracy": ...}`.

    Example:

    ```python
    >>> evaluation.zero_shot_accuracy(model, processor, dataset, labels=["cat", "dog"])  # doctest: +SKIP
    {'zero_shot_accuracy': 0.95}

    ```
    """
    prompts = _label_prompts(labels, template)
    if image_embeds is None:
        encoded = encode_rows(
            model,
            processor,
            dataset,
            image_column=image_column,
            caption_column=None,
            label_column=label_column,
            batch_size=batch_size,
            image_transform=image_transform,
        )
        image_embeds, cells = encoded.image_embeds, encoded.row_labels or []
    else:
        check_columns(dataset, {"label_column": label_column}, "dataset")
        # Read only the label column: decoding every image again just to reach the labels would be wasted.
        labels_only = (
            dataset.select_columns([label_column]) if hasattr(dataset, "select_columns") else dataset
        )
        cells = [row_cell(row, index, label_column) for index, row in iter_rows(labels_only, None)]
        if len(cells) != image_embeds.shape[0]:
            raise ValueError(
                f"`image_embeds` has {image_embeds.shape[0]} rows but the dataset has {len(cells)}."
            )
    targets = _label_indices(cells, labels, label_column, _label_feature_names(dataset, label_column))
    _, tokenizer = split_processor(processor)
    label_embeds = encoding.embed_texts(model, tokenizer, prompts, batch_size)
    return {"zero_shot_accuracy": zero_shot_scores(image_embeds, label_embeds, targets)}


def evaluate_all(
    model: nn.Module,
    processor: Any,
    dataset: Any,
    *,
    image_column: str = "image",
    caption_column: str | None = "caption",
    ks: Iterable[int] = DEFAULT_KS,
    batch_size: int = 64,
    in_batch_size: int | None = 32,
    candidate_labels: Sequence[str] | None = None,
    label_template: str = "a photo of a {}.",
    label_column: str = "label",
    image_transform: ImageTransform | None = None,
) -> dict[str, float]:
    """Every metric of this module from a single pass over the dataset.

    Images are embedded once and shared by retrieval, in-batch and zero-shot scoring, which is why a trainer's
    `evaluate()` calls this (or [`compute_embeddings`] + [`scores_from_embeddings`]) rather than the
    individual metric functions.

    Args:
        caption_column (`str`, *optional*, defaults to `"caption"`):
            `None` for a classification-only dataset: then only `zero_shot_accuracy` is computed.
        ks (`Iterable[int]`, defaults to `(1, 5, 10)`): recall cut-offs.
        batch_size (`int`, defaults to 64): images / texts per forward pass.
        in_batch_size (`int`, *optional*, defaults to 32): batch of `in_batch_accuracy`; `None` skips it.
        candidate_labels (`Sequence[str]`, *optional*): class names; when given, `zero_shot_accuracy` is
            added.
        label_template (`str`), label_column (`str`): as in [`zero_shot_accuracy`].

    Returns:
        `dict[str, float]`: `image_to_text_recall@{k}`, `text_to_image_recall@{k}`, `in_batch_accuracy` and,
        with `candidate_labels`, `zero_shot_accuracy`.

    Example:

    ```python
    >>> evaluation.evaluate_all(model, processor, dataset, candidate_labels=["cat", "dog"])  # doctest: +SKIP
    {'image_to_text_recall@1': ..., 'in_batch_accuracy': ..., 'zero_shot_accuracy': ...}

    ```
    """
    if caption_column is None and candidate_labels is None:
        raise ValueError("Nothing to evaluate: set `caption_column` and/or `candidate_labels`.")
    ks = _check_ks(ks)
    if in_batch_size is not None:
        check_batch_size(in_batch_size, "in_batch_size")
    # Validate labels before the (slow) encoding pass so a typo fails immediately.
    prompts = _label_prompts(candidate_labels, label_template) if candidate_labels is not None else None
    encoded = encode_rows(
        model,
        processor,
        dataset,
        image_column=image_column,
        caption_column=caption_column,
        label_column=label_column if candidate_labels is not None else None,
        batch_size=batch_size,
        image_transform=image_transform,
    )
    results: dict[str, float] = {}
    if caption_column is not None:
        embeddings = embedding_set(model, processor, encoded, batch_size)
        results.update(scores_from_embeddings(embeddings, ks, in_batch_size))
    if candidate_labels is not None and prompts is not None:
        targets = _label_indices(
            encoded.row_labels or [],
            candidate_labels,
            label_column,
            _label_feature_names(dataset, label_column),
        )
        _, tokenizer = split_processor(processor)
        label_embeds = encoding.embed_texts(model, tokenizer, prompts, batch_size)
        results["zero_shot_accuracy"] = zero_shot_scores(encoded.image_embeds, label_embeds, targets)
    return results
