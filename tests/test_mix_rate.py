"""How much mixing a peer gets per training step (gossipd.mixing.mix_rate)."""

from __future__ import annotations

import pytest

from gossipd.mixing.mix_rate import MixRate


def test_nothing_landed_reads_none() -> None:
    assert MixRate().per_step(50) is None


def test_shares_over_the_steps_since_the_first_exchange() -> None:
    rate = MixRate(window=100)
    for step in range(10, 30, 2):  # one exchange every 2 steps, each moving the peer a third of the way
        rate.landed(step, 1 / 3)
    assert rate.per_step(30) == pytest.approx(10 * (1 / 3) / 20)


def test_old_exchanges_leave_the_window() -> None:
    rate = MixRate(window=100)
    for step in range(0, 100):
        rate.landed(step, 0.5)  # one a step at w = 1/2
    assert rate.per_step(100) == pytest.approx(0.5 - 0.005)  # step 0 has just left the window
    for step in range(100, 200, 4):
        rate.landed(step, 0.2)  # then one every 4 steps at 0.2
    assert rate.per_step(200) == pytest.approx(24 * 0.2 / 100)  # steps 104-196; 100 has left too


def test_what_it_keeps_stays_within_the_window_unread() -> None:
    rate = MixRate(window=50)
    for step in range(10_000):
        rate.landed(step, 0.25)
    assert len(rate._landed) == 50
    assert rate.per_step(10_000) == pytest.approx(49 * 0.25 / 50)


def test_a_step_that_did_not_move_keeps_the_last_reading() -> None:
    """A replaced model can bring an earlier step count: the rate is not recomputed over no steps."""
    rate = MixRate(window=100)
    rate.landed(40, 0.5)
    rate.landed(41, 0.5)
    assert rate.per_step(42) == pytest.approx(0.5)
    assert rate.per_step(30) == pytest.approx(0.5)


def test_negative_shares_count_as_none_and_the_window_must_hold_a_step() -> None:
    rate = MixRate(window=10)
    rate.landed(0, -1.0)
    assert rate.per_step(5) == 0.0
    with pytest.raises(ValueError, match="at least one step"):
        MixRate(window=0)
