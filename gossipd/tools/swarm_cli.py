"""`scripts/swarm.py`: launch N gossipd daemons on loopback, poll their status, write a CSV/JSON log and
PNG plots.

    python scripts/swarm.py --peers 4 --duration 120 [--task tasks/mnist-cnn.toml --data DIR] [--out out/swarm]
    python scripts/swarm.py --peers 4 -- --log-level debug      # options after -- go to every daemon

Every daemon gets its own state folder and socket under a temporary folder (kept with --keep); peer 0 is
the bootstrap of the others, and each trains on its own share of the task's data.
"""

from __future__ import annotations

import argparse
import shutil
import sys
import tempfile
import time
from pathlib import Path

from gossipd.cli import DEFAULT_TASK
from gossipd.task.loader import load_task
from gossipd.tools.swarm import Swarm, running_swarm
from gossipd.tools.swarm_report import Row, describe, record, summarise, table, wait_training, write


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--peers", type=int, default=4)
    parser.add_argument("--task", help="task file (default: the embedded MNIST task)")
    parser.add_argument("--data", help="data folder for the task (replaces [data] root)")
    parser.add_argument("--duration", type=float, default=90.0, help="seconds to run after the swarm is up")
    parser.add_argument("--interval", type=float, default=5.0, help="seconds between status polls")
    parser.add_argument("--out", default="out/swarm", help="folder for history.csv/json and the PNG plots")
    parser.add_argument("--keep", action="store_true", help="keep the daemons' state folders and logs")
    parser.add_argument("--quiet", action="store_true", help="no progress lines")
    parser.add_argument(
        "--all-at-once",
        action="store_true",
        help="launch the others together once peer 0 answers (as a real swarm would), rather than one by one",
    )
    parser.add_argument("daemon_options", nargs="*", help="options passed to every daemon (after --)")
    args = parser.parse_args(argv)
    if args.peers < 1:
        parser.error("--peers must be at least 1")

    workdir = Path(tempfile.mkdtemp(prefix="gossipd-swarm-", dir="/tmp"))
    extra = [*(["--data", args.data] if args.data else []), *args.daemon_options]
    swarm = Swarm(workdir=workdir, task=args.task, size=args.peers, extra=extra)
    print(f"starting {args.peers} daemons (work folder {workdir}) ...", flush=True)
    started = time.monotonic()

    def progress(rows: list[Row]) -> None:
        if args.quiet or not rows:
            return
        accuracies = [r.accuracy for r in rows if r.accuracy is not None]
        mean = f"{sum(accuracies) / len(accuracies):.2%}" if accuracies else "-"
        print(
            f"[{time.monotonic() - started:6.1f} s] {len(rows)} peers  steps {min(r.step for r in rows)}-"
            f"{max(r.step for r in rows)}  mean accuracy {mean}  exchanges {sum(r.exchanges for r in rows)}",
            flush=True,
        )

    try:
        with running_swarm(swarm, wait=240, all_at_once=args.all_at_once):
            startup = wait_training(swarm, timeout=120)
            print(f"swarm up in {time.monotonic() - started:.0f} s; running for {args.duration:.0f} s", flush=True)
            history = record(swarm, duration=args.duration, interval=args.interval, on_poll=progress)
            final = [r for r in history if r.time_s == history[-1].time_s]
    finally:
        if not args.keep:
            shutil.rmtree(workdir, ignore_errors=True)
    print()
    print(table(final))
    view_size = load_task(Path(args.task) if args.task else DEFAULT_TASK).gossip.view_size
    print()
    print(describe(summarise(history, startup, view_size), view_size))
    written = write(history, Path(args.out))
    print()
    print("wrote " + ", ".join(str(p) for p in written))
    codes = [d.process.returncode for d in swarm.daemons]
    if any(code != 0 for code in codes):
        print(f"daemon exit codes: {codes}", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
