"""Rollout tables: what the RL policy chose, how likely each candidate was, and what the rewards said.

TRL's `log_completions` lets a user read what a language model generates; for a dual encoder the equivalent
is, per query: the image (a thumbnail), the top candidates under `π`, the choices the policy sampled (or every
candidate, with `advantage="exact"`), each reward function's value and the advantage. With
`ClipRLConfig(log_rollouts=True)` the trainer keeps the first `num_rollouts_to_log` queries of the latest batch
(gathered over processes) and, at every logging step, writes them:

- always to `output_dir/rollouts/`: `rollouts_{step:05d}.parquet` (one row per query and distinct choice,
  TRL's layout for completions), thumbnails under `images/`, and `index.html`, a page a person can open;
- to every `report_to` integration that shows tables: TensorBoard (a Markdown table as text), Weights &
  Biases and Trackio (a table with images);
- to the console as a `rich` table when `rich` is installed (`print_rollouts`: at the end of training by
  default, or at every logging step), cut to the terminal's width;
- and the model card of the run shows a few rollouts of the last logged step.
"""

from __future__ import annotations

import glob
import html
import math
import os
import re
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from typing import Any

from PIL import Image

ROLLOUTS_DIRNAME = "rollouts"
THUMBNAIL_SIZE = 96
TOP_CANDIDATES = 5
CARD_ROLLOUTS = 4  # queries shown in the model card
# Choices shown per query (all of them with `advantage="exact"`, where every candidate is scored): the most
# frequent and likely first; the parquet file keeps every one.
CHOICES_SHOWN = {"page": 8, "text": 4}
HTML_STEPS = 50  # the page shows the latest steps; the parquet files keep every one
_FILE_PATTERN = re.compile(r"rollouts_(\d+)\.parquet$")


@dataclass
class Choice:
    """One distinct candidate the policy chose for a query: how often, with what probability and reward."""

    index: int
    text: str
    count: int
    prob: float
    rewards: dict[str, float | None]
    reward: float | None
    advantage: float | None
    extra: dict[str, Any] = field(default_factory=dict)  # columns rewards logged with `log_extra`


@dataclass
class QueryRollout:
    """One query's rollout: its image, ground truth, `π` over its candidates and the choices made."""

    query: str | None
    ground_truth: str | None
    candidates: list[str]
    probs: list[float]
    choices: list[Choice]
    image: Image.Image | None = None
    image_file: str | None = None  # relative to the rollouts folder, once written
    step: int = 0

    def top_candidates(self, k: int = TOP_CANDIDATES) -> list[tuple[str, float]]:
        order = sorted(range(len(self.probs)), key=lambda i: -self.probs[i])[:k]
        return [(self.candidates[i], self.probs[i]) for i in order]


def _number(value: Any) -> float | None:
    """A float, or None for None/NaN (JSON, parquet and the tables all read None as 'no value')."""
    if value is None:
        return None
    value = float(value)
    return None if math.isnan(value) else value


def _mean(values: Iterable[Any]) -> float | None:
    """The mean of the values that are numbers (None and NaN left out); None when there are none."""
    kept = [v for v in map(_number, values) if v is not None]
    return sum(kept) / len(kept) if kept else None


def thumbnail(image: Any, size: int = THUMBNAIL_SIZE) -> Image.Image | None:
    """A small RGB copy of a decoded image cell (PIL image or array); None when it is not an image."""
    if not isinstance(image, Image.Image):
        try:
            import numpy as np

            image = Image.fromarray(np.asarray(image))
        except Exception:
            return None
    small = image.convert("RGB")
    small.thumbnail((size, size))
    return small


def query_rollouts(
    entries: Sequence[tuple[int, int]],
    probs: Sequence[Sequence[float]],
    candidates: Sequence[Sequence[str]],
    ground_truth: Sequence[Any],
    images: Sequence[Any],
    per_function: Sequence[Sequence[float]],
    total: Sequence[float],
    advantages: Sequence[float | None],
    reward_names: Sequence[str],
    queries: Sequence[str | None] | None = None,
    limit: int | None = None,
    extra: dict[str, Sequence[Any]] | None = None,
) -> list[QueryRollout]:
    """Group one batch's scored actions by query: `entries[i] = (query b, candidate k)` with reward functions'
    values `per_function[i]`, weighted total `total[i]` and advantage `advantages[i]`. Repeated choices of the
    same candidate become one [`Choice`] with a count and mean values. Only the first `limit` queries are kept.
    `extra` holds the columns rewards logged with `log_extra` (one value per entry; a repeated choice keeps the
    mean of numbers, else the first value).

    Example:

    ```python
    >>> from clip_trl.reporting.rollouts import query_rollouts
    >>> rollouts = query_rollouts(
    ...     entries=[(0, 1), (0, 1), (0, 0)], probs=[[0.25, 0.75]], candidates=[["cat", "dog"]],
    ...     ground_truth=["dog"], images=[None], per_function=[[1.0], [1.0], [0.0]], total=[1.0, 1.0, 0.0],
    ...     advantages=[0.7, 0.7, -1.4], reward_names=["correctness"])
    >>> [(c.text, c.count, c.reward, c.advantage) for c in rollouts[0].choices]
    [('dog', 2, 1.0, 0.7), ('cat', 1, 0.0, -1.4)]

    ```
    """
    grouped: dict[int, dict[int, list[int]]] = {}
    for i, (b, k) in enumerate(entries):
        if limit is not None and b >= limit:
            continue
        grouped.setdefault(b, {}).setdefault(k, []).append(i)
    out = []
    for b in sorted(grouped):
        choices = []
        for k, positions in grouped[b].items():
            choices.append(
                Choice(
                    index=k,
                    text=candidates[b][k],
                    count=len(positions),
                    prob=float(probs[b][k]),
                    rewards={
                        name: _mean(per_function[i][j] for i in positions)
                        for j, name in enumerate(reward_names)
                    },
                    reward=_mean(total[i] for i in positions),
                    advantage=_mean(advantages[i] for i in positions),
                    extra={
                        column: _extra_value([values[i] for i in positions])
                        for column, values in (extra or {}).items()
                    },
                )
            )
        choices.sort(key=lambda c: (-c.count, -c.prob))
        truth = ground_truth[b]
        out.append(
            QueryRollout(
                query=queries[b] if queries is not None else None,
                ground_truth=" | ".join(truth) if isinstance(truth, (list, tuple)) else truth,
                candidates=list(candidates[b]),
                probs=[float(p) for p in probs[b][: len(candidates[b])]],
                choices=choices,
                image=thumbnail(images[b]) if images[b] is not None else None,
            )
        )
    return out


def _extra_value(values: list[Any]) -> Any:
    """One `log_extra` cell of a repeated choice: the mean of numbers, else the first value (as text unless it is
    a plain scalar, so the parquet column has one type)."""
    if all(isinstance(v, (int, float)) and not isinstance(v, bool) for v in values):
        return _mean(values)
    first = values[0]
    return first if first is None or isinstance(first, (str, bool, int, float)) else str(first)


# ------------------------------------------------------------------------------------------------- tables


def _format(value: float | None, digits: int = 3) -> str:
    return "–" if value is None else f"{value:.{digits}f}"


def _top_text(rollout: QueryRollout, k: int = TOP_CANDIDATES) -> str:
    return "; ".join(f"{text} ({prob:.2f})" for text, prob in rollout.top_candidates(k))


def _choices_text(rollout: QueryRollout) -> str:
    shown = CHOICES_SHOWN["text"]
    text = "; ".join(
        f"{c.count}× {c.text} → {_format(c.reward, 2)} (A {_format(c.advantage, 2)})"
        for c in rollout.choices[:shown]
    )
    hidden = len(rollout.choices) - shown
    return text + (f"; … {hidden} more" if hidden > 0 else "")


def to_records(rollouts: Sequence[QueryRollout], reward_names: Sequence[str]) -> list[dict[str, Any]]:
    """Flat rows, one per query and distinct choice (TRL's completions layout): the parquet file's rows."""
    records = []
    for q, rollout in enumerate(rollouts):
        top = rollout.top_candidates()
        for choice in rollout.choices:
            records.append(
                {
                    "step": rollout.step,
                    "query_index": q,
                    "image_file": rollout.image_file,
                    "query": rollout.query,
                    "ground_truth": rollout.ground_truth,
                    "top_candidates": [text for text, _ in top],
                    "top_probs": [prob for _, prob in top],
                    "choice": choice.text,
                    "choice_index": choice.index,
                    "count": choice.count,
                    "prob": choice.prob,
                    **{f"reward/{name}": choice.rewards.get(name) for name in reward_names},
                    "reward": choice.reward,
                    "advantage": choice.advantage,
                }
            )
            for column, value in choice.extra.items():  # a name the table already has keeps its own column
                records[-1]["extra/" + column if column in records[-1] else column] = value
    return records


def from_records(records: Sequence[dict[str, Any]]) -> list[QueryRollout]:
    """The inverse of [`to_records`] (without the full candidate list: the top candidates stand for it)."""
    grouped: dict[tuple[int, int], QueryRollout] = {}
    for record in records:
        key = (int(record["step"]), int(record["query_index"]))
        if key not in grouped:
            grouped[key] = QueryRollout(
                query=record.get("query"),
                ground_truth=record.get("ground_truth"),
                candidates=list(record["top_candidates"]),
                probs=[float(p) for p in record["top_probs"]],
                choices=[],
                image_file=record.get("image_file"),
                step=key[0],
            )
        rewards = {
            name.removeprefix("reward/"): _number(value)
            for name, value in record.items()
            if name.startswith("reward/")
        }
        grouped[key].choices.append(
            Choice(
                index=int(record["choice_index"]),
                text=record["choice"],
                count=int(record["count"]),
                prob=float(record["prob"]),
                rewards=rewards,
                reward=_number(record["reward"]),
                advantage=_number(record["advantage"]),
            )
        )
    return [grouped[key] for key in sorted(grouped)]


_MARKDOWN_SPECIAL = re.compile(r"([\\`*_\[\]<>|#~])")


def _markdown_text(text: str) -> str:
    """Text as it reads, safe in a Markdown table cell: Markdown's and HTML's special characters are
    backslash-escaped (`o'clock` stays `o'clock`, `<b>` shows as `<b>`, `|` does not end the cell), line breaks
    become spaces. No HTML entities (`&#x27;`): TensorBoard's text panel and plain-text readers show them literally.
    """
    return _MARKDOWN_SPECIAL.sub(r"\\\1", text).replace("\r", " ").replace("\n", " ")


def markdown_table(rollouts: Sequence[QueryRollout], image_prefix: str | None = None) -> str:
    """A Markdown table of the rollouts (TensorBoard's text panel, the model card). With `image_prefix`, each
    row shows its thumbnail from `image_prefix/image_file`."""

    def cell(text: Any) -> str:
        return _markdown_text(str(text if text is not None else "–"))

    image_column = image_prefix is not None
    query_column = any(rollout.query for rollout in rollouts)  # text_to_image: the caption that chose
    header = (
        (["image"] if image_column else [])
        + (["query"] if query_column else [])
        + ["ground truth", "top candidates (π)", "chosen → reward (advantage)"]
    )
    lines = ["| " + " | ".join(header) + " |", "|" + " --- |" * len(header)]
    for rollout in rollouts:
        row = []
        if image_column:
            path = f"{image_prefix.rstrip('/')}/{rollout.image_file}" if rollout.image_file else None
            row.append(f"![step {rollout.step}]({path})" if path else "–")
        row += ([cell(rollout.query)] if query_column else []) + [
            cell(rollout.ground_truth),
            cell(_top_text(rollout)),
            cell(_choices_text(rollout)),
        ]
        lines.append("| " + " | ".join(row) + " |")
    return "\n".join(lines)


# -------------------------------------------------------------------------------------------------- files


def render_html(
    steps: Sequence[tuple[int, Sequence[QueryRollout]]],
    reward_names: Sequence[str],
    title: str = "clip_trl rollouts",
) -> str:
    """A self-contained page (no script) of the given steps' rollouts, latest step first; thumbnails are linked
    relative to the page."""
    esc = html.escape
    parts = [
        "<!doctype html>",
        "<html><head><meta charset='utf-8'>",
        f"<title>{esc(title)}</title>",
        "<style>body{font-family:sans-serif;margin:1.5em;color:#222}"
        ".query{display:flex;gap:1em;border-top:1px solid #ddd;padding:.8em 0}"
        ".query img{width:96px;height:auto;image-rendering:pixelated;border:1px solid #ccc;align-self:flex-start}"
        "table{border-collapse:collapse;font-size:90%}td,th{border:1px solid #ddd;padding:2px 6px;text-align:left}"
        ".bar{background:#4c78a8;height:.7em;display:inline-block}.truth{font-weight:bold;color:#2a7f2a}"
        "</style></head><body>",
        f"<h1>{esc(title)}</h1>",
        "<p>Per query: the image, the top candidates with their probability under the policy π (the ground "
        "truth in <span class='truth'>green</span>), and the candidates it chose with each reward function's "
        "value, the weighted reward and the advantage. Every logged step is in the <code>rollouts_*.parquet"
        f"</code> files beside this page; the page shows the latest {HTML_STEPS}.</p>",
    ]
    for step, rollouts in sorted(steps, key=lambda item: -item[0]):
        parts.append(f"<h2 id='step-{step}'>Step {step}</h2>")
        for rollout in rollouts:
            truths = set((rollout.ground_truth or "").split(" | "))
            parts.append("<div class='query'>")
            if rollout.image_file:
                parts.append(f"<img src='{esc(rollout.image_file)}' alt='query image'>")
            parts.append("<div>")
            if rollout.query:
                parts.append(f"<div>query: <b>{esc(rollout.query)}</b></div>")
            parts.append(
                f"<div>ground truth: <span class='truth'>{esc(rollout.ground_truth or '–')}</span></div>"
            )
            parts.append("<table><tr><th>candidate</th><th>π</th><th></th></tr>")
            top = rollout.top_candidates()
            for text, prob in top:
                style = " class='truth'" if text in truths else ""
                parts.append(
                    f"<tr><td{style}>{esc(text)}</td><td>{prob:.3f}</td>"
                    f"<td><span class='bar' style='width:{max(1, round(120 * prob))}px'></span></td></tr>"
                )
            shown = {text for text, _ in top}
            ranked = sorted(range(len(rollout.probs)), key=lambda i: -rollout.probs[i])
            for rank, i in enumerate(ranked, start=1):  # a ground truth below the top: where π puts it
                if rollout.candidates[i] in truths and rollout.candidates[i] not in shown:
                    parts.append(
                        f"<tr><td class='truth'>{esc(rollout.candidates[i])} (rank {rank} of "
                        f"{len(ranked)})</td><td>{rollout.probs[i]:.3f}</td><td></td></tr>"
                    )
            parts.append(
                "</table><table style='margin-top:.4em'><tr><th>chosen</th><th>times</th><th>π</th>"
                + "".join(f"<th>{esc(name)}</th>" for name in reward_names)
                + "<th>reward</th><th>advantage</th></tr>"
            )
            for choice in rollout.choices[: CHOICES_SHOWN["page"]]:
                style = " class='truth'" if choice.text in truths else ""
                parts.append(
                    f"<tr><td{style}>{esc(choice.text)}</td><td>{choice.count}</td><td>{choice.prob:.3f}</td>"
                    + "".join(f"<td>{_format(choice.rewards.get(name))}</td>" for name in reward_names)
                    + f"<td>{_format(choice.reward)}</td><td>{_format(choice.advantage)}</td></tr>"
                )
            hidden = len(rollout.choices) - CHOICES_SHOWN["page"]
            if hidden > 0:
                parts.append(
                    f"<tr><td colspan='{5 + len(reward_names)}'>… {hidden} more (in the step's parquet "
                    "file)</td></tr>"
                )
            parts.append("</table></div></div>")
    parts.append("</body></html>")
    return "\n".join(parts)


def rollout_files(folder: str) -> list[tuple[int, str]]:
    """`(step, path)` of the parquet files in a rollouts folder, by step."""
    found = []
    for path in glob.glob(os.path.join(folder, "rollouts_*.parquet")):
        match = _FILE_PATTERN.search(path)
        if match:
            found.append((int(match.group(1)), path))
    return sorted(found)


def read_step(path: str) -> list[QueryRollout]:
    import pandas as pd

    return from_records(pd.read_parquet(path).to_dict("records"))


def latest_rollouts(output_dir: str, limit: int = 4) -> list[QueryRollout]:
    """The first `limit` query rollouts of the last logged step in `output_dir/rollouts` (none if absent)."""
    files = rollout_files(os.path.join(output_dir, ROLLOUTS_DIRNAME))
    return read_step(files[-1][1])[:limit] if files else []


class RolloutWriter:
    """Writes each logged step's rollouts to `folder` (parquet, thumbnails, `index.html`) and remembers the
    latest `HTML_STEPS` steps for the page.

    Args:
        folder (`str`): the rollouts folder, `output_dir/rollouts`.
        reward_names (`Sequence[str]`): the reward functions' names, the table's reward columns.
    """

    def __init__(self, folder: str, reward_names: Sequence[str]) -> None:
        self.folder = folder
        self.reward_names = list(reward_names)
        self._steps: dict[int, list[QueryRollout]] = {}

    def resume(self, global_step: int) -> None:
        """Start (or resume) at `global_step`: files of later steps (written after the checkpoint a run resumes
        from) are removed, so the folder describes one run; earlier ones are read back for the page."""
        self._steps = {}
        for step, path in rollout_files(self.folder):
            if step > global_step:
                os.remove(path)
                for image in glob.glob(os.path.join(self.folder, "images", f"{step:05d}_*.png")):
                    os.remove(image)
            else:
                self._steps[step] = read_step(path)
        for step in sorted(self._steps)[:-HTML_STEPS]:
            del self._steps[step]

    def write(self, step: int, rollouts: list[QueryRollout]) -> list[dict[str, Any]]:
        """Write one step; returns its flat records (the parquet rows)."""
        import pandas as pd

        os.makedirs(os.path.join(self.folder, "images"), exist_ok=True)
        for q, rollout in enumerate(rollouts):
            rollout.step = step
            if rollout.image is not None:
                rollout.image_file = f"images/{step:05d}_{q}.png"
                rollout.image.save(os.path.join(self.folder, rollout.image_file))
        records = to_records(rollouts, self.reward_names)
        pd.DataFrame.from_records(records).to_parquet(
            os.path.join(self.folder, f"rollouts_{step:05d}.parquet")
        )
        self._steps[step] = rollouts
        for old in sorted(self._steps)[:-HTML_STEPS]:
            del self._steps[old]
        page = render_html(sorted(self._steps.items()), self.reward_names)
        with open(os.path.join(self.folder, "index.html"), "w", encoding="utf-8") as f:
            f.write(page)
        return records
