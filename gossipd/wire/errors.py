"""Typed rejections of wire input. Each names the reason, so the daemon can count rejections per reason."""

from __future__ import annotations


class WireError(ValueError):
    """A received message was rejected. `reason` is a short stable name used in counters and logs."""

    reason = "malformed"


class FrameTooLarge(WireError):
    reason = "frame-too-large"


class MalformedMessage(WireError):
    reason = "malformed"


class UnsupportedVersion(WireError):
    reason = "unsupported-version"


class UnknownMessageType(WireError):
    reason = "unknown-type"


class WrongTask(WireError):
    reason = "wrong-task"


class BadDtype(WireError):
    reason = "bad-dtype"


class ShapeMismatch(WireError):
    reason = "shape-mismatch"


class NonFiniteTensor(WireError):
    reason = "non-finite"


class ProtocolViolation(WireError):
    """A well-formed message arrived where the exchange did not expect it."""

    reason = "protocol"
