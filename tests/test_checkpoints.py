"""Checkpoints: round trip, rotation, corruption fallback, write failures, weights-only loading, kill -9
during writes; and the safetensors export with its atomic file write."""

from __future__ import annotations

import contextlib
import errno
import io
import logging
import os
import random
import re
import select
import signal
import stat
import subprocess
import sys
import time
from collections import OrderedDict
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import safetensors
import safetensors.torch
import torch
from torch import nn

from gossipd.adapters.checkpoint_store import (
    HEADER_SIZE,
    CheckpointError,
    CheckpointStore,
    LoadedCheckpoint,
    pack_header,
)
from gossipd.adapters.export import model_to_safetensors, write_bytes_atomically
from tests.checkpoint_writer import state_for

WRITER = Path(__file__).with_name("checkpoint_writer.py")
LOGGER = "gossipd.checkpoint"
NOW = 1_700_000_000.25


def realistic_state() -> dict[str, Any]:
    """What a task checkpoints: model, optimizer with momentum, edge states, counters, peer table."""
    torch.manual_seed(0)
    model = small_model()
    optimizer = torch.optim.SGD(model.parameters(), lr=0.1, momentum=0.9, nesterov=True)
    model(torch.randn(8, 1, 8, 8)).logsumexp(dim=1).mean().backward()
    optimizer.step()
    return {
        "model": model.state_dict(),
        "optimizer": optimizer.state_dict(),
        "edges": {
            "12D3KooWpeerA": {"x_hat": torch.randn(50), "s": torch.zeros(50, dtype=torch.float64)},
            "12D3KooWpeerB": {"x_hat": torch.randn(50), "s": torch.ones(50, dtype=torch.float64)},
        },
        "rng": torch.get_rng_state(),
        "step": 1234,
        "lr": 0.05,
        "algorithm": "choco",
        "last_error": None,
        "converged": False,
        "shape": (3, 4),
        "peers": [
            {"peer_id": "12D3KooWpeerA", "addrs": ["/ip4/10.0.0.2/tcp/4001"], "last_seen": 1.7e9, "failures": 0},
            {"peer_id": "12D3KooWpeerB", "addrs": [], "last_seen": 1.6e9, "failures": 3, "banned_until": None},
        ],
    }


def small_model() -> nn.Module:
    return nn.Sequential(
        nn.Conv2d(1, 4, 3), nn.BatchNorm2d(4), nn.ReLU(), nn.Flatten(), nn.Linear(4 * 6 * 6, 10)
    )  # (B, 1, 8, 8) -> (B, 10)


def assert_same(expected: object, actual: object, where: str = "state") -> None:
    """Equal values of the same types all the way down (tensors: dtype, shape and every element)."""
    assert type(actual) is type(expected), f"{where}: {type(actual)} != {type(expected)}"
    if isinstance(expected, torch.Tensor):
        assert isinstance(actual, torch.Tensor)
        assert actual.dtype == expected.dtype and torch.equal(actual, expected), where
    elif isinstance(expected, dict):
        assert isinstance(actual, dict)
        assert list(actual) == list(expected), where
        for key, value in expected.items():
            assert_same(value, actual[key], f"{where}[{key!r}]")
    elif isinstance(expected, list | tuple):
        assert isinstance(actual, list | tuple) and len(actual) == len(expected), where
        for index, (want, got) in enumerate(zip(expected, actual, strict=True)):
            assert_same(want, got, f"{where}[{index}]")
    else:
        assert actual == expected, where


def temp_files(folder: Path) -> list[Path]:
    return sorted(folder.glob(".*.tmp"))


class Clock:
    """A settable wall clock, so checkpoint names are known in advance."""

    def __init__(self, now: float = NOW) -> None:
        self.now = now

    def __call__(self) -> float:
        return self.now


# --- round trip and names ------------------------------------------------------------------------------------


def test_round_trip_of_a_realistic_state(tmp_path: Path) -> None:
    state = realistic_state()
    store = CheckpointStore(tmp_path / "ckpt", clock=Clock())
    path = store.save(state, step=1234)

    loaded = store.load_latest()

    assert isinstance(loaded, LoadedCheckpoint)
    assert (loaded.path, loaded.step, loaded.saved_at) == (path, 1234, NOW)
    assert path.name == "ckpt-000000001234-1700000000250.pt"
    assert_same(state, loaded.state)
    assert store.latest_time() == NOW
    assert stat.S_IMODE((tmp_path / "ckpt").stat().st_mode) == 0o700
    assert stat.S_IMODE(path.stat().st_mode) == 0o600


def test_loaded_state_restores_a_model_and_its_optimizer(tmp_path: Path) -> None:
    state = realistic_state()
    store = CheckpointStore(tmp_path)
    store.save(state, step=1)
    loaded = store.load_latest()
    assert loaded is not None

    model = small_model()
    model.load_state_dict(loaded.state["model"])
    optimizer = torch.optim.SGD(model.parameters(), lr=0.1, momentum=0.9, nesterov=True)
    optimizer.load_state_dict(loaded.state["optimizer"])

    buffers = [optimizer.state[p]["momentum_buffer"] for p in model.parameters()]
    expected = [s["momentum_buffer"] for s in state["optimizer"]["state"].values()]
    assert all(torch.equal(a, b) for a, b in zip(buffers, expected, strict=True))


def test_an_empty_folder_has_no_checkpoint(tmp_path: Path) -> None:
    store = CheckpointStore(tmp_path / "a" / "b")
    assert store.load_latest() is None
    assert store.list() == []
    assert store.latest_time() is None


def test_newest_is_by_step_then_time(tmp_path: Path) -> None:
    clock = Clock()
    store = CheckpointStore(tmp_path, keep=10, clock=clock)
    older_step_later = store.save({"v": "a"}, step=1)
    clock.now -= 10
    newer_step = store.save({"v": "b"}, step=2)
    clock.now += 20
    same_step_later = store.save({"v": "c"}, step=2)

    assert store.list() == [same_step_later, newer_step, older_step_later]
    loaded = store.load_latest()
    assert loaded is not None and loaded.state == {"v": "c"} and loaded.saved_at == NOW + 10


def test_bad_arguments_are_refused(tmp_path: Path) -> None:
    with pytest.raises(ValueError, match="keep"):
        CheckpointStore(tmp_path, keep=0)
    with pytest.raises(ValueError, match="max_bytes"):
        CheckpointStore(tmp_path, max_bytes=10)
    with pytest.raises(ValueError, match="step"):
        CheckpointStore(tmp_path).save({}, step=-1)


# --- rotation and leftovers ---------------------------------------------------------------------------------


def test_keeps_the_newest_checkpoints(tmp_path: Path) -> None:
    store = CheckpointStore(tmp_path, keep=3)
    paths = [store.save({"step": step}, step=step) for step in range(1, 7)]

    assert store.list() == [paths[5], paths[4], paths[3]]
    assert sorted(tmp_path.iterdir()) == sorted(paths[3:])


def test_never_deletes_the_checkpoint_just_written(tmp_path: Path) -> None:
    store = CheckpointStore(tmp_path, keep=2)
    store.save({"v": 10}, step=10)
    eleven = store.save({"v": 11}, step=11)
    # A restart from an older checkpoint saves a lower step; it counts as one of the `keep`.
    five = store.save({"v": 5}, step=5)

    assert store.list() == [eleven, five]


def test_leftover_temp_files_are_removed_and_other_files_kept(tmp_path: Path) -> None:
    store = CheckpointStore(tmp_path)
    leftovers = [tmp_path / ".ckpt-interrupted1.tmp", tmp_path / ".ckpt-x.tmp"]
    for path in leftovers:
        path.write_bytes(b"partial")
    unrelated = [tmp_path / "notes.txt", tmp_path / "ckpt-1-2.pt", tmp_path / "ckpt-000000000001-x.pt"]
    for path in unrelated:
        path.write_bytes(b"x")

    written = store.save({"v": 1}, step=1)

    assert temp_files(tmp_path) == []
    assert sorted(tmp_path.iterdir()) == sorted([*unrelated, written])
    assert store.list() == [written]


# --- corruption fallback ------------------------------------------------------------------------------------


def _truncate(data: bytes) -> bytes:
    return data[: len(data) // 2]


def _flip_payload_byte(data: bytes) -> bytes:
    middle = HEADER_SIZE + (len(data) - HEADER_SIZE) // 2
    return data[:middle] + bytes([data[middle] ^ 0x01]) + data[middle + 1 :]


def _flip_magic_version(data: bytes) -> bytes:
    return data[:12] + b"\x02" + data[13:]


def _garbage_payload(data: bytes) -> bytes:
    payload = random.Random(0).randbytes(1000)
    return pack_header(payload) + payload


CORRUPTIONS: dict[str, tuple[Callable[[bytes], bytes], str]] = {
    "truncated": (_truncate, "truncated"),
    "header only partly there": (lambda data: data[:20], "shorter than the header"),
    "empty": (lambda data: b"", "shorter than the header"),
    "padded": (lambda data: data + b"\0", "padded"),
    "payload byte flipped": (_flip_payload_byte, "SHA-256"),
    "wrong magic": (_flip_magic_version, "magic"),
    "not a torch payload": (_garbage_payload, "unpickle"),
}


@pytest.mark.parametrize("corruption", CORRUPTIONS)
def test_a_corrupt_newest_checkpoint_falls_back_to_the_previous(
    tmp_path: Path, caplog: pytest.LogCaptureFixture, corruption: str
) -> None:
    damage, reason = CORRUPTIONS[corruption]
    store = CheckpointStore(tmp_path)
    previous_state = realistic_state()
    store.save(previous_state, step=1)
    newest = store.save({"v": torch.arange(1000)}, step=2)
    newest.write_bytes(damage(newest.read_bytes()))

    with caplog.at_level(logging.WARNING, logger=LOGGER):
        loaded = store.load_latest()

    assert loaded is not None and loaded.step == 1
    assert_same(previous_state, loaded.state)
    [record] = caplog.records
    assert record.name == LOGGER and newest.name in record.getMessage() and reason in record.getMessage()


def test_all_corrupt_gives_none_with_a_warning_each(tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    store = CheckpointStore(tmp_path)
    paths = [store.save({"v": step}, step=step) for step in (1, 2, 3)]
    for path in paths:
        path.write_bytes(_flip_payload_byte(path.read_bytes()))

    with caplog.at_level(logging.WARNING, logger=LOGGER):
        assert store.load_latest() is None

    messages = [record.getMessage() for record in caplog.records]
    assert len(messages) == 3
    assert all(path.name in message for path, message in zip(reversed(paths), messages, strict=True))


def test_files_over_max_bytes_are_neither_read_nor_written(tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    CheckpointStore(tmp_path).save({"small": 1}, step=1)
    CheckpointStore(tmp_path).save({"big": torch.zeros(10_000)}, step=2)
    bounded = CheckpointStore(tmp_path, max_bytes=20_000)

    with caplog.at_level(logging.WARNING, logger=LOGGER):
        loaded = bounded.load_latest()
    assert loaded is not None and loaded.state == {"small": 1}
    assert "max_bytes" in caplog.text

    with pytest.raises(CheckpointError) as failure:
        bounded.save({"big": torch.zeros(10_000)}, step=3)
    assert failure.value.errno == errno.EFBIG
    assert len(list(tmp_path.iterdir())) == 2


# --- write failures -----------------------------------------------------------------------------------------


def _fill_disk_midway(monkeypatch: pytest.MonkeyPatch) -> None:
    """The first write stores half its bytes, the next fails with ENOSPC: a partial temp file exists by then."""
    real_write = os.write
    calls = []

    def write(fd: int, data: Any) -> int:
        calls.append(fd)
        if len(calls) >= 2:
            raise OSError(errno.ENOSPC, "No space left on device")
        return real_write(fd, memoryview(data)[: len(data) // 2])

    monkeypatch.setattr(os, "write", write)


def _fail_fsync(monkeypatch: pytest.MonkeyPatch) -> None:
    def fsync(fd: int) -> None:
        raise OSError(errno.EIO, "Input/output error")

    monkeypatch.setattr(os, "fsync", fsync)


def _fail_replace(monkeypatch: pytest.MonkeyPatch) -> None:
    def replace(src: Any, dst: Any) -> None:
        raise OSError(errno.EACCES, "Permission denied")

    monkeypatch.setattr(os, "replace", replace)


FAILURES: dict[str, tuple[Callable[[pytest.MonkeyPatch], None], int]] = {
    "disk full while writing": (_fill_disk_midway, errno.ENOSPC),
    "I/O error on fsync": (_fail_fsync, errno.EIO),
    "rename refused": (_fail_replace, errno.EACCES),
}


@pytest.mark.parametrize("failure", FAILURES)
def test_a_failed_save_leaves_no_trace(tmp_path: Path, monkeypatch: pytest.MonkeyPatch, failure: str) -> None:
    inject, code = FAILURES[failure]
    store = CheckpointStore(tmp_path)
    previous = store.save(realistic_state(), step=1)
    previous_bytes = previous.read_bytes()

    with monkeypatch.context() as patch:
        inject(patch)
        with pytest.raises(CheckpointError) as raised:
            store.save({"v": torch.ones(100_000)}, step=2)

    assert isinstance(raised.value, OSError) and raised.value.errno == code
    assert list(tmp_path.iterdir()) == [previous]
    assert previous.read_bytes() == previous_bytes
    loaded = store.load_latest()
    assert loaded is not None and loaded.step == 1


# --- what a checkpoint may hold -----------------------------------------------------------------------------


class _Custom:
    pass


def _cycle() -> list[object]:
    loop: list[object] = []
    loop.append(loop)
    return loop


REFUSED: dict[str, tuple[Callable[[], dict[Any, Any]], str]] = {
    "custom object in a peer record": (
        lambda: {"peers": [{"peer_id": "a"}, {"peer_id": "b", "handle": _Custom()}]},
        "state['peers'][1]['handle'] is a tests.test_checkpoints._Custom",
    ),
    "numpy scalar": (lambda: {"opt": {"lr": np.float64(0.1)}}, "state['opt']['lr'] is a numpy.float64"),
    "set": (lambda: {"seen": {1, 2}}, "state['seen'] is a builtins.set"),
    "tuple key": (lambda: {"edges": {("a", "b"): torch.ones(1)}}, "state['edges'] has key ('a', 'b')"),
    "non-str top-level key": (lambda: {1: 2}, "state keys must be str"),
    "cycle": (lambda: {"loop": _cycle()}, "state['loop'][0] contains itself"),
}


@pytest.mark.parametrize("case", REFUSED)
def test_values_a_weights_only_load_refuses_are_rejected_before_writing(tmp_path: Path, case: str) -> None:
    make, message = REFUSED[case]
    store = CheckpointStore(tmp_path)

    with pytest.raises(TypeError) as raised:
        store.save(make(), step=1)

    assert message in str(raised.value)
    assert list(tmp_path.iterdir()) == []


def test_parameters_and_ordered_dicts_are_allowed(tmp_path: Path) -> None:
    state = {"p": nn.Parameter(torch.ones(3)), "o": OrderedDict(a=1), "t": (None, True, 2, 3.0, "x", [])}
    store = CheckpointStore(tmp_path)
    store.save(state, step=1)
    loaded = store.load_latest()
    assert loaded is not None
    assert_same(state, loaded.state)


_CALLS: list[str] = []


def _record_call(tag: str) -> str:
    _CALLS.append(tag)
    return tag


class _RunsCodeWhenLoaded:
    def __reduce__(self) -> tuple[Callable[[str], str], tuple[str]]:
        return _record_call, ("ran",)


def test_a_checkpoint_cannot_run_code(tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    _CALLS.clear()
    store = CheckpointStore(tmp_path)
    store.save({"v": 1}, step=1)
    buffer = io.BytesIO()
    torch.save({"x": _RunsCodeWhenLoaded()}, buffer)
    payload = buffer.getvalue()
    # A valid header and hash, so only the weights-only unpickler stands between the file and the code.
    (tmp_path / "ckpt-000000000002-1.pt").write_bytes(pack_header(payload) + payload)

    with caplog.at_level(logging.WARNING, logger=LOGGER):
        loaded = store.load_latest()

    assert loaded is not None and loaded.step == 1
    assert "ckpt-000000000002-1.pt" in caplog.text and "unpickle" in caplog.text
    assert _CALLS == []
    # The payload really is code: a full unpickle runs it.
    assert torch.load(io.BytesIO(payload), weights_only=False) == {"x": "ran"} and _CALLS == ["ran"]


# --- kill -9 while writing ----------------------------------------------------------------------------------


class _Writers:
    """checkpoint_writer.py, which forks one checkpoint writer at a time for the test to kill."""

    def __init__(self, folder: Path, stderr: Path) -> None:
        self._stderr = stderr
        with stderr.open("wb") as err:
            self._process = subprocess.Popen(
                [sys.executable, str(WRITER), str(folder)],
                stdin=subprocess.PIPE,
                stdout=subprocess.PIPE,
                stderr=err,
                bufsize=0,
            )
        self._lines: list[str] = []
        self._partial = b""
        self._child = 0
        self._read_until("ready", timeout=60)

    def start(self, first_step: int) -> None:
        self._send(f"go {first_step}")
        self._child = int(self._read_until("child ", timeout=10).split()[1])

    def kill_child(self) -> list[int]:
        """SIGKILL the writer, wait until it is gone, and return the steps it reported saved."""
        os.kill(self._child, signal.SIGKILL)
        self._send("reap")
        status = int(self._read_until("reaped ", timeout=10).split()[1])
        assert os.WIFSIGNALED(status) and os.WTERMSIG(status) == signal.SIGKILL, self._stderr.read_text()
        self._child = 0
        saved = [int(line.split()[1]) for line in self._lines if line.startswith("saved ")]
        self._lines.clear()
        return saved

    def close(self) -> None:
        if self._child:
            with contextlib.suppress(ProcessLookupError):
                os.kill(self._child, signal.SIGKILL)
        try:
            self._process.communicate(timeout=10)  # closing stdin ends the parent's command loop
        except subprocess.TimeoutExpired:
            self._process.kill()
            self._process.communicate()

    def _send(self, command: str) -> None:
        assert self._process.stdin is not None
        self._process.stdin.write(f"{command}\n".encode())

    def _read_until(self, prefix: str, *, timeout: float) -> str:
        """Read lines (kept for `kill_child`) until one starts with `prefix`, which is returned."""
        assert self._process.stdout is not None
        deadline = time.monotonic() + timeout
        while True:
            *complete, self._partial = self._partial.split(b"\n")
            for index, raw in enumerate(complete):
                line = raw.decode()
                if line.startswith(prefix):
                    self._partial = b"\n".join([*complete[index + 1 :], self._partial])
                    return line
                if line:
                    self._lines.append(line)
            remaining = deadline - time.monotonic()
            readable, _, _ = select.select([self._process.stdout], [], [], max(remaining, 0))
            chunk = os.read(self._process.stdout.fileno(), 65536) if readable else b""
            if not chunk:
                pytest.fail(f"no {prefix!r} from the checkpoint writer: {self._stderr.read_text()[-2000:]}")
            self._partial += chunk


def _check_after_kill(store: CheckpointStore, saved: list[int], *, previous: int | None, first: int) -> int | None:
    """The step `load_latest` finds: at least the last one reported saved, and exactly what was written."""
    floor = saved[-1] if saved else previous
    # The save under way may have been renamed into place just before the kill, before "saved" was printed.
    ceiling = saved[-1] + 1 if saved else first
    loaded = store.load_latest()
    if loaded is None:
        assert floor is None, f"lost step {floor}"
        return None
    assert (floor is None or loaded.step >= floor) and loaded.step <= ceiling, (floor, loaded.step, ceiling)
    assert_same(state_for(loaded.step), loaded.state)
    return loaded.step


def _wait_for_new_temp_file(folder: Path, old: set[Path], *, timeout: float) -> None:
    """Return as soon as a save has created a temp file that was not in `old`: a write is under way."""
    deadline = time.monotonic() + timeout
    while not set(temp_files(folder)) - old:
        if time.monotonic() > deadline:
            pytest.fail(f"no checkpoint write started within {timeout} s")
        time.sleep(0.0005)


def _kill_writers(tmp_path: Path, caplog: pytest.LogCaptureFixture, *, kills: int, seed: int, max_delay: float) -> int:
    """Kill a checkpoint writer `kills` times, each at a random instant up to `max_delay` s after it starts;
    every other kill then waits for a write to begin and lands within 10 ms, so that many cut a write short.
    Return how many did (left a temp file)."""
    rng = random.Random(seed)
    folder = tmp_path / "ckpt"
    store = CheckpointStore(folder)
    writers = _Writers(folder, tmp_path / "writer.stderr")
    latest: int | None = None
    interrupted = 0
    try:
        for kill in range(kills):
            old_temp_files = set(temp_files(folder))  # left by earlier kills; the next good save removes them
            first = 0 if latest is None else latest + 1
            writers.start(first)  # resumes after the newest checkpoint, as a restarted daemon would
            time.sleep(rng.uniform(0.0, max_delay))
            if kill % 2:
                _wait_for_new_temp_file(folder, old_temp_files, timeout=10)
                time.sleep(rng.uniform(0.0, 0.01))
            saved = writers.kill_child()
            interrupted += bool(set(temp_files(folder)) - old_temp_files)
            with caplog.at_level(logging.WARNING, logger=LOGGER):
                latest = _check_after_kill(store, saved, previous=latest, first=first)
    finally:
        writers.close()
    # Atomic writes mean no checkpoint name ever points at a partial file, so nothing was skipped.
    assert [r for r in caplog.records if r.name == LOGGER] == []
    assert latest is not None, "the writers never saved; the kills tested nothing"
    assert interrupted > 0, "no kill landed inside a write"
    return interrupted


def test_kill_9_during_writes_keeps_a_valid_checkpoint(tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    _kill_writers(tmp_path, caplog, kills=10, seed=10, max_delay=0.6)


@pytest.mark.slow
def test_kill_9_during_writes_keeps_a_valid_checkpoint_100_times(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    _kill_writers(tmp_path, caplog, kills=100, seed=100, max_delay=1.5)


# --- safetensors export -------------------------------------------------------------------------------------


def test_export_round_trip_with_metadata(tmp_path: Path) -> None:
    torch.manual_seed(0)
    state = small_model().state_dict()
    metadata = {"task": "mnist-cnn", "task_hash": "ab12", "step": "1234", "algorithm": "choco"}

    data = model_to_safetensors(state, metadata)

    loaded = safetensors.torch.load(data)
    assert set(loaded) == set(state)
    for name, tensor in state.items():
        assert_same(tensor, loaded[name], name)
    path = tmp_path / "model.safetensors"
    path.write_bytes(data)
    with safetensors.safe_open(str(path), framework="pt") as exported:
        assert exported.metadata() == metadata


def test_export_handles_shared_and_non_contiguous_tensors() -> None:
    base = torch.arange(12.0).reshape(3, 4)
    tied = nn.Parameter(torch.randn(5, 2))
    state = {
        "base": base,
        "same": base,
        "transposed": base.t(),
        "transposed alone": torch.arange(6.0).reshape(2, 3).t(),
        "row": base[1],
        "embedding.weight": tied,
        "head.weight": tied,
        "empty1": torch.empty(0),
        "empty2": torch.empty(0),
    }
    with pytest.raises(RuntimeError, match="share memory"):
        safetensors.torch.save({"base": base, "same": base})  # what the export must work around

    loaded = safetensors.torch.load(model_to_safetensors(state, {}))

    assert set(loaded) == set(state)
    for name, tensor in state.items():
        assert torch.equal(loaded[name], tensor.detach()), name
    assert not state["transposed"].is_contiguous() and state["same"] is base  # the caller's tensors untouched


def test_export_refuses_non_string_metadata() -> None:
    with pytest.raises(TypeError, match="step"):
        model_to_safetensors({"w": torch.ones(1)}, {"step": 3})  # type: ignore[dict-item]


def test_write_bytes_atomically_writes_and_replaces(tmp_path: Path) -> None:
    path = tmp_path / "model.safetensors"
    path.write_bytes(b"old")
    old_umask = os.umask(0o077)
    try:
        write_bytes_atomically(path, b"new content")
    finally:
        os.umask(old_umask)

    assert path.read_bytes() == b"new content"
    assert stat.S_IMODE(path.stat().st_mode) == 0o644
    assert list(tmp_path.iterdir()) == [path]
    write_bytes_atomically(path, b"private", mode=0o600)
    assert stat.S_IMODE(path.stat().st_mode) == 0o600


@pytest.mark.parametrize("failure", FAILURES)
def test_write_bytes_atomically_leaves_no_temp_file_on_failure(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, failure: str
) -> None:
    inject, code = FAILURES[failure]
    path = tmp_path / "model.safetensors"
    path.write_bytes(b"old")

    with monkeypatch.context() as patch:
        inject(patch)
        with pytest.raises(OSError, match=re.escape(os.strerror(code))) as raised:
            write_bytes_atomically(path, b"x" * 100_000)

    assert raised.value.errno == code
    assert list(tmp_path.iterdir()) == [path]
    assert path.read_bytes() == b"old"
