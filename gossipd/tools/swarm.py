"""Launching a swarm of real daemons on one machine (loopback), polling them, and stopping them.

Used by `make demo`, the benchmarks and the multi-process tests. Peer 0 starts first and is everyone's
bootstrap; the others train on their own partition of the task's data (`--peer-index/--peer-count`).
Every daemon gets its own state folder and control socket under the work folder.
"""

from __future__ import annotations

import contextlib
import os
import signal
import subprocess
import sys
import time
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from gossipd.client import ControlClient
from gossipd.services.control import ControlError


@dataclass
class Daemon:
    index: int
    folder: Path
    process: subprocess.Popen[bytes]
    log_path: Path
    launched: float = field(default_factory=time.monotonic)  # when its process was started

    @property
    def socket(self) -> Path:
        return self.folder / "sock"

    @property
    def state_dir(self) -> Path:
        return self.folder / "state"

    def client(self, timeout: float = 10.0) -> ControlClient:
        return ControlClient(self.socket, timeout=timeout)

    def status(self) -> dict[str, Any] | None:
        try:
            return self.client().status()
        except ControlError:
            return None

    @property
    def alive(self) -> bool:
        return self.process.poll() is None


def listen_port(status: dict[str, Any]) -> int:
    """The TCP port of a daemon's first /ip4/…/tcp/PORT address (0 when it reports none)."""
    for address in status.get("addresses", []):
        parts = str(address).split("/")
        if "tcp" in parts and parts.index("tcp") + 1 < len(parts):
            return int(parts[parts.index("tcp") + 1])
    return 0


@dataclass
class Swarm:
    """N daemons of one task. `extra` options go to every daemon; `env` adds environment variables."""

    workdir: Path
    task: str | None = None  # a task file; None: the embedded default task
    size: int = 4
    extra: Sequence[str] = ()
    env: dict[str, str] = field(default_factory=dict)
    partition: bool = True  # give each daemon its own share of the data
    parts: int | None = None  # how many shares (default: the size; more leaves room for late joiners)
    per_peer: Callable[[int], list[str]] | None = None  # more options for daemon i
    affinity: Callable[[int], set[int]] | None = None  # CPUs daemon i may run on (benchmarks pin them)
    use_bootstrap: bool = True  # False: daemons must find each other otherwise (mDNS)
    # Where daemon i runs and listens: in an emulated network (gossipd.tools.netlab) `launch` wraps its
    # command to run inside its host's namespace and `listen_ip` gives that host's address; default loopback.
    launch: Callable[[int, list[str]], list[str]] | None = None
    listen_ip: Callable[[int], str] | None = None
    daemons: list[Daemon] = field(default_factory=list)
    bootstrap: str = ""
    # The port each daemon bound at its first start: a restart listens there again, as a daemon with a
    # configured address would, so the addresses its peers (and the bootstrap list) hold stay valid.
    ports: dict[int, int] = field(default_factory=dict)

    def command(self, index: int, folder: Path, *, bootstrap: str | None) -> list[str]:
        args = [sys.executable, "-m", "gossipd", "run"]
        if self.task is not None:
            args.append(self.task)
        ip = self.listen_ip(index) if self.listen_ip else "127.0.0.1"
        args += ["--listen", f"/ip4/{ip}/tcp/{self.ports.get(index, 0)}", "--state-dir", str(folder / "state")]
        args += ["--socket", str(folder / "sock"), "--seed", str(index)]
        if self.partition:
            args += ["--peer-index", str(index), "--peer-count", str(self.parts or self.size)]
        if bootstrap:
            args += ["--bootstrap", bootstrap]
        else:
            args += ["--join-timeout", "0"]  # the first peer has no one to copy a model from
        args = [*args, *self.extra, *(self.per_peer(index) if self.per_peer else [])]
        return self.launch(index, args) if self.launch else args

    def start_one(self, index: int, *, wait: float = 120.0, ready: bool | None = True) -> Daemon:
        """Launch daemon `index`; wait until its task is ready (True), until it answers (False), or not at all
        (None)."""
        folder = self.workdir / f"peer-{index}"
        folder.mkdir(parents=True, exist_ok=True)
        log_path = folder / "daemon.log"
        environment = {**os.environ, "OMP_NUM_THREADS": "1", **self.env}
        cpus = self.affinity(index) if self.affinity else None
        with log_path.open("ab") as log:
            process = subprocess.Popen(
                self.command(index, folder, bootstrap=self.bootstrap or None),
                stdout=log,
                stderr=subprocess.STDOUT,
                env=environment,
                start_new_session=True,
                preexec_fn=(lambda: os.sched_setaffinity(0, cpus)) if cpus else None,
            )
        daemon = Daemon(index=index, folder=folder, process=process, log_path=log_path)
        if index < len(self.daemons):
            self.daemons[index] = daemon
        else:
            self.daemons.append(daemon)
        if ready is not None:
            self.wait_ready(daemon, wait, loaded=ready)
        return daemon

    def wait_ready(self, daemon: Daemon, timeout: float, *, loaded: bool = True) -> dict[str, Any]:
        """Wait until the daemon answers and (`loaded`) its task has loaded its data and model or checkpoint."""
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if not daemon.alive:
                raise RuntimeError(f"daemon {daemon.index} exited early:\n{tail(daemon.log_path)}")
            status = daemon.status()
            if status is not None and daemon.index not in self.ports:
                self.ports[daemon.index] = listen_port(status)
            if status is not None and (
                not loaded or (status.get("tasks") and status["tasks"][0]["state"] != "loading")
            ):
                return status
            time.sleep(0.1 if not loaded else 0.3)
        raise TimeoutError(f"daemon {daemon.index} was not ready after {timeout:.0f} s:\n{tail(daemon.log_path)}")

    def start(self, *, wait: float = 120.0, all_at_once: bool = False) -> None:
        """Start peer 0, then the others with peer 0 as their bootstrap. One by one, each ready before the
        next starts (tests rely on that order); or `all_at_once`: the others launched together as soon as
        peer 0 answers, as a benchmark's peers would be, then all awaited."""
        first = self.start_one(0, wait=wait, ready=not all_at_once)
        status = first.status() or {}
        if self.use_bootstrap:
            self.bootstrap = status["addresses"][0]
        for index in range(1, self.size):
            self.start_one(index, wait=wait, ready=None if all_at_once else True)
        if all_at_once:
            for daemon in self.daemons:
                self.wait_ready(daemon, wait)

    def start_without_tasks(self, *, wait: float = 120.0) -> None:
        """Start daemons that run no task of their own (`extra` holds `--no-task`: scripts attach theirs),
        peer 0 first as the others' bootstrap; each is awaited until it answers."""
        first = self.start_one(0, wait=wait, ready=False)
        status = first.status() or {}
        if self.use_bootstrap:
            self.bootstrap = status["addresses"][0]
        for index in range(1, self.size):
            self.start_one(index, wait=wait, ready=False)

    def statuses(self) -> list[dict[str, Any] | None]:
        return [d.status() if d.alive else None for d in self.daemons]

    def signal(self, index: int, sig: int) -> None:
        with contextlib.suppress(ProcessLookupError):
            os.kill(self.daemons[index].process.pid, sig)

    def stop_one(self, index: int, timeout: float = 60.0) -> int:
        """SIGTERM, then SIGKILL after `timeout`; returns the exit status."""
        if self.daemons[index].alive:
            self.signal(index, signal.SIGCONT)  # a stopped process cannot handle SIGTERM
            self.signal(index, signal.SIGTERM)
        return self._reap(index, timeout)

    def _reap(self, index: int, timeout: float) -> int:
        try:
            return self.daemons[index].process.wait(timeout)
        except subprocess.TimeoutExpired:
            self.signal(index, signal.SIGKILL)
            return self.daemons[index].process.wait(10)

    def stop(self, timeout: float = 60.0) -> list[int]:
        """Stop every daemon at once (SIGTERM each exactly once) and return their exit statuses."""
        for index, daemon in enumerate(self.daemons):
            if daemon.alive:
                self.signal(index, signal.SIGCONT)
                self.signal(index, signal.SIGTERM)
        return [self._reap(index, timeout) for index in range(len(self.daemons))]


@contextlib.contextmanager
def running_swarm(swarm: Swarm, *, wait: float = 120.0, all_at_once: bool = False) -> Iterator[Swarm]:
    """Start the swarm, and stop every process it started whatever happens."""
    try:
        swarm.start(wait=wait, all_at_once=all_at_once)
        yield swarm
    finally:
        swarm.stop()


def tail(path: Path, lines: int = 30) -> str:
    try:
        return "\n".join(path.read_text(errors="replace").splitlines()[-lines:])
    except OSError:
        return "(no log)"


def crashes(path: Path, lines: int = 40) -> list[str]:
    """Each task crash a daemon's log records ("task … crashed"; the daemon restarted the task), with the
    traceback that follows it: a crash is a bug, and its traceback is the diagnosis."""
    try:
        text = path.read_text(errors="replace").splitlines()
    except OSError:
        return []
    return ["\n".join(text[i : i + lines]) for i, line in enumerate(text) if " crashed" in line and "task " in line]
