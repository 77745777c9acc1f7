"""The client commands (`gossipd status`, `peers`, `tasks`, `join`, `leave`, `export`) against an in-process
server over a fake backend: their tables, their `--json`, and their exit codes."""

from __future__ import annotations

import dataclasses
import json
import re
from collections.abc import Iterator
from pathlib import Path

import pytest
import trio
from click.testing import CliRunner, Result

from gossipd.cli import main
from gossipd.cli_client import format_status, human_bytes, human_duration
from gossipd.services.control import JoinRequest
from gossipd.services.status import to_json
from tests.test_control_api import (
    MODEL_BYTES,
    FakeBackend,
    make_auto_task,
    make_status,
    names,
    short_socket_dir,
    start_server,
)


@pytest.fixture
def sock_dir() -> Iterator[Path]:
    with short_socket_dir() as folder:
        yield folder


@pytest.fixture
def backend() -> FakeBackend:
    return FakeBackend()


@pytest.fixture
async def socket_path(nursery: trio.Nursery, sock_dir: Path, backend: FakeBackend) -> Path:
    path = sock_dir / "run" / "gossipd.sock"
    await start_server(nursery, path, backend)
    return path


async def gossipd(*args: str, env: dict[str, str] | None = None) -> Result:
    # The commands block on the socket, so they run in a thread while the server runs in this one.
    return await trio.to_thread.run_sync(lambda: CliRunner().invoke(main, list(args), env=env))


async def test_status_table(socket_path: Path) -> None:
    result = await gossipd("status", "--socket", str(socket_path))
    assert result.exit_code == 0, result.output
    lines = result.stdout.splitlines()
    assert lines[0].split() == ["peer", "12D3KooWSelfSelfSelfSelfSelfSelfSelfSelfSelf"]
    assert lines[1].split() == ["addresses", "/ip4/127.0.0.1/tcp/4001"]
    assert lines[2].split() == ["/ip6/::1/tcp/4001"]
    assert lines[3].split() == ["uptime", "1h", "02m"]
    assert lines[5] == "reach     auto, reachable through 1 relay (…RRRRRRrelay1)"
    assert lines[6] == "relay     serving 3/16 reservations, 4 circuits per peer, 500.0 MB and 1h 00m per circuit"
    header = next(i for i, line in enumerate(lines) if line.startswith("TASK"))
    assert lines[header + 1].split() == [
        "mnist", "training", "1200", "0.25", "93.12%", "340", "12.3", "MB", "12.0", "MB", "31.5x", "0.0123", "0.31",
        "1/2",
    ]  # fmt: skip
    assert lines[header + 2].split() == [
        "cifar",
        "failed",
        "0",
        "-",
        "-",
        "340",
        "12.3",
        "MB",
        "12.0",
        "MB",
        "-",
        "-",
        "0.31",
        "0/0",
    ]
    assert lines[header + 3] == "cifar: no CUDA device"
    # Fixed width: text columns start under their title, numbers end under it.
    assert lines[header].index("STATE") == lines[header + 1].index("training") == lines[header + 2].index("failed")
    step_end = lines[header].index("STEP") + len("STEP")
    assert lines[header + 1][step_end - 4 : step_end] == "1200" and lines[header + 2][step_end - 1] == "0"


async def test_status_json_is_the_servers(socket_path: Path, backend: FakeBackend) -> None:
    result = await gossipd("status", "--json", "--socket", str(socket_path))
    assert result.exit_code == 0, result.output
    assert json.loads(result.stdout) == to_json(backend.daemon)


async def test_socket_from_the_environment(socket_path: Path) -> None:
    result = await gossipd("tasks", "--json", env={"GOSSIPD_SOCKET": str(socket_path)})
    assert result.exit_code == 0, result.output
    assert [task["id"] for task in json.loads(result.stdout)["tasks"]] == ["mnist", "cifar"]


async def test_peers_table_and_json(socket_path: Path) -> None:
    result = await gossipd("peers", "--socket", str(socket_path))
    assert result.exit_code == 0, result.output
    header, first, second = result.stdout.splitlines()[:3]
    assert header.split() == [
        "TASK", "PEER", "VIEW", "SOURCES", "REACHED", "HEARD", "STEP", "LOSS", "EXCH/FAIL", "DISTANCE"
    ]  # fmt: skip
    assert first.split()[:5] == ["mnist", "…AAAApeerone1", "*", "bootstrap,dht", "relayed"]
    assert first.split()[-5:] == ["1190", "(done)", "0.31", "40/2", "0.0456"]  # past its training budget
    assert second.split() == ["mnist", "…BBBBpeertwo2", "bootstrap,dht", "-", "-", "-", "-", "40/2", "-"]
    result = await gossipd("peers", "--json", "--socket", str(socket_path))
    peers = json.loads(result.stdout)["peers"]
    assert [peer["task"] for peer in peers] == ["mnist", "mnist"]


async def test_peers_show_the_contribution_ledger_with_declared_figures_marked(socket_path: Path) -> None:
    result = await gossipd("peers", "--ledger", "--socket", str(socket_path))
    assert result.exit_code == 0, result.output
    header, row, note = result.stdout.splitlines()
    assert header.split() == [
        "TASK", "PEER", "LIVE", "LAST", "SEEN", "TIME", "SEEN", "STARTED", "ANSWERED", "FAILED", "SENT", "RECEIVED",
        "REJECTED", "STEP*", "EXAMPLES*",
    ]  # fmt: skip
    assert row.split()[:3] == ["mnist", "…AAAApeerone1", "yes"]
    assert row.split()[-12:] == ["2h", "30m", "25", "15", "2", "1.5", "MB", "1.4", "MB", "1", "1190", "15000"]
    assert row.index("15000") + len("15000") == len(header)  # numbers end under their title
    assert note.startswith("* ") and "declares" in note
    full = await gossipd("peers", "--socket", str(socket_path))
    assert "EXAMPLES*" in full.stdout and "DISTANCE" in full.stdout
    ledger = json.loads((await gossipd("peers", "--json", "--socket", str(socket_path))).stdout)["ledger"]
    assert ledger[0]["task"] == "mnist" and ledger[0]["declared_dataset"] == 15_000


async def test_peers_show_each_auto_edges_mode_and_link_rate(socket_path: Path, backend: FakeBackend) -> None:
    backend.daemon = dataclasses.replace(backend.daemon, tasks=(make_auto_task(),))
    result = await gossipd("peers", "--socket", str(socket_path))
    assert result.exit_code == 0, result.output
    header, first, second = result.stdout.splitlines()[:3]
    assert header.split()[-3:] == ["DISTANCE", "MODE", "LINK"]
    assert first.split()[-6:] == ["40/2", "0.0456", "rank", "4", "2.0", "MB/s"]
    assert second.split()[-5:] == ["40/2", "-", "full", "8.0", "MB/s"]
    assert first.index("rank 4") == header.index("MODE")
    assert first.index("MB/s") + len("MB/s") == len(header)  # the rate ends under its title


async def test_peers_links_explain_each_edges_mode(socket_path: Path, backend: FakeBackend) -> None:
    backend.daemon = dataclasses.replace(backend.daemon, tasks=(make_auto_task(),))
    result = await gossipd("peers", "--links", "--socket", str(socket_path))
    assert result.exit_code == 0, result.output
    header, *rows = result.stdout.splitlines()
    assert header.split() == [
        "TASK", "PEER", "MODE", "EXCHANGE/BUDGET", "LINK", "EXCH/S", "CAPTURED", "EXCHANGES", "REASON"
    ]  # fmt: skip
    cells = [re.split(r"\s{2,}", row) for row in rows]  # columns are two spaces apart or more
    assert cells[0] == [
        "mnist", "…AAAApeerone1", "rank 4", "6.5 ms / 125 ms", "2.0 MB/s", "1.95", "4.1%", "40",
        "rank 4: rank 2 took 3 ms, rank 4 predicted 6 ms of a 125 ms budget",
    ]  # fmt: skip
    assert cells[1][1:8] == ["…BBBBpeertwo2", "full", "48 ms / 125 ms", "8.0 MB/s", "-", "100.0%", "12"]
    assert cells[2][:3] == ["mnist", "…CCCCpeerthr3", "rank 4"]
    assert cells[2][6] == "-"  # not known (a task with probe = 0)
    assert rows[0].index("1.95") + len("1.95") == header.index("EXCH/S") + len("EXCH/S")  # numbers end under it
    both = await gossipd("peers", "--links", "--ledger", "--socket", str(socket_path))
    assert "EXAMPLES*" in both.stdout and "EXCHANGE/BUDGET" in both.stdout and "DISTANCE" not in both.stdout


async def test_peers_links_of_a_task_that_is_not_auto(socket_path: Path) -> None:
    result = await gossipd("peers", "--links", "--socket", str(socket_path))
    assert result.exit_code == 0, result.output
    assert result.stdout.startswith("no auto exchanges yet")
    plain = await gossipd("peers", "--socket", str(socket_path))
    assert "MODE" not in plain.stdout.splitlines()[0]


async def test_tasks_table(socket_path: Path) -> None:
    result = await gossipd("tasks", "--socket", str(socket_path))
    assert result.exit_code == 0, result.output
    header, mnist, cifar = result.stdout.splitlines()
    assert header.split() == ["TASK", "STATE", "ALGORITHM", "DEVICE", "STEP", "SAMPLES/S", "LOSS", "ACCURACY", "HASH"]
    assert mnist.split() == [
        "mnist",
        "training",
        "powergossip",
        "cpu",
        "1200",
        "640.5",
        "0.25",
        "93.12%",
        "001122334455",
    ]
    assert cifar.split()[:2] == ["cifar", "failed"]


async def test_join_sends_absolute_paths(
    socket_path: Path, backend: FakeBackend, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    (tmp_path / "task.toml").write_text("[task]\nid = 'mnist'\n")
    (tmp_path / "data").mkdir()
    monkeypatch.chdir(tmp_path)
    args = ["join", "task.toml", "--data", "data", "--peer-index", "1", "--peer-count", "4"]
    result = await gossipd(*args, "--socket", str(socket_path))
    assert result.exit_code == 0, result.output
    assert result.stdout == "joined joined (loading)\n"
    expected = JoinRequest(path=str(tmp_path / "task.toml"), data=str(tmp_path / "data"), peer_index=1, peer_count=4)
    assert backend.joined == [expected]


async def test_join_needs_both_peer_options(socket_path: Path, backend: FakeBackend, tmp_path: Path) -> None:
    (tmp_path / "task.toml").write_text("")
    result = await gossipd("join", str(tmp_path / "task.toml"), "--peer-index", "1", "--socket", str(socket_path))
    assert result.exit_code == 2 and backend.joined == []


async def test_leave(socket_path: Path, backend: FakeBackend) -> None:
    result = await gossipd("leave", "mnist", "--socket", str(socket_path))
    assert (result.exit_code, result.stdout) == (0, "left mnist\n")
    assert backend.left == ["mnist"]


async def test_export_writes_the_model(socket_path: Path, tmp_path: Path) -> None:
    out = tmp_path / "mnist.safetensors"
    out.write_bytes(b"an older export")
    result = await gossipd("export", "mnist", str(out), "--socket", str(socket_path))
    assert result.exit_code == 0, result.output
    assert out.read_bytes() == MODEL_BYTES
    assert names(tmp_path) == ["mnist.safetensors"]  # no temporary file left


async def test_unknown_task_exits_4(socket_path: Path, tmp_path: Path) -> None:
    for args in (["leave", "nope"], ["export", "nope", str(tmp_path / "out.safetensors")]):
        result = await gossipd(*args, "--socket", str(socket_path))
        assert result.exit_code == 4
        assert result.stderr == "error: no task 'nope'\n"
    assert names(tmp_path) == []


async def test_no_daemon_exits_6(sock_dir: Path) -> None:
    path = sock_dir / "nobody.sock"
    for command in ("status", "peers", "tasks"):
        result = await gossipd(command, "--socket", str(path))
        assert result.exit_code == 6
        assert result.stderr == f"error: no daemon is listening on {path} (start one with `gossipd run`)\n"


async def test_shutting_down_exits_7(socket_path: Path, backend: FakeBackend) -> None:
    backend.stopping = True
    result = await gossipd("leave", "mnist", "--socket", str(socket_path))
    assert result.exit_code == 7 and "shutting down" in result.stderr


def test_human_units() -> None:
    assert [human_bytes(n) for n in (0, 999, 1000, 12_345_678, 3 * 10**9, 5 * 10**15)] == [
        "0 B", "999 B", "1.0 kB", "12.3 MB", "3.0 GB", "5000.0 TB"
    ]  # fmt: skip
    assert [human_duration(s) for s in (5, 65, 3723, 90_000)] == ["5s", "1m 05s", "1h 02m", "1d 01h"]


def test_status_says_what_pace_a_cpu_budget_set() -> None:
    data = to_json(make_status())
    data["tasks"][0].update(steps_per_exchange=6, mixing_cpu=0.12, mixing_cpu_allowed=0.05)
    text = format_status(data)
    assert "mnist: an exchange every 6 steps; mixing used 12% of a core, allowed 5% ([gossip] cpu_budget)" in text
    assert "cifar: an exchange every" not in text  # no budget there: no line


def test_status_says_when_neighbours_past_the_budget_no_longer_mix_with_a_training_peer() -> None:
    data = to_json(make_status())
    data["tasks"][0].update(state="training", live_peers=3, finished_neighbours=1)
    assert "mnist: 1 of its 3 live neighbours are past the training budget; it mixes with the other 2" in (
        format_status(data)
    )
    data["tasks"][0].update(finished_neighbours=3)
    assert "3 of its 3 live neighbours are past the training budget; it trains on alone, then finishes" in (
        format_status(data)
    )
    data["tasks"][0].update(state="finishing")
    assert "past the training budget" not in format_status(data)


def test_status_sums_up_the_modes_an_auto_task_exchanges_in() -> None:
    status = make_status()
    status = dataclasses.replace(status, tasks=(make_auto_task(), make_auto_task("fresh"), *status.tasks[1:]))
    data = to_json(status)
    data["tasks"][1].update(links=[], exchange_budget_ms=7.25)
    text = format_status(data)
    assert "mnist: auto exchanges, 125 ms budget each; edges at rank 4 ×2, full ×1" in text.splitlines()
    assert "fresh: auto exchanges, 7.2 ms budget each; no edge measured yet" in text.splitlines()
    assert "cifar: auto" not in text
    data["tasks"][0].update(mixing_cpu=0.42)  # measured whether or not a CPU budget caps it
    line = "mnist: auto exchanges, 125 ms budget each; edges at rank 4 ×2, full ×1; mixing used 42% of a core"
    assert line in format_status(data).splitlines()
