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
