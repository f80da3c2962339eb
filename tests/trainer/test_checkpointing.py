"""Crash-safe checkpoint writes (clip_trl/trainer/checkpointing.py): a `checkpoint-N` folder is complete or absent.

The SIGKILL variant, with a real process, is in test_kill_resume.py; these run in-process and cover the
Trainer features the staging has to keep working: rotation (`save_total_limit`), the best checkpoint
(`load_best_model_at_end`) and pushing checkpoints to the Hub (`hub_strategy="checkpoint"`).
"""

from __future__ import annotations

import json
import logging
import os
from concurrent.futures import Future

import pytest
import torch
from huggingface_hub import HfApi, RepoUrl
from huggingface_hub.utils import filter_repo_objects
from transformers import TrainerCallback
from transformers.trainer_utils import get_last_checkpoint

from clip_trl import ClipContrastiveConfig, ClipContrastiveTrainer
from clip_trl.offline import build_clip
from clip_trl.trainer import checkpointing


def make_trainer(tmp_path, emoji, name="out", **overrides):
    model, processor = build_clip("tiny", seed=0)
    defaults = dict(
        output_dir=str(tmp_path / name),
        per_device_train_batch_size=8,
        learning_rate=1e-3,
        max_steps=4,
        save_strategy="steps",
        save_steps=2,
        logging_steps=1,
        seed=0,
        use_cpu=True,
        report_to="none",
        disable_tqdm=True,
    )
    args = ClipContrastiveConfig(**{**defaults, **overrides})
    return ClipContrastiveTrainer(
        model=model,
        args=args,
        train_dataset=emoji["train"].select(range(32)),
        eval_dataset=emoji["test"].select(range(16)),
        processing_class=processor,
    )


def folders(path) -> list[str]:
    return sorted(n for n in os.listdir(path) if os.path.isdir(os.path.join(path, n)))


def test_a_save_that_fails_midway_leaves_no_checkpoint_and_resume_uses_the_previous_one(
    tmp_path, emoji, caplog
):
    trainer = make_trainer(tmp_path, emoji)
    save_rng_state = trainer._save_rng_state

    def crash_at_step_4(output_dir):  # after weights, optimizer and scheduler; before RNG states and state
        if trainer.state.global_step == 4:
            raise OSError("No space left on device")
        save_rng_state(output_dir)

    trainer._save_rng_state = crash_at_step_4
    with pytest.raises(OSError, match="No space left on device"):
        trainer.train()
    out = tmp_path / "out"
    assert folders(out) == ["_incomplete-checkpoint-4", "checkpoint-2"]
    assert (
        out / "_incomplete-checkpoint-4" / "checkpoint-4" / "model.safetensors"
    ).is_file()  # the save had begun
    assert get_last_checkpoint(str(out)) == str(out / "checkpoint-2")

    resumed = make_trainer(tmp_path, emoji)
    with caplog.at_level(logging.WARNING, logger="clip_trl.trainer.checkpointing"):
        resumed.train(resume_from_checkpoint=True)
    assert (
        "Removed 1 incomplete checkpoint folder(s) left by an interrupted save: ['_incomplete-checkpoint-4']"
        in (caplog.text)
    )
    assert folders(out) == ["checkpoint-2", "checkpoint-4"]
    reference = make_trainer(tmp_path, emoji, name="reference", save_strategy="no")
    reference.train()
    for (name, a), b in zip(reference.model.named_parameters(), resumed.model.parameters()):
        torch.testing.assert_close(b, a, atol=1e-6, rtol=0, msg=name)


def test_publishing_over_an_existing_checkpoint_replaces_it_whole(tmp_path):
    stage = checkpointing.CheckpointStage(str(tmp_path), 3)
    os.makedirs(stage.final_folder)
    for name in ("model.safetensors", "optimizer.pt", "trainer_state.json"):
        (tmp_path / "checkpoint-3" / name).write_text("old")
    os.makedirs(stage.staged_folder)
    for name in ("model.safetensors", "trainer_state.json"):
        (tmp_path / stage.staged_folder / name).write_text("new")
    checkpointing.publish(stage)
    assert stage.published
    assert folders(tmp_path) == ["checkpoint-3"]  # no staging or replaced folder left
    # No file of the older save survives next to the new ones (a mix would load, and be wrong).
    assert sorted(os.listdir(stage.final_folder)) == ["model.safetensors", "trainer_state.json"]
    assert all((tmp_path / "checkpoint-3" / n).read_text() == "new" for n in os.listdir(stage.final_folder))


def test_rotation_and_the_best_checkpoint_use_the_final_folders(tmp_path, emoji):
    trainer = make_trainer(
        tmp_path,
        emoji,
        max_steps=6,
        eval_strategy="steps",
        eval_steps=2,
        save_total_limit=1,
        load_best_model_at_end=True,
        metric_for_best_model="eval_loss",
    )
    out = tmp_path / "out"
    seen = []

    class AfterSave(TrainerCallback):
        def on_save(self, args, state, control, **kwargs):
            with open(out / f"checkpoint-{state.global_step}" / "trainer_state.json") as f:
                recorded = json.load(f)["best_model_checkpoint"]
            seen.append((state.global_step, state.best_model_checkpoint, recorded, folders(out)))

    trainer.add_callback(AfterSave())
    trainer.train()
    for step, best, recorded, kept in seen:
        # `save_total_limit=1` keeps the newest checkpoint and the best one (the Trainer's rule); nothing staged.
        assert os.path.dirname(best) == str(out) and recorded == best, (best, recorded)
        assert kept == sorted({os.path.basename(best), f"checkpoint-{step}"}), (step, best, kept)
    assert len(seen) == 3
    # At the end the Trainer loads the best checkpoint back and drops the newest one, as it does without staging.
    assert folders(out) == [os.path.basename(trainer.state.best_model_checkpoint)]


def test_hub_strategy_checkpoint_pushes_the_published_folder(tmp_path, emoji, monkeypatch):
    uploads = []

    def create_repo(self, repo_id, **kwargs):
        return RepoUrl(f"https://huggingface.co/{repo_id}")

    def upload_folder(
        self, *, repo_id, folder_path, ignore_patterns=None, path_in_repo=None, run_as_future=False, **kwargs
    ):
        # Lists the files at call time; the real upload runs in the background and lists them later, so the folder
        # it is given must stay where it is.
        files = [
            os.path.relpath(os.path.join(d, f), folder_path) for d, _, fs in os.walk(folder_path) for f in fs
        ]
        uploads.append(
            {
                "folder": folder_path,
                "path_in_repo": path_in_repo,
                "files": sorted(filter_repo_objects(files, ignore_patterns=ignore_patterns)),
            }
        )
        url = f"https://huggingface.co/{repo_id}/commit/0"
        if not run_as_future:
            return url
        future: Future = Future()
        future.set_result(url)
        return future

    monkeypatch.setattr(HfApi, "create_repo", create_repo)
    monkeypatch.setattr(HfApi, "upload_folder", upload_folder)
    trainer = make_trainer(
        tmp_path,
        emoji,
        max_steps=2,
        push_to_hub=True,
        hub_model_id="clip-trl-test/ckpt",
        hub_strategy="checkpoint",
    )
    trainer.train()
    out = tmp_path / "out"
    checkpoint_pushes = [u for u in uploads if u["path_in_repo"] == "last-checkpoint"]
    assert [u["folder"] for u in checkpoint_pushes] == [str(out / "checkpoint-2")]
    assert {"model.safetensors", "optimizer.pt", "trainer_state.json"} <= set(checkpoint_pushes[0]["files"])
    for upload in uploads:
        assert not any("_incomplete" in f for f in upload["files"]), upload
    assert folders(out) == ["checkpoint-2"]
