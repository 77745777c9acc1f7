"""`[access]`: closing a task to outsiders with a pre-shared task key and/or an allow-list of peer ids.

The key itself never appears in the task file: the file names a key file (made by `gossipd keygen`) or an
environment variable holding the key, in hex.
"""

from __future__ import annotations

import os
import stat
from dataclasses import dataclass
from pathlib import Path

import nacl.utils

KEY_BYTES = 32


class AccessError(ValueError):
    """The task key cannot be read, or is not a key."""


@dataclass(frozen=True, kw_only=True)
class AccessSection:
    """`key_file` (relative to the task file) or `key_env` names the task key; `allow` lists the peer ids
    that may take part (empty: anyone who holds the key, or anyone at all without a key)."""

    key_file: str | None = None
    key_env: str | None = None
    allow: tuple[str, ...] = ()


@dataclass(frozen=True)
class Access:
    """A task's resolved access rules."""

    key: bytes | None
    allow: frozenset[str]

    @property
    def closed(self) -> bool:
        return self.key is not None or bool(self.allow)

    def admits(self, peer_id: str) -> bool:
        return not self.allow or peer_id in self.allow


OPEN = Access(key=None, allow=frozenset())


def resolve_access(section: AccessSection | None, base_dir: Path) -> Access:
    """Read the key the section names. A key file readable by other users is refused, as ssh does."""
    if section is None:
        return OPEN
    if section.key_file is not None and section.key_env is not None:
        raise AccessError("[access] takes key_file or key_env, not both")
    key: bytes | None = None
    if section.key_file is not None:
        path = Path(section.key_file).expanduser()
        path = path if path.is_absolute() else base_dir / path
        key = read_key_file(path)
    elif section.key_env is not None:
        text = os.environ.get(section.key_env)
        if not text:
            raise AccessError(f"[access] key_env: the environment variable {section.key_env} is not set")
        key = parse_key(text, f"${section.key_env}")
    return Access(key=key, allow=frozenset(section.allow))


def read_key_file(path: Path) -> bytes:
    try:
        info = path.stat()
    except OSError as exc:
        raise AccessError(f"task key file {path}: {exc.strerror or exc}") from None
    if stat.S_IMODE(info.st_mode) & 0o077:
        raise AccessError(f"task key file {path} is readable by other users: chmod 600 {path}")
    if info.st_size > 1024:
        raise AccessError(f"task key file {path} is {info.st_size} bytes, not a key")
    return parse_key(path.read_text(errors="replace"), str(path))


def parse_key(text: str, source: str) -> bytes:
    try:
        key = bytes.fromhex(text.strip())
    except ValueError:
        raise AccessError(f"{source}: a task key is {KEY_BYTES * 2} hex characters") from None
    if len(key) != KEY_BYTES:
        raise AccessError(f"{source}: a task key is {KEY_BYTES} bytes ({KEY_BYTES * 2} hex characters)")
    return key


def write_key_file(path: Path, *, force: bool = False) -> None:
    """A fresh random task key, written owner-only (0600); refuses to overwrite unless `force`."""
    flags = os.O_WRONLY | os.O_CREAT | (os.O_TRUNC if force else os.O_EXCL)
    descriptor = os.open(path, flags, 0o600)
    try:
        os.fchmod(descriptor, 0o600)
        os.write(descriptor, (nacl.utils.random(KEY_BYTES).hex() + "\n").encode())
    finally:
        os.close(descriptor)
