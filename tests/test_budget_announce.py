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


def declared_done(listener: TaskRuntime, speaker: TaskRuntime) -> bool | None:
    """Whether `speaker`'s heartbeats last told `listener` it is past its budget (None: none heard yet)."""
    record = listener.peers.get(speaker.network.peer_id)
    return None if record is None else record.done


async def note_news(speaker: TaskRuntime, listener: TaskRuntime, times: dict[str, float]) -> None:
    """When `speaker` reached its budget, and when `listener` heard of it."""
    await until(lambda: declared_done(listener, speaker) is False, "a heartbeat of a peer training", 60)
    await until(lambda: speaker.status().step >= BUDGET, "a peer to reach its budget", 60)
    times["reached"] = trio.current_time()
    await until(lambda: declared_done(listener, speaker) is True, "its neighbour to hear of it", PERIOD)
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


async def test_a_training_peer_whose_view_reached_its_budget_takes_a_training_neighbour_into_it(
    tmp_path: Path,
) -> None:
    # Views of one neighbour. Y has a budget of 300 steps; X and Z train on. Once X knows Y finished, a view
    # holding only Y would leave X training unmixed: discovery swaps Z in within a couple of seconds.
    task = budget_task()
    one = dataclasses.replace(task, gossip=dataclasses.replace(task.gossip, view_size=1, rewire_interval=3600.0))
    endless = dataclasses.replace(one, train=dataclasses.replace(one.train, total_steps=None))
    async with trio.open_nursery() as nursery:
        hub = FakeHub(nursery, random.Random(1))
        x, y, z = (
            TaskRuntime(kind, options(index), network=hub.add_peer(), state_dir=tmp_path / str(index))
            for index, kind in enumerate((endless, one, endless))
        )
        for runtime in (x, y, z):
            await nursery.start(runtime.run)
        await until(lambda: declared_done(x, y) is True, "X to hear that Y reached its budget", 60)
        x.view.members[:] = [y.network.peer_id]
        await until(lambda: x.view.members == [z.network.peer_id], "X to take Z into its view", 5)
        assert x.status().step > 0
        nursery.cancel_scope.cancel()
