"""Tests that need a CUDA device (marker `cuda`: skipped without one). `benchmarks/gpu_suite.sh` runs them on the
GPU machine; its `--dry-run` runs them on CPU (`CLIP_TRL_CUDA_TESTS_ON_CPU=1`) to check the tests themselves.

bf16 autocast, the fused AdamW kernel and `torch.compile` (inductor on CUDA) each against a float32 / eager
reference run of the same two steps, and the JPEG-shard + draft-decoding data path feeding a CUDA model.
"""

from __future__ import annotations

import pytest
import torch
from clip_test_utils import colour_dataset

from clip_trl import ClipContrastiveConfig, ClipContrastiveTrainer, ClipRLConfig, ClipRLTrainer
from clip_trl.offline import build_clip

pytestmark = pytest.mark.cuda
CUDA = torch.cuda.is_available()


def train(tmp_path, name: str, trainer: str = "contrastive", **options) -> tuple[list[float], dict]:
    model, processor = build_clip("tiny", seed=0)
    rows = colour_dataset([f"colour number {i}" for i in range(16)])
    common = (
        dict(
            output_dir=str(tmp_path / name),
            report_to="none",
            max_steps=2,
            per_device_train_batch_size=8,
            learning_rate=1e-3,
            logging_steps=1,
            save_strategy="no",
            seed=0,
            disable_tqdm=True,
            use_cpu=not CUDA,
            bf16=False,
            optim="adamw_torch",
        )
        | options
    )
    if trainer == "contrastive":
        t = ClipContrastiveTrainer(
            model=model, args=ClipContrastiveConfig(**common), processing_class=processor, train_dataset=rows
        )
    else:
        t = ClipRLTrainer(
            model=model,
            args=ClipRLConfig(**common, advantage="exact"),
            processing_class=processor,
            train_dataset=rows,
            reward_funcs="correctness",
        )
    t.train()
    losses = [entry["loss"] for entry in t.state.log_history if "loss" in entry]
    return losses, {k: v.detach().float().cpu() for k, v in t.model.state_dict().items()}


@pytest.fixture(scope="module")
def reference(tmp_path_factory):
    return train(tmp_path_factory.mktemp("fp32"), "fp32")


def test_runs_on_the_expected_device(tmp_path):
    model, processor = build_clip("tiny", seed=0)
    args = ClipContrastiveConfig(output_dir=str(tmp_path), report_to="none", use_cpu=not CUDA)
    assert args.device.type == ("cuda" if CUDA else "cpu")
    if CUDA:
        assert args.bf16 is True or not torch.cuda.is_bf16_supported()  # the config's CUDA default


@pytest.mark.parametrize("trainer", ["contrastive", "rl"])
def test_bf16_autocast_matches_float32(tmp_path, reference, trainer):
    base = reference if trainer == "contrastive" else train(tmp_path, "rl-fp32", trainer)
    if CUDA:
        assert torch.cuda.is_bf16_supported()
    losses, _ = train(tmp_path, "bf16", trainer, bf16=True)
    assert losses == pytest.approx(base[0], abs=2e-2)


def test_fused_adamw_matches_the_loop_kernel(tmp_path, reference):
    losses, weights = train(tmp_path, "fused", optim="adamw_torch_fused")
    assert losses == pytest.approx(reference[0], abs=1e-5)
    for name, value in reference[1].items():
        torch.testing.assert_close(weights[name], value, atol=1e-4, rtol=0, msg=name)


def test_torch_compile_matches_eager(tmp_path, reference):
    backend = "inductor" if CUDA else "aot_eager"  # inductor on CPU needs a C++ toolchain and minutes
    losses, _ = train(tmp_path, "compiled", torch_compile=True, torch_compile_backend=backend)
    assert losses == pytest.approx(reference[0], abs=1e-3)


def test_jpeg_shards_with_draft_decoding_feed_the_device(tmp_path):
    from clip_trl.data.shards import ShardStream, write_shards

    rows = colour_dataset([f"colour number {i}" for i in range(16)])
    shards = write_shards(rows, str(tmp_path / "shards"), num_shards=4, image_format="jpg")
    model, processor = build_clip("tiny", seed=0)
    args = ClipContrastiveConfig(
        output_dir=str(tmp_path / "run"),
        report_to="none",
        max_steps=2,
        per_device_train_batch_size=4,
        save_strategy="no",
        use_cpu=not CUDA,
        image_processing="draft",
        dataloader_num_workers=2,
        disable_tqdm=True,
    )
    trainer = ClipContrastiveTrainer(
        model=model,
        args=args,
        processing_class=processor,
        train_dataset=ShardStream(shards, shuffle_buffer=4),
    )
    trainer.train()
    assert trainer.state.global_step == 2
    assert next(trainer.model.parameters()).device.type == ("cuda" if CUDA else "cpu")
