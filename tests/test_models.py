"""The built-in models: shapes, seeded initialisation, spec checks, causality, and that each one can learn."""

from __future__ import annotations

import dataclasses
import math
import sys
import textwrap
from pathlib import Path
from typing import Any

import pytest
import torch
import torch.nn.functional as F
from torch import nn

from gossipd.data.spec import InputSpec
from gossipd.models.cnn import CNNConfig
from gossipd.models.custom import CustomModelConfig
from gossipd.models.errors import ModelError
from gossipd.models.mlp import MLPConfig
from gossipd.models.registry import MODELS, build_model, count_parameters
from gossipd.task.fields import Where, read_table
from gossipd.task.loader import load_task
from gossipd.task.schema import ModelSection
from tests.conftest import REPO

MNIST = InputSpec(kind="classification", input_shape=(1, 28, 28), num_classes=10)
CIFAR = InputSpec(kind="classification", input_shape=(3, 32, 32), num_classes=10)
TABULAR = InputSpec(kind="classification", input_shape=(12,), num_classes=3)
CHARS = InputSpec(kind="language", input_shape=(16,), num_classes=11)
BUILT_IN = ("logistic", "mlp", "cnn", "cnn-pytorch-example", "resnet20", "char-transformer")


def build(name: str, spec: InputSpec, seed: int = 0, **options: Any) -> nn.Module:
    section = ModelSection(name=name, options=MODELS[name].config_type(**options))
    return build_model(section, spec, seed)


def example_input(spec: InputSpec, batch: int, generator: torch.Generator) -> torch.Tensor:
    if spec.kind == "language":
        return torch.randint(spec.num_classes, (batch, spec.input_shape[0]), generator=generator)
    return torch.randn(batch, *spec.input_shape, generator=generator)


def spec_for(name: str) -> InputSpec:
    images = {"cnn": MNIST, "cnn-pytorch-example": MNIST, "resnet20": MNIST}
    return {"logistic": TABULAR, "mlp": TABULAR, **images}.get(name, CHARS)


# --- the registry -------------------------------------------------------------------------------------------


def test_registry_names_and_configs() -> None:
    assert set(MODELS) == {*BUILT_IN, "custom"}
    for entry in MODELS.values():
        params = entry.config_type.__dataclass_params__
        assert params.frozen
        assert all(f.kw_only for f in dataclasses.fields(entry.config_type))


def test_configs_read_from_a_task_table() -> None:
    where = Where("task.toml", "model")
    assert read_table(MLPConfig, {"hidden": [32, 16], "dropout": 0.1}, where) == MLPConfig(hidden=(32, 16), dropout=0.1)
    assert read_table(CNNConfig, {"channels": [8]}, where) == CNNConfig(channels=(8,))
    custom = read_table(CustomModelConfig, {"function": "m:f", "options": {"width": 3}}, where)
    assert custom == CustomModelConfig(function="m:f", options={"width": 3})
    for name in BUILT_IN:
        read_table(MODELS[name].config_type, {}, where)  # every built-in has defaults for every field


def test_unknown_name_or_wrong_options_type() -> None:
    with pytest.raises(ModelError, match="unknown model 'vgg'"):
        build_model(ModelSection(name="vgg", options=None), MNIST, 0)
    with pytest.raises(ModelError, match="MLPConfig"):
        build_model(ModelSection(name="mlp", options=CNNConfig()), MNIST, 0)


# --- shapes and sizes ---------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("name", "spec"),
    [
        ("logistic", MNIST),
        ("logistic", CIFAR),
        ("logistic", TABULAR),
        ("mlp", MNIST),
        ("mlp", CIFAR),
        ("mlp", TABULAR),
        ("cnn", MNIST),
        ("cnn", CIFAR),
        ("cnn-pytorch-example", MNIST),
        ("cnn-pytorch-example", CIFAR),
        ("resnet20", MNIST),
        ("resnet20", CIFAR),
        ("char-transformer", CHARS),
    ],
)
def test_output_shape(name: str, spec: InputSpec) -> None:
    model = build(name, spec).eval()
    x = example_input(spec, 3, torch.Generator().manual_seed(0))
    with torch.no_grad():
        logits = model(x)
    expected = (3, spec.input_shape[0], spec.num_classes) if spec.kind == "language" else (3, spec.num_classes)
    assert logits.shape == expected
    assert logits.dtype == torch.float32


def test_char_transformer_accepts_shorter_sequences() -> None:
    model = build("char-transformer", CHARS).eval()
    with torch.no_grad():
        assert model(torch.zeros(2, 5, dtype=torch.long)).shape == (2, 5, CHARS.num_classes)


BLOCK_128 = 2 * (2 * 128) + (128 * 384 + 384) + (128 * 128 + 128) + (128 * 512 + 512) + (512 * 128 + 128)


@pytest.mark.parametrize(
    ("name", "spec", "expected"),
    [
        ("logistic", MNIST, 784 * 10 + 10),
        ("mlp", MNIST, (784 * 200 + 200) + (200 * 200 + 200) + (200 * 10 + 10)),
        ("cnn", MNIST, (25 * 16 + 16) + (16 * 25 * 32 + 32) + (7 * 7 * 32 * 64 + 64) + (64 * 10 + 10)),
        # pytorch/examples mnist/main.py's Net: conv1, conv2, fc1 (64 * 12 * 12 = 9216 inputs), fc2
        ("cnn-pytorch-example", MNIST, 1_199_882),
        # on 32x32 fc1 sees 64 * 14 * 14 inputs; conv1 sees 3 input channels
        ("cnn-pytorch-example", CIFAR, 1_199_882 + 9 * 2 * 32 + (14 * 14 - 12 * 12) * 64 * 128),
        ("resnet20", MNIST, 272_474 - 2 * 9 * 16),  # the stem sees 1 input channel instead of 3
        # the papers' ResNet-20 on CIFAR-10 (epfml/ChocoSGD, epfml/powergossip)
        ("resnet20", CIFAR, 272_474),
        # wte + wpe + 2 blocks + final LN + head (no bias); a block is 2 LNs, qkv, proj, fc, proj
        (
            "char-transformer",
            InputSpec(kind="language", input_shape=(64,), num_classes=65),
            65 * 128 + 64 * 128 + 2 * BLOCK_128 + 2 * 128 + 128 * 65,
        ),
    ],
)
def test_parameter_count(name: str, spec: InputSpec, expected: int) -> None:
    assert count_parameters(build(name, spec)) == expected


def test_resnet_depth_scales_blocks() -> None:
    # Each extra block per stage adds two 3x3 convs + two BNs in each of the three stages.
    per_block = sum(2 * (9 * w * w + 2 * w) for w in (16, 32, 64))
    assert count_parameters(build("resnet20", CIFAR, depth=32)) == 272_474 + 2 * per_block


@pytest.mark.parametrize("name", [*BUILT_IN])
def test_every_parameter_is_its_own_tensor(name: str) -> None:
    # The gossip layer mixes tensor by tensor; a tied tensor would be mixed once per owner.
    model = build(name, spec_for(name))
    assert len(list(model.named_parameters(remove_duplicate=False))) == len(list(model.parameters()))


# --- seeded initialisation ----------------------------------------------------------------------------------


def same_state(a: nn.Module, b: nn.Module) -> bool:
    sa, sb = a.state_dict(), b.state_dict()
    return sa.keys() == sb.keys() and all(torch.equal(sa[k], sb[k]) for k in sa)


@pytest.mark.parametrize("name", [*BUILT_IN])
def test_same_seed_same_weights_whatever_was_drawn_before(name: str) -> None:
    spec = spec_for(name)
    torch.manual_seed(1)
    first = build(name, spec, seed=7)
    torch.manual_seed(2)
    torch.rand(100)
    second = build(name, spec, seed=7)
    assert same_state(first, second)
    assert not same_state(first, build(name, spec, seed=8))


def test_build_leaves_the_global_rng_alone() -> None:
    torch.manual_seed(123)
    expected = torch.rand(5)
    torch.manual_seed(123)
    before = torch.get_rng_state()
    build("mlp", MNIST, seed=0)
    assert torch.equal(torch.get_rng_state(), before)
    assert torch.equal(torch.rand(5), expected)


# --- the char transformer is causal -------------------------------------------------------------------------


def test_char_transformer_is_causal() -> None:
    model = build("char-transformer", CHARS, n_layer=2, n_head=2, n_embd=32).eval()
    x = torch.randint(CHARS.num_classes, (2, 16), generator=torch.Generator().manual_seed(0))
    changed = x.clone()
    t = 9
    changed[:, t] = (x[:, t] + 1) % CHARS.num_classes
    with torch.no_grad():
        before, after = model(x), model(changed)
    torch.testing.assert_close(after[:, :t], before[:, :t], rtol=0, atol=1e-6)
    assert not torch.allclose(after[:, t:], before[:, t:])


def test_char_transformer_rejects_bad_input() -> None:
    model = build("char-transformer", CHARS)
    with pytest.raises(ModelError, match="block size 16"):
        model(torch.zeros(1, 17, dtype=torch.long))
    with pytest.raises(ModelError, match=r"\(B, T\)"):
        model(torch.zeros(16, dtype=torch.long))


# --- specs and configs that do not fit ----------------------------------------------------------------------


@pytest.mark.parametrize(
    ("name", "spec", "options", "message"),
    [
        ("logistic", CHARS, {}, "needs classification data"),
        ("logistic", InputSpec(kind="classification", input_shape=(4, 0), num_classes=3), {}, "positive"),
        ("logistic", InputSpec(kind="classification", input_shape=(4,), num_classes=0), {}, "one class"),
        ("mlp", CHARS, {}, "needs classification data"),
        ("mlp", TABULAR, {"hidden": (8, 0)}, r"hidden\[1\] must be ≥ 1"),
        ("mlp", TABULAR, {"dropout": 1.0}, "dropout"),
        ("cnn", CHARS, {}, "needs classification data"),
        ("cnn", TABULAR, {}, "3-D input shape"),
        ("cnn", InputSpec(kind="classification", input_shape=(28, 28), num_classes=10), {}, "3-D"),
        ("cnn", InputSpec(kind="classification", input_shape=(1, 3, 3), num_classes=10), {}, "too small"),
        ("cnn", MNIST, {"channels": (8, 8, 8, 8, 8)}, "too small"),
        ("cnn", MNIST, {"kernel_size": 0}, "kernel_size"),
        ("cnn-pytorch-example", CHARS, {}, "needs classification data"),
        ("cnn-pytorch-example", TABULAR, {}, "3-D input shape"),
        ("cnn-pytorch-example", InputSpec(kind="classification", input_shape=(1, 28, 5), num_classes=10), {}, "6x6"),
        ("resnet20", CHARS, {}, "needs classification data"),
        ("resnet20", TABULAR, {}, "3-D input shape"),
        ("resnet20", CIFAR, {"depth": 21}, "6n \\+ 2"),
        ("resnet20", CIFAR, {"depth": 2}, "6n \\+ 2"),
        ("resnet20", CIFAR, {"width": 0}, "width"),
        ("char-transformer", MNIST, {}, "needs language data"),
        ("char-transformer", InputSpec(kind="language", input_shape=(4, 4), num_classes=5), {}, "1-D"),
        ("char-transformer", CHARS, {"n_embd": 30, "n_head": 4}, "divisible by n_head"),
        ("char-transformer", CHARS, {"n_layer": 0}, "n_layer"),
    ],
)
def test_model_error_when_spec_or_config_does_not_fit(
    name: str, spec: InputSpec, options: dict[str, Any], message: str
) -> None:
    with pytest.raises(ModelError, match=message):
        build(name, spec, **options)


def test_cnn_fits_the_smallest_image_its_pooling_allows() -> None:
    spec = InputSpec(kind="classification", input_shape=(2, 4, 5), num_classes=3)
    assert build("cnn", spec)(torch.randn(2, 2, 4, 5)).shape == (2, 3)
    even = InputSpec(kind="classification", input_shape=(1, 9, 9), num_classes=3)
    assert build("cnn", even, kernel_size=4)(torch.randn(2, 1, 9, 9)).shape == (2, 3)


# --- the PyTorch example's CNN -----------------------------------------------------------------------------

# pytorch/examples mnist/main.py's `Net`, parameter by parameter: the names and shapes its state dict has.
PYTORCH_EXAMPLE_STATE = {
    "conv1.weight": (32, 1, 3, 3),
    "conv1.bias": (32,),
    "conv2.weight": (64, 32, 3, 3),
    "conv2.bias": (64,),
    "fc1.weight": (128, 9216),
    "fc1.bias": (128,),
    "fc2.weight": (10, 128),
    "fc2.bias": (10,),
}


def test_cnn_pytorch_example_has_the_example_layers() -> None:
    state = build("cnn-pytorch-example", MNIST).state_dict()
    assert {name: tuple(t.shape) for name, t in state.items()} == PYTORCH_EXAMPLE_STATE
    assert sum(math.prod(shape) for shape in PYTORCH_EXAMPLE_STATE.values()) == 1_199_882


class ExampleNet(nn.Module):
    """pytorch/examples mnist/main.py's `Net`, as published (its forward ends in log_softmax)."""

    def __init__(self) -> None:
        super().__init__()
        self.conv1 = nn.Conv2d(1, 32, 3, 1)
        self.conv2 = nn.Conv2d(32, 64, 3, 1)
        self.dropout1 = nn.Dropout(0.25)
        self.dropout2 = nn.Dropout(0.5)
        self.fc1 = nn.Linear(9216, 128)
        self.fc2 = nn.Linear(128, 10)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = F.relu(self.conv1(x))
        x = F.relu(self.conv2(x))
        x = F.max_pool2d(x, 2)
        x = self.dropout1(x)
        x = torch.flatten(x, 1)
        x = F.relu(self.fc1(x))
        x = self.dropout2(x)
        return F.log_softmax(self.fc2(x), dim=1)


def test_cnn_pytorch_example_computes_what_the_example_does() -> None:
    model = build("cnn-pytorch-example", MNIST).eval()
    example = ExampleNet().eval()
    example.load_state_dict(model.state_dict())
    x = torch.randn(8, 1, 28, 28, generator=torch.Generator().manual_seed(0))
    with torch.no_grad():
        torch.testing.assert_close(F.log_softmax(model(x), dim=1), example(x))


def test_cnn_pytorch_example_is_built_from_the_shipped_task_file() -> None:
    task = load_task(REPO / "tasks" / "mnist-pytorch-example.toml")
    assert task.model.name == "cnn-pytorch-example"
    model = build_model(task.model, MNIST, task.task.seed)
    assert count_parameters(model) == 1_199_882
    assert same_state(model, build("cnn-pytorch-example", MNIST, seed=task.task.seed))
    with torch.no_grad():
        assert model.eval()(torch.randn(4, 1, 28, 28)).shape == (4, 10)


def test_cnn_pytorch_example_returns_logits_and_drops_out_only_in_training() -> None:
    model = build("cnn-pytorch-example", MNIST)
    x = torch.randn(8, 1, 28, 28, generator=torch.Generator().manual_seed(0))
    with torch.no_grad():
        model.eval()
        first, second = model(x), model(x)
        model.train()
        torch.manual_seed(0)
        dropped = model(x)
    torch.testing.assert_close(first, second, rtol=0, atol=0)
    assert not torch.allclose(dropped, first)
    # Logits, not the example's log-probabilities: the trainer's cross-entropy applies the log-softmax.
    assert not torch.allclose(first.exp().sum(dim=1), torch.ones(8))


# --- custom models ------------------------------------------------------------------------------------------

CUSTOM_MODULE = """
    import math
    from torch import nn

    def tiny(spec, *, hidden=4):
        width = math.prod(spec.input_shape)
        return nn.Sequential(
            nn.Flatten(), nn.Linear(width, hidden), nn.ReLU(), nn.Linear(hidden, spec.num_classes)
        )

    class Factory:
        @staticmethod
        def create(spec):
            return tiny(spec, hidden=2)

    def fails(spec):
        raise RuntimeError("no GPU here")

    def returns_a_number(spec):
        return 42

    NOT_CALLABLE = 3
"""


@pytest.fixture
def custom_module(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> str:
    """A user module on sys.path, named `gossipd_test_user_models`; removed from sys.modules afterwards."""
    name = "gossipd_test_user_models"
    (tmp_path / f"{name}.py").write_text(textwrap.dedent(CUSTOM_MODULE))
    (tmp_path / "gossipd_test_broken.py").write_text("raise OSError('disk on fire')\n")
    for module in (name, "gossipd_test_broken"):
        monkeypatch.delitem(sys.modules, module, raising=False)
    monkeypatch.syspath_prepend(str(tmp_path))
    return name


def build_custom(function: str, spec: InputSpec = TABULAR, seed: int = 0, **options: Any) -> nn.Module:
    config = CustomModelConfig(function=function, options=options)
    return build_model(ModelSection(name="custom", options=config), spec, seed)


def test_custom_model_is_built_with_options_and_seed(custom_module: str) -> None:
    model = build_custom(f"{custom_module}:tiny", hidden=6)
    assert model(torch.randn(5, 12)).shape == (5, 3)
    assert count_parameters(model) == (12 * 6 + 6) + (6 * 3 + 3)
    assert same_state(model, build_custom(f"{custom_module}:tiny", hidden=6))
    assert not same_state(model, build_custom(f"{custom_module}:tiny", seed=1, hidden=6))
    assert count_parameters(build_custom(f"{custom_module}:Factory.create")) == (12 * 2 + 2) + (2 * 3 + 3)


@pytest.mark.parametrize(
    ("function", "options", "cause"),
    [
        ("no_colon_here", {}, "expected the form"),
        (":tiny", {}, "expected the form"),
        ("{m}:", {}, "expected the form"),
        ("{m}:tiny:extra", {}, "expected the form"),
        ("{m}:Factory..create", {}, "expected the form"),
        ("gossipd_test_no_such_module:f", {}, "cannot import 'gossipd_test_no_such_module'"),
        ("gossipd_test_broken:f", {}, "raised OSError: disk on fire"),
        ("{m}:missing", {}, "has no attribute 'missing'"),
        ("{m}:Factory.missing", {}, r"'{m}\.Factory' has no attribute 'missing'"),
        ("{m}:NOT_CALLABLE", {}, r"not callable \(found int\)"),
        ("{m}:fails", {}, "raised RuntimeError: no GPU here"),
        ("{m}:tiny", {"bogus": 1}, "raised TypeError"),
        ("{m}:returns_a_number", {}, "returned int, expected a torch.nn.Module"),
    ],
)
def test_custom_model_failures_are_model_errors(
    custom_module: str, function: str, options: dict[str, Any], cause: str
) -> None:
    function = function.replace("{m}", custom_module)
    with pytest.raises(ModelError) as caught:
        build_custom(function, **options)
    message = str(caught.value)
    assert repr(function) in message
    assert caught.match(cause.replace("{m}", custom_module))


# --- every model can learn ----------------------------------------------------------------------------------

OVERFIT_CASES: dict[str, tuple[InputSpec, dict[str, Any], float]] = {
    "logistic": (TABULAR, {}, 0.05),
    "mlp": (TABULAR, {"hidden": (32, 32)}, 0.01),
    "cnn": (InputSpec(kind="classification", input_shape=(1, 12, 12), num_classes=4), {}, 0.01),
    "cnn-pytorch-example": (InputSpec(kind="classification", input_shape=(1, 12, 12), num_classes=4), {}, 0.001),
    "resnet20": (InputSpec(kind="classification", input_shape=(3, 8, 8), num_classes=4), {}, 0.01),
    "char-transformer": (CHARS, {"n_layer": 1, "n_head": 2, "n_embd": 32}, 0.01),
}


def overfit(model: nn.Module, x: torch.Tensor, y: torch.Tensor, lr: float, steps: int) -> tuple[float, float]:
    def loss_of() -> torch.Tensor:
        return F.cross_entropy(model(x).flatten(0, -2), y.flatten())

    optimizer = torch.optim.Adam(model.parameters(), lr=lr)
    first = loss_of().item()
    for _ in range(steps):
        optimizer.zero_grad()
        loss = loss_of()
        loss.backward()  # type: ignore[no-untyped-call]
        optimizer.step()
    return first, loss_of().item()


@pytest.mark.parametrize("name", [*BUILT_IN])
def test_loss_falls_when_overfitting_a_tiny_batch(name: str) -> None:
    spec, options, lr = OVERFIT_CASES[name]
    generator = torch.Generator().manual_seed(0)
    x = example_input(spec, 16, generator)
    if spec.kind == "language":
        y = torch.randint(spec.num_classes, x.shape, generator=generator)
    else:
        y = torch.randint(spec.num_classes, (16,), generator=generator)
    model = build(name, spec, **options).train()
    first, last = overfit(model, x, y, lr, steps=40)
    assert last < 0.25 * first, (first, last)
