"""The short fuzz run of `make test` (`make fuzz` runs ≥ 100,000 inputs): no target may crash."""

from __future__ import annotations

import pytest

from gossipd.tools.fuzz import TARGETS, Outcome, fuzz, record


@pytest.mark.parametrize("target", list(TARGETS))
def test_hostile_input_gets_a_typed_rejection_never_a_crash(target: str) -> None:
    (outcome,) = fuzz(250, only=target)
    assert outcome.inputs >= 100  # hypothesis may stop early when a strategy is exhausted
    assert outcome.crashes == 0, outcome.first_crash


def test_the_recorded_table_counts_every_input_and_names_a_crash() -> None:
    outcomes = [
        Outcome(target="wire-bytes", inputs=60_000, seconds=12.0),
        Outcome(target="task-toml", inputs=40_000, crashes=1, seconds=8.0, first_crash="KeyError: 'x'"),
    ]
    table = record(outcomes, peak_mb=321.0)
    assert "| **all** | **100,000** | **1** (goal 0) | 20 |" in table
    assert "| task-toml | 40,000 | 1 (KeyError: 'x') | 8 |" in table
    assert "321 MB" in table


def test_a_crash_message_cannot_break_the_recorded_table() -> None:
    outcome = Outcome(target="wire-maps", inputs=10, crashes=1, seconds=1.0, first_crash="ValueError: a|b\nc")
    row = next(line for line in record([outcome], peak_mb=1.0).splitlines() if line.startswith("| wire-maps"))
    assert row == "| wire-maps | 10 | 1 (ValueError: a/b c) | 1 |"
