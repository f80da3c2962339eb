"""OpenAI's CLIP tokenizer without a network: the vocabulary and merges rebuilt from OpenAI's
`bpe_simple_vocab_16e6.txt.gz` (MIT), which ships inside clip_trl (`clip_trl/offline/assets/`, with its license)."""

from __future__ import annotations

import functools
import gzip
import inspect
import json
import os
import tempfile
from pathlib import Path
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from transformers import PreTrainedTokenizerBase


BOS_TOKEN = "<|startoftext|>"


EOS_TOKEN = "<|endoftext|>"


_CLIP_BPE_FILENAME = "bpe_simple_vocab_16e6.txt.gz"


_CLIP_VOCAB_SIZE = 49408


_END_OF_WORD = "</w>"


# OpenAI's merges file (MIT, license beside it), shipped as package data.
CLIP_BPE_FILE = Path(__file__).parent / "assets" / _CLIP_BPE_FILENAME
"""OpenAI's CLIP BPE merges (MIT), shipped inside clip_trl beside its license."""


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
) -> PreTrainedTokenizerBase:
    """A transformers CLIP tokenizer with OpenAI's real BPE vocabulary, built without a network.

    The vocabulary (49,408 tokens) and merges are rebuilt from OpenAI's `bpe_simple_vocab_16e6.txt.gz`
    (MIT), which ships inside clip_trl ([`CLIP_BPE_FILE`]); the ids equal those of the tokenizer of
    `openai/clip-vit-base-patch32` ("a photo of a cat" -> `[49406, 320, 1125, 539, 320, 2368, 49407]`).
    `<|startoftext|>` is the BOS token and `<|endoftext|>` the EOS, padding and unknown token, as in
    OpenAI CLIP.

    Args:
        model_max_length (`int`, *optional*, defaults to 77):
            Longest sequence, in tokens, including BOS and EOS; CLIP's text tower has 77 positions.
        bpe_path (`str` or `os.PathLike`, *optional*):
            Path to a `bpe_simple_vocab_16e6.txt.gz`; by default clip_trl's own copy. A path given here must exist.

    Returns:
        [`~transformers.PreTrainedTokenizerBase`]: a `CLIPTokenizer` (backed by `tokenizers`).

    Raises:
        FileNotFoundError: the merges file does not exist (a `bpe_path` given, or an installation that lost
            clip_trl's own copy).
    """
    path = Path(bpe_path) if bpe_path is not None else CLIP_BPE_FILE
    if not path.is_file():
        where = "" if bpe_path is not None else " (it ships inside clip_trl: reinstall clip_trl)"
        raise FileNotFoundError(f"CLIP BPE merges file not found: {path}{where}")
    vocab, merges = _openai_bpe(str(path))
    # Built anew on every call from the cached vocabulary: a tokenizer is mutable (`add_tokens`),
    # so handing out one shared instance would leak changes between callers.
    return _make_clip_tokenizer(vocab, merges, model_max_length)
