import copy
import os

import datasets
import pytest
import torch

from clip_trl.offline import build_clip, load_emoji_dataset

# Under pytest-xdist each worker gets one core's worth of threads (two workers × two torch threads would
# oversubscribe a 2-core machine); the variable is inherited by the processes a test launches.
if os.environ.get("PYTEST_XDIST_WORKER"):
    os.environ.setdefault("OMP_NUM_THREADS", "1")
    torch.set_num_threads(int(os.environ["OMP_NUM_THREADS"]))


@pytest.fixture(scope="session")
def emoji():
    """A small slice of the offline emoji data set (real images, real names)."""
    data = load_emoji_dataset()
    return datasets.DatasetDict(
        {"train": data["train"].select(range(64)), "test": data["test"].select(range(32))}
    )


@pytest.fixture(scope="session")
def _tiny_once():
    """The tiny random CLIP and its processor, built once per test run (per xdist worker)."""
    return build_clip("tiny", seed=0)


@pytest.fixture()
def tiny(_tiny_once):
    """A fresh copy of the tiny random CLIP (tests train and change it) and its processor (real CLIP tokenizer)."""
    model, processor = _tiny_once
    return copy.deepcopy(model), processor


def pytest_collection_modifyitems(config, items):
    """`cuda`-marked tests are skipped without a CUDA device, unless `CLIP_TRL_CUDA_TESTS_ON_CPU=1` (what
    `benchmarks/gpu_suite.sh --dry-run` sets) asks to run them on CPU to check the tests themselves."""
    if torch.cuda.is_available() or os.environ.get("CLIP_TRL_CUDA_TESTS_ON_CPU") == "1":
        return
    skip = pytest.mark.skip(
        reason="needs a CUDA device (benchmarks/gpu_suite.sh runs these on the GPU machine)"
    )
    for item in items:
        if "cuda" in item.keywords:
            item.add_marker(skip)
