"""An auto task's edges as `gossipd status`, /v1/peers and /metrics show them: what the link controller
measured (gossipd.mixing.link_budget), turned into milliseconds, rates and named modes."""

from __future__ import annotations

from gossipd.mixing.auto import FULL
from gossipd.mixing.link_budget import EdgeLink
from gossipd.services.status import LinkStatus
from gossipd.services.task_runtime import link_statuses


def test_each_measured_edge_shows_its_latest_mode_and_what_that_mode_takes() -> None:
    full = EdgeLink(
        rung=2,
        exchanges=5,
        seconds={1: 0.004, 2: 0.009, FULL: 0.046875},
        bytes_per_second=3_200_000.0,
        budget=0.125,
        reason="full: rank 2 took 9 ms, full predicted 60 ms of a 125 ms budget",
        last_mode=FULL,
        last_seconds=0.05,
        first_at=100.0,
        last_at=102.0,
    )
    # The peer opened this one at rank 2 while this end's own rung is rank 1: the mode shown is the latest.
    answered = EdgeLink(exchanges=1, seconds={2: 0.01}, budget=0.2, last_mode=2, first_at=7.0, last_at=7.0)
    links = {"peer-b": full, "peer-a": answered, "peer-c": EdgeLink()}  # peer-c: chosen, never completed
    assert link_statuses(links) == (
        LinkStatus(
            peer_id="peer-a",
            mode="rank 2",
            reason="new edge: starting at the cheapest mode",
            exchanges=1,
            exchanges_per_second=None,  # one exchange is no rate yet
            exchange_ms=10.0,
            budget_ms=200.0,
            bytes_per_second=None,
        ),
        LinkStatus(
            peer_id="peer-b",
            mode="full",
            reason="full: rank 2 took 9 ms, full predicted 60 ms of a 125 ms budget",
            exchanges=5,
            exchanges_per_second=2.0,  # 4 intervals in 2 s
            exchange_ms=46.875,  # the running mean of whole models, not the latest 50 ms
            budget_ms=125.0,
            bytes_per_second=3_200_000.0,
        ),
    )


def test_no_edges_no_links() -> None:
    assert link_statuses({}) == ()
