"""Flower's FedAvg for `make bench-peers`, on Flower's Deployment Runtime over loopback (real sockets, no
simulation engine): one `flower-superlink`, one `flower-supernode` per peer (node config `partition-id=i`), and
the Flower App in scripts/peers/flower/ started with `flwr run` (ServerApp: FedAvg over every node each round;
ClientApp: `snapshot_every` local SGD steps per round, so the global model's snapshots line up with the other
systems'). Runs in Flower's own virtualenv (`python`), gossipd and scripts/peers on PYTHONPATH for `common`.

    run_flower(workdir, model, steps, snapshot_every, peers, python, env)

Offline: no update check (FLWR_DISABLE_UPDATE_CHECK=1), no telemetry (FLWR_TELEMETRY_ENABLED=0), no `uv sync`
of the app's dependencies (`--disable-runtime-dependency-installation` on the SuperLink; SuperNodes install
nothing unless told to), Flower's home (connections, installed apps) under WORKDIR/flwr-home, never ~/.flwr.

flwr 1.41 serves each SuperLink's Control, Fleet and ServerApp Runtime APIs over HTTP on one port (`--port`),
and each SuperNode's ClientApp Runtime API on one port of its own; every port is a free one on 127.0.0.1.

Left in WORKDIR: flower-logs/ (each process's output, the ServerApp's log as streamed by `flwr log`),
flower-timings.json (startup and per-round seconds), flower-rss.jsonl (peak RSS of the long-lived Flower
processes: SuperLink, SuperNodes and their SuperExecs; the ServerApp and each peer's last ClientApp process
report their own in rss.jsonl, as every runner does).

    python flower_launch.py WORKDIR MODEL STEPS SNAPSHOT_EVERY PEERS [PYTHON [TIMEOUT]]   # shards must exist

On an emulated network (bench-wan) this runs on the SuperLink's host, and BENCH_FLOWER_PLACEMENT holds
{"server": its address, "nodes": [{"address": ..., "enter": [command prefix that runs on that host]}, ...]}.
"""

from __future__ import annotations

import contextlib
import itertools
import json
import os
import signal
import socket
import subprocess
import sys
import time
import urllib.request
from pathlib import Path
from typing import IO

APP = Path(__file__).resolve().parent / "flower"
REPO = Path(__file__).resolve().parents[2]
CONNECTION = "bench"
STARTUP_TIMEOUT = 180.0
CLI_TIMEOUT = 180.0


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def wait_healthy(
    port: int, process: subprocess.Popen[bytes], what: str, timeout: float, host: str = "127.0.0.1"
) -> None:
    """Until GET /health on host:port answers 200 (the HTTP APIs are up)."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if process.poll() is not None:
            raise RuntimeError(f"{what} exited with {process.returncode} while starting")
        try:
            with urllib.request.urlopen(f"http://{host}:{port}/health", timeout=2) as response:
                if response.status == 200:
                    return
        except OSError:
            pass
        time.sleep(0.2)
    raise TimeoutError(f"{what} did not come up on {host}:{port} within {timeout:.0f}s")


def descendants(pid: int) -> list[int]:
    """The pids below `pid` (children, their children...), from /proc."""
    found, stack = [], [pid]
    while stack:
        parent = stack.pop()
        try:
            tasks = os.listdir(f"/proc/{parent}/task")
        except OSError:
            continue
        for task in tasks:
            try:
                children = Path(f"/proc/{parent}/task/{task}/children").read_text().split()
            except OSError:
                continue
            for child in map(int, children):
                found.append(child)
                stack.append(child)
    return found


def peak_rss_mb(pid: int) -> tuple[str, float] | None:
    """(process name, peak resident memory in MB) of a live process."""
    try:
        status = Path(f"/proc/{pid}/status").read_text()
        cmdline = Path(f"/proc/{pid}/cmdline").read_bytes().split(b"\0")
    except OSError:
        return None
    fields = dict(line.split(":", 1) for line in status.splitlines() if ":" in line)
    if "VmHWM" not in fields:
        return None
    names = [Path(part.decode()).name for part in cmdline[:2] if part]
    name = next((n for n in names if n.startswith("fl")), names[0] if names else "?")
    return name, int(fields["VmHWM"].split()[0]) / 1024


class Processes:
    """Every process this launcher starts, each in its own session, stopped together (with whatever they
    started themselves: the SuperExecs, ServerApp and ClientApp processes) however the run ends."""

    def __init__(self, logs: Path) -> None:
        self.logs = logs
        self.items: list[tuple[str, subprocess.Popen[bytes], IO[bytes]]] = []

    def start(self, name: str, argv: list[str], env: dict[str, str]) -> subprocess.Popen[bytes]:
        log = (self.logs / f"{name}.log").open("ab")
        process = subprocess.Popen(
            argv, env=env, stdin=subprocess.DEVNULL, stdout=log, stderr=subprocess.STDOUT, start_new_session=True
        )
        self.items.append((name, process, log))
        return process

    def check_alive(self, names: list[str]) -> None:
        for name, process, _ in self.items:
            if name in names and process.poll() is not None:
                raise RuntimeError(f"{name} exited with {process.returncode} (see {self.logs / name}.log)")

    def peak_rss(self, names: list[str]) -> list[dict[str, object]]:
        rows: list[dict[str, object]] = []
        for name, process, _ in self.items:
            if name not in names or process.poll() is not None:
                continue
            for pid in [process.pid, *descendants(process.pid)]:
                if (found := peak_rss_mb(pid)) is not None:
                    rows.append({"owner": name, "process": found[0], "pid": pid, "max_rss_mb": round(found[1], 1)})
        return rows

    def stop(self, grace: float = 10.0) -> None:
        """SIGTERM to each started process and everything below it, SIGKILL to what outlives `grace`."""
        pids: list[int] = []
        for _, process, _ in reversed(self.items):
            if process.poll() is None:
                pids += [process.pid, *descendants(process.pid)]
        signal_all(pids, signal.SIGTERM)
        deadline = time.monotonic() + grace
        for _, process, _ in self.items:
            with contextlib.suppress(subprocess.TimeoutExpired):
                process.wait(max(0.1, deadline - time.monotonic()))
        while time.monotonic() < deadline and any(alive(pid) for pid in pids):
            time.sleep(0.1)
        signal_all([pid for pid in pids if alive(pid)], signal.SIGKILL)
        for _, process, log in self.items:
            with contextlib.suppress(subprocess.TimeoutExpired):
                process.wait(5)
            log.close()


def signal_all(pids: list[int], signum: signal.Signals) -> None:
    for pid in pids:
        with contextlib.suppress(ProcessLookupError):
            os.kill(pid, signum)


def alive(pid: int) -> bool:
    """Running (not gone, not a zombie waiting to be reaped)."""
    try:
        return Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0] != "Z"
    except (OSError, IndexError):
        return False


def flwr_cli(bin_dir: Path, args: list[str], env: dict[str, str], timeout: float = CLI_TIMEOUT) -> str:
    result = subprocess.run(
        [str(bin_dir / "flwr"), *args], env=env, capture_output=True, text=True, timeout=timeout, check=False
    )
    if result.returncode != 0:
        raise RuntimeError(f"flwr {' '.join(args)} failed ({result.returncode}):\n{result.stdout}\n{result.stderr}")
    return result.stdout


def last_json(text: str) -> dict[str, object]:
    """The JSON object `flwr ... --format json` prints (the last line that parses as one)."""
    for line in reversed(text.strip().splitlines()):
        try:
            value = json.loads(line)
        except ValueError:
            continue
        if isinstance(value, dict):
            return value
    start = text.find("{")
    if start >= 0:
        value = json.loads(text[start:])
        if isinstance(value, dict):
            return value
    raise RuntimeError(f"no JSON in flwr's output:\n{text}")


def run_status(bin_dir: Path, run_id: int, env: dict[str, str]) -> str:
    """`flwr ls --run-id`: pending, starting, running, finished:completed|failed|stopped."""
    out = last_json(flwr_cli(bin_dir, ["ls", CONNECTION, "--run-id", str(run_id), "--format", "json"], env))
    runs = out.get("runs")
    if not isinstance(runs, list) or not runs:
        raise RuntimeError(f"flwr ls knows no run {run_id}: {out}")
    return str(runs[0]["status"])


def run_flower(
    workdir: Path,
    model: str,
    steps: int,
    snapshot_every: int,
    peers: int,
    python: str,
    env: dict[str, str],
    *,
    timeout: float = 7200.0,
) -> None:
    """FedAvg with `peers` SuperNodes on WORKDIR/data/shard-{i}.npz, `steps // snapshot_every` rounds of
    `snapshot_every` local steps; snapshots of the global model in WORKDIR/snapshots. Raises on any failure,
    and stops every process it started either way."""
    workdir = Path(workdir).resolve()
    if steps < snapshot_every or snapshot_every < 1:
        raise ValueError(f"need steps >= snapshot_every >= 1, got {steps} and {snapshot_every}")
    rounds = steps // snapshot_every
    bin_dir = Path(python).parent
    home = workdir / "flwr-home"
    logs = workdir / "flower-logs"
    for folder in (home, logs):
        folder.mkdir(parents=True, exist_ok=True)
    base = {
        **env,
        "PATH": f"{bin_dir}{os.pathsep}{env.get('PATH', os.defpath)}",  # flower-superexec, flwr-*app by name
        "PYTHONPATH": os.pathsep.join([str(REPO), str(REPO / "scripts" / "peers"), env.get("PYTHONPATH", "")]),
        "FLWR_HOME": str(home),
        "FLWR_TELEMETRY_ENABLED": "0",
        "FLWR_DISABLE_UPDATE_CHECK": "1",
        "FLWR_DISABLE_RUNTIME_DEPENDENCY_INSTALLATION": "1",
        "OMP_NUM_THREADS": env.get("OMP_NUM_THREADS", "1"),
        "PYTHONUNBUFFERED": "1",
    }
    base["PYTHONPATH"] = base["PYTHONPATH"].rstrip(os.pathsep)
    # Where each process listens: all on loopback, or (bench-wan) the SuperLink on this host's address and
    # each SuperNode on a host of its own, started there through the command prefix given for it.
    placement = json.loads(env.get("BENCH_FLOWER_PLACEMENT", "null")) or {}
    server = placement.get("server", "127.0.0.1")
    nodes_at = placement.get("nodes") or [{"address": "127.0.0.1", "enter": []}] * peers
    link_port = free_port()
    (home / "config.toml").write_text(
        f'[superlink]\ndefault = "{CONNECTION}"\n\n'
        f'[superlink.{CONNECTION}]\naddress = "{server}:{link_port}"\ninsecure = true\n'
    )
    run_config = workdir / "flower-run-config.toml"
    run_config.write_text(
        f"workdir = {json.dumps(str(workdir))}\nmodel = {json.dumps(model)}\npeers = {peers}\n"
        f"local-steps = {snapshot_every}\nnum-rounds = {rounds}\nround-timeout = {min(timeout, 3600.0)}\n"
    )
    timings: dict[str, object] = {"rounds": rounds, "local_steps": snapshot_every, "peers": peers}
    processes = Processes(logs)
    deadline = time.monotonic() + timeout
    t0 = time.monotonic()
    try:
        superlink = [str(bin_dir / "flower-superlink"), "--insecure", "--host", server, "--port", str(link_port)]
        link = processes.start("superlink", [*superlink, "--disable-runtime-dependency-installation"], base)
        wait_healthy(link_port, link, "flower-superlink", STARTUP_TIMEOUT, server)
        timings["superlink_up_s"] = round(time.monotonic() - t0, 2)
        nodes: list[tuple[subprocess.Popen[bytes], int]] = []
        for peer in range(peers):
            node_home = home / f"supernode-{peer}"  # each its own app installs, no races between nodes
            node_home.mkdir(exist_ok=True)
            port = free_port()
            where = nodes_at[peer]
            supernode = [*where["enter"], str(bin_dir / "flower-supernode"), "--insecure"]
            supernode += ["--superlink", f"{server}:{link_port}", "--host", where["address"], "--port", str(port)]
            supernode += ["--max-wait-time", "300", "--node-config", f"partition-id={peer} num-partitions={peers}"]
            node = processes.start(f"supernode-{peer}", supernode, {**base, "FLWR_HOME": str(node_home)})
            nodes.append((node, port))
        for peer, (node, port) in enumerate(nodes):
            wait_healthy(port, node, f"flower-supernode {peer}", STARTUP_TIMEOUT, nodes_at[peer]["address"])
        timings["supernodes_up_s"] = round(time.monotonic() - t0, 2)

        t_run = time.monotonic()
        out = flwr_cli(
            bin_dir, ["run", str(APP), CONNECTION, "--run-config", str(run_config), "--format", "json"], base
        )
        started = last_json(out)
        if not started.get("success") or started.get("run-id") is None:
            raise RuntimeError(f"flwr run did not start a run:\n{out}")
        run_id = int(str(started["run-id"]))
        timings["run_id"] = run_id
        timings["flwr_run_s"] = round(time.monotonic() - t_run, 2)
        # `flwr log --stream` follows the ServerApp's log until the run ends: our wait, and its log.
        streamer = processes.start(
            "serverapp", [str(bin_dir / "flwr"), "log", str(run_id), CONNECTION, "--stream"], base
        )
        status = ""
        while True:
            if time.monotonic() > deadline:
                raise TimeoutError(f"Flower run {run_id} still {status or 'unfinished'} after {timeout:.0f}s")
            processes.check_alive(["superlink", *[f"supernode-{p}" for p in range(peers)]])
            try:
                streamer.wait(max(0.1, min(15.0, deadline - time.monotonic())))
            except subprocess.TimeoutExpired:
                continue  # still streaming: the run goes on
            status = run_status(bin_dir, run_id, base)
            if status.startswith("finished"):
                break
            # The stream ended before the run did (connection refresh...): follow it again.
            time.sleep(2.0)
            streamer = processes.start(
                "serverapp", [str(bin_dir / "flwr"), "log", str(run_id), CONNECTION, "--stream"], base
            )
        timings["run_s"] = round(time.monotonic() - t_run, 2)
        rss = processes.peak_rss(["superlink", *[f"supernode-{p}" for p in range(peers)]])
        with (workdir / "flower-rss.jsonl").open("a") as handle:
            handle.writelines(json.dumps(row) + "\n" for row in rss)
        if status != "finished:completed":
            raise RuntimeError(f"Flower run {run_id} ended {status} (see {logs}/serverapp.log)")
        done = workdir / "flower-done.json"
        if done.exists():
            stamps = json.loads(done.read_text())["snapshot_times"]
            gaps = [b - a for a, b in itertools.pairwise(stamps)]
            timings["round_s"] = [round(g, 2) for g in gaps]
            timings["mean_round_s"] = round(sum(gaps) / len(gaps), 2) if gaps else None
    finally:
        timings["total_s"] = round(time.monotonic() - t0, 2)
        processes.stop()
        (workdir / "flower-timings.json").write_text(json.dumps(timings, indent=1))


def main() -> None:
    # SIGTERM (bench-wan stopping a run) as Ctrl-C: run_flower's `finally` then stops the SuperLink, the
    # SuperNodes and the ServerApp, which run in sessions of their own and would otherwise train on.
    signal.signal(signal.SIGTERM, lambda signum, _frame: sys.exit(128 + signum))
    workdir, model, steps, every, peers = Path(sys.argv[1]), sys.argv[2], *map(int, sys.argv[3:6])
    python = sys.argv[6] if len(sys.argv) > 6 else "/tmp/fl/venv/bin/python"
    timeout = float(sys.argv[7]) if len(sys.argv) > 7 else 7200.0
    env = {"OMP_NUM_THREADS": "1", "BENCH_START": f"{time.time():.6f}", **os.environ}
    run_flower(workdir, model, steps, every, peers, python, env, timeout=timeout)
    print(json.loads((workdir / "flower-timings.json").read_text()))


if __name__ == "__main__":
    main()
