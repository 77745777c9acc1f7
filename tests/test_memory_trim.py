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


def test_the_c_library_accepts_the_thresholds_that_keep_freed_blocks_between_trims() -> None:
    if memory._libc() is None:
        pytest.skip("no glibc here: nothing to set")
    assert memory.keep_freed_memory()


async def test_the_trimmer_sets_the_thresholds_once_before_its_first_trim(monkeypatch: pytest.MonkeyPatch) -> None:
    calls: list[tuple[str, int, int]] = []

    class FakeLibc:
        def mallopt(self, parameter: int, value: int) -> int:
            calls.append(("mallopt", parameter, value))
            return 1

        def malloc_trim(self, pad: int) -> int:
            calls.append(("trim", pad, 0))
            return 1

    fake = FakeLibc()
    monkeypatch.setattr(memory, "_libc", lambda: fake)
    with trio.move_on_after(0.3):
        async with trio.open_nursery() as nursery:
            await nursery.start(memory.trim_every, 0.02)
    assert calls[:2] == [
        ("mallopt", -3, memory.MMAP_THRESHOLD),  # M_MMAP_THRESHOLD, at glibc's 64-bit ceiling
        ("mallopt", -1, memory.TRIM_THRESHOLD),  # M_TRIM_THRESHOLD
    ]
    assert memory.MMAP_THRESHOLD <= 32 << 20  # glibc refuses more
    assert len(calls) > 3 and {kind for kind, _, _ in calls[2:]} == {"trim"}
