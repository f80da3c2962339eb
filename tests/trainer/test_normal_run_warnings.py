"""A normal CPU run does not warn about settings the user never chose (issue #28): no DataLoader `pin_memory`
warning (pinning only helps copies to an accelerator, so the configs turn it off without one)."""

from __future__ import annotations

import copy
import warnings

from clip_test_utils import colour_dataset

from clip_trl import ClipContrastiveConfig, ClipContrastiveTrainer, ClipRLConfig
from clip_trl.trainer.launch_check import pin_memory_useful


def test_pin_memory_is_off_without_an_accelerator(tmp_path):
    assert ClipRLConfig(output_dir=str(tmp_path), use_cpu=True).dataloader_pin_memory is False
    assert pin_memory_useful(use_cpu=True) is False
    # Without `use_cpu` (where transformers keeps its default, True): on only where there is an accelerator.
    assert ClipContrastiveConfig(output_dir=str(tmp_path)).dataloader_pin_memory is pin_memory_useful(False)
    # Asked to keep it off, it stays off wherever it runs.
    args = ClipContrastiveConfig(output_dir=str(tmp_path), dataloader_pin_memory=False)
    assert args.dataloader_pin_memory is False


def test_a_cpu_run_does_not_warn_about_pin_memory(tmp_path, _tiny_once):
    model, processor = copy.deepcopy(_tiny_once)
    args = ClipContrastiveConfig(
        output_dir=str(tmp_path),
        max_steps=1,
        per_device_train_batch_size=4,
        report_to="none",
        save_strategy="no",
        disable_tqdm=True,
    )  # no `use_cpu=True` (transformers turns pinning off itself then): a plain run on a machine without a GPU
    trainer = ClipContrastiveTrainer(
        model=model, args=args, train_dataset=colour_dataset(["a", "b", "c", "d"]), processing_class=processor
    )
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        trainer.train()
    assert not [str(w.message) for w in caught if "pin_memory" in str(w.message)]


def test_a_normal_lora_run_with_checkpoints_prints_no_warning_and_no_bar(
    tmp_path, _tiny_once, emoji, capfd, caplog
):
    """Contrastive with LoRA and a checkpoint, then RL, then `save_model`: no Python warning, no library log
    warning, and no per-save/per-load progress bar on stderr (issue #24 item 8, #28 item 10)."""
    from clip_trl import ClipContrastiveTrainer, ClipRLTrainer
    from clip_trl.hub import default_lora_config

    model, processor = copy.deepcopy(_tiny_once)
    common = dict(
        max_steps=2, per_device_train_batch_size=8, report_to="none", disable_tqdm=True, logging_steps=1
    )
    data = emoji["train"].select(range(16))
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        trainer = ClipContrastiveTrainer(
            model=model,
            args=ClipContrastiveConfig(output_dir=str(tmp_path / "lora"), save_steps=1, **common),
            train_dataset=data,
            processing_class=processor,
            peft_config=default_lora_config(r=4),
        )
        trainer.train()
        trainer.save_model()
        rl = ClipRLTrainer(
            model=copy.deepcopy(_tiny_once[0]),
            reward_funcs="correctness",
            args=ClipRLConfig(output_dir=str(tmp_path / "rl"), save_strategy="no", **common),
            train_dataset=data,
            processing_class=processor,
        )
        rl.train()
        rl.save_model()
    assert [f"{w.category.__name__}: {w.message}" for w in caught] == []
    assert [r.getMessage() for r in caplog.records if r.levelno >= 30] == []
    stderr = capfd.readouterr().err
    assert "Writing model shards" not in stderr and "Loading weights" not in stderr, stderr[-2000:]
