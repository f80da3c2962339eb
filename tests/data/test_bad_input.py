"""The bad-input matrix of issue #8, as one table: every case either raises an error that says what is wrong,
where (row, column, reward, field) and what to do, or is handled in a documented way that is logged.
Nothing is dropped or repaired silently. docs/reliability.md lists the same cases.

Each case calls the narrowest real code path (the collator, a config, the reward check, trainer construction) so
the whole table runs in seconds; the trainers call exactly these paths (see test_contrastive_trainer.py and
test_rl_trainer.py for the same errors raised from `trainer.train()`).
"""

from __future__ import annotations

import contextlib
import io
import logging
import re
import tempfile
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from typing import Any

import datasets
import numpy as np
import pytest
import torch
from clip_test_utils import colour_dataset, png_bytes
from PIL import Image

from clip_trl import ClipContrastiveConfig, ClipContrastiveTrainer, ClipRLConfig, evaluation
from clip_trl.data.collator import ROW_INDEX_KEY, ClipDataCollator, check_columns
from clip_trl.data.rows import EVAL_HINT, SKIP_HINT, BadRowError
from clip_trl.offline import build_clip
from clip_trl.rewards import call_reward
from clip_trl.trainer.rl_data import ClipRLDataCollator

# ------------------------------------------------------------------------------------------- set-up


@pytest.fixture(scope="module")
def clip() -> tuple[Any, Any]:
    return build_clip("tiny", seed=0)


def good_image(i: int = 0) -> dict[str, Any]:
    return {"bytes": png_bytes(((40 * i) % 256, 90, 200)), "path": None}


def rows(bad: dict[str, Any], n: int = 3, at: int = 1, **columns: list[Any]) -> list[dict[str, Any]]:
    """`n` good rows (index stamped as the trainer does), row `at` updated with `bad`; extra columns per row."""
    out = []
    for i in range(n):
        row = {"image": good_image(i), "caption": f"caption {i}", ROW_INDEX_KEY: i}
        row.update({name: values[i] for name, values in columns.items()})
        out.append(row)
    out[at] = {**out[at], **bad}
    return out


def encoded(image: Image.Image, fmt: str = "PNG", **save: Any) -> dict[str, Any]:
    buffer = io.BytesIO()
    image.save(buffer, format=fmt, **save)
    return {"bytes": buffer.getvalue(), "path": None}


def palette_image(transparent: bool) -> dict[str, Any]:
    image = Image.new("P", (8, 8), 0)
    image.putpalette([255, 0, 0] * 256)
    return encoded(image, transparency=0) if transparent else encoded(image)


def grey16(value: int) -> dict[str, Any]:
    image = Image.fromarray(np.full((8, 8), value, dtype=np.uint16))
    assert image.mode == "I;16"
    return encoded(image)


def collate(clip: Any, batch: list[dict[str, Any]], collator: type = ClipDataCollator, **kwargs: Any) -> dict:
    if collator is ClipDataCollator:
        kwargs["keep_rows"] = (
            True  # the decoded images come back in batch["rows"] (RL collators always do this)
        )
    return collator(clip[1], **kwargs)(batch)


def without(batch: list[dict[str, Any]], row: int, column: str) -> list[dict[str, Any]]:
    """A streamed row can lack a column that the features (when known) would have caught at construction."""
    batch[row] = {k: v for k, v in batch[row].items() if k != column}
    return batch


def reward(values: Any, name: str = "my_reward") -> Callable[..., Any]:
    def func(completions: list[str], **kwargs: Any) -> Any:
        if isinstance(values, Exception):
            for completion in completions:  # fails while handling "b": the error names it
                if completion == "b":
                    raise values
            return [0.0] * len(completions)
        return values

    func.__name__ = name
    return func


def batch_failure(completions: list[str], **kwargs: Any) -> list:
    raise KeyError("score")


def score(func: Callable[..., Any]) -> list:
    completions = ["a", "b", "c", "d"]
    return call_reward(func, func.__name__, completions, {"ground_truth": completions, "trainer_state": None})


def rl_args(**overrides: Any) -> ClipRLConfig:
    return ClipRLConfig(output_dir=tempfile.mkdtemp(), report_to="none", use_cpu=True, **overrides)


def empty_stream() -> datasets.IterableDataset:
    def nothing() -> Iterator[dict[str, Any]]:
        yield from ()

    features = datasets.Features({"image": datasets.Image(), "caption": datasets.Value("string")})
    return datasets.IterableDataset.from_generator(nothing, features=features)


def train_contrastive(clip: Any, dataset: Any) -> ClipContrastiveTrainer:
    args = ClipContrastiveConfig(
        output_dir=tempfile.mkdtemp(),
        max_steps=2,
        per_device_train_batch_size=4,
        report_to="none",
        save_strategy="no",
        use_cpu=True,
        disable_tqdm=True,
    )
    trainer = ClipContrastiveTrainer(
        model=clip[0], args=args, train_dataset=dataset, processing_class=clip[1]
    )
    trainer.train()
    return trainer


def rgb_pixel(batch: dict[str, Any], row: int = 1) -> tuple[int, ...]:
    image = batch["rows"][row]["image"]
    assert image.mode == "RGB" and batch["pixel_values"].shape[0] == len(batch["rows"])
    return image.getpixel((0, 0))


# --------------------------------------------------------------------------------------- expectations


@dataclass
class Raises:
    """The exact error type, and the whole message (a regex: `exact()` for literal parts)."""

    error: type[BaseException]
    message: str


@dataclass
class Handled:
    """No error: `check(result)` holds and, when `logged` is set, that text was logged as a warning."""

    check: Callable[[Any], bool]
    logged: str | None = None
    logger: str = "clip_trl"
    extra: dict[str, Any] = field(default_factory=dict)


def exact(text: str) -> str:
    return re.escape(text)


def row_error(where: str, problem: str, hint: str = SKIP_HINT) -> str:
    return exact(f"{where}: ") + problem + exact(f". {hint}")


MISSING_PATH = "/nonexistent/clip_trl/cat.png"

CASES = [
    # ----- images
    pytest.param(
        lambda clip: collate(clip, rows({"image": {"bytes": b"not an image", "path": None}})),
        Raises(
            BadRowError,
            row_error(
                "Row 1, column 'image'",
                r"cannot decode the image \(UnidentifiedImageError: "
                r"cannot identify image file .*\)",
            ),
        ),
        id="corrupt-image-bytes",
    ),
    pytest.param(
        lambda clip: collate(clip, rows({"image": {"bytes": good_image()["bytes"][:60], "path": None}})),
        Raises(
            BadRowError,
            row_error(
                "Row 1, column 'image'",
                r"cannot decode the image \((OSError|SyntaxError|"
                r"ValueError): .*\)",
            ),
        ),
        id="truncated-image",
    ),
    pytest.param(
        lambda clip: collate(clip, rows({"image": MISSING_PATH})),
        Raises(
            BadRowError,
            row_error("Row 1, column 'image'", exact(f"image file '{MISSING_PATH}' does not exist")),
        ),
        id="path-does-not-exist",
    ),
    pytest.param(
        lambda clip: collate(clip, rows({"image": {"bytes": None, "path": MISSING_PATH}})),
        Raises(
            BadRowError,
            row_error("Row 1, column 'image'", exact(f"image file '{MISSING_PATH}' does not exist")),
        ),
        id="datasets-image-path-does-not-exist",
    ),
    pytest.param(
        lambda clip: collate(clip, rows({"image": None})),
        Raises(BadRowError, row_error("Row 1, column 'image'", exact("the image is missing (None)"))),
        id="image-none",
    ),
    # Every PIL mode works and becomes RGB; transparency is composited onto white, not black.
    pytest.param(
        lambda clip: rgb_pixel(
            collate(clip, rows({"image": encoded(Image.new("RGBA", (8, 8), (255, 0, 0, 0)))}))
        ),
        Handled(lambda pixel: pixel == (255, 255, 255)),
        id="rgba-transparent-is-white",
    ),
    pytest.param(
        lambda clip: rgb_pixel(
            collate(clip, rows({"image": encoded(Image.new("RGBA", (8, 8), (255, 0, 0, 255)))}))
        ),
        Handled(lambda pixel: pixel == (255, 0, 0)),
        id="rgba-opaque",
    ),
    pytest.param(
        lambda clip: rgb_pixel(collate(clip, rows({"image": encoded(Image.new("L", (8, 8), 77))}))),
        Handled(lambda pixel: pixel == (77, 77, 77)),
        id="greyscale-L",
    ),
    pytest.param(
        lambda clip: rgb_pixel(collate(clip, rows({"image": palette_image(transparent=False)}))),
        Handled(lambda pixel: pixel == (255, 0, 0)),
        id="palette-P",
    ),
    pytest.param(
        lambda clip: rgb_pixel(collate(clip, rows({"image": palette_image(transparent=True)}))),
        Handled(lambda pixel: pixel == (255, 255, 255)),
        id="palette-P-transparent-is-white",
    ),
    pytest.param(
        lambda clip: rgb_pixel(
            collate(
                clip,
                rows({"image": encoded(Image.new("CMYK", (8, 8), (0, 255, 255, 0)), "JPEG", quality=100)}),
            )
        ),
        Handled(lambda pixel: max(abs(a - b) for a, b in zip(pixel, (255, 0, 0))) <= 2),
        id="cmyk-jpeg",
    ),
    pytest.param(
        lambda clip: [rgb_pixel(collate(clip, rows({"image": grey16(v)}))) for v in (65535, 32768, 0)],
        Handled(lambda pixels: pixels == [(255, 255, 255), (127, 127, 127), (0, 0, 0)]),
        id="16-bit-greyscale-rescaled-not-clipped",
    ),
    # Pixels as arrays (issue #24): NumPy arrays, and the nested lists a `datasets` column of arrays returns.
    pytest.param(
        lambda clip: rgb_pixel(collate(clip, rows({"image": np.full((8, 6, 3), (10, 20, 30), np.uint8)}))),
        Handled(lambda pixel: pixel == (10, 20, 30)),
        id="numpy-hwc-uint8",
    ),
    pytest.param(
        lambda clip: rgb_pixel(
            collate(clip, rows({"image": np.full((8, 6, 3), (10, 20, 30), np.uint8).tolist()}))
        ),
        Handled(lambda pixel: pixel == (10, 20, 30)),
        id="nested-list-hwc-as-arrow-returns-it",
    ),
    pytest.param(
        lambda clip: rgb_pixel(
            collate(
                clip,
                rows({"image": np.full((3, 8, 6), 0.5, np.float32) * np.array([0, 1, 2])[:, None, None]}),
            )
        ),
        Handled(lambda pixel: pixel == (0, 128, 255)),
        id="numpy-chw-float-0-to-1",
    ),
    pytest.param(
        lambda clip: rgb_pixel(collate(clip, rows({"image": np.full((8, 6), 77, np.uint8)}))),
        Handled(lambda pixel: pixel == (77, 77, 77)),
        id="numpy-greyscale-2d",
    ),
    pytest.param(
        lambda clip: rgb_pixel(collate(clip, rows({"image": np.zeros((8, 6, 4), np.uint8)}))),
        Handled(lambda pixel: pixel == (255, 255, 255)),
        id="numpy-rgba-transparent-is-white",
    ),
    pytest.param(
        lambda clip: collate(clip, rows({"image": [0, 128, 255]})),
        Raises(
            BadRowError,
            row_error(
                "Row 1, column 'image'",
                exact(
                    "the image array has shape (3,): expected (height, width) for greyscale, or (height, width, "
                    "channels) / (channels, height, width) with 1, 3 or 4 channels"
                ),
            ),
        ),
        id="image-1d-list",
    ),
    pytest.param(
        lambda clip: collate(clip, rows({"image": np.zeros((8, 6, 5), np.uint8)})),
        Raises(
            BadRowError,
            row_error(
                "Row 1, column 'image'", exact("the image array has shape (8, 6, 5): expected ") + ".*"
            ),
        ),
        id="image-array-with-5-channels",
    ),
    pytest.param(
        lambda clip: collate(clip, rows({"image": np.full((8, 6, 3), 200.0)})),
        Raises(
            BadRowError,
            row_error(
                "Row 1, column 'image'",
                exact(
                    "float pixel values must be in [0, 1], got 200..200 (dtype float64); for values in 0..255 "
                    "cast the array to uint8"
                ),
            ),
        ),
        id="image-float-array-out-of-0-1",
    ),
    pytest.param(
        lambda clip: collate(clip, rows({"image": [[[0, 0, 0]] * 2, [[0, 0, 0]]]})),
        Raises(
            BadRowError,
            row_error(
                "Row 1, column 'image'",
                exact("the image is a ragged nested list (rows of different lengths)"),
            ),
        ),
        id="image-ragged-nested-list",
    ),
    pytest.param(
        lambda clip: collate(clip, rows({"image": [[0, 300], [4, 5]]})),
        Raises(
            BadRowError,
            row_error(
                "Row 1, column 'image'",
                exact("integer pixel values must be in 0..255, got 0..300 (dtype int64)"),
            ),
        ),
        id="image-integers-out-of-0-255",
    ),
    pytest.param(
        lambda clip: collate(clip, rows({"image": 3.5})),
        Raises(BadRowError, row_error("Row 1, column 'image'", exact("cannot read an image from a float"))),
        id="image-of-another-type",
    ),
    # ----- captions
    pytest.param(
        lambda clip: collate(clip, rows({"caption": None})),
        Raises(BadRowError, row_error("Row 1, column 'caption'", exact("the caption is missing (None)"))),
        id="caption-none",
    ),
    pytest.param(
        lambda clip: collate(clip, rows({"caption": ""})),
        Raises(BadRowError, row_error("Row 1, column 'caption'", exact("the caption is empty ('')"))),
        id="caption-empty",
    ),
    pytest.param(
        lambda clip: collate(clip, rows({"caption": " \t "})),
        Raises(BadRowError, row_error("Row 1, column 'caption'", exact("the caption is empty (' \\t ')"))),
        id="caption-whitespace-only",
    ),
    pytest.param(
        lambda clip: collate(clip, rows({"caption": 3})),
        Raises(
            BadRowError,
            row_error("Row 1, column 'caption'", exact("the caption must be a string, got int 3")),
        ),
        id="caption-not-a-string",
    ),
    pytest.param(
        lambda clip: collate(clip, rows({"caption": ["a cat", b"bytes"]})),
        Raises(
            BadRowError,
            row_error(
                "Row 1, column 'caption[1]'", exact("the caption must be a string, got bytes b'bytes'")
            ),
        ),
        id="caption-list-with-a-non-string",
    ),
    pytest.param(
        lambda clip: collate(clip, rows({"caption": []})),
        Raises(BadRowError, row_error("Row 1, column 'caption'", exact("the caption list is empty"))),
        id="caption-list-empty",
    ),
    # With skip_bad_rows=True (training only) the row is left out, logged and counted.
    pytest.param(
        lambda clip: collate(clip, rows({"caption": None}), skip_bad_rows=True),
        Handled(
            lambda batch: int(batch["num_skipped_rows"]) == 1 and batch["row_index"].tolist() == [0, 2],
            logged="Skipping a bad row: Row 1, column 'caption': the caption is missing (None).",
        ),
        id="skip-bad-rows-logs-and-counts",
    ),
    # Evaluation never skips: its errors say so instead of suggesting `skip_bad_rows=True`.
    pytest.param(
        lambda clip: evaluation.compute_embeddings(*clip, rows({"caption": None})),
        Raises(
            BadRowError,
            row_error("Row 1, column 'caption'", exact("the caption is missing (None)"), EVAL_HINT),
        ),
        id="evaluation-bad-caption",
    ),
    pytest.param(
        lambda clip: evaluation.compute_embeddings(*clip, rows({"image": {"bytes": b"junk", "path": None}})),
        Raises(BadRowError, row_error("Row 1, column 'image'", r"cannot decode the image \(.*\)", EVAL_HINT)),
        id="evaluation-corrupt-image",
    ),
    # ----- columns and data sets
    pytest.param(
        lambda clip: check_columns(
            colour_dataset(["a", "b"]), {"image_column": "image", "caption_column": "text"}, "train_dataset"
        ),
        Raises(
            ValueError,
            exact(
                "`train_dataset` has no column 'text' (set by `caption_column`). Columns present: "
                "['caption', 'image']. Set `caption_column` to one of them or rename the column."
            ),
        ),
        id="missing-column",
    ),
    pytest.param(
        lambda clip: collate(clip, without(rows({}), row=1, column="caption")),
        Raises(
            BadRowError,
            row_error("Row 1, column 'caption'", exact("the column is missing; the row has ['image']")),
        ),
        id="missing-column-in-a-streamed-row",
    ),
    pytest.param(
        lambda clip: ClipContrastiveTrainer(
            model=clip[0],
            processing_class=clip[1],
            train_dataset=colour_dataset(["a"]).select([]),
            args=ClipContrastiveConfig(output_dir=tempfile.mkdtemp()),
        ),
        Raises(
            ValueError,
            exact(
                "`train_dataset` is empty (0 rows): there is nothing to train on. Check the split you passed and any `filter`/`select` that produced it."
            ),
        ),
        id="empty-dataset",
    ),
    pytest.param(
        lambda clip: train_contrastive(clip, empty_stream()).state.global_step,
        Handled(
            lambda step: step == 0,
            logged="There seems not to be a single sample in your epoch_iterator, "
            "stopping training at step 0!",
            logger="transformers",
        ),
        id="empty-streaming-dataset",
    ),
    pytest.param(
        lambda clip: evaluation.compute_embeddings(*clip, []),
        Raises(ValueError, exact("The dataset is empty: there is nothing to evaluate.")),
        id="empty-eval-dataset",
    ),
    # ----- RL candidate sets
    pytest.param(
        lambda clip: collate(
            clip,
            rows({"options": ["b", "b"]}, options=[["a", "b"]] * 3),
            ClipRLDataCollator,
            candidates="column",
            candidate_column="options",
        ),
        Raises(
            BadRowError,
            row_error(
                "Row 1, column 'options'",
                exact("a candidate set needs at least 2 distinct captions, got ['b']"),
            ),
        ),
        id="candidate-column-set-of-size-1",
    ),
    pytest.param(
        lambda clip: rl_args(candidate_labels=["cat", "cat"]),
        Raises(
            ValueError,
            exact("`candidates='labels'` needs `candidate_labels` with at least 2 distinct labels."),
        ),
        id="candidate-labels-set-of-size-1",
    ),
    pytest.param(
        lambda clip: collate(clip, rows({}, caption=["same"] * 3), ClipRLDataCollator),
        Handled(
            lambda batch: batch["candidate_index"].shape[1] == 1,
            logged="A batch of 3 row(s) (from row 0) has a single distinct caption, so every in-batch "
            "candidate set of this step holds one choice and the policy gradient is zero",
        ),
        id="in-batch-set-of-size-1",
    ),
    pytest.param(
        lambda clip: collate(
            clip,
            rows({"options": ["x", "x", "y"]}, options=[["p", "q"]] * 3),
            ClipRLDataCollator,
            candidates="column",
            candidate_column="options",
        ),
        Handled(
            lambda batch: batch["candidates"][1] == ["x", "y"],
            logged="Row 1, column 'options': duplicate candidates are counted once (the policy chooses "
            "among distinct captions): 3 given, 2 kept: ['x', 'y'].",
        ),
        id="duplicate-candidates",
    ),
    pytest.param(
        lambda clip: collate(clip, rows({})[:1], ClipRLDataCollator),
        Handled(
            lambda batch: batch["candidate_index"].tolist() == [[0]],
            logged="A batch of 1 row(s) (from row 0) has a single distinct caption",
        ),
        id="batch-smaller-than-the-candidates-it-needs-at-run-time",
    ),
    pytest.param(
        lambda clip: rl_args(per_device_train_batch_size=1),
        Raises(
            ValueError,
            exact(
                "In-batch candidates need `per_device_train_batch_size` of at least 2 (the batch "
                "is the candidate set); raise it or use `candidate_column` / `candidate_labels`."
            ),
        ),
        id="batch-smaller-than-the-candidates-it-needs",
    ),
    pytest.param(
        lambda clip: rl_args(num_samples=1, advantage="grpo"),
        Raises(
            ValueError,
            exact(
                "`num_samples=1` gives advantage='grpo' no group to compare against; set "
                "`num_samples` to 2 or more, or use `advantage='exact'`."
            ),
        ),
        id="num-samples-below-2-with-grpo",
    ),
    # ----- rewards
    pytest.param(
        lambda clip: score(reward([0.0, 1.0, 0.0])),
        Raises(
            ValueError,
            exact(
                "Reward function 'my_reward' returned 3 rewards for 4 completions; it must return "
                "one float (or None) per completion."
            ),
        ),
        id="reward-wrong-length",
    ),
    pytest.param(
        lambda clip: score(reward("1.0")),
        Raises(
            ValueError,
            exact(
                "Reward function 'my_reward' returned a str; it must return a list with one float "
                "(or None) per completion (4 here)."
            ),
        ),
        id="reward-returns-a-string",
    ),
    pytest.param(
        lambda clip: score(reward([0.0, "good", 1.0, 0.0])),
        Raises(
            ValueError,
            exact(
                "Reward function 'my_reward' returned 'good' (str) at index 1; rewards must be "
                "numbers, or None for completions the reward does not apply to."
            ),
        ),
        id="reward-returns-a-string-entry",
    ),
    pytest.param(
        lambda clip: score(reward([0.0, 1.0, float("nan"), 0.0])),
        Raises(
            ValueError,
            exact(
                "Reward function 'my_reward' returned nan at index 2 (completion 'c'); rewards "
                "must be finite. Return None for completions the reward does not apply to."
            ),
        ),
        id="reward-nan",
    ),
    pytest.param(
        lambda clip: score(reward([0.0, 1.0, 0.0, -float("inf")])),
        Raises(
            ValueError,
            exact(
                "Reward function 'my_reward' returned -inf at index 3 (completion 'd'); rewards "
                "must be finite. Return None for completions the reward does not apply to."
            ),
        ),
        id="reward-inf",
    ),
    pytest.param(
        lambda clip: score(reward(KeyError("score"))),
        Raises(
            RuntimeError,
            exact(
                "Reward function 'my_reward' raised KeyError: 'score' at index 1 (completion "
                "'b'), while scoring 4 completions. Fix the reward, or return None for "
                "completions it cannot score."
            ),
        ),
        id="reward-raises",
    ),
    pytest.param(
        lambda clip: score(batch_failure),
        Raises(
            RuntimeError,
            exact(
                "Reward function 'batch_failure' raised KeyError: 'score' on the batch, "
                "while scoring 4 completions. Fix the reward, or return None for "
                "completions it cannot score."
            ),
        ),
        id="reward-raises-on-the-batch",
    ),
    pytest.param(
        lambda clip: score(reward([None] * 4, name="never_applies")),
        Handled(
            lambda values: values == [None] * 4,
            logged="Reward function 'never_applies' returned None for every completion of a step, so it gave "
            "that step no signal",
        ),
        id="reward-returns-all-none",
    ),
    # ----- model
    pytest.param(
        lambda clip: ClipContrastiveTrainer(
            model=torch.nn.Linear(2, 2),
            processing_class=clip[1],
            args=ClipContrastiveConfig(output_dir=tempfile.mkdtemp()),
        ),
        Raises(
            TypeError,
            exact(
                "Linear is not a CLIP-like dual encoder: it has no get_image_features, "
                "get_text_features, logit_scale (or temperature). clip_trl trains models with "
                "`get_image_features`, `get_text_features` and a `logit_scale` (or "
                "`temperature`) parameter, such as transformers' `CLIPModel` (e.g. "
                "'openai/clip-vit-base-patch32'); see the 'Supported models' page of the "
                "documentation."
            ),
        ),
        id="model-not-clip-like",
    ),
]


@contextlib.contextmanager
def propagating(name: str) -> Iterator[None]:
    """transformers' loggers do not propagate to the root logger, where pytest's caplog listens."""
    logger = logging.getLogger(name)
    before = logger.propagate
    logger.propagate = True
    try:
        yield
    finally:
        logger.propagate = before


@pytest.mark.parametrize(("act", "expected"), CASES)
def test_bad_input(clip, caplog, act, expected):
    if isinstance(expected, Raises):
        with pytest.raises(expected.error) as info:
            act(clip)
        assert type(info.value) is expected.error
        assert re.fullmatch(expected.message, str(info.value), flags=re.DOTALL), str(info.value)
        return
    with propagating(expected.logger), caplog.at_level(logging.WARNING):
        result = act(clip)
    assert expected.check(result), result
    warnings = [r.getMessage() for r in caplog.records if r.levelno >= logging.WARNING]
    if expected.logged is None:
        assert not [w for w in warnings if w.startswith(("Skipping", "Row", "A batch", "Reward"))], warnings
    else:
        assert any(expected.logged in w for w in warnings), warnings
