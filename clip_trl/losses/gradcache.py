"""Exact full-batch contrastive gradients at chunk-sized memory: cached features and chunked re-forward.

A contrastive loss couples every row of the batch to every other through the similarity matrix, so
gradient accumulation (several small batches, each with its own loss) is *not* the big-batch loss: it
has fewer negatives. GradCache (Gao et al., 2021, "Scaling Deep Contrastive Learning Batch Size under
Memory Limited Setup") computes the big-batch loss exactly, in three passes:

1. encode the batch chunk by chunk **without** autograd and keep only the embeddings (`B × d` numbers);
2. compute the full-batch loss on those embeddings, made leaves that require grad, and differentiate it
   with respect to the embeddings (and the parameters the loss itself uses, such as `logit_scale`);
3. encode each chunk again **with** autograd and backpropagate the cached embedding gradients into the
   encoder: by the chain rule `dL/dθ = Σ_chunks (dL/de_chunk)ᵀ · de_chunk/dθ`.

Only one chunk's activations live at a time, plus the `B × d` embeddings and the `B × B` logits, at the
price of a second forward pass. Each chunk's random-number state is saved before pass 1 and restored in
pass 3, so dropout (or any other randomness) draws the same values both times and the re-forward
reproduces the cached embeddings exactly.

[`cached_backward`] is independent of the trainer: give it an `encode` function, the chunks and a loss
of the full-batch embeddings. [`~clip_trl.ClipContrastiveTrainer`] uses it when
`contrastive_chunk_size` is set.
"""

from __future__ import annotations

import contextlib
from collections.abc import Callable, Iterator, Mapping, Sequence
from contextlib import AbstractContextManager
from dataclasses import dataclass
from typing import Any

import torch

__all__ = ["CachedBackwardOutput", "RandomState", "cached_backward", "split_into_chunks"]

IMAGE_KEYS = ("pixel_values", "pixel_attention_mask", "spatial_shapes")  # SigLIP 2 sends all three
TEXT_KEYS = ("input_ids", "attention_mask")


class RandomState:
    """A snapshot of the random-number streams that a forward pass over `tensors` may draw from.

    The CPU generator is always saved; for tensors on CUDA devices, those devices' generators too (a
    forward on a GPU draws its dropout masks there). [`RandomState.replay`] restores the snapshot for
    the duration of a block and afterwards puts the generators back where they were, so a replayed
    forward does not shift the random stream of the rest of training.

    Args:
        *tensors (`torch.Tensor`): the inputs of the forward pass (their devices say which generators count).
    """

    def __init__(self, *tensors: torch.Tensor) -> None:
        self.cpu_state = torch.get_rng_state()
        self.cuda_devices = sorted(
            {
                t.device.index if t.device.index is not None else torch.cuda.current_device()
                for t in tensors
                if t.device.type == "cuda"
            }
        )
        self.cuda_states = [torch.cuda.get_rng_state(device) for device in self.cuda_devices]

    @contextlib.contextmanager
    def replay(self) -> Iterator[None]:
        """Run the block from the saved state; restore the generators' current state when it ends."""
        with torch.random.fork_rng(devices=self.cuda_devices):
            torch.set_rng_state(self.cpu_state)
            for device, state in zip(self.cuda_devices, self.cuda_states):
                torch.cuda.set_rng_state(state, device)
            yield


def split_into_chunks(inputs: Mapping[str, Any], chunk_size: int) -> list[dict[str, Any]]:
    """Split a collated CLIP batch into chunks of at most `chunk_size` images.

    The text rows (`input_ids`, `attention_mask`: the B captions, then any hard negatives) are split into
    the same number of near-equal parts with `torch.tensor_split`, so every chunk has images *and* texts
    (a model's `forward` wants both) and concatenating the chunks' embeddings in order gives the batch's.
    Other keys are left out: they describe the whole batch (e.g. duplicate keys) and belong to the loss.

    Args:
        inputs (`Mapping[str, Any]`): a batch with `pixel_values`, `input_ids` and optionally `attention_mask`.
        chunk_size (`int`): the largest number of images per chunk.

    Returns:
        `list[dict[str, Any]]`: `ceil(B / chunk_size)` dictionaries with the same keys, sliced.
    """
    if chunk_size < 1:
        raise ValueError(f"`chunk_size` must be a positive integer, got {chunk_size}.")
    num_images = inputs["pixel_values"].shape[0]
    num_texts = inputs["input_ids"].shape[0]
    num_chunks = -(-num_images // chunk_size)
    if num_texts < num_chunks:
        raise ValueError(
            f"Cannot split {num_texts} texts into {num_chunks} chunks of a batch of {num_images} images."
        )
    starts = list(range(0, num_images, chunk_size))
    image_parts = {
        key: [inputs[key][s : s + chunk_size] for s in starts] for key in IMAGE_KEYS if key in inputs
    }
    text_parts = {
        key: torch.tensor_split(inputs[key], num_chunks) for key in TEXT_KEYS if inputs.get(key) is not None
    }
    parts = {**image_parts, **text_parts}
    return [{key: values[i] for key, values in parts.items()} for i in range(num_chunks)]


@dataclass
class CachedBackwardOutput:
    """What [`cached_backward`] returns.

    Attributes:
        loss (`torch.Tensor`): the full-batch loss, detached.
        image_embeds (`torch.Tensor`): the batch's image embeddings from the no-grad pass, detached.
        text_embeds (`torch.Tensor`): the batch's text embeddings from the no-grad pass, detached.
    """

    loss: torch.Tensor
    image_embeds: torch.Tensor
    text_embeds: torch.Tensor


def _surrogate(pairs: Sequence[tuple[torch.Tensor, torch.Tensor]]) -> torch.Tensor | None:
    """`Σ ⟨value, grad⟩` over pairs whose value needs a gradient: its gradient with respect to each value is
    the cached `grad`, so one ordinary `backward()` of it backpropagates them (through a loss scaler too)."""
    terms = [(value.float() * grad.float()).sum() for value, grad in pairs if value.requires_grad]
    return torch.stack(terms).sum() if terms else None


def cached_backward(
    encode: Callable[[Mapping[str, Any]], tuple[torch.Tensor, torch.Tensor]],
    chunks: Sequence[Mapping[str, Any]],
    loss_fn: Callable[[torch.Tensor, torch.Tensor], torch.Tensor],
    *,
    parameters: Sequence[torch.Tensor] = (),
    backward: Callable[[torch.Tensor], Any] | None = None,
    no_sync: Callable[[], AbstractContextManager] | None = None,
    forward_context: Callable[[], AbstractContextManager] | None = None,
) -> CachedBackwardOutput:
    r"""
    Backpropagate `loss_fn(encode(batch))` for a batch given as `chunks`, with one chunk's activations in memory.

    The gradients accumulated into the parameters equal those of encoding the concatenated chunks in one
    forward pass (with the random-number state each chunk had when pass 1 encoded it) and calling
    `backward` on the loss. They are *added* to `.grad`, as `backward()` does, so gradient accumulation
    across micro-batches works as usual.

    Args:
        encode (`Callable`):
            Maps one chunk to `(image_embeds, text_embeds)`, each `[rows, d]`. It is called twice per chunk
            (without, then with autograd) and must be deterministic given the random-number state.
        chunks (`Sequence[Mapping]`):
            The batch, split (see [`split_into_chunks`]). Concatenating the chunks' embeddings in order gives
            the batch's embeddings that `loss_fn` receives.
        loss_fn (`Callable`):
            Maps the full-batch `(image_embeds, text_embeds)` to a scalar loss. It may use other tensors that
            need gradients (e.g. `logit_scale`): list them in `parameters`. Any collective communication in it
            (e.g. gathering features from all ranks with gradient) runs once, on every rank.
        parameters (`Sequence[torch.Tensor]`, *optional*):
            Tensors that `loss_fn` uses directly and that need gradients (`logit_scale`, `logit_bias`). Their
            gradient is applied together with the last chunk's, so that under `DistributedDataParallel` they
            are reduced in the same backward pass as the encoder's weights.
        backward (`Callable`, *optional*):
            How to backpropagate a scalar, e.g. `accelerator.backward` (loss scaling for fp16); default
            `Tensor.backward`.
        no_sync (`Callable`, *optional*):
            A context-manager factory that turns off the gradient all-reduce (e.g.
            `functools.partial(accelerator.no_sync, model)`); every chunk but the last runs under it, so
            gradients are reduced once per batch, not once per chunk.
        forward_context (`Callable`, *optional*):
            A context-manager factory for both encoding passes and the loss (e.g. autocast), so that pass 1
            and pass 3 compute the same embeddings.

    Returns:
        [`CachedBackwardOutput`]: the detached loss and the embeddings of pass 1.

    Example:

    ```python
    >>> import torch
    >>> from clip_trl.losses.gradcache import cached_backward
    >>> torch.manual_seed(0)  # doctest: +ELLIPSIS
    <torch._C.Generator object at ...>
    >>> encoder = torch.nn.Linear(4, 3)
    >>> x = torch.randn(6, 4)
    >>> def loss_fn(a, b):
    ...     return (a @ b.T).logsumexp(dim=1).mean()
    >>> out = cached_backward(lambda c: (encoder(c["x"]), encoder(c["x"] + 1)), [{"x": x[:4]}, {"x": x[4:]}], loss_fn)
    >>> chunked = encoder.weight.grad.clone()
    >>> encoder.zero_grad()
    >>> loss_fn(encoder(x), encoder(x + 1)).backward()
    >>> torch.allclose(chunked, encoder.weight.grad, atol=1e-6)
    True

    ```
    """
    if not chunks:
        raise ValueError("`chunks` is empty: there is no batch to backpropagate.")
    backward = backward if backward is not None else torch.Tensor.backward
    forward_context = forward_context if forward_context is not None else contextlib.nullcontext
    no_sync = no_sync if no_sync is not None else contextlib.nullcontext
    parameters = [p for p in parameters if p.requires_grad]

    # Pass 1: embeddings only. Each chunk's RNG state is saved first, so that pass 3 can replay it.
    states: list[RandomState] = []
    image_parts: list[torch.Tensor] = []
    text_parts: list[torch.Tensor] = []
    with torch.no_grad():
        for chunk in chunks:
            states.append(RandomState(*(v for v in chunk.values() if isinstance(v, torch.Tensor))))
            with forward_context():
                image_embeds, text_embeds = encode(chunk)
            image_parts.append(image_embeds)
            text_parts.append(text_embeds)

    # Pass 2: the full-batch loss on leaves that stand in for the encoder's output. `autograd.grad` (not
    # `backward`) keeps these gradients out of `.grad`: they reach the parameters in pass 3, through the
    # caller's `backward` and inside the last chunk's synchronised backward.
    image_leaf = torch.cat(image_parts).requires_grad_()
    text_leaf = torch.cat(text_parts).requires_grad_()
    with forward_context():
        loss = loss_fn(image_leaf, text_leaf)
    grads = torch.autograd.grad(loss, [image_leaf, text_leaf, *parameters], allow_unused=True)
    grads = [
        torch.zeros_like(t) if g is None else g for t, g in zip([image_leaf, text_leaf, *parameters], grads)
    ]
    image_grads = grads[0].split([part.shape[0] for part in image_parts])
    text_grads = grads[1].split([part.shape[0] for part in text_parts])
    parameter_grads = grads[2:]

    # Pass 3: re-encode each chunk with autograd, from the RNG state it had in pass 1, and push the cached
    # gradients through it. Activations are freed chunk by chunk.
    last = len(chunks) - 1
    for index, (chunk, state) in enumerate(zip(chunks, states)):
        with no_sync() if index < last else contextlib.nullcontext():
            with state.replay(), forward_context():
                image_embeds, text_embeds = encode(chunk)
            pairs = [(image_embeds, image_grads[index]), (text_embeds, text_grads[index])]
            if index == last:
                pairs += list(zip(parameters, parameter_grads))
            surrogate = _surrogate(pairs)
            if surrogate is not None:
                backward(surrogate)
    return CachedBackwardOutput(
        loss=loss.detach(), image_embeds=image_leaf.detach(), text_embeds=text_leaf.detach()
    )
