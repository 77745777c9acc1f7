"""This peer's own GossipSub messages reach every peer subscribed to the topic while its mesh is too thin to
deliver them (gossipd.adapters.libp2p_network.FloodPublishingGossipSub)."""

from __future__ import annotations

from dataclasses import dataclass, field

from libp2p.crypto.ed25519 import create_new_key_pair
from libp2p.peer.id import ID
from libp2p.pubsub.gossipsub import PROTOCOL_ID_V11

from gossipd.adapters.libp2p_network import FloodPublishingGossipSub

TOPIC = "/gossipd/task/0123/heartbeat"


def peer() -> ID:
    return ID.from_pubkey(create_new_key_pair().public_key)


@dataclass
class Subscriptions:
    """What the router reads of its pubsub here: who is subscribed to what, and this peer's id."""

    my_id: ID
    peer_topics: dict[str, set[ID]] = field(default_factory=dict)


def router(me: ID, subscribed: set[ID], mesh: set[ID]) -> FloodPublishingGossipSub:
    gossipsub = FloodPublishingGossipSub(protocols=[PROTOCOL_ID_V11], degree=3, degree_low=2, degree_high=4)
    gossipsub.pubsub = Subscriptions(me, {TOPIC: set(subscribed)})  # type: ignore[assignment]
    gossipsub.mesh[TOPIC] = set(mesh)
    return gossipsub


def test_a_peer_with_an_empty_mesh_still_sends_its_own_messages_to_every_subscriber() -> None:
    me, others = peer(), {peer() for _ in range(6)}
    gossipsub = router(me, others, mesh=set())
    assert set(gossipsub._get_peers_to_send([TOPIC], msg_forwarder=me, origin=me)) == others


def test_with_a_whole_mesh_its_own_messages_go_to_the_mesh_alone() -> None:
    me = peer()
    mesh = {peer(), peer()}  # degree_low
    gossipsub = router(me, mesh | {peer() for _ in range(5)}, mesh=mesh)
    assert set(gossipsub._get_peers_to_send([TOPIC], msg_forwarder=me, origin=me)) == mesh
    thin = router(me, mesh | {peer() for _ in range(5)}, mesh={next(iter(mesh))})
    assert len(set(thin._get_peers_to_send([TOPIC], msg_forwarder=me, origin=me))) == 7


def test_a_message_from_another_peer_is_forwarded_by_the_mesh_only() -> None:
    me, origin, forwarder = peer(), peer(), peer()
    mesh = {peer(), peer()}
    others = mesh | {origin, forwarder, peer(), peer()}
    gossipsub = router(me, others, mesh=mesh | {forwarder})  # thin or not, others' messages follow the mesh
    assert set(gossipsub._get_peers_to_send([TOPIC], msg_forwarder=forwarder, origin=origin)) == mesh


def test_a_topic_no_one_else_subscribes_to_goes_nowhere() -> None:
    me = peer()
    gossipsub = router(me, set(), mesh=set())
    assert list(gossipsub._get_peers_to_send([TOPIC], msg_forwarder=me, origin=me)) == []
