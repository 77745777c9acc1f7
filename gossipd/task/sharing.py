"""Which task files a daemon may hand to peers, and what a fetched one must pass before it runs here. No I/O.

A daemon serves exactly the bytes it loaded the task from, and only when those bytes still give the task's
hash (a task changed after loading, as `gossipd simulate`'s overrides do, is not the file). Closed tasks
(`[access]`) and tasks attached by a script (whose model is the script's) are never shared.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

from gossipd.data.registry import EMBEDDED_PREFIX
from gossipd.task.fields import TaskError
from gossipd.task.loader import ATTACHED_MODEL, Task, parse_task


@dataclass(frozen=True)
class ModelSummary:
    """What an advert tells about a task's model besides its name."""

    parameters: int
    input_shape: tuple[int, ...]


class NotShareable(ValueError):
    """This task's file is not handed to peers; the message says why."""


class FetchedTaskRejected(ValueError):
    """A fetched task file does not parse, or is not the task that was advertised."""


def shared_file(task: Task) -> bytes:
    """The task file's exact bytes, for a peer that asks for it by hash. Raises `NotShareable`."""
    if task.access is not None:
        raise NotShareable(f"task {task.id} is closed ([access]): it is never shared")
    if task.model.name == ATTACHED_MODEL:
        raise NotShareable(f"task {task.id} is attached by a script, which owns its model")
    if not task.text:
        raise NotShareable(f"task {task.id} was not read from a file")
    try:
        # The data root is irrelevant to the hash; naming one skips resolving `embedded:` roots.
        again = parse_task(task.text, file=task.file, base_dir=task.folder, data_root=task.folder)
    except TaskError as exc:
        raise NotShareable(f"task {task.id}'s text no longer parses: {exc}") from None
    if again.hash != task.hash:
        raise NotShareable(f"task {task.id} runs with settings its file does not have")
    return task.text.encode()


def check_fetched(text: bytes, *, advertised: bytes, file: str, base_dir: Path, data_root: Path | None) -> Task:
    """The task a fetched file describes, if it is the advertised one (same task hash) and open. Relative data
    paths resolve against `data_root` (the user's `--data`), never the serving peer's folders."""
    try:
        task = parse_task(text.decode("utf-8"), file=file, base_dir=base_dir, data_root=data_root)
    except (TaskError, UnicodeDecodeError) as exc:
        raise FetchedTaskRejected(f"the fetched task file is not valid: {exc}") from None
    if task.hash != advertised:
        raise FetchedTaskRejected(
            f"the fetched task file has hash {task.hash.hex()}, not the advertised {advertised.hex()}"
        )
    if task.access is not None:
        raise FetchedTaskRejected("the fetched task file is a closed task ([access]), which is never shared")
    return task


def needs_data_root(task: Task) -> bool:
    """Whether the task's data lies in the user's own folders (`--data` must say where), rather than inside
    gossipd (`embedded:`): a fetched file's paths are the serving peer's, meaningless here."""
    return not task.data.root.startswith(EMBEDDED_PREFIX)


def imported_code(task: Task) -> list[str]:
    """The Python callables the task names (`custom` model or data): code this machine would import and run."""
    found = []
    for section in (task.model.options, task.data.source):
        function = getattr(section, "function", None)
        if isinstance(function, str):
            found.append(function)
    return found
