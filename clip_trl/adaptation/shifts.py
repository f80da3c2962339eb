"""Generated distribution shifts: image corruptions at five severities, in the manner of CIFAR-10-C / ImageNet-C.

Hendrycks & Dietterich (2019, "Benchmarking Neural Network Robustness to Common Corruptions and Perturbations")
measure a model on its clean test set corrupted at severities 1 (mild) to 5 (strong). Three of their corruptions,
made here with PIL and NumPy only, with the parameters their CIFAR-10-C set uses for 32-pixel images:

- `"gaussian_blur"`: a Gaussian blur of standard deviation `σ ∈ (0.4, 0.6, 0.7, 0.8, 1.0)` pixels;
- `"gaussian_noise"`: `x + N(0, σ²)` on pixels in [0, 1], `σ ∈ (0.04, 0.06, 0.08, 0.09, 0.10)`, then clipped;
- `"contrast"`: `(x - mean) · c + mean` with the image's mean per channel, `c ∈ (0.75, 0.5, 0.4, 0.3, 0.15)`.

The noise is drawn from a generator seeded by `seed` (and the image's position in [`corrupt_images`]), so a
shifted test set is the same on every run and machine.

Example:

```python
>>> from PIL import Image
>>> from clip_trl.adaptation.shifts import corrupt
>>> image = Image.new("RGB", (32, 32), "black")
>>> image.paste((255, 255, 255), (0, 0, 16, 32))  # half white
>>> low = corrupt(image, "contrast", 5)  # every pixel pulled toward the image's mean, 127.5
>>> low.getpixel((0, 0)), low.getpixel((31, 0))
((147, 147, 147), (108, 108, 108))
>>> corrupt(image, "gaussian_noise", 3, seed=0).size
(32, 32)

```
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
from PIL import Image, ImageFilter

__all__ = ["SEVERITIES", "SHIFTS", "SHIFT_PARAMETERS", "corrupt", "corrupt_images"]

SHIFT_PARAMETERS: dict[str, tuple[float, ...]] = {
    "gaussian_blur": (0.4, 0.6, 0.7, 0.8, 1.0),
    "gaussian_noise": (0.04, 0.06, 0.08, 0.09, 0.10),
    "contrast": (0.75, 0.5, 0.4, 0.3, 0.15),
}
"""Each shift's parameter at severities 1 to 5 (blur: σ in pixels; noise: σ on [0, 1]; contrast: the factor)."""
SHIFTS = tuple(SHIFT_PARAMETERS)
SEVERITIES = (1, 2, 3, 4, 5)


def _check(shift: str, severity: int) -> float:
    if shift not in SHIFT_PARAMETERS:
        raise ValueError(f"Unknown shift {shift!r}; choose one of {', '.join(SHIFTS)}.")
    if severity not in SEVERITIES:
        raise ValueError(f"`severity` must be one of {SEVERITIES} (1 mild, 5 strong), got {severity!r}.")
    return SHIFT_PARAMETERS[shift][severity - 1]


def corrupt(image: Image.Image, shift: str, severity: int, seed: int = 0) -> Image.Image:
    """`image` (any PIL mode; returned as RGB) under `shift` at `severity` (1 to 5).

    Raises:
        ValueError: an unknown shift or a severity outside 1-5.
    """
    parameter = _check(shift, severity)
    image = image.convert("RGB")
    if shift == "gaussian_blur":
        return image.filter(ImageFilter.GaussianBlur(radius=parameter))
    pixels = np.asarray(image, dtype=np.float32) / 255.0
    if shift == "gaussian_noise":
        noise = np.random.default_rng(seed).normal(0.0, parameter, size=pixels.shape).astype(np.float32)
        pixels = pixels + noise
    else:  # contrast
        mean = pixels.mean(axis=(0, 1), keepdims=True)  # per channel
        pixels = (pixels - mean) * parameter + mean
    return Image.fromarray((np.clip(pixels, 0.0, 1.0) * 255.0 + 0.5).astype(np.uint8), mode="RGB")


def corrupt_images(
    images: Sequence[Image.Image], shift: str, severity: int, seed: int = 0
) -> list[Image.Image]:
    """Every image of `images` under `shift` at `severity`; image `i`'s noise is drawn with seed `(seed, i)`."""
    _check(shift, severity)
    return [
        corrupt(image, shift, severity, seed=int(np.random.SeedSequence([seed, i]).generate_state(1)[0]))
        for i, image in enumerate(images)
    ]
