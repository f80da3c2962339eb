"""The console table of the RL rollouts (`ClipRLConfig(log_rollouts=True)`, with `rich` installed): one step's
rollouts as a `rich` table that fits the terminal's width; the other tables are in [`clip_trl.reporting.rollouts`].
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

from clip_trl.reporting.rollouts import CHOICES_SHOWN, QueryRollout, _format


def _text(cell: str | tuple[str, str]) -> str:
    return "".join(cell) if isinstance(cell, tuple) else cell


def _fit(text: str | tuple[str, str], width: int) -> str:
    """`text` cut to `width` columns at a word boundary, with an ellipsis (a single long word is cut); a
    `(text, suffix)` pair keeps its suffix whole."""
    if isinstance(text, tuple):
        return _fit(text[0], width - len(text[1])) + text[1]
    if len(text) <= width:
        return text
    cut = text[: max(width - 1, 0)]
    space = cut.rfind(" ")
    if text[len(cut)] != " " and space >= width // 2:  # a word runs past the cut: end before it
        cut = cut[:space]
    return cut.rstrip(" ;,") + "…"


def _share(natural: Sequence[int], room: int, least: int = 8) -> list[int]:
    """Column widths that fit `room`: each column its natural width when all fit, otherwise equal shares, the
    room a narrow column leaves going to the wider ones (never under `least`)."""
    widths, left, open_ = [0] * len(natural), room, sorted(range(len(natural)), key=lambda i: natural[i])
    while open_:
        share = max(left // len(open_), least)
        i = open_.pop(0)
        widths[i] = min(natural[i], share) if natural[i] <= share else share
        left -= widths[i]
    return widths


_LEAST_TEXT = 12  # columns a text column gets at the least before the per-function rewards give way


def _rows(rollouts: Sequence[QueryRollout], reward_names: Sequence[str]) -> list[list[Any]]:
    """Per query, its ground truth and most likely candidate, then one row per distinct choice (shown ones)."""
    rows = []
    for rollout in rollouts:
        ((best, best_prob),) = rollout.top_candidates(1)
        for i, choice in enumerate(rollout.choices[: CHOICES_SHOWN["text"]]):
            first = i == 0
            rows.append(
                [
                    (rollout.query or rollout.ground_truth or "–") if first else "",
                    (best, f" ({best_prob:.2f})") if first else "",  # the probability is never cut off
                    f"{choice.count}× {choice.text}",
                    _format(choice.prob, 2),
                    *[_format(choice.rewards.get(name), 2) for name in reward_names],
                    _format(choice.reward, 2),
                    _format(choice.advantage, 2),
                ]
            )
    return rows


def print_rollouts(
    rollouts: Sequence[QueryRollout], step: int, reward_names: Sequence[str], width: int | None = None
) -> None:
    """A `rich` console table of one step's rollouts (like TRL's `print_prompt_completions_sample`): per query,
    its ground truth and most likely candidate, then one line per distinct choice with `π`, each reward function's
    value, the weighted reward and the advantage `A`.

    The table fits `width` columns (default: the terminal's, `shutil.get_terminal_size()`: `$COLUMNS`, else the
    terminal, else 80): the numbers keep their width, the three text columns share the rest, and a text that does
    not fit is cut at a word boundary with an ellipsis (never wrapped, never split inside a word). When that would
    leave a text column under 12 characters, the per-function reward columns are left out (the title says so;
    the files keep them)."""
    import shutil

    from rich.console import Console
    from rich.panel import Panel
    from rich.table import Table

    width = width or shutil.get_terminal_size().columns
    texts = ["ground truth", "most likely (π)", "chosen"]
    rows = _rows(rollouts, reward_names)
    title = f"Rollouts at step {step}"
    for shown in (list(reward_names), []):
        drop = [len(texts) + 1 + i for i, name in enumerate(reward_names) if name not in shown]
        headers = [*texts, "π", *shown, "reward", "A"]
        kept = [[cell for c, cell in enumerate(row) if c not in drop] for row in rows]
        natural = [
            max([len(header)] + [len(_text(row[c])) for row in kept]) for c, header in enumerate(headers)
        ]
        numbers = natural[len(texts) :]
        # Each column takes 3 more (padding and its border), the table 1, the panel 4 (borders and padding).
        room = width - 4 - (3 * len(headers) + 1) - sum(numbers)
        if room >= _LEAST_TEXT * len(texts) or not shown:
            break
    if len(shown) < len(reward_names):
        title += " (rewards per function: in the rollouts folder)"
    # On a very narrow console the text columns share what is left, so that the numbers still show.
    text_widths = _share(natural[: len(texts)], room, max(4, min(_LEAST_TEXT, room // len(texts))))
    widths = text_widths + numbers
    table = Table(show_lines=True)
    for c, header in enumerate(headers):
        numeric = c >= len(texts)
        table.add_column(
            _fit(header, widths[c]),
            width=widths[c],
            no_wrap=True,
            overflow="ellipsis",
            justify="right" if numeric else "left",
        )
    for row in kept:
        table.add_row(*[cell if c >= len(texts) else _fit(cell, widths[c]) for c, cell in enumerate(row)])
    Console(width=width).print(Panel(table, title=_fit(title, width - 6), expand=False))
