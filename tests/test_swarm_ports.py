"""The swarm launcher restarts a daemon on the port it first bound, so its peers' addresses stay valid."""

from __future__ import annotations

from pathlib import Path

from gossipd.tools.swarm import Swarm, listen_port


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
