"""Durable checkpoints of one task's state in one owner-only folder.

File format (`ckpt-<step:012d>-<unix ms>.pt`), all integers big-endian:

    magic    13 bytes  b"GOSSIPD-CKPT\\x01" (the last byte is the format version)
    length    8 bytes  payload length in bytes
    sha256   32 bytes  SHA-256 of the payload
    payload            `torch.save` of the state, loaded back with `weights_only=True`

The file must be exactly header + length bytes long, so truncation and bit rot are both detected on load.
Files are written atomically (temp file, fsync, rename, folder fsync); the store assumes it is the only
writer of its folder, because a save removes the temp files of interrupted earlier writes.
"""

from __future__ import annotations

import builtins
import errno
import hashlib
import io
import logging
import os
import re
import struct
import time
from collections import OrderedDict
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch

from gossipd.adapters.export import TEMP_SUFFIX, write_chunks_atomically
from gossipd.paths import ensure_private_dir

MAGIC = b"GOSSIPD-CKPT\x01"
_HEADER = struct.Struct(f">{len(MAGIC)}sQ32s")
HEADER_SIZE = _HEADER.size
DEFAULT_MAX_BYTES = 16 * 2**30
MAX_STEP = 10**12 - 1  # the name has 12 digits for the step, so names sort and parse unambiguously

_NAME = re.compile(r"ckpt-(\d{12})-(\d+)\.pt")
_TEMP_PREFIX = ".ckpt-"
_FILE_MODE = 0o600

log = logging.getLogger("gossipd.checkpoint")


class CheckpointError(OSError):
    """A checkpoint could not be written; `errno` is the cause's (ENOSPC, EIO, EACCES…)."""


class _CorruptCheckpoint(Exception):
    """A checkpoint file cannot be used; the message says why. `load_latest` logs it and tries an older one."""


@dataclass(frozen=True, slots=True)
class LoadedCheckpoint:
    """A checkpoint that read back intact: its file, its step, when it was saved and the state itself."""

    path: Path
    step: int
    saved_at: float  # unix seconds, from the file name
    state: dict[str, Any]


def pack_header(payload: bytes | memoryview) -> bytes:
    """The fixed header that precedes `payload` in a checkpoint file."""
    return _HEADER.pack(MAGIC, len(payload), hashlib.sha256(payload).digest())


class CheckpointStore:
    """Saves a task's state into `folder`, keeping the `keep` newest checkpoints; loads the newest valid one."""

    def __init__(
        self,
        folder: Path,
        *,
        keep: int = 3,
        max_bytes: int = DEFAULT_MAX_BYTES,
        clock: Callable[[], float] = time.time,
    ) -> None:
        if keep < 1:
            raise ValueError(f"keep must be ≥ 1, found {keep}")
        if max_bytes <= HEADER_SIZE:
            raise ValueError(f"max_bytes must be > {HEADER_SIZE} (the header size), found {max_bytes}")
        self.folder = ensure_private_dir(folder)
        self.keep = keep
        self.max_bytes = max_bytes
        self._clock = clock

    def save(self, state: Mapping[str, Any], *, step: int) -> Path:
        """Write `state` as the checkpoint of `step` and return its path; then drop checkpoints beyond `keep`.

        `state` may hold only tensors, dicts (str or int keys), lists, tuples, str, int, float, bool and None,
        because checkpoints are loaded with `torch.load(weights_only=True)` so that a file cannot run code.
        Anything else raises `TypeError` naming its key path, before anything is written. A tensor view is
        saved with its whole storage, so clone views into large buffers first.

        Raises `CheckpointError` when the file cannot be written (the temp file is removed and the earlier
        checkpoints stay as they were).
        """
        if not 0 <= step <= MAX_STEP:
            raise ValueError(f"step must be in [0, {MAX_STEP}], found {step}")
        check_state(state)
        buffer = io.BytesIO()
        torch.save(dict(state), buffer)
        payload = buffer.getbuffer()
        total = HEADER_SIZE + len(payload)
        path = self.folder / f"ckpt-{step:012d}-{round(self._clock() * 1000)}.pt"
        if total > self.max_bytes:
            # load_latest would refuse this file, so writing it would only push out a usable one.
            raise CheckpointError(
                errno.EFBIG, f"checkpoint of {total} bytes exceeds max_bytes = {self.max_bytes}", str(path)
            )
        try:
            write_chunks_atomically(path, [pack_header(payload), payload], mode=_FILE_MODE, temp_prefix=_TEMP_PREFIX)
        except OSError as exc:
            raise CheckpointError(exc.errno, f"cannot write checkpoint: {exc.strerror or exc}", str(path)) from exc
        self._rotate(written=path)
        return path

    def load_latest(self, map_location: str | torch.device = "cpu") -> LoadedCheckpoint | None:
        """The newest checkpoint that reads back intact, or None; unusable files are skipped with a warning."""
        for path in self.list():
            try:
                state = self._read(path, map_location)
            except _CorruptCheckpoint as why:
                log.warning("skipping checkpoint %s: %s", path, why)
                continue
            step, saved_ms = _parse_name(path)
            return LoadedCheckpoint(path=path, step=step, saved_at=saved_ms / 1000, state=state)
        return None

    def list(self) -> builtins.list[Path]:
        """Files named like checkpoints (not yet checked for integrity), newest first (by step, then time)."""
        paths = [p for p in self.folder.iterdir() if _NAME.fullmatch(p.name)]
        return sorted(paths, key=_parse_name, reverse=True)

    def latest_time(self) -> float | None:
        """When the newest checkpoint file was saved (unix seconds, from its name), or None if there is none."""
        paths = self.list()
        return _parse_name(paths[0])[1] / 1000 if paths else None

    def _read(self, path: Path, map_location: str | torch.device) -> dict[str, Any]:
        payload = self._read_payload(path)
        try:
            state = torch.load(io.BytesIO(payload), map_location=map_location, weights_only=True)
        except Exception as exc:
            # torch.load raises many types (UnpicklingError, RuntimeError, EOFError…) for a bad payload.
            raise _CorruptCheckpoint(f"cannot unpickle ({type(exc).__name__}: {exc})") from exc
        if not isinstance(state, dict):
            raise _CorruptCheckpoint(f"payload is a {type(state).__name__}, not a dict")
        return state

    def _read_payload(self, path: Path) -> bytes:
        """The verified payload; every size is checked before anything large is read."""
        try:
            with path.open("rb") as file:
                size = os.fstat(file.fileno()).st_size
                if size > self.max_bytes:
                    raise _CorruptCheckpoint(f"{size} bytes exceeds max_bytes = {self.max_bytes}")
                header = file.read(HEADER_SIZE)
                if len(header) < HEADER_SIZE:
                    raise _CorruptCheckpoint(f"truncated: {size} bytes is shorter than the header")
                magic, length, digest = _HEADER.unpack(header)
                if magic != MAGIC:
                    raise _CorruptCheckpoint(f"bad magic {magic!r}")
                if HEADER_SIZE + length != size:
                    raise _CorruptCheckpoint(
                        f"truncated or padded: header says {length} payload bytes, file has {size - HEADER_SIZE}"
                    )
                payload = file.read(length)
        except OSError as exc:
            raise _CorruptCheckpoint(f"cannot read: {exc}") from exc
        if len(payload) != length:
            raise _CorruptCheckpoint(f"truncated while reading: {len(payload)} of {length} payload bytes")
        if hashlib.sha256(payload).digest() != digest:
            raise _CorruptCheckpoint("SHA-256 of the payload does not match the header")
        return payload

    def _rotate(self, *, written: Path) -> None:
        """Delete checkpoints beyond the `keep` newest, never `written`, and temp files of interrupted saves.

        `written` counts as one of the kept even when an older step was just saved (a restart from an earlier
        checkpoint), so the folder never holds more than `keep` checkpoints. Failures here only log: the
        save itself has succeeded.
        """
        others = [p for p in self.list() if p != written]
        stale = others[self.keep - 1 :] + sorted(self.folder.glob(f"{_TEMP_PREFIX}*{TEMP_SUFFIX}"))
        for path in stale:
            try:
                path.unlink(missing_ok=True)
            except OSError as exc:
                log.warning("cannot remove old checkpoint file %s: %s", path, exc)


def _parse_name(path: Path) -> tuple[int, int]:
    """(step, unix ms) from a checkpoint's file name."""
    match = _NAME.fullmatch(path.name)
    if match is None:
        raise ValueError(f"{path.name} is not a checkpoint name")
    return int(match[1]), int(match[2])


def check_state(state: object) -> None:
    """Raise `TypeError` naming the key path of the first value `torch.load(weights_only=True)` would refuse."""
    if not isinstance(state, Mapping):
        raise TypeError(f"state must be a mapping, found {type(state).__name__}")
    for key, value in state.items():
        if not isinstance(key, str):
            raise TypeError(f"state keys must be str, found {key!r}")
        _check_value(value, f"[{key!r}]", on_path=set())


_SCALAR_TYPES: frozenset[type] = frozenset({str, int, float, bool, type(None)})
_DICT_TYPES: frozenset[type] = frozenset({dict, OrderedDict})
_TENSOR_TYPES: frozenset[type] = frozenset({torch.Tensor, torch.nn.Parameter})


def _check_value(value: object, where: str, *, on_path: set[int]) -> None:
    # Exact types, not isinstance: a subclass (an IntEnum, a NamedTuple, numpy.float64) pickles as its own
    # class, which the weights-only loader refuses.
    kind = type(value)
    if kind in _SCALAR_TYPES or kind in _TENSOR_TYPES:
        return
    if kind not in _DICT_TYPES and kind not in (list, tuple):
        raise TypeError(f"state{where} is a {kind.__module__}.{kind.__qualname__}, which a checkpoint cannot hold")
    if id(value) in on_path:
        raise TypeError(f"state{where} contains itself")
    on_path.add(id(value))
    if isinstance(value, dict):
        for key, item in value.items():
            if type(key) not in (str, int):
                raise TypeError(f"state{where} has key {key!r}; checkpoint dict keys must be str or int")
            _check_value(item, f"{where}[{key!r}]", on_path=on_path)
    elif isinstance(value, list | tuple):
        for index, item in enumerate(value):
            _check_value(item, f"{where}[{index}]", on_path=on_path)
    on_path.discard(id(value))
