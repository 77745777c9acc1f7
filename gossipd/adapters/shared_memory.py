"""Shared memory between a script and its daemon: an anonymous memory file (memfd) mapped by both, its file
descriptor passed over their Unix socket. Nothing is left in a file system, whichever side dies first: the
memory goes when the last mapping does.

Tensors are views of the mapping (`torch.frombuffer`), so writing one is a copy into the other process's
sight, with no serialisation. The header's counters are numpy views: each is written with one aligned 8-byte
store, which the other side never sees half-done.
"""

from __future__ import annotations

import contextlib
import math
import mmap
import os

import numpy as np
import torch

from gossipd.wire.attach import SharedLayout
from gossipd.wire.tensors import DTYPES

_TORCH_DTYPES = {name: getattr(torch, name) for name in DTYPES}


def create_memory(size: int, name: str = "gossipd-attach") -> int:
    """A new zeroed anonymous memory file of `size` bytes; its descriptor (the caller closes it)."""
    fd = os.memfd_create(name, os.MFD_CLOEXEC)
    try:
        os.ftruncate(fd, size)
    except OSError:
        os.close(fd)
        raise
    return fd


class SharedState:
    """`SharedLayout` over a mapped memory file: the script's counters (`publish`, `counters`) and the two
    regions, `out` (the script writes it) and `in` (the daemon writes it), each a dict of tensor views by
    entry name."""

    def __init__(self, fd: int, layout: SharedLayout) -> None:
        size = os.fstat(fd).st_size
        if size < layout.total_bytes:
            raise ValueError(f"the shared memory holds {size} bytes, the model needs {layout.total_bytes}")
        self.layout = layout
        self._map: mmap.mmap | None = mmap.mmap(fd, layout.total_bytes)
        self._counts: np.ndarray | None = np.frombuffer(self._map, dtype=np.int64, count=2, offset=0)
        self._loss: np.ndarray | None = np.frombuffer(self._map, dtype=np.float64, count=1, offset=16)
        self._last: tuple[int, int, float | None] = (0, 0, None)
        self.out = self._views(layout.out_offset)
        self.inward = self._views(layout.in_offset)

    def publish(self, step: int, samples: int, loss: float | None) -> None:
        """The script's counters, for the daemon to read whenever it needs them (the loss first: a reader
        that sees the new step sees a loss at least as new)."""
        if self._counts is None or self._loss is None:
            return
        self._loss[0] = math.nan if loss is None else loss
        self._counts[1] = samples
        self._counts[0] = step

    def counters(self) -> tuple[int, int, float | None]:
        """The script's steps, examples and last loss as it last published them (after `close`, the last
        read)."""
        if self._counts is not None and self._loss is not None:
            loss = float(self._loss[0])
            self._last = (int(self._counts[0]), int(self._counts[1]), loss if math.isfinite(loss) else None)
        return self._last

    def _views(self, base: int) -> dict[str, torch.Tensor]:
        assert self._map is not None
        views = {}
        for entry in self.layout.entries:
            tensor = torch.frombuffer(
                self._map,
                dtype=_TORCH_DTYPES[entry.shared_dtype],
                count=entry.numel,
                offset=base + self.layout.offsets[entry.name],
            )
            views[entry.name] = tensor.view(entry.shape)
        return views

    def close(self) -> None:
        """Drop the views and unmap (a view still held elsewhere keeps the mapping until it goes)."""
        self.counters()
        self.out = {}
        self.inward = {}
        self._counts = self._loss = None
        mapping, self._map = self._map, None
        if mapping is not None:
            # A caller still holding a view keeps the mapping until the view goes.
            with contextlib.suppress(BufferError):
                mapping.close()
