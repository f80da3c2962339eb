import os

import pytest
from clip_test_utils import colour_dataset, png_bytes
from PIL import Image

from clip_trl import ClipContrastiveConfig, ClipContrastiveTrainer
from clip_trl.inference.rerank import generate_candidates, rerank
from clip_trl.offline import build_clip

COLOURS = {
    "red": (220, 30, 30),
    "green": (30, 180, 40),
    "blue": (30, 60, 220),
    "yellow": (240, 220, 20),
    "black": (10, 10, 10),
    "white": (250, 250, 250),
    "purple": (140, 40, 170),
    "orange": (250, 140, 20),
}


def colour_data():
    captions = [f"a {name} square" for name in COLOURS]
    images = [{"bytes": png_bytes(rgb), "path": None} for rgb in COLOURS.values()]
    return colour_dataset(captions, images)


def top1_accuracy(model, processor, data):
    """How often reranking all captions puts each image's own caption first."""
    captions = data["caption"]
    ranked = rerank(data["image"], [captions] * len(captions), model, processor)
    return sum(options[0][0] == truth for options, truth in zip(ranked, captions)) / len(captions)


def test_rerank_sorts_every_candidate_list_by_score(tiny):
    model, processor = tiny
    images = [Image.new("RGB", (40, 40), "red"), Image.new("RGBA", (20, 20), (0, 0, 255, 100))]
    candidates = [["a red square", "a cat", "a blue square"], ["a dog", "a blue square"]]
    ranked = rerank(images, candidates, model, processor, batch_size=1)
    assert [sorted(c for c, _ in options) for options in ranked] == [sorted(c) for c in candidates]
    for options in ranked:
        scores = [score for _, score in options]
        assert scores == sorted(scores, reverse=True)
    # One shared list works too, and scores do not depend on the batching.
    shared = rerank(images, ["a red square", "a dog"], model, processor, batch_size=2)
    assert [len(options) for options in shared] == [2, 2]
    alone = dict(rerank(images[:1], [["a red square", "a dog"]], model, processor)[0])
    assert dict(shared[0]) == pytest.approx(alone, abs=1e-4)


def test_rerank_candidates_from_a_column_and_from_a_model_folder(tmp_path, emoji):
    model, processor = build_clip("tiny", output_dir=tmp_path / "clip")
    rows = emoji["test"].select(range(4))
    # A candidate column, as an offline stand-in for a captioner's samples: the caption and three others.
    column = [[rows[i]["caption"]] + [rows[(i + j) % 4]["caption"] for j in (1, 2, 3)] for i in range(4)]
    from_path = rerank(rows["image"], column, str(tmp_path / "clip"))
    from_object = rerank(rows["image"], column, model, processor)
    assert [[c for c, _ in r] for r in from_path] == [[c for c, _ in r] for r in from_object]
    assert all(len(options) == 4 for options in from_path)


def test_rerank_rejects_mismatched_inputs(tiny):
    model, processor = tiny
    image = Image.new("RGB", (8, 8))
    with pytest.raises(ValueError, match="2 candidate lists for 1 images"):
        rerank([image], [["a"], ["b"]], model, processor)
    with pytest.raises(ValueError, match="Image 0 has no candidate captions"):
        rerank([image], [[]], model, processor)


def test_reranking_finds_the_right_caption_more_often_after_fine_tuning(tmp_path, tiny):
    model, processor = tiny
    data = colour_data()
    before = top1_accuracy(model, processor, data)
    args = ClipContrastiveConfig(
        output_dir=str(tmp_path / "out"),
        per_device_train_batch_size=len(data),
        learning_rate=2e-3,
        max_steps=30,
        report_to="none",
        save_strategy="no",
        logging_steps=100,
        seed=0,
        use_cpu=True,
    )
    ClipContrastiveTrainer(model=model, args=args, train_dataset=data, processing_class=processor).train()
    after = top1_accuracy(model, processor, data)
    assert after >= 0.75, (before, after)
    assert after > before, (before, after)


def tiny_blip(tmp_path):
    """A random tiny BLIP captioner and a processor built without a network (a 20-word BERT vocabulary)."""
    from transformers import BertTokenizer, BlipConfig, BlipForConditionalGeneration, BlipProcessor

    try:
        from transformers import BlipImageProcessorPil as image_processor_class
    except ImportError:
        from transformers import BlipImageProcessor as image_processor_class

    words = [
        "[PAD]",
        "[UNK]",
        "[CLS]",
        "[SEP]",
        "[MASK]",
        "[DEC]",
        "a",
        "photo",
        "of",
        "the",
        "red",
        "blue",
        "green",
        "square",
        "circle",
        "cat",
        "dog",
        "on",
        "table",
        "small",
    ]
    vocab = tmp_path / "vocab.txt"
    vocab.write_text("\n".join(words) + "\n")
    tokenizer = BertTokenizer(str(vocab), bos_token="[DEC]")
    processor = BlipProcessor(
        image_processor=image_processor_class(size={"height": 32, "width": 32}), tokenizer=tokenizer
    )
    ids = {
        "bos_token_id": tokenizer.bos_token_id,
        "sep_token_id": tokenizer.sep_token_id,
        "eos_token_id": tokenizer.sep_token_id,
        "pad_token_id": tokenizer.pad_token_id,
    }
    config = BlipConfig(
        text_config={
            "vocab_size": len(tokenizer),
            "hidden_size": 32,
            "intermediate_size": 64,
            "num_hidden_layers": 1,
            "num_attention_heads": 2,
            "encoder_hidden_size": 32,
            "max_position_embeddings": 40,
            **ids,
        },
        vision_config={
            "hidden_size": 32,
            "intermediate_size": 64,
            "num_hidden_layers": 1,
            "num_attention_heads": 2,
            "image_size": 32,
            "patch_size": 8,
        },
        projection_dim=32,
    )
    return BlipForConditionalGeneration(config), processor


def test_generate_candidates_returns_n_captions_per_image(tmp_path, tiny):
    from transformers import set_seed

    captioner, blip_processor = tiny_blip(tmp_path)
    images = [
        Image.new("RGB", (40, 40), "red"),
        {"bytes": png_bytes((0, 0, 255, 90), "RGBA"), "path": None},
        Image.new("L", (10, 10), 128),
    ]
    set_seed(0)
    candidates = generate_candidates(
        images, captioner, num_candidates=4, processor=blip_processor, batch_size=2, max_new_tokens=6
    )
    assert len(candidates) == 3
    assert all(len(options) == 4 and all(isinstance(c, str) for c in options) for options in candidates)
    assert len({c for options in candidates for c in options}) > 1  # sampled, not one caption repeated
    prompted = generate_candidates(
        images[:1],
        captioner,
        num_candidates=2,
        processor=blip_processor,
        prompt="a photo of",
        max_new_tokens=4,
    )
    assert all(c.startswith("a photo of") for c in prompted[0])
    # The candidates go straight into rerank.
    model, processor = tiny
    ranked = rerank(images, candidates, model, processor)
    assert [len(options) for options in ranked] == [4, 4, 4]


def test_generate_candidates_loads_a_saved_captioner(tmp_path):
    captioner, blip_processor = tiny_blip(tmp_path)
    folder = os.fspath(tmp_path / "blip")
    captioner.save_pretrained(folder)
    blip_processor.save_pretrained(folder)
    candidates = generate_candidates(
        [Image.new("RGB", (32, 32), "blue")], folder, num_candidates=3, max_new_tokens=4
    )
    assert len(candidates) == 1 and len(candidates[0]) == 3
