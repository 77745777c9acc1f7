"""py-libp2p's per-frame locks: taken without a schedule point while free, waited for in order while held."""

from __future__ import annotations

from typing import Any

import trio
import trio.testing
from libp2p.io.trio import TrioTCPStream
from libp2p.stream_muxer.yamux.yamux import YamuxStream

from gossipd.adapters.libp2p_locks import QuickLock


async def _turns_others_get(lock: Any, acquisitions: int = 100) -> int:
    """How often another runnable task ran while this one took and released a free `lock` many times."""
    turns = 0

    async def other() -> None:
        nonlocal turns
        while True:
            turns += 1
            await trio.lowlevel.checkpoint()

    async with trio.open_nursery() as nursery:
        nursery.start_soon(other)
        for _ in range(acquisitions):
            await lock.acquire()
            lock.release()
        seen = turns
        nursery.cancel_scope.cancel()
    return seen


async def test_a_free_lock_is_taken_without_letting_other_tasks_run() -> None:
    assert await _turns_others_get(QuickLock()) == 0
    assert await _turns_others_get(trio.Lock()) > 50  # what trio's own lock costs: a trip to the scheduler each


async def test_a_held_lock_is_waited_for_and_handed_over_in_order() -> None:
    lock = QuickLock()
    order: list[str] = []

    async def waiter(name: str) -> None:
        async with lock:
            order.append(name)
            await trio.sleep(0.01)

    async with trio.open_nursery() as nursery:
        await lock.acquire()
        assert lock.locked()
        for name in ("first", "second", "third"):
            nursery.start_soon(waiter, name)
            await trio.testing.wait_all_tasks_blocked()
        assert order == [] and lock.statistics().tasks_waiting == 3
        lock.release()
    assert order == ["first", "second", "third"] and not lock.locked()


async def test_only_the_owner_releases_and_a_held_lock_refuses_nowait() -> None:
    lock = QuickLock()
    await lock.acquire()
    refused: list[BaseException] = []

    async def stranger() -> None:
        for attempt in (lock.acquire_nowait, lock.release):
            try:
                attempt()
            except (trio.WouldBlock, RuntimeError) as error:
                refused.append(error)

    async with trio.open_nursery() as nursery:
        nursery.start_soon(stranger)
    assert [type(error) for error in refused] == [trio.WouldBlock, RuntimeError] and lock.locked()
    lock.release()


async def test_cancellation_reaches_a_task_waiting_for_a_held_lock() -> None:
    lock = QuickLock()
    await lock.acquire()
    with trio.move_on_after(0.05) as scope:
        async with trio.open_nursery() as nursery:
            nursery.start_soon(lock.acquire)
    assert scope.cancelled_caught
    assert lock.statistics().tasks_waiting == 0
    lock.release()


def test_py_libp2p_builds_its_per_frame_locks_as_quick_locks() -> None:
    tcp: Any = TrioTCPStream(object())  # type: ignore[arg-type]
    assert isinstance(tcp.read_lock, QuickLock) and isinstance(tcp.write_lock, QuickLock)

    class Conn:
        pass

    stream: Any = YamuxStream(1, Conn(), True)  # type: ignore[arg-type]
    assert isinstance(stream.window_lock, QuickLock)
