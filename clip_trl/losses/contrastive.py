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


class _GatherWithGrad(torch.autograd.Function):
    """All-gather along dim 0 whose backward sums every rank's gradient of this rank's block back onto it.

    Our own, rather than `torch.distributed.nn.functional.all_gather`, which torch now deprecates: one
    concatenated output, a reduce-scatter backward on NCCL, an all-reduce on backends without reduce-scatter (gloo).
    """

    @staticmethod
    def forward(ctx: object, tensor: torch.Tensor) -> torch.Tensor:
        rank, world_size = _world()
        ctx.rank, ctx.rows = rank, tensor.shape[0]
        parts = [torch.empty_like(tensor) for _ in range(world_size)]
        dist.all_gather(parts, tensor.contiguous())
        return torch.cat(parts, dim=0)

    @staticmethod
    def backward(ctx: object, grad: torch.Tensor) -> torch.Tensor:
        grad = grad.contiguous()
        if dist.get_backend() in ("nccl", "xccl"):
            out = grad.new_empty(ctx.rows, *grad.shape[1:])
            dist.reduce_scatter_tensor(out, grad)
            return out
        grad = grad.clone()  # all_reduce works in place; the incoming gradient is autograd's buffer
        dist.all_reduce(grad)
        return grad[ctx.rank * ctx.rows : (ctx.rank + 1) * ctx.rows]


def gather_with_grad(tensor: torch.Tensor) -> torch.Tensor:
    """Concatenate `tensor` from all ranks along dim 0; gradients flow back to every rank.

    Every rank must pass the same number of rows (see [`gather_variable`] otherwise).
    """
    _, world_size = _world()
    if world_size == 1:
        return tensor
    return _GatherWithGrad.apply(tensor)


def gather_no_grad(tensor: torch.Tensor) -> torch.Tensor:
    """Concatenate `tensor` from all ranks along dim 0 (for keys, masks and metrics)."""
    _, world_size = _world()
    if world_size == 1:
        return tensor
    parts = [torch.empty_like(tensor) for _ in range(world_size)]
    dist.all_gather(parts, tensor.contiguous())
    return torch.cat(parts, dim=0)


def gather_counts(*counts: int, device: torch.device | None = None) -> torch.Tensor:
    """`[world, len(counts)]`: every rank's `counts` (e.g. its number of rows and of hard negatives)."""
    local = torch.tensor([counts], dtype=torch.long, device=device)
    return gather_no_grad(local)


def gather_variable(tensor: torch.Tensor, counts: torch.Tensor, with_grad: bool = True) -> torch.Tensor:
    """Concatenate blocks of different lengths from all ranks, in rank order.

    Collectives need equal shapes, so each rank pads its block to the largest rank's count, the padded blocks
    are gathered, and the padding rows are dropped. `counts[r]` is rank r's number of rows (from
    [`gather_counts`]); with gradient, each real row's gradient flows back to the rank that holds it.
    """
    _, world_size = _world()
    if world_size == 1:
        return tensor
    width = int(counts.max())
    if width == 0:
        return tensor
    padding = tensor.new_zeros(width - tensor.shape[0], *tensor.shape[1:])
    padded = torch.cat([tensor, padding]) if padding.shape[0] else tensor
    gathered = gather_with_grad(padded) if with_grad else gather_no_grad(padded)
    keep = torch.cat(
        [torch.arange(int(n), device=gathered.device) + r * width for r, n in enumerate(counts.tolist())]
    )
    return gathered[keep]


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
    *,
    negative_text_embeds: torch.Tensor | None = None,
    negative_positives: torch.Tensor | None = None,
) -> torch.Tensor:
    """Sigmoid loss (Zhai et al., 2023): `-1/b Σ_ij log σ(z_ij · (exp(t) · x_i·y_j + bias))`.

    `z_ij = +1` for positives and `-1` otherwise; summed over all keys, averaged over the `b` local
    image queries (so local-vs-global under several processes equals the global loss). Hard negatives
    (`negative_text_embeds`, `[m, d]`) are `m` more keys of every image query, with `z = -1` unless
    `negative_positives` (`[b, m]`) marks them as the query's own caption.
    """
    if positives is None:
        positives = torch.eye(
            image_embeds.shape[0], text_embeds.shape[0], dtype=torch.bool, device=image_embeds.device
        )
    if negative_text_embeds is not None and negative_text_embeds.shape[0] > 0:
        text_embeds = torch.cat([text_embeds, negative_text_embeds])
        if negative_positives is None:
            negative_positives = positives.new_zeros(positives.shape[0], negative_text_embeds.shape[0])
        positives = torch.cat([positives, negative_positives], dim=1)
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

    Ranks may hold different numbers of rows and of hard negatives (the collator concatenates a list of
    negatives per row): blocks are gathered padded to the largest rank's count, and the global batch is the
    ranks' rows in rank order — what one process computes on the concatenated batch.

    Args:
        image_embeds / text_embeds: `[b, d]` normalised embeddings of this rank's rows.
        logit_scale: log-temperature; `logit_bias` is the SigLIP bias (ignored by `"clip"`).
        image_keys / caption_keys: `[b]` content hashes (from the collator) that mark duplicates.
        loss_type: `"clip"` (symmetric InfoNCE) or `"siglip"` (sigmoid).
        negative_text_embeds / negative_keys: optional hard-negative captions of this rank, extra
            image→text negatives of every query in both loss types.
    """
    if loss_type not in ("clip", "siglip"):
        raise ValueError(f"Unknown loss_type {loss_type!r}; use 'clip' or 'siglip'.")
    rank, world_size = _world()
    local = image_embeds.shape[0]
    has_negatives = negative_text_embeds is not None
    counts = None
    if world_size > 1:
        num_negatives = negative_text_embeds.shape[0] if has_negatives else 0
        counts = gather_counts(local, num_negatives, device=image_embeds.device)
    all_images = gather_variable(image_embeds, counts[:, 0]) if counts is not None else image_embeds
    all_texts = gather_variable(text_embeds, counts[:, 0]) if counts is not None else text_embeds

    def gather_keys(keys: torch.Tensor | None, column: int) -> torch.Tensor | None:
        if keys is None or counts is None:
            return keys
        return gather_variable(keys, counts[:, column], with_grad=False)

    # This rank's queries start after the rows of the ranks before it.
    offset = int(counts[:rank, 0].sum()) if counts is not None else 0
    positives = positives_from_keys(
        image_keys,
        caption_keys,
        gather_keys(image_keys, 0),
        gather_keys(caption_keys, 0),
        local,
        all_texts.shape[0],
        offset,
    )
    negatives = negative_positives = None
    if has_negatives:
        negatives = (
            gather_variable(negative_text_embeds, counts[:, 1])
            if counts is not None
            else negative_text_embeds
        )
        if negative_keys is not None and caption_keys is not None:
            negative_positives = caption_keys[:, None] == gather_keys(negative_keys, 1)[None, :]
    if loss_type == "siglip":
        bias = logit_bias if logit_bias is not None else 0.0
        return siglip_loss(
            image_embeds,
            all_texts,
            logit_scale,
            bias,
            positives,
            negative_text_embeds=negatives,
            negative_positives=negative_positives,
        )
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
