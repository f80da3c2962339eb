"""One error message per launch: under several processes every rank fails the same way on a bad input, and
`torchrun` would show each rank's traceback; here rank 0 prints the message and the others one line each.

Used by the `clip-trl` command ([`clip_trl.cli.main`]) and the example scripts (`with reported_errors(): ...`).

How the ranks agree without a collective (a rank may be stuck in one while another fails): through the launcher's
key-value store (`torchrun`'s agent store, or the process group's store), each failing rank > 0 reads rank 0's
message, and prints `rank 1: the same error as rank 0 (ValueError), see above` when it is the same, or its own
message when it differs or rank 0 did not fail within a few seconds. Rank 0 waits (as long) for the others to print
before it exits, since `torchrun` stops the other processes as soon as one exits with an error. Without a store,
every rank prints its own message, prefixed with its rank.
"""

from __future__ import annotations

import contextlib
import os
import sys
import traceback
from collections.abc import Iterator
from datetime import timedelta
from typing import Any

__all__ = ["USER_ERRORS", "report_error", "reported_errors"]

# Exceptions that mean "the command asked for something wrong" (a missing column or file, a bad value, a missing
# optional package): reported in one paragraph, without a traceback, unless debugging. Other exceptions are bugs and
# keep their traceback.
USER_ERRORS = (ValueError, KeyError, OSError, ImportError)
# How long a rank waits for the others' reports (seconds).
AGREE_TIMEOUT_S = 5.0
DEBUG_HINT = "(run again with --debug, or CLIP_TRL_DEBUG=1, for the traceback)"


def _world() -> tuple[int, int]:
    """(rank, world size) as the launcher set them (`torchrun`, `accelerate launch`); (0, 1) for one process."""
    try:
        return int(os.environ.get("RANK", "0")), int(os.environ.get("WORLD_SIZE", "1"))
    except ValueError:
        return 0, 1


def describe(error: BaseException, prog: str) -> str:
    """What to print for `error`: the message for a user error, the traceback for anything else."""
    if isinstance(error, USER_ERRORS):
        return f"{prog}: error: {str(error).strip() or type(error).__name__}\n{DEBUG_HINT}"
    return "".join(traceback.format_exception(error)).rstrip()


def report_error(error: BaseException, prog: str) -> None:
    """Print `error` once for the launch (see the module's docstring); with one process, just print it."""
    text = describe(error, prog)
    rank, world_size = _world()
    if world_size <= 1:
        print(text, file=sys.stderr, flush=True)
        return
    store = _store()
    key = _key_prefix()
    if store is None:
        print(text if rank == 0 else f"rank {rank}: {text}", file=sys.stderr, flush=True)
        return
    mine = f"{type(error).__name__}: {error}"
    if rank == 0:
        print(text, file=sys.stderr, flush=True)
        _set(store, f"{key}/message/0", mine)
        # Give the other ranks time to print theirs before torchrun stops them (it does when this one exits).
        _wait(store, [f"{key}/done/{r}" for r in range(1, world_size)])
        return
    rank_zero = _get(store, f"{key}/message/0")
    if rank_zero == mine:
        print(
            f"rank {rank}: the same error as rank 0 ({type(error).__name__}), see above",
            file=sys.stderr,
            flush=True,
        )
    else:
        print(f"rank {rank}: {text}", file=sys.stderr, flush=True)
    _set(store, f"{key}/done/{rank}", "1")


@contextlib.contextmanager
def reported_errors(prog: str | None = None) -> Iterator[None]:
    """Under several processes, report an exception once for the launch and exit with status 1 (no traceback for
    user errors; see the module's docstring). With one process, or `CLIP_TRL_DEBUG=1`, exceptions pass through.

    ```python
    with reported_errors():
        main(*parse_dataclasses(parser))
    ```
    """
    try:
        yield
    except Exception as error:
        if _world()[1] <= 1 or _debugging():
            raise
        report_error(error, prog or os.path.basename(sys.argv[0]) or "python")
        raise SystemExit(1) from None


def _debugging() -> bool:
    return os.environ.get("CLIP_TRL_DEBUG", "").lower() in ("1", "true", "yes")


def _key_prefix() -> str:
    run = os.environ.get("TORCHELASTIC_RUN_ID", "run")
    return f"clip_trl/errors/{run}/{os.environ.get('TORCHELASTIC_RESTART_COUNT', '0')}"


def _store() -> Any:
    """A client of the launcher's store, or `None` when there is none to reach."""
    try:
        import torch.distributed as dist

        timeout = timedelta(seconds=AGREE_TIMEOUT_S)
        address, port = os.environ.get("MASTER_ADDR"), os.environ.get("MASTER_PORT")
        if os.environ.get("TORCHELASTIC_USE_AGENT_STORE", "").lower() == "true" and address and port:
            # torchrun's agent hosts the store: it outlives every worker, rank 0 included.
            return dist.TCPStore(address, int(port), is_master=False, timeout=timeout, wait_for_workers=False)
        if dist.is_available() and dist.is_initialized():
            store = dist.distributed_c10d._get_default_store()
            store.set_timeout(timeout)
            return store
    except Exception:  # no store to reach: each rank reports its own error
        return None
    return None


def _set(store: Any, key: str, value: str) -> None:
    with contextlib.suppress(Exception):
        store.set(key, value)


def _get(store: Any, key: str) -> str | None:
    try:
        store.wait([key], timedelta(seconds=AGREE_TIMEOUT_S))
        return store.get(key).decode("utf-8", "replace")
    except Exception:  # rank 0 did not fail (or not in time): this rank's error is news
        return None


def _wait(store: Any, keys: list[str]) -> None:
    with contextlib.suppress(Exception):
        store.wait(keys, timedelta(seconds=AGREE_TIMEOUT_S))
