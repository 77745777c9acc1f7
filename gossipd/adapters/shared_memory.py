"""Shared memory between a script and its daemon: an anonymous memory file (memfd) mapped by both, its file
descriptor passed over their Unix socket. Nothing is left in a file system, whichever side dies first: the
memory goes when the last mapping does.

Tensors are views of the mapping (`torch.frombuffer`), so writing one is a copy into the other process's
sight, with no serialisation.
"""

from __future__ import annotations

import contextlib
import mmap
import os

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
    """The two regions of `SharedLayout` over a mapped memory file: `out` (the script writes it) and `in`
    (the daemon writes it), each a dict of tensor views by entry name."""

    def __init__(self, fd: int, layout: SharedLayout) -> None:
        size = os.fstat(fd).st_size
        if size < layout.total_bytes:
            raise ValueError(f"the shared memory holds {size} bytes, the model needs {layout.total_bytes}")
        self.layout = layout
        self._map: mmap.mmap | None = mmap.mmap(fd, layout.total_bytes)
        self.out = self._views(0)
        self.inward = self._views(layout.region_bytes)

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
        self.out = {}
        self.inward = {}
        mapping, self._map = self._map, None
        if mapping is not None:
            # A caller still holding a view keeps the mapping until the view goes.
            with contextlib.suppress(BufferError):
                mapping.close()
