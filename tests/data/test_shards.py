"""Webdataset shards (`clip_trl.data.shards`): writing, per-process reading, and exact resume mid-epoch.

The multi-process runs are `tests/launch_scripts/shard_runs.py` under torchrun: once as 1 node x 2 processes, once as
2 "nodes" x 1 process meeting through torchrun's c10d rendezvous on 127.0.0.1 (two launchers, as on a cluster).
"""

from __future__ import annotations

import io
import json
import os
import socket
import subprocess
import sys
import tarfile
from pathlib import Path

import pytest
import torch
from clip_test_utils import colour_dataset

from clip_trl import ClipContrastiveConfig, ClipContrastiveTrainer, ClipRLConfig, ClipRLTrainer
from clip_trl.data.shards import ShardStream, write_shards
from clip_trl.offline import build_clip

SCRIPT = Path(__file__).resolve().parents[1] / "launch_scripts" / "shard_runs.py"
ROWS = 40


@pytest.fixture(scope="module")
def shards(tmp_path_factory) -> list[str]:
    rows = colour_dataset([f"colour number {i}" for i in range(ROWS)])
    return write_shards(rows, str(tmp_path_factory.mktemp("shards")), num_shards=8)


def test_write_shards_uses_the_webdataset_layout(shards):
    assert [os.path.basename(p) for p in shards] == [f"shard-{i:05d}.tar" for i in range(8)]
    with tarfile.open(shards[1]) as tar:
        names = tar.getnames()
        caption = tar.extractfile("000000005.txt").read().decode()
    assert names == [
        "000000005.png",
        "000000005.txt",
        "000000006.png",
        "000000006.txt",
        "000000007.png",
        "000000007.txt",
        "000000008.png",
        "000000008.txt",
        "000000009.png",
        "000000009.txt",
    ]
    assert caption == "colour number 5"


def test_stream_rows_and_layout_errors(shards):
    rows = list(ShardStream(shards, num_epochs=1, shuffle_buffer=0))
    assert [r["__key__"] for r in rows] == [f"{i:09d}" for i in range(ROWS)]  # no shuffling: in order
    assert rows[7]["caption"] == "colour number 7" and rows[7]["image"]["bytes"][:4] == b"\x89PNG"
    shuffled = [r["__key__"] for r in ShardStream(shards, num_epochs=2, shuffle_buffer=4)]
    assert sorted(shuffled[:ROWS]) == sorted(shuffled[ROWS:]) == [f"{i:09d}" for i in range(ROWS)]
    assert shuffled[:ROWS] != shuffled[ROWS:]  # reshuffled every epoch
    stream = ShardStream(shards)
    saved = stream.state_dict()
    with pytest.raises(ValueError, match=r"\['seed'\] changed since the checkpoint"):
        ShardStream(shards, seed=1).load_state_dict(saved)
    folder = os.path.dirname(shards[0])
    with pytest.raises(ValueError, match="No shard matches"):
        ShardStream(os.path.join(folder, "nothing-*.tar"))
    assert (
        ShardStream(os.path.join(folder, "shard-{00002..00004}.tar")).files == shards[2:5]
    )  # img2dataset style
    with pytest.raises(ValueError, match=r"1 of 9 shard\(s\) do not exist, e.g. '.*shard-00008.tar'"):
        ShardStream(os.path.join(folder, "shard-{00000..00008}.tar"))


# ------------------------------------------------------------------------------------------- exact resume


class Recording:
    """Mixin: record the rows each optimizer step trains on (image content keys: every row's image differs)."""

    def training_step(self, model, inputs, *args, **kwargs):
        rows = inputs.get("rows")
        keys = [r["__key__"] for r in rows] if rows is not None else inputs["image_keys"].tolist()
        self.seen.append(keys)
        return super().training_step(model, inputs, *args, **kwargs)


class RecordingContrastive(Recording, ClipContrastiveTrainer):
    pass


class RecordingRL(Recording, ClipRLTrainer):
    pass


def make(kind: str, shards: list[str], output_dir: str):
    model, processor = build_clip("tiny", seed=0)
    common = dict(
        output_dir=output_dir,
        report_to="none",
        max_steps=12,
        per_device_train_batch_size=4,
        gradient_accumulation_steps=1,
        learning_rate=1e-3,
        save_steps=5,
        dataloader_num_workers=2,
        seed=0,
        disable_tqdm=True,
        use_cpu=True,
    )
    stream = ShardStream(shards, shuffle_buffer=4)
    if kind == "contrastive":
        trainer = RecordingContrastive(
            model=model,
            args=ClipContrastiveConfig(**common),
            processing_class=processor,
            train_dataset=stream,
        )
    else:
        args = ClipRLConfig(**common, advantage="exact", beta=0.0)
        trainer = RecordingRL(
            model=model,
            args=args,
            processing_class=processor,
            train_dataset=stream,
            reward_funcs="correctness",
        )
    trainer.seen = []
    return trainer


@pytest.mark.slow
@pytest.mark.parametrize("kind", ["contrastive", "rl"])
def test_resume_mid_epoch_continues_exactly(shards, tmp_path, kind):
    # 40 rows / batch 4 = 10 steps an epoch, 2 DataLoader workers taking turns; checkpoint-5 is mid-epoch and on
    # an odd batch (the resumed workers must swap roles), and steps 11-12 are in the next epoch.
    full = make(kind, shards, str(tmp_path / "full"))
    full.train()
    epoch_one = [key for step in full.seen[:10] for key in step]
    assert len(set(epoch_one)) == ROWS  # every row once in the epoch

    resumed = make(kind, shards, str(tmp_path / "resumed"))
    resumed.train(resume_from_checkpoint=str(tmp_path / "full" / "checkpoint-5"))
    assert resumed.seen == full.seen[5:]
    for (name, a), b in zip(full.model.state_dict().items(), resumed.model.state_dict().values()):
        torch.testing.assert_close(b, a, atol=0, rtol=0, msg=name)
    saved = json.loads((tmp_path / "full" / "checkpoint-5" / "trainer_state.json").read_text())
    assert saved["stateful_callbacks"]["ShardStreamCallback"]["attributes"]["stream"]["batches"] == 5
    assert not full.args.ignore_data_skip  # the trainer's own fast-forward is restored after training


# ------------------------------------------------------------------------------- processes and "nodes"


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def torchrun(*options: str, out: Path, shards: list[str]) -> subprocess.Popen:
    out.mkdir(parents=True, exist_ok=True)
    env = {**os.environ, "OMP_NUM_THREADS": "1", "TOKENIZERS_PARALLELISM": "false"}
    command = [
        sys.executable,
        "-m",
        "torch.distributed.run",
        *options,
        str(SCRIPT),
        "--out",
        str(out),
        "--shards",
        *shards,
    ]
    return subprocess.Popen(command, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, env=env)


def finish(*launches: subprocess.Popen) -> None:
    outputs = [p.communicate(timeout=600)[0] for p in launches]
    for process, output in zip(launches, outputs):
        assert process.returncode == 0, output[-4000:]


@pytest.mark.slow
def test_two_processes_and_two_nodes_read_each_row_once_and_train_alike(shards, tmp_path):
    port = free_port()
    one_node = torchrun("--standalone", "--nproc_per_node", "2", out=tmp_path / "one_node", shards=shards)
    nodes = [
        torchrun(
            "--nnodes",
            "2",
            "--nproc_per_node",
            "1",
            "--rdzv_backend",
            "c10d",
            "--rdzv_endpoint",
            f"127.0.0.1:{port}",
            "--rdzv_id",
            "clip-trl-test",
            "--local_addr",
            "127.0.0.1",
            out=tmp_path / "two_nodes",
            shards=shards,
        )
        for _ in range(2)
    ]
    finish(one_node, *nodes)
    for run in ("one_node", "two_nodes"):
        records = [json.loads((tmp_path / run / f"seen-{r}.json").read_text()) for r in range(2)]
        assert [r["world_size"] for r in records] == [2, 2]
        seen = records[0]["seen"] + records[1]["seen"]
        assert sorted(seen) == [f"{i:09d}" for i in range(ROWS)], run  # every row exactly once, over both
        # Each process read its own 4 shards (whole shards: rows 5k..5k+4 stay together).
        for record in records:
            assert len({int(key) // 5 for key in record["seen"]}) == 4
    one = torch.load(tmp_path / "one_node" / "weights.pt")
    two = torch.load(tmp_path / "two_nodes" / "weights.pt")
    initial = build_clip("tiny", seed=0)[0].state_dict()
    assert any(not torch.equal(initial[k], v) for k, v in one.items())
    for name, weight in one.items():
        torch.testing.assert_close(two[name], weight, atol=1e-6, rtol=0, msg=name)


# ------------------------------------------------------------------------------------------ cluster examples

EXAMPLES = Path(__file__).resolve().parents[2] / "examples"


def test_multi_node_accelerate_config_loads():
    from accelerate.commands.config.config_args import ClusterConfig

    config = ClusterConfig.from_yaml_file(EXAMPLES / "accelerate_configs" / "multi_node.yaml")
    assert (config.num_machines, config.num_processes, config.rdzv_backend) == (2, 16, "c10d")
    assert config.distributed_type.value == "MULTI_GPU" and config.main_process_port == 29500


def test_slurm_example_is_valid_bash_including_the_per_task_command():
    script = EXAMPLES / "slurm" / "train.sbatch"
    assert subprocess.run(["bash", "-n", str(script)], capture_output=True).returncode == 0
    text = script.read_text()
    inner = text.split("bash -c '", 1)[1].split("\n'", 1)[0]  # what each SLURM task runs
    checked = subprocess.run(["bash", "-n", "-c", inner], capture_output=True, text=True)
    assert checked.returncode == 0, checked.stderr
    assert "examples/accelerate_configs/multi_node.yaml" in inner and "--train_shards" in inner


def test_scripts_train_on_shards_and_require_max_steps(shards):
    from clip_trl.scripts.arguments import ScriptArguments
    from clip_trl.scripts.data import train_dataset

    folder = os.path.dirname(shards[0])
    script_args = ScriptArguments(
        train_shards=f"{folder}/shard-0000[0-3].tar, {folder}/shard-{{00004..00007}}.tar", shuffle_buffer=7
    )
    stream = train_dataset(script_args, ClipContrastiveConfig(output_dir="unused", max_steps=10, seed=3), {})
    assert isinstance(stream, ShardStream) and stream.files == shards
    assert (stream.shuffle_buffer, stream.seed) == (7, 3)
    with pytest.raises(ValueError, match="`--train_shards` streams the data .*: set `--max_steps`"):
        train_dataset(script_args, ClipContrastiveConfig(output_dir="unused"), {})
    assert (
        train_dataset(ScriptArguments(), ClipContrastiveConfig(output_dir="unused"), {"train": "rows"})
        == "rows"
    )


@pytest.mark.parametrize("workers", [0, 1])
def test_a_bad_row_in_a_shard_is_named_by_shard_file_and_key(tmp_path, workers):
    # The row index counts rows of one reader's stream; the shard file and sample key say where to look.
    rows = colour_dataset([f"colour number {i}" for i in range(8)])
    paths = write_shards(rows, str(tmp_path / "shards"), num_shards=2)
    with tarfile.open(paths[1]) as tar:  # shard 1 holds keys 4-7: empty key 6's image
        members = [(member, tar.extractfile(member).read()) for member in tar.getmembers()]
    with tarfile.open(paths[1], "w") as tar:
        for member, data in members:
            data = b"" if member.name == "000000006.png" else data
            member.size = len(data)
            tar.addfile(member, io.BytesIO(data))
    model, processor = build_clip("tiny", seed=0)
    args = ClipContrastiveConfig(
        output_dir=str(tmp_path / "out"),
        report_to="none",
        max_steps=4,
        seed=0,
        per_device_train_batch_size=4,
        dataloader_num_workers=workers,
        use_cpu=True,
        disable_tqdm=True,
        save_strategy="no",
    )
    trainer = ClipContrastiveTrainer(
        model=model, args=args, processing_class=processor, train_dataset=ShardStream(paths, shuffle_buffer=0)
    )
    with pytest.raises(
        ValueError, match=r"Row 6 \(shard 'shard-00001\.tar', key '000000006'\), column 'image': "
    ):
        trainer.train()
