"""The yardstick for the daemon's training speed: a bare torch loop over the same model, data share,
optimiser and batch size, with nothing else running in the process.

    python -m gossipd.tools.bare_loop TASK.toml [--data DIR] [--seconds 20] [--device cpu]

Prints samples per second, measured after a warm-up.
"""

from __future__ import annotations

import argparse
import time

import torch
import torch.nn.functional as F

from gossipd.data.registry import load_data, peer_shard
from gossipd.models.registry import build_model
from gossipd.task.loader import load_task
from gossipd.train.device import pick_device
from gossipd.train.trainer import build_optimizer


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("task")
    parser.add_argument("--data")
    parser.add_argument("--seconds", type=float, default=20.0)
    parser.add_argument("--warmup", type=float, default=3.0)
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--peer-count", type=int, default=2)
    args = parser.parse_args()

    task = load_task(args.task, data_root=args.data)
    data = load_data(task.data, task.task.seed)
    shard = peer_shard(data, task.data.partition, 0, args.peer_count, task.task.seed)
    device = pick_device(args.device)
    model = build_model(task.model, data.spec, task.task.seed).to(device)
    optimizer = build_optimizer(task.train, model.parameters())
    examples = shard.to(device)  # as the daemon's trainer holds them: image bytes decoded a batch at a time
    batch = task.train.batch_size
    generator = torch.Generator().manual_seed(0)

    def step() -> None:
        index = torch.randint(0, len(examples), (batch,), generator=generator).to(device)
        loss = F.cross_entropy(model(examples.inputs(index)), examples.y[index])
        optimizer.zero_grad(set_to_none=True)
        loss.backward()  # type: ignore[no-untyped-call]
        optimizer.step()

    end = time.perf_counter() + args.warmup
    while time.perf_counter() < end:
        step()
    if device.type == "cuda":
        torch.cuda.synchronize()
    steps = 0
    started = time.perf_counter()
    while time.perf_counter() - started < args.seconds:
        step()
        steps += 1
    if device.type == "cuda":
        torch.cuda.synchronize()
    print(f"{steps * batch / (time.perf_counter() - started):.1f}")


if __name__ == "__main__":
    main()
