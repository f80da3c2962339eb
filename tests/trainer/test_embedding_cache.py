"""The frozen-tower embedding cache (`cache_frozen_embeddings`, clip_trl/trainer/embedding_cache.py): the same
losses and gradients as without it, dropped when the tower changes, spilled to disk, resumable."""

import copy
import os
from pathlib import Path

import pytest
import torch
from transformers import TrainerCallback

from clip_trl import (
    ClipContrastiveConfig,
    ClipContrastiveTrainer,
    ClipDistillationConfig,
    ClipDistillationTrainer,
    ClipRLConfig,
    ClipRLTrainer,
)
from clip_trl.data.image_processing import FastImageTransform
from clip_trl.trainer.embedding_cache import check_cache_mode
from clip_trl.trainer.embedding_store import EmbeddingStore

COMMON = dict(
    per_device_train_batch_size=8,
    learning_rate=0.1,
    optim="sgd",
    report_to="none",
    save_strategy="no",
    logging_steps=1,
    seed=0,
    use_cpu=True,
)


def _rows(emoji, count=24):
    return emoji["train"].select(range(count))


def _contrastive(tmp_path, model, processor, data, name, **overrides):
    args = ClipContrastiveConfig(
        output_dir=str(tmp_path / name), **{**COMMON, "num_train_epochs": 2, **overrides}
    )
    return ClipContrastiveTrainer(model=model, args=args, train_dataset=data, processing_class=processor)


def _rl(tmp_path, model, processor, data, name, **overrides):
    labels = sorted(set(data["group"]))
    settings = dict(
        num_train_epochs=2,
        num_samples=4,
        candidate_labels=labels,
        label_column="group",
        beta=0.0,
    )
    settings.update(overrides)
    args = ClipRLConfig(output_dir=str(tmp_path / name), **{**COMMON, **settings})
    return ClipRLTrainer(
        model=model, reward_funcs="correctness", args=args, train_dataset=data, processing_class=processor
    )


def _losses(trainer):
    return [entry["loss"] for entry in trainer.state.log_history if "loss" in entry]


def _hit_rates(trainer, tower):
    return [entry[f"cache/{tower}_hit_rate"] for entry in trainer.state.log_history if "loss" in entry]


def _assert_same_training(cached, plain):
    assert _losses(cached) == pytest.approx(_losses(plain), abs=1e-5)
    for (name, a), b in zip(cached.model.named_parameters(), plain.model.parameters()):
        torch.testing.assert_close(a, b, atol=1e-5, rtol=0, msg=lambda m, name=name: f"{name}: {m}")


def _batch(trainer):
    return trainer._prepare_inputs(next(iter(trainer.get_train_dataloader())))


def _loss_and_grads(trainer, inputs):
    model = trainer.model
    model.zero_grad()
    loss = trainer.compute_loss(model, copy.copy(inputs))
    loss.backward()
    return loss.detach(), {n: p.grad.clone() for n, p in model.named_parameters() if p.grad is not None}


# -------------------------------------------------------------------------------------------- exactness


@pytest.mark.parametrize("tower", ["vision", "text"])
def test_contrastive_cached_training_equals_uncached(tmp_path, tiny, emoji, tower):
    model, processor = tiny
    data = _rows(emoji)
    cached = _contrastive(
        tmp_path, copy.deepcopy(model), processor, data, "cached", **{f"freeze_{tower}": True}
    )
    plain = _contrastive(
        tmp_path, model, processor, data, "plain", **{f"freeze_{tower}": True}, cache_frozen_embeddings=False
    )
    cached.train()
    plain.train()
    _assert_same_training(cached, plain)
    # The first epoch computes every row (3 batches), the second reads them all back.
    rates = _hit_rates(cached, tower)
    assert rates[3:] == [1.0, 1.0, 1.0] and rates[0] == 0.0
    assert plain._embedding_cache is None and not any(
        "cache/" in k for e in plain.state.log_history for k in e
    )


def test_cached_step_has_the_loss_and_gradients_of_the_uncached_step(tmp_path, tiny, emoji):
    model, processor = tiny
    data = _rows(emoji, 8)
    trainer = _contrastive(tmp_path, model, processor, data, "grads", freeze_vision=True)
    inputs = _batch(trainer)
    cache = trainer._embedding_cache
    first = _loss_and_grads(trainer, inputs)  # computes and stores the 8 images
    second = _loss_and_grads(trainer, inputs)  # reads them back
    assert cache.hits["vision"] == 8 and cache.lookups["vision"] == 16
    trainer._embedding_cache = None
    plain = _loss_and_grads(trainer, inputs)  # through the model's forward
    for loss, grads in (first, second):
        torch.testing.assert_close(loss, plain[0], atol=1e-6, rtol=0)
        assert grads.keys() == plain[1].keys() and not any("vision" in name for name in grads)
        for name, grad in grads.items():
            torch.testing.assert_close(
                grad, plain[1][name], atol=1e-5, rtol=1e-4, msg=lambda m, name=name: f"{name}: {m}"
            )


@pytest.mark.parametrize("tower", ["vision", "text"])
def test_rl_with_label_candidates_cached_equals_uncached(tmp_path, tiny, emoji, tower):
    model, processor = tiny
    data = _rows(emoji, 16)
    cached = _rl(tmp_path, copy.deepcopy(model), processor, data, "cached", **{f"freeze_{tower}": True})
    plain = _rl(
        tmp_path, model, processor, data, "plain", **{f"freeze_{tower}": True}, cache_frozen_embeddings=False
    )
    cached.train()
    plain.train()
    _assert_same_training(cached, plain)
    rates = _hit_rates(cached, tower)
    if tower == "text":  # the label prompts are the same texts at every step: read back from the second on
        assert rates == [0.0, 1.0, 1.0, 1.0]
    else:
        assert rates == [0.0, 0.0, 1.0, 1.0]


def test_distillation_cached_equals_uncached(tmp_path, tiny, emoji):
    model, processor = tiny
    teacher = copy.deepcopy(model).requires_grad_(False)
    data = _rows(emoji, 16)
    labels = sorted(set(data["group"]))
    runs = []
    for name, mode in (("cached", "auto"), ("plain", "false")):
        args = ClipDistillationConfig(
            output_dir=str(tmp_path / name),
            **{**COMMON, "num_train_epochs": 2},
            candidates="labels",
            candidate_labels=labels,
            label_column="group",
            freeze_text=True,
            cache_frozen_embeddings=mode,
        )
        trainer = ClipDistillationTrainer(
            model=copy.deepcopy(model),
            teacher_model=teacher,
            args=args,
            train_dataset=data,
            processing_class=processor,
        )
        trainer.train()
        runs.append(trainer)
    _assert_same_training(*runs)
    assert _hit_rates(runs[0], "text")[1:] == [1.0, 1.0, 1.0]
    assert _hit_rates(runs[0], "teacher0_vision") == [0.0, 0.0, 1.0, 1.0]  # the teacher never trains: cached


# --------------------------------------------------------------------------------------------- invalidation


def _vision_rows(trainer):
    return len(trainer._embedding_cache.stores["vision"])


def test_unfreezing_the_tower_drops_its_entries_and_trains_it(tmp_path, tiny, emoji):
    model, processor = tiny
    trainer = _contrastive(tmp_path, model, processor, _rows(emoji, 8), "unfreeze", freeze_vision=True)
    inputs = _batch(trainer)
    _loss_and_grads(trainer, inputs)
    assert _vision_rows(trainer) == 8
    model.vision_model.requires_grad_(True)
    _, grads = _loss_and_grads(trainer, inputs)
    assert _vision_rows(trainer) == 0
    assert any(name.startswith("vision_model.") for name in grads)  # computed with gradient, not read back


@pytest.mark.parametrize("change", ["transform", "weights", "dtype"])
def test_a_changed_transform_weights_or_dtype_rebuilds_the_entries(tmp_path, tiny, emoji, change):
    model, processor = tiny
    trainer = _contrastive(tmp_path, model, processor, _rows(emoji, 8), change, freeze_vision=True)
    inputs = _batch(trainer)
    cache = trainer._embedding_cache
    _loss_and_grads(trainer, inputs)
    if change == "transform":
        trainer.data_collator.image_transform = FastImageTransform(processor.image_processor)
    elif change == "weights":
        with torch.no_grad():
            model.visual_projection.weight.mul_(2.0)
    else:
        model.double()
        inputs = {
            k: v.double() if torch.is_tensor(v) and v.is_floating_point() else v for k, v in inputs.items()
        }
    loss, _ = _loss_and_grads(trainer, inputs)
    assert cache.hits["vision"] == 0 and _vision_rows(trainer) == 8  # every row computed again
    trainer._embedding_cache = None
    plain, _ = _loss_and_grads(trainer, inputs)
    torch.testing.assert_close(loss, plain, atol=1e-6, rtol=0)


def test_no_cache_for_a_tower_with_lora_layers(tmp_path, tiny, emoji, caplog):
    from peft import LoraConfig

    model, processor = tiny
    args = ClipContrastiveConfig(output_dir=str(tmp_path / "lora"), **COMMON, max_steps=2, freeze_vision=True)
    trainer = ClipContrastiveTrainer(
        model=model,
        args=args,
        train_dataset=_rows(emoji, 8),
        processing_class=processor,
        peft_config=LoraConfig(r=2, target_modules=["q_proj", "v_proj"]),  # in both towers
    )
    with caplog.at_level("INFO", logger="clip_trl.trainer.embedding_cache"):
        trainer.train()
    assert _vision_rows(trainer) == 0 and trainer._embedding_cache.hits["vision"] == 0
    assert "the vision tower is computed at every step: it has adapter (LoRA) layers" in caplog.text


def test_no_vision_cache_with_a_random_transform_unless_trusted(tmp_path, tiny, emoji):
    model, processor = tiny

    class Jitter:  # a custom augmentation: a row's pixels differ at every epoch
        def __init__(self):
            self.base = FastImageTransform(processor.image_processor)

        def __call__(self, images):
            pixels = self.base(images)
            return pixels + 0.01 * torch.randn_like(pixels)

    trainer = _contrastive(tmp_path, model, processor, _rows(emoji, 8), "jitter", freeze_vision=True)
    trainer.data_collator.image_transform = Jitter()
    from clip_trl.trainer.embedding_cache import cache_for_trainer

    assert cache_for_trainer(trainer) is None
    trainer.args.cache_frozen_embeddings = "true"
    assert cache_for_trainer(trainer).towers == ("vision",)
    Jitter.deterministic = False  # a transform that says it is random is never trusted
    assert cache_for_trainer(trainer) is None
    Jitter.deterministic = True  # ... and one that says it is deterministic is trusted by "auto"
    trainer.args.cache_frozen_embeddings = "auto"
    assert cache_for_trainer(trainer).towers == ("vision",)


def test_no_cache_when_nothing_is_frozen_or_it_is_off(tmp_path, tiny, emoji):
    model, processor = tiny
    assert _contrastive(tmp_path, model, processor, _rows(emoji, 8), "a")._embedding_cache is None
    off = _contrastive(
        tmp_path, model, processor, _rows(emoji, 8), "b", freeze_text=True, cache_frozen_embeddings="false"
    )
    assert off._embedding_cache is None


def test_config_values():
    assert [check_cache_mode(v) for v in (True, False, "auto", "yes", "NO")] == [
        "true",
        "false",
        "auto",
        "true",
        "false",
    ]
    with pytest.raises(
        ValueError, match=r"`cache_frozen_embeddings` must be 'auto', True or False, got 'sometimes'"
    ):
        ClipContrastiveConfig(output_dir="out", cache_frozen_embeddings="sometimes")
    with pytest.raises(ValueError, match=r"`cache_frozen_embeddings_memory_mb` must be 0 or more"):
        ClipContrastiveConfig(output_dir="out", cache_frozen_embeddings_memory_mb=-1)


# ------------------------------------------------------------------------------------------- spill, resume


def test_store_spills_beyond_its_budget_and_reads_back_the_same_rows(tmp_path):
    values = torch.randn(10, 6)
    store = EmbeddingStore(
        memory_bytes=3 * 6 * 4, spill_dir=str(tmp_path / "spill"), name="t", segment_rows=4
    )
    store.put(list(range(10)), values)
    store.put([3, 4], torch.zeros(2, 6))  # present keys keep their row
    assert len(store) == 10 and store.spilled_rows == 7
    assert sorted(os.listdir(tmp_path / "spill")) == ["t-0.bin", "t-1.bin"]
    assert torch.equal(store.get([9, 0, 4, 3]), values[[9, 0, 4, 3]])
    store.clear()
    assert len(store) == 0 and os.listdir(tmp_path / "spill") == []
    unbounded = EmbeddingStore(memory_bytes=2 * 6 * 4, spill_dir=None, name="t")
    unbounded.put(list(range(5)), values[:5])
    assert len(unbounded) == 2  # no spill folder: rows beyond the budget are not kept (they are recomputed)


def test_spilled_cache_trains_like_the_in_memory_one(tmp_path, tiny, emoji):
    model, processor = tiny
    data = _rows(emoji)

    class SeeFiles(TrainerCallback):
        files: list = []

        def on_epoch_end(self, args, state, control, **kwargs):
            folder = os.path.join(args.output_dir, "embedding_cache", "rank0", "vision")
            self.files.append(sorted(os.listdir(folder)))

    disk = _contrastive(
        tmp_path, copy.deepcopy(model), processor, data, "disk", freeze_vision=True,
        cache_frozen_embeddings_memory_mb=0,
    )  # fmt: skip
    disk.add_callback(SeeFiles())
    memory = _contrastive(tmp_path, model, processor, data, "memory", freeze_vision=True)
    disk.train()
    memory.train()
    _assert_same_training(disk, memory)
    assert SeeFiles.files == [["vision-0.bin"], ["vision-0.bin"]]  # every row on disk
    assert _hit_rates(disk, "vision")[3:] == [1.0, 1.0, 1.0]
    assert not os.path.exists(tmp_path / "disk" / "embedding_cache")  # removed at the end of training


def test_resumed_run_with_the_cache_matches_an_uninterrupted_run(tmp_path, emoji):
    from clip_trl.offline import build_clip

    data = _rows(emoji, 16)

    class StopAt(TrainerCallback):  # interrupted after the first epoch (step 2 of 4)
        def on_step_end(self, args, state, control, **kwargs):
            control.should_training_stop = state.global_step == 2

    def run(name, mode, resume=None, callbacks=()):
        model, processor = build_clip("tiny", seed=0)
        trainer = _contrastive(
            tmp_path, model, processor, data, name, freeze_vision=True, cache_frozen_embeddings=mode,
            save_strategy="steps", save_steps=2,
        )  # fmt: skip
        for callback in callbacks:
            trainer.add_callback(callback)
        trainer.train(resume_from_checkpoint=resume)
        return trainer

    full = run("full", "false")
    run("part", "auto", callbacks=[StopAt()])
    resumed = run("part", "auto", resume=str(tmp_path / "part" / "checkpoint-2"))
    assert resumed.state.global_step == 4
    for (name, a), b in zip(full.model.named_parameters(), resumed.model.parameters()):
        torch.testing.assert_close(a, b, atol=1e-5, rtol=0, msg=lambda m, name=name: f"{name}: {m}")
    # The resumed process starts with an empty cache: it rebuilds it in its first epoch.
    assert _hit_rates(resumed, "vision")[-2:] == [0.0, 0.0]


# ------------------------------------------------------------------------------------------- processes


@pytest.mark.slow
def test_two_processes_with_the_cache_equal_one_process(tmp_path):
    # Each rank caches the rows it sees; the gradients of the towers it calls directly are averaged by the trainer.
    from test_distributed import run_script

    script = Path(__file__).resolve().parents[1] / "launch_scripts" / "cache_runs.py"
    runs = {}
    for name, processes, batch, mode in (
        ("one", 1, 8, "auto"),
        ("two", 2, 4, "auto"),
        ("plain", 1, 8, "false"),
    ):
        out = tmp_path / f"{name}.pt"
        run_script(
            script, "--per_device_batch", str(batch), "--out", str(out), "--output_dir", str(tmp_path / name),
            "--cache", mode, processes=processes,
        )  # fmt: skip
        runs[name] = torch.load(out)
    assert (runs["one"]["world_size"], runs["two"]["world_size"]) == (1, 2)
    for run in ("lit", "rl_labels"):
        one, two, plain = (runs[name][run] for name in ("one", "two", "plain"))
        tower = "vision" if run == "lit" else "text"
        assert [r[f"cache/{tower}_hit_rate"] for r in two["hit_rates"]][-1] == 1.0  # the cache was read
        for other in (two, plain):
            assert other["losses"] == pytest.approx(one["losses"], abs=1e-5)
            for name, weight in one["weights"].items():
                torch.testing.assert_close(other["weights"][name], weight, atol=1e-5, rtol=0, msg=name)


def test_rl_reference_model_is_cached_and_training_is_unchanged(tmp_path, tiny, emoji):
    # beta > 0: the reference is a frozen copy; both its towers are read back (the texts from the second step).
    model, processor = tiny
    data = _rows(emoji, 16)
    cached = _rl(tmp_path, copy.deepcopy(model), processor, data, "cached", beta=0.1)
    plain = _rl(tmp_path, model, processor, data, "plain", beta=0.1, cache_frozen_embeddings=False)
    assert cached._embedding_cache is None and cached._reference_cache.towers == ("vision", "text")
    cached.train()
    plain.train()
    _assert_same_training(cached, plain)
    assert _hit_rates(cached, "reference_vision") == [0.0, 0.0, 1.0, 1.0]
    assert _hit_rates(cached, "reference_text") == [0.0, 1.0, 1.0, 1.0]
    assert plain._reference_cache is None
