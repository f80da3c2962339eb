"""What a reward given by name stands for ([`get_reward_function`]): a built-in of the registry, a model (a local
folder or hub id, loaded as a teacher reward), or a dotted import path — the strings TRL users type in
`reward_funcs=[...]` and `--reward_funcs`."""

from __future__ import annotations

import importlib
import os
import re
import sys
from typing import Any

from clip_trl.rewards.registry import REWARD_FUNCTIONS, RewardFunction


def get_reward_function(name: str) -> RewardFunction:
    """The reward a name stands for, as `reward_funcs=[name]` and `--reward_funcs name` read it (TRL's rules).

    In order:

    1. a built-in registered under `name` in [`REWARD_FUNCTIONS`] (`"correctness"`, ...);
    2. a model: a local folder holding a `config.json`, or a hub id (`"openai/clip-vit-large-patch14"`), becomes
       a teacher reward, [`ClipScoreReward`] over that model — its CLIPScore of the chosen text for the image, an
       absolute score of each (image, text) pair as a TRL reward model's logit is (logged under the folder's or
       repo's last path part). For the teacher's probability among the candidates instead, pass
       `TeacherProbabilityReward(name)` yourself;
    3. a dotted import path, `"my_module.my_reward"` (`module.attribute`, as trl's `grpo.py` script accepts on the
       command line): the module is imported (from the current folder too) and the attribute returned.

    Args:
        name (`str`): e.g. `"correctness"`, `"my_rewards.length_penalty"` or `"./teacher_clip"`.

    Returns:
        `Callable`: the reward function.

    Raises:
        ValueError: no built-in has that name and it is neither a model nor an importable path (the message says
            which part is missing and lists the built-ins).
        TypeError: `name` is not a string, or the imported attribute is not callable.
        RuntimeError: a model named by `name` could not be loaded (e.g. a hub id with no network).

    Example:

    ```python
    >>> from clip_trl.rewards import get_reward_function
    >>> get_reward_function("correctness")(["a cat"], ground_truth=["a cat"])
    [1.0]
    >>> get_reward_function("clip_trl.rewards.builtin.correctness").__name__
    'correctness'

    ```
    """
    if not isinstance(name, str):
        raise TypeError(
            f"get_reward_function takes the name of a built-in reward, got {type(name).__name__}; "
            "pass callables to the trainer directly."
        )
    if name in REWARD_FUNCTIONS:
        return REWARD_FUNCTIONS[name]
    if _is_model_folder(name) or _HUB_ID.fullmatch(name):
        return _teacher_reward(name)
    if os.path.exists(name):
        raise ValueError(
            f"Reward {name!r} is a path but not a model folder (no config.json in it): a reward model must be a "
            f"folder written by `save_pretrained`. Built-in rewards: {_builtins()}."
        )
    if "." in name:
        return _import_reward(name)
    raise ValueError(
        f"Unknown reward function '{name}'. Built-in rewards: {_builtins()}. Pass a callable, a dotted import "
        "path (`my_module.my_reward`), or a CLIP model's folder or hub id (a teacher reward) for anything else."
    )


# A hub repo id: `owner/name` (no leading `.` or `/`, which would be a local path).
_HUB_ID = re.compile(r"[A-Za-z0-9][\w.-]*/[\w.-]+")


def _builtins() -> str:
    return ", ".join(sorted(REWARD_FUNCTIONS))


def _is_model_folder(name: str) -> bool:
    return os.path.isfile(os.path.join(name, "config.json"))


def _teacher_reward(name: str) -> RewardFunction:
    """`ClipScoreReward(name)`, logged under the model's last path part, with a load failure explained."""
    from clip_trl.rewards.teachers import (
        ClipScoreReward,  # torch and transformers: only when a model is named
    )

    try:
        reward = ClipScoreReward(name)
    except TypeError:  # loaded, but not a dual encoder: check_clip_like's message says what it lacks
        raise
    except Exception as error:
        raise RuntimeError(
            f"Reward {name!r} names a model (a {'local folder' if os.path.isdir(name) else 'hub id'}), which is "
            f"loaded as a ClipScoreReward teacher, but loading it failed: {type(error).__name__}: {error}. Pass a "
            "local folder written by `save_pretrained` (offline), or build the teacher yourself: "
            "`reward_funcs=[ClipScoreReward(model, processor)]` (or `TeacherProbabilityReward(...)`)."
        ) from error
    reward.__name__ = os.path.basename(os.path.normpath(name)) or reward.__name__
    return reward


def _import_reward(name: str) -> RewardFunction:
    """`module.attribute` imported; the module is looked for in the current folder too (a script's rewards)."""
    module_name, _, attribute = name.rpartition(".")
    try:
        module = _import(module_name)
    except ModuleNotFoundError as error:
        missing = error.name or module_name
        if module_name != missing and not module_name.startswith(missing + "."):
            raise  # the module exists but one of its own imports failed: the traceback says which
        raise ValueError(
            f"Reward {name!r} is not a built-in, so it was read as a dotted import path (module "
            f"{module_name!r}, attribute {attribute!r}), but no module named {missing!r} can be imported (looked "
            f"in sys.path and the current folder {os.getcwd()!r}). Built-in rewards: {_builtins()}."
        ) from error
    if not hasattr(module, attribute):
        public = sorted(
            n
            for n, v in vars(module).items()
            if callable(v) and not n.startswith("_") and not isinstance(v, type)
        )
        raise ValueError(
            f"Reward {name!r}: module {module_name!r} ({getattr(module, '__file__', None)}) has no attribute "
            f"{attribute!r}. Its functions: {', '.join(public) or 'none'}. Built-in rewards: {_builtins()}."
        )
    func = getattr(module, attribute)
    if not callable(func):
        raise TypeError(
            f"Reward {name!r}: {module_name}.{attribute} is a {type(func).__name__}, not a callable; a reward is "
            "`f(completions, **kwargs) -> list[float | None]` (instantiate a reward class in the module)."
        )
    return func


def _import(module_name: str) -> Any:
    try:
        return importlib.import_module(module_name)
    except ModuleNotFoundError:
        cwd = os.getcwd()
        if cwd in sys.path or "" in sys.path:
            raise
        sys.path.append(cwd)  # `clip-trl rl --reward_funcs my_rewards.f` run where my_rewards.py lives
        return importlib.import_module(module_name)
