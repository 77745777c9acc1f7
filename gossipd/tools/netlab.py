"""An emulated network on one machine: each host its own network namespace and addresses, joined by veth pairs
to one bridge per site, with per-host uplink and downlink rates (tc tbf). See `netlab_topology` for the
description it builds from.

    python -m gossipd.tools.netlab check                     # can this machine build a lab? (root, unshare, tc)
    python -m gossipd.tools.netlab run lab.toml [--duration S] [--json out.json] [--logs DIR]

`run` builds the lab, starts each host's `run` command inside it, waits for those with `wait = true`, prints
each link's bytes and utilisation (interface counters), and tears everything down, on failure and Ctrl-C
too. From Python: `with NetLab.build(topology) as lab: lab.spawn("a1", [...])`.

Nothing outlives the lab. Every namespace is held by a process that exits when its stdin closes, so a
namespace goes when the lab closes or when the process that built it dies, however it dies; the veths and
bridges live inside those namespaces and go with them. Processes started in the lab are registered with a
small reaper process that kills their process groups when the lab closes or its builder dies. No namespace
is named under /run/netns and nothing is added to the machine's own network namespace.

Latency is not emulated: this kernel has no netem, and a user-space delaying forwarder in the path would
spend CPU that the peers' training needs on a 2-core machine and blur the byte counts. Rates and queues are
real kernel shaping; round trips stay sub-millisecond unless a queue fills.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import shutil
import signal
import subprocess
import sys
import time
from collections.abc import Iterator, Mapping, Sequence
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import IO, Any

from gossipd.tools.netlab_topology import (
    Host,
    Interface,
    Topology,
    TopologyError,
    format_rate,
    load_topology,
)

REQUIRED_TOOLS = ("unshare", "nsenter", "ip", "tc")
_START_TIMEOUT = 10.0
_STOP_GRACE = 5.0
# Holds a namespace open until its stdin closes: the lab's end of the pipe closes when the lab closes or
# its process dies, so a namespace never outlives the lab that made it.
_HOLDER = ("cat",)
# Kills the registered process groups when its stdin closes (the lab closed, or its builder died).
_REAPER = r"""
import os, signal, sys, time
groups = set()
for line in sys.stdin:
    line = line.strip()
    if line.startswith("+"):
        groups.add(int(line[1:]))
    elif line.startswith("-"):
        groups.discard(int(line[1:]))
def alive(g):
    try:
        os.killpg(g, 0)
        return True
    except OSError:
        return False
for sig, wait in ((signal.SIGTERM, 5.0), (signal.SIGKILL, 0.0)):
    for g in list(groups):
        try:
            os.killpg(g, sig)
        except OSError:
            groups.discard(g)
    deadline = time.monotonic() + wait
    while groups and time.monotonic() < deadline:
        groups = {g for g in groups if alive(g)}
        time.sleep(0.05)
"""


class LabError(RuntimeError):
    """The lab could not be built or a command in it failed; the message says which step."""


@dataclass(frozen=True, kw_only=True)
class LinkCounters:
    """One host interface's counters: `up` is what the host sent, `down` what it received."""

    host: str
    site: str
    device: str
    address: str
    up_bytes: int
    down_bytes: int
    up_packets: int
    down_packets: int
    up_bps: int | None
    down_bps: int | None

    def minus(self, before: LinkCounters) -> LinkCounters:
        return LinkCounters(
            host=self.host,
            site=self.site,
            device=self.device,
            address=self.address,
            up_bytes=self.up_bytes - before.up_bytes,
            down_bytes=self.down_bytes - before.down_bytes,
            up_packets=self.up_packets - before.up_packets,
            down_packets=self.down_packets - before.down_packets,
            up_bps=self.up_bps,
            down_bps=self.down_bps,
        )

    def utilisation(self, seconds: float) -> tuple[float | None, float | None]:
        """Mean share of the shaped rate used over `seconds`, each way (None where the link is unshaped)."""

        def share(count: int, bps: int | None) -> float | None:
            return None if bps is None or seconds <= 0 else count * 8 / seconds / bps

        return share(self.up_bytes, self.up_bps), share(self.down_bytes, self.down_bps)


def lab_unavailable() -> str | None:
    """Why this machine cannot build a lab, or None when it can."""
    if not sys.platform.startswith("linux"):
        return "network namespaces need Linux"
    if os.geteuid() != 0:
        return "building a network lab needs root (network namespaces, veth, tc)"
    missing = [tool for tool in REQUIRED_TOOLS if shutil.which(tool) is None]
    if missing:
        return f"missing tools: {', '.join(missing)}"
    probe = "ip link add nlp0 type veth peer name nlp1 && ip link add nlb0 type bridge && tc qdisc add dev nlp0 root tbf rate 1mbit burst 16kb latency 50ms"  # noqa: E501
    try:
        result = subprocess.run(
            ["unshare", "--net", "--", "sh", "-c", probe], capture_output=True, text=True, timeout=20, check=False
        )
    except (OSError, subprocess.TimeoutExpired) as exc:
        return f"unshare --net failed: {exc}"
    if result.returncode != 0:
        return f"cannot build veth, bridge or tbf in a new namespace: {result.stderr.strip() or result.returncode}"
    return None


def parse_proc_net_dev(text: str) -> dict[str, tuple[int, int, int, int]]:
    """/proc/net/dev as {device: (rx_bytes, rx_packets, tx_bytes, tx_packets)}."""
    counters: dict[str, tuple[int, int, int, int]] = {}
    for line in text.splitlines()[2:]:
        if ":" not in line:
            continue
        name, _, rest = line.partition(":")
        fields = rest.split()
        if len(fields) < 10:
            continue
        counters[name.strip()] = (int(fields[0]), int(fields[1]), int(fields[8]), int(fields[9]))
    return counters


def tbf_burst_bytes(bps: int) -> int:
    """The token bucket's depth: 4 ms at the rate, at least 16 KiB (tbf needs at least one full-size frame
    per timer tick, and segments larger GSO packets itself)."""
    return max(16 * 1024, bps // 8 // 250)


def shaping_commands(device: str, bps: int | None, queue_ms: int) -> list[str]:
    """tc batch lines that shape `device`'s egress to `bps` with a queue of about `queue_ms` (none if None)."""
    if bps is None:
        return []
    return [f"qdisc add dev {device} root tbf rate {bps}bit burst {tbf_burst_bytes(bps)} latency {queue_ms}ms"]


def _set_parent_death_signal() -> None:
    # Best effort: a holder also exits on EOF, which is the guarantee; this makes it immediate.
    with contextlib.suppress(OSError, AttributeError):
        import ctypes

        ctypes.CDLL(None, use_errno=True).prctl(1, signal.SIGKILL)  # PR_SET_PDEATHSIG


class _Namespace:
    """A network namespace held open by a process that exits when its stdin closes."""

    def __init__(self, label: str) -> None:
        self.label = label
        own = os.readlink("/proc/self/ns/net")
        self._process = subprocess.Popen(
            ["unshare", "--net", "--", *_HOLDER],
            stdin=subprocess.PIPE,
            stdout=subprocess.DEVNULL,
            stderr=subprocess.PIPE,
            preexec_fn=_set_parent_death_signal,
        )
        # Until unshare has run, the process is still in our namespace: entering it then would configure ours.
        deadline = time.monotonic() + _START_TIMEOUT
        while True:
            if self._process.poll() is not None:
                error = self._process.stderr.read().decode() if self._process.stderr else ""
                raise LabError(f"namespace for {label}: unshare exited: {error.strip()}")
            with contextlib.suppress(OSError):
                if os.readlink(f"/proc/{self._process.pid}/ns/net") != own:
                    break
            if time.monotonic() > deadline:
                self.close()
                raise LabError(f"namespace for {label}: unshare did not start within {_START_TIMEOUT:.0f} s")
            time.sleep(0.005)

    @property
    def pid(self) -> int:
        return self._process.pid

    def enter(self, argv: Sequence[str]) -> list[str]:
        return ["nsenter", f"--net=/proc/{self.pid}/ns/net", "--", *argv]

    def execute(self, argv: Sequence[str], *, stdin: str | None = None, timeout: float = 30.0) -> str:
        try:
            result = subprocess.run(
                self.enter(argv), input=stdin, capture_output=True, text=True, timeout=timeout, check=False
            )
        except subprocess.TimeoutExpired as exc:
            raise LabError(f"{self.label}: {' '.join(argv)} timed out after {timeout:.0f} s") from exc
        if result.returncode != 0:
            raise LabError(f"{self.label}: {' '.join(argv)} failed: {result.stderr.strip() or result.returncode}")
        return result.stdout

    def batch(self, tool: str, lines: Sequence[str]) -> None:
        """Runs `ip -batch` or `tc -batch` lines in this namespace in one process."""
        if lines:
            self.execute([tool, "-batch", "-"], stdin="\n".join(lines) + "\n")

    def close(self) -> None:
        if self._process.stdin is not None and not self._process.stdin.closed:
            with contextlib.suppress(OSError):
                self._process.stdin.close()
        try:
            self._process.wait(timeout=_STOP_GRACE)
        except subprocess.TimeoutExpired:
            self._process.kill()
            self._process.wait(timeout=_STOP_GRACE)
        if self._process.stderr is not None:
            self._process.stderr.close()


class _Reaper:
    def __init__(self) -> None:
        self._process = subprocess.Popen(
            [sys.executable, "-c", _REAPER], stdin=subprocess.PIPE, text=True, start_new_session=True
        )

    def _tell(self, line: str) -> None:
        if self._process.stdin is not None:
            with contextlib.suppress(OSError):
                self._process.stdin.write(line + "\n")
                self._process.stdin.flush()

    def watch(self, group: int) -> None:
        self._tell(f"+{group}")

    def forget(self, group: int) -> None:
        self._tell(f"-{group}")

    def close(self) -> None:
        if self._process.stdin is not None:
            with contextlib.suppress(OSError):
                self._process.stdin.close()
        try:
            self._process.wait(timeout=_STOP_GRACE * 3)
        except subprocess.TimeoutExpired:
            self._process.kill()
            self._process.wait(timeout=_STOP_GRACE)


class NetLab:
    """A built lab. Build it with `NetLab.build(topology)`; everything in it goes when the block ends."""

    def __init__(self, topology: Topology) -> None:
        self.topology = topology
        self._reaper = _Reaper()
        self._hub: _Namespace | None = None
        self._hosts: dict[str, _Namespace] = {}
        self._processes: list[subprocess.Popen[bytes]] = []
        self._baseline: dict[tuple[str, str], LinkCounters] = {}

    @classmethod
    @contextlib.contextmanager
    def build(cls, topology: Topology) -> Iterator[NetLab]:
        reason = lab_unavailable()
        if reason is not None:
            raise LabError(reason)
        lab = cls(topology)
        try:
            lab._create()
            yield lab
        finally:
            lab.close()

    # -- building ---------------------------------------------------------------------------------------

    def _create(self) -> None:
        hub = self._hub = _Namespace("hub")
        for host in self.topology.hosts:
            self._hosts[host.name] = _Namespace(host.name)
        links = [f"link add br{i} type bridge" for i in range(len(self.topology.sites))]
        links += [f"link set br{i} up" for i in range(len(self.topology.sites))]
        site_index = {s.name: i for i, s in enumerate(self.topology.sites)}
        for interface in self.topology.interfaces:
            pid = self._hosts[interface.host].pid
            links.append(f"link add {interface.hub_device} type veth peer name {interface.device} netns {pid}")
            links.append(f"link set {interface.hub_device} master br{site_index[interface.site]} up")
        hub.batch("ip", links)
        for host in self.topology.hosts:
            self._configure_host(host)
        hub.batch("tc", [line for i in self.topology.interfaces for line in self._shaping(i, downlink=True)])
        self._baseline = {(c.host, c.device): c for c in self._read_counters()}

    def _configure_host(self, host: Host) -> None:
        namespace = self._hosts[host.name]
        lines = ["link set lo up"]
        for interface in self.topology.interfaces_of(host.name):
            lines.append(f"addr add {interface.address} dev {interface.device}")
            lines.append(f"link set {interface.device} up")
        namespace.batch("ip", lines)
        namespace.batch("tc", [line for i in self.topology.interfaces_of(host.name) for line in self._shaping(i)])

    def _shaping(self, interface: Interface, *, downlink: bool = False) -> list[str]:
        host = self.topology.host(interface.host)
        if downlink:  # the host's ingress is the hub side's egress
            return shaping_commands(interface.hub_device, host.down_bps, self.topology.queue_ms)
        return shaping_commands(interface.device, host.up_bps, self.topology.queue_ms)

    # -- using ------------------------------------------------------------------------------------------

    def address(self, host: str, site: str | None = None) -> str:
        return self.topology.address(host, site)

    def command(self, host: str, argv: Sequence[str]) -> list[str]:
        """`argv` as a command line that runs inside `host`'s namespace."""
        return self._namespace(host).enter([self.topology.expand(a) for a in argv])

    def spawn(
        self,
        host: str,
        argv: Sequence[str],
        *,
        env: Mapping[str, str] | None = None,
        stdout: int | IO[Any] | None = None,
        stderr: int | IO[Any] | None = None,
        cwd: str | Path | None = None,
    ) -> subprocess.Popen[bytes]:
        """Starts `argv` inside `host` in a process group of its own, stopped when the lab closes."""
        process = subprocess.Popen(
            self.command(host, argv),
            env=None if env is None else dict(env),
            stdin=subprocess.DEVNULL,
            stdout=stdout,
            stderr=stderr,
            cwd=cwd,
            start_new_session=True,
        )
        self._reaper.watch(process.pid)
        self._processes.append(process)
        return process

    def run(self, host: str, argv: Sequence[str], *, timeout: float = 60.0) -> subprocess.CompletedProcess[str]:
        """Runs `argv` inside `host` to completion (bounded by `timeout`)."""
        return subprocess.run(self.command(host, argv), capture_output=True, text=True, timeout=timeout, check=False)

    def stop(self, process: subprocess.Popen[bytes], *, grace: float = _STOP_GRACE) -> int:
        """SIGTERM to the process's group, SIGKILL after `grace` seconds; returns its exit status."""
        _stop_group(process, grace)
        self._reaper.forget(process.pid)
        return process.returncode

    def set_link(self, host: str, site: str, *, up: bool) -> None:
        """Takes a host's link to a site down (as a cut cable) or back up."""
        for interface in self.topology.interfaces_of(host):
            if interface.site == site and self._hub is not None:
                self._hub.batch("ip", [f"link set {interface.hub_device} {'up' if up else 'down'}"])
                return
        raise LabError(f"host {host!r} has no link to site {site!r} in a running lab")

    def namespace_ids(self) -> dict[str, str]:
        """Each namespace's kernel id (`net:[inode]`), the hub's under "" (for checks that none outlives the lab)."""
        held = dict(self._hosts) | ({"": self._hub} if self._hub is not None else {})
        return {name: os.readlink(f"/proc/{namespace.pid}/ns/net") for name, namespace in held.items()}

    def counters(self) -> list[LinkCounters]:
        """Each link's bytes and packets since the lab was built."""
        return [c.minus(self._baseline[(c.host, c.device)]) for c in self._read_counters()]

    def _read_counters(self) -> list[LinkCounters]:
        found = []
        for host in self.topology.hosts:
            table = parse_proc_net_dev(self._namespace(host.name).execute(["cat", "/proc/net/dev"]))
            for interface in self.topology.interfaces_of(host.name):
                rx_bytes, rx_packets, tx_bytes, tx_packets = table.get(interface.device, (0, 0, 0, 0))
                found.append(
                    LinkCounters(
                        host=host.name,
                        site=interface.site,
                        device=interface.device,
                        address=str(interface.address.ip),
                        up_bytes=tx_bytes,
                        down_bytes=rx_bytes,
                        up_packets=tx_packets,
                        down_packets=rx_packets,
                        up_bps=host.up_bps,
                        down_bps=host.down_bps,
                    )
                )
        return found

    def _namespace(self, host: str) -> _Namespace:
        try:
            return self._hosts[host]
        except KeyError:
            raise LabError(f"no host named {host!r} in this lab") from None

    # -- tearing down -----------------------------------------------------------------------------------

    def close(self) -> None:
        for process in self._processes:
            _stop_group(process, _STOP_GRACE)
        self._processes.clear()
        for namespace in self._hosts.values():
            namespace.close()
        self._hosts.clear()
        if self._hub is not None:
            self._hub.close()
            self._hub = None
        self._reaper.close()


def _stop_group(process: subprocess.Popen[bytes], grace: float) -> None:
    if process.poll() is None:
        _kill_group(process.pid, signal.SIGTERM)
        try:
            process.wait(timeout=grace)
        except subprocess.TimeoutExpired:
            _kill_group(process.pid, signal.SIGKILL)
            process.wait(timeout=grace)
    _kill_group(process.pid, signal.SIGKILL)  # what it started may outlive it
    for pipe in (process.stdout, process.stderr):
        if pipe is not None:
            pipe.close()


def _kill_group(group: int, sig: signal.Signals) -> None:
    with contextlib.suppress(ProcessLookupError, PermissionError):
        os.killpg(group, sig)


# -- the command line ------------------------------------------------------------------------------------


def link_table(counters: Sequence[LinkCounters], seconds: float) -> str:
    rows = [
        "| host | site | address | up | down | sent | received | up use | down use |",
        "| --- | --- | --- | ---: | ---: | ---: | ---: | ---: | ---: |",
    ]
    for c in counters:
        up_use, down_use = c.utilisation(seconds)
        rows.append(
            f"| {c.host} | {c.site} | {c.address} | {_rate(c.up_bps)} | {_rate(c.down_bps)} | "
            f"{_size(c.up_bytes)} | {_size(c.down_bytes)} | {_share(up_use)} | {_share(down_use)} |"
        )
    return "\n".join(rows)


def _rate(bps: int | None) -> str:
    return "—" if bps is None else format_rate(bps)


def _share(value: float | None) -> str:
    return "—" if value is None else f"{value:.1%}"


def _size(count: int) -> str:
    for unit, scale in (("GB", 1e9), ("MB", 1e6), ("KB", 1e3)):
        if count >= scale:
            return f"{count / scale:.2f} {unit}"
    return f"{count} B"


def run_topology(topology: Topology, *, duration: float | None, logs: Path | None) -> tuple[int, dict[str, Any]]:
    """`netlab run`: starts every host's command, waits, reports; returns (exit status, report)."""
    with NetLab.build(topology) as lab:
        for host in topology.hosts:
            addresses = ", ".join(f"{i.site} {i.address}" for i in topology.interfaces_of(host.name))
            print(f"netlab: {host.name}: {addresses}", flush=True)
        started = time.monotonic()
        waited: dict[str, subprocess.Popen[bytes]] = {}
        opened: list[IO[bytes]] = []
        try:
            for host in topology.hosts:
                if not host.run:
                    continue
                out: int | IO[bytes] | None = None
                if logs is not None:
                    logs.mkdir(parents=True, exist_ok=True)
                    out = (logs / f"{host.name}.log").open("wb")
                    opened.append(out)
                process = lab.spawn(host.name, host.run, stdout=out, stderr=subprocess.STDOUT if out else None)
                if host.wait:
                    waited[host.name] = process
            status = _wait_for(waited, started, duration)
            seconds = time.monotonic() - started
            counters = lab.counters()
        finally:
            for handle in opened:
                handle.close()
    print(link_table(counters, seconds), flush=True)
    report = {
        "seconds": round(seconds, 3),
        "exit_codes": {name: p.returncode for name, p in waited.items()},
        "links": [asdict(c) for c in counters],
    }
    return status, report


def _wait_for(waited: Mapping[str, subprocess.Popen[bytes]], started: float, duration: float | None) -> int:
    last_note = started
    while True:
        now = time.monotonic()
        running = [name for name, p in waited.items() if p.poll() is None]
        if not running and (waited or duration is None):
            failed = [name for name, p in waited.items() if p.returncode != 0]
            for name in failed:
                print(f"netlab: {name} exited with status {waited[name].returncode}", flush=True)
            return 1 if failed else 0
        if duration is not None and now - started >= duration:
            print(f"netlab: {duration:.0f} s are up; stopping {', '.join(running) or 'the lab'}", flush=True)
            return 0
        if now - last_note >= 30:
            print(f"netlab: {now - started:.0f} s, waiting for {', '.join(running)}", flush=True)
            last_note = now
        time.sleep(0.1)


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    commands = parser.add_subparsers(dest="command", required=True)
    commands.add_parser("check", help="say whether this machine can build a lab, and why not")
    run = commands.add_parser("run", help="build a lab, run its hosts' commands, report each link, tear down")
    run.add_argument("topology", type=Path, help="the lab's TOML description")
    run.add_argument("--duration", type=float, help="stop after this many seconds (default: when waited hosts exit)")
    run.add_argument("--json", type=Path, help="write the link report here")
    run.add_argument("--logs", type=Path, help="write each host's output to DIR/HOST.log")
    args = parser.parse_args(argv)
    if args.command == "check":
        reason = lab_unavailable()
        print(reason or "netlab: this machine can build labs")
        return 0 if reason is None else 1
    try:
        topology = load_topology(args.topology)
        previous = signal.signal(signal.SIGTERM, _raise_interrupt)
        try:
            status, report = run_topology(topology, duration=args.duration, logs=args.logs)
        finally:
            signal.signal(signal.SIGTERM, previous)
    except (TopologyError, LabError) as exc:
        print(f"netlab: {exc}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print("netlab: interrupted; the lab is torn down", file=sys.stderr)
        return 130
    if args.json is not None:
        args.json.parent.mkdir(parents=True, exist_ok=True)
        args.json.write_text(json.dumps(report, indent=2) + "\n")
    return status


def _raise_interrupt(signum: int, frame: object) -> None:
    raise KeyboardInterrupt


if __name__ == "__main__":
    sys.exit(main())
