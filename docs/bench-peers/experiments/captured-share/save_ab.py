"""A/B of auto's saving: the task's auto with `save = true` (and the probe, 32) against probe = 0 (time alone,
as auto was before the probe), same seed.

    python save_ab.py TASK_FILE DATA_ROOT PARTITION ROUNDS PEERS [STEP_MS|measured] [LINK_MBIT|none] [SEED]

25 finish rounds; the centralised reference is run once, with the first arm. One JSON line per arm.
"""

import dataclasses
import json
import sys

import torch

from gossipd.data.registry import load_data
from gossipd.sim.simulator import MEASURED, ModelledTiming, Simulation, SimulationConfig
from gossipd.task.loader import load_task, task_hash

task_file, data_root, partition = sys.argv[1], sys.argv[2], sys.argv[3]
rounds, peers = int(sys.argv[4]), int(sys.argv[5])
timing = sys.argv[6] if len(sys.argv) > 6 else "measured"
link = float(sys.argv[7]) * 1e6 / 8 if len(sys.argv) > 7 and sys.argv[7] != "none" else None
seed = int(sys.argv[8]) if len(sys.argv) > 8 else 0
KEYS = (
    "mean_accuracy",
    "stopped_mean_accuracy",
    "centralised_accuracy",
    "mean_loss",
    "stopped_mean_loss",
    "centralised_loss",
    "modes",
    "skipped_exchanges",
    "bytes_per_exchange",
    "exchanges",
    "wall_seconds",
)
torch.set_num_threads(1)
base = load_task(task_file, data_root=data_root)
data = load_data(base.data, base.task.seed)
for probe in (32, 0):
    config_ = dataclasses.replace(base.gossip.config, probe=probe, save=probe > 0)
    gossip = dataclasses.replace(base.gossip, config=config_)
    task = dataclasses.replace(base, gossip=gossip, hash=task_hash(base.task, base.model, gossip))
    config = SimulationConfig(
        peers=peers,
        rounds=rounds,
        partition=partition,
        finish_rounds=25,
        seed=seed,
        centralised=probe == 32,
        timing=MEASURED if timing == "measured" else ModelledTiming(float(timing) / 1000),
        link_bytes_per_second=link,
        link_latency=0.001 if link else 0.0,
    )
    report = Simulation(task, data, config).run(None, None).to_json()
    print(json.dumps({"probe": probe, "seed": seed} | {k: report[k] for k in KEYS}), flush=True)
