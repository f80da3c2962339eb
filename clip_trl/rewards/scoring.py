"""The one place reward functions are resolved, called, checked and combined ([`RewardSet`]), used by the RL
trainer and the pipeline alike."""

from __future__ import annotations

import dataclasses
import math
from collections.abc import Mapping, Sequence
from typing import Any

import torch

from clip_trl.rewards.calling import (
    RewardLoggingError,
    RewardLogs,
    accepted_log_kwargs,
    check_reward_values,
    is_async_reward,
    reward_error,
    start_concurrently,
)
from clip_trl.rewards.registry import RewardFunction, reward_name
from clip_trl.rewards.resolving import get_reward_function


@dataclasses.dataclass
class RewardScores:
    """What [`RewardSet`] returns for one batch of actions.

    Attributes:
        total (`torch.Tensor` `[N]`): the weighted sum over the reward functions, ignoring the ones that
            returned `None` for an action; NaN where every function returned `None`.
        per_function (`torch.Tensor` `[N, F]`): each function's raw values, NaN for `None`.
        names (`list[str]`): the functions' logged names, in column order.
        logged_metrics (`dict[str, torch.Tensor]`): what the functions logged with `log_metric`, as
            `rewards/{name}/{metric}` (the mean of the step's calls).
        extra_columns (`dict[str, list]`): what they logged with `log_extra`: rollout-table columns, one value
            per action.
    """

    total: torch.Tensor
    per_function: torch.Tensor
    names: list[str]
    logged_metrics: dict[str, torch.Tensor] = dataclasses.field(default_factory=dict)
    extra_columns: dict[str, list[Any]] = dataclasses.field(default_factory=dict)

    def metrics(self) -> dict[str, torch.Tensor]:
        """`rewards/{name}/mean` and `rewards/{name}/std` over each function's non-`None` values (a function
        that applied to no action is left out), and the metrics the functions logged themselves."""
        out: dict[str, torch.Tensor] = {}
        for name, column in zip(self.names, self.per_function.T):
            valid = column[~torch.isnan(column)]
            if valid.numel():
                out[f"rewards/{name}/mean"] = valid.mean()
                out[f"rewards/{name}/std"] = valid.std(unbiased=False)
        out.update(self.logged_metrics)
        return out


class RewardSet:
    """Reward functions resolved, named, weighted and checked: the one place rewards are scored.

    Used by [`ClipRLTrainer`] every step and by the pipeline's greedy evaluation, so both apply the same
    rules (TRL's): a function returns one number or `None` per completion; `None` means "does not apply"
    and becomes NaN; the total is the weighted sum over the functions that apply, NaN where none does.

    Args:
        reward_funcs (callable, `str`, or a list of them): reward callables and/or names of built-ins
            ([`REWARD_FUNCTIONS`]). Two functions with the same name get `_2`, `_3`... suffixes, so their
            logged metrics stay apart.
        weights (`Sequence[float]`, *optional*): one weight per function; all 1 by default.

    Raises:
        ValueError: no reward, an unknown built-in name, or a wrong number of weights.
        TypeError: an entry that is neither a callable nor a string.

    Example:

    ```python
    >>> from clip_trl.rewards import RewardSet
    >>> rewards = RewardSet(["correctness", "caption_similarity"], weights=[1.0, 0.5])
    >>> scores = rewards(["a red car", "a cat"], ground_truth=["a red car", None])
    >>> scores.names, scores.total.tolist()
    (['correctness', 'caption_similarity'], [1.5, nan])

    ```
    """

    def __init__(self, reward_funcs: Any, weights: Sequence[float] | None = None) -> None:
        funcs = reward_funcs if isinstance(reward_funcs, (list, tuple)) else [reward_funcs]
        if not funcs:
            raise ValueError(
                "`reward_funcs` is empty; pass at least one reward, e.g. `reward_funcs='correctness'`."
            )
        self.funcs: list[RewardFunction] = []
        self.names: list[str] = []
        for func in funcs:
            if isinstance(func, str):
                func = get_reward_function(func)
            elif not callable(func):
                raise TypeError(
                    f"Each reward must be a callable or a built-in's name, got {type(func).__name__} {func!r}."
                )
            name = base = reward_name(func)
            suffix = 2
            while name in self.names:  # two rewards of the same name must not share a logged metric
                name, suffix = f"{base}_{suffix}", suffix + 1
            self.funcs.append(func)
            self.names.append(name)
        if weights is not None and len(weights) != len(self.funcs):
            raise ValueError(
                f"`reward_weights` has {len(weights)} entries but there are {len(self.funcs)} reward "
                f"functions ({', '.join(self.names)}); give one weight per function."
            )
        self.weights = torch.tensor(
            list(weights) if weights is not None else [1.0] * len(self.funcs), dtype=torch.float32
        )
        self._async = [is_async_reward(func) for func in self.funcs]
        self._log_keys = [accepted_log_kwargs(func) for func in self.funcs]

    def __len__(self) -> int:
        return len(self.funcs)

    def __call__(self, completions: list[str], **kwargs: Any) -> RewardScores:
        """Call every function once on the actions and combine; see the class docstring.

        `async def` functions run concurrently with each other (`asyncio.gather`, on an event loop of their own)
        and with the plain ones, which run one after the other meanwhile. A function that accepts them (by name,
        or through `**kwargs`) also gets `log_metric(name, value)` and `log_extra(column, values)`."""
        logs = RewardLogs(len(completions))
        outcomes: list[Any] = [None] * len(self.funcs)
        pending: list[tuple[int, Any]] = []
        calls = []
        for position, (func, name, log_keys) in enumerate(zip(self.funcs, self.names, self._log_keys)):
            bound = logs.bound(name)
            call_kwargs = {**kwargs, **{key: bound[key] for key in log_keys}} if log_keys else kwargs
            calls.append((position, func, name, call_kwargs))
        # The async rewards first, so they run while the plain ones do.
        for position, func, _, call_kwargs in calls:
            if self._async[position]:
                try:
                    pending.append((position, func(completions, **call_kwargs)))
                except Exception as error:  # e.g. an argument the coroutine function does not take
                    outcomes[position] = error
        future = start_concurrently([awaitable for _, awaitable in pending]) if pending else None
        try:
            for position, func, name, call_kwargs in calls:
                if self._async[position] or outcomes[position] is not None:
                    continue
                try:
                    values = func(completions, **call_kwargs)
                except RewardLoggingError:
                    raise
                except Exception as error:
                    raise reward_error(error, name, completions) from error
                if hasattr(values, "__await__"):  # a plain function that returned a coroutine: await it
                    (values,) = start_concurrently([values]).result()
                outcomes[position] = values
        finally:
            results = future.result() if future is not None else []  # never leave a reward running
        for (position, _), result in zip(pending, results):
            outcomes[position] = result
        columns = []
        for outcome, name in zip(outcomes, self.names):
            if isinstance(outcome, RewardLoggingError):
                raise outcome
            if isinstance(outcome, BaseException):
                raise reward_error(outcome, name, completions) from outcome
            values = check_reward_values(outcome, name, completions)
            columns.append(
                torch.tensor([math.nan if v is None else float(v) for v in values], dtype=torch.float32)
            )
        matrix = torch.stack(columns, dim=1) if completions else torch.zeros(0, len(self.funcs))
        total = torch.nansum(matrix * self.weights[None, :], dim=1)
        total[torch.isnan(matrix).all(dim=1)] = math.nan
        return RewardScores(
            total=total,
            per_function=matrix,
            names=list(self.names),
            logged_metrics=logs.metrics(),
            extra_columns=logs.columns,
        )


def score_rewards(
    reward_funcs: Any, completions: list[str], *, reward_weights: Sequence[float] | None = None, **kwargs: Any
) -> RewardScores:
    """Score `completions` with `reward_funcs` once: `RewardSet(reward_funcs, reward_weights)(completions, **kwargs)`.

    For one-off scoring (tests, notebooks, evaluation scripts); a training loop keeps one [`RewardSet`].

    Example:

    ```python
    >>> from clip_trl.rewards import score_rewards
    >>> score_rewards("correctness", ["a cat", "a dog"], ground_truth=["a cat", "a cat"]).total.tolist()
    [1.0, 0.0]

    ```
    """
    return RewardSet(reward_funcs, reward_weights)(completions, **kwargs)


def reward_kwargs(
    entries: Sequence[tuple[int, int]],
    rows: Sequence[Mapping[str, Any]],
    candidates: Sequence[Sequence[str]],
    candidate_texts: Sequence[Sequence[str]],
    ground_truth: Sequence[Any],
    probs: Sequence[Sequence[float]],
    *,
    image_column: str | None,
    direction: str = "image_to_text",
    candidate_rows: Sequence[Any] | None = None,
    candidate_images: Sequence[Any] | None = None,
    trainer_state: Any = None,
) -> tuple[list[str], dict[str, Any]]:
    """`(completions, kwargs)` of one reward call: the documented keyword layout, one entry per scored action.

    The one place that layout is written (the RL trainer and the pipeline's greedy evaluation both call it), so
    a reward sees the same keywords wherever it runs.

    Args:
        entries: the scored `(query, candidate)` pairs.
        rows: each query's dataset row (every column but the image is passed on, repeated per action).
        candidates, candidate_texts: each query's candidate names and the texts the policy scored.
        ground_truth: each query's caption or label (`None` when unknown).
        probs: `π(c | x)` per query and candidate.
        image_column: the rows' image column (`None`: the rows carry no image).
        direction: `"image_to_text"`, or `"text_to_image"` (then the candidates are images, `candidate_images`).
        candidate_rows: the row each candidate came from (in-batch sets), as `chosen_row`.
        trainer_state: the `TrainerState`, for curricula.
    """
    completions = [candidates[b][k] for b, k in entries]
    kwargs: dict[str, Any] = {
        "candidates": [candidates[b] for b, _ in entries],
        "chosen": [k for _, k in entries],
        "probs": [probs[b][k] for b, k in entries],
        "ground_truth": [ground_truth[b] for b, _ in entries],
        "candidate_texts": [candidate_texts[b] for b, _ in entries],
        # The row each chosen candidate came from, so a reward can compare its columns with the query's
        # (partial credit for the same `group`, say).
        "chosen_row": [None if candidate_rows is None else candidate_rows[k] for _, k in entries],
    }
    if direction == "image_to_text":
        if image_column is not None and rows and image_column in rows[0]:
            kwargs["images"] = [rows[b][image_column] for b, _ in entries]
        kwargs["chosen_text"] = [candidate_texts[b][k] for b, k in entries]
    else:
        kwargs["images"] = [candidate_images[k] for _, k in entries]
        kwargs["queries"] = [ground_truth[b] for b, _ in entries]
        kwargs["chosen_text"] = kwargs["queries"]  # the text the policy scored is the query
    for column in rows[0] if rows else ():
        if column != image_column and column not in kwargs:
            kwargs[column] = [rows[b].get(column) for b, _ in entries]
    kwargs["trainer_state"] = trainer_state
    return completions, kwargs
