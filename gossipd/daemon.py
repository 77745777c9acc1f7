"""The daemon: one libp2p host, one control socket, and the tasks it runs, all under one root nursery.

Incoming `/gossipd/mix` and `/gossipd/state` streams are routed to a task by the task hash in their first
message. SIGINT/SIGTERM stop every task gracefully (exchanges in flight finish or are abandoned at their
deadline, a checkpoint is written) and the daemon exits 0.
"""

from __future__ import annotations

import dataclasses
import functools
import logging
import signal
import time
from collections.abc import AsyncIterator
from dataclasses import dataclass, field
from importlib.metadata import PackageNotFoundError, version
from pathlib import Path
from typing import TYPE_CHECKING

import trio

from gossipd.adapters.http_unix import serve_unix_http, serve_unix_streams
from gossipd.adapters.libp2p_network import Libp2pNetwork, load_or_create_identity
from gossipd.adapters.memory import trim_every
from gossipd.paths import attach_socket, ensure_private_dir
from gossipd.services.attach_server import serve_attach_session
from gossipd.services.control import ControlError, ErrorCode, JoinRequest
from gossipd.services.control_api import control_handler
from gossipd.services.exchange import HELLO_LIMIT, MIX_PROTOCOL
from gossipd.services.network import FrameStream, FrameTooLarge, Network, RelayOffer, StreamClosed
from gossipd.services.state_transfer import STATE_PROTOCOL
from gossipd.services.status import DaemonStatus, TaskState, TaskStatus
from gossipd.services.task_runtime import Attachment, RunOptions, TaskRuntime
from gossipd.services.task_sharing import SharedTask, TaskSharingService, share
from gossipd.task.fields import TaskError
from gossipd.task.loader import Task, load_task, parse_task
from gossipd.wire.errors import WireError
from gossipd.wire.messages import Message, MessageType, decode_message
from gossipd.wire.task_requests import TASKS_PROTOCOL

if TYPE_CHECKING:
    from trio_typing import TaskStatus as StartStatus

log = logging.getLogger("gossipd.daemon")
FIRST_FRAME_TIMEOUT = 10.0
STOP_TIMEOUT = 20.0
MAX_CRASHES = 5  # crashes of one task within CRASH_WINDOW before the daemon gives up on it
CRASH_WINDOW = 600.0
RESTART_PAUSE = 5.0
MEMORY_TRIM_INTERVAL = 2.0  # seconds between hand-backs of freed C heap (gossipd.adapters.memory.trim_every)
ATTACHED_STOP_GRACE = 5.0  # a detached script's exchanges in flight get this long to finish


@dataclass(frozen=True, kw_only=True)
class DaemonOptions:
    state_dir: Path
    socket: Path
    listen: tuple[str, ...] = ("/ip4/0.0.0.0/tcp/0",)
    bootstrap: tuple[str, ...] = ()
    mdns: bool = False
    relay: RelayOffer | None = None  # offer circuit relay v2 to the tasks' peers (`--relay`)
    reachability: str = "auto"  # whether others can dial this daemon: auto, public or private
    task_options: RunOptions = field(default_factory=RunOptions)


def package_version() -> str:
    try:
        return version("gossipd")
    except PackageNotFoundError:
        return "unknown"


class Daemon:
    """Implements `ControlBackend` for the control API."""

    def __init__(self, options: DaemonOptions) -> None:
        self.options = options
        self.tasks: dict[str, TaskRuntime] = {}
        self.network: Network | None = None
        self.sharing: TaskSharingService | None = None
        self._nursery: trio.Nursery | None = None
        self._stopping = False
        self._started = time.monotonic()

    # -- running ---------------------------------------------------------------------------------------

    async def run(
        self, initial: list[tuple[Task, RunOptions]], *, task_status: StartStatus[None] = trio.TASK_STATUS_IGNORED
    ) -> None:
        state_dir = ensure_private_dir(self.options.state_dir)
        key_pair = load_or_create_identity(state_dir / "identity.key")
        stop = trio.Event()
        # The receiver spans the whole run, network shutdown included: trio re-delivers signals still
        # pending when it closes, so a second SIGTERM during shutdown would otherwise kill the process.
        with trio.open_signal_receiver(signal.SIGINT, signal.SIGTERM) as signals:
            async with trio.open_nursery() as outer:
                outer.start_soon(self._watch_signals, signals, stop)
                async with Libp2pNetwork.running(
                    key_pair,
                    listen=self.options.listen,
                    mdns=self.options.mdns,
                    relay=self.options.relay,
                    reachability=self.options.reachability,
                    admits=self._relay_admits,
                ) as network:
                    self.network = network
                    network.set_handler(MIX_PROTOCOL, self._on_mix_stream)
                    network.set_handler(STATE_PROTOCOL, self._on_state_stream)
                    sharing = self.sharing = TaskSharingService(network=network, shared=self._shared_tasks)
                    network.set_handler(TASKS_PROTOCOL, sharing.serve)
                    async with trio.open_nursery() as nursery:
                        self._nursery = nursery
                        # The attach socket first: whoever sees the control socket answer may attach at once.
                        attach_path = attach_socket(self.options.socket)
                        session = functools.partial(serve_attach_session, backend=self)
                        await nursery.start(serve_unix_streams, attach_path, session)
                        await nursery.start(serve_unix_http, self.options.socket, control_handler(self))
                        for task, options in initial:
                            await self._start_task(task, options)
                        await nursery.start(sharing.run)
                        await nursery.start(trim_every, MEMORY_TRIM_INTERVAL)
                        log.info(
                            "gossipd %s running: peer %s on %s, control socket %s",
                            package_version(),
                            network.peer_id,
                            " ".join(network.addresses()),
                            self.options.socket,
                        )
                        task_status.started()
                        await stop.wait()
                        await self.shutdown()
                        nursery.cancel_scope.cancel()
                outer.cancel_scope.cancel()

    def _relay_admits(self, peer_id: str) -> bool:
        """A relay serves the peers of its tasks: anyone while a task is open to all, else the allow-listed."""
        return any(runtime.admits(peer_id) for runtime in self.tasks.values())

    async def _watch_signals(self, signals: AsyncIterator[int], stop: trio.Event) -> None:
        async for received in signals:
            if stop.is_set():
                log.info("received %s again: already stopping", signal.Signals(received).name)
                continue
            log.info("received %s: stopping", signal.Signals(received).name)
            stop.set()

    async def shutdown(self) -> None:
        """Stop every task in parallel (each checkpoints)."""
        self._stopping = True
        async with trio.open_nursery() as nursery:
            for runtime in list(self.tasks.values()):
                nursery.start_soon(runtime.stop, STOP_TIMEOUT)

    # -- incoming streams ------------------------------------------------------------------------------

    async def _first_message(self, stream: FrameStream) -> tuple[TaskRuntime, Message] | None:
        try:
            with trio.fail_after(FIRST_FRAME_TIMEOUT):
                raw = await stream.receive(HELLO_LIMIT)
            message = decode_message(raw, max_size=HELLO_LIMIT)
            if message.type not in (MessageType.HELLO, MessageType.AUTH):
                raise WireError(f"a stream must open with hello or auth, not {message.type}")
        except (StreamClosed, FrameTooLarge, trio.TooSlowError, WireError) as exc:
            log.info("dropped a stream from %s: %s", stream.peer_id, exc)
            await stream.reset()
            return None
        runtime = next((t for t in self.tasks.values() if t.task.hash == message.task), None)
        if runtime is None:
            log.debug("stream from %s for a task this daemon does not run", stream.peer_id)
            await stream.reset()
            return None
        return runtime, message

    async def _on_mix_stream(self, stream: FrameStream) -> None:
        routed = await self._first_message(stream)
        if routed is None:
            return
        runtime, hello = routed
        if runtime.services is None:
            await stream.reset()
            return
        await runtime.services.exchange.respond(stream, hello)

    async def _on_state_stream(self, stream: FrameStream) -> None:
        routed = await self._first_message(stream)
        if routed is not None:
            await routed[0].serve_state(stream, routed[1])

    def _shared_tasks(self) -> list[SharedTask]:
        """The open tasks this daemon offers to peers: loaded, running, and not closed (see task_sharing)."""
        network = self.network
        if network is None:
            return []
        offered = []
        for runtime in list(self.tasks.values()):
            if runtime.model_summary is None or runtime.state in (TaskState.FAILED, TaskState.STOPPING):
                continue
            shared = share(
                runtime.task,
                runtime.model_summary,
                peer=network.peer_id,
                addresses=network.addresses(),
                live_peers=len(runtime.peers.live_members()),
            )
            if shared is not None:
                offered.append(shared)
        return offered

    # -- tasks -----------------------------------------------------------------------------------------

    async def _start_task(self, task: Task, options: RunOptions) -> TaskRuntime:
        if self._nursery is None or self.network is None:
            raise ControlError(ErrorCode.SHUTTING_DOWN, "the daemon is not running")
        if task.id in self.tasks:
            raise ControlError(ErrorCode.TASK_EXISTS, f"task {task.id!r} is already running")
        runtime = TaskRuntime(task, options, network=self.network, state_dir=self.options.state_dir)
        self.tasks[task.id] = runtime
        await self._nursery.start(self._run_task, runtime)
        if runtime.state is TaskState.FAILED:
            del self.tasks[task.id]
            raise ControlError(ErrorCode.INVALID_TASK, f"task {task.id!r} could not start: {runtime.error}")
        return runtime

    # -- scripts that attach their own model (AttachBackend) -------------------------------------------

    @property
    def join_timeout(self) -> float:
        return self.options.task_options.join_timeout

    async def attach(self, task: Task, attachment: Attachment) -> TaskRuntime:
        """Run a task around a script's model for as long as the script stays attached."""
        if self._stopping or self._nursery is None or self.network is None:
            raise ControlError(ErrorCode.SHUTTING_DOWN, "the daemon is stopping")
        existing = self.tasks.get(task.id)
        if existing is not None:
            raise ControlError(ErrorCode.TASK_EXISTS, _already_running(existing, task, attachment))
        runtime = TaskRuntime(
            task,
            self.options.task_options,
            network=self.network,
            state_dir=self.options.state_dir,
            attachment=attachment,
        )
        self.tasks[task.id] = runtime
        await self._nursery.start(self._run_attached, runtime)
        if runtime.state is TaskState.FAILED:
            self.tasks.pop(task.id, None)
            raise ControlError(ErrorCode.INVALID_TASK, f"task {task.id!r} could not start: {runtime.error}")
        return runtime

    async def detach(self, runtime: TaskRuntime) -> None:
        if self.tasks.get(runtime.task.id) is runtime:
            await runtime.stop(ATTACHED_STOP_GRACE)
            self.tasks.pop(runtime.task.id, None)

    async def _run_attached(
        self, runtime: TaskRuntime, *, task_status: StartStatus[None] = trio.TASK_STATUS_IGNORED
    ) -> None:
        """An attached task is not restarted after a crash: its session ends and the script attaches again."""
        try:
            await runtime.run(task_status=task_status)
        except Exception:
            log.exception("attached task %s crashed; its script will attach again", runtime.task.id)
            runtime.state = TaskState.FAILED
            if runtime.attachment is not None:
                runtime.attachment.trainer.detach()
        finally:
            if self.tasks.get(runtime.task.id) is runtime:
                self.tasks.pop(runtime.task.id, None)

    async def _run_task(
        self, runtime: TaskRuntime, *, task_status: StartStatus[None] = trio.TASK_STATUS_IGNORED
    ) -> None:
        """Run a task and supervise it: a crash (a bug, never bad input, which services reject) restarts
        it from its newest checkpoint after a pause; too many crashes leave it failed, the daemon running."""
        crashes: list[float] = []
        while True:
            try:
                await runtime.run(task_status=task_status)
                break  # stopped (leave or shutdown)
            except Exception as exc:
                now = trio.current_time()
                crashes = [t for t in crashes if now - t < CRASH_WINDOW] + [now]
                log.exception("task %s crashed", runtime.task.id)
                if len(crashes) > MAX_CRASHES:
                    runtime.state = TaskState.FAILED
                    runtime.error = f"crashed {len(crashes)} times in {CRASH_WINDOW:.0f} s; last: {exc!r}"
                    return
            task_status = trio.TASK_STATUS_IGNORED  # `started` was already reported (or failed) once
            await trio.sleep(RESTART_PAUSE)
            runtime = TaskRuntime(
                runtime.task, runtime.options, network=runtime.network, state_dir=self.options.state_dir
            )
            self.tasks[runtime.task.id] = runtime
            log.info("task %s restarting from its newest checkpoint", runtime.task.id)
        if self.tasks.get(runtime.task.id) is runtime and runtime.state is not TaskState.FAILED:
            self.tasks.pop(runtime.task.id, None)

    # -- ControlBackend --------------------------------------------------------------------------------

    @property
    def shutting_down(self) -> bool:
        return self._stopping

    def status(self) -> DaemonStatus:
        network = self.network
        return DaemonStatus(
            peer_id=network.peer_id if network else "",
            addresses=tuple(network.addresses()) if network else (),
            version=package_version(),
            uptime_s=time.monotonic() - self._started,
            state_dir=str(self.options.state_dir),
            socket=str(self.options.socket),
            tasks=tuple(t.status() for t in self.tasks.values()),
            relay=network.relay_status() if network else None,
            sharing=self.sharing.statistics() if self.sharing else None,
        )

    def _runtime(self, task_id: str) -> TaskRuntime:
        runtime = self.tasks.get(task_id)
        if runtime is None:
            raise ControlError(ErrorCode.TASK_NOT_FOUND, f"no task {task_id!r} runs here")
        return runtime

    def task_status(self, task_id: str) -> TaskStatus:
        return self._runtime(task_id).status()

    async def join(self, request: JoinRequest) -> TaskStatus:
        if self._stopping:
            raise ControlError(ErrorCode.SHUTTING_DOWN, "the daemon is stopping")
        try:
            if request.path is not None:
                task = load_task(request.path, data_root=request.data)
            else:
                base = Path(request.base_dir) if request.base_dir else Path.cwd()
                task = parse_task(request.toml or "", file="<request>", base_dir=base, data_root=request.data)
        except TaskError as exc:
            raise ControlError(ErrorCode.INVALID_TASK, str(exc)) from None
        options = dataclasses.replace(
            self.options.task_options,
            data_root=Path(request.data) if request.data else None,
            peer_index=request.peer_index,
            peer_count=request.peer_count,
        )
        return (await self._start_task(task, options)).status()

    async def leave(self, task_id: str) -> None:
        if self._stopping:
            raise ControlError(ErrorCode.SHUTTING_DOWN, "the daemon is stopping")
        runtime = self._runtime(task_id)
        await runtime.stop(STOP_TIMEOUT)
        self.tasks.pop(task_id, None)

    async def export_model(self, task_id: str) -> bytes:
        return await self._runtime(task_id).export()


def _already_running(existing: TaskRuntime, task: Task, attachment: Attachment) -> str:
    """Why a script cannot attach to a task this daemon already runs, naming any model mismatch."""
    if existing.attachment is None:
        return f"task {task.id!r} already runs here with gossipd's own trainer; leave it first"
    theirs = existing.attachment.trainer.layout
    differences = theirs.differences(attachment.trainer.layout)
    mismatch = f"; and this script's model differs from it: {'; '.join(differences)}" if differences else ""
    return f"task {task.id!r} is already attached by the script of pid {existing.attachment.pid}{mismatch}"
