"""Multi-process runs on CPU (gloo), launched the way users launch them: `torch.distributed.run`."""

import importlib.util
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch

SCRIPT = Path(__file__).resolve().parents[1] / "launch_scripts" / "one_step.py"


def run_script(script: Path, *arguments: str, processes: int = 2) -> subprocess.CompletedProcess:
    """Run a test script under `torch.distributed.run` (plainly for one process); fail with its output's tail."""
    command = [sys.executable]
    if processes > 1:
        command += ["-m", "torch.distributed.run", "--standalone", "--nproc_per_node", str(processes)]
    env = {**os.environ, "OMP_NUM_THREADS": "1", "TOKENIZERS_PARALLELISM": "false"}
    result = subprocess.run(
        [*command, str(script), *arguments], capture_output=True, text=True, env=env, timeout=600
    )
    assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-3000:]
    return result


def launch(
    tmp_path: Path, name: str, processes: int, per_device_batch: int, trainer: str = "contrastive"
) -> dict:
    out = tmp_path / f"{name}.pt"
    run_script(
        SCRIPT,
        "--trainer",
        trainer,
        "--per_device_batch",
        str(per_device_batch),
        "--out",
        str(out),
        "--output_dir",
        str(tmp_path / name),
        processes=processes,
    )
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


# ------------------------------------------------------------------------------------------------ RL
# `launch_scripts/rl_runs.py` runs the RL configurations; each rank saves what it saw (log history, its own metrics
# before the cross-rank reduction, what the rewards received, the sampling seeds, the final weights).

RL_RUNS = Path(__file__).resolve().parents[1] / "launch_scripts" / "rl_runs.py"


def _rl_runs_module():
    spec = importlib.util.spec_from_file_location("rl_runs", RL_RUNS)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def launch_rl(out: Path, *arguments: str, processes: int = 2) -> list[dict]:
    """Run `rl_runs.py` under `torch.distributed.run` with 4 rows per rank; returns each rank's record."""
    run_script(
        RL_RUNS,
        *arguments,
        "--per_device_batch",
        "4",
        "--out",
        str(out),
        "--output_dir",
        str(out / "output"),
        processes=processes,
    )
    records = [torch.load(out / f"rank{rank}.pt") for rank in range(processes)]
    assert all(record["world_size"] == processes for record in records)
    return records


def train_logs(record: dict) -> list[dict]:
    return [entry for entry in record["log_history"] if "loss" in entry]


@pytest.fixture(scope="module")
def rl_one_process(tmp_path_factory) -> dict:
    """The 1-process reference, in this process: 8 rows per step, global candidates on and off."""
    return _rl_runs_module().run_gather(str(tmp_path_factory.mktemp("rl-one")), 8, (True, False))


@pytest.fixture(scope="module")
def rl_launch(tmp_path_factory) -> tuple[Path, list[dict]]:
    """One 2-process launch (starting processes costs more than these runs): the gather runs and an
    uninterrupted resume-test run with its checkpoints."""
    out = tmp_path_factory.mktemp("rl-two")
    return out, launch_rl(out, "gather", "resume")


@pytest.fixture(scope="module")
def rl_two_processes(rl_launch) -> list[dict]:
    """The gather runs' rows on 2 processes × 4 rows, global candidates on and off."""
    return [record["gather"] for record in rl_launch[1]]


def test_gather_candidates_needs_in_batch_candidates(tmp_path):
    from clip_trl import ClipRLConfig

    with pytest.raises(ValueError, match="gather_candidates"):
        ClipRLConfig(output_dir=str(tmp_path), gather_candidates=True, candidate_labels=["cat", "dog"])
    assert ClipRLConfig(output_dir=str(tmp_path)).gather_candidates is False  # off by default


def test_gather_candidates_changes_nothing_with_one_process(rl_one_process):
    for name, _ in _rl_runs_module().GATHER_VARIANTS:
        on, off = rl_one_process[f"{name}/gather=True"], rl_one_process[f"{name}/gather=False"]
        assert on["reward_calls"] == off["reward_calls"], name
        assert [e["loss"] for e in train_logs(on)] == pytest.approx(
            [e["loss"] for e in train_logs(off)], abs=1e-7
        )
        for key, weight in off["weights"].items():
            torch.testing.assert_close(on["weights"][key], weight, atol=1e-7, rtol=0, msg=f"{name}: {key}")


@pytest.mark.slow
def test_rl_global_candidates_two_processes_equal_one_process_on_the_global_batch(
    rl_one_process, rl_two_processes
):
    # Exact policy gradient (no sampling), 2 steps, lr 0.5: with `gather_candidates=True`, 2 ranks × 4 rows
    # must train like 1 rank × 8 rows — image→text with and without the KL term, and text→image.
    for name, _ in _rl_runs_module().GATHER_VARIANTS:
        one = rl_one_process[f"{name}/gather=True"]
        ranks = [record[f"{name}/gather=True"] for record in rl_two_processes]
        for step, (single, logged) in enumerate(zip(train_logs(one), train_logs(ranks[0]), strict=True)):
            for metric in ("loss", "reward", "accuracy", "entropy", "kl", "rewards/correctness/mean"):
                assert logged[metric] == pytest.approx(single[metric], abs=1e-5), (name, step, metric)
        for key, weight in one["weights"].items():
            torch.testing.assert_close(
                ranks[0]["weights"][key], weight, atol=1e-5, rtol=0, msg=f"{name}: {key}"
            )
        # The rewards saw the global candidate list, and rank r's queries with their ground-truth positions
        # (and completions) are the 1-process run's, in order: rank 0's rows, then rank 1's.
        for step, call in enumerate(one["reward_calls"]):
            calls = [rank["reward_calls"][step] for rank in ranks]
            assert all(c["candidates"] == call["candidates"] for c in calls), (name, step)
            for field in ("chosen", "completions", "ground_truth", "images"):
                assert calls[0][field] + calls[1][field] == call[field], (name, step, field)
        # The data has duplicates across ranks (see DUPLICATED_ROWS), so the global set is smaller than the
        # sum of the ranks' own sets: the de-duplication was exercised.
        local = [
            record[f"{name}/gather=False"]["reward_calls"][0]["candidates"] for record in rl_two_processes
        ]
        assert len(one["reward_calls"][0]["candidates"]) < len(local[0]) + len(local[1]), name
        # Without the option each rank only sees its own batch, and the runs differ: the test can fail.
        off = rl_two_processes[0][f"{name}/gather=False"]
        assert max((off["weights"][k] - w).abs().max().item() for k, w in one["weights"].items()) > 1e-3, name


def assert_logged_metrics_are_rank_means(ranks: list[dict]) -> None:
    logged = train_logs(ranks[0])
    assert len(logged) == len(ranks[0]["local_metrics"]) == len(ranks[1]["local_metrics"])
    differs = False
    for entry, *local in zip(logged, *(rank["local_metrics"] for rank in ranks)):
        assert set(local[0]) == set(local[1])
        for metric in local[0]:
            mean = sum(values[metric] for values in local) / len(local)
            assert entry[metric] == pytest.approx(mean, abs=2e-6), (entry["step"], metric)
            differs |= abs(local[0][metric] - local[1][metric]) > 1e-3
    assert differs  # some metric differs between ranks, so the mean is not just rank 0's value


@pytest.mark.slow
def test_rl_logged_metrics_are_means_over_processes(rl_two_processes):
    for name, _ in _rl_runs_module().GATHER_VARIANTS:
        for gather in (True, False):
            assert_logged_metrics_are_rank_means(
                [record[f"{name}/gather={gather}"] for record in rl_two_processes]
            )


@pytest.mark.slow
def test_rl_resume_under_two_processes_matches_an_uninterrupted_run(rl_launch, tmp_path):
    # GRPO (sampled actions), gradient accumulation 2, beta > 0, a checkpoint every 2 of 4 steps; then a fresh
    # 2-process launch resumes from checkpoint-2.
    out, records = rl_launch
    full = [record["resume"] for record in records]
    checkpoint = out / "output" / "resume" / "checkpoint-2"
    assert (checkpoint / "rng_state_0.pth").is_file() and (checkpoint / "rng_state_1.pth").is_file()
    resumed = [record["resume"] for record in launch_rl(tmp_path, "resume", "--resume_from", str(checkpoint))]
    assert [e["step"] for e in train_logs(resumed[0])] == [1, 2, 3, 4]
    assert [e["loss"] for e in train_logs(resumed[0])] == pytest.approx(
        [e["loss"] for e in train_logs(full[0])], abs=1e-6
    )
    for key, weight in full[0]["weights"].items():
        torch.testing.assert_close(resumed[0]["weights"][key], weight, atol=1e-6, rtol=0, msg=key)
    for rank in range(2):
        # Sampling seeds are per (step, micro-step, rank): the resumed run draws exactly what the uninterrupted
        # one drew from step 3 on, on each rank ...
        seeds = full[rank]["sampling_seeds"]
        assert [(step, micro) for step, micro, _ in seeds] == [(s, m) for s in range(4) for m in range(2)]
        assert resumed[rank]["sampling_seeds"] == seeds[4:]
        assert [c["chosen"] for c in resumed[rank]["reward_calls"]] == [
            c["chosen"] for c in full[rank]["reward_calls"][4:]
        ]
    # ... and the ranks draw from different streams.
    assert not {seed for *_, seed in full[0]["sampling_seeds"]} & {
        seed for *_, seed in full[1]["sampling_seeds"]
    }
    assert_logged_metrics_are_rank_means(full)


@pytest.mark.slow
def test_rl_rollout_table_holds_the_first_queries_of_every_process_in_rank_order(rl_launch):
    import collections

    import pandas as pd

    out, records = rl_launch
    frame = pd.read_parquet(out / "output" / "resume" / "rollouts" / "rollouts_00004.parquet")
    expected = []
    for record in records:  # rank order; each rank keeps its step's last micro-batch (4 queries × 4 samples)
        last = record["resume"]["reward_calls"][-1]
        assert last["step"] == 3
        for b in range(4):
            expected.append(
                (last["ground_truth"][4 * b], collections.Counter(last["completions"][4 * b : 4 * b + 4]))
            )
    tabled = [
        (query["ground_truth"].iloc[0], collections.Counter(dict(zip(query["choice"], query["count"]))))
        for _, query in frame.groupby("query_index")
    ]
    assert tabled == expected[:6]


def test_metrics_recorded_on_some_ranks_only_are_averaged_over_those(tmp_path):
    # Rank 0 records `a` (mean 2) and `b` (2); rank 1 records `b` (4) and `c` (10). A reduction over a fixed,
    # per-rank list of names would hang or pair rank 0's `b` with rank 1's `c`.
    out = tmp_path / "logged.json"
    run_script(Path(__file__).resolve().parents[1] / "launch_scripts" / "log_metrics.py", "--out", str(out))
    import json

    logged = json.loads(out.read_text())
    assert (logged["a"], logged["b"], logged["c"]) == (2.0, 3.0, 10.0)


# ------------------------------------------------------------------------------------ contrastive extras
# `launch_scripts/contrastive_runs.py`: hard negatives of different counts per rank with a caption shared across
# ranks (clip and siglip), and a sharded `evaluate()`, all in one 2-process launch.

CONTRASTIVE_RUNS = Path(__file__).resolve().parents[1] / "launch_scripts" / "contrastive_runs.py"


def _contrastive_runs_module():
    spec = importlib.util.spec_from_file_location("contrastive_runs", CONTRASTIVE_RUNS)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


@pytest.mark.slow
def test_hard_negatives_and_evaluation_two_processes_equal_one_process(tmp_path):
    one = _contrastive_runs_module().run_all(str(tmp_path / "one"), per_device_batch=8)
    out = tmp_path / "two.pt"
    result = run_script(CONTRASTIVE_RUNS, "--out", str(out), "--output_dir", str(tmp_path / "two"))
    # Launch feedback: DDP is told the truth about unused parameters (no warning), and the deprecated
    # `torch.distributed.nn.functional` collectives are not used.
    assert "find_unused_parameters=True" not in result.stderr
    assert "torch.distributed.nn.functional" not in result.stderr
    two = torch.load(out)
    for loss_type in ("clip", "siglip"):
        assert (one[loss_type]["world_size"], two[loss_type]["world_size"]) == (1, 2)
        assert two[loss_type]["loss"] == pytest.approx(one[loss_type]["loss"], abs=1e-5), loss_type
        for name, weight in one[loss_type]["weights"].items():
            torch.testing.assert_close(
                two[loss_type]["weights"][name], weight, atol=1e-5, rtol=0, msg=f"{loss_type}: {name}"
            )
    assert one["eval"]["eval_samples"] == two["eval"]["eval_samples"] == 9
    assert (one["eval_rows_embedded"], two["eval_rows_embedded"]) == (
        [9],
        [4],
    )  # rank 0 embedded its block only
    assert sorted(two["eval"]) == sorted(one["eval"])
    for name, value in one["eval"].items():
        assert two["eval"][name] == pytest.approx(value, abs=1e-5), name


def test_sharded_evaluation_blocks_and_bad_rows_name_their_index_in_the_whole_set(monkeypatch):
    # Rank 1 of 2 embeds rows 2-4 of 5; a bad image in its block is reported as row 3 of the eval set, with the
    # evaluation hint (evaluation does not take `skip_bad_rows`).
    from clip_test_utils import colour_dataset, png_bytes

    from clip_trl.offline import build_clip
    from clip_trl.trainer import sharded_eval

    good = {"bytes": png_bytes((1, 2, 3)), "path": None}
    data = colour_dataset(list("abcde"), [good, good, good, {"bytes": b"junk", "path": None}, good])
    monkeypatch.setattr(sharded_eval, "_world", lambda: (1, 2))
    block, first_row = sharded_eval.shard(data)
    assert (list(block["caption"]), first_row) == (["c", "d", "e"], 2)
    assert sharded_eval.shard(data.select(range(1)))[1] is None  # fewer rows than ranks: not sharded
    model, processor = build_clip("tiny", seed=0)
    with pytest.raises(ValueError) as info:
        sharded_eval.compute_embeddings(model, processor, data)
    message = str(info.value)
    assert message.startswith("Row 3, column 'image': cannot decode the image")
    assert "Evaluation does not skip bad rows" in message and "skip_bad_rows=True" not in message


# ------------------------------------------------------------------------------------------ FLAVA under DDP
# FLAVA's towers are called directly (its `forward` also runs the multimodal encoder), so DDP's forward never
# runs and DDP reduces nothing: the trainers average those gradients themselves. Before they did, each rank
# stepped on its own gradient and the ranks' weights drifted apart.

FLAVA_RUNS = Path(__file__).resolve().parents[1] / "launch_scripts" / "flava_runs.py"


@pytest.mark.slow
def test_flava_two_processes_equal_one_process(tmp_path):
    spec = importlib.util.spec_from_file_location("flava_runs", FLAVA_RUNS)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    one = module.run_all(str(tmp_path / "one"), per_device_batch=8)
    out = tmp_path / "two"
    run_script(FLAVA_RUNS, "--out", str(out), "--output_dir", str(tmp_path / "two-output"))
    ranks = [torch.load(out / f"rank{rank}.pt") for rank in range(2)]
    for method in ("contrastive", "rl"):
        # The clipped norm is the global gradient's (reduced before clipping), as with one process.
        assert ranks[0][method]["grad_norms"] == pytest.approx(one[method]["grad_norms"], rel=1e-4), method
        for key, weight in one[method]["weights"].items():
            torch.testing.assert_close(
                ranks[0][method]["weights"][key],
                ranks[1][method]["weights"][key],
                atol=0,
                rtol=0,
                msg=f"{method}: the ranks disagree on {key}",
            )
            torch.testing.assert_close(
                ranks[0][method]["weights"][key],
                weight,
                atol=1e-5,
                rtol=1e-4,
                msg=f"{method}: 2 processes differ from 1 on {key}",
            )
