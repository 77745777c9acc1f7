"""py-libp2p's per-frame locks without a trio schedule point while they are free.

py-libp2p 0.8.1 guards every frame with trio locks: a stream's state lock on each read and write, the
muxer's stream table on each frame in and each read out, a stream's window lock on each credit, the
muxer's and the socket's write locks on each write. `trio.Lock.acquire` is a checkpoint, a trip through
trio's scheduler (an epoll poll, the run queue) even when no other task holds or wants the lock, and a
64 KiB Yamux frame crossed about six of them between the socket and the reader. With them a 10 MB frame
ran at 246-330 MB/s on loopback, without them at 310-460 (Intel Xeon, 2026-12-05, four alternating runs
each; the receiving end is the slower, and trio's scheduler was most of its time, more than the cipher).

`QuickLock` takes a free lock at once, as asyncio's lock does, and only when it is held waits as
`trio.Lock` waits (the lock is handed to waiters in order on release). The difference is where a cancelled
task notices: at its next checkpoint (a socket operation, a wait for data) rather than at the lock. Every
loop that takes these locks also waits on the socket or an event, so no task runs on without yielding.
"""

from __future__ import annotations

import functools
from collections.abc import Callable
from typing import Any

import trio
from libp2p.io.trio import TrioTCPStream
from libp2p.network.stream.net_stream import NetStream
from libp2p.stream_muxer.yamux.yamux import Yamux, YamuxStream


class QuickLock:
    """A `trio.Lock` whose acquire yields only when the lock is held."""

    __slots__ = ("_lock",)

    def __init__(self) -> None:
        self._lock = trio.Lock()

    async def acquire(self) -> None:
        if self._lock.locked():
            await self._lock.acquire()
        else:
            self._lock.acquire_nowait()

    def acquire_nowait(self) -> None:
        self._lock.acquire_nowait()

    def release(self) -> None:
        self._lock.release()

    def locked(self) -> bool:
        return self._lock.locked()

    def statistics(self) -> Any:
        return self._lock.statistics()

    async def __aenter__(self) -> None:
        await self.acquire()

    async def __aexit__(self, *exc_info: object) -> None:
        self._lock.release()


# The locks each class creates in its constructor, by attribute. py-libp2p only ever enters them (`async
# with`), which a QuickLock serves as a trio.Lock would.
_LOCKS: dict[type, tuple[str, ...]] = {
    Yamux: ("streams_lock", "_write_lock"),
    YamuxStream: ("window_lock",),
    NetStream: ("_state_lock",),
    TrioTCPStream: ("read_lock", "write_lock"),
}


def _quicken(cls: type, names: tuple[str, ...]) -> None:
    stock: Callable[..., None] = vars(cls)["__init__"]  # each class defines its own

    @functools.wraps(stock)
    def construct(self: Any, *args: Any, **kwargs: Any) -> None:
        stock(self, *args, **kwargs)
        for name in names:
            setattr(self, name, QuickLock())

    cls.__init__ = construct  # type: ignore[misc]


for _cls, _names in _LOCKS.items():
    if not hasattr(vars(_cls)["__init__"], "__wrapped__"):  # once, however often this module is reloaded
        _quicken(_cls, _names)
