"""`gossipd discover` and `gossipd join --from`: the open tasks peers offer, and joining one of them
(protocols/tasks-v1.md).

Both start a short-lived libp2p host of their own (a throwaway identity, on loopback), built as the daemon
builds its network, dial the bootstrap addresses and gather adverts for a few seconds. `join --from` then
fetches the chosen task's file from a peer offering it, checks it against the advertised hash, shows it,
saves it, and runs it: in the daemon already answering on the control socket, else in a new daemon started
exactly as `gossipd run FILE --data DIR --bootstrap <the serving peer>` would.
"""

from __future__ import annotations

import json
import logging
import sys
from collections.abc import Awaitable, Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any, TypeVar

import click

from gossipd.services.control import ControlError, ErrorCode, JoinRequest

if TYPE_CHECKING:  # imported where used: the CLI's other commands should not pay for libp2p and torch
    from gossipd.services.network import Network
    from gossipd.task.catalog import Catalog, Offer
    from gossipd.task.loader import Task
    from gossipd.wire.task_advert import TaskAdvert

_T = TypeVar("_T")
_F = TypeVar("_F", bound=Callable[..., Any])
CLIENT_LISTEN = "/ip4/127.0.0.1/tcp/0"  # a client is dialled by no one: loopback keeps it off the LAN
DEFAULT_LISTEN_FOR = 5.0
# Exit codes as gossipd.cli's (README.md, "Exit codes"); that module imports this one.
EXIT_ERROR, EXIT_USAGE, EXIT_INVALID_TASK, EXIT_NO_SUCH_TASK = 1, 2, 3, 4


def bootstrap_option(function: _F) -> _F:
    return click.option(
        "--bootstrap",
        multiple=True,
        metavar="MULTIADDR",
        callback=_check_addresses,
        help="A peer to ask, ending in /p2p/<peer id> (repeatable).",
    )(function)


def listen_for_option(function: _F) -> _F:
    return click.option(
        "--timeout",
        "listen_for",
        default=DEFAULT_LISTEN_FOR,
        show_default=True,
        type=click.FloatRange(0.5, 600),
        help="Seconds to gather adverts after dialling the bootstrap peers.",
    )(function)


def _check_addresses(ctx: click.Context, param: click.Parameter, value: tuple[str, ...]) -> tuple[str, ...]:
    for address in value:
        if not address.startswith("/") or "/p2p/" not in address:
            raise click.BadParameter(f"{address!r} is not a multiaddr ending in /p2p/<peer id>")
    return value


@click.command("discover")
@bootstrap_option
@listen_for_option
@click.option("--json", "as_json", is_flag=True, help="Print one JSON object instead of a table.")
def discover_command(bootstrap: tuple[str, ...], listen_for: float, as_json: bool) -> None:
    """List the open tasks peers offer, with how many peers offer each (closed tasks are never offered)."""
    offers, rejected = _with_network(bootstrap, listen_for, _offers)
    if as_json:
        click.echo(json.dumps({"tasks": [_offer_json(o) for o in offers], "rejected": rejected}))
        return
    if not offers:
        click.echo("no open tasks found (give --bootstrap a running peer's address, or a longer --timeout)", err=True)
        return
    click.echo(format_offers(offers))


async def _offers(network: Network, catalog: Catalog) -> tuple[list[Offer], dict[str, int]]:
    return catalog.offers(), catalog.rejections


def format_offers(offers: Sequence[Offer]) -> str:
    from gossipd.cli_client import table

    header = ["TASK", "HASH", "PEERS", "SWARM", "MODEL", "ALGORITHM", "DESCRIPTION"]
    rows = [
        [
            o.task_id,
            o.task_hash.hex()[:12],
            str(len(o.offered_by)),
            str(o.swarm_size),
            model_summary(o.model, o.parameters, o.input_shape),
            o.algorithm,
            o.description,
        ]
        for o in offers
    ]
    return table(header, rows, numeric=(2, 3))


def model_summary(model: str, parameters: int, input_shape: tuple[int, ...]) -> str:
    return f"{model} {parameters:,} params, input {'x'.join(map(str, input_shape))}"


def _offer_json(offer: Offer) -> dict[str, Any]:
    return {
        "id": offer.task_id,
        "hash": offer.task_hash.hex(),
        "description": offer.description,
        "model": offer.model,
        "parameters": offer.parameters,
        "input_shape": list(offer.input_shape),
        "algorithm": offer.algorithm,
        "swarm_size": offer.swarm_size,
        "offered_by": [{"peer": a.peer, "addresses": list(a.addresses), "peers": a.peers} for a in offer.offered_by],
    }


# -- join --from ---------------------------------------------------------------------------------------

# The options of `gossipd join` that only mean something with --from (a plain join hands a file to a daemon).
FROM_ONLY = ("bootstrap", "listen_for", "yes", "save", "state_dir", "listen", "allow_code")


def join_from_options(function: _F) -> _F:
    """`gossipd join`'s options for fetching a task from a peer, and for the daemon started to run it."""
    options = [
        click.option("--from", "from_task", metavar="TASK", help="A task a peer offers: its id or a hash prefix."),
        bootstrap_option,
        listen_for_option,
        click.option("--yes", "-y", is_flag=True, help="Join without asking for confirmation."),
        click.option(
            "--save",
            type=click.Path(dir_okay=False, path_type=Path),
            help="Where to keep the fetched file. [default: <state dir>/task-files/<id>.toml]",
        ),
        click.option(
            "--state-dir",
            type=click.Path(file_okay=False, path_type=Path),
            help="The daemon's state folder, if one is started. [default: $XDG_STATE_HOME/gossipd]",
        ),
        click.option("--listen", multiple=True, help="Where a daemon started to run the task listens (repeatable)."),
        click.option("--allow-code", is_flag=True, help="Accept a task whose model or data is Python code."),
    ]
    for option in reversed(options):
        function = option(function)
    return function


@dataclass(frozen=True)
class Fetched:
    offer: Offer
    advert: TaskAdvert  # the serving peer's
    text: bytes
    task: Task


class FetchFailed(Exception):
    """No peer offering the task handed over a file that checked out."""


def join_from(
    ctx: click.Context,
    wanted: str,
    *,
    bootstrap: tuple[str, ...],
    listen_for: float,
    data_root: Path | None,
    save: Path | None,
    state_dir: Path | None,
    listen: tuple[str, ...],
    yes: bool,
    allow_code: bool,
    socket_path: Path | None,
    peer_index: int | None,
    peer_count: int | None,
) -> None:
    """Fetch the task a peer offers, check, show, save and run it (see the module's docstring)."""
    from gossipd.paths import default_socket, default_state_dir, fetched_task_file
    from gossipd.task.sharing import imported_code, needs_data_root

    state = state_dir or default_state_dir()
    folder = save.parent if save is not None else fetched_task_file(state, "x").parent
    fetched = _with_network(bootstrap, listen_for, _fetcher(wanted, folder, data_root))
    click.echo(_describe(fetched))
    task = fetched.task
    if needs_data_root(task) and data_root is None:
        raise click.UsageError(
            f"task {task.id} reads its data from {task.data.root!r} on the serving peer's machine: "
            "give --data DIR, your own folder holding the files its [data] names"
        )
    code = imported_code(task)
    if code and not allow_code:
        click.echo(
            f"error: task {task.id} imports and runs Python code on this machine ({', '.join(code)}); "
            "read it first, and join with --allow-code if you trust it",
            err=True,
        )
        sys.exit(EXIT_INVALID_TASK)
    if not yes:
        click.confirm(f"Join task {task.id}?", abort=True)
    path = save or fetched_task_file(state, task.id)
    _save(path, fetched.text, private_parent=save is None)
    click.echo(f"saved {path}")
    socket = socket_path or default_socket(state)
    if _join_running_daemon(socket, path, data_root, peer_index, peer_count):
        return
    _run_daemon(ctx, path, fetched, bootstrap, data_root, state_dir, socket_path, listen, peer_index, peer_count)


def _fetcher(wanted: str, folder: Path, data_root: Path | None) -> Callable[[Network, Catalog], Awaitable[Fetched]]:
    async def fetch(network: Network, catalog: Catalog) -> Fetched:
        import trio

        from gossipd.services.network import DialError, FrameTooLarge, PeerAddress, StreamClosed
        from gossipd.services.task_finder import fetch_task_file
        from gossipd.task.catalog import select
        from gossipd.task.sharing import FetchedTaskRejected, check_fetched
        from gossipd.wire.errors import WireError

        offer = select(catalog.offers(), wanted)
        failures = []
        for advert in offer.offered_by:
            try:
                text = await fetch_task_file(network, PeerAddress(advert.peer, advert.addresses), offer.task_hash)
                task = check_fetched(
                    text,
                    advertised=offer.task_hash,
                    file=str(folder / f"{offer.task_id}.toml"),
                    base_dir=folder,
                    data_root=data_root,
                )
            except (DialError, StreamClosed, FrameTooLarge, trio.TooSlowError, WireError, FetchedTaskRejected) as exc:
                logging.getLogger("gossipd.tasks").warning("task file from %s refused: %s", advert.peer, exc)
                failures.append(f"{advert.peer}: {exc}")
                continue
            return Fetched(offer, advert, text, task)
        raise FetchFailed(f"no peer handed over task {offer.task_id}'s file intact: {'; '.join(failures)}")

    return fetch


def _describe(fetched: Fetched) -> str:
    offer, advert = fetched.offer, fetched.advert
    count = len(offer.offered_by)
    lines = [
        f"task {offer.task_id} ({offer.task_hash.hex()}): {offer.description or 'no description'}",
        f"  {model_summary(offer.model, offer.parameters, offer.input_shape)}, {offer.algorithm} gossip; "
        f"offered by {count} peer{'s' if count != 1 else ''}, swarm of {offer.swarm_size}",
        f"  fetched from {advert.peer}: SHA-256 checked, task hash matches the advert",
        "----- task file -----",
        fetched.text.decode().rstrip("\n"),
        "---------------------",
    ]
    return "\n".join(lines)


def _save(path: Path, text: bytes, *, private_parent: bool) -> None:
    from gossipd.cli_client import write_atomically
    from gossipd.paths import ensure_private_dir

    try:
        if private_parent:
            ensure_private_dir(path.parent.parent)  # the state folder: created 0700 as the daemon would
        path.parent.mkdir(parents=True, exist_ok=True)
        write_atomically(path, text)
    except OSError as exc:
        click.echo(f"error: cannot write {path}: {exc.strerror or exc}", err=True)
        sys.exit(EXIT_ERROR)


def _join_running_daemon(
    socket: Path, path: Path, data_root: Path | None, peer_index: int | None, peer_count: int | None
) -> bool:
    """Hand the task to the daemon answering on `socket`, if one does (False: none does)."""
    from gossipd.cli_client import SLOW_CALL_TIMEOUT
    from gossipd.client import ControlClient
    from gossipd.services.control import EXIT_CODES

    client = ControlClient(socket, timeout=SLOW_CALL_TIMEOUT)
    try:
        client.version()
    except ControlError as exc:
        if exc.code is ErrorCode.UNAVAILABLE:
            return False
        raise
    request = JoinRequest(
        path=str(path.resolve()),
        data=str(data_root.resolve()) if data_root is not None else None,
        peer_index=peer_index,
        peer_count=peer_count,
    )
    try:
        status = client.join(request)
    except ControlError as exc:
        click.echo(f"error: {exc.message}", err=True)
        sys.exit(EXIT_CODES[exc.code])
    click.echo(f"joined {status['id']} ({status['state']}) in the daemon on {socket}")
    return True


def _run_daemon(
    ctx: click.Context,
    path: Path,
    fetched: Fetched,
    bootstrap: tuple[str, ...],
    data_root: Path | None,
    state_dir: Path | None,
    socket_path: Path | None,
    listen: tuple[str, ...],
    peer_index: int | None,
    peer_count: int | None,
) -> None:
    """`gossipd run` itself, as if typed with these options; the serving peer joins the bootstrap list."""
    from gossipd.cli import run

    click.echo(f"no daemon answers on the control socket: starting one for {fetched.task.id}")
    ctx.invoke(
        run,
        task_file=str(path),
        data_root=str(data_root) if data_root is not None else None,
        bootstrap=serving_bootstrap(bootstrap, fetched.advert.peer, fetched.advert.addresses),
        listen=listen,
        state_dir=str(state_dir) if state_dir is not None else None,
        socket_path=str(socket_path) if socket_path is not None else None,
        peer_index=peer_index,
        peer_count=peer_count,
    )


MAX_SERVING_ADDRESSES = 3  # the daemon dials bootstrap addresses one by one: a few, not every interface


def serving_bootstrap(bootstrap: Sequence[str], peer: str, addresses: Sequence[str]) -> tuple[str, ...]:
    """The user's bootstrap addresses, then the serving peer's own (unless it is one of them already): the
    new daemon reaches the task's swarm through the peer that just answered. Wildcard listen addresses
    (0.0.0.0, ::), which some daemons advertise, are no address to dial."""
    if any(address.endswith(f"/p2p/{peer}") for address in bootstrap):
        return tuple(bootstrap)
    usable = [
        a
        for a in addresses
        if a.endswith(f"/p2p/{peer}") and not a.startswith(("/ip4/0.0.0.0/", "/ip6/::/")) and "/p2p-circuit" not in a
    ]
    return (*bootstrap, *usable[:MAX_SERVING_ADDRESSES])


# -- the short-lived host ------------------------------------------------------------------------------


def _with_network(
    bootstrap: tuple[str, ...], listen_for: float, then: Callable[[Network, Catalog], Awaitable[_T]]
) -> _T:
    """Gather the offered tasks, then run `then` on them with the same host (which closes after it); errors
    become `error: ...` and an exit code."""
    import trio

    from gossipd.adapters.libp2p_network import Libp2pNetwork, ephemeral_identity
    from gossipd.cli import _leaf
    from gossipd.services.network import DialError
    from gossipd.services.task_finder import NoPeerReachable, find_tasks
    from gossipd.task.catalog import AmbiguousTask, NoSuchTask

    logging.basicConfig(level=logging.WARNING, format="%(levelname)s %(name)s: %(message)s", stream=sys.stderr)
    logging.getLogger("libp2p").setLevel(logging.CRITICAL)  # routine network noise, as in `gossipd run`
    logging.getLogger("multiaddr").setLevel(logging.ERROR)

    async def main() -> _T:
        async with Libp2pNetwork.running(ephemeral_identity(), listen=[CLIENT_LISTEN], reachability="public") as net:
            return await then(net, await find_tasks(net, bootstrap=bootstrap, listen_for=listen_for))

    try:
        return trio.run(main)
    except BaseException as exc:
        # Errors from inside the network's nurseries arrive wrapped in exception groups.
        for kind, code in (
            (NoSuchTask, EXIT_NO_SUCH_TASK),
            (AmbiguousTask, EXIT_USAGE),
            (FetchFailed, EXIT_INVALID_TASK),
            (NoPeerReachable, EXIT_ERROR),
            (DialError, EXIT_ERROR),
        ):
            found = _leaf(exc, kind)
            if found is not None:
                click.echo(f"error: {found}", err=True)
                sys.exit(code)
        raise
