"""Task files: every shipped one loads, and every kind of mistake names the file, the key and the fix."""

from __future__ import annotations

from pathlib import Path

import pytest
from click.testing import CliRunner

from gossipd.cli import EXIT_INVALID_TASK, main
from gossipd.compress.sign import SignCompressor
from gossipd.mixing.auto import AutoConfig
from gossipd.mixing.choco import ChocoConfig
from gossipd.models.cnn import CNNConfig
from gossipd.task.fields import TaskError
from gossipd.task.loader import load_task, parse_task
from gossipd.task.overrides import with_gossip
from tests.conftest import DEFAULT_TASK, REPO

MINIMAL = """
[task]
id = "t1"
[data]
format = "idx"
train_images = "a.gz"
train_labels = "b.gz"
[model]
name = "mlp"
"""


def parse(extra: str = "", base: str = MINIMAL) -> object:
    return parse_task(base + extra, file="t.toml", base_dir=Path("/tmp"))


@pytest.mark.parametrize("path", sorted((REPO / "tasks").glob("*.toml")), ids=lambda p: p.name)
def test_every_shipped_task_loads(path: Path) -> None:
    task = load_task(path)
    assert task.id == path.stem
    assert len(task.hash) == 16


def test_shipped_tasks_cover_the_required_workloads() -> None:
    names = {p.name for p in (REPO / "tasks").glob("*.toml")}
    assert {"mnist-cnn.toml", "mnist-mlp.toml", "titanic.toml", "shakespeare-char.toml"} <= names


def test_embedded_default_task_loads_with_its_data_inside_the_package() -> None:
    task = load_task(DEFAULT_TASK)
    assert task.data.base_dir.is_dir()
    assert (task.data.base_dir / "t10k-images-idx3-ubyte.gz").is_file()
    assert task.model.options == CNNConfig()
    assert isinstance(task.gossip.config, AutoConfig)


def test_choco_scales_sign_per_64_values_by_default_and_a_task_naming_per_tensor_sign_keeps_its_hash() -> None:
    default, blocks, per_tensor = (
        parse('[gossip]\nalgorithm = "choco"\n' + extra)
        for extra in ("", 'compressor = "sign:64"\n', 'compressor = "sign"\n')
    )
    assert default.gossip.config == ChocoConfig(compressor="sign:64")  # type: ignore[attr-defined]
    assert default.hash == blocks.hash != per_tensor.hash  # type: ignore[attr-defined]


def test_defaults_and_variants_are_typed_dataclasses() -> None:
    task = parse('[gossip]\nalgorithm = "choco"\ncompressor = "top-k:1%"\ngamma = 0.1\n')
    assert task.gossip.config == ChocoConfig(compressor="top-k:1%", gamma=0.1)  # type: ignore[attr-defined]
    assert task.train.batch_size == 32  # type: ignore[attr-defined]
    assert task.data.base_dir == Path("/tmp")  # type: ignore[attr-defined]


@pytest.mark.parametrize(
    ("text", "key", "words"),
    [
        ("[task]\nid = 'x'\n[task.extra]\n", "", "not valid TOML"),
        ("[train]\nlr = 'fast'\n", "train.lr", "found a string 'fast', expected a number"),
        ("[train]\nlr = -1.0\n", "train.lr", "expected a number > 0"),
        ("[train]\nbatch_size = 1.5\n", "train.batch_size", "expected an integer"),
        ("[train]\nbatchsize = 4\n", "train.batchsize", "unknown key; expected one of"),
        ("[train]\noptimizer = 'rmsprop'\n", "train.optimizer", "expected one of 'sgd', 'adam', 'adamw'"),
        ("[gossip]\nalgorithm = 'magic'\n", "gossip.algorithm", "expected one of: auto, choco, plain, powergossip"),
        ("[gossip]\nalgorithm = 'powergossip'\nrank = 0\n", "gossip.rank", "expected a number ≥ 1"),
        ("[gossip]\nmax_rank = 0\n", "gossip.max_rank", "expected a number ≥ 1"),
        ("[gossip]\ntime_share = 0\n", "gossip.time_share", "expected a number > 0"),
        ("[gossip]\nmax_exchange_bytes = 10\n", "gossip.max_exchange_bytes", "expected a number ≥ 1024"),
        ("[gossip]\ncompressor = 'sign'\n", "gossip.compressor", "not a key for algorithm = 'auto'"),
        ("[gossip]\nrank = 2\n", "gossip.rank", "not a key for algorithm = 'auto'"),
        ("[gossip]\nalgorithm = 'choco'\ncompressor = 'zip'\n", "gossip.compressor", "expected one of: sign"),
        ("[gossip]\nweight = 0.9\n", "gossip.weight", "≤ 0.5"),
        ("[gossip]\nwire_dtype = 'bfloat16'\n", "gossip.wire_dtype", "expected one of 'float32', 'float16'"),
        ("[gossip]\nsteps_per_exchange = -1\n", "gossip.steps_per_exchange", "expected a number ≥ 0"),
        ("[train]\nstart_wait = -5\n", "train.start_wait", "expected a number ≥ 0"),
        ("[model.hidden]\n", "model.hidden", "expected an array of integers"),
        ("[surprise]\n", "surprise", "unknown section"),
    ],
)
def test_mistakes_name_file_key_and_expectation(text: str, key: str, words: str) -> None:
    with pytest.raises(TaskError) as caught:
        parse(text)
    error = caught.value
    assert error.file == "t.toml"
    assert error.key == key
    assert words in str(error)
    assert str(error).startswith("t.toml")


def test_model_options_are_checked_against_the_chosen_model() -> None:
    base = MINIMAL.replace('name = "mlp"', 'name = "cnn"\nhidden = 32\nchannels = [8, "x"]')
    with pytest.raises(TaskError, match=r"model\.channels\[1\]: found a string 'x', expected an integer"):
        parse(base=base)
    with pytest.raises(TaskError, match="not a key for name = 'cnn'"):
        parse(base=MINIMAL.replace('name = "mlp"', 'name = "cnn"\ndepth = 3'))


@pytest.mark.parametrize(
    ("replace", "key"),
    [
        (('id = "t1"', 'id = "Bad ID!"'), "task.id"),
        (('id = "t1"', ""), "task.id"),
        (('format = "idx"', 'format = "parquet"'), "data.format"),
        (('train_labels = "b.gz"', ""), "data.train_labels"),
        (('format = "idx"', 'format = "idx"\npartition = "dirichlet:-1"'), "data.partition"),
        (('format = "idx"', 'format = "idx"\nroot = "embedded:nothing"'), "data.root"),
    ],
)
def test_bad_required_fields(replace: tuple[str, str], key: str) -> None:
    with pytest.raises(TaskError) as caught:
        parse(base=MINIMAL.replace(*replace))
    assert caught.value.key == key


def test_missing_sections_are_named() -> None:
    with pytest.raises(TaskError, match=r"t.toml: model: missing"):
        parse_task(MINIMAL.split("[model]")[0], file="t.toml")


def test_task_hash_covers_what_peers_must_share_and_nothing_local() -> None:
    a = parse()
    assert a.hash == parse("[train]\nbatch_size = 64\ndevice = 'cpu'\n").hash  # type: ignore[attr-defined]
    assert a.hash != parse("[gossip]\nmax_rank = 2\n").hash  # type: ignore[attr-defined]
    assert a.hash != parse("[gossip]\nalgorithm = 'powergossip'\n").hash  # type: ignore[attr-defined]
    assert a.hash != parse(base=MINIMAL.replace("t1", "t2")).hash  # type: ignore[attr-defined]


def test_an_auto_tasks_time_share_and_byte_caps_are_each_peers_own_and_outside_the_hash() -> None:
    """A peer on a metered link caps what it sends and still mixes with the rest of the swarm; the ladder's
    bounds, which both ends of an exchange must share, stay in the hash."""
    a = parse()
    capped = parse("[gossip]\ntime_share = 0.25\nmax_exchange_bytes = 50000\nmax_bytes_per_second = 1e5\nsave = true\n")
    assert capped.gossip.config.max_exchange_bytes == 50_000  # type: ignore[attr-defined]
    assert capped.gossip.config.time_share == 0.25  # type: ignore[attr-defined]
    assert capped.gossip.config.save is True  # type: ignore[attr-defined]
    assert a.hash == capped.hash  # type: ignore[attr-defined]
    shared_settings = (
        "max_rank = 4",
        "full = false",
        "wire_dtype = 'float32'",
        "full_dtype = 'float32'",
        "probe = 0",
        "warm_switch = false",
    )
    for shared in shared_settings:
        assert a.hash != parse(f"[gossip]\n{shared}\n").hash, shared  # type: ignore[attr-defined]


def test_weighing_by_samples_is_the_default_and_part_of_the_hash_and_min_peers_is_not() -> None:
    a = parse()
    assert a.gossip.weigh_by == "samples"  # type: ignore[attr-defined]
    assert a.hash == parse("[gossip]\nweigh_by = 'samples'\n").hash  # type: ignore[attr-defined]
    equal = parse("[gossip]\nweigh_by = 'none'\n")
    assert a.hash != equal.hash  # type: ignore[attr-defined]
    # "none" hashes as this task did before "samples" became the default (the hash gossipd computed for it
    # on 2026-12-05, before the change), so such a task still meets older daemons.
    assert equal.hash.hex() == "c0d0fbe1215ba0cfda250731df0162da"  # type: ignore[attr-defined]
    waiting = parse("[train]\nmin_peers = 3\nmin_peers_grace = 10.5\n")
    assert (waiting.train.min_peers, waiting.train.min_peers_grace) == (3, 10.5)  # type: ignore[attr-defined]
    assert a.hash == waiting.hash  # type: ignore[attr-defined]
    with pytest.raises(TaskError, match="weigh_by"):
        parse("[gossip]\nweigh_by = 'examples'\n")
    with pytest.raises(TaskError, match="min_peers"):
        parse("[train]\nmin_peers = -1\n")


def test_unreadable_and_non_utf8_files(tmp_path: Path) -> None:
    with pytest.raises(TaskError, match="cannot read"):
        load_task(tmp_path / "absent.toml")
    bad = tmp_path / "bad.toml"
    bad.write_bytes(b"[task]\nid = '\xff'\n")
    with pytest.raises(TaskError, match="not UTF-8"):
        load_task(bad)


def test_relative_roots_resolve_against_the_task_file(tmp_path: Path) -> None:
    path = tmp_path / "sub" / "t.toml"
    path.parent.mkdir()
    path.write_text(MINIMAL.replace('format = "idx"', 'format = "idx"\nroot = "../data"'))
    assert load_task(path).data.base_dir == path.parent / "../data"
    assert load_task(path, data_root=tmp_path).data.base_dir == tmp_path


def test_command_line_overrides_are_checked_like_the_file() -> None:
    task = load_task(DEFAULT_TASK)
    choco = with_gossip(task, "choco", {"compressor": "sign:64", "gamma": None})
    assert choco.gossip.config == ChocoConfig(compressor="sign:64")
    assert choco.hash != task.hash
    with pytest.raises(TaskError, match="rank: unknown key"):
        with_gossip(task, "choco", {"rank": 2})
    with pytest.raises(TaskError, match="expected a number ≥ 1"):
        with_gossip(task, "powergossip", {"rank": 0})
    with pytest.raises(TaskError, match="rank: unknown key"):
        with_gossip(task, None, {"rank": 2})  # the default task's algorithm is auto, which has no rank


def test_check_command_exit_codes(tmp_path: Path) -> None:
    runner = CliRunner()
    good = runner.invoke(main, ["check", str(DEFAULT_TASK), "--deep"])
    assert good.exit_code == 0, good.output
    assert "114,314 parameters" in good.output
    bad = tmp_path / "bad.toml"
    bad.write_text(MINIMAL + "[train]\nlr = 'x'\n")
    result = runner.invoke(main, ["check", str(bad)])
    assert result.exit_code == EXIT_INVALID_TASK
    assert "train.lr" in result.output


def test_sign_spec_round_trips_through_the_registry() -> None:
    assert isinstance(with_gossip(load_task(DEFAULT_TASK), "choco", {}).gossip.config, ChocoConfig)
    assert SignCompressor(64).spec == "sign:64"


def test_mixing_momentum_is_off_by_default_and_in_the_hash_where_whole_models_travel() -> None:
    a = parse()
    assert a.gossip.momentum_every == 0  # type: ignore[attr-defined]
    # Off hashes as the task did before momentum could be mixed (the hash of 2026-12-07, before the change).
    assert a.hash.hex() == "e9825d6a5a3529316c3986b43fbe5f7f"  # type: ignore[attr-defined]
    assert a.hash == parse("[gossip]\nmomentum_every = 0\n").hash  # type: ignore[attr-defined]
    two, three = parse("[gossip]\nmomentum_every = 2\n"), parse("[gossip]\nmomentum_every = 3\n")
    assert len({a.hash, two.hash, three.hash}) == 3  # type: ignore[attr-defined]
    # A fixed low-rank or Choco task never sends whole models: the setting changes nothing there, hash included.
    for algorithm in ("powergossip", "choco"):
        off = parse(f"[gossip]\nalgorithm = '{algorithm}'\n")
        assert off.hash == parse(f"[gossip]\nalgorithm = '{algorithm}'\nmomentum_every = 2\n").hash  # type: ignore[attr-defined]
    with pytest.raises(TaskError, match="momentum_every"):
        parse("[gossip]\nmomentum_every = -1\n")
