"""LoRA through `peft_config`: only the adapters train, the saved adapter is small, the RL reference policy is
the base model (adapters disabled), and misuse fails clearly."""

import copy
import os

import pytest
import torch

from clip_trl import ClipContrastiveConfig, ClipContrastiveTrainer, ClipRLConfig, ClipRLTrainer
from clip_trl.hub import default_lora_config
from clip_trl.models.modeling import encode_pair, logit_scale

COMMON = dict(
    per_device_train_batch_size=8,
    learning_rate=1e-2,
    max_steps=2,
    report_to="none",
    save_strategy="no",
    logging_steps=1,
    seed=0,
    use_cpu=True,
)


def contrastive(tmp_path, model, processor, train, peft_config=None, **overrides):
    args = ClipContrastiveConfig(output_dir=str(tmp_path / "contrastive"), **{**COMMON, **overrides})
    return ClipContrastiveTrainer(
        model=model, args=args, train_dataset=train, processing_class=processor, peft_config=peft_config
    )


def base_weights(peft_model):
    """The base model's own tensors under their original names (LoRA layers keep them as `base_layer`)."""
    state = peft_model.get_base_model().state_dict()
    return {name.replace(".base_layer", ""): tensor for name, tensor in state.items() if "lora_" not in name}


def lora_weights(peft_model):
    return {name: p.detach().clone() for name, p in peft_model.named_parameters() if "lora_" in name}


def assert_only_adapters_moved(peft_model, before_base, before_lora):
    after = base_weights(peft_model)
    assert after.keys() == before_base.keys()
    changed = [name for name, tensor in after.items() if not torch.equal(tensor, before_base[name])]
    assert changed == [], f"base weights changed: {changed[:5]}"
    after_lora = lora_weights(peft_model)
    assert after_lora.keys() == before_lora.keys() and after_lora
    unchanged = [name for name, tensor in after_lora.items() if torch.equal(tensor, before_lora[name])]
    assert unchanged == [], f"LoRA weights that did not train: {unchanged[:5]}"


def test_default_lora_config_adapts_both_towers(tiny):
    from peft import LoraConfig, get_peft_model

    config = default_lora_config()
    assert isinstance(config, LoraConfig)
    assert config.target_modules is None  # the trainers resolve it for the model they wrap
    assert (config.r, config.lora_alpha, config.lora_dropout) == (16, 32, 0.05)
    assert default_lora_config(target_modules=["q_proj", "k_proj"]).target_modules == {"q_proj", "k_proj"}
    assert default_lora_config(target_modules=r".*\.q_proj").target_modules == r".*\.q_proj"  # peft's regex
    model = get_peft_model(tiny[0], default_lora_config(r=4, dropout=0.0, model=tiny[0]))
    adapted = {name.split(".lora_A")[0] for name, _ in model.named_parameters() if ".lora_A." in name}
    assert any("vision_model" in name for name in adapted) and any("text_model" in name for name in adapted)
    assert all(name.endswith(("q_proj", "v_proj")) for name in adapted)


def test_contrastive_lora_trains_only_the_adapters(tmp_path, tiny, emoji):
    model, processor = tiny
    reference = {name: tensor.clone() for name, tensor in model.state_dict().items()}
    trainer = contrastive(tmp_path, model, processor, emoji["train"].select(range(16)), default_lora_config())
    before_lora = lora_weights(trainer.model)
    assert base_weights(trainer.model).keys() == reference.keys()
    trainer.train()
    assert_only_adapters_moved(trainer.model, reference, before_lora)


def test_rl_lora_trains_only_the_adapters_and_its_reference_is_the_base_policy(tmp_path, tiny, emoji):
    model, processor = tiny
    untouched = copy.deepcopy(model).eval()
    reference = {name: tensor.clone() for name, tensor in model.state_dict().items()}
    args = ClipRLConfig(output_dir=str(tmp_path / "rl"), num_samples=4, beta=0.1, **COMMON)
    train = emoji["train"].select(range(16))
    trainer = ClipRLTrainer(
        model=model,
        reward_funcs="correctness",
        args=args,
        train_dataset=train,
        processing_class=processor,
        peft_config=default_lora_config(dropout=0.0),
    )
    assert trainer.ref_model is None  # the adapters are switched off instead of keeping a second copy
    before_lora = lora_weights(trainer.model)
    trainer.train()
    assert_only_adapters_moved(trainer.model, reference, before_lora)
    assert any("kl" in entry for entry in trainer.state.log_history)

    batch = trainer.data_collator([trainer.train_dataset[i] for i in range(8)])
    policy = trainer.model.eval()
    pixels, ids, mask = batch["pixel_values"], batch["input_ids"], batch["attention_mask"]
    with torch.no_grad():
        images, texts = encode_pair(policy, pixels, ids, mask)
        trained = trainer._policy_log_probs(images, texts, logit_scale(policy), batch)
        with trainer._reference(policy) as ref:
            ref_images, ref_texts = encode_pair(ref, pixels, ids, mask)
            ref_log_probs = trainer._policy_log_probs(ref_images, ref_texts, logit_scale(ref), batch)
        base_images, base_texts = encode_pair(untouched, pixels, ids, mask)
        base_log_probs = trainer._policy_log_probs(base_images, base_texts, logit_scale(untouched), batch)
    torch.testing.assert_close(ref_log_probs, base_log_probs, rtol=0, atol=1e-6)
    assert not torch.allclose(trained, base_log_probs, atol=1e-4), "the adapters did not change the policy"
    # Leaving the context turns the adapters back on.
    with torch.no_grad():
        again = trainer._policy_log_probs(*encode_pair(policy, pixels, ids, mask), logit_scale(policy), batch)
    torch.testing.assert_close(again, trained, rtol=0, atol=0)


def test_freezing_a_tower_freezes_its_adapters_too(tmp_path, tiny, emoji):
    model, processor = tiny
    trainer = contrastive(
        tmp_path,
        model,
        processor,
        emoji["train"].select(range(16)),
        default_lora_config(),
        freeze_vision=True,
    )
    trainable = [name for name, p in trainer.model.named_parameters() if p.requires_grad]
    assert trainable and all("lora_" in name for name in trainable)
    assert all("text_model" in name for name in trainable)


def folder_size(folder, names):
    return sum(os.path.getsize(os.path.join(folder, name)) for name in names)


def test_saved_adapter_is_a_small_fraction_of_the_full_model(tmp_path, emoji):
    from clip_trl.offline import build_clip

    train = emoji["train"].select(range(16))
    full_model, processor = build_clip("tiny", seed=0)
    lora_model, _ = build_clip("tiny", seed=0)
    full = contrastive(tmp_path / "full", full_model, processor, train)
    adapter = contrastive(tmp_path / "lora", lora_model, processor, train, default_lora_config())
    full.save_model()
    adapter.save_model()
    full_files, adapter_files = (
        set(os.listdir(full.args.output_dir)),
        set(os.listdir(adapter.args.output_dir)),
    )
    assert {"config.json", "model.safetensors", "README.md"} <= full_files
    assert {"adapter_config.json", "adapter_model.safetensors", "README.md"} <= adapter_files
    assert "model.safetensors" not in adapter_files
    # Both folders also hold the same processor files (the tokenizer alone is ~3.6 MB); compare the models.
    full_size = folder_size(full.args.output_dir, ["config.json", "model.safetensors"])
    adapter_size = folder_size(adapter.args.output_dir, ["adapter_config.json", "adapter_model.safetensors"])
    assert adapter_size < 0.2 * full_size, (adapter_size, full_size)


def test_peft_model_plus_peft_config_is_an_error(tmp_path, tiny, emoji):
    from peft import get_peft_model

    model, processor = tiny
    wrapped = get_peft_model(model, default_lora_config(model=model))
    with pytest.raises(ValueError, match="already a PeftModel"):
        contrastive(tmp_path, wrapped, processor, emoji["train"], default_lora_config())
    # Without a config, a PeftModel trains its existing adapters.
    trainer = contrastive(tmp_path, wrapped, processor, emoji["train"])
    assert trainer.model is wrapped


def test_a_config_that_is_not_a_peft_config_is_a_type_error(tmp_path, tiny, emoji):
    model, processor = tiny
    with pytest.raises(TypeError, match="PeftConfig"):
        contrastive(tmp_path, model, processor, emoji["train"], {"r": 8, "target_modules": ["q_proj"]})
