"""The core never touches the network or the event loop: it must run unchanged in the daemon and in the
in-process simulator. This walks every core module's imports, and checks a fresh interpreter too."""

from __future__ import annotations

import ast
import subprocess
import sys
from pathlib import Path

from tests.conftest import REPO

PACKAGE = REPO / "gossipd"
# Everything but the composition root (cli, daemon), the layers that do I/O (adapters, services), the
# control-socket client, the attach-socket client a training script runs (attached, which the package's own
# __init__ offers lazily as gossipd.attach) and tools built on them.
NON_CORE = {
    "cli",
    "cli_client",
    "cli_tasks",
    "client",
    "attached",
    "__init__",
    "daemon",
    "adapters",
    "services",
    "tools",
    "__main__",
}
FORBIDDEN = {"trio", "libp2p", "multiaddr", "socket", "asyncio", "h11", "selectors", "ssl", "http", "anyio"}
# torch itself loads asyncio, socket and http, so at run time only the third-party I/O stacks are checked.
FORBIDDEN_AT_RUNTIME = {"trio", "libp2p", "multiaddr", "h11", "anyio", "prometheus_client"}


def core_modules() -> list[Path]:
    found = []
    for path in sorted(PACKAGE.rglob("*.py")):
        top = path.relative_to(PACKAGE).parts[0].removesuffix(".py")
        if top not in NON_CORE:
            found.append(path)
    return found


def imported_names(path: Path) -> set[str]:
    tree = ast.parse(path.read_text(), filename=str(path))
    names: set[str] = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            names.update(alias.name for alias in node.names)
        elif isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
            names.add(node.module)
    return names


def test_core_modules_exist() -> None:
    names = {p.relative_to(PACKAGE).as_posix() for p in core_modules()}
    for expected in ("wire/messages.py", "mixing/powergossip.py", "compress/sign.py", "sim/simulator.py"):
        assert expected in names


def test_core_imports_no_network_or_event_loop() -> None:
    offenders = []
    for path in core_modules():
        for name in imported_names(path):
            top = name.split(".")[0]
            if top in FORBIDDEN:
                offenders.append(f"{path.relative_to(REPO)} imports {name}")
            parts = name.split(".")
            if parts[0] == "gossipd" and len(parts) > 1 and parts[1] in NON_CORE:
                offenders.append(f"{path.relative_to(REPO)} imports the non-core {name}")
    assert not offenders, "\n".join(offenders)


def test_core_loads_nothing_forbidden_at_runtime() -> None:
    modules = sorted(
        "gossipd." + ".".join(p.relative_to(PACKAGE).with_suffix("").parts).removesuffix(".__init__")
        for p in core_modules()
    )
    code = (
        "import sys\n"
        + "".join(f"import {m}\n" for m in modules)
        + f"bad = sorted(m for m in sys.modules if m.split('.')[0] in {sorted(FORBIDDEN_AT_RUNTIME)!r})\n"
        + "print(','.join(bad))\n"
    )
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120, check=True)
    assert result.stdout.strip() == "", f"core imports pulled in: {result.stdout.strip()}"
