"""Run inside a fresh network namespace by tests/test_mdns.py: two daemons with no bootstrap address must
find each other by mDNS on the namespace's loopback and exchange. Exits 0 on success, 1 with logs if not."""

from __future__ import annotations

import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from gossipd.tools.swarm import Swarm, running_swarm, tail


def main() -> int:
    # A fresh namespace's loopback is down and has no multicast route: set both up.
    subprocess.run(["ip", "link", "set", "lo", "up"], check=True)
    subprocess.run(["ip", "route", "add", "224.0.0.0/4", "dev", "lo"], check=False)
    workdir = Path(tempfile.mkdtemp(prefix="gd-mdns-", dir="/tmp"))
    try:
        return _find_each_other(Swarm(workdir=workdir, size=2, extra=["--mdns"], use_bootstrap=False))
    finally:
        shutil.rmtree(workdir, ignore_errors=True)  # /tmp is the host's: the namespace shares it


def _find_each_other(swarm: Swarm) -> int:
    with running_swarm(swarm, wait=180):
        deadline = time.monotonic() + 90
        while time.monotonic() < deadline:
            statuses = swarm.statuses()
            found = [
                any("mdns" in p["sources"] and p["exchanges"] > 0 for p in s["tasks"][0]["peers"])
                for s in statuses
                if s is not None
            ]
            if len(found) == 2 and all(found):
                return 0
            time.sleep(1)
    for daemon in swarm.daemons:
        print(f"--- peer {daemon.index}\n{tail(daemon.log_path)}", file=sys.stderr)
    return 1


if __name__ == "__main__":
    sys.exit(main())
