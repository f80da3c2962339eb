"""Speed options change how fast a step runs, not what it computes (tolerances stated per option).

Each case trains the same tiny model on the same rows for two AdamW steps with one option changed, and
compares the logged losses and the final weights with the default run (SDPA attention, fused AdamW,
float32 on CPU, no checkpointing, no compilation, the fast image pipeline).
"""

import pytest
import torch

from clip_trl import ClipContrastiveConfig, ClipContrastiveTrainer
from clip_trl.offline import build_clip
from clip_trl.trainer import base_config

# option -> (overrides, loss tolerance, weight tolerance)
OPTIONS = {
    "eager-attention": ({"model_init_kwargs": {"attn_implementation": "eager"}}, 1e-5, 1e-5),
    "unfused-adamw": ({"optim": "adamw_torch"}, 1e-6, 1e-6),
    "activation-checkpointing": ({"activation_checkpointing": True}, 1e-6, 1e-6),
    "torch-compile": ({"torch_compile": True, "torch_compile_backend": "aot_eager"}, 1e-5, 1e-5),
    "processor-images": ({"image_processing": "processor"}, 0.0, 0.0),
    # bfloat16 keeps 8 bits of mantissa: the loss moves in the third digit. Adam's update is about lr * sign(g)
    # per weight, so a gradient near zero may flip and move a weight by 2 * lr: weights are not compared.
    "bf16-autocast": ({"bf16": True}, 2e-2, None),
}


def train(tmp_path, rows, **overrides) -> tuple[ClipContrastiveTrainer, list[float], dict[str, torch.Tensor]]:
    # The model goes in as a path, as a user's model id would, so that `model_init_kwargs` applies.
    model = str(tmp_path / "model")
    build_clip("tiny", seed=0, output_dir=model)
    args = ClipContrastiveConfig(
        output_dir=str(tmp_path),
        report_to="none",
        save_strategy="no",
        use_cpu=True,
        seed=0,
        disable_tqdm=True,
        per_device_train_batch_size=8,
        max_steps=2,
        learning_rate=1e-3,
        logging_steps=1,
        **overrides,
    )
    trainer = ClipContrastiveTrainer(model=model, args=args, train_dataset=rows)
    trainer.train()
    losses = [entry["loss"] for entry in trainer.state.log_history if "loss" in entry]
    weights = {name: value.detach().float().clone() for name, value in trainer.model.state_dict().items()}
    return trainer, losses, weights


@pytest.fixture(scope="module")
def reference(tmp_path_factory, emoji_rows):
    _, losses, weights = train(tmp_path_factory.mktemp("reference"), emoji_rows)
    return losses, weights


@pytest.fixture(scope="module")
def emoji_rows():
    from clip_trl.offline import load_emoji_dataset

    return load_emoji_dataset()["train"].select(range(16))


def option_took_effect(trainer: ClipContrastiveTrainer, name: str) -> bool:
    model = trainer.accelerator.unwrap_model(trainer.model)
    if name == "eager-attention":
        return (
            model.config._attn_implementation == "eager"
            and model.vision_model.config._attn_implementation == "eager"
        )
    if name == "unfused-adamw":
        return not trainer.optimizer.param_groups[0].get("fused")
    if name == "activation-checkpointing":
        return model.vision_model.encoder.layers[0].gradient_checkpointing
    if name == "torch-compile":
        return isinstance(trainer.model_wrapped, torch._dynamo.eval_frame.OptimizedModule) or hasattr(
            trainer.model, "_orig_mod"
        )
    if name == "processor-images":
        return type(trainer.data_collator.image_transform).__name__ == "ProcessorImageTransform"
    if name == "bf16-autocast":
        return trainer.accelerator.mixed_precision == "bf16"
    raise KeyError(name)


def test_defaults_are_the_fast_ones(tmp_path, emoji_rows):
    args = ClipContrastiveConfig(output_dir=str(tmp_path), report_to="none", use_cpu=True)
    assert args.optim == "adamw_torch_fused" and args.image_processing == "fast"
    assert args.bf16 is False  # no CUDA here: float32
    model, processor = build_clip("tiny", seed=0)
    trainer = ClipContrastiveTrainer(
        model=model, args=args, processing_class=processor, train_dataset=emoji_rows
    )
    assert trainer.model.config._attn_implementation == "sdpa"
    trainer.create_optimizer()
    assert trainer.optimizer.param_groups[0]["fused"] is True


def test_bf16_defaults_on_only_where_cuda_supports_it(monkeypatch):
    monkeypatch.setattr(base_config, "_cuda_supports_bf16", lambda: True)
    # (TrainingArguments itself would then check for a GPU; the resolution is what is tested here.)
    monkeypatch.setattr(base_config.TrainingArguments, "__post_init__", lambda self: None)
    assert ClipContrastiveConfig(output_dir="unused").bf16 is True
    assert ClipContrastiveConfig(output_dir="unused", fp16=True).bf16 is False
    assert ClipContrastiveConfig(output_dir="unused", bf16=False).bf16 is False


@pytest.mark.parametrize("name", sorted(OPTIONS))
def test_speed_option_does_not_change_the_result(tmp_path, emoji_rows, reference, name):
    overrides, loss_tolerance, weight_tolerance = OPTIONS[name]
    expected_losses, expected_weights = reference
    trainer, losses, weights = train(tmp_path, emoji_rows, **overrides)
    assert option_took_effect(trainer, name)
    assert len(losses) == len(expected_losses) == 2
    assert losses == pytest.approx(expected_losses, abs=loss_tolerance, rel=0)
    if weight_tolerance is None:
        assert losses != expected_losses  # autocast did run the towers in bfloat16
        return
    moved = max(
        (expected_weights[k] - build_clip("tiny", seed=0)[0].state_dict()[k].float()).abs().max().item()
        for k in ("logit_scale", "text_projection.weight")
    )
    assert moved > 10 * max(weight_tolerance, 1e-6)  # the steps moved the weights more than the tolerance
    for key, value in expected_weights.items():
        if key.endswith("k_proj.bias"):
            # Softmax ignores a constant added to every logit of a row, so the key bias's true gradient is 0: what
            # is left is rounding noise, which Adam scales up to +-lr. Any change of kernel changes that noise.
            continue
        torch.testing.assert_close(weights[key], value, atol=weight_tolerance, rtol=0, msg=key)


def test_bf16_flag_parses_like_the_other_boolean_flags():
    from transformers import HfArgumentParser

    parser = HfArgumentParser(ClipContrastiveConfig)

    def parse(*flags):
        return parser.parse_args_into_dataclasses(["--output_dir", "unused", "--use_cpu", *flags])[0]

    assert parse().bf16 is False
    assert parse("--bf16").bf16 is True
    assert parse("--bf16", "false").bf16 is False
