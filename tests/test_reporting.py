"""The generated sections of BENCHMARKS.md / RELIABILITY.md are rewritten in place, never duplicated, and the
hand-written text around them survives."""

import json
from pathlib import Path

import pytest

from gossipd.tools.reporting import load_record, machine, replace_section


def test_replace_section_appends_then_rewrites_in_place(tmp_path: Path) -> None:
    path = tmp_path / "BENCH.md"
    replace_section(path, "x", "first", title="Bench", heading="## X")
    assert path.read_text() == "# Bench\n\n## X\n\n<!-- x:begin -->\nfirst\n<!-- x:end -->\n"
    path.write_text(path.read_text() + "\nwritten by hand\n")
    replace_section(path, "x", "second\n", title="Bench", heading="## X")
    text = path.read_text()
    assert text.count("<!-- x:begin -->") == 1
    assert "second" in text and "first" not in text
    assert text.endswith("<!-- x:end -->\n\nwritten by hand\n")


def test_sections_are_independent(tmp_path: Path) -> None:
    path = tmp_path / "BENCH.md"
    replace_section(path, "a", "alpha", title="Bench")
    replace_section(path, "b", "beta", title="Bench")
    replace_section(path, "a", "gamma", title="Bench")
    text = path.read_text()
    assert text.index("gamma") < text.index("beta")
    assert "alpha" not in text


def test_machine_names_cores_and_python() -> None:
    line = machine()
    assert " cores, Python 3." in line


def test_a_report_rebuilt_from_a_missing_or_older_record_says_which_benchmark_to_run(tmp_path: Path) -> None:
    path = tmp_path / "bench-sim.json"
    with pytest.raises(SystemExit, match="is missing: run `make bench-sim` first"):
        load_record(path, ("measured",), target="bench-sim")
    path.write_text('{"reports": []')
    with pytest.raises(SystemExit, match="cannot be read"):
        load_record(path, ("measured",), target="bench-sim")
    path.write_text(json.dumps({"reports": []}))
    with pytest.raises(SystemExit, match=r"lacks measured, machine \(written by an older run\): run `make bench-sim`"):
        load_record(path, ("measured", "machine", "reports"), target="bench-sim")
    path.write_text(json.dumps({"reports": [], "measured": "2026-12-07", "machine": "m"}))
    assert load_record(path, ("measured", "machine", "reports"), target="bench-sim")["machine"] == "m"
