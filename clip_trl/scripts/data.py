"""The data a script trains on: a Hub id, a saved dataset, shards or the offline emoji set, cut into seeded splits."""

from __future__ import annotations

import logging
import os
from typing import TYPE_CHECKING, Any

import numpy as np

from clip_trl.scripts.arguments import ScriptArguments

if TYPE_CHECKING:
    import datasets


logger = logging.getLogger(__name__)


def _is_saved_dataset(path: str) -> bool:
    """A folder written by `save_to_disk` (a `DatasetDict` or a single `Dataset`)."""
    return os.path.isfile(os.path.join(path, "dataset_dict.json")) or os.path.isfile(
        os.path.join(path, "state.json")
    )


def _take(dataset: datasets.Dataset, rows: Any) -> datasets.Dataset:
    # In memory: never write index files into the user's data folder (nor race other processes doing the same
    # under `accelerate launch`).
    return dataset.select([int(i) for i in rows], keep_in_memory=True)


def _subset(dataset: datasets.Dataset, limit: int | None, seed: int) -> datasets.Dataset:
    # A seeded random subset rather than the first rows: splits are often sorted (the emoji set is in code-point
    # order), and the first N rows would all be one kind of image.
    if limit is None or limit >= len(dataset):
        return dataset
    return _take(dataset, np.random.default_rng(seed).permutation(len(dataset))[:limit])


def _cut(dataset: datasets.Dataset, fractions: list[float], seed: int) -> list[datasets.Dataset]:
    """Shuffle with `seed` (numpy's PCG64: the same on every platform) and cut off the given fractions, in order;
    the rest comes first. Every cut gets at least one row."""
    order = np.random.default_rng(seed).permutation(len(dataset))
    sizes = [max(1, int(len(dataset) * fraction + 0.5)) for fraction in fractions]
    if sum(sizes) >= len(dataset):
        raise ValueError(
            f"{len(dataset)} rows are too few to split off {fractions} and keep some for training."
        )
    parts, end = [], len(dataset)
    for size in reversed(sizes):
        parts.insert(0, _take(dataset, order[end - size : end]))
        end -= size
    return [_take(dataset, order[:end]), *parts]


def load_data(script_args: ScriptArguments) -> datasets.DatasetDict:
    """Load the data of a run as a `DatasetDict` with the train, eval and test splits that `script_args` names.

    - No `dataset_name`: the offline emoji set, split 80/10/10 by `split_seed` (see
      [`~clip_trl.offline.load_emoji_dataset`]), with the splits named as `script_args` says.
    - A `save_to_disk` folder: `datasets.load_from_disk`; anything else: `datasets.load_dataset(dataset_name,
      dataset_config)` (Hub ids, `imagefolder` folders, csv/json/parquet files ...).
    - Missing splits are made from the training split, seeded by `split_seed`: with neither eval nor test split,
      a shuffled 80/10/10 cut (with the default sizes); with only one of them, the other is carved out of train.
    - `max_train_samples` / `max_eval_samples` then keep seeded random subsets.

    Args:
        script_args ([`ScriptArguments`]): which data, which splits, how to subsample.

    Returns:
        `datasets.DatasetDict`: exactly the splits `dataset_train_split`, `dataset_eval_split` and
        `dataset_test_split` (other splits of the source are dropped).

    Raises:
        ValueError: the training split is missing (the message lists the splits present).

    Example:

    ```python
    >>> from clip_trl.scripts.arguments import ScriptArguments
    >>> from clip_trl.scripts.data import load_data
    >>> data = load_data(ScriptArguments())  # the offline emoji set
    >>> sorted(data)
    ['test', 'train', 'validation']

    ```
    """
    import datasets

    args = script_args
    train_name, eval_name, test_name = (
        args.dataset_train_split,
        args.dataset_eval_split,
        args.dataset_test_split,
    )
    if args.dataset_name is None:
        from clip_trl.offline import load_emoji_dataset

        emoji = load_emoji_dataset(
            seed=args.split_seed, validation_size=args.validation_size, test_size=args.test_size
        )
        splits = {train_name: emoji["train"], eval_name: emoji["validation"], test_name: emoji["test"]}
    else:
        name = os.path.expanduser(args.dataset_name)
        if os.path.isdir(name) and _is_saved_dataset(name):
            loaded = datasets.load_from_disk(name)
        else:
            loaded = datasets.load_dataset(name, args.dataset_config)
        if isinstance(loaded, datasets.Dataset):  # a single saved Dataset is its training split
            loaded = datasets.DatasetDict({train_name: loaded})
        if train_name not in loaded:
            raise ValueError(
                f"The data set {args.dataset_name!r} has no split {train_name!r} (set by `dataset_train_split`). "
                f"Splits present: {sorted(loaded)}."
            )
        splits = dict(loaded)
        train = splits[train_name]
        if eval_name not in splits and test_name not in splits:
            splits[train_name], splits[eval_name], splits[test_name] = _cut(
                train, [args.validation_size, args.test_size], args.split_seed
            )
            logger.info(
                "%r has only a %r split: cut it %d/%d/%d (seed %d) into %s / %s / %s.",
                args.dataset_name,
                train_name,
                round(100 * (1 - args.validation_size - args.test_size)),
                round(100 * args.validation_size),
                round(100 * args.test_size),
                args.split_seed,
                train_name,
                eval_name,
                test_name,
            )
        elif eval_name not in splits or test_name not in splits:
            missing = eval_name if eval_name not in splits else test_name
            size = args.validation_size if missing == eval_name else args.test_size
            splits[train_name], splits[missing] = _cut(train, [size], args.split_seed)
            logger.info(
                "Carved the missing %r split out of %r (%.0f%%, seed %d).",
                missing,
                train_name,
                100 * size,
                args.split_seed,
            )
    result = datasets.DatasetDict(
        {
            train_name: _subset(splits[train_name], args.max_train_samples, args.split_seed),
            eval_name: _subset(splits[eval_name], args.max_eval_samples, args.split_seed),
            test_name: _subset(splits[test_name], args.max_eval_samples, args.split_seed),
        }
    )
    for split_name, split in result.items():
        if len(split) == 0:
            raise ValueError(
                f"Split {split_name!r} of {args.dataset_name or 'the emoji data set'!r} is empty."
            )
    return result


def train_dataset(script_args: ScriptArguments, training_args: Any, data: datasets.DatasetDict) -> Any:
    """The training data: a [`~clip_trl.data.shards.ShardStream`] over `--train_shards`, else the training split."""
    if not script_args.train_shards:
        return data[script_args.dataset_train_split]
    from clip_trl.data.shards import ShardStream

    if training_args.max_steps is None or training_args.max_steps <= 0:
        raise ValueError("`--train_shards` streams the data (no length is known): set `--max_steps`.")
    files = [f.strip() for f in script_args.train_shards.split(",") if f.strip()]
    return ShardStream(
        files,
        image_column=training_args.image_column,
        caption_column=training_args.caption_column,
        shuffle_buffer=script_args.shuffle_buffer,
        seed=training_args.seed,
    )
