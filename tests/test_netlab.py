"""The emulated network: topology descriptions (pure), then real labs where this machine can build them
(root, unshare, veth, bridges, tbf): reachability between sites, shaped rates, byte counters, and nothing
left behind, whether the lab ends normally, by an exception, or by its builder being killed."""

from __future__ import annotations

import ipaddress
import json
import os
import signal
import subprocess
import sys
import textwrap
import time
from pathlib import Path

import pytest

from gossipd.tools.netlab import (
    LabError,
    NetLab,
    lab_unavailable,
    parse_proc_net_dev,
    shaping_commands,
    tbf_burst_bytes,
)
from gossipd.tools.netlab_topology import (
    TopologyError,
    format_rate,
    load_topology,
    parse_rate,
    simple_topology,
    topology_from_mapping,
)
from tests.conftest import REPO

TWO_SITES = {
    "sites": {"a": {}, "b": {"subnet": "10.201.7.0/24"}},
    "hosts": {
        "relay": {"sites": ["a", "b"]},
        "a1": {"sites": ["a"], "up": "10mbit", "down": "20mbit"},
        "b1": {"sites": ["b"]},
    },
}

# -- descriptions ------------------------------------------------------------------------------------------


def test_rates_in_tc_notation() -> None:
    assert parse_rate("10mbit") == 10_000_000
    assert parse_rate("1.5Gbit") == 1_500_000_000
    assert parse_rate(" 500kbit ") == 500_000
    assert format_rate(100_000_000) == "100mbit"
    assert format_rate(1_500_000) == "1500kbit"
    for bad in ("10", "10mb", "fast", "-1mbit", "1bit"):
        with pytest.raises(TopologyError):
            parse_rate(bad)


def test_two_sites_get_addresses_devices_and_rates() -> None:
    lab = topology_from_mapping(TWO_SITES)
    assert [s.subnet for s in lab.sites] == [
        ipaddress.IPv4Network("10.200.0.0/24"),
        ipaddress.IPv4Network("10.201.7.0/24"),
    ]
    relay = lab.interfaces_of("relay")
    assert [(i.site, i.device, str(i.address)) for i in relay] == [
        ("a", "eth0", "10.200.0.1/24"),
        ("b", "eth1", "10.201.7.1/24"),
    ]
    assert lab.address("a1") == "10.200.0.2"
    assert lab.address("b1", "b") == "10.201.7.2"
    assert lab.host("a1").up_bps == 10_000_000 and lab.host("a1").down_bps == 20_000_000
    assert lab.host("b1").up_bps is None
    assert len({i.hub_device for i in lab.interfaces}) == len(lab.interfaces)
    assert all(len(i.hub_device) <= 15 for i in lab.interfaces)
    assert lab.expand("dial /ip4/{addr:relay@b}/tcp/1 and {addr:a1}") == "dial /ip4/10.201.7.1/tcp/1 and 10.200.0.2"
    with pytest.raises(TopologyError, match="not on site"):
        lab.expand("{addr:a1@b}")
    with pytest.raises(TopologyError, match="no host named 'nobody'"):
        lab.expand("{addr:nobody}")


def test_a_flat_network_of_shaped_peers() -> None:
    lab = simple_topology(4, rate="10mbit")
    assert [h.name for h in lab.hosts] == ["p0", "p1", "p2", "p3"]
    assert {h.up_bps for h in lab.hosts} == {10_000_000}
    assert len({lab.address(h.name) for h in lab.hosts}) == 4


@pytest.mark.parametrize(
    ("change", "message"),
    [
        ({"extra": 1}, "unknown key 'extra'"),
        ({"lab": {"queue_ms": 0}}, "queue_ms"),
        ({"sites": {}}, "at least one site"),
        ({"sites": {"a": {"subnet": "8.8.8.0/24"}, "b": {}}}, "private range"),
        ({"sites": {"a": {"subnet": "10.9.0.0/16"}, "b": {"subnet": "10.9.3.0/24"}}}, "overlaps"),
        ({"sites": {"a": {"subnet": "10.9.0.0/31"}, "b": {}}}, "too small"),
        ({"sites": {"A": {}}}, "site name 'A'"),
        ({"hosts": {"x": {"sites": ["c"]}}}, "no site named 'c'"),
        ({"hosts": {"x": {"sites": ["a", "a"]}}}, "listed twice"),
        ({"hosts": {"x": {"sites": ["a"], "up": 10}}}, r"\[hosts.x\] up"),
        ({"hosts": {"x": {"sites": ["a"], "down": "10mb"}}}, r"\[hosts.x\] down"),
        ({"hosts": {"x": {"sites": ["a"], "mtu": 1}}}, "unknown key 'mtu'"),
        ({"hosts": {"x": {"sites": ["a"], "run": "echo 'unclosed"}}}, "run"),
        ({"hosts": {"x": {"sites": ["a"], "wait": "yes"}}}, "wait"),
    ],
)
def test_bad_descriptions_are_refused_by_key(change: dict[str, object], message: str) -> None:
    with pytest.raises(TopologyError, match=message):
        topology_from_mapping(TWO_SITES | change)


def test_a_file_error_names_the_file(tmp_path: Path) -> None:
    path = tmp_path / "lab.toml"
    path.write_text("[sites.a]\n[hosts.x]\nsites = ['a']\nup = 'warp'\n")
    with pytest.raises(TopologyError, match=r"lab.toml: \[hosts.x\] up"):
        load_topology(path)
    path.write_text("[sites.a\n")
    with pytest.raises(TopologyError, match="not valid TOML"):
        load_topology(path)


def test_proc_net_dev_counters_and_shaping_lines() -> None:
    text = textwrap.dedent(
        """\
        Inter-|   Receive                                                |  Transmit
         face |bytes    packets errs drop fifo frame compressed multicast|bytes    packets errs drop fifo colls carrier compressed
            lo:     120       2    0    0    0     0          0         0      120       2    0    0    0     0       0          0
          eth0: 5000000    3400    0    0    0     0          0         0   812345     900    0    0    0     0       0          0
        """  # noqa: E501
    )
    assert parse_proc_net_dev(text) == {"lo": (120, 2, 120, 2), "eth0": (5_000_000, 3400, 812_345, 900)}
    assert shaping_commands("eth0", None, 50) == []
    (line,) = shaping_commands("eth0", 10_000_000, 50)
    assert line == f"qdisc add dev eth0 root tbf rate 10000000bit burst {tbf_burst_bytes(10_000_000)} latency 50ms"
    assert tbf_burst_bytes(10_000_000) == 16 * 1024
    assert tbf_burst_bytes(1_000_000_000) == 500_000


# -- real labs ------------------------------------------------------------------------------------------

UNAVAILABLE = lab_unavailable()
needs_lab = pytest.mark.skipif(UNAVAILABLE is not None, reason=f"no network lab here: {UNAVAILABLE}")

# Connects to HOST:PORT, sends N bytes, prints the seconds it took (the receiver acknowledges the total).
SENDER = """
import socket, sys, time
host, port, n = sys.argv[1], int(sys.argv[2]), int(sys.argv[3])
s = socket.create_connection((host, port), timeout=5)
s.settimeout(30)
start = time.monotonic()
s.sendall(b"x" * n)
s.shutdown(socket.SHUT_WR)
assert int(s.recv(64)) == n
print(time.monotonic() - start)
"""
RECEIVER = """
import socket, sys
srv = socket.socket()
srv.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
srv.bind(("0.0.0.0", int(sys.argv[1])))
srv.listen()
srv.settimeout(30)
while True:
    conn, _ = srv.accept()
    conn.settimeout(30)
    total = 0
    while chunk := conn.recv(1 << 16):
        total += len(chunk)
    conn.sendall(str(total).encode())
    conn.close()
"""


def _live_namespaces() -> set[str]:
    found = set()
    for entry in Path("/proc").iterdir():
        if entry.name.isdigit():
            try:
                found.add(os.readlink(entry / "ns" / "net"))
            except OSError:
                continue
    return found


def _host_links() -> set[str]:
    return set(os.listdir("/sys/class/net"))


def _wait_until_gone(namespaces: set[str], pids: list[int], timeout: float = 15.0) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if not (namespaces & _live_namespaces()) and not any(_alive(p) for p in pids):
            return
        time.sleep(0.1)
    left = namespaces & _live_namespaces()
    raise AssertionError(f"left behind after {timeout} s: namespaces {left}, pids {[p for p in pids if _alive(p)]}")


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    # A zombie is dead; only its parent has not reaped it yet.
    try:
        return Path(f"/proc/{pid}/stat").read_text().split(")")[-1].split()[0] != "Z"
    except OSError:
        return False


def _group_members(group: int) -> list[int]:
    """Live (not zombie) processes in a process group."""
    members = []
    for entry in Path("/proc").iterdir():
        try:
            fields = (entry / "stat").read_text().rsplit(")", 1)[1].split()
        except (OSError, IndexError):
            continue
        if fields[0] != "Z" and int(fields[2]) == group:
            members.append(int(entry.name))
    return members


@needs_lab
def test_sites_reach_only_what_they_share() -> None:
    with NetLab.build(topology_from_mapping(TWO_SITES)) as lab:
        server = lab.spawn("relay", [sys.executable, "-c", RECEIVER, "9000"])
        time.sleep(0.3)
        for host, site in (("a1", "a"), ("b1", "b")):
            sent = lab.run(host, [sys.executable, "-c", SENDER, lab.address("relay", site), "9000", "1000"], timeout=30)
            assert sent.returncode == 0, sent.stderr
        lab.spawn("a1", [sys.executable, "-c", RECEIVER, "9001"])
        time.sleep(0.3)
        crossing = lab.run("b1", [sys.executable, "-c", SENDER, lab.address("a1"), "9001", "10"], timeout=30)
        assert crossing.returncode != 0
        assert "Network is unreachable" in crossing.stderr
        # A site cut from the relay no longer reaches it.
        lab.set_link("relay", "b", up=False)
        cut = lab.run("b1", [sys.executable, "-c", SENDER, lab.address("relay", "b"), "9000", "10"], timeout=30)
        assert cut.returncode != 0
        assert server.poll() is None


@needs_lab
def test_rates_are_shaped_and_counted() -> None:
    megabytes = 2_500_000
    with NetLab.build(topology_from_mapping(TWO_SITES)) as lab:
        lab.spawn("relay", [sys.executable, "-c", RECEIVER, "9000"])
        time.sleep(0.3)
        before = {(c.host, c.site): c for c in lab.counters()}
        sent = lab.run("a1", [sys.executable, "-c", SENDER, lab.address("relay"), "9000", str(megabytes)], timeout=60)
        assert sent.returncode == 0, sent.stderr
        after = {(c.host, c.site): c for c in lab.counters()}
    seconds = float(sent.stdout)
    # 2.5 MB through a 10 Mbit/s uplink takes at least 2 s; only the lower bound is checked (a busy machine
    # is slower, never faster). The bucket's depth lets a little through at once, hence the 10% margin.
    assert seconds >= 0.9 * megabytes * 8 / 10_000_000, seconds
    uplink = after[("a1", "a")].minus(before[("a1", "a")])
    assert megabytes <= uplink.up_bytes <= megabytes * 1.1
    relay_side = after[("relay", "a")].minus(before[("relay", "a")])
    assert megabytes <= relay_side.down_bytes <= megabytes * 1.1
    up_use, down_use = uplink.utilisation(seconds)
    assert up_use is not None and 0.8 <= up_use <= 1.1
    assert down_use is not None and down_use < 0.05


@needs_lab
def test_nothing_outlives_a_lab_that_failed() -> None:
    links = _host_links()
    pids: list[int] = []
    held: set[str] = set()

    def fail_mid_run() -> None:
        with NetLab.build(topology_from_mapping(TWO_SITES)) as lab:
            held.update(lab.namespace_ids().values())
            assert len(held) == 4 and held <= _live_namespaces()
            # A process and a grandchild of it, each holding a namespace.
            pids.append(lab.spawn("a1", ["sh", "-c", "sleep 300 & echo $!; wait"], stdout=subprocess.PIPE).pid)
            pids.append(lab.spawn("b1", ["sleep", "300"]).pid)
            raise RuntimeError("mid-run")

    with pytest.raises(RuntimeError, match="mid-run"):
        fail_mid_run()
    _wait_until_gone(held, pids)
    assert _host_links() == links


@needs_lab
def test_nothing_outlives_a_builder_killed_outright(tmp_path: Path) -> None:
    script = textwrap.dedent(
        f"""
        import json, sys, time
        sys.path.insert(0, {str(REPO)!r})
        from gossipd.tools.netlab import NetLab
        from gossipd.tools.netlab_topology import simple_topology
        with NetLab.build(simple_topology(3, rate="10mbit")) as lab:
            child = lab.spawn("p1", ["sh", "-c", "sleep 300 & sleep 300"])
            print(json.dumps({{"namespaces": list(lab.namespace_ids().values()), "pid": child.pid}}), flush=True)
            time.sleep(300)
        """
    )
    with subprocess.Popen([sys.executable, "-c", script], stdout=subprocess.PIPE, text=True) as builder:
        assert builder.stdout is not None
        held = json.loads(builder.stdout.readline())
        builder.send_signal(signal.SIGKILL)
        builder.wait(timeout=10)
        # The group's leader and everything in its group (the backgrounded sleep) go with the lab.
        _wait_until_gone(set(held["namespaces"]), [held["pid"]])
        assert not _group_members(held["pid"])


@needs_lab
def test_netlab_run_reports_each_link(tmp_path: Path) -> None:
    lab_file = tmp_path / "lab.toml"
    (tmp_path / "sender.py").write_text(SENDER)
    (tmp_path / "receiver.py").write_text(RECEIVER)
    lab_file.write_text(
        textwrap.dedent(
            f"""
            [sites.a]
            [sites.b]
            [hosts.relay]
            sites = ["a", "b"]
            run = ["{sys.executable}", "{tmp_path}/receiver.py", "9000"]
            wait = false
            [hosts.a1]
            sites = ["a"]
            up = "10mbit"
            run = ["sh", "-c", "sleep 0.3; exec {sys.executable} {tmp_path}/sender.py {{addr:relay@a}} 9000 200000"]
            """
        )
    )
    report = tmp_path / "links.json"
    result = subprocess.run(
        [
            sys.executable,
            "-m",
            "gossipd.tools.netlab",
            "run",
            str(lab_file),
            "--json",
            str(report),
            "--logs",
            str(tmp_path),
        ],
        capture_output=True,
        text=True,
        timeout=120,
        cwd=REPO,
        check=False,
    )
    assert result.returncode == 0, result.stdout + result.stderr
    assert "| a1 | a | 10.200.0.2 | 10mbit |" in result.stdout
    links = {(link["host"], link["site"]): link for link in json.loads(report.read_text())["links"]}
    assert links[("a1", "a")]["up_bytes"] >= 200_000
    assert links[("relay", "a")]["down_bytes"] >= 200_000
    assert links[("relay", "b")]["down_bytes"] < 10_000
    assert float((tmp_path / "a1.log").read_text()) > 0


def test_a_lab_refuses_unknown_hosts_without_building() -> None:
    if UNAVAILABLE is not None:
        with pytest.raises(LabError, match=UNAVAILABLE.split(":")[0]), NetLab.build(simple_topology(1)):
            pass
        return
    with NetLab.build(simple_topology(1)) as lab, pytest.raises(LabError, match="no host named 'p9'"):
        lab.spawn("p9", ["true"])
