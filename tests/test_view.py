"""The active view: rewiring at random, and keeping neighbours this peer may mix with."""

from __future__ import annotations

import random

from gossipd.peering.view import PeerView


def full_view(members: list[str], seed: int = 0) -> PeerView[str]:
    view: PeerView[str] = PeerView(len(members), random.Random(seed))
    view.fill(members)
    return view


def test_rewiring_swaps_only_a_droppable_member_and_refuses_when_none_is() -> None:
    view = full_view(["a", "b", "c"])
    for seed in range(20):
        view.rng.seed(seed)
        swapped = view.rewire(["x"], droppable=lambda m: m == "b")
        assert swapped == ("b", "x") and sorted(view.members) == ["a", "c", "x"]
        view.members[view.members.index("x")] = "b"
    assert view.rewire(["x"], droppable=lambda _: False) is None and sorted(view.members) == ["a", "b", "c"]
    assert view.rewire(["a", "b"]) is None  # no outside candidate


def test_a_view_of_the_other_phase_takes_in_members_of_this_one_until_it_holds_the_minimum() -> None:
    # The peer still trains; a, b, c, d reached their budgets; e and f train, outside its view.
    training = {"e", "f", "me"}
    view = full_view(["a", "b", "c", "d"], seed=3)
    live = ["a", "b", "c", "d", "e", "f"]
    first = view.prefer(live, lambda p: p in training, minimum=2)
    assert first is not None and first[0] in {"a", "b", "c", "d"} and first[1] in {"e", "f"}
    second = view.prefer(live, lambda p: p in training, minimum=2)
    assert second is not None and {first[1], second[1]} == {"e", "f"}
    assert view.prefer(live, lambda p: p in training, minimum=2) is None  # two of its phase: enough
    assert len(view) == 4 and {"e", "f"} <= set(view.members)


def test_a_view_with_enough_of_its_phase_or_no_one_of_it_outside_is_left_as_it_is() -> None:
    view = full_view(["a", "b", "c"])
    assert view.prefer(["a", "b", "c", "d"], lambda p: p in {"a", "b", "d"}, minimum=2) is None
    assert view.prefer(["a", "b", "c", "d"], lambda p: p == "a", minimum=2) is None  # no eligible outsider
    assert sorted(view.members) == ["a", "b", "c"]
    small = full_view(["a"])  # capacity 1: one of its phase is the most it can hold
    assert small.prefer(["a", "b"], lambda p: p == "a", minimum=2) is None
    assert small.prefer(["a", "b"], lambda p: p == "b", minimum=2) == ("a", "b")
