"""Rollout tables (`ClipRLConfig(log_rollouts=True)`): what reaches the files, TensorBoard, the other
integrations, the console, the model card and a real browser."""

from __future__ import annotations

import glob
import io
import math
import os
import re
import shutil
import subprocess
import sys
import types
from pathlib import Path

import pandas as pd
import pytest
from PIL import Image

from clip_trl import ClipRLConfig, ClipRLTrainer
from clip_trl.data.rows import load_image
from clip_trl.offline import build_clip, load_emoji_dataset
from clip_trl.reporting.rollouts import THUMBNAIL_SIZE, latest_rollouts, thumbnail

NUM_SAMPLES = 4


def shaped(completions, ground_truth, **kwargs):
    """Right answer 1, else a value from the text's length: GRPO groups with unequal rewards."""
    return [1.0 if c == g else 0.1 * (len(c) % 7) for c, g in zip(completions, ground_truth)]


def sometimes(completions, **kwargs):
    """Applies to even-length candidates only (None elsewhere), to test the table's empty reward cells."""
    return [0.5 if len(c) % 2 == 0 else None for c in completions]


def train(tmp_path, data=None, reward_funcs=(shaped, sometimes), **overrides):
    data = data if data is not None else load_emoji_dataset(max_examples=48)["train"]
    model, processor = build_clip("tiny", seed=0)
    args = ClipRLConfig(
        **{
            "output_dir": str(tmp_path / "run"),
            "max_steps": 2,
            "per_device_train_batch_size": 6,
            "num_samples": NUM_SAMPLES,
            "logging_steps": 1,
            "report_to": "none",
            "save_strategy": "no",
            "log_rollouts": True,
            "num_rollouts_to_log": 3,
            "reward_weights": [1.0, 2.0],
            "seed": 0,
            "learning_rate": 1e-3,
            "disable_tqdm": True,
            "dataloader_num_workers": 0,
            **overrides,
        }
    )
    trainer = ClipRLTrainer(
        model=model,
        reward_funcs=list(reward_funcs),
        args=args,
        train_dataset=data,
        processing_class=processor,
    )
    trainer.train()
    return trainer


def step_frame(trainer, step: int) -> pd.DataFrame:
    return pd.read_parquet(os.path.join(trainer.args.output_dir, "rollouts", f"rollouts_{step:05d}.parquet"))


@pytest.fixture(scope="module")
def grpo_run(tmp_path_factory):
    return train(tmp_path_factory.mktemp("rollouts"))


def test_each_logging_step_writes_the_first_queries_with_their_rewards_and_advantages(grpo_run):
    data = load_emoji_dataset(max_examples=48)["train"]
    image_of = {row["caption"]: row["image"] for row in data}
    for step in (1, 2):
        frame = step_frame(grpo_run, step)
        assert sorted(frame["query_index"].unique()) == [0, 1, 2]
        assert set(frame["step"]) == {step}
        for _, query in frame.groupby("query_index"):
            truth = query["ground_truth"].iloc[0]
            assert query["count"].sum() == NUM_SAMPLES  # every sampled action, grouped by candidate
            # Each reward function's value for the chosen text, and their weighted sum (None counts as absent).
            for _, row in query.iterrows():
                assert row["reward/shaped"] == pytest.approx(shaped([row["choice"]], [truth])[0])
                expected_sometimes = 0.5 if len(row["choice"]) % 2 == 0 else None
                if expected_sometimes is None:
                    assert math.isnan(row["reward/sometimes"])
                else:
                    assert row["reward/sometimes"] == pytest.approx(expected_sometimes)
                assert row["reward"] == pytest.approx(
                    row["reward/shaped"] + 2.0 * (expected_sometimes or 0.0)
                )
            # GRPO's advantage by hand from the group's rewards: (r - mean) / (unbiased std + 1e-4).
            group = [r for r, n in zip(query["reward"], query["count"]) for _ in range(n)]
            mean = sum(group) / len(group)
            std = math.sqrt(sum((r - mean) ** 2 for r in group) / (len(group) - 1))
            for _, row in query.iterrows():
                expected = 0.0 if std == 0 else (row["reward"] - mean) / (std + 1e-4)
                assert row["advantage"] == pytest.approx(expected, abs=1e-5)
            # π: the top candidates in decreasing order, the chosen candidate's probability among the candidates.
            top = list(query["top_probs"].iloc[0])
            assert top == sorted(top, reverse=True) and 0 < sum(top) <= 1 + 1e-6
            assert all(0 < p <= 1 for p in query["prob"])
            # The thumbnail is the query's own image, made small.
            path = os.path.join(grpo_run.args.output_dir, "rollouts", query["image_file"].iloc[0])
            with Image.open(path) as saved:
                assert max(saved.size) <= THUMBNAIL_SIZE
                assert saved.convert("RGB").tobytes() == thumbnail(load_image(image_of[truth])).tobytes()


def test_exact_advantage_tables_every_candidate_with_its_advantage_under_pi(tmp_path):
    trainer = train(
        tmp_path,
        advantage="exact",
        max_steps=1,
        num_rollouts_to_log=2,
        reward_funcs=(shaped,),
        reward_weights=None,
    )
    frame = step_frame(trainer, 1)
    for _, query in frame.groupby("query_index"):
        assert (query["count"] == 1).all() and len(query) == 6  # each of the batch's 6 captions, once
        assert query["prob"].sum() == pytest.approx(1.0, abs=1e-5)
        baseline = (query["prob"] * query["reward"]).sum()
        assert list(query["advantage"]) == pytest.approx(list(query["reward"] - baseline), abs=1e-5)


def test_text_to_image_tables_the_caption_as_the_query(tmp_path):
    trainer = train(
        tmp_path, direction="text_to_image", max_steps=1, reward_funcs=(shaped,), reward_weights=None
    )
    frame = step_frame(trainer, 1)
    batch_captions = set(frame["ground_truth"])
    for _, query in frame.groupby("query_index"):
        assert (query["query"] == query["ground_truth"]).all()  # the caption that chose
        assert query["count"].sum() == NUM_SAMPLES
        assert set(query["choice"]) <= set(load_emoji_dataset(max_examples=48)["train"]["caption"])
    assert len(batch_captions) == 3
    card_table = latest_rollouts(trainer.args.output_dir)
    assert all(rollout.query == rollout.ground_truth for rollout in card_table)


def test_model_card_shows_the_last_steps_rollouts_with_thumbnails_that_resolve(tmp_path):
    trainer = train(tmp_path, save_strategy="steps", save_steps=2)
    trainer.save_model()
    output_dir = trainer.args.output_dir
    for folder in (output_dir, os.path.join(output_dir, "checkpoint-2")):
        card = Path(folder, "README.md").read_text(encoding="utf-8")
        assert "### Rollouts" in card and "(step 2)" in card
        images = re.findall(r"\]\(([^)]+/images/[^)]+\.png)\)", card)
        assert len(images) == 3
        assert all(os.path.isfile(os.path.join(folder, link)) for link in images), images
    shown = latest_rollouts(output_dir)
    assert [r.ground_truth for r in shown] == list(
        step_frame(trainer, 2).drop_duplicates("query_index")["ground_truth"]
    )


def test_resuming_drops_the_rollouts_logged_after_the_checkpoint(tmp_path):
    first = train(tmp_path, max_steps=4, save_strategy="steps", save_steps=2)
    folder = os.path.join(first.args.output_dir, "rollouts")
    assert len(glob.glob(os.path.join(folder, "rollouts_*.parquet"))) == 4
    # The continuation stops at step 3: step 4's files belonged to the abandoned future and must go.
    resumed = ClipRLTrainer(
        model=build_clip("tiny", seed=0)[0],
        reward_funcs=[shaped, sometimes],
        args=first.args,
        train_dataset=first.train_dataset.dataset
        if hasattr(first.train_dataset, "dataset")
        else first.train_dataset,
        processing_class=first.processing_class,
    )
    resumed.args.max_steps = 3
    resumed.train(resume_from_checkpoint=os.path.join(first.args.output_dir, "checkpoint-2"))
    steps = sorted(int(path[-13:-8]) for path in glob.glob(os.path.join(folder, "rollouts_*.parquet")))
    assert steps == [1, 2, 3]
    assert not glob.glob(os.path.join(folder, "images", "00004_*.png"))
    page = Path(folder, "index.html").read_text(encoding="utf-8")
    assert "Step 3" in page and "Step 4" not in page and "Step 1" in page  # earlier steps read back


def test_tensorboard_receives_the_table_as_text(tmp_path, monkeypatch):
    pytest.importorskip("tensorboard")
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    logging_dir = tmp_path / "tb"
    monkeypatch.setenv("TENSORBOARD_LOGGING_DIR", str(logging_dir))  # transformers 5's way to place the logs
    trainer = train(tmp_path, report_to="tensorboard")
    events = EventAccumulator(str(logging_dir), size_guidance={"tensors": 0})
    events.Reload()
    assert "rollouts/text_summary" in events.Tags()["tensors"]
    texts = {
        event.step: event.tensor_proto.string_val[0].decode()
        for event in events.Tensors("rollouts/text_summary")
    }
    assert sorted(texts) == [1, 2]
    for step, text in texts.items():
        for truth in step_frame(trainer, step).drop_duplicates("query_index")["ground_truth"]:
            assert f"| {truth} |" in text


def _fake_backend(name: str, with_run: bool = True) -> types.ModuleType:
    module = types.ModuleType(name)
    module.logged = []

    class Image:
        def __init__(self, image):
            self.image = image

    class Table:
        def __init__(self, dataframe):
            self.dataframe = dataframe

    module.Image, module.Table = Image, Table
    module.log = lambda values: module.logged.append(values)
    module.run = object() if with_run else None
    return module


@pytest.mark.parametrize("backend", ["wandb", "trackio"])
def test_wandb_and_trackio_get_a_table_with_an_image_column(grpo_run, monkeypatch, backend):
    # Neither library is installed here (nor offline-capable without an account, for wandb): a stand-in module
    # checks the calls — `Table(dataframe=...)` with `Image(PIL image)` cells, logged under "rollouts".
    module = _fake_backend(backend)
    monkeypatch.setitem(sys.modules, backend, module)
    monkeypatch.setattr(grpo_run.args, "report_to", [backend])
    rollouts = latest_rollouts(grpo_run.args.output_dir)
    for rollout in rollouts:
        rollout.image = Image.new("RGB", (8, 8), (1, 2, 3))
    grpo_run.rollout_logging.publish(rollouts, step=7)
    (values,) = module.logged
    frame = values["rollouts"].dataframe
    assert {
        "image",
        "ground_truth",
        "choice",
        "prob",
        "reward/shaped",
        "reward/sometimes",
        "advantage",
    } <= set(frame)
    assert all(isinstance(cell, module.Image) and cell.image.size == (8, 8) for cell in frame["image"])
    assert set(frame["step"]) == {7}


def test_wandb_without_a_run_gets_nothing(grpo_run, monkeypatch):
    module = _fake_backend("wandb", with_run=False)
    monkeypatch.setitem(sys.modules, "wandb", module)
    monkeypatch.setattr(grpo_run.args, "report_to", ["wandb"])
    grpo_run.rollout_logging.publish(latest_rollouts(grpo_run.args.output_dir), step=8)
    assert module.logged == []


def test_console_table_when_rich_is_installed(grpo_run, capsys, monkeypatch):
    pytest.importorskip("rich")
    rollouts = latest_rollouts(grpo_run.args.output_dir)
    capsys.readouterr()  # what the fixture's training printed
    monkeypatch.setenv("COLUMNS", "200")
    grpo_run.rollout_logging.publish(rollouts, step=9)
    assert "Rollouts at step" not in capsys.readouterr().out  # the default, "end": not at every log
    monkeypatch.setattr(grpo_run.args, "print_rollouts", "log")
    grpo_run.rollout_logging.publish(rollouts, step=9)
    printed = capsys.readouterr().out
    assert "Rollouts at step 9" in printed and "shaped" in printed  # a reward function's column
    assert rollouts[0].choices[0].text.split()[0] in printed


@pytest.mark.parametrize("when, printed_steps", [("end", [2]), ("log", [1, 2]), ("no", [])])
def test_the_console_gets_the_last_table_at_the_end_by_default(tmp_path, capsys, when, printed_steps):
    pytest.importorskip("rich")
    train(tmp_path, max_steps=2, print_rollouts=when)
    printed = capsys.readouterr().out
    assert [int(step) for step in re.findall(r"Rollouts at step (\d+)", printed)] == printed_steps


# The console table's own words (headers, title), besides the captions.
VOCABULARY = "cat ground truth most likely chosen correctness reward ollouts at step rewards per function in the rollouts folder"
VOCABULARY = VOCABULARY.split()


def test_the_console_table_fits_the_terminal_and_cuts_cells_between_words(capsys, monkeypatch):
    pytest.importorskip("rich")
    from rich.cells import cell_len

    from clip_trl.reporting.console import print_rollouts
    from clip_trl.reporting.rollouts import Choice, QueryRollout

    words = ["smiling", "face", "with", "heart", "shaped", "eyes", "and", "a", "big", "open", "mouth"]
    long = " ".join(words)
    rollout = QueryRollout(
        query=None,
        ground_truth=long,
        candidates=[long, "cat"],
        probs=[0.75, 0.25],
        choices=[
            Choice(1, long, 3, 0.75, {"correctness": 1.0}, 1.0, 0.5),
            Choice(1, "cat", 1, 0.25, {}, 0.0, -1.5),
        ],
    )
    for columns in (60, 100, 240):
        monkeypatch.setenv("COLUMNS", str(columns))  # what shutil.get_terminal_size reads first
        print_rollouts([rollout], 3, ["correctness"])
        lines = capsys.readouterr().out.splitlines()
        assert max(cell_len(line) for line in lines) <= columns
        assert any("-1.50" in line for line in lines)  # the numbers are never cut
        body = " ".join(lines)
        # Cut between words; only a column narrower than its first word (at 60 columns) cuts inside one.
        for token in re.findall(r"[a-z]+…?", body) if columns >= 100 else []:
            assert token.rstrip("…") in words + VOCABULARY, token
        assert ("correctness" in body) == (
            columns >= 100
        )  # a reward's column, when the text columns have room
        if columns == 240:
            assert long in body and "…" not in body  # room enough: nothing is cut


def test_print_rollouts_must_be_a_known_value(tmp_path):
    with pytest.raises(ValueError, match=r"^`print_rollouts` must be 'end', 'log' or 'no', got 'always'\.$"):
        ClipRLConfig(output_dir=str(tmp_path), print_rollouts="always")


def test_num_rollouts_to_log_must_be_positive(tmp_path):
    with pytest.raises(ValueError, match=r"^`num_rollouts_to_log` must be a positive integer, got 0\.$"):
        ClipRLConfig(output_dir=str(tmp_path), num_rollouts_to_log=0)


def test_rollouts_are_off_by_default(tmp_path):
    trainer = train(tmp_path, log_rollouts=False, max_steps=1)
    assert trainer.rollout_logging is None
    assert not os.path.exists(os.path.join(trainer.args.output_dir, "rollouts"))


# ------------------------------------------------------------------------------------------- the browser

CHROMIUM_FLAGS = [
    "--headless",
    "--no-sandbox",
    "--disable-gpu",
    "--disable-quic",
    "--no-first-run",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
]
COLOURS = [(255, 0, 255), (0, 255, 255), (255, 128, 0), (0, 128, 255), (128, 255, 0), (255, 0, 128)]


def _chromium() -> str:
    found = shutil.which("chromium") or shutil.which("chromium-browser")
    if found is None:
        if (
            os.environ.get("CLIP_TRL_REQUIRE_BROWSER") == "1"
        ):  # CI installs it: a missing browser is a failure
            pytest.fail("CLIP_TRL_REQUIRE_BROWSER=1 but no chromium on PATH (scripts/install.sh installs it)")
        pytest.skip(
            "Chromium is not installed (Debian package `chromium`; scripts/install.sh installs it as root)"
        )
    return found


def _solid_colour_rows():
    import datasets

    def png(colour):
        buffer = io.BytesIO()
        Image.new("RGB", (48, 48), colour).save(buffer, format="PNG")
        return {"bytes": buffer.getvalue(), "path": None}

    names = ["magenta square", "cyan square", "orange square", "azure square", "lime square", "rose square"]
    features = datasets.Features({"image": datasets.Image(), "caption": datasets.Value("string")})
    return datasets.Dataset.from_dict(
        {"image": [png(c) for c in COLOURS], "caption": names}, features=features
    )


def test_html_page_renders_in_headless_chromium_with_its_images(tmp_path):
    browser = _chromium()
    trainer = train(
        tmp_path,
        data=_solid_colour_rows(),
        max_steps=1,
        num_rollouts_to_log=4,
        train_sampling_strategy="sequential",
    )
    page = os.path.join(trainer.args.output_dir, "rollouts", "index.html")
    profile = str(tmp_path / "profile")
    common = [browser, *CHROMIUM_FLAGS, f"--user-data-dir={profile}"]
    dom = subprocess.run(
        [*common, "--dump-dom", f"file://{page}"], capture_output=True, text=True, timeout=120
    )
    assert dom.returncode == 0, dom.stderr[-2000:]
    for name in ("Step 1", "magenta square", "cyan square", "orange square", "azure square", "advantage"):
        assert name in dom.stdout
    screenshot = tmp_path / "page.png"
    shot = subprocess.run(
        [*common, "--window-size=900,2400", f"--screenshot={screenshot}", f"file://{page}"],
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert shot.returncode == 0 and screenshot.is_file(), shot.stderr[-2000:]
    # Each logged query's image is drawn: a block of its exact colour at the page's thumbnail size (96 px).
    pixels = Image.open(screenshot).convert("RGB")
    counts = {colour: 0 for colour in COLOURS}
    for colour in pixels.getdata():
        if colour in counts:
            counts[colour] += 1
    for colour in COLOURS[:4]:
        assert counts[colour] >= 90 * 90, (colour, counts)
    for colour in COLOURS[4:]:  # rows not logged (only the first 4 queries are)
        assert counts[colour] == 0, (colour, counts)


def test_markdown_table_escapes_for_markdown_not_with_html_entities():
    from clip_trl.reporting.rollouts import Choice, QueryRollout, markdown_table

    rollout = QueryRollout(
        query=None,
        ground_truth="three o'clock",
        candidates=["three o'clock", "a | b <i>"],
        probs=[0.6, 0.4],
        choices=[Choice(1, "a | b <i>", 1, 0.4, {}, 0.0, -1.0)],
    )
    table = markdown_table([rollout])
    assert "three o'clock" in table and "&#x27;" not in table and "&" not in table
    assert "a \\| b \\<i\\>" in table  # `|` cannot end the cell, `<i>` shows as typed
    assert table.splitlines()[2].count(" | ") == 2  # three cells: the escaped `|` is not a column
