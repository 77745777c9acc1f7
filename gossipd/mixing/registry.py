"""The mixing algorithms a task can choose with `[gossip] algorithm`."""

from __future__ import annotations

from collections.abc import Callable, Mapping
from typing import Any, NamedTuple

from gossipd.mixing.algorithm import Algorithm
from gossipd.mixing.auto import AutoConfig, AutoGossip
from gossipd.mixing.choco import ChocoConfig, ChocoGossip
from gossipd.mixing.plain import PlainConfig, PlainGossip
from gossipd.mixing.powergossip import PowerGossip, PowerGossipConfig
from gossipd.task.schema import GossipSection


class AlgorithmEntry(NamedTuple):
    config_type: type[Any]
    build: Callable[[Any], Algorithm[Any]]


ALGORITHMS: Mapping[str, AlgorithmEntry] = {
    "auto": AlgorithmEntry(AutoConfig, AutoGossip),
    "plain": AlgorithmEntry(PlainConfig, PlainGossip),
    "powergossip": AlgorithmEntry(PowerGossipConfig, PowerGossip),
    "choco": AlgorithmEntry(ChocoConfig, ChocoGossip),
}


def make_algorithm(section: GossipSection) -> Algorithm[Any]:
    return ALGORITHMS[section.algorithm].build(section.config)
