"""The control API's routes (protocols/control-v1.md): a pure function of a request and a `ControlBackend`.

No sockets here: `gossipd.adapters.http_unix` carries requests in and responses out, and the daemon is
reached only through the backend protocol, so tests drive this with a fake backend.
"""

from __future__ import annotations

import dataclasses
import functools
import importlib.metadata
import json
import logging
import math
from collections.abc import Awaitable, Callable, Mapping
from dataclasses import dataclass
from pathlib import PurePosixPath
from typing import Any
from urllib.parse import unquote

from gossipd.adapters.http_unix import Handler, Request, Response, json_error
from gossipd.adapters.prometheus import CONTENT_TYPE as METRICS_CONTENT_TYPE
from gossipd.adapters.prometheus import render_metrics
from gossipd.services.control import API_VERSION, HTTP_STATUS, ControlBackend, ControlError, ErrorCode, JoinRequest
from gossipd.services.status import to_json

log = logging.getLogger("gossipd.control")

# The JSON type each JoinRequest field takes (besides null); tests check this covers JoinRequest exactly.
JOIN_FIELD_TYPES: dict[str, type] = {
    "path": str,
    "toml": str,
    "base_dir": str,
    "data": str,
    "peer_index": int,
    "peer_count": int,
}
# A relative path would resolve against the daemon's working directory, which is never what a client means.
_ABSOLUTE_FIELDS = ("path", "base_dir", "data")
_CHANGING_METHODS = {"POST", "DELETE"}

Endpoint = Callable[[Request, ControlBackend, tuple[str, ...]], Awaitable[Response]]


@dataclass(frozen=True)
class _Route:
    pattern: tuple[str, ...]  # "*" matches one path segment, passed to the endpoint
    methods: Mapping[str, Endpoint]


def control_handler(backend: ControlBackend) -> Handler:
    """The handler `serve_unix_http` takes, over one backend."""
    return functools.partial(handle_request, backend=backend)


async def handle_request(request: Request, backend: ControlBackend) -> Response:
    try:
        return await _dispatch(request, backend)
    except ControlError as exc:
        return error_response(exc.code, exc.message)
    except Exception:
        log.exception("%s %s failed", request.method, request.path)
        return error_response(ErrorCode.INTERNAL, "internal error; the daemon's log has the details")


def error_response(code: ErrorCode, message: str) -> Response:
    return json_error(HTTP_STATUS[code], code, message)


async def _dispatch(request: Request, backend: ControlBackend) -> Response:
    found = _match(request.path)
    if found is None:
        raise ControlError(ErrorCode.NOT_FOUND, f"no endpoint {request.path} (this daemon speaks /{API_VERSION}/)")
    route, params = found
    endpoint = route.methods.get(request.method)
    if endpoint is None:
        allowed = ", ".join(sorted(route.methods))
        refusal = error_response(ErrorCode.METHOD_NOT_ALLOWED, f"{request.path} takes {allowed}, not {request.method}")
        return dataclasses.replace(refusal, headers=(("allow", allowed),))
    if request.method in _CHANGING_METHODS and backend.shutting_down:
        raise ControlError(ErrorCode.SHUTTING_DOWN, "the daemon is shutting down and accepts no changes")
    return await endpoint(request, backend, params)


def _match(path: str) -> tuple[_Route, tuple[str, ...]] | None:
    segments = [unquote(segment) for segment in path.removeprefix("/").split("/")]
    if any(not segment for segment in segments):
        return None
    for route in _ROUTES:
        if len(route.pattern) == len(segments) and all(
            p in ("*", s) for p, s in zip(route.pattern, segments, strict=True)
        ):
            return route, tuple(s for p, s in zip(route.pattern, segments, strict=True) if p == "*")
    return None


def _json(data: Any, status: int = 200, headers: tuple[tuple[str, str], ...] = ()) -> Response:
    # JSON has no NaN or infinity (a diverged loss); strict parsers such as jq reject Python's extension.
    body = json.dumps(_finite(data), allow_nan=False) + "\n"
    return Response(status, body.encode(), "application/json", headers)


def _finite(data: Any) -> Any:
    if isinstance(data, float) and not math.isfinite(data):
        return None
    if isinstance(data, dict):
        return {key: _finite(value) for key, value in data.items()}
    if isinstance(data, list):
        return [_finite(item) for item in data]
    return data


async def _get_status(request: Request, backend: ControlBackend, params: tuple[str, ...]) -> Response:
    return _json(to_json(backend.status()))


async def _get_peers(request: Request, backend: ControlBackend, params: tuple[str, ...]) -> Response:
    tasks = backend.status().tasks
    peers = [{"task": task.id, **to_json(peer)} for task in tasks for peer in task.peers]
    ledger = [{"task": task.id, **to_json(entry)} for task in tasks for entry in task.ledger]
    links = [{"task": task.id, **to_json(link)} for task in tasks for link in task.links]
    return _json({"peers": peers, "ledger": ledger, "links": links})


# What grows with the neighbours a task has known: in /v1/status, /v1/tasks/{id} and /v1/peers, not the list.
_PER_PEER = ("peers", "ledger", "links")


async def _get_tasks(request: Request, backend: ControlBackend, params: tuple[str, ...]) -> Response:
    tasks = [to_json(dataclasses.replace(task, peers=(), ledger=(), links=())) for task in backend.status().tasks]
    return _json({"tasks": [{k: v for k, v in task.items() if k not in _PER_PEER} for task in tasks]})


async def _get_task(request: Request, backend: ControlBackend, params: tuple[str, ...]) -> Response:
    return _json(to_json(backend.task_status(params[0])))


async def _post_task(request: Request, backend: ControlBackend, params: tuple[str, ...]) -> Response:
    task = await backend.join(parse_join_request(request.body))
    return _json(to_json(task), 201, (("location", f"/{API_VERSION}/tasks/{task.id}"),))


async def _delete_task(request: Request, backend: ControlBackend, params: tuple[str, ...]) -> Response:
    await backend.leave(params[0])
    return _json({"left": params[0]})


async def _get_model(request: Request, backend: ControlBackend, params: tuple[str, ...]) -> Response:
    model = await backend.export_model(params[0])
    disposition = ("content-disposition", f'attachment; filename="{params[0]}.safetensors"')
    return Response(200, model, "application/octet-stream", (disposition,))


async def _get_metrics(request: Request, backend: ControlBackend, params: tuple[str, ...]) -> Response:
    return Response(200, render_metrics(backend.status()), METRICS_CONTENT_TYPE)


async def _get_version(request: Request, backend: ControlBackend, params: tuple[str, ...]) -> Response:
    return _json({"api": API_VERSION, "version": _package_version()})


@functools.cache
def _package_version() -> str:
    try:
        return importlib.metadata.version("gossipd")
    except importlib.metadata.PackageNotFoundError:
        return "unknown"


def parse_join_request(body: bytes) -> JoinRequest:
    """The body of `POST /v1/tasks`; raises ControlError(BAD_REQUEST) naming what is wrong."""
    fields = _json_object(body)
    unknown = sorted(set(fields) - set(JOIN_FIELD_TYPES))
    if unknown:
        raise _bad(f"unknown field(s) {', '.join(unknown)}; expected some of {', '.join(JOIN_FIELD_TYPES)}")
    for key, value in fields.items():
        expected = JOIN_FIELD_TYPES[key]
        if value is not None and (type(value) is not expected):  # `type is`: a JSON true is no peer index
            raise _bad(f"field {key!r} must be a {expected.__name__} or null, not {type(value).__name__}")
    request = JoinRequest(**fields)
    _check_join(request)
    return request


def _json_object(body: bytes) -> dict[str, Any]:
    try:
        data = json.loads(body)
    except (ValueError, RecursionError) as exc:  # RecursionError: deeply nested arrays
        raise _bad(f"the body is not JSON: {exc}") from None
    if not isinstance(data, dict):
        raise _bad(f"the body must be a JSON object, not {type(data).__name__}")
    return data


def _check_join(request: JoinRequest) -> None:
    if (request.path is None) == (request.toml is None):
        raise _bad("give exactly one of 'path' (a task file on the daemon's machine) and 'toml' (its text)")
    for key in _ABSOLUTE_FIELDS:
        value = getattr(request, key)
        if value is not None and not PurePosixPath(value).is_absolute():
            raise _bad(f"field {key!r} must be an absolute path, not {value!r}")
    if (request.peer_index is None) != (request.peer_count is None):
        raise _bad("give both 'peer_index' and 'peer_count', or neither")
    index, count = request.peer_index, request.peer_count
    if index is not None and count is not None and not 0 <= index < count:
        raise _bad(f"'peer_index' must be in [0, {request.peer_count}), not {request.peer_index}")


def _bad(message: str) -> ControlError:
    return ControlError(ErrorCode.BAD_REQUEST, message)


_ROUTES: tuple[_Route, ...] = (
    _Route(("v1", "status"), {"GET": _get_status}),
    _Route(("v1", "version"), {"GET": _get_version}),
    _Route(("v1", "peers"), {"GET": _get_peers}),
    _Route(("v1", "tasks"), {"GET": _get_tasks, "POST": _post_task}),
    _Route(("v1", "tasks", "*"), {"GET": _get_task, "DELETE": _delete_task}),
    _Route(("v1", "tasks", "*", "model"), {"GET": _get_model}),
    _Route(("metrics",), {"GET": _get_metrics}),
)
