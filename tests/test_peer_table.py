"""The peer table: its two kinds of leaving a peer alone, a back-off after failures (this end starts no exchange
with it for a while) and a penalty after a rejection (refused both ways); and the first step a peer declared."""

from __future__ import annotations

from gossipd.peering.table import PeerTable


def table_with(peer: str, now: list[float]) -> PeerTable:
    table = PeerTable(self_id="me", clock=lambda: now[0], liveness=60.0)
    table.saw(peer, "pubsub", member=True)
    return table


def test_failures_back_a_peer_off_exponentially_but_never_refuse_it() -> None:
    now = [0.0]
    table = table_with("p", now)
    delays = [table.exchange_failed("p") for _ in range(7)]
    assert delays == [1.0, 2.0, 4.0, 8.0, 16.0, 30.0, 30.0]
    assert not table.is_live("p")  # this end does not pick it ...
    assert not table.refuses("p")  # ... but answers it: a peer that opens an exchange is back
    now[0] = 29.9
    assert not table.is_live("p")
    now[0] = 30.0
    assert table.is_live("p")


def test_a_success_ends_the_back_off_at_once() -> None:
    now = [0.0]
    table = table_with("p", now)
    for _ in range(4):
        table.exchange_failed("p")
    table.exchange_succeeded("p", distance=0.5)
    record = table.get("p")
    assert record is not None and record.consecutive_failures == 0 and record.backoff_until is None
    assert table.is_live("p")
    assert table.exchange_failed("p") == 1.0  # the next failure starts the doubling afresh


def test_a_penalty_refuses_both_ways_and_outlasts_a_success() -> None:
    now = [0.0]
    table = table_with("p", now)
    table.back_off("p", 30.0)
    assert table.refuses("p") and not table.is_live("p")
    table.exchange_succeeded("p", distance=0.5)  # one already running when the penalty fell
    assert table.refuses("p") and not table.is_live("p")
    table.exchange_failed("p")  # a shorter failure back-off does not shorten the penalty
    now[0] = 29.0
    assert table.refuses("p") and not table.is_live("p")
    now[0] = 30.0
    assert not table.refuses("p") and table.is_live("p")


def test_the_first_step_a_peer_declares_is_kept_as_it_arrives() -> None:
    # A start wait looks every 0.05 s; a co-starter's step-0 heartbeat and its first step may both arrive
    # between two looks, and the first must not be lost to the second.
    table = PeerTable(self_id="me", clock=lambda: 0.0, liveness=60.0)
    table.saw("p", "bootstrap")
    table.saw("p", "pubsub", member=True, step=0)
    table.saw("p", "pubsub", member=True, step=3)
    record = table.get("p")
    assert record is not None and (record.first_step, record.step) == (0, 3)
    table.saw("q", "pubsub", member=True, step=120)
    table.saw("q", "pubsub", member=True, step=None)  # a heartbeat that says no step changes nothing
    record = table.get("q")
    assert record is not None and (record.first_step, record.step) == (120, 120)
