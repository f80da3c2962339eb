"""Kill a real training process with SIGKILL, resume it in a new process, and get an uninterrupted run's weights.

The runs are `tests/launch_scripts/train_for_resume.py` (tiny CLIP, 48 emoji rows, batch 8, 8 steps, a checkpoint every 2
steps). The process kills itself at a fixed point, so the test does not depend on timing:

- contrastive: right after optimizer step 5, between checkpoints: step 5 is lost and redone from checkpoint-4;
- RL (GRPO sampling, beta > 0 so the reference model takes part): in the middle of writing checkpoint-6, after
  its weights and optimizer are on disk. The half-written checkpoint must stay invisible (transformers alone
  would leave a `checkpoint-6` that `resume_from_checkpoint=True` picks and cannot load), so the resume starts
  from checkpoint-4 too.
"""

from __future__ import annotations

import os
import signal
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from transformers.trainer_utils import get_last_checkpoint

SCRIPTS = Path(__file__).resolve().parents[1] / "launch_scripts"
sys.path.insert(0, str(SCRIPTS))

import train_for_resume as driver  # noqa: E402


def command(trainer: str, output_dir: Path, *extra: str) -> list[str]:
    # Same thread count as this process: the uninterrupted reference run happens here, and CPU kernels may sum in
    # a different order with another number of threads.
    return [
        sys.executable,
        str(SCRIPTS / "train_for_resume.py"),
        "--trainer",
        trainer,
        "--output_dir",
        str(output_dir),
        "--threads",
        str(torch.get_num_threads()),
        *extra,
    ]


def env() -> dict[str, str]:
    return {**os.environ, "TOKENIZERS_PARALLELISM": "false", "PYTHONUNBUFFERED": "1"}


@pytest.mark.parametrize(
    ("trainer", "kill", "lost_checkpoint"),
    [
        ("contrastive", "--kill_at_step=5", None),
        ("rl", "--kill_in_save=6", "checkpoint-6"),
    ],
)
def test_sigkill_then_resume_gives_the_uninterrupted_weights(tmp_path, trainer, kill, lost_checkpoint):
    part = tmp_path / "part"
    killed = subprocess.Popen(
        command(trainer, part, kill), stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, env=env()
    )
    try:
        # The uninterrupted run, in this process, while the other one trains to its death.
        reference = driver.build_trainer(trainer, str(tmp_path / "full"))
        reference.train()
        expected = driver.summary(reference)
        output, _ = killed.communicate(timeout=300)
    finally:
        if killed.poll() is None:  # the reference run failed: do not leave the child behind
            killed.kill()
            killed.wait()
    assert killed.returncode == -signal.SIGKILL, output[-3000:]

    visible = sorted(n for n in os.listdir(part) if n.startswith("checkpoint-"))
    assert visible == ["checkpoint-2", "checkpoint-4"], os.listdir(part)
    assert get_last_checkpoint(str(part)) == str(part / "checkpoint-4")
    if (
        lost_checkpoint
    ):  # the save did start: its files are in the staging folder, not under the checkpoint's name
        staged = part / f"_incomplete-{lost_checkpoint}" / lost_checkpoint
        assert (staged / "model.safetensors").is_file() and (staged / "optimizer.pt").is_file()
        assert not (staged / "trainer_state.json").exists()

    out = tmp_path / "resumed.pt"
    resumed = subprocess.run(
        command(trainer, part, "--resume", "--out", str(out)),
        capture_output=True,
        text=True,
        env=env(),
        timeout=300,
    )
    assert resumed.returncode == 0, resumed.stdout[-3000:] + resumed.stderr[-3000:]
    result = torch.load(out)

    assert result["global_step"] == expected["global_step"] == driver.MAX_STEPS
    # Every step's loss is there once (1-4 from checkpoint-4's log, 5-8 trained again) and equals the reference's.
    assert sorted(result["losses"]) == list(range(1, driver.MAX_STEPS + 1))
    for step, loss in expected["losses"].items():
        assert result["losses"][step] == pytest.approx(loss, abs=1e-6), step
    moved = 0
    initial = driver.build_clip("tiny", seed=0)[0].state_dict()
    for name, weight in expected["weights"].items():
        torch.testing.assert_close(result["weights"][name], weight, atol=1e-6, rtol=0, msg=name)
        moved += not torch.equal(weight, initial[name])
    assert moved > len(initial) // 2  # the runs trained: equal weights are not equal initial weights
    if trainer == "rl":
        # The reference policy is the starting model in both runs, not the checkpoint the resume loaded.
        for name, weight in result["ref_weights"].items():
            assert torch.equal(weight, initial[name]), name
    # The resumed run saved the later checkpoints and cleared what the interrupted save left behind.
    folders = sorted(n for n in os.listdir(part) if (part / n).is_dir())
    assert folders == ["checkpoint-2", "checkpoint-4", "checkpoint-6", "checkpoint-8"]
