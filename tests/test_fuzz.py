"""The short fuzz run of `make test` (`make fuzz` runs ≥ 100,000 inputs): no target may crash."""

from __future__ import annotations

import pytest

from gossipd.tools.fuzz import TARGETS, fuzz


@pytest.mark.parametrize("target", list(TARGETS))
def test_hostile_input_gets_a_typed_rejection_never_a_crash(target: str) -> None:
    (outcome,) = fuzz(250, only=target)
    assert outcome.inputs >= 100  # hypothesis may stop early when a strategy is exhausted
    assert outcome.crashes == 0, outcome.first_crash
