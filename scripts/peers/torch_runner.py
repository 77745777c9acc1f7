"""Plain torch baselines of `make bench-peers`: one peer alone on its shard, centralised training on all the
data (batch 4×32, the all-reduce equivalent, with no bytes sent), and DDP all-reduce over gloo (one process
per rank, launched by the orchestrator).

    python torch_runner.py alone|centralised WORKDIR MODEL STEPS SNAPSHOT_EVERY
    python torch_runner.py ddp WORKDIR MODEL STEPS SNAPSHOT_EVERY RANK WORLD PORT
"""

from __future__ import annotations

import sys
from pathlib import Path

import torch
import torch.distributed as dist
import torch.nn.functional as F
from torch.nn.parallel import DistributedDataParallel

from common import BATCH, Snapshots, batches, model, optimizer, report_peak_rss, shard


def train(net: torch.nn.Module, x: torch.Tensor, y: torch.Tensor, *, steps: int, batch: int, every: int,
          snapshots: Snapshots | None, samples_per_step: int, seed: int) -> None:  # fmt: skip
    opt = optimizer(net.parameters())
    order = batches(x.shape[0], batch, seed)
    module = net.module if isinstance(net, DistributedDataParallel) else net
    if snapshots is not None:
        snapshots.save(module.state_dict(), 0)
    for step in range(1, steps + 1):
        index = next(order)
        loss = F.cross_entropy(net(x[index]), y[index])
        opt.zero_grad(set_to_none=True)
        loss.backward()  # type: ignore[no-untyped-call]
        opt.step()
        if snapshots is not None and step % every == 0:
            snapshots.save(module.state_dict(), step * samples_per_step)


def main() -> None:
    torch.set_num_threads(1)
    mode, workdir, name = sys.argv[1], Path(sys.argv[2]), sys.argv[3]
    steps, every = int(sys.argv[4]), int(sys.argv[5])
    if mode == "alone":
        x, y = shard(workdir, 0)
        train(model(name), x, y, steps=steps, batch=BATCH, every=every, snapshots=Snapshots(workdir, 0),
              samples_per_step=BATCH, seed=0)  # fmt: skip
        report_peak_rss(workdir, 0)
    elif mode == "centralised":
        x, y = shard(workdir, None)
        world = len(list((workdir / "data").glob("shard-*.npz")))
        train(model(name), x, y, steps=steps, batch=BATCH * world, every=every, snapshots=Snapshots(workdir, 0),
              samples_per_step=BATCH, seed=0)  # fmt: skip
        report_peak_rss(workdir, 0)
    elif mode == "ddp":
        rank, world, port = int(sys.argv[6]), int(sys.argv[7]), int(sys.argv[8])
        dist.init_process_group("gloo", init_method=f"tcp://127.0.0.1:{port}", rank=rank, world_size=world)
        x, y = shard(workdir, rank)
        net = DistributedDataParallel(model(name))
        # All ranks hold the same model after every step: rank 0's snapshots stand for all of them.
        train(net, x, y, steps=steps, batch=BATCH, every=every, snapshots=Snapshots(workdir, 0) if rank == 0 else None,
              samples_per_step=BATCH, seed=rank)  # fmt: skip
        report_peak_rss(workdir, rank)
        dist.destroy_process_group()
    else:
        raise SystemExit(f"unknown mode {mode!r}")


if __name__ == "__main__":
    main()
