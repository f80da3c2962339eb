"""The documentation stays true: its Python examples run, and the site builds in strict mode.

- Every ```python block of docs/quickstart.md and docs/rewards.md is executed, in order, in one namespace
  per page, from a temporary working directory (so `output_dir="clip_finetuned"` lands under tmp_path) and
  with the Hugging Face Hub switched offline. A block right after a `<!-- no-run -->` line is skipped: use
  it for code that needs a network or a large model, and for nothing else.
- The reward guide's worked examples are then called on inputs built here, and used by a real RL step, so
  a change to the reward keyword arguments breaks this test rather than the reader's code.
- `mkdocs build --strict` runs into a temporary folder when mkdocs (the `docs` extra) is installed.
- The text itself stays clean: no control characters in docs/ or README.md (a TeX formula once went through a
  non-raw Python string, so `\\big` and `\\rho` became a backspace and a line break), no Markdown table cut in two
  by a blank line (the rows after it render as a paragraph), and the README stays short: at most 120 lines, its
  ten-line example at most 10.
"""

from __future__ import annotations

import os
import re
import shutil
import subprocess
import sys
import warnings
from pathlib import Path

import pytest

from clip_trl import ClipRLConfig, ClipRLTrainer
from clip_trl.offline import build_clip
from clip_trl.rewards import ClipScoreReward, reward_name

ROOT = Path(__file__).resolve().parents[1]
DOCS = ROOT / "docs"
README = ROOT / "README.md"
NO_RUN = "<!-- no-run -->"
_FENCE_OPEN = re.compile(r"^```python\s*$")
_FENCE_CLOSE = re.compile(r"^```\s*$")


def python_blocks(markdown: str) -> list[tuple[int, str, bool]]:
    """`(first code line number, code, runnable)` for each top-level ```python block of a Markdown text.

    A block is not runnable when the last non-blank line before its opening fence is `<!-- no-run -->`.
    """
    blocks: list[tuple[int, str, bool]] = []
    lines = markdown.splitlines()
    i = 0
    while i < len(lines):
        if not _FENCE_OPEN.match(lines[i]):
            i += 1
            continue
        before = next((line.strip() for line in reversed(lines[:i]) if line.strip()), "")
        start = i + 1
        end = start
        while end < len(lines) and not _FENCE_CLOSE.match(lines[end]):
            end += 1
        if end == len(lines):
            raise ValueError(f"The ```python block opened on line {i + 1} is never closed.")
        blocks.append((start + 1, "\n".join(lines[start:end]) + "\n", before != NO_RUN))
        i = end + 1
    return blocks


def run_page(page: str) -> dict:
    """Execute the runnable Python blocks of `docs/<page>` in order, in one namespace; return it."""
    path = DOCS / page
    blocks = python_blocks(path.read_text(encoding="utf-8"))
    runnable = [(line, code) for line, code, run in blocks if run]
    assert runnable, f"{page} has no runnable ```python block: is the fence spelled ```python?"
    namespace: dict = {"__name__": f"docs_{path.stem}"}
    for line, code in runnable:
        # The file name and line in tracebacks point at the Markdown source.
        exec(compile(code, f"{path}:{line}", "exec"), namespace)
    return namespace


@pytest.fixture()
def in_tmp_offline(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    monkeypatch.setenv("TRANSFORMERS_OFFLINE", "1")
    monkeypatch.setenv("HF_DATASETS_OFFLINE", "1")
    return tmp_path


def test_block_extraction_honours_the_no_run_marker():
    text = "\n".join(
        [
            "Intro.",
            "",
            "```python",
            "a = 1",
            "```",
            "",
            NO_RUN,
            "```python",
            "import network_only",
            "```",
            "```bash",
            "echo not python",
            "```",
            "```python",
            "b = a + 1",
            "```",
        ]
    )
    assert python_blocks(text) == [
        (4, "a = 1\n", True),
        (9, "import network_only\n", False),
        (15, "b = a + 1\n", True),
    ]


def test_quickstart_runs_offline(in_tmp_offline):
    blocks = python_blocks((DOCS / "quickstart.md").read_text(encoding="utf-8"))
    assert any(not run for _, _, run in blocks), "the Hub example of the quick start should be marked no-run"
    namespace = run_page("quickstart.md")

    metrics = namespace["metrics"]
    for name in ("test_image_to_text_recall@1", "test_text_to_image_recall@10", "test_in_batch_accuracy"):
        assert 0.0 <= metrics[name] <= 1.0, name
    assert namespace["rl"].state.global_step == 3
    assert "rewards/correctness/mean" in namespace["rl"].state.log_history[0]
    for folder in ("clip_finetuned", "clip_rl"):
        for name in ("model.safetensors", "config.json", "README.md"):
            assert (in_tmp_offline / folder / name).is_file(), f"{folder}/{name}"
    assert type(namespace["model"]).__name__ == "CLIPModel"  # the last block reloaded the saved folder


def test_reward_guide_examples_run_and_fit_the_trainer(in_tmp_offline, tiny, emoji):
    namespace = run_page("rewards.md")

    # The signature sketch is defined; the worked examples give the documented values on inputs built here.
    assert callable(namespace["my_reward"])
    strict_similarity = namespace["strict_similarity"]
    assert strict_similarity(
        ["a red car", "a blue bus", "a cat"],
        ground_truth=["a red car", "a red bus", None],
        probs=[0.1, 0.2, 0.3],
    ) == pytest.approx([1.0, 2 * 2 / 6 - 0.5, None])
    harder_is_worth_more = namespace["harder_is_worth_more"]
    assert harder_is_worth_more(
        ["easy one", "hard one", "wrong", "unlabelled"],
        ground_truth=["easy one", "hard one", "right", None],
        difficulty=[0, 2, 1, 1],
        chosen=[0, 1, 2, 3],
    ) == [1.0, 3.0, 0.0, None]

    # The same functions, and the teacher pattern of the no-run example (a local folder in place of the Hub
    # id), in one real RL step: they must accept exactly what the trainer passes.
    model, processor = tiny
    build_clip("tiny", seed=1, output_dir="teacher")
    teacher = ClipScoreReward("teacher", device="cpu")
    train = emoji["train"].select(range(16))
    train = train.add_column("difficulty", [i % 3 for i in range(len(train))])
    trainer = ClipRLTrainer(
        model=model,
        reward_funcs=[
            strict_similarity,
            harder_is_worth_more,
            "correctness",
            teacher,
            namespace["same_group_half_credit"],
        ],
        args=ClipRLConfig(
            output_dir="rl",
            max_steps=1,
            per_device_train_batch_size=8,
            num_samples=2,
            logging_steps=1,
            save_strategy="no",
            report_to="none",
        ),
        train_dataset=train,
        processing_class=processor,
    )
    trainer.train()
    logged = trainer.state.log_history[0]
    for name in (
        "strict_similarity",
        "harder_is_worth_more",
        "correctness",
        reward_name(teacher),
        "same_group_half_credit",
    ):
        assert f"rewards/{name}/mean" in logged, (name, sorted(logged))


# ------------------------------------------------------------------------------------ the text itself

# Every C0 control character except tab and newline, and DEL.
_CONTROL = re.compile(r"[\x00-\x08\x0b-\x1f\x7f]")
_BINARY_SUFFIXES = {".png", ".jpg", ".jpeg", ".gif", ".webp", ".ico", ".pdf", ".woff", ".woff2", ".ttf"}
README_MAX_LINES = 120
EXAMPLE_MAX_LINES = 10


def _text_files() -> list[Path]:
    """README.md and every non-binary file under docs/."""
    files = [
        path
        for path in sorted(DOCS.rglob("*"))
        if path.is_file() and path.suffix.lower() not in _BINARY_SUFFIXES
    ]
    return [README, *files]


def _markdown_files() -> list[Path]:
    return [README, *sorted(DOCS.rglob("*.md"))]


def control_characters(text: str) -> list[tuple[int, int, str]]:
    """`(line, column, character)` of each control character in `text` (1-based; lines split on `\\n` only)."""
    found = []
    for number, line in enumerate(text.split("\n"), start=1):
        found.extend((number, match.start() + 1, match.group()) for match in _CONTROL.finditer(line))
    return found


_TABLE_ROW = re.compile(r"^\s*\|")
_DELIMITER_ROW = re.compile(r"^\s*\|?\s*:?-+:?\s*(\|\s*:?-+:?\s*)*\|?\s*$")
_FENCE = re.compile(r"^\s*(```|~~~)")


def split_tables(markdown: str) -> list[int]:
    """Line numbers (1-based) of table rows that continue a table after a blank line.

    A row (a line starting with `|`, outside fenced code) whose previous non-blank line is a row too, with blank
    lines between, is a table cut in two: Markdown ends the table at the blank line and renders the rest as
    text. A row followed by a delimiter row (`| --- |`) is the header of a new table, which is fine.
    """
    lines = markdown.split("\n")
    in_fence = False
    previous_row = False  # whether the last non-blank line outside code was a table row
    blank_since = False
    split = []
    for index, line in enumerate(lines):
        if _FENCE.match(line):
            in_fence = not in_fence
            previous_row, blank_since = False, False
            continue
        if in_fence:
            continue
        if not line.strip():
            blank_since = True
            continue
        is_row = bool(_TABLE_ROW.match(line))
        next_line = lines[index + 1] if index + 1 < len(lines) else ""
        if is_row and previous_row and blank_since and not _DELIMITER_ROW.match(next_line):
            split.append(index + 1)
        previous_row, blank_since = is_row, False
    return split


def readme_example(readme: str) -> str:
    """The ```python block under the README's "## Ten-line example" heading (what tests/test_first_hour.py runs)."""
    assert "## Ten-line example" in readme, "README.md has no '## Ten-line example' heading"
    section = readme.split("## Ten-line example", 1)[1]
    found = re.search(r"```python\n(.*?)```", section, flags=re.DOTALL)
    assert found, "no ```python block under the README's '## Ten-line example' heading"
    return found.group(1)


def test_text_checks_catch_the_defects_they_are_for():
    # The clipped-surrogate formula of docs/rl.md as it was: `\big` and `\rho` written through a non-raw string.
    broken = "$$-\\min\big(\nho\\,\\hat A\\big)$$"
    assert control_characters(broken) == [(1, 8, "\b")]
    assert control_characters("a\r\nb\x7f") == [(1, 2, "\r"), (2, 2, "\x7f")]
    assert control_characters("tabs\tand\nnewlines are fine") == []
    # docs/rl.md's candidate-set table as it was: its last row cut off by a blank line.
    cut = "\n".join(["| a | b |", "| --- | --- |", "| 1 | 2 |", "", "| 3 | 4 |", "", "Text."])
    assert split_tables(cut) == [5]
    # Two tables one after the other, each with its header, are two tables; rows inside code are not rows.
    two = "\n".join(
        ["| a |", "| --- |", "| 1 |", "", "| b |", "|---|", "| 2 |", "", "```", "| x |", "", "| y |", "```"]
    )
    assert split_tables(two) == []
    assert len(readme_example("## Ten-line example\n\n```python\na = 1\nb = 2\n```\n").splitlines()) == 2


def test_docs_and_readme_have_no_control_characters():
    offenders = []
    for path in _text_files():
        text = path.read_text(encoding="utf-8")
        for line, column, character in control_characters(text):
            offenders.append(f"{path.relative_to(ROOT)}:{line}:{column}: {character!r}")
    assert not offenders, (
        "control characters (a string written without r'...'? \\b, \\r, \\f, \\v, \\a in TeX are the usual cause):\n"
        + "\n".join(offenders)
    )


def test_no_markdown_table_is_split_by_a_blank_line():
    offenders = []
    for path in _markdown_files():
        for line in split_tables(path.read_text(encoding="utf-8")):
            offenders.append(f"{path.relative_to(ROOT)}:{line}")
    assert not offenders, (
        "table rows after a blank line inside a table (remove the blank line, or give the new table a header "
        "and a `| --- |` row):\n" + "\n".join(offenders)
    )


def test_readme_is_short_and_its_ten_line_example_has_ten_lines_at_most():
    readme = README.read_text(encoding="utf-8")
    lines = len(readme.splitlines())
    assert lines <= README_MAX_LINES, (
        f"README.md has {lines} lines (at most {README_MAX_LINES}): move detail to docs/"
    )
    code = readme_example(readme)
    compile(code, "README.md", "exec")  # test_first_hour.py runs it; here: it is Python at all
    example_lines = len(code.splitlines())
    assert example_lines <= EXAMPLE_MAX_LINES, (
        f"the README's ten-line example has {example_lines} lines (at most {EXAMPLE_MAX_LINES})"
    )


def _nav_pages(nav) -> list[tuple[str, str]]:
    """`(title, page)` of every Markdown page in a mkdocs nav (nested sections included)."""
    pages: list[tuple[str, str]] = []
    for entry in nav:
        if isinstance(entry, str):
            pages.append((entry, entry))
            continue
        for title, value in entry.items():
            if isinstance(value, list):
                pages.extend(_nav_pages(value))
            elif not re.match(r"^[a-z]+://", value):
                pages.append((title, value))
    return pages


def test_site_builds_in_strict_mode(tmp_path):
    for module in ("mkdocs", "material", "mkdocstrings", "mkdocstrings_handlers.python"):
        pytest.importorskip(
            module, reason=f"{module} is not installed; pip install -e '.[docs]' to build the docs"
        )
    import yaml

    config = yaml.safe_load((ROOT / "mkdocs.yml").read_text(encoding="utf-8"))
    assert config.get("strict") is True
    pages = _nav_pages(config["nav"])
    missing = [page for _, page in pages if not (DOCS / page).is_file()]
    assert not missing, f"pages in the mkdocs.yml nav but not in docs/: {missing}"

    # Build from a copy of docs/, with the paths of the copied config pointing back at the repository.
    docs = tmp_path / "docs"
    shutil.copytree(DOCS, docs)
    config["docs_dir"] = str(docs)
    # Relative paths in mkdocs.yml resolve from the config file's folder, which is now tmp_path.
    for plugin in config["plugins"]:
        if isinstance(plugin, dict) and "mkdocstrings" in plugin:
            plugin["mkdocstrings"]["handlers"]["python"]["paths"] = [str(ROOT)]
    for extension in config["markdown_extensions"]:
        if isinstance(extension, dict) and "pymdownx.snippets" in extension:
            extension["pymdownx.snippets"]["base_path"] = [str(ROOT)]
    config["site_dir"] = str(tmp_path / "site")
    config_file = tmp_path / "mkdocs.yml"
    config_file.write_text(yaml.safe_dump(config, sort_keys=False, allow_unicode=True), encoding="utf-8")

    env = {**os.environ, "NO_MKDOCS_2_WARNING": "1"}
    result = subprocess.run(
        [sys.executable, "-m", "mkdocs", "build", "--strict", "--quiet", "-f", str(config_file)],
        cwd=ROOT,
        env=env,
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert result.returncode == 0, f"mkdocs build --strict failed:\n{result.stdout}\n{result.stderr}"
    site = tmp_path / "site"
    assert (site / "index.html").is_file()
    assert "ClipRLTrainer" in (site / "api" / "trainers" / "index.html").read_text(encoding="utf-8")
    assert "[Unreleased]" in (site / "changelog" / "index.html").read_text(encoding="utf-8")
    if missing:
        warnings.warn(
            f"docs pages not written yet, built with a stand-in: {[page for _, page in missing]}",
            stacklevel=1,
        )
