"""Byzantine-robust mixing: self-centred clipping with an adaptive radius, and suspects backed off."""

from __future__ import annotations

import dataclasses
import math
import random
import sys
import threading
from typing import Any

import pytest

from gossipd.data.registry import load_data
from gossipd.mixing.clipping import Clipper, RobustSection
from gossipd.sim.simulator import Simulation, SimulationConfig
from gossipd.task.loader import parse_task
from tests.conftest import DEFAULT_TASK

ROUNDS = 120


def test_the_radius_waits_for_a_trusted_scale_then_follows_the_median() -> None:
    clipper = Clipper(RobustSection(multiplier=2.0, min_samples=4))
    assert clipper.radius() == 0.0  # no history yet: observe, do not move
    assert clipper.factor(1.0) == 0.0
    for distance in (1.0, 2.0, 3.0):
        clipper.factor(distance)
    assert clipper.radius() == pytest.approx(2.0 * 1.5)  # median of 1, 1, 2, 3
    assert clipper.factor(1.5) == 1.0
    assert clipper.factor(30.0) == pytest.approx(clipper.radius() / 30.0, rel=0.5)


def test_one_neighbour_however_often_it_exchanges_is_one_vote_on_the_radius() -> None:
    clipper = Clipper(RobustSection(multiplier=2.0, min_samples=8))
    for peer, distance in ((b"a", 1.0), (b"b", 1.2), (b"c", 0.8)):
        clipper.factor(distance, peer)
    for _ in range(9):  # an attacker makes three quarters of the exchanges, each far out
        clipper.factor(1000.0, b"attacker")
    # By exchanges the median would be 1000; by neighbours, the lower median of 0.8, 1.0, 1.2 and 1000.
    assert clipper.radius() == pytest.approx(2.0 * 1.0)
    assert clipper.factor(1000.0, b"attacker") == pytest.approx(2.0 / 1000.0)


def test_with_two_neighbours_the_nearer_sets_the_scale() -> None:
    clipper = Clipper(RobustSection(multiplier=2.0, min_samples=4))
    for _ in range(2):
        clipper.factor(1.0, b"honest")
        clipper.factor(50.0, b"attacker")
    assert clipper.radius() == pytest.approx(2.0)


def test_a_neighbour_clipped_again_and_again_becomes_a_suspect_until_forgiven() -> None:
    clipper = Clipper(RobustSection(radius=1.0, suspect_after=3))
    for _ in range(2):
        clipper.factor(10.0, b"attacker")
    assert not clipper.is_suspect(b"attacker")
    clipper.factor(0.5, b"attacker")  # one honest-looking exchange resets the streak
    for _ in range(3):
        clipper.factor(10.0, b"attacker")
    assert clipper.is_suspect(b"attacker")
    assert not clipper.is_suspect(b"honest")
    clipper.forgive(b"attacker")
    assert not clipper.is_suspect(b"attacker")


def test_exchanges_finishing_in_several_threads_at_once_share_one_clipper_safely() -> None:
    # A daemon finishes its exchanges in worker threads; before the clipper took a lock, one thread's vote
    # iterated the recent distances while another appended to them and the daemon died. Switching threads
    # every microsecond, three threads of 5,000 exchanges each hit that within a fraction of a second.
    clipper = Clipper(RobustSection())
    errors: list[BaseException] = []

    def exchanges(seed: int) -> None:
        rng = random.Random(seed)
        try:
            for _ in range(5000):
                clipper.factor(rng.random(), bytes([rng.randrange(6)]), kind=rng.choice([None, 1, 2]))
                clipper.is_suspect(bytes([rng.randrange(6)]))
        except BaseException as exc:  # any error in a thread is the test's failure
            errors.append(exc)

    interval = sys.getswitchinterval()
    sys.setswitchinterval(1e-6)
    try:
        threads = [threading.Thread(target=exchanges, args=(seed,)) for seed in range(3)]
        for thread in threads:
            thread.start()
        for thread in threads:
            thread.join(timeout=60)
    finally:
        sys.setswitchinterval(interval)
    assert errors == []
    assert sum(len(clipper.recent(kind)) for kind in (None, 1, 2)) == 3 * RobustSection().window


def test_clipping_off_and_fixed_radius() -> None:
    assert Clipper(RobustSection(clip=False)).factor(1e9) == 1.0
    assert Clipper(RobustSection(radius=2.0)).factor(8.0) == 0.25
    assert Clipper(RobustSection()).factor(math.inf) == 0.0


def run(clip: bool, attack: str | None) -> float:
    text = DEFAULT_TASK.read_text().replace('name = "cnn"', 'name = "logistic"')
    task = parse_task(text, file="robust.toml", base_dir=DEFAULT_TASK.parent)
    task = dataclasses.replace(task, robust=dataclasses.replace(task.robust, clip=clip))
    data = load_data(task.data, task.task.seed)
    config = SimulationConfig(
        peers=8, rounds=ROUNDS, centralised=False, byzantine=0 if attack is None else 1, attack=attack or "nan"
    )
    report: Any = Simulation(task, data, config).run()
    assert report.peers == 8
    return float(report.mean_accuracy)


@pytest.fixture(scope="module")
def no_attack() -> float:
    return run(clip=True, attack=None)


@pytest.mark.parametrize("attack", ["sign-flip", "scale", "noise", "nan"])
def test_with_clipping_honest_peers_end_within_two_points_of_no_attack(attack: str, no_attack: float) -> None:
    assert run(clip=True, attack=attack) >= no_attack - 0.02


@pytest.mark.parametrize(("attack", "drop"), [("sign-flip", 0.3), ("scale", 0.3), ("noise", 0.01)])
def test_without_clipping_the_same_attacker_does_measurable_harm(attack: str, drop: float, no_attack: float) -> None:
    assert run(clip=False, attack=attack) <= no_attack - drop


def test_robust_section_is_read_from_the_task_file() -> None:
    text = DEFAULT_TASK.read_text() + "\n[robust]\nclip = false\nmultiplier = 4.0\n"
    task = parse_task(text, file="t.toml", base_dir=DEFAULT_TASK.parent)
    assert task.robust == RobustSection(clip=False, multiplier=4.0)
