"""The control socket and its folder are owner-only, and another user is refused by their modes alone.

`serve_unix_http` serves the real control handler over `tests.test_control_api`'s fake backend, started under
a umask of 0 so that the modes are the server's doing, not inherited. Another user is a child process that
starts as root (so it can run this interpreter, which may live under /root), then drops to `nobody` for
good (groups, gid, uid) before it connects; it reports what it got as one JSON line. That part needs root
and is skipped otherwise.
"""

from __future__ import annotations

import contextlib
import errno
import json
import os
import pwd
import stat
import sys
from collections.abc import AsyncIterator, Iterator
from pathlib import Path
from typing import Any

import pytest
import trio

from tests.test_control_api import FakeBackend, request, short_socket_dir, start_server

# Run as `python -I -S -c CHILD <socket> <uid> <gid>`: drop to uid/gid, connect, ask for /v1/status.
CHILD = """
import json, os, socket, sys
path, uid, gid = sys.argv[1], int(sys.argv[2]), int(sys.argv[3])
os.setgroups([])
os.setgid(gid)
os.setuid(uid)
outcome = {"uid": os.geteuid(), "gid": os.getegid(), "groups": os.getgroups()}
sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
sock.settimeout(10)
try:
    sock.connect(path)
except OSError as exc:
    outcome.update(connected=False, error=type(exc).__name__, errno=exc.errno)
else:
    sock.sendall(b"GET /v1/status HTTP/1.1\\r\\nHost: gossipd\\r\\nConnection: close\\r\\n\\r\\n")
    head = b""
    while b"\\r\\n" not in head:
        chunk = sock.recv(4096)
        if not chunk:
            break
        head += chunk
    outcome.update(connected=True, status_line=head.split(b"\\r\\n", 1)[0].decode())
print(json.dumps(outcome))
"""


@contextlib.contextmanager
def umask(mask: int) -> Iterator[None]:
    previous = os.umask(mask)
    try:
        yield
    finally:
        os.umask(previous)


@contextlib.asynccontextmanager
async def private_server(path: Path) -> AsyncIterator[None]:
    """The control API served on `path` until the block ends."""
    async with trio.open_nursery() as nursery:
        with umask(0):  # what the server creates would be world-writable unless it sets the modes itself
            await start_server(nursery, path, FakeBackend())
        yield
        nursery.cancel_scope.cancel()


async def connect_as(user: pwd.struct_passwd, path: Path) -> dict[str, Any]:
    """What a process of `user` gets when it connects to `path` and asks for the daemon's status."""
    argv = [sys.executable, "-I", "-S", "-c", CHILD, str(path), str(user.pw_uid), str(user.pw_gid)]
    with trio.fail_after(30):
        done = await trio.run_process(argv, capture_stdout=True, capture_stderr=True, check=False)
    assert done.returncode == 0, done.stderr.decode()
    outcome: dict[str, Any] = json.loads(done.stdout)
    assert (outcome["uid"], outcome["gid"], outcome["groups"]) == (user.pw_uid, user.pw_gid, []), outcome
    return outcome


def refused(outcome: dict[str, Any]) -> bool:
    return outcome["connected"] is False and (outcome["error"], outcome["errno"]) == ("PermissionError", errno.EACCES)


async def test_the_control_socket_and_its_folder_are_owner_only_and_the_owner_gets_its_status() -> None:
    with short_socket_dir() as outer:
        path = outer / "run" / "gossipd.sock"
        async with private_server(path):
            sock, folder = path.lstat(), path.parent.lstat()
            reply = await request(path, "GET", "/v1/status")

    assert stat.S_ISSOCK(sock.st_mode) and stat.S_ISDIR(folder.st_mode)
    modes = (stat.S_IMODE(sock.st_mode), stat.S_IMODE(folder.st_mode))
    assert modes == (0o600, 0o700), [oct(m) for m in modes]
    assert sock.st_uid == folder.st_uid == os.getuid()
    assert reply.status == 200 and reply.json()["peer_id"].startswith("12D3KooW")


@pytest.mark.skipif(os.geteuid() != 0, reason="switching to another user needs root")
async def test_another_user_is_refused_by_the_socket_mode_and_by_the_folder_mode_each_alone() -> None:
    try:
        other = pwd.getpwnam("nobody")
    except KeyError:
        pytest.skip("there is no user 'nobody' to connect as")
    with short_socket_dir() as outer:
        outer.chmod(0o755)  # only the servers' own folders and sockets stand between the other user and them
        one, two = outer / "one" / "gossipd.sock", outer / "two" / "gossipd.sock"
        async with private_server(one), private_server(two):
            as_served = await connect_as(other, one)
            owner = await request(one, "GET", "/v1/status")

            one.parent.chmod(0o711)  # the folder opened to anyone: the socket's mode as served must refuse
            socket_alone = await connect_as(other, one)
            two.chmod(0o666)  # the socket opened to anyone: the folder's mode as served must refuse
            folder_alone = await connect_as(other, two)
            two.parent.chmod(0o711)  # both opened: the same child gets in, so the refusals were the modes'
            both_open = await connect_as(other, two)

    assert refused(as_served), as_served
    assert owner.status == 200
    assert refused(socket_alone), socket_alone
    assert refused(folder_alone), folder_alone
    assert both_open["connected"] is True and both_open["status_line"].startswith("HTTP/1.1 200"), both_open
