"""`skip_bad_rows=True` is for a few bad rows (issue #28): a run whose data is all (or mostly) bad stops with the
first bad rows' errors instead of "succeeding" with a zero loss, and a skipped row's log line does not suggest the
option that is already on."""

from __future__ import annotations

import copy
import logging
import re

import pytest
from clip_test_utils import colour_dataset, png_bytes

from clip_trl import ClipContrastiveConfig, ClipContrastiveTrainer, ClipRLConfig, ClipRLTrainer
from clip_trl.data import collator as collator_module
from clip_trl.data.collator import ROW_INDEX_KEY, ClipDataCollator
from clip_trl.data.rows import BadRowError

BROKEN = {"bytes": b"broken", "path": None}


def good(i: int) -> dict:
    return {"bytes": png_bytes((40 * i % 256, 90, 200)), "path": None}


def all_bad(n: int = 8):
    return colour_dataset([f"caption {i}" for i in range(n)], [BROKEN] * n)


def train(trainer_class, config_class, tmp_path, model_processor, data, trainer_kwargs=None, **config):
    model, processor = model_processor
    args = config_class(
        output_dir=str(tmp_path),
        max_steps=2,
        per_device_train_batch_size=4,
        logging_steps=1,
        report_to="none",
        save_strategy="no",
        use_cpu=True,
        disable_tqdm=True,
        skip_bad_rows=True,
        **config,
    )
    trainer = trainer_class(
        model=model, args=args, train_dataset=data, processing_class=processor, **(trainer_kwargs or {})
    )
    trainer.train()
    return trainer


def first_rows_error(rows: list[int]) -> str:
    bad = "\n".join(
        rf"  Row {i}, column 'image': cannot decode the image \(UnidentifiedImageError: [^\n]*\)\."
        for i in rows
    )
    return (
        rf"`skip_bad_rows=True` skipped every row of a batch of 4 row\(s\) \(from row {rows[0]}\) \(4 of the 4 rows read so "
        r"far were bad\), so training stops instead of going on with nothing to learn from\. The first bad rows:\n"
        + bad
        + r"\nFix the data, or remove the bad rows \(e\.g\. with `dataset\.filter`\)"
    )


@pytest.mark.parametrize("method", ["contrastive", "rl"])
def test_a_batch_of_bad_rows_only_stops_training(tmp_path, _tiny_once, method):
    trainer_class, config_class = {
        "contrastive": (ClipContrastiveTrainer, ClipContrastiveConfig),
        "rl": (ClipRLTrainer, ClipRLConfig),
    }[method]
    extra = {"num_samples": 2} if method == "rl" else {}
    rewards = {"reward_funcs": ["correctness"]} if method == "rl" else {}
    with pytest.raises(BadRowError) as info:
        train(trainer_class, config_class, tmp_path, copy.deepcopy(_tiny_once), all_bad(), rewards, **extra)
    message = str(info.value)
    # The first batch's 4 rows (the sampler shuffles the 8), each listed with its reason.
    rows = [int(r) for r in re.findall(r"\n  Row (\d+), column", message)]
    assert len(set(rows)) == 4 and set(rows) <= set(range(8)), message
    assert re.match(first_rows_error(rows), message), message
    assert "pass `skip_bad_rows=True`" not in message


def test_a_few_bad_rows_still_train_and_the_log_does_not_suggest_the_option(tmp_path, _tiny_once, caplog):
    data = colour_dataset(["a", "b", "c", "d"], [good(0), BROKEN, good(2), good(3)])
    with caplog.at_level(logging.WARNING, logger="clip_trl"):
        trainer = train(
            ClipContrastiveTrainer, ClipContrastiveConfig, tmp_path, copy.deepcopy(_tiny_once), data
        )
    assert [e["skipped_rows"] for e in trainer.state.log_history if "skipped_rows" in e] == [1, 2]
    skips = [r.getMessage() for r in caplog.records if r.getMessage().startswith("Skipping a bad row")]
    assert len(skips) == 2
    assert all(
        re.fullmatch(r"Skipping a bad row: Row 1, column 'image': cannot decode the image \(.*\)\.", s)
        for s in skips
    ), skips


def rows_of(bad: list[bool], start: int = 0) -> list[dict]:
    return [
        {"image": BROKEN if is_bad else good(i), "caption": f"caption {i}", ROW_INDEX_KEY: start + i}
        for i, is_bad in enumerate(bad)
    ]


def test_more_than_the_stated_share_of_bad_rows_stops(_tiny_once):
    collator = ClipDataCollator(_tiny_once[1], skip_bad_rows=True)
    share, minimum = collator_module.MAX_SKIPPED_SHARE, collator_module.SKIPPED_SHARE_MIN_ROWS
    assert (share, minimum) == (0.5, 64)
    # Batches of 8 with 5 bad rows (62.5%): each keeps rows, but at row 64 the share is over the limit.
    for batch in range(minimum // 8 - 1):
        assert collator(rows_of([True] * 5 + [False] * 3, start=8 * batch))["num_skipped_rows"] == 5
    with pytest.raises(
        BadRowError, match=r"skipped more than 50% of the rows \(40 of the 64 rows read so far"
    ):
        collator(rows_of([True] * 5 + [False] * 3, start=56))
    # Half the rows bad is within the limit.
    collator = ClipDataCollator(_tiny_once[1], skip_bad_rows=True)
    for batch in range(minimum // 8 + 2):
        assert collator(rows_of([True, False] * 4, start=8 * batch))["num_skipped_rows"] == 4
