"""A task runtime that reaches its training budget tells its neighbours at once (a heartbeat now, not a period
later): until they know, a finished neighbour refuses its exchanges (gossipd.services.exchange)."""

from __future__ import annotations

import dataclasses
import random
from pathlib import Path

import trio

from gossipd.services.task_runtime import TaskRuntime
from gossipd.task.loader import Task
from tests.fake_network import FakeHub
from tests.test_start_wait import budgeted_task, options, until

BUDGET = 300
PERIOD = 30.0  # seconds between heartbeats: far longer than the test waits for the news


def budget_task() -> Task:
    task = budgeted_task("start_wait = 0")
    return dataclasses.replace(task, train=dataclasses.replace(task.train, total_steps=BUDGET))


def declared_step(listener: TaskRuntime, speaker: TaskRuntime) -> int:
    """The step `speaker`'s heartbeats last declared to `listener` (-1: none yet)."""
    record = listener.peers.get(speaker.network.peer_id)
    return -1 if record is None or record.step is None else record.step


async def note_news(speaker: TaskRuntime, listener: TaskRuntime, times: dict[str, float]) -> None:
    """When `speaker` reached its budget, and when `listener` heard of it."""
    await until(lambda: speaker.status().step >= BUDGET, "a peer to reach its budget", 60)
    times["reached"] = trio.current_time()
    await until(lambda: declared_step(listener, speaker) >= BUDGET, "its neighbour to hear of it", PERIOD)
    times["heard"] = trio.current_time()


async def test_a_peer_that_reaches_its_budget_is_known_past_it_by_its_neighbour_within_a_second(
    tmp_path: Path,
) -> None:
    news: list[dict[str, float]] = [{}, {}]
    async with trio.open_nursery() as nursery:
        hub = FakeHub(nursery, random.Random(0))
        runtimes = []
        for index in range(2):
            runtime = TaskRuntime(
                budget_task(),
                dataclasses.replace(options(index), heartbeat_interval=PERIOD),
                network=hub.add_peer(),
                state_dir=tmp_path / str(index),
            )
            await nursery.start(runtime.run)
            runtimes.append(runtime)
        async with trio.open_nursery() as watchers:
            watchers.start_soon(note_news, runtimes[0], runtimes[1], news[0])
            watchers.start_soon(note_news, runtimes[1], runtimes[0], news[1])
        nursery.cancel_scope.cancel()
    assert [times["heard"] - times["reached"] < 1.0 for times in news] == [True, True], news
