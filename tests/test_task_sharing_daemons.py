"""Sharing tasks between real daemons on loopback: `gossipd discover` lists an open task and never a closed
one, and `gossipd join --from` fetches the open one, refuses to guess where its data lies, and starts a peer
with the same task hash that mixes with the one it fetched from. One daemon per task serves the module."""

from __future__ import annotations

import contextlib
import json
import os
import signal
import subprocess
import sys
import tempfile
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from gossipd.client import ControlClient
from gossipd.services.control import ControlError
from gossipd.tools.swarm import Swarm, tail
from tests.conftest import DEFAULT_TASK, REPO
from tests.daemons import daemon_swarm, task_of, wait_until

MNIST = REPO / "gossipd" / "embedded" / "mnist"
KEY_ENV = "GOSSIPD_SHARING_TEST_KEY"
OPEN_TASK = (
    DEFAULT_TASK.read_text()
    .replace('id = "mnist-default"', 'id = "shared-open"')
    .replace('description = "Small CNN', 'description = "Open MLP')
    # A path of the serving machine, not an embedded dataset: a joiner must say where its own copy is.
    .replace('root = "embedded:mnist"', f'root = "{MNIST}"')
    .replace('name = "cnn"', 'name = "mlp"\nhidden = [16]')
    .replace("[gossip]", "[gossip]\nexchange_interval = 0.2\nexchange_timeout = 3.0")
)
CLOSED_TASK = OPEN_TASK.replace('id = "shared-open"', 'id = "shared-closed"') + f'\n[access]\nkey_env = "{KEY_ENV}"\n'


@pytest.fixture(scope="module")
def open_daemon() -> Iterator[Swarm]:
    with daemon_swarm("gd-share-o-", OPEN_TASK, size=1, partition=False) as swarm:
        yield swarm


@pytest.fixture(scope="module")
def closed_daemon() -> Iterator[Swarm]:
    with daemon_swarm("gd-share-c-", CLOSED_TASK, size=1, partition=False, env={KEY_ENV: "ab" * 32}) as swarm:
        yield swarm


def gossipd(*args: str, timeout: float = 60, stdin: str = "") -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "gossipd", *args], capture_output=True, text=True, timeout=timeout, input=stdin
    )


def hash_of(swarm: Swarm) -> str:
    found: str = task_of(swarm.daemons[0].status())["hash"]
    return found


def sharing_of(swarm: Swarm) -> dict[str, Any]:
    status = swarm.daemons[0].status()
    assert status is not None
    found: dict[str, Any] = status["sharing"]
    return found


def peer_of(swarm: Swarm) -> str:
    return swarm.bootstrap.rsplit("/p2p/", 1)[-1]


def test_discover_lists_the_open_task_and_never_the_closed_one(open_daemon: Swarm, closed_daemon: Swarm) -> None:
    result = gossipd("discover", "--bootstrap", open_daemon.bootstrap, "--bootstrap", closed_daemon.bootstrap,
                     "--timeout", "3", "--json")  # fmt: skip
    assert result.returncode == 0, result.stderr
    tasks = {task["id"]: task for task in json.loads(result.stdout)["tasks"]}
    assert set(tasks) == {"shared-open"}, tasks
    offer = tasks["shared-open"]
    assert offer["hash"] == hash_of(open_daemon)
    assert offer["description"].startswith("Open MLP")
    parameters = 784 * 16 + 16 + 16 * 10 + 10
    assert (offer["model"], offer["parameters"], offer["input_shape"]) == ("mlp", parameters, [1, 28, 28])
    assert [peer["peer"] for peer in offer["offered_by"]] == [peer_of(open_daemon)]
    assert hash_of(closed_daemon) not in result.stdout
    assert sharing_of(open_daemon)["offered"] == ["shared-open"]
    assert sharing_of(closed_daemon)["offered"] == []


def test_join_from_needs_the_users_own_data_folder(open_daemon: Swarm, tmp_path: Path) -> None:
    result = gossipd("join", "--from", "shared-open", "--bootstrap", open_daemon.bootstrap, "--timeout", "3",
                     "--state-dir", str(tmp_path / "state"), "--yes")  # fmt: skip
    assert result.returncode == 2, result.stdout + result.stderr
    assert "give --data DIR" in result.stderr
    assert f'root = "{MNIST}"' in result.stdout  # it showed the file first
    assert not (tmp_path / "state" / "task-files").exists()  # nothing saved, nothing run


@contextlib.contextmanager
def joined(open_daemon: Swarm, folder: Path) -> Iterator[tuple[subprocess.Popen[bytes], Path, Path]]:
    log_path, socket = folder / "join.log", folder / "sock"
    args = ["join", "--from", hash_of(open_daemon)[:8], "--bootstrap", open_daemon.bootstrap, "--timeout", "3",
            "--data", str(MNIST), "--yes", "--state-dir", str(folder / "state"), "--socket", str(socket),
            "--listen", "/ip4/127.0.0.1/tcp/0"]  # fmt: skip
    with log_path.open("wb") as log:
        process = subprocess.Popen(
            [sys.executable, "-m", "gossipd", *args],
            stdout=log,
            stderr=subprocess.STDOUT,
            env={**os.environ, "OMP_NUM_THREADS": "1"},
            start_new_session=True,
        )
    try:
        yield process, socket, log_path
    finally:
        if process.poll() is None:
            process.send_signal(signal.SIGTERM)
        try:
            code = process.wait(60)
        except subprocess.TimeoutExpired:
            process.kill()
            code = process.wait(10)
        assert code == 0, f"join exited {code}:\n{tail(log_path, 40)}"


def status_of(socket: Path) -> dict[str, Any] | None:
    try:
        return ControlClient(socket, timeout=5).status()
    except ControlError:
        return None


def test_join_from_a_peer_runs_the_same_task_and_mixes_with_it(open_daemon: Swarm) -> None:
    with (
        tempfile.TemporaryDirectory(prefix="gd-share-j-", dir="/tmp") as folder,
        joined(open_daemon, Path(folder)) as (process, socket, log_path),
    ):

        def exchanging() -> bool:
            assert process.poll() is None, f"join exited early:\n{tail(log_path, 40)}"
            status = status_of(socket)
            if status is None or not status["tasks"]:
                return False
            task = task_of(status)
            return bool(task["exchanges"] >= 2 and task["state_transfers"] >= 1)

        wait_until(exchanging, 120, "the joined peer to copy the model and exchange with the one it fetched from")
        task = task_of(status_of(socket))
        assert task["hash"] == hash_of(open_daemon)
        assert task["id"] == "shared-open"
        server = next(p for p in task["peers"] if p["peer_id"] == peer_of(open_daemon))
        assert server["exchanges"] >= 1
        saved = Path(folder) / "state" / "task-files" / "shared-open.toml"
        assert saved.read_text() == OPEN_TASK  # the file exactly as the serving daemon loaded it
        assert "SHA-256 checked, task hash matches the advert" in log_path.read_text()
        assert sharing_of(open_daemon)["files_served"] >= 1


def test_join_from_hands_the_task_to_the_daemon_on_the_socket(open_daemon: Swarm, tmp_path: Path) -> None:
    # The daemon answering on the socket gets the fetched task over the control API; this one already runs
    # it, and says so (exit 5, as `gossipd join FILE` would).
    result = gossipd("join", "--from", "shared-open", "--bootstrap", open_daemon.bootstrap, "--timeout", "3",
                     "--data", str(MNIST), "--yes", "--save", str(tmp_path / "t.toml"),
                     "--socket", str(open_daemon.daemons[0].socket))  # fmt: skip
    assert result.returncode == 5, result.stdout + result.stderr
    assert "already running" in result.stderr
    assert (tmp_path / "t.toml").read_text() == OPEN_TASK
