"""One pass of a dual encoder over a dataset: the embeddings every evaluation metric is computed from.

[`compute_embeddings`] streams a dataset once, embedding every image and every *unique* caption, and returns an
[`EmbeddingSet`] (with the image-caption positive matrix); [`clip_trl.evaluation`] derives every metric from it.
[`encode_rows`] is that pass's first half (images, and each row's captions or labels as they stream past), which
zero-shot evaluation uses with label prompts instead of captions. Bad rows raise a
[`~clip_trl.data.rows.BadRowError`] naming the row and the column.
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Iterable, Iterator, Mapping, Sequence
from dataclasses import dataclass
from typing import Any

import torch
from PIL import Image
from torch import nn

from clip_trl.data.collator import _undecoded, check_columns
from clip_trl.data.image_processing import FastImageTransform
from clip_trl.data.rows import EVAL_HINT, BadRowError, caption_choices, load_image, split_processor
from clip_trl.evaluation.positives import as_positive_pairs, dense_positives, index_caption_pairs
from clip_trl.models import encoding

logger = logging.getLogger(__name__)

__all__ = [
    "EmbeddingSet",
    "EncodedRows",
    "check_batch_size",
    "compute_embeddings",
    "embedding_set",
    "encode_rows",
    "index_captions",
    "iter_rows",
    "row_cell",
]

ImageTransform = Callable[[list[Image.Image]], Any]


def check_batch_size(value: int, name: str) -> None:
    """Raise a `ValueError` naming `name` unless `value` is a positive integer (a bool is not)."""
    if isinstance(value, bool) or not isinstance(value, int) or value < 1:
        raise ValueError(f"`{name}` must be a positive integer, got {value!r}.")


class EmbeddingSet:
    """The embeddings of an evaluation set, from which every metric of this module is computed.

    Attributes:
        image_embeds (`torch.FloatTensor` of shape `[N, d]`):
            L2-normalised image embeddings, one per dataset row, in dataset order.
        text_embeds (`torch.FloatTensor` of shape `[M, d]`):
            L2-normalised text embeddings, one per unique caption string (`captions[j]` is row `j`).
        captions (`list[str]`):
            The `M` unique captions, in order of first appearance in the dataset.
        positive_pairs (`torch.LongTensor` of shape `[P, 2]`):
            The (image, caption) index pairs that match, sorted: what the metrics use (`P` is about 5N for
            COCO-style sets, where the dense mask would be N x 5N).
        positives (`torch.BoolTensor` of shape `[N, M]`):
            `positives[i, j]` is True when caption `j` is one of row `i`'s captions. A caption shared by
            several rows is a single text whose positives are all those rows' images. Built from
            `positive_pairs` on first use when the set was made from pairs (an `N x M` allocation: for small sets
            and backward compatibility).
        first_caption (`torch.LongTensor` of shape `[N]`):
            Index into `captions` of each row's first caption (the one in-batch accuracy scores against).

    `positives` may be given as the dense mask or as an index list (pairs, or per-image lists of caption indices:
    see [`clip_trl.evaluation.positives.as_positive_pairs`]).

    Example:

    ```python
    >>> import torch
    >>> from clip_trl.evaluation.embeddings import EmbeddingSet, index_captions
    >>> captions, positives, first = index_captions([["a cat", "a kitten"], "a dog", "a cat"])
    >>> captions
    ['a cat', 'a kitten', 'a dog']
    >>> es = EmbeddingSet(torch.eye(3), torch.eye(3), captions, positives, first)
    >>> es.num_images, es.num_texts
    (3, 3)
    >>> es.positive_pairs.tolist()
    [[0, 0], [0, 1], [1, 2], [2, 0]]

    ```
    """

    def __init__(
        self,
        image_embeds: torch.Tensor,
        text_embeds: torch.Tensor,
        captions: list[str],
        positives: Any,
        first_caption: torch.Tensor,
    ) -> None:
        self.image_embeds = image_embeds
        self.text_embeds = text_embeds
        self.captions = captions
        self.first_caption = first_caption
        # Catch hand-built sets with mismatched shapes here rather than as an opaque indexing error later.
        if self.image_embeds.dim() != 2 or self.text_embeds.dim() != 2:
            raise ValueError("`image_embeds` and `text_embeds` must be 2-D tensors [count, dim].")
        n, m = self.image_embeds.shape[0], self.text_embeds.shape[0]
        if self.image_embeds.shape[1] != self.text_embeds.shape[1]:
            raise ValueError(
                f"Image and text embeddings have different widths ({self.image_embeds.shape[1]} vs "
                f"{self.text_embeds.shape[1]})."
            )
        if len(self.captions) != m:
            raise ValueError(f"{len(self.captions)} captions for {m} text embeddings.")
        dense = isinstance(positives, torch.Tensor) and positives.dtype == torch.bool
        self.positive_pairs = as_positive_pairs(positives, n, m)
        self._positives = positives if dense else None
        if tuple(self.first_caption.shape) != (n,):
            raise ValueError(f"`first_caption` has shape {tuple(self.first_caption.shape)}, expected ({n},).")

    @property
    def positives(self) -> torch.Tensor:
        """The dense `[N, M]` boolean mask (built from `positive_pairs` on first use)."""
        if self._positives is None:
            self._positives = dense_positives(self.positive_pairs, self.num_images, self.num_texts)
        return self._positives

    @positives.setter
    def positives(self, value: Any) -> None:
        self.positive_pairs = as_positive_pairs(value, self.num_images, self.num_texts)
        self._positives = value if isinstance(value, torch.Tensor) and value.dtype == torch.bool else None

    def __repr__(self) -> str:
        return (
            f"EmbeddingSet(num_images={self.num_images}, num_texts={self.num_texts}, "
            f"positive_pairs={len(self.positive_pairs)}, dim={self.image_embeds.shape[1]})"
        )

    @property
    def num_images(self) -> int:
        return int(self.image_embeds.shape[0])

    @property
    def num_texts(self) -> int:
        return int(self.text_embeds.shape[0])

    def metric_inputs(self) -> dict[str, list[Any]]:
        """The `predictions` / `references` that the shipped `clip_retrieval` evaluate module expects.

        `predictions[i]` is image `i`'s similarity to every unique caption, `references[i]` the indices of its
        positive captions. Passing them to `evaluate.load(CLIP_RETRIEVAL_METRIC_PATH).compute(...)` gives the
        same numbers as [`retrieval_scores`] on this set.

        Example:

        ```python
        >>> import torch
        >>> from clip_trl.evaluation.embeddings import EmbeddingSet, index_captions
        >>> captions, positives, first = index_captions(["a cat", "a dog"])
        >>> EmbeddingSet(torch.eye(2), torch.eye(2), captions, positives, first).metric_inputs()
        {'predictions': [[1.0, 0.0], [0.0, 1.0]], 'references': [[0], [1]]}

        ```
        """
        scores = self.image_embeds.float() @ self.text_embeds.float().T
        counts = torch.bincount(self.positive_pairs[:, 0], minlength=self.num_images).tolist()
        references = [texts.tolist() for texts in self.positive_pairs[:, 1].split(counts)]
        return {"predictions": scores.tolist(), "references": references}


def index_captions(
    row_captions: Sequence[str | Sequence[str]],
) -> tuple[list[str], torch.Tensor, torch.Tensor]:
    """Deduplicate the captions of a dataset and build its image-caption positive matrix.

    Args:
        row_captions (`Sequence[str | Sequence[str]]`):
            Per row, its caption or its list of captions (COCO style).

    Returns:
        `tuple[list[str], torch.BoolTensor, torch.LongTensor]`: the unique captions in order of first
        appearance, `positives` of shape `[rows, unique captions]`, and each row's first caption index.

    Example:

    ```python
    >>> from clip_trl.evaluation.embeddings import index_captions
    >>> captions, positives, first = index_captions([["a cat", "a kitten"], "a dog", "a cat"])
    >>> positives.int().tolist()
    [[1, 1, 0], [0, 0, 1], [1, 0, 0]]
    >>> first.tolist()
    [0, 2, 0]

    ```
    """
    captions, pairs, first = index_caption_pairs(row_captions)
    return captions, dense_positives(pairs, len(first), len(captions)), first


# ----------------------------------------------------------------------------------------- model plumbing


def iter_rows(dataset: Any, image_column: str | None) -> Iterator[tuple[int, Mapping[str, Any]]]:
    """Yield `(row index, row)` for a `datasets.Dataset`, an `IterableDataset` or a sequence of dicts."""
    if isinstance(dataset, Mapping):
        raise TypeError(
            "`dataset` is a mapping (a DatasetDict or a dict of columns); pass one split, e.g. "
            "`dataset['test']`, or a list of row dicts."
        )
    # Read images undecoded so a corrupt file reaches `load_image`, which names the row, instead of failing
    # inside `datasets` with no row number.
    if image_column is not None:
        dataset = _undecoded(dataset, [image_column])
    if hasattr(dataset, "__iter__"):
        rows: Iterable[Any] = dataset
    else:  # a map-style torch Dataset without __iter__
        rows = (dataset[i] for i in range(len(dataset)))
    for index, row in enumerate(rows):
        if not isinstance(row, Mapping):
            raise TypeError(f"Row {index} is a {type(row).__name__}; rows must be dicts of column -> value.")
        yield index, row


def row_cell(row: Mapping[str, Any], index: int, column: str) -> Any:
    """`row[column]`, or a [`~clip_trl.data.rows.BadRowError`] naming row `index` when the column is missing."""
    if column not in row:
        raise BadRowError(index, column, f"the column is missing; the row has {sorted(row)}", hint=EVAL_HINT)
    return row[column]


@dataclass
class EncodedRows:
    """What [`encode_rows`] collected in its pass: the images' embeddings `[N, d]`, and each row's captions and
    labels (None when their column was not asked for)."""

    image_embeds: torch.Tensor
    row_captions: list[list[str]] | None
    row_labels: list[Any] | None


def encode_rows(
    model: nn.Module,
    processor: Any,
    dataset: Any,
    *,
    image_column: str,
    caption_column: str | None,
    label_column: str | None,
    batch_size: int,
    image_transform: ImageTransform | None,
) -> EncodedRows:
    """One pass over the dataset: embed every image, and collect captions and labels as they stream past."""
    check_batch_size(batch_size, "batch_size")
    check_columns(
        dataset,
        {"image_column": image_column, "caption_column": caption_column, "label_column": label_column},
        "dataset",
    )
    image_processor, _ = split_processor(processor)
    transform = image_transform or FastImageTransform(image_processor)
    chunks: list[torch.Tensor] = []
    pending: list[Image.Image] = []
    row_captions: list[list[str]] | None = [] if caption_column is not None else None
    row_labels: list[Any] | None = [] if label_column is not None else None
    with encoding.eval_mode(model), torch.no_grad():
        for index, row in iter_rows(dataset, image_column):
            try:
                # Captions and labels are checked before the image is decoded: a bad row fails fast and cheaply.
                if row_captions is not None:
                    row_captions.append(
                        caption_choices(
                            row_cell(row, index, caption_column), row=index, column=caption_column
                        )
                    )
                if row_labels is not None:
                    row_labels.append(row_cell(row, index, label_column))
                pending.append(
                    load_image(
                        row_cell(row, index, image_column),
                        row=index,
                        column=image_column,
                        draft=getattr(transform, "draft_size", None),
                    )
                )  # JPEG draft decoding
            except BadRowError as error:
                raise error.with_hint(EVAL_HINT) from error.__cause__
            if len(pending) == batch_size:
                chunks.append(
                    encoding.embed_images(model, None, pending, batch_size, image_transform=transform)
                )
                pending = []
        if pending:
            chunks.append(encoding.embed_images(model, None, pending, batch_size, image_transform=transform))
    if not chunks:
        raise ValueError("The dataset is empty: there is nothing to evaluate.")
    image_embeds = torch.cat(chunks)
    logger.info("Embedded %d images.", image_embeds.shape[0])
    return EncodedRows(image_embeds, row_captions, row_labels)


def embedding_set(
    model: nn.Module, processor: Any, encoded: EncodedRows, batch_size: int, max_length: int | None = None
) -> EmbeddingSet:
    """The [`EmbeddingSet`] of an [`encode_rows`] pass that collected captions: its unique captions embedded."""
    assert encoded.row_captions is not None
    _, tokenizer = split_processor(processor)
    captions, pairs, first = index_caption_pairs(encoded.row_captions)
    text_embeds = encoding.embed_texts(model, tokenizer, captions, batch_size, max_length)
    logger.info("Embedded %d unique captions.", len(captions))
    return EmbeddingSet(encoded.image_embeds, text_embeds, captions, pairs, first)


def compute_embeddings(
    model: nn.Module,
    processor: Any,
    dataset: Any,
    *,
    image_column: str = "image",
    caption_column: str = "caption",
    batch_size: int = 64,
    image_transform: ImageTransform | None = None,
    max_length: int | None = None,
) -> EmbeddingSet:
    """Embed every image and every unique caption of `dataset` with a CLIP-style model.

    The model runs under `torch.no_grad()` in eval mode on its own device; each submodule's train/eval mode
    is restored afterwards. Images go through [`~clip_trl.data.rows.load_image`] (any PIL mode becomes RGB;
    paths, bytes and `datasets.Image` cells are accepted) and captions through
    [`~clip_trl.data.rows.caption_choices`] (a string or a list of strings per row), so a bad row raises a
    [`~clip_trl.data.rows.BadRowError`] naming its index and column.

    Args:
        model (`nn.Module`):
            A CLIP-like dual encoder (`get_image_features`, `get_text_features`), e.g. `CLIPModel`.
        processor:
            Its processor (an image processor and a tokenizer), e.g. `CLIPProcessor`.
        dataset:
            A `datasets.Dataset`, a `datasets.IterableDataset` (streamed once) or a list of row dicts.
        image_column (`str`, defaults to `"image"`), caption_column (`str`, defaults to `"caption"`):
            Column names.
        batch_size (`int`, defaults to 64):
            Images (and texts) per forward pass.
        image_transform (`Callable[[list[PIL.Image.Image]], torch.Tensor]`, *optional*):
            Images to `pixel_values`; defaults to the processor's image processor.
        max_length (`int`, *optional*):
            Caption token limit; defaults to the tokenizer's, capped by the text tower's positions. Captions are
            tokenised by [`clip_trl.models.encoding.tokenize`], the rule training uses (SigLIP: max-length padding).

    Returns:
        [`EmbeddingSet`]: L2-normalised float32 CPU embeddings and the positive matrix.

    Example:

    ```python
    >>> from transformers import CLIPModel, CLIPProcessor  # doctest: +SKIP
    >>> model = CLIPModel.from_pretrained("openai/clip-vit-base-patch32")  # doctest: +SKIP
    >>> processor = CLIPProcessor.from_pretrained("openai/clip-vit-base-patch32")  # doctest: +SKIP
    >>> es = compute_embeddings(model, processor, dataset, caption_column="text")  # doctest: +SKIP
    >>> retrieval_scores(es.image_embeds, es.text_embeds, es.positives)  # doctest: +SKIP
    ```
    """
    encoded = encode_rows(
        model,
        processor,
        dataset,
        image_column=image_column,
        caption_column=caption_column,
        label_column=None,
        batch_size=batch_size,
        image_transform=image_transform,
    )
    return embedding_set(model, processor, encoded, batch_size, max_length)
