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

The trainer side (which process writes, renames and waits) is in `ClipTrainerBase._save_checkpoint`.
"""

from __future__ import annotations

import contextlib
import logging
import os
import shutil
from dataclasses import dataclass

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
    stale = sorted(n for n in names if n.startswith((STAGING_PREFIX + CHECKPOINT_PREFIX, REPLACED_PREFIX + CHECKPOINT_PREFIX)))
    for name in stale:
        shutil.rmtree(os.path.join(run_dir, name), ignore_errors=True)
    if stale:
        logger.warning(f"Removed {len(stale)} incomplete checkpoint folder(s) left by an interrupted save: {stale}.")
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
