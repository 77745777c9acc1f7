"""What the control API needs from a running daemon, and its named errors.

The HTTP layer (`gossipd.services.control_api`) calls a `ControlBackend`; the daemon implements it, tests use
a fake. Errors carry a stable code that the API returns as `{"error": {"code", "message"}}` and the CLI maps
to an exit code (`EXIT_CODES`).
"""

from __future__ import annotations

import enum
from dataclasses import dataclass
from typing import Protocol

from gossipd.services.status import DaemonStatus, TaskStatus

API_VERSION = "v1"


class ErrorCode(enum.StrEnum):
    BAD_REQUEST = "bad-request"  # malformed request: bad JSON, wrong field types, unknown fields
    NOT_FOUND = "not-found"  # no such endpoint
    METHOD_NOT_ALLOWED = "method-not-allowed"
    PAYLOAD_TOO_LARGE = "payload-too-large"
    INVALID_TASK = "invalid-task"  # the task file does not parse or its data cannot be loaded
    TASK_NOT_FOUND = "task-not-found"
    TASK_EXISTS = "task-exists"  # joining a task the daemon already runs
    SHUTTING_DOWN = "shutting-down"  # the daemon refuses changes while it stops
    UNAVAILABLE = "unavailable"  # the daemon cannot be reached (client side only)
    INTERNAL = "internal"


HTTP_STATUS: dict[ErrorCode, int] = {
    ErrorCode.BAD_REQUEST: 400,
    ErrorCode.NOT_FOUND: 404,
    ErrorCode.METHOD_NOT_ALLOWED: 405,
    ErrorCode.PAYLOAD_TOO_LARGE: 413,
    ErrorCode.INVALID_TASK: 422,
    ErrorCode.TASK_NOT_FOUND: 404,
    ErrorCode.TASK_EXISTS: 409,
    ErrorCode.SHUTTING_DOWN: 503,
    ErrorCode.UNAVAILABLE: 503,
    ErrorCode.INTERNAL: 500,
}

# Exit codes of the client commands (0 is success, 2 is click's usage error).
EXIT_CODES: dict[ErrorCode, int] = {
    ErrorCode.INTERNAL: 1,
    ErrorCode.BAD_REQUEST: 1,
    ErrorCode.NOT_FOUND: 1,
    ErrorCode.METHOD_NOT_ALLOWED: 1,
    ErrorCode.PAYLOAD_TOO_LARGE: 1,
    ErrorCode.INVALID_TASK: 3,
    ErrorCode.TASK_NOT_FOUND: 4,
    ErrorCode.TASK_EXISTS: 5,
    ErrorCode.UNAVAILABLE: 6,
    ErrorCode.SHUTTING_DOWN: 7,
}


class ControlError(Exception):
    def __init__(self, code: ErrorCode, message: str) -> None:
        super().__init__(message)
        self.code = code
        self.message = message


@dataclass(frozen=True, kw_only=True)
class JoinRequest:
    """`POST /v1/tasks`: a task by absolute path on the daemon's machine, or as TOML text (relative data
    paths then resolve against `base_dir`). `data` replaces `[data] root`; `peer_index`/`peer_count` pick a
    partition of the data, for swarms on one machine."""

    path: str | None = None
    toml: str | None = None
    base_dir: str | None = None
    data: str | None = None
    peer_index: int | None = None
    peer_count: int | None = None


class ControlBackend(Protocol):
    @property
    def shutting_down(self) -> bool: ...

    def status(self) -> DaemonStatus: ...

    def task_status(self, task_id: str) -> TaskStatus:
        """Raises ControlError(TASK_NOT_FOUND)."""
        ...

    async def join(self, request: JoinRequest) -> TaskStatus:
        """Start a task. Raises ControlError(INVALID_TASK | TASK_EXISTS | SHUTTING_DOWN)."""
        ...

    async def leave(self, task_id: str) -> None:
        """Stop a task after checkpointing it. Raises ControlError(TASK_NOT_FOUND | SHUTTING_DOWN)."""
        ...

    async def export_model(self, task_id: str) -> bytes:
        """The task's current model as safetensors bytes. Raises ControlError(TASK_NOT_FOUND)."""
        ...
