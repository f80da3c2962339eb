import math

import pytest
import torch
import torch.nn.functional as F
from clip_test_utils import colour_dataset, png_bytes

from clip_trl import ClipContrastiveConfig, ClipContrastiveTrainer, evaluation
from clip_trl.data.collator import ClipDataCollator, with_row_index
from clip_trl.data.rows import BadRowError
from clip_trl.losses.contrastive import clip_loss, contrastive_loss
from clip_trl.models.modeling import encode_pair


def make_args(tmp_path, **overrides):
    defaults = dict(
        output_dir=str(tmp_path / "out"),
        per_device_train_batch_size=16,
        learning_rate=1e-3,
        max_steps=30,
        report_to="none",
        save_strategy="no",
        logging_steps=10,
        seed=0,
        use_cpu=True,
    )
    return ClipContrastiveConfig(**{**defaults, **overrides})


def batch_loss(model, processor, dataset):
    collator = ClipDataCollator(processor)
    batch = collator(list(with_row_index(dataset)))
    with torch.no_grad():
        images, texts = encode_pair(model, batch["pixel_values"], batch["input_ids"], batch["attention_mask"])
        return contrastive_loss(images, texts, model.logit_scale, caption_keys=batch["caption_keys"]).item()


def test_training_lowers_the_loss_and_changes_every_parameter(tmp_path, tiny, emoji):
    model, processor = tiny
    train = emoji["train"]
    before = {n: p.detach().clone() for n, p in model.named_parameters()}
    loss_before = batch_loss(model, processor, train.select(range(32)))
    trainer = ClipContrastiveTrainer(
        model=model, args=make_args(tmp_path), train_dataset=train, processing_class=processor
    )
    trainer.train()
    loss_after = batch_loss(model, processor, train.select(range(32)))
    assert loss_after < loss_before - 0.5, (loss_before, loss_after)
    unchanged = [n for n, p in model.named_parameters() if p.requires_grad and torch.equal(p, before[n])]
    # position_ids-like buffers are not parameters; every trainable parameter must move.
    assert unchanged == []
    assert any("logit_scale" in entry for entry in trainer.state.log_history)


def test_logit_scale_never_exceeds_100(tmp_path, tiny, emoji):
    model, processor = tiny
    with torch.no_grad():
        model.logit_scale.fill_(math.log(100.0) - 1e-3)
    args = make_args(tmp_path, max_steps=5, logit_scale_learning_rate=1.0)
    trainer = ClipContrastiveTrainer(
        model=model, args=args, train_dataset=emoji["train"], processing_class=processor
    )
    scales = []

    from transformers import TrainerCallback

    class Watch(TrainerCallback):
        def on_step_end(self, args, state, control, model=None, **kwargs):
            scales.append(model.logit_scale.exp().item())

    trainer.add_callback(Watch())
    trainer.train()
    assert len(scales) == 5
    assert max(scales) <= 100.0 + 1e-4
    group = trainer.optimizer.param_groups[-1]
    assert group["weight_decay"] == 0.0 and group["params"][0] is model.logit_scale


def test_zero_logit_scale_learning_rate_keeps_the_temperature_fixed(tmp_path, tiny, emoji):
    model, processor = tiny
    scale_before = model.logit_scale.detach().clone()
    projection_before = model.text_projection.weight.detach().clone()
    args = make_args(tmp_path, max_steps=3, logit_scale_learning_rate=0.0)
    ClipContrastiveTrainer(
        model=model, args=args, train_dataset=emoji["train"], processing_class=processor
    ).train()
    assert torch.equal(model.logit_scale, scale_before)  # 0.0 is a learning rate, not "unset"
    assert not torch.equal(model.text_projection.weight, projection_before)


@pytest.mark.parametrize("frozen", ["vision", "text"])
def test_frozen_tower_is_bitwise_unchanged(tmp_path, tiny, emoji, frozen):
    model, processor = tiny
    before = {n: p.detach().clone() for n, p in model.named_parameters()}
    args = make_args(tmp_path, max_steps=5, **{f"freeze_{frozen}": True})
    ClipContrastiveTrainer(
        model=model, args=args, train_dataset=emoji["train"], processing_class=processor
    ).train()
    prefixes = (
        ("vision_model", "visual_projection") if frozen == "vision" else ("text_model", "text_projection")
    )
    other = ("text_model",) if frozen == "vision" else ("vision_model",)
    for name, param in model.named_parameters():
        if name.startswith(prefixes):
            assert torch.equal(param, before[name]), name
    assert any(not torch.equal(p, before[n]) for n, p in model.named_parameters() if n.startswith(other))


def test_siglip_trains_its_bias(tmp_path, tiny, emoji):
    model, processor = tiny
    args = make_args(tmp_path, loss_type="siglip", max_steps=5)
    trainer = ClipContrastiveTrainer(
        model=model, args=args, train_dataset=emoji["train"], processing_class=processor
    )
    assert model.logit_bias.item() == -10.0
    trainer.train()
    assert model.logit_bias.item() != -10.0


def test_model_and_processor_load_from_a_path(tmp_path, tiny, emoji):
    model, processor = tiny
    model.save_pretrained(tmp_path / "base")
    processor.save_pretrained(tmp_path / "base")
    trainer = ClipContrastiveTrainer(
        model=str(tmp_path / "base"), args=make_args(tmp_path, max_steps=2), train_dataset=emoji["train"]
    )
    assert type(trainer.processing_class).__name__ == "CLIPProcessor"
    trainer.train()


def test_list_captions_and_hard_negatives(tmp_path, tiny):
    model, processor = tiny
    data = colour_dataset(
        [["red square", "a red block"], ["blue square"], ["green square", "a green tile"]] * 4
    )
    data = data.add_column("negatives", [["a cat"], ["a dog", "a bird"], []] * 4)
    args = make_args(tmp_path, max_steps=3, per_device_train_batch_size=6, negative_column="negatives")
    trainer = ClipContrastiveTrainer(model=model, args=args, train_dataset=data, processing_class=processor)
    batch = trainer.data_collator([trainer.train_dataset[i] for i in range(3)])
    assert batch["pixel_values"].shape[0] == 3
    assert batch["input_ids"].shape[0] == 3 + 3  # 3 captions, then the hard negatives
    # The negatives are extra image→text keys of every image (not of the text→image direction), by hand:
    with torch.no_grad():
        loss = trainer.compute_loss(model, dict(batch)).item()
        images, texts = encode_pair(model, batch["pixel_values"], batch["input_ids"], batch["attention_mask"])
        scale = model.logit_scale.exp()
        targets = torch.arange(3)
        per_image = scale * images @ texts.T  # [3, 3 captions + 3 negatives]
        per_text = scale * texts[:3] @ images.T
        expected = (F.cross_entropy(per_image, targets) + F.cross_entropy(per_text, targets)) / 2
        without = (F.cross_entropy(per_image[:, :3], targets) + F.cross_entropy(per_text, targets)) / 2
    assert loss == pytest.approx(expected.item(), abs=1e-5)
    assert abs(loss - without.item()) > 1e-3
    trainer.train()


def test_duplicate_captions_in_a_batch_are_marked_positive(tmp_path, tiny):
    _, processor = tiny
    data = colour_dataset(["a photo of a dog", "a photo of a cat", "a photo of a dog", "a photo of a dog"])
    batch = ClipDataCollator(processor)(list(with_row_index(data)))
    keys = batch["caption_keys"].tolist()
    assert keys[0] == keys[2] == keys[3] and keys[0] != keys[1]


def test_missing_column_lists_the_columns_present(tmp_path, tiny, emoji):
    model, processor = tiny
    with pytest.raises(ValueError) as info:
        ClipContrastiveTrainer(
            model=model,
            args=make_args(tmp_path, caption_column="text"),
            train_dataset=emoji["train"],
            processing_class=processor,
        )
    assert str(info.value) == (
        "`train_dataset` has no column 'text' (set by `caption_column`). Columns present: "
        "['caption', 'codepoints', 'group', 'image']. Set `caption_column` to one of them or rename the column."
    )


def test_not_clip_like_model_is_a_clear_error(tmp_path, tiny, emoji):
    _, processor = tiny
    with pytest.raises(
        TypeError, match="Linear is not a CLIP-like dual encoder: it has no get_image_features"
    ):
        ClipContrastiveTrainer(
            model=torch.nn.Linear(2, 2),
            args=make_args(tmp_path),
            train_dataset=emoji["train"],
            processing_class=processor,
        )


@pytest.mark.parametrize(
    ("image", "caption", "message"),
    [
        ({"bytes": b"not an image", "path": None}, "ok", "Row 2, column 'image': cannot decode the image"),
        (None, "ok", "Row 2, column 'image': the image is missing (None)"),
        ("ok", "", "Row 2, column 'caption': the caption is empty ('')"),
        ("ok", "   ", "Row 2, column 'caption': the caption is empty ('   ')"),
        ("ok", None, "Row 2, column 'caption': the caption is missing (None)"),
    ],
)
def test_bad_rows_name_the_row_and_column(tmp_path, tiny, image, caption, message):
    model, processor = tiny
    good = {"bytes": png_bytes((1, 2, 3)), "path": None}
    images = [good, good, good if image == "ok" else image, good]
    captions = ["a", "b", caption, "d"]
    data = colour_dataset(captions, images)
    trainer = ClipContrastiveTrainer(
        model=model,
        args=make_args(tmp_path, per_device_train_batch_size=4, max_steps=1),
        train_dataset=data,
        processing_class=processor,
    )
    with pytest.raises(ValueError) as info:
        trainer.train()
    assert str(info.value).startswith(message)
    assert "skip_bad_rows=True" in str(info.value)


def test_skip_bad_rows_counts_and_logs(tmp_path, tiny):
    model, processor = tiny
    good = {"bytes": png_bytes((1, 2, 3)), "path": None}
    bad = {"bytes": b"broken", "path": None}
    data = colour_dataset(["a", "b", "c", "d"], [good, bad, good, good])
    args = make_args(
        tmp_path, per_device_train_batch_size=4, max_steps=2, logging_steps=1, skip_bad_rows=True
    )
    trainer = ClipContrastiveTrainer(model=model, args=args, train_dataset=data, processing_class=processor)
    trainer.train()
    logged = [entry["skipped_rows"] for entry in trainer.state.log_history if "skipped_rows" in entry]
    assert logged == [1, 2]


def test_evaluate_reports_retrieval_metrics(tmp_path, tiny, emoji):
    model, processor = tiny
    trainer = ClipContrastiveTrainer(
        model=model,
        args=make_args(tmp_path, max_steps=1),
        train_dataset=emoji["train"],
        eval_dataset=emoji["test"],
        processing_class=processor,
    )
    metrics = trainer.evaluate()
    # The same numbers as the trainer-free functions on the same model and rows.
    expected = evaluation.retrieval_metrics(model, processor, emoji["test"])
    expected |= evaluation.in_batch_accuracy(model, processor, emoji["test"], batch_size=32)
    assert sorted(expected) == [
        "image_to_text_recall@1",
        "image_to_text_recall@10",
        "image_to_text_recall@5",
        "in_batch_accuracy",
        "text_to_image_recall@1",
        "text_to_image_recall@10",
        "text_to_image_recall@5",
    ]
    for name, value in expected.items():
        assert metrics[f"eval_{name}"] == pytest.approx(value, abs=1e-6), name
    # The loss: the training loss over consecutive eval batches (32 unique captions), weighted by rows. The eval
    # batch defaults to the training batch (16): the contrastive loss grows with the batch, so only then are the
    # train and eval loss curves comparable.
    assert trainer.args.per_device_eval_batch_size == trainer.args.per_device_train_batch_size == 16
    embeddings = evaluation.compute_embeddings(model, processor, emoji["test"])
    scale = model.logit_scale.detach()

    def loss_in_batches(size):
        batches = [
            clip_loss(
                embeddings.image_embeds[i : i + size], embeddings.text_embeds[i : i + size], scale
            ).item()
            for i in range(0, 32, size)
        ]
        return sum(batches) / len(batches)

    assert metrics["eval_loss"] == pytest.approx(loss_in_batches(16), abs=1e-5)
    assert metrics["eval_loss"] != pytest.approx(loss_in_batches(8), abs=1e-3)
    assert metrics["eval_samples"] == 32
    trainer.args.per_device_eval_batch_size = 8  # set by the user: evaluated in batches of that size
    assert trainer.evaluate()["eval_loss"] == pytest.approx(loss_in_batches(8), abs=1e-5)


def test_non_finite_steps_are_skipped_and_then_stop_training(tmp_path, tiny, emoji):
    model, processor = tiny

    class Poisoned(ClipContrastiveTrainer):
        poison_steps = {1, 2}

        def compute_loss(self, model, inputs, **kwargs):
            loss = super().compute_loss(model, inputs, **kwargs)
            return loss * float("nan") if self.state.global_step in self.poison_steps else loss

    args = make_args(tmp_path, max_steps=4, logging_steps=1)
    trainer = Poisoned(model=model, args=args, train_dataset=emoji["train"], processing_class=processor)
    trainer.train()
    for name, param in model.named_parameters():
        assert torch.isfinite(param).all(), name
    assert trainer.state.log_history[-2]["nonfinite_steps_skipped"] == 2

    from clip_trl.offline import build_clip

    model2, _ = build_clip("tiny", seed=0)  # a fresh model: `tiny` returned the one trained above
    Poisoned.poison_steps = set(range(100))
    trainer = Poisoned(
        model=model2,
        args=make_args(tmp_path, max_steps=10, max_nonfinite_steps=3),
        train_dataset=emoji["train"],
        processing_class=processor,
    )
    with pytest.raises(
        FloatingPointError, match="3 optimizer steps in a row had a non-finite loss or gradient"
    ):
        trainer.train()


def test_bad_row_error_keeps_its_type_from_dataloader_workers(tmp_path, tiny):
    model, processor = tiny
    good = {"bytes": png_bytes((1, 2, 3)), "path": None}
    data = colour_dataset(["a", "b", "c", "d"], [good, {"bytes": b"junk", "path": None}, good, good])
    args = make_args(tmp_path, per_device_train_batch_size=4, max_steps=1, dataloader_num_workers=1)
    trainer = ClipContrastiveTrainer(model=model, args=args, train_dataset=data, processing_class=processor)
    with pytest.raises(BadRowError, match="Row 1, column 'image': cannot decode the image"):
        trainer.train()


def test_streaming_dataset_trains(tmp_path, tiny, emoji):
    model, processor = tiny
    before = model.text_projection.weight.detach().clone()
    stream = emoji["train"].to_iterable_dataset()
    trainer = ClipContrastiveTrainer(
        model=model, args=make_args(tmp_path, max_steps=3), train_dataset=stream, processing_class=processor
    )
    trainer.train()
    assert trainer.state.global_step == 3
    assert not torch.equal(model.text_projection.weight, before)
