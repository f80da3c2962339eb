"""ClipDPOTrainer: the DPO / IPO losses against hand computations, the reference edge cases, learning a clear
preference, bad rows, LoRA, and the model card."""

import math
import os

import datasets
import pytest
import torch
from clip_test_utils import png_bytes
from huggingface_hub import ModelCard

from clip_trl import ClipDPOConfig, ClipDPOTrainer
from clip_trl.data.rows import BadRowError
from clip_trl.hub import default_lora_config
from clip_trl.losses.preference import preference_loss
from clip_trl.offline import build_clip

COMMON = dict(
    per_device_train_batch_size=8,
    report_to="none",
    save_strategy="no",
    use_cpu=True,
    seed=0,
    logging_steps=1,
    disable_tqdm=True,
)


def colour_pairs(n: int = 16, rejected_as_list: bool = False) -> datasets.Dataset:
    """Reddish and bluish squares; the chosen caption names the right colour, the rejected one the other."""
    rows = {"image": [], "chosen": [], "rejected": []}
    for i in range(n):
        red = i % 2 == 0
        shade = 150 + 6 * i
        rows["image"].append({"bytes": png_bytes((shade, 20, 30) if red else (20, 30, shade)), "path": None})
        rows["chosen"].append("a red square" if red else "a blue square")
        other = "a blue square" if red else "a red square"
        rows["rejected"].append([other, "a green square"] if rejected_as_list else other)
    return datasets.Dataset.from_dict(rows).cast_column("image", datasets.Image())


# ------------------------------------------------------------------------------------------ the loss


def test_sigmoid_loss_with_label_smoothing_matches_a_hand_computation():
    beta, eps = 0.5, 0.1
    chosen, rejected = torch.tensor([-0.2, -1.0]), torch.tensor([-1.5, -0.4])
    ref_chosen, ref_rejected = torch.tensor([-0.7, -0.7]), torch.tensor([-0.9, -0.9])
    out = preference_loss(chosen, rejected, ref_chosen, ref_rejected, beta=beta, label_smoothing=eps)
    expected, accuracies = [], []
    for c, r, rc, rr in zip(chosen.tolist(), rejected.tolist(), ref_chosen.tolist(), ref_rejected.tolist()):
        h = (c - rc) - (r - rr)
        sig = 1 / (1 + math.exp(-beta * h))
        expected.append(-(1 - eps) * math.log(sig) - eps * math.log(1 - sig))
        accuracies.append(float(beta * (c - rc) > beta * (r - rr)))
    assert out.loss.item() == pytest.approx(sum(expected) / 2, abs=1e-6)
    assert out.chosen_rewards.item() == pytest.approx(beta * ((-0.2 + 0.7) + (-1.0 + 0.7)) / 2, abs=1e-6)
    assert out.rejected_rewards.item() == pytest.approx(beta * ((-1.5 + 0.9) + (-0.4 + 0.9)) / 2, abs=1e-6)
    assert out.accuracies.item() == pytest.approx(sum(accuracies) / 2)
    assert out.margins.item() == pytest.approx(
        out.chosen_rewards.item() - out.rejected_rewards.item(), abs=1e-6
    )


def test_ipo_loss_and_several_rejected_captions_per_row():
    beta = 0.25
    chosen, ref_chosen = torch.tensor([-0.5, -0.3]), torch.tensor([-1.0, -0.3])
    # Row 0 has two rejected captions, row 1 one (the padding entry is -inf, as log-softmax leaves it).
    rejected = torch.tensor([[-2.0, -1.0], [-0.9, float("-inf")]])
    ref_rejected = torch.tensor([[-1.5, -1.2], [-1.1, float("-inf")]])
    mask = torch.tensor([[True, True], [True, False]])
    chosen.requires_grad_(True)
    out = preference_loss(chosen, rejected, ref_chosen, ref_rejected, beta=beta, loss_type="ipo", mask=mask)
    h00, h01, h10 = 0.5 - (-0.5), 0.5 - 0.2, 0.0 - 0.2
    target = 1 / (2 * beta)
    row0 = ((h00 - target) ** 2 + (h01 - target) ** 2) / 2
    row1 = (h10 - target) ** 2
    assert out.loss.item() == pytest.approx((row0 + row1) / 2, abs=1e-6)  # each image weighs the same
    out.loss.backward()
    assert torch.isfinite(chosen.grad).all()  # the -inf padding does not leak NaN into the gradient
    assert out.rejected_rewards.item() == pytest.approx(beta * ((-0.5 + 0.2) / 2 + 0.2) / 2, abs=1e-6)


def test_beta_to_zero_flattens_the_sigmoid_loss_and_beta_zero_is_refused():
    chosen = torch.tensor([-0.1, -2.0], requires_grad=True)
    rejected, ref = torch.tensor([-3.0, -0.5]), torch.tensor([-1.0, -1.0])
    for beta in (1e-3, 1e-5):
        chosen.grad = None
        out = preference_loss(chosen, rejected, ref, ref, beta=beta)
        out.loss.backward()
        assert out.loss.item() == pytest.approx(math.log(2), abs=beta * 3)
        # d loss / d chosen_logp = -β σ(-β h) / B -> -β / (2B): the gradient vanishes linearly with β.
        assert (chosen.grad / beta).tolist() == pytest.approx([-0.25, -0.25], abs=1e-2)
    with pytest.raises(ValueError, match="`beta` must be positive, got 0.0"):
        ClipDPOConfig(output_dir="out", beta=0.0)
    with pytest.raises(ValueError, match="label_smoothing` applies to the sigmoid loss only"):
        ClipDPOConfig(output_dir="out", loss_type="ipo", label_smoothing=0.1)


# ------------------------------------------------------------------------------------------ trainer


@pytest.mark.parametrize("lora", [False, True])
def test_reference_equals_policy_at_the_start(tmp_path, lora):
    model, processor = build_clip("tiny", seed=0)
    args = ClipDPOConfig(output_dir=str(tmp_path), beta=0.5, loss_type="ipo", **COMMON)
    trainer = ClipDPOTrainer(
        model=model,
        args=args,
        train_dataset=colour_pairs(8),
        processing_class=processor,
        peft_config=default_lora_config(r=4) if lora else None,
    )
    assert (trainer.ref_model is None) == lora  # LoRA: the adapters are switched off, no second copy
    metrics = trainer.evaluate(colour_pairs(8, rejected_as_list=True))
    assert metrics["eval_loss"] == pytest.approx((1 / (2 * 0.5)) ** 2, abs=1e-6)  # h = 0: IPO's (0 - 1/(2β))²
    for name in ("rewards/chosen", "rewards/rejected", "rewards/margins", "rewards/accuracies"):
        assert metrics[f"eval_{name}"] == 0.0, name
    assert metrics["eval_logps/chosen"] < 0 and metrics["eval_logps/rejected"] < 0
    assert (
        "eval_image_to_text_recall@1" in metrics
    )  # the shared retrieval metrics, chosen captions as positives


def test_reward_accuracy_rises_with_a_clear_preference_and_the_card_says_dpo(tmp_path):
    model, processor = build_clip("tiny", seed=0)
    base = {k: v.clone() for k, v in model.state_dict().items()}
    data = colour_pairs(16)
    args = ClipDPOConfig(
        output_dir=str(tmp_path), max_steps=12, learning_rate=3e-3, beta=0.5, label_smoothing=0.05, **COMMON
    )
    trainer = ClipDPOTrainer(
        model=model, args=args, train_dataset=data, eval_dataset=data, processing_class=processor
    )
    before = trainer.evaluate()
    trainer.train()
    after = trainer.evaluate()
    assert before["eval_rewards/accuracies"] == 0.0 and after["eval_rewards/accuracies"] >= 0.9
    assert after["eval_rewards/margins"] > 0 and after["eval_loss"] < before["eval_loss"]
    logged = [entry for entry in trainer.state.log_history if "loss" in entry]
    for name in (
        "rewards/chosen",
        "rewards/rejected",
        "rewards/accuracies",
        "rewards/margins",
        "logps/chosen",
        "logps/rejected",
    ):
        assert name in logged[-1], name
    # The reference stayed the starting model.
    assert all(torch.equal(base[k], v) for k, v in trainer.ref_model.state_dict().items())

    trainer.save_model()
    card = ModelCard.load(os.path.join(args.output_dir, "README.md"))
    assert "dpo" in card.data.tags and "Preference optimization" in card.text
    assert "rafailov2023dpo" in card.text and "afzali2025clippo" in card.text
    assert "| beta | `0.5` |" in card.text and "| label_smoothing | `0.05` |" in card.text
    assert (tmp_path / "training_curves.png").is_file() and "training_curves.png" in card.text


def test_list_of_rejected_captions_trains(tmp_path):
    model, processor = build_clip("tiny", seed=0)
    args = ClipDPOConfig(output_dir=str(tmp_path), max_steps=1, **COMMON)
    data = colour_pairs(8, rejected_as_list=True)
    trainer = ClipDPOTrainer(model=model, args=args, train_dataset=data, processing_class=processor)
    batch = trainer.data_collator([{**data[i], "__row_index__": i} for i in range(3)])
    assert batch["rejected_index"].shape == (3, 2) and batch["input_ids"].shape[0] == 3  # distinct texts once
    trainer.train()
    assert trainer.state.log_history[0]["loss"] == pytest.approx(math.log(2), abs=1e-4)


def test_bad_rows_get_clear_errors(tmp_path):
    model, processor = build_clip("tiny", seed=0)
    args = ClipDPOConfig(output_dir=str(tmp_path), **COMMON)
    with pytest.raises(
        ValueError, match=r"`train_dataset` has no column 'rejected' \(set by `rejected_column`\)"
    ):
        ClipDPOTrainer(
            model=model,
            args=args,
            train_dataset=colour_pairs(4).remove_columns("rejected"),
            processing_class=processor,
        )
    trainer = ClipDPOTrainer(
        model=model, args=args, train_dataset=colour_pairs(4), processing_class=processor
    )
    image = {"bytes": png_bytes((1, 2, 3)), "path": None}
    rows = [
        {"image": image, "chosen": "a red square", "rejected": "a blue square", "__row_index__": 0},
        {"image": image, "chosen": "a red square", "rejected": "a red square", "__row_index__": 1},
    ]
    with pytest.raises(
        BadRowError, match=r"Row 1, column 'rejected': the rejected caption equals the chosen one"
    ):
        trainer.data_collator(rows)
    rows[1]["rejected"] = ["a blue square", "a red square"]
    with pytest.raises(
        BadRowError, match=r"Row 1, column 'rejected\[1\]': the rejected caption equals the chosen"
    ):
        trainer.data_collator(rows)
    rows[1]["rejected"] = []
    with pytest.raises(
        BadRowError, match=r"Row 1, column 'rejected': the list of rejected captions is empty"
    ):
        trainer.data_collator(rows)
    with pytest.raises(
        ValueError, match="`caption_column='text'` has no meaning for DPO; set `chosen_column`"
    ):
        ClipDPOConfig(output_dir="out", caption_column="text")


def test_docstring_examples_run(tmp_path, monkeypatch):
    import doctest

    from clip_trl.data import preference_pairs
    from clip_trl.losses import preference
    from clip_trl.scripts import dpo as dpo_script
    from clip_trl.trainer import dpo_config, dpo_trainer

    monkeypatch.chdir(tmp_path)
    for module in (preference, preference_pairs, dpo_script, dpo_config, dpo_trainer):
        result = doctest.testmod(module)
        assert result.attempted > 0 and result.failed == 0, module.__name__


def test_dpo_command_and_example_config(tmp_path, capsys):
    import json
    import pathlib

    from clip_trl.cli import main, make_parser, parse_dataclasses

    repo = pathlib.Path(__file__).resolve().parents[2]
    script_args, training_args, model_args = parse_dataclasses(
        make_parser("dpo"), ["--config", str(repo / "examples" / "configs" / "dpo.yaml")]
    )
    assert model_args.model_name_or_path == "clip_finetuned" and training_args.beta == 0.1
    assert script_args.group_column == "group"

    common = [
        "--max_train_samples",
        "32",
        "--max_eval_samples",
        "16",
        "--report_to",
        "none",
        "--save_strategy",
        "no",
    ]
    with pytest.raises(SystemExit):
        main(["dpo", *common, "--output_dir", str(tmp_path / "x")])
    assert "--model_name_or_path is required" in capsys.readouterr().err

    base = tmp_path / "base"
    build_clip("tiny", seed=0, output_dir=base)
    out = tmp_path / "dpo"
    status = main(
        [
            "dpo",
            *common,
            "--model_name_or_path",
            str(base),
            "--output_dir",
            str(out),
            "--max_steps",
            "2",
            "--per_device_train_batch_size",
            "8",
            "--loss_type",
            "ipo",
            "--beta",
            "0.5",
        ]
    )
    assert status == 0 and (out / "model.safetensors").is_file()
    results = json.loads((out / "test_results.json").read_text())
    assert {"test_rewards/accuracies", "test_rewards/margins", "test_image_to_text_recall@1"} <= set(results)
    assert "ipo" in (out / "README.md").read_text()


def test_resume_from_a_checkpoint_matches_an_uninterrupted_run(tmp_path):
    data = colour_pairs(16)
    # A constant learning rate: the interrupted run stops at max_steps=2, which would reshape a decaying schedule.
    settings = {
        **COMMON,
        "save_strategy": "steps",
        "save_steps": 2,
        "max_steps": 4,
        "learning_rate": 1e-3,
        "lr_scheduler_type": "constant",
    }

    def trainer_in(folder):
        model, processor = build_clip("tiny", seed=0)
        args = ClipDPOConfig(output_dir=str(tmp_path / folder), **settings)
        return ClipDPOTrainer(model=model, args=args, train_dataset=data, processing_class=processor)

    straight = trainer_in("straight")
    straight.train()
    interrupted = trainer_in("resumed")
    interrupted.args.max_steps = 2
    interrupted.train()
    resumed = trainer_in("resumed")
    resumed.train(resume_from_checkpoint=str(tmp_path / "resumed" / "checkpoint-2"))
    for (name, a), b in zip(straight.model.named_parameters(), resumed.model.parameters()):
        assert torch.allclose(a, b, atol=1e-6), name
    assert (tmp_path / "resumed" / "checkpoint-4" / "README.md").is_file()  # checkpoints carry a card
