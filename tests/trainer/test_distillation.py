"""ClipDistillationTrainer: the loss it trains is the hand-checked loss module's, the teacher never moves, unlabelled
rows, weighted teachers, LoRA, resume, the model card and bad input. Two processes: test_distributed.py."""

import copy
import os

import pytest
import torch
from clip_test_utils import colour_dataset

from clip_trl import ClipDistillationConfig, ClipDistillationTrainer
from clip_trl.losses.contrastive import contrastive_loss
from clip_trl.losses.distillation import distillation_loss
from clip_trl.models import modeling
from clip_trl.offline import build_clip

LABELS = ["red", "green", "blue", "white"]


def rows(n=8, unlabelled=()):
    """Colour rows with a caption (None for `unlabelled` rows) and a label."""
    data = colour_dataset([f"a {LABELS[i % 4]} square" for i in range(n)])
    captions = [None if i in unlabelled else c for i, c in enumerate(data["caption"])]
    return (
        data.remove_columns("caption")
        .add_column("caption", captions)
        .add_column("label", [LABELS[i % 4] for i in range(n)])
    )


def config(tmp_path, **overrides):
    values = dict(
        output_dir=str(tmp_path / "out"),
        per_device_train_batch_size=8,
        max_steps=2,
        learning_rate=1e-3,
        logging_steps=1,
        report_to="none",
        save_strategy="no",
        use_cpu=True,
        disable_tqdm=True,
        seed=0,
        candidate_labels=LABELS,
        label_template="a {} square",
    )
    values.update(overrides)
    return ClipDistillationConfig(**values)


def teacher():
    return build_clip("tiny", seed=1)[0]


def test_training_moves_the_student_and_never_the_teacher(tiny, tmp_path):
    model, processor = tiny
    start = copy.deepcopy(model.state_dict())
    t = teacher()
    t_start = copy.deepcopy(t.state_dict())
    trainer = ClipDistillationTrainer(
        model=model, teacher_model=t, args=config(tmp_path), train_dataset=rows(), processing_class=processor
    )
    assert trainer.teachers[0] is t and not t.training
    assert not any(p.requires_grad for p in t.parameters())
    trainer.train()
    assert any(not torch.equal(start[k], v) for k, v in model.state_dict().items())
    assert all(torch.equal(t_start[k], v) for k, v in t.state_dict().items())
    assert not t.training
    assert "distillation_loss" in trainer.state.log_history[0]


def _batch(trainer, data):
    batch = trainer.data_collator([trainer.train_dataset[i] for i in range(len(data))])
    return {k: v for k, v in batch.items() if k not in ("num_skipped_rows", "row_index")}


@pytest.mark.parametrize("direction", ["image_to_text", "both"])
def test_the_trained_loss_is_the_loss_module_on_the_models_logits(tiny, tmp_path, direction):
    model, processor = tiny
    t = teacher()
    args = config(tmp_path, temperature=2.0, direction=direction)
    trainer = ClipDistillationTrainer(
        model=model, teacher_model=t, args=args, train_dataset=rows(), processing_class=processor
    )
    inputs = _batch(trainer, rows())
    with torch.no_grad():
        loss = trainer.compute_loss(model, dict(inputs))
        logits = {}
        for name, m in (("student", model), ("teacher", t)):
            images, texts = modeling.encode_batch(m, inputs)
            logits[name] = modeling.logit_scale(m).exp() * images @ texts[:4].T  # the 4 prompts
    expected = distillation_loss(logits["student"], logits["teacher"], temperature=2.0)
    if direction == "both":
        reverse = distillation_loss(logits["student"].T, logits["teacher"].T, temperature=2.0)
        expected = (expected + reverse) / 2
    assert float(loss) == pytest.approx(float(expected), rel=1e-5)


def test_unlabelled_rows_get_the_distillation_loss_only(tiny, tmp_path):
    model, processor = tiny
    t = teacher()
    unlabelled = rows(unlabelled=range(8))
    args = config(tmp_path, contrastive_coef=0.5)
    trainer = ClipDistillationTrainer(
        model=model, teacher_model=t, args=args, train_dataset=unlabelled, processing_class=processor
    )
    trainer.train()  # no caption anywhere: no error, no contrastive loss
    assert all("contrastive_loss" not in e for e in trainer.state.log_history if "loss" in e)
    # A mixed batch: the contrastive term covers the labelled rows (0, 2, 4, 6) only.
    mixed = rows(unlabelled=(1, 3, 5, 7))
    trainer = ClipDistillationTrainer(
        model=model, teacher_model=t, args=args, train_dataset=mixed, processing_class=processor
    )
    inputs = _batch(trainer, mixed)
    assert inputs["caption_index"].tolist()[1::2] == [-1] * 4
    with torch.no_grad():
        loss = trainer.compute_loss(model, dict(inputs))
        images, texts = modeling.encode_batch(model, inputs)
        t_images, t_texts = modeling.encode_batch(t, inputs)
        scale = modeling.logit_scale(model)
        distill = distillation_loss(
            scale.exp() * images @ texts[:4].T, modeling.logit_scale(t).exp() * t_images @ t_texts[:4].T
        )
        labelled = torch.tensor([0, 2, 4, 6])
        captions = texts[inputs["caption_index"][labelled]]
        supervised = contrastive_loss(
            images[labelled],
            captions,
            scale,
            image_keys=inputs["image_keys"][labelled],
            caption_keys=inputs["caption_keys"][labelled],
        )
    assert float(loss) == pytest.approx(float(distill + 0.5 * supervised), rel=1e-5)


def test_teacher_weights_mix_the_teachers_softmaxes(tiny, tmp_path):
    model, processor = tiny
    a, b = teacher(), build_clip("tiny", seed=2)[0]
    losses = {}
    for weights in ([3.0, 1.0], [1.0, 3.0]):
        args = config(tmp_path, teacher_weights=weights)
        trainer = ClipDistillationTrainer(
            model=model, teacher_model=[a, b], args=args, train_dataset=rows(), processing_class=processor
        )
        assert trainer.teacher_weights == [w / 4 for w in weights]
        inputs = _batch(trainer, rows())
        with torch.no_grad():
            losses[tuple(weights)] = float(trainer.compute_loss(model, dict(inputs)))
            logits = [
                modeling.logit_scale(m).exp()
                * (lambda e: e[0] @ e[1][:4].T)(modeling.encode_batch(m, inputs))
                for m in (model, a, b)
            ]
        expected = distillation_loss(logits[0], logits[1:], teacher_weights=weights)
        assert losses[tuple(weights)] == pytest.approx(float(expected), rel=1e-5)
    assert losses[(3.0, 1.0)] != pytest.approx(losses[(1.0, 3.0)], rel=1e-3)


def test_lora_trains_adapters_and_leaves_base_weights(tiny, tmp_path):
    from peft import LoraConfig

    model, processor = tiny
    base = copy.deepcopy(model.state_dict())
    trainer = ClipDistillationTrainer(
        model=model,
        teacher_model=teacher(),
        args=config(tmp_path, target="hard"),
        train_dataset=rows(),
        processing_class=processor,
        peft_config=LoraConfig(r=4, target_modules=["q_proj", "v_proj"], init_lora_weights=False),
    )
    lora_start = {n: p.detach().clone() for n, p in trainer.model.named_parameters() if "lora_" in n}
    trainer.train()
    inner = trainer.model.get_base_model()
    for name, value in inner.state_dict().items():
        if "lora_" not in name:
            key = name.replace(".base_layer", "")
            torch.testing.assert_close(value, base[key], rtol=0, atol=0, msg=name)
    assert any(not torch.equal(p, lora_start[n]) for n, p in trainer.model.named_parameters() if "lora_" in n)


def test_resume_from_a_checkpoint_gives_the_uninterrupted_parameters(tmp_path):
    data = rows(16, unlabelled=(3, 7, 11))

    def run(name, **extra):
        model, processor = build_clip("tiny", seed=0)
        args = config(
            tmp_path,
            output_dir=str(tmp_path / name),
            max_steps=4,
            save_strategy="steps",
            save_steps=2,
            contrastive_coef=0.5,
            temperature=2.0,
            direction="both",
        )
        trainer = ClipDistillationTrainer(
            model=model, teacher_model=teacher(), args=args, train_dataset=data, processing_class=processor
        )
        trainer.train(**extra)
        return model

    reference = run("reference")
    resumed = run("resumed", resume_from_checkpoint=str(tmp_path / "reference" / "checkpoint-2"))
    for (name, a), b in zip(reference.named_parameters(), resumed.parameters()):
        torch.testing.assert_close(b, a, rtol=0, atol=1e-6, msg=name)


def test_model_card_says_distillation_teachers_and_temperature(tiny, tmp_path):
    model, processor = tiny
    folder = tmp_path / "teacher"
    build_clip("tiny", seed=1, output_dir=str(folder))
    args = config(tmp_path, temperature=3.0, max_steps=1)
    trainer = ClipDistillationTrainer(
        model=model,
        teacher_model=[str(folder), teacher()],
        args=args,
        train_dataset=rows(),
        processing_class=processor,
    )
    trainer.train()
    trainer.save_model()
    with open(os.path.join(args.output_dir, "README.md")) as file:
        card = file.read()
    assert "Knowledge distillation" in card and "distillation" in card.split("---")[1]  # the tags
    assert str(folder) in card and "(weight 0.5)" in card and "T = 3.0" in card
    assert "hinton2015distilling" in card


# ---------------------------------------------------------------------------------------------------- bad input


def test_a_missing_teacher_is_named(tiny, tmp_path):
    model, processor = tiny
    with pytest.raises(ValueError, match=r"^ClipDistillationTrainer needs a teacher: pass `teacher_model=`"):
        ClipDistillationTrainer(
            model=model, args=config(tmp_path), train_dataset=rows(), processing_class=processor
        )


def test_a_teacher_with_another_tokenizer_or_resolution_is_refused(tiny, tmp_path):
    from transformers import CLIPConfig, CLIPModel

    model, processor = tiny
    small_vocab = CLIPConfig(
        text_config={**model.config.text_config.to_dict(), "vocab_size": 1000},
        vision_config=model.config.vision_config.to_dict(),
        projection_dim=32,
    )
    with pytest.raises(
        ValueError,
        match=r"^Teacher 0 \(CLIPModel\): its text tower has a vocabulary of 1000 tokens, but the student's "
        r"tokenizer has 49408\. Teachers read the student's token ids",
    ):
        ClipDistillationTrainer(
            model=model,
            teacher_model=CLIPModel(small_vocab),
            args=config(tmp_path),
            train_dataset=rows(),
            processing_class=processor,
        )
    other = tmp_path / "big"
    build_clip("tiny", image_size=64, seed=1, output_dir=str(other))
    size = model.config.vision_config.image_size
    with pytest.raises(
        ValueError,
        match=rf"^Teacher 1 \({other}\): it takes 64x64 images, but the student's processor makes "
        rf"{size}x{size} pixels\.",
    ):
        ClipDistillationTrainer(
            model=model,
            teacher_model=[teacher(), str(other)],
            args=config(tmp_path),
            train_dataset=rows(),
            processing_class=processor,
        )


def test_empty_candidate_sets_are_named(tiny, tmp_path):
    model, processor = tiny
    with pytest.raises(
        ValueError, match=r"needs `candidate_labels` with at least 2 distinct labels, got \['cat'\]"
    ):
        config(tmp_path, candidate_labels=["cat"])
    data = rows(8).add_column("options", [["a", "b"]] * 7 + [[]])
    args = config(tmp_path, candidate_labels=None, candidate_column="options")
    trainer = ClipDistillationTrainer(
        model=model, teacher_model=teacher(), args=args, train_dataset=data, processing_class=processor
    )
    with pytest.raises(
        ValueError, match=r"Row 7, column 'options': a candidate set needs at least 2 distinct"
    ):
        trainer.train()
    with pytest.raises(
        ValueError, match=r"`direction='both'` distils each text's softmax over the batch's images"
    ):
        config(tmp_path, candidate_labels=None, candidate_column="options", direction="both")


def test_cli_distill_runs_one_step(tmp_path):
    from clip_trl.cli import main

    teacher_dir = tmp_path / "teacher"
    build_clip("tiny", seed=1, output_dir=str(teacher_dir))
    status = main(
        [
            "distill",
            "--offline_model_size",
            "tiny",
            "--max_train_samples",
            "16",
            "--max_eval_samples",
            "8",
            "--teacher_model_name_or_path",
            str(teacher_dir),
            "--output_dir",
            str(tmp_path / "distilled"),
            "--max_steps",
            "1",
            "--per_device_train_batch_size",
            "8",
            "--candidates",
            "retrieved",
            "--num_candidates",
            "4",
            "--unlabelled_fraction",
            "0.5",
            "--report_to",
            "none",
            "--save_strategy",
            "no",
            "--use_cpu",
            "true",
        ]
    )
    assert status == 0
    assert (tmp_path / "distilled" / "model.safetensors").is_file()
    assert "distillation" in (tmp_path / "distilled" / "README.md").read_text()


# ------------------------------------------------------------------------------------------------ two processes


@pytest.mark.slow
def test_two_processes_equal_one_process_on_the_global_batch(tmp_path):
    from pathlib import Path

    from test_distributed import run_script

    script = Path(__file__).resolve().parents[1] / "launch_scripts" / "distill_runs.py"
    runs = {}
    for processes, batch in ((1, 8), (2, 4)):
        out = tmp_path / f"{processes}.pt"
        run_script(
            script,
            "--per_device_batch",
            str(batch),
            "--out",
            str(out),
            "--output_dir",
            str(tmp_path / str(processes)),
            processes=processes,
        )
        runs[processes] = torch.load(out)
    initial = build_clip("tiny", seed=0)[0].state_dict()
    for name, one in runs[1].items():
        two = runs[2][name]
        assert (one["world_size"], two["world_size"]) == (1, 2)
        assert two["loss"] == pytest.approx(one["loss"], abs=1e-5), name
        for key, weight in one["weights"].items():
            torch.testing.assert_close(two["weights"][key], weight, atol=1e-5, rtol=0, msg=f"{name}: {key}")
        assert any(not torch.equal(initial[k], v) for k, v in one["weights"].items()), name
