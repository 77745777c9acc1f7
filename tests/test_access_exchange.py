"""Closed tasks on the fake swarm: only key holders on the allow-list mix; everyone else is refused, counted
by reason, and never touches a member's model."""

from __future__ import annotations

import torch
import trio
import trio.testing

from gossipd.services.exchange import HELLO_LIMIT, MIX_PROTOCOL, ExchangeService
from gossipd.services.network import FrameStream, FrameTooLarge, StreamClosed
from gossipd.task.access import Access
from gossipd.wire.errors import WireError
from gossipd.wire.messages import MessageType, decode_message
from tests.fake_network import FakeNetwork
from tests.test_exchange_service import TASK, Peer, fake_swarm, gossip, start_peers, torch_work_inline, wait_until

__all__ = ["torch_work_inline"]  # the autouse fixture: torch work inline on virtual time

KEY, WRONG = b"K" * 32, b"W" * 32


def route_with_auth(network: FakeNetwork, exchange: ExchangeService) -> None:
    """What `Daemon._on_mix_stream` does: the first frame may be a hello or, for a closed task, a challenge."""

    async def on_stream(stream: FrameStream) -> None:
        try:
            with trio.fail_after(10):
                first = decode_message(await stream.receive(HELLO_LIMIT), max_size=HELLO_LIMIT)
            if first.type not in (MessageType.HELLO, MessageType.AUTH) or first.task != TASK:
                raise WireError("not for this task")
        except (StreamClosed, FrameTooLarge, trio.TooSlowError, WireError):
            await stream.reset()
            return
        await exchange.respond(stream, first)

    network.set_handler(MIX_PROTOCOL, on_stream)


async def closed_swarm(hub: object, rules: dict[str, Access]) -> dict[str, Peer]:
    peers = await start_peers(hub, "".join(rules), section=gossip("plain"), trainer="paused")  # type: ignore[arg-type]
    named = {p.id: p for p in peers}
    for name, access in rules.items():
        named[name].exchange.access = access
        route_with_auth(named[name].network, named[name].exchange)
    return named


async def params_of(peer: Peer) -> dict[str, torch.Tensor]:
    return await peer.params()


async def test_key_holders_mix_and_everyone_else_is_refused_by_reason(autojump_clock: trio.testing.MockClock) -> None:
    member = Access(key=KEY, allow=frozenset())
    with trio.fail_after(120):
        async with fake_swarm() as hub:
            peers = await closed_swarm(
                hub,
                {
                    "A": Access(key=KEY, allow=frozenset({"B", "C", "D", "E"})),
                    "B": member,
                    "C": Access(key=WRONG, allow=frozenset()),  # a wrong key
                    "D": Access(key=None, allow=frozenset()),  # an open peer of the same task
                    "E": member,  # the right key
                    "F": member,  # the right key, but not on A's allow-list
                },
            )
            a = peers["A"]
            before = await a.params()

            assert await peers["B"].exchange.initiate("A") is not None
            await wait_until(lambda: "B" not in a.exchange.in_flight)
            after_member = await a.params()
            assert any(not after_member[k].equal(before[k]) for k in before)  # a member moved it

            for outsider in ("C", "D", "F"):
                assert await peers[outsider].exchange.initiate("A") is None
                await wait_until(lambda o=outsider: o not in a.exchange.in_flight)  # type: ignore[misc]
            now = await a.params()
            assert all(now[k].equal(after_member[k]) for k in after_member)  # the outsiders did not

            rejections = a.exchange.statistics().rejections
            assert rejections.get("auth-failed") == 1  # C's proof did not verify
            assert rejections.get("unauthenticated") == 1  # D spoke without the handshake
            assert rejections.get("not-allowed") == 1  # F is not on the allow-list
            assert peers["C"].exchange.statistics().rejections.get("auth-failed") == 1  # A's proof failed for C too

            assert await peers["E"].exchange.initiate("A") is not None  # the handshake itself still works
            await wait_until(lambda: "E" not in a.exchange.in_flight)
            opened = hub.statistics().streams_opened
            assert await peers["E"].exchange.initiate("A") is not None  # on E's authenticated stream, no new proof
            assert hub.statistics().streams_opened == opened
            assert a.exchange.statistics().rejections == rejections
