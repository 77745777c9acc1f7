"""A full disk at checkpoint time: the task logs it and trains on, and the checkpoint before it stays intact.

A real `TaskRuntime` runs the embedded default task (switched to logistic regression, to keep it quick) alone
on a `FakeNetwork`, on the real clock with real worker threads. The disk fills up under the real
`CheckpointStore`: `os.write` (what its atomic write calls) writes what still fits into a file of the task's
checkpoint folder, then fails with ENOSPC, as a full filesystem does; or the data all fits but `fsync` fails
with ENOSPC, as it can on filesystems that allocate blocks late. Writes anywhere else are untouched.
"""

from __future__ import annotations

import errno
import logging
import os
import random
from collections.abc import AsyncIterator, Callable, Iterator
from contextlib import asynccontextmanager
from pathlib import Path
from typing import Literal

import pytest
import torch
import trio

from gossipd.adapters.checkpoint_store import CheckpointStore
from gossipd.services.status import TaskState
from gossipd.services.task_runtime import RunOptions, TaskRuntime
from gossipd.task.loader import Task, parse_task
from tests.conftest import DEFAULT_TASK
from tests.fake_network import FakeHub

Failing = Literal["write", "fsync"]


@pytest.fixture(autouse=True)
def one_torch_thread() -> Iterator[None]:
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


class FullDisk:
    """Makes the files of one folder hit ENOSPC once `free` more bytes are written into them, or at `fsync`."""

    def __init__(self, folder: Path, monkeypatch: pytest.MonkeyPatch) -> None:
        self.folder = folder.resolve()
        self.monkeypatch = monkeypatch
        self.free = 0
        self.failing: Failing | None = None
        self.refused: list[str] = []  # the calls that failed, for the test to check that the disk did fill up
        self._write, self._fsync = os.write, os.fsync
        monkeypatch.setattr(os, "write", self.write)
        monkeypatch.setattr(os, "fsync", self.fsync)

    def fill(self, failing: Failing, *, free: int = 0) -> None:
        self.failing, self.free = failing, free

    def clear(self) -> None:
        self.failing = None

    def _inside(self, fd: int) -> bool:
        try:
            return Path(os.readlink(f"/proc/self/fd/{fd}")).parent == self.folder
        except OSError:
            return False

    def write(self, fd: int, data: bytes | memoryview, /) -> int:
        if self.failing != "write" or not self._inside(fd):
            return self._write(fd, data)
        if self.free == 0:
            self.refused.append("write")
            raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))
        written = self._write(fd, memoryview(data)[: self.free])  # a short write: what still fits
        self.free -= written
        return written

    def fsync(self, fd: int, /) -> None:
        if self.failing == "fsync" and self._inside(fd):
            self.refused.append("fsync")
            raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))
        self._fsync(fd)


def small_default_task() -> Task:
    text = DEFAULT_TASK.read_text()
    for old, new in (('name = "cnn"', 'name = "logistic"'), ('device = "auto"', 'device = "cpu"')):
        assert old in text, f"the default task no longer says {old}"
        text = text.replace(old, new)
    return parse_task(text, file=str(DEFAULT_TASK), base_dir=DEFAULT_TASK.parent)


@asynccontextmanager
async def running_task(state_dir: Path) -> AsyncIterator[TaskRuntime]:
    """The task training alone, no neighbour to join, its own checkpoint timer too slow to ever fire."""
    async with trio.open_nursery() as nursery:
        network = FakeHub(nursery, random.Random(0)).add_peer()
        options = RunOptions(join_timeout=0, checkpoint_interval=10**6, seed=0)
        runtime = TaskRuntime(small_default_task(), options, network=network, state_dir=state_dir)
        await nursery.start(runtime.run)
        yield runtime
        nursery.cancel_scope.cancel()


async def wait_until(condition: Callable[[], bool]) -> None:
    # TaskRuntime exposes no event for training progress; poll it.
    while not condition():  # noqa: ASYNC110
        await trio.sleep(0.01)


async def train_some(runtime: TaskRuntime, steps: int = 5) -> int:
    """Wait until the task has taken `steps` more steps; returns its step."""
    start = runtime.status().step
    await wait_until(lambda: runtime.status().step >= start + steps)
    return runtime.status().step


@pytest.mark.parametrize("failing", ["write", "fsync"])
async def test_a_full_disk_at_checkpoint_time_is_logged_training_goes_on_and_the_last_checkpoint_survives(
    failing: Failing, tmp_path: Path, monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.INFO)
    with trio.fail_after(60):
        async with running_task(tmp_path) as runtime:
            assert runtime.state is TaskState.TRAINING and runtime.services is not None
            store = runtime.services.store
            assert store is not None
            disk = FullDisk(store.folder, monkeypatch)
            await train_some(runtime)
            first = await runtime.checkpoint()
            assert first is not None
            first_bytes = first.read_bytes()
            first_written_at = runtime.status().last_checkpoint

            disk.fill(failing, free=len(first_bytes) // 2)
            caplog.clear()
            failed = await runtime.checkpoint()
            errors = [r for r in caplog.records if r.levelno >= logging.ERROR]
            after_failure = runtime.status()
            stepped_to = await train_some(runtime)
            files_after_failure = sorted(store.folder.iterdir())
            first_bytes_after_failure = first.read_bytes()
            loaded_after_failure = CheckpointStore(store.folder).load_latest()

            disk.clear()
            second = await runtime.checkpoint()
            last = runtime.status()

    assert disk.refused == [failing], "the disk did not fill up as planned: the test would prove nothing"
    # The failure is logged as an error, naming the cause, and changes nothing the task reports ...
    assert failed is None
    assert len(errors) == 1 and errors[0].name == "gossipd.task", [r.getMessage() for r in errors]
    assert "checkpoint" in errors[0].getMessage() and os.strerror(errno.ENOSPC) in errors[0].getMessage()
    assert after_failure.state is TaskState.TRAINING and after_failure.error is None
    assert after_failure.last_checkpoint == first_written_at
    # ... training goes on ...
    assert stepped_to > after_failure.step
    # ... and the folder holds the earlier checkpoint alone (no temp file left behind), as it was, loadable.
    assert files_after_failure == [first]
    assert first_bytes_after_failure == first_bytes
    assert loaded_after_failure is not None and loaded_after_failure.path == first
    assert loaded_after_failure.step == int(first.name.split("-")[1])  # ckpt-<step>-<unix ms>.pt
    # With room again, the next checkpoint is written, of a later step, and it is the one a restart loads.
    assert second is not None and second != first
    assert last.last_checkpoint is not None and first_written_at is not None
    assert last.last_checkpoint > first_written_at
    loaded = CheckpointStore(store.folder).load_latest()
    assert loaded is not None and loaded.path == second and loaded.step >= stepped_to
    assert sorted(store.folder.iterdir()) == sorted([first, second])
