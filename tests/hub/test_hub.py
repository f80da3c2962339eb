"""Sharing and reusing results without a network: `clip_trl.hub.load_model`, `push_to_hub` with the Hub API
stubbed out, and loading pushed repositories back from a Hub cache laid out on disk with HF_HUB_OFFLINE=1."""

import json
import os
import re
import shutil
from pathlib import Path

import pytest
import torch
from huggingface_hub import ModelCard
from transformers import AutoModel, AutoProcessor, CLIPModel

from clip_trl import ClipContrastiveConfig, ClipContrastiveTrainer
from clip_trl.hub import load_model, local_hub
from clip_trl.offline import build_clip

BASE_REPO = "clip-trl-test/tiny-base"
FULL_REPO = "clip-trl-test/tiny-full"
ADAPTER_REPO = "clip-trl-test/tiny-lora"
CAPTIONS = ["grinning face", "red heart", "thumbs up"]


@pytest.fixture(scope="module")
def hub(tmp_path_factory, emoji):
    """A local Hub (`clip_trl.hub.local_hub`: offline, any download would raise) holding the base model as
    `BASE_REPO`, pushed there with `push_to_hub`; and two runs trained from that repo id: a full model and a
    LoRA adapter, each saved and pushed to it."""
    root = tmp_path_factory.mktemp("hub")
    with local_hub(root / "hub-cache") as local:
        model, processor = build_clip("tiny", seed=0, output_dir=root / "base")
        model.push_to_hub(BASE_REPO)
        processor.push_to_hub(BASE_REPO)

        runs = {}
        for name, repo, peft_config in (("full", FULL_REPO, None), ("adapter", ADAPTER_REPO, "lora")):
            if peft_config:
                from clip_trl.hub import default_lora_config

                peft_config = default_lora_config(r=4, dropout=0.0)
            args = ClipContrastiveConfig(
                output_dir=str(root / name),
                max_steps=2,
                per_device_train_batch_size=8,
                learning_rate=1e-2,
                report_to="none",
                save_strategy="no",
                logging_steps=1,
                use_cpu=True,
                seed=0,
                hub_model_id=repo,
            )
            trainer = ClipContrastiveTrainer(
                model=BASE_REPO,
                args=args,
                train_dataset=emoji["train"].select(range(16)),
                peft_config=peft_config,
            )
            trainer.train()
            trainer.push_to_hub(dataset_name="clip-trl-test/emoji")
            runs[name] = {"trainer": trainer, "folder": args.output_dir, "upload": local.commits[-1]}
        yield {"local": local, "root": root, "processor": processor, "uploads": local.commits, **runs}


def logits(model, processor, images):
    inputs = processor(text=CAPTIONS, images=images, return_tensors="pt", padding=True, truncation=True)
    with torch.no_grad():
        return model(**inputs).logits_per_image


@pytest.fixture(scope="module")
def images(emoji):
    return [emoji["test"][i]["image"] for i in range(4)]


def test_trainer_loads_model_and_processor_from_the_offline_cache(hub):
    trainer = hub["full"]["trainer"]
    assert isinstance(trainer.model, CLIPModel)
    assert trainer.model.config._name_or_path == BASE_REPO


def test_push_uploads_weights_processor_card_and_curves(hub):
    upload = hub["full"]["upload"]
    assert upload.repo_id == FULL_REPO and upload.folder == hub["full"]["folder"]
    files = set(upload.added)
    assert set(hub["local"].files(FULL_REPO)) == files
    assert {"config.json", "model.safetensors", "README.md", "training_curves.png"} <= files
    assert {"tokenizer.json", "tokenizer_config.json"} <= files
    assert files & {"processor_config.json", "preprocessor_config.json"}
    assert not any(f.startswith("adapter_") for f in files)

    card = ModelCard.load(os.path.join(upload.folder, "README.md"))
    assert card.data.base_model == BASE_REPO
    assert card.data.datasets == ["clip-trl-test/emoji"]
    assert card.data.library_name == "transformers"
    assert {"clip_trl", "contrastive"} <= set(card.data.tags)
    assert f'CLIPModel.from_pretrained("{FULL_REPO}")' in card.text


def test_push_of_an_adapter_uploads_the_adapter_not_the_model(hub):
    files = set(hub["adapter"]["upload"].added)
    assert {
        "adapter_config.json",
        "adapter_model.safetensors",
        "README.md",
        "training_curves.png",
        "tokenizer.json",
    } <= files
    assert "model.safetensors" not in files
    card = ModelCard.load(os.path.join(hub["adapter"]["folder"], "README.md"))
    assert card.data.library_name == "peft" and card.data.base_model == BASE_REPO
    assert f'PeftModel.from_pretrained(base, "{ADAPTER_REPO}")' in card.text
    with open(os.path.join(hub["adapter"]["folder"], "adapter_config.json")) as file:
        assert json.load(file)["base_model_name_or_path"] == BASE_REPO


def test_save_model_with_push_to_hub_pushes_once_with_the_card(hub, emoji):
    args = ClipContrastiveConfig(
        output_dir=str(hub["root"] / "auto-push"),
        push_to_hub=True,
        hub_model_id="clip-trl-test/auto-push",
        report_to="none",
        use_cpu=True,
    )
    trainer = ClipContrastiveTrainer(
        model=BASE_REPO, args=args, train_dataset=emoji["train"].select(range(16))
    )
    before = len(hub["uploads"])
    trainer.save_model()
    assert len(hub["uploads"]) == before + 1
    upload = hub["uploads"][-1]
    assert upload.repo_id == "clip-trl-test/auto-push" and upload.message == "Model save"
    assert {"README.md", "model.safetensors", "config.json"} <= set(upload.added)


def test_load_model_full_model_gives_identical_logits(hub, images):
    expected = logits(hub["full"]["trainer"].model.eval(), hub["processor"], images)
    model, processor = load_model(hub["full"]["folder"])
    assert type(model) is CLIPModel and not model.training
    torch.testing.assert_close(logits(model, processor, images), expected, rtol=0, atol=0)


@pytest.mark.parametrize("merge", [False, True])
def test_load_model_adapter_gives_identical_logits(hub, images, merge):
    from peft import PeftModel

    trained = hub["adapter"]["trainer"].model.eval()
    expected = logits(trained, hub["processor"], images)
    with trained.disable_adapter():
        assert not torch.allclose(logits(trained, hub["processor"], images), expected), (
            "the adapter did nothing"
        )
    model, processor = load_model(hub["adapter"]["folder"], merge=merge)
    if merge:
        assert type(model) is CLIPModel
        torch.testing.assert_close(logits(model, processor, images), expected, rtol=0, atol=1e-5)
    else:
        assert isinstance(model, PeftModel)
        torch.testing.assert_close(logits(model, processor, images), expected, rtol=0, atol=0)


def test_load_model_takes_the_processor_from_the_base_when_the_adapter_has_none(hub, tmp_path, images):
    folder = tmp_path / "bare-adapter"
    folder.mkdir()
    for name in ("adapter_config.json", "adapter_model.safetensors"):
        shutil.copy(os.path.join(hub["adapter"]["folder"], name), folder / name)
    model, processor = load_model(folder)
    assert (
        processor.tokenizer("red heart")["input_ids"] == hub["processor"].tokenizer("red heart")["input_ids"]
    )
    expected = logits(hub["adapter"]["trainer"].model.eval(), hub["processor"], images)
    torch.testing.assert_close(logits(model, processor, images), expected, rtol=0, atol=0)


def test_load_model_needs_a_base_for_an_adapter_that_names_none(hub, tmp_path):
    folder = tmp_path / "orphan"
    shutil.copytree(hub["adapter"]["folder"], folder)
    config_path = folder / "adapter_config.json"
    config = json.loads(config_path.read_text())
    config["base_model_name_or_path"] = None
    config_path.write_text(json.dumps(config))
    with pytest.raises(ValueError, match="base_model="):
        load_model(folder)
    model, _ = load_model(folder, base_model=hub["root"] / "base", merge=True)
    assert type(model) is CLIPModel


def test_pull_full_model_from_the_hub_cache_offline(hub, images):
    expected = logits(hub["full"]["trainer"].model.eval(), hub["processor"], images)
    model = AutoModel.from_pretrained(FULL_REPO)
    processor = AutoProcessor.from_pretrained(FULL_REPO)
    torch.testing.assert_close(logits(model, processor, images), expected, rtol=0, atol=0)
    model, processor = load_model(FULL_REPO)
    torch.testing.assert_close(logits(model, processor, images), expected, rtol=0, atol=0)


def test_pull_adapter_and_its_base_from_the_hub_cache_offline(hub, images):
    from peft import PeftModel

    expected = logits(hub["adapter"]["trainer"].model.eval(), hub["processor"], images)
    model, processor = load_model(ADAPTER_REPO)
    assert isinstance(model, PeftModel)
    torch.testing.assert_close(logits(model, processor, images), expected, rtol=0, atol=0)
    # What the card's quick start does, by hand.
    manual = PeftModel.from_pretrained(CLIPModel.from_pretrained(BASE_REPO), ADAPTER_REPO).eval()
    torch.testing.assert_close(
        logits(manual, AutoProcessor.from_pretrained(BASE_REPO), images), expected, rtol=0, atol=0
    )
    merged, processor = load_model(ADAPTER_REPO, merge=True)
    torch.testing.assert_close(logits(merged, processor, images), expected, rtol=0, atol=1e-5)


def test_an_unknown_repo_fails_offline_without_reaching_the_network(hub):
    with pytest.raises(OSError):
        load_model("clip-trl-test/not-in-the-cache")


def test_saved_tokenizer_config_records_no_loading_options(hub):
    """Loaded offline, transformers keeps `local_files_only=True` (and `is_local`) in the tokenizer's init
    kwargs; a save must not write them into the repository's tokenizer_config.json."""
    for name in ("full", "adapter"):
        config = json.loads(Path(hub[name]["folder"], "tokenizer_config.json").read_text())
        assert "local_files_only" not in config and "is_local" not in config, name
    _, processor = load_model(FULL_REPO)
    assert "local_files_only" not in processor.tokenizer.init_kwargs


def test_adapter_saves_warn_once_and_show_no_loading_bars(hub, emoji, tmp_path, recwarn, capsys):
    from clip_trl.hub import default_lora_config

    args = ClipContrastiveConfig(
        output_dir=str(tmp_path / "quiet"),
        max_steps=2,
        save_strategy="steps",
        save_steps=1,
        per_device_train_batch_size=8,
        report_to="none",
        use_cpu=True,
        disable_tqdm=True,
    )
    trainer = ClipContrastiveTrainer(
        model=str(hub["root"] / "base"),  # a local base: each save warns that others cannot load it
        args=args,
        train_dataset=emoji["train"].select(range(16)),
        peft_config=default_lora_config(r=2),
    )
    trainer.train()
    trainer.save_model()
    local = [w for w in recwarn if "names its base model by a local path" in str(w.message)]
    assert len(local) == 1, [str(w.message)[:80] for w in local]  # two checkpoints and the final save
    # Recorded by Hub id (as the docs advise), offline: peft cannot look the base's config up, and must not warn.
    trainer.model.peft_config["default"].base_model_name_or_path = BASE_REPO
    trainer.save_model()
    assert not [w for w in recwarn if "Could not find a config file" in str(w.message)]
    assert "Loading weights" not in capsys.readouterr().err
    model, _ = load_model(args.output_dir)  # the adapter's base, by Hub id, from the cache
    assert "Loading weights" not in capsys.readouterr().err


def test_docstring_examples_run(tmp_path, monkeypatch):
    import doctest

    from clip_trl.hub import loading, local

    monkeypatch.chdir(tmp_path)
    for module in (loading, local):
        result = doctest.testmod(module)
        assert result.attempted > 0 and result.failed == 0, module.__name__


def test_docs_rehearsal_of_push_and_pull_runs_as_written(tmp_path, monkeypatch, capsys):
    """docs/sharing.md's "Rehearse the round trip offline" block, executed as a user would, then checked."""
    page = (Path(__file__).resolve().parents[2] / "docs" / "sharing.md").read_text(encoding="utf-8")
    section = page.split("## Rehearse the round trip offline", 1)[1]
    code = re.search(r"```python\n(.*?)```", section, flags=re.DOTALL).group(1)
    monkeypatch.chdir(tmp_path)
    namespace = {}
    exec(compile(code, "docs/sharing.md", "exec"), namespace)
    assert "'adapter_config.json'" in capsys.readouterr().out
    hub = namespace["hub"]
    assert [commit.repo_id for commit in hub.commits] == ["your-name/tiny-clip"] * 2 + [
        "your-name/clip-emoji-lora"
    ]
    assert os.path.isfile(os.path.join(hub.repo_dir("your-name/clip-emoji-lora"), "refs", "main"))
    assert type(namespace["model"].get_base_model()).__name__ == "CLIPModel"
    # Outside the block the Hub is the real one again: nothing resolves from the local folder.
    assert not os.environ.get("HF_HUB_CACHE", "").startswith(str(tmp_path))
