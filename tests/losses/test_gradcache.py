"""`contrastive_chunk_size`: the chunked (GradCache) step must train exactly like the unchunked batch."""

import os
import re
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from clip_test_utils import colour_dataset, png_bytes

from clip_trl import ClipContrastiveConfig, ClipContrastiveTrainer
from clip_trl.losses.gradcache import cached_backward, split_into_chunks
from clip_trl.models.modeling import encode_pair
from clip_trl.offline import build_clip

SCRIPT = Path(__file__).resolve().parents[1] / "launch_scripts" / "one_step.py"
# Ten rows with duplicates: captions 0/2/6 ("red square") and 1/7 are shared, and rows 4 and 9 show the same
# image, so the positives are not just the diagonal.
CAPTIONS = [
    "red square",
    "blue square",
    "red square",
    "green square",
    "a cat",
    "a dog",
    "red square",
    "blue square",
    "a fish",
    "a bird",
]
TOLERANCE = dict(atol=1e-5, rtol=1e-4)


def ten_rows(negatives: bool = False):
    images = [
        {"bytes": png_bytes(((37 * i) % 256, (91 * i) % 256, (53 * i) % 256)), "path": None}
        for i in range(10)
    ]
    images[9] = images[4]
    data = colour_dataset(CAPTIONS, images)
    if negatives:
        data = data.add_column(
            "negatives", [["a cat"], ["a tree", "a car"], [], ["a boat"], ["red square"]] * 2
        )
    return data


def make_trainer(tmp_path, data, chunk_size=None, **overrides):
    model, processor = build_clip("tiny", seed=0)
    defaults = dict(
        output_dir=str(tmp_path / "out"),
        per_device_train_batch_size=10,
        report_to="none",
        save_strategy="no",
        use_cpu=True,
        seed=0,
        disable_tqdm=True,
    )
    args = ClipContrastiveConfig(**{**defaults, **overrides}, contrastive_chunk_size=chunk_size)
    trainer = ClipContrastiveTrainer(model=model, args=args, train_dataset=data, processing_class=processor)
    trainer.current_gradient_accumulation_steps = (
        1  # set by `train()`; these tests call `training_step` directly
    )
    # Count the chunked steps, so that a "chunked" case that silently took the ordinary step fails.
    trainer.chunked_steps = 0
    chunked_step = trainer._chunked_training_step

    def counting(*a, **k):
        trainer.chunked_steps += 1
        return chunked_step(*a, **k)

    trainer._chunked_training_step = counting
    return trainer


def step(trainer, batch) -> tuple[float, dict[str, torch.Tensor]]:
    """One `training_step` on a fresh copy of the batch; the loss and every parameter's gradient."""
    trainer.model.zero_grad(set_to_none=True)
    loss = trainer.training_step(trainer.model, dict(batch))
    return loss.item(), {n: p.grad.clone() for n, p in trainer.model.named_parameters() if p.grad is not None}


def assert_same_gradients(got: dict, expected: dict) -> None:
    assert sorted(got) == sorted(expected)
    for name, grad in expected.items():
        torch.testing.assert_close(got[name], grad, **TOLERANCE, msg=name)


def collate(trainer, rows=range(10)):
    return trainer.data_collator([trainer.train_dataset[i] for i in rows])


def test_split_into_chunks_keeps_every_row_in_order():
    batch = {
        "pixel_values": torch.arange(10).view(10, 1),
        "input_ids": torch.arange(13).view(13, 1),
        "attention_mask": torch.ones(13, 1),
        "caption_keys": torch.arange(10),
    }
    chunks = split_into_chunks(batch, 3)
    assert [c["pixel_values"].shape[0] for c in chunks] == [3, 3, 3, 1]
    assert [c["input_ids"].shape[0] for c in chunks] == [4, 3, 3, 3]  # captions + negatives, near-equal parts
    assert all("caption_keys" not in c for c in chunks)  # batch-level keys belong to the loss
    for key in ("pixel_values", "input_ids"):
        assert torch.equal(torch.cat([c[key] for c in chunks]), batch[key])
    with pytest.raises(ValueError, match="positive integer"):
        split_into_chunks(batch, 0)


@pytest.mark.parametrize("value", [0, -2])
def test_chunk_size_must_be_a_positive_integer(tmp_path, value):
    with pytest.raises(ValueError, match="`contrastive_chunk_size` must be a positive integer or None"):
        ClipContrastiveConfig(output_dir=str(tmp_path), contrastive_chunk_size=value)


@pytest.mark.parametrize(("value", "described"), [(True, "True (bool)"), (2.5, "2.5 (float)")])
def test_chunk_size_of_another_type_is_a_type_error(tmp_path, value, described):
    # The configs check field types first (clip_trl/trainer/config_types.py): a bool or a fraction is not an int.
    match = f"`contrastive_chunk_size` must be an integer or None, got {re.escape(described)}"
    with pytest.raises(TypeError, match=match):
        ClipContrastiveConfig(output_dir=str(tmp_path), contrastive_chunk_size=value)


@pytest.mark.parametrize(
    ("loss_type", "negatives"),
    [("clip", False), ("clip", True), ("siglip", False)],
    ids=["clip", "hard-neg", "siglip"],
)
def test_chunked_step_equals_unchunked(tmp_path, loss_type, negatives):
    data = ten_rows(negatives)
    extra = {"loss_type": loss_type, "negative_column": "negatives" if negatives else None}
    trainer = make_trainer(tmp_path, data, **extra)
    batch = collate(trainer)
    assert len(set(batch["caption_keys"].tolist())) < 10 and len(set(batch["image_keys"].tolist())) < 10
    expected_loss, expected = step(trainer, batch)
    assert "logit_scale" in expected and (loss_type != "siglip" or "logit_bias" in expected)
    # 3 and 4 leave a short last chunk; 1 is the extreme; 10 is one chunk, where the ordinary step runs. The
    # loss variants share the chunking code, so two uneven sizes are enough for them.
    assert trainer.chunked_steps == 0
    for chunk_size in (1, 3, 4, 10) if loss_type == "clip" and not negatives else (3, 4):
        trainer.args.contrastive_chunk_size = chunk_size
        before = trainer.chunked_steps
        loss, grads = step(trainer, batch)
        assert trainer.chunked_steps == before + (chunk_size < 10), (
            chunk_size
        )  # 10: one chunk, the ordinary step
        assert loss == pytest.approx(expected_loss, abs=1e-5), chunk_size
        assert_same_gradients(grads, expected)


def test_dropout_is_replayed_in_the_re_forward(tmp_path):
    # CLIP has no dropout by default; turn attention dropout on. The chunked step must then equal encoding the
    # chunks one after another, with autograd, from the same random state: pass 3 draws pass 1's masks.
    trainer = make_trainer(tmp_path, ten_rows(), chunk_size=4)
    model = trainer.model
    for module in model.modules():
        if type(module).__name__ == "CLIPAttention":
            module.dropout = 0.5
    batch = collate(trainer)
    torch.manual_seed(1234)
    loss, grads = step(trainer, batch)
    assert trainer.chunked_steps == 1

    torch.manual_seed(1234)
    model.zero_grad(set_to_none=True)
    inputs = {k: v for k, v in batch.items() if k not in ("row_index", "num_skipped_rows")}
    parts = [
        encode_pair(model, c["pixel_values"], c["input_ids"], c["attention_mask"])
        for c in split_into_chunks(inputs, 4)
    ]
    reference = trainer._loss_from_embeddings(
        model, inputs, torch.cat([p[0] for p in parts]), torch.cat([p[1] for p in parts])
    )
    reference.backward()
    assert loss == pytest.approx(reference.item(), abs=1e-5)
    assert_same_gradients(grads, {n: p.grad for n, p in model.named_parameters() if p.grad is not None})

    # Dropout really is on: the unchunked step draws other masks and gets another loss.
    trainer.args.contrastive_chunk_size = None
    torch.manual_seed(1234)
    assert step(trainer, batch)[0] != pytest.approx(loss, abs=1e-4)


def test_cached_backward_single_chunk_and_parameters_of_the_loss():
    torch.manual_seed(0)
    encoder = torch.nn.Sequential(torch.nn.Linear(5, 8), torch.nn.Dropout(0.3), torch.nn.Linear(8, 4))
    temperature = torch.nn.Parameter(torch.tensor(0.7))
    x = torch.randn(7, 5)

    def encode(chunk):
        return encoder(chunk["x"]), encoder(chunk["x"].flip(1))

    def loss_fn(a, b):
        return torch.nn.functional.cross_entropy(temperature.exp() * a @ b.T, torch.arange(a.shape[0]))

    for chunks in ([{"x": x}], [{"x": x[:2]}, {"x": x[2:5]}, {"x": x[5:]}]):
        torch.manual_seed(7)
        output = cached_backward(encode, chunks, loss_fn, parameters=[temperature])
        got = [p.grad.clone() for p in (*encoder.parameters(), temperature)]
        encoder.zero_grad()
        temperature.grad = None
        torch.manual_seed(7)
        parts = [encode(c) for c in chunks]
        loss = loss_fn(torch.cat([p[0] for p in parts]), torch.cat([p[1] for p in parts]))
        loss.backward()
        assert output.loss.item() == pytest.approx(loss.item(), abs=1e-6)
        for g, p in zip(got, (*encoder.parameters(), temperature)):
            torch.testing.assert_close(g, p.grad, atol=1e-6, rtol=1e-5)
        encoder.zero_grad()
        temperature.grad = None


def train_one_step(tmp_path, name, chunk_size, **overrides) -> tuple[float, dict[str, torch.Tensor]]:
    settings = dict(
        max_steps=1,
        learning_rate=0.5,
        optim="sgd",
        max_grad_norm=0.0,
        logging_steps=1,
        lr_scheduler_type="constant",
    )
    trainer = make_trainer(tmp_path / name, ten_rows(), chunk_size, **{**settings, **overrides})
    trainer.train()
    # Every micro-batch of a chunked run took the chunked step (each is larger than its chunk size).
    assert trainer.chunked_steps == (0 if chunk_size is None else trainer.args.gradient_accumulation_steps)
    if overrides.get("gradient_checkpointing"):  # the flag did reach the layers (pass 3 checkpoints them)
        assert trainer.model.vision_model.encoder.layers[0].gradient_checkpointing
    loss = next(entry["loss"] for entry in trainer.state.log_history if "loss" in entry)
    assert any("logit_scale" in entry for entry in trainer.state.log_history)
    return loss, {k: v.detach().clone() for k, v in trainer.model.state_dict().items()}


@pytest.mark.parametrize(
    ("chunk_size", "overrides"),
    [
        (3, {}),
        (2, {"per_device_train_batch_size": 5, "gradient_accumulation_steps": 2}),
        (4, {"gradient_checkpointing": True}),
    ],
    ids=["plain", "grad-accumulation-2", "gradient-checkpointing"],
)
def test_one_sgd_step_updates_the_weights_like_the_unchunked_step(tmp_path, chunk_size, overrides):
    # The reference never checkpoints: checkpointing must not change the numbers either.
    reference = {k: v for k, v in overrides.items() if k != "gradient_checkpointing"}
    expected_loss, expected = train_one_step(tmp_path, "unchunked", None, **reference)
    loss, weights = train_one_step(tmp_path, "chunked", chunk_size, **overrides)
    assert loss == pytest.approx(expected_loss, abs=1e-5)
    initial = build_clip("tiny", seed=0)[0].state_dict()
    assert any(not torch.equal(initial[k], v) for k, v in expected.items())  # the step did move the weights
    for name, weight in expected.items():
        torch.testing.assert_close(weights[name], weight, **TOLERANCE, msg=name)


def launch(tmp_path: Path, name: str, processes: int, per_device_batch: int, chunk_size: int | None) -> dict:
    out = tmp_path / f"{name}.pt"
    command = [sys.executable]
    if processes > 1:
        command += ["-m", "torch.distributed.run", "--standalone", "--nproc_per_node", str(processes)]
    command += [
        str(SCRIPT),
        "--per_device_batch",
        str(per_device_batch),
        "--out",
        str(out),
        "--output_dir",
        str(tmp_path / name),
    ]
    if chunk_size is not None:
        command += ["--chunk_size", str(chunk_size)]
    env = {**os.environ, "OMP_NUM_THREADS": "1", "TOKENIZERS_PARALLELISM": "false"}
    result = subprocess.run(command, capture_output=True, text=True, env=env, timeout=600)
    assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-3000:]
    return torch.load(out)


@pytest.mark.slow
def test_two_processes_chunked_equal_one_process_unchunked(tmp_path):
    # 2 ranks × 4 rows in chunks of 3 (a full chunk and a short one, with no_sync on the first) must train like
    # 1 rank × 8 rows in one forward: global negatives gathered with gradient from the cached features.
    one = launch(tmp_path, "one", processes=1, per_device_batch=8, chunk_size=None)
    two = launch(tmp_path, "two", processes=2, per_device_batch=4, chunk_size=3)
    assert (one["world_size"], two["world_size"]) == (1, 2)
    assert (one["chunked_steps"], two["chunked_steps"]) == (0, 1)  # rank 0's 4 rows really went in chunks
    assert two["loss"] == pytest.approx(one["loss"], abs=1e-5)
    for name, weight in one["weights"].items():
        torch.testing.assert_close(two["weights"][name], weight, atol=1e-5, rtol=0, msg=name)
