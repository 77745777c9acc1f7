"""Announcement pacing: a swarm's heartbeats stay near one every 2 s whatever its size, and each member is
judged live by the period it announced."""

from __future__ import annotations

import math

from gossipd.peering.announce import MAX_PERIOD, MIN_LIVENESS, SWARM_RATE, announce_period, liveness_window
from gossipd.peering.table import PeerTable


def test_the_period_stretches_with_the_swarm_so_its_total_rate_stays_put() -> None:
    assert announce_period(2.0, 0) == 2.0  # alone, or nearly: the configured period
    assert announce_period(2.0, 3) == 4 / SWARM_RATE
    assert announce_period(2.0, 15) == 32.0  # 16 members: one heartbeat every 2 s among them
    for members in (15, 63, 255):
        period = announce_period(2.0, members)
        assert (members + 1) / period == SWARM_RATE
    assert announce_period(2.0, 10**6) == MAX_PERIOD
    assert announce_period(60.0, 15) == 60.0  # an operator's longer period stands


def test_a_member_is_live_for_five_of_its_own_periods_and_never_less_than_the_floor() -> None:
    assert liveness_window(None) == MIN_LIVENESS
    assert liveness_window(1.0) == MIN_LIVENESS
    assert liveness_window(16.0) == 80.0
    assert liveness_window(math.nan) == MIN_LIVENESS
    assert liveness_window(1e9) == 5 * MAX_PERIOD


def test_the_table_judges_each_member_by_the_period_it_announced() -> None:
    now = [0.0]
    table = PeerTable(self_id="me", clock=lambda: now[0], liveness=15.0)
    table.saw("big-swarm", "pubsub", member=True, period=16.0)  # sees 16 members: announces every 16 s
    table.saw("newcomer", "pubsub", member=True, period=2.0)
    table.saw("old", "pubsub", member=True)  # a version-1 peer says nothing
    now[0] = 40.0
    assert table.live_members() == ["big-swarm"]
    now[0] = 81.0
    assert table.live_members() == []
