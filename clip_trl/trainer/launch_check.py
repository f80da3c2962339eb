"""Warn when a launch asked for several processes but the trainer runs in one, or for FSDP that is not active.

`accelerate launch --cpu --num_processes 2 train.py` (or an accelerate config with `distributed_type:
MULTI_CPU`) on a machine without MPI starts *one* process, and the child is told nothing about the request: no
environment variable carries `num_processes` (accelerate sets only `ACCELERATE_USE_CPU`, `MASTER_ADDR`, ...).
So we read the request where it is: the launcher's command line (the parent process) and the accelerate
config file it would read. Linux only (`/proc`); elsewhere nothing is checked.
"""

from __future__ import annotations

import os
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

from transformers.utils import logging

logger = logging.get_logger(__name__)

TORCHRUN_HINT = (
    "On a machine without GPUs, `accelerate launch --cpu --num_processes N` starts a single process unless MPI "
    "is installed; start N CPU processes with `torchrun --nproc_per_node N <script> ... --use_cpu true`."
)


def _parent_command_line() -> list[str] | None:
    try:
        raw = Path(f"/proc/{os.getppid()}/cmdline").read_bytes()
    except OSError:
        return None
    return [part.decode(errors="replace") for part in raw.split(b"\0") if part]


def _is_accelerate_launch(argv: Sequence[str]) -> bool:
    for index, part in enumerate(argv):
        if part.endswith("accelerate.commands.launch"):  # python -m accelerate.commands.launch
            return True
        if os.path.basename(part) in ("accelerate", "accelerate-launch"):
            return os.path.basename(part) == "accelerate-launch" or (
                index + 1 < len(argv) and argv[index + 1] == "launch"
            )
    return False


def _option(argv: Sequence[str], *names: str) -> str | None:
    for index, part in enumerate(argv):
        for name in names:
            if part == name and index + 1 < len(argv):
                return argv[index + 1]
            if part.startswith(name + "="):
                return part.split("=", 1)[1]
    return None


def _config_processes(path: str | None) -> int | None:
    if path is None:
        try:
            from accelerate.commands.config import default_config_file
        except ImportError:  # pragma: no cover - accelerate is a dependency
            return None
        path = default_config_file
    try:
        import yaml

        with open(path) as handle:
            config = yaml.safe_load(handle) or {}
    except (OSError, ValueError, ImportError):
        return None
    value = config.get("num_processes") if isinstance(config, dict) else None
    return int(value) if isinstance(value, int) else None


def requested_processes(argv: Sequence[str] | None = None) -> tuple[int, str] | None:
    """`(N, how it was asked)` when the parent process is `accelerate launch` asking for N processes, else None.

    Args:
        argv: the launcher's command line; defaults to the parent process's (read from `/proc`).
    """
    argv = _parent_command_line() if argv is None else list(argv)
    if not argv or not _is_accelerate_launch(argv):
        return None
    value = _option(argv, "--num_processes", "--num-processes")
    if value is not None:
        try:
            return int(value), f"`--num_processes {value}`"
        except ValueError:
            return None
    config_file = _option(argv, "--config_file", "--config-file")
    processes = _config_processes(config_file)
    if processes is None:
        return None
    return processes, f"`num_processes: {processes}` in {config_file or 'the default accelerate config'}"


def warn_if_fewer_processes(world_size: int, argv: Sequence[str] | None = None) -> bool:
    """Log a warning (and return True) when the launch asked for more processes than `world_size`."""
    requested = requested_processes(argv)
    if requested is None or requested[0] <= world_size:
        return False
    count, how = requested
    logger.warning(
        f"This launch asked for {count} processes ({how}) but the trainer runs in {world_size} "
        f"(world_size={world_size}): training is not distributed. {TORCHRUN_HINT}"
    )
    return True


def fsdp_requested(fsdp_option: Sequence[Any] | str | None, environ: Mapping[str, str] | None = None) -> bool:
    """Whether FSDP was asked for: `TrainingArguments.fsdp`, or an accelerate config with `distributed_type: FSDP`
    (which `accelerate launch` passes on as `ACCELERATE_USE_FSDP=true`)."""
    environ = os.environ if environ is None else environ
    return bool(fsdp_option) or environ.get("ACCELERATE_USE_FSDP", "").lower() in ("1", "true")


def warn_if_fsdp_inactive(
    fsdp_option: Sequence[Any] | str | None, fsdp_enabled: bool, environ: Mapping[str, str] | None = None
) -> bool:
    """Log a warning (and return True) when FSDP was asked for but the Trainer did not enable it.

    accelerate turns FSDP on only for accelerator process groups (CUDA, XPU, ...); under `torchrun ... --use_cpu
    true` the run is plain DDP — every process holds the whole model — with no word from accelerate.
    """
    if not fsdp_requested(fsdp_option, environ) or fsdp_enabled:
        return False
    logger.warning(
        "FSDP was requested (`fsdp` / an accelerate FSDP config) but is not active: accelerate enables it only on "
        "GPU/XPU process groups, so this run trains with plain DDP and every process holds the whole model. Run on "
        "GPUs for sharded training, or drop the FSDP setting to silence this."
    )
    return True


def pin_memory_useful(use_cpu: bool) -> bool:
    """Whether `dataloader_pin_memory=True` can do anything: pinned memory only speeds up copies to an accelerator.

    Without one, or with `use_cpu=True`, PyTorch's DataLoader pins nothing and warns (`'pin_memory' argument is set
    as true but no accelerator is found ...`) every time it starts iterating; the configs turn pinning off there.
    """
    if use_cpu:
        return False
    import torch

    accelerator = getattr(torch, "accelerator", None)
    return bool(accelerator.is_available()) if accelerator is not None else torch.cuda.is_available()
