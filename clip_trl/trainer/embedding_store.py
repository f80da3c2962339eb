"""Where the frozen-tower embedding cache ([`clip_trl.trainer.embedding_cache`]) keeps its rows: on the CPU up to a
memory budget, then in memory-mapped files."""

from __future__ import annotations

import os
from typing import Any

import torch

SEGMENT_ROWS = 4096


class EmbeddingStore:
    """Rows of one tower's embeddings by key: on the CPU up to `memory_bytes`, then in memory-mapped files of
    `segment_rows` rows under `spill_dir` (none: rows beyond the budget are not kept)."""

    def __init__(
        self, memory_bytes: int, spill_dir: str | None, name: str, segment_rows: int = SEGMENT_ROWS
    ) -> None:
        self.memory_bytes, self.spill_dir, self.name, self.segment_rows = (
            memory_bytes,
            spill_dir,
            name,
            segment_rows,
        )
        self.clear()

    def clear(self) -> None:
        self.slots: dict[int, int] = {}
        self._memory: torch.Tensor | None = None
        self._memory_rows = 0
        self._segments: list[torch.Tensor] = []
        self._remove_files()

    def _remove_files(self) -> None:
        for path in getattr(self, "_files", ()):
            with quiet_os_error():
                os.remove(path)
        self._files: list[str] = []

    def __len__(self) -> int:
        return len(self.slots)

    @property
    def width(self) -> int | None:
        return None if self._memory is None else self._memory.shape[1]

    @property
    def dtype(self) -> torch.dtype | None:
        return None if self._memory is None else self._memory.dtype

    @property
    def spilled_rows(self) -> int:
        return max(len(self.slots) - self._memory_rows, 0) if self._memory is not None else 0

    def put(self, keys: list[int], values: torch.Tensor) -> None:
        """Store `values[i]` under `keys[i]` (keys already present keep their row)."""
        values = values.detach().to("cpu")
        if self._memory is None:
            row_bytes = values.shape[1] * values.element_size()
            self._memory_rows = int(self.memory_bytes // row_bytes)
            self._memory = values.new_empty((min(self._memory_rows, max(len(keys), 64)), values.shape[1]))
        for key, row in zip(keys, values):
            if key in self.slots:
                continue
            slot = len(self.slots)
            target = self._row(slot, create=True)
            if target is None:  # over the budget, and nowhere to spill
                return
            target.copy_(row)
            self.slots[key] = slot

    def get(self, keys: list[int]) -> torch.Tensor:
        return torch.stack([self._row(self.slots[key]) for key in keys])

    def _row(self, slot: int, create: bool = False) -> torch.Tensor | None:
        memory = self._memory
        if slot < self._memory_rows:
            if slot >= memory.shape[0]:  # grow by doubling, up to the budget
                grown = memory.new_empty((min(self._memory_rows, 2 * memory.shape[0]), memory.shape[1]))
                grown[: memory.shape[0]] = memory
                self._memory = memory = grown
            return memory[slot]
        segment, offset = divmod(slot - self._memory_rows, self.segment_rows)
        if segment >= len(self._segments):
            if not create or self.spill_dir is None:
                return None
            self._segments.append(self._new_segment(memory.shape[1], memory.dtype))
        return self._segments[segment][offset]

    def _new_segment(self, width: int, dtype: torch.dtype) -> torch.Tensor:
        os.makedirs(self.spill_dir, exist_ok=True)
        path = os.path.join(self.spill_dir, f"{self.name}-{len(self._segments)}.bin")
        size = self.segment_rows * width
        with open(path, "wb") as file:
            file.truncate(size * torch.empty((), dtype=dtype).element_size())
        self._files.append(path)
        return torch.from_file(path, shared=True, size=size, dtype=dtype).view(self.segment_rows, width)


class quiet_os_error:
    """`with quiet_os_error():` ignores an `OSError` (a file already gone, a folder not empty)."""

    def __enter__(self) -> None:
        return None

    def __exit__(self, kind: Any, value: Any, traceback: Any) -> bool:
        return kind is not None and issubclass(kind, OSError)
