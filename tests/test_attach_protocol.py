"""The attach protocol's pure parts: shared-memory layout and counters, layout digest, hello validation, message
checks, the script's side of pacing."""

from __future__ import annotations

import itertools
import math
import os
from pathlib import Path
from typing import Any

import pytest

from gossipd.adapters.shared_memory import SharedState, create_memory
from gossipd.paths import attach_socket
from gossipd.services.attach_server import read_hello
from gossipd.task.fields import TaskError
from gossipd.task.loader import AttachedModel, parse_attached_task, parse_task
from gossipd.wire import attach as proto

ENTRIES = (
    proto.Entry("conv.weight", (4, 1, 3, 3), "float16", True),
    proto.Entry("bn.running_mean", (4,), "float32", False),
    proto.Entry("bn.num_batches_tracked", (), "int64", False),
    proto.Entry("fc.bias", (3,), "float32", True),
)
TASK = '[task]\nid = "attached"\n\n[gossip]\nalgorithm = "powergossip"\nrank = 1\n'


def test_layout_places_every_entry_aligned_and_apart() -> None:
    layout = proto.SharedLayout.of(ENTRIES)
    spans = []
    for entry in ENTRIES:
        start = layout.offsets[entry.name]
        assert start % proto.ALIGN == 0
        size = entry.numel * (4 if entry.shared_dtype in ("float32",) else 8)
        spans.append((start, start + size))
    spans.sort()
    assert all(a_end <= b_start for (_, a_end), (b_start, _) in itertools.pairwise(spans))
    assert spans[-1][1] <= layout.region_bytes
    assert layout.total_bytes == proto.HEADER_BYTES + 2 * layout.region_bytes
    assert layout.out_offset == proto.HEADER_BYTES and layout.in_offset == layout.out_offset + layout.region_bytes
    # parameters travel as float32 whatever the model's dtype; buffers keep theirs
    assert ENTRIES[0].shared_dtype == "float32" and ENTRIES[2].shared_dtype == "int64"


def test_digest_covers_parameter_names_shapes_and_order_only() -> None:
    base = proto.SharedLayout.of(ENTRIES).digest()
    assert proto.SharedLayout.of(ENTRIES).digest() == base
    no_buffers = proto.SharedLayout.of([e for e in ENTRIES if e.parameter])
    assert no_buffers.digest() == base  # buffers are each peer's own
    half = [proto.Entry(e.name, e.shape, "float32", e.parameter) for e in ENTRIES]
    assert proto.SharedLayout.of(half).digest() == base  # so is the parameters' dtype
    wider = [proto.Entry("fc.bias", (4,), "float32", True) if e.name == "fc.bias" else e for e in ENTRIES]
    assert proto.SharedLayout.of(wider).digest() != base
    renamed = [proto.Entry("head.bias", e.shape, e.dtype, True) if e.name == "fc.bias" else e for e in ENTRIES]
    assert proto.SharedLayout.of(renamed).digest() != base
    assert proto.SharedLayout.of(list(reversed(ENTRIES))).digest() != base


def test_differences_name_the_mismatched_parameters() -> None:
    mine = proto.SharedLayout.of(ENTRIES)
    theirs = proto.SharedLayout.of(
        [
            proto.Entry("conv.weight", (8, 1, 3, 3), "float32", True),
            proto.Entry("head.bias", (3,), "float32", True),
        ]
    )
    found = mine.differences(theirs)
    assert "fc.bias: missing" in found
    assert "head.bias: not in the task's model" in found
    assert "conv.weight: shape [8, 1, 3, 3], expected [4, 1, 3, 3]" in found
    assert mine.differences(mine) == []


@pytest.mark.parametrize(
    ("layout", "complaint"),
    [
        (None, "must be a list"),
        ([], "must be a list"),
        ([["w", [2], "float32"]], "is not [name, shape, dtype, parameter]"),
        ([["w", [2], "float32", True], ["w", [2], "float32", True]], "repeated"),
        ([["", [2], "float32", True]], "empty"),
        ([["w", [-1], "float32", True]], "bad shape"),
        ([["w", [True], "float32", True]], "bad shape"),
        ([["w", [2], "complex64", True]], "dtype"),
        ([["w", [2], "float32", "yes"]], "dtype"),
        ([["b", [2], "float32", False]], "no trainable parameters"),
        ([["w", [1 << 20, 1 << 20], "float32", True]], "more than"),
    ],
)
def test_bad_layouts_are_refused_with_a_reason(layout: Any, complaint: str) -> None:
    with pytest.raises(proto.AttachProtocolError, match=complaint.replace("[", r"\[").replace("]", r"\]")):
        proto.entries_from_wire(layout)


def test_entries_round_trip_through_the_wire_form() -> None:
    assert proto.entries_from_wire(proto.entries_to_wire(ENTRIES)) == ENTRIES


def test_messages_are_checked_for_type_and_fields() -> None:
    with pytest.raises(proto.AttachProtocolError, match="expected a map"):
        proto.check([1, 2], proto.SCRIPT_MESSAGES)
    with pytest.raises(proto.AttachProtocolError, match="unexpected message type 'sync'"):
        proto.check({"t": "sync"}, proto.SCRIPT_MESSAGES)
    message = proto.check({"t": "step", "n": True}, proto.SCRIPT_MESSAGES)
    with pytest.raises(proto.AttachProtocolError, match="field 'n'"):
        proto.field(message, "n", int)  # a bool is not a step count
    assert proto.field({"t": "step"}, "loss", (int, float), optional=True) is None
    unpacker = proto.unpacker()
    unpacker.feed(proto.encode({"t": "bye"}) + proto.encode({"t": "step", "n": 1, "samples": 2})[:3])
    assert list(unpacker) == [{"t": "bye"}]  # the truncated second message waits for its rest


def _hello(**changes: Any) -> dict[str, Any]:
    hello = {
        "t": "hello",
        "v": proto.VERSION,
        "task": TASK,
        "file": "/x/task.toml",
        "base": "/x",
        "layout": proto.entries_to_wire(ENTRIES),
        "pid": 42,
        "step": 0,
        "device": "cpu",
    }
    hello.update(changes)
    return hello


def test_a_hello_gives_the_task_with_the_layout_in_its_hash() -> None:
    hello = read_hello(_hello())
    assert hello.task.id == "attached" and hello.pid == 42 and hello.step == 0
    other = read_hello(_hello(layout=proto.entries_to_wire([ENTRIES[0]])))
    assert other.task.hash != hello.task.hash  # a different model never mixes with this one
    assert read_hello(_hello(pid=7, step=5)).task.hash == hello.task.hash
    assert hello.examples is None and read_hello(_hello(examples=1234)).examples == 1234


@pytest.mark.parametrize(
    ("changes", "error", "complaint"),
    [
        ({"t": "step"}, proto.AttachProtocolError, "opens with hello"),
        ({"v": 99}, proto.AttachProtocolError, "version 99"),
        ({"base": "relative"}, proto.AttachProtocolError, "absolute"),
        ({"step": -1}, proto.AttachProtocolError, "negative"),
        ({"examples": -1}, proto.AttachProtocolError, "examples -1"),
        ({"examples": 1 << 48}, proto.AttachProtocolError, "examples"),
        ({"examples": "many"}, proto.AttachProtocolError, "field 'examples'"),
        ({"task": "[task\n"}, TaskError, "not valid TOML"),
        ({"task": TASK + '[model]\nname = "cnn"\n'}, TaskError, "names no model or data"),
        ({"task": TASK + '[data]\nformat = "idx"\n'}, TaskError, "names no model or data"),
        ({"task": TASK + "[train]\nlr = 0.1\n"}, TaskError, "takes only total_steps"),
        ({"task": TASK + "[privacy]\nnoise_multiplier = 1.0\n"}, TaskError, "DP-SGD"),
    ],
)
def test_a_bad_hello_is_refused_naming_what_is_wrong(changes: dict[str, Any], error: type, complaint: str) -> None:
    with pytest.raises(error, match=complaint):
        read_hello(_hello(**changes))


def test_an_attached_task_keeps_the_budget_and_the_other_sections() -> None:
    text = TASK + "[train]\ntotal_steps = 100\n\n[robust]\nclip = false\n"
    task = parse_attached_task(
        text, file="t", base_dir=Path("."), model=lambda _personal: AttachedModel(layout="abc", parameters=10)
    )
    assert task.train.total_steps == 100 and not task.robust.clip
    assert task.model.name == "attached"


def test_a_daemon_task_file_still_needs_model_and_data() -> None:
    with pytest.raises(TaskError, match="data"):
        parse_task(TASK)


def test_the_attach_socket_sits_beside_the_control_socket() -> None:
    assert attach_socket(Path("/run/gossipd/gossipd.sock")) == Path("/run/gossipd/gossipd-attach.sock")
    assert attach_socket(Path("/tmp/x/sock")) == Path("/tmp/x/sock-attach.sock")


def test_the_counters_one_side_publishes_the_other_reads() -> None:
    layout = proto.SharedLayout.of(ENTRIES)
    fd = create_memory(layout.total_bytes)
    try:
        script, daemon = SharedState(fd, layout), SharedState(fd, layout)
    finally:
        os.close(fd)
    assert daemon.counters() == (0, 0, 0.0)  # zeroed memory, until the daemon writes its hello's step
    daemon.publish(0, 0, None)
    assert daemon.counters() == (0, 0, None)
    script.publish(12, 384, 0.25)
    assert daemon.counters() == (12, 384, 0.25)
    script.out["fc.bias"].fill_(3.0)  # the regions lie past the counters
    script.publish(13, 416, None)
    assert daemon.counters() == (13, 416, None) and float(daemon.out["fc.bias"][0]) == 3.0
    daemon.close()
    assert daemon.counters() == (13, 416, None)  # the last read, once unmapped
    script.close()


def test_script_pace_reports_where_asked_and_about_once_a_second() -> None:
    pace = proto.ScriptPace()
    assert pace.report_due(1, now=0.0)  # nothing reported yet
    pace.reported(1, now=0.0)
    pace.on_pace({"t": proto.PACE, "report": 5, "until": None, "wait": 2.0})
    assert not pace.report_due(4, now=0.5)
    assert pace.report_due(5, now=0.5)
    pace.reported(5, now=0.5)
    assert not pace.report_due(6, now=1.0)  # the report asked for was made
    assert pace.report_due(7, now=1.6)  # a second since the last one
    pace.reported(7, now=1.6)
    pace.on_pace({"t": proto.PACE, "report": 9, "until": None, "wait": 2.0})
    pace.reported(8, now=2.7)  # a timed report before the step asked for keeps the request
    assert pace.report_due(9, now=2.8)


def test_script_pace_holds_at_until_for_the_wait_and_a_second_more() -> None:
    pace = proto.ScriptPace()
    pace.on_pace({"t": proto.PACE, "report": 4, "until": 4, "wait": 2.0})
    assert pace.hold_remaining(3, now=0.0) is None
    assert pace.hold_remaining(4, now=10.0) == pytest.approx(3.0)
    assert pace.hold_remaining(4, now=12.5) == pytest.approx(0.5)
    assert pace.hold_remaining(4, now=13.1) is None  # the daemon never answered: train on
    assert pace.hold_remaining(4, now=13.2) is None
    pace.on_pace({"t": proto.PACE, "report": None, "until": 6, "wait": 2.0})
    assert pace.hold_remaining(6, now=20.0) == pytest.approx(3.0)
    pace.on_pace({"t": proto.PACE, "report": None, "until": 10, "wait": 2.0})  # a mix: go on
    assert pace.hold_remaining(6, now=20.1) is None
    pace.detached()
    assert pace.until is None and pace.report_due(1, now=0.0)


@pytest.mark.parametrize(
    "message",
    [
        {"t": "pace", "report": "soon", "wait": 1.0},
        {"t": "pace", "until": 1.5, "wait": 1.0},
        {"t": "pace", "report": 1},
        {"t": "pace", "wait": -1.0},
        {"t": "pace", "wait": math.inf},
    ],
)
def test_a_bad_pace_is_refused(message: dict[str, Any]) -> None:
    with pytest.raises(proto.AttachProtocolError):
        proto.ScriptPace().on_pace(message)
