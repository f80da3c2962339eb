"""Web-scale data: webdataset `.tar` shards streamed through `datasets`, split per process, resumable exactly.

What img2dataset writes for LAION, DataComp or CC12M is a folder of `.tar` shards, each holding samples as
`<key>.jpg` (or `.png`, `.webp`) + `<key>.txt` (the caption) + `<key>.json` (metadata). [`ShardStream`] reads them
with `datasets`' own `webdataset` builder in streaming mode (no copy to Arrow, nothing downloaded: it works
offline on local files) and is what you pass to either trainer as `train_dataset`:

- **each process reads its own shards**: shards are dealt out with `datasets.distributed.split_dataset_by_node`
  to every (process, DataLoader worker) pair, so nothing is read twice and no process waits on another's
  reading (accelerate's default for iterable datasets is the opposite: process 0 reads everything and sends
  batches to the others);
- **shuffling**: the shard order is reshuffled every epoch and rows go through a shuffle buffer
  (`IterableDataset.shuffle(seed, buffer_size)`);
- **epochs**: the stream repeats (a new epoch, reshuffled, each time a process's shards are exhausted), so every
  process always has a next batch and the run length is `max_steps`. Within an epoch every row is seen exactly
  once over all processes;
- **exact resume mid-epoch**: see below.

Why not `datasets`' own `IterableDataset.state_dict()`: it documents that "examples from shuffle buffers are lost
when resuming", so it would skip up to `buffer_size` rows per worker, and it lives in the DataLoader worker
processes, out of the trainer's reach. The stream is instead a pure function of (seed, epoch, process, worker
role), so its position is one number, the batches a process has consumed (`global_step x
gradient_accumulation_steps`): [`ShardStream.state_dict`] holds it, the trainers save it in the checkpoint
(`trainer_state.json`, through the Trainer's `stateful_callbacks`), and a resumed stream re-reads and drops the
rows already trained on *before decoding them* (reading a tar member is cheap next to decoding a JPEG), then
continues with exactly the rows and order of an uninterrupted run. The Trainer's own fast-forward (decode and
drop whole batches) is turned off for the stream.

Example:

```python
>>> import tempfile
>>> from clip_trl.offline import load_emoji_dataset
>>> from clip_trl.data.shards import ShardStream, write_shards
>>> rows = load_emoji_dataset(max_examples=16)["train"]
>>> files = write_shards(rows, tempfile.mkdtemp(), num_shards=4)
>>> stream = ShardStream(files, num_epochs=1, shuffle_buffer=0)
>>> [row["caption"] for row in stream] == rows["caption"]  # one pass, in order (no shuffling asked for)
True

```
"""

from __future__ import annotations

import io
import json
import logging
import os
import tarfile
from collections.abc import Iterator, Sequence
from typing import Any

import torch
from transformers import TrainerCallback
from transformers.trainer_callback import ExportableState

from clip_trl.data.collator import ROW_INDEX_KEY, IndexedIterableDataset

logger = logging.getLogger(__name__)

IMAGE_EXTENSIONS = ("jpg", "jpeg", "png", "webp")
CAPTION_EXTENSION = "txt"
METADATA_EXTENSION = "json"


# ------------------------------------------------------------------------------------------------ writing


def _image_bytes(value: Any, image_format: str | None) -> tuple[bytes, str]:
    """(encoded bytes, extension) of one image cell; original bytes are kept unless a format is asked for."""
    from PIL import Image

    from clip_trl.data.rows import load_image

    if isinstance(value, dict) and value.get("bytes") is not None and image_format is None:
        data = value["bytes"]
        kind = Image.open(io.BytesIO(data)).format or "PNG"
        return data, {"JPEG": "jpg", "PNG": "png", "WEBP": "webp"}.get(kind, "png")
    image = value if isinstance(value, Image.Image) and image_format is None else load_image(value)
    fmt = (image_format or "png").lower()
    fmt = "jpg" if fmt == "jpeg" else fmt
    if fmt not in ("jpg", "png", "webp"):
        raise ValueError(f"`image_format` must be 'jpg', 'png' or 'webp', got {image_format!r}.")
    buffer = io.BytesIO()
    if fmt == "jpg":
        image.convert("RGB").save(buffer, format="JPEG", quality=90)
    else:
        image.save(buffer, format=fmt.upper())
    return buffer.getvalue(), fmt


def _add_member(tar: tarfile.TarFile, name: str, data: bytes) -> None:
    info = tarfile.TarInfo(name)
    info.size = len(data)
    info.mtime = 0  # byte-identical shards from identical rows
    tar.addfile(info, io.BytesIO(data))


def write_shards(
    dataset: Any,
    folder: str,
    num_shards: int,
    image_column: str = "image",
    caption_column: str = "caption",
    image_format: str | None = None,
    prefix: str = "shard",
) -> list[str]:
    """Write any `datasets.Dataset` as webdataset `.tar` shards, the layout img2dataset produces.

    Row `i` becomes `<key>.<ext>` (the image: its original bytes, or re-encoded as `image_format`), `<key>.txt`
    (the caption; a list of captions goes into the json) and, when the row has other columns, `<key>.json` with
    them. Keys are the row index, zero-padded; rows are dealt to shards in contiguous blocks.

    Args:
        dataset: a `datasets.Dataset` (or any sized sequence of dict rows).
        folder: where to write `{prefix}-00000.tar`, ... (created if missing).
        num_shards: how many shards (at least 1, at most the number of rows).
        image_column / caption_column: the columns holding the image and the caption.
        image_format: `None` keeps encoded images as they are (PIL images become PNG); `"jpg"`, `"png"` or
            `"webp"` re-encodes every image.
        prefix: the shard file name prefix.

    Returns:
        The shard paths, in order.
    """
    n = len(dataset)
    if not 1 <= num_shards <= max(n, 1) or n == 0:
        raise ValueError(f"`num_shards` must be between 1 and the number of rows ({n}), got {num_shards}.")
    import datasets

    features = getattr(dataset, "features", None) or {}
    if isinstance(features.get(image_column), datasets.Image) and features[image_column].decode:
        dataset = dataset.cast_column(image_column, datasets.Image(decode=False))
    os.makedirs(folder, exist_ok=True)
    width = max(9, len(str(n)))
    paths = []
    for shard in range(num_shards):
        path = os.path.join(folder, f"{prefix}-{shard:05d}.tar")
        start, stop = shard * n // num_shards, (shard + 1) * n // num_shards
        with tarfile.open(path, "w") as tar:
            for index in range(start, stop):
                row = dict(dataset[index])
                key = f"{index:0{width}d}"
                if image_column not in row:
                    raise ValueError(f"Row {index} has no column '{image_column}'; it has {sorted(row)}.")
                data, ext = _image_bytes(row.pop(image_column), image_format)
                _add_member(tar, f"{key}.{ext}", data)
                caption = row.pop(caption_column, None)
                if isinstance(caption, str):
                    _add_member(tar, f"{key}.{CAPTION_EXTENSION}", caption.encode("utf-8"))
                elif caption is not None:
                    row[caption_column] = caption
                if row:
                    try:
                        _add_member(tar, f"{key}.{METADATA_EXTENSION}", json.dumps(row).encode("utf-8"))
                    except TypeError as error:
                        raise ValueError(
                            f"Row {index}: columns {sorted(row)} cannot be written as the sample's json "
                            f"({error}). Drop or convert them first (`dataset.remove_columns`)."
                        ) from error
        paths.append(path)
    return paths


# ------------------------------------------------------------------------------------------------ reading


def _braces(pattern: str) -> list[str]:
    """Expand webdataset / img2dataset brace ranges: `"{00000..00003}.tar"` -> 4 names, zero padding kept."""
    import re

    match = re.search(r"\{(\d+)\.\.(\d+)\}", pattern)
    if match is None:
        return [pattern]
    first, last = match.group(1), match.group(2)
    width = len(first) if first.startswith("0") else 0
    names = [
        pattern[: match.start()] + f"{i:0{width}d}" + pattern[match.end() :]
        for i in range(int(first), int(last) + 1)
    ]
    return [expanded for name in names for expanded in _braces(name)]


def _expand(data_files: str | Sequence[str]) -> list[str]:
    """Shard paths from paths, globs (`*.tar`) and brace ranges (`{00000..00099}.tar`), in order."""
    import glob

    patterns = [data_files] if isinstance(data_files, (str, os.PathLike)) else list(data_files)
    files: list[str] = []
    for pattern in patterns:
        for name in _braces(os.fspath(pattern)):
            files.extend(sorted(glob.glob(name)) if glob.has_magic(name) else [name])
    if not files:
        raise ValueError(f"No shard matches {data_files!r}.")
    missing = [f for f in files if "://" not in f and not os.path.exists(f)]
    if missing:
        raise ValueError(f"{len(missing)} of {len(files)} shard(s) do not exist, e.g. {missing[0]!r}.")
    return files


class ShardStream(IndexedIterableDataset):
    """Webdataset shards as a resumable, per-process training stream (see the module docstring).

    Rows come out as `{image_column: {"bytes", "path"}, caption_column: str, "__key__", "__url__", ...json
    fields}`, images still encoded (the collator decodes them in the DataLoader workers). A row's caption is its
    `.txt`, else the json's `caption_column` field.

    Args:
        data_files: shard paths, glob patterns (`"shards/*.tar"`), brace ranges (`"shards/{00000..00099}.tar"`,
            img2dataset's naming), or a list of these. Local files, or any fsspec URL `datasets` streams from.
        image_column / caption_column: the names the rows get (the trainer config's names).
        shuffle_buffer: rows in each reader's shuffle buffer; with any value above 0 the shard order is reshuffled
            every epoch too (1: shard order only). 0 reads shards and rows in order.
        seed: seeds both shuffles; epoch `e` uses `seed + e` (datasets' `set_epoch`).
        num_epochs: `None` (default) repeats forever and the trainer stops at `max_steps`; an int stops after
            that many passes (for inspection; a trainer run would stop early on one process and hang the others).
        rank / world_size: this process and the number of processes; the trainers set them from their
            `TrainingArguments`; otherwise read from torchrun's `RANK` / `WORLD_SIZE`.
    """

    def __init__(
        self,
        data_files: str | Sequence[str],
        image_column: str = "image",
        caption_column: str = "caption",
        shuffle_buffer: int = 1000,
        seed: int = 0,
        num_epochs: int | None = None,
        rank: int | None = None,
        world_size: int | None = None,
    ) -> None:
        self.files = _expand(data_files)
        self.image_column = image_column
        self.caption_column = caption_column
        self.shuffle_buffer = int(shuffle_buffer)
        self.seed = int(seed)
        self.num_epochs = num_epochs
        self.rank = int(os.environ.get("RANK", 0)) if rank is None else rank
        self.world_size = int(os.environ.get("WORLD_SIZE", 1)) if world_size is None else world_size
        # Set by the trainer (or `load_state_dict`): rows are consumed in batches of `batch_size` by `num_workers`
        # DataLoader workers taking turns, and `start_batch` batches of this process were already trained on.
        self.batch_size = 1
        self.num_workers = 0
        self.start_batch = 0
        self.dataset = self  # `IndexedIterableDataset` interface
        self.column_names = [image_column, caption_column]

    # ---- position

    def layout(self) -> dict[str, Any]:
        """What the order of rows depends on; a resume with a different layout cannot continue exactly."""
        return {
            "files": [os.path.basename(f) for f in self.files],
            "shuffle_buffer": self.shuffle_buffer,
            "seed": self.seed,
            "world_size": self.world_size,
            "batch_size": self.batch_size,
            "num_workers": self.num_workers,
        }

    def state_dict(self) -> dict[str, Any]:
        """The position: batches this process consumed (`start_batch`), and the layout it is valid for."""
        return {"batches": self.start_batch, "layout": self.layout()}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        """Continue after `state["batches"]` batches; raises if the layout changed since `state` was taken."""
        saved = state.get("layout")
        if saved is not None and saved != self.layout():
            changed = sorted(
                k for k in set(saved) | set(self.layout()) if saved.get(k) != self.layout().get(k)
            )
            raise ValueError(
                f"Cannot resume the shard stream exactly: {changed} changed since the checkpoint (saved "
                f"{ {k: saved.get(k) for k in changed} }, now { {k: self.layout().get(k) for k in changed} }). "
                "Resume with the same shards, seed, shuffle buffer, number of processes, per-device batch size "
                "and `dataloader_num_workers`, or start a new run."
            )
        self.start_batch = int(state["batches"])

    # ---- iteration

    def _virtual_node(self) -> tuple[int, int, int]:
        """(role, roles per process, rows to skip) of the calling DataLoader worker (or of the main process).

        The DataLoader takes batches from its workers in turn, starting at worker 0 on every new iterator. So a
        resumed run's worker `w` plays the part that worker `(w + start_batch) % W` played: batch `start_batch +
        j` then comes from the same role, with the same rows, as in an uninterrupted run.
        """
        info = torch.utils.data.get_worker_info()
        roles = info.num_workers if info is not None else 1
        worker = info.id if info is not None else 0
        role = (worker + self.start_batch) % roles
        done = self.start_batch // roles + (1 if role < self.start_batch % roles else 0)
        return role, roles, done * self.batch_size

    def _epoch_dataset(self, epoch: int, node: int, nodes: int) -> Any:
        import datasets
        from datasets.distributed import split_dataset_by_node

        dataset = datasets.load_dataset(
            "webdataset", data_files={"train": self.files}, split="train", streaming=True
        )
        dataset = dataset.decode(False)  # images stay bytes until the collator, in the workers
        if self.shuffle_buffer > 0:
            # Reshuffles the shard order (seed + epoch) and passes rows through the buffer; a buffer of 1 shuffles
            # the shard order only.
            dataset = dataset.shuffle(seed=self.seed, buffer_size=self.shuffle_buffer)
        if dataset.num_shards % nodes and epoch == 0:  # once per reader, not every pass
            logger.warning(
                f"{dataset.num_shards} shards do not divide over {nodes} readers (processes x DataLoader workers): "
                f"every reader reads all shards and keeps 1 row in {nodes}. Write a multiple of {nodes} shards to "
                "give each reader its own files."
            )
        dataset = split_dataset_by_node(dataset, rank=node, world_size=nodes)
        dataset.set_epoch(epoch)  # after the split, which does not carry the epoch over
        return dataset

    def _row(self, raw: dict[str, Any], index: int) -> dict[str, Any]:
        row: dict[str, Any] = {}
        metadata = raw.get(METADATA_EXTENSION)
        if isinstance(metadata, dict):
            row.update(metadata)
        image = next((raw[ext] for ext in IMAGE_EXTENSIONS if raw.get(ext) is not None), None)
        row[self.image_column] = image
        caption = raw.get(CAPTION_EXTENSION)
        if caption is not None:
            row[self.caption_column] = caption
        else:
            row.setdefault(
                self.caption_column, None
            )  # a missing caption is reported by the collator, with the row
        row["__key__"], row["__url__"] = raw.get("__key__"), raw.get("__url__")
        row[ROW_INDEX_KEY] = index
        return row

    def __iter__(self) -> Iterator[dict[str, Any]]:
        role, roles, skip = self._virtual_node()
        node, nodes = self.rank * roles + role, self.world_size * roles
        epoch, index = 0, 0
        while self.num_epochs is None or epoch < self.num_epochs:
            seen = 0
            # `.iter()` rather than `iter(dataset)`: the latter would split the shards over DataLoader workers once
            # more, by worker id; the split above is already per worker (by role).
            for chunk in self._epoch_dataset(epoch, node, nodes).iter(batch_size=64):
                columns = list(chunk)
                for values in zip(*(chunk[c] for c in columns)):
                    seen += 1
                    index += 1
                    if skip:  # already trained on before the checkpoint: dropped before any decoding
                        skip -= 1
                        continue
                    yield self._row(dict(zip(columns, values)), index - 1)
            if seen == 0:
                raise ValueError(
                    f"Reader {node} of {nodes} (process {self.rank}, DataLoader worker {role}) got no rows from "
                    f"{len(self.files)} shard(s). Use at least as many rows as processes x `dataloader_num_workers`."
                )
            epoch += 1

    def set_epoch(self, epoch: int) -> None:
        """No-op: the stream moves to the next epoch by itself (the Trainer sees one endless epoch)."""


# -------------------------------------------------------------------------------------- trainer integration


class ShardStreamCallback(TrainerCallback, ExportableState):
    """Saves the stream's position in every checkpoint and sets it back on resume.

    The state goes into `trainer_state.json` (`stateful_callbacks`), which the Trainer writes and reads itself;
    the callback reads the saved copy from `state.stateful_callbacks` at `on_train_begin`.
    """

    def __init__(self) -> None:
        self.stream: ShardStream | None = None
        self.ignore_data_skip: bool | None = None

    def state(self) -> dict[str, Any]:
        return {
            "args": {},
            "attributes": {"stream": self.stream.state_dict() if self.stream is not None else None},
        }

    def on_train_begin(
        self, args: Any, state: Any, control: Any, train_dataloader: Any = None, **kwargs: Any
    ) -> None:
        stream = getattr(train_dataloader, "dataset", None)
        if not isinstance(stream, ShardStream):
            return
        self.stream = stream
        saved = (state.stateful_callbacks or {}).get(type(self).__name__)
        saved = (saved[0] if isinstance(saved, list) else saved) or {}
        saved = saved.get("attributes", {}).get("stream")
        batches = state.global_step * args.gradient_accumulation_steps
        if state.global_step and saved is None:
            raise ValueError(
                f"Resuming at step {state.global_step} from a checkpoint without a saved shard-stream position: it "
                "was not written by a run on a `ShardStream`, so where to continue in the shards is unknown."
            )
        if saved is not None:
            stream.load_state_dict(saved)
            if stream.start_batch != batches:
                raise ValueError(
                    f"The checkpoint's shard-stream position ({stream.start_batch} batches) does not match its "
                    f"step ({state.global_step} x {args.gradient_accumulation_steps} accumulation steps)."
                )
        stream.start_batch = batches

    def on_step_end(self, args: Any, state: Any, control: Any, **kwargs: Any) -> None:
        if self.stream is not None:  # what the next checkpoint saves
            self.stream.start_batch = state.global_step * args.gradient_accumulation_steps

    def on_train_end(self, args: Any, state: Any, control: Any, **kwargs: Any) -> None:
        if self.ignore_data_skip is not None:
            args.ignore_data_skip = self.ignore_data_skip
            self.ignore_data_skip = None


def train_dataloader(trainer: Any) -> torch.utils.data.DataLoader:
    """The DataLoader for a [`ShardStream`] `train_dataset`; called from `ClipBaseTrainer.get_train_dataloader`.

    Not passed through `accelerator.prepare`: the stream is already split per process (accelerate would either
    read everything on process 0 and dispatch, or make every process read everything and keep a slice); batches
    are moved to the device by the Trainer's `_prepare_inputs`.
    """
    stream: ShardStream = trainer.train_dataset
    args = trainer.args
    stream.rank, stream.world_size = args.process_index, args.world_size
    stream.batch_size = trainer._train_batch_size
    stream.num_workers = args.dataloader_num_workers
    callback = next(
        (c for c in trainer.callback_handler.callbacks if isinstance(c, ShardStreamCallback)), None
    )
    if callback is None:
        callback = ShardStreamCallback()
        trainer.add_callback(callback)
    # The stream fast-forwards itself (rows dropped undecoded); the Trainer's fast-forward would decode and drop
    # every trained batch again, on top. Restored at the end of training.
    if callback.ignore_data_skip is None:
        callback.ignore_data_skip = args.ignore_data_skip
    args.ignore_data_skip = True
    workers = args.dataloader_num_workers
    return torch.utils.data.DataLoader(
        stream,
        batch_size=stream.batch_size,
        collate_fn=trainer.data_collator,
        num_workers=workers,
        pin_memory=args.dataloader_pin_memory,
        persistent_workers=args.dataloader_persistent_workers if workers else False,
        prefetch_factor=args.dataloader_prefetch_factor if workers else None,
    )
