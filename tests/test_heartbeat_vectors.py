"""The discovery heartbeat's golden vectors (protocols/vectors/heartbeats, scripts/make_heartbeat_vectors.py):
what every conforming decoder must read, and what it must reject with which reason."""

from __future__ import annotations

import dataclasses
import json
from pathlib import Path
from typing import Any

import pytest

from gossipd.wire.errors import WireError
from gossipd.wire.heartbeat import decode_heartbeat, encode_heartbeat

VECTORS = Path(__file__).resolve().parents[1] / "protocols" / "vectors" / "heartbeats"


def manifest() -> list[dict[str, Any]]:
    entries: list[dict[str, Any]] = json.loads((VECTORS / "vectors.json").read_text())
    return entries


@pytest.mark.parametrize("entry", manifest(), ids=lambda e: e["file"])
def test_golden_heartbeats(entry: dict[str, Any]) -> None:
    data = (VECTORS / entry["file"]).read_bytes()
    task = bytes.fromhex(entry["task"])
    if not entry["valid"]:
        with pytest.raises(WireError) as caught:
            decode_heartbeat(data, task=task)
        assert caught.value.reason == entry["reason"]
        return
    beat = decode_heartbeat(data, task=task)
    fields = dataclasses.asdict(beat) | {"task": beat.task.hex(), "addresses": list(beat.addresses)}
    assert fields == entry["decoded"]


def test_the_vectors_cover_each_version_and_this_encoder_writes_them() -> None:
    entries = {e["file"]: e for e in manifest()}
    assert {"heartbeat-v1.bin", "heartbeat-v2.bin", "heartbeat.bin", "heartbeat-v4.bin"} <= set(entries)
    assert {e["reason"] for e in entries.values() if not e["valid"]} == {
        "malformed",
        "unsupported-version",
        "wrong-task",
    }
    for name in ("heartbeat", "heartbeat-done"):
        data = (VECTORS / f"{name}.bin").read_bytes()
        assert encode_heartbeat(decode_heartbeat(data, task=bytes.fromhex(entries[f"{name}.bin"]["task"]))) == data
