"""WiSE-FT (`clip_trl.wise_ft`, `clip-trl interpolate`, the alpha sweep) and named eval sets during training."""

import pytest
import torch

from clip_trl import ClipContrastiveConfig, ClipContrastiveTrainer, wise_ft
from clip_trl.cli import main
from clip_trl.hub import default_lora_config, load_model
from clip_trl.models.wise_ft import best_alpha, plot_wise_ft_sweep, wise_ft_sweep
from clip_trl.offline import build_clip


def states_close(a, b, atol=1e-6):
    sa, sb = a.state_dict(), b.state_dict()
    assert sa.keys() == sb.keys()
    return all(torch.allclose(sa[k].float(), sb[k].float(), atol=atol) for k in sa)


def test_alpha_zero_one_and_half_of_full_models():
    base, _ = build_clip("tiny", seed=0)
    tuned, _ = build_clip("tiny", seed=1)
    before = {k: v.clone() for k, v in base.state_dict().items()}
    assert states_close(wise_ft(base, tuned, 0.0), base)
    assert states_close(wise_ft(base, tuned, 1.0), tuned)
    half = wise_ft(base, tuned, 0.5).state_dict()
    for name, value in base.state_dict().items():
        if value.is_floating_point():
            assert torch.allclose(half[name], (value + tuned.state_dict()[name]) / 2, atol=1e-6), name
        else:
            assert torch.equal(half[name], value), name
    assert all(torch.equal(before[k], v) for k, v in base.state_dict().items())  # inputs untouched


def test_lora_scaling_equals_interpolating_the_merged_model():
    base, processor = build_clip("tiny", seed=0)
    from peft import get_peft_model

    adapted = build_clip("tiny", seed=0)[0]
    peft_model = get_peft_model(adapted, default_lora_config(r=4, model=adapted))
    with torch.no_grad():  # a trained adapter: lora_B is no longer zero
        for name, parameter in peft_model.named_parameters():
            if "lora_B" in name:
                parameter.normal_(std=0.5)
    merged_tuned = build_clip("tiny", seed=0)[0]
    merged_tuned.load_state_dict(_merged_copy(peft_model).state_dict())
    for alpha in (0.0, 0.3, 1.0):
        scaled = wise_ft(None, peft_model, alpha)
        assert type(scaled).__name__.startswith("Peft")  # still an adapter
        assert states_close(_merged_copy(scaled), wise_ft(base, merged_tuned, alpha), atol=1e-5), alpha
    assert states_close(
        _merged_copy(wise_ft(base, peft_model, 0.5)), wise_ft(base, merged_tuned, 0.5), atol=1e-5
    )
    other, _ = build_clip("tiny", seed=3)
    with pytest.raises(ValueError, match="`base` is not the model the adapter was trained on: weight"):
        wise_ft(other, peft_model, 0.5)


def _merged_copy(peft_model):
    import copy

    return copy.deepcopy(peft_model).merge_and_unload()


def test_mismatched_models_are_refused():
    base, _ = build_clip("tiny", seed=0)
    other_resolution, _ = build_clip("tiny", seed=0, image_size=16)
    with pytest.raises(
        ValueError, match="weight 'vision_model.embeddings.position_embedding.weight' has shape"
    ):
        wise_ft(base, other_resolution, 0.5)
    extra, _ = build_clip("tiny", seed=0)
    extra.register_parameter("logit_bias", torch.nn.Parameter(torch.zeros(())))
    with pytest.raises(ValueError, match=r"1 names are in only one of them, e.g. \['logit_bias'\]"):
        wise_ft(base, extra, 0.5)
    with pytest.raises(ValueError, match="`alpha` must be a finite number"):
        wise_ft(base, base, float("nan"))
    with pytest.raises(ValueError, match="`base` is required unless `tuned` is a LoRA adapter"):
        wise_ft(None, base, 0.5)


def test_interpolate_command_and_sweep_plot(tmp_path, emoji, capsys):
    base_dir, tuned_dir, out = tmp_path / "base", tmp_path / "tuned", tmp_path / "mixed"
    base, processor = build_clip("tiny", seed=0, output_dir=base_dir)
    tuned, _ = build_clip("tiny", seed=1, output_dir=tuned_dir)
    assert (
        main(
            [
                "interpolate",
                "--base",
                str(base_dir),
                "--tuned",
                str(tuned_dir),
                "--alpha",
                "0.25",
                "--output_dir",
                str(out),
            ]
        )
        == 0
    )
    assert "Wrote (1 - 0.25)·base + 0.25·tuned" in capsys.readouterr().out
    written, written_processor = load_model(out)
    assert states_close(written, wise_ft(base, tuned, 0.25)) and written_processor is not None

    rows = wise_ft_sweep(
        base,
        tuned,
        processor,
        {"in_domain": emoji["train"].select(range(8)), "retention": emoji["test"].select(range(8))},
        alphas=[0, 0.5, 1],
    )
    assert [row["alpha"] for row in rows] == [0.0, 0.5, 1.0]
    for row in rows:
        assert row["mean"] == pytest.approx(
            (row["in_domain/image_to_text_recall@1"] + row["retention/image_to_text_recall@1"]) / 2
        )
    assert best_alpha(rows) == max(rows, key=lambda r: r["mean"])["alpha"]
    picture = plot_wise_ft_sweep(rows, tmp_path / "sweep.png")
    assert (tmp_path / "sweep.png").stat().st_size > 5000 and picture.endswith("sweep.png")


def test_named_eval_sets_are_reported_per_name_during_training(tmp_path, emoji):
    model, processor = build_clip("tiny", seed=0)
    sets = {"in_domain": emoji["train"].select(range(16)), "retention": emoji["test"].select(range(16))}
    args = ClipContrastiveConfig(
        output_dir=str(tmp_path),
        max_steps=2,
        eval_strategy="steps",
        eval_steps=1,
        per_device_train_batch_size=8,
        report_to="none",
        save_strategy="no",
        use_cpu=True,
        disable_tqdm=True,
        learning_rate=1e-3,
    )
    trainer = ClipContrastiveTrainer(
        model=model,
        args=args,
        train_dataset=emoji["train"].select(range(16)),
        eval_dataset=sets,
        processing_class=processor,
    )
    trainer.train()
    for name in sets:
        steps = [
            entry["step"]
            for entry in trainer.state.log_history
            if f"eval_{name}_image_to_text_recall@1" in entry
        ]
        assert steps == [1, 2], name  # each named set, at every evaluation
    one = trainer.evaluate("retention")
    assert set(one) >= {"eval_image_to_text_recall@1", "eval_loss"}
    assert (
        one["eval_image_to_text_recall@1"] == trainer.evaluate(sets)["eval_retention_image_to_text_recall@1"]
    )
    with pytest.raises(
        KeyError, match=r"No eval set named 'nope': its eval sets are \['in_domain', 'retention'\]"
    ):
        trainer.evaluate("nope")


def test_docstring_examples_run(tmp_path, monkeypatch):
    import doctest

    from clip_trl.models import wise_ft as interpolation

    monkeypatch.chdir(tmp_path)
    result = doctest.testmod(interpolation)
    assert result.attempted > 0 and result.failed == 0


def test_interpolate_command_scales_a_saved_adapter(tmp_path):
    from peft import get_peft_model
    from transformers import CLIPModel

    base_dir, adapter_dir, out, merged_out = (tmp_path / n for n in ("base", "adapter", "mixed", "merged"))
    _, processor = build_clip("tiny", seed=0, output_dir=base_dir)
    base = CLIPModel.from_pretrained(base_dir)
    peft_model = get_peft_model(base, default_lora_config(r=4, model=base))
    with torch.no_grad():
        for name, parameter in peft_model.named_parameters():
            if "lora_B" in name:
                parameter.normal_(std=0.5)
    peft_model.save_pretrained(adapter_dir)
    processor.save_pretrained(adapter_dir)
    assert main(["interpolate", "--tuned", str(adapter_dir), "--alpha", "0.5", "--output_dir", str(out)]) == 0
    assert (out / "adapter_config.json").is_file()  # still an adapter
    assert (
        main(
            [
                "interpolate",
                "--tuned",
                str(adapter_dir),
                "--alpha",
                "0.5",
                "--merge",
                "--output_dir",
                str(merged_out),
            ]
        )
        == 0
    )
    expected = wise_ft(None, peft_model, 0.5).merge_and_unload()
    assert states_close(load_model(out, merge=True)[0], expected, atol=1e-5)
    assert states_close(load_model(merged_out)[0], expected, atol=1e-5)
