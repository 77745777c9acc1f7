"""`GET /metrics`: a daemon's status snapshot in the Prometheus text format, via prometheus_client.

The daemon keeps no prometheus_client metric objects: each scrape renders one frozen `DaemonStatus` through a
collector in a fresh registry, so the numbers a scrape shows are the ones `gossipd status` would show.
"""

from __future__ import annotations

import statistics
from collections import Counter
from collections.abc import Callable, Iterator

from prometheus_client import CollectorRegistry, generate_latest
from prometheus_client.metrics_core import CounterMetricFamily, GaugeMetricFamily, Metric

from gossipd.services.status import DaemonStatus, TaskStatus

# prometheus_client's own constant for this moved between releases; the format is what matters.
CONTENT_TYPE = "text/plain; version=0.0.4; charset=utf-8"

_Getter = Callable[[TaskStatus], float | None]


def _median_link_rate(task: TaskStatus) -> float | None:
    """The median, not the mean: one slow or idle edge should not hide how fast the others are."""
    rates = [link.bytes_per_second for link in task.links if link.bytes_per_second is not None]
    return statistics.median(rates) if rates else None


# Per-task series with the single label `task`: (name, help, value); a None value leaves the series out.
_COUNTERS: tuple[tuple[str, str, _Getter], ...] = (
    ("gossipd_training_steps_total", "Optimiser steps taken.", lambda t: t.step),
    ("gossipd_training_samples_total", "Training examples processed.", lambda t: t.samples),
    ("gossipd_bytes_sent_total", "Bytes sent in exchanges and state transfers.", lambda t: t.bytes_sent),
    ("gossipd_bytes_received_total", "Bytes received in exchanges and state transfers.", lambda t: t.bytes_received),
    ("gossipd_state_transfers_total", "Full models copied from a neighbour.", lambda t: t.state_transfers),
    ("gossipd_clipped_exchanges_total", "Exchanges scaled down to the clipping radius.", lambda t: t.clipped_exchanges),
    ("gossipd_suspects_total", "Neighbours backed off for being clipped again and again.", lambda t: t.suspects),
    (
        "gossipd_momentum_mixes_total",
        "Exchanges that mixed the optimisers' momentum too ([gossip] momentum_every).",
        lambda t: t.momentum_mixes,
    ),
    (
        "gossipd_repeats_skipped_total",
        "Due exchanges not started: every free neighbour had mixed with this peer within the interval.",
        lambda t: t.repeats_skipped,
    ),
    (
        "gossipd_pull_declined_total",
        "Exchanges not started or answered busy: those in flight left too little pull.",
        lambda t: t.pull_declined,
    ),
    (
        "gossipd_mix_wait_seconds_total",
        "Seconds the trainer waited for a mix (step pacing).",
        lambda t: t.mix_wait_seconds,
    ),
)
_GAUGES: tuple[tuple[str, str, _Getter], ...] = (
    ("gossipd_training_loss", "Recent mean training loss.", lambda t: t.loss),
    ("gossipd_validation_accuracy", "Accuracy on the held-out examples at the last evaluation.", lambda t: t.accuracy),
    ("gossipd_exchanges_in_flight", "Exchanges in progress.", lambda t: t.exchanges_in_flight),
    (
        "gossipd_mix_per_step",
        "Shares of the way to their neighbours exchanges moved this peer per training step, lately.",
        lambda t: t.mix_per_step,
    ),
    ("gossipd_privacy_epsilon", "Epsilon spent by DP-SGD at the task's delta.", lambda t: t.privacy_epsilon),
    (
        "gossipd_compression_ratio",
        "Full-model bytes an exchange would take, over the bytes it took.",
        lambda t: t.compression_ratio,
    ),
    (
        "gossipd_consensus_distance",
        "Recent mean of the estimated distances to neighbours.",
        lambda t: t.consensus_distance,
    ),
    ("gossipd_samples_per_second", "Recent training throughput.", lambda t: t.samples_per_second),
    ("gossipd_steps_per_exchange", "A step-paced task's steps between exchanges now.", lambda t: t.steps_per_exchange),
    ("gossipd_mixing_cpu", "Share of a core spent on anything but training lately.", lambda t: t.mixing_cpu),
    ("gossipd_mixing_cpu_allowed", "Share of a core the CPU budget allowed mixing.", lambda t: t.mixing_cpu_allowed),
    (
        "gossipd_exchange_budget_seconds",
        "Seconds an exchange of an auto task may take now.",
        lambda t: None if t.exchange_budget_ms is None else t.exchange_budget_ms / 1000,
    ),
    (
        "gossipd_link_bytes_per_second",
        "Median over an auto task's edges of the bytes per second measured in exchanges.",
        _median_link_rate,
    ),
)


def render_metrics(status: DaemonStatus) -> bytes:
    registry = CollectorRegistry(auto_describe=False)
    registry.register(_SnapshotCollector(status))
    return generate_latest(registry)


class _SnapshotCollector:
    def __init__(self, status: DaemonStatus) -> None:
        self._status = status

    def collect(self) -> Iterator[Metric]:
        yield GaugeMetricFamily("gossipd_uptime_seconds", "Seconds since the daemon started.", self._status.uptime_s)
        families = [_task_info(self._status.tasks)]
        families += [_per_task(CounterMetricFamily, n, h, get, self._status.tasks) for n, h, get in _COUNTERS]
        families += [_per_task(GaugeMetricFamily, n, h, get, self._status.tasks) for n, h, get in _GAUGES]
        families += [_exchanges(self._status.tasks), _peers(self._status.tasks), _rejections(self._status.tasks)]
        families += [_reached(self._status.tasks), *_ledger(self._status.tasks), _edges_by_mode(self._status.tasks)]
        families += _relay(self._status)
        yield from (family for family in families if family.samples)


def _per_task(
    kind: type[CounterMetricFamily] | type[GaugeMetricFamily],
    name: str,
    help_text: str,
    get: _Getter,
    tasks: tuple[TaskStatus, ...],
) -> Metric:
    family = kind(name, help_text, labels=["task"])
    for task in tasks:
        value = get(task)
        if value is not None:
            family.add_metric([task.id], value)
    return family


def _task_info(tasks: tuple[TaskStatus, ...]) -> Metric:
    family = GaugeMetricFamily(
        "gossipd_task_info", "Always 1; the labels describe the task.", labels=["task", "state", "algorithm", "device"]
    )
    for task in tasks:
        family.add_metric([task.id, task.state.value, task.algorithm, task.device], 1)
    return family


def _exchanges(tasks: tuple[TaskStatus, ...]) -> Metric:
    family = CounterMetricFamily("gossipd_exchanges_total", "Finished exchanges by result.", labels=["task", "result"])
    for task in tasks:
        family.add_metric([task.id, "ok"], task.exchanges)
        family.add_metric([task.id, "failed"], task.failed_exchanges)
    return family


def _peers(tasks: tuple[TaskStatus, ...]) -> Metric:
    family = GaugeMetricFamily(
        "gossipd_peers", "Peers known to the task, and those in its exchange view.", labels=["task", "state"]
    )
    for task in tasks:
        family.add_metric([task.id, "known"], len(task.peers))
        family.add_metric([task.id, "in_view"], sum(peer.in_view for peer in task.peers))
    return family


def _reached(tasks: tuple[TaskStatus, ...]) -> Metric:
    family = GaugeMetricFamily(
        "gossipd_peers_reached", "Connected peers of the task by how they are reached.", labels=["task", "via"]
    )
    for task in tasks:
        for via in ("direct", "relayed", "hole-punched"):
            family.add_metric([task.id, via], sum(peer.reached == via for peer in task.peers))
    return family


def _relay(status: DaemonStatus) -> list[Metric]:
    relay = status.relay
    if relay is None:
        return []
    held = GaugeMetricFamily(
        "gossipd_relay_reservations", "Relays holding a slot for this daemon.", len(relay.reservations)
    )
    served = GaugeMetricFamily(
        "gossipd_relay_reservations_served", "Peers holding a slot on this daemon (a relay).", relay.reservations_served
    )
    dials = CounterMetricFamily(
        "gossipd_relayed_dials_total", "Connections opened through a relay.", relay.relayed_dials
    )
    refused = CounterMetricFamily(
        "gossipd_relay_refusals_total", "Reservations a relay refused.", relay.refused_reservations
    )
    return [held, served, dials, refused]


def _rejections(tasks: tuple[TaskStatus, ...]) -> Metric:
    family = CounterMetricFamily("gossipd_rejections_total", "Rejected messages by reason.", labels=["task", "reason"])
    for task in tasks:
        for reason, count in sorted(task.rejections.items()):
            family.add_metric([task.id, reason], count)
    return family


def _ledger(tasks: tuple[TaskStatus, ...]) -> list[Metric]:
    """The contribution ledger's totals; per-neighbour lines stay in /v1/peers (one series per peer id would
    grow a scraper's storage with every peer that ever passed by)."""
    by_starter = CounterMetricFamily(
        "gossipd_ledger_exchanges_total",
        "Completed exchanges with neighbours, by which end started them.",
        labels=["task", "started_by"],
    )
    neighbours = GaugeMetricFamily(
        "gossipd_ledger_neighbours", "Neighbours in the contribution ledger, departed ones included.", labels=["task"]
    )
    declared = GaugeMetricFamily(
        "gossipd_neighbours_declared_examples",
        "Training examples the live neighbours declare in their heartbeats (unchecked).",
        labels=["task"],
    )
    rejected = CounterMetricFamily(
        "gossipd_ledger_rejected_messages_total", "Messages of known neighbours that were rejected.", labels=["task"]
    )
    for task in tasks:
        by_starter.add_metric([task.id, "neighbour"], sum(e.started for e in task.ledger))
        by_starter.add_metric([task.id, "self"], sum(e.answered for e in task.ledger))
        neighbours.add_metric([task.id], len(task.ledger))
        declared.add_metric([task.id], sum(e.declared_dataset or 0 for e in task.ledger if e.live))
        rejected.add_metric([task.id], sum(sum(e.rejections.values()) for e in task.ledger))
    return [by_starter, neighbours, declared, rejected]


def _edges_by_mode(tasks: tuple[TaskStatus, ...]) -> Metric:
    """An auto task's edges by the mode of their latest exchange. Per-edge figures stay in /v1/peers, as the
    ledger's do."""
    family = GaugeMetricFamily(
        "gossipd_edges_by_mode", "Edges of an auto task by the mode of their latest exchange.", labels=["task", "mode"]
    )
    for task in tasks:
        for mode, count in sorted(Counter(link.mode for link in task.links).items()):
            family.add_metric([task.id, mode], count)
    return family
