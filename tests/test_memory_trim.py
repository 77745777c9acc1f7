"""The daemon's periodic hand-back of freed C heap (gossipd.adapters.memory)."""

from __future__ import annotations

import threading

import pytest
import trio

from gossipd.adapters import memory


async def test_freed_heap_is_handed_back_again_and_again_off_the_event_loop_until_cancelled(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    if memory._libc() is None:
        pytest.skip("no glibc malloc_trim here: the trimmer is never scheduled")
    threads: list[threading.Thread] = []

    def trim() -> bool:
        threads.append(threading.current_thread())
        return True

    monkeypatch.setattr(memory, "release_free_memory", trim)
    # Real time (the trim runs in a worker thread, which a virtual clock would skip past): loose bounds.
    with trio.move_on_after(0.5):
        async with trio.open_nursery() as nursery:
            await nursery.start(memory.trim_every, 0.02)
    assert 3 <= len(threads) <= 25
    assert threading.main_thread() not in threads
    count = len(threads)
    await trio.sleep(0.1)
    assert len(threads) == count  # cancelled with its nursery: no trim after


def test_a_trim_returns_whether_the_c_library_could() -> None:
    assert memory.release_free_memory() is (memory._libc() is not None)
