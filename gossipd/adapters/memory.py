"""Handing freed memory back to the operating system (glibc's `malloc_trim`), where the C library has it.

Loading a task's data allocates and frees hundreds of megabytes in a worker thread; glibc keeps what a
thread's arena freed for reuse, so without a trim a daemon stays as large as its loading peak. Elsewhere
(musl, macOS) this is a no-op.
"""

from __future__ import annotations

import ctypes
import ctypes.util
import functools
import logging
from typing import Any

import trio

log = logging.getLogger("gossipd.memory")


@functools.cache
def _libc() -> ctypes.CDLL | None:
    name = ctypes.util.find_library("c")
    if name is None:
        return None
    try:
        libc = ctypes.CDLL(name)
        libc.malloc_trim  # noqa: B018 (glibc only: an AttributeError elsewhere)
    except (OSError, AttributeError):
        return None
    return libc


def release_free_memory() -> bool:
    """Return the C heap's free pages to the system; whether the C library could."""
    libc = _libc()
    if libc is None:
        return False
    return bool(libc.malloc_trim(0))


async def trim_every(seconds: float, *, task_status: Any = trio.TASK_STATUS_IGNORED) -> None:
    """Hand freed C heap back every `seconds`, for as long as the daemon runs.

    Training and exchanges allocate and free tensors of megabytes in several threads (the trainer's,
    the exchange offload's), and glibc keeps what each thread's arena freed, so a daemon's resident size
    creeps up to the sum of its threads' peaks. A trim walks the arenas in a worker thread and takes a
    millisecond or two; with no glibc it is never scheduled."""
    task_status.started()
    if _libc() is None:
        return
    while True:
        await trio.sleep(seconds)
        await trio.to_thread.run_sync(release_free_memory)
