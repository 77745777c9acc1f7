"""StepPacer: when a step-paced peer starts exchanges and how far its trainer may run ahead of its mixes."""

from __future__ import annotations

import pytest

from gossipd.mixing.pacing import StepPacer


def test_an_exchange_falls_due_every_interval_counted_from_when_the_last_one_started() -> None:
    pacer = StepPacer(4, step=10)
    assert [s for s in range(10, 20) if pacer.due(s)] == [14, 15, 16, 17, 18, 19]
    pacer.started(15)  # started a step late (no partner was free at 14): the next is due 4 steps on
    assert not pacer.due(18) and pacer.due(19)


def test_chunks_stop_where_the_next_exchange_is_due_and_where_the_lag_runs_out() -> None:
    pacer = StepPacer(4, lag=10, step=0)
    assert pacer.chunk(0, 100) == 4  # up to the exchange due at 4
    assert pacer.chunk(2, 1) == 1  # never more than the trainer wanted
    pacer.started(4)
    assert pacer.chunk(4, 100) == 4  # next due at 8
    pacer.started(8)
    assert pacer.chunk(8, 100) == 2  # due at 12, but 10 steps past the last mix (at 0) is as far as it goes
    assert pacer.allowance(10) == 0 and pacer.chunk(10, 100) == 0  # hold: no mix yet
    pacer.mixed(9)  # a mix finished while the trainer was at step 9
    assert pacer.allowance(10) == 9 and pacer.chunk(10, 100) == 2


def test_a_due_exchange_that_could_not_start_does_not_stop_training_short_of_the_lag() -> None:
    pacer = StepPacer(4, step=0)  # lag 8
    assert pacer.due(4)
    assert pacer.chunk(4, 100) == 4  # due but not started: train on, up to the lag
    assert pacer.chunk(8, 100) == 0


def test_a_mix_never_moves_the_last_mix_back_and_release_lets_a_held_trainer_run_a_full_lag() -> None:
    pacer = StepPacer(2, step=0)  # lag 4
    pacer.mixed(6)
    pacer.mixed(3)  # an older exchange finishing late
    assert pacer.last_mix == 6
    assert pacer.allowance(10) == 0
    pacer.release(10)
    assert pacer.allowance(10) == 4


def test_a_declined_exchange_is_due_again_at_once_and_reset_starts_afresh() -> None:
    pacer = StepPacer(5, step=0)
    pacer.started(5)
    assert not pacer.due(7)
    pacer.retry(7)
    assert pacer.due(7)
    pacer.reset(1000)  # a neighbour's model (and its step count) was loaded
    assert not pacer.due(1004) and pacer.due(1005) and pacer.allowance(1000) == 10


def test_a_neighbour_mixed_with_within_the_interval_would_be_a_repeat() -> None:
    pacer = StepPacer(3, step=0)
    assert not pacer.repeats(None, 10)  # never mixed with
    assert pacer.repeats(10, 10) and pacer.repeats(8, 10)  # landed at this step, or 2 steps ago
    assert not pacer.repeats(7, 10)  # a whole interval ago
    assert not pacer.repeats(12, 10)  # noted at a step this peer's count has since gone back from
    pacer.set_every(1)  # the CPU budget's pace: only a mix at this very step repeats
    assert pacer.repeats(10, 10) and not pacer.repeats(9, 10)


@pytest.mark.parametrize(("every", "lag"), [(0, None), (4, 3)])
def test_nonsense_settings_are_refused(every: int, lag: int | None) -> None:
    with pytest.raises(ValueError, match="at least"):
        StepPacer(every, lag)


def test_a_new_pace_keeps_the_lag_in_proportion_and_the_due_exchange_due() -> None:
    pacer = StepPacer(2, lag=6, step=0)
    pacer.started(0)  # next due at 2
    pacer.set_every(10)
    assert pacer.every == 10 and pacer.lag == 30
    assert pacer.due(2)  # due under the old pace: still due
    pacer.started(2)
    assert not pacer.due(11) and pacer.due(12)
    pacer.set_every(1)
    assert pacer.lag == 3
    with pytest.raises(ValueError, match="at least 1"):
        pacer.set_every(0)


def test_an_exchange_paid_for_by_skipped_intervals_lets_the_trainer_step_through_its_predicted_time() -> None:
    pacer = StepPacer(2, step=0)  # lag 4
    pacer.mixed(10)
    assert pacer.allowance(10) == 4
    pacer.expect(10, 12)  # whole models predicted to take 12 steps' time
    assert pacer.allowance(10) == 12 and pacer.allowance(20) == 2 and pacer.allowance(22) == 0
    pacer.expect(22, 3)  # it steps through a short one too, and holds past its predicted end
    assert pacer.allowance(22) == 3
    pacer.expect(22, 1)  # never moves the last mix back
    assert pacer.allowance(22) == 3
    pacer.mixed(23)  # the exchange ended: the usual lag from there
    assert pacer.allowance(23) == 4
