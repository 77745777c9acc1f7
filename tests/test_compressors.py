"""Compressors: round trips within their published error budgets, and the byte sizes protocols/ specifies."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch

from gossipd.compress.base import Compressor
from gossipd.compress.qsgd import QSGD
from gossipd.compress.registry import parse_compressor
from gossipd.compress.sign import SignCompressor
from gossipd.compress.sparse import RandomK, TopK
from gossipd.wire.errors import MalformedMessage, NonFiniteTensor
from gossipd.wire.tensors import WireTensor, pack_tensors, unpack_tensors

SIZES = [1, 7, 100, 4097]
CPU = torch.device("cpu")


def round_trip(compressor: Compressor, x: torch.Tensor, seed: int = 0) -> tuple[torch.Tensor, int]:
    """Q(x) as the receiver rebuilds it from the packed bytes, and the data bytes sent."""
    parts = compressor.compress("p", x, torch.Generator().manual_seed(seed))
    layout = compressor.parts("p", tuple(x.shape))
    data = pack_tensors(parts, layout)  # also checks that compress() and parts() agree, in order
    return compressor.decompress("p", tuple(x.shape), unpack_tensors(data, layout), CPU), len(data)


def vector(d: int, seed: int = 0) -> torch.Tensor:
    return torch.randn(d, generator=torch.Generator().manual_seed(seed)) * 3


@pytest.mark.parametrize("d", SIZES)
def test_top_k_is_the_best_k_sparse_approximation(d: int) -> None:
    x = vector(d)
    compressor = TopK(0.1)
    k = max(1, math.ceil(0.1 * d))
    q, sent = round_trip(compressor, x)
    assert sent == 8 * k
    assert int((q != 0).sum()) == k
    assert float(((q - x) ** 2).sum()) <= (1 - k / d) * float((x**2).sum()) + 1e-5
    kept = q.abs()[q != 0].min() if k < d else 0
    assert float(x.abs()[q == 0].max()) <= float(kept) if k < d else True


@pytest.mark.parametrize("d", [100, 4097])
def test_random_k_contracts_in_expectation(d: int) -> None:
    x = vector(d)
    compressor = RandomK(0.1)
    k = math.ceil(0.1 * d)
    errors = []
    for seed in range(200):
        q, sent = round_trip(compressor, x, seed)
        assert sent == 8 * k
        errors.append(float(((q - x) ** 2).sum()))
    assert np.mean(errors) == pytest.approx((1 - k / d) * float((x**2).sum()), rel=0.05)


def test_random_k_is_reproducible_from_its_generator() -> None:
    x = vector(1000)
    assert torch.equal(round_trip(RandomK(0.05), x, 3)[0], round_trip(RandomK(0.05), x, 3)[0])
    assert not torch.equal(round_trip(RandomK(0.05), x, 3)[0], round_trip(RandomK(0.05), x, 4)[0])


@pytest.mark.parametrize("d", SIZES)
@pytest.mark.parametrize("block", [None, 64])
def test_sign_error_is_exactly_the_published_contraction(d: int, block: int | None) -> None:
    x = vector(d)
    compressor = SignCompressor(block)
    q, sent = round_trip(compressor, x)
    size = d if block is None else block
    blocks = [x[i : i + size] for i in range(0, d, size)]
    assert sent == math.ceil(d / 8) + 4 * len(blocks)
    expected = float((x**2).sum()) - sum(float(b.abs().sum()) ** 2 / b.numel() for b in blocks)
    assert float(((q - x) ** 2).sum()) == pytest.approx(expected, rel=1e-4, abs=1e-5)
    assert torch.equal(torch.sign(q), torch.where(x >= 0, 1.0, -1.0))


def test_sign_of_a_zero_tensor_is_zero() -> None:
    q, _ = round_trip(SignCompressor(), torch.zeros(10))
    assert torch.equal(q, torch.zeros(10))


@pytest.mark.parametrize("bits", [2, 4, 8])
def test_qsgd_is_unbiased_before_scaling_and_contracts_after(bits: int) -> None:
    d = 500
    x = vector(d)
    compressor = QSGD(bits)
    tau = compressor.tau(d)
    samples = []
    for seed in range(300):
        q, sent = round_trip(compressor, x, seed)
        assert sent == math.ceil(d * bits / 8) + 4
        samples.append(q)
    stacked = torch.stack(samples)
    unscaled_mean = stacked.mean(dim=0) * tau
    # Unbiased: the mean of τ·Q(x) approaches x (per-element standard error shrinks with √trials).
    assert float((unscaled_mean - x).norm() / x.norm()) < 0.15 * math.sqrt(tau)
    mean_error = float(((stacked - x) ** 2).sum(dim=1).mean())
    assert mean_error <= (1 - 1 / tau) * float((x**2).sum()) * 1.02


def test_qsgd_levels_are_bounded_and_exact_at_eight_bits() -> None:
    x = vector(64)
    q, _ = round_trip(QSGD(8, scaled=False), x)
    assert float((q - x).abs().max()) <= float(x.norm()) / 127 + 1e-6


@pytest.mark.parametrize(
    ("spec", "expected"),
    [("sign", "sign"), ("sign:64", "sign:64"), ("top-k:1%", "top-k:1%"), ("top-k:0.05", "top-k:5%"),
     ("random-k:10%", "random-k:10%"), ("qsgd:4", "qsgd:4")],
)  # fmt: skip
def test_specs_parse(spec: str, expected: str) -> None:
    assert parse_compressor(spec).spec == expected


@pytest.mark.parametrize("spec", ["zip", "top-k", "top-k:0", "top-k:150%", "qsgd:1", "qsgd:9", "qsgd", "sign:0"])
def test_bad_specs_say_what_is_accepted(spec: str) -> None:
    with pytest.raises(ValueError, match="compressor"):
        parse_compressor(spec)


def test_decompress_rejects_hostile_parts() -> None:
    compressor = TopK(0.5)
    parts = {
        "p#indices": WireTensor("p#indices", "int32", (2,), np.array([0, 99], "<i4").tobytes()),
        "p#values": WireTensor("p#values", "float32", (2,), np.array([1, 2], "<f4").tobytes()),
    }
    with pytest.raises(MalformedMessage, match="index"):
        compressor.decompress("p", (4,), parts, CPU)
    parts["p#indices"] = WireTensor("p#indices", "int32", (2,), np.array([0, 1], "<i4").tobytes())
    parts["p#values"] = WireTensor("p#values", "float32", (2,), np.array([1, np.nan], "<f4").tobytes())
    with pytest.raises(NonFiniteTensor):
        compressor.decompress("p", (4,), parts, CPU)
    qsgd = QSGD(4)
    bad_norm = {
        "p#codes": WireTensor("p#codes", "uint8", (2,), b"\0\0"),
        "p#norm": WireTensor("p#norm", "float32", (1,), np.array([-1], "<f4").tobytes()),
    }
    with pytest.raises(MalformedMessage, match="negative"):
        qsgd.decompress("p", (4,), bad_norm, CPU)
    sign_nan = {
        "p#signs": WireTensor("p#signs", "uint8", (1,), b"\x0f"),
        "p#scales": WireTensor("p#scales", "float32", (1,), np.array([np.inf], "<f4").tobytes()),
    }
    with pytest.raises(NonFiniteTensor):
        SignCompressor().decompress("p", (4,), sign_nan, CPU)


def test_matrices_compress_like_their_flattening() -> None:
    x = vector(120).reshape(10, 12)
    for spec in ("sign", "top-k:10%", "qsgd:4"):
        q, _ = round_trip(parse_compressor(spec), x)
        assert q.shape == x.shape
