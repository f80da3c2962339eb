"""Two processes split a stream of test-time adaptation and give the same predictions as one."""

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

SCRIPT = Path(__file__).resolve().parents[1] / "launch_scripts" / "tta_runs.py"


def run(out: Path, processes: int) -> dict:
    command = [sys.executable]
    if processes > 1:
        command += ["-m", "torch.distributed.run", "--standalone", "--nproc_per_node", str(processes)]
    env = {**os.environ, "OMP_NUM_THREADS": "1", "TOKENIZERS_PARALLELISM": "false"}
    result = subprocess.run(
        [*command, str(SCRIPT), "--out", str(out)], capture_output=True, text=True, env=env, timeout=600
    )
    assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-3000:]
    return json.loads(out.read_text())


@pytest.mark.slow
def test_two_processes_give_the_predictions_of_one(tmp_path):
    one = run(tmp_path / "one.json", 1)
    two = run(tmp_path / "two.json", 2)
    assert [p["index"] for p in two["predictions"]] == list(range(7))
    assert two["predictions"] == one["predictions"]
    assert two["stats"]["processes"] == 2 and two["stats"]["inputs"] == 7
