"""`clip_trl.cli.errors`: under several processes an error is printed once (rank 0) and the other ranks print one
line when theirs is the same, their own message when it differs. The ranks are simulated by threads sharing one
in-memory store; `tests/trainer/test_launch.py` runs the real thing under torchrun."""

from __future__ import annotations

import threading

import pytest
import torch.distributed as dist

from clip_trl.cli import errors

RANK = threading.local()


@pytest.fixture()
def two_ranks(monkeypatch):
    store = dist.HashStore()
    monkeypatch.setattr(errors, "AGREE_TIMEOUT_S", 2.0)
    monkeypatch.setattr(errors, "_world", lambda: (RANK.value, 2))
    monkeypatch.setattr(errors, "_store", lambda: store)

    def run(error_0: BaseException | None, error_1: BaseException) -> None:
        def rank(value: int, error: BaseException) -> None:
            RANK.value = value
            errors.report_error(error, "clip-trl rl")

        other = threading.Thread(target=rank, args=(1, error_1))
        other.start()
        if error_0 is not None:
            rank(0, error_0)
        other.join()

    return run


def test_the_same_error_on_two_ranks_is_printed_once(two_ranks, capsys):
    two_ranks(ValueError("no column 'img'"), ValueError("no column 'img'"))
    assert capsys.readouterr().err.splitlines() == [
        "clip-trl rl: error: no column 'img'",
        errors.DEBUG_HINT,
        "rank 1: the same error as rank 0 (ValueError), see above",
    ]


def test_a_different_error_on_another_rank_is_printed_in_full(two_ranks, capsys):
    two_ranks(ValueError("Row 3: bad"), ValueError("Row 7: bad"))
    err = capsys.readouterr().err
    assert "clip-trl rl: error: Row 3: bad" in err
    assert "rank 1: clip-trl rl: error: Row 7: bad" in err
    assert "same error" not in err


def test_an_error_on_another_rank_only_is_printed_in_full(two_ranks, capsys):
    # Rank 0 is busy (e.g. waiting in a collective for the failed rank): rank 1 waits a moment, then reports.
    two_ranks(None, KeyError("score"))
    assert capsys.readouterr().err.splitlines() == ["rank 1: clip-trl rl: error: 'score'", errors.DEBUG_HINT]


def test_one_process_passes_errors_through(monkeypatch):
    monkeypatch.setenv("WORLD_SIZE", "1")
    with pytest.raises(ValueError, match="bad"), errors.reported_errors():
        raise ValueError("bad")


def test_several_processes_exit_with_status_1(monkeypatch, capsys):
    monkeypatch.setenv("WORLD_SIZE", "2")
    monkeypatch.setenv("RANK", "0")
    monkeypatch.delenv("CLIP_TRL_DEBUG", raising=False)
    monkeypatch.setattr(errors, "_store", lambda: None)
    with pytest.raises(SystemExit) as info, errors.reported_errors("rl.py"):
        raise ValueError("bad value")
    assert info.value.code == 1
    assert capsys.readouterr().err.startswith("rl.py: error: bad value\n")
