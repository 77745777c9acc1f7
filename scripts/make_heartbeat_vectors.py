"""Write the golden byte vectors of the discovery heartbeat (protocols/mix-v2.md, *Discovery heartbeats*) to
protocols/vectors/heartbeats/ (run once per change of the heartbeat).

Each vector is a heartbeat as published on the task's topic, with an entry in vectors.json that says what a
conforming decoder must produce for `task`: the decoded fields, or the rejection reason.
"""

from __future__ import annotations

import dataclasses
import json
from pathlib import Path
from typing import Any

import msgpack

from gossipd.wire.heartbeat import Heartbeat, encode_heartbeat

OUT = Path(__file__).resolve().parents[1] / "protocols" / "vectors" / "heartbeats"
TASK = bytes(range(16))
PEER = "12D3KooWExampleExampleExampleExampleExampleExample"
ADDRESS = f"/ip4/192.0.2.10/tcp/4001/p2p/{PEER}"


def body(**fields: Any) -> bytes:
    """A heartbeat map as version 3 writes it, with `fields` changed (a value of ... drops the key)."""
    beat = {
        "v": 3,
        "task": TASK,
        "peer": PEER,
        "addrs": [ADDRESS],
        "step": 1200,
        "loss": 0.25,
        "exchanges": 37,
        "dataset": 15000,
        "every": 5.0,
        "done": False,
    }
    beat.update(fields)
    packed: bytes = msgpack.packb({k: v for k, v in beat.items() if v is not ...}, use_bin_type=True)
    return packed


def decoded(beat: Heartbeat) -> dict[str, Any]:
    fields = dataclasses.asdict(beat)
    fields["task"] = beat.task.hex()
    fields["addresses"] = list(beat.addresses)
    return fields


def main() -> None:
    OUT.mkdir(parents=True, exist_ok=True)
    training = Heartbeat(
        task=TASK, peer=PEER, addresses=(ADDRESS,), step=1200, loss=0.25, exchanges=37, dataset=15000, every=5.0
    )
    past_budget = dataclasses.replace(training, step=3000, loss=None, done=True)
    valid: dict[str, tuple[bytes, Heartbeat]] = {
        "heartbeat": (encode_heartbeat(training), training),
        "heartbeat-done": (encode_heartbeat(past_budget), past_budget),
        "heartbeat-v2": (body(v=2, done=...), dataclasses.replace(training, done=None)),
        "heartbeat-v1": (
            body(v=1, dataset=..., every=..., done=...),
            dataclasses.replace(training, dataset=None, every=None, done=None),
        ),
        # A later version that only adds keys is read as version 3.
        "heartbeat-v4": (body(v=4, colour="blue"), training),
    }
    manifest: list[dict[str, Any]] = []
    for name, (data, beat) in valid.items():
        (OUT / f"{name}.bin").write_bytes(data)
        manifest.append({"file": f"{name}.bin", "valid": True, "task": TASK.hex(), "decoded": decoded(beat)})
    invalid: dict[str, tuple[bytes, str]] = {
        "heartbeat-done-not-bool": (body(done=1), "malformed"),
        "heartbeat-v3-without-done": (body(done=...), "malformed"),
        "heartbeat-v2-with-done": (body(v=2), "malformed"),
        "heartbeat-v4-without-done": (body(v=4, done=...), "malformed"),
        "heartbeat-version-0": (body(v=0), "unsupported-version"),
        "heartbeat-other-task": (body(task=bytes(16)), "wrong-task"),
        "heartbeat-bad-period": (body(every=0.0), "malformed"),
        "heartbeat-truncated": (body()[:-3], "malformed"),
    }
    for name, (data, reason) in invalid.items():
        (OUT / f"{name}.bin").write_bytes(data)
        manifest.append({"file": f"{name}.bin", "valid": False, "task": TASK.hex(), "reason": reason})
    (OUT / "vectors.json").write_text(json.dumps(manifest, indent=2) + "\n")
    print(f"wrote {len(manifest)} vectors to {OUT}")


if __name__ == "__main__":
    main()
