"""The SIMD JPEG backend of draft mode (simplejpeg + OpenCV): close to the processor, the same decoded sizes and
orientation as Pillow, Pillow for what it does not decode, and a clean fallback when the extra is missing."""

import io
import sys

import numpy as np
import pytest
import torch
from PIL import Image, ImageFilter
from transformers.models.clip.image_processing_pil_clip import CLIPImageProcessorPil

from clip_trl.data import simd_jpeg
from clip_trl.data.image_processing import FastImageTransform
from clip_trl.data.rows import BadRowError, load_image

pytest.importorskip("simplejpeg")
pytest.importorskip("cv2")

# Stated bound: on photo-like JPEGs the SIMD path stays within this many 8-bit levels of the processor's output
# (normalised difference x std x 255), max and mean; benchmarks/preprocess.py reports real photos.
MAX_LEVELS, MEAN_LEVELS = 20, 3.0


def photo(height: int, width: int, seed: int = 0) -> Image.Image:
    pixels = np.random.default_rng(seed).integers(0, 256, (height, width, 3), dtype=np.uint8)
    return Image.fromarray(pixels).filter(ImageFilter.GaussianBlur(1.5))


def encode(image: Image.Image, fmt: str = "JPEG", **kwargs) -> bytes:
    buffer = io.BytesIO()
    image.save(buffer, format=fmt, **({"quality": 95} if fmt == "JPEG" else {}), **kwargs)
    return buffer.getvalue()


@pytest.fixture(scope="module")
def clip224():
    return CLIPImageProcessorPil()


def levels(actual: torch.Tensor, expected: torch.Tensor, processor) -> torch.Tensor:
    return ((actual - expected) * torch.tensor(processor.image_std).view(1, 3, 1, 1) * 255).abs()


@pytest.mark.parametrize("size", [(480, 640), (240, 320), (960, 1280), (640, 480), (2000, 3000)])
def test_simd_output_is_close_to_the_processor(clip224, size):
    transform = FastImageTransform(clip224, draft=True)
    assert transform.jpeg_backend == "simd"
    jpegs = [encode(photo(*size, seed=seed)) for seed in range(2)]
    expected = clip224(images=[load_image(j) for j in jpegs], return_tensors="pt")["pixel_values"]
    difference = levels(transform(jpegs), expected, clip224)
    assert 0 < difference.mean() < MEAN_LEVELS and difference.max() <= MAX_LEVELS


def test_simd_decodes_at_pillows_draft_size_and_marks_its_images(clip224):
    simd = FastImageTransform(clip224, draft=True).draft_size
    pillow = FastImageTransform(clip224, draft=True, jpeg_backend="pillow").draft_size
    for height, width in ((480, 640), (960, 1280), (300, 400), (1001, 1333)):
        jpeg = encode(photo(height, width))
        decoded, reference = load_image(jpeg, draft=simd), load_image(jpeg, draft=pillow)
        assert decoded.size == reference.size and decoded.mode == "RGB"
        assert decoded.info.get(simd_jpeg.SIMD_MARK) and not reference.info.get(simd_jpeg.SIMD_MARK)
        # The same reduced decode by libjpeg-turbo: equal to Pillow's up to rounding.
        assert np.abs(np.asarray(decoded, dtype=int) - np.asarray(reference, dtype=int)).max() <= 2


def test_fallback_to_pillow_when_the_extra_is_missing(clip224, monkeypatch):
    jpegs = [encode(photo(480, 640, seed=1))]
    with_pillow = FastImageTransform(clip224, draft=True, jpeg_backend="pillow")(jpegs)
    monkeypatch.setitem(sys.modules, "simplejpeg", None)  # `import simplejpeg` now raises ImportError
    simd_jpeg.simd_modules.cache_clear()
    try:
        assert not simd_jpeg.simd_available()
        transform = FastImageTransform(clip224, draft=True)
        assert transform.jpeg_backend == "pillow"
        assert torch.equal(transform(jpegs), with_pillow)
        assert simd_jpeg.decode_jpeg(jpegs[0], lambda w, h: None) is None
        with pytest.raises(
            ImportError, match=r"`jpeg_backend='simd'` needs simplejpeg and OpenCV.*fast-jpeg"
        ):
            FastImageTransform(clip224, draft=True, jpeg_backend="simd")
    finally:
        monkeypatch.undo()
        simd_jpeg.simd_modules.cache_clear()
    assert simd_jpeg.simd_available()


def test_bad_backend_name(clip224):
    with pytest.raises(
        ValueError, match=r"`jpeg_backend` must be one of \('auto', 'simd', 'pillow'\), got 'x'"
    ):
        FastImageTransform(clip224, draft=True, jpeg_backend="x")


@pytest.mark.parametrize("fmt", ["PNG", "WEBP", "PIL"])
def test_non_jpeg_inputs_are_unaffected(clip224, fmt):
    image = photo(480, 640, seed=2)
    cell = image if fmt == "PIL" else {"bytes": encode(image, fmt), "path": None}
    simd = FastImageTransform(clip224, draft=True)
    pillow = FastImageTransform(clip224, draft=True, jpeg_backend="pillow")
    assert not load_image(cell, draft=simd.draft_size).info.get(simd_jpeg.SIMD_MARK)
    assert torch.equal(simd([cell]), pillow([cell]))


def test_jpeg_paths_are_decoded_too(clip224, tmp_path):
    path = tmp_path / "photo.jpg"
    path.write_bytes(encode(photo(480, 640, seed=3)))
    draft = FastImageTransform(clip224, draft=True).draft_size
    assert load_image(str(path), draft=draft).info.get(simd_jpeg.SIMD_MARK)
    with pytest.raises(
        BadRowError, match=r"Row 7, column 'image': image file '.*missing.jpg' does not exist"
    ):
        load_image(str(tmp_path / "missing.jpg"), draft=draft, row=7)


def test_exif_orientation_is_ignored_like_pillow(clip224):
    exif = Image.Exif()
    exif[0x0112] = 6  # "rotate 90 CW to display": Image.open (and so the processor) does not apply it
    jpeg = encode(photo(480, 640, seed=4), exif=exif.tobytes())
    simd = FastImageTransform(clip224, draft=True)
    decoded = load_image(jpeg, draft=simd.draft_size)
    assert decoded.info.get(simd_jpeg.SIMD_MARK) and decoded.size == (
        320,
        240,
    )  # landscape, as Pillow reads it
    expected = clip224(images=[load_image(jpeg)], return_tensors="pt")["pixel_values"]
    assert levels(simd([jpeg]), expected, clip224).max() <= MAX_LEVELS


def test_cmyk_jpegs_go_to_pillow(clip224):
    jpeg = encode(photo(480, 640, seed=5).convert("CMYK"))
    simd = FastImageTransform(clip224, draft=True)
    pillow = FastImageTransform(clip224, draft=True, jpeg_backend="pillow")
    assert simd_jpeg.decode_jpeg(jpeg, lambda w, h: None) is None
    assert not load_image(jpeg, draft=simd.draft_size).info.get(simd_jpeg.SIMD_MARK)
    assert torch.equal(simd([jpeg]), pillow([jpeg]))


def test_greyscale_jpegs_decode_to_the_same_rgb_as_pillow(clip224):
    jpeg = encode(photo(240, 320, seed=6).convert("L"))
    decoded = simd_jpeg.decode_jpeg(jpeg, lambda w, h: None)  # full size: no reduction needed
    assert decoded is not None and decoded.mode == "RGB"
    assert np.array_equal(np.asarray(decoded), np.asarray(load_image(jpeg)))
    expected = clip224(images=[load_image(jpeg)], return_tensors="pt")["pixel_values"]
    assert levels(FastImageTransform(clip224, draft=True)([jpeg]), expected, clip224).max() <= MAX_LEVELS


def test_truncated_jpeg_is_the_same_row_error(clip224):
    jpeg = encode(photo(480, 640, seed=7))[:2000]
    errors = []
    for backend in ("simd", "pillow"):
        draft = FastImageTransform(clip224, draft=True, jpeg_backend=backend).draft_size
        with pytest.raises(BadRowError) as caught:
            load_image(jpeg, draft=draft, row=3)
        errors.append(str(caught.value))
    assert errors[0] == errors[1] and errors[0].startswith("Row 3, column 'image': cannot decode the image")


def test_the_exact_path_stays_exact_on_simd_decoded_images(clip224):
    jpeg = encode(photo(480, 640, seed=8))
    decoded = simd_jpeg.decode_jpeg(jpeg, lambda w, h: None)  # marked, full size
    expected = clip224(images=[decoded], return_tensors="pt")["pixel_values"]
    assert torch.equal(FastImageTransform(clip224)([decoded]), expected)  # "fast": Pillow's resize, bitwise
