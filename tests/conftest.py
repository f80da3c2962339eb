import datasets
import pytest

from clip_trl.offline import build_clip, load_emoji_dataset


@pytest.fixture(scope="session")
def emoji():
    """A small slice of the offline emoji data set (real images, real names)."""
    data = load_emoji_dataset()
    return datasets.DatasetDict({"train": data["train"].select(range(64)), "test": data["test"].select(range(32))})


@pytest.fixture()
def tiny():
    """A fresh tiny random CLIP and its processor (real CLIP tokenizer)."""
    return build_clip("tiny", seed=0)
