"""The model architectures a task can name, and the one entry point that builds a peer's initial model."""

from __future__ import annotations

from collections.abc import Callable, Mapping
from typing import Any, NamedTuple

import torch
from torch import nn

from gossipd.data.spec import InputSpec
from gossipd.models import char_transformer, cnn, cnn_pytorch_example, custom, logistic, mlp, resnet20
from gossipd.models.errors import ModelError
from gossipd.task.schema import ModelSection


class ModelEntry(NamedTuple):
    config_type: type[Any]
    build: Callable[[Any, InputSpec], nn.Module]


MODELS: Mapping[str, ModelEntry] = {
    "logistic": ModelEntry(logistic.LogisticConfig, logistic.build),
    "mlp": ModelEntry(mlp.MLPConfig, mlp.build),
    "cnn": ModelEntry(cnn.CNNConfig, cnn.build),
    "cnn-pytorch-example": ModelEntry(cnn_pytorch_example.CNNPyTorchExampleConfig, cnn_pytorch_example.build),
    "resnet20": ModelEntry(resnet20.ResNet20Config, resnet20.build),
    "char-transformer": ModelEntry(char_transformer.CharTransformerConfig, char_transformer.build),
    "custom": ModelEntry(custom.CustomModelConfig, custom.build),
}


def build_model(section: ModelSection, spec: InputSpec, seed: int) -> nn.Module:
    """Build the task's model with weights drawn from `seed`; ModelError if it does not fit the data.

    Peers never exchange initial weights: each builds its own from the task seed, so the weights must be
    bit-identical everywhere, whatever the process has drawn before. The caller's RNG state is restored.
    """
    entry = MODELS.get(section.name)
    if entry is None:
        raise ModelError(f"unknown model {section.name!r}; expected one of: {', '.join(sorted(MODELS))}")
    if not isinstance(section.options, entry.config_type):
        raise ModelError(
            f"model {section.name!r} needs options of type {entry.config_type.__name__}, "
            f"found {type(section.options).__name__}"
        )
    # Models are built on the CPU, so only the CPU generator is forked and seeded; `torch.manual_seed`
    # would also reseed every CUDA generator, outside what `fork_rng(devices=[])` restores.
    with torch.random.fork_rng(devices=[]):
        torch.default_generator.manual_seed(seed)
        return entry.build(section.options, spec)


def count_parameters(model: nn.Module) -> int:
    """All parameters, trainable or not, each shared tensor once; buffers (BN statistics) do not count."""
    return sum(p.numel() for p in model.parameters())
