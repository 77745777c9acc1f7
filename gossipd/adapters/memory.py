"""Handing freed memory back to the operating system (glibc's `malloc_trim`), where the C library has it.

Loading a task's data allocates and frees hundreds of megabytes in a worker thread; glibc keeps what a
thread's arena freed for reuse, so without a trim a daemon stays as large as its loading peak. Elsewhere
(musl, macOS) this is a no-op.

The other way round, glibc hands back too eagerly what an exchange frees: a whole model's copies (4.7 MB
each for the 1.2M-parameter CNN) are above its mmap threshold at first, and later, once that threshold has
grown, a few of them freed together are above its trim threshold (twice the mmap one), so the next exchange
faults every page in again. On the virtual machines we measured on, that refaulting took about as long as
the exchange's arithmetic. The daemon trims on a clock instead, every 2 s, so it tells glibc to keep what
is freed until then.
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


# mallopt's parameters (glibc's malloc.h).
_M_TRIM_THRESHOLD = -1
_M_MMAP_THRESHOLD = -3
# glibc's ceiling for the mmap threshold on 64-bit (HEAP_MAX_SIZE / 2): larger blocks (a dataset's arrays)
# are still mapped on their own and unmapped when freed.
MMAP_THRESHOLD = 32 << 20
# Free memory at the top of a heap that a free may keep: a few copies of a model of some millions of
# parameters, which the next exchange takes again.
TRIM_THRESHOLD = 128 << 20


def keep_freed_memory() -> bool:
    """Stop glibc from handing blocks back as they are freed (see the module's docstring); whether it could.
    A process that also calls `release_free_memory` now and then bounds what is kept; one that does not
    keeps at most TRIM_THRESHOLD free at the top of each arena."""
    libc = _libc()
    if libc is None:
        return False
    return bool(libc.mallopt(_M_MMAP_THRESHOLD, MMAP_THRESHOLD)) and bool(
        libc.mallopt(_M_TRIM_THRESHOLD, TRIM_THRESHOLD)
    )


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
    millisecond or two; with no glibc it is never scheduled. Between trims, freed blocks stay
    (`keep_freed_memory`), so an exchange reuses the pages the last one freed."""
    task_status.started()
    if _libc() is None:
        return
    if not keep_freed_memory():
        log.info("glibc refused the mmap and trim thresholds: freed blocks go back to the system as before")
    while True:
        await trio.sleep(seconds)
        await trio.to_thread.run_sync(release_free_memory)
