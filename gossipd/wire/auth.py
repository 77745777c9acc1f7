"""Proof of a closed task's key at the start of every stream, and the names a key derives.

Both ends send a fresh 32-byte nonce, then a MAC under the task key over the task hash, both peer ids and
both nonces, naming who proves to whom. A proof is only valid for the verifier's fresh nonce (replays fail)
and for one direction (reflections fail); the peer ids are the ones Noise authenticated, so a proof cannot be
relayed to another connection. The MAC is BLAKE2b keyed with the task key (libsodium, through pynacl).
"""

from __future__ import annotations

import nacl.bindings
import nacl.encoding
import nacl.hash
import nacl.utils

from gossipd.wire.errors import WireError
from gossipd.wire.messages import AUTH_BYTES, Message, MessageType


class AuthFailed(WireError):
    reason = "auth-failed"


def _mac(key: bytes, *parts: bytes) -> bytes:
    data = b"".join(len(p).to_bytes(4, "big") + p for p in parts)
    digest: bytes = nacl.hash.blake2b(
        data, key=key, digest_size=AUTH_BYTES, person=b"gossipd-auth-v1", encoder=nacl.encoding.RawEncoder
    )
    return digest


def derived_name(key: bytes, task: bytes, purpose: str) -> str:
    """A name only key holders can compute (the pubsub topic, the DHT provider key of a closed task)."""
    digest: bytes = nacl.hash.blake2b(
        purpose.encode() + b"\0" + task, key=key, digest_size=20, person=b"gossipd-name-v1",
        encoder=nacl.encoding.RawEncoder,
    )  # fmt: skip
    return digest.hex()


def heartbeat_mac(key: bytes, body: bytes) -> bytes:
    return _mac(key, b"heartbeat", body)


def same(a: bytes, b: bytes) -> bool:
    """Constant-time comparison."""
    return len(a) == len(b) and bool(nacl.bindings.sodium_memcmp(a, b))


class AuthHandshake:
    """One end of the handshake; `self_id`/`peer_id` are the Noise-authenticated peer ids."""

    def __init__(self, key: bytes, task: bytes, self_id: bytes, peer_id: bytes, nonce: bytes | None = None) -> None:
        self.key = key
        self.task = task
        self.self_id = self_id
        self.peer_id = peer_id
        self.nonce = nonce if nonce is not None else nacl.utils.random(AUTH_BYTES)
        self.peer_nonce: bytes | None = None

    def _message(self, phase: int, proof: bytes) -> Message:
        return Message(type=MessageType.AUTH, task=self.task, epoch=0, round=0, degree=0, phase=phase, proof=proof)

    def challenge(self) -> Message:
        return self._message(0, self.nonce)

    def prove(self, peer_challenge: Message) -> Message:
        """Answer the peer's challenge with this end's proof."""
        if peer_challenge.type is not MessageType.AUTH or peer_challenge.phase != 0:
            raise AuthFailed(f"expected an auth challenge, received {peer_challenge.type} {peer_challenge.phase}")
        self.peer_nonce = peer_challenge.proof
        proof = _mac(self.key, self.task, self.self_id, self.peer_id, self.peer_nonce, self.nonce)
        return self._message(1, proof)

    def verify(self, peer_proof: Message) -> None:
        if peer_proof.type is not MessageType.AUTH or peer_proof.phase != 1 or self.peer_nonce is None:
            raise AuthFailed("expected the peer's proof of the task key")
        expected = _mac(self.key, self.task, self.peer_id, self.self_id, self.nonce, self.peer_nonce)
        if not same(expected, peer_proof.proof):
            raise AuthFailed("the peer does not hold the task key")
