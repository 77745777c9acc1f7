"""The mixing CPU budget: how a step-paced peer's steps per exchange follow the CPU mixing uses, and the
readings it is computed from."""

from __future__ import annotations

import pytest

from gossipd.adapters.cpu_usage import idle_from_stat
from gossipd.mixing.cpu_budget import SLACK, CpuBudget, Reading


def busy(usage: float, wall: float = 2.0) -> Reading:
    """A window in which mixing used `usage` of a core and no CPU of this process sat idle."""
    return Reading(wall=wall, mixing_cpu=usage * wall, idle=0.0)


def test_on_busy_cores_mixing_over_budget_stretches_the_pace_in_proportion() -> None:
    budget = CpuBudget(every=2, budget=0.1)
    assert budget.update(busy(0.2)) == 4  # twice the budget: half the exchanges
    assert budget.usage == pytest.approx(0.2) and budget.allowed == pytest.approx(0.1)
    assert budget.update(busy(0.1)) == 4  # on budget: stays
    assert budget.stretched


def test_under_budget_the_pace_comes_back_halfway_each_window_never_below_the_tasks() -> None:
    budget = CpuBudget(every=2, budget=0.1)
    budget.update(busy(0.8))
    assert budget.every == 16
    assert budget.update(busy(0.0)) == 8
    assert budget.update(busy(0.0)) == 4
    assert [budget.update(busy(0.0)) for _ in range(5)][-1] == 2
    assert not budget.stretched


def test_idle_cores_may_be_used_freely_less_the_slack() -> None:
    budget = CpuBudget(every=2, budget=0.1)
    # a whole idle core beside the one mixing uses 0.5 of: allowed 0.1 + 1.0 - SLACK, no stretch
    assert budget.update(Reading(wall=2.0, mixing_cpu=1.0, idle=2.0)) == 2
    assert budget.allowed == pytest.approx(0.1 + 1.0 - SLACK)
    # a little idle time (below the slack) does not lift the budget
    assert budget.update(Reading(wall=2.0, mixing_cpu=0.4, idle=0.2)) == 4
    # unknown idle time (no /proc/stat): the budget applies as if every core were busy
    assert budget.update(Reading(wall=2.0, mixing_cpu=0.8, idle=None)) == 16


def test_the_stretch_is_bounded_and_an_empty_window_changes_nothing() -> None:
    budget = CpuBudget(every=3, budget=0.05, max_stretch=4)
    assert budget.update(busy(5.0)) == 12
    assert budget.update(Reading(wall=0.0, mixing_cpu=1.0, idle=0.0)) == 12
    with pytest.raises(ValueError, match="steps per exchange"):
        CpuBudget(every=0, budget=0.1)
    with pytest.raises(ValueError, match="budget > 0"):
        CpuBudget(every=2, budget=0.0)


STAT = """cpu  10132153 290696 3084719 46828483 16683 0 25195 0 175628 0
cpu0 1393280 32966 572056 13366757 2648 0 10531 0 19532 0
cpu1 1335229 28464 433007 13372100 5536 0 6442 0 22424 0
cpu2 1315542 32120 454347 13371243 3390 0 2357 0 21536 0
intr 1462898 23 0 0
ctxt 2286451
"""


def test_idle_time_is_read_for_the_cpus_this_process_may_use() -> None:
    assert idle_from_stat(STAT, {0}, 100.0) == pytest.approx((13366757 + 2648) / 100)
    assert idle_from_stat(STAT, {1, 2}, 100.0) == pytest.approx((13372100 + 5536 + 13371243 + 3390) / 100)
    assert idle_from_stat(STAT, {7}, 100.0) is None  # not listed
    assert idle_from_stat("cpu0 1 2\n", {0}, 100.0) is None  # truncated
