"""The daemon's end of the attach socket: one session per attached script (protocols/attach-v2.md).

    hello (script) -> welcome + shared memory (daemon) -> sync of the whole model -> the task starts
    (a fresh script first gets a neighbour's model: load) -> ready -> steps, syncs, deltas, holds ... -> bye

The task runs as long as the script stays attached: a script that says bye, closes its socket or dies ends
its task on this daemon; a daemon that stops ends the session (the script trains on and attaches again
when a daemon answers). A malformed or out-of-order message ends the session with an error message.
"""

from __future__ import annotations

import array
import contextlib
import logging
import os
import socket
from collections.abc import AsyncIterator
from dataclasses import dataclass, field
from functools import partial
from pathlib import Path
from typing import Any, Protocol

import msgpack
import trio

from gossipd.adapters.shared_memory import SharedState, create_memory
from gossipd.mixing.personal import Personal
from gossipd.services.attached_trainer import AttachedTrainer
from gossipd.services.control import ControlError
from gossipd.services.status import TaskState
from gossipd.services.task_runtime import Attachment, TaskRuntime
from gossipd.task.fields import TaskError
from gossipd.task.loader import MAX_TASK_FILE_BYTES, AttachedModel, Task, parse_attached_task
from gossipd.wire import attach as proto
from gossipd.wire.messages import MAX_EXAMPLES

log = logging.getLogger("gossipd.attach")
HELLO_TIMEOUT = 10.0
START_TIMEOUT = 60.0  # beyond the join timeout: the task's start and a fresh script's first copy
STOP_GRACE = 5.0
OUTBOX = 256  # messages the daemon may have queued for a script (it has at most a few outstanding)


class AttachBackend(Protocol):
    """What a session needs from the daemon."""

    @property
    def join_timeout(self) -> float: ...

    async def attach(self, task: Task, attachment: Attachment) -> TaskRuntime:
        """Start the task around the script's model. Raises ControlError (TASK_EXISTS, SHUTTING_DOWN...)."""
        ...

    async def detach(self, runtime: TaskRuntime) -> None:
        """Stop the task (the script left)."""
        ...


@dataclass(frozen=True)
class Hello:
    task: Task
    layout: proto.SharedLayout
    pid: int
    step: int
    device: str
    personal: Personal = field(default_factory=Personal)  # what [gossip] personal keeps out of mixing
    examples: int | None = None  # the training examples the script declares (weigh_by = "samples")


class _Reader:
    def __init__(self, stream: trio.SocketStream) -> None:
        self.stream = stream
        self.unpacker = proto.unpacker()
        self._ready: list[Any] = []

    async def messages(self) -> AsyncIterator[dict[str, Any]]:
        while True:
            while self._ready:
                yield proto.check(self._ready.pop(0), proto.SCRIPT_MESSAGES)
            data = await self.stream.receive_some(1 << 16)
            if not data:
                return
            self.unpacker.feed(data)
            try:
                self._ready.extend(self.unpacker)
            except (msgpack.ExtraData, msgpack.FormatError, msgpack.StackError, ValueError) as exc:
                raise proto.AttachProtocolError(f"not a msgpack message: {exc}") from None


def read_hello(message: dict[str, Any]) -> Hello:
    """The task and model a hello declares. Raises AttachProtocolError or TaskError, naming what is wrong."""
    if message["t"] != proto.HELLO:
        raise proto.AttachProtocolError(f"a session opens with hello, not {message['t']}")
    version = proto.field(message, "v", int)
    if version != proto.VERSION:
        raise proto.AttachProtocolError(f"hello: protocol version {version}, this daemon speaks {proto.VERSION}")
    text = proto.field(message, "task", str)
    if len(text.encode()) > MAX_TASK_FILE_BYTES:
        raise proto.AttachProtocolError(f"hello: the task file is larger than {MAX_TASK_FILE_BYTES} bytes")
    file = proto.field(message, "file", str)
    base = proto.field(message, "base", str)
    if not os.path.isabs(base):
        raise proto.AttachProtocolError(f"hello: base {base!r} is not an absolute path")
    layout = proto.SharedLayout.of(proto.entries_from_wire(message.get("layout")))
    task = parse_attached_task(text, file=file, base_dir=Path(base), model=partial(attached_model, layout))
    pid = proto.field(message, "pid", int)
    step = proto.field(message, "step", int)
    if step < 0:
        raise proto.AttachProtocolError(f"hello: step {step} is negative")
    device = str(proto.field(message, "device", str))[:64]
    examples = proto.field(message, "examples", int, optional=True)
    if examples is not None and not 0 <= examples <= MAX_EXAMPLES:
        raise proto.AttachProtocolError(f"hello: examples {examples} is not between 0 and {MAX_EXAMPLES}")
    return Hello(task, layout, pid, step, device, _personal(layout, task.gossip.personal), examples)


def attached_model(layout: proto.SharedLayout, personal: tuple[str, ...]) -> AttachedModel:
    """The script's model as the task hash sees it: the digest and size of its shared parameters, those
    `[gossip] personal` leaves to be mixed. Raises PersonalError (a ValueError) if the patterns do not fit."""
    names = _personal(layout, personal).parameters
    shared = sum(e.numel for e in layout.parameters if e.name not in names)
    return AttachedModel(layout=layout.digest(names), parameters=shared)


def _personal(layout: proto.SharedLayout, patterns: tuple[str, ...]) -> Personal:
    return Personal.of({e.name: e.shape for e in layout.parameters}, (e.name for e in layout.entries), patterns)


async def serve_attach_session(stream: trio.SocketStream, backend: AttachBackend) -> None:
    reader = _Reader(stream)
    messages = reader.messages()
    try:
        with trio.fail_after(HELLO_TIMEOUT):
            first = await anext(messages, None)
        if first is None:
            return
        hello = read_hello(first)
    except (proto.AttachProtocolError, TaskError) as exc:
        log.warning("refused a script's attach: %s", exc)
        await _send_error(stream, str(exc))
        return
    except trio.TooSlowError:
        log.info("a script connected to the attach socket and sent no hello within %.0f s", HELLO_TIMEOUT)
        return
    await _session(stream, messages, hello, backend)


async def _session(
    stream: trio.SocketStream, messages: AsyncIterator[dict[str, Any]], hello: Hello, backend: AttachBackend
) -> None:
    fd = create_memory(hello.layout.total_bytes)
    try:
        shared = SharedState(fd, hello.layout)
        shared.publish(hello.step, 0, None)  # what the script said; it writes the counters from now on
        welcome = {
            "t": proto.WELCOME,
            "task": hello.task.id,
            "hash": hello.task.hash.hex(),
            "bytes": hello.layout.total_bytes,
            "total_steps": hello.task.train.total_steps,
        }
        await _send_with_fd(stream, proto.encode(welcome), fd)
    finally:
        os.close(fd)  # the mapping (and the script's) keeps the memory
    send, receive = trio.open_memory_channel[dict[str, Any]](OUTBOX)
    host = AttachedTrainer(
        shared,
        send,
        step=hello.step,
        budget=hello.task.train.total_steps,
        state_wait=START_TIMEOUT,
        personal=hello.personal,
    )
    runtime: TaskRuntime | None = None
    outcome = _Outcome()
    try:
        async with trio.open_nursery() as nursery:
            nursery.start_soon(_write, stream, receive)
            nursery.start_soon(_listen, messages, host, nursery.cancel_scope, outcome)
            reason = None
            try:
                with trio.fail_after(START_TIMEOUT):
                    await host.sync_all()
                    attachment = Attachment(
                        trainer=host,
                        pid=hello.pid,
                        device=hello.device,
                        fresh=hello.step == 0,
                        examples=hello.examples,
                    )
                    runtime = await backend.attach(hello.task, attachment)
                    # The runtime's state has no change event; this polls for the length of a join at most.
                    while runtime.state in (TaskState.LOADING, TaskState.JOINING) and not host.closed:  # noqa: ASYNC110
                        await trio.sleep(0.05)
            except ControlError as exc:
                reason = exc.message
            except trio.TooSlowError:
                reason = f"the task did not start within {START_TIMEOUT:.0f} s"
            if reason is not None:
                outcome.reason = outcome.reason or reason
                nursery.cancel_scope.cancel()
            else:
                assert runtime is not None
                log.info(
                    "script (pid %d) attached to task %s, %d parameters, at step %d",
                    hello.pid,
                    hello.task.id,
                    sum(e.numel for e in hello.layout.parameters),
                    hello.step,
                )
                await send.send({"t": proto.READY, "state": runtime.state.value, "step": host.step})
                if hello.task.train.total_steps is not None:
                    nursery.start_soon(_tell_finished, runtime, host, send)
    finally:
        host.detach()
        if runtime is not None:
            with trio.CancelScope(shield=True):
                await backend.detach(runtime)
            log.info("script (pid %d) detached from task %s", hello.pid, hello.task.id)
        shared.close()
    if outcome.reason is not None:
        log.warning("attach session of pid %d ended: %s", hello.pid, outcome.reason)
        await _send_error(stream, outcome.reason)


async def _tell_finished(
    runtime: TaskRuntime, host: AttachedTrainer, send: trio.MemorySendChannel[dict[str, Any]]
) -> None:
    """Tell the script once the task has finished (past its budget, done finishing), for `finish()`."""
    # The finish has no change event; it takes seconds, so a poll every 0.2 s costs nothing.
    while not host.closed:
        services = runtime.services
        if services is not None and services.exchange.finished:
            break
        await trio.sleep(0.2)
    if not host.closed:
        await send.send({"t": proto.FINISHED, "step": host.step})


class _Outcome:
    reason: str | None = None  # why the daemon ended the session, if it did


async def _listen(
    messages: AsyncIterator[dict[str, Any]], host: AttachedTrainer, scope: trio.CancelScope, outcome: _Outcome
) -> None:
    """Hand the script's messages to the host until it says bye or goes; then end the session."""
    try:
        async for message in messages:
            if message["t"] == proto.BYE:
                break
            if message["t"] == proto.HELLO:
                raise proto.AttachProtocolError("hello again in an open session")
            host.on_message(message)
    except proto.AttachProtocolError as exc:
        outcome.reason = str(exc)
    except (trio.BrokenResourceError, trio.ClosedResourceError):
        pass
    finally:
        host.detach()
        scope.cancel()


async def _write(stream: trio.SocketStream, outbox: trio.MemoryReceiveChannel[dict[str, Any]]) -> None:
    """Send what the host queued, everything queued together in one write (the script reads them at its
    next step either way; fewer writes are fewer wake-ups on the core it trains on)."""
    async for message in outbox:
        payload = [proto.encode(message)]
        while True:
            try:
                payload.append(proto.encode(outbox.receive_nowait()))
            except trio.WouldBlock:
                break
        try:
            await stream.send_all(b"".join(payload))
        except (trio.BrokenResourceError, trio.ClosedResourceError):
            return  # the script went away; the listener sees the end of its stream and ends the session


async def _send_with_fd(stream: trio.SocketStream, payload: bytes, fd: int) -> None:
    """The welcome, with the shared memory's descriptor attached (SCM_RIGHTS) to its first byte."""
    sock = stream.socket
    fds = array.array("i", [fd]).tobytes()
    sent = await sock.sendmsg([payload], [(socket.SOL_SOCKET, socket.SCM_RIGHTS, fds)])
    if sent < len(payload):
        await stream.send_all(payload[sent:])


async def _send_error(stream: trio.SocketStream, message: str) -> None:
    with trio.move_on_after(2) as scope:
        scope.shield = True  # said even while the session is being cancelled, but not for longer than 2 s
        with contextlib.suppress(trio.BrokenResourceError, trio.ClosedResourceError):
            await stream.send_all(proto.encode({"t": proto.ERROR, "message": message}))
