"""Sharing tasks peer to peer (protocols/tasks-v1.md): the advert and request codecs against their golden
vectors, the catalog of offers and the choice of a task, what a daemon may serve and what a fetched file must
pass, and the service and the finder talking over the in-memory network, forgeries and garbage included."""

from __future__ import annotations

import dataclasses
import json
import random
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import msgpack
import pytest
import trio
from click.testing import CliRunner

from gossipd.cli import main
from gossipd.cli_client import format_status
from gossipd.cli_tasks import format_offers, serving_bootstrap
from gossipd.services.network import PeerAddress
from gossipd.services.task_finder import NoPeerReachable, fetch_task_file, find_tasks
from gossipd.services.task_sharing import SharedTask, TaskSharingService, share
from gossipd.task import loader
from gossipd.task.catalog import AmbiguousTask, Catalog, NoSuchTask, select
from gossipd.task.loader import parse_task
from gossipd.task.overrides import with_gossip
from gossipd.task.sharing import (
    FetchedTaskRejected,
    ModelSummary,
    NotShareable,
    check_fetched,
    imported_code,
    needs_data_root,
    shared_file,
)
from gossipd.wire.errors import MalformedMessage, WireError
from gossipd.wire.task_advert import (
    MAX_ADDRESSES,
    MAX_ADVERT_BYTES,
    TaskAdvert,
    WrongSigner,
    check_signer,
    decode_advert,
    encode_advert,
)
from gossipd.wire.task_requests import (
    MAX_TASK_FILE_BYTES,
    TASKS_PROTOCOL,
    TASKS_TOPIC,
    FileRequest,
    ListRequest,
    Refused,
    decode_adverts,
    decode_file,
    decode_request,
    encode_request,
)
from tests.conftest import DEFAULT_TASK, REPO
from tests.fake_network import FakeHub, FakeNetwork

VECTORS = REPO / "protocols" / "vectors" / "tasks"
HASH = bytes(range(16))
OPEN_TEXT = DEFAULT_TASK.read_text().replace('id = "mnist-default"', 'id = "shared"')


def advert(**changes: Any) -> TaskAdvert:
    fields: dict[str, Any] = {
        "task_id": "mnist",
        "task_hash": HASH,
        "description": "digits",
        "model": "mlp",
        "parameters": 25450,
        "input_shape": (1, 28, 28),
        "algorithm": "powergossip",
        "peer": "12D3KooWA",
        "addresses": ("/ip4/192.0.2.1/tcp/1/p2p/12D3KooWA",),
        "peers": 2,
    }
    return TaskAdvert(**(fields | changes))


# -- the codecs ------------------------------------------------------------------------------------------


def manifest() -> list[dict[str, Any]]:
    entries: list[dict[str, Any]] = json.loads((VECTORS / "vectors.json").read_text())
    return entries


def fields_of(decoded: TaskAdvert) -> dict[str, Any]:
    plain = dataclasses.asdict(decoded)
    return plain | {
        "task_hash": decoded.task_hash.hex(),
        "input_shape": list(decoded.input_shape),
        "addresses": list(decoded.addresses),
    }


def decode_vector(entry: dict[str, Any], data: bytes) -> Any:
    kind = entry["kind"]
    if kind == "advert":
        return fields_of(decode_advert(data))
    if kind == "request":
        request = decode_request(data)
        if isinstance(request, FileRequest):
            return {"type": "file", "hash": request.task_hash.hex()}
        return {"type": "list"}
    if kind == "adverts":
        return [fields_of(a) for a in decode_adverts(data, sender=entry["sender"])]
    return {"text": decode_file(data, task_hash=bytes.fromhex(entry["task_hash"])).decode()}


@pytest.mark.parametrize("entry", manifest(), ids=lambda e: e["file"])
def test_golden_vectors(entry: dict[str, Any]) -> None:
    data = (VECTORS / entry["file"]).read_bytes()
    if not entry["valid"]:
        with pytest.raises(WireError) as caught:
            decode_vector(entry, data)
        assert caught.value.reason == entry["reason"]
        return
    assert decode_vector(entry, data) == entry["decoded"]


def test_the_vectors_cover_every_kind_and_encoding_is_canonical() -> None:
    entries = manifest()
    assert {e["kind"] for e in entries if e["valid"]} == {"advert", "request", "adverts", "file"}
    advert_vector = (VECTORS / "advert.bin").read_bytes()
    assert encode_advert(decode_advert(advert_vector)) == advert_vector
    for name, request in (("list-request", ListRequest()), ("file-request", FileRequest(HASH))):
        assert encode_request(request) == (VECTORS / f"{name}.bin").read_bytes()


def test_an_advert_round_trips_and_long_fields_are_cut_to_fit() -> None:
    assert decode_advert(encode_advert(advert())) == advert()
    addresses = ("/ip4/10.0.0.1/tcp/1/p2p/12D3KooWOther", *(f"/ip4/10.0.0.{i}/tcp/1/p2p/12D3KooWA" for i in range(40)))
    long = advert(description="é" * 600, addresses=addresses)
    decoded = decode_advert(encode_advert(long))
    assert decoded.description == "é" * 512  # 1024 bytes, cut at a character boundary
    assert decoded.addresses == addresses[1 : MAX_ADDRESSES + 1]  # the advertiser's own, at most 16


def test_an_advert_naming_addresses_of_another_peer_is_rejected() -> None:
    raw = msgpack.unpackb(encode_advert(advert()), raw=False)
    raw["addrs"] = ["/ip4/192.0.2.66/tcp/1/p2p/12D3KooWVictim"]
    with pytest.raises(MalformedMessage, match="the peer's own"):
        decode_advert(msgpack.packb(raw, use_bin_type=True))


def test_an_oversized_advert_is_rejected_before_it_is_parsed() -> None:
    with pytest.raises(MalformedMessage, match="above"):
        decode_advert(b"\x80" * (MAX_ADVERT_BYTES + 1))


def test_an_advert_from_another_peer_than_it_names_is_forged() -> None:
    check_signer(advert(), "12D3KooWA")
    with pytest.raises(WrongSigner):
        check_signer(advert(), "12D3KooWMallory")


def test_the_file_limit_is_the_loaders() -> None:
    assert MAX_TASK_FILE_BYTES == loader.MAX_TASK_FILE_BYTES


# -- the catalog -----------------------------------------------------------------------------------------


def test_offers_gather_each_tasks_peers_and_the_latest_advert_of_each() -> None:
    catalog = Catalog()
    catalog.add(advert(peer="A", peers=1))
    catalog.add(advert(peer="A", peers=5))  # A's newer advert replaces its older one
    catalog.add(advert(peer="B", peers=0, description="digits (B's words)"))
    catalog.add(advert(peer="C", description="digits"))
    catalog.add(advert(peer="C", task_id="other", task_hash=bytes(16)))
    offers = catalog.offers()
    assert [o.task_id for o in offers] == ["mnist", "other"]  # the most offered first
    mnist = offers[0]
    assert [a.peer for a in mnist.offered_by] == ["A", "C", "B"]  # the best connected first
    assert mnist.description == "digits"  # what most peers say
    assert mnist.swarm_size == 6  # A sees 5 others
    assert offers[1].swarm_size == 3


def test_select_by_id_or_hash_prefix() -> None:
    catalog = Catalog()
    catalog.add(advert(peer="A"))
    catalog.add(advert(peer="A", task_id="cifar", task_hash=bytes.fromhex("ab" * 16)))
    offers = catalog.offers()
    assert select(offers, "mnist").task_hash == HASH
    assert select(offers, "ABAB").task_id == "cifar"
    with pytest.raises(NoSuchTask, match="offered: "):
        select(offers, "imagenet")
    with pytest.raises(NoSuchTask):
        select(offers, "ab")  # too short a prefix to mean anything


def test_one_id_for_two_swarms_is_ambiguous_until_named_by_hash() -> None:
    catalog = Catalog()
    catalog.add(advert(peer="A"))
    catalog.add(advert(peer="B", task_hash=bytes.fromhex("ff" * 16), algorithm="choco"))
    with pytest.raises(AmbiguousTask, match="pick one by its hash"):
        select(catalog.offers(), "mnist")
    assert select(catalog.offers(), "ffff").algorithm == "choco"


# -- what is served, what is accepted --------------------------------------------------------------------


def test_a_daemon_serves_exactly_the_bytes_it_loaded(tmp_path: Path) -> None:
    path = tmp_path / "t.toml"
    path.write_bytes(OPEN_TEXT.encode())
    task = loader.load_task(path)
    assert shared_file(task) == path.read_bytes()


def test_closed_changed_and_textless_tasks_are_never_served() -> None:
    task = parse_task(OPEN_TEXT, base_dir=DEFAULT_TASK.parent)
    closed = parse_task(OPEN_TEXT + '\n[access]\nkey_env = "K"\n', base_dir=DEFAULT_TASK.parent)
    with pytest.raises(NotShareable, match="closed"):
        shared_file(closed)
    # A task run with other settings than its file's (as `gossipd simulate --rank` makes) is not that file.
    with pytest.raises(NotShareable, match="settings its file does not have"):
        shared_file(with_gossip(task, "powergossip", {"rank": 4}))
    with pytest.raises(NotShareable, match="not read from a file"):
        shared_file(dataclasses.replace(task, text=""))
    assert share(closed, ModelSummary(1, (1,)), peer="A", addresses=[], live_peers=0) is None


def test_a_fetched_file_must_be_the_advertised_task(tmp_path: Path) -> None:
    task = parse_task(OPEN_TEXT, base_dir=DEFAULT_TASK.parent)
    text = OPEN_TEXT.encode()
    fetched = check_fetched(text, advertised=task.hash, file="f.toml", base_dir=tmp_path, data_root=tmp_path)
    assert fetched.hash == task.hash
    assert fetched.data.base_dir == tmp_path  # the user's data folder, not the serving peer's
    other = text.replace(b"[gossip]", b"[gossip]\nmax_rank = 3", 1)
    with pytest.raises(FetchedTaskRejected, match="not the advertised"):
        check_fetched(other, advertised=task.hash, file="f.toml", base_dir=tmp_path, data_root=None)
    with pytest.raises(FetchedTaskRejected, match="not valid"):
        check_fetched(b"[task]\nid = 3\n", advertised=task.hash, file="f.toml", base_dir=tmp_path, data_root=None)
    closed = text + b'\n[access]\nkey_env = "K"\n'
    closed_hash = parse_task(closed.decode(), base_dir=DEFAULT_TASK.parent).hash
    with pytest.raises(FetchedTaskRejected, match="closed"):
        check_fetched(closed, advertised=closed_hash, file="f.toml", base_dir=tmp_path, data_root=None)


def test_data_and_code_a_fetched_task_asks_of_this_machine(tmp_path: Path) -> None:
    embedded = parse_task(OPEN_TEXT, base_dir=DEFAULT_TASK.parent)
    assert not needs_data_root(embedded)
    own = parse_task(OPEN_TEXT.replace('root = "embedded:mnist"', 'root = "/srv/mnist"'), base_dir=tmp_path)
    assert needs_data_root(own)
    assert imported_code(embedded) == []
    custom = OPEN_TEXT.replace('name = "cnn"', 'name = "custom"\nfunction = "evil.module:build"')
    assert imported_code(parse_task(custom, base_dir=DEFAULT_TASK.parent)) == ["evil.module:build"]


def test_the_new_daemon_bootstraps_through_the_serving_peer() -> None:
    mine = ("/ip4/192.0.2.9/tcp/1/p2p/B",)
    offered = ("/ip4/0.0.0.0/tcp/4/p2p/A", "/ip4/192.0.2.1/tcp/4/p2p/A", "/ip4/192.0.2.1/tcp/4/p2p/X")
    assert serving_bootstrap(mine, "A", offered) == (*mine, "/ip4/192.0.2.1/tcp/4/p2p/A")
    assert serving_bootstrap(("/ip4/192.0.2.1/tcp/4/p2p/A",), "A", offered) == ("/ip4/192.0.2.1/tcp/4/p2p/A",)


# -- the service and the finder on the in-memory network -------------------------------------------------


@pytest.fixture
async def hub() -> AsyncIterator[FakeHub]:
    async with trio.open_nursery() as nursery:
        yield FakeHub(nursery, random.Random(0), latency=0.01)
        nursery.cancel_scope.cancel()


def serving(network: FakeNetwork, tasks: list[SharedTask], nursery: trio.Nursery) -> TaskSharingService:
    service = TaskSharingService(network=network, shared=lambda: tasks, interval=10.0, first_delay=0.5)
    network.set_handler(TASKS_PROTOCOL, service.serve)
    nursery.start_soon(service.run)
    return service


def offered(network: FakeNetwork, task_id: str, task_hash: bytes, text: bytes = b"x") -> SharedTask:
    return SharedTask(
        advert(task_id=task_id, task_hash=task_hash, peer=network.peer_id, addresses=tuple(network.addresses())),
        text,
    )


async def test_a_client_finds_the_tasks_offered_and_fetches_a_file(hub: FakeHub, autojump_clock: Any) -> None:
    daemon, other, client = hub.add_peer(), hub.add_peer(), hub.add_peer()
    mine = offered(daemon, "mnist", HASH, b"[task]\nid = 'mnist'\n")
    serving(daemon, [mine], hub.nursery)
    serving(other, [offered(other, "mnist", HASH), offered(other, "cifar", bytes(16))], hub.nursery)
    await trio.sleep(1.0)  # both have advertised and provided; their next adverts come after the search
    with trio.fail_after(30):
        catalog = await find_tasks(client, bootstrap=daemon.addresses(), listen_for=2.0)
        offers = {o.task_id: o for o in catalog.offers()}
        assert set(offers) == {"mnist", "cifar"}  # `other` was found through the DHT, not bootstrap
        assert {a.peer for a in offers["mnist"].offered_by} == {daemon.peer_id, other.peer_id}
        assert catalog.rejections == {}
        text = await fetch_task_file(client, PeerAddress(daemon.peer_id, ()), HASH)
        assert text == mine.file
        with pytest.raises(Refused):
            await fetch_task_file(client, PeerAddress(daemon.peer_id, ()), bytes(16))


async def test_pubsub_adverts_alone_are_found_and_forged_ones_counted(hub: FakeHub, autojump_clock: Any) -> None:
    daemon, forger, client = hub.add_peer(), hub.add_peer(), hub.add_peer()
    serving(daemon, [offered(daemon, "mnist", HASH)], hub.nursery)
    daemon.set_handler(TASKS_PROTOCOL, lambda stream: stream.reset())  # no stream answers: pubsub only

    async def forge() -> None:
        await trio.sleep(0.6)
        await forger.publish(TASKS_TOPIC, encode_advert(advert(peer=daemon.peer_id, task_id="fake")))
        await forger.publish(TASKS_TOPIC, b"\x91garbage")

    hub.nursery.start_soon(forge)
    with trio.fail_after(30):
        catalog = await find_tasks(client, bootstrap=(), listen_for=3.0)
    assert [o.task_id for o in catalog.offers()] == ["mnist"]
    assert catalog.rejections == {"advert-wrong-signer": 1, "advert-malformed": 1}


async def test_garbage_requests_are_counted_and_the_service_carries_on(hub: FakeHub, autojump_clock: Any) -> None:
    daemon, client = hub.add_peer(), hub.add_peer()
    service = serving(daemon, [offered(daemon, "mnist", HASH)], hub.nursery)
    with trio.fail_after(30):
        for garbage in (b"\xc1", msgpack.packb({"v": 1, "type": "delete"}), b"\x00" * 200):
            stream = await client.open_stream(daemon.peer_id, TASKS_PROTOCOL)
            await stream.send(garbage)
            with pytest.raises(Exception):  # noqa: B017, PT011 - reset or closed: either ends it
                await stream.receive(1 << 20)
        catalog = await find_tasks(client, bootstrap=daemon.addresses(), listen_for=1.0)
    assert [o.task_id for o in catalog.offers()] == ["mnist"]
    statistics = service.statistics()
    assert statistics.rejections == {"request-malformed": 1, "request-unknown-type": 1, "request-FrameTooLarge": 1}
    assert statistics.offered == ("mnist",)
    assert statistics.files_served == 0


async def test_no_reachable_bootstrap_is_an_error(hub: FakeHub, autojump_clock: Any) -> None:
    client = hub.add_peer()
    with trio.fail_after(30), pytest.raises(NoPeerReachable):
        await find_tasks(client, bootstrap=["/memory/gone/p2p/12D3KooWGone"], listen_for=1.0)


# -- the command line, short of the network ------------------------------------------------------------


def test_the_discover_table_shows_each_task_once_with_its_peers() -> None:
    catalog = Catalog()
    catalog.add(advert(peer="A", peers=4))
    catalog.add(advert(peer="B"))
    lines = format_offers(catalog.offers()).splitlines()
    assert lines[0].split() == ["TASK", "HASH", "PEERS", "SWARM", "MODEL", "ALGORITHM", "DESCRIPTION"]
    assert lines[1].split() == ["mnist", HASH.hex()[:12], "2", "5", "mlp", "25,450", "params,", "input", "1x28x28",
                                "powergossip", "digits"]  # fmt: skip


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (["join", str(DEFAULT_TASK), "--from", "mnist"], "not both"),
        (["join"], "give TASK_FILE, or --from TASK"),
        (["join", str(DEFAULT_TASK), "--yes", "--timeout", "2"], "--timeout, --yes only go with --from"),
        (["join", "--from", "mnist", "--bootstrap", "/ip4/127.0.0.1/tcp/1"], "ending in /p2p/<peer id>"),
        (["discover", "--bootstrap", "127.0.0.1:4001"], "ending in /p2p/<peer id>"),
    ],
)
def test_join_and_discover_usage_errors(args: list[str], message: str) -> None:
    result = CliRunner().invoke(main, args)
    assert result.exit_code == 2, result.output
    assert message in result.output


def test_status_says_what_the_daemon_offers() -> None:
    status = {"peer_id": "P", "addresses": [], "uptime_s": 5, "version": "0", "tasks": []}
    sharing = {"offered": ["mnist", "cifar"], "files_served": 1, "rejections": {}}
    assert "offers    mnist, cifar (1 task file served)" in format_status(status | {"sharing": sharing})
    closed_only = {"offered": [], "files_served": 0, "rejections": {}}
    assert "offers    no open task (0 task files served)" in format_status(status | {"sharing": closed_only})


async def test_members_of_one_swarm_take_turns_advertising_its_task(hub: FakeHub, autojump_clock: Any) -> None:
    """Four daemons offer the same task: the topic carries about one advert of it per interval, not four;
    a task only one of them offers is still advertised every interval."""
    daemons = [hub.add_peer() for _ in range(4)]
    listener = hub.add_peer()
    heard = await listener.subscribe(TASKS_TOPIC)
    services = []
    for index, network in enumerate(daemons):
        tasks = [offered(network, "mnist", HASH)] + ([offered(network, "cifar", bytes(16))] if index == 0 else [])
        service = TaskSharingService(
            network=network, shared=tasks.copy, interval=10.0, first_delay=0.5, rng=random.Random(index)
        )
        services.append(service)
        hub.nursery.start_soon(service.run)
    counts: dict[bytes, int] = {}

    async def count() -> None:
        async for message in heard:
            task_hash = decode_advert(message.data).task_hash
            counts[task_hash] = counts.get(task_hash, 0) + 1

    hub.nursery.start_soon(count)
    await trio.sleep(200.0)  # 20 intervals
    assert counts[bytes(16)] >= 18  # the lone offer, every interval (jittered)
    assert 15 <= counts[HASH] <= 30, counts  # not 80
    assert sum(service.adverts_sent for service in services) == sum(counts.values())
