"""Generated corruptions (clip_trl.adaptation.shifts) and augmented views (clip_trl.adaptation.views)."""

import numpy as np
import pytest
import torch
from PIL import Image

from clip_trl.adaptation.shifts import SHIFTS, corrupt, corrupt_images
from clip_trl.adaptation.views import augmented_views, confident_views


def picture():
    rng = np.random.default_rng(0)
    return Image.fromarray(rng.integers(0, 256, size=(32, 32, 3), dtype=np.uint8))


@pytest.mark.parametrize("shift", SHIFTS)
def test_a_stronger_severity_moves_the_image_further(shift):
    image = picture()
    clean = np.asarray(image, dtype=np.float64)
    distance = [
        np.abs(np.asarray(corrupt(image, shift, s), dtype=np.float64) - clean).mean() for s in (1, 3, 5)
    ]
    assert 0 < distance[0] < distance[1] < distance[2]


def test_contrast_scales_deviations_from_the_channel_mean():
    image = picture()
    pixels = np.asarray(image, dtype=np.float64) / 255
    low = np.asarray(corrupt(image, "contrast", 5), dtype=np.float64) / 255
    mean = pixels.mean(axis=(0, 1))
    np.testing.assert_allclose(low, (pixels - mean) * 0.15 + mean, atol=1 / 255)


def test_noise_is_reproducible_and_differs_between_images():
    images = [picture(), picture()]
    first, again = corrupt_images(images, "gaussian_noise", 3), corrupt_images(images, "gaussian_noise", 3)
    assert all(np.array_equal(np.asarray(a), np.asarray(b)) for a, b in zip(first, again))
    assert not np.array_equal(np.asarray(first[0]), np.asarray(first[1]))


def test_bad_shift_or_severity_is_an_error():
    with pytest.raises(ValueError, match="Unknown shift 'fog'"):
        corrupt(picture(), "fog", 1)
    with pytest.raises(ValueError, match=r"`severity` must be one of \(1, 2, 3, 4, 5\)"):
        corrupt(picture(), "contrast", 6)


def test_views_come_from_the_generator_only_and_keep_the_input_first():
    image = picture()
    one = augmented_views(image, 5, torch.Generator().manual_seed(3))
    two = augmented_views(image, 5, torch.Generator().manual_seed(3))
    assert one[0] is image and all(v.size == image.size for v in one)
    assert all(np.array_equal(np.asarray(a), np.asarray(b)) for a, b in zip(one, two))
    assert not np.array_equal(np.asarray(one[1]), np.asarray(image))


def test_confident_views_keep_the_lowest_entropy_fraction():
    log_probs = torch.log_softmax(
        torch.tensor([[0.0, 0.0, 0.0], [3.0, 0.0, 0.0], [9.0, 0.0, 0.0], [1.0, 0, 0]]), -1
    )
    assert confident_views(log_probs, 0.25).tolist() == [2]
    assert confident_views(log_probs, 0.5).tolist() == [2, 1]
    with pytest.raises(ValueError, match="must be in \\(0, 1\\]"):
        confident_views(log_probs, 0.0)
