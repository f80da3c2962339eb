"""The fast image pipeline gives the model's processor's tensors, bitwise, for any size, aspect ratio and mode."""

import io
import logging

import numpy as np
import pytest
import torch
from PIL import Image, ImageFilter
from transformers.models.clip.image_processing_pil_clip import CLIPImageProcessorPil

from clip_trl import ClipContrastiveConfig, ClipContrastiveTrainer
from clip_trl.data import image_processing as ip_module
from clip_trl.data.collator import ClipDataCollator
from clip_trl.data.image_processing import FastImageTransform, image_transform_for
from clip_trl.data.rows import ProcessorImageTransform, load_image, to_rgb

# (height, width): landscape / portrait photos, exact size, one pixel off, tiny (upscaled and padded by
# nothing), extreme aspect ratios, and the 225x300 case where Pillow's cropped-box resize would differ.
SIZES = [(480, 640), (640, 480), (224, 224), (223, 224), (17, 23), (1000, 37), (37, 1000), (300, 225)]


def photo(height: int, width: int, seed: int = 0) -> Image.Image:
    """Random pixels, blurred: smooth regions and edges like a photo, different on every call."""
    pixels = np.random.default_rng(seed).integers(0, 256, (height, width, 3), dtype=np.uint8)
    return Image.fromarray(pixels).filter(ImageFilter.GaussianBlur(1.5))


def processor_output(image_processor, images):
    return image_processor(images=[to_rgb(image) for image in images], return_tensors="pt")["pixel_values"]


@pytest.fixture(scope="module")
def clip224():
    return CLIPImageProcessorPil()  # OpenAI CLIP's settings: shortest edge 224, bicubic, crop 224


@pytest.mark.parametrize("size", SIZES, ids=lambda s: f"{s[0]}x{s[1]}")
def test_bitwise_equal_to_the_processor_for_sizes_and_aspect_ratios(clip224, size):
    transform = FastImageTransform(clip224)
    assert transform.is_fast
    images = [photo(*size, seed=1), photo(*size, seed=2)]
    assert torch.equal(transform(images), processor_output(clip224, images))


def rgba(size):
    image = photo(*size).convert("RGBA")
    alpha = np.zeros(size, dtype=np.uint8)
    alpha[: size[0] // 2] = 255  # the bottom half is transparent
    image.putalpha(Image.fromarray(alpha))
    return image


MODES = {
    "RGBA": rgba,
    "LA": lambda size: rgba(size).convert("LA"),
    "L": lambda size: photo(*size).convert("L"),
    "P": lambda size: photo(*size).convert("P"),
    "CMYK": lambda size: photo(*size).convert("CMYK"),
    "1": lambda size: photo(*size).convert("1"),
}


@pytest.mark.parametrize("mode", sorted(MODES))
def test_bitwise_equal_for_image_modes(clip224, mode):
    image = MODES[mode]((120, 90))
    assert image.mode == mode
    expected = processor_output(clip224, [image])
    assert torch.equal(FastImageTransform(clip224)([image]), expected)
    if mode in ("RGBA", "LA"):  # transparent pixels become white, not black
        white = torch.tensor([(1 - m) / s for m, s in zip(clip224.image_mean, clip224.image_std)])
        assert torch.allclose(expected[0, :, -1, 112], white, atol=1e-5)


def test_sixteen_bit_greyscale_is_rescaled_not_clipped(clip224):
    # A plain `convert("RGB")` clips 16-bit values at 255 (a white image); `to_rgb` rescales them to 8 bits.
    image = Image.fromarray(np.full((50, 60), 32768, dtype=np.uint16))
    assert image.mode.startswith("I;16")
    grey = FastImageTransform(clip224)([image])
    level = int(32768 / 65535 * 255)  # 127: half of the 16-bit range, not 255
    expected_value = (np.float32(level / 255.0) - np.float32(clip224.image_mean[0])) / np.float32(
        clip224.image_std[0]
    )
    assert grey[0, 0, 0, 0].item() == pytest.approx(float(expected_value), abs=1e-6)


def test_paths_bytes_and_dataset_cells_give_the_same_tensors(tmp_path, tiny):
    _, processor = tiny
    image = photo(70, 50)
    buffer = io.BytesIO()
    image.save(buffer, format="PNG")
    path = tmp_path / "image.png"
    path.write_bytes(buffer.getvalue())
    transform = FastImageTransform(processor.image_processor)
    expected = transform([image])
    for source in (
        str(path),
        path,
        buffer.getvalue(),
        {"bytes": buffer.getvalue(), "path": None},
        {"bytes": None, "path": str(path)},
    ):
        assert torch.equal(transform([source]), expected), type(source)


def test_resize_without_crop_and_other_normalisation(tmp_path):
    # SigLIP-style settings: a fixed (height, width) resize, bilinear, no crop, mean/std 0.5.
    siglip_like = CLIPImageProcessorPil(
        size={"height": 64, "width": 48},
        do_center_crop=False,
        resample=2,
        image_mean=[0.5] * 3,
        image_std=[0.5] * 3,
    )
    transform = FastImageTransform(siglip_like)
    assert transform.is_fast
    images = [photo(100, 30), photo(33, 77)]
    assert torch.equal(transform(images), processor_output(siglip_like, images))


def test_crop_larger_than_the_resized_image_is_zero_padded_like_the_processor():
    padded = CLIPImageProcessorPil(size={"shortest_edge": 20}, crop_size={"height": 32, "width": 24})
    transform = FastImageTransform(padded)
    assert transform.is_fast
    images = [photo(40, 90), photo(90, 40)]
    assert torch.equal(transform(images), processor_output(padded, images))


def test_unknown_settings_fall_back_to_the_processor():
    longest_edge = CLIPImageProcessorPil(size={"shortest_edge": 32, "longest_edge": 40})
    transform = FastImageTransform(longest_edge)
    assert not transform.is_fast
    images = [photo(50, 200)]
    assert torch.equal(transform(images), processor_output(longest_edge, images))


def test_a_mismatch_on_the_probe_images_falls_back_with_a_warning(monkeypatch, caplog, clip224):
    def off_by_one_level(spec):
        table = original(spec)
        table[0, 10] += 0.01
        return table

    original = ip_module._value_lookup_table
    monkeypatch.setattr(ip_module, "_value_lookup_table", off_by_one_level)
    with caplog.at_level(logging.WARNING, logger="clip_trl.data.image_processing"):
        transform = FastImageTransform(clip224)
    assert not transform.is_fast
    assert "differs from CLIPImageProcessorPil by up to 0.01" in caplog.text
    assert "using the processor" in caplog.text


def test_trainers_and_collator_use_the_fast_pipeline_by_default(tiny, emoji, tmp_path):
    model, processor = tiny
    assert isinstance(ClipDataCollator(processor).image_transform, FastImageTransform)
    trainer = ClipContrastiveTrainer(
        model=model,
        args=ClipContrastiveConfig(output_dir=str(tmp_path), report_to="none"),
        processing_class=processor,
        train_dataset=emoji["train"],
    )
    assert isinstance(trainer.data_collator.image_transform, FastImageTransform)
    assert trainer.data_collator.image_transform.is_fast
    args = ClipContrastiveConfig(output_dir=str(tmp_path), report_to="none", image_processing="processor")
    assert isinstance(
        ClipContrastiveTrainer(
            model=model, args=args, processing_class=processor, train_dataset=emoji["train"]
        ).data_collator.image_transform,
        ProcessorImageTransform,
    )
    assert isinstance(image_transform_for(processor.image_processor, "processor"), ProcessorImageTransform)


def test_bad_image_processing_value_is_named():
    with pytest.raises(
        ValueError, match=r"`image_processing` must be one of \('fast', 'processor', 'draft'\), got 'quick'\."
    ):
        ClipContrastiveConfig(output_dir="unused", image_processing="quick")


def test_docstring_example_runs():
    import doctest

    assert doctest.testmod(ip_module).attempted > 0
    assert doctest.testmod(ip_module).failed == 0


# ------------------------------------------------------------------------------------------ JPEG draft mode


def jpeg_bytes(image: Image.Image) -> bytes:
    buffer = io.BytesIO()
    image.save(buffer, format="JPEG", quality=95)
    return buffer.getvalue()


def test_draft_decodes_jpegs_reduced_to_the_resize_size(clip224):
    transform = FastImageTransform(clip224, draft=True)
    assert transform.is_fast and transform.draft_size is not None
    # 640x480 resizes to 298x224: half-size decoding (320x240) is the smallest at least that big; 1280x960
    # gives a quarter (320x240 again); 400x300 cannot be halved (200x150 < 298x224).
    assert transform.draft_size(640, 480) == (298, 224)
    assert transform.draft_size(400, 300) is None
    assert FastImageTransform(clip224).draft_size is None  # off by default
    big = photo(960, 1280, seed=3)
    jpegs = [jpeg_bytes(big), jpeg_bytes(photo(480, 640, seed=4)), jpeg_bytes(photo(300, 400, seed=5))]
    assert [load_image(j, draft=transform.draft_size).size for j in jpegs] == [
        (320, 240),
        (320, 240),
        (400, 300),
    ]
    out = transform(jpegs)
    # Close to the exact pipeline on the same JPEGs (smooth content; the benchmark reports real photos).
    exact = FastImageTransform(clip224)([jpeg_bytes(big)])
    levels = ((out[:1] - exact) * torch.tensor(clip224.image_std).view(1, 3, 1, 1) * 255).abs()
    assert 0 < levels.mean() < 2 and levels.max() < 40


def test_draft_mode_reaches_the_collator_and_png_stays_full_size(tiny):
    model, processor = tiny
    transform = image_transform_for(processor.image_processor, "draft")
    collator = ClipDataCollator(processor, image_transform=transform)
    jpeg = {"bytes": jpeg_bytes(photo(480, 640, seed=6)), "path": None}
    buffer = io.BytesIO()
    photo(480, 640, seed=6).save(buffer, format="PNG")
    png = {"bytes": buffer.getvalue(), "path": None}
    parsed = collator.parse_row({"image": jpeg, "caption": "a"})
    assert parsed["image"].size == (80, 60)  # the tiny model's 32 px input: an eighth of 640x480 suffices
    assert collator.parse_row({"image": png, "caption": "a"})["image"].size == (640, 480)
    assert collator([{"image": jpeg, "caption": "a"}, {"image": png, "caption": "b"}])[
        "pixel_values"
    ].shape == (2, 3, 32, 32)
