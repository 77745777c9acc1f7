"""Attach a training script's own model to a gossipd swarm: `gossipd.attach(model, task=...)`.

    swarm = gossipd.attach(model, "task.toml", optimizer=optimizer, batch_size=64)
    ...                       # the training loop as it was: each optimizer.step() is a step of the swarm
    swarm.close()

Without `optimizer=`, call `swarm.step()` after each optimiser step instead.

The local daemon (`gossipd run`) stays the machine's one peer: it finds the task's other peers, mixes, and
answers `gossipd status`. This process talks to it over its attach socket (beside the control socket), and
the two share the model's tensors through a shared memory file (protocols/attach-v2.md): at a `step()` the
script copies its parameters in when the daemon asks for them, and adds the deltas of finished exchanges
(or, when it first attaches with an untrained model, loads a neighbour's whole model). Everything else,
the optimiser, the loss, the schedule, mixed precision, where the model lives, stays the script's.

`step()` never blocks longer than the task's pacing allows (`[gossip] steps_per_exchange`: a step may wait
for a mix, at most `exchange_timeout` seconds). If the daemon stops or the socket breaks, the script trains
on alone and attaches again in the background when a daemon answers.
"""

from __future__ import annotations

import contextlib
import logging
import os
import socket
import threading
import time
from dataclasses import dataclass, field
from pathlib import Path
from types import TracebackType
from typing import Any

import msgpack
import torch
from torch import nn

from gossipd.adapters.shared_memory import SharedState
from gossipd.paths import attach_socket, default_socket
from gossipd.wire import attach as proto
from gossipd.wire.tensors import DTYPES

log = logging.getLogger("gossipd.attach")
CONNECT_TIMEOUT = 5.0
RETRY_SECONDS = 2.0  # between attempts to attach again after the daemon went away
SEND_TIMEOUT = 10.0
_WIRE_DTYPES = {getattr(torch, name): name for name in DTYPES}


class AttachError(RuntimeError):
    """The script could not attach: no daemon answers, or it refused (the message says why)."""


@dataclass
class _Connection:
    sock: socket.socket
    shared: SharedState
    unpacker: Any
    task_id: str
    task_hash: str
    total_steps: int | None  # the task's training budget, if it has one
    ready: bool = False
    finished: bool = False
    pace: proto.ScriptPace = field(default_factory=proto.ScriptPace)
    replies: list[dict[str, Any]] = field(default_factory=list)  # sent together, once per step

    def close(self) -> None:
        self.sock.close()
        self.shared.close()


class Attached:
    """A model attached to a task of the local daemon. Call `step()` after every optimiser step."""

    def __init__(
        self,
        model: nn.Module,
        task: str | os.PathLike[str],
        *,
        optimizer: torch.optim.Optimizer | None = None,
        socket_path: str | os.PathLike[str] | None = None,
        batch_size: int | None = None,
        examples: int | None = None,
        timeout: float = 120.0,
    ) -> None:
        if examples is not None and examples < 0:
            raise ValueError(f"examples must be a count of training examples, not {examples}")
        self.model = model
        self.task_path = Path(task).resolve()
        try:
            self.task_text = self.task_path.read_text(encoding="utf-8")
        except OSError as exc:
            raise AttachError(f"cannot read the task file {self.task_path}: {exc.strerror or exc}") from None
        control = Path(socket_path) if socket_path is not None else default_socket()
        self.socket_path = attach_socket(control)
        self.batch_size = batch_size
        self.examples = examples
        self.tensors, self.entries = _model_entries(model)
        self.layout = proto.SharedLayout.of(self.entries)
        self.steps = 0
        self.samples = 0
        self._loss: float | None = None
        self._conn: _Connection | None = None
        self._closed = False
        self._lock = threading.Lock()
        self._handover: _Connection | None = None  # a connection the background thread made, not yet adopted
        self._retry: threading.Thread | None = None
        self._stop = threading.Event()
        conn = self._conn = self._connect()
        deadline = time.monotonic() + timeout
        try:
            while not conn.ready:
                if time.monotonic() > deadline:
                    raise AttachError(f"the daemon did not start task {conn.task_id!r} within {timeout:.0f} s")
                self._serve(conn, wait=min(1.0, deadline - time.monotonic()))
                self._flush(conn)
        except (OSError, proto.AttachProtocolError) as exc:
            conn.close()
            raise AttachError(f"attaching to {self.socket_path} failed: {exc}") from None
        except AttachError:
            conn.close()
            raise
        # After the optimiser's own step (and only a step it took: GradScaler skips those with inf gradients).
        self._hook = None if optimizer is None else optimizer.register_step_post_hook(lambda *_: self.step())

    # -- what the script calls -------------------------------------------------------------------------

    @property
    def task_id(self) -> str | None:
        conn = self._conn
        return None if conn is None else conn.task_id

    @property
    def attached(self) -> bool:
        """Whether the daemon is there now (the script trains on either way)."""
        return self._conn is not None and self._conn.ready

    def step(self, *, samples: int | None = None, loss: float | torch.Tensor | None = None) -> None:
        """The script took one optimiser step (of `samples` examples; default: the `batch_size` given to
        attach). Serves the daemon's requests; may wait for a mix (step pacing). `loss`, if given, is
        shown in `gossipd status` (a tensor is read with `.item()`, which waits for a GPU)."""
        if self._closed:
            raise AttachError("step() after close()")
        self.steps += 1
        self.samples += samples if samples is not None else (self.batch_size or 0)
        if loss is not None:
            self._loss = float(loss.detach().item() if isinstance(loss, torch.Tensor) else loss)
        conn = self._conn or self._adopt()
        if conn is None:
            return
        try:
            # Where the script is goes into the shared memory, a store and no system call: the daemon reads
            # it when it needs it, and asked (pace) to be told at the steps where it must act.
            conn.shared.publish(self.steps, self.samples, self._loss)
            self._serve(conn, wait=0.0)
            now = time.monotonic()
            if conn.pace.report_due(self.steps, now) or conn.replies:
                conn.replies.append({"t": proto.STEP, "n": self.steps, "samples": self.samples, "loss": self._loss})
                conn.pace.reported(self.steps, now)
            self._flush(conn)
            while self._conn is conn:
                remaining = conn.pace.hold_remaining(self.steps, time.monotonic())
                if remaining is None:
                    break
                self._serve(conn, wait=min(remaining, 0.5))
                self._flush(conn)
        except (OSError, proto.AttachProtocolError, AttachError) as exc:
            self._lost(conn, exc)

    def finish(self, timeout: float = 300.0) -> bool:
        """After the last step of a task with a training budget (`[train] total_steps`): let the daemon
        finish, as a daemon's own trainer does past its budget (README, `total_steps`): it mixes this model
        with its neighbours' until they agree, the deltas arriving here; returns once it has finished
        (True), or after `timeout` seconds or with no daemon attached (False). The model is then the swarm's
        consensus, the one to evaluate and save. Call `close()` afterwards."""
        if self._closed:
            raise AttachError("finish() after close()")
        if self._conn is not None and self._conn.total_steps is None:
            raise AttachError(f"task {self._conn.task_id!r} has no training budget ([train] total_steps): no finish")
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            conn = self._conn or self._adopt()
            if conn is None:
                time.sleep(min(0.2, max(0.0, deadline - time.monotonic())))
                continue
            if conn.finished:
                return True
            try:
                self._serve(conn, wait=min(0.2, max(0.0, deadline - time.monotonic())))
                self._flush(conn)
            except (OSError, proto.AttachProtocolError, AttachError) as exc:
                self._lost(conn, exc)
        conn = self._conn
        return conn is not None and conn.finished

    def close(self) -> None:
        """Detach: the daemon stops the task (it keeps nothing of the model; the script saves its own)."""
        if self._closed:
            return
        self._closed = True
        self._stop.set()
        if self._hook is not None:
            self._hook.remove()
        conn, self._conn = self._conn, None
        if conn is not None:
            with contextlib.suppress(OSError):  # a daemon already gone needs no goodbye
                _send(conn.sock, {"t": proto.BYE})
            conn.close()
        with self._lock:
            handover, self._handover = self._handover, None
        if handover is not None:
            handover.close()

    def __enter__(self) -> Attached:
        return self

    def __exit__(
        self, kind: type[BaseException] | None, value: BaseException | None, traceback: TracebackType | None
    ) -> None:
        self.close()

    # -- connecting ------------------------------------------------------------------------------------

    def _connect(self) -> _Connection:
        """Connect, say hello and take the welcome with its shared memory. Raises AttachError."""
        sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        sock.settimeout(CONNECT_TIMEOUT)
        try:
            sock.connect(str(self.socket_path))
        except OSError as exc:
            sock.close()
            raise AttachError(
                f"no gossipd daemon answers on {self.socket_path} ({exc.strerror or exc}): start one with "
                "`gossipd run` (or pass socket_path= the daemon's --socket)"
            ) from None
        try:
            hello = {
                "t": proto.HELLO,
                "v": proto.VERSION,
                "task": self.task_text,
                "file": str(self.task_path),
                "base": str(self.task_path.parent),
                "layout": proto.entries_to_wire(self.entries),
                "pid": os.getpid(),
                "step": self.steps,
                "device": str(next(iter(self.tensors.values())).device),
            }
            if self.examples is not None:
                hello["examples"] = self.examples
            _send(sock, hello)
            unpacker = proto.unpacker()
            welcome, fd = _receive_welcome(sock, unpacker)
            try:
                shared = SharedState(fd, self.layout)
            finally:
                os.close(fd)
            shared.publish(self.steps, self.samples, self._loss)
            sock.settimeout(SEND_TIMEOUT)
            budget = welcome.get("total_steps")
            total_steps = budget if isinstance(budget, int) and not isinstance(budget, bool) else None
            return _Connection(sock, shared, unpacker, str(welcome["task"]), str(welcome["hash"]), total_steps)
        except (OSError, proto.AttachProtocolError, ValueError) as exc:
            sock.close()
            raise AttachError(f"attaching to {self.socket_path} failed: {exc}") from None
        except AttachError:
            sock.close()
            raise

    def _adopt(self) -> _Connection | None:
        """A connection the background thread made since the daemon went away, if any."""
        with self._lock:
            conn, self._handover = self._handover, None
        if conn is not None:
            self._conn = conn
            log.info("attached again to task %s", conn.task_id)
        return conn

    def _lost(self, conn: _Connection, error: BaseException) -> None:
        log.warning("lost the gossipd daemon (%s): training on alone, attaching again in the background", error)
        conn.close()
        self._conn = None
        if self._retry is None or not self._retry.is_alive():
            self._retry = threading.Thread(target=self._reconnect, name="gossipd-attach", daemon=True)
            self._retry.start()

    def _reconnect(self) -> None:
        while not self._stop.wait(RETRY_SECONDS):
            try:
                conn = self._connect()
            except AttachError as exc:
                log.debug("attaching again: %s", exc)
                continue
            with self._lock:
                if self._closed:
                    conn.close()
                else:
                    self._handover = conn
            return

    # -- serving the daemon's requests -----------------------------------------------------------------

    def _serve(self, conn: _Connection, wait: float) -> None:
        """Handle every message that has arrived (waiting up to `wait` seconds for the first); the replies
        wait in `conn.replies` for `_flush`."""
        for message in _receive(conn, wait):
            kind = message["t"]
            if kind == proto.SYNC:
                names = self.entries if message.get("full") else [e for e in self.entries if e.parameter]
                with torch.no_grad():
                    for entry in names:
                        copy_out(self.tensors[entry.name], conn.shared.out[entry.name])
                conn.replies.append({"t": proto.SYNCED, "id": proto.field(message, "id", int), "n": self.steps})
            elif kind == proto.DELTA:
                with torch.no_grad():
                    for entry in self.entries:
                        if entry.parameter:
                            add_in(self.tensors[entry.name], conn.shared.inward[entry.name])
                conn.replies.append({"t": proto.APPLIED, "id": proto.field(message, "id", int)})
            elif kind == proto.LOAD:
                with torch.no_grad():
                    for entry in self.entries:
                        copy_in(self.tensors[entry.name], conn.shared.inward[entry.name])
                conn.replies.append({"t": proto.LOADED, "id": proto.field(message, "id", int)})
                log.info("loaded a neighbour's model (step %s)", message.get("step"))
            elif kind == proto.PACE:
                conn.pace.on_pace(message)
            elif kind == proto.READY:
                conn.ready = True
            elif kind == proto.FINISHED:
                conn.finished = True
            elif kind == proto.ERROR:
                raise AttachError(f"the daemon refused: {message.get('message')}")
            else:
                raise proto.AttachProtocolError(f"unexpected {kind!r}")

    def _flush(self, conn: _Connection) -> None:
        """Send this step's replies in one write: each write wakes the daemon's event loop, and on a shared
        core every wake-up is time the script does not train."""
        if conn.replies:
            replies, conn.replies = conn.replies, []
            conn.sock.sendall(b"".join(proto.encode(m) for m in replies))


# -- moving tensors: the model may be on any device and in any floating dtype; the shared memory is CPU --


def copy_out(tensor: torch.Tensor, view: torch.Tensor) -> None:
    """The model's tensor into shared memory (cast to its dtype there, copied off the device)."""
    view.copy_(tensor.detach())


def add_in(parameter: torch.Tensor, view: torch.Tensor) -> None:
    """A delta from shared memory added to a parameter, on the parameter's device and in its dtype."""
    parameter.add_(view.to(device=parameter.device, dtype=parameter.dtype))


def copy_in(tensor: torch.Tensor, view: torch.Tensor) -> None:
    """A whole tensor from shared memory into the model's."""
    tensor.copy_(view.to(device=tensor.device, dtype=tensor.dtype))


def _model_entries(model: nn.Module) -> tuple[dict[str, torch.Tensor], tuple[proto.Entry, ...]]:
    """The model's state as entries: trainable parameters (mixed) and the buffers the shared memory can hold
    (copied with whole states; BatchNorm's running statistics stay each peer's own otherwise)."""
    tensors: dict[str, torch.Tensor] = {}
    entries: list[proto.Entry] = []
    for name, parameter in model.named_parameters():
        if parameter.requires_grad:
            tensors[name] = parameter.data
            dtype = _WIRE_DTYPES.get(parameter.dtype, "float32")
            entries.append(proto.Entry(name, tuple(parameter.shape), dtype, True))
    for name, buffer in model.named_buffers():
        if buffer.dtype in _WIRE_DTYPES and name not in tensors:
            tensors[name] = buffer
            entries.append(proto.Entry(name, tuple(buffer.shape), _WIRE_DTYPES[buffer.dtype], False))
    if not any(e.parameter for e in entries):
        raise AttachError("the model has no trainable parameters to mix")
    return tensors, tuple(entries)


def _send(sock: socket.socket, message: dict[str, Any]) -> None:
    sock.sendall(proto.encode(message))


def _receive(conn: _Connection, wait: float) -> list[dict[str, Any]]:
    """The messages that have arrived, reading the socket without blocking (or up to `wait` seconds for the
    first bytes). Raises ConnectionError when the daemon closed the connection (after its last words, an
    error message, if it said any)."""
    sock = conn.sock
    closed = False
    sock.settimeout(wait if wait > 0 else 0.0)
    try:
        while True:
            try:
                data = sock.recv(1 << 16)
            except (BlockingIOError, TimeoutError):
                break
            if not data:
                closed = True
                break
            conn.unpacker.feed(data)
            sock.settimeout(0.0)  # after the first bytes, only what is already there
    finally:
        sock.settimeout(SEND_TIMEOUT)
    try:
        messages = [proto.check(m, proto.DAEMON_MESSAGES) for m in conn.unpacker]
    except (msgpack.ExtraData, msgpack.FormatError, msgpack.StackError, ValueError) as exc:
        raise proto.AttachProtocolError(f"not a msgpack message: {exc}") from None
    if closed:
        refusal = next((m for m in messages if m["t"] == proto.ERROR), None)
        if refusal is not None:
            raise AttachError(f"the daemon refused: {refusal.get('message')}")
        raise ConnectionError("the daemon closed the connection")
    return messages


def _receive_welcome(sock: socket.socket, unpacker: Any) -> tuple[dict[str, Any], int]:
    """The daemon's first message and the shared memory's descriptor that comes with it (or its refusal)."""
    fd: int | None = None
    deadline = time.monotonic() + CONNECT_TIMEOUT
    while True:
        sock.settimeout(max(0.01, deadline - time.monotonic()))
        data, fds, _flags, _address = socket.recv_fds(sock, 1 << 16, 1)
        if fds:
            fd = fds[0]
        if not data:
            raise AttachError("the daemon closed the connection before welcoming this script")
        unpacker.feed(data)
        for raw in unpacker:
            message = proto.check(raw, proto.DAEMON_MESSAGES)
            if message["t"] == proto.ERROR:
                if fd is not None:
                    os.close(fd)
                raise AttachError(f"the daemon refused: {message.get('message')}")
            if message["t"] != proto.WELCOME or fd is None:
                raise proto.AttachProtocolError(f"expected a welcome with shared memory, received {message['t']}")
            return message, fd


def attach(
    model: nn.Module,
    task: str | os.PathLike[str],
    *,
    optimizer: torch.optim.Optimizer | None = None,
    socket_path: str | os.PathLike[str] | None = None,
    batch_size: int | None = None,
    examples: int | None = None,
    timeout: float = 120.0,
) -> Attached:
    """Attach `model` to the task declared in the TOML file `task` (no [model] or [data]: the script owns
    them), on the daemon of the control socket `socket_path` (default: `gossipd run`'s). With `optimizer`,
    each of its steps is a step of the swarm; without, call `step()` after each. `batch_size`: examples
    per step, for status. `examples`: how many training examples the script has, which weighs its exchanges in
    a task weighted by samples (`[gossip] weigh_by`, the default); without it the script mixes with equal
    weight. Blocks until the task runs (a model that has not trained yet first gets a trained
    neighbour's, if the swarm has one, for up to the daemon's --join-timeout). Raises AttachError if no daemon
    answers or it refuses the task or the model (the message says why)."""
    return Attached(
        model,
        task,
        optimizer=optimizer,
        socket_path=socket_path,
        batch_size=batch_size,
        examples=examples,
        timeout=timeout,
    )
