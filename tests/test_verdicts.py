"""BENCHMARKS.md's verdicts at a glance: read back from the sections' verdict lines, never written by hand."""

from __future__ import annotations

from pathlib import Path

from gossipd.tools.reporting import replace_section
from gossipd.tools.verdicts import BEGIN, END, anchor, goal, outcome, summary, verdicts, with_summary

REPO = Path(__file__).resolve().parents[1]

SAMPLE = f"""# Benchmarks

## Verdicts at a glance

{BEGIN}
stale
{END}

## Daemons on loopback

| measure | ratio |
| --- | ---: |
| samples/s, met or not | 0.79 |

- **Training speed ≥ 0.9× a bare loop: NOT met** (0.791).
- **A 10 MB frame at ≥ 0.5× raw TCP: met** (0.619).

## Side by side: gossipd, hivemind

### CNN, dirichlet:0.5 split (medians)

- Time to 98% (goal ≤ 0.7× the faster rival): auto 20 s against Flower 64 s: **0.31×, met**.
- Final accuracy (goal ≤ 0.3 points behind plain gossip): PowerGossip r1 float16 98.33%: **0.34 behind, not met**.
- Bytes to 98% against Flower (goal ≥ 50× fewer): not judged, no current PowerGossip r1 float16 run on this workload.
- MNIST MLP, weakest mixing: **PowerGossip**, -6.72 points at the stop.

The goal was met last week, and this prose says so without being a verdict line.

## Attached

- Steps/s attached against bare, cnn (goal ≥ 0.9): alone 1.01, **met**; paced 0.75, **not met**; budget 0.90, **met**.
"""


def test_each_line_gives_its_verdict_and_lines_without_one_are_left_out() -> None:
    assert outcome("- **Startup ≤ 10 s: met** (2.1 s).") == "met"
    assert outcome("- **Training speed: NOT met** (0.791).") == "not met"
    assert outcome("- Steps/s (goal ≥ 0.9): alone **met**; paced **not met**.") == "partly met"
    assert outcome("- Bytes (goal ≥ 50×): not judged, no current run.") == "not judged"
    assert outcome("- MNIST MLP, weakest mixing: **PowerGossip**, -6.72 points at the stop.") is None
    assert outcome("The metric meters nothing.") is None  # words that merely contain "met"


def test_a_goal_is_named_by_its_bold_lead_or_its_stated_goal_and_subject() -> None:
    assert goal("- **Startup ≤ 10 s: met** (2.1 s alone).") == "Startup ≤ 10 s"
    assert (
        goal("- Final accuracy (goal ≤ 0.3 points behind plain gossip): PowerGossip r1 float16 98.33%: **not met**")
        == "Final accuracy (goal ≤ 0.3 points behind plain gossip), PowerGossip r1 float16"
    )
    assert (
        goal("- Bytes (goal ≥ 50× fewer): PowerGossip r1 float16 did not reach 98%, plain gossip did: **not met**.")
        == "Bytes (goal ≥ 50× fewer), PowerGossip r1 float16"
    )
    # One line, a verdict per setting: no single subject.
    assert (
        goal("- Steps/s, cnn (goal ≥ 0.9): alone 1.01, **met**; paced 0.75, **not met**.")
        == "Steps/s, cnn (goal ≥ 0.9)"
    )
    assert goal("- Non-IID, plain: within 1 point on every split: **met** (every split).") == (
        "Non-IID, plain: within 1 point on every split"
    )
    assert goal("Own labels, personalised ≥ shared + 2 points: split a: NOT met (+1.4); split b: met (+2.2).") == (
        "Own labels, personalised ≥ shared + 2 points"
    )


def test_verdicts_are_placed_under_their_section_and_workload_and_tables_are_skipped() -> None:
    found = verdicts(SAMPLE)
    assert [(v.section, v.workload, v.outcome) for v in found] == [
        ("Daemons on loopback", "", "not met"),
        ("Daemons on loopback", "", "met"),
        ("Side by side: gossipd, hivemind", "CNN, dirichlet:0.5 split (medians)", "met"),
        ("Side by side: gossipd, hivemind", "CNN, dirichlet:0.5 split (medians)", "not met"),
        ("Side by side: gossipd, hivemind", "CNN, dirichlet:0.5 split (medians)", "not judged"),
        ("Attached", "", "partly met"),
    ]


def test_the_summary_counts_per_place_links_each_and_names_what_was_missed() -> None:
    text = summary(SAMPLE)
    assert "| [Daemons on loopback](#daemons-on-loopback) | 1 | 1 | 0 | 0 |" in text
    assert "| [Side by side › CNN, dirichlet:0.5 split](#cnn-dirichlet05-split-medians) | 1 | 1 | 0 | 1 |" in text
    assert "2 of 6 verdict lines met; not met or partly met:" in text
    assert text.endswith(
        "- Daemons on loopback: Training speed ≥ 0.9× a bare loop\n"
        "- Side by side › CNN, dirichlet:0.5 split: Final accuracy (goal ≤ 0.3 points behind plain gossip), "
        "PowerGossip r1 float16\n"
        "- Attached: Steps/s attached against bare, cnn (goal ≥ 0.9) (partly)"
    )
    assert anchor("A script of its own, attached (`gossipd.attach`)") == "#a-script-of-its-own-attached-gossipdattach"


def test_rebuilding_replaces_only_the_summary_and_reads_nothing_from_it() -> None:
    rebuilt = with_summary(SAMPLE)
    assert "stale" not in rebuilt
    assert rebuilt.split(BEGIN)[0] == SAMPLE.split(BEGIN)[0]
    assert rebuilt.split(END)[1] == SAMPLE.split(END)[1]
    assert with_summary(rebuilt) == rebuilt
    assert with_summary("# No summary here\n- **x: met**\n") == "# No summary here\n- **x: met**\n"


def test_a_benchmark_writing_its_section_rebuilds_the_summary(tmp_path: Path) -> None:
    path = tmp_path / "BENCHMARKS.md"
    path.write_text(SAMPLE + "\n## Scale\n\n<!-- scale:begin -->\n<!-- scale:end -->\n")
    replace_section(path, "scale", "- **Memory ≤ 400 MB per daemon: NOT met** (405 MB).", title="Benchmarks")
    text = path.read_text()
    assert "| [Scale](#scale) | 0 | 1 | 0 | 0 |" in text
    assert "- Scale: Memory ≤ 400 MB per daemon" in text


def test_the_published_summary_is_what_the_sections_say() -> None:
    text = (REPO / "BENCHMARKS.md").read_text()
    assert BEGIN in text, "BENCHMARKS.md lost its verdicts summary"
    assert with_summary(text) == text, "BENCHMARKS.md's summary is stale: rebuild it with gossipd.tools.verdicts"
