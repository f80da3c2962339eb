"""Small data builders shared by the tests."""

import io

import datasets
from PIL import Image


def png_bytes(color: tuple[int, ...], mode: str = "RGB", size: int = 40) -> bytes:
    buffer = io.BytesIO()
    Image.new(mode, (size, size), color).save(buffer, format="PNG")
    return buffer.getvalue()


def colour_dataset(captions: list, images: list | None = None) -> datasets.Dataset:
    """Rows of solid-colour PNGs (distinct per row unless `images` is given) with the given captions."""
    if images is None:
        images = [
            {"bytes": png_bytes(((37 * i) % 256, (91 * i) % 256, (53 * i) % 256)), "path": None}
            for i in range(len(captions))
        ]
    caption_feature = (
        datasets.Sequence(datasets.Value("string"))
        if any(isinstance(c, list) for c in captions)
        else datasets.Value("string")
    )
    features = datasets.Features({"image": datasets.Image(), "caption": caption_feature})
    return datasets.Dataset.from_dict({"image": images, "caption": captions}, features=features)
