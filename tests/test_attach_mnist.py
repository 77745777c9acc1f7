"""4 training scripts of their own, attached to 4 daemons on loopback, against 4 daemons training the same
model with gossipd's own trainer for the same steps (slow: `make soak`). One daemon is killed mid-run and
restarted: its script trains on and attaches again."""

from __future__ import annotations

import json
import os
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import pytest
import torch
from safetensors.torch import load as load_safetensors

from gossipd.data.registry import load_data
from gossipd.models.registry import build_model
from gossipd.task.loader import load_task
from gossipd.tools.swarm import Swarm, tail
from tests.daemons import wait_until as wait_for

REPO = Path(__file__).resolve().parents[1]
MNIST = REPO.parent / "shared" / "datasets" / "mnist"
PEERS = 4
STEPS = 1000
GOSSIP = """
[gossip]
algorithm = "powergossip"
rank = 1
iterations = 1
wire_dtype = "float16"
view_size = 6
steps_per_exchange = 2
finish_exchanges = 20
"""

pytestmark = [
    pytest.mark.slow,
    pytest.mark.skipif(not (MNIST / "train-images-idx3-ubyte.gz").exists(), reason=f"needs MNIST in {MNIST}"),
]


def builtin_task() -> str:
    text = (REPO / "tasks" / "mnist-cnn.toml").read_text()
    text = text[: text.index("[gossip]")].replace("[train]\n", f"[train]\ntotal_steps = {STEPS}\n", 1)
    return text.replace('root = "../data/mnist"', f'root = "{MNIST}"') + GOSSIP


def attached_task() -> str:
    return f'[task]\nid = "mnist-attached"\n\n[train]\ntotal_steps = {STEPS}\n' + GOSSIP


def test_attached_scripts_train_as_well_as_gossipds_own_trainer(tmp_path: Path) -> None:
    workdir = Path(tempfile.mkdtemp(prefix="gd-attach-mnist-", dir="/tmp"))
    try:
        builtin = run_builtin(workdir / "builtin")
        attached = run_attached(workdir / "attached")
    finally:
        if not os.environ.get("GOSSIPD_KEEP_TEST_DIR"):
            shutil.rmtree(workdir, ignore_errors=True)
    mean_builtin = sum(builtin) / PEERS
    mean_attached = sum(r["accuracy"] for r in attached) / PEERS
    print(f"built-in {mean_builtin:.4f} {builtin}; attached {mean_attached:.4f} {[r['accuracy'] for r in attached]}")
    assert all(r["steps"] == STEPS for r in attached)
    assert all(r["finished"] for r in attached)  # each script's daemon finished with its neighbours
    assert abs(mean_attached - mean_builtin) <= 0.003, (mean_attached, mean_builtin)


def run_builtin(workdir: Path) -> list[float]:
    """4 daemons of the built-in task: each peer's accuracy on the test set at its budget."""
    workdir.mkdir(parents=True)
    task = workdir / "task.toml"
    task.write_text(builtin_task())
    swarm = Swarm(workdir=workdir, task=str(task), size=PEERS, extra=["--join-timeout", "0", "--threads", "1"])
    try:
        swarm.start(all_at_once=True, wait=180)
        wait_for(
            lambda: all(s is not None and s["tasks"][0]["state"] == "finished" for s in swarm.statuses()),
            600,
            "the built-in peers to finish",
        )
        states = [load_safetensors(d.client().model("mnist-cnn")) for d in swarm.daemons]
        print(f"built-in daemons' exchanges: {[s['tasks'][0]['exchanges'] for s in swarm.statuses() if s]}")
    finally:
        swarm.stop()
    loaded = load_task(task)
    bundle = load_data(loaded.data, loaded.task.seed)
    model = build_model(loaded.model, bundle.spec, loaded.task.seed)
    accuracies = []
    for state in states:
        model.load_state_dict(state)
        model.eval()
        with torch.inference_mode():
            x, y = bundle.validation.inputs(), bundle.validation.y
            hits = sum(int((model(x[i : i + 2000]).argmax(1) == y[i : i + 2000]).sum()) for i in range(0, len(y), 2000))
        accuracies.append(hits / len(y))
    return accuracies


def run_attached(workdir: Path) -> list[dict[str, float]]:
    """4 daemons without a task and 4 scripts attached to them; daemon 2 killed and restarted mid-run."""
    workdir.mkdir(parents=True)
    (workdir / "builtin.toml").write_text(builtin_task())
    (workdir / "attach.toml").write_text(attached_task())
    swarm = Swarm(workdir=workdir, size=PEERS, partition=False, extra=["--no-task", "--join-timeout", "0"])
    scripts: list[subprocess.Popen[bytes]] = []
    try:
        swarm.start_without_tasks()
        for index, daemon in enumerate(swarm.daemons):
            argv = [
                sys.executable,
                str(REPO / "scripts" / "attached_mnist.py"),
                "--task",
                str(workdir / "builtin.toml"),
            ]
            argv += ["--attach", str(workdir / "attach.toml"), "--socket", str(daemon.socket), "--data", str(MNIST)]
            argv += ["--index", str(index), "--count", str(PEERS), "--steps", str(STEPS), "--evaluate", "--finish"]
            argv += ["--out", str(workdir / f"result-{index}.json")]
            with (workdir / f"script-{index}.log").open("wb") as log:
                env = {**os.environ, "OMP_NUM_THREADS": "1"}
                scripts.append(subprocess.Popen(argv, stdout=log, stderr=subprocess.STDOUT, env=env))

        def step_of(index: int) -> int:
            status = swarm.daemons[index].status() if swarm.daemons[index].alive else None
            return int(status["tasks"][0]["step"]) if status and status["tasks"] else 0

        wait_for(lambda: step_of(2) >= STEPS // 3, 300, "script 2 to train a third of its steps")
        swarm.daemons[2].process.send_signal(signal.SIGKILL)
        swarm.daemons[2].process.wait(30)
        time.sleep(5)
        swarm.start_one(2, ready=False)
        exchanges = [0] * PEERS  # each daemon's count while its script is attached (for the failure message)
        while any(script.poll() is None for script in scripts):
            for index in range(PEERS):
                status = swarm.daemons[index].status() if swarm.daemons[index].alive else None
                if status and status["tasks"]:
                    exchanges[index] = max(exchanges[index], int(status["tasks"][0]["exchanges"]))
            time.sleep(1)
        print(f"attached daemons' exchanges: {exchanges}")
        for index, script in enumerate(scripts):
            code = script.wait(600)
            assert code == 0, f"script {index} exited {code}:\n{tail(workdir / f'script-{index}.log', 30)}"
    finally:
        for script in scripts:
            if script.poll() is None:
                script.kill()
                script.wait(30)
        swarm.stop()
    script_log = (workdir / "script-2.log").read_text()
    assert "lost the gossipd daemon" in script_log and "attached again" in script_log, script_log[-3000:]
    results = [json.loads((workdir / f"result-{i}.json").read_text()) for i in range(PEERS)]
    assert results[2]["detached_steps"] > 0  # it trained on while its daemon was gone
    return results
