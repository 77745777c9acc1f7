"""The pulls of the exchanges one peer runs at once stay within 1 (gossipd.mixing.pull_budget)."""

from __future__ import annotations

import random

import pytest

from gossipd.mixing.pull_budget import MAX_DEGREE, MAX_PULL, PullBudget, pull_bound
from gossipd.mixing.weights import metropolis_hastings, sample_pull


def test_a_lone_exchange_keeps_the_full_pairwise_average_and_later_ones_take_what_is_left() -> None:
    budget = PullBudget()
    assert budget.reserve("b", 1.0, 1) == 1  # w = 1/2, as before
    assert budget.reserve("c", 1.0, 2) == 2  # 1/3: at least 1 + the others, and it fits
    assert budget.reserve("d", 1.0, 3) == 5  # 1/6 is what is left
    assert budget.room() == pytest.approx(0.0)
    assert budget.reserve("e", 1.0, 4) is None
    assert budget.declined == 1
    budget.release("c")
    assert budget.room() == pytest.approx(1 / 3)
    assert budget.reserve("e", 1.0, 3) == 3  # 1/4 ≤ 1/3: the floor is enough


def test_a_pull_towards_a_bigger_neighbour_reserves_its_bound_until_the_weight_is_agreed() -> None:
    budget = PullBudget()
    # The opener does not know the neighbour's size yet: its pull may be up to 2, so w = 1/2 takes it all.
    assert budget.reserve("b", MAX_PULL, 1) == 1
    assert budget.fits(0.1, 2) is False
    budget.settle("b", 0.5 * sample_pull(4550, 10496))  # 0.70: the weighted average towards a bigger peer
    assert budget.room() == pytest.approx(1 - 0.5 * sample_pull(4550, 10496))
    degree = budget.reserve("c", MAX_PULL, 2)
    assert degree == 6  # 2/7 ≤ 0.30
    assert MAX_PULL * metropolis_hastings(degree, 1) <= 1 - 0.5 * sample_pull(4550, 10496)


def test_a_weight_under_one_in_eight_is_not_worth_an_exchange() -> None:
    budget = PullBudget()
    budget.reserve("b", 1.0, 1)
    budget.settle("b", 0.9)
    assert MAX_DEGREE < 9
    assert budget.degree_for(1.0, 2) is None  # 0.1 left would take degree 9: w = 1/10
    assert budget.degree_for(0.5, 2) == 4  # 0.5/5 = 0.1 ≤ 0.1


def test_a_fixed_weight_is_taken_as_it_is_while_it_fits() -> None:
    budget = PullBudget(fixed_weight=0.4)
    assert budget.reserve("b", 1.0, 1) == 1
    assert budget.reserve("c", 1.0, 2) == 2
    assert budget.reserve("d", 1.0, 3) is None  # 0.4 + 0.4 + 0.4 > 1
    assert budget.reserve("d", 0.5, 3) == 3  # a smaller pull does fit


def test_whatever_the_exchanges_the_pulls_in_flight_never_sum_past_1() -> None:
    rng = random.Random(7)
    budget = PullBudget()
    in_flight: dict[str, tuple[float, int]] = {}
    settled: set[str] = set()
    for i in range(5000):
        if in_flight and rng.random() < 0.45:
            key = rng.choice(sorted(in_flight))
            if rng.random() < 0.5 and key not in settled:
                pull, announced = in_flight[key]
                # Agreed once: the neighbour's degree may be higher, the pull no more than its bound.
                budget.settle(key, pull * rng.uniform(0.3, 1.0) * metropolis_hastings(announced, rng.randint(1, 9)))
                settled.add(key)
            else:
                budget.release(key)
                del in_flight[key]
        else:
            pull = rng.choice([1.0, MAX_PULL, sample_pull(rng.randint(1, 10**4), rng.randint(1, 10**4))])
            key = f"p{i}"
            reserved = budget.reserve(key, pull, len(in_flight) + 1)
            if reserved is not None:
                assert len(in_flight) + 1 <= reserved <= MAX_DEGREE
                in_flight[key] = (pull, reserved)
        assert sum(budget.reserved.values()) <= 1 + 1e-9


def test_the_pull_bound_is_exact_where_both_sizes_are_known() -> None:
    assert pull_bound(None, 500, known=True) == 1.0  # this end declares no size
    assert pull_bound(100, 300, known=True) == sample_pull(100, 300)
    assert pull_bound(100, None, known=True) == 1.0  # the neighbour declares none: equal weights
    assert pull_bound(100, None, known=False) == MAX_PULL  # not yet heard
