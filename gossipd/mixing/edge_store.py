"""Edge states to and from plain data (dicts, ints, tensors), for checkpoints that load with
`torch.load(weights_only=True)`."""

from __future__ import annotations

import dataclasses
from collections.abc import Mapping
from typing import Any

from gossipd.mixing.algorithm import Algorithm
from gossipd.mixing.edge import EdgeState


def edges_to_state(edges: Mapping[str, EdgeState]) -> dict[str, Any]:
    out: dict[str, Any] = {}
    for peer, edge in edges.items():
        data = edge.data
        fields = dataclasses.asdict(data) if dataclasses.is_dataclass(data) and not isinstance(data, type) else None
        out[peer] = {"epoch": edge.epoch, "round": edge.round, "synced": edge.synced, "data": fields}
        if edge.mode is not None:
            out[peer]["mode"] = edge.mode
    return out


def edges_from_state(state: Mapping[str, Any], algorithm: Algorithm[Any]) -> dict[str, EdgeState]:
    """Rebuild edges; an entry that does not fit the algorithm is skipped (the edge then resets)."""
    edges: dict[str, EdgeState] = {}
    for peer, entry in state.items():
        try:
            mode = entry.get("mode")
            mode = None if mode is None else int(mode)
            edge_type = algorithm.edge_type_for(mode)
            data = None
            if entry["data"] is not None and edge_type is not None:
                data = edge_type(**entry["data"])
            synced = bool(entry["synced"]) and (edge_type is None or data is not None)
            edges[str(peer)] = EdgeState(
                epoch=int(entry["epoch"]), round=int(entry["round"]), synced=synced, data=data, mode=mode
            )
        except (KeyError, TypeError, ValueError):
            continue
    return edges
