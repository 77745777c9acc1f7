"""HTTP/1.1 on a Unix socket, for the control API: h11 speaks the protocol, trio does the I/O.

Everything a client can make the daemon hold is bounded (header bytes, body bytes, time to send a request or
read a response, open connections), and a failure stays inside its connection: a handler that raises answers
500, a client that hangs up is dropped. The socket file is 0600 in a 0700 folder (`ensure_private_dir`).
"""

from __future__ import annotations

import errno
import http
import json
import logging
import os
import stat
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING
from urllib.parse import parse_qsl, urlsplit

import h11
import trio

from gossipd.paths import ensure_private_dir
from gossipd.services.control import ErrorCode

if TYPE_CHECKING:
    # trio-typing's stubs (pulled in by libp2p) shadow trio's own annotations and lack TaskStatus.
    from trio_typing import TaskStatus

log = logging.getLogger("gossipd.http")

# h11 checks `max_incomplete_event_size` only while a request head is incomplete, so a head can be as long as
# that limit plus one read; small reads keep the overshoot small.
_RECEIVE_BYTES = 16 * 1024
# accept() fails with these when the process or the system is out of descriptors or memory: wait, don't die.
_RESOURCE_ERRNOS = {errno.EMFILE, errno.ENFILE, errno.ENOMEM, errno.ENOBUFS}


@dataclass(frozen=True)
class Request:
    method: str  # upper case, as sent
    path: str  # still percent-encoded, so that an encoded "/" inside a segment stays distinguishable
    query: dict[str, str]
    headers: dict[str, str]  # lower-case names; repeated headers joined with ", "
    body: bytes


@dataclass(frozen=True)
class Response:
    status: int
    body: bytes
    content_type: str = "application/json"
    headers: tuple[tuple[str, str], ...] = ()  # besides content-type and content-length


Handler = Callable[[Request], Awaitable[Response]]


@dataclass(frozen=True, kw_only=True)
class HttpLimits:
    max_header_bytes: int = 64 * 1024  # request line and headers together
    max_body_bytes: int = 1024 * 1024
    read_timeout_s: float = 10.0  # to receive a whole request, counted from the end of the previous one
    send_timeout_s: float = 60.0  # to send a whole response (a client that stops reading loses its connection)
    max_connections: int = 64  # more wait in the kernel's listen backlog
    backlog: int = 64


class SocketInUseError(RuntimeError):
    """Another server already answers on the socket path."""


def json_error(status: int, code: str, message: str) -> Response:
    """The control API's error body, `{"error": {"code", "message"}}`."""
    body = json.dumps({"error": {"code": str(code), "message": message}}) + "\n"
    return Response(status, body.encode())


async def serve_unix_http(
    path: Path,
    handler: Handler,
    *,
    limits: HttpLimits = HttpLimits(),
    task_status: TaskStatus[None] = trio.TASK_STATUS_IGNORED,
) -> None:
    """Serve `handler` on the Unix socket `path` until cancelled, then remove the socket file.

    Raises SocketInUseError if a live server already answers on `path`, FileExistsError if `path` is not a
    socket; a stale socket file (a crashed daemon's) is replaced.
    """
    ensure_private_dir(path.parent)
    await _refuse_live_socket(path)
    sock, inode = await _bind_private(path, limits.backlog)
    try:
        listener = trio.SocketListener(sock)
        async with trio.open_nursery() as nursery:
            task_status.started()
            await _accept_loop(listener, handler, limits, nursery)
    finally:
        sock.close()
        _remove_if_ours(path, inode)


async def serve_unix_streams(
    path: Path,
    on_stream: Callable[[trio.SocketStream], Awaitable[None]],
    *,
    max_connections: int = 64,
    backlog: int = 16,
    task_status: TaskStatus[None] = trio.TASK_STATUS_IGNORED,
) -> None:
    """Serve raw connections on the Unix socket `path` (owner-only, as the control socket) with `on_stream`,
    one task each, until cancelled; then remove the socket file. A handler's failure costs its connection."""
    ensure_private_dir(path.parent)
    await _refuse_live_socket(path)
    sock, inode = await _bind_private(path, backlog)
    try:
        listener = trio.SocketListener(sock)
        slots = trio.Semaphore(max_connections)
        async with trio.open_nursery() as nursery:
            task_status.started()
            while True:
                await slots.acquire()
                stream = await _accept(listener)
                nursery.start_soon(_stream_task, stream, on_stream, slots)
    finally:
        sock.close()
        _remove_if_ours(path, inode)


async def _stream_task(
    stream: trio.SocketStream, on_stream: Callable[[trio.SocketStream], Awaitable[None]], slots: trio.Semaphore
) -> None:
    name = stream.socket.getsockname()  # now: once the stream is closed the socket cannot say
    try:
        async with stream:
            await on_stream(stream)
    except Exception as exc:
        # The other end went away (also from inside the handler's own nursery, wrapped in a group): that
        # ends the connection, nothing more. Anything else is logged; the server serves on either way.
        if not _only_disconnects(exc):
            log.exception("connection on %s failed", name)
    finally:
        slots.release()


def _only_disconnects(error: BaseException) -> bool:
    if isinstance(error, BaseExceptionGroup):
        return all(_only_disconnects(inner) for inner in error.exceptions)
    return isinstance(error, (trio.BrokenResourceError, trio.ClosedResourceError))


# The file-system calls below are a few metadata operations on a local folder, once at start: not worth threads.


async def _refuse_live_socket(path: Path) -> None:
    # A stale socket file needs no removing: `_publish` renames the new socket over it.
    if _is_socket_file(path) and await _answers(path):
        raise SocketInUseError(f"another server is listening on {path}")


def _is_socket_file(path: Path) -> bool:
    try:
        mode = path.lstat().st_mode
    except FileNotFoundError:
        return False
    if not stat.S_ISSOCK(mode):
        raise FileExistsError(f"{path} exists and is not a socket; not replacing it")
    return True


async def _answers(path: Path) -> bool:
    with trio.socket.socket(trio.socket.AF_UNIX, trio.socket.SOCK_STREAM) as probe:
        # A listener whose backlog is full makes connect() wait; that is a live server too.
        with trio.move_on_after(2.0):
            try:
                await probe.connect(str(path))
            except (ConnectionRefusedError, FileNotFoundError):
                return False
        return True


async def _bind_private(path: Path, backlog: int) -> tuple[trio.socket.SocketType, int]:
    """Bind under a temporary name, make it 0600, listen, then rename it into place: clients never see a
    socket that is not ready or not private."""
    temporary = path.with_name(f".{path.name}.{os.getpid()}")
    temporary.unlink(missing_ok=True)
    sock = trio.socket.socket(trio.socket.AF_UNIX, trio.socket.SOCK_STREAM)
    try:
        await sock.bind(str(temporary))
        sock.listen(backlog)
        return sock, _publish(temporary, path)
    except BaseException:
        sock.close()
        temporary.unlink(missing_ok=True)
        raise


def _publish(temporary: Path, path: Path) -> int:
    """Make the bound socket file owner-only and move it to `path`; its inode, to recognise it later."""
    temporary.chmod(0o600)
    temporary.rename(path)
    return path.stat().st_ino


def _remove_if_ours(path: Path, inode: int) -> None:
    # A newer server may have replaced our socket file (after we stopped answering); leave its file alone.
    try:
        if path.lstat().st_ino == inode:
            path.unlink()
    except FileNotFoundError:
        pass


async def _accept_loop(
    listener: trio.SocketListener, handler: Handler, limits: HttpLimits, nursery: trio.Nursery
) -> None:
    slots = trio.Semaphore(limits.max_connections)
    while True:
        await slots.acquire()
        stream = await _accept(listener)
        nursery.start_soon(_connection_task, stream, handler, limits, slots)


async def _accept(listener: trio.SocketListener) -> trio.SocketStream:
    while True:
        try:
            return await listener.accept()
        except OSError as exc:
            if exc.errno not in _RESOURCE_ERRNOS:
                raise
            log.warning("control socket: cannot accept a connection (%s); retrying", os.strerror(exc.errno))
            await trio.sleep(0.1)


async def _connection_task(
    stream: trio.SocketStream, handler: Handler, limits: HttpLimits, slots: trio.Semaphore
) -> None:
    try:
        await _serve_connection(stream, handler, limits)
    except (trio.BrokenResourceError, trio.ClosedResourceError):
        pass  # the client went away mid-request or mid-response: there is no one to answer
    except Exception:
        # A bug in this module must cost one connection, not the daemon.
        log.exception("control connection failed")
    finally:
        slots.release()
        await trio.aclose_forcefully(stream)


async def _serve_connection(stream: trio.SocketStream, handler: Handler, limits: HttpLimits) -> None:
    conn = h11.Connection(h11.SERVER, max_incomplete_event_size=limits.max_header_bytes)
    while True:
        incoming: Request | Response | None = None
        with trio.move_on_after(limits.read_timeout_s):
            incoming = await _receive_request(stream, conn, limits)
        if incoming is None:
            return  # closed by the client, or too slow to send a request
        if isinstance(incoming, Response):
            # Refused before the handler saw it; the rest of the request may still be in flight, so close.
            with trio.move_on_after(limits.send_timeout_s):
                await _send_response(stream, conn, incoming, head=False, close=True)
            return
        response = await _call_handler(handler, incoming)
        with trio.move_on_after(limits.send_timeout_s) as sending:
            await _send_response(stream, conn, response, head=incoming.method == "HEAD")
        if sending.cancelled_caught or conn.our_state is not h11.DONE or conn.their_state is not h11.DONE:
            return
        conn.start_next_cycle()


async def _receive_request(
    stream: trio.SocketStream, conn: h11.Connection, limits: HttpLimits
) -> Request | Response | None:
    """The next request; a Response to send instead when it is refused; None when the client closed."""
    try:
        head = await _next_event(stream, conn)
        if not isinstance(head, h11.Request):
            return None
        declared = _header(head, b"content-length")
        if declared is not None and int(declared) > limits.max_body_bytes:
            return _too_large(limits)
        body = bytearray()
        while True:
            event = await _next_event(stream, conn)
            if isinstance(event, h11.Data):
                body += event.data
                if len(body) > limits.max_body_bytes:
                    return _too_large(limits)
            elif isinstance(event, h11.EndOfMessage):
                return _to_request(head, bytes(body))
            else:
                return None
    except h11.RemoteProtocolError as exc:
        if conn.our_state not in {h11.IDLE, h11.SEND_RESPONSE}:
            return None
        return json_error(exc.error_status_hint, ErrorCode.BAD_REQUEST, f"malformed HTTP request: {exc}")


async def _next_event(stream: trio.SocketStream, conn: h11.Connection) -> h11.Event | type[h11.PAUSED]:
    while True:
        event = conn.next_event()
        if event is not h11.NEED_DATA:
            return event  # type: ignore[return-value]  # h11 types its sentinels as classes; NEED_DATA is out
        if conn.they_are_waiting_for_100_continue:
            # curl sends "Expect: 100-continue" with larger bodies and would otherwise pause a second.
            await stream.send_all(_encode(conn, h11.InformationalResponse(status_code=100, headers=[])))
        conn.receive_data(await stream.receive_some(_RECEIVE_BYTES))


def _header(request: h11.Request, name: bytes) -> bytes | None:
    return next((value for key, value in request.headers if key == name), None)


def _too_large(limits: HttpLimits) -> Response:
    return json_error(413, ErrorCode.PAYLOAD_TOO_LARGE, f"request bodies are limited to {limits.max_body_bytes} bytes")


def _to_request(head: h11.Request, body: bytes) -> Request:
    target = urlsplit(head.target.decode("ascii"))
    headers: dict[str, str] = {}
    for key, value in head.headers:
        name = key.decode("latin-1")
        headers[name] = f"{headers[name]}, {value.decode('latin-1')}" if name in headers else value.decode("latin-1")
    return Request(
        method=head.method.decode("ascii"),
        path=target.path or "/",
        query=dict(parse_qsl(target.query, keep_blank_values=True)),
        headers=headers,
        body=body,
    )


async def _call_handler(handler: Handler, request: Request) -> Response:
    try:
        return await handler(request)
    except Exception:
        log.exception("%s %s failed", request.method, request.path)
        return json_error(500, ErrorCode.INTERNAL, "internal error; the daemon's log has the details")


async def _send_response(
    stream: trio.SocketStream, conn: h11.Connection, response: Response, *, head: bool, close: bool = False
) -> None:
    headers = [
        ("content-type", response.content_type),
        ("content-length", str(len(response.body))),
        *response.headers,
    ]
    if close:
        headers.append(("connection", "close"))
    await stream.send_all(
        _encode(conn, h11.Response(status_code=response.status, headers=headers, reason=_reason(response.status)))
    )
    if not head:  # h11 frames a reply to HEAD as empty; the length above still tells the client the size
        await stream.send_all(_encode(conn, h11.Data(data=response.body)))
    await stream.send_all(_encode(conn, h11.EndOfMessage()))


def _encode(conn: h11.Connection, event: h11.Event) -> bytes:
    return conn.send(event) or b""


def _reason(status: int) -> bytes:
    try:
        return http.HTTPStatus(status).phrase.encode("ascii")
    except ValueError:
        return b""
