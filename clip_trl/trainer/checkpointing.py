"""Crash-safe checkpoints: a `checkpoint-N` folder appears under that name only once it is complete.

transformers' `Trainer._save_checkpoint` (4.57 to 5.x) writes `checkpoint-N` in place, file by file: the
weights, then the optimizer and scheduler, the RNG states, and `trainer_state.json` last. A process killed
(or a machine that loses power) in between leaves a `checkpoint-N` folder that `get_last_checkpoint`, and so
`train(resume_from_checkpoint=True)`, picks as the newest one:

- killed before `trainer_state.json`: the resume stops with `FileNotFoundError`, and an auto-restarting job
  keeps failing until someone deletes the folder by hand;
- re-saving a step whose folder already exists (a run resumed from an earlier checkpoint) and killed midway:
  new weights next to the old optimizer and state, which load without complaint and are wrong;
- power loss: nothing is fsynced, so `trainer_state.json` can reach the disk while the weights file is still
  empty.

So the trainers let the Trainer write into `<run dir>/_incomplete-checkpoint-N/checkpoint-N`, fsync it, and
move it to `<run dir>/checkpoint-N` with one `os.replace` (atomic on POSIX and Windows). Names starting with
`_` match neither the Trainer's checkpoint pattern (`^checkpoint-\\d+$`, `checkpoint-*` for rotation) nor the
files it uploads from `output_dir` (`ignore_patterns=["_*", ...]`), so a half-written checkpoint is never
resumed from, rotated or pushed. Leftovers of a crash are removed by the next save.

The trainer side (which process writes, renames and waits) is [`CrashSafeCheckpointMixin`], below.
"""

from __future__ import annotations

import contextlib
import logging
import os
import shutil
from dataclasses import dataclass
from typing import Any

logger = logging.getLogger(__name__)

# transformers' PREFIX_CHECKPOINT_DIR; spelt out so this module has no import-time dependency on the Trainer.
CHECKPOINT_PREFIX = "checkpoint"
STAGING_PREFIX = "_incomplete-"
REPLACED_PREFIX = "_replaced-"


@dataclass
class CheckpointStage:
    """Where one checkpoint is written (`staged_folder`) and where it goes once complete (`final_folder`)."""

    run_dir: str
    step: int
    published: bool = False

    @property
    def name(self) -> str:
        return f"{CHECKPOINT_PREFIX}-{self.step}"

    @property
    def staging_root(self) -> str:
        """The folder handed to the Trainer as its run directory while it saves."""
        return os.path.join(self.run_dir, STAGING_PREFIX + self.name)

    @property
    def staged_folder(self) -> str:
        return os.path.join(self.staging_root, self.name)

    @property
    def final_folder(self) -> str:
        return os.path.join(self.run_dir, self.name)


def remove_stale(run_dir: str) -> list[str]:
    """Delete what an interrupted save left in `run_dir` (staging and replaced folders); return their names.

    Call on the saving process only, while no other process writes a checkpoint into `run_dir`.
    """
    try:
        names = os.listdir(run_dir)
    except FileNotFoundError:
        return []
    stale = sorted(
        n
        for n in names
        if n.startswith((STAGING_PREFIX + CHECKPOINT_PREFIX, REPLACED_PREFIX + CHECKPOINT_PREFIX))
    )
    for name in stale:
        shutil.rmtree(os.path.join(run_dir, name), ignore_errors=True)
    if stale:
        logger.warning(
            f"Removed {len(stale)} incomplete checkpoint folder(s) left by an interrupted save: {stale}."
        )
    return stale


def _fsync(path: str, directory: bool = False) -> None:
    try:
        fd = os.open(path, os.O_RDONLY | (getattr(os, "O_DIRECTORY", 0) if directory else 0))
    except OSError:  # e.g. directories cannot be opened on Windows; the rename is still atomic there
        return
    try:
        os.fsync(fd)
    except OSError:  # some filesystems (and /proc-like mounts) refuse fsync: best effort
        pass
    finally:
        os.close(fd)


def fsync_tree(folder: str) -> None:
    """Flush every file under `folder`, then the folders themselves, to stable storage.

    Without it the rename below could reach the disk before the data it names, and a power cut would leave a
    complete-looking `checkpoint-N` of empty files.
    """
    for root, _dirs, files in os.walk(folder, topdown=False):
        for name in files:
            _fsync(os.path.join(root, name))
        _fsync(root, directory=True)


def publish(stage: CheckpointStage) -> None:
    """Move the complete staged checkpoint to its final name, replacing an older folder of the same step.

    A crash at any point leaves either the old `checkpoint-N`, the new one, or none (then resuming falls back to
    the previous checkpoint): never a mix.
    """
    fsync_tree(stage.staged_folder)
    final = stage.final_folder
    replaced = None
    if os.path.lexists(final):
        # `os.replace` cannot overwrite a non-empty folder: move the old one aside first.
        replaced = os.path.join(stage.run_dir, REPLACED_PREFIX + stage.name)
        shutil.rmtree(replaced, ignore_errors=True)
        os.replace(final, replaced)
    os.replace(stage.staged_folder, final)
    _fsync(stage.run_dir, directory=True)
    if replaced is not None:
        shutil.rmtree(replaced, ignore_errors=True)
    # Something else written next to the checkpoint folder keeps the staging folder: `remove_stale` gets it later.
    with contextlib.suppress(OSError):
        os.rmdir(stage.staging_root)
    stage.published = True


class CrashSafeCheckpointMixin:
    """`Trainer` overrides that write each checkpoint into a staging folder and publish it with one rename
    (see the module docstring). Mixed into [`ClipBaseTrainer`] ahead of `transformers.Trainer`."""

    def _save_checkpoint(self, model: Any, trial: Any) -> None:
        # With `hub_strategy` pushing during training, the Trainer uploads `output_dir` (not the checkpoint
        # folder), so that is where the card must be for the Hub repository to have one.
        if self.args.push_to_hub and self.args.should_save:
            self._write_model_card(self.args.output_dir, strict=False)
        # Crash-safe: the Trainer writes into a staging folder (see `_get_output_dir`) that is renamed to
        # `checkpoint-N` only once complete, so resuming never picks a half-written checkpoint
        # (clip_trl/trainer/checkpointing.py says why the Trainer's own in-place writes are not enough).
        run_dir = super()._get_output_dir(trial)
        if self.args.should_save:
            remove_stale(run_dir)
        self.accelerator.wait_for_everyone()  # no process writes into a folder that is being removed
        self._checkpoint_stage = CheckpointStage(run_dir, self.state.global_step)
        try:
            super()._save_checkpoint(model, trial)  # with `push_to_hub`, publishes in `_push_from_checkpoint`
            self._publish_checkpoint()
        finally:
            self._checkpoint_stage = None
        # The Trainer rotated its run directory, the staging folder; rotate the real one.
        if self.args.should_save:
            try:
                from transformers.trainer_utils import rotate_checkpoints
            except ImportError:  # transformers < 5
                self._rotate_checkpoints(use_mtime=False, output_dir=run_dir)
            else:
                rotate_checkpoints(
                    output_dir=run_dir,
                    save_total_limit=self.args.save_total_limit,
                    best_model_checkpoint=self.state.best_model_checkpoint,
                    use_mtime=True,
                )

    def _get_output_dir(self, trial: Any) -> str:
        stage = getattr(self, "_checkpoint_stage", None)
        if stage is not None and not stage.published:
            return stage.staging_root
        return super()._get_output_dir(trial)

    def _push_from_checkpoint(self, checkpoint_folder: str) -> None:
        # The Trainer pushes right after writing `trainer_state.json`, in a background upload that reads the
        # folder later: publish first, so the upload reads the final folder, which stays where it is.
        stage = getattr(self, "_checkpoint_stage", None)
        if stage is not None and os.path.abspath(checkpoint_folder) == os.path.abspath(stage.staged_folder):
            self._publish_checkpoint()
            checkpoint_folder = stage.final_folder
        super()._push_from_checkpoint(checkpoint_folder)

    def _publish_checkpoint(self) -> None:
        """Rename the complete staged checkpoint to `checkpoint-N` (every process calls this; the saving one renames)."""
        from transformers.trainer import TRAINER_STATE_NAME

        stage = self._checkpoint_stage
        if stage is None or stage.published:
            return
        self.accelerator.wait_for_everyone()  # every process's files (RNG states, sharded optimizer) are written
        if self.state.best_model_checkpoint is not None and os.path.abspath(
            self.state.best_model_checkpoint
        ) == os.path.abspath(stage.staged_folder):
            # The Trainer recorded the staging path as the best checkpoint: point it (and the saved state) at the
            # final folder before publishing it.
            self.state.best_model_checkpoint = stage.final_folder
            if self.args.should_save:
                self.state.save_to_json(os.path.join(stage.staged_folder, TRAINER_STATE_NAME))
        if self.args.should_save:
            publish(stage)
        stage.published = True
        self.accelerator.wait_for_everyone()  # nobody reads `checkpoint-N` before it exists
