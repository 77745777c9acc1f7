"""What the operating system says about a daemon process: its resident memory (/proc) and the bytes on its
TCP connections (`ss -tinp`, Linux). For measuring swarms on one machine; not used by the daemon itself."""

from __future__ import annotations

import re
import shutil
import subprocess
from dataclasses import dataclass
from pathlib import Path


@dataclass(frozen=True)
class Memory:
    resident_mb: float  # VmRSS
    peak_mb: float  # VmHWM: the most it was resident at once


def memory_of(pid: int) -> Memory | None:
    """The process's resident and peak resident memory; None when it is gone or /proc is not there."""
    try:
        text = Path(f"/proc/{pid}/status").read_text()
    except OSError:
        return None
    values = dict(re.findall(r"^(VmRSS|VmHWM):\s+(\d+) kB", text, flags=re.MULTILINE))
    if len(values) != 2:
        return None
    return Memory(int(values["VmRSS"]) / 1024, int(values["VmHWM"]) / 1024)


@dataclass(frozen=True)
class Traffic:
    sent: int
    received: int


_SOCKET = re.compile(r"pid=(\d+),")
_COUNTER = re.compile(r"\b(bytes_acked|bytes_received):(\d+)")


def parse_ss(text: str) -> dict[int, Traffic]:
    """`ss -tinpH` output as TCP bytes per owning process: bytes the peer acknowledged (sent) and received,
    summed over the process's established connections. A connection's line names its owner (`pid=`); its
    counters follow on the next, indented line."""
    totals: dict[int, list[int]] = {}
    owner: int | None = None
    for line in text.splitlines():
        if not line[:1].isspace():
            found = _SOCKET.search(line)
            owner = int(found.group(1)) if found else None
            continue
        if owner is None:
            continue
        counters = dict(_COUNTER.findall(line))
        entry = totals.setdefault(owner, [0, 0])
        entry[0] += int(counters.get("bytes_acked", 0))
        entry[1] += int(counters.get("bytes_received", 0))
    return {pid: Traffic(sent, received) for pid, (sent, received) in totals.items()}


def tcp_traffic() -> dict[int, Traffic] | None:
    """TCP bytes per process on this machine's established connections now; None without `ss`. Counters
    of connections already closed are gone: sample often, or keep connections up (daemons do)."""
    if shutil.which("ss") is None:
        return None
    try:
        result = subprocess.run(["ss", "-tinpH"], capture_output=True, text=True, timeout=10, check=True)
    except (OSError, subprocess.SubprocessError):
        return None
    return parse_ss(result.stdout)
