"""Two sites with no route between them and one relay peer on both (tests/test_netlab.py builds such labs):
every peer mixes with every other, across the sites through the relay, and consensus distance falls; then the
relay is killed and each site goes on mixing inside itself, its failed exchanges levelling off."""

from __future__ import annotations

import os
import shutil
import signal
import tempfile
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest

from gossipd.tools.netlab import NetLab, lab_unavailable
from gossipd.tools.netlab_topology import topology_from_mapping
from gossipd.tools.swarm import Swarm, tail

UNAVAILABLE = lab_unavailable()
pytestmark = pytest.mark.skipif(UNAVAILABLE is not None, reason=f"no network lab here: {UNAVAILABLE}")

SITES = {
    "sites": {"a": {}, "b": {}},
    "hosts": {
        "relay": {"sites": ["a", "b"]},
        "a1": {"sites": ["a"]},
        "a2": {"sites": ["a"]},
        "b1": {"sites": ["b"]},
        "b2": {"sites": ["b"]},
    },
}
NAMES = ["relay", "a1", "a2", "b1", "b2"]  # daemon i runs on host NAMES[i]; daemon 0 is the relay


def _task(status: dict[str, Any] | None) -> dict[str, Any]:
    assert status is not None
    task: dict[str, Any] = status["tasks"][0]
    return task


def _peers(status: dict[str, Any] | None) -> dict[str, dict[str, Any]]:
    return {p["peer_id"]: p for p in _task(status)["peers"]}


def _wait(condition: Callable[[], bool], seconds: float, what: str, swarm: Swarm) -> None:
    deadline = time.monotonic() + seconds
    while time.monotonic() < deadline:
        if condition():
            return
        time.sleep(1.0)
    logs = "\n".join(f"--- {NAMES[d.index]}\n{tail(d.log_path, 20)}" for d in swarm.daemons)
    raise AssertionError(f"not within {seconds:.0f} s: {what}\n{logs}")


def test_sites_mix_through_a_relay_and_carry_on_without_it() -> None:
    topology = topology_from_mapping(SITES)
    workdir = Path(tempfile.mkdtemp(prefix="gd-relay-", dir="/tmp"))
    with NetLab.build(topology) as lab:
        swarm: Swarm

        def options(index: int) -> list[str]:
            if index == 0:
                return ["--relay", "--listen", f"/ip4/{lab.address('relay', 'b')}/tcp/0"]
            relay = swarm.daemons[0].status() or {}
            site = topology.host(NAMES[index]).sites[0]
            near = [a for a in relay.get("addresses", []) if f"/ip4/{lab.address('relay', site)}/" in a]
            return ["--bootstrap", near[0]]

        swarm = Swarm(
            workdir=workdir,
            size=len(NAMES),
            use_bootstrap=False,
            per_peer=options,
            launch=lambda i, argv: lab.command(NAMES[i], argv),
            listen_ip=lambda i: lab.address(NAMES[i]),
        )
        try:
            swarm.start(wait=180)
            ids = [s["peer_id"] for s in swarm.statuses() if s is not None]
            assert len(ids) == len(NAMES)
            site_of = {ids[i]: topology.host(NAMES[i]).sites for i in range(len(NAMES))}

            def everyone_mixed_with_everyone() -> bool:
                statuses = swarm.statuses()
                for i, status in enumerate(statuses):
                    peers = _peers(status)
                    for other in ids:
                        if other != ids[i] and peers.get(other, {}).get("exchanges", 0) == 0:
                            return False
                return True

            distances: list[float] = []

            def track_distance() -> bool:
                values = [_task(s)["consensus_distance"] for s in swarm.statuses()]
                if all(v is not None for v in values):
                    distances.append(sum(values) / len(values))
                return everyone_mixed_with_everyone()

            _wait(track_distance, 150, "every peer exchanged with every other", swarm)
            # Across the sites, through the relay: each site's peers reach the other site's relayed.
            for i in range(1, len(NAMES)):
                peers = _peers(swarm.statuses()[i])
                for other in ids[1:]:
                    if other != ids[i] and site_of[other] != site_of[ids[i]]:
                        assert peers[other]["reached"] == "relayed", (NAMES[i], peers[other])
                assert peers[ids[0]]["reached"] == "direct"
            relay_status = swarm.statuses()[0]
            assert relay_status is not None and relay_status["relay"]["reservations_served"] == 4
            for _ in range(15):
                track_distance()
                time.sleep(1.0)
            assert distances[-1] < 0.8 * max(distances), distances

            # The relay dies: the sites lose each other, not themselves.
            swarm.signal(0, signal.SIGKILL)
            time.sleep(12)  # exchanges already under way across the sites fail and back off
            before = swarm.statuses()[1:]
            time.sleep(20)
            after = swarm.statuses()[1:]
            for i, (old, new) in enumerate(zip(before, after, strict=True), start=1):
                assert swarm.daemons[i].alive, tail(swarm.daemons[i].log_path)
                same_site = [p for p in ids[1:] if p != ids[i] and site_of[p] == site_of[ids[i]]]
                grown = _peers(new)[same_site[0]]["exchanges"] - _peers(old)[same_site[0]]["exchanges"]
                assert grown >= 5, (NAMES[i], grown)
                failed = _task(new)["failed_exchanges"] - _task(old)["failed_exchanges"]
                assert failed <= 8, (NAMES[i], failed, tail(swarm.daemons[i].log_path))
        finally:
            codes = swarm.stop(timeout=60)
            logs = {NAMES[d.index]: d.log_path.read_text(errors="replace") for d in swarm.daemons}
            if not os.environ.get("GOSSIPD_KEEP_TEST_DIR"):
                shutil.rmtree(workdir, ignore_errors=True)
    assert codes[1:] == [0] * (len(NAMES) - 1), codes
    for name, text in logs.items():
        assert "Traceback" not in text and " ERROR " not in text, f"{name}:\n{text[-3000:]}"
