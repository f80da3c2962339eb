"""What the trainers save loads in the rest of the ecosystem and predicts what the library predicts.

Every saved kind (a contrastive full model, an RL full model, a LoRA adapter, a SigLIP model) is loaded from its
folder by transformers' `pipeline("zero-shot-image-classification")`, by peft (adapters) and by
sentence-transformers, and compared with the library's own embeddings (`clip_trl.models.encoding`), which the
evaluation uses: the same top-1 label per image, and the same embeddings."""

import pytest
import torch
from PIL import Image

from clip_trl import ClipContrastiveConfig, ClipContrastiveTrainer, ClipRLConfig, ClipRLTrainer
from clip_trl.hub import default_lora_config, load_model
from clip_trl.models.encoding import embed_images, embed_texts
from clip_trl.offline import build_siglip

LABELS = [
    "grinning face",
    "red heart",
    "thumbs up",
    "a small dog",
    "a very long caption about a bright sunny day",
]
COMMON = dict(
    max_steps=2, per_device_train_batch_size=8, learning_rate=1e-2, report_to="none", save_strategy="no"
)
COMMON.update(use_cpu=True, seed=0, disable_tqdm=True)


def _opaque(image: Image.Image) -> Image.Image:
    """Composited onto white, so that the pipeline's RGB conversion and the library's agree (see docs/sharing.md)."""
    image = image.convert("RGBA")
    background = Image.new("RGBA", image.size, (255, 255, 255, 255))
    return Image.alpha_composite(background, image).convert("RGB")


@pytest.fixture(scope="module")
def saved(tmp_path_factory, _tiny_once, emoji):
    """One folder per saved kind, each trained for two steps from the tiny CLIP (or the tiny SigLIP)."""
    import copy

    root = tmp_path_factory.mktemp("interop")
    base, processor = _tiny_once
    train = emoji["train"].select(range(16))
    base.save_pretrained(root / "base")
    processor.save_pretrained(root / "base")
    folders = {"base": root / "base"}
    for kind, peft_config in (("contrastive", None), ("lora", default_lora_config(r=4, dropout=0.0))):
        args = ClipContrastiveConfig(output_dir=str(root / kind), **COMMON)
        trainer = ClipContrastiveTrainer(
            model=copy.deepcopy(base),
            args=args,
            train_dataset=train,
            processing_class=processor,
            peft_config=peft_config,
        )
        trainer.train()
        trainer.save_model()
        folders[kind] = root / kind
    rl = ClipRLTrainer(
        model=copy.deepcopy(base),
        reward_funcs=["correctness"],
        args=ClipRLConfig(output_dir=str(root / "rl"), **COMMON),
        train_dataset=train,
        processing_class=processor,
    )
    rl.train()
    rl.save_model()
    folders["rl"] = root / "rl"
    siglip, siglip_processor = build_siglip("tiny")
    trainer = ClipContrastiveTrainer(
        model=siglip,
        args=ClipContrastiveConfig(output_dir=str(root / "siglip"), loss_type="siglip", **COMMON),
        train_dataset=train,
        processing_class=siglip_processor,
    )
    trainer.train()
    trainer.save_model()
    folders["siglip"] = root / "siglip"
    images = [_opaque(emoji["test"][i]["image"]) for i in range(6)]
    return folders, images


KINDS = ["contrastive", "rl", "lora", "siglip"]


def _library(folders, kind):
    """The library's own view of a saved folder: its model (with the adapter on its base) and processor."""
    base = {"base_model": str(folders["base"])} if kind == "lora" else {}
    model, processor = load_model(str(folders[kind]), **base)
    return model.eval(), processor


@pytest.mark.parametrize("kind", KINDS)
def test_zero_shot_pipeline_ranks_labels_as_the_library_does(saved, kind):
    from transformers import pipeline

    folders, images = saved
    model, processor = _library(folders, kind)
    scores = embed_images(model, processor, images) @ embed_texts(model, processor, LABELS).T
    # The whole ranking of the labels per image, not only the top-1 (a random tiny model may pick one label).
    ours = [[LABELS[i] for i in row] for row in scores.argsort(dim=1, descending=True).tolist()]
    # transformers' pipeline takes a model object (an adapter loaded through peft, merged) or a folder.
    classifier = pipeline(
        "zero-shot-image-classification",
        model=model.merge_and_unload() if kind == "lora" else str(folders[kind]),
        image_processor=processor.image_processor,
        tokenizer=processor.tokenizer,
        device="cpu",
    )
    results = classifier(images, candidate_labels=LABELS, hypothesis_template="{}")
    theirs = [[entry["label"] for entry in result] for result in results]
    assert theirs == ours


def test_peft_loads_the_adapter_onto_the_base_with_the_library_s_embeddings(saved, _tiny_once):
    import copy

    from peft import PeftModel

    folders, images = saved
    model, processor = _library(folders, "lora")
    adapted = PeftModel.from_pretrained(copy.deepcopy(_tiny_once[0]), str(folders["lora"])).eval()
    torch.testing.assert_close(
        embed_images(adapted, processor, images), embed_images(model, processor, images)
    )
    torch.testing.assert_close(embed_texts(adapted, processor, LABELS), embed_texts(model, processor, LABELS))


@pytest.mark.parametrize("kind", ["contrastive", "rl", "siglip"])
def test_sentence_transformers_embeds_like_the_library(saved, kind):
    from sentence_transformers import SentenceTransformer

    folders, images = saved
    model, processor = _library(folders, kind)
    encoder = SentenceTransformer(str(folders[kind]), device="cpu")
    if kind == "siglip":
        # sentence-transformers pads text to the batch's longest; SigLIP needs its full length (docs/sharing.md).
        length = model.config.text_config.max_position_embeddings
        encoder[0].processing_kwargs = {"text": {"padding": "max_length", "max_length": length}}
    theirs_text = torch.as_tensor(encoder.encode(LABELS, normalize_embeddings=True))
    theirs_image = torch.as_tensor(encoder.encode(images, normalize_embeddings=True))
    torch.testing.assert_close(theirs_text, embed_texts(model, processor, LABELS), atol=1e-5, rtol=1e-4)
    torch.testing.assert_close(theirs_image, embed_images(model, processor, images), atol=1e-5, rtol=1e-4)
