"""Where a daemon keeps its state and its control socket (XDG base directories), owner-only."""

from __future__ import annotations

import os
import stat
from pathlib import Path

APP = "gossipd"
SOCKET_NAME = "gossipd.sock"


class UnsafePathError(PermissionError):
    """A state or socket folder is not private to this user."""


def default_state_dir() -> Path:
    """`$XDG_STATE_HOME/gossipd`, else `~/.local/state/gossipd`."""
    base = os.environ.get("XDG_STATE_HOME") or str(Path.home() / ".local" / "state")
    return Path(base) / APP


def default_socket(state_dir: Path | None = None) -> Path:
    """`$XDG_RUNTIME_DIR/gossipd/gossipd.sock`, else `<state dir>/gossipd.sock`."""
    runtime = os.environ.get("XDG_RUNTIME_DIR")
    if runtime:
        return Path(runtime) / APP / SOCKET_NAME
    return (state_dir or default_state_dir()) / SOCKET_NAME


def attach_socket(control_socket: Path) -> Path:
    """Where scripts attach their models (`gossipd.attach`): beside the control socket, `gossipd.sock` ->
    `gossipd-attach.sock`."""
    return control_socket.with_name(f"{control_socket.stem}-attach{control_socket.suffix or '.sock'}")


def ensure_private_dir(path: Path) -> Path:
    """Create `path` (and parents) and make it 0700; refuse a folder another user owns."""
    path.mkdir(parents=True, exist_ok=True, mode=0o700)
    info = path.stat()
    if info.st_uid != os.getuid():
        raise UnsafePathError(f"{path} belongs to uid {info.st_uid}, not to this user ({os.getuid()})")
    if stat.S_IMODE(info.st_mode) & 0o077:
        path.chmod(0o700)
    return path


def fetched_task_file(state_dir: Path, task_id: str) -> Path:
    """Where `gossipd join --from` keeps a task file fetched from a peer: `<state dir>/task-files/<id>.toml`
    (beside the daemon's identity and checkpoints, so a restart with `gossipd run` finds it again)."""
    return state_dir / "task-files" / f"{task_id}.toml"
