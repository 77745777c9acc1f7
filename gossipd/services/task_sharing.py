"""Offering this daemon's open tasks to the world (protocols/tasks-v1.md): adverts on a well-known pubsub
topic, a provider record under a well-known DHT key, and `/gossipd/tasks/1.0.0` streams that list the adverts
or hand out a task's file by its hash. Closed tasks are never advertised, listed or served.

The daemon says what it runs through `shared`, called afresh each time, so a task joined or left shows up
(or goes) at the next advert.
"""

from __future__ import annotations

import logging
import random
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
# The DHT keeps a provider record for hours; walking to the key's closest peers every advert cost 16 daemons
# about as much as their heartbeats. Re-provided this often, or at once when what is offered changes.
PROVIDE_INTERVAL = 600.0
MAX_HEARD = 4096  # task hashes remembered from others' adverts (a flood of made-up tasks stops here)


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
        rng: random.Random | None = None,
    ) -> None:
        self.network = network
        self.shared = shared
        self.interval = interval
        self.first_delay = first_delay
        self.rng = rng or random.Random()
        self.heard: dict[bytes, float] = {}  # task hash → when another daemon's advert of it was last read
        self.adverts_sent = 0
        self._provided: tuple[frozenset[bytes], float] | None = None  # what was provided, and when
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
                # Jittered, so among the members of one swarm whoever comes first advertises and the rest
                # hear it and stay quiet (see _advertise).
                await trio.sleep(self.interval * self.rng.uniform(0.75, 1.25))

    async def _advertise(self) -> None:
        """Publish each offered task's advert unless another daemon's advert of the same task was read
        within the interval: every member of a swarm offers the same task, and a topic all daemons read
        needs one advert of it per interval, not one per member (a discoverer asks the advertiser, which
        names its peers). Re-provide the DHT record when due (see PROVIDE_INTERVAL)."""
        shared = self.shared()
        now = trio.current_time()
        self.heard = {key: at for key, at in self.heard.items() if now - at < self.interval}
        for task in shared:
            heard = self.heard.get(task.advert.task_hash)
            if heard is not None and now - heard < self.interval:
                continue
            await self.network.publish(TASKS_TOPIC, encode_advert(task.advert))
            self.adverts_sent += 1
        offered = frozenset(task.advert.task_hash for task in shared)
        due = self._provided is None or self._provided[0] != offered or now - self._provided[1] >= PROVIDE_INTERVAL
        if shared and due:
            # A daemon whose open tasks all left stops, and its record lapses (a discoverer treats providers
            # as hints and asks them).
            self._provided = (offered, now)
            with trio.move_on_after(PROVIDE_TIMEOUT):
                await self.network.provide(TASK_LIST_KEY)

    async def _drain(self, subscription: Subscription) -> None:
        async for message in subscription:
            if message.sender == self.network.peer_id:
                continue
            try:
                advert = decode_advert(message.data)
                check_signer(advert, message.sender)
            except WireError as exc:
                self._reject(f"advert-{exc.reason}", message.sender, exc)
                continue
            if len(self.heard) < MAX_HEARD or advert.task_hash in self.heard:
                self.heard[advert.task_hash] = trio.current_time()

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
