"""`[train] start_wait`'s rule (gossipd.peering.start_wait): a fresh peer of a budgeted task joins a swarm that
has trained, starts with neighbours once they have settled, and trains anyway at the limit."""

from __future__ import annotations

import dataclasses
import random
from collections.abc import Callable
from pathlib import Path
from typing import Any

import trio

from gossipd.cli_client import format_status
from gossipd.peering.start_wait import FirstSteps, Start, StartWait
from gossipd.services.discovery import topic_for
from gossipd.services.status import TaskState, TaskStatus, to_json
from gossipd.services.task_runtime import RunOptions, TaskRuntime
from gossipd.task.loader import Task, parse_task
from gossipd.wire.heartbeat import decode_heartbeat
from tests.conftest import DEFAULT_TASK
from tests.fake_network import FakeHub
from tests.test_control_api import make_status


def test_it_waits_while_nobody_is_live_then_trains_alone_at_the_limit() -> None:
    wait = StartWait(limit=30.0, settle=4.0, since=100.0)
    assert [wait.decide(t, {}) for t in (100.0, 110.0, 129.9)] == [Start.WAIT] * 3
    assert wait.decide(130.0, {}) is Start.ALONE


def test_neighbours_that_stop_arriving_for_the_settle_time_start_together() -> None:
    wait = StartWait(limit=30.0, settle=4.0, since=0.0)
    assert wait.decide(1.0, {"a": 0}) is Start.WAIT
    assert wait.decide(3.0, {"a": 0, "b": None}) is Start.WAIT  # a newcomer: the settle time starts again
    assert wait.decide(6.9, {"a": 0, "b": 0}) is Start.WAIT
    assert wait.decide(7.0, {"a": 0, "b": 0}) is Start.TOGETHER


def test_a_neighbour_seen_before_that_comes_back_is_no_newcomer() -> None:
    wait = StartWait(limit=30.0, settle=4.0, since=0.0)
    assert wait.decide(1.0, {"a": 0, "b": 0}) is Start.WAIT
    assert wait.decide(2.0, {"a": 0}) is Start.WAIT  # b's heartbeat aged out for a moment
    assert wait.decide(5.0, {"a": 0, "b": 0}) is Start.TOGETHER


def test_a_neighbour_that_has_trained_means_a_running_swarm_to_join_at_once() -> None:
    wait = StartWait(limit=30.0, settle=4.0, since=0.0)
    assert wait.decide(0.5, {"a": 0, "b": 12}) is Start.JOIN


def test_a_neighbour_seen_at_step_0_that_begins_to_train_started_with_us_so_we_start_too() -> None:
    wait = StartWait(limit=30.0, settle=4.0, since=0.0)
    assert wait.decide(1.0, {"a": 0, "b": 0}) is Start.WAIT
    assert wait.decide(2.0, {"a": 40, "b": 0}) is Start.TOGETHER  # a's wait ended sooner: no copy of its model


def test_the_first_step_a_neighbour_declares_decides_whether_it_was_running_before_us() -> None:
    wait = StartWait(limit=30.0, settle=4.0, since=0.0)
    assert wait.decide(1.0, {"a": None}) is Start.WAIT  # known before its first heartbeat
    assert wait.decide(2.0, {"a": 7}) is Start.JOIN
    running = StartWait(limit=30.0, settle=4.0, since=0.0)
    assert running.decide(1.0, {"a": 0}) is Start.WAIT
    assert running.decide(1.5, {"a": 0, "b": 900}) is Start.JOIN  # one co-starter, one running peer: join


def test_neighbours_first_seen_at_step_0_are_co_starters_whatever_step_they_reach() -> None:
    first = FirstSteps()
    assert not first.co_starters({})  # nobody: nobody to start with either
    assert first.co_starters({"a": 0, "b": 0})
    assert first.co_starters({"a": 35, "b": 0})  # a began first: still a co-starter, no model to copy
    assert not first.co_starters({"a": 35, "c": None})  # c's step is unknown: it may have trained
    assert not first.co_starters({"a": 35, "c": 400})  # c was running before: join it
    assert first.trained_before_us("c") and not first.trained_before_us("a")
    assert not first.trained_before_us("d")


def test_a_swarm_that_keeps_growing_starts_at_the_limit() -> None:
    wait = StartWait(limit=10.0, settle=4.0, since=0.0)
    decisions = [wait.decide(float(t), {f"p{i}": 0 for i in range(t + 1)}) for t in range(10)]
    assert decisions == [Start.WAIT] * 10
    assert wait.decide(10.0, {f"p{i}": 0 for i in range(11)}) is Start.ALONE


def test_live_neighbours_that_all_left_before_settling_leave_the_peer_waiting() -> None:
    wait = StartWait(limit=30.0, settle=4.0, since=0.0)
    assert wait.decide(1.0, {"a": 0}) is Start.WAIT
    assert wait.decide(8.0, {}) is Start.WAIT  # settled, but with nobody to start with
    assert wait.decide(9.0, {"a": 0}) is Start.TOGETHER


# -- a task runtime's start wait, on the fake network ------------------------------------------------------------


def budgeted_task(extra: str) -> Task:
    text = DEFAULT_TASK.read_text()
    replacements = {
        'name = "cnn"': 'name = "logistic"',
        'device = "auto"': 'device = "cpu"',
        "[train]": f"[train]\ntotal_steps = 100000\n{extra}",
    }
    for old, new in replacements.items():
        assert old in text, f"the default task no longer says {old}"
        text = text.replace(old, new, 1)
    return parse_task(text, file=str(DEFAULT_TASK), base_dir=DEFAULT_TASK.parent)


async def until(condition: Callable[[], bool], what: str, seconds: float = 30.0) -> None:
    # TaskRuntime exposes no event for its state; poll it.
    with trio.move_on_after(seconds):
        while not condition():  # noqa: ASYNC110
            await trio.sleep(0.02)
        return
    raise AssertionError(f"{what}: not within {seconds:.0f} s")


def cli(status: TaskStatus) -> str:
    """`gossipd status` as it prints this task (in the control API's test daemon, in place of its first)."""
    data = to_json(make_status())
    data["tasks"][0] = to_json(status)
    return format_status(data)


def options(seed: int) -> RunOptions:
    return RunOptions(join_timeout=5.0, checkpoint_interval=10**6, seed=seed, heartbeat_interval=0.2)


async def test_a_lone_fresh_peer_of_a_budgeted_task_waits_then_trains_alone(tmp_path: Path) -> None:
    async with trio.open_nursery() as nursery:
        network = FakeHub(nursery, random.Random(0)).add_peer()
        runtime = TaskRuntime(budgeted_task("start_wait = 1.5"), options(0), network=network, state_dir=tmp_path)
        await nursery.start(runtime.run)
        began = trio.current_time()
        status = runtime.status()
        assert (status.state, status.step, status.start_wait, status.start) == (TaskState.WAITING, 0, 1.5, None)
        assert "waiting for its neighbours before the first step ([train] start_wait, at most 2 s): 0 live" in cli(
            status
        )
        await until(lambda: runtime.status().step > 0, "the lone peer to train")
        assert trio.current_time() - began >= 1.5
        status = runtime.status()
        assert (status.state, status.start, status.start_wait) == (TaskState.TRAINING, "alone", None)
        nursery.cancel_scope.cancel()


async def test_a_peer_whose_wait_ends_announces_its_first_step_at_once_not_a_heartbeat_period_later(
    tmp_path: Path,
) -> None:
    # Neighbours still waiting start when they hear that a co-starter has begun; a swarm of four announces
    # every 8 s, far longer than a small task's whole budget.
    task = budgeted_task("start_wait = 1.0")
    slow = dataclasses.replace(options(0), heartbeat_interval=30.0)
    async with trio.open_nursery() as nursery:
        hub = FakeHub(nursery, random.Random(0))
        listener = hub.add_peer()
        heard = await listener.subscribe(topic_for(task.hash, None))
        runtime = TaskRuntime(task, slow, network=hub.add_peer(), state_dir=tmp_path)
        await nursery.start(runtime.run)
        began = trio.current_time()
        beats: list[tuple[float, int]] = []
        with trio.fail_after(10):
            async for message in heard:
                beat = decode_heartbeat(message.data, task=task.hash, key=None)
                beats.append((trio.current_time() - began, beat.step))
                if beat.step > 0:
                    break
        assert runtime.start_outcome is Start.ALONE
        assert beats[-1][0] < 3.0  # the wait (1 s) and a step, not 30 s
        # Step 0 once more as the wait ends, just before: a neighbour that missed the launch's heartbeat
        # (sent before its mesh formed) hears a co-starter, not a peer already training.
        assert beats[-2][0] >= 1.0 and beats[-2][1] == 0
        nursery.cancel_scope.cancel()


async def test_peers_started_together_wait_for_each_other_and_start_from_the_task_s_model(tmp_path: Path) -> None:
    async with trio.open_nursery() as nursery:
        hub = FakeHub(nursery, random.Random(0))
        runtimes = []
        for index in range(3):
            runtime = TaskRuntime(
                budgeted_task(""), options(index), network=hub.add_peer(), state_dir=tmp_path / str(index)
            )
            await nursery.start(runtime.run)
            runtimes.append(runtime)
            await trio.sleep(1.0)  # launched one by one, as people start their daemons
            assert all(r.status().state is TaskState.WAITING and r.status().step == 0 for r in runtimes)
        await until(lambda: all(r.status().step > 0 for r in runtimes), "all three to train", 40)
        statuses = [r.status() for r in runtimes]
        assert [s.start for s in statuses] == ["together"] * 3
        assert [s.state_transfers for s in statuses] == [0, 0, 0]  # none copied another's model
        nursery.cancel_scope.cancel()


async def test_a_fresh_peer_joining_a_trained_swarm_copies_a_model_at_once(tmp_path: Path) -> None:
    async with trio.open_nursery() as nursery:
        hub = FakeHub(nursery, random.Random(0))
        first = TaskRuntime(
            budgeted_task("start_wait = 0"), options(0), network=hub.add_peer(), state_dir=tmp_path / "a"
        )
        await nursery.start(first.run)
        await until(lambda: first.status().step > 20, "the first peer to train")
        late = TaskRuntime(budgeted_task(""), options(1), network=hub.add_peer(), state_dir=tmp_path / "b")
        await nursery.start(late.run)
        began = trio.current_time()
        await until(lambda: late.status().start is not None, "the late peer to end its wait")
        assert trio.current_time() - began < 4.0  # not the settle time: a trained neighbour means join now
        # It looks for a model to copy (the daemon, not the runtime, serves models: none comes on this hub).
        assert (late.status().start, late.status().state) == ("join", TaskState.JOINING)
        assert first.status().start is None  # start_wait = 0: no wait
        nursery.cancel_scope.cancel()


async def test_no_start_wait_without_a_budget_or_with_a_quorum_of_its_own(tmp_path: Path) -> None:
    unbudgeted = parse_task(
        DEFAULT_TASK.read_text()
        .replace('name = "cnn"', 'name = "logistic"')
        .replace('device = "auto"', 'device = "cpu"'),
        file=str(DEFAULT_TASK),
        base_dir=DEFAULT_TASK.parent,
    )
    assert unbudgeted.train.total_steps is None and unbudgeted.train.start_wait == 30.0
    async with trio.open_nursery() as nursery:
        network = FakeHub(nursery, random.Random(0)).add_peer()
        lone = dataclasses.replace(options(0), join_timeout=0)
        runtime = TaskRuntime(unbudgeted, lone, network=network, state_dir=tmp_path)
        await nursery.start(runtime.run)
        await until(lambda: runtime.status().step > 0, "an unbudgeted peer to train at once", 10)
        assert runtime.status().start is None
        nursery.cancel_scope.cancel()
    quorum = budgeted_task("min_peers = 1")
    async with trio.open_nursery() as nursery:
        network = FakeHub(nursery, random.Random(0)).add_peer()
        runtime = TaskRuntime(quorum, options(0), network=network, state_dir=tmp_path / "q")
        await nursery.start(runtime.run)
        status = runtime.status()
        assert (status.state, status.start_wait) == (TaskState.WAITING, None)  # min_peers' wait, not this one
        assert "waiting for peers: 0 of the 1 live neighbours [train] min_peers asks for" in cli(status)
        nursery.cancel_scope.cancel()


async def test_a_quorum_s_peers_start_together_though_one_began_a_moment_sooner(tmp_path: Path) -> None:
    # X waits for 2 neighbours, Y for 1: Y starts as soon as it sees X, X only once Z comes too. Y was at step
    # 0 when X first heard of it, so it is a co-starter, not a running swarm: X starts from the task's model
    # rather than copy Y's first steps (Z, which first heard of Y training, copies it: here it fails, as
    # nothing serves models on this hub).
    def quorum(size: int) -> Task:
        return budgeted_task(f"min_peers = {size}")

    def declared(listener: TaskRuntime, speaker: TaskRuntime) -> int:
        record = listener.peers.get(speaker.network.peer_id)
        return -1 if record is None or record.step is None else record.step

    async with trio.open_nursery() as nursery:
        hub = FakeHub(nursery, random.Random(0))
        x, y, z = (
            TaskRuntime(quorum(size), options(index), network=hub.add_peer(), state_dir=tmp_path / str(index))
            for index, size in enumerate((2, 1, 1))
        )
        copies: list[TaskRuntime] = []
        for runtime in (x, z):
            copy = runtime._copy_from_a_neighbour

            async def counted(services: Any, *, runtime: TaskRuntime = runtime, copy: Any = copy, **kw: Any) -> Any:
                copies.append(runtime)
                return await copy(services, **kw)

            runtime._copy_from_a_neighbour = counted  # type: ignore[method-assign]
        await nursery.start(x.run)
        await nursery.start(y.run)
        await until(lambda: declared(x, y) > 0, "X to hear that Y trains", 10)
        assert (x.status().state, x.status().step) == (TaskState.WAITING, 0)
        await nursery.start(z.run)
        await until(lambda: x.status().step > 0 and z.status().step > 0, "X and Z to train", 15)
        assert x not in copies and z in copies
        nursery.cancel_scope.cancel()


class CopyHost:
    """The part of a trainer a model copy uses; `loaded` records each (state, step) it was given."""

    def __init__(self) -> None:
        self.loaded: list[tuple[dict[str, Any], int]] = []

    def model_state(self) -> dict[str, Any]:
        return {}

    def load_model_state(self, state: dict[str, Any], step: int) -> None:
        self.loaded.append((state, step))

    async def at_boundary(self, action: Callable[[], Any]) -> Any:
        return action()

    def pause(self) -> None:
        pass

    def resume(self) -> None:
        pass


class CopyExchange:
    """The part of an exchange service a model copy uses; `finished`: the neighbours known past the budget."""

    def __init__(self, finished: set[str] | None = None) -> None:
        self.transfers: list[str] = []
        self.finished = finished or set()

    def past_budget_known(self, peer: str) -> bool:
        return peer in self.finished

    def handshake(self, peer: str) -> None:
        return None

    def forget_all_edges(self) -> None:
        pass

    def count_state_transfer(self, peer: str, *, received: int) -> None:
        self.transfers.append(peer)


def copy_services(host: CopyHost, exchange: CopyExchange, *, fresh: bool = True) -> Any:
    """Only what a copy uses of a task's services."""
    return type("Services", (), {"state_specs": {}, "trainer": host, "exchange": exchange, "fresh": fresh})()


def serve_states(monkeypatch: Any, steps: dict[str, int], asked: list[str] | None = None) -> None:
    """Neighbours that answer a state request with a model at their step in `steps` (`asked`: who was asked)."""

    async def fetch_state(network: Any, peer: str, **kw: Any) -> tuple[dict[str, Any], int, int]:
        if asked is not None:
            asked.append(peer)
        return {"w": peer}, steps[peer], 10

    monkeypatch.setattr("gossipd.services.task_runtime.fetch_state", fetch_state)


async def test_a_stalled_finish_takes_the_model_of_the_first_neighbour_at_its_budget(
    tmp_path: Path, monkeypatch: Any
) -> None:
    # ExchangeService._end_stalled_finish hands the runtime its live neighbours, those known past the budget
    # first; the runtime asks each for its state and takes the first whose step is at the budget or past it.
    async with trio.open_nursery() as nursery:
        network = FakeHub(nursery, random.Random(0)).add_peer()
        runtime = TaskRuntime(budgeted_task(""), options(0), network=network, state_dir=tmp_path)
        steps = {"training": 40, "finished": 100, "also": 100}
        for peer in steps:
            runtime.peers.saw(peer, "pubsub", member=True)
        asked: list[str] = []
        serve_states(monkeypatch, steps, asked)
        host = CopyHost()
        services = copy_services(host, CopyExchange())
        donor = await runtime._adopt_agreed_model(services, ["training", "finished", "also"], 100)
        assert donor == "finished" and asked == ["training", "finished"]
        assert host.loaded == [({"w": "finished"}, 100)] and runtime.state_transfers == 1
        assert services.exchange.transfers == ["finished"]
        assert await runtime._adopt_agreed_model(services, ["training"], 100) is None
        assert len(host.loaded) == 1  # a neighbour still training is asked, never taken
        nursery.cancel_scope.cancel()


async def test_a_peer_whose_co_starters_already_finished_copies_their_model_rather_than_train_alone(
    tmp_path: Path, monkeypatch: Any
) -> None:
    # Titanic's 300 steps take half a second: peers whose start wait ended that much sooner were past their
    # budget when this one's ended ("together"), and it would have trained alone (nobody left in its phase
    # to mix with), its model then averaged into theirs in the finish. It joins them, as a late joiner does.
    async with trio.open_nursery() as nursery:
        network = FakeHub(nursery, random.Random(0)).add_peer()
        runtime = TaskRuntime(budgeted_task(""), options(0), network=network, state_dir=tmp_path)
        runtime.peers.saw("early", "pubsub", member=True, step=300, done=True)
        runtime.peers.saw("mid", "pubsub", member=True, step=120)
        serve_states(monkeypatch, {"early": 300, "mid": 120})
        host, exchange = CopyHost(), CopyExchange({"early"})
        services = copy_services(host, exchange)
        runtime.start_outcome = Start.TOGETHER
        await runtime._join_if_needed(services)
        assert [step for _, step in host.loaded] == [300]
        assert runtime.state_transfers == 1 and runtime.state is TaskState.TRAINING
        # Co-starters all still training: it starts from the task's model, as before.
        exchange.finished = set()
        await runtime._join_if_needed(services)
        assert len(host.loaded) == 1 and runtime.state_transfers == 1
        nursery.cancel_scope.cancel()
