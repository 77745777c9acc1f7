"""The `gossipd` commands that talk to a running daemon over its control socket (protocols/control-v1.md).

Each command is one `ControlClient` call, then either the server's JSON (`--json`, for scripts) or a
fixed-width table. A `ControlError` becomes `error: <message>` on stderr and the exit code `EXIT_CODES` names.
"""

from __future__ import annotations

import contextlib
import json
import math
import os
import sys
import tempfile
import time
from collections.abc import Callable, Iterator, Sequence
from pathlib import Path
from typing import Any, TypeVar

import click
from click.core import ParameterSource

from gossipd.cli_tasks import FROM_ONLY, join_from, join_from_options
from gossipd.client import ControlClient
from gossipd.paths import default_socket
from gossipd.services.control import EXIT_CODES, ControlError, JoinRequest

_EXIT_ERROR = 1  # as `gossipd.cli.EXIT_ERROR`; that module imports this one
_F = TypeVar("_F", bound=Callable[..., Any])
COMMANDLINE = ParameterSource.COMMANDLINE


def register_client_commands(group: click.Group) -> None:
    for command in (status_command, peers_command, tasks_command, join_command, leave_command, export_command):
        group.add_command(command)


def _socket_option(function: _F) -> _F:
    return click.option(
        "--socket",
        "socket_path",
        type=click.Path(dir_okay=False, path_type=Path),
        envvar="GOSSIPD_SOCKET",
        help="The daemon's control socket [default: $XDG_RUNTIME_DIR/gossipd/gossipd.sock, "
        "else ~/.local/state/gossipd/gossipd.sock; env: GOSSIPD_SOCKET].",
    )(function)


def _json_option(function: _F) -> _F:
    return click.option("--json", "as_json", is_flag=True, help="Print the daemon's JSON reply as it is.")(function)


# Joining loads the task's data and leaving writes a checkpoint: both may take minutes on big tasks.
SLOW_CALL_TIMEOUT = 600.0


def _client(socket_path: Path | None, timeout: float = 30.0) -> ControlClient:
    return ControlClient(socket_path or default_socket(), timeout=timeout)


@contextlib.contextmanager
def _reporting_errors() -> Iterator[None]:
    try:
        yield
    except ControlError as exc:
        click.echo(f"error: {exc.message}", err=True)
        sys.exit(EXIT_CODES[exc.code])


@click.command("status")
@_socket_option
@_json_option
def status_command(socket_path: Path | None, as_json: bool) -> None:
    """Show the daemon and a line per task."""
    with _reporting_errors():
        data = _client(socket_path).status()
    click.echo(json.dumps(data, indent=2) if as_json else format_status(data))


@click.command("peers")
@_socket_option
@_json_option
@click.option("--ledger", "ledger_only", is_flag=True, help="Show only the contribution ledger.")
@click.option("--links", "links_only", is_flag=True, help="Show only what an auto task sends on each edge, and why.")
def peers_command(socket_path: Path | None, as_json: bool, ledger_only: bool, links_only: bool) -> None:
    """Show the peers each task knows (* marks those it exchanges with; for an auto task, the mode of each
    edge's latest exchange and the link's measured rate), then what each neighbour contributed: exchanges it
    started and answered, bytes each way, and what it declares."""
    with _reporting_errors():
        data = _client(socket_path).peers()
    if as_json:
        click.echo(json.dumps(data, indent=2))
        return
    now = time.time()
    sections = [format_ledger(data, now=now)] if ledger_only else []
    sections += [format_links(data)] if links_only else []
    click.echo("\n\n".join(sections or [format_peers(data, now=now), format_ledger(data, now=now)]))


@click.command("tasks")
@_socket_option
@_json_option
def tasks_command(socket_path: Path | None, as_json: bool) -> None:
    """List the tasks the daemon runs."""
    with _reporting_errors():
        data = _client(socket_path).tasks()
    click.echo(json.dumps(data, indent=2) if as_json else format_tasks(data))


@click.command("join")
@click.argument("task_file", required=False, type=click.Path(exists=True, dir_okay=False, path_type=Path))
@click.option("--data", "data_root", type=click.Path(file_okay=False, path_type=Path), help="Replaces [data] root.")
@click.option("--peer-index", type=click.IntRange(0), help="Train on this part of the data (with --peer-count).")
@click.option("--peer-count", type=click.IntRange(1), help="Split the data in this many parts.")
@_socket_option
@join_from_options
@click.pass_context
def join_command(
    ctx: click.Context,
    /,
    task_file: Path | None,
    data_root: Path | None,
    peer_index: int | None,
    peer_count: int | None,
    socket_path: Path | None,
    from_task: str | None,
    **fetching: Any,
) -> None:
    """Start training TASK_FILE in the daemon (which reads the file itself); or, with --from, a task a peer
    offers (see `gossipd discover`): fetched, checked, shown, saved, then run."""
    if (peer_index is None) != (peer_count is None):
        raise click.UsageError("--peer-index and --peer-count go together")
    if peer_index is not None and peer_count is not None and peer_index >= peer_count:
        raise click.BadParameter(f"{peer_index} is not below --peer-count {peer_count}", param_hint="--peer-index")
    if from_task is not None:
        if task_file is not None:
            raise click.UsageError("give TASK_FILE or --from TASK, not both")
        join_from(ctx, from_task, data_root=data_root, socket_path=socket_path, peer_index=peer_index,
                  peer_count=peer_count, **fetching)  # fmt: skip
        return
    if task_file is None:
        raise click.UsageError("give TASK_FILE, or --from TASK to fetch one a peer offers")
    given = [p for p in ctx.command.params if p.name in FROM_ONLY and ctx.get_parameter_source(p.name) is COMMANDLINE]
    used = [p.opts[0] for p in given]
    if used:
        raise click.UsageError(f"{', '.join(used)} only go with --from")
    request = JoinRequest(
        # Absolute: the daemon's working directory is not this shell's.
        path=str(task_file.resolve()),
        data=str(data_root.resolve()) if data_root is not None else None,
        peer_index=peer_index,
        peer_count=peer_count,
    )
    with _reporting_errors():
        task = _client(socket_path, SLOW_CALL_TIMEOUT).join(request)
    click.echo(f"joined {task['id']} ({task['state']})")


@click.command("leave")
@click.argument("task_id")
@_socket_option
def leave_command(task_id: str, socket_path: Path | None) -> None:
    """Stop TASK_ID after checkpointing it."""
    with _reporting_errors():
        _client(socket_path, SLOW_CALL_TIMEOUT).leave(task_id)
    click.echo(f"left {task_id}")


@click.command("export")
@click.argument("task_id")
@click.argument("out", type=click.Path(dir_okay=False, path_type=Path))
@_socket_option
def export_command(task_id: str, out: Path, socket_path: Path | None) -> None:
    """Save TASK_ID's current model to OUT (safetensors, owner-only)."""
    with _reporting_errors():
        model = _client(socket_path).model(task_id)
    try:
        write_atomically(out, model)
    except OSError as exc:
        click.echo(f"error: cannot write {out}: {exc.strerror or exc}", err=True)
        sys.exit(_EXIT_ERROR)
    click.echo(f"wrote {out} ({human_bytes(len(model))})")


def write_atomically(path: Path, data: bytes) -> None:
    """Readers of `path` see the old file or the whole new one, never a partial write."""
    descriptor, temporary = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    try:
        with os.fdopen(descriptor, "wb") as file:
            file.write(data)
            file.flush()
            os.fsync(file.fileno())
        os.replace(temporary, path)
    except BaseException:
        Path(temporary).unlink(missing_ok=True)
        raise


def format_status(data: dict[str, Any]) -> str:
    addresses = data["addresses"] or ["-"]
    lines = [f"peer      {data['peer_id']}", f"addresses {addresses[0]}"]
    lines += [f"          {address}" for address in addresses[1:]]
    lines += [f"uptime    {human_duration(data['uptime_s'])}", f"version   {data['version']}"]
    lines += [*_relay_lines(data.get("relay")), *_sharing_lines(data.get("sharing")), ""]
    tasks = data["tasks"]
    if not tasks:
        return "\n".join([*lines, "no tasks (start one with `gossipd join TASK.toml`)"])
    header = [
        *("TASK", "STATE", "STEP", "LOSS", "ACCURACY", "EXCHANGES", "SENT", "RECEIVED", "RATIO", "DISTANCE"),
        *("MIX/STEP", "VIEW"),
    ]
    rows = [_status_row(task) for task in tasks]
    lines.append(table(header, rows, numeric=range(2, 12)))
    lines += [f"{task['id']}: {task['error']}" for task in tasks if task.get("error")]
    lines += [
        f"{task['id']}: the model of a script (pid {task['attached_pid']}) attached with gossipd.attach"
        for task in tasks
        if task.get("attached_pid") is not None
    ]
    lines += [_budget_line(task) for task in tasks if task.get("mixing_cpu_allowed") is not None]
    lines += [_auto_line(task) for task in tasks if task.get("exchange_budget_ms") is not None]
    lines += [_waiting_line(task) for task in tasks if task["state"] == "waiting"]
    lines += [_phase_line(task) for task in tasks if task["state"] == "training" and task.get("finished_neighbours")]
    lines += [
        f"{task['id']}: mixing weighted by samples; this peer declares {task['examples']:,} examples"
        for task in tasks
        if task.get("weigh_by") == "samples" and task.get("examples") is not None
    ]
    lines += [_personal_line(task) for task in tasks if task.get("personal")]
    return "\n".join(lines)


def _waiting_line(task: dict[str, Any]) -> str:
    if task.get("start_wait") is not None:
        return (
            f"{task['id']}: waiting for its neighbours before the first step ([train] start_wait, at most "
            f"{task['start_wait']:.0f} s): {task['live_peers']} live"
        )
    return (
        f"{task['id']}: waiting for peers: {task['live_peers']} of the {task['min_peers']} live neighbours "
        "[train] min_peers asks for"
    )


def _phase_line(task: dict[str, Any]) -> str:
    """A peer still training while some neighbours are past the training budget: it no longer mixes with them."""
    finished, live = task["finished_neighbours"], task["live_peers"]
    alone = finished >= live
    rest = "it trains on alone, then finishes with them" if alone else f"it mixes with the other {live - finished}"
    return f"{task['id']}: {finished} of its {live} live neighbours are past the training budget; {rest}"


def _budget_line(task: dict[str, Any]) -> str:
    """A step-paced task under a CPU budget: the pace in force and why."""
    return (
        f"{task['id']}: an exchange every {task['steps_per_exchange']} steps; mixing used "
        f"{task['mixing_cpu']:.0%} of a core, allowed {task['mixing_cpu_allowed']:.0%} ([gossip] cpu_budget)"
    )


def _auto_line(task: dict[str, Any]) -> str:
    """An auto task: what an exchange may take now, and how many edges exchange in which mode."""
    counts: dict[str, int] = {}
    for link in task.get("links", []):
        counts[link["mode"]] = counts.get(link["mode"], 0) + 1
    modes = ", ".join(f"{mode} ×{counts[mode]}" for mode in sorted(counts, key=_mode_order))
    edges = f"edges at {modes}" if counts else "no edge measured yet"
    line = f"{task['id']}: auto exchanges, {_ms(task['exchange_budget_ms'])} budget each; {edges}"
    if task.get("mixing_cpu") is not None and task.get("mixing_cpu_allowed") is None:  # a budget has its own line
        line += f"; mixing used {task['mixing_cpu']:.0%} of a core"
    return line


def _mode_order(mode: str) -> float:
    """Cheapest first, as the ladder goes: rank 1, rank 2, …, full."""
    rank = mode.removeprefix("rank ")
    return float(rank) if rank.isdigit() else math.inf


def _personal_line(task: dict[str, Any]) -> str:
    """The parameters this peer keeps to itself ([gossip] personal), and its personal fine-tuning."""
    names = task["personal"]
    shown = ", ".join(names[:4]) + (f" and {len(names) - 4} more" if len(names) > 4 else "")
    line = f"{task['id']}: personal (never mixed, never sent): {shown}, {task['personal_values']:,} values"
    if task.get("personal_steps"):
        line += f"; fine-tuned {task['personal_steps_done']}/{task['personal_steps']} steps once finished"
    return line


def _sharing_lines(sharing: dict[str, Any] | None) -> list[str]:
    """The open tasks the daemon offers peers (`gossipd discover` lists them)."""
    if not sharing:
        return []
    offered = ", ".join(sharing["offered"]) or "no open task"
    served = sharing["files_served"]
    return [f"offers    {offered} ({served} task file{'s' if served != 1 else ''} served)"]


def _relay_lines(relay: dict[str, Any] | None) -> list[str]:
    """How the daemon is reached through relays, and what it relays for others."""
    if not relay:
        return []
    held = relay["reservations"]
    reach = f"{relay['reachability']}, " + (
        f"reachable through {len(held)} relay{'s' if len(held) != 1 else ''} ({', '.join(map(_short_id, held))})"
        if held
        else ("looking for a relay" if relay["needs_relay"] else "no relay needed")
    )
    lines = [f"reach     {reach}"]
    offer = relay.get("offering")
    if offer:
        lines.append(
            f"relay     serving {relay['reservations_served']}/{offer['max_reservations']} reservations, "
            f"{offer['max_circuits']} circuits per peer, {human_bytes(offer['max_circuit_bytes'])} and "
            f"{human_duration(offer['max_circuit_seconds'])} per circuit"
        )
    return lines


def _status_row(task: dict[str, Any]) -> list[str]:
    peers = task.get("peers", [])
    return [
        task["id"],
        task["state"],
        str(task["step"]),
        _number(task["loss"], ".4g"),
        _number(task["accuracy"], ".2%"),
        str(task["exchanges"]),
        human_bytes(task["bytes_sent"]),
        human_bytes(task["bytes_received"]),
        _number(task["compression_ratio"], ".1f", "x"),
        _number(task["consensus_distance"], ".3g"),
        _number(task.get("mix_per_step"), ".2f"),
        f"{sum(bool(peer['in_view']) for peer in peers)}/{len(peers)}",
    ]


def format_peers(data: dict[str, Any], now: float) -> str:
    peers = data["peers"]
    if not peers:
        return "no peers yet"
    header = ["TASK", "PEER", "VIEW", "SOURCES", "REACHED", "HEARD", "STEP", "LOSS", "EXCH/FAIL", "DISTANCE"]
    links = {(link["task"], link["peer_id"]): link for link in data.get("links", [])}
    rows = [
        [
            peer["task"],
            _short_id(peer["peer_id"]),
            "*" if peer["in_view"] else "",
            ",".join(peer["sources"]) or "-",
            peer.get("reached") or "-",
            "-" if peer["last_heard"] is None else f"{human_duration(max(0.0, now - peer['last_heard']))} ago",
            _number(peer["step"], "d") + (" (done)" if peer.get("past_budget") else ""),
            _number(peer["loss"], ".4g"),
            f"{peer['exchanges']}/{peer['failures']}",
            _number(peer["distance"], ".3g"),
        ]
        for peer in peers
    ]
    if not links:
        return table(header, rows, numeric=range(5, 10))
    # An auto task: each edge's mode and measured rate, next to what else is known of the neighbour.
    for peer, row in zip(peers, rows, strict=True):
        link = links.get((peer["task"], peer["peer_id"]))
        row += [link["mode"], _rate(link["bytes_per_second"])] if link else ["-", "-"]
    return table([*header, "MODE", "LINK"], rows, numeric=[*range(5, 10), 11])


def format_links(data: dict[str, Any]) -> str:
    """An auto task's edges: the mode of the latest exchange, what exchanges take against the budget, the
    link's measured rate, how often the pair exchanges, and why this peer chose the mode it uses."""
    links = data.get("links", [])
    if not links:
        return 'no auto exchanges yet (only [gossip] algorithm = "auto" chooses per edge)'
    header = ["TASK", "PEER", "MODE", "EXCHANGE/BUDGET", "LINK", "EXCH/S", "CAPTURED", "EXCHANGES", "REASON"]
    rows = [
        [
            link["task"],
            _short_id(link["peer_id"]),
            link["mode"],
            f"{_ms(link['exchange_ms'])} / {_ms(link['budget_ms'])}",
            _rate(link["bytes_per_second"]),
            _number(link["exchanges_per_second"], ".2f"),
            _share(link.get("captured")),
            str(link["exchanges"]),
            link["reason"],
        ]
        for link in links
    ]
    return table(header, rows, numeric=range(3, 8))


def _share(value: float | None) -> str:
    return "-" if value is None else f"{value:.1%}"


def format_ledger(data: dict[str, Any], now: float) -> str:
    entries = data.get("ledger", [])
    if not entries:
        return "no contributions yet"
    header = ["TASK", "PEER", "LIVE", "LAST SEEN", "TIME SEEN", "STARTED", "ANSWERED", "FAILED"]
    header += ["SENT", "RECEIVED", "REJECTED", "STEP*", "EXAMPLES*"]
    rows = [
        [
            entry["task"],
            _short_id(entry["peer_id"]),
            "yes" if entry["live"] else "",
            f"{human_duration(max(0.0, now - entry['last_seen']))} ago",
            human_duration(entry["seen_seconds"]),
            str(entry["started"]),
            str(entry["answered"]),
            str(entry["failed"]),
            human_bytes(entry["bytes_sent"]),
            human_bytes(entry["bytes_received"]),
            str(sum(entry["rejections"].values())),
            _number(entry["declared_step"], "d"),
            _number(entry["declared_dataset"], "d"),
        ]
        for entry in entries
    ]
    note = "* as the neighbour declares it in its heartbeats, unchecked"
    return f"{table(header, rows, numeric=range(4, 13))}\n{note}"


def format_tasks(data: dict[str, Any]) -> str:
    tasks = data["tasks"]
    if not tasks:
        return "no tasks (start one with `gossipd join TASK.toml`)"
    header = ["TASK", "STATE", "ALGORITHM", "DEVICE", "STEP", "SAMPLES/S", "LOSS", "ACCURACY", "HASH"]
    rows = [
        [
            task["id"],
            task["state"],
            task["algorithm"],
            task["device"],
            str(task["step"]),
            _number(task["samples_per_second"], ".1f"),
            _number(task["loss"], ".4g"),
            _number(task["accuracy"], ".2%"),
            task["hash"][:12],
        ]
        for task in tasks
    ]
    return table(header, rows, numeric=range(4, 8))


def table(header: Sequence[str], rows: Sequence[Sequence[str]], numeric: Sequence[int] = ()) -> str:
    """Fixed-width columns two spaces apart; `numeric` columns are right-aligned."""
    widths = [max(len(cell) for cell in column) for column in zip(header, *rows, strict=True)]

    def line(cells: Sequence[str]) -> str:
        padded = (
            c.rjust(w) if i in numeric else c.ljust(w) for i, (c, w) in enumerate(zip(cells, widths, strict=True))
        )
        return "  ".join(padded).rstrip()

    return "\n".join([line(header), *(line(row) for row in rows)])


def human_bytes(count: float) -> str:
    """Decimal units, as network counters usually are: 12345678 -> '12.3 MB'."""
    if count < 1000:
        return f"{int(count)} B"
    value = count / 1000
    for unit in ("kB", "MB", "GB"):
        if value < 1000:
            return f"{value:.1f} {unit}"
        value /= 1000
    return f"{value:.1f} TB"


def human_duration(seconds: float) -> str:
    minutes, secs = divmod(int(seconds), 60)
    hours, minutes = divmod(minutes, 60)
    days, hours = divmod(hours, 24)
    if days:
        return f"{days}d {hours:02d}h"
    if hours:
        return f"{hours}h {minutes:02d}m"
    if minutes:
        return f"{minutes}m {secs:02d}s"
    return f"{secs}s"


def _ms(milliseconds: float | None) -> str:
    if milliseconds is None:
        return "-"
    return f"{milliseconds:.1f} ms" if milliseconds < 10 else f"{milliseconds:,.0f} ms"


def _rate(bytes_per_second: float | None) -> str:
    return "-" if bytes_per_second is None else f"{human_bytes(bytes_per_second)}/s"


def _number(value: float | None, spec: str, suffix: str = "") -> str:
    return "-" if value is None else format(value, spec) + suffix


def _short_id(peer_id: str) -> str:
    return peer_id if len(peer_id) <= 12 else "…" + peer_id[-12:]
