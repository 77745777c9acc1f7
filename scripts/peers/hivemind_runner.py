"""One hivemind peer of `make bench-peers` (run in hivemind's own virtualenv, gossipd on PYTHONPATH only for
the model and data helpers): `hivemind.Optimizer` with local updates, i.e. local SGD steps with periodic
parameter averaging in groups found through hivemind's own DHT, on loopback, NAT traversal and UPnP off.

    python hivemind_runner.py WORKDIR MODEL STEPS SNAPSHOT_EVERY PEER PEERS TARGET_BATCH REQUEST_TIMEOUT
Peer 0 writes its DHT address to WORKDIR/hivemind-boot; the others read it.
"""

from __future__ import annotations

import os
import sys
import time
from pathlib import Path

import hivemind
import torch
import torch.nn.functional as F

from common import BATCH, LR, MOMENTUM, Snapshots, batches, model, report_peak_rss, shard


def main() -> None:
    torch.set_num_threads(1)
    workdir, name = Path(sys.argv[1]), sys.argv[2]
    steps, every, peer, _peers, target = (int(v) for v in sys.argv[3:8])
    request_timeout = float(sys.argv[8])
    boot = workdir / "hivemind-boot"
    initial = []
    if peer > 0:
        deadline = time.time() + 120
        while not boot.exists() and time.time() < deadline:
            time.sleep(0.2)
        initial = boot.read_text().split()
    dht = hivemind.DHT(
        initial_peers=initial,
        start=True,
        # Loopback for bench-peers; the peer's own address on an emulated network (bench-wan).
        host_maddrs=[f"/ip4/{os.environ.get('BENCH_HOST_IP', '127.0.0.1')}/tcp/0"],
        # Loopback only: no NAT probing, no UPnP port mapping, no relays.
        auto_nat=False,
        nat_port_map=False,
        use_relay=False,
        use_auto_relay=False,
    )
    if peer == 0:
        boot.write_text(" ".join(str(a) for a in dht.get_visible_maddrs()))
    net = model(name)
    opt = hivemind.Optimizer(
        dht=dht,
        run_id="gossipd-bench",
        batch_size_per_step=BATCH,
        target_batch_size=target,
        optimizer=lambda params: torch.optim.SGD(params, lr=LR, momentum=MOMENTUM),
        params=net.parameters(),
        use_local_updates=True,
        matchmaking_time=1.0,
        averaging_timeout=10.0,
        # hivemind's averager asks for request_timeout < matchmaking time "to avoid potential deadlocks"; its
        # default (3 s) is not. The benchmark picks it per split (see HIVEMIND_REQUEST_TIMEOUT there).
        averager_opts={"request_timeout": request_timeout},
        verbose=False,
    )
    x, y = shard(workdir, peer)
    order = batches(x.shape[0], BATCH, seed=peer)
    snapshots = Snapshots(workdir, peer)
    snapshots.save(net.state_dict(), 0)
    for step in range(1, steps + 1):
        index = next(order)
        loss = F.cross_entropy(net(x[index]), y[index])
        loss.backward()  # type: ignore[no-untyped-call]
        opt.step()
        opt.zero_grad()
        if step % every == 0:
            snapshots.save(net.state_dict(), step * BATCH)
    report_peak_rss(workdir, peer)
    opt.shutdown()
    dht.shutdown()


if __name__ == "__main__":
    main()
