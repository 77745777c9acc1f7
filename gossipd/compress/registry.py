"""Compressors by name, chosen by a spec: `sign`, `sign:64`, `top-k:1%`, `random-k:0.05`, `qsgd:4`."""

from __future__ import annotations

from collections.abc import Callable, Mapping

from gossipd.compress.base import Compressor
from gossipd.compress.qsgd import QSGD
from gossipd.compress.sign import SignCompressor
from gossipd.compress.sparse import RandomK, TopK


def _fraction(arg: str) -> float:
    text = arg.strip()
    value = float(text[:-1]) / 100 if text.endswith("%") else float(text)
    if not 0.0 < value <= 1.0:
        raise ValueError(f"fraction {arg!r} is outside (0, 100%]")
    return value


def _with_argument(make: Callable[[str], Compressor], example: str) -> Callable[[str | None], Compressor]:
    def build(arg: str | None) -> Compressor:
        if arg is None:
            raise ValueError(f"needs an argument, e.g. {example!r}")
        return make(arg)

    return build


COMPRESSORS: Mapping[str, Callable[[str | None], Compressor]] = {
    "sign": lambda arg: SignCompressor(None if arg is None else int(arg)),
    "top-k": _with_argument(lambda a: TopK(_fraction(a)), "top-k:1%"),
    "random-k": _with_argument(lambda a: RandomK(_fraction(a)), "random-k:1%"),
    "qsgd": _with_argument(lambda a: QSGD(int(a)), "qsgd:4"),
}


def parse_compressor(spec: str) -> Compressor:
    """Build the compressor a spec names; ValueError with the accepted forms otherwise."""
    name, separator, arg = spec.partition(":")
    build = COMPRESSORS.get(name.strip())
    if build is None:
        raise ValueError(
            f"found compressor {spec!r}, expected one of: sign, sign:BLOCK, top-k:PCT%, random-k:PCT%, qsgd:BITS"
        )
    try:
        return build(arg if separator else None)
    except ValueError as exc:
        raise ValueError(f"compressor {spec!r}: {exc}") from None
