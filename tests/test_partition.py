"""Splitting a dataset among simulated peers: IID, contiguous blocks, Dirichlet(α) label skew, label shards, and
`peer_shard`."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from gossipd.data.partition import PartitionSpec, parse_partition, partition_indices
from gossipd.data.registry import peer_shard
from gossipd.data.spec import ArrayDataset, DataBundle, InputSpec

IID = PartitionSpec("iid")


def mnist_like_labels(per_class: int = 600, seed: int = 0) -> np.ndarray:
    """Ten balanced classes in random order, like MNIST's labels."""
    return np.random.default_rng(seed).permutation(np.repeat(np.arange(10), per_class))


def assert_disjoint_and_covering(parts: list[np.ndarray], n_examples: int) -> None:
    joined = np.concatenate(parts)
    assert len(joined) == n_examples
    assert np.array_equal(np.sort(joined), np.arange(n_examples))


def mean_label_distance(parts: list[np.ndarray], labels: np.ndarray) -> float:
    """Mean total-variation distance between each peer's label distribution and the global one."""
    classes = int(labels.max()) + 1
    overall = np.bincount(labels, minlength=classes) / len(labels)
    distances = []
    for part in parts:
        local = np.bincount(labels[part], minlength=classes) / max(1, len(part))
        distances.append(0.5 * np.abs(local - overall).sum())
    return float(np.mean(distances))


# --- parse_partition ----------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ("iid", PartitionSpec("iid")),
        (" iid ", PartitionSpec("iid")),
        ("contiguous", PartitionSpec("contiguous")),
        ("dirichlet:0.5", PartitionSpec("dirichlet", alpha=0.5)),
        ("dirichlet:100", PartitionSpec("dirichlet", alpha=100.0)),
        ("dirichlet:1e-2", PartitionSpec("dirichlet", alpha=0.01)),
        ("shards:2", PartitionSpec("shards", shards_per_peer=2)),
    ],
)
def test_parse_partition(text: str, expected: PartitionSpec) -> None:
    spec = parse_partition(text)
    assert spec == expected
    assert parse_partition(str(spec)) == spec


@pytest.mark.parametrize(
    ("text", "match"),
    [
        ("IID", "expected 'iid'"),
        ("dirichlet", "expected 'iid'"),
        ("dirichlet:", "expected 'iid'"),
        ("dirichlet:-1", "expected 'iid'"),
        ("dirichlet:0", "expected a number > 0"),
        ("shards:0", "at least 1"),
        ("shards:1.5", "expected 'iid'"),
        ("random", "found 'random'"),
        ("contiguous:2", "expected 'iid', 'contiguous'"),
    ],
)
def test_parse_partition_errors(text: str, match: str) -> None:
    with pytest.raises(ValueError, match=match):
        parse_partition(text)


# --- iid ----------------------------------------------------------------------------------------------------


def test_iid_parts_are_disjoint_covering_and_equal_sized() -> None:
    parts = partition_indices(IID, 1003, peers=7, seed=0)
    assert_disjoint_and_covering(parts, 1003)
    assert {len(p) for p in parts} == {143, 144}
    assert all(np.array_equal(p, np.sort(p)) and p.dtype == np.int64 for p in parts)


@given(n_examples=st.integers(1, 500), peers=st.integers(1, 40), seed=st.integers(0, 2**32 - 1))
@settings(max_examples=60, deadline=None)
def test_iid_property(n_examples: int, peers: int, seed: int) -> None:
    if n_examples < peers:
        with pytest.raises(ValueError, match="cannot split"):
            partition_indices(IID, n_examples, peers, seed)
        return
    parts = partition_indices(IID, n_examples, peers, seed)
    assert len(parts) == peers
    assert_disjoint_and_covering(parts, n_examples)
    assert max(map(len, parts)) - min(map(len, parts)) <= 1


@pytest.mark.parametrize("text", ["iid", "dirichlet:0.5", "shards:2"])
def test_same_seed_same_split_different_seed_different(text: str) -> None:
    spec, labels = parse_partition(text), mnist_like_labels(100)
    first = partition_indices(spec, len(labels), 5, seed=11, labels=labels)
    again = partition_indices(spec, len(labels), 5, seed=11, labels=labels)
    other = partition_indices(spec, len(labels), 5, seed=12, labels=labels)
    assert all(np.array_equal(a, b) for a, b in zip(first, again, strict=True))
    assert not all(np.array_equal(a, b) for a, b in zip(first, other, strict=True))


# --- contiguous ---------------------------------------------------------------------------------------------

CONTIGUOUS = PartitionSpec("contiguous")


def test_contiguous_peer_i_takes_the_i_th_block_in_order() -> None:
    parts = partition_indices(CONTIGUOUS, 10, peers=3, seed=0)
    assert [p.tolist() for p in parts] == [[0, 1, 2, 3], [4, 5, 6], [7, 8, 9]]
    assert all(p.dtype == np.int64 for p in parts)


@given(n_examples=st.integers(1, 500), peers=st.integers(1, 40), seed=st.integers(0, 2**32 - 1))
@settings(max_examples=60, deadline=None)
def test_contiguous_property(n_examples: int, peers: int, seed: int) -> None:
    if n_examples < peers:
        with pytest.raises(ValueError, match="cannot split"):
            partition_indices(CONTIGUOUS, n_examples, peers, seed)
        return
    parts = partition_indices(CONTIGUOUS, n_examples, peers, seed)
    assert len(parts) == peers
    assert_disjoint_and_covering(parts, n_examples)
    assert max(map(len, parts)) - min(map(len, parts)) <= 1
    # Blocks, in order: each part is a run of consecutive indices starting where the previous one ended.
    assert np.array_equal(np.concatenate(parts), np.arange(n_examples))
    assert all(np.array_equal(p, np.arange(p[0], p[0] + len(p))) for p in parts)
    # The order is the skew, so the seed plays no part (every peer computes the same blocks).
    again = partition_indices(CONTIGUOUS, n_examples, peers, seed + 1)
    assert all(np.array_equal(a, b) for a, b in zip(parts, again, strict=True))


def test_contiguous_ignores_labels() -> None:
    labels = mnist_like_labels(30)
    with_labels = partition_indices(CONTIGUOUS, len(labels), 4, seed=0, labels=labels)
    without = partition_indices(CONTIGUOUS, len(labels), 4, seed=0)
    assert all(np.array_equal(a, b) for a, b in zip(with_labels, without, strict=True))


# --- label skew ---------------------------------------------------------------------------------------------


def test_dirichlet_small_alpha_is_more_skewed_than_large() -> None:
    labels = mnist_like_labels(500)
    skewed = partition_indices(parse_partition("dirichlet:0.1"), len(labels), 10, seed=0, labels=labels)
    mild = partition_indices(parse_partition("dirichlet:100"), len(labels), 10, seed=0, labels=labels)
    iid = partition_indices(IID, len(labels), 10, seed=0)
    assert_disjoint_and_covering(skewed, len(labels))
    assert_disjoint_and_covering(mild, len(labels))
    assert mean_label_distance(skewed, labels) > 0.5
    assert mean_label_distance(mild, labels) < 0.1
    assert mean_label_distance(iid, labels) < 0.1


def test_dirichlet_gives_every_peer_some_examples() -> None:
    labels = mnist_like_labels(100)
    parts = partition_indices(parse_partition("dirichlet:0.1"), len(labels), 20, seed=3, labels=labels)
    assert min(len(p) for p in parts) >= 10


def test_two_shards_give_each_peer_at_most_two_labels() -> None:
    labels = mnist_like_labels(600)
    parts = partition_indices(parse_partition("shards:2"), len(labels), 10, seed=0, labels=labels)
    assert_disjoint_and_covering(parts, len(labels))
    assert all(len(np.unique(labels[p])) <= 2 for p in parts)
    assert {len(p) for p in parts} == {600}
    iid = partition_indices(IID, len(labels), 10, seed=0)
    assert all(len(np.unique(labels[p])) == 10 for p in iid)


@pytest.mark.parametrize("text", ["dirichlet:0.5", "shards:2"])
def test_label_schemes_refuse_unlabelled_data(text: str) -> None:
    with pytest.raises(ValueError, match="needs labelled examples"):
        partition_indices(parse_partition(text), 100, 4, seed=0, labels=None)


@pytest.mark.parametrize(
    ("text", "n_examples", "peers", "labels", "match"),
    [
        ("iid", 10, 0, None, "at least 1"),
        ("iid", 3, 4, None, "cannot split 3 examples among 4 peers"),
        ("shards:3", 10, 4, np.zeros(10, dtype=np.int64), "12 shards requested but only 10"),
        ("dirichlet:1", 10, 2, np.zeros(9, dtype=np.int64), "9 labels for 10 examples"),
    ],
)
def test_partition_argument_errors(
    text: str, n_examples: int, peers: int, labels: np.ndarray | None, match: str
) -> None:
    with pytest.raises(ValueError, match=match):
        partition_indices(parse_partition(text), n_examples, peers, seed=0, labels=labels)


# --- peer_shard ---------------------------------------------------------------------------------------------


def classification_bundle(labels: np.ndarray) -> DataBundle:
    # x[i] = i, so a shard's x tells which examples it holds.
    x = torch.arange(len(labels), dtype=torch.float32).reshape(-1, 1)
    data = ArrayDataset(x, torch.from_numpy(labels.astype(np.int64)))
    return DataBundle(
        spec=InputSpec(kind="classification", input_shape=(1,), num_classes=10), train=data, validation=data
    )


@pytest.mark.parametrize("text", ["iid", "dirichlet:0.3", "shards:2"])
def test_peer_shard_is_that_peers_part(text: str) -> None:
    labels = mnist_like_labels(50)
    bundle = classification_bundle(labels)
    parts = partition_indices(parse_partition(text), len(labels), 4, seed=9, labels=labels)
    for peer in range(4):
        shard = peer_shard(bundle, text, peer, 4, seed=9)
        assert shard.x[:, 0].long().tolist() == parts[peer].tolist()
        assert torch.equal(shard.y, torch.from_numpy(labels[parts[peer]]))


def test_peer_shard_of_language_data() -> None:
    tokens = torch.arange(40 * 8).reshape(40, 8)
    data = ArrayDataset(tokens, tokens + 1)
    bundle = DataBundle(spec=InputSpec(kind="language", input_shape=(8,), num_classes=400), train=data, validation=data)
    shards = [peer_shard(bundle, "iid", peer, 3, seed=1) for peer in range(3)]
    rows = torch.cat([s.x[:, 0] for s in shards]).sort().values
    assert torch.equal(rows, tokens[:, 0])
    # Contiguous: each peer reads its own stretch of the text, the stretches in order.
    slices = [peer_shard(bundle, "contiguous", peer, 3, seed=1) for peer in range(3)]
    assert [len(s) for s in slices] == [14, 13, 13]
    assert torch.equal(torch.cat([s.x for s in slices]), tokens)
    with pytest.raises(ValueError, match="needs labelled examples"):
        peer_shard(bundle, "dirichlet:0.5", 0, 3, seed=1)


@pytest.mark.parametrize("peer", [-1, 4])
def test_peer_shard_rejects_an_index_outside_the_swarm(peer: int) -> None:
    with pytest.raises(ValueError, match=r"outside 0\.\.3"):
        peer_shard(classification_bundle(mnist_like_labels(10)), "iid", peer, 4, seed=0)
