"""Closed tasks: the task key's handshake, derived names, MAC'd heartbeats, key files and the allow-list."""

from __future__ import annotations

import os
import stat
from pathlib import Path

import pytest
from click.testing import CliRunner

from gossipd.cli import main
from gossipd.services.discovery import provider_key_for, topic_for
from gossipd.task.access import AccessError, AccessSection, parse_key, resolve_access
from gossipd.task.fields import TaskError
from gossipd.task.loader import parse_task
from gossipd.wire.auth import AuthFailed, AuthHandshake
from gossipd.wire.errors import WireError
from gossipd.wire.heartbeat import Heartbeat, decode_heartbeat, encode_heartbeat
from gossipd.wire.messages import decode_message, encode_message
from tests.conftest import DEFAULT_TASK

TASK = bytes(range(16))
KEY, OTHER = b"k" * 32, b"o" * 32


def wire(message: object) -> object:
    return decode_message(encode_message(message), max_size=1024)  # type: ignore[arg-type]


def handshake(a_key: bytes, b_key: bytes) -> tuple[AuthHandshake, AuthHandshake]:
    a = AuthHandshake(a_key, TASK, b"peer-a", b"peer-b")
    b = AuthHandshake(b_key, TASK, b"peer-b", b"peer-a")
    return a, b


def test_two_key_holders_prove_it_to_each_other() -> None:
    a, b = handshake(KEY, KEY)
    proof_a, proof_b = a.prove(wire(b.challenge())), b.prove(wire(a.challenge()))  # type: ignore[arg-type]
    a.verify(wire(proof_b))  # type: ignore[arg-type]
    b.verify(wire(proof_a))  # type: ignore[arg-type]


def test_a_wrong_key_fails_on_both_ends() -> None:
    a, b = handshake(KEY, OTHER)
    proof_a, proof_b = a.prove(b.challenge()), b.prove(a.challenge())
    with pytest.raises(AuthFailed):
        a.verify(proof_b)
    with pytest.raises(AuthFailed):
        b.verify(proof_a)


def test_a_replayed_proof_fails_against_a_fresh_nonce() -> None:
    a, b = handshake(KEY, KEY)
    recorded = b.prove(a.challenge())  # an eavesdropper keeps b's proof
    fresh, _ = handshake(KEY, KEY)
    fresh.prove(b.challenge())  # b's old nonce, replayed by the attacker
    with pytest.raises(AuthFailed):
        fresh.verify(recorded)


def test_a_reflected_proof_fails() -> None:
    a, b = handshake(KEY, KEY)
    mine = a.prove(b.challenge())
    with pytest.raises(AuthFailed):
        a.verify(mine)


def test_closed_task_names_are_secret_and_distinct() -> None:
    assert topic_for(TASK) != topic_for(TASK, KEY) != topic_for(TASK, OTHER)
    assert provider_key_for(TASK, KEY) != provider_key_for(TASK, OTHER)
    assert TASK.hex() not in topic_for(TASK, KEY)


def test_heartbeats_of_a_closed_task_carry_a_mac() -> None:
    beat = Heartbeat(task=TASK, peer="12D3KooW", addresses=("/ip4/1.2.3.4/tcp/1",), step=5, loss=0.5, exchanges=2)
    sealed = encode_heartbeat(beat, key=KEY)
    assert decode_heartbeat(sealed, task=TASK, key=KEY) == beat
    with pytest.raises(AuthFailed):
        decode_heartbeat(sealed, task=TASK, key=OTHER)
    with pytest.raises(WireError):
        decode_heartbeat(encode_heartbeat(beat), task=TASK, key=KEY)  # an outsider's unsealed heartbeat
    tampered = bytearray(sealed)
    tampered[-40] ^= 1
    with pytest.raises(WireError):
        decode_heartbeat(bytes(tampered), task=TASK, key=KEY)


def test_keygen_writes_an_owner_only_key_and_refuses_to_overwrite(tmp_path: Path) -> None:
    path = tmp_path / "task.key"
    runner = CliRunner()
    assert runner.invoke(main, ["keygen", str(path)]).exit_code == 0
    assert stat.S_IMODE(path.stat().st_mode) == 0o600
    key = parse_key(path.read_text(), "test")
    assert len(key) == 32
    assert runner.invoke(main, ["keygen", str(path)]).exit_code == 1
    assert parse_key(path.read_text(), "test") == key
    assert runner.invoke(main, ["keygen", str(path), "--force"]).exit_code == 0
    assert parse_key(path.read_text(), "test") != key


def test_key_files_and_variables(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    path = tmp_path / "task.key"
    path.write_text(KEY.hex() + "\n")
    path.chmod(0o644)
    with pytest.raises(AccessError, match="readable by other users"):
        resolve_access(AccessSection(key_file="task.key"), tmp_path)
    path.chmod(0o600)
    assert resolve_access(AccessSection(key_file="task.key"), tmp_path).key == KEY
    monkeypatch.setenv("GOSSIPD_TEST_KEY", OTHER.hex())
    access = resolve_access(AccessSection(key_env="GOSSIPD_TEST_KEY", allow=("a",)), tmp_path)
    assert access.key == OTHER
    assert access.admits("a")
    assert not access.admits("b")
    monkeypatch.setenv("GOSSIPD_TEST_KEY", "not hex")
    with pytest.raises(AccessError, match="hex"):
        resolve_access(AccessSection(key_env="GOSSIPD_TEST_KEY"), tmp_path)
    with pytest.raises(AccessError, match="not set"):
        resolve_access(AccessSection(key_env="GOSSIPD_NO_SUCH_VARIABLE"), tmp_path)
    with pytest.raises(AccessError, match=r"cannot|No such"):
        resolve_access(AccessSection(key_file="missing.key"), tmp_path)
    assert not resolve_access(None, tmp_path).closed


def test_access_section_in_a_task_file() -> None:
    text = DEFAULT_TASK.read_text() + '\n[access]\nkey_env = "K"\nallow = ["12D3KooWa", "12D3KooWb"]\n'
    task = parse_task(text, file="t.toml", base_dir=Path("/x"))
    assert task.access == AccessSection(key_env="K", allow=("12D3KooWa", "12D3KooWb"))
    assert task.folder == Path("/x")
    with pytest.raises(TaskError, match="key_file and key_env"):
        parse_task(DEFAULT_TASK.read_text() + '\n[access]\nkey_env = "K"\nkey_file = "k"\n', file="t.toml")
    with pytest.raises(TaskError, match=r"access\.key"):
        parse_task(DEFAULT_TASK.read_text() + '\n[access]\nkey = "00"\n', file="t.toml")


def test_the_key_never_enters_the_task_hash() -> None:
    base = parse_task(DEFAULT_TASK.read_text(), file="t.toml", base_dir=DEFAULT_TASK.parent)
    closed = parse_task(
        DEFAULT_TASK.read_text() + '\n[access]\nkey_env = "K"\n', file="t.toml", base_dir=DEFAULT_TASK.parent
    )
    assert base.hash == closed.hash  # members and the open task agree; the topic and DHT key differ instead
    assert os.environ.get("K") is None
