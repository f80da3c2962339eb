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
