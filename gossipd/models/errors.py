"""The one error a model builder raises, and the spec checks every builder shares."""

from __future__ import annotations

from gossipd.data.spec import InputSpec, Kind


class ModelError(ValueError):
    """A model cannot be built for this input spec and config; the message says why."""


def check_spec(spec: InputSpec, *, model: str, kind: Kind, ndim: int | None = None) -> None:
    """Raise `ModelError` unless `spec` is of `kind` (with an `ndim`-D input shape, when given).

    Checked here rather than left to the first forward pass, so a task that pairs a model with the wrong
    data fails when it is loaded, with a message that names both.
    """
    if spec.kind != kind:
        raise ModelError(f"{model} needs {kind} data, but the data is {spec.kind}")
    if ndim is not None and len(spec.input_shape) != ndim:
        raise ModelError(f"{model} needs a {ndim}-D input shape, but the data has shape {spec.input_shape}")
    if not spec.input_shape or any(d < 1 for d in spec.input_shape):
        raise ModelError(f"{model} needs a non-empty input shape of positive sizes, found {spec.input_shape}")
    if spec.num_classes < 1:
        raise ModelError(f"{model} needs at least one class, found num_classes = {spec.num_classes}")


def check_at_least(value: int, low: int, *, name: str) -> None:
    """Raise `ModelError` unless config field `name` is ≥ `low` (configs built in code skip the loader)."""
    if value < low:
        raise ModelError(f"{name} must be ≥ {low}, found {value}")


def check_dropout(p: float) -> None:
    if not 0.0 <= p < 1.0:
        raise ModelError(f"dropout must be in [0, 1), found {p}")
