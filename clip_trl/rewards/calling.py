"""Calling reward functions the way TRL's `GRPOTrainer` does: plain and `async def` rewards (the async ones run
concurrently), the `log_metric` / `log_extra` keyword arguments for rewards that accept them, and the checks of
what a reward returned (with the failing completion named when a reward raises)."""

from __future__ import annotations

import asyncio
import atexit
import inspect
import math
import threading
from collections import defaultdict
from collections.abc import Awaitable, Sequence
from typing import Any

import numpy as np
import torch
from transformers.utils import logging as hf_logging

from clip_trl.rewards.registry import RewardFunction

LOG_KWARGS = ("log_metric", "log_extra")
# Metric names a reward's own `log_metric` may not take: the trainer logs these under `rewards/{name}/`.
RESERVED_METRICS = ("mean", "std", "expected")


class RewardLoggingError(ValueError):
    """A reward called `log_metric` or `log_extra` wrongly (the message names the reward and what to fix)."""


class RewardLogs:
    """What the rewards of one scoring call logged: per-reward scalar metrics and extra rollout-table columns.

    [`RewardSet`] hands each reward that accepts them its own `log_metric(name, value)` and
    `log_extra(column, values)` (TRL's signatures), bound to the reward's logged name.
    """

    def __init__(self, num_completions: int) -> None:
        self.num_completions = num_completions
        self._metrics: dict[str, list[torch.Tensor]] = defaultdict(list)
        self.columns: dict[str, list[Any]] = {}
        self._column_owner: dict[str, str] = {}

    def bound(self, reward: str) -> dict[str, Any]:
        """The two callables a reward named `reward` receives."""

        def log_metric(name: str, value: float) -> None:
            """Log a scalar for this step under `rewards/{reward}/{name}` (averaged over the logging window)."""
            if not isinstance(name, str) or not name or name in RESERVED_METRICS:
                raise RewardLoggingError(
                    f"Reward function '{reward}' called log_metric with name {name!r}; the name must be a non-empty "
                    f"string other than {', '.join(RESERVED_METRICS)} (the trainer's own rewards/{reward}/... "
                    "metrics)."
                )
            self._metrics[f"rewards/{reward}/{name}"].append(_scalar(value, reward, name))

        def log_extra(column: str, values: Sequence[Any]) -> None:
            """Add a column to the rollout table: one value per completion of this call."""
            if not isinstance(column, str) or not column:
                raise RewardLoggingError(
                    f"Reward function '{reward}' called log_extra with column {column!r}; name the column with a "
                    "non-empty string."
                )
            if isinstance(values, (torch.Tensor, np.ndarray)):
                values = values.tolist()
            if isinstance(values, (str, bytes)) or not isinstance(values, Sequence):
                raise RewardLoggingError(
                    f"Reward function '{reward}' called log_extra({column!r}, ...) with a {type(values).__name__}; "
                    f"pass a list with one value per completion ({self.num_completions} here)."
                )
            if len(values) != self.num_completions:
                raise RewardLoggingError(
                    f"Reward function '{reward}' called log_extra({column!r}, ...) with {len(values)} values for "
                    f"{self.num_completions} completions; pass one value per completion."
                )
            if column in self.columns:
                raise RewardLoggingError(
                    f"Reward function '{reward}' called log_extra({column!r}, ...) but reward function "
                    f"'{self._column_owner[column]}' already logged that column in this step; use another name."
                )
            self.columns[column] = list(values)
            self._column_owner[column] = reward

        return {"log_metric": log_metric, "log_extra": log_extra}

    def metrics(self) -> dict[str, torch.Tensor]:
        """Each logged metric's mean over its calls in this step."""
        return {name: torch.stack(values).mean() for name, values in self._metrics.items()}


def _scalar(value: Any, reward: str, name: str) -> torch.Tensor:
    if torch.is_tensor(value):
        if value.numel() != 1:
            raise RewardLoggingError(
                f"Reward function '{reward}' called log_metric({name!r}, ...) with a tensor of shape "
                f"{tuple(value.shape)}; log one number."
            )
        return value.detach().float().reshape(())  # kept on its device: no host sync per step
    if isinstance(value, bool) or not isinstance(value, (int, float, np.number)) or not math.isfinite(value):
        raise RewardLoggingError(
            f"Reward function '{reward}' called log_metric({name!r}, {value!r}); log one finite number."
        )
    return torch.tensor(float(value))


def accepted_log_kwargs(func: RewardFunction) -> tuple[str, ...]:
    """Which of `log_metric` / `log_extra` a reward accepts: those it names as parameters, or both when it takes
    `**kwargs` (DESIGN's reward signature). A reward whose signature cannot be read gets neither."""
    try:
        parameters = inspect.signature(func).parameters.values()
    except (TypeError, ValueError):
        return ()
    if any(p.kind is inspect.Parameter.VAR_KEYWORD for p in parameters):
        return LOG_KWARGS
    named = {
        p.name
        for p in parameters
        if p.kind in (inspect.Parameter.POSITIONAL_OR_KEYWORD, inspect.Parameter.KEYWORD_ONLY)
    }
    return tuple(key for key in LOG_KWARGS if key in named)


def is_async_reward(func: RewardFunction) -> bool:
    """An `async def` reward (a function, a partial of one, or an object whose `__call__` is `async def`)."""
    call = type(func).__call__ if not inspect.isfunction(func) else None
    return inspect.iscoroutinefunction(func) or (call is not None and inspect.iscoroutinefunction(call))


# ------------------------------------------------------------------------------------------ the event loop

_LOOP: asyncio.AbstractEventLoop | None = None
_LOOP_LOCK = threading.Lock()


def _event_loop() -> asyncio.AbstractEventLoop:
    """One event loop per process, running in a daemon thread, for the async rewards (TRL's way): it outlives a
    step, so a reward's async client bound to it stays usable, and it works where a loop already runs (Jupyter)."""
    global _LOOP
    with _LOOP_LOCK:
        if _LOOP is None or _LOOP.is_closed():
            loop = asyncio.new_event_loop()
            threading.Thread(target=loop.run_forever, name="clip_trl-async-rewards", daemon=True).start()
            atexit.register(loop.call_soon_threadsafe, loop.stop)
            _LOOP = loop
        return _LOOP


async def _await(awaitable: Awaitable[Any]) -> Any:
    return await awaitable


def start_concurrently(awaitables: Sequence[Awaitable[Any]]) -> Any:
    """Start the awaitables together (`asyncio.gather`) on the rewards' event loop; returns a future whose
    `result()` is their outcomes in order, an exception object for one that raised."""

    async def gather() -> list[Any]:
        return await asyncio.gather(*(_await(a) for a in awaitables), return_exceptions=True)

    return asyncio.run_coroutine_threadsafe(gather(), _event_loop())


# ------------------------------------------------------------------------------------------------ checks


def call_reward(func: RewardFunction, name: str, completions: list[str], kwargs: dict[str, Any]) -> list:
    """Call one reward function once (awaiting it when it is `async`) and check what it returned: one finite
    number or `None` per completion.

    Raises:
        RuntimeError: the function raised (chained to its exception). When it failed while handling one
            completion (a local variable of the failing frame is one of the completions passed), that
            completion and its (first) index are named; the function is never called again to find out.
        ValueError: it returned something other than a list (a tensor or NumPy array is accepted), a list of
            the wrong length, a non-number, NaN or ±inf — naming the index.
    """
    try:
        values = func(completions, **kwargs)
    except RewardLoggingError:
        raise
    except Exception as error:
        raise reward_error(error, name, completions) from error
    if inspect.isawaitable(values):
        (values,) = start_concurrently([values]).result()
        if isinstance(values, RewardLoggingError):
            raise values
        if isinstance(values, BaseException):
            raise reward_error(values, name, completions) from values
    return check_reward_values(values, name, completions)


def reward_error(error: BaseException, name: str, completions: list[str]) -> RuntimeError:
    """The error that reports a reward's exception, naming the completion it failed on when that can be told."""
    index = _failing_completion(error, completions)
    if index is None:
        where = "on the batch"
    else:
        others = [str(i) for i, c in enumerate(completions) if c is completions[index] and i != index]
        # The same object at several indices cannot be told apart: the first is named, the others listed.
        also = f", also at {'indices' if len(others) > 1 else 'index'} {', '.join(others)}" if others else ""
        where = f"at index {index} (completion {completions[index]!r}{also})"
    return RuntimeError(
        f"Reward function '{name}' raised {type(error).__name__}: {error} {where}, while scoring "
        f"{len(completions)} completions. Fix the reward, or return None for completions it cannot score."
    )


def check_reward_values(values: Any, name: str, completions: list[str]) -> list:
    """`values` as a list after the checks of [`call_reward`]."""
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
    variable of the usual `for completion in completions`. When that object sits at several indices (the trainer
    passes one string object for every sample of the same candidate), the first. `None` when no frame holds one.
    The outermost frame (the caller's: `call_reward`, or the wrapper that awaits an async reward) is skipped."""
    positions: dict[int, int] = {}
    for index, completion in enumerate(completions):
        positions.setdefault(id(completion), index)
    frames = []
    tb = error.__traceback__.tb_next if error.__traceback__ is not None else None
    while tb is not None:
        frames.append(tb.tb_frame)
        tb = tb.tb_next
    for frame in reversed(frames):
        for value in frame.f_locals.values():
            found = positions.get(id(value))
            if found is not None and isinstance(value, str):
                return found
    return None
