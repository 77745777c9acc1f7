"""Real daemons for the tests that need them: a swarm of one task under a short /tmp folder (Unix socket paths
must stay under ~100 bytes), started, handed over, then stopped; every daemon must exit cleanly."""

from __future__ import annotations

import os
import shutil
import signal
import tempfile
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

from gossipd.tools.swarm import Swarm, tail


@contextmanager
def daemon_swarm(
    prefix: str, task: str, *, kind: Callable[..., Swarm] = Swarm, wait: float = 180, **options: Any
) -> Iterator[Swarm]:
    """`task` is the task file's text; `options` go to the swarm. GOSSIPD_KEEP_TEST_DIR keeps the folder."""
    workdir = Path(tempfile.mkdtemp(prefix=prefix, dir="/tmp"))
    task_file = workdir / "task.toml"
    task_file.write_text(task)
    swarm = kind(workdir=workdir, task=str(task_file), **options)
    try:
        swarm.start(wait=wait)
        yield swarm
    finally:
        codes = swarm.stop(timeout=60)
        logs = "\n".join(f"--- peer {d.index}\n{tail(d.log_path, 40)}" for d in swarm.daemons)
        if not os.environ.get("GOSSIPD_KEEP_TEST_DIR"):
            shutil.rmtree(workdir, ignore_errors=True)
        assert all(code in (0, -signal.SIGKILL) for code in codes), f"exit codes {codes}\n{logs}"


def task_of(status: dict[str, Any] | None) -> dict[str, Any]:
    """The first (only) task of a daemon's status."""
    assert status is not None
    found: dict[str, Any] = status["tasks"][0]
    return found


def wait_until(condition: Callable[[], bool], timeout: float, what: str) -> None:
    """Poll `condition` every 0.2 s; AssertionError naming `what` once `timeout` seconds pass."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if condition():
            return
        time.sleep(0.2)
    raise AssertionError(f"timed out after {timeout:.0f} s waiting for {what}")
