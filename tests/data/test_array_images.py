"""Images given as pixels (issue #24): a `datasets` column of NumPy arrays (which Arrow returns as nested lists),
channels last or first, uint8 or floats in [0, 1], trains on exactly the pixels the same images give as PIL."""

from __future__ import annotations

import copy

import datasets
import numpy as np
import pytest
import torch
from PIL import Image

from clip_trl import ClipContrastiveConfig, ClipContrastiveTrainer
from clip_trl.data.collator import ClipDataCollator, with_row_index
from clip_trl.data.rows import load_image

CAPTIONS = ["a red square", "a green square", "a blue square", "a grey square"]


def pixels(n: int = 4) -> list[np.ndarray]:
    generator = np.random.default_rng(0)
    return [generator.integers(0, 256, (20 + 3 * i, 24, 3), dtype=np.uint8) for i in range(n)]


def pil_dataset() -> datasets.Dataset:
    features = datasets.Features({"image": datasets.Image(), "caption": datasets.Value("string")})
    images = [Image.fromarray(a) for a in pixels()]
    return datasets.Dataset.from_dict({"image": images, "caption": CAPTIONS}, features=features)


LAYOUTS = {
    "hwc-uint8": lambda a: a,
    "chw-uint8": lambda a: np.moveaxis(a, -1, 0),
    "hwc-float32": lambda a: a.astype(np.float32) / 255.0,
    "chw-float64": lambda a: np.moveaxis(a, -1, 0) / 255.0,
}


def array_dataset(layout: str) -> datasets.Dataset:
    return datasets.Dataset.from_dict({"image": [LAYOUTS[layout](a) for a in pixels()], "caption": CAPTIONS})


@pytest.mark.parametrize("layout", sorted(LAYOUTS))
def test_array_dataset_collates_the_pil_pixels(tiny, layout):
    _, processor = tiny
    data = array_dataset(layout)
    assert isinstance(data[0]["image"], list)  # Arrow gives nested lists back, not arrays
    collator = ClipDataCollator(processor)
    expected = collator(list(with_row_index(pil_dataset(), ["image"])))["pixel_values"]
    actual = collator(list(with_row_index(data, ["image"])))["pixel_values"]
    assert torch.equal(actual, expected)
    # ... and the decoded images themselves are the same pixels.
    assert np.array_equal(np.asarray(load_image(data[1]["image"])), pixels()[1])


def test_array_dataset_trains_like_the_pil_dataset(tmp_path, _tiny_once):
    losses = []
    for name, data in (("pil", pil_dataset()), ("arrays", array_dataset("chw-float64"))):
        args = ClipContrastiveConfig(
            output_dir=str(tmp_path / name),
            max_steps=1,
            per_device_train_batch_size=4,
            logging_steps=1,
            report_to="none",
            save_strategy="no",
            use_cpu=True,
            disable_tqdm=True,
            seed=0,
        )
        model = copy.deepcopy(_tiny_once[0])
        trainer = ClipContrastiveTrainer(
            model=model, args=args, train_dataset=data, processing_class=_tiny_once[1]
        )
        trainer.train()
        losses.append(next(e["loss"] for e in trainer.state.log_history if "loss" in e))
    assert losses[0] == losses[1]
