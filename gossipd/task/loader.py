"""Reading a task TOML file into a `Task`: strict, with errors that say where and what was expected."""

from __future__ import annotations

import dataclasses
import hashlib
import json
import re
import tomllib
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from gossipd.compress.registry import parse_compressor
from gossipd.data.partition import parse_partition
from gossipd.data.registry import FORMATS, resolve_root
from gossipd.mixing.clipping import RobustSection
from gossipd.mixing.registry import ALGORITHMS
from gossipd.models.registry import MODELS
from gossipd.task.access import AccessSection
from gossipd.task.fields import TaskError, Where, describe, read_table, without_local
from gossipd.task.schema import DataSection, GossipSection, ModelSection, TaskSection, TrainSection
from gossipd.train.privacy import PrivacySection

TASK_ID = re.compile(r"^[a-z0-9][a-z0-9._-]{0,63}$")
MAX_TASK_FILE_BYTES = 1 << 20
SECTIONS = ("task", "data", "model", "train", "gossip", "robust", "privacy", "access")


@dataclass(frozen=True, kw_only=True)
class Task:
    """A parsed task file. `hash` identifies what peers must agree on to mix with each other."""

    file: str
    task: TaskSection
    data: DataSection
    model: ModelSection
    train: TrainSection
    gossip: GossipSection
    robust: RobustSection = field(default_factory=RobustSection)
    privacy: PrivacySection | None = None
    access: AccessSection | None = None
    folder: Path = Path(".")  # where the file was: relative key files resolve against it
    hash: bytes
    # The file's text exactly as read, which `hash` was computed from: what a daemon serves to peers that
    # fetch the task (`gossipd join --from`). Empty for a task not parsed from text.
    text: str = field(default="", repr=False, compare=False)

    @property
    def id(self) -> str:
        return self.task.id


def load_task(path: str | Path, *, data_root: str | Path | None = None) -> Task:
    """Read and check a task file. `data_root` (the `--data` option) replaces `[data] root`."""
    path = Path(path)
    try:
        size = path.stat().st_size
        if size > MAX_TASK_FILE_BYTES:
            raise TaskError(str(path), "", f"file is {size} bytes, expected at most {MAX_TASK_FILE_BYTES}")
        raw = path.read_bytes()
    except OSError as exc:
        raise TaskError(str(path), "", f"cannot read: {exc.strerror or exc}") from None
    try:
        text = raw.decode("utf-8")
    except UnicodeDecodeError as exc:
        raise TaskError(str(path), "", f"not UTF-8 text ({exc.reason} at byte {exc.start})") from None
    return parse_task(text, file=str(path), base_dir=path.parent, data_root=data_root)


def parse_task(
    text: str, *, file: str = "<task>", base_dir: Path = Path("."), data_root: str | Path | None = None
) -> Task:
    """Parse task TOML text; relative data paths resolve against `base_dir` unless `data_root` is given."""
    doc, top = _read_document(text, file)
    if "data" not in doc:
        raise top.error("data", "missing; expected a [data] table with at least `format`")
    if "model" not in doc:
        raise top.error("model", "missing; expected a [model] table with at least `name`")
    data = _read_data(doc["data"], top.child("data"), base_dir, data_root)
    model = _read_variant(ModelSection, doc["model"], top.child("model"), "name", "options", MODELS)
    return dataclasses.replace(_task(doc, top, file=file, base_dir=base_dir, data=data, model=model), text=text)


def _read_document(text: str, file: str) -> tuple[dict[str, Any], Where]:
    try:
        doc = tomllib.loads(text)
    except tomllib.TOMLDecodeError as exc:
        raise TaskError(file, "", f"not valid TOML: {exc}") from None
    top = Where(file)
    for name, value in doc.items():
        if name not in SECTIONS:
            raise top.error(name, f"unknown section; expected one of: {', '.join(SECTIONS)}")
        if not isinstance(value, dict):
            raise top.error(name, f"found {describe(value)}, expected a table [{name}]")
    if "task" not in doc:
        raise top.error("task", "missing; expected a [task] table with at least `id`")
    return doc, top


def _task(
    doc: Mapping[str, Any], top: Where, *, file: str, base_dir: Path, data: DataSection, model: ModelSection
) -> Task:
    task = read_table(TaskSection, doc["task"], top.child("task"))
    if not TASK_ID.match(task.id):
        raise top.child("task").error(
            "id",
            f"found {task.id!r}, expected 1-64 of a-z, 0-9, '.', '_', '-' starting with a letter or digit",
        )
    train = read_table(TrainSection, doc.get("train", {}), top.child("train"))
    gossip = _read_gossip(doc.get("gossip", {}), top.child("gossip"))
    _check_personal_steps(train, gossip, top.child("train"))
    check_personal_training(train, gossip, top.child("train"))
    robust = read_table(RobustSection, doc.get("robust", {}), top.child("robust"))
    privacy = read_table(PrivacySection, doc["privacy"], top.child("privacy")) if "privacy" in doc else None
    access = read_table(AccessSection, doc["access"], top.child("access")) if "access" in doc else None
    if access is not None and access.key_file is not None and access.key_env is not None:
        raise top.child("access").error("key_env", "found both key_file and key_env, expected one of them")
    return Task(
        file=file,
        task=task,
        data=data,
        model=model,
        train=train,
        gossip=gossip,
        robust=robust,
        privacy=privacy,
        access=access,
        folder=base_dir,
        hash=task_hash(task, model, gossip),
    )


ATTACHED_MODEL = "attached"  # the [model] name an attached task's hash is computed under
ATTACHED_TRAIN_KEYS = ("total_steps", "min_peers", "min_peers_grace")


@dataclass(frozen=True)
class AttachedModel:
    """An attached script's model, as far as the task hash goes: its parameters' layout digest and size."""

    layout: str
    parameters: int


def parse_attached_task(
    text: str, *, file: str, base_dir: Path, model: Callable[[tuple[str, ...]], AttachedModel]
) -> Task:
    """A task file for a script that attaches its own model and training loop (`gossipd.attach`): like any
    task file but without [model] and [data], which the script owns, [train] only for `total_steps`, and no
    [privacy] (DP-SGD needs gossipd's trainer). The hash covers the model's parameter layout, so scripts
    whose models differ never mix. `model` gives the script's model as the hash sees
    it, its shared parameters only, from the task's `[gossip] personal` patterns (a ValueError there names
    what does not fit)."""
    doc, top = _read_document(text, file)
    for name in ("model", "data"):
        if name in doc:
            raise top.error(name, "an attached task names no model or data: the script attaching to it owns them")
    if "privacy" in doc:
        raise top.error("privacy", "DP-SGD needs gossipd's own trainer; an attached script trains by itself")
    for key in doc.get("train", {}):
        if key not in ATTACHED_TRAIN_KEYS:
            raise top.child("train").error(
                key, "an attached script trains by itself; [train] takes only " + ", ".join(ATTACHED_TRAIN_KEYS)
            )
    gossip = _read_gossip(doc.get("gossip", {}), top.child("gossip"))
    try:
        attached = model(gossip.personal)
    except ValueError as exc:
        raise top.child("gossip").error("personal", str(exc)) from None
    section = ModelSection(name=ATTACHED_MODEL, options=attached)
    return _task(doc, top, file=file, base_dir=base_dir, data=DataSection(format=ATTACHED_MODEL), model=section)


def task_hash(task: TaskSection, model: ModelSection, gossip: GossipSection) -> bytes:
    """16 bytes naming what must match for two peers to mix: the task id, the model and the algorithm.

    Local choices (data paths, batch size, device, timing, an auto task's time share and byte caps) are left
    out, so peers may differ in them; an algorithm setting marked LOCAL hashes as its default, so the hash of
    a task that leaves it unset is the same as before it was local.
    """
    canonical: dict[str, Any] = {
        "id": task.id,
        "seed": task.seed,
        "model": {"name": model.name, "options": _plain(model.options)},
        "gossip": {"algorithm": gossip.algorithm, "config": _plain(without_local(gossip.config))},
    }
    # Added only when not "none", so a task that says "none" hashes as tasks did before weighing existed (and
    # before "samples" became the default, 2026-12-05): such peers still mix with older daemons.
    if gossip.weigh_by != "none":
        canonical["gossip"]["weigh_by"] = gossip.weigh_by
    if gossip.personal:  # likewise only when set; the patterns' order and repeats do not matter
        canonical["gossip"]["personal"] = sorted(set(gossip.personal))
    # Likewise only where it changes the messages: whole models travel in plain and auto tasks alone.
    if gossip.momentum_every and gossip.algorithm in ("plain", "auto"):
        canonical["gossip"]["momentum_every"] = gossip.momentum_every
    blob = json.dumps(canonical, sort_keys=True, separators=(",", ":")).encode()
    return hashlib.sha256(b"gossipd-task-v1\0" + blob).digest()[:16]


def _plain(value: Any) -> Any:
    if dataclasses.is_dataclass(value) and not isinstance(value, type):
        return {k: _plain(v) for k, v in dataclasses.asdict(value).items()}
    if isinstance(value, tuple | list):
        return [_plain(v) for v in value]
    if isinstance(value, dict):
        return {str(k): _plain(v) for k, v in value.items()}
    return value


def _read_variant(
    common: type[Any],
    table: Mapping[str, Any],
    where: Where,
    kind_key: str,
    variant_field: str,
    registry: Mapping[str, Any],
    *,
    default_kind: str | None = None,
    extra: Mapping[str, Any] | None = None,
) -> Any:
    """Read a table whose keys depend on a discriminant: common keys into `common`, the rest into the
    variant's own dataclass, which lands in `common.<variant_field>`."""
    kind = table.get(kind_key, default_kind)
    if kind is None:
        raise where.error(kind_key, f"missing; expected one of: {', '.join(sorted(registry))}")
    if not isinstance(kind, str) or kind not in registry:
        raise where.error(kind_key, f"found {describe(kind)}, expected one of: {', '.join(sorted(registry))}")
    entry = registry[kind]
    fixed = set(extra or {}) | {variant_field}
    common_names = {f.name for f in dataclasses.fields(common)} - fixed
    variant_names = {f.name for f in dataclasses.fields(entry.config_type)}
    allowed = "expected one of: " + ", ".join(sorted(common_names | variant_names))
    variant = read_table(
        entry.config_type,
        {k: v for k, v in table.items() if k not in common_names},
        where,
        allowed_hint=f"not a key for {kind_key} = {kind!r}; {allowed}",
    )
    return read_table(
        common,
        {k: v for k, v in table.items() if k in common_names},
        where,
        extra={variant_field: variant, **(extra or {})},
    )


def _read_data(table: Mapping[str, Any], where: Where, base_dir: Path, data_root: str | Path | None) -> DataSection:
    root = table.get("root", ".")
    if not isinstance(root, str):
        raise where.error("root", f"found {describe(root)}, expected a string")
    try:
        resolved = Path(data_root) if data_root is not None else resolve_root(root, base_dir)
    except ValueError as exc:
        raise where.error("root", str(exc)) from None
    section: DataSection = _read_variant(
        DataSection, table, where, "format", "source", FORMATS, extra={"base_dir": resolved}
    )
    try:
        parse_partition(section.partition)
    except ValueError as exc:
        raise where.error("partition", str(exc)) from None
    return section


def _check_personal_steps(train: TrainSection, gossip: GossipSection, where: Where) -> None:
    """Personal fine-tuning runs once a peer has finished: it needs personal parameters and a budget."""
    if train.personal_steps and not gossip.personal:
        raise where.error("personal_steps", "needs personal parameters to fine-tune ([gossip] personal)")
    if train.personal_steps and train.total_steps is None:
        raise where.error("personal_steps", "runs once the training budget is spent: set [train] total_steps")


def check_personal_training(train: TrainSection, gossip: GossipSection, where: Where) -> None:
    """Freezing the personal part needs one: without [gossip] personal every parameter trains and mixes."""
    if train.personal_training == "frozen" and not gossip.personal:
        raise where.error("personal_training", "'frozen' needs personal parameters to hold ([gossip] personal)")


def _read_gossip(table: Mapping[str, Any], where: Where) -> GossipSection:
    section: GossipSection = _read_variant(
        GossipSection, table, where, "algorithm", "config", ALGORITHMS, default_kind="auto"
    )
    spec = getattr(section.config, "compressor", None)
    if isinstance(spec, str):
        try:
            parse_compressor(spec)
        except ValueError as exc:
            raise where.error("compressor", str(exc)) from None
    for index, pattern in enumerate(section.personal):
        if not pattern.strip():
            raise where.error(f"personal[{index}]", "found an empty pattern, expected a glob over parameter names")
    return section
