"""The built-in rewards by name: `register_reward` adds one (`clip_trl.rewards.resolving.get_reward_function`
finds it), and `reward_name` is the name any reward is logged under."""

from __future__ import annotations

import functools
from collections.abc import Callable
from typing import Any

RewardFunction = Callable[..., list[float | None]]

REWARD_FUNCTIONS: dict[str, RewardFunction] = {}
"""Built-in rewards by the name `reward_funcs` accepts, filled by [`register_reward`]."""


def register_reward(name: str) -> Callable[[RewardFunction], RewardFunction]:
    """Register a reward under `name`, so `reward_funcs=[name]` (and `--reward_funcs name`) finds it.

    Args:
        name (`str`): the name; registering a second reward under a taken name is an error.

    Returns:
        A decorator that registers and returns the reward unchanged; call it on an instance (a callable object)
        to register that.

    Example:

    ```python
    >>> from clip_trl.rewards import get_reward_function, register_reward
    >>> @register_reward("starts_with_a")
    ... def starts_with_a(completions, **kwargs):
    ...     return [float(c.startswith("a")) for c in completions]
    >>> get_reward_function("starts_with_a")(["a cat", "the dog"])
    [1.0, 0.0]
    >>> from clip_trl.rewards import REWARD_FUNCTIONS
    >>> del REWARD_FUNCTIONS["starts_with_a"]  # (keep the doctest from leaving it registered)

    ```
    """

    def register(func: RewardFunction) -> RewardFunction:
        if name in REWARD_FUNCTIONS and REWARD_FUNCTIONS[name] is not func:
            raise ValueError(f"A reward is already registered as {name!r}; pick another name.")
        REWARD_FUNCTIONS[name] = func
        return func

    return register


def reward_name(func: Callable[..., Any]) -> str:
    """The name a reward is logged under (`rewards/{name}/mean`).

    `functools.partial` wrappers (nested ones too) are unwrapped, so `partial(my_reward, k=3)` logs as
    `my_reward`; then the callable's `__name__` is used, or, for a callable instance without one,
    its class name.

    Args:
        func (`Callable`): a reward function, partial, or callable object.

    Returns:
        `str`: the name.

    Example:

    ```python
    >>> import functools
    >>> from clip_trl.rewards import correctness, reward_name
    >>> reward_name(functools.partial(functools.partial(correctness), ground_truth=None))
    'correctness'

    ```
    """
    while isinstance(func, functools.partial):
        func = func.func
    name = getattr(func, "__name__", None)
    return name if isinstance(name, str) else type(func).__name__
