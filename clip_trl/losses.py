"""Contrastive losses for dual encoders: symmetric InfoNCE (CLIP) and the sigmoid loss (SigLIP).

Both work on L2-normalised embeddings and a boolean `positives` matrix instead of assuming that
only the diagonal matches: rows that share a caption (or an image) are positives of each other,
so a class-caption data set ("a photo of a dog" on many rows) is not trained to tell identical
texts apart. With one positive per row this is exactly the usual CLIP loss.

Under several processes, features are gathered *with gradient* from every rank and each rank
computes the loss of its local queries against the global keys ("local loss"); gradients summed
by the gather's backward and averaged by DDP then equal those of the single-process loss over the
global batch.
"""

from __future__ import annotations

import torch
import torch.distributed as dist
import torch.nn.functional as F


def _world() -> tuple[int, int]:
    if dist.is_available() and dist.is_initialized():
        return dist.get_rank(), dist.get_world_size()
    return 0, 1


def gather_with_grad(tensor: torch.Tensor) -> torch.Tensor:
    """Concatenate `tensor` from all ranks along dim 0; gradients flow back to every rank."""
    _, world_size = _world()
    if world_size == 1:
        return tensor
    from torch.distributed.nn.functional import all_gather

    return torch.cat(all_gather(tensor.contiguous()), dim=0)


def gather_no_grad(tensor: torch.Tensor) -> torch.Tensor:
    """Concatenate `tensor` from all ranks along dim 0 (for keys, masks and metrics)."""
    _, world_size = _world()
    if world_size == 1:
        return tensor
    parts = [torch.empty_like(tensor) for _ in range(world_size)]
    dist.all_gather(parts, tensor.contiguous())
    return torch.cat(parts, dim=0)


def positives_from_keys(
    query_image_keys: torch.Tensor | None,
    query_caption_keys: torch.Tensor | None,
    key_image_keys: torch.Tensor | None,
    key_caption_keys: torch.Tensor | None,
    num_queries: int,
    num_keys: int,
    offset: int = 0,
) -> torch.Tensor:
    """`positives[i, j]` is True when query i and key j share an image or a caption, or `j == i + offset`.

    Keys are content hashes made by the collator; without them only the diagonal is positive.
    """
    device = next((t.device for t in (query_image_keys, query_caption_keys) if t is not None), None)
    positives = torch.zeros(num_queries, num_keys, dtype=torch.bool, device=device)
    rows = torch.arange(num_queries, device=device)
    positives[rows, rows + offset] = True
    if query_image_keys is not None and key_image_keys is not None:
        positives |= query_image_keys[:, None] == key_image_keys[None, :]
    if query_caption_keys is not None and key_caption_keys is not None:
        positives |= query_caption_keys[:, None] == key_caption_keys[None, :]
    return positives


def multi_positive_cross_entropy(logits: torch.Tensor, positives: torch.Tensor) -> torch.Tensor:
    """Mean over rows of `-log Σ_{j positive} softmax(logits_i)_j`.

    This is cross-entropy where any positive counts as the right answer (MIL-NCE); with exactly one
    positive per row it is `F.cross_entropy(logits, targets)`.
    """
    positive_logits = logits.masked_fill(~positives, float("-inf"))
    return (torch.logsumexp(logits, dim=-1) - torch.logsumexp(positive_logits, dim=-1)).mean()


def clip_loss(
    image_embeds: torch.Tensor,
    text_embeds: torch.Tensor,
    logit_scale: torch.Tensor,
    positives: torch.Tensor | None = None,
    *,
    key_image_embeds: torch.Tensor | None = None,
    key_text_embeds: torch.Tensor | None = None,
    negative_text_embeds: torch.Tensor | None = None,
    negative_positives: torch.Tensor | None = None,
) -> torch.Tensor:
    """Symmetric InfoNCE: `(CE(S) + CE(Sᵀ)) / 2` with `S = exp(logit_scale) · images · textsᵀ`.

    Args:
        image_embeds / text_embeds: `[b, d]` normalised embeddings of the query rows (this rank's).
        logit_scale: the model's log-temperature (a scalar tensor).
        positives: `[b, n]` row-to-key positives (row i and key j share an image or a caption);
            defaults to the diagonal. The relation is symmetric, so one mask serves both directions.
        key_image_embeds / key_text_embeds: `[n, d]` keys; default to the query rows themselves
            (one process); the gathered global batch under several processes.
        negative_text_embeds: `[m, d]` extra hard-negative captions, extra image→text keys.
        negative_positives: `[b, m]` which of those are in fact positives (e.g. equal to the caption).

    Returns:
        The scalar loss, averaged over the `b` query rows.
    """
    key_images = image_embeds if key_image_embeds is None else key_image_embeds
    key_texts = text_embeds if key_text_embeds is None else key_text_embeds
    num_queries = image_embeds.shape[0]
    if positives is None:
        positives = torch.eye(num_queries, key_texts.shape[0], dtype=torch.bool, device=image_embeds.device)
    scale = logit_scale.exp()
    logits_per_image = scale * image_embeds @ key_texts.T
    image_positives = positives
    if negative_text_embeds is not None and negative_text_embeds.shape[0] > 0:
        logits_per_image = torch.cat([logits_per_image, scale * image_embeds @ negative_text_embeds.T], dim=1)
        if negative_positives is None:
            negative_positives = positives.new_zeros(num_queries, negative_text_embeds.shape[0])
        image_positives = torch.cat([positives, negative_positives], dim=1)
    image_loss = multi_positive_cross_entropy(logits_per_image, image_positives)
    text_loss = multi_positive_cross_entropy(scale * text_embeds @ key_images.T, positives)
    return (image_loss + text_loss) / 2


def siglip_loss(
    image_embeds: torch.Tensor,
    text_embeds: torch.Tensor,
    logit_scale: torch.Tensor,
    logit_bias: torch.Tensor | float,
    positives: torch.Tensor | None = None,
) -> torch.Tensor:
    """Sigmoid loss (Zhai et al., 2023): `-1/b Σ_ij log σ(z_ij · (exp(t) · x_i·y_j + bias))`.

    `z_ij = +1` for positives and `-1` otherwise; summed over all keys, averaged over the `b` local
    image queries (so local-vs-global under several processes equals the global loss).
    """
    if positives is None:
        positives = torch.eye(image_embeds.shape[0], text_embeds.shape[0], dtype=torch.bool, device=image_embeds.device)
    logits = logit_scale.exp() * image_embeds @ text_embeds.T + logit_bias
    signs = positives.to(logits.dtype) * 2 - 1
    return -F.logsigmoid(signs * logits).sum(dim=1).mean()


def contrastive_loss(
    image_embeds: torch.Tensor,
    text_embeds: torch.Tensor,
    logit_scale: torch.Tensor,
    *,
    image_keys: torch.Tensor | None = None,
    caption_keys: torch.Tensor | None = None,
    loss_type: str = "clip",
    logit_bias: torch.Tensor | float | None = None,
    negative_text_embeds: torch.Tensor | None = None,
    negative_keys: torch.Tensor | None = None,
) -> torch.Tensor:
    """The training loss for one local batch, with global negatives when several processes run.

    Args:
        image_embeds / text_embeds: `[b, d]` normalised embeddings of this rank's rows.
        logit_scale: log-temperature; `logit_bias` is the SigLIP bias (ignored by `"clip"`).
        image_keys / caption_keys: `[b]` content hashes (from the collator) that mark duplicates.
        loss_type: `"clip"` (symmetric InfoNCE) or `"siglip"` (sigmoid).
        negative_text_embeds / negative_keys: optional hard-negative captions of this rank.
    """
    rank, world_size = _world()
    local = image_embeds.shape[0]
    all_images = gather_with_grad(image_embeds)
    all_texts = gather_with_grad(text_embeds)
    all_image_keys = gather_no_grad(image_keys) if image_keys is not None else None
    all_caption_keys = gather_no_grad(caption_keys) if caption_keys is not None else None
    # Each rank's queries sit at offset rank * local in the gathered batch (ranks share the local size).
    offset = rank * local if world_size > 1 else 0
    positives = positives_from_keys(
        image_keys, caption_keys, all_image_keys, all_caption_keys, local, all_texts.shape[0], offset
    )
    if loss_type == "siglip":
        bias = logit_bias if logit_bias is not None else 0.0
        return siglip_loss(image_embeds, all_texts, logit_scale, bias, positives)
    if loss_type != "clip":
        raise ValueError(f"Unknown loss_type {loss_type!r}; use 'clip' or 'siglip'.")

    negatives = negative_positives = None
    if negative_text_embeds is not None:
        negatives = gather_with_grad(negative_text_embeds)
        if negative_keys is not None and caption_keys is not None:
            negative_positives = caption_keys[:, None] == gather_no_grad(negative_keys)[None, :]
    return clip_loss(
        image_embeds,
        text_embeds,
        logit_scale,
        positives,
        key_image_embeds=all_images,
        key_text_embeds=all_texts,
        negative_text_embeds=negatives,
        negative_positives=negative_positives,
    )
