"""Mixing: exchanges preserve the swarm's average, drive consensus, compress, and survive edge trouble."""

from __future__ import annotations

import dataclasses
import itertools
import math
import random
from collections import deque
from typing import Any

import pytest
import torch

from gossipd.data.registry import load_data
from gossipd.data.spec import InputSpec
from gossipd.mixing.algorithm import Algorithm
from gossipd.mixing.choco import ChocoConfig, ChocoGossip
from gossipd.mixing.clipping import Clipper, RobustSection
from gossipd.mixing.edge import EdgeState, derive_epoch
from gossipd.mixing.layout import ParamLayout, low_rank_pays, max_message_bytes, mixed_parameters
from gossipd.mixing.local import Traffic, run_pair
from gossipd.mixing.plain import PlainConfig, PlainGossip
from gossipd.mixing.powergossip import PowerGossip, PowerGossipConfig, PowerGossipEdge
from gossipd.mixing.session import ExchangeSession, PeerAborted
from gossipd.mixing.weights import edge_weight, metropolis_hastings
from gossipd.models.cnn import CNNConfig
from gossipd.models.registry import build_model
from gossipd.sim.simulator import Simulation, SimulationConfig
from gossipd.task.loader import parse_task
from gossipd.task.overrides import with_gossip
from gossipd.task.schema import ModelSection
from gossipd.wire.errors import ProtocolViolation, ShapeMismatch, WrongTask
from gossipd.wire.messages import Message, MessageType, decode_message, encode_message, framed_size
from tests.conftest import DEFAULT_TASK

TASK = b"T" * 16
TENSORS = ("conv.weight", "conv.bias", "fc.weight", "thin.weight")
CPU = torch.device("cpu")
ALGORITHMS: dict[str, Algorithm[Any]] = {
    "plain": PlainGossip(PlainConfig()),
    "powergossip-r1": PowerGossip(PowerGossipConfig()),
    "powergossip-r2-i2": PowerGossip(PowerGossipConfig(rank=2, iterations=2, alpha=1.3)),
    "powergossip-cold": PowerGossip(PowerGossipConfig(warm_start=False)),
    "powergossip-float16": PowerGossip(PowerGossipConfig(iterations=2, wire_dtype="float16")),
    "choco-sign": ChocoGossip(ChocoConfig(compressor="sign")),
    "choco-default": ChocoGossip(ChocoConfig()),
    "choco-top-k": ChocoGossip(ChocoConfig(compressor="top-k:5%", gamma=0.3)),
    "choco-random-k": ChocoGossip(ChocoConfig(compressor="random-k:5%")),
    "choco-qsgd": ChocoGossip(ChocoConfig(compressor="qsgd:4")),
}


def model(seed: int) -> dict[str, torch.Tensor]:
    g = torch.Generator().manual_seed(seed)
    return {
        "conv.weight": torch.randn(8, 3, 3, 3, generator=g),
        "conv.bias": torch.randn(8, generator=g),
        "fc.weight": torch.randn(10, 72, generator=g),
        "thin.weight": torch.randn(2, 2, generator=g),
    }


class Peer:
    def __init__(self, index: int, params: dict[str, torch.Tensor]) -> None:
        self.id = f"peer-{index:03d}".encode()
        self.params = params
        self.edges: dict[bytes, EdgeState] = {}
        self.examples: int | None = None  # a declared dataset size: set for tasks weighted by samples
        self.weighted = False  # the task weighs by samples (implied by a declared size)

    def session(
        self,
        algorithm: Algorithm[Any],
        other: Peer,
        *,
        task: bytes = TASK,
        degree: int = 1,
        clipper: Any = None,
        **extra: Any,
    ) -> Any:
        return ExchangeSession(
            algorithm=algorithm,
            params=self.params,
            layout=ParamLayout.of(self.params),
            self_id=self.id,
            peer_id=other.id,
            edge=self.edges.get(other.id),
            degree=degree,
            task=task,
            fixed_weight=None,
            rng=random.Random(hash(self.id) & 0xFFFF),
            device=CPU,
            examples=self.examples,
            clipper=clipper,
            weighted=self.weighted,
            **extra,
        )


def exchange(algorithm: Algorithm[Any], a: Peer, b: Peer) -> int:
    ends = (a.session(algorithm, b), b.session(algorithm, a))
    traffic = run_pair(*ends, max_message_bytes=max_message_bytes(ParamLayout.of(a.params)))
    for end, peer, other in ((ends[0], a, b), (ends[1], b, a)):
        result = end.result()
        peer.edges[other.id] = result.edge
        peer.params = {k: v + result.delta[k] for k, v in peer.params.items()}
    return traffic.total


def total(peers: list[Peer]) -> dict[str, torch.Tensor]:
    return {k: sum((p.params[k].double() for p in peers), torch.zeros(())) for k in peers[0].params}


@pytest.mark.parametrize("name", ALGORITHMS)
def test_exchanges_preserve_the_swarm_average(name: str) -> None:
    algorithm = ALGORITHMS[name]
    peers = [Peer(i, model(i)) for i in range(4)]
    before = total(peers)
    rng = random.Random(1)
    for _ in range(40):
        a, b = rng.sample(peers, 2)
        exchange(algorithm, a, b)
    after = total(peers)
    for key in before:
        error = float((after[key] - before[key]).norm() / before[key].norm())
        assert error <= 1e-6, f"{name}: {key} drifted by {error:.2e}"


@pytest.mark.parametrize("name", ALGORITHMS)
def test_weighted_exchanges_preserve_the_sample_weighted_sum(name: str) -> None:
    """`weigh_by = "samples"`: each end scales its step by 2·n_peer/(n_own + n_peer), so Σ n_i·x_i holds
    exactly as Σ x_i does unweighted — in every mode, through resets and exchanges in step alike."""
    algorithm = ALGORITHMS[name]
    peers = [Peer(i, model(i)) for i in range(4)]
    for peer, examples in zip(peers, (100, 3000, 50, 700), strict=True):
        peer.examples = examples

    def weighted() -> dict[str, torch.Tensor]:
        return {k: sum((p.params[k].double() * (p.examples or 0) for p in peers), torch.zeros(())) for k in TENSORS}

    before = weighted()
    plain_before = total(peers)
    rng = random.Random(2)
    for _ in range(40):
        a, b = rng.sample(peers, 2)
        exchange(algorithm, a, b)
    after, plain_after = weighted(), total(peers)
    for key in before:
        error = float((after[key] - before[key]).norm() / before[key].norm())
        assert error <= 1e-6, f"{name}: weighted {key} drifted by {error:.2e}"
    # ... and it is the weighted sum that holds, not the plain one (unequal sizes move the plain sum).
    assert any(float((plain_after[k] - plain_before[k]).norm()) > 1e-3 for k in TENSORS)


def test_weighted_plain_gossip_converges_to_the_sample_weighted_average() -> None:
    peers = [Peer(i, model(i)) for i in range(4)]
    sizes = (100, 3000, 50, 700)
    for peer, examples in zip(peers, sizes, strict=True):
        peer.examples = examples
    target = {
        k: sum((p.params[k].double() * n for p, n in zip(peers, sizes, strict=True)), torch.zeros(())) / sum(sizes)
        for k in TENSORS
    }
    rng = random.Random(3)
    for _ in range(200):
        a, b = rng.sample(peers, 2)
        exchange(ALGORITHMS["plain"], a, b)
    for peer in peers:
        for key in TENSORS:
            assert torch.allclose(peer.params[key].double(), target[key], atol=1e-4), key


def test_one_pair_at_half_weight_lands_on_its_weighted_average() -> None:
    a, b = Peer(0, model(0)), Peer(1, model(1))
    a.examples, b.examples = 1000, 3000
    expected = {k: (a.params[k] * 1000 + b.params[k] * 3000) / 4000 for k in TENSORS}
    exchange(ALGORITHMS["plain"], a, b)
    for key in TENSORS:
        assert torch.allclose(a.params[key], expected[key], atol=1e-5)
        assert torch.allclose(b.params[key], expected[key], atol=1e-5)


def test_an_end_that_does_not_weigh_is_a_protocol_violation() -> None:
    a, b = Peer(0, model(0)), Peer(1, model(1))
    a.examples = 100  # b runs a task without weigh_by: the hashes would differ, but the session checks too
    with pytest.raises(ProtocolViolation, match="dataset size"):
        run_pair(a.session(ALGORITHMS["plain"], b), b.session(ALGORITHMS["plain"], a), max_message_bytes=1 << 20)


@pytest.mark.parametrize("name", ALGORITHMS)
def test_an_end_that_declares_no_size_mixes_with_equal_weight(name: str) -> None:
    """In a task weighted by samples a peer that declares no dataset size (an attached script that gave none)
    mixes with c = 1 at both ends: the pair's plain sum holds, whatever the other end declares, and a swarm
    with such a peer still reaches one model."""
    algorithm = ALGORITHMS[name]
    peers = [Peer(i, model(i)) for i in range(4)]
    for peer, examples in zip(peers, (100, 3000, None, 700), strict=True):
        peer.examples, peer.weighted = examples, True
    undeclared = peers[2]
    rng = random.Random(4)
    for _ in range(60):
        a, b = rng.sample(peers, 2)
        pair = [a, b]
        before = total(pair)
        exchange(algorithm, a, b)
        if undeclared in pair:
            after = total(pair)
            for key in before:
                error = float((after[key] - before[key]).norm() / before[key].norm())
                assert error <= 1e-6, f"{name}: the pair's {key} drifted by {error:.2e}"


def test_a_swarm_with_an_undeclared_peer_reaches_one_model() -> None:
    peers = [Peer(i, model(i)) for i in range(4)]
    for peer, examples in zip(peers, (100, 3000, None, 700), strict=True):
        peer.examples, peer.weighted = examples, True
    rng = random.Random(5)
    for _ in range(300):
        a, b = rng.sample(peers, 2)
        exchange(ALGORITHMS["plain"], a, b)
    for peer in peers[1:]:
        for key in TENSORS:
            assert torch.allclose(peer.params[key], peers[0].params[key], atol=1e-4), key
    # One undeclared pair at w = 1/2 lands both ends on their plain average.
    a, b = Peer(0, model(0)), Peer(1, model(1))
    a.examples, a.weighted, b.weighted = 1000, True, True
    expected = {k: (a.params[k] + b.params[k]) / 2 for k in TENSORS}
    exchange(ALGORITHMS["plain"], a, b)
    for key in TENSORS:
        assert torch.allclose(a.params[key], expected[key], atol=1e-6)
        assert torch.allclose(b.params[key], expected[key], atol=1e-6)


def test_a_size_dropped_or_added_mid_exchange_is_a_protocol_violation() -> None:
    """An end declares its size in every message of an exchange or in none: the answering end holds the
    opener to what its hello said."""
    for declared in (True, False):
        a, b = Peer(0, model(0)), Peer(1, model(1))
        a.examples, a.weighted, b.examples, b.weighted = (100 if declared else None), True, 300, True
        opener = a.session(ALGORITHMS["powergossip-r2-i2"], b)
        answerer = b.session(ALGORITHMS["powergossip-r2-i2"], a)
        to_opener = deque(answerer.answer(opener.start()))
        rounds = [m for reply in list(to_opener) for m in opener.receive(reply)]
        assert rounds and all((m.examples is not None) == declared for m in rounds)
        forged = dataclasses.replace(rounds[0], examples=None if declared else 5)
        with pytest.raises(ProtocolViolation, match="as its first did"):
            answerer.receive(forged)


def test_clipping_bounds_the_weighted_pull() -> None:
    """A neighbour that declares a huge dataset pulls no further than w·τ: the clipper sees the larger step."""
    radius = 1.0
    a, b = Peer(0, model(0)), Peer(1, model(1))
    a.examples, b.examples = 1, 10**12
    clipper = Clipper(RobustSection(radius=radius))
    ends = (a.session(ALGORITHMS["plain"], b, clipper=clipper), b.session(ALGORITHMS["plain"], a))
    run_pair(*ends, max_message_bytes=1 << 20)
    result = ends[0].result()
    moved = math.sqrt(sum(float(d.pow(2).sum()) for d in result.delta.values()))
    assert result.clipped
    assert moved == pytest.approx(result.weight * radius, rel=1e-4)
    assert result.share * result.distance == pytest.approx(moved, rel=1e-4)  # the share after clipping


def test_a_plain_exchange_reports_the_share_of_the_way_it_moved_each_end() -> None:
    """`share` is w·c: the smaller end moves further towards the larger (weigh_by samples), and each end's
    delta is its share of the distance (a daemon's status sums these per step: mix_per_step)."""
    a, b = Peer(0, model(0)), Peer(1, model(1))
    a.examples, a.weighted, b.examples, b.weighted = 100, True, 300, True
    ends = (a.session(ALGORITHMS["plain"], b), b.session(ALGORITHMS["plain"], a))
    run_pair(*ends, max_message_bytes=1 << 20)
    small, large = ends[0].result(), ends[1].result()
    assert small.weight == large.weight == 0.5
    assert small.share == pytest.approx(0.5 * 2 * 300 / 400)
    assert large.share == pytest.approx(0.5 * 2 * 100 / 400)
    for result in (small, large):
        moved = math.sqrt(sum(float(d.pow(2).sum()) for d in result.delta.values()))
        assert moved == pytest.approx(result.share * result.distance, rel=1e-4)


@pytest.mark.parametrize("name", ALGORITHMS)
def test_an_exchange_brings_two_peers_closer(name: str) -> None:
    a, b = Peer(0, model(0)), Peer(1, model(1))
    gap = sum(float((a.params[k] - b.params[k]).norm() ** 2) for k in a.params)
    for _ in range(3):
        exchange(ALGORITHMS[name], a, b)
    after = sum(float((a.params[k] - b.params[k]).norm() ** 2) for k in a.params)
    assert after < gap


def logistic_task(algorithm: str, **options: Any) -> Any:
    text = DEFAULT_TASK.read_text().replace('name = "cnn"', 'name = "logistic"')
    task = parse_task(text, file="consensus.toml", base_dir=DEFAULT_TASK.parent)
    return with_gossip(task, algorithm, options)


@pytest.mark.parametrize(
    ("algorithm", "options", "rounds"),
    [
        ("plain", {}, 30),
        ("powergossip", {"rank": 1}, 150),
        ("choco", {"compressor": "qsgd:8", "gamma": 0.45}, 100),
    ],
)
def test_consensus_without_training_falls_a_hundredfold_on_16_peers(
    algorithm: str, options: dict[str, Any], rounds: int
) -> None:
    task = logistic_task(algorithm, **options)
    data = load_data(task.data, task.task.seed)
    config = SimulationConfig(peers=16, rounds=rounds, train=False, independent_init=True, centralised=False)
    report = Simulation(task, data, config).run()
    assert report.consensus_distance_start > 1.0
    assert report.consensus_distance_start / report.consensus_distance_end >= 100


def cnn_params(seed: int) -> dict[str, torch.Tensor]:
    spec = InputSpec(kind="classification", input_shape=(1, 28, 28), num_classes=10)
    return mixed_parameters(build_model(ModelSection(name="cnn", options=CNNConfig()), spec, seed))


def test_powergossip_rank_1_sends_30_times_fewer_bytes_than_plain_on_the_cnn() -> None:
    sizes = {}
    for name, algorithm in (("plain", ALGORITHMS["plain"]), ("pg", ALGORITHMS["powergossip-r1"])):
        a, b = Peer(0, cnn_params(0)), Peer(1, cnn_params(1))
        exchange(algorithm, a, b)  # the first exchange opens the edge
        sizes[name] = exchange(algorithm, a, b)
    assert sizes["plain"] > 4 * 100_000  # the CNN's ~114k float32 parameters, both directions
    assert sizes["plain"] / sizes["pg"] >= 30, sizes


def test_powergossip_runs_two_power_iterations_an_exchange_unless_told_otherwise() -> None:
    counts = {}
    for config in (PowerGossipConfig(), PowerGossipConfig(iterations=1)):
        a, b = Peer(0, cnn_params(0)), Peer(1, cnn_params(1))
        steps = []
        for _ in range(3):
            exchange(PowerGossip(config), a, b)
            steps.append(a.edges[b.id].data.iterations)
            assert b.edges[a.id].data.iterations == steps[-1]  # both ends in step
        counts[config.iterations] = [later - earlier for earlier, later in itertools.pairwise(steps)]
    assert counts == {2: [2, 2], 1: [1, 1]}


def test_powergossip_in_float16_sends_half_the_bytes_and_mixes_as_well_as_in_float32() -> None:
    sizes, gaps = {}, {}
    for dtype in ("float32", "float16"):
        algorithm = PowerGossip(PowerGossipConfig(wire_dtype=dtype))
        a, b = Peer(0, cnn_params(0)), Peer(1, cnn_params(1))
        start = sum(float((a.params[k] - b.params[k]).norm() ** 2) for k in a.params) ** 0.5
        sizes[dtype] = [exchange(algorithm, a, b) for _ in range(30)]
        gaps[dtype] = sum(float((a.params[k] - b.params[k]).norm() ** 2) for k in a.params) ** 0.5 / start
    ratio = sum(sizes["float32"]) / sum(sizes["float16"])
    assert 1.8 <= ratio <= 2.0, ratio  # the data halves; names, shapes and headers do not
    assert gaps["float32"] < 0.9  # 30 rank-1 exchanges close a real part of the gap ...
    assert abs(gaps["float16"] - gaps["float32"]) < 0.03 * gaps["float32"], gaps  # ... rounding barely slows it


def test_powergossip_in_float16_carries_half_precision_and_clamps_to_its_range() -> None:
    algorithm = PowerGossip(PowerGossipConfig(wire_dtype="float16", iterations=1))  # one round: hello, power
    big = model(0)
    big["fc.weight"] = big["fc.weight"] * 1e6  # projections far beyond float16's ±65504
    a, b = Peer(0, big), Peer(1, model(1))
    before = total([a, b])
    ends = (a.session(algorithm, b), b.session(algorithm, a))
    answer = ends[1].answer(ends[0].start())  # a new edge: the answering end's hello, then its round
    assert [m.type for m in answer] == [MessageType.HELLO, MessageType.POWER]
    sent: list[Message] = [*ends[0].receive(answer[0]), answer[1]]
    for end, message in zip(ends, sent, strict=True):
        layout = end._outgoing.expect if end._outgoing else {}
        assert {spec.dtype for spec in layout.values()} == {"float16"}
        assert len(message.data) == sum(2 * math.prod(spec.shape) for spec in layout.values())
    assert ends[0].receive(sent[1]) == [] and ends[1].receive(sent[0]) == []
    assert ends[0].done and ends[1].done
    for end, peer in zip(ends, (a, b), strict=True):
        result = end.result()
        assert all(bool(torch.isfinite(d).all()) for d in result.delta.values())
        peer.params = {k: v + result.delta[k] for k, v in peer.params.items()}
    after = total([a, b])
    for key in before:  # clamped alike on both ends: still nothing created or lost
        assert float((after[key] - before[key]).norm() / before[key].norm()) <= 1e-6


def test_powergossip_compresses_every_weight_matrix_of_the_cnn_and_sends_biases_whole() -> None:
    layout = ParamLayout.of(cnn_params(0))
    compressed = {n for n, shape in layout.shapes.items() if low_rank_pays(shape, 1)}
    assert compressed == {n for n, shape in layout.shapes.items() if len(shape) >= 2}
    assert len(compressed) == 4
    assert not low_rank_pays((10,), 1)
    assert not low_rank_pays((2, 2), 1)


def _gram_schmidt(p: torch.Tensor) -> torch.Tensor:
    """Classical Gram-Schmidt, column by column: what the factor's orthonormalisation must equal."""
    columns: list[torch.Tensor] = []
    for i in range(p.shape[1]):
        column = p[:, i].double()
        for previous in columns:
            column = column - (column @ previous) * previous
        columns.append(column / column.norm())
    return torch.stack(columns, dim=1)


@pytest.mark.parametrize("rank", [2, 3, 8, 16])
def test_powergossip_orthonormalises_its_factor_as_gram_schmidt_does(rank: int) -> None:
    algorithm = PowerGossip(PowerGossipConfig(rank=rank))
    factor = torch.randn(200, rank, generator=torch.Generator().manual_seed(rank))
    edge = PowerGossipEdge(epoch=1, vectors={"w": factor.clone()}, iterations=0)
    p = algorithm._orthogonalise(edge, "w", torch.device("cpu"))
    assert torch.allclose(p.double(), _gram_schmidt(factor), atol=1e-5)  # the same columns, signs included
    assert torch.allclose(p.T @ p, torch.eye(rank), atol=1e-5)
    assert torch.equal(edge.vectors["w"], factor)  # the edge's factor itself is left as it was


def test_powergossip_redraws_a_vanishing_column_alike_at_both_ends() -> None:
    algorithm = PowerGossip(PowerGossipConfig(rank=3))
    factor = torch.randn(50, 3, generator=torch.Generator().manual_seed(0))
    factor[:, 2] = 2 * factor[:, 0] - factor[:, 1]  # in the span of the first two: the models agree along it
    ends = [PowerGossipEdge(epoch=7, vectors={"w": factor.clone()}, iterations=4) for _ in range(2)]
    p, q = (algorithm._orthogonalise(edge, "w", torch.device("cpu")) for edge in ends)
    assert torch.equal(p, q)
    assert torch.allclose(p.T @ p, torch.eye(3), atol=1e-5)
    assert torch.allclose(p[:, :2].double(), _gram_schmidt(factor[:, :2]), atol=1e-5)


def test_edges_reset_when_out_of_step_and_continue_when_in_step() -> None:
    algorithm = ALGORITHMS["powergossip-r1"]
    a, b = Peer(0, model(0)), Peer(1, model(1))
    ends = (a.session(algorithm, b), b.session(algorithm, a))
    run_pair(*ends, max_message_bytes=1 << 22)
    assert ends[0].result().reset and ends[1].result().reset
    first = ends[0].result().edge
    assert first.key == ends[1].result().edge.key == (first.epoch, 1)
    a.edges[b.id], b.edges[a.id] = ends[0].result().edge, ends[1].result().edge
    ends = (a.session(algorithm, b), b.session(algorithm, a))
    run_pair(*ends, max_message_bytes=1 << 22)
    assert not ends[0].result().reset
    assert ends[0].result().edge.key == (first.epoch, 2)
    # One end loses its state (a failed exchange, a restart): both reset to a new shared epoch.
    a.edges[b.id] = ends[0].result().edge
    b.edges.pop(a.id)
    ends = (a.session(algorithm, b), b.session(algorithm, a))
    run_pair(*ends, max_message_bytes=1 << 22)
    assert ends[0].result().reset and ends[1].result().reset
    assert ends[0].result().edge.epoch == ends[1].result().edge.epoch != first.epoch


def test_a_one_sided_failure_keeps_the_average_after_recovery() -> None:
    algorithm = ALGORITHMS["choco-sign"]
    peers = [Peer(i, model(i)) for i in range(3)]
    before = total(peers)
    exchange(algorithm, peers[0], peers[1])
    exchange(algorithm, peers[0], peers[1])
    peers[1].edges.clear()  # peer 1 restarts and forgets its edges
    exchange(algorithm, peers[0], peers[1])  # resync through a full round
    exchange(algorithm, peers[1], peers[2])
    after = total(peers)
    assert all(float((after[k] - before[k]).norm() / before[k].norm()) < 1e-6 for k in before)


def test_choco_resyncs_with_a_full_round_then_sends_compressed_rounds() -> None:
    algorithm = ALGORITHMS["choco-sign"]
    a, b = Peer(0, model(0)), Peer(1, model(1))
    first = exchange(algorithm, a, b)
    second = exchange(algorithm, a, b)
    assert second * 4 < first


def test_epoch_derivation_is_symmetric() -> None:
    assert derive_epoch((1, 2), (3, 4)) == derive_epoch((3, 4), (1, 2))
    assert derive_epoch((1, 2), (3, 4)) != derive_epoch((1, 2), (3, 5))


def test_metropolis_hastings_weights() -> None:
    assert metropolis_hastings(1, 1) == 0.5
    assert metropolis_hastings(1, 3) == 0.25
    assert metropolis_hastings(0, 0) == 0.5
    assert edge_weight(0.1, 1, 1) == 0.1
    assert edge_weight(None, 4, 2) == 0.2


def test_degrees_in_hello_set_the_weight_on_both_ends() -> None:
    a, b = Peer(0, model(0)), Peer(1, model(1))
    ends = (a.session(ALGORITHMS["plain"], b, degree=3), b.session(ALGORITHMS["plain"], a, degree=1))
    run_pair(*ends, max_message_bytes=1 << 22)
    assert ends[0].result().weight == ends[1].result().weight == 0.25


def test_identical_models_produce_a_zero_delta_without_nans() -> None:
    params = model(0)
    a, b = Peer(0, dict(params)), Peer(1, {k: v.clone() for k, v in params.items()})
    for _ in range(3):
        exchange(ALGORITHMS["powergossip-r2-i2"], a, b)
    assert all(torch.isfinite(v).all() for v in a.params.values())
    assert all(torch.allclose(a.params[k], params[k]) for k in params)


def test_wrong_shapes_are_rejected_before_they_touch_the_model() -> None:
    a = Peer(0, model(0))
    b = Peer(1, {**model(1), "fc.weight": torch.randn(10, 71)})
    ends = (a.session(ALGORITHMS["plain"], b), b.session(ALGORITHMS["plain"], a))
    with pytest.raises(ShapeMismatch):
        run_pair(*ends, max_message_bytes=1 << 22)
    assert a.params["fc.weight"].shape == (10, 72)


def test_a_peer_of_another_task_is_rejected() -> None:
    a, b = Peer(0, model(0)), Peer(1, model(1))
    ends = (a.session(ALGORITHMS["plain"], b), b.session(ALGORITHMS["plain"], a, task=b"X" * 16))
    with pytest.raises(WrongTask):
        run_pair(*ends, max_message_bytes=1 << 22)


@pytest.mark.parametrize(("name", "rounds"), [("plain", 1), ("powergossip-r2-i2", 2), ("choco-sign", 1)])
def test_an_answering_end_in_step_skips_its_hello(name: str, rounds: int) -> None:
    algorithm = ALGORITHMS[name]
    a, b = Peer(0, model(0)), Peer(1, model(1))
    limit = max_message_bytes(ParamLayout.of(a.params))
    hello_bytes = framed_size(len(encode_message(b.session(algorithm, a).start())))

    def run(opener: Peer, answerer: Peer) -> Traffic:
        ends = (opener.session(algorithm, answerer), answerer.session(algorithm, opener))
        traffic = run_pair(*ends, max_message_bytes=limit)
        for end, peer, other in ((ends[0], opener, answerer), (ends[1], answerer, opener)):
            peer.edges[other.id] = end.result().edge
            peer.params = {k: v + end.result().delta[k] for k, v in peer.params.items()}
        return traffic

    before = total([a, b])
    new_edge = run(a, b)
    assert new_edge.messages == 2 + 2 * rounds  # two hellos: the edge starts here
    in_step = run(a, b)
    assert in_step.messages == 1 + 2 * rounds  # the opener's hello only
    assert a.edges[b.id].key == b.edges[a.id].key and a.edges[b.id].round == 2
    if name == "plain":  # the same model-sized rounds, less one hello
        assert (in_step.a_sent, in_step.b_sent) == (new_edge.a_sent, new_edge.b_sent - hello_bytes)
    assert run(b, a).messages == 1 + 2 * rounds  # either end may open: the edge is the pair's
    del b.edges[a.id]  # the answering end lost the edge (a failure, a restart): it says hello, both reset
    assert run(a, b).messages == 2 + 2 * rounds
    assert a.edges[b.id].key == b.edges[a.id].key and a.edges[b.id].round == 1
    after = total([a, b])
    for key in before:
        assert float((after[key] - before[key]).norm() / before[key].norm()) <= 1e-6


def test_an_opener_rejects_a_first_round_for_an_edge_it_does_not_share() -> None:
    a, b = Peer(0, model(0)), Peer(1, model(1))
    exchange(ALGORITHMS["powergossip-r1"], a, b)
    session = a.session(ALGORITHMS["powergossip-r1"], b)
    session.start()
    epoch, round_ = a.edges[b.id].key
    with pytest.raises(ProtocolViolation, match="expected hello, received power for edge state"):
        session.receive(Message(type=MessageType.POWER, task=TASK, epoch=epoch, round=round_ + 1, degree=1))
    assert not session.done and session.mixing_started is False


def test_out_of_order_messages_are_protocol_violations() -> None:
    a, b = Peer(0, model(0)), Peer(1, model(1))
    session = a.session(ALGORITHMS["powergossip-r1"], b)
    session.start()
    with pytest.raises(ProtocolViolation, match="expected hello"):
        session.receive(Message(type=MessageType.FULL, task=TASK, epoch=1, round=0, degree=1))
    fresh = a.session(ALGORITHMS["powergossip-r1"], b)
    fresh.start()
    fresh.receive(Message(type=MessageType.HELLO, task=TASK, epoch=5, round=0, degree=1))
    with pytest.raises(ProtocolViolation, match="edge state"):
        fresh.receive(Message(type=MessageType.POWER, task=TASK, epoch=5, round=0, degree=1))
    with pytest.raises(ProtocolViolation):
        fresh.result()


def test_abort_ends_the_exchange_on_both_sides() -> None:
    a, b = Peer(0, model(0)), Peer(1, model(1))
    left, right = a.session(ALGORITHMS["plain"], b), b.session(ALGORITHMS["plain"], a)
    right.answer(left.start())
    abort = decode_message(encode_message(right.abort("shutting down")), max_size=1 << 20)
    with pytest.raises(PeerAborted, match="shutting down"):
        left.receive(abort)
    assert not left.done


def test_a_session_cannot_exchange_with_itself() -> None:
    a = Peer(0, model(0))
    with pytest.raises(ValueError, match="itself"):
        a.session(ALGORITHMS["plain"], a)


@pytest.mark.parametrize("name", ["plain", "choco-sign", "powergossip-r1"])
def test_each_end_estimates_the_distance_between_the_models(name: str) -> None:
    a, b = Peer(0, model(0)), Peer(1, model(1))
    exact = sum(float((a.params[k] - b.params[k]).pow(2).sum()) for k in a.params) ** 0.5
    ends = (a.session(ALGORITHMS[name], b), b.session(ALGORITHMS[name], a))
    run_pair(*ends, max_message_bytes=1 << 22)
    estimates = [end.result().distance for end in ends]
    assert estimates[0] == pytest.approx(estimates[1], rel=1e-5)
    if name == "powergossip-r1":
        assert 0 < estimates[0] < exact  # a projection of the difference
    else:
        assert estimates[0] == pytest.approx(exact, rel=1e-5)  # the full (or freshly synced) difference
