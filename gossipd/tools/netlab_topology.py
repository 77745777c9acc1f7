"""What an emulated network looks like, read from a small TOML description; no I/O but reading that file.

A lab is a set of *sites* (subnets, each one Ethernet bridge) and *hosts* (one network namespace each). A host
sits on one or more sites through one interface per site (`eth0`, `eth1`, … in the order of its `sites`),
with its own uplink and downlink rates. There is no router: two sites reach each other only through a host
that sits on both, and only at the application layer (a relay), since nothing forwards IP between them.

```toml
[sites.a]
subnet = "10.201.1.0/24"        # optional: sites without one get 10.200.<n>.0/24 in order

[sites.b]

[hosts.relay]
sites = ["a", "b"]              # one interface on each; "relay" is the only host that reaches both
up = "10mbit"                   # uplink (the host's egress), tc rate notation; omitted: unshaped
down = "10mbit"                 # downlink (the host's ingress)
run = "gossipd run tasks/x.toml --listen /ip4/{addr:relay@a}/tcp/4001"   # optional, for `netlab run`
wait = false                    # `netlab run` waits for hosts with wait = true (default) to exit

[hosts.a1]
sites = ["a"]
```

`{addr:HOST}` and `{addr:HOST@SITE}` in a `run` command stand for that host's address (on its first site, or
on SITE).
"""

from __future__ import annotations

import ipaddress
import re
import shlex
import tomllib
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

# Interface names are at most 15 bytes; the hub side of a veth is named from the host's and the site's
# index, so host and site names are free of that limit but kept short for readable tables.
_NAME = re.compile(r"^[a-z][a-z0-9-]{0,23}$")
_RATE = re.compile(r"^(\d+(?:\.\d+)?)\s*(bit|kbit|mbit|gbit)$", re.IGNORECASE)
_RATE_UNITS = {"bit": 1, "kbit": 1_000, "mbit": 1_000_000, "gbit": 1_000_000_000}
_ADDRESS_REF = re.compile(r"\{addr:([a-z][a-z0-9-]*)(?:@([a-z][a-z0-9-]*))?\}")
DEFAULT_QUEUE_MS = 50
MAX_HOSTS = 200
MAX_SITES = 50


class TopologyError(ValueError):
    """A topology description that cannot be built; the message names the file and the key."""


@dataclass(frozen=True, kw_only=True)
class Site:
    name: str
    subnet: ipaddress.IPv4Network


@dataclass(frozen=True, kw_only=True)
class Host:
    name: str
    sites: tuple[str, ...]
    up_bps: int | None = None
    down_bps: int | None = None
    run: tuple[str, ...] = ()
    wait: bool = True


@dataclass(frozen=True, kw_only=True)
class Interface:
    """One host's attachment to one site: `device` inside the host, `hub_device` on the site's bridge."""

    host: str
    site: str
    device: str
    hub_device: str
    address: ipaddress.IPv4Interface


@dataclass(frozen=True, kw_only=True)
class Topology:
    sites: tuple[Site, ...]
    hosts: tuple[Host, ...]
    queue_ms: int = DEFAULT_QUEUE_MS
    interfaces: tuple[Interface, ...] = field(default=())

    def host(self, name: str) -> Host:
        for host in self.hosts:
            if host.name == name:
                return host
        raise TopologyError(f"no host named {name!r} (hosts: {', '.join(h.name for h in self.hosts)})")

    def interfaces_of(self, host: str) -> tuple[Interface, ...]:
        return tuple(i for i in self.interfaces if i.host == host)

    def address(self, host: str, site: str | None = None) -> str:
        """The host's IPv4 address on `site` (its first site when None)."""
        own = self.interfaces_of(self.host(host).name)
        for interface in own:
            if site is None or interface.site == site:
                return str(interface.address.ip)
        raise TopologyError(f"host {host!r} is not on site {site!r} (its sites: {', '.join(i.site for i in own)})")

    def expand(self, command: str) -> str:
        """`command` with every `{addr:HOST}` / `{addr:HOST@SITE}` replaced by that address."""
        return _ADDRESS_REF.sub(lambda m: self.address(m.group(1), m.group(2)), command)


def parse_rate(text: str) -> int:
    """A tc-style rate ("10mbit", "1.5Gbit") in bits per second."""
    match = _RATE.match(text.strip())
    if match is None:
        raise TopologyError(f"rate {text!r}: expected a number and bit, kbit, mbit or gbit (e.g. '10mbit')")
    bps = int(float(match.group(1)) * _RATE_UNITS[match.group(2).lower()])
    if bps < 8_000:
        raise TopologyError(f"rate {text!r}: below 8kbit, which tc cannot shape usefully")
    return bps


def format_rate(bps: int) -> str:
    for unit, scale in (("gbit", 1_000_000_000), ("mbit", 1_000_000), ("kbit", 1_000)):
        if bps >= scale and bps % scale == 0:
            return f"{bps // scale}{unit}"
    return f"{bps}bit"


def load_topology(path: Path) -> Topology:
    try:
        raw = tomllib.loads(path.read_text())
    except (OSError, UnicodeDecodeError) as exc:
        raise TopologyError(f"{path}: cannot read: {exc}") from exc
    except tomllib.TOMLDecodeError as exc:
        raise TopologyError(f"{path}: not valid TOML: {exc}") from exc
    try:
        return topology_from_mapping(raw)
    except TopologyError as exc:
        raise TopologyError(f"{path}: {exc}") from exc


def topology_from_mapping(raw: Mapping[str, Any]) -> Topology:
    _only_keys(raw, {"lab", "sites", "hosts"}, "the top level")
    lab = _table(raw, "lab")
    _only_keys(lab, {"queue_ms"}, "[lab]")
    queue_ms = lab.get("queue_ms", DEFAULT_QUEUE_MS)
    if not isinstance(queue_ms, int) or isinstance(queue_ms, bool) or not 1 <= queue_ms <= 10_000:
        raise TopologyError(f"[lab] queue_ms: expected an integer from 1 to 10000, got {queue_ms!r}")
    sites = _sites(_table(raw, "sites"))
    hosts = _hosts(_table(raw, "hosts"), {s.name for s in sites})
    return Topology(sites=sites, hosts=hosts, queue_ms=queue_ms, interfaces=_interfaces(sites, hosts))


def simple_topology(count: int, *, rate: str | None = None, prefix: str = "p") -> Topology:
    """`count` hosts on one site, each with the same symmetric rate (or unshaped): a flat internet."""
    hosts = {f"{prefix}{i}": {"sites": ["net"]} | ({"up": rate, "down": rate} if rate else {}) for i in range(count)}
    return topology_from_mapping({"sites": {"net": {}}, "hosts": hosts})


def _sites(raw: Mapping[str, Any]) -> tuple[Site, ...]:
    if not raw:
        raise TopologyError("[sites]: at least one site is needed")
    if len(raw) > MAX_SITES:
        raise TopologyError(f"[sites]: {len(raw)} sites, at most {MAX_SITES}")
    sites: list[Site] = []
    for index, (name, table) in enumerate(raw.items()):
        _check_name(name, "site")
        if not isinstance(table, Mapping):
            raise TopologyError(f"[sites.{name}]: expected a table")
        _only_keys(table, {"subnet"}, f"[sites.{name}]")
        text = table.get("subnet", f"10.200.{index}.0/24")
        try:
            subnet = ipaddress.IPv4Network(text)
        except (ValueError, TypeError) as exc:
            raise TopologyError(f"[sites.{name}] subnet: {exc}") from exc
        if subnet.num_addresses < 4:
            raise TopologyError(f"[sites.{name}] subnet {subnet}: too small for hosts")
        if not subnet.is_private:
            # The lab's own addresses only: never a public address, even inside a namespace.
            raise TopologyError(f"[sites.{name}] subnet {subnet}: must be a private range (e.g. 10.200.0.0/24)")
        for other in sites:
            if subnet.overlaps(other.subnet):
                raise TopologyError(f"[sites.{name}] subnet {subnet} overlaps site {other.name}'s {other.subnet}")
        sites.append(Site(name=name, subnet=subnet))
    return tuple(sites)


def _hosts(raw: Mapping[str, Any], site_names: set[str]) -> tuple[Host, ...]:
    if not raw:
        raise TopologyError("[hosts]: at least one host is needed")
    if len(raw) > MAX_HOSTS:
        raise TopologyError(f"[hosts]: {len(raw)} hosts, at most {MAX_HOSTS}")
    hosts = []
    for name, table in raw.items():
        _check_name(name, "host")
        where = f"[hosts.{name}]"
        if not isinstance(table, Mapping):
            raise TopologyError(f"{where}: expected a table")
        _only_keys(table, {"sites", "up", "down", "run", "wait"}, where)
        sites = table.get("sites", list(site_names)[:1] if len(site_names) == 1 else None)
        if not isinstance(sites, list) or not sites or not all(isinstance(s, str) for s in sites):
            raise TopologyError(f"{where} sites: expected a non-empty list of site names")
        for site in sites:
            if site not in site_names:
                raise TopologyError(f"{where} sites: no site named {site!r} (sites: {', '.join(sorted(site_names))})")
        if len(set(sites)) != len(sites):
            raise TopologyError(f"{where} sites: a site is listed twice")
        wait = table.get("wait", True)
        if not isinstance(wait, bool):
            raise TopologyError(f"{where} wait: expected true or false")
        hosts.append(
            Host(
                name=name,
                sites=tuple(sites),
                up_bps=_optional_rate(table, "up", where),
                down_bps=_optional_rate(table, "down", where),
                run=_command(table.get("run"), where),
                wait=wait,
            )
        )
    return tuple(hosts)


def _interfaces(sites: Sequence[Site], hosts: Sequence[Host]) -> tuple[Interface, ...]:
    site_index = {s.name: i for i, s in enumerate(sites)}
    next_host_number = {s.name: 1 for s in sites}
    interfaces = []
    for host_index, host in enumerate(hosts):
        for position, site_name in enumerate(host.sites):
            site = sites[site_index[site_name]]
            number = next_host_number[site_name]
            next_host_number[site_name] += 1
            if number >= site.subnet.num_addresses - 1:
                raise TopologyError(f"[sites.{site_name}] subnet {site.subnet}: too small for its hosts")
            interfaces.append(
                Interface(
                    host=host.name,
                    site=site_name,
                    device=f"eth{position}",
                    hub_device=f"h{host_index}s{site_index[site_name]}",
                    address=ipaddress.IPv4Interface(f"{site.subnet[number]}/{site.subnet.prefixlen}"),
                )
            )
    return tuple(interfaces)


def _optional_rate(table: Mapping[str, Any], key: str, where: str) -> int | None:
    value = table.get(key)
    if value is None:
        return None
    if not isinstance(value, str):
        raise TopologyError(f"{where} {key}: expected a rate such as '10mbit', got {value!r}")
    try:
        return parse_rate(value)
    except TopologyError as exc:
        raise TopologyError(f"{where} {key}: {exc}") from exc


def _command(value: object, where: str) -> tuple[str, ...]:
    if value is None:
        return ()
    if isinstance(value, str):
        try:
            return tuple(shlex.split(value))
        except ValueError as exc:
            raise TopologyError(f"{where} run: {exc}") from exc
    if isinstance(value, list) and value and all(isinstance(v, str) for v in value):
        return tuple(value)
    raise TopologyError(f"{where} run: expected a command line or a list of arguments")


def _table(raw: Mapping[str, Any], key: str) -> Mapping[str, Any]:
    value = raw.get(key, {})
    if not isinstance(value, Mapping):
        raise TopologyError(f"[{key}]: expected a table")
    return value


def _only_keys(table: Mapping[str, Any], allowed: set[str], where: str) -> None:
    unknown = sorted(set(table) - allowed)
    if unknown:
        raise TopologyError(f"{where}: unknown key {unknown[0]!r} (expected one of {', '.join(sorted(allowed))})")


def _check_name(name: str, kind: str) -> None:
    if not _NAME.match(name):
        raise TopologyError(f"{kind} name {name!r}: lowercase letters, digits and '-', starting with a letter, ≤ 24")
