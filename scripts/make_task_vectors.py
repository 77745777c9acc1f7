"""Write the golden byte vectors of protocols/tasks-v1.md to protocols/vectors/tasks/ (run once per change).

Each vector is one message as it appears after the varint length prefix (or, for an advert, as the pubsub
message's data), with an entry in vectors.json naming its `kind` (advert, request, adverts, file) and what a
conforming decoder must produce: the decoded fields, or the rejection reason. An `adverts` answer is decoded
knowing the stream's peer (`sender`), a `file` answer knowing the hash asked for (`task_hash`).
"""

from __future__ import annotations

import hashlib
import json
from pathlib import Path
from typing import Any

import msgpack

from gossipd.wire.task_advert import TaskAdvert, encode_advert
from gossipd.wire.task_requests import (
    FileRequest,
    ListRequest,
    encode_adverts,
    encode_file,
    encode_refusal,
    encode_request,
)

OUT = Path(__file__).resolve().parents[1] / "protocols" / "vectors" / "tasks"
TASK_HASH = bytes(range(16))
PEER = "12D3KooWExampleExampleExampleExampleExampleExample"
ADVERT = TaskAdvert(
    task_id="mnist-mlp",
    task_hash=TASK_HASH,
    description="A small MLP on MNIST — PowerGossip rank 2",
    model="mlp",
    parameters=25450,
    input_shape=(1, 28, 28),
    algorithm="powergossip",
    peer=PEER,
    addresses=(f"/ip4/192.0.2.10/tcp/4001/p2p/{PEER}",),
    peers=3,
)
TASK_FILE = b'[task]\nid = "mnist-mlp"\n\n[data]\nformat = "idx"\n\n[model]\nname = "mlp"\n'


def advert_fields(advert: TaskAdvert) -> dict[str, Any]:
    return {
        "task_id": advert.task_id,
        "task_hash": advert.task_hash.hex(),
        "description": advert.description,
        "model": advert.model,
        "parameters": advert.parameters,
        "input_shape": list(advert.input_shape),
        "algorithm": advert.algorithm,
        "peer": advert.peer,
        "addresses": list(advert.addresses),
        "peers": advert.peers,
    }


def raw_advert(**changes: Any) -> dict[str, Any]:
    fields: dict[str, Any] = msgpack.unpackb(encode_advert(ADVERT), raw=False)
    return fields | changes


def pack(obj: Any) -> bytes:
    packed: bytes = msgpack.packb(obj, use_bin_type=True)
    return packed


def main() -> None:
    OUT.mkdir(parents=True, exist_ok=True)
    advert = encode_advert(ADVERT)
    file_answer = encode_file(TASK_HASH, TASK_FILE)
    context = {"sender": PEER, "task_hash": TASK_HASH.hex()}
    valid: dict[str, tuple[str, bytes, Any]] = {
        "advert": ("advert", advert, advert_fields(ADVERT)),
        "list-request": ("request", encode_request(ListRequest()), {"type": "list"}),
        "file-request": ("request", encode_request(FileRequest(TASK_HASH)), {"type": "file", "hash": TASK_HASH.hex()}),
        "adverts-answer": ("adverts", encode_adverts([advert]), [advert_fields(ADVERT)]),
        "adverts-empty": ("adverts", encode_adverts([]), []),
        "file-answer": ("file", file_answer, {"text": TASK_FILE.decode()}),
    }
    other_peer = raw_advert(peer="12D3KooWSomeoneElse", addrs=[])
    wrong_digest = pack(
        {"v": 1, "type": "file", "hash": TASK_HASH, "text": TASK_FILE, "sha256": hashlib.sha256(b"other").digest()}
    )
    latin1 = "é".encode("latin-1")
    not_utf8 = pack(
        {"v": 1, "type": "file", "hash": TASK_HASH, "text": latin1, "sha256": hashlib.sha256(latin1).digest()}
    )
    invalid: dict[str, tuple[str, bytes, str]] = {
        "advert-bad-version": ("advert", pack(raw_advert(v=2)), "unsupported-version"),
        "advert-extra-key": ("advert", pack(raw_advert(extra=1)), "malformed"),
        "advert-short-hash": ("advert", pack(raw_advert(hash=b"short")), "malformed"),
        "advert-long-description": ("advert", pack(raw_advert(desc="x" * 1025)), "malformed"),
        "advert-bool-count": ("advert", pack(raw_advert(params=True)), "malformed"),
        "advert-empty-dimension": ("advert", pack(raw_advert(input=[1, 0, 28])), "malformed"),
        "advert-truncated": ("advert", advert[:-7], "malformed"),
        "advert-trailing-bytes": ("advert", advert + b"\x00", "malformed"),
        "adverts-forged": ("adverts", encode_adverts([pack(other_peer)]), "wrong-signer"),
        "adverts-not-bin": ("adverts", pack({"v": 1, "type": "adverts", "adverts": ["text"]}), "malformed"),
        "refused": ("file", encode_refusal("no open task with this hash runs here"), "refused"),
        "file-digest-mismatch": ("file", wrong_digest, "digest-mismatch"),
        "file-other-task": ("file", encode_file(bytes(16), TASK_FILE), "wrong-task"),
        "file-not-utf8": ("file", not_utf8, "malformed"),
        "request-unknown-type": ("request", pack({"v": 1, "type": "delete"}), "unknown-type"),
        "request-missing-hash": ("request", pack({"v": 1, "type": "file"}), "malformed"),
        "request-bad-version": ("request", pack({"v": 0, "type": "list"}), "unsupported-version"),
    }
    manifest: list[dict[str, Any]] = []
    for name, (kind, data, decoded) in valid.items():
        (OUT / f"{name}.bin").write_bytes(data)
        manifest.append({"file": f"{name}.bin", "kind": kind, "valid": True, "decoded": decoded, **context})
    for name, (kind, data, reason) in invalid.items():
        (OUT / f"{name}.bin").write_bytes(data)
        manifest.append({"file": f"{name}.bin", "kind": kind, "valid": False, "reason": reason, **context})
    (OUT / "vectors.json").write_text(json.dumps(manifest, indent=2, ensure_ascii=False) + "\n")
    print(f"wrote {len(manifest)} vectors to {OUT}")


if __name__ == "__main__":
    main()
