"""Property-based fuzzing (hypothesis) of everything that reads untrusted input.

Targets: the wire decoder (raw bytes, and mutated message-shaped maps), discovery heartbeats (open and
closed tasks), an exchange session fed hostile message sequences, the control API's routes, and the task
TOML loader. A target *crashes* when it raises anything but its documented rejection, or when a session
rejects input but still touches the model. `make fuzz` runs ≥ 100,000 inputs; the tests run a few hundred.

    python -m gossipd.tools.fuzz [--inputs 100000] [--json out/fuzz.json]
"""

from __future__ import annotations

import argparse
import contextlib
import datetime
import json
import random
import resource
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import msgpack
import torch
import trio
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from gossipd.adapters.http_unix import Request
from gossipd.mixing.algorithm import Algorithm
from gossipd.mixing.choco import ChocoConfig, ChocoGossip
from gossipd.mixing.edge import EdgeState
from gossipd.mixing.layout import ParamLayout
from gossipd.mixing.plain import PlainConfig, PlainGossip
from gossipd.mixing.powergossip import PowerGossip, PowerGossipConfig
from gossipd.mixing.session import ExchangeSession
from gossipd.services.control import ControlError, ErrorCode, JoinRequest
from gossipd.services.control_api import handle_request
from gossipd.services.status import DaemonStatus, TaskStatus
from gossipd.task.fields import TaskError
from gossipd.task.loader import parse_task
from gossipd.tools.reporting import machine, replace_section
from gossipd.wire.errors import WireError
from gossipd.wire.heartbeat import decode_heartbeat
from gossipd.wire.messages import PROTOCOL_VERSION, Message, MessageType, decode_message, encode_message
from gossipd.wire.tensors import TensorSpec, WireTensor, from_wire, unpack_tensors

TASK = bytes(range(16))
KEY = b"k" * 32
LIMIT = 1 << 20


@dataclass
class Outcome:
    target: str
    inputs: int = 0
    crashes: int = 0
    seconds: float = 0.0
    first_crash: str = ""


# -- inputs ----------------------------------------------------------------------------------------------

_VALUES = st.one_of(
    st.none(),
    st.booleans(),
    st.integers(-(1 << 63), (1 << 64) - 1),
    st.floats(allow_nan=True, allow_infinity=True),
    st.text(max_size=12),
    st.binary(max_size=64),
    st.lists(st.integers(-3, 70000), max_size=4),
)
_MESSAGE_MAPS = st.fixed_dictionaries(
    {
        "v": st.one_of(st.just(PROTOCOL_VERSION), _VALUES),
        "type": st.one_of(st.sampled_from([t.value for t in MessageType]), _VALUES),
        "task": st.one_of(st.just(TASK), st.binary(max_size=20)),
        "epoch": st.one_of(st.integers(0, 5), _VALUES),
        "round": st.one_of(st.integers(0, 5), _VALUES),
        "deg": st.one_of(st.integers(0, 3), _VALUES),
    },
    optional={
        "phase": st.one_of(st.integers(0, 3), _VALUES),
        "data": st.one_of(st.binary(max_size=256), _VALUES),
        "reason": st.one_of(st.text(max_size=20), _VALUES),
        "proof": st.binary(max_size=40),
        "extra": _VALUES,
    },
)


def _model() -> dict[str, torch.Tensor]:
    g = torch.Generator().manual_seed(0)
    return {"w": torch.randn(6, 5, generator=g), "b": torch.randn(5, generator=g)}


def _tensor(name: str, shape: tuple[int, ...], draw_value: float) -> WireTensor:
    return WireTensor(name, "float32", shape, torch.full(shape, draw_value).numpy().astype("<f4").tobytes())


_HOSTILE_MESSAGES = st.builds(
    lambda kind, phase, epoch, rnd, tensors: Message(
        type=kind, task=TASK, epoch=epoch, round=rnd, degree=1, phase=phase, data=b"".join(t.data for t in tensors)
    ),
    st.sampled_from(list(MessageType)),
    st.integers(0, 2),
    st.integers(0, 3),
    st.integers(0, 3),
    st.lists(
        st.builds(
            _tensor,
            st.just("t"),  # only the data goes on the wire
            st.sampled_from([(6, 5), (5,), (5, 1), (6, 1), (1,), (4,)]),
            st.one_of(st.floats(-10, 10), st.just(float("nan")), st.just(float("inf"))),
        ),
        max_size=4,
    ),
)


# -- targets ---------------------------------------------------------------------------------------------


# What a receiver of the fuzz model expects in a plain round: its data splits by this layout.
_LAYOUT = {"w": TensorSpec("float32", (6, 5)), "b": TensorSpec("float32", (5,))}


def _decode(data: bytes) -> None:
    try:
        message = decode_message(data, max_size=LIMIT)
        for record in unpack_tensors(message.data, _LAYOUT).values():
            from_wire(record)
    except WireError:
        pass


def _heartbeat(data: bytes, closed: bool) -> None:
    with contextlib.suppress(WireError):
        decode_heartbeat(data, task=TASK, key=KEY if closed else None)


ALGORITHMS: dict[str, Algorithm[Any]] = {
    "plain": PlainGossip(PlainConfig()),
    "powergossip": PowerGossip(PowerGossipConfig(rank=1, iterations=2)),
    "choco": ChocoGossip(ChocoConfig(compressor="sign")),
}


def _session(name: str, messages: list[Message], answering: bool, synced: bool) -> None:
    """A session fed hostile messages, as the end that opened the exchange or as the one answering it; with
    an edge in step at (1, 0) or none, so that a message naming that edge reaches the rounds without a hello."""
    params = _model()
    before = {k: v.clone() for k, v in params.items()}
    algorithm = ALGORITHMS[name]
    layout = ParamLayout.of(params)
    edge = None
    if synced:
        edge = EdgeState(epoch=1, round=0, synced=True, data=algorithm.reset_edge(1, layout, torch.device("cpu")))
    session = ExchangeSession(
        algorithm=algorithm,
        params=params,
        layout=layout,
        self_id=b"a",
        peer_id=b"b",
        edge=edge,
        degree=1,
        task=TASK,
        fixed_weight=None,
        rng=random.Random(0),
        device=torch.device("cpu"),
    )
    if not answering:
        session.start()
    for index, message in enumerate(messages):
        try:
            received = decode_message(encode_message(message), max_size=LIMIT)
            if answering and index == 0:
                session.answer(received)
            else:
                session.receive(received)
            if session.done:
                break
        except WireError:
            break
    if session.done:
        delta = session.result().delta
        if not all(bool(torch.isfinite(d).all()) for d in delta.values()):
            raise AssertionError("a finished exchange produced a non-finite delta")
    if any(not torch.equal(before[k], params[k]) for k in params):
        raise AssertionError("a session modified the parameters it was given")


class _Backend:
    shutting_down = False

    def status(self) -> DaemonStatus:
        return DaemonStatus(peer_id="p", addresses=(), version="0", uptime_s=1.0, state_dir="/s", socket="/s", tasks=())

    def task_status(self, task_id: str) -> TaskStatus:
        raise ControlError(ErrorCode.TASK_NOT_FOUND, task_id)

    async def join(self, request: JoinRequest) -> TaskStatus:
        raise ControlError(ErrorCode.INVALID_TASK, "no")

    async def leave(self, task_id: str) -> None:
        raise ControlError(ErrorCode.TASK_NOT_FOUND, task_id)

    async def export_model(self, task_id: str) -> bytes:
        raise ControlError(ErrorCode.TASK_NOT_FOUND, task_id)


_PATHS = st.one_of(
    st.sampled_from(
        ["/v1/status", "/v1/peers", "/v1/tasks", "/v1/tasks/x", "/v1/tasks/x/model", "/metrics", "/v1/version"]
    ),
    st.text(max_size=30).map(lambda t: "/" + t),
)
_BODIES = st.one_of(
    st.binary(max_size=200),
    st.dictionaries(
        st.sampled_from(["path", "toml", "base_dir", "data", "peer_index", "peer_count", "x"]), _VALUES
    ).map(lambda d: json.dumps(d, default=str).encode()),
)


def _control(method: str, path: str, body: bytes) -> None:
    request = Request(method=method, path=path, query={}, headers={}, body=body)
    response = trio.run(handle_request, request, _Backend())
    if not 200 <= response.status < 600:
        raise AssertionError(f"status {response.status}")
    if response.status >= 500:
        raise AssertionError(f"{method} {path} made the API fail: {response.body[:200]!r}")


_TOML_KEYS = st.sampled_from(
    ["id", "format", "name", "lr", "batch_size", "algorithm", "rank", "compressor", "gamma", "partition", "root",
     "train_images", "train_labels", "hidden", "optimizer", "weight", "view_size", "clip", "noise_multiplier", "x"]
)  # fmt: skip
_TOML_SECTIONS = st.sampled_from(["task", "data", "model", "train", "gossip", "robust", "privacy", "access", "zz"])


def _toml_value(value: Any) -> str:
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, str):
        return json.dumps(value)
    if isinstance(value, list):
        return "[" + ", ".join(_toml_value(v) for v in value) + "]"
    return repr(value)


_TOML_TEXT = st.one_of(
    st.text(max_size=300),
    st.lists(
        st.tuples(
            _TOML_SECTIONS,
            st.dictionaries(
                _TOML_KEYS,
                st.one_of(
                    st.booleans(), st.integers(-5, 10**6), st.floats(-1e3, 1e3), st.text(max_size=10),
                    st.lists(st.integers(0, 300), max_size=3),
                ),
                max_size=5,
            ),
        ),
        max_size=8,
    ).map(lambda sections: "\n".join(f"[{name}]\n" + "\n".join(f"{k} = {_toml_value(v)}" for k, v in body.items())
                                     for name, body in sections)),
)  # fmt: skip


def _toml(text: str) -> None:
    with contextlib.suppress(TaskError):
        parse_task(text, file="fuzz.toml")


# -- the runner ------------------------------------------------------------------------------------------

TARGETS: dict[str, tuple[float, Callable[[int], Callable[[], None]]]] = {}


def _register(name: str, share: float, strategy_args: tuple[Any, ...], body: Callable[..., None]) -> None:
    def build(examples: int) -> Callable[[], None]:
        @settings(
            max_examples=examples,
            database=None,
            deadline=None,
            derandomize=False,
            suppress_health_check=list(HealthCheck),
        )
        @given(st.tuples(*strategy_args))
        def run(args: tuple[Any, ...]) -> None:
            COUNTS[name] = COUNTS.get(name, 0) + 1
            body(*args)

        runner: Callable[[], None] = run
        return runner

    TARGETS[name] = (share, build)


COUNTS: dict[str, int] = {}
_register("wire-bytes", 0.25, (st.binary(max_size=600),), _decode)
_register("wire-maps", 0.20, (_MESSAGE_MAPS,), lambda obj: _decode(msgpack.packb(obj, use_bin_type=True)))
_register("heartbeats", 0.10, (st.binary(max_size=300), st.booleans()), _heartbeat)
_register(
    "exchange-session",
    0.20,
    (
        st.sampled_from(list(ALGORITHMS)),
        st.lists(_HOSTILE_MESSAGES, min_size=1, max_size=5),
        st.booleans(),
        st.booleans(),
    ),
    _session,
)
_register("control-api", 0.10, (st.sampled_from(["GET", "POST", "DELETE", "PUT"]), _PATHS, _BODIES), _control)
_register("task-toml", 0.15, (_TOML_TEXT,), _toml)


def fuzz(total: int, only: str | None = None) -> list[Outcome]:
    outcomes = []
    for name, (share, build) in TARGETS.items():
        if only is not None and name != only:
            continue
        examples = max(1, round(total * share)) if only is None else total
        outcome = Outcome(target=name)
        started = time.perf_counter()
        COUNTS[name] = 0
        try:
            build(examples)()
        except Exception as exc:  # a crash: the property failed; hypothesis has shrunk it
            outcome.crashes += 1
            outcome.first_crash = f"{type(exc).__name__}: {exc}"[:500]
        outcome.inputs = COUNTS[name]
        outcome.seconds = time.perf_counter() - started
        outcomes.append(outcome)
    return outcomes


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--inputs", type=int, default=100_000)
    parser.add_argument("--target", choices=list(TARGETS))
    parser.add_argument("--json", help="write the results here")
    parser.add_argument("--record", type=Path, help="put the results table in this Markdown file's fuzz section")
    args = parser.parse_args()
    outcomes = fuzz(args.inputs, args.target)
    peak_mb = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
    print(f"{'target':<18}{'inputs':>10}{'crashes':>9}{'seconds':>9}")
    for o in outcomes:
        print(
            f"{o.target:<18}{o.inputs:>10,}{o.crashes:>9}{o.seconds:>9.1f}"
            + (f"  {o.first_crash}" if o.crashes else "")
        )
    total_inputs = sum(o.inputs for o in outcomes)
    crashes = sum(o.crashes for o in outcomes)
    print(f"{'total':<18}{total_inputs:>10,}{crashes:>9}    peak RSS {peak_mb:.0f} MB")
    if args.json:
        with open(args.json, "w") as handle:
            json.dump(
                {
                    "inputs": total_inputs,
                    "crashes": crashes,
                    "peak_rss_mb": peak_mb,
                    "targets": [o.__dict__ for o in outcomes],
                },
                handle,
                indent=1,
            )
    if args.record is not None:
        replace_section(args.record, "fuzz", record(outcomes, peak_mb), title="Reliability")
    raise SystemExit(1 if crashes else 0)


def record(outcomes: list[Outcome], peak_mb: float) -> str:
    """The Markdown table RELIABILITY.md carries: inputs, crashes and time per target, with date and machine."""
    lines = [
        f"Measured {datetime.date.today().isoformat()} on {machine()}; `make fuzz`.",
        "",
        "| target | inputs | crashes | seconds |",
        "| --- | ---: | ---: | ---: |",
    ]
    for o in outcomes:
        # A crash message may hold newlines or pipes, which would break the Markdown row.
        first = " ".join(o.first_crash.split()).replace("|", "/")[:120]
        crash = f" ({first})" if o.crashes else ""
        lines.append(f"| {o.target} | {o.inputs:,} | {o.crashes}{crash} | {o.seconds:.0f} |")
    total = sum(o.inputs for o in outcomes)
    crashes = sum(o.crashes for o in outcomes)
    lines.append(f"| **all** | **{total:,}** | **{crashes}** (goal 0) | {sum(o.seconds for o in outcomes):.0f} |")
    lines += ["", f"Peak memory of the fuzzing process: {peak_mb:.0f} MB RSS."]
    return "\n".join(lines)


if __name__ == "__main__":
    main()
