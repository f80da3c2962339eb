"""Launching several processes: the documented CPU command really starts them, and a launch that asked for N
processes but got one says so."""

from __future__ import annotations

import os
import re
import shlex
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
import yaml

from clip_trl.trainer.launch_check import requested_processes, warn_if_fewer_processes

ROOT = Path(__file__).resolve().parents[2]
DISTRIBUTED = ROOT / "docs" / "distributed.md"
ENV = {"OMP_NUM_THREADS": "1", "TOKENIZERS_PARALLELISM": "false", "PYTHONPATH": str(ROOT)}


def documented_cpu_commands() -> list[list[str]]:
    """The `torchrun` commands of docs/distributed.md's "Several processes on CPU" section, split like a shell."""
    section = DISTRIBUTED.read_text(encoding="utf-8").split("## Several processes on CPU", 1)[1]
    block = re.search(r"```bash\n(.*?)```", section, re.S).group(1)
    return [shlex.split(line) for line in block.splitlines() if line.strip()]


def test_documented_cpu_command_runs_two_processes(tmp_path):
    commands = documented_cpu_commands()
    assert [command[:4] for command in commands] == [
        ["torchrun", "--standalone", "--nproc_per_node", "2"]
    ] * 2
    assert [command[4] for command in commands] == ["examples/contrastive.py", "examples/rl.py"]
    assert all("--use_cpu" in command for command in commands)
    # The contrastive command as written, with `torchrun` spelled `python -m torch.distributed.run` (the same
    # entry point) and a tiny run added: the random tiny CLIP, 32 rows, 2 steps, no evaluation during training.
    command = [
        sys.executable,
        "-m",
        "torch.distributed.run",
        *commands[0][1:],
        "--output_dir",
        str(tmp_path / "out"),
        "--offline_model_size",
        "tiny",
        "--max_train_samples",
        "32",
        "--max_eval_samples",
        "16",
        "--max_steps",
        "2",
        "--per_device_train_batch_size",
        "4",
        "--eval_strategy",
        "no",
        "--log_level",
        "info",
    ]
    result = subprocess.run(
        command, cwd=ROOT, capture_output=True, text=True, env={**os.environ, **ENV}, timeout=600
    )
    output = result.stdout + result.stderr
    assert result.returncode == 0, output[-4000:]
    # The Trainer reports the global batch: per-device batch × processes (no accumulation).
    total = int(
        re.search(r"Total train batch size \(w\. parallel, distributed & accumulation\) = (\d+)", output)[1]
    )
    assert total // 4 == 2, output[-4000:]
    assert (tmp_path / "out" / "model.safetensors").is_file()
    # Launch feedback: no DDP warning about unused parameters, no deprecated collectives.
    assert "find_unused_parameters=True" not in output
    assert "torch.distributed.nn.functional" not in output


def test_an_error_under_two_processes_is_printed_once(tmp_path):
    # The documented RL command, as written, where a user who skipped the contrastive step ends up: no model in
    # the contrastive model folder. Both ranks fail alike; rank 0 prints the message, rank 1 one line.
    rl = documented_cpu_commands()[1]
    command = [
        sys.executable,
        "-m",
        "torch.distributed.run",
        *rl[1:],
        "--contrastive_model_dir",
        str(tmp_path / "missing"),
        "--output_dir",
        str(tmp_path / "out"),
        "--max_train_samples",
        "32",
        "--max_eval_samples",
        "16",
    ]
    result = subprocess.run(
        command, cwd=ROOT, capture_output=True, text=True, env={**os.environ, **ENV}, timeout=600
    )
    output = result.stdout + result.stderr
    assert result.returncode == 1, output[-4000:]
    message = f"rl.py: error: No --model_name_or_path was given and '{tmp_path / 'missing'}' holds no contrastive model"
    assert output.count(message) == 1, output[-4000:]
    assert output.count("holds no contrastive model") == 1, output[-4000:]
    assert "rank 1: the same error as rank 0 (ValueError), see above" in output, output[-4000:]
    # No traceback from the processes: the only one is torchrun's own (ChildFailedError).
    assert output.count("Traceback (most recent call last)") == 1, output[-4000:]
    assert "ChildFailedError" in output


@pytest.mark.skipif(
    shutil.which("accelerate", path=os.path.dirname(sys.executable)) is None,
    reason="accelerate's launcher is not installed next to this Python",
)
def test_accelerate_cpu_launch_that_starts_one_process_warns():
    accelerate = shutil.which("accelerate", path=os.path.dirname(sys.executable))
    command = [
        accelerate,
        "launch",
        "--cpu",
        "--num_processes",
        "2",
        str(ROOT / "tests" / "launch_scripts" / "construct_trainer.py"),
    ]
    result = subprocess.run(
        command, cwd=ROOT, capture_output=True, text=True, env={**os.environ, **ENV}, timeout=600
    )
    output = result.stdout + result.stderr
    assert result.returncode == 0, output[-4000:]
    if "world_size=1" not in output:
        pytest.skip("accelerate started several processes here (MPI is installed): nothing to warn about")
    assert (
        "This launch asked for 2 processes (`--num_processes 2`) but the trainer runs in 1 (world_size=1): "
        "training is not distributed."
    ) in output
    assert "torchrun --nproc_per_node N <script> ... --use_cpu true" in output


def test_requested_processes_reads_the_launcher_command_line(tmp_path):
    python = "/venv/bin/python"
    assert requested_processes(
        [python, "/venv/bin/accelerate", "launch", "--cpu", "--num_processes", "4", "t.py"]
    ) == (4, "`--num_processes 4`")
    assert (
        requested_processes([python, "-m", "accelerate.commands.launch", "--num-processes=3", "t.py"])[0] == 3
    )
    config = tmp_path / "multi_cpu.yaml"
    config.write_text(yaml.safe_dump({"distributed_type": "MULTI_CPU", "num_processes": 2}))
    assert requested_processes(["accelerate", "launch", "--config_file", str(config), "t.py"]) == (
        2,
        f"`num_processes: 2` in {config}",
    )
    # Not an accelerate launch (a shell, torchrun, pytest): nothing was asked of accelerate.
    assert requested_processes(["/bin/bash", "-c", "python t.py --num_processes 4"]) is None
    assert (
        requested_processes([python, "-m", "torch.distributed.run", "--nproc_per_node", "2", "t.py"]) is None
    )
    assert requested_processes([]) is None
    # The warning fires only when fewer processes run than were asked for.
    argv = ["accelerate", "launch", "--num_processes", "2", "t.py"]
    assert warn_if_fewer_processes(1, argv) is True
    assert warn_if_fewer_processes(2, argv) is False


def test_no_page_offers_accelerate_cpu_launch_as_a_multi_process_command():
    # `accelerate launch --cpu --num_processes N` starts one process here; only prose may mention it (as a warning).
    pages = [
        ROOT / "README.md",
        *sorted((ROOT / "docs").glob("**/*.md")),
        *sorted((ROOT / "examples").glob("*.py")),
    ]
    offenders = []
    for page in pages:
        fence = None  # the language of the open code block, "" for an unlabelled one
        for line in page.read_text(encoding="utf-8").splitlines():
            if line.strip().startswith("```"):
                fence = line.strip()[3:].strip() if fence is None else None
            elif (
                fence in ("", "bash", "sh", "shell", "console")
                and "accelerate launch" in line
                and "--cpu" in line
            ):
                offenders.append(f"{page.name}: {line.strip()}")
    assert offenders == []


def test_fsdp_that_accelerate_did_not_enable_is_reported():
    from clip_trl.trainer.launch_check import warn_if_fsdp_inactive

    # Asked through the config field or an accelerate FSDP config, but not active (a CPU process group): warn.
    assert warn_if_fsdp_inactive(["full_shard"], fsdp_enabled=False, environ={}) is True
    assert warn_if_fsdp_inactive([], fsdp_enabled=False, environ={"ACCELERATE_USE_FSDP": "true"}) is True
    # Active, or never asked for: nothing to say.
    assert warn_if_fsdp_inactive(["full_shard"], fsdp_enabled=True, environ={}) is False
    assert warn_if_fsdp_inactive([], fsdp_enabled=False, environ={"ACCELERATE_USE_FSDP": "false"}) is False
