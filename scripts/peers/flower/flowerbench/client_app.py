"""The ClientApp: one FedAvg round of local training on this SuperNode's shard.

The SuperNode's node config names its shard (`partition-id`); the run config gives the workdir, the model and
the local steps per round. In the Deployment Runtime every round runs in a fresh `flwr-clientapp` process, so
what must outlive a round is kept in the Context's state, which the SuperNode holds for the run and hands to
the next round's process:

- `sampler`: the local steps taken so far; the batch order (`common.batches`, seed = partition id) is replayed
  up to there, so the sampler walks its shard exactly as the other systems' samplers do;
- `momentum`: the SGD momentum buffers, one per parameter (the optimiser's only state).

Each round: load the global model, take `local-steps` SGD steps (lr 0.05, momentum 0.9, batch 32), reply with
the weights and the shard's size as `num-examples` (FedAvg's weight). The last round's process reports its peak
RSS (every round's process is alike: import, load the shard, train).
"""

from __future__ import annotations

from itertools import islice
from pathlib import Path

import torch
import torch.nn.functional as F
from flwr.app import ArrayRecord, ConfigRecord, Context, Message, MetricRecord, RecordDict
from flwr.clientapp import ClientApp

from common import BATCH, batches, model, optimizer, report_peak_rss, shard

app = ClientApp()


def train(msg: Message, context: Context) -> Message:
    torch.set_num_threads(1)
    run = context.run_config
    workdir, name = Path(str(run["workdir"])), str(run["model"])
    local_steps, rounds = int(run["local-steps"]), int(run["num-rounds"])
    peer = int(context.node_config["partition-id"])
    server_round = int(msg.content["config"]["server-round"])

    net = model(name)
    net.load_state_dict(msg.content["arrays"].to_torch_state_dict())
    net.train()
    x, y = shard(workdir, peer)

    state = context.state
    done = int(state["sampler"]["steps"]) if "sampler" in state.config_records else 0
    order = batches(x.shape[0], BATCH, seed=peer)
    for _ in islice(order, done):  # replay the sampler up to where the last round left it
        pass

    params = list(net.parameters())
    opt = optimizer(params)
    if "momentum" in state.array_records:
        buffers = state["momentum"].to_torch_state_dict()
        for i, param in enumerate(params):
            opt.state[param]["momentum_buffer"] = buffers[str(i)].clone()

    total = 0.0
    for _ in range(local_steps):
        index = next(order)
        loss = F.cross_entropy(net(x[index]), y[index])
        opt.zero_grad(set_to_none=True)
        loss.backward()  # type: ignore[no-untyped-call]
        opt.step()
        total += float(loss.detach())

    state["sampler"] = ConfigRecord({"steps": done + local_steps})
    state["momentum"] = ArrayRecord({str(i): opt.state[p]["momentum_buffer"] for i, p in enumerate(params)})
    content = RecordDict(
        {
            "arrays": ArrayRecord(net.state_dict()),
            "metrics": MetricRecord({"num-examples": int(x.shape[0]), "train-loss": total / max(local_steps, 1)}),
        }
    )
    if server_round >= rounds:
        report_peak_rss(workdir, peer)
    return Message(content=content, reply_to=msg)


app.train()(train)  # not a decorator: flwr is untyped for gossipd's mypy
