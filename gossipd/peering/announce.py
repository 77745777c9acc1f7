"""How often a peer announces itself on its task's topic, and how long a neighbour's announcement keeps it
live. Pure.

Every heartbeat reaches every member of the swarm (GossipSub floods a topic through its mesh, about twice
per member on loopback), so what each member receives grows with the swarm's total rate of heartbeats, not
with its own. A fixed period makes that traffic grow with the swarm: 16 daemons announcing every 2 s cost
each of them about 27 KB/s each way, nearly all of it GossipSub carrying heartbeats (measured 2026-12-03).
Stretching each member's period with the number of live members it sees keeps the swarm's total rate near
`SWARM_RATE` heartbeats a second (one every 2 s) whatever its size, so each member's share stays about
constant.

A heartbeat says how long until the next one (`every`), so a receiver judges each sender by its own
period: members that count the swarm differently, or a peer that just joined and still announces every
`base` seconds, are never taken for dead in between.
"""

from __future__ import annotations

import math

# Heartbeats a second, the whole swarm together. Each reaches every member about twice (once per mesh link
# it arrives on) at ~470 bytes with GossipSub's envelope, so each member's discovery traffic is about
# 2 × 470 × SWARM_RATE bytes a second each way whatever the swarm's size. At one a second, 16 idle daemons of
# one machine read 2.1-2.9 KB/s in + out each (4 runs, 2026-12-06), over the 2 KB/s a peer should cost; at
# one every 2 s, 1.4-1.6. The price is staleness: at 16 members each announces every 32 s (liveness 160 s),
# which only the status, the start wait and `min_peers` read late; a dead neighbour's exchanges fail and back
# off at once, and what the finish needs (`done`) is announced the moment it changes.
SWARM_RATE = 0.5
MISSED_BEATS = 5  # a member is live until this many of its periods pass without a word from it
MIN_LIVENESS = 15.0  # seconds: never less, however often a member announces
MAX_PERIOD = 600.0  # a peer announces at least this often, however large its swarm


def announce_period(base: float, live_members: int, swarm_rate: float = SWARM_RATE) -> float:
    """Seconds between this peer's heartbeats when it sees `live_members` others: `base` in a small swarm,
    else (members + itself) / `swarm_rate`: 2 s for each by default."""
    return min(MAX_PERIOD, max(base, (live_members + 1) / swarm_rate))


def liveness_window(period: float | None, floor: float = MIN_LIVENESS) -> float:
    """How long a member stays live after its last heartbeat, given the period it announced (None: it did
    not say, a version-1 peer: the floor)."""
    if period is None or not math.isfinite(period) or period <= 0:
        return floor
    return max(floor, MISSED_BEATS * min(period, MAX_PERIOD))
