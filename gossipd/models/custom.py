"""A model from the user's own code: `function = "package.module:callable"`, called with the data's spec.

Every way this can go wrong becomes a `ModelError` that names the function, so a bad task file is reported
like any other instead of surfacing as an ImportError or a traceback from inside the user's module.
"""

from __future__ import annotations

import importlib
from dataclasses import dataclass, field
from typing import Any

from torch import nn

from gossipd.data.spec import InputSpec
from gossipd.models.errors import ModelError


@dataclass(frozen=True, kw_only=True)
class CustomModelConfig:
    """`[model] name = "custom"`.

    function: "package.module:callable" (the callable may be a dotted path, "module:Class.create"); it is
        called as `callable(spec, **options)` and must return a `torch.nn.Module`.
    options: keyword arguments passed through to it (`[model.options]` in the task file).
    """

    function: str
    options: dict[str, Any] = field(default_factory=dict)


def resolve(function: str) -> Any:
    """Import `module:attr.path` and return the attribute; ModelError if any part is missing."""
    module_name, sep, attr_path = function.partition(":")
    names = attr_path.split(".")
    if not sep or not module_name or not all(names) or ":" in attr_path:
        raise ModelError(f"custom model {function!r}: expected the form 'package.module:callable'")
    try:
        target: Any = importlib.import_module(module_name)
    except ModuleNotFoundError as exc:
        raise ModelError(f"custom model {function!r}: cannot import {module_name!r}: {exc}") from exc
    except Exception as exc:  # the user's module failed while it was being imported
        raise ModelError(
            f"custom model {function!r}: importing {module_name!r} raised {type(exc).__name__}: {exc}"
        ) from exc
    for depth, name in enumerate(names):
        try:
            target = getattr(target, name)
        except AttributeError:
            where = ".".join([module_name, *names[:depth]])
            raise ModelError(f"custom model {function!r}: {where!r} has no attribute {name!r}") from None
    return target


def build(config: CustomModelConfig, spec: InputSpec) -> nn.Module:
    factory = resolve(config.function)
    if not callable(factory):
        raise ModelError(f"custom model {config.function!r}: not callable (found {type(factory).__name__})")
    try:
        model = factory(spec, **config.options)
    except Exception as exc:  # user code: any failure means the model cannot be built
        raise ModelError(f"custom model {config.function!r}: raised {type(exc).__name__}: {exc}") from exc
    if not isinstance(model, nn.Module):
        raise ModelError(
            f"custom model {config.function!r}: returned {type(model).__name__}, expected a torch.nn.Module"
        )
    return model
