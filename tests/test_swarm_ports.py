"""The swarm launcher restarts a daemon on the port it first bound, so its peers' addresses stay valid; and it
finds the task crashes a daemon's log records."""

from __future__ import annotations

from pathlib import Path

from gossipd.tools.swarm import Swarm, crashes, listen_port


def test_listen_port_reads_the_first_tcp_address() -> None:
    status = {"addresses": ["/ip4/127.0.0.1/tcp/40123/p2p/12D3KooWxyz", "/ip4/10.0.0.2/tcp/5/p2p/12D3KooWxyz"]}
    assert listen_port(status) == 40123
    assert listen_port({"addresses": []}) == 0
    assert listen_port({}) == 0


def test_a_restart_listens_on_the_recorded_port(tmp_path: Path) -> None:
    swarm = Swarm(workdir=tmp_path)
    first = swarm.command(1, tmp_path / "peer-1", bootstrap="/ip4/127.0.0.1/tcp/1/p2p/x")
    assert first[first.index("--listen") + 1] == "/ip4/127.0.0.1/tcp/0"
    swarm.ports[1] = 40123
    again = swarm.command(1, tmp_path / "peer-1", bootstrap="/ip4/127.0.0.1/tcp/1/p2p/x")
    assert again[again.index("--listen") + 1] == "/ip4/127.0.0.1/tcp/40123"


def test_crashes_returns_each_crash_with_its_traceback(tmp_path: Path) -> None:
    log = tmp_path / "daemon.log"
    log.write_text(
        "12:00:00 INFO    gossipd.daemon: gossipd running\n"
        "12:00:01 ERROR   gossipd.daemon: task t crashed\n"
        "Traceback (most recent call last):\n"
        '  File "x.py", line 1, in run\n'
        "KeyError: 'peer'\n"
        "12:00:03 INFO    gossipd.daemon: task t restarting from its newest checkpoint\n"
    )
    (found,) = crashes(log, lines=4)
    assert found.splitlines()[0].endswith("task t crashed") and found.splitlines()[-1] == "KeyError: 'peer'"
    log.write_text("12:00:00 INFO    gossipd.daemon: gossipd running\n")
    assert crashes(log) == []
    assert crashes(tmp_path / "missing.log") == []
