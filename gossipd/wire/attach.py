"""The attach protocol between a training script and its local daemon (protocols/attach-v2.md); no I/O.

A script attaches its model to a task of the daemon over a Unix socket. The socket carries small msgpack
maps, one after another (msgpack's own streaming unpacker finds where each ends); the tensors travel through
a shared memory file the daemon creates and passes over the socket with its welcome. The memory starts with
a small header, the script's counters (steps, examples, last loss), which the script writes at every step
and the daemon reads when it needs them, so a step costs the script no message. Then come two copies of the
model's state laid out alike (`SharedLayout`): `out`, which only the script writes (its model at a sync),
and `in`, which only the daemon writes (a delta to add, or a whole state to load). Each side writes its
region only when the other is not reading it: the daemon has at most one delta or load outstanding, and
reads `out` only after the script's reply to a sync.

The script tells the daemon about its steps only when the daemon asked to hear (`pace`: the step at which
an exchange falls due or the script must wait for a mix) and about once a second for status; `ScriptPace`
keeps that bookkeeping on the script's side.
"""

from __future__ import annotations

import hashlib
import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

import msgpack

from gossipd.wire.tensors import DTYPES, MAX_NAME_LENGTH, MAX_NDIM

VERSION = 2
MAX_MESSAGE_BYTES = 1 << 20  # a hello carries the task file (≤ 1 MiB) and the layout
MAX_ENTRIES = 100_000
MAX_ELEMENTS = 1 << 33  # 8 G elements: far beyond any model a daemon can mix
ALIGN = 64  # every tensor starts on a cache line
HEADER_BYTES = 64  # the script's counters: int64 steps, int64 examples, float64 loss (NaN: none), then spare
REPORT_SECONDS = 1.0  # a stepping script reports at least this often (status shows its rate and loss)

# Script -> daemon
HELLO = "hello"  # task, layout, pid, step: asks to attach
STEP = "step"  # where the script is: n (steps), samples (total), loss (optional); when asked and ~1/s
SYNCED = "synced"  # the script wrote its model into `out` for sync `id`, at step `n`
APPLIED = "applied"  # the script added the delta in `in` (id)
LOADED = "loaded"  # the script loaded the state in `in` (id)
BYE = "bye"  # the script detaches
# Daemon -> script
WELCOME = "welcome"  # the task as the daemon runs it, and the shared memory (passed as a file descriptor)
READY = "ready"  # attached: train
SYNC = "sync"  # write the model (parameters; with `full`, buffers too) into `out`
DELTA = "delta"  # add `in`'s parameters to the model's
LOAD = "load"  # replace the model's state by `in` (a neighbour's model, for a joining script)
PACE = "pace"  # report at step `report`; wait for a mix at step `until`, at most `wait` seconds
FINISHED = "finished"  # past the training budget, the swarm finished mixing: the model is its consensus
ERROR = "error"  # refused or failed: `message`; the daemon closes the connection

SCRIPT_MESSAGES = frozenset({HELLO, STEP, SYNCED, APPLIED, LOADED, BYE})
DAEMON_MESSAGES = frozenset({WELCOME, READY, SYNC, DELTA, LOAD, PACE, FINISHED, ERROR})


class AttachProtocolError(ValueError):
    """A message that is not what the protocol allows; the connection is closed with this reason."""


@dataclass(frozen=True)
class Entry:
    """One tensor of the model's state: a parameter (mixed) or a buffer (copied with whole states only)."""

    name: str
    shape: tuple[int, ...]
    dtype: str  # the model's own dtype; parameters travel as float32 whatever it is
    parameter: bool

    @property
    def numel(self) -> int:
        return math.prod(self.shape)

    @property
    def shared_dtype(self) -> str:
        return "float32" if self.parameter else self.dtype


@dataclass(frozen=True)
class SharedLayout:
    """Where each entry sits in a region of the shared memory, and the regions' size (both sides compute it
    alike from the entries)."""

    entries: tuple[Entry, ...]
    offsets: Mapping[str, int]
    region_bytes: int

    @classmethod
    def of(cls, entries: Sequence[Entry]) -> SharedLayout:
        offsets: dict[str, int] = {}
        position = 0
        for entry in entries:
            offsets[entry.name] = position
            size = entry.numel * DTYPES[entry.shared_dtype].itemsize
            position += -(-size // ALIGN) * ALIGN
        return cls(tuple(entries), offsets, max(position, ALIGN))

    @property
    def total_bytes(self) -> int:
        """The header, then both regions: `out` first, then `in`."""
        return HEADER_BYTES + 2 * self.region_bytes

    @property
    def out_offset(self) -> int:
        return HEADER_BYTES

    @property
    def in_offset(self) -> int:
        return HEADER_BYTES + self.region_bytes

    @property
    def parameters(self) -> tuple[Entry, ...]:
        return tuple(e for e in self.entries if e.parameter)

    def digest(self, personal: frozenset[str] = frozenset()) -> str:
        """What peers' models must share to mix: the parameters' names, shapes and order (their dtypes and
        the buffers are each peer's own), less the `personal` ones ([gossip] personal): those are never
        mixed, so scripts whose personal heads differ in shape still mix the rest."""
        shared = [e for e in self.parameters if e.name not in personal]
        text = "\n".join(f"{e.name}:{','.join(map(str, e.shape))}" for e in shared)
        return hashlib.sha256(b"gossipd-layout-v1\0" + text.encode()).hexdigest()[:32]

    def differences(self, other: SharedLayout, limit: int = 5) -> list[str]:
        """How `other`'s parameters differ from these, by name (for a refusal a person can act on)."""
        mine = {e.name: e.shape for e in self.parameters}
        theirs = {e.name: e.shape for e in other.parameters}
        found = [f"{name}: missing" for name in mine if name not in theirs]
        found += [f"{name}: not in the task's model" for name in theirs if name not in mine]
        found += [
            f"{name}: shape {list(theirs[name])}, expected {list(shape)}"
            for name, shape in mine.items()
            if name in theirs and theirs[name] != shape
        ]
        if not found and [e.name for e in self.parameters] != [e.name for e in other.parameters]:
            found.append("the parameters come in another order")
        return found[:limit]


@dataclass
class ScriptPace:
    """The script's side of pacing: when to tell the daemon where it is, and when to wait for a mix.

    The daemon's last `pace` message holds: `report`, the step at which it wants a `step` message (an
    exchange falls due there, or the training budget ends); `until`, the last step the script may take before
    it waits for a mix; `wait`, for how long at most. Between those the script reports about once every
    REPORT_SECONDS, so status sees its rate. Times are the caller's clock (seconds)."""

    report: int | None = None
    until: int | None = None
    wait: float = 0.0
    reported_at: float | None = None
    holding_since: float | None = None

    def on_pace(self, message: Mapping[str, Any]) -> None:
        report = field(message, "report", int, optional=True)
        until = field(message, "until", int, optional=True)
        wait = float(field(message, "wait", (int, float)))
        if wait < 0 or not math.isfinite(wait):
            raise AttachProtocolError(f"pace: wait {wait} is not a duration")
        self.report, self.until, self.wait = report, until, wait

    def report_due(self, step: int, now: float) -> bool:
        if self.report is not None and step >= self.report:
            return True
        return self.reported_at is None or now - self.reported_at >= REPORT_SECONDS

    def reported(self, step: int, now: float) -> None:
        if self.report is not None and step >= self.report:
            self.report = None
        self.reported_at = now

    def hold_remaining(self, step: int, now: float) -> float | None:
        """Seconds the script should still wait for a mix before its next step; None: train on. The wait
        is the daemon's hold limit and a second more (the daemon releases it first unless it is stuck)."""
        if self.until is None or step < self.until:
            self.holding_since = None
            return None
        if self.holding_since is None:
            self.holding_since = now
        remaining = self.holding_since + self.wait + 1.0 - now
        if remaining <= 0:
            self.until = None  # the daemon did not release the script in time: train on
            self.holding_since = None
            return None
        return remaining

    def detached(self) -> None:
        """The daemon went away: nothing it asked for stands."""
        self.report = self.until = self.reported_at = self.holding_since = None


def encode(message: Mapping[str, Any]) -> bytes:
    packed: bytes = msgpack.packb(dict(message), use_bin_type=True)
    return packed


def unpacker() -> msgpack.Unpacker:
    """A streaming reader: feed it bytes as they come, iterate the whole messages."""
    return msgpack.Unpacker(raw=False, max_buffer_size=2 * MAX_MESSAGE_BYTES, strict_map_key=True)


def check(message: Any, allowed: frozenset[str]) -> dict[str, Any]:
    """A received message as a map with a known type `t`, or AttachProtocolError."""
    if not isinstance(message, dict) or not isinstance(message.get("t"), str):
        raise AttachProtocolError(f"expected a map with a type `t`, received {type(message).__name__}")
    if message["t"] not in allowed:
        raise AttachProtocolError(f"unexpected message type {message['t']!r}")
    return message


def field(message: Mapping[str, Any], name: str, kind: type | tuple[type, ...], *, optional: bool = False) -> Any:
    """A field of the expected type (bool is not an int here), or AttachProtocolError naming it."""
    value = message.get(name)
    if value is None and optional:
        return None
    if not isinstance(value, kind) or (isinstance(value, bool) and kind in (int, (int, float))):
        raise AttachProtocolError(f"{message.get('t')}: field {name!r} is {value!r}, expected {_kind_name(kind)}")
    return value


def _kind_name(kind: type | tuple[type, ...]) -> str:
    kinds = kind if isinstance(kind, tuple) else (kind,)
    return " or ".join(k.__name__ for k in kinds)


def entries_to_wire(entries: Sequence[Entry]) -> list[list[Any]]:
    return [[e.name, list(e.shape), e.dtype, e.parameter] for e in entries]


def entries_from_wire(value: Any) -> tuple[Entry, ...]:
    """The layout a hello declares, checked: names unique and bounded, known dtypes, sane shapes."""
    if not isinstance(value, list) or not 0 < len(value) <= MAX_ENTRIES:
        raise AttachProtocolError(f"hello: layout must be a list of 1 to {MAX_ENTRIES} entries")
    entries: list[Entry] = []
    seen: set[str] = set()
    total = 0
    for item in value:
        if not (isinstance(item, list) and len(item) == 4):
            raise AttachProtocolError(f"hello: layout entry {item!r} is not [name, shape, dtype, parameter]")
        name, shape, dtype, parameter = item
        if not isinstance(name, str) or not 0 < len(name) <= MAX_NAME_LENGTH or name in seen:
            raise AttachProtocolError(f"hello: layout name {name!r} is empty, too long or repeated")
        if not isinstance(shape, list) or len(shape) > MAX_NDIM or not all(_dimension(d) for d in shape):
            raise AttachProtocolError(f"hello: {name}: bad shape {shape!r}")
        if dtype not in DTYPES or not isinstance(parameter, bool):
            raise AttachProtocolError(f"hello: {name}: dtype {dtype!r} is not one of {', '.join(DTYPES)}")
        entry = Entry(name, tuple(shape), dtype, parameter)
        total += entry.numel
        if total > MAX_ELEMENTS:
            raise AttachProtocolError(f"hello: the model has more than {MAX_ELEMENTS} elements")
        seen.add(name)
        entries.append(entry)
    if not any(e.parameter for e in entries):
        raise AttachProtocolError("hello: the model has no trainable parameters to mix")
    return tuple(entries)


def _dimension(value: Any) -> bool:
    return isinstance(value, int) and not isinstance(value, bool) and 0 <= value < (1 << 40)
