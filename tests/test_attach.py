"""Scripts attached to real daemons (`gossipd.attach`): they mix through their daemons, show in status, are
refused with reasons, and survive their daemon going away and coming back."""

from __future__ import annotations

import os
import shutil
import signal
import tempfile
import threading
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import torch
from torch import nn

import gossipd
from gossipd.attached import _model_entries, add_in, copy_in, copy_out
from gossipd.tools.swarm import Swarm, tail
from tests.daemons import wait_until as wait_for

TASK = """
[task]
id = "attached-test"

[gossip]
algorithm = "powergossip"
rank = 1
steps_per_exchange = 2
exchange_timeout = 3.0
"""


@pytest.fixture(scope="module")
def swarm() -> Iterator[Swarm]:
    """Two daemons with no task of their own, the second bootstrapped from the first."""
    workdir = Path(tempfile.mkdtemp(prefix="gd-attach-", dir="/tmp"))
    (workdir / "task.toml").write_text(TASK)
    swarm = Swarm(workdir=workdir, size=2, partition=False, extra=["--no-task", "--join-timeout", "3"])
    try:
        swarm.start_without_tasks()
        yield swarm
    finally:
        codes = swarm.stop(timeout=60)
        logs = "\n".join(f"--- daemon {d.index}\n{tail(d.log_path, 30)}" for d in swarm.daemons)
        shutil.rmtree(workdir, ignore_errors=True)
        assert all(code in (0, -signal.SIGKILL) for code in codes), f"exit codes {codes}\n{logs}"


def small_model(seed: int) -> nn.Sequential:
    torch.manual_seed(seed)
    return nn.Sequential(nn.Linear(8, 16), nn.BatchNorm1d(16), nn.ReLU(), nn.Linear(16, 2))


class Script(threading.Thread):
    """A training loop of its own, attached to a daemon: steps until told to stop."""

    def __init__(self, attached: gossipd.Attached, model: nn.Module, seed: int) -> None:
        super().__init__(daemon=True)
        self.attached = attached
        self.model = model
        self.optimizer = torch.optim.SGD(model.parameters(), lr=0.05, momentum=0.9)
        self.generator = torch.Generator().manual_seed(seed)
        self.stopping = threading.Event()
        self.error: BaseException | None = None

    def run(self) -> None:
        try:
            while not self.stopping.is_set():
                x = torch.randn(16, 8, generator=self.generator)
                y = (x[:, 0] + 0.3 * x[:, 1] > 0).long()
                loss = nn.functional.cross_entropy(self.model(x), y)
                self.optimizer.zero_grad()
                loss.backward()  # type: ignore[no-untyped-call]
                self.optimizer.step()
                self.attached.step(loss=loss)
                time.sleep(0.005)
        except BaseException as exc:
            self.error = exc

    def stop(self) -> None:
        self.stopping.set()
        self.join(30)
        assert not self.is_alive(), "the script's loop did not stop"
        assert self.error is None, f"the script failed: {self.error!r}"


def task_file(swarm: Swarm, text: str = TASK, name: str = "task.toml") -> Path:
    path = swarm.workdir / name
    path.write_text(text)
    return path


def attached_task(swarm: Swarm, index: int) -> dict[str, Any] | None:
    status = swarm.daemons[index].status()
    tasks = status["tasks"] if status else []
    return tasks[0] if tasks else None


DEVICES = ["cpu", *(["cuda"] if torch.cuda.is_available() else [])]


@pytest.mark.parametrize("device", DEVICES)
@pytest.mark.parametrize("dtype", [torch.float32, torch.float16, torch.bfloat16])
def test_tensors_move_between_any_device_and_dtype_and_the_shared_memory(device: str, dtype: torch.dtype) -> None:
    """The step's copies: parameters out as float32, deltas and states in, on the model's device and dtype
    (CUDA runs where a GPU is present; the same calls move CPU tensors here)."""
    parameter = torch.tensor([1.0, 2.0, 3.0], dtype=dtype, device=device)
    view = torch.zeros(3, dtype=torch.float32)
    copy_out(parameter, view)
    assert view.tolist() == [1.0, 2.0, 3.0]
    add_in(parameter, torch.tensor([0.5, -1.0, 0.25]))
    assert parameter.dtype == dtype and parameter.device.type == device
    assert parameter.float().cpu().tolist() == [1.5, 1.0, 3.25]
    copy_in(parameter, torch.tensor([4.0, 5.0, 6.0]))
    assert parameter.float().cpu().tolist() == [4.0, 5.0, 6.0]
    counter = torch.tensor(7, dtype=torch.int64, device=device)
    copy_in(counter, torch.tensor(9, dtype=torch.int64))
    assert int(counter) == 9


def test_the_declared_layout_is_the_models_trainable_parameters_then_its_buffers() -> None:
    model = small_model(0)
    model[0].weight.requires_grad_(False)  # frozen: not mixed, not declared
    tensors, entries = _model_entries(model)
    names = [(e.name, e.parameter) for e in entries]
    assert names == [
        ("0.bias", True),
        ("1.weight", True),
        ("1.bias", True),
        ("3.weight", True),
        ("3.bias", True),
        ("1.running_mean", False),
        ("1.running_var", False),
        ("1.num_batches_tracked", False),
    ]
    assert tensors["1.running_mean"] is model[1].running_mean  # written in place on a load


def test_without_a_daemon_attach_says_how_to_start_one(tmp_path: Path) -> None:
    path = tmp_path / "task.toml"
    path.write_text(TASK)
    with pytest.raises(gossipd.AttachError, match=r"no gossipd daemon answers on .*gossipd run"):
        gossipd.attach(small_model(0), task=path, socket_path=tmp_path / "nothing.sock")
    # A negative dataset size is refused before anything is sent.
    with pytest.raises(ValueError, match="examples must be a count"):
        gossipd.attach(small_model(0), task=path, socket_path=tmp_path / "nothing.sock", examples=-1)


def test_a_task_file_naming_a_model_is_refused_with_the_reason(swarm: Swarm) -> None:
    bad = task_file(swarm, TASK + '\n[model]\nname = "cnn"\n', "bad.toml")
    with pytest.raises(gossipd.AttachError, match="names no model or data"):
        gossipd.attach(small_model(0), task=bad, socket_path=swarm.daemons[0].socket)
    assert swarm.daemons[0].status() is not None  # the daemon carries on


def test_attached_scripts_mix_show_in_status_and_survive_their_daemon_restarting(swarm: Swarm) -> None:
    path = task_file(swarm)
    a_model, b_model = small_model(1), small_model(2)
    a = gossipd.attach(a_model, task=path, socket_path=swarm.daemons[0].socket, batch_size=16)
    script_a = Script(a, a_model, seed=1)
    script_a.start()
    wait_for(lambda: a.steps > 20, 30, "the first script to train")
    # b declares its dataset size, a none: the task weighs by samples (the default), so their exchanges
    # mix with equal weight (both ends see that a declared none).
    b = gossipd.attach(b_model, task=path, socket_path=swarm.daemons[1].socket, batch_size=16, examples=500)
    script_b = Script(b, b_model, seed=2)
    try:
        # A fresh script got its neighbour's trained model before it trained.
        copied = attached_task(swarm, 1)
        assert copied is not None and copied["state_transfers"] == 1
        assert copied["step"] > 20  # it counts from the neighbour's steps, as a joining daemon does
        script_b.start()
        wait_for(lambda: (attached_task(swarm, 1) or {}).get("exchanges", 0) >= 10, 60, "exchanges")
        status = attached_task(swarm, 1)
        assert status is not None
        assert status["attached_pid"] == os.getpid() and status["state"] == "training"
        assert status["samples"] > 0 and status["loss"] is not None
        assert status["device"] == "cpu"
        assert (status["weigh_by"], status["examples"]) == ("samples", 500)
        assert (attached_task(swarm, 0) or {}).get("examples", 0) is None

        # A second script with another model cannot take the same task on the same daemon.
        other = nn.Sequential(nn.Linear(8, 4), nn.Linear(4, 2))
        with pytest.raises(gossipd.AttachError, match=r"already attached by the script of pid \d+.*0.weight: shape"):
            gossipd.attach(other, task=path, socket_path=swarm.daemons[1].socket)

        # The daemon goes away: the script trains on alone, then attaches again to the restarted daemon.
        swarm.stop_one(1)
        wait_for(lambda: not b.attached, 20, "the script to notice its daemon is gone")
        steps = b.steps
        wait_for(lambda: b.steps > steps + 50, 30, "the script to train on without its daemon")
        swarm.start_one(1, ready=False)
        wait_for(lambda: b.attached, 60, "the script to attach again")
        before = (attached_task(swarm, 1) or {}).get("exchanges", 0)
        wait_for(lambda: (attached_task(swarm, 1) or {}).get("exchanges", 0) >= before + 5, 60, "mixing again")
    finally:
        script_b.stop()
        script_a.stop()
        b.close()
        a.close()
    # Detached: the tasks leave the daemons.
    wait_for(lambda: attached_task(swarm, 0) is None and attached_task(swarm, 1) is None, 20, "the tasks to stop")
    log = swarm.daemons[1].log_path.read_text()
    assert "Traceback" not in log, tail(swarm.daemons[1].log_path, 40)


def test_accumulation_mixed_precision_and_skipped_steps_count_only_real_optimiser_steps(swarm: Swarm) -> None:
    """With `optimizer=`, a swarm step is an optimiser step that happened: gradient accumulation takes one
    per optimiser step, and a step GradScaler skips (inf gradients) is none; autocast and an LR scheduler
    change nothing."""
    path = task_file(swarm, TASK.replace('"attached-test"', '"attached-amp"'), "amp.toml")
    model = small_model(3)
    optimizer = torch.optim.SGD(model.parameters(), lr=0.05)
    scheduler = torch.optim.lr_scheduler.StepLR(optimizer, step_size=1, gamma=0.9)
    scaler = torch.amp.GradScaler("cpu")
    generator = torch.Generator().manual_seed(0)
    with gossipd.attach(model, task=path, optimizer=optimizer, socket_path=swarm.daemons[0].socket) as attached:
        for step in range(4):
            for _ in range(2):  # two micro-batches per optimiser step
                x = torch.randn(16, 8, generator=generator)
                with torch.autocast("cpu", dtype=torch.bfloat16):
                    loss = nn.functional.cross_entropy(model(x), (x[:, 0] > 0).long()) / 2
                scaler.scale(loss).backward()  # type: ignore[no-untyped-call]
            if step == 3:
                next(model.parameters()).grad.fill_(float("inf"))  # type: ignore[union-attr]
            scaler.step(optimizer)
            scaler.update()
            optimizer.zero_grad()
            scheduler.step()
        assert attached.steps == 3  # the fourth step was skipped by the scaler
        wait_for(lambda: (attached_task(swarm, 0) or {}).get("step") == 3, 10, "the daemon to see 3 steps")
        assert all(p.dtype == torch.float32 for p in model.parameters())


def test_two_scripts_with_a_training_budget_finish_together(swarm: Swarm) -> None:
    """`finish()` after the last step: the daemons go on mixing the two models (past their budget, as their own
    trainers would) until they have finished, the script serving the deltas; the copies then agree."""
    budget = 60
    # Rank 1 corrects one direction of each matrix's difference per exchange: 10 finish exchanges left the
    # copies 0.05-0.25 apart in 2 to 4 runs of 6, 30 brought them within 2e-7 in each of 14 (2026-12-04).
    text = TASK.replace('"attached-test"', '"attached-finish"') + "finish_exchanges = 30\n"
    path = task_file(swarm, text + f"\n[train]\ntotal_steps = {budget}\n", "finish.toml")
    models = [small_model(4), small_model(5)]
    attached = [gossipd.attach(m, task=path, socket_path=d.socket) for m, d in zip(models, swarm.daemons, strict=True)]
    results: list[bool] = []

    def train(index: int) -> None:
        model, swarm_end = models[index], attached[index]
        optimizer = torch.optim.SGD(model.parameters(), lr=0.05)
        generator = torch.Generator().manual_seed(index)
        for _ in range(budget):
            x = torch.randn(16, 8, generator=generator)
            loss = nn.functional.cross_entropy(model(x), (x[:, index] > 0).long())  # different tasks: they drift
            optimizer.zero_grad()
            loss.backward()  # type: ignore[no-untyped-call]
            optimizer.step()
            swarm_end.step()
        results.append(swarm_end.finish(timeout=60))

    try:
        threads = [threading.Thread(target=train, args=(i,)) for i in range(2)]
        for thread in threads:
            thread.start()
        for thread in threads:
            thread.join(90)
        assert results == [True, True]
        for index in range(2):
            status = attached_task(swarm, index)
            assert status is not None and status["state"] == "finished", status
        first, second = (dict(m.named_parameters()) for m in models)
        gap = max(float((first[k] - second[k]).detach().abs().max()) for k in first)
        assert gap < 0.05, gap  # the finish brought the copies together
    finally:
        for end in attached:
            end.close()
    plain = gossipd.attach(small_model(6), task=task_file(swarm), socket_path=swarm.daemons[0].socket)
    try:
        with pytest.raises(gossipd.AttachError, match="no training budget"):
            plain.finish(timeout=1)
    finally:
        plain.close()
