"""Circuit relay v2 through the libp2p adapter: relayed addresses parsed as advertised, and hosts on loopback
(tests/relay_scenario.py, in a subprocess) where a private peer is reached through a relay within its limits
and the relayed connection is then upgraded to a direct one."""

from __future__ import annotations

import os
import subprocess
import sys

from gossipd.adapters.libp2p_relay import circuit_relay, is_circuit
from tests.conftest import REPO

RELAY = "12D3KooWSeN8X6PVtbkMp5jLNN3KZv5r5JdgoErTxBNLrZsm2cfb"
PEER = "12D3KooWNrxpFfGWrM4xEQNBSUdgN9givwx1YqtHtpqvSgn9Z292"


def test_relayed_addresses_name_their_relay() -> None:
    address = f"/ip4/10.200.1.1/tcp/4001/p2p/{RELAY}/p2p-circuit/p2p/{PEER}"
    assert is_circuit(address)
    assert circuit_relay(address) == RELAY
    assert circuit_relay(f"/p2p/{RELAY}/p2p-circuit/p2p/{PEER}") == RELAY
    assert not is_circuit(f"/ip4/10.200.1.1/tcp/4001/p2p/{PEER}")
    assert circuit_relay(f"/ip4/10.200.1.1/tcp/4001/p2p/{PEER}") is None
    assert circuit_relay(f"/ip4/10.200.1.1/tcp/4001/p2p-circuit/p2p/{PEER}") is None


def test_a_relay_carries_a_private_peer_within_its_limits() -> None:
    result = subprocess.run(
        [sys.executable, str(REPO / "tests" / "relay_scenario.py")],
        capture_output=True,
        text=True,
        timeout=300,
        cwd=REPO,
        env={**os.environ, "PYTHONPATH": str(REPO)},
        check=False,
    )
    assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-3000:]
    assert "relay scenario: ok" in result.stdout
