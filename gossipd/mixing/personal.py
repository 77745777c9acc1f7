"""Personal parameters (`[gossip] personal`): the tensors a peer keeps to itself.

A task may name parameters by glob patterns (`fnmatch`, case-sensitive: `"classifier.3.*"`). Those are never
mixed and never leave the peer: exchanges carry only the other (shared) parameters, a joining peer copies
only a neighbour's shared state and keeps its own personal part, and the task hash covers the patterns, not
the personal tensors' shapes. What is personal is decided by names alone, so both ends of an edge agree on
it without a word on the wire.
"""

from __future__ import annotations

import fnmatch
import math
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass
from typing import TypeVar

T = TypeVar("T")
_LISTED = 12  # parameter names an error message lists before "..."


class PersonalError(ValueError):
    """`[gossip] personal` does not fit the model: a pattern matches no parameter, or all of them match."""


@dataclass(frozen=True)
class Personal:
    """What of one model stays with the peer: the `patterns` as the task gives them, the trainable
    `parameters` they match (never mixed), the `state` entries they match (those parameters and their layers'
    buffers, such as a BatchNorm's running statistics: never sent to a joining peer), and how many values
    the personal parameters hold."""

    patterns: tuple[str, ...] = ()
    parameters: frozenset[str] = frozenset()
    state: frozenset[str] = frozenset()
    values: int = 0

    @classmethod
    def of(cls, parameters: Mapping[str, Sequence[int]], state: Iterable[str], patterns: Sequence[str]) -> Personal:
        """From a model's trainable parameters (name to shape) and state entry names; PersonalError if the
        patterns do not fit."""
        if not patterns:
            return cls()
        names = personal_names(parameters, patterns)
        return cls(
            patterns=tuple(patterns),
            parameters=names,
            state=personal_state_names(state, patterns) | names,
            values=sum(math.prod(parameters[name]) for name in names),
        )


def personal_names(parameters: Iterable[str], patterns: Sequence[str]) -> frozenset[str]:
    """The parameter names the patterns match. Raises PersonalError for a pattern that matches none (a typo
    would otherwise silently mix what the user meant to keep) or when every parameter would be personal
    (nothing would be mixed: that is training alone, not gossip)."""
    names = list(parameters)
    matched: set[str] = set()
    for pattern in patterns:
        hits = [name for name in names if fnmatch.fnmatchcase(name, pattern)]
        if not hits:
            raise PersonalError(
                f"pattern {pattern!r} matches no parameter of the model; its parameters are: {_list(names)}"
            )
        matched.update(hits)
    if names and matched >= set(names):
        raise PersonalError(
            f"patterns {list(patterns)} make every parameter personal ({_list(names)}): nothing would be mixed"
        )
    return frozenset(matched)


def personal_state_names(state: Iterable[str], patterns: Sequence[str]) -> frozenset[str]:
    """The entries of a model's state (parameters and buffers) the patterns match: a personal layer's buffers
    (a BatchNorm's running statistics) stay with it and are not copied to a joining peer either."""
    names = list(state)
    return frozenset(name for name in names if any(fnmatch.fnmatchcase(name, p) for p in patterns))


def shared_part(tensors: Mapping[str, T], personal: frozenset[str]) -> dict[str, T]:
    """The entries that may leave the peer."""
    return {name: value for name, value in tensors.items() if name not in personal}


def personal_part(tensors: Mapping[str, T], personal: frozenset[str]) -> dict[str, T]:
    """The entries that stay with the peer."""
    return {name: value for name, value in tensors.items() if name in personal}


def _list(names: Sequence[str]) -> str:
    shown = ", ".join(names[:_LISTED])
    return shown + (f", ... ({len(names)} in all)" if len(names) > _LISTED else "") if names else "(none)"
