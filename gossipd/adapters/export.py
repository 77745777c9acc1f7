"""Model export to safetensors, and the atomic file write that exports and checkpoints share."""

from __future__ import annotations

import contextlib
import errno
import os
import tempfile
from collections.abc import Iterable, Mapping
from pathlib import Path

import safetensors.torch
import torch

TEMP_SUFFIX = ".tmp"


def model_to_safetensors(state_dict: Mapping[str, torch.Tensor], metadata: Mapping[str, str]) -> bytes:
    """Serialise `state_dict` as safetensors bytes, with string `metadata` (task id, hash, step, algorithm…).

    Tensors are moved to the CPU and made contiguous; tensors that share storage (tied weights, views) are
    cloned, because safetensors refuses shared storage. The caller's tensors are left untouched.
    """
    for key, value in metadata.items():
        if not isinstance(key, str) or not isinstance(value, str):
            raise TypeError(f"safetensors metadata must map str to str, found {key!r}: {type(value).__name__}")
    return safetensors.torch.save(_independent_cpu_tensors(state_dict), metadata=dict(metadata))


def _independent_cpu_tensors(state_dict: Mapping[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """Dense contiguous CPU tensors, no two of which share a storage."""
    seen_storages: set[int] = set()
    tensors: dict[str, torch.Tensor] = {}
    for name, tensor in state_dict.items():
        if not isinstance(name, str) or not isinstance(tensor, torch.Tensor):
            raise TypeError(f"a state dict maps str to tensors, found {name!r}: {type(tensor).__name__}")
        if tensor.layout != torch.strided:
            raise TypeError(f"tensor {name!r} is {tensor.layout}; only dense tensors can be exported")
        cpu = tensor.detach().cpu()
        # Empty storages all report address 0; they hold no bytes, so they cannot alias anything.
        storage = cpu.untyped_storage().data_ptr()
        if storage != 0 and storage in seen_storages:
            cpu = cpu.clone(memory_format=torch.contiguous_format)
        else:
            seen_storages.add(storage)
            cpu = cpu.contiguous()
        tensors[name] = cpu
    return tensors


def write_bytes_atomically(path: Path, data: bytes, mode: int = 0o644) -> None:
    """Write `data` to `path` so that readers see the old file or the whole new one, never a part.

    On failure the temp file is removed, the previous file (if any) is untouched and the `OSError` propagates.
    """
    write_chunks_atomically(path, [data], mode=mode, temp_prefix=f".{path.name}.")


def write_chunks_atomically(path: Path, chunks: Iterable[bytes | memoryview], *, mode: int, temp_prefix: str) -> None:
    """Write `chunks` to a temp file beside `path` (`<temp_prefix>*.tmp`), fsync it, rename it onto `path`.

    The folder is fsynced after the rename so the new name itself survives a power cut. The temp file is
    created 0600 and set to `mode` only once it is complete. If the final folder fsync fails, the new file
    is already in place but may not be durable; the `OSError` still propagates.
    """
    fd, temp_name = tempfile.mkstemp(prefix=temp_prefix, suffix=TEMP_SUFFIX, dir=path.parent)
    temp = Path(temp_name)
    try:
        try:
            for chunk in chunks:
                _write_all(fd, chunk)
            os.fchmod(fd, mode)
            os.fsync(fd)
        finally:
            os.close(fd)
        os.replace(temp, path)
    except BaseException:
        # Any failure, interrupts included, must not leave a partial temp file behind; the error goes on as is.
        with contextlib.suppress(OSError):
            temp.unlink(missing_ok=True)
        raise
    fsync_dir(path.parent)


def _write_all(fd: int, data: bytes | memoryview) -> None:
    """`os.write` until all of `data` is written (a single call may write only part of a large buffer)."""
    view = memoryview(data).cast("B")
    while view:
        written = os.write(fd, view)
        if written <= 0:
            raise OSError(errno.EIO, "write made no progress")
        view = view[written:]


def fsync_dir(folder: Path) -> None:
    """Flush a folder's entries (a rename or a new name) to disk."""
    fd = os.open(folder, os.O_RDONLY | os.O_DIRECTORY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)
