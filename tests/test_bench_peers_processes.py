"""A rival's run stopped part-way (a peer failed, Ctrl-C, SIGTERM) stops its other peers and what they started,
rather than leaving them training on."""

from __future__ import annotations

import os
import sys
import time
from pathlib import Path

import pytest

from tests.scripts import load_script


def _alive(pid: int) -> bool:
    """Running, not a zombie waiting to be reaped."""
    try:
        state = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0]
    except (FileNotFoundError, IndexError):
        return False
    return state != "Z"


def _gone_within(pid: int, seconds: float) -> bool:
    deadline = time.monotonic() + seconds
    while time.monotonic() < deadline:
        if not _alive(pid):
            return True
        time.sleep(0.05)
    return not _alive(pid)


def _helper_pid(path: Path) -> int:
    """The pid a peer wrote once it started its helper."""
    deadline = time.monotonic() + 10
    while not path.exists() or not path.read_text().strip():
        assert time.monotonic() < deadline, "the peer never started its helper"
        time.sleep(0.05)
    return int(path.read_text())


@pytest.mark.skipif(not Path("/proc").is_dir(), reason="needs /proc to see the processes")
def test_a_failed_peer_stops_the_others_and_what_they_started(tmp_path: Path) -> None:
    module = load_script("bench_peers")
    child_file = tmp_path / "child.pid"
    # A peer that starts a helper of its own (as hivemind's runner starts p2pd), then runs on.
    lingering = f"sleep 60 & echo $! > {child_file}; sleep 60"
    processes = [
        module.start_group(["sh", "-c", "exit 3"], dict(os.environ)),
        module.start_group(["sh", "-c", lingering], dict(os.environ)),
    ]
    helper = _helper_pid(child_file)
    started = time.monotonic()
    with pytest.raises(RuntimeError, match="a test peer failed with 3"):
        module.wait_all(processes, "a test peer", grace=5.0)
    assert time.monotonic() - started < 10
    assert processes[1].poll() is not None
    assert _gone_within(helper, 5.0)


def test_a_peer_deaf_to_sigterm_is_killed_after_the_grace(tmp_path: Path) -> None:
    module = load_script("bench_peers")
    deaf = "import signal, time; signal.signal(signal.SIGTERM, signal.SIG_IGN); time.sleep(60)"
    ignore = [sys.executable, "-c", deaf]
    processes = [module.start_group(["sh", "-c", "sleep 0.5; exit 1"], dict(os.environ))]
    processes.append(module.start_group(ignore, dict(os.environ)))
    time.sleep(0.3)  # the second has set its handler
    started = time.monotonic()
    with pytest.raises(RuntimeError):
        module.wait_all(processes, "a test peer", grace=1.0)
    assert 0.9 < time.monotonic() - started < 10
    assert processes[1].returncode is not None and processes[1].returncode < 0


@pytest.mark.skipif(not Path("/proc").is_dir(), reason="needs /proc to see the processes")
def test_what_a_peer_started_and_that_outlives_it_is_killed_after_the_grace(tmp_path: Path) -> None:
    module = load_script("bench_peers")
    child_file = tmp_path / "child.pid"
    deaf = "import signal, time; signal.signal(signal.SIGTERM, signal.SIG_IGN); time.sleep(60)"
    # The peer stops at SIGTERM; a helper it started (as hivemind's runner starts its DHT process) does not.
    peer = f"{sys.executable} -c '{deaf}' & echo $! > {child_file}; sleep 60"
    processes = [
        module.start_group(["sh", "-c", "sleep 0.5; exit 2"], dict(os.environ)),
        module.start_group(["sh", "-c", peer], dict(os.environ)),
    ]
    helper = _helper_pid(child_file)
    time.sleep(0.3)  # the helper has set its handler
    with pytest.raises(RuntimeError, match="failed with 2"):
        module.wait_all(processes, "a test peer", grace=1.0)
    assert processes[1].returncode is not None
    assert _gone_within(helper, 5.0)
