"""Finding the open tasks peers offer and fetching one's file (`gossipd discover`, `gossipd join --from`):
the client side of protocols/tasks-v1.md, on any `Network`.

Three sources fill a `Catalog` within one deadline: the adverts heard on the well-known topic, and the
answers to `list` from the bootstrap peers and from every provider of the well-known DHT key. Asking over a
stream answers at once, where adverts come about once a minute; listening catches advertisers no record led to.
"""

from __future__ import annotations

import logging
from collections.abc import Sequence

import trio

from gossipd.services.network import DialError, FrameTooLarge, Network, PeerAddress, StreamClosed, Subscription
from gossipd.task.catalog import Catalog
from gossipd.wire.errors import WireError
from gossipd.wire.task_advert import check_signer, decode_advert
from gossipd.wire.task_requests import (
    MAX_FILE_BYTES,
    MAX_LIST_BYTES,
    TASK_LIST_KEY,
    TASKS_PROTOCOL,
    TASKS_TOPIC,
    FileRequest,
    ListRequest,
    Request,
    decode_adverts,
    decode_file,
    encode_request,
)

log = logging.getLogger("gossipd.tasks")

DIAL_TIMEOUT = 5.0
ASK_TIMEOUT = 10.0  # one request and its answer (a task file is at most 1 MiB)


class NoPeerReachable(Exception):
    """None of the bootstrap addresses could be dialled."""


async def find_tasks(network: Network, *, bootstrap: Sequence[str], listen_for: float) -> Catalog:
    """The tasks offered within `listen_for` seconds of dialling the bootstrap peers (each dial bounded by
    DIAL_TIMEOUT). Raises NoPeerReachable when addresses were given and none answered: nothing to ask then."""
    catalog = Catalog()
    subscription = await network.subscribe(TASKS_TOPIC)  # adverts wait in it while the dials go on
    reached = await _dial_all(network, bootstrap)
    if bootstrap and not reached:
        raise NoPeerReachable(f"none of the bootstrap peers answered: {', '.join(bootstrap)}")
    async with trio.open_nursery() as nursery:
        nursery.start_soon(_listen, network, subscription, catalog)
        nursery.start_soon(_ask_peers, network, reached, catalog)
        await trio.sleep(listen_for)
        nursery.cancel_scope.cancel()
    return catalog


async def _ask_peers(network: Network, reached: list[str], catalog: Catalog) -> None:
    """Ask the bootstrap peers, then every provider of the well-known key, each once."""
    with trio.move_on_after(DIAL_TIMEOUT):
        await network.refresh_routing()
    asked: set[str] = set()
    await _ask_all(network, [PeerAddress(peer, ()) for peer in reached], catalog, asked)
    with trio.move_on_after(DIAL_TIMEOUT * 2):
        providers = await network.find_providers(TASK_LIST_KEY)
        await _ask_all(network, providers, catalog, asked)


async def _listen(network: Network, subscription: Subscription, catalog: Catalog) -> None:
    async for message in subscription:
        if message.sender == network.peer_id:
            continue
        try:
            catalog.add(check_signer(decode_advert(message.data), message.sender))
        except WireError as exc:
            catalog.rejected(f"advert-{exc.reason}")
            log.debug("ignored an advert from %s: %s", message.sender, exc)


async def _dial_all(network: Network, addresses: Sequence[str]) -> list[str]:
    """The peer ids of the addresses that answered, dialled at once, each within DIAL_TIMEOUT."""
    reached: list[str] = []

    async def dial(address: str) -> None:
        with trio.move_on_after(DIAL_TIMEOUT):
            try:
                reached.append(await network.connect(address))
            except DialError as exc:
                log.warning("bootstrap %s unreachable: %s", address, exc)

    async with trio.open_nursery() as nursery:
        for address in addresses:
            nursery.start_soon(dial, address)
    return reached


async def _ask_all(network: Network, peers: Sequence[PeerAddress], catalog: Catalog, asked: set[str]) -> None:
    async def ask(peer: PeerAddress) -> None:
        try:
            with trio.fail_after(ASK_TIMEOUT):
                if peer.addresses:
                    await network.connect_peer(peer)
                raw = await _request(network, peer.peer_id, ListRequest(), MAX_LIST_BYTES)
            for advert in decode_adverts(raw, sender=peer.peer_id):
                catalog.add(advert)
        except WireError as exc:
            catalog.rejected(f"list-{exc.reason}")
            log.info("ignored the task list of %s: %s", peer.peer_id, exc)
        except (DialError, StreamClosed, FrameTooLarge, trio.TooSlowError) as exc:
            # A provider record outlives its daemon: a dead one is expected, not an error.
            log.debug("could not ask %s for its tasks: %s", peer.peer_id, exc)

    async with trio.open_nursery() as nursery:
        for peer in peers:
            if peer.peer_id not in asked and peer.peer_id != network.peer_id:
                asked.add(peer.peer_id)
                nursery.start_soon(ask, peer)


async def fetch_task_file(network: Network, peer: PeerAddress, task_hash: bytes) -> bytes:
    """The task file's bytes, as the peer sent them and their SHA-256 vouches. Raises the network's errors,
    `WireError` (a `Refused` one when the peer does not serve it) or trio.TooSlowError."""
    with trio.fail_after(ASK_TIMEOUT):
        await network.connect_peer(peer)
        raw = await _request(network, peer.peer_id, FileRequest(task_hash), MAX_FILE_BYTES)
    return decode_file(raw, task_hash=task_hash)


async def _request(network: Network, peer_id: str, request: Request, limit: int) -> bytes:
    stream = await network.open_stream(peer_id, TASKS_PROTOCOL)
    try:
        await stream.send(encode_request(request))
        return await stream.receive(limit)
    finally:
        await stream.close()
