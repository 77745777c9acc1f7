"""A training script of its own, attached to its local daemon with `gossipd.attach` (or bare, to compare):
the model of a built-in task file, on the share of MNIST a daemon of that task would train on
(`--index/--count`), trained by its own loop (the task's SGD settings, its own shuffling). Used by
`scripts/bench_attach.py` (steps/s attached against bare) and tests/test_attach_mnist.py (accuracy).

    python scripts/attached_mnist.py --task tasks/mnist-cnn.toml --data DIR --steps 1000 --out result.json
        [--attach ATTACH_TASK --socket CONTROL_SOCKET] [--index I --count N] [--warmup 50] [--evaluate]

Writes JSON: steps, steps_per_second (after the warm-up), detached_steps, and with --evaluate the accuracy
on the task's held-out set.
"""

from __future__ import annotations

import argparse
import json
import logging
import sys
import time
from pathlib import Path
from typing import Any

import torch
import torch.nn.functional as F

import gossipd
from gossipd.data.registry import load_data, peer_shard
from gossipd.models.registry import build_model
from gossipd.task.loader import load_task


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--task", required=True, help="a built-in task file: its data, model and [train]")
    parser.add_argument("--data", help="MNIST folder (replaces the task's [data] root)")
    parser.add_argument("--attach", help="the attached task file; without it the script trains bare")
    parser.add_argument("--socket", help="the daemon's control socket")
    parser.add_argument("--index", type=int, default=0)
    parser.add_argument("--count", type=int, default=1)
    parser.add_argument("--steps", type=int, required=True)
    parser.add_argument("--warmup", type=int, default=50, help="steps before the speed is measured")
    parser.add_argument("--evaluate", action="store_true")
    parser.add_argument("--finish", action="store_true", help="attached: let the swarm finish before evaluating")
    parser.add_argument("--out", type=Path, required=True)
    args = parser.parse_args()
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(name)s: %(message)s", stream=sys.stdout)
    torch.set_num_threads(1)
    task = load_task(args.task, data_root=args.data)
    bundle = load_data(task.data, task.task.seed)
    shard = peer_shard(bundle, task.data.partition, args.index, args.count, task.task.seed)
    model = build_model(task.model, bundle.spec, task.task.seed)
    optimizer = torch.optim.SGD(model.parameters(), lr=task.train.lr, momentum=task.train.momentum)
    swarm = None
    if args.attach:
        swarm = gossipd.attach(
            model, args.attach, optimizer=optimizer, socket_path=args.socket, batch_size=32, examples=len(shard)
        )
    generator = torch.Generator().manual_seed(1000 + args.index)
    step, detached = 0, 0
    timed_from = time.perf_counter()
    model.train()
    while step < args.steps:
        for batch in torch.split(torch.randperm(len(shard), generator=generator), 32):
            if step >= args.steps:
                break
            if step == args.warmup:
                timed_from = time.perf_counter()
            loss = F.cross_entropy(model(shard.inputs(batch)), shard.y[batch])
            optimizer.zero_grad()
            loss.backward()  # type: ignore[no-untyped-call]
            optimizer.step()  # attached: a step of the swarm too (the hook attach installed)
            step += 1
            detached += int(swarm is not None and not swarm.attached)
            if step % 100 == 0:
                print(f"step {step} attached {swarm is not None and swarm.attached}", flush=True)
    timed = max(1, args.steps - args.warmup)
    result: dict[str, Any] = {
        "steps": step,
        "steps_per_second": timed / (time.perf_counter() - timed_from),
        "detached_steps": detached,
    }
    if swarm is not None:
        if args.finish:
            result["finished"] = swarm.finish()
        swarm.close()
    if args.evaluate:
        model.eval()
        with torch.inference_mode():
            x, y = bundle.validation.inputs(), bundle.validation.y
            hits = sum(int((model(x[i : i + 2000]).argmax(1) == y[i : i + 2000]).sum()) for i in range(0, len(y), 2000))
        result["accuracy"] = hits / len(y)
    args.out.write_text(json.dumps(result))


if __name__ == "__main__":
    main()
