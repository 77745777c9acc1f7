"""`make bench-peers`: gossipd against hivemind, Flower, DDP all-reduce and the two single-model baselines,
on one workload, side by side. Not part of `make test`.

Workload: MNIST (../shared/datasets/mnist), 4 peers, IID and Dirichlet(0.5) shards (fixed seed), the small CNN
and an MLP 784-200-200-10 (or the 1.2M-parameter CNN of the PyTorch MNIST example, `cnn-pytorch-example`), SGD
lr 0.05 momentum 0.9, batch 32 per peer, one torch thread per peer process. hivemind and Flower also run with a
second setting each (`hivemind-tb2048`, `flower-quarter`); the verdicts take each rival at its best.

Each run happens inside its own network namespace (`unshare -n`, loopback up) so the loopback byte counters
count that run only; the counters are sampled every second. Every peer saves model snapshots stamped with time
and samples; afterwards each snapshot is evaluated on the full 10k test set, giving, per system: seconds and
bytes to 97% and 98% (mean peer and worst peer), accuracy after the same number of samples per peer, and
peak RSS per peer. Results: one JSON per run in docs/bench-peers/ (kept in the repository, so the report can
be rebuilt and extended run by run), PNG plots in docs/, and a section of BENCHMARKS.md; logs in out/bench-peers/.

    python scripts/bench_peers.py [--quick] [--systems gossipd-plain,ddp,...] [--models cnn,mlp]
                                  [--splits iid,dirichlet:0.5] [--repeats 1] [--first-repeat 0] [--steps 3000]
                                  [--snapshot-every 200]
    python scripts/bench_peers.py --inside RUN.json      # one run, called by the above inside a namespace
"""

from __future__ import annotations

import argparse
import collections
import contextlib
import dataclasses
import datetime
import json
import os
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from gossipd.tools.bench_peers_report import CURRENT, history_report, plot, report, split_history, summarise
from gossipd.tools.reporting import machine, replace_section

REPO = Path(__file__).resolve().parents[1]
RUNNERS = REPO / "scripts" / "peers"
SHARED_MNIST = REPO.parent / "shared" / "datasets" / "mnist"
OUT = REPO / "out" / "bench-peers"
BUILD = REPO / "build" / "bench-peers"
DOCS = REPO / "docs"
RESULTS = DOCS / "bench-peers"  # the published runs; experiments (--tag, --quick) stay under OUT
RUN_LIMIT_S = 3600  # no single run may take longer
PROGRESS_EVERY = 30.0  # seconds between a run's progress lines on stderr
STOP_GRACE = 90.0  # seconds a stopped run gets to stop its peers (each daemon gets 60 to checkpoint and exit)
FLOWER_LOCAL_STEPS = 15_000 // 32  # one epoch of a 15k-image shard
# hivemind's averager request timeout, per split: the better of the two settings measured on the CNN
# (2026-11-29). 0.5 s (below the 1 s matchmaking time, as hivemind asks) took IID to 98% in 53-74 s against
# 85 s with its default 3 s; on Dirichlet 0.5 it ended at 93.0% where the default reached 98% in 124 s.
HIVEMIND_REQUEST_TIMEOUT = {"iid": 0.5, "dirichlet:0.5": 3.0}
HEADING = "## Side by side: gossipd, hivemind, Flower, all-reduce"
PEERS = 4
SYSTEMS = (
    "gossipd-plain",
    "gossipd-powergossip",
    "gossipd-powergossip-r2",
    "gossipd-powergossip-2it",
    "gossipd-powergossip-fast",
    "gossipd-choco",
    "gossipd-plain-paced",
    "gossipd-powergossip-paced",
    "gossipd-powergossip-2it-paced",
    "gossipd-choco-paced",
    "gossipd-choco-default-paced",
    "gossipd-powergossip-f16-paced",
    "gossipd-powergossip-2it-f16-paced",
    "gossipd-auto-paced",
    "gossipd-auto-clock",
    "hivemind",
    "hivemind-tb2048",
    "flower",
    "flower-quarter",
    "ddp",
    "alone",
    "centralised",
)
# The systems without `-paced` mix by the clock (an exchange every `exchange_interval`, 0.2 s), as gossipd did
# by default until 2026-12-04; each adds CLOCK below, the paced ones PACED.
GOSSIP = {
    "gossipd-plain": 'algorithm = "plain"',
    "gossipd-powergossip": 'algorithm = "powergossip"\nrank = 1\niterations = 1',
    "gossipd-choco": 'algorithm = "choco"\ncompressor = "sign"\ngamma = 0.45',
    # Beyond the list: the daemon's default rank, and rank 1 with two power iterations per
    # exchange, which buys accuracy with rounds on an open stream rather than new exchanges.
    "gossipd-powergossip-r2": 'algorithm = "powergossip"\nrank = 2\niterations = 1',
    "gossipd-powergossip-2it": 'algorithm = "powergossip"\nrank = 1\niterations = 2',
    # Rank 1 exchanging twice as often: its exchanges are small, and on a fast machine 0.2 s is ~10 local
    # steps between exchanges, too few mixes per step for rank 1 (measured on CNN, IID: 96.9% → 97.6% and
    # 98.1% in two runs).
    "gossipd-powergossip-fast": 'algorithm = "powergossip"\nrank = 1\niterations = 1\nexchange_interval = 0.1',
}
# Step-paced: an exchange every 2 local steps, training held 4 steps past the last mix (`steps_per_exchange`),
# so peers mix as often per step whatever a step costs (an MLP step is ~10x cheaper than a CNN step).
PACED = "\nsteps_per_exchange = 2"
CLOCK = "\nsteps_per_exchange = 0"
FINISH_WAIT = 60.0  # seconds gossipd's peers get to finish once the last one reached its budget
TRAIN_WAIT = 600.0  # seconds a gossipd run gets to train (its runs take 60-80 s): a peer stuck short of its budget
GOSSIP |= {
    f"{name}-paced": GOSSIP[name] + PACED
    for name in ("gossipd-plain", "gossipd-powergossip", "gossipd-powergossip-2it", "gossipd-choco")
}
# PowerGossip sending float16 (`wire_dtype`): half the bytes of every message, both ends computing with the
# values as sent.
HALF = '\nwire_dtype = "float16"'
GOSSIP |= {
    # The default: the exchange adapts per edge to the measured link and step time (gossipd.mixing.auto).
    "gossipd-auto-paced": 'algorithm = "auto"' + PACED,
    # Choco as a task file that names only the algorithm gets it (sign:64, gamma 0.45); the `gossipd-choco`
    # systems keep the per-tensor sign they were run with, its default until 2026-12-05.
    "gossipd-choco-default-paced": 'algorithm = "choco"' + PACED,
    # The default paced by the clock instead (an experiment: what step pacing costs where exchanges are slow).
    "gossipd-auto-clock": 'algorithm = "auto"',
    "gossipd-powergossip-f16-paced": GOSSIP["gossipd-powergossip"] + HALF + PACED,
    "gossipd-powergossip-2it-f16-paced": GOSSIP["gossipd-powergossip-2it"] + HALF + PACED,
}
GOSSIP |= {name: settings + CLOCK for name, settings in GOSSIP.items() if not name.endswith("-paced")}


@dataclass(frozen=True)
class Placement:
    """Where a run's processes go. bench-peers: every peer on loopback in the run's namespace. bench-wan: peer i
    on host `p{i}` of an emulated network (gossipd.tools.netlab), Flower's SuperLink on host `server`."""

    launch: Callable[[str, list[str]], list[str]] = lambda host, argv: argv  # argv, to run on that host
    address: Callable[[str], str] = lambda host: "127.0.0.1"  # where that host's processes listen
    flower: dict[str, Any] | None = None  # BENCH_FLOWER_PLACEMENT for flower_launch.py; None: loopback


PLACEMENT = Placement()


@dataclass(frozen=True)
class Run:
    system: str
    model: str
    split: str
    repeat: int
    steps: int  # training steps per peer
    snapshot_every: int
    workdir: str
    gossip_extra: str = ""  # lines added to gossipd's [gossip] section (experiments, --gossip-extra)

    @property
    def name(self) -> str:
        return f"{self.system}-{self.model}-{self.split.replace(':', '')}-{self.repeat}"


# -- data ------------------------------------------------------------------------------------------------


def write_shards(workdir: Path, split: str) -> None:
    """The 4 peers' shards of MNIST's 60k training images, as gossipd itself splits them."""
    import numpy as np

    from gossipd.data.registry import load_data, peer_shard
    from gossipd.task.loader import load_task

    task = load_task(REPO / "tasks" / "mnist-cnn.toml", data_root=SHARED_MNIST)
    data = load_data(task.data, task.task.seed)
    folder = workdir / "data"
    folder.mkdir(parents=True, exist_ok=True)
    for peer in range(PEERS):
        shard = peer_shard(data, split, peer, PEERS, task.task.seed)
        np.savez(folder / f"shard-{peer}.npz", x=shard.inputs().numpy(), y=shard.y.numpy())
    np.savez(folder / "test.npz", x=data.validation.inputs().numpy(), y=data.validation.y.numpy())


# -- inside a namespace: one run -------------------------------------------------------------------------


def loopback_bytes() -> int:
    for line in Path("/proc/net/dev").read_text().splitlines():
        if line.strip().startswith("lo:"):
            return int(line.split(":", 1)[1].split()[0])  # received bytes (= sent, on loopback)
    return 0


class ByteMeter(threading.Thread):
    """Samples this namespace's loopback counter every second: [(seconds since start, bytes)]."""

    def __init__(self, start: float) -> None:
        super().__init__(daemon=True)
        self.start_time = start
        self.base = loopback_bytes()
        self.samples: list[tuple[float, int]] = [(0.0, 0)]
        self.stopping = threading.Event()

    def run(self) -> None:
        while not self.stopping.wait(1.0):
            self.samples.append((time.time() - self.start_time, loopback_bytes() - self.base))


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def runner_env(run: Run, start: float) -> dict[str, str]:
    return {
        **os.environ,
        "OMP_NUM_THREADS": "1",
        "BENCH_START": f"{start:.6f}",
        "PYTHONPATH": f"{REPO}:{RUNNERS}",
    }


def venv_python(name: str) -> str:
    python = BUILD / f"venv-{name}" / "bin" / "python"
    if not python.exists():
        raise SystemExit(f"{python} is missing: run `python scripts/bench_peers.py --setup` first")
    return str(python)


def run_torch(run: Run, start: float) -> None:
    script = str(RUNNERS / "torch_runner.py")
    base = [str(run.workdir), run.model, str(run.steps), str(run.snapshot_every)]
    env = runner_env(run, start)
    if run.system in ("alone", "centralised"):
        subprocess.run([sys.executable, script, run.system, *base], env=env, check=True, timeout=7200)
        return
    port = free_port()
    processes = [
        start_group([sys.executable, script, "ddp", *base, str(rank), str(PEERS), str(port)], env)
        for rank in range(PEERS)
    ]
    wait_all(processes, "a DDP rank")


def start_group(argv: list[str], env: dict[str, str]) -> subprocess.Popen[bytes]:
    """A rival's peer in a process group of its own, so that `wait_all` stops it with whatever it started
    (hivemind's p2pd)."""
    return subprocess.Popen(argv, env=env, start_new_session=True)


def wait_all(
    processes: list[subprocess.Popen[bytes]], what: str, *, timeout: float = 7200.0, grace: float = 30.0
) -> None:
    """Waits for every peer (`timeout` seconds in all); however the wait ends (a peer failed, Ctrl-C, SIGTERM,
    the timeout), what is left of each peer's process group is stopped: SIGTERM, then SIGKILL to what is still
    there after `grace` seconds. A run stopped part-way must not leave its peers training on (an interrupted
    `make bench-wan` once did), nor what a peer started: once, stopping a hivemind run at 10 Mbit/s left two
    of its peers' own processes (one with its p2pd) running after their runners had gone, so the groups are
    emptied, not only their leaders waited for."""
    deadline = time.monotonic() + timeout
    try:
        for process in processes:
            if process.wait(max(0.0, deadline - time.monotonic())) != 0:
                raise RuntimeError(f"{what} failed with {process.returncode}")
    finally:
        groups = [process.pid for process in processes]
        for group in groups:
            _signal_group(group, signal.SIGTERM)
        deadline = time.monotonic() + grace
        while any(process.poll() is None for process in processes) or any(map(_group_alive, groups)):
            if time.monotonic() >= deadline:
                for group in groups:
                    _signal_group(group, signal.SIGKILL)
                for process in processes:
                    process.wait()
                break
            time.sleep(0.05)


def _signal_group(group: int, signum: int) -> None:
    with contextlib.suppress(ProcessLookupError, PermissionError):
        os.killpg(group, signum)


def _group_alive(group: int) -> bool:
    """Whether a process of `group` still runs (zombies, which only wait to be reaped, do not count)."""
    proc = Path("/proc")
    if not proc.is_dir():
        try:
            os.killpg(group, 0)
        except (ProcessLookupError, PermissionError):
            return False
        return True
    for entry in proc.iterdir():
        if not entry.name.isdigit():
            continue
        try:
            fields = (entry / "stat").read_text().rsplit(")", 1)[1].split()
        except (OSError, IndexError):
            continue  # gone meanwhile
        if len(fields) > 2 and fields[2] == str(group) and fields[0] != "Z":
            return True
    return False


def run_hivemind(run: Run, start: float) -> None:
    python = venv_python("hivemind")
    # Average the swarm's parameters every ~100 local steps per peer: about the 10,000-sample target batch of
    # hivemind's own quickstart. Every 10 steps was tried first and spent most of its time in matchmaking.
    # hivemind-tb2048: an exact average of the 4 peers every 16 local steps, its better setting on the 1.2M CNN.
    target = PEERS * 32 * (16 if run.system == "hivemind-tb2048" else 100)
    timeout = HIVEMIND_REQUEST_TIMEOUT.get(run.split, 3.0)
    processes = [
        start_group(
            PLACEMENT.launch(
                f"p{peer}",
                [
                    python,
                    str(RUNNERS / "hivemind_runner.py"),
                    run.workdir,
                    run.model,
                    str(run.steps),
                    str(run.snapshot_every),
                    str(peer),
                    str(PEERS),
                    str(target),
                    str(timeout),
                ],
            ),
            {**runner_env(run, start), "BENCH_HOST_IP": PLACEMENT.address(f"p{peer}")},
        )
        for peer in range(PEERS)
    ]
    wait_all(processes, "a hivemind peer")


def run_flower_fedavg(run: Run, start: float) -> None:
    """FedAvg over all 4 peers each round, one local epoch of the shard per round: the usual FedAvg setting
    (E = 1), and Flower's fixed cost per round (~10 s of polling and process start-up) is paid once per epoch;
    `flower-quarter`: a quarter epoch per round, more rounds of the same fixed cost."""
    local_steps = FLOWER_LOCAL_STEPS // 4 if run.system == "flower-quarter" else FLOWER_LOCAL_STEPS
    if PLACEMENT.flower is not None:
        # On an emulated network the launcher runs on the SuperLink's host, where it can reach every process.
        argv = [sys.executable, str(RUNNERS / "flower_launch.py"), run.workdir, run.model, str(run.steps)]
        argv += [str(local_steps), str(PEERS), venv_python("flower"), str(RUN_LIMIT_S - 60)]
        env = {**runner_env(run, start), "BENCH_FLOWER_PLACEMENT": json.dumps(PLACEMENT.flower)}
        wait_all([start_group(PLACEMENT.launch("server", argv), env)], "Flower's launcher", timeout=RUN_LIMIT_S)
        return
    sys.path.insert(0, str(RUNNERS))
    from flower_launch import run_flower

    run_flower(
        Path(run.workdir),
        run.model,
        run.steps,
        local_steps,
        PEERS,
        venv_python("flower"),
        runner_env(run, start),
        timeout=RUN_LIMIT_S - 60,
    )


def run_gossipd(run: Run, start: float) -> None:
    """4 daemons, each on its share of MNIST (`--peer-index/--peer-count`, the same split the other systems'
    shards were cut by); the model of each is fetched every second through its control API."""
    from gossipd.tools.swarm import Swarm

    workdir = Path(run.workdir)
    task = workdir / "task.toml"
    task.write_text(gossipd_task(run))
    # All four start together from the task's model (a quorum, see gossipd_task), as the other systems'
    # peers do, so none copies a neighbour's: a copy carries the donor's step count, and a peer stopping at
    # its step budget would then have trained on fewer samples than the others.
    swarm = Swarm(
        workdir=workdir / "swarm",
        task=str(task),
        size=PEERS,
        extra=["--data", str(SHARED_MNIST), "--join-timeout", "0"],
        launch=lambda i, argv: PLACEMENT.launch(f"p{i}", argv),
        listen_ip=lambda i: PLACEMENT.address(f"p{i}"),
    )
    snapshots = workdir / "snapshots"
    snapshots.mkdir(exist_ok=True)
    milestone = run.snapshot_every * 32  # samples between snapshots, as the other runners take them
    next_due = [0] * PEERS
    finished = [False] * PEERS
    trained_at: float | None = None  # when the last peer reached its budget
    reported = time.time()
    try:
        # Inside the try: a run stopped while its peers start up stops those already launched.
        swarm.start(wait=300, all_at_once=True)
        while True:
            statuses = swarm.statuses()
            for daemon, status in zip(swarm.daemons, statuses, strict=True):
                if status is None:
                    continue
                task = status["tasks"][0]
                samples = task["samples"]
                # A milestone snapshot, and the finished model: both at the budget's sample count, the
                # later one counted as the peer's final model.
                final = task["state"] == "finished" and not finished[daemon.index]
                if samples >= next_due[daemon.index] or final:
                    model = daemon.client().model(task["id"])
                    seconds = time.time() - start
                    (snapshots / f"{daemon.index}-{samples:010d}-{seconds:012.3f}.safetensors").write_bytes(model)
                    next_due[daemon.index] = (samples // milestone + 1) * milestone
                    finished[daemon.index] = finished[daemon.index] or final
            trained = all(s is not None and s["tasks"][0]["samples"] >= run.steps * 32 for s in statuses)
            if trained_at is None and trained:
                trained_at = time.time()
            if all(finished) or (trained_at is not None and time.time() - trained_at > FINISH_WAIT):
                break
            if time.time() - reported >= PROGRESS_EVERY:
                reported = time.time()
                steps = [s["tasks"][0]["samples"] // 32 if s is not None else "?" for s in statuses]
                print(f"progress: steps {steps} of {run.steps}", flush=True)
            if trained_at is None and time.time() - start > TRAIN_WAIT:
                print(f"  {run.name}: not every peer reached its budget within {TRAIN_WAIT:.0f} s", flush=True)
                break
            time.sleep(0.5)
        if not all(finished):
            print(f"  {run.name}: peers {[i for i, f in enumerate(finished) if not f]} did not finish", flush=True)
        # The peers' last statuses (exchange counts, bytes by protocol) for anyone reading a kept run.
        (workdir / "statuses.json").write_text(json.dumps(swarm.statuses(), indent=1))
        with (workdir / "rss.jsonl").open("a") as handle:
            for daemon in swarm.daemons:
                handle.write(json.dumps({"peer": daemon.index, "max_rss_mb": peak_rss_mb(daemon.process.pid)}) + "\n")
    finally:
        swarm.stop()
        for index in range(PEERS):
            log = swarm.daemons[index].log_path if index < len(swarm.daemons) else None
            if log is not None and log.exists():
                shutil.copy(log, workdir / f"daemon-{index}.log")


def peak_rss_mb(pid: int) -> float:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmHWM:"):
            return int(line.split()[1]) / 1024
    return 0.0


def gossipd_task(run: Run) -> str:
    """tasks/mnist-cnn.toml with the run's model, split and algorithm; held-out evaluation off (the
    orchestrator evaluates snapshots)."""
    text = (REPO / "tasks" / "mnist-cnn.toml").read_text()
    text = text.replace('partition = "iid"', f'partition = "{run.split}"')
    if run.model != "cnn":
        # The runners' model, built by name: the MLP with the hidden sizes the other systems use.
        extra = "hidden = [200, 200]\n" if run.model == "mlp" else ""
        head, rest = text.split("[model]", 1)
        text = head + f'[model]\nname = "{run.model}"\n{extra}\n[train]' + rest.split("[train]", 1)[1]
    # The budget ends training at exactly the run's steps; each peer then finishes ([gossip] finish_exchanges).
    # All four start from the task's model together, as Flower's clients do once its server sees all four: a
    # quorum of the three neighbours (`[train] min_peers`), and no start wait for them to settle. Peer 0 is
    # up seconds before the others (it is their bootstrap); without the quorum it trained alone meanwhile,
    # 2,386 of the MLP's 3,000 steps (docs/bench-quality.md, 2026-12-05).
    text = text.replace(
        "[train]",
        f"[train]\neval_every = 1000000000\ntotal_steps = {run.steps}\nstart_wait = 0\nmin_peers = {PEERS - 1}",
        1,
    )
    return text.split("[gossip]")[0] + "[gossip]\n" + GOSSIP[run.system] + "\n" + run.gossip_extra + "\n"


def inside(spec_path: Path) -> None:
    """One run, in the current (fresh) network namespace."""
    subprocess.run(["ip", "link", "set", "lo", "up"], check=True)
    run = Run(**json.loads(spec_path.read_text()))
    start = time.time()
    meter = ByteMeter(start)
    meter.start()
    try:
        if run.system.startswith("gossipd-"):
            run_gossipd(run, start)
        elif run.system.startswith("hivemind"):
            run_hivemind(run, start)
        elif run.system.startswith("flower"):
            run_flower_fedavg(run, start)
        else:
            run_torch(run, start)
    finally:
        meter.stopping.set()
        meter.join(5)
        (Path(run.workdir) / "bytes.json").write_text(json.dumps(meter.samples))
        (Path(run.workdir) / "wall.json").write_text(json.dumps({"seconds": time.time() - start}))


# -- outside: set-up, runs, evaluation, report --------------------------------------------------------------


# Pinned so reruns compare like with like; the versions the published figures were measured with.
VENVS = {"hivemind": ["hivemind==1.1.12"], "flower": ["flwr[simulation]==1.41.0"]}


def setup_venvs(systems: list[str]) -> None:
    """hivemind and Flower in virtualenvs of their own (their protobuf pins conflict with each other), each with
    the CPU torch build that lies on this machine installed first, so no CUDA build is downloaded."""
    for name, packages in VENVS.items():
        venv = BUILD / f"venv-{name}"
        stamp = venv / ".installed"
        if not any(system.startswith(name) for system in systems) or stamp.exists():
            continue
        print(f"bench-peers: creating {venv} ({', '.join(packages)})", flush=True)
        subprocess.run([sys.executable, "-m", "venv", "--clear", str(venv)], check=True)
        pip = [str(venv / "bin" / "pip"), "install", "--quiet", "--disable-pip-version-check"]
        subprocess.run([*pip, "torch==2.13.0", "numpy", "safetensors"], check=True)
        subprocess.run([*pip, *packages], check=True)
        stamp.touch()


def namespace_prefix() -> list[str]:
    for command in (["unshare", "-n"], ["unshare", "-rn"]):
        if subprocess.run([*command, "true"], capture_output=True).returncode == 0:
            return command
    raise SystemExit("bench-peers needs network namespaces (unshare -n) to count each run's bytes")


def last_progress(log: Path) -> str:
    """The newest `progress:` line a run wrote to its log, as ", ..." (empty if none yet)."""
    with log.open("rb") as handle:
        handle.seek(max(0, log.stat().st_size - 16384))
        lines = handle.read().decode(errors="replace").splitlines()
    found = [line.removeprefix("progress: ") for line in lines if line.startswith("progress: ")]
    return f", {found[-1]}" if found else ""


def execute(run: Run) -> bool:
    spec = Path(run.workdir) / "run.json"
    spec.write_text(json.dumps(run.__dict__))
    command = [*namespace_prefix(), sys.executable, str(Path(__file__).resolve()), "--inside", str(spec)]
    started = time.monotonic()
    log = OUT / "logs" / f"{run.name}.log"
    log.parent.mkdir(parents=True, exist_ok=True)
    with log.open("w") as output:
        # A session of its own, so a run past its bound goes down with every process it started.
        process = subprocess.Popen(command, cwd=REPO, stdout=output, stderr=subprocess.STDOUT, start_new_session=True)
        try:
            code = wait_for(run, process, output, log, started)
        except BaseException:  # interrupted: the run's processes go with this one
            stop_run(process)
            raise
    status = "ok" if code == 0 else f"FAILED ({code}, see {log})"
    print(f"  {run.name}: {status} in {time.monotonic() - started:.0f} s", flush=True)
    return code == 0


def stop_run(process: subprocess.Popen[bytes]) -> int:
    """Stop a run: SIGTERM first, so that it stops its peers (they run in sessions of their own, beyond its
    process group), then SIGKILL to its group if it has not ended within STOP_GRACE."""
    os.killpg(process.pid, signal.SIGTERM)
    try:
        return process.wait(STOP_GRACE)
    except subprocess.TimeoutExpired:
        os.killpg(process.pid, signal.SIGKILL)
        return process.wait()


def wait_for(run: Run, process: subprocess.Popen[bytes], output: Any, log: Path, started: float) -> int:
    """The run's exit code; stopped past RUN_LIMIT_S; a progress line on stderr every PROGRESS_EVERY."""
    while True:
        left = RUN_LIMIT_S - (time.monotonic() - started)
        try:
            return process.wait(max(0.0, min(PROGRESS_EVERY, left)))
        except subprocess.TimeoutExpired:
            if left <= PROGRESS_EVERY:
                code = stop_run(process)
                output.write(f"\nbench-peers: stopped after {RUN_LIMIT_S} s\n")
                return code
            # A run takes minutes: say it is alive, and how far its peers are where the run says so.
            line = f"  {run.name}: {time.monotonic() - started:.0f} s{last_progress(log)}"
            print(line, file=sys.stderr, flush=True)


def evaluate(run: Run) -> dict[str, Any]:
    """Every snapshot of a run on the 10k test set, then the run's figures."""
    import numpy as np
    import torch
    from safetensors.torch import load as load_safetensors

    sys.path.insert(0, str(RUNNERS))
    from common import model as build

    workdir = Path(run.workdir)
    with np.load(workdir / "data" / "test.npz") as arrays:
        x, y = torch.from_numpy(arrays["x"]), torch.from_numpy(arrays["y"])
    net = build(run.model)
    points: list[dict[str, Any]] = []
    for path in sorted((workdir / "snapshots").glob("*")):
        peer, samples, seconds = path.stem.split("-")
        raw = path.read_bytes()
        state = load_safetensors(raw) if path.suffix == ".safetensors" else torch.load(path, weights_only=True)
        net.load_state_dict(state)
        net.eval()
        with torch.inference_mode():
            hits = sum(int((net(x[i : i + 2000]).argmax(1) == y[i : i + 2000]).sum()) for i in range(0, len(y), 2000))
        points.append(
            {"peer": int(peer), "samples": int(samples), "seconds": float(seconds), "accuracy": hits / len(y)}
        )
    byte_samples = json.loads((workdir / "bytes.json").read_text()) if (workdir / "bytes.json").exists() else []
    rss = (
        [json.loads(line) for line in (workdir / "rss.jsonl").read_text().splitlines()]
        if (workdir / "rss.jsonl").exists()
        else []
    )
    meta = {k: v for k, v in run.__dict__.items() if k != "workdir"}
    summary = summarise({"run": run.name, **meta}, points, byte_samples, rss)
    if (workdir / "statuses.json").exists():
        summary["daemons"] = daemon_figures(json.loads((workdir / "statuses.json").read_text()))
    return summary


def daemon_figures(statuses: list[dict[str, Any] | None]) -> dict[str, Any]:
    """What gossipd's peers said of their mixing at the end: exchanges (started or answered) per training
    step, the share of them clipped, the time training waited for a mix, and an auto task's edges by mode."""
    tasks = [s["tasks"][0] for s in statuses if s is not None and s.get("tasks")]
    modes: dict[str, int] = {}
    for task in tasks:
        for link in task.get("links", []):
            modes[link["mode"]] = modes.get(link["mode"], 0) + 1
    return {
        "exchanges_per_step": [round(t["exchanges"] / max(1, t["step"]), 3) for t in tasks],
        "clipped_share": [round(t.get("clipped_exchanges", 0) / max(1, t["exchanges"]), 3) for t in tasks],
        "mix_wait_seconds": [round(t.get("mix_wait_seconds", 0.0), 1) for t in tasks],
        "edges_by_mode": modes,
    }


def write_report(out: Path, *, draw: bool = True) -> tuple[str, str | None]:
    """Plots (with `draw`) and the BENCHMARKS.md section from the runs recorded in `out`, and for the published
    runs the section of docs/bench-peers/HISTORY.md from every run, those under history/ included. In
    BENCHMARKS.md the published runs are only the current ones (`split_history`); an experiment's report shows
    all of its own."""
    paths = sorted(out.glob("*.json")) + sorted((out / "history").glob("*.json"))
    everything = [json.loads(path.read_text()) for path in paths if path.name != "results.json"]
    results = split_history(everything)[0] if out == RESULTS else everything
    if not results:
        raise SystemExit(f"no runs recorded in {out}")
    plots = {}
    folder = DOCS if out == RESULTS else out  # an experiment's plots must not replace the published ones
    for model, split in dict.fromkeys((r["model"], r["split"]) for r in results):
        name = f"bench-peers-{model}-{split.replace(':', '')}.png"
        if draw:
            plot(results, model, split, folder / name)
        plots[(model, split)] = str((folder / name).relative_to(REPO))
    header = [
        f"Measured {_dates(results)} on {run_machines(results)}; `make bench-peers`. Current code and settings only: "
        "older settings and runs are in [docs/bench-peers/HISTORY.md](docs/bench-peers/HISTORY.md).",
        "",
        _workload(results),
        "",
        "Settings: gossipd is *step-paced*: it starts an exchange with a random neighbour of a 6-peer view every "
        "2 local steps and holds training 4 steps past its last mix; PowerGossip sends float16 "
        "(`wire_dtype`); held-out evaluation off. Its four peers start together from the task's model once "
        "each sees the other three (`[train] min_peers` = 3; the others wait for peer 0, their bootstrap), stop at "
        "the run's steps (`[train] total_steps`) and finish (`[gossip] finish_exchanges` = 50) before their "
        f"final snapshot. {_rivals(results)}".rstrip(),
    ]
    text = report(results, header=header, plots=plots)
    if out != RESULTS:
        return text, None
    history = [
        f"Measured {_dates(everything)} on {run_machines(everything)}; `make bench-peers`. Every run recorded, the "
        "current ones of BENCHMARKS.md included; the older runs' JSON is in docs/bench-peers/history/.",
        "",
        _workload(everything),
        "",
        "Settings: gossipd mixes every 0.2 s (jittered; 0.1 s in the row that says so), or in the rows marked "
        "*step-paced* every 2 local steps with training held 4 steps past its last mix, with a random "
        "neighbour of a 6-peer view, held-out evaluation off; its four peers start from the task's model (no "
        "join copy), together once each sees the other three (rows marked ‡ predate this), stop at the run's "
        "steps (`[train] total_steps`) and finish (`[gossip] finish_exchanges` = 50) before their final "
        "snapshot (rows marked † predate this). "
        f"{_rivals(everything)}".rstrip(),
    ]
    return text, history_report(everything, header=history)


def _workload(results: list[dict[str, Any]]) -> str:
    """The report's paragraph on what was run and measured, as the runs in `results` were."""
    return (
        f"MNIST (60k train, full 10k test set), {PEERS} peers each on its own shard (fixed seed), SGD lr 0.05 "
        "momentum 0.9, batch 32 per peer, one torch thread per peer process, all peers on this one machine. "
        f"{_models(results)} Every run trains {_per_model(results, 'steps')} steps per peer "
        "inside its own network namespace, so the loopback counter (sampled every second, framing and protocol "
        "overhead included) counts that run's bytes only. Peers save a snapshot every "
        f"{_per_model(results, 'snapshot_every')} steps, evaluated afterwards on the 10k test set: seconds count "
        "from the launch of the first process (start-up included) to the first moment the mean (or worst) "
        "peer's newest snapshot reaches the target; local steps to 98% are the peers' mean step count, each as "
        "of its newest snapshot, when the mean peer reaches 98%. DDP and centralised training hold one model, "
        "so their mean and worst are that model. gossipd's snapshots are pulled over its control API, so its "
        "points are stamped up to half a second late."
    )


# What the report says of each model it has runs of, in this order.
MODEL_TEXT = {
    "cnn": "cnn: the small CNN of tasks/mnist-cnn.toml, 114k parameters",
    "mlp": "mlp: an MLP 784-200-200-10, 199k parameters",
    "cnn-pytorch-example": "cnn-pytorch-example: the CNN of the PyTorch MNIST example, 1.2M parameters",
}


def _models(results: list[dict[str, Any]]) -> str:
    """The models of the runs in `results`, in the order of `MODEL_TEXT` (models it lacks by name, after)."""
    present = dict.fromkeys(r["model"] for r in results)
    known = [text for name, text in MODEL_TEXT.items() if name in present]
    return f"Models: {'; '.join([*known, *(name for name in present if name not in MODEL_TEXT)])}."


def _per_model(results: list[dict[str, Any]], key: str) -> str:
    """A run setting as the report states it: its one value ("200"), or its values per model when the models
    were run with different ones ("200 (cnn, mlp), 50 (cnn-pytorch-example)"), one model's own values joined
    by " / "."""
    values: dict[str, set[int]] = {}
    for result in results:
        values.setdefault(result["model"], set()).add(result[key])
    distinct = {value for seen in values.values() for value in seen}
    if len(distinct) == 1:
        return str(distinct.pop())
    models: dict[str, list[str]] = {}
    for model, seen in values.items():
        models.setdefault(" / ".join(str(v) for v in sorted(seen)), []).append(model)
    return ", ".join(f"{shown} ({', '.join(sorted(names))})" for shown, names in models.items())


# What the report says of each rival setting it has runs of (the figures those of `run_hivemind` and
# `run_flower_fedavg`).
HIVEMIND_TEXT = {
    "hivemind": f"every 100 local steps per peer (target batch {PEERS * 32 * 100:,} samples, about the 10,000 of "
    "its quickstart)",
    "hivemind-tb2048": f"every 16 local steps per peer in `hivemind-tb2048` (target batch {PEERS * 32 * 16:,} "
    f"samples: all {PEERS} peers at once, its better setting on the 1.2M CNN)",
}
FLOWER_TEXT = {
    "flower": f"one local epoch ({FLOWER_LOCAL_STEPS} steps) per round",
    "flower-quarter": f"a quarter epoch ({FLOWER_LOCAL_STEPS // 4} steps) per round in `flower-quarter`",
}


def _rivals(results: list[dict[str, Any]]) -> str:
    """The settings of the rivals, of those with runs in `results` only."""
    systems = {r["system"] for r in results}
    hivemind = [text for name, text in HIVEMIND_TEXT.items() if name in systems]
    flower = [text for name, text in FLOWER_TEXT.items() if name in systems]
    parts = []
    if hivemind:
        parts.append(
            f"hivemind averages parameters in groups {' or '.join(hivemind)}, matchmaking 1 s, request timeout "
            "0.5 s on IID and its default 3 s on Dirichlet 0.5 (the better of the two on each)"
        )
    if flower:
        parts.append(
            f"Flower runs FedAvg over all {PEERS} peers each round with {' or '.join(flower)}, through its "
            "SuperLink/SuperNode deployment runtime. Flower's loopback bytes also count each SuperNode talking to "
            "its ClientApp process and the ServerApp to the SuperLink: each model sent crosses loopback three "
            "times (ServerApp, SuperLink, SuperNode, ClientApp) where a real deployment sends it once over the "
            "network, so divide Flower's figures by about 3 for its network traffic"
        )
    several = (
        " Where a rival ran with several settings on a workload, its verdicts judge gossipd against the one that "
        "reached 98% soonest."
        if len(hivemind) > 1 or len(flower) > 1
        else ""
    )
    return f"{'; '.join(parts)}.{several}" if parts else ""


def _dates(results: list[dict[str, Any]]) -> str:
    return ", ".join(sorted({r.get("date", "") for r in results} - {""})) or "on an unknown date"


# Runs record the machine they ran on since 2026-12-05 (night), when a run first came from another machine
# than the runs before it; every report written before then named this one.
EARLIER_MACHINE = "AMD EPYC, 2 cores, Python 3.11.7, Linux"


def run_machines(results: list[dict[str, Any]]) -> str:
    """The machines the runs were measured on, with how many runs each where there are several."""
    counts = collections.Counter(str(r.get("machine") or EARLIER_MACHINE) for r in results)
    if len(counts) == 1:
        return next(iter(counts))
    return "; ".join(f"{name} ({count} run{'s' if count > 1 else ''})" for name, count in counts.most_common())


def publish(out: Path, *, write: bool) -> None:
    """Rebuild the report from the runs in `out`, print it, and with `write` put it in BENCHMARKS.md (and the
    history in docs/bench-peers/HISTORY.md)."""
    # A published run left out of BENCHMARKS.md (--no-write) must not redraw the plots the section links.
    text, history = write_report(out, draw=write or out != RESULTS)
    print(text)
    if write:
        replace_section(REPO / "BENCHMARKS.md", "bench-peers", text, title="Benchmarks", heading=HEADING)
        if history is not None:
            replace_section(RESULTS / "HISTORY.md", "bench-peers-history", history, title="bench-peers history")


def run_one(args: argparse.Namespace, out: Path, today: str, shards: Path, planned: Run) -> None:
    """One run in a folder of its own (removed afterwards unless --keep), its summary written to `out`."""
    workdir = Path(tempfile.mkdtemp(prefix="gossipd-peers-", dir="/tmp"))
    try:
        shutil.copytree(shards / "data", workdir / "data")
        run = dataclasses.replace(planned, workdir=str(workdir))
        if execute(run):
            # gossipd's peers stop at the budget and finish, and start together (see gossipd_task).
            gossipd = run.system.startswith("gossipd-")
            summary = {**evaluate(run), "date": today, "machine": machine(), "finish": gossipd, "together": gossipd}
            (out / f"{run.name}.json").write_text(json.dumps(summary, indent=1))
            print(json.dumps({k: v for k, v in summary.items() if k != "curve"}), flush=True)
    finally:
        if args.keep:
            print(f"  kept {workdir}", flush=True)
        else:
            shutil.rmtree(workdir, ignore_errors=True)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--inside", type=Path, help=argparse.SUPPRESS)
    parser.add_argument("--setup", action="store_true", help="only create the hivemind and Flower virtualenvs")
    parser.add_argument(
        "--report-only", action="store_true", help="rebuild plots, BENCHMARKS.md and HISTORY.md from recorded runs"
    )
    parser.add_argument(
        "--systems",
        default=",".join(s for s in SYSTEMS if s in CURRENT),
        help=f"comma-separated (default: the report's current ones); all: {', '.join(SYSTEMS)}",
    )
    parser.add_argument("--models", default="cnn,mlp")
    parser.add_argument("--splits", default="iid,dirichlet:0.5")
    parser.add_argument("--repeats", type=int, default=1)
    parser.add_argument("--first-repeat", type=int, default=0, help="first repeat number (to add repeats)")
    parser.add_argument("--steps", type=int, default=3000, help="training steps per peer")
    parser.add_argument("--snapshot-every", type=int, default=200, help="steps between model snapshots")
    parser.add_argument("--quick", action="store_true", help="CNN, IID, 600 steps; results in out/bench-peers/quick")
    parser.add_argument("--no-write", action="store_true", help="do not update BENCHMARKS.md")
    parser.add_argument("--keep", action="store_true", help="keep each run's folder (logs, snapshots) in /tmp")
    parser.add_argument(
        "--tag", help="an experiment: results in out/bench-peers/TAG, BENCHMARKS.md left alone (with --gossip-extra)"
    )
    parser.add_argument("--gossip-extra", default="", help="TOML lines added to gossipd's [gossip] section")
    args = parser.parse_args()
    # SIGTERM (kill, timeout) as Ctrl-C: a run stops its peers, the runner its run, and the temporary folders go.
    signal.signal(signal.SIGTERM, lambda signum, _frame: sys.exit(128 + signum))
    if args.inside is not None:
        inside(args.inside)
        return
    out = OUT / "quick" if args.quick else OUT / args.tag if args.tag else RESULTS
    if args.tag or args.quick:
        args.no_write = True
    if args.report_only:
        publish(out, write=not args.no_write)
        return
    if not (SHARED_MNIST / "train-images-idx3-ubyte.gz").exists():
        raise SystemExit(f"bench-peers needs the full MNIST in {SHARED_MNIST}")
    setup_venvs(list(VENVS) if args.setup else args.systems.split(","))
    if args.setup:
        return
    models, splits, steps = args.models.split(","), args.splits.split(","), args.steps
    if args.quick:
        models, splits, steps = ["cnn"], ["iid"], 600
    out.mkdir(parents=True, exist_ok=True)
    today = datetime.date.today().isoformat()
    for split in splits:
        shards = Path(tempfile.mkdtemp(prefix="gossipd-peers-data-", dir="/tmp"))
        try:  # the shards (200 MB) and each run's folder go however the loop ends, Ctrl-C included
            write_shards(shards, split)
            for model in models:
                for system in args.systems.split(","):
                    for repeat in range(args.first_repeat, args.first_repeat + args.repeats):
                        planned = Run(system, model, split, repeat, steps, args.snapshot_every, "", args.gossip_extra)
                        run_one(args, out, today, shards, planned)
        finally:
            shutil.rmtree(shards, ignore_errors=True)
    publish(out, write=not args.no_write)


if __name__ == "__main__":
    main()
