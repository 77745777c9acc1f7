"""mDNS discovery, in a network namespace the test creates (so its multicast stays off the host's LAN)."""

from __future__ import annotations

import os
import shutil
import subprocess
import sys

import pytest

from tests.conftest import REPO


def namespace_command() -> list[str] | None:
    """`unshare -n` as root, `unshare -rn` (a user namespace) otherwise; None where neither works."""
    unshare = shutil.which("unshare")
    if unshare is None or shutil.which("ip") is None:
        return None
    for command in ([unshare, "-n"], [unshare, "-rn"]) if os.geteuid() == 0 else ([unshare, "-rn"],):
        if subprocess.run([*command, "true"], capture_output=True, timeout=10).returncode == 0:
            return command
    return None


def test_two_daemons_find_each_other_by_mdns_alone() -> None:
    command = namespace_command()
    if command is None:
        pytest.skip("cannot create a network namespace here (unshare -n / -rn)")
    result = subprocess.run(
        [*command, sys.executable, str(REPO / "tests" / "mdns_scenario.py")],
        capture_output=True,
        text=True,
        timeout=300,
        cwd=REPO,
        env={**os.environ, "PYTHONPATH": str(REPO)},
    )
    assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-3000:]
