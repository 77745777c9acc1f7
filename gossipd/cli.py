"""The `gossipd` command line."""

from __future__ import annotations

import dataclasses
import json
import sys
from pathlib import Path
from typing import Any

import click

from gossipd.cli_client import register_client_commands
from gossipd.cli_tasks import discover_command
from gossipd.services.control import ControlError, ErrorCode
from gossipd.task.fields import TaskError

DEFAULT_TASK = Path(__file__).resolve().parent / "embedded" / "default.toml"

# Exit codes shared by every command (documented in README.md).
EXIT_OK = 0
EXIT_ERROR = 1
EXIT_USAGE = 2
EXIT_INVALID_TASK = 3


def _load(task_file: str | None, data_root: str | None) -> Any:
    from gossipd.task.loader import load_task

    try:
        return load_task(task_file or DEFAULT_TASK, data_root=data_root)
    except TaskError as exc:
        click.echo(f"error: {exc}", err=True)
        sys.exit(EXIT_INVALID_TASK)


@click.group(context_settings={"help_option_names": ["-h", "--help"]})
@click.version_option(package_name="gossipd")
def main() -> None:
    """gossipd: train one model across machines by compressed gossip, with no server."""


@main.command()
@click.argument("task_files", nargs=-1, required=True, type=click.Path(dir_okay=False))
@click.option("--deep", is_flag=True, help="Also load the data and build the model.")
@click.option("--data", "data_root", type=click.Path(file_okay=False), help="Data folder (replaces [data] root).")
def check(task_files: tuple[str, ...], deep: bool, data_root: str | None) -> None:
    """Validate task files; exit 3 if any is invalid."""
    from gossipd.task.loader import load_task

    failed = False
    for task_file in task_files:
        try:
            task = load_task(task_file, data_root=data_root)
            summary = f"{task.id}: {task.model.name} model, {task.gossip.algorithm} gossip"
            if deep:
                summary += ", " + _deep_summary(task)
        except (TaskError, ValueError) as exc:
            click.echo(f"error: {exc}", err=True)
            failed = True
            continue
        click.echo(f"ok   {task_file} ({summary})")
    sys.exit(EXIT_INVALID_TASK if failed else EXIT_OK)


def _deep_summary(task: Any) -> str:
    from gossipd.data.registry import load_data
    from gossipd.models.registry import build_model, count_parameters

    data = load_data(task.data, task.task.seed)
    model = build_model(task.model, data.spec, task.task.seed)
    return (
        f"{len(data.train)} training / {len(data.validation)} validation examples, "
        f"{count_parameters(model):,} parameters"
    )


@main.command()
@click.argument("key_file", type=click.Path(dir_okay=False, path_type=Path))
@click.option("--force", is_flag=True, help="Overwrite an existing file.")
def keygen(key_file: Path, force: bool) -> None:
    """Write a new random task key to KEY_FILE (mode 0600), for a task's [access] key_file."""
    from gossipd.task.access import write_key_file

    try:
        write_key_file(key_file, force=force)
    except FileExistsError:
        click.echo(f"error: {key_file} exists (use --force to replace it)", err=True)
        sys.exit(EXIT_ERROR)
    except OSError as exc:
        click.echo(f"error: {key_file}: {exc.strerror or exc}", err=True)
        sys.exit(EXIT_ERROR)
    click.echo(f"wrote a task key to {key_file}; share it only with the task's members")


@main.command()
@click.argument("task_file", required=False, type=click.Path(dir_okay=False))
@click.option("--peers", default=8, show_default=True, type=click.IntRange(2, 4096))
@click.option("--algorithm", type=click.Choice(["auto", "plain", "powergossip", "choco", "local"]))
@click.option("--rank", type=click.IntRange(1, 64), help="PowerGossip rank.")
@click.option("--iterations", type=click.IntRange(1, 16), help="PowerGossip power iterations per exchange.")
@click.option("--compressor", help="Choco compressor: sign, top-k:1%, random-k:1%, qsgd:4.")
@click.option("--gamma", type=float, help="Choco consensus step size.")
@click.option("--weight", type=click.FloatRange(0, 0.5, min_open=True), help="Fixed mixing weight (default: MH).")
@click.option(
    "--link-mbit", type=click.FloatRange(0, min_open=True), help="Auto: every link's modelled rate (default: free)."
)
@click.option("--link-ms", default=0.0, type=click.FloatRange(0), help="Auto: every link's modelled one-way latency.")
@click.option(
    "--step-ms",
    default=10.0,
    show_default=True,
    type=click.FloatRange(0, min_open=True),
    help="Auto: a training step's modelled time.",
)
@click.option(
    "--cpu-mb-per-s",
    default=100.0,
    show_default=True,
    type=click.FloatRange(0, min_open=True),
    help="Auto: the modelled CPU rate of an exchange (MB sent either way per CPU-second).",
)
@click.option(
    "--measured-timing",
    is_flag=True,
    help="Auto: time steps and exchanges here instead (choices then follow this machine's load; a seed no "
    "longer reproduces a run).",
)
@click.option("--partition", help="iid, contiguous, dirichlet:ALPHA or shards:S (default: the task's).")
@click.option("--steps", default=200, show_default=True, type=click.IntRange(1), help="Rounds to run.")
@click.option(
    "--finish-rounds", default=0, type=click.IntRange(0), help="Rounds of mixing alone after the last (the finish)."
)
@click.option("--seed", default=0, show_default=True, type=int)
@click.option(
    "--paces",
    help="Each peer's training pace, shares of local_steps a round cycled over the peers (0.5,1,1,1): every "
    "peer trains STEPS rounds' worth, the slower over more rounds; past it a peer mixes only with peers past it.",
)
@click.option(
    "--steps-per-exchange",
    type=click.IntRange(0),
    help="Training steps between two exchanges a peer starts (default: the task's [gossip] steps_per_exchange, "
    "as its daemons run; 0: one a round).",
)
@click.option(
    "--exchange-span",
    default=0,
    type=click.IntRange(0),
    help="Training steps between an exchange's reading of a peer's model and its delta being applied, as a "
    "daemon's trainer steps on while an exchange is in flight (default 0: at once).",
)
@click.option("--churn", default=0.0, show_default=True, type=click.FloatRange(0, 1), help="Leave chance per round.")
@click.option("--downtime", default=10, show_default=True, type=click.IntRange(1), help="Rounds a leaver is away.")
@click.option("--byzantine", default=0, type=click.IntRange(0), help="How many peers attack instead of training.")
@click.option("--attack", default="sign-flip", type=click.Choice(["sign-flip", "scale", "noise", "nan"]))
@click.option("--no-clip", is_flag=True, help="Turn self-centred clipping off ([robust] clip = false).")
@click.option(
    "--momentum-every",
    type=click.IntRange(0),
    help="Mix the optimisers' momentum every this many whole-model exchanges of an edge (0: never; "
    "default: the task's [gossip] momentum_every).",
)
@click.option("--personal", multiple=True, help="Keep parameters matching this glob on each peer (repeatable).")
@click.option("--personal-steps", type=click.IntRange(0), help="Personal fine-tuning steps after the finish.")
@click.option(
    "--personal-training", type=click.Choice(["local", "frozen"]), help="Personal parameters before the finish."
)
@click.option("--no-train", is_flag=True, help="Only mix (with --independent-init: a pure consensus run).")
@click.option("--independent-init", is_flag=True, help="Each peer starts from its own random model.")
@click.option("--eval-every", default=0, type=click.IntRange(0), help="Rounds between evaluations.")
@click.option("--eval-samples", type=click.IntRange(1), help="Cap on validation examples per evaluation.")
@click.option("--eval-peers", type=click.IntRange(1), help="Score this many peers (a fixed sample), not all.")
@click.option("--no-centralised", is_flag=True, help="Skip the centralised reference run.")
@click.option("--data", "data_root", type=click.Path(file_okay=False), help="Data folder (replaces [data] root).")
@click.option("--json", "as_json", is_flag=True, help="Print one JSON object instead of a summary.")
@click.option("--quiet", is_flag=True, help="No progress lines on stderr (a line every 5 s and one per phase).")
@click.option(
    "--threads",
    type=click.IntRange(1),
    help="Torch threads (default: torch's choice, one per core). 1 for runs side by side on one machine.",
)
def simulate(
    task_file: str | None,
    peers: int,
    algorithm: str | None,
    rank: int | None,
    iterations: int | None,
    compressor: str | None,
    gamma: float | None,
    weight: float | None,
    link_mbit: float | None,
    link_ms: float,
    step_ms: float,
    cpu_mb_per_s: float,
    measured_timing: bool,
    partition: str | None,
    steps: int,
    finish_rounds: int,
    seed: int,
    paces: str | None,
    steps_per_exchange: int | None,
    exchange_span: int,
    churn: float,
    downtime: int,
    byzantine: int,
    attack: str,
    no_clip: bool,
    momentum_every: int | None,
    personal: tuple[str, ...],
    personal_steps: int | None,
    personal_training: str | None,
    no_train: bool,
    independent_init: bool,
    eval_every: int,
    eval_samples: int | None,
    eval_peers: int | None,
    no_centralised: bool,
    data_root: str | None,
    as_json: bool,
    quiet: bool,
    threads: int | None,
) -> None:
    """Run PEERS simulated peers of TASK_FILE (default: the embedded MNIST task) in this process."""
    from gossipd.adapters.memory import keep_freed_memory
    from gossipd.data.partition import parse_partition
    from gossipd.data.registry import load_data
    from gossipd.sim.progress import Progress
    from gossipd.sim.simulator import MEASURED, ModelledTiming, Simulation, SimulationConfig
    from gossipd.task.overrides import with_gossip, with_personal

    if threads is not None:
        # Side by side, each process's torch keeps a thread per core spinning at every small op: two
        # simulations of the MNIST MLP on 2 cores each ran 6 times slower than alone, with one thread each
        # about as fast as alone (README, "The simulator").
        import torch

        torch.set_num_threads(threads)
    # Every round frees and reallocates the peers' model copies; glibc would hand each back and fault it in
    # again (gossipd.adapters.memory): a tenth of a run of 8 peers of the 1.2M-parameter CNN.
    keep_freed_memory()
    task = _load(task_file, data_root)
    options = {"rank": rank, "iterations": iterations, "compressor": compressor, "gamma": gamma}
    try:
        if partition is not None:
            try:
                parse_partition(partition)
            except ValueError as exc:
                raise ValueError(f"--partition: {exc}") from None
        if algorithm != "local" and (algorithm is not None or any(v is not None for v in options.values())):
            task = with_gossip(task, algorithm, options)
        if weight is not None:
            task = dataclasses.replace(task, gossip=dataclasses.replace(task.gossip, weight=weight))
        if no_clip:
            task = dataclasses.replace(task, robust=dataclasses.replace(task.robust, clip=False))
        if momentum_every is not None:
            task = dataclasses.replace(task, gossip=dataclasses.replace(task.gossip, momentum_every=momentum_every))
        task = with_personal(task, personal, personal_steps, personal_training)
        data = load_data(task.data, task.task.seed)
        config = SimulationConfig(
            peers=peers,
            rounds=steps,
            partition=partition,
            seed=seed,
            train=not no_train,
            mix=algorithm != "local",
            independent_init=independent_init,
            churn=churn,
            downtime=downtime,
            eval_every=eval_every,
            eval_samples=eval_samples,
            eval_peers=eval_peers,
            centralised=not no_centralised,
            byzantine=byzantine,
            attack=attack,
            finish_rounds=finish_rounds,
            link_bytes_per_second=None if link_mbit is None else link_mbit * 1e6 / 8,
            link_latency=link_ms / 1000,
            timing=MEASURED if measured_timing else ModelledTiming(step_ms / 1000, cpu_mb_per_s * 1e6),
            paces=_paces(paces),
            steps_per_exchange=steps_per_exchange,
            exchange_span=exchange_span,
        )
        simulation = Simulation(task, data, config)
    except (TaskError, ValueError) as exc:
        click.echo(f"error: {exc}", err=True)
        sys.exit(EXIT_INVALID_TASK)

    def progress(record: Any) -> None:
        if not as_json and record.mean_accuracy is not None:
            click.echo(
                f"round {record.round:5d}  accuracy {record.mean_accuracy:.4f} "
                f"(worst {record.worst_accuracy:.4f})"
                f"  consensus {record.consensus_distance:.4g}  bytes {record.exchange_bytes:,}",
                err=True,
            )

    def say(line: str) -> None:
        click.echo(line, err=True)

    report = simulation.run(
        progress if eval_every else None, None if quiet else Progress(simulation.training_rounds, say)
    )
    if as_json:
        click.echo(json.dumps(report.to_json()))
        return
    click.echo(_summary(report))


def _paces(text: str | None) -> tuple[float, ...] | None:
    if text is None:
        return None
    try:
        return tuple(float(part) for part in text.split(","))
    except ValueError:
        raise ValueError(f"--paces: expected numbers separated by commas, found {text!r}") from None


def _summary(report: Any) -> str:
    rounds = (
        f"{report.steps} rounds' steps a peer at paces {','.join(f'{p:g}' for p in report.paces)}, "
        f"spent in {report.rounds_run} rounds"
        if report.paces
        else f"{report.steps} rounds"
    )
    pace = (
        f", an exchange every {report.steps_per_exchange} steps a peer"
        if report.steps_per_exchange and report.algorithm != "local"
        else ""
    ) + (f", each delta applied {report.exchange_span} steps late" if report.exchange_span else "")
    if report.repeats_skipped:
        pace += f", {report.repeats_skipped:,} due exchanges left out as repeats"
    if report.momentum_every and report.algorithm != "local":
        pace += f", momentum mixed too in {report.momentum_mixes:,} exchanges (every {report.momentum_every})"
    lines = [
        f"task {report.task}: {report.peers} peers, {report.algorithm} {report.settings}, "
        f"partition {report.partition}, {rounds}{pace}",
        f"  accuracy     mean {report.mean_accuracy:.4f}  worst {report.worst_accuracy:.4f}"
        + (f"  centralised {report.centralised_accuracy:.4f}" if report.centralised_accuracy is not None else "")
        + (
            f"  (before {report.finish_rounds} finish rounds: mean {report.stopped_mean_accuracy:.4f})"
            if report.stopped_mean_accuracy is not None
            else ""
        ),
        *(
            [f"  own labels   mean {report.own_accuracy:.4f}  worst {report.worst_own_accuracy:.4f}"]
            if report.own_accuracy is not None
            else []
        ),
        *(
            [
                f"  personal     {', '.join(report.personal)}: global accuracy with their average "
                f"{report.averaged_personal_accuracy:.4f}"
            ]
            if report.averaged_personal_accuracy is not None
            else []
        ),
        f"  consensus    {report.consensus_distance_start:.4g} -> {report.consensus_distance_end:.4g}"
        + (f"  (mixing {report.mix_per_step:.3g} a step while training)" if report.mix_per_step is not None else ""),
        f"  bytes/exch.  {report.bytes_per_exchange:,.0f} (plain {report.plain_bytes_per_exchange:,}, "
        f"ratio {report.compression_ratio:.1f}x) over {report.exchanges} exchanges",
        *(
            [
                f"  modes        {', '.join(f'{mode} ×{count:,}' for mode, count in report.modes.items())}"
                + (f", skipped ×{report.skipped_exchanges:,} (saving)" if report.skipped_exchanges else "")
                + f"  (times {report.timing})"
            ]
            if report.modes
            else []
        ),
        f"  time         {report.wall_seconds:.1f} s",
    ]
    return "\n".join(lines)


@main.command()
@click.argument("task_file", required=False, type=click.Path(dir_okay=False))
@click.option("--listen", multiple=True, help="Multiaddr to listen on (repeatable). [default: /ip4/0.0.0.0/tcp/0]")
@click.option("--bootstrap", multiple=True, help="Multiaddr of a peer to join through, ending in /p2p/<id>.")
@click.option("--mdns", is_flag=True, help="Also find peers on the local network with mDNS.")
@click.option("--relay", is_flag=True, help="Relay circuits for the task's peers that cannot dial each other.")
@click.option(
    "--relay-max-reservations", default=64, show_default=True, type=click.IntRange(1), help="Peers holding a slot."
)
@click.option("--relay-max-circuits", default=8, show_default=True, type=click.IntRange(1), help="Circuits per peer.")
@click.option(
    "--relay-max-circuit-mb", default=1024, show_default=True, type=click.IntRange(1), help="MB per circuit, both ways."
)
@click.option(
    "--relay-max-circuit-seconds", default=3600, show_default=True, type=click.IntRange(1), help="A circuit's life."
)
@click.option(
    "--reachability",
    default="auto",
    show_default=True,
    type=click.Choice(["auto", "public", "private"]),
    help="Whether others can dial this peer; auto: reserve a relay slot once a peer cannot be dialled.",
)
@click.option("--data", "data_root", type=click.Path(file_okay=False), help="Data folder (replaces [data] root).")
@click.option("--state-dir", type=click.Path(file_okay=False), help="State folder. [default: $XDG_STATE_HOME/gossipd]")
@click.option("--socket", "socket_path", type=click.Path(dir_okay=False), help="Control socket path.")
@click.option("--peer-index", type=click.IntRange(0), help="Train on this part of the data ...")
@click.option("--peer-count", type=click.IntRange(1), help="... out of this many (swarms on one machine).")
@click.option(
    "--join-timeout",
    default=10.0,
    show_default=True,
    type=click.FloatRange(0),
    help="Seconds a fresh peer looks for a model to copy.",
)
@click.option(
    "--heartbeat-interval",
    default=2.0,
    show_default=True,
    type=click.FloatRange(0.1),
    help="Seconds between this peer's announcements on its tasks' topics; a neighbour counts as live for "
    "5 of them (at least 15 s) after its last.",
)
@click.option(
    "--checkpoint-interval",
    default=60.0,
    show_default=True,
    type=click.FloatRange(1),
    help="Seconds between checkpoints.",
)
@click.option("--seed", type=int, help="Seed of this daemon's local randomness (partners, compression).")
@click.option("--init-seed", type=int, help="Initialise the model from this seed, not the task's (experiments).")
@click.option("--threads", type=click.IntRange(1), help="Torch threads for training (default: torch's choice).")
@click.option(
    "--no-task",
    is_flag=True,
    help="Start without a task: scripts attach theirs (gossipd.attach), `gossipd join` adds one.",
)
@click.option(
    "--log-level", default="info", show_default=True, type=click.Choice(["debug", "info", "warning", "error"])
)
def run(
    task_file: str | None,
    listen: tuple[str, ...],
    bootstrap: tuple[str, ...],
    mdns: bool,
    relay: bool,
    relay_max_reservations: int,
    relay_max_circuits: int,
    relay_max_circuit_mb: int,
    relay_max_circuit_seconds: int,
    reachability: str,
    data_root: str | None,
    state_dir: str | None,
    socket_path: str | None,
    peer_index: int | None,
    peer_count: int | None,
    join_timeout: float,
    heartbeat_interval: float,
    checkpoint_interval: float,
    seed: int | None,
    init_seed: int | None,
    threads: int | None,
    no_task: bool,
    log_level: str,
) -> None:
    """Run the daemon with TASK_FILE (default: the embedded MNIST task; none with --no-task) until SIGINT or
    SIGTERM. Training scripts on this machine attach their own models to it with `gossipd.attach`."""
    import logging

    import torch
    import trio

    from gossipd.adapters.http_unix import SocketInUseError
    from gossipd.daemon import Daemon, DaemonOptions
    from gossipd.paths import default_socket, default_state_dir
    from gossipd.services.network import DialError, RelayOffer
    from gossipd.services.task_runtime import RunOptions

    if no_task and task_file is not None:
        raise click.UsageError("--no-task and TASK_FILE exclude each other")
    if (peer_index is None) != (peer_count is None):
        raise click.UsageError("--peer-index and --peer-count go together")
    if peer_index is not None and peer_count is not None and peer_index >= peer_count:
        raise click.UsageError(f"--peer-index {peer_index} must be below --peer-count {peer_count}")
    # force: a library may have configured the root logger on import (opacus does), which would silence ours.
    logging.basicConfig(
        level=log_level.upper(),
        format="%(asctime)s %(levelname)-7s %(name)s: %(message)s",
        stream=sys.stderr,
        force=True,
    )
    # libp2p logs routine network noise (failed DHT reads, dial retries) at INFO/WARNING.
    logging.getLogger("libp2p").setLevel(logging.CRITICAL)
    logging.getLogger("multiaddr").setLevel(logging.ERROR)
    if threads is not None:
        torch.set_num_threads(threads)
    task = None if no_task else _load(task_file, data_root)
    state = Path(state_dir) if state_dir else default_state_dir()
    task_options = RunOptions(
        data_root=Path(data_root) if data_root else None,
        peer_index=peer_index,
        peer_count=peer_count,
        bootstrap=bootstrap,
        join_timeout=join_timeout,
        heartbeat_interval=heartbeat_interval,
        checkpoint_interval=checkpoint_interval,
        seed=seed,
        init_seed=init_seed,
    )
    options = DaemonOptions(
        state_dir=state,
        socket=Path(socket_path) if socket_path else default_socket(state),
        listen=listen or ("/ip4/0.0.0.0/tcp/0",),
        bootstrap=bootstrap,
        mdns=mdns,
        relay=RelayOffer(
            max_reservations=relay_max_reservations,
            max_circuits=relay_max_circuits,
            max_circuit_bytes=relay_max_circuit_mb * 1_000_000,
            max_circuit_seconds=relay_max_circuit_seconds,
        )
        if relay
        else None,
        reachability=reachability,
        task_options=task_options,
    )
    try:
        trio.run(Daemon(options).run, [] if task is None else [(task, task_options)])
    except BaseException as exc:
        # Errors from inside the daemon's nurseries arrive wrapped in exception groups.
        for kind, code in ((SocketInUseError, EXIT_ERROR), (DialError, EXIT_USAGE), (ControlError, EXIT_ERROR)):
            found = _leaf(exc, kind)
            if found is not None:
                invalid = isinstance(found, ControlError) and found.code == ErrorCode.INVALID_TASK
                click.echo(f"error: {found}", err=True)
                sys.exit(EXIT_INVALID_TASK if invalid else code)
        raise


def _leaf(error: BaseException, kind: type[BaseException]) -> BaseException | None:
    """The first exception of `kind` in `error` or the exception groups it nests."""
    if isinstance(error, kind):
        return error
    if isinstance(error, BaseExceptionGroup):
        for inner in error.exceptions:
            found = _leaf(inner, kind)
            if found is not None:
                return found
    return None


register_client_commands(main)
main.add_command(discover_command)
