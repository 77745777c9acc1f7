"""Offload: an exchange's arithmetic runs on the event loop while it is short, in a worker thread when not."""

from __future__ import annotations

import threading

import pytest

from gossipd.services.offload import Offload


class Clock:
    """Each computation 'takes' the duration it sets."""

    def __init__(self) -> None:
        self.now = 0.0
        self.duration = 0.0

    def __call__(self) -> float:
        return self.now

    def work(self) -> str:
        self.now += self.duration
        return threading.current_thread().name


async def test_short_work_moves_onto_the_loop_and_long_work_back_to_a_thread() -> None:
    clock = Clock()
    offload = Offload(inline_below=0.003, clock=clock)
    loop_thread = threading.current_thread().name
    clock.duration = 0.001
    first = await offload.run(clock.work)
    assert first != loop_thread  # unknown cost: a thread first
    assert offload.inline
    assert await offload.run(clock.work) == loop_thread
    clock.duration = 0.05  # the model grew, or the machine is busy: a few slow runs and it moves back
    for _ in range(3):
        await offload.run(clock.work)
    assert offload.estimate is not None and offload.estimate >= offload.inline_below
    assert await offload.run(clock.work) != loop_thread
    assert offload.inline_runs >= 1 and offload.thread_runs >= 2


async def test_an_error_in_the_work_reaches_the_caller_either_way() -> None:
    clock = Clock()
    offload = Offload(clock=clock)

    def fail() -> None:
        raise ValueError("bad message")

    with pytest.raises(ValueError, match="bad message"):
        await offload.run(fail)  # in a thread
    clock.duration = 0.001
    await offload.run(clock.work)
    assert offload.inline
    with pytest.raises(ValueError, match="bad message"):
        await offload.run(fail)  # on the loop
