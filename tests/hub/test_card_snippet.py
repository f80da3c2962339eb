"""The model card's usage snippets run as written: a run is pushed to a local Hub (`clip_trl.hub.local_hub`,
offline), and the Python blocks of the pushed README.md are executed, as a user who copies them would —
full model and LoRA adapter, CLIP and SigLIP."""

import contextlib
import io
import os
import re
import warnings

import pytest
import torch
from PIL import Image
from tokenizers import Tokenizer, models, normalizers, pre_tokenizers
from transformers import (
    PreTrainedTokenizerFast,
    SiglipConfig,
    SiglipImageProcessor,
    SiglipModel,
    SiglipProcessor,
)

from clip_trl import ClipContrastiveConfig, ClipContrastiveTrainer
from clip_trl.hub import default_lora_config, local_hub
from clip_trl.offline import build_clip

WORDS = ["</s>", "<unk>", "a", "photo", "of", "cat", "dog", "grinning", "face", "red", "heart", "."]


def tiny_siglip():
    """A tiny random `SiglipModel` and a `SiglipProcessor`. SigLIP's own tokenizer is SentencePiece, which needs
    the sentencepiece package and a model file that cannot be had offline, so the processor holds a word-level
    tokenizer built with `tokenizers` (saved as `tokenizer.json`; `AutoProcessor` loads it back)."""
    tokenizer = Tokenizer(models.WordLevel({word: i for i, word in enumerate(WORDS)}, unk_token="<unk>"))
    tokenizer.normalizer = normalizers.Lowercase()
    tokenizer.pre_tokenizer = pre_tokenizers.WhitespaceSplit()
    fast = PreTrainedTokenizerFast(
        tokenizer_object=tokenizer, pad_token="</s>", eos_token="</s>", unk_token="<unk>", model_max_length=16
    )
    tower = dict(hidden_size=32, intermediate_size=64, num_hidden_layers=1, num_attention_heads=2)
    config = SiglipConfig(
        text_config=dict(
            vocab_size=len(WORDS),
            max_position_embeddings=16,
            pad_token_id=0,
            bos_token_id=0,
            eos_token_id=0,
            **tower,
        ),
        vision_config=dict(image_size=32, patch_size=8, **tower),
    )
    torch.manual_seed(0)
    processor = SiglipProcessor(
        image_processor=SiglipImageProcessor(size={"height": 32, "width": 32}), tokenizer=fast
    )
    return SiglipModel(config), processor


def python_blocks(markdown):
    return re.findall(r"```python\n(.*?)```", markdown, flags=re.DOTALL)


@pytest.fixture(scope="module")
def pushed(tmp_path_factory, emoji):
    """Bases pushed to a local Hub, then four runs trained from their ids and pushed; yields inside the Hub."""
    root = tmp_path_factory.mktemp("card-snippet")
    with local_hub(root / "hub") as hub:
        for name, (model, processor) in {"clip": build_clip("tiny", seed=0), "siglip": tiny_siglip()}.items():
            model.push_to_hub(f"org/tiny-{name}")
            processor.push_to_hub(f"org/tiny-{name}")
        runs = {}
        for arch in ("clip", "siglip"):
            for kind in ("full", "adapter"):
                args = ClipContrastiveConfig(
                    output_dir=str(root / f"{arch}-{kind}"),
                    hub_model_id=f"org/{arch}-{kind}",
                    max_steps=1,
                    per_device_train_batch_size=4,
                    report_to="none",
                    save_strategy="no",
                    use_cpu=True,
                    seed=0,
                )
                trainer = ClipContrastiveTrainer(
                    model=f"org/tiny-{arch}",
                    args=args,
                    train_dataset=emoji["train"].select(range(4)),
                    peft_config=default_lora_config(r=2, dropout=0.0) if kind == "adapter" else None,
                )
                trainer.train()
                trainer.push_to_hub()
                runs[arch, kind] = trainer
        yield hub, runs, root


@pytest.mark.parametrize("arch", ["clip", "siglip"])
@pytest.mark.parametrize("kind", ["full", "adapter"])
def test_the_cards_python_blocks_run_as_written(pushed, arch, kind, tmp_path, monkeypatch, emoji):
    hub, runs, _ = pushed
    repo = f"org/{arch}-{kind}"
    with open(os.path.join(hub.snapshot(repo), "README.md"), encoding="utf-8") as file:
        card = file.read()
    quick_start, with_clip_trl = python_blocks(card)[:2]
    assert "<base model" not in quick_start
    if kind == "adapter":
        assert f'from_pretrained("org/tiny-{arch}")' in quick_start  # the base, from adapter_config.json
    if arch == "siglip":
        assert 'padding="max_length"' in quick_start

    monkeypatch.chdir(tmp_path)
    image = emoji["test"][0]["image"].convert("RGBA").convert("RGB")  # via RGBA: no PIL palette warning
    image.save("photo.jpg")
    namespace = {}
    with contextlib.redirect_stdout(io.StringIO()) as out, warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        exec(compile(quick_start, "card quick start", "exec"), namespace)
    # transformers warns "`max_length` is ignored when `padding`=`True`" for a processor that carries a max_length.
    assert not [str(w.message) for w in caught if "max_length" in str(w.message)]
    printed = eval(out.getvalue().strip().splitlines()[-1])
    labels = namespace["labels"]
    assert list(printed) == labels

    # The snippet's model is the trained one: same probabilities as the trainer's model on the same inputs.
    trained = runs[arch, kind].model.eval()
    processor = namespace["processor"]
    inputs = processor(
        text=labels,
        images=Image.open("photo.jpg").convert("RGB"),
        return_tensors="pt",
        padding="max_length" if arch == "siglip" else True,
        truncation=True,
    )
    with torch.no_grad():
        logits = trained(**inputs).logits_per_image[0]
    expected = torch.sigmoid(logits) if arch == "siglip" else logits.softmax(-1)
    assert list(printed.values()) == [round(p, 3) for p in expected.tolist()]

    namespace = {}
    exec(compile(with_clip_trl, "card load_model", "exec"), namespace)
    assert type(
        namespace["model"].get_base_model() if kind == "adapter" else namespace["model"]
    ).__name__ == ("SiglipModel" if arch == "siglip" else "CLIPModel")


def test_the_snippets_composite_line_puts_transparency_on_white_as_the_processor_does():
    from transformers.image_transforms import convert_to_rgb

    from clip_trl.hub.card_snippet import COMPOSITE_ON_WHITE

    image = Image.new("RGBA", (4, 4), (0, 0, 0, 0))  # fully transparent (black under the alpha)
    image.putpixel((0, 0), (200, 10, 10, 255))
    image.putpixel((1, 0), (0, 0, 200, 128))
    namespace = {"Image": Image, "image": image}
    exec(COMPOSITE_ON_WHITE, namespace)
    composited = namespace["image"]
    assert composited.mode == "RGB" and composited.getpixel((3, 3)) == (255, 255, 255)
    assert list(composited.getdata()) == list(convert_to_rgb(image, return_numpy=False).getdata())
    assert image.convert("RGB").getpixel((3, 3)) == (0, 0, 0)  # what a pipeline's plain convert gives
