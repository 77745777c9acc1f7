"""Personal parameters (`[gossip] personal`): which tensors the patterns pick, the task file and its hash, an
attached script's layout digest, and that neither an exchange nor a state transfer ever carries them."""

from __future__ import annotations

import random
from typing import Any

import pytest
import torch
import trio
from torch import nn

from gossipd.data.spec import ArrayDataset
from gossipd.mixing import local
from gossipd.mixing.choco import ChocoConfig
from gossipd.mixing.layout import ParamLayout, max_message_bytes, mixed_parameters, personal_of
from gossipd.mixing.personal import Personal, PersonalError, personal_names, personal_part, shared_part
from gossipd.mixing.plain import PlainConfig
from gossipd.mixing.powergossip import PowerGossipConfig
from gossipd.mixing.registry import make_algorithm
from gossipd.mixing.session import ExchangeSession
from gossipd.mixing.state import state_specs
from gossipd.services.attach_server import read_hello
from gossipd.services.network import FrameStream
from gossipd.services.state_transfer import STATE_PROTOCOL, fetch_state, serve_state
from gossipd.task.fields import TaskError
from gossipd.task.loader import parse_task
from gossipd.task.overrides import with_personal
from gossipd.task.schema import GossipSection, TrainSection
from gossipd.train.privacy import PrivacySection
from gossipd.train.trainer import Trainer
from gossipd.wire import attach as proto
from gossipd.wire.errors import ShapeMismatch
from gossipd.wire.messages import Message, encode_message
from tests.conftest import DEFAULT_TASK
from tests.fake_network import FakeHub

CPU = torch.device("cpu")
TASK = b"P" * 16
HEAD = ("2.*",)  # the last layer of `model()`


def model(seed: int) -> nn.Sequential:
    torch.manual_seed(seed)
    net = nn.Sequential(nn.Linear(6, 8), nn.BatchNorm1d(8), nn.Linear(8, 3))
    net.train()
    net(torch.randn(5, 6))  # running statistics move off their defaults
    return net


def tensor(net: nn.Module, name: str) -> torch.Tensor:
    value: torch.Tensor = net.state_dict(keep_vars=True)[name]  # the parameter itself, not a copy
    return value


def task_text(gossip: str = "", train: str = "") -> str:
    text = DEFAULT_TASK.read_text()
    return text.replace("[gossip]", f"[gossip]\n{gossip}").replace("[train]", f"[train]\n{train}")


def parse(gossip: str = "", train: str = "") -> Any:
    return parse_task(task_text(gossip, train), file="p.toml", base_dir=DEFAULT_TASK.parent)


# -- which tensors -------------------------------------------------------------------------------------------


def test_patterns_pick_parameters_by_glob_and_the_layer_s_buffers_come_with_them() -> None:
    net = model(0)
    personal = personal_of(net, ["2.*"])
    assert personal.parameters == {"2.weight", "2.bias"}
    assert personal.values == 8 * 3 + 3
    batchnorm = personal_of(net, ["1.*"])  # its running statistics are personal too: no joiner gets them
    assert batchnorm.parameters == {"1.weight", "1.bias"}
    assert {"1.running_mean", "1.running_var", "1.num_batches_tracked"} <= batchnorm.state
    assert personal_names(["a.w", "a.b", "b.w"], ["a.w", "*.b"]) == {"a.w", "a.b"}
    assert personal_of(net, []) == Personal()


def test_a_pattern_that_matches_nothing_or_makes_everything_personal_is_an_error_naming_it() -> None:
    net = model(0)
    with pytest.raises(PersonalError, match=r"'fc2\.\*' matches no parameter.*0\.weight, 0\.bias, 1\.weight"):
        personal_of(net, ["2.*", "fc2.*"])
    with pytest.raises(PersonalError, match="matches no parameter"):
        personal_of(net, ["2.WEIGHT"])  # matching is case-sensitive
    with pytest.raises(PersonalError, match="every parameter personal"):
        personal_of(net, ["*"])


def test_mixed_parameters_leave_the_personal_ones_out() -> None:
    net = model(0)
    assert set(mixed_parameters(net)) == {"0.weight", "0.bias", "1.weight", "1.bias", "2.weight", "2.bias"}
    assert set(mixed_parameters(net, frozenset({"2.weight", "2.bias"}))) == {"0.weight", "0.bias", "1.weight", "1.bias"}
    state = {"a": 1, "b": 2}
    assert shared_part(state, frozenset({"a"})) == {"b": 2} and personal_part(state, frozenset({"a"})) == {"a": 1}


# -- the task file and its hash ------------------------------------------------------------------------------


def test_the_task_file_reads_personal_and_its_hash_follows_the_patterns_not_their_order() -> None:
    plain = parse()
    task = parse('personal = ["classifier.3.*", "classifier.0.bias"]')
    assert task.gossip.personal == ("classifier.3.*", "classifier.0.bias")
    assert task.hash != plain.hash  # peers must agree on what they mix
    assert parse('personal = ["classifier.0.bias", "classifier.3.*"]').hash == task.hash
    assert parse('personal = ["classifier.3.*"]').hash != task.hash
    assert parse("personal = []").hash == plain.hash  # tasks without it keep the hash they had
    local_choice = parse('personal = ["classifier.3.*"]', "total_steps = 10\npersonal_steps = 50")
    assert local_choice.train.personal_steps == 50
    assert local_choice.hash == parse('personal = ["classifier.3.*"]').hash  # fine-tuning is each peer's own
    assert local_choice.train.personal_training == "local"
    frozen = parse('personal = ["classifier.3.*"]', 'personal_training = "frozen"')
    assert frozen.train.personal_training == "frozen"
    assert frozen.hash == local_choice.hash  # so is freezing: the same parameters mix either way


@pytest.mark.parametrize(
    ("gossip", "train", "complaint"),
    [
        ('personal = [""]', "", r"gossip\.personal\[0\].*empty pattern"),
        ('personal = "classifier.*"', "", "expected an array of strings"),
        ("", "total_steps = 10\npersonal_steps = 5", r"personal_steps.*\[gossip\] personal"),
        ('personal = ["classifier.3.*"]', "personal_steps = 5", r"personal_steps.*total_steps"),
        ('personal = ["classifier.3.*"]', "total_steps = 10\npersonal_steps = -1", "personal_steps"),
        ('personal = ["classifier.3.*"]', 'personal_training = "fixed"', r"train\.personal_training.*'frozen'"),
        ('personal = ["classifier.3.*"]', "personal_training = true", r"train\.personal_training"),
        ("", 'personal_training = "frozen"', r"train\.personal_training.*\[gossip\] personal"),
    ],
)
def test_a_bad_personal_setting_is_an_error_naming_the_key(gossip: str, train: str, complaint: str) -> None:
    with pytest.raises(TaskError, match=complaint):
        parse(gossip, train)


def test_the_command_line_sets_personal_training_checked_as_a_task_file_would_be() -> None:
    task = with_personal(parse(), ["classifier.3.*"], 5, "frozen")
    assert task.train.personal_training == "frozen" and task.train.personal_steps == 5
    assert task.hash == with_personal(parse(), ["classifier.3.*"], 5, "local").hash
    assert with_personal(task, [], None).train.personal_training == "frozen"  # None: the task's own
    with pytest.raises(TaskError, match=r"command line: train\.personal_training.*expected"):
        with_personal(parse(), ["classifier.3.*"], 5, "fixed")
    with pytest.raises(TaskError, match=r"personal_training.*\[gossip\] personal"):
        with_personal(parse(), [], None, "frozen")


# -- an attached script's layout -----------------------------------------------------------------------------


def _hello(entries: list[proto.Entry], gossip: str = "", train: str = "") -> dict[str, Any]:
    task = f'[task]\nid = "attached"\n\n[gossip]\nalgorithm = "plain"\n{gossip}\n[train]\n{train}\n'
    layout = proto.entries_to_wire(entries)
    return {"t": "hello", "v": proto.VERSION, "task": task, "file": "/x/t.toml", "base": "/x", "layout": layout}


BODY = [proto.Entry("body.weight", (4, 6), "float32", True), proto.Entry("bn.running_mean", (4,), "float32", False)]


def test_scripts_whose_personal_heads_differ_in_shape_share_a_task_hash_and_others_do_not() -> None:
    three = [*BODY, proto.Entry("head.weight", (3, 4), "float32", True)]
    five = [*BODY, proto.Entry("head.weight", (5, 4), "float32", True)]
    personal = 'personal = ["head.*"]'
    a = read_hello({**_hello(three, personal), "pid": 1, "step": 0, "device": "cpu"})
    b = read_hello({**_hello(five, personal), "pid": 2, "step": 0, "device": "cpu"})
    assert a.task.hash == b.task.hash
    assert a.personal.parameters == {"head.weight"} and a.task.model.options.parameters == 24
    unpersonal = [read_hello({**_hello(e), "pid": 1, "step": 0, "device": "cpu"}) for e in (three, five)]
    assert unpersonal[0].task.hash != unpersonal[1].task.hash
    body = proto.SharedLayout.of(BODY)
    assert proto.SharedLayout.of(three).digest(frozenset({"head.weight"})) == body.digest()


def test_an_attached_task_refuses_a_pattern_its_model_lacks_and_personal_steps() -> None:
    hello = {**_hello(BODY, 'personal = ["head.*"]'), "pid": 1, "step": 0, "device": "cpu"}
    with pytest.raises(TaskError, match=r"gossip\.personal: pattern 'head\.\*' matches no parameter.*body\.weight"):
        read_hello(hello)
    hello = {
        **_hello([*BODY, proto.Entry("head.b", (3,), "float32", True)], 'personal = ["head.*"]', "personal_steps = 3")
    }
    with pytest.raises(TaskError, match=r"train\.personal_steps"):
        read_hello({**hello, "pid": 1, "step": 0, "device": "cpu"})
    # Nor does gossipd freeze a script's head: the script owns its optimiser (the README says how).
    hello = _hello([*BODY, proto.Entry("head.b", (3,), "float32", True)], 'personal = ["head.*"]', FROZEN)
    with pytest.raises(TaskError, match=r"train\.personal_training: an attached script trains by itself"):
        read_hello({**hello, "pid": 1, "step": 0, "device": "cpu"})


FROZEN = 'personal_training = "frozen"'


# -- nothing personal on the wire ----------------------------------------------------------------------------


def _session(net: nn.Module, layout: ParamLayout, ends: bytes, section: GossipSection, edge: Any) -> ExchangeSession:
    return ExchangeSession(
        algorithm=make_algorithm(section),
        params={n: p.detach() for n, p in net.named_parameters()},  # all of them: the layout decides what mixes
        layout=layout,
        self_id=ends[:1],
        peer_id=ends[1:],
        edge=edge,
        degree=1,
        task=TASK,
        fixed_weight=0.5,
        rng=random.Random(0),
        device=CPU,
    )


@pytest.mark.parametrize(
    "section",
    [
        GossipSection(algorithm="plain", config=PlainConfig()),
        GossipSection(algorithm="powergossip", config=PowerGossipConfig(rank=1)),
        GossipSection(algorithm="choco", config=ChocoConfig(compressor="sign", gamma=0.45)),
    ],
    ids=["plain", "powergossip", "choco"],
)
def test_an_exchange_never_sends_or_changes_personal_parameters(
    section: GossipSection, monkeypatch: pytest.MonkeyPatch
) -> None:
    nets = [model(0), model(1)]
    personal = personal_of(nets[0], HEAD).parameters
    heads = [{n: t.detach().clone() for n, t in net.named_parameters() if n in personal} for net in nets]
    for net, value in zip(nets, (7.25, -3.5), strict=True):
        with torch.no_grad():
            tensor(net, "2.weight").fill_(
                value
            )  # a value no shared tensor holds: its bytes would stand out on the wire
    layout = ParamLayout.of(mixed_parameters(nets[0], personal))
    sent: list[bytes] = []
    encode = encode_message

    def recording(message: Message) -> bytes:
        wire = encode(message)
        sent.append(message.data)
        return wire

    monkeypatch.setattr("gossipd.mixing.local.encode_message", recording)
    shared_bytes = sum(t.numel() * 4 for n, t in nets[0].named_parameters() if n not in personal)
    edges: list[Any] = [None, None]
    for _ in range(3):
        ends = [
            _session(nets[0], layout, b"ab", section, edges[0]),
            _session(nets[1], layout, b"ba", section, edges[1]),
        ]
        local.run_pair(ends[0], ends[1], max_message_bytes=max_message_bytes(layout))
        for i, end in enumerate(ends):
            result = end.result()
            assert personal.isdisjoint(result.delta)
            with torch.no_grad():
                for name, change in result.delta.items():
                    dict(nets[i].named_parameters())[name].add_(change)
            edges[i] = result.edge
    assert sent and all(len(data) <= shared_bytes for data in sent)
    for value in (7.25, -3.5):
        needle = torch.full((3,), value).numpy().tobytes()
        assert not any(needle in data for data in sent), "a personal tensor's bytes went on the wire"
    for net, value, head in zip(nets, (7.25, -3.5), heads, strict=True):
        assert torch.all(tensor(net, "2.weight") == value)
        assert torch.equal(tensor(net, "2.bias"), head["2.bias"])
    assert not torch.equal(tensor(nets[0], "0.weight"), tensor(model(0), "0.weight"))  # the shared part did mix


class _Host:
    """The part of a ModelHost that serving a state uses."""

    def __init__(self, net: nn.Module) -> None:
        self.net = net
        self.step = 12

    async def at_boundary(self, action: Any) -> Any:
        return action()

    def model_state(self) -> dict[str, torch.Tensor]:
        return {k: v.clone() for k, v in self.net.state_dict().items()}


async def test_a_state_transfer_sends_the_shared_state_only() -> None:
    donor, joiner = model(0), model(1)
    personal = personal_of(donor, ["1.*", "2.*"])  # a personal BatchNorm keeps its statistics home too
    specs = state_specs(shared_part(joiner.state_dict(), personal.state))
    async with trio.open_nursery() as nursery:
        hub = FakeHub(nursery, random.Random(0))
        serving, fetching = hub.add_peer("donor"), hub.add_peer("joiner")

        async def serve(stream: FrameStream) -> None:
            await stream.receive(1 << 16)  # the request (the daemon routes it by task hash)
            await serve_state(stream, _Host(donor), task_hash=TASK, half=False, personal=personal.state)  # type: ignore[arg-type]

        serving.set_handler(STATE_PROTOCOL, serve)
        state, step, received = await fetch_state(fetching, "donor", task_hash=TASK, specs=specs, device=CPU)
        full = state_specs(joiner.state_dict())
        with pytest.raises(ShapeMismatch):  # what came is exactly the shared state, no personal bytes
            await fetch_state(fetching, "donor", task_hash=TASK, specs=full, device=CPU)
        nursery.cancel_scope.cancel()
    assert set(state) == {"0.weight", "0.bias"} and step == 12
    assert received < sum(t.numel() * t.element_size() for t in donor.state_dict().values())
    assert torch.equal(state["0.weight"], tensor(donor, "0.weight"))


# -- fine-tuning the personal part ---------------------------------------------------------------------------


def test_personal_steps_change_only_the_personal_parameters_and_not_the_step_count() -> None:
    g = torch.Generator().manual_seed(0)
    x = torch.randn(64, 6, generator=g)
    data = ArrayDataset(x, (x[:, 0] > 0).long() + (x[:, 1] > 0).long())
    torch.manual_seed(0)
    net = nn.Sequential(nn.Linear(6, 8), nn.ReLU(), nn.Linear(8, 3))  # no buffers: the state is the parameters
    trainer = Trainer(net, TrainSection(lr=0.1, total_steps=10), data, kind="classification", device=CPU, seed=0)
    before = {k: v.clone() for k, v in net.state_dict().items()}
    personal = personal_of(net, HEAD).parameters
    stats = trainer.train_personal(5, personal, horizon=5)
    after = net.state_dict()
    assert stats.steps == 5 and trainer.personal_steps == 5 and trainer.step == 0
    assert all(torch.equal(after[k], before[k]) for k in before if k not in personal)
    assert all(not torch.equal(after[k], before[k]) for k in personal)
    resumed = Trainer(
        nn.Sequential(nn.Linear(6, 8), nn.ReLU(), nn.Linear(8, 3)),
        TrainSection(lr=0.1),
        data,
        kind="classification",
        device=CPU,
        seed=0,
    )
    resumed.load_state_dict(trainer.state_dict())
    assert resumed.personal_steps == 5


def _two_layers() -> tuple[nn.Sequential, ArrayDataset]:
    g = torch.Generator().manual_seed(0)
    x = torch.randn(64, 6, generator=g)
    torch.manual_seed(0)
    return nn.Sequential(nn.Linear(6, 8), nn.ReLU(), nn.Linear(8, 3)), ArrayDataset(x, (x[:, 0] > 0).long())


@pytest.mark.parametrize("privacy", [None, PrivacySection(noise_multiplier=1.0)], ids=["sgd", "dp-sgd"])
def test_a_frozen_personal_part_holds_still_while_training_and_moves_only_in_personal_steps(
    privacy: PrivacySection | None,
) -> None:
    net, data = _two_layers()
    personal = personal_of(net, HEAD).parameters
    # Weight decay, momentum and clipping would each move a parameter the optimiser held, even without gradient.
    section = TrainSection(lr=0.1, weight_decay=0.1, grad_clip=0.5, total_steps=10, personal_training="frozen")
    trainer = Trainer(net, section, data, kind="classification", device=CPU, seed=0, privacy=privacy, personal=personal)
    initial = {k: v.clone() for k, v in net.state_dict().items()}
    assert trainer.train_steps(5).steps == 5
    trained = {k: v.clone() for k, v in net.state_dict().items()}
    assert all(torch.equal(trained[k], initial[k]) for k in personal)
    assert all(not torch.equal(trained[k], initial[k]) for k in initial if k not in personal)
    assert all(tensor(net, k).grad is None for k in personal)  # never computed, so never in the clipping norm
    assert all(tensor(net, k).requires_grad for k in personal)  # still trainable: the layout is unchanged
    assert set(mixed_parameters(net, personal)) == {"0.weight", "0.bias"}  # what goes on the wire
    trainer.train_personal(5, personal, horizon=5)
    tuned = net.state_dict()
    assert all(not torch.equal(tuned[k], initial[k]) for k in personal)
    assert all(torch.equal(tuned[k], trained[k]) for k in initial if k not in personal)


def test_a_local_personal_part_trains_with_the_rest_and_a_checkpoint_crosses_modes() -> None:
    net, data = _two_layers()
    personal = personal_of(net, HEAD).parameters
    trainer = Trainer(net, TrainSection(lr=0.1), data, kind="classification", device=CPU, seed=0, personal=personal)
    initial = {k: v.clone() for k, v in net.state_dict().items()}
    trainer.train_steps(3)
    assert all(not torch.equal(net.state_dict()[k], initial[k]) for k in initial)
    other, _ = _two_layers()
    section = TrainSection(lr=0.1, personal_training="frozen")
    frozen = Trainer(other, section, data, kind="classification", device=CPU, seed=0, personal=personal)
    frozen.load_state_dict(trainer.state_dict())  # the optimiser held the head: its momentum starts afresh
    assert frozen.step == 3 and all(torch.equal(other.state_dict()[k], net.state_dict()[k]) for k in initial)
    held = {k: tensor(other, k).clone() for k in personal}
    frozen.train_steps(2)
    assert all(torch.equal(tensor(other, k), held[k]) for k in personal)
