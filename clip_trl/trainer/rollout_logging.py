"""`ClipRLConfig(log_rollouts=True)`: the callback that captures the RL trainer's rollouts and, at each logging
step, sends a table of them to the files in `output_dir/rollouts` and the `report_to` integrations; the console
gets the last step's table when training ends (or every step's, `print_rollouts="log"`). The tables themselves
are built in [`clip_trl.reporting.rollouts`] and [`clip_trl.reporting.console`].
"""

from __future__ import annotations

import importlib
import importlib.util
import os
from typing import Any

import torch
from transformers import TrainerCallback
from transformers.integrations import TensorBoardCallback

from clip_trl.reporting.console import print_rollouts
from clip_trl.reporting.rollouts import (
    ROLLOUTS_DIRNAME,
    QueryRollout,
    RolloutWriter,
    markdown_table,
    query_rollouts,
)
from clip_trl.trainer.step_metrics import is_training_log


class RolloutLoggingCallback(TrainerCallback):
    """Keeps the first `num_rollouts_to_log` queries of the latest training batch ([`capture`], called by
    [`ClipRLTrainer`]); on each training log, every process contributes its queries (gathered in rank order) and
    the main process writes them (see [`clip_trl.reporting.rollouts`]). On `on_train_begin` it drops rollout files of steps
    after the one a run resumes from.

    Args:
        trainer ([`ClipRLTrainer`]): the trainer (its args, reward names and callbacks are read at log time).
    """

    def __init__(self, trainer: Any) -> None:
        self.trainer = trainer
        self.limit = trainer.args.num_rollouts_to_log
        self.writer = RolloutWriter(
            os.path.join(trainer.args.output_dir, ROLLOUTS_DIRNAME), trainer.reward_names
        )
        self._captured: dict[str, Any] | None = None
        self._last: tuple[list[QueryRollout], int] | None = None  # the latest published step, for the console

    def capture(
        self,
        entries: list[tuple[int, int]],
        log_probs: torch.Tensor,
        scores: Any,
        advantages: torch.Tensor,
        inputs: dict[str, Any],
    ) -> None:
        """Remember one batch's rollout: the actions `entries` (query, candidate), `log π` `[B, K]`, the
        [`RewardScores`], one advantage per entry, and the batch (candidates, ground truth, rows). Called every
        step: only shallow slices are kept here (not the batch's tensors), the tables are built at the next log."""
        limit = self.limit
        self._captured = {
            "entries": entries,
            "log_probs": log_probs[:limit].detach(),
            "scores": scores,
            "advantages": advantages.detach(),
            "candidates": inputs["candidates"][:limit],
            "ground_truth": inputs["ground_truth"][:limit],
            "rows": inputs["rows"][:limit],
        }

    def on_train_begin(self, args: Any, state: Any, control: Any, **kwargs: Any) -> None:
        if state.is_world_process_zero:
            self.writer.resume(state.global_step)

    def on_train_end(self, args: Any, state: Any, control: Any, **kwargs: Any) -> None:
        if state.is_world_process_zero and self._last is not None and self._console("end"):
            print_rollouts(*self._last, self.writer.reward_names)

    def on_log(
        self, args: Any, state: Any, control: Any, logs: dict[str, Any] | None = None, **kwargs: Any
    ) -> None:
        if logs is None or not is_training_log(logs):
            return  # only training logs carry rollouts
        mine = self._rollouts()
        self._captured = None
        if args.world_size > 1:  # every process reaches this log: the gather is collective
            from accelerate.utils import gather_object

            mine = [rollout for part in gather_object([mine]) for rollout in part]
        if not state.is_world_process_zero or not mine:
            return
        self.publish(mine[: self.limit], state.global_step)

    def _rollouts(self) -> list[QueryRollout]:
        if self._captured is None:
            return []
        captured, args, scores = self._captured, self.trainer.args, self._captured["scores"]
        truth = captured["ground_truth"]
        return query_rollouts(
            captured["entries"],
            captured["log_probs"].float().exp().tolist(),
            captured["candidates"],
            truth,
            # The row's own image: the query for image_to_text, the caption's true image for text_to_image.
            [row.get(args.image_column) for row in captured["rows"]],
            scores.per_function.tolist(),
            scores.total.tolist(),
            captured["advantages"].tolist(),
            self.writer.reward_names,
            queries=list(truth) if args.direction == "text_to_image" else None,
            limit=self.limit,
            extra=getattr(scores, "extra_columns", None),  # what rewards logged with `log_extra`
        )

    def publish(self, rollouts: list[QueryRollout], step: int) -> None:
        """Write one step's rollouts to the folder, the integrations and, with `print_rollouts="log"`, the console
        (main process)."""
        records = self.writer.write(step, rollouts)
        names = self.writer.reward_names
        report_to = self.trainer.args.report_to or []
        for callback in self.trainer.callback_handler.callbacks:
            if isinstance(callback, TensorBoardCallback) and getattr(callback, "tb_writer", None) is not None:
                callback.tb_writer.add_text("rollouts", markdown_table(rollouts), global_step=step)
                callback.tb_writer.flush()
        for backend in ("wandb", "trackio"):
            if backend in report_to:
                self._log_table(backend, rollouts, records)
        self._last = (rollouts, step)
        if self._console("log"):
            print_rollouts(rollouts, step, names)

    def _console(self, when: str) -> bool:
        """Whether the console gets a table now (`print_rollouts` is `when`, and `rich` is installed)."""
        return (
            getattr(self.trainer.args, "print_rollouts", "end") == when
            and importlib.util.find_spec("rich") is not None
        )

    def _log_table(self, backend: str, rollouts: list[QueryRollout], records: list[dict[str, Any]]) -> None:
        """A table with an image column to Weights & Biases or Trackio (TRL's `log_completions` way)."""
        import pandas as pd

        module = importlib.import_module(backend)
        if backend == "wandb" and getattr(module, "run", None) is None:
            return  # not initialised (e.g. WANDB_DISABLED): the Trainer's callback logs nothing either
        frame = pd.DataFrame.from_records(records)
        images = [rollouts[q].image for q in frame["query_index"]]
        frame.insert(2, "image", [module.Image(image) if image is not None else None for image in images])
        frame = frame.drop(columns=["image_file"])
        module.log({"rollouts": module.Table(dataframe=frame)})
