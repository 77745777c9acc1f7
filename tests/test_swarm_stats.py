"""Measuring swarms on one machine: TCP bytes per process from `ss`, memory from /proc, and the summary of
what many daemons cost each."""

from __future__ import annotations

import os

import pytest

from gossipd.tools.process_stats import memory_of, parse_ss
from gossipd.tools.swarm_report import Row, summarise, table

SS = """\
ESTAB 0      100    127.0.0.1:57418 127.0.0.1:42181 users:(("python",pid=9689,fd=11))
\t bbr wscale:10,10 rto:212 cwnd:16 bytes_sent:6120782 bytes_acked:6120683 bytes_received:6915397 segs_out:1117
ESTAB 0      0      127.0.0.1:42181 127.0.0.1:57418 users:(("python",pid=9683,fd=11))
\t bbr wscale:10,10 rto:208 bytes_sent:6915397 bytes_acked:6915397 bytes_received:6120782 segs_out:1127
ESTAB 0      0      127.0.0.1:42182 127.0.0.1:57419 users:(("python",pid=9683,fd=12))
\t cubic bytes_acked:100 bytes_received:50
ESTAB 0      0      10.0.0.1:22 10.0.0.2:5000
\t cubic bytes_acked:999999 bytes_received:999999
"""


def test_ss_output_becomes_tcp_bytes_per_process() -> None:
    traffic = parse_ss(SS)
    assert set(traffic) == {9689, 9683}  # a connection without an owner we can see is left out
    assert (traffic[9689].sent, traffic[9689].received) == (6120683, 6915397)  # acknowledged, not just sent
    assert (traffic[9683].sent, traffic[9683].received) == (6915397 + 100, 6120782 + 50)


def test_memory_of_this_process_and_of_none() -> None:
    memory = memory_of(os.getpid())
    if memory is None:
        pytest.skip("no /proc on this system")
    assert 0 < memory.resident_mb <= memory.peak_mb
    assert memory_of(2**22 + 12345) is None


def row(time_s: float, peer: int, *, tcp: int, mixed: int, in_view: int, resident: float) -> Row:
    return Row(
        time_s=time_s, peer=peer, peer_id=f"p{peer}", state="training", step=1, samples=1, loss=None,
        accuracy=None, exchanges=1, failed_exchanges=0, bytes_sent=mixed, bytes_received=0, compression_ratio=None,
        consensus_distance=None, peers_in_view=in_view, peers_known=3, state_transfers=0, resident_mb=resident,
        peak_mb=resident + 10, tcp_sent=tcp, tcp_received=0,
    )  # fmt: skip


def test_the_summary_counts_what_was_not_mixing_per_second_and_the_views_that_filled() -> None:
    history = [
        row(0.0, 0, tcp=1000, mixed=400, in_view=1, resident=300),
        row(0.0, 1, tcp=1000, mixed=400, in_view=2, resident=310),
        row(0.0, 2, tcp=1000, mixed=400, in_view=3, resident=320),
        # Ten seconds later: 20 kB more on the wire, of which 15 kB were exchanges.
        row(10.0, 0, tcp=21000, mixed=15400, in_view=3, resident=350),
        row(10.0, 1, tcp=21000, mixed=15400, in_view=1, resident=360),
        row(10.0, 2, tcp=41000, mixed=15400, in_view=3, resident=370),
    ]
    summary = summarise(history, {0: 5.0, 1: 7.0, 2: 6.0}, view_size=6)
    assert summary.peers == 3
    assert summary.resident_mb == (360.0, 370.0)
    assert summary.peak_mb == (370.0, 380.0)
    assert summary.startup_s == (6.0, 7.0)
    assert summary.view_full == 2  # a view of 6 wanted, 2 others exist: full at 2, which peer 1 is not
    assert summary.other_traffic_bps == (500.0, 2500.0)
    assert summary.exchange_bps == (1500.0, 1500.0)


def test_the_demo_table_prints_a_tiny_loss_in_significant_digits() -> None:
    def row(peer: int, loss: float | None) -> Row:
        return Row(
            time_s=1.0, peer=peer, peer_id=f"p{peer}", state="training", step=10, samples=320, loss=loss,
            accuracy=0.9876, exchanges=5, failed_exchanges=1, bytes_sent=2048, bytes_received=4096,
            compression_ratio=2.5, consensus_distance=None, peers_in_view=3, peers_known=3, state_transfers=0,
        )  # fmt: skip

    lines = table([row(0, 2.1046e-05), row(1, 2.104), row(2, None)]).splitlines()
    assert lines[0].split()[:5] == ["peer", "state", "step", "loss", "accuracy"]
    assert [line.split()[3] for line in lines[1:]] == ["2.105e-05", "2.104", "-"]
    assert lines[1].split()[4] == "98.76%"
