"""The ServerApp: FedAvg over every SuperNode, every round.

Starts from `common.model(name)`'s weights (seed 1, as every system), runs `num-rounds` rounds of
`local-steps` local steps each, samples all `peers` nodes every round (fraction 1.0), no client-side evaluation.
The global model is saved as a snapshot before the first round and after each one (`common.Snapshots`, peer 0),
stamped with the samples each client has processed so far, round × local-steps × 32, so Flower's snapshots line
up with the other systems'. A round whose replies are missing or carry an error fails the run (plain FedAvg
would average whatever came back). At the end: peak RSS (as peer -1, the server) and `flower-done.json`.
"""

from __future__ import annotations

import json
import time
from collections.abc import Iterable
from pathlib import Path
from typing import Any

from flwr.app import ArrayRecord, ConfigRecord, Context, Message
from flwr.serverapp import Grid, ServerApp
from flwr.serverapp.strategy import FedAvg

from common import BATCH, Snapshots, model, report_peak_rss

SERVER_PEER = -1  # the server's line in rss.jsonl (clients are 0..peers-1)

app = ServerApp()


class StrictFedAvg(FedAvg):  # type: ignore[misc]  # flwr is untyped for gossipd's mypy
    """FedAvg that fails the run unless every sampled node replied without error."""

    def __init__(self, nodes: int) -> None:
        super().__init__(
            fraction_train=1.0,
            fraction_evaluate=0.0,
            min_train_nodes=nodes,
            min_evaluate_nodes=0,
            min_available_nodes=nodes,
        )
        self.nodes = nodes

    def aggregate_train(self, server_round: int, replies: Iterable[Message]) -> Any:
        replies = list(replies)
        failed = [m for m in replies if m.has_error()]
        if len(replies) != self.nodes or failed:
            reasons = "; ".join(str(m.error.reason) for m in failed)
            raise RuntimeError(
                f"round {server_round}: {len(replies)} replies of {self.nodes}, {len(failed)} failed {reasons}"
            )
        return super().aggregate_train(server_round, replies)


def main(grid: Grid, context: Context) -> None:
    run = context.run_config
    workdir, name = Path(str(run["workdir"])), str(run["model"])
    peers, local_steps, rounds = int(run["peers"]), int(run["local-steps"]), int(run["num-rounds"])
    net = model(name)
    snapshots = Snapshots(workdir, 0)
    rounds_done: list[float] = []

    def snapshot(server_round: int, arrays: ArrayRecord) -> None:
        net.load_state_dict(arrays.to_torch_state_dict())
        snapshots.save(net.state_dict(), server_round * local_steps * BATCH)
        rounds_done.append(time.time())

    StrictFedAvg(peers).start(
        grid=grid,
        initial_arrays=ArrayRecord(net.state_dict()),
        num_rounds=rounds,
        timeout=float(run["round-timeout"]),
        train_config=ConfigRecord({"num-rounds": rounds}),
        evaluate_fn=snapshot,
    )
    report_peak_rss(workdir, SERVER_PEER)
    (workdir / "flower-done.json").write_text(json.dumps({"rounds": rounds, "snapshot_times": rounds_done}))


app.main()(main)  # not a decorator: flwr is untyped for gossipd's mypy
