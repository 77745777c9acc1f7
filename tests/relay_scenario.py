"""Run in a subprocess by tests/test_relay.py: four hosts and a relay in one process on loopback. A private peer
holds the relay's one slot and is reached through it; a second private peer's reservation and a second circuit
to the first are refused (the relay's limits); the relayed connection is then upgraded to a direct one (both
ends can dial each other on loopback) and closed, which frees the circuit. Exits 0 on success.

A subprocess because DCUtR leaves py-libp2p holding TCP streams it never closes (the extra direct connections
it opens past `max_connections_per_peer`) until the interpreter exits, which pytest's warnings-as-errors would
report against whichever test ran last.
"""

from __future__ import annotations

import sys
import traceback
from collections.abc import Awaitable, Callable
from contextlib import AsyncExitStack

import trio
from libp2p.crypto.ed25519 import create_new_key_pair

from gossipd.adapters.libp2p_network import Libp2pNetwork
from gossipd.adapters.libp2p_relay import circuit_relay, is_circuit
from gossipd.services.network import DialError, RelayOffer


async def _host(stack: AsyncExitStack, **options: object) -> Libp2pNetwork:
    """A host on loopback, stopped when `stack` closes."""
    running = Libp2pNetwork.running(create_new_key_pair(), listen=["/ip4/127.0.0.1/tcp/0"], **options)  # type: ignore[arg-type]
    return await stack.enter_async_context(running)


async def _until(condition: Callable[[], bool | Awaitable[bool]], seconds: float, what: str) -> None:
    with trio.move_on_after(seconds):
        while True:
            result = condition()
            if result if isinstance(result, bool) else await result:
                return
            await trio.sleep(0.2)
    raise AssertionError(f"not within {seconds:.0f} s: {what}")


async def relay_within_limits() -> None:
    offer = RelayOffer(max_reservations=1, max_circuits=1, max_circuit_bytes=1 << 20, max_circuit_seconds=60)
    # Generous bounds: under a full test run on 2 busy cores each step takes several times its idle time.
    with trio.fail_after(240):
        async with AsyncExitStack() as stack:
            relay = await _host(stack, relay=offer, reachability="public")
            private = await _host(stack, reachability="private")
            refused = await _host(stack, reachability="private")
            dialler = await _host(stack, reachability="public")
            latecomer = await _host(stack, reachability="public")
            relay_address = relay.addresses()[0]

            # The private peer holds the one slot and advertises an address through the relay. It meets the
            # relay first and alone: each host looks for relays on its own 5 s clock, so a second private
            # peer connected at the same time took the slot first in about one run in six.
            await private.connect(relay_address)
            await _until(lambda: private.relay_status().reservations == (relay.peer_id,), 45, "a reservation")
            for peer in (refused, dialler, latecomer):
                await peer.connect(relay_address)
            relayed = [a for a in private.addresses() if is_circuit(a)]
            assert relayed and all(circuit_relay(a) == relay.peer_id for a in relayed)
            assert relayed[0].endswith(f"/p2p-circuit/p2p/{private.peer_id}")

            # A second private peer is refused: the relay's reservations are full.
            await _until(lambda: refused.relay_status().refused_reservations >= 1, 45, "a refused reservation")
            assert refused.relay_status().reservations == ()
            assert not [a for a in refused.addresses() if is_circuit(a)]

            # Reached through the relay; a second circuit to the same peer is beyond the relay's limit.
            assert await dialler.connect(relayed[0]) == private.peer_id
            assert dialler.connection_kind(private.peer_id) == "relayed"
            assert dialler.relay_status().relayed_dials == 1
            try:
                await latecomer.connect(relayed[0])
            except DialError as exc:
                if "via" not in str(exc):
                    raise AssertionError(f"refused, but not by the relay: {exc}") from exc
            else:
                raise AssertionError("a second circuit to the peer was let through")
            status = relay.relay_status()
            assert status.offering == offer and status.reservations_served == 1

            # Both ends can dial each other on loopback, so the relayed connection is upgraded (DCUtR's
            # direct dial) and then closed, freeing the relay's circuit.
            await _until(lambda: dialler.connection_kind(private.peer_id) == "hole-punched", 60, "a direct connection")
            await _until(lambda: _relayed_count(dialler, private.peer_id) == 0, 60, "the relayed connection closed")
            await _until(lambda: _circuit_admitted(latecomer, relayed[0]), 60, "a free circuit")


def _relayed_count(network: Libp2pNetwork, peer_id: str) -> int:
    return network.connection_kinds(peer_id).count("relayed")


async def _circuit_admitted(network: Libp2pNetwork, address: str) -> bool:
    try:
        await network.connect(address)
    except DialError:
        return False
    return True


def _leaves(error: BaseException) -> list[BaseException]:
    if isinstance(error, BaseExceptionGroup):
        return [leaf for inner in error.exceptions for leaf in _leaves(inner)]
    return [error]


if __name__ == "__main__":
    try:
        trio.run(relay_within_limits)
    except BaseException as exc:
        # py-libp2p nests its errors deeper than a traceback prints (max_group_depth): name the leaves last,
        # where the test's message (the output's tail) shows them.
        traceback.print_exc()
        print("relay scenario failed:", file=sys.stderr)
        for leaf in _leaves(exc):
            where = traceback.extract_tb(leaf.__traceback__)[-1:] if leaf.__traceback__ else []
            place = f" at {where[0].filename}:{where[0].lineno}" if where else ""
            print(f"  {type(leaf).__name__}: {leaf}{place}", file=sys.stderr)
        sys.exit(1)
    print("relay scenario: ok")
    sys.exit(0)
