"""The guard around pubsub and DHT stream handlers: streams wait for the services, and a handler that
fails because its service already stopped is absorbed only while the host is closing."""

from __future__ import annotations

from typing import Any

import pytest
import trio
import trio.testing

from gossipd.adapters.libp2p_network import _after


async def closed_service(stream: Any) -> None:
    raise RuntimeError("Nursery is closed to new arrivals")


async def test_a_stream_waits_until_the_services_are_ready() -> None:
    ready, closing = trio.Event(), trio.Event()
    seen: list[str] = []

    async def handler(stream: Any) -> None:
        seen.append(stream)

    async with trio.open_nursery() as nursery:
        nursery.start_soon(_after(ready, closing, handler), "s")
        await trio.testing.wait_all_tasks_blocked()
        assert seen == []
        ready.set()
    assert seen == ["s"]


async def test_a_handler_failing_while_the_host_runs_is_not_hidden() -> None:
    ready, closing = trio.Event(), trio.Event()
    ready.set()
    with pytest.raises(RuntimeError, match="closed to new arrivals"):
        await _after(ready, closing, closed_service)("s")


async def test_a_handler_failing_during_teardown_is_absorbed() -> None:
    ready, closing = trio.Event(), trio.Event()
    ready.set()
    closing.set()
    await _after(ready, closing, closed_service)("s")  # no exception: the host can finish closing
