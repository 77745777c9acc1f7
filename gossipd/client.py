"""A blocking client for the control API (protocols/control-v1.md), on the standard library alone.

The CLI's client commands use it; each call opens one connection, so a client object holds no socket
between calls and needs no closing.
"""

from __future__ import annotations

import dataclasses
import http.client
import json
import socket
from pathlib import Path
from typing import Any
from urllib.parse import quote

from gossipd.services.control import API_VERSION, ControlError, ErrorCode, JoinRequest

MAX_RESPONSE_BYTES = 1 << 30


class _UnixHTTPConnection(http.client.HTTPConnection):
    def __init__(self, socket_path: Path, timeout: float) -> None:
        # The host name only fills the Host header; curl's examples use the same one.
        super().__init__("gossipd", timeout=timeout)
        self._socket_path = socket_path

    def connect(self) -> None:
        sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        try:
            sock.settimeout(self.timeout)
            sock.connect(str(self._socket_path))
        except BaseException:
            sock.close()
            raise
        self.sock = sock


class ControlClient:
    def __init__(self, socket_path: Path, timeout: float = 30.0) -> None:
        self.socket_path = socket_path
        self.timeout = timeout

    def status(self) -> dict[str, Any]:
        return self._json("GET", "status")

    def version(self) -> dict[str, Any]:
        return self._json("GET", "version")

    def peers(self) -> dict[str, Any]:
        """`{"peers": [...]}`, every peer of every task."""
        return self._json("GET", "peers")

    def tasks(self) -> dict[str, Any]:
        """`{"tasks": [...]}`, without their peers."""
        return self._json("GET", "tasks")

    def task(self, task_id: str) -> dict[str, Any]:
        return self._json("GET", f"tasks/{_segment(task_id)}")

    def join(self, request: JoinRequest) -> dict[str, Any]:
        fields = {key: value for key, value in dataclasses.asdict(request).items() if value is not None}
        return self._json("POST", "tasks", json.dumps(fields).encode())

    def leave(self, task_id: str) -> dict[str, Any]:
        return self._json("DELETE", f"tasks/{_segment(task_id)}")

    def model(self, task_id: str) -> bytes:
        """The task's current model, as safetensors bytes."""
        return self._request("GET", f"/{API_VERSION}/tasks/{_segment(task_id)}/model")

    def metrics(self) -> str:
        return self._request("GET", "/metrics").decode()

    def _json(self, method: str, endpoint: str, body: bytes | None = None) -> dict[str, Any]:
        data = self._request(method, f"/{API_VERSION}/{endpoint}", body)
        try:
            parsed = json.loads(data)
        except ValueError as exc:
            raise ControlError(ErrorCode.INTERNAL, f"the daemon sent a reply that is not JSON: {exc}") from None
        if not isinstance(parsed, dict):
            raise ControlError(ErrorCode.INTERNAL, "the daemon sent a reply that is not a JSON object")
        return parsed

    def _request(self, method: str, target: str, body: bytes | None = None) -> bytes:
        connection = _UnixHTTPConnection(self.socket_path, self.timeout)
        try:
            headers = {"Content-Type": "application/json"} if body is not None else {}
            connection.request(method, target, body=body, headers=headers)
            response = connection.getresponse()
            data = _read_bounded(response)
        except (FileNotFoundError, ConnectionRefusedError):
            raise _unavailable(f"no daemon is listening on {self.socket_path} (start one with `gossipd run`)") from None
        except TimeoutError:
            raise _unavailable(f"the daemon on {self.socket_path} did not answer within {self.timeout:g} s") from None
        except (http.client.HTTPException, ConnectionError):
            raise _unavailable(f"the daemon on {self.socket_path} closed the connection") from None
        except OSError as exc:
            raise _unavailable(f"cannot reach the daemon on {self.socket_path}: {exc.strerror or exc}") from None
        finally:
            connection.close()
        if response.status >= 400:
            raise _server_error(response.status, data)
        return data


def _unavailable(message: str) -> ControlError:
    return ControlError(ErrorCode.UNAVAILABLE, message)


def _segment(task_id: str) -> str:
    return quote(task_id, safe="")


def _read_bounded(response: http.client.HTTPResponse) -> bytes:
    declared = response.getheader("Content-Length")
    if declared is not None and declared.isdigit() and int(declared) > MAX_RESPONSE_BYTES:
        raise ControlError(ErrorCode.PAYLOAD_TOO_LARGE, f"the daemon's reply ({declared} bytes) is over 1 GiB")
    data = response.read(MAX_RESPONSE_BYTES + 1)
    if len(data) > MAX_RESPONSE_BYTES:
        raise ControlError(ErrorCode.PAYLOAD_TOO_LARGE, "the daemon's reply is over 1 GiB")
    return data


def _server_error(status: int, data: bytes) -> ControlError:
    """The server's `{"error": {"code", "message"}}`, or a generic error when the body is not one."""
    try:
        error = json.loads(data)["error"]
        code, message = error["code"], error["message"]
        return ControlError(ErrorCode(code), str(message))
    except (ValueError, KeyError, TypeError):
        return ControlError(ErrorCode.INTERNAL, f"the daemon answered HTTP {status}: {data[:200]!r}")
