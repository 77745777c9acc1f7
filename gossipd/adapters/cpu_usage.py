"""CPU time readings for the mixing budget (`gossipd.mixing.cpu_budget`): this process's CPU time, and the
idle time of the CPUs it may run on, from Linux's /proc/stat. Elsewhere the idle time is unknown (None) and
the budget applies as if every core were busy."""

from __future__ import annotations

import os
import time
from pathlib import Path

STAT = Path("/proc/stat")


def process_cpu_seconds() -> float:
    """CPU seconds this process has used, all threads."""
    return time.process_time()


def idle_from_stat(text: str, cpus: set[int], ticks_per_second: float) -> float | None:
    """Idle seconds (idle and waiting for I/O) the CPUs `cpus` have accumulated, from /proc/stat's text;
    None if none of them is listed."""
    total = 0
    found = False
    for line in text.splitlines():
        name, _, rest = line.partition(" ")
        if not (name.startswith("cpu") and name[3:].isdigit() and int(name[3:]) in cpus):
            continue
        fields = rest.split()
        if len(fields) < 5:
            continue
        total += int(fields[3]) + int(fields[4])  # user nice system idle iowait ...
        found = True
    return total / ticks_per_second if found else None


def idle_cpu_seconds() -> float | None:
    """Idle seconds accumulated by the CPUs this process may run on; None where /proc/stat is unreadable."""
    try:
        text = STAT.read_text()
        cpus = os.sched_getaffinity(0)
        ticks = os.sysconf("SC_CLK_TCK")
    except (OSError, AttributeError, ValueError):
        return None
    return idle_from_stat(text, cpus, float(ticks))
