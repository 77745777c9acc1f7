"""Offering this daemon's open tasks to the world (protocols/tasks-v1.md): adverts on a well-known pubsub
topic, a provider record under a well-known DHT key, and `/gossipd/tasks/1.0.0` streams that list the adverts
or hand out a task's file by its hash. Closed tasks are never advertised, listed or served.

The daemon says what it runs through `shared`, called afresh each time, so a task joined or left shows up
(or goes) at the next advert.
"""

from __future__ import annotations

import logging
from collections.abc import Callable
from dataclasses import dataclass
from typing import TYPE_CHECKING

import trio

from gossipd.services.network import FrameStream, FrameTooLarge, Network, StreamClosed, Subscription
from gossipd.services.status import SharingStatus
from gossipd.task.loader import Task
from gossipd.task.sharing import ModelSummary, NotShareable, shared_file
from gossipd.wire.errors import WireError
from gossipd.wire.task_advert import TaskAdvert, check_signer, decode_advert, encode_advert
from gossipd.wire.task_requests import (
    MAX_REQUEST_BYTES,
    TASK_LIST_KEY,
    TASKS_TOPIC,
    FileRequest,
    Request,
    decode_request,
    encode_adverts,
    encode_file,
    encode_refusal,
)

if TYPE_CHECKING:
    from trio_typing import TaskStatus

log = logging.getLogger("gossipd.tasks")

ADVERT_INTERVAL = 60.0  # every daemon publishes to one topic all daemons read: keep it rare (discover asks peers too)
FIRST_ADVERT_DELAY = 1.0  # soon after start, once the bootstrap dials had a moment
REQUEST_TIMEOUT = 10.0  # a peer has this long to ask and read the answer
PROVIDE_TIMEOUT = 10.0


@dataclass(frozen=True)
class SharedTask:
    """An open task this daemon offers: its advert and the exact file bytes the advert's hash covers."""

    advert: TaskAdvert
    file: bytes


def share(task: Task, summary: ModelSummary, *, peer: str, addresses: list[str], live_peers: int) -> SharedTask | None:
    """The task as this daemon offers it, or None for a task it does not share (closed, attached, changed)."""
    try:
        file = shared_file(task)
    except NotShareable as exc:
        log.debug("not advertised: %s", exc)
        return None
    advert = TaskAdvert(
        task_id=task.id,
        task_hash=task.hash,
        description=task.task.description,
        model=task.model.name,
        parameters=summary.parameters,
        input_shape=summary.input_shape,
        algorithm=task.gossip.algorithm,
        peer=peer,
        addresses=tuple(addresses),
        peers=live_peers,
    )
    return SharedTask(advert, file)


class TaskSharingService:
    def __init__(
        self,
        *,
        network: Network,
        shared: Callable[[], list[SharedTask]],
        interval: float = ADVERT_INTERVAL,
        first_delay: float = FIRST_ADVERT_DELAY,
    ) -> None:
        self.network = network
        self.shared = shared
        self.interval = interval
        self.first_delay = first_delay
        self.rejections: dict[str, int] = {}  # requests and adverts refused, by reason
        self.files_served = 0

    def statistics(self) -> SharingStatus:
        return SharingStatus(
            offered=tuple(task.advert.task_id for task in self.shared()),
            files_served=self.files_served,
            rejections=dict(self.rejections),
        )

    async def run(self, *, task_status: TaskStatus[None] = trio.TASK_STATUS_IGNORED) -> None:
        # Subscribing makes this daemon a member of the topic's mesh, so adverts travel beyond the peers an
        # advertiser is connected to; the adverts read are only checked and dropped (no daemon keeps a list).
        subscription = await self.network.subscribe(TASKS_TOPIC)
        async with trio.open_nursery() as nursery:
            nursery.start_soon(self._drain, subscription)
            task_status.started()
            await trio.sleep(self.first_delay)
            while True:
                await self._advertise()
                await trio.sleep(self.interval)

    async def _advertise(self) -> None:
        shared = self.shared()
        for task in shared:
            await self.network.publish(TASKS_TOPIC, encode_advert(task.advert))
        if shared:
            # Re-providing on every round keeps the record fresh; a daemon whose open tasks all left stops,
            # and its record lapses (a discoverer treats providers as hints and asks them).
            with trio.move_on_after(PROVIDE_TIMEOUT):
                await self.network.provide(TASK_LIST_KEY)

    async def _drain(self, subscription: Subscription) -> None:
        async for message in subscription:
            if message.sender == self.network.peer_id:
                continue
            try:
                check_signer(decode_advert(message.data), message.sender)
            except WireError as exc:
                self._reject(f"advert-{exc.reason}", message.sender, exc)

    async def serve(self, stream: FrameStream) -> None:
        """Answer one request on a `/gossipd/tasks/1.0.0` stream, then close it."""
        try:
            with trio.fail_after(REQUEST_TIMEOUT):
                request = decode_request(await stream.receive(MAX_REQUEST_BYTES))
                await stream.send(self._answer(request))
        except (StreamClosed, FrameTooLarge, trio.TooSlowError, WireError) as exc:
            reason = exc.reason if isinstance(exc, WireError) else type(exc).__name__
            self._reject(f"request-{reason}", stream.peer_id, exc)
            await stream.reset()
            return
        await stream.close()

    def _answer(self, request: Request) -> bytes:
        shared = self.shared()
        if not isinstance(request, FileRequest):
            return encode_adverts([encode_advert(task.advert) for task in shared])
        for task in shared:
            if task.advert.task_hash == request.task_hash:
                self.files_served += 1
                return encode_file(task.advert.task_hash, task.file)
        # Whether the task runs here closed, or not at all, is nobody's business: one answer for both.
        return encode_refusal("no open task with this hash runs here")

    def _reject(self, reason: str, peer: str, exc: BaseException) -> None:
        self.rejections[reason] = self.rejections.get(reason, 0) + 1
        log.debug("task sharing: rejected %s from %s: %s", reason, peer, exc)
