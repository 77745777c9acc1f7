"""Command-line overrides of a task's `[gossip]` section (`--algorithm`, `--rank`, `--compressor`, ...),
checked exactly as the same keys in a task file would be."""

from __future__ import annotations

import dataclasses
from collections.abc import Mapping, Sequence
from typing import Any

from gossipd.mixing.registry import ALGORITHMS
from gossipd.task.fields import Where, read_table
from gossipd.task.loader import Task, check_personal_training, task_hash
from gossipd.task.schema import TrainSection


def with_gossip(task: Task, algorithm: str | None, options: Mapping[str, Any]) -> Task:
    """The task with another algorithm and/or algorithm options. Options the algorithm does not have are
    a `TaskError`; switching algorithm starts from the new algorithm's defaults."""
    name = algorithm or task.gossip.algorithm
    if name not in ALGORITHMS:
        raise ValueError(f"unknown algorithm {name!r}; expected one of: {', '.join(ALGORITHMS)}")
    entry = ALGORITHMS[name]
    current = task.gossip.config if name == task.gossip.algorithm else entry.config_type()
    merged = {k: v for k, v in {**dataclasses.asdict(current), **options}.items() if v is not None}
    config = read_table(entry.config_type, merged, Where("command line"))
    gossip = dataclasses.replace(task.gossip, algorithm=name, config=config)
    return dataclasses.replace(task, gossip=gossip, hash=task_hash(task.task, task.model, gossip))


def with_personal(task: Task, patterns: Sequence[str], steps: int | None, training: str | None = None) -> Task:
    """The task with other `[gossip] personal` patterns (none given: the task's), `[train] personal_steps` and
    `personal_training` (None: the task's), checked as in a task file. The hash follows the patterns, as it
    would in a task file."""
    gossip = dataclasses.replace(task.gossip, personal=tuple(patterns)) if patterns else task.gossip
    train = dataclasses.replace(task.train, personal_steps=steps) if steps is not None else task.train
    where = Where("command line").child("train")
    if training is not None:
        checked = read_table(TrainSection, {"personal_training": training}, where).personal_training
        train = dataclasses.replace(train, personal_training=checked)
    check_personal_training(train, gossip, where)
    return dataclasses.replace(task, gossip=gossip, train=train, hash=task_hash(task.task, task.model, gossip))
