"""gossipd: a peer-to-peer gossip-learning daemon. `gossipd.attach(model, task=...)` attaches a training
script's own model to the local daemon's swarm (see gossipd.attached); the daemon itself is `gossipd run`."""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from gossipd.attached import Attached, AttachError, attach

__all__ = ["AttachError", "Attached", "attach"]


def __getattr__(name: str) -> Any:
    # Loaded on first use: the daemon's CLI and client commands need not import torch for this.
    if name in __all__:
        from gossipd import attached

        return getattr(attached, name)
    raise AttributeError(f"module 'gossipd' has no attribute {name!r}")
