"""Training-curve pictures for model cards: loss, reward and KL (RL), and evaluation recall@1.

The picture is drawn from `trainer.state.log_history` alone, so it works for a finished run, a resumed one
and a `trainer_state.json` read back from a checkpoint. It uses matplotlib's object-oriented API on the
Agg canvas: no pyplot state, no GUI backend, safe in a training process and on headless machines.
"""

from __future__ import annotations

import math
import os
from collections.abc import Sequence
from typing import Any

from transformers import TrainerCallback
from transformers.utils import logging

logger = logging.get_logger(__name__)

__all__ = ["TRAINING_CURVES_FILENAME", "TrainingCurvesCallback", "plot_training_curves"]

#: File name of the picture in the output folder; the model card links to it by this relative name.
TRAINING_CURVES_FILENAME = "training_curves.png"

_FONT_SIZE = 9  # points; the smallest text in the picture (tick labels) stays at or above 8
_PANEL_SIZE = (4.6, 3.2)  # inches per panel
_FLAT = 1e-6  # a series whose range stays within this (relative, at least absolute) is constant: not drawn


def _series(log_history: Sequence[dict[str, Any]], key: str) -> tuple[list[float], list[float]]:
    """(steps, values) of one logged quantity, skipping entries without it and non-finite values."""
    steps, values = [], []
    for entry in log_history:
        value = entry.get(key)
        if isinstance(value, (int, float)) and not isinstance(value, bool) and math.isfinite(value):
            steps.append(float(entry.get("step", len(steps))))
            values.append(float(value))
    return steps, values


def _train_series(log_history: Sequence[dict[str, Any]], key: str) -> tuple[list[float], list[float]]:
    # Training logs are the entries without evaluation keys (the end-of-training summary logs `train_loss`,
    # not `loss`, so it is left out by the key itself).
    rows = [entry for entry in log_history if not any(name.startswith("eval_") for name in entry)]
    return _series(rows, key)


def _train_keys(log_history: Sequence[dict[str, Any]], prefix: str, suffix: str) -> list[str]:
    """Every logged training key `{prefix}...{suffix}` (e.g. `rewards/{name}/expected`), first seen first."""
    keys: list[str] = []
    for entry in log_history:
        keys += [key for key in entry if key.startswith(prefix) and key.endswith(suffix) and key not in keys]
    return keys


def _is_flat(values: Sequence[float]) -> bool:
    """Two or more points that stay within `_FLAT` of each other (relative to their size, at least 1)."""
    return len(values) > 1 and max(values) - min(values) <= _FLAT * max(1.0, *(abs(v) for v in values))


def _constant(values: Sequence[float]) -> str:
    if all(v == 0 for v in values):
        return "= 0"
    if max(abs(v) for v in values) <= _FLAT:
        return f"≈ 0 (|x| ≤ {max(abs(v) for v in values):.0e})"
    return f"= {sum(values) / len(values):.4g}"


def _eval_keys(log_history: Sequence[dict[str, Any]], metric: str) -> list[str]:
    """Every logged `eval_{metric}` / `eval_{set name}_{metric}` key (one per evaluation set), first seen first."""
    keys: list[str] = []
    for entry in log_history:
        for key in entry:
            if (
                key.startswith("eval_")
                and (key == f"eval_{metric}" or key.endswith(f"_{metric}"))
                and key not in keys
            ):
                keys.append(key)
    return keys


def _label(key: str, metric: str = "") -> str:
    """`eval_val_image_to_text_recall@1` -> "val image→text recall@1"; `eval_loss` -> "eval" (metric "loss")."""
    name = key.removeprefix("eval_").removesuffix(metric).strip("_")
    name = (
        name.replace("_", " ").replace("image to text", "image→text").replace("text to image", "text→image")
    )
    return name or "eval"


def plot_training_curves(log_history: Sequence[dict[str, Any]], path: str | os.PathLike[str]) -> str | None:
    r"""
    Draw the curves of a training run into one PNG: training (and evaluation) loss; for RL runs the objective
    (when logged), the mean reward (± its standard deviation), each reward function's expectation under π
    (`rewards/{name}/expected`, when logged) and the KL to the reference policy; for preference optimization the
    implicit rewards and the reward accuracy; and recall@1 when the run was evaluated.

    Panels without data are left out, and so is a series that stays constant over the run (the KL with `beta=0`
    is exactly 0; the exact policy-gradient loss is ~1e-9, zero in value by construction): a note under the
    panels names it and its value. A log with nothing to plot writes no file.

    Args:
        log_history (sequence of `dict`):
            `trainer.state.log_history`: one dict per logging/evaluation event, each with a `step`.
        path (`str` or `os.PathLike`):
            Where to write the PNG; parent folders are created.

    Returns:
        `str` or `None`: the path written, or `None` when there was nothing to plot.

    Example:

    ```python
    >>> import os, tempfile
    >>> from clip_trl.reporting.curves import plot_training_curves
    >>> history = [{"loss": 2.1, "step": 10}, {"loss": 1.7, "step": 20},
    ...            {"eval_image_to_text_recall@1": 0.4, "step": 20}]
    >>> path = plot_training_curves(history, os.path.join(tempfile.mkdtemp(), "curves.png"))
    >>> os.path.getsize(path) > 0
    True
    >>> plot_training_curves([{"train_runtime": 3.0, "step": 20}], "unused.png") is None
    True

    ```
    """
    panels: list[tuple[str, str, list[tuple[str, tuple[list[float], list[float]], Any]]]] = []

    loss_lines = [("train", _train_series(log_history, "loss"), None)]
    loss_lines += [
        (f"eval {_label(key, 'loss')}".removesuffix(" eval"), _series(log_history, key), None)
        for key in _eval_keys(log_history, "loss")
    ]
    panels.append(("Loss", "loss", loss_lines))
    # RL: the value the policy gradient climbs (the exact policy-gradient loss is ~0 in value by construction, so
    # it tells nothing), then the sampled reward and each function's expectation under π.
    panels.append(("Objective", "objective", [("objective", _train_series(log_history, "objective"), None)]))
    reward_std = _train_series(log_history, "reward_std")
    panels.append(("Reward", "mean reward", [("reward", _train_series(log_history, "reward"), reward_std)]))
    panels.append(
        (
            "Expected reward under π",
            "E_π[reward]",
            [
                (
                    key.removeprefix("rewards/").removesuffix("/expected"),
                    _train_series(log_history, key),
                    None,
                )
                for key in _train_keys(log_history, "rewards/", "/expected")
            ],
        )
    )
    panels.append(
        ("KL to the reference policy", "KL(π ‖ π_ref)", [("KL", _train_series(log_history, "kl"), None)])
    )
    # Preference optimization (DPO / IPO): TRL's implicit-reward metrics.
    panels.append(
        (
            "Implicit rewards β·log(π/π_ref)",
            "reward",
            [
                (name.removeprefix("rewards/"), _train_series(log_history, name), None)
                for name in ("rewards/chosen", "rewards/rejected", "rewards/margins")
            ],
        )
    )
    panels.append(
        (
            "Preference (reward) accuracy",
            "rewards/accuracies",
            [("train", _train_series(log_history, "rewards/accuracies"), None)]
            + [
                (_label(key, "rewards/accuracies"), _series(log_history, key), None)
                for key in _eval_keys(log_history, "rewards/accuracies")
            ],
        )
    )
    panels.append(
        (
            "Evaluation recall@1",
            "recall@1",
            [(_label(key), _series(log_history, key), None) for key in _eval_keys(log_history, "recall@1")],
        )
    )
    panels = [(title, ylabel, [line for line in lines if line[1][0]]) for title, ylabel, lines in panels]
    panels = [(title, ylabel, [line for line in lines if line[1][0]]) for title, ylabel, lines in panels]
    # A series that stays constant (a KL of exactly 0 with beta = 0, a loss of 1e-9) is not drawn as if its wiggles
    # meant something: the picture names it and its value in a note instead.
    flat: list[str] = []
    for title, _, lines in panels:
        for line in [line for line in lines if _is_flat(line[1][1])]:
            flat.append(f"{title}{f' ({line[0]})' if len(lines) > 1 else ''} {_constant(line[1][1])}")
            lines.remove(line)
    panels = [panel for panel in panels if panel[2]]
    if not panels:
        return None

    from matplotlib import rc_context
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure
    from matplotlib.ticker import MaxNLocator

    columns = min(2, len(panels))
    rows = math.ceil(len(panels) / columns)
    style = {
        "font.size": _FONT_SIZE,
        "axes.titlesize": _FONT_SIZE + 2,
        "axes.labelsize": _FONT_SIZE + 1,
        "xtick.labelsize": _FONT_SIZE,
        "ytick.labelsize": _FONT_SIZE,
        "legend.fontsize": _FONT_SIZE,
    }
    with rc_context(style):
        figure = Figure(figsize=(_PANEL_SIZE[0] * columns, _PANEL_SIZE[1] * rows), layout="constrained")
        FigureCanvasAgg(figure)
        axes = figure.subplots(rows, columns, squeeze=False).ravel()
        for ax, (title, ylabel, lines) in zip(axes, panels):
            for label, (steps, values), band in lines:
                # Markers keep a run with a single logged point visible.
                ax.plot(steps, values, marker="o" if len(values) < 30 else None, markersize=3, label=label)
                if band is not None and len(band[1]) == len(values):
                    low = [v - s for v, s in zip(values, band[1])]
                    high = [v + s for v, s in zip(values, band[1])]
                    ax.fill_between(steps, low, high, alpha=0.2, label="± std")
            ax.set_title(title)
            ax.set_xlabel("training step")
            ax.xaxis.set_major_locator(MaxNLocator(integer=True, min_n_ticks=1))
            ax.set_ylabel(ylabel)
            ax.grid(True, alpha=0.3)
            if len(lines) > 1 or lines[0][2] is not None:
                ax.legend()
        for ax in axes[len(panels) :]:
            ax.set_visible(False)
        if flat:
            figure.supxlabel(
                "Constant over the run, not drawn: " + "; ".join(flat) + ".", fontsize=_FONT_SIZE, wrap=True
            )
        os.makedirs(os.path.dirname(os.path.abspath(path)), exist_ok=True)
        figure.savefig(path, dpi=110)
    return os.fspath(path)


class TrainingCurvesCallback(TrainerCallback):
    r"""
    Write `output_dir/training_curves.png` (see [`plot_training_curves`]) when training ends, on the main
    process only. The clip_trl trainers add it themselves; the model card shows the picture.

    A plotting failure is logged as a warning and never fails a finished training run.

    Example:

    ```python
    >>> from clip_trl.reporting.curves import TrainingCurvesCallback
    >>> callback = TrainingCurvesCallback()
    >>> callback.plotted_entries is None
    True

    ```
    """

    def __init__(self) -> None:
        #: `len(log_history)` when the picture was last drawn (`None`: never), so the model card can tell
        #: whether evaluations logged since then call for a redraw.
        self.plotted_entries: int | None = None

    def plot(self, args: Any, state: Any) -> str | None:
        """Draw the picture for this run's `state.log_history` into `args.output_dir`."""
        try:
            path = plot_training_curves(
                state.log_history, os.path.join(args.output_dir, TRAINING_CURVES_FILENAME)
            )
        except Exception as error:  # noqa: BLE001 - a picture is not worth losing a finished run over
            logger.warning(f"Could not draw the training curves: {type(error).__name__}: {error}")
            return None
        self.plotted_entries = len(state.log_history)
        return path

    def on_train_end(self, args: Any, state: Any, control: Any, **kwargs: Any) -> None:
        if state.is_world_process_zero and args.output_dir:
            self.plot(args, state)
