"""The control API end to end: the h11 server on a real Unix socket, the routes over a fake backend, and the
stdlib client, plus raw HTTP (spoken with h11's client side) for what the client never sends."""

from __future__ import annotations

import contextlib
import dataclasses
import functools
import importlib.metadata
import json
import logging
import math
import shutil
import socket
import stat
import tempfile
from collections.abc import Callable, Iterator, Sequence
from pathlib import Path
from typing import Any, TypeVar

import h11
import pytest
import trio
from prometheus_client.parser import text_string_to_metric_families

import gossipd.client
from gossipd.adapters.http_unix import HttpLimits, Request, Response, SocketInUseError, serve_unix_http
from gossipd.client import ControlClient
from gossipd.services.control import ControlError, ErrorCode, JoinRequest
from gossipd.services.control_api import JOIN_FIELD_TYPES, control_handler
from gossipd.services.network import RelayOffer, RelayStatus
from gossipd.services.status import (
    ContributionStatus,
    DaemonStatus,
    LinkStatus,
    PeerStatus,
    TaskState,
    TaskStatus,
    to_json,
)

T = TypeVar("T")
MODEL_BYTES = b"\x08\x00\x00\x00\x00\x00\x00\x00{}      " + bytes(range(256)) * 4


# --- a fake daemon -------------------------------------------------------------------------------------------


def make_peer(
    peer_id: str, *, in_view: bool, step: int | None = 1190, last_heard: float | None = 1_700_000_000.0
) -> PeerStatus:
    return PeerStatus(
        peer_id=peer_id,
        addresses=("/ip4/10.0.0.2/tcp/4001",),
        sources=("bootstrap", "dht"),
        first_seen=1_699_999_000.0,
        last_heard=last_heard,
        in_view=in_view,
        step=step,
        loss=0.31 if step is not None else None,
        exchanges=40,
        failures=2,
        last_exchange=1_699_999_990.0,
        distance=0.0456 if in_view else None,
        backoff_until=None,
        reached="relayed" if in_view else None,
        past_budget=in_view,
    )


def make_task(task_id: str, **changes: Any) -> TaskStatus:
    task = TaskStatus(
        id=task_id,
        hash="00112233445566778899aabbccddeeff",
        state=TaskState.TRAINING,
        error=None,
        algorithm="powergossip",
        settings={"rank": 2, "iterations": 1},
        device="cpu",
        step=1200,
        samples=76_800,
        samples_per_second=640.5,
        loss=0.25,
        accuracy=0.9312,
        validation_loss=0.27,
        evaluated_at_step=1000,
        exchanges=340,
        failed_exchanges=3,
        exchanges_in_flight=1,
        bytes_sent=12_345_678,
        bytes_received=12_000_000,
        compression_ratio=31.5,
        consensus_distance=0.0123,
        state_transfers=1,
        last_checkpoint=1_699_999_900.0,
        rejections={"wrong-task": 3, "too-large": 1},
        clipped_exchanges=12,
        momentum_mixes=7,
        repeats_skipped=5,
        suspects=1,
        pull_declined=2,
        mix_per_step=0.31,
        mix_wait_seconds=4.5,
        peers=(
            make_peer("12D3KooWAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAApeerone1", in_view=True),
            make_peer(
                "12D3KooWBBBBBBBBBBBBBBBBBBBBBBBBBBBBBBBBBBBBBBBBpeertwo2", in_view=False, step=None, last_heard=None
            ),
        ),
        ledger=(
            ContributionStatus(
                peer_id="12D3KooWAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAApeerone1",
                live=True,
                first_seen=1_699_990_000.0,
                last_seen=1_699_999_990.0,
                seen_seconds=9_000.0,
                started=25,
                answered=15,
                failed=2,
                bytes_sent=1_500_000,
                bytes_received=1_400_000,
                state_bytes_sent=0,
                state_bytes_received=1_000_000,
                rejections={"non-finite": 1},
                declared_step=1190,
                declared_dataset=15_000,
            ),
        ),
    )
    return dataclasses.replace(task, **changes)


PEER_ONE = "12D3KooWAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAApeerone1"
PEER_TWO = "12D3KooWBBBBBBBBBBBBBBBBBBBBBBBBBBBBBBBBBBBBBBBBpeertwo2"


def make_link(peer_id: str, mode: str, bytes_per_second: float | None, **changes: Any) -> LinkStatus:
    link = LinkStatus(
        peer_id=peer_id,
        mode=mode,
        reason=f"{mode}: rank 2 took 3 ms, {mode} predicted 6 ms of a 125 ms budget",
        exchanges=40,
        exchanges_per_second=1.95,
        exchange_ms=6.5,
        budget_ms=125.0,
        bytes_per_second=bytes_per_second,
    )
    return dataclasses.replace(link, **changes)


def make_auto_task(task_id: str = "mnist") -> TaskStatus:
    """An auto task with three edges: two at rank 4, one sending whole models (a departed neighbour's edge
    stays until the view drops it, so one link has no peer line)."""
    links = (
        make_link(PEER_ONE, "rank 4", 2_000_000.0, captured=0.0412),
        make_link(
            PEER_TWO, "full", 8_000_000.0, exchanges=12, exchanges_per_second=None, exchange_ms=48.0, captured=1.0
        ),
        make_link("12D3KooWCCCCCCCCCCCCCCCCCCCCCCCCCCCCCCCCCCCCCCCCpeerthr3", "rank 4", 5_000_000.0),
    )
    return make_task(task_id, algorithm="auto", settings={"max_rank": 16}, links=links, exchange_budget_ms=125.0)


def make_status() -> DaemonStatus:
    failed = make_task(
        "cifar",
        state=TaskState.FAILED,
        error="no CUDA device",
        step=0,
        samples=0,
        samples_per_second=0.0,
        loss=None,
        accuracy=None,
        validation_loss=None,
        evaluated_at_step=None,
        compression_ratio=None,
        consensus_distance=None,
        rejections={},
        peers=(),
        ledger=(),
    )
    return DaemonStatus(
        peer_id="12D3KooWSelfSelfSelfSelfSelfSelfSelfSelfSelf",
        addresses=("/ip4/127.0.0.1/tcp/4001", "/ip6/::1/tcp/4001"),
        version="0.1.0",
        uptime_s=3723.0,
        state_dir="/home/me/.local/state/gossipd",
        socket="/run/user/1000/gossipd/gossipd.sock",
        tasks=(make_task("mnist"), failed),
        relay=RelayStatus(
            offering=RelayOffer(max_reservations=16, max_circuits=4, max_circuit_bytes=500_000_000),
            reachability="auto",
            needs_relay=True,
            reservations=("12D3KooWRRRRRRRRRRRRRRRRRRRRRRRRRRRRRRRRRRRRRRRRrelay1",),
            reservations_served=3,
            relayed_dials=2,
            refused_reservations=0,
        ),
    )


class FakeBackend:
    def __init__(self) -> None:
        self.daemon = make_status()
        self.stopping = False
        self.failure: Exception | None = None
        self.joined: list[JoinRequest] = []
        self.left: list[str] = []

    @property
    def shutting_down(self) -> bool:
        return self.stopping

    def status(self) -> DaemonStatus:
        if self.failure is not None:
            raise self.failure
        return self.daemon

    def task_status(self, task_id: str) -> TaskStatus:
        for task in self.daemon.tasks:
            if task.id == task_id:
                return task
        raise ControlError(ErrorCode.TASK_NOT_FOUND, f"no task {task_id!r}")

    async def join(self, request: JoinRequest) -> TaskStatus:
        await trio.lowlevel.checkpoint()
        self.joined.append(request)
        return make_task("joined", state=TaskState.LOADING, peers=())

    async def leave(self, task_id: str) -> None:
        self.task_status(task_id)
        await trio.lowlevel.checkpoint()
        self.left.append(task_id)

    async def export_model(self, task_id: str) -> bytes:
        self.task_status(task_id)
        await trio.lowlevel.checkpoint()
        return MODEL_BYTES


# --- servers and clients -------------------------------------------------------------------------------------


@contextlib.contextmanager
def short_socket_dir() -> Iterator[Path]:
    """A folder under /tmp: pytest's tmp_path can push a socket path past the ~107-byte AF_UNIX limit."""
    folder = Path(tempfile.mkdtemp(dir="/tmp", prefix="gd-"))
    try:
        yield folder
    finally:
        shutil.rmtree(folder, ignore_errors=True)


async def start_server(
    nursery: trio.Nursery, path: Path, backend: FakeBackend, limits: HttpLimits | None = None
) -> None:
    serve = functools.partial(serve_unix_http, path, control_handler(backend), limits=limits or HttpLimits())
    await nursery.start(serve)


async def in_thread(function: Callable[..., T], *args: Any) -> T:
    return await trio.to_thread.run_sync(functools.partial(function, *args))


def names(folder: Path) -> list[str]:
    return sorted(path.name for path in folder.iterdir())


def mode(path: Path) -> int:
    return path.stat().st_mode


@pytest.fixture
def sock_dir() -> Iterator[Path]:
    with short_socket_dir() as folder:
        yield folder


@pytest.fixture
def backend() -> FakeBackend:
    return FakeBackend()


@pytest.fixture
async def socket_path(nursery: trio.Nursery, sock_dir: Path, backend: FakeBackend) -> Path:
    path = sock_dir / "run" / "gossipd.sock"
    await start_server(nursery, path, backend)
    return path


@pytest.fixture
def client(socket_path: Path) -> ControlClient:
    return ControlClient(socket_path, timeout=10)


@dataclasses.dataclass
class Reply:
    status: int
    headers: dict[str, str]
    body: bytes

    def json(self) -> Any:
        return json.loads(self.body)

    @property
    def code(self) -> str:
        return str(self.json()["error"]["code"])


async def receive_reply(stream: trio.SocketStream, conn: h11.Connection) -> Reply:
    head: h11.Response | None = None
    body = b""
    while True:
        event = conn.next_event()
        if event is h11.NEED_DATA:
            conn.receive_data(await stream.receive_some(65536))
        elif isinstance(event, h11.Response):
            head = event
        elif isinstance(event, h11.Data):
            body += event.data
        elif isinstance(event, h11.EndOfMessage) and head is not None:
            headers = {k.decode(): v.decode() for k, v in head.headers}
            return Reply(head.status_code, headers, body)
        else:
            raise AssertionError(f"unexpected {event!r}")


async def send_request(
    stream: trio.SocketStream,
    conn: h11.Connection,
    method: str,
    target: str,
    body: bytes | None = None,
    headers: Sequence[tuple[str, str]] = (),
) -> None:
    all_headers = [("host", "gossipd"), *headers]
    if body is not None and not any(name == "transfer-encoding" for name, _ in headers):
        all_headers.append(("content-length", str(len(body))))
    data = conn.send(h11.Request(method=method, target=target, headers=all_headers)) or b""
    if body:
        data += conn.send(h11.Data(data=body)) or b""
    data += conn.send(h11.EndOfMessage()) or b""
    await stream.send_all(data)


async def request(path: Path, method: str, target: str, body: bytes | None = None, **kwargs: Any) -> Reply:
    conn = h11.Connection(h11.CLIENT)
    async with await trio.open_unix_socket(str(path)) as stream:
        await send_request(stream, conn, method, target, body, **kwargs)
        return await receive_reply(stream, conn)


async def wait_closed(stream: trio.SocketStream) -> None:
    while await stream.receive_some(65536):
        pass


# --- every endpoint --------------------------------------------------------------------------------------------


async def test_status(client: ControlClient, backend: FakeBackend) -> None:
    assert await in_thread(client.status) == to_json(backend.daemon)


async def test_peers_carry_their_task(client: ControlClient, backend: FakeBackend) -> None:
    peers = (await in_thread(client.peers))["peers"]
    expected = [{"task": "mnist", **to_json(peer)} for peer in backend.daemon.tasks[0].peers]
    assert peers == expected


async def test_tasks_leave_out_peers_but_one_task_has_them(client: ControlClient, backend: FakeBackend) -> None:
    backend.daemon = dataclasses.replace(backend.daemon, tasks=(make_auto_task(), backend.daemon.tasks[1]))
    tasks = (await in_thread(client.tasks))["tasks"]
    assert [task["id"] for task in tasks] == ["mnist", "cifar"]
    assert all(not {"peers", "ledger", "links"} & set(task) for task in tasks)
    assert tasks[0]["exchange_budget_ms"] == 125.0
    assert tasks[0]["rejections"] == {"wrong-task": 3, "too-large": 1}
    assert await in_thread(client.task, "mnist") == to_json(backend.daemon.tasks[0])
    assert [link["mode"] for link in (await in_thread(client.task, "mnist"))["links"]] == ["rank 4", "full", "rank 4"]


async def test_peers_carry_each_auto_edge_with_its_task(client: ControlClient, backend: FakeBackend) -> None:
    assert (await in_thread(client.peers))["links"] == []  # not an auto task
    backend.daemon = dataclasses.replace(backend.daemon, tasks=(make_auto_task(), backend.daemon.tasks[1]))
    links = (await in_thread(client.peers))["links"]
    assert [(link["task"], link["peer_id"], link["mode"]) for link in links] == [
        ("mnist", PEER_ONE, "rank 4"),
        ("mnist", PEER_TWO, "full"),
        ("mnist", "12D3KooWCCCCCCCCCCCCCCCCCCCCCCCCCCCCCCCCCCCCCCCCpeerthr3", "rank 4"),
    ]
    assert links[1] == {"task": "mnist", **to_json(backend.daemon.tasks[0].links[1])}
    assert links[1]["exchange_ms"] == 48.0 and links[1]["exchanges_per_second"] is None


async def test_join(client: ControlClient, socket_path: Path, backend: FakeBackend) -> None:
    request = JoinRequest(path="/srv/tasks/mnist.toml", data="/srv/data", peer_index=1, peer_count=4)
    task = await in_thread(client.join, request)
    assert task["id"] == "joined" and task["state"] == "loading"
    assert backend.joined == [request]
    reply = await request_json(socket_path, "POST", "/v1/tasks", {"toml": "[task]\nid = 'x'\n", "base_dir": "/srv"})
    assert reply.status == 201 and reply.headers["location"] == "/v1/tasks/joined"
    assert backend.joined[1] == JoinRequest(toml="[task]\nid = 'x'\n", base_dir="/srv")


async def test_leave(client: ControlClient, backend: FakeBackend) -> None:
    assert await in_thread(client.leave, "mnist") == {"left": "mnist"}
    assert backend.left == ["mnist"]


async def test_model(client: ControlClient, socket_path: Path) -> None:
    assert await in_thread(client.model, "mnist") == MODEL_BYTES
    reply = await request(socket_path, "GET", "/v1/tasks/mnist/model")
    assert reply.headers["content-type"] == "application/octet-stream" and reply.body == MODEL_BYTES


async def test_version(client: ControlClient) -> None:
    assert await in_thread(client.version) == {"api": "v1", "version": importlib.metadata.version("gossipd")}


async def test_metrics(client: ControlClient, socket_path: Path) -> None:
    families = {family.name: family for family in text_string_to_metric_families(await in_thread(client.metrics))}

    def value(name: str, **labels: str) -> float:
        found = [s.value for s in families[name].samples if s.labels == labels]
        assert len(found) == 1, f"{name}{labels}: {found}"
        return found[0]

    assert value("gossipd_uptime_seconds") == 3723.0
    assert value("gossipd_training_steps", task="mnist") == 1200
    assert value("gossipd_training_samples", task="mnist") == 76_800
    assert value("gossipd_training_loss", task="mnist") == 0.25
    assert value("gossipd_validation_accuracy", task="mnist") == 0.9312
    assert value("gossipd_exchanges", task="mnist", result="ok") == 340
    assert value("gossipd_exchanges", task="mnist", result="failed") == 3
    assert value("gossipd_exchanges_in_flight", task="mnist") == 1
    assert value("gossipd_bytes_sent", task="mnist") == 12_345_678
    assert value("gossipd_bytes_received", task="mnist") == 12_000_000
    assert value("gossipd_compression_ratio", task="mnist") == 31.5
    assert value("gossipd_consensus_distance", task="mnist") == 0.0123
    assert value("gossipd_peers", task="mnist", state="known") == 2
    assert value("gossipd_peers", task="mnist", state="in_view") == 1
    assert value("gossipd_peers_reached", task="mnist", via="relayed") == 1
    assert value("gossipd_peers_reached", task="mnist", via="direct") == 0
    assert value("gossipd_relay_reservations") == 1
    assert value("gossipd_relay_reservations_served") == 3
    assert value("gossipd_relayed_dials") == 2
    assert value("gossipd_state_transfers", task="mnist") == 1
    assert value("gossipd_rejections", task="mnist", reason="wrong-task") == 3
    assert value("gossipd_samples_per_second", task="mnist") == 640.5
    assert value("gossipd_clipped_exchanges", task="mnist") == 12
    assert value("gossipd_suspects", task="mnist") == 1
    assert value("gossipd_momentum_mixes", task="mnist") == 7
    assert value("gossipd_repeats_skipped", task="mnist") == 5
    assert value("gossipd_pull_declined", task="mnist") == 2
    assert value("gossipd_mix_wait_seconds", task="mnist") == 4.5
    assert value("gossipd_mix_per_step", task="mnist") == 0.31
    assert value("gossipd_ledger_exchanges", task="mnist", started_by="neighbour") == 25
    assert value("gossipd_ledger_exchanges", task="mnist", started_by="self") == 15
    assert value("gossipd_ledger_neighbours", task="mnist") == 1
    assert value("gossipd_neighbours_declared_examples", task="mnist") == 15_000
    assert value("gossipd_ledger_rejected_messages", task="mnist") == 1
    assert value("gossipd_training_steps", task="cifar") == 0
    # None is left out, not exported as 0 or NaN.
    assert all(s.labels["task"] != "cifar" for s in families["gossipd_training_loss"].samples)
    assert "gossipd_compression_ratio" in families
    # Not auto tasks: no budget, no edge modes, no link rate.
    assert not {"gossipd_edges_by_mode", "gossipd_exchange_budget_seconds", "gossipd_link_bytes_per_second"} & set(
        families
    )
    reply = await request(socket_path, "GET", "/metrics")
    assert reply.headers["content-type"].startswith("text/plain; version=0.0.4")


async def test_metrics_count_an_auto_tasks_edges_by_mode(client: ControlClient, backend: FakeBackend) -> None:
    backend.daemon = dataclasses.replace(backend.daemon, tasks=(make_auto_task(), backend.daemon.tasks[1]))
    families = {family.name: family for family in text_string_to_metric_families(await in_thread(client.metrics))}
    by_mode = {s.labels["mode"]: s.value for s in families["gossipd_edges_by_mode"].samples}
    assert by_mode == {"rank 4": 2, "full": 1}
    assert all(s.labels["task"] == "mnist" for s in families["gossipd_edges_by_mode"].samples)
    [budget] = families["gossipd_exchange_budget_seconds"].samples
    assert budget.labels == {"task": "mnist"} and budget.value == pytest.approx(0.125)
    [rate] = families["gossipd_link_bytes_per_second"].samples
    assert rate.labels == {"task": "mnist"} and rate.value == 5_000_000.0  # the median of 2, 8 and 5 MB/s
    # No per-peer series: a peer id never becomes a label.
    peer_ids = {link.peer_id for link in backend.daemon.tasks[0].links}
    assert not any(peer_ids & set(s.labels.values()) for f in families.values() for s in f.samples)


async def test_link_rate_leaves_out_edges_not_measured(client: ControlClient, backend: FakeBackend) -> None:
    auto = make_auto_task()
    unmeasured = dataclasses.replace(
        auto, links=tuple(dataclasses.replace(link, bytes_per_second=None) for link in auto.links)
    )
    backend.daemon = dataclasses.replace(backend.daemon, tasks=(unmeasured,))
    families = {family.name: family for family in text_string_to_metric_families(await in_thread(client.metrics))}
    assert "gossipd_link_bytes_per_second" not in families
    assert sum(s.value for s in families["gossipd_edges_by_mode"].samples) == 3


async def test_non_finite_numbers_become_null(client: ControlClient, backend: FakeBackend) -> None:
    backend.daemon = dataclasses.replace(backend.daemon, tasks=(make_task("mnist", loss=math.nan),))
    assert (await in_thread(client.status))["tasks"][0]["loss"] is None


# --- errors ------------------------------------------------------------------------------------------------------


async def request_json(path: Path, method: str, target: str, data: Any) -> Reply:
    return await request(path, method, target, json.dumps(data).encode())


async def test_unknown_task_is_404(client: ControlClient, socket_path: Path) -> None:
    with pytest.raises(ControlError) as caught:
        await in_thread(client.task, "nope")
    assert caught.value.code is ErrorCode.TASK_NOT_FOUND and "nope" in caught.value.message
    for method, target in [("GET", "/v1/tasks/nope"), ("DELETE", "/v1/tasks/nope"), ("GET", "/v1/tasks/nope/model")]:
        reply = await request(socket_path, method, target)
        assert (reply.status, reply.code) == (404, "task-not-found")


async def test_task_ids_are_percent_encoded(client: ControlClient) -> None:
    with pytest.raises(ControlError, match=r"'a/b c'"):
        await in_thread(client.task, "a/b c")


@pytest.mark.parametrize("target", ["/", "/v2/status", "/v1/status/extra", "/v1//status", "/v1/tasks/x/weights"])
async def test_unknown_path_is_404(socket_path: Path, target: str) -> None:
    reply = await request(socket_path, "GET", target)
    assert (reply.status, reply.code) == (404, "not-found")


@pytest.mark.parametrize(
    ("method", "target", "allow"),
    [("PUT", "/v1/status", "GET"), ("POST", "/v1/tasks/mnist", "DELETE, GET"), ("DELETE", "/v1/tasks", "GET, POST")],
)
async def test_wrong_method_is_405(socket_path: Path, method: str, target: str, allow: str) -> None:
    reply = await request(socket_path, method, target)
    assert (reply.status, reply.code, reply.headers["allow"]) == (405, "method-not-allowed", allow)


async def test_head_is_answered_without_a_body(socket_path: Path) -> None:
    conn = h11.Connection(h11.CLIENT)
    async with await trio.open_unix_socket(str(socket_path)) as stream:
        await send_request(stream, conn, "HEAD", "/v1/status")
        assert (await receive_reply(stream, conn)).status == 405
        conn.start_next_cycle()
        await send_request(stream, conn, "GET", "/v1/status")
        assert (await receive_reply(stream, conn)).status == 200


@pytest.mark.parametrize(
    "body",
    [
        b"{not json",
        b"",
        b"[" * 100_000,
        b'["/srv/task.toml"]',
        b'{"path": "/srv/task.toml", "gpu": true}',
        b'{"path": "/srv/task.toml", "toml": "[task]"}',
        b'{"data": "/srv/data"}',
        b'{"path": 3}',
        b'{"path": "/srv/task.toml", "peer_index": "1", "peer_count": 2}',
        b'{"path": "/srv/task.toml", "peer_index": true, "peer_count": 2}',
        b'{"path": "/srv/task.toml", "peer_index": 1}',
        b'{"path": "/srv/task.toml", "peer_index": 2, "peer_count": 2}',
        b'{"path": "task.toml"}',
        b'{"toml": "[task]", "base_dir": "relative/dir"}',
    ],
)
async def test_bad_join_is_400(socket_path: Path, backend: FakeBackend, body: bytes) -> None:
    reply = await request(socket_path, "POST", "/v1/tasks", body)
    assert (reply.status, reply.code) == (400, "bad-request")
    assert backend.joined == []


def test_join_field_types_cover_join_request() -> None:
    assert set(JOIN_FIELD_TYPES) == {field.name for field in dataclasses.fields(JoinRequest)}


async def test_declared_body_over_limit_is_413(socket_path: Path, backend: FakeBackend) -> None:
    conn = h11.Connection(h11.CLIENT)
    async with await trio.open_unix_socket(str(socket_path)) as stream:
        headers = [("host", "gossipd"), ("content-length", str(2 * 1024 * 1024))]
        await stream.send_all(conn.send(h11.Request(method="POST", target="/v1/tasks", headers=headers)) or b"")
        reply = await receive_reply(stream, conn)  # answered without waiting for the 2 MiB
        assert (reply.status, reply.code) == (413, "payload-too-large")
        await wait_closed(stream)
    assert backend.joined == []


async def test_chunked_body_over_limit_is_413(nursery: trio.Nursery, sock_dir: Path, backend: FakeBackend) -> None:
    path = sock_dir / "small.sock"
    await start_server(nursery, path, backend, HttpLimits(max_body_bytes=1000))
    body = json.dumps({"toml": "#" * 2000}).encode()
    reply = await request(path, "POST", "/v1/tasks", body, headers=[("transfer-encoding", "chunked")])
    assert (reply.status, reply.code) == (413, "payload-too-large")
    small = await request_json(path, "POST", "/v1/tasks", {"path": "/srv/t.toml"})
    assert small.status == 201


async def test_oversized_headers_are_refused(socket_path: Path, client: ControlClient) -> None:
    reply = await request(socket_path, "GET", "/v1/status", headers=[("x-junk", "a" * 100_000)])
    assert reply.status == 431 and reply.code == "bad-request"
    assert (await in_thread(client.status))["peer_id"]


async def test_changes_refused_while_shutting_down(
    client: ControlClient, socket_path: Path, backend: FakeBackend
) -> None:
    backend.stopping = True
    with pytest.raises(ControlError) as caught:
        await in_thread(client.join, JoinRequest(path="/srv/t.toml"))
    assert caught.value.code is ErrorCode.SHUTTING_DOWN
    reply = await request(socket_path, "DELETE", "/v1/tasks/mnist")
    assert (reply.status, reply.code) == (503, "shutting-down")
    assert backend.joined == [] and backend.left == []
    assert (await in_thread(client.status))["peer_id"]
    assert await in_thread(client.model, "mnist") == MODEL_BYTES


async def test_backend_failure_is_500_and_logged(
    client: ControlClient, backend: FakeBackend, caplog: pytest.LogCaptureFixture
) -> None:
    backend.failure = RuntimeError("disk on fire")
    with caplog.at_level(logging.ERROR, logger="gossipd.control"), pytest.raises(ControlError) as caught:
        await in_thread(client.status)
    assert caught.value.code is ErrorCode.INTERNAL
    assert any("disk on fire" in (record.exc_text or "") for record in caplog.records)
    backend.failure = None
    assert (await in_thread(client.status))["peer_id"]


async def test_handler_crash_is_500_not_a_dead_server(nursery: trio.Nursery, sock_dir: Path) -> None:
    async def fragile(request: Request) -> Response:
        await trio.lowlevel.checkpoint()
        if request.path == "/crash":
            raise ValueError("bug")
        return Response(200, b"{}")

    path = sock_dir / "fragile.sock"
    await nursery.start(serve_unix_http, path, fragile)
    reply = await request(path, "GET", "/crash")
    assert (reply.status, reply.code) == (500, "internal")
    assert (await request(path, "GET", "/fine")).status == 200


async def test_curl(socket_path: Path) -> None:
    curl = shutil.which("curl")
    if curl is None:
        pytest.skip("curl is not installed")
    done = await trio.run_process(
        [curl, "-sS", "--unix-socket", str(socket_path), "http://gossipd/v1/status"], capture_stdout=True
    )
    assert json.loads(done.stdout)["peer_id"].startswith("12D3KooW")
    body = json.dumps({"path": "/srv/t.toml", "toml": "#" * 2000})
    done = await trio.run_process(
        [curl, "-sS", "--unix-socket", str(socket_path), "-w", "\n%{http_code}", "-d", body, "http://gossipd/v1/tasks"],
        capture_stdout=True,
    )
    error, status = done.stdout.decode().rsplit("\n", 1)
    assert status == "400" and json.loads(error)["error"]["code"] == "bad-request"


# --- the socket --------------------------------------------------------------------------------------------------


async def test_socket_is_private(socket_path: Path) -> None:
    assert stat.S_ISSOCK(mode(socket_path))
    assert stat.S_IMODE(mode(socket_path)) == 0o600
    assert stat.S_IMODE(mode(socket_path.parent)) == 0o700


async def test_live_socket_is_not_taken_over(socket_path: Path, client: ControlClient) -> None:
    with trio.fail_after(5), pytest.raises(SocketInUseError):
        await serve_unix_http(socket_path, control_handler(FakeBackend()))
    assert (await in_thread(client.status))["peer_id"]  # the first server still answers, on the same file


async def test_stale_socket_is_replaced(nursery: trio.Nursery, sock_dir: Path, backend: FakeBackend) -> None:
    path = sock_dir / "stale.sock"
    with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as crashed:
        crashed.bind(str(path))  # a socket file nobody listens on, as a killed daemon leaves behind
    with pytest.raises(ControlError) as caught:
        await in_thread(ControlClient(path).status)
    assert caught.value.code is ErrorCode.UNAVAILABLE
    await start_server(nursery, path, backend)
    assert (await in_thread(ControlClient(path).status))["peer_id"]


async def test_other_files_are_not_replaced(sock_dir: Path) -> None:
    path = sock_dir / "notes.txt"
    path.write_text("mine")
    with trio.fail_after(5), pytest.raises(FileExistsError):
        await serve_unix_http(path, control_handler(FakeBackend()))
    assert path.read_text() == "mine"


async def test_socket_removed_when_cancelled(sock_dir: Path, backend: FakeBackend) -> None:
    path = sock_dir / "gone.sock"
    async with trio.open_nursery() as nursery:
        await start_server(nursery, path, backend)
        assert path.exists()
        nursery.cancel_scope.cancel()
    assert not path.exists()
    assert names(sock_dir) == []  # no temporary name left behind either


async def test_no_daemon_is_unavailable(sock_dir: Path) -> None:
    path = sock_dir / "nobody.sock"
    with pytest.raises(ControlError) as caught:
        await in_thread(ControlClient(path).status)
    assert caught.value.code is ErrorCode.UNAVAILABLE
    assert caught.value.message == f"no daemon is listening on {path} (start one with `gossipd run`)"


# --- connections ---------------------------------------------------------------------------------------------


async def test_keep_alive_serves_several_requests(socket_path: Path) -> None:
    conn = h11.Connection(h11.CLIENT)
    async with await trio.open_unix_socket(str(socket_path)) as stream:
        for target in ["/v1/status", "/v1/tasks/nope", "/v1/version"]:
            await send_request(stream, conn, "GET", target)
            reply = await receive_reply(stream, conn)
            assert reply.status in (200, 404)
            conn.start_next_cycle()


async def test_hung_client_does_not_block_others(socket_path: Path) -> None:
    async with await trio.open_unix_socket(str(socket_path)) as hung:
        await hung.send_all(b"GET /v1/sta")
        with trio.fail_after(5):  # well under the 10 s the hung request may take
            assert (await request(socket_path, "GET", "/v1/status")).status == 200


async def test_expect_100_continue_is_answered(socket_path: Path, backend: FakeBackend) -> None:
    conn = h11.Connection(h11.CLIENT)
    body = json.dumps({"path": "/srv/t.toml"}).encode()
    headers = [("host", "gossipd"), ("content-length", str(len(body))), ("expect", "100-continue")]
    async with await trio.open_unix_socket(str(socket_path)) as stream:
        await stream.send_all(conn.send(h11.Request(method="POST", target="/v1/tasks", headers=headers)) or b"")
        with trio.fail_after(5):
            while (event := conn.next_event()) is h11.NEED_DATA:
                conn.receive_data(await stream.receive_some(65536))
        assert isinstance(event, h11.InformationalResponse) and event.status_code == 100
        await stream.send_all((conn.send(h11.Data(data=body)) or b"") + (conn.send(h11.EndOfMessage()) or b""))
        assert (await receive_reply(stream, conn)).status == 201
    assert backend.joined == [JoinRequest(path="/srv/t.toml")]


async def test_client_gone_mid_request_is_dropped(socket_path: Path, client: ControlClient) -> None:
    async with await trio.open_unix_socket(str(socket_path)) as gone:
        await gone.send_all(b"POST /v1/tasks HTTP/1.1\r\nhost: x\r\ncontent-length: 100\r\n\r\n{")
    assert (await in_thread(client.status))["peer_id"]


async def test_slow_request_is_cut_off(nursery: trio.Nursery, sock_dir: Path, backend: FakeBackend) -> None:
    path = sock_dir / "slow.sock"
    await start_server(nursery, path, backend, HttpLimits(read_timeout_s=0.2))
    async with await trio.open_unix_socket(str(path)) as slow:
        await slow.send_all(b"GET /v1/sta")
        with trio.fail_after(5):
            await wait_closed(slow)


async def test_connections_are_capped(nursery: trio.Nursery, sock_dir: Path, backend: FakeBackend) -> None:
    path = sock_dir / "capped.sock"
    await start_server(nursery, path, backend, HttpLimits(max_connections=1))
    hog = await trio.open_unix_socket(str(path))
    with trio.move_on_after(0.3) as waited:
        await request(path, "GET", "/v1/status")
    assert waited.cancelled_caught  # queued behind the idle connection
    await hog.aclose()
    with trio.fail_after(5):
        assert (await request(path, "GET", "/v1/status")).status == 200


async def test_client_refuses_huge_replies(client: ControlClient, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(gossipd.client, "MAX_RESPONSE_BYTES", 100)
    with pytest.raises(ControlError) as caught:
        await in_thread(client.model, "mnist")
    assert caught.value.code is ErrorCode.PAYLOAD_TOO_LARGE
