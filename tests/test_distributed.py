"""Multi-process runs on CPU (gloo), launched the way users launch them: `torch.distributed.run`."""

import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch

SCRIPT = Path(__file__).parent / "scripts" / "one_step.py"


def launch(tmp_path: Path, name: str, processes: int, per_device_batch: int, trainer: str = "contrastive") -> dict:
    out = tmp_path / f"{name}.pt"
    command = [sys.executable]
    if processes > 1:
        command += ["-m", "torch.distributed.run", "--standalone", "--nproc_per_node", str(processes)]
    command += [str(SCRIPT), "--trainer", trainer, "--per_device_batch", str(per_device_batch),
                "--out", str(out), "--output_dir", str(tmp_path / name)]
    env = {**os.environ, "OMP_NUM_THREADS": "1", "TOKENIZERS_PARALLELISM": "false"}
    result = subprocess.run(command, capture_output=True, text=True, env=env, timeout=600)
    assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-3000:]
    return torch.load(out)


@pytest.mark.slow
def test_two_processes_equal_one_process_on_the_global_batch(tmp_path):
    # Global negatives: 2 ranks × 4 rows must train exactly like 1 rank × 8 rows (same rows, same order).
    one = launch(tmp_path, "one", processes=1, per_device_batch=8)
    two = launch(tmp_path, "two", processes=2, per_device_batch=4)
    assert (one["world_size"], two["world_size"]) == (1, 2)
    assert two["loss"] == pytest.approx(one["loss"], abs=1e-5)
    for name, weight in one["weights"].items():
        torch.testing.assert_close(two["weights"][name], weight, atol=1e-5, rtol=0, msg=name)
    # The step did move the weights (a test that cannot fail is no test).
    from clip_trl.offline import build_clip

    initial = build_clip("tiny", seed=0)[0].state_dict()
    assert any(not torch.equal(initial[k], v) for k, v in one["weights"].items())


@pytest.mark.slow
def test_rl_trainer_runs_under_two_processes(tmp_path):
    two = launch(tmp_path, "rl", processes=2, per_device_batch=4, trainer="rl")
    assert two["world_size"] == 2
    assert torch.isfinite(torch.tensor(two["loss"]))
