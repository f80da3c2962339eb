"""What a test-time adaptation run returns and writes: [`TestTimeResult`], the error that keeps what was predicted
([`TestTimeAdaptationError`]), `predictions.jsonl` written as inputs are predicted, and the run's report."""

from __future__ import annotations

import json
import os
from dataclasses import asdict, dataclass, field
from typing import Any

__all__ = ["TestTimeAdaptationError", "TestTimeResult", "write_report"]


@dataclass
class TestTimeResult:
    """The outcome of [`~clip_trl.adaptation.ClipTestTimeAdapter.adapt`].

    Attributes:
        predictions (`list[dict]`): one per predicted input, in stream order: `index` (its position in the
            stream), `prediction` (the chosen label, or candidate text), `candidate` (its index) and
            `probability` (the adapted model's softmax probability of it over every candidate).
        skipped (`list[dict]`): inputs left out (`on_bad_image="skip"`): `index` and `reason`.
        stats (`dict`): `inputs`, `seconds` (adaptation and prediction, this process), `seconds_per_input`,
            `reward_calls` (reward-function calls plus teacher image passes) and `reward_calls_per_input`,
            `steps_per_input`, `processes`.
        settings (`dict`): the [`ClipTestTimeConfig`] of the run.
    """

    __test__ = False  # not a pytest test class

    predictions: list[dict[str, Any]] = field(default_factory=list)
    skipped: list[dict[str, Any]] = field(default_factory=list)
    stats: dict[str, Any] = field(default_factory=dict)
    settings: dict[str, Any] = field(default_factory=dict)

    @property
    def labels(self) -> list[str]:
        """The predicted label of each predicted input, in stream order."""
        return [p["prediction"] for p in self.predictions]

    def accuracy(self, truth: list[str]) -> float:
        """The share of predicted inputs whose prediction equals `truth[index]` (the labels of the whole stream)."""
        if not self.predictions:
            return float("nan")
        return sum(p["prediction"] == truth[p["index"]] for p in self.predictions) / len(self.predictions)

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


class TestTimeAdaptationError(RuntimeError):
    """An input of the stream could not be adapted or predicted (its reward raised, its image did not decode).

    Attributes:
        index (`int`): the input's position in the stream.
        result ([`TestTimeResult`]): everything predicted before it (also in `predictions.jsonl` when an
            `output_dir` was set).
    """

    __test__ = False

    def __init__(self, message: str, index: int, result: TestTimeResult) -> None:
        super().__init__(message)
        self.index = index
        self.result = result

    @property
    def predictions(self) -> list[dict[str, Any]]:
        """The predictions made before the failing input."""
        return self.result.predictions


def predictions_file(output_dir: str, rank: int, world: int) -> str:
    """`predictions.jsonl`, or `predictions-rank{r}.jsonl` under several processes (each writes its own)."""
    return os.path.join(output_dir, "predictions.jsonl" if world == 1 else f"predictions-rank{rank}.jsonl")


def _markdown(result: TestTimeResult) -> str:
    settings, stats = result.settings, result.stats
    keys = ("mode", "objective", "adapt_parameters", "steps", "learning_rate", "top_k", "advantage")
    keys += ("num_samples", "n_views", "selection_fraction", "batch_size", "ema_decay", "reset_every", "seed")
    lines = [
        "# Test-time adaptation report",
        "",
        f"{stats.get('inputs', 0)} inputs predicted, {len(result.skipped)} skipped, on "
        f"{stats.get('processes', 1)} process(es).",
        "",
        "| setting | value |",
        "| --- | --- |",
        *(f"| `{key}` | `{settings.get(key)}` |" for key in keys),
        f"| rewards | {', '.join(stats.get('rewards', [])) or '-'} |",
        "",
        "| cost | value |",
        "| --- | --- |",
        *(
            f"| {key} | {stats[key]:.4g} |"
            for key in ("seconds", "seconds_per_input", "reward_calls_per_input", "steps_per_input")
            if isinstance(stats.get(key), (int, float))
        ),
    ]
    if stats.get("label_counts"):
        lines += ["", "| predicted label | inputs |", "| --- | --- |"]
        lines += [f"| {label} | {count} |" for label, count in stats["label_counts"].items()]
    if result.skipped:
        lines += ["", "Skipped inputs:", ""] + [f"- {s['index']}: {s['reason']}" for s in result.skipped]
    return "\n".join(lines) + "\n"


def write_report(result: TestTimeResult, output_dir: str) -> list[str]:
    """Write `adaptation_report.json` (everything but the predictions, which are in `predictions.jsonl`) and
    `adaptation_report.md` into `output_dir`; returns their paths."""
    os.makedirs(output_dir, exist_ok=True)
    counts: dict[str, int] = {}
    for p in result.predictions:
        counts[p["prediction"]] = counts.get(p["prediction"], 0) + 1
    result.stats["label_counts"] = dict(sorted(counts.items(), key=lambda item: -item[1]))
    paths = [
        os.path.join(output_dir, "adaptation_report.json"),
        os.path.join(output_dir, "adaptation_report.md"),
    ]
    summary = {"stats": result.stats, "skipped": result.skipped, "settings": result.settings}
    with open(paths[0], "w") as handle:
        json.dump(summary, handle, indent=2, default=str)
    with open(paths[1], "w") as handle:
        handle.write(_markdown(result))
    return paths
