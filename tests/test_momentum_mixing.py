"""Mixing the optimisers' momentum in whole-model exchanges (`[gossip] momentum_every`): what each end sends
and moves, on which rounds, and what a missing or hostile momentum does."""

from __future__ import annotations

from typing import Any, Literal

import pytest
import torch

from gossipd.data.spec import ArrayDataset, InputSpec
from gossipd.mixing.algorithm import Algorithm
from gossipd.mixing.auto import FULL, AutoConfig, AutoGossip
from gossipd.mixing.clipping import Clipper, RobustSection
from gossipd.mixing.layout import ParamLayout, max_message_bytes
from gossipd.mixing.local import Traffic, run_pair
from gossipd.mixing.momentum import clip_momentum, mixes_momentum
from gossipd.mixing.plain import PlainConfig, PlainGossip
from gossipd.mixing.powergossip import PowerGossip, PowerGossipConfig
from gossipd.mixing.session import ExchangeResult, ExchangeSession
from gossipd.models.logistic import LogisticConfig
from gossipd.models.registry import build_model
from gossipd.task.schema import ModelSection, TrainSection
from gossipd.train.trainer import Trainer
from gossipd.wire.errors import NonFiniteTensor
from gossipd.wire.tensors import as_float16
from tests.test_mixing import Peer

TASK = b"T" * 16
CPU = torch.device("cpu")
PLAIN = PlainGossip(PlainConfig())


def tensors(seed: int, scale: float = 1.0) -> dict[str, torch.Tensor]:
    g = torch.Generator().manual_seed(seed)
    return {
        "fc.weight": torch.randn(10, 72, generator=g) * scale,
        "fc.bias": torch.randn(10, generator=g) * scale,
        "conv.weight": torch.randn(8, 3, 3, 3, generator=g) * scale,
    }


class End(Peer):
    """A peer of tests.test_mixing that also keeps an optimiser momentum (None: none at all)."""

    def __init__(self, name: str, seed: int, momentum: dict[str, torch.Tensor] | None) -> None:
        super().__init__(seed, tensors(seed))
        self.id = name.encode()
        self.momentum = momentum

    def mixing(self, algorithm: Algorithm[Any], other: End, every: int, **extra: Any) -> ExchangeSession:
        momentum = self.momentum
        source = None if momentum is None else (lambda: momentum)
        session: ExchangeSession = self.session(algorithm, other, momentum_every=every, momentum=source, **extra)
        return session


def exchange(
    a: End, b: End, every: int, algorithm: Algorithm[Any] = PLAIN, **extra: Any
) -> tuple[ExchangeResult, ExchangeResult, Traffic]:
    mode = {"mode": FULL} if isinstance(algorithm, AutoGossip) and "mode" not in extra else {}
    ends = (a.mixing(algorithm, b, every, **mode, **extra), b.mixing(algorithm, a, every))
    traffic = run_pair(*ends, max_message_bytes=max_message_bytes(ParamLayout.of(a.params)))
    results = (ends[0].result(), ends[1].result())
    a.edges[b.id], b.edges[a.id] = results[0].edge, results[1].edge
    return results[0], results[1], traffic


def test_a_whole_model_exchange_moves_each_momentum_halfway_to_the_others_and_leaves_the_params_alone() -> None:
    a, b = End("a", 1, tensors(11)), End("b", 2, tensors(12))
    with_momentum = exchange(a, b, every=1)
    a2, b2 = End("a", 1, None), End("b", 2, None)
    without = exchange(a2, b2, every=0)
    for name in a.params:
        expected = 0.5 * (b.momentum[name] - a.momentum[name])  # type: ignore[index]
        assert torch.allclose(with_momentum[0].momentum[name], expected)  # type: ignore[index]
        assert torch.allclose(with_momentum[1].momentum[name], -expected)  # type: ignore[index]
        assert torch.equal(with_momentum[0].delta[name], without[0].delta[name])
    assert with_momentum[0].distance == without[0].distance  # the distance is the models' alone
    assert without[0].momentum is None and without[1].momentum is None
    # The momentum doubles what each end sends, framing aside.
    assert with_momentum[2].a_sent > 1.9 * without[2].a_sent


def test_float16_whole_models_mix_the_momentum_as_sent_and_keep_the_pair_sum_exactly() -> None:
    auto = AutoGossip(AutoConfig())  # whole models travel as float16
    a, b = End("a", 1, tensors(11)), End("b", 2, tensors(12))
    result_a, result_b, _ = exchange(a, b, every=1, algorithm=auto)
    for name in a.params:
        sent_a = as_float16(a.momentum[name]).float()  # type: ignore[index]
        sent_b = as_float16(b.momentum[name]).float()  # type: ignore[index]
        assert torch.equal(result_a.momentum[name], (sent_b - sent_a) * 0.5)  # type: ignore[index]
        assert torch.equal(result_a.momentum[name] + result_b.momentum[name], torch.zeros_like(sent_a))  # type: ignore[index]


def test_momentum_rides_on_the_edge_rounds_that_are_multiples_of_its_interval_at_both_ends() -> None:
    a, b = End("a", 1, tensors(11)), End("b", 2, tensors(12))
    rode = []
    for _ in range(6):
        result_a, result_b, _ = exchange(a, b, every=3)
        assert (result_a.momentum is None) == (result_b.momentum is None)
        rode.append(result_a.momentum is not None)
    assert rode == [True, False, False, True, False, False]
    assert [mixes_momentum(3, r) for r in range(6)] == rode
    assert not any(mixes_momentum(0, r) for r in range(6))


def test_low_rank_exchanges_carry_no_momentum() -> None:
    for algorithm, extra in (
        (PowerGossip(PowerGossipConfig()), {}),
        (AutoGossip(AutoConfig()), {"mode": 1}),
    ):
        a, b = End("a", 1, tensors(11)), End("b", 2, tensors(12))
        result_a, result_b, traffic = exchange(a, b, 1, algorithm, **extra)
        a2, b2 = End("a", 1, tensors(11)), End("b", 2, tensors(12))
        assert result_a.momentum is None and result_b.momentum is None
        assert traffic.total == exchange(a2, b2, 0, algorithm, **extra)[2].total


def test_an_end_without_momentum_sends_zeros_which_neither_end_mixes() -> None:
    # An attached script's daemon keeps no momentum; a trainer that has not stepped yet has none either.
    a, b = End("a", 1, None), End("b", 2, tensors(12))
    result_a, result_b, _ = exchange(a, b, every=1)
    assert result_a.momentum == {} and result_b.momentum == {}
    # Only the tensors one end lacks are left out.
    partial = {k: v for k, v in tensors(11).items() if k != "fc.bias"}
    c, d = End("c", 1, partial), End("d", 2, tensors(12))
    result_c, result_d, _ = exchange(c, d, every=1)
    assert set(result_c.momentum or {}) == set(result_d.momentum or {}) == {"fc.weight", "conv.weight"}


def test_with_clipping_a_huge_momentum_turns_this_ends_momentum_but_does_not_lengthen_it() -> None:
    own = tensors(11)
    a, b = End("a", 1, own), End("b", 2, tensors(12, scale=1e6))
    clipper = Clipper(RobustSection())
    result_a, _, _ = exchange(a, b, every=1, clipper=clipper)
    assert result_a.momentum is not None
    before = torch.cat([v.flatten() for v in own.values()]).norm()
    after = torch.cat([(own[k] + result_a.momentum[k]).flatten() for k in own]).norm()
    assert after <= before * (1 + 1e-5)
    turned = torch.cat([(own[k] + result_a.momentum[k]).flatten() for k in own])
    assert torch.nn.functional.cosine_similarity(turned, torch.cat([v.flatten() for v in own.values()]), dim=0) < 0.5


def test_clip_momentum_leaves_a_mix_that_does_not_lengthen_the_momentum_alone() -> None:
    own = {"w": torch.tensor([3.0, 4.0])}
    shorter = {"w": torch.tensor([-1.0, -1.0])}
    assert torch.equal(clip_momentum(shorter, own)["w"], shorter["w"])
    longer = {"w": torch.tensor([3.0, 4.0])}  # would double it
    clipped = clip_momentum(longer, own)
    assert torch.allclose((own["w"] + clipped["w"]).norm(), torch.tensor(5.0))
    assert torch.allclose(own["w"] + clipped["w"], own["w"])  # same direction: scaled back to itself
    assert clip_momentum({}, own) == {}


SPEC = InputSpec(kind="classification", input_shape=(6,), num_classes=3)


@pytest.mark.parametrize("optimizer", ["sgd", "adam"])
def test_the_trainer_names_its_momentum_and_adds_a_mix_to_it(optimizer: Literal["sgd", "adam"]) -> None:
    x = torch.randn(64, 6, generator=torch.Generator().manual_seed(0))
    data = ArrayDataset(x, (x[:, 0] > 0).long())
    model = build_model(ModelSection(name="logistic", options=LogisticConfig()), SPEC, 0)
    trainer = Trainer(model, TrainSection(lr=0.1, optimizer=optimizer), data, kind="classification", device=CPU, seed=0)
    assert trainer.momentum() == {}  # no step yet: no momentum
    trainer.add_momentum({name: torch.ones_like(p) for name, p in model.named_parameters()})  # nothing to add to
    assert trainer.momentum() == {}
    trainer.train_steps(1)
    momentum = trainer.momentum()
    assert set(momentum) == {name for name, _ in model.named_parameters()}
    before = {name: value.clone() for name, value in momentum.items()}
    trainer.add_momentum({"linear.weight": torch.ones_like(before["linear.weight"])})
    assert torch.equal(trainer.momentum()["linear.weight"], before["linear.weight"] + 1)
    assert torch.equal(trainer.momentum()["linear.bias"], before["linear.bias"])


def test_sgd_without_momentum_has_none_to_mix() -> None:
    x = torch.randn(64, 6, generator=torch.Generator().manual_seed(0))
    data = ArrayDataset(x, (x[:, 0] > 0).long())
    model = build_model(ModelSection(name="logistic", options=LogisticConfig()), SPEC, 0)
    trainer = Trainer(model, TrainSection(lr=0.1, momentum=0.0), data, kind="classification", device=CPU, seed=0)
    trainer.train_steps(2)
    assert trainer.momentum() == {}


def test_a_neighbours_nan_momentum_is_rejected_with_its_exchange() -> None:
    """A momentum that is not finite is bad input like a model that is not: the receiving end rejects the
    whole exchange (its parameters' step too) before anything is applied."""
    poisoned = tensors(12)
    poisoned["fc.bias"][3] = float("nan")
    a, b = End("a", 1, tensors(11)), End("b", 2, poisoned)
    with pytest.raises(NonFiniteTensor, match=r"fc\.bias#momentum"):
        exchange(a, b, every=1)
