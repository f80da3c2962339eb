"""What the trainers do across processes beyond DDP and the Trainer: gradients of towers DDP never sees, and a
process group torn down before interpreter shutdown."""

from __future__ import annotations

import atexit
import functools
import gc
from collections import defaultdict

import torch


@functools.cache
def destroy_process_group_at_exit() -> None:
    """Destroy the default process group when the interpreter exits (registered once per process).

    The Trainer never does, and a gloo group still alive while Python shuts down can abort the process
    ("terminate called without an active exception", exit -6) after training finished — a failed launch for a
    run that succeeded. `atexit` runs before that shutdown.
    """

    def destroy() -> None:
        if torch.distributed.is_available() and torch.distributed.is_initialized():
            # A finished trainer caught in a reference cycle still holds its DDP wrapper (and the group): collect
            # it now, while Python is whole, rather than during shutdown.
            gc.collect()
            torch.distributed.destroy_process_group()

    atexit.register(destroy)


def average_gradients(parameters: list[torch.Tensor], bucket_bytes: int = 2**25) -> None:
    """Average the gradients of `parameters` over all processes, as DDP does (sum / world size), in flat buckets.

    A parameter without a gradient on every process keeps none; one with a gradient on some processes only is
    averaged with zeros from the others (what DDP's reduction of an unused parameter gives).
    """
    import torch.distributed as dist

    world = dist.get_world_size()
    device = parameters[0].device if parameters else torch.device("cpu")
    present = torch.tensor([float(p.grad is not None) for p in parameters], device=device)
    dist.all_reduce(present)
    grads = []
    for parameter, count in zip(parameters, present.tolist()):
        if count > 0:
            if parameter.grad is None:
                parameter.grad = torch.zeros_like(parameter)
            grads.append(parameter.grad)
    buckets: dict[tuple[torch.dtype, torch.device], list[list[torch.Tensor]]] = defaultdict(lambda: [[]])
    for grad in grads:
        bucket = buckets[grad.dtype, grad.device]
        if bucket[-1] and sum(g.numel() for g in bucket[-1]) * grad.element_size() >= bucket_bytes:
            bucket.append([])
        bucket[-1].append(grad)
    for bucket in (b for groups in buckets.values() for b in groups if b):
        flat = torch.cat([g.reshape(-1) for g in bucket])
        dist.all_reduce(flat)
        flat /= world
        offset = 0
        for grad in bucket:
            grad.copy_(flat[offset : offset + grad.numel()].view_as(grad))
            offset += grad.numel()
