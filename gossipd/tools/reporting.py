"""What the benchmark and soak scripts share: a line naming the machine a figure was measured on, the
rewrite of one generated section of a Markdown file (BENCHMARKS.md, RELIABILITY.md) between its markers,
leaving everything written by hand around it untouched (but the file's summary of verdicts, rebuilt from
its sections), and the reading of a run's record for a report
rebuilt without running (`--report-only`)."""

from __future__ import annotations

import json
import os
import platform
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from gossipd.tools.verdicts import with_summary


def machine() -> str:
    """CPU model, core count, Python version: the context every measured figure is printed with."""
    cpu = platform.processor() or platform.machine()
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                cpu = line.split(":", 1)[1].strip()
                break
    except OSError:
        pass
    cores = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count()
    return f"{cpu}, {cores} cores, Python {platform.python_version()}, {platform.system()}"


def markers(name: str) -> tuple[str, str]:
    return f"<!-- {name}:begin -->", f"<!-- {name}:end -->"


def replace_section(path: Path, name: str, body: str, *, title: str, heading: str = "") -> None:
    """Put `body` between the `name` markers of `path`; when the markers are absent, append them at the end
    under `heading` (a Markdown heading line, or nothing). A missing file starts with `title`."""
    begin, end = markers(name)
    section = f"{begin}\n{body.strip()}\n{end}"
    current = path.read_text() if path.exists() else f"# {title}\n"
    if begin in current and end in current:
        head, rest = current.split(begin, 1)
        current = head + section + rest.split(end, 1)[1]
    else:
        current = current.rstrip() + "\n\n" + (f"{heading}\n\n" if heading else "") + section + "\n"
    # A file with a summary of its verdicts (BENCHMARKS.md) has it rebuilt from the sections as they now are.
    path.write_text(with_summary(current))


def load_record(path: Path, needs: Sequence[str], *, target: str) -> dict[str, Any]:
    """The record a benchmark wrote at `path`, for `--report-only`; a clear exit where there is none, or where
    it predates what the report needs (a record written before the report stored its date and machine)."""
    try:
        record: dict[str, Any] = json.loads(path.read_text())
    except FileNotFoundError:
        raise SystemExit(f"{path} is missing: run `make {target}` first") from None
    except (OSError, ValueError) as error:
        raise SystemExit(f"{path} cannot be read ({error}): run `make {target}` again") from None
    missing = [key for key in needs if key not in record]
    if missing:
        raise SystemExit(f"{path} lacks {', '.join(missing)} (written by an older run): run `make {target}` again")
    return record
