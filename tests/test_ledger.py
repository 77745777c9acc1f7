"""The contribution ledger: what each neighbour started, answered, sent and declared, kept across departures
and restarts; and the heartbeat field that carries the declared dataset size."""

from __future__ import annotations

import dataclasses

import msgpack
import pytest

from gossipd.peering.ledger import Ledger
from gossipd.services.status import ContributionStatus
from gossipd.wire.errors import MalformedMessage, UnsupportedVersion
from gossipd.wire.heartbeat import MAX_KEYS, Heartbeat, decode_heartbeat, encode_heartbeat

TASK = b"T" * 16


class Clock:
    def __init__(self) -> None:
        self.now = 1_000.0

    def __call__(self) -> float:
        return self.now


def test_exchanges_are_booked_by_which_end_started_them() -> None:
    ledger = Ledger(clock=Clock())
    ledger.exchanged("a", started_by_us=True)
    ledger.exchanged("a", started_by_us=True)
    ledger.exchanged("a", started_by_us=False)
    ledger.failed("a")
    entry = ledger.get("a")
    assert entry is not None
    assert (entry.started, entry.answered, entry.failed, entry.exchanges) == (1, 2, 1, 3)


def test_time_seen_adds_up_only_while_the_neighbour_keeps_being_heard() -> None:
    clock = Clock()
    ledger = Ledger(clock=clock, gap=15.0)
    for _ in range(10):
        ledger.heard("a", step=5)
        clock.now += 2.0
    clock.now += 600.0  # it went away for ten minutes
    ledger.heard("a", step=900, dataset=1200)
    entry = ledger.get("a")
    assert entry is not None
    assert entry.seen_seconds == pytest.approx(18.0)
    assert entry.first_seen == 1_000.0 and entry.last_seen == clock.now
    assert (entry.declared_step, entry.declared_dataset) == (900, 1200)


def test_bytes_and_model_copies_are_booked_per_neighbour() -> None:
    ledger = Ledger(clock=Clock())
    ledger.traffic("a", sent=100, received=40)
    ledger.traffic("a", sent=5000, state=True)
    ledger.traffic("b", received=7)
    a, b = ledger.get("a"), ledger.get("b")
    assert a is not None and b is not None
    assert (a.bytes_sent, a.bytes_received, a.state_bytes_sent) == (5100, 40, 5000)
    totals = ledger.totals()
    assert (totals.neighbours, totals.bytes_sent, totals.bytes_received) == (2, 5100, 47)


def test_rejections_are_charged_only_to_neighbours_it_knows() -> None:
    ledger = Ledger(clock=Clock())
    ledger.heard("a")
    ledger.rejected("a", "shape-mismatch")
    ledger.rejected("a", "shape-mismatch")
    ledger.rejected("made-up-id", "heartbeat-malformed")  # anyone can make up ids: not a reason to book one
    entry = ledger.get("a")
    assert entry is not None and entry.rejections == {"shape-mismatch": 2} and entry.rejected == 2
    assert "made-up-id" not in ledger


def test_capacity_drops_the_least_recently_seen() -> None:
    clock = Clock()
    ledger = Ledger(clock=clock, capacity=3)
    for peer in "abcd":
        ledger.heard(peer)
        clock.now += 1
    ledger.heard("a")  # dropped when d came, a comes back as a new entry and pushes b out
    assert [e.peer_id for e in ledger.entries()] == ["a", "c", "d"]


def test_a_ledger_survives_a_restart_and_skips_malformed_entries() -> None:
    clock = Clock()
    ledger = Ledger(clock=clock)
    ledger.exchanged("a", started_by_us=False)
    ledger.heard("a", step=3, dataset=60000)
    ledger.heard("b")
    ledger.rejected("b", "auth-failed")
    saved = ledger.to_state()
    restored = Ledger(clock=clock)
    loaded = restored.restore([*saved, {"peer_id": "c", "started": -1}, "junk", {"peer_id": 7}])
    assert loaded == 2
    assert restored.to_state() == saved


def test_heartbeats_declare_the_dataset_size() -> None:
    beat = Heartbeat(
        task=TASK, peer="p", addresses=("/ip4/1.2.3.4/tcp/1",), step=5, loss=0.5, exchanges=2, dataset=9, every=8.5
    )
    assert decode_heartbeat(encode_heartbeat(beat), task=TASK) == beat
    finished = dataclasses.replace(beat, done=True)
    assert decode_heartbeat(encode_heartbeat(finished), task=TASK).done is True
    silent = Heartbeat(task=TASK, peer="p", addresses=(), step=0, loss=None, exchanges=0)  # an attached script's
    assert decode_heartbeat(encode_heartbeat(silent), task=TASK).dataset is None


def _raw(**fields: object) -> bytes:
    body = {"v": 3, "task": TASK, "peer": "p", "addrs": [], "step": 1, "loss": None, "exchanges": 0, "dataset": 5}
    body.update({"every": 2.0, "done": False})
    body.update(fields)
    packed: bytes = msgpack.packb({k: v for k, v in body.items() if v is not ...}, use_bin_type=True)
    return packed


def test_a_version_1_heartbeat_is_still_read_without_a_dataset_size() -> None:
    beat = decode_heartbeat(_raw(v=1, dataset=..., every=..., done=...), task=TASK)
    assert beat.step == 1 and beat.dataset is None and beat.every is None and beat.done is None


def test_a_version_2_heartbeat_is_read_without_saying_whether_its_peer_is_past_its_budget() -> None:
    beat = decode_heartbeat(_raw(v=2, done=...), task=TASK)
    assert (beat.dataset, beat.every, beat.done) == (5, 2.0, None)


def test_a_later_version_that_adds_keys_is_read_as_version_3() -> None:
    beat = decode_heartbeat(_raw(v=7, done=True, colour="blue", weights=[1, 2]), task=TASK)
    assert (beat.step, beat.dataset, beat.done) == (1, 5, True)
    with pytest.raises(MalformedMessage, match="lacks keys"):
        decode_heartbeat(_raw(v=7, done=...), task=TASK)  # it must still hold version 3's
    too_many = {f"k{i}": i for i in range(MAX_KEYS)}
    with pytest.raises(MalformedMessage):
        decode_heartbeat(_raw(v=7, **too_many), task=TASK)


@pytest.mark.parametrize(
    ("fields", "error"),
    [
        ({"dataset": -1}, MalformedMessage),
        ({"dataset": True}, MalformedMessage),
        ({"dataset": "many"}, MalformedMessage),
        ({"dataset": ...}, MalformedMessage),  # version 3 without it
        ({"v": 1, "done": ...}, MalformedMessage),  # version 1 with it
        ({"every": 0.0}, MalformedMessage),
        ({"every": 1e9}, MalformedMessage),
        ({"every": "soon"}, MalformedMessage),
        ({"every": ...}, MalformedMessage),
        ({"v": 2}, MalformedMessage),  # version 2 with `done`
        ({"done": ...}, MalformedMessage),  # version 3 without it
        ({"done": 1}, MalformedMessage),
        ({"done": None}, MalformedMessage),
        ({"v": 0}, UnsupportedVersion),
        ({"v": True}, UnsupportedVersion),
        ({"v": [2]}, UnsupportedVersion),
    ],
)
def test_malformed_dataset_sizes_and_periods_are_rejected(fields: dict[str, object], error: type[Exception]) -> None:
    with pytest.raises(error):
        decode_heartbeat(_raw(**fields), task=TASK)


def test_a_ledger_line_becomes_a_status_line_field_for_field() -> None:
    """The status record carries the ledger's fields one for one, plus whether the neighbour is live."""
    ledger = Ledger(clock=Clock())
    ledger.exchanged("a", started_by_us=True)
    ledger.rejected("a", "malformed")
    entry = ledger.entries()[0]
    line = ContributionStatus(live=True, **dataclasses.asdict(entry))
    assert {f.name for f in dataclasses.fields(ContributionStatus)} == {
        "live",
        *(f.name for f in dataclasses.fields(entry)),
    }
    assert line.answered == 1 and line.rejections == {"malformed": 1} and line.rejections is not entry.rejections
