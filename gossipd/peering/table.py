"""Everything a task knows about other peers: how each was found, when it was last heard, how exchanges
with it went, and whether to leave it alone for a while. Pure: time comes from an injected clock."""

from __future__ import annotations

from collections.abc import Callable, Iterable
from dataclasses import dataclass, field

from gossipd.peering.announce import liveness_window

SOURCES = ("bootstrap", "dht", "pubsub", "mdns", "inbound", "exchange")


@dataclass
class PeerRecord:
    peer_id: str
    first_seen: float
    addresses: tuple[str, ...] = ()
    sources: set[str] = field(default_factory=set)
    member: bool = False  # confirmed to run this task (heartbeat, provider record or exchange)
    last_heard: float | None = None
    step: int | None = None
    first_step: int | None = None  # the step its first heartbeat declared (a start wait goes by it)
    done: bool | None = None  # past its own training budget, as its heartbeats say; None: they do not say
    done_at: float | None = None  # when a heartbeat last said `done` (a refusal after it overrides it)
    loss: float | None = None
    exchanges: int = 0
    failures: int = 0
    consecutive_failures: int = 0
    first_exchange: float | None = None
    last_exchange: float | None = None
    distance: float | None = None
    backoff_until: float | None = None  # this end starts no exchange with it before then
    penalty_until: float | None = None  # it sent messages we rejected or looks Byzantine: refused both ways
    period: float | None = None  # seconds between its heartbeats, as it announced; None: not said


class PeerTable:
    """`clock` is monotonic seconds (trio.current_time in the daemon); `wall_offset` turns it into unix
        time for reports. A member is live while heard within `liveness` seconds (or five of the periods it says it
    announces at, if longer: see gossipd.peering.announce) and not backing off."""

    def __init__(
        self,
        *,
        self_id: str,
        clock: Callable[[], float],
        liveness: float = 20.0,
        base_backoff: float = 1.0,
        max_backoff: float = 30.0,
        wall_offset: float = 0.0,
    ) -> None:
        self.self_id = self_id
        self.clock = clock
        self.liveness = liveness
        self.base_backoff = base_backoff
        self.max_backoff = max_backoff
        self.wall_offset = wall_offset
        self.records: dict[str, PeerRecord] = {}

    def __contains__(self, peer_id: object) -> bool:
        return peer_id in self.records

    def get(self, peer_id: str) -> PeerRecord | None:
        return self.records.get(peer_id)

    def saw(
        self,
        peer_id: str,
        source: str,
        *,
        addresses: Iterable[str] = (),
        member: bool = False,
        step: int | None = None,
        done: bool | None = None,
        loss: float | None = None,
        heard: bool = True,
        period: float | None = None,
    ) -> PeerRecord | None:
        """Record a sighting; None for our own id. `heard` is False for second-hand news (a DHT record
        may outlive its peer), which names a peer without proving it alive."""
        if peer_id == self.self_id:
            return None
        now = self.clock()
        record = self.records.get(peer_id)
        if record is None:
            record = self.records[peer_id] = PeerRecord(peer_id=peer_id, first_seen=now)
        record.sources.add(source)
        record.member = record.member or member
        if addresses:
            record.addresses = tuple(dict.fromkeys((*addresses, *record.addresses)))[:16]
        if heard:
            record.last_heard = now
        if step is not None:
            if record.first_step is None:
                record.first_step = step
            record.step = step
        if done is not None:
            record.done, record.done_at = done, now
        if loss is not None:
            record.loss = loss
        if period is not None:
            record.period = period
        return record

    def exchange_succeeded(self, peer_id: str, distance: float) -> None:
        record = self.saw(peer_id, "exchange", member=True)
        if record is not None:
            record.exchanges += 1
            record.consecutive_failures = 0
            record.backoff_until = None
            record.last_exchange = self.clock()
            if record.first_exchange is None:
                record.first_exchange = record.last_exchange
            record.distance = distance

    def exchange_failed(self, peer_id: str) -> float:
        """Count a failure; repeated failures back the peer off exponentially. Returns the back-off (s)."""
        record = self.records.get(peer_id)
        if record is None:
            return 0.0
        record.failures += 1
        record.consecutive_failures += 1
        delay = min(self.max_backoff, self.base_backoff * 2.0 ** (record.consecutive_failures - 1))
        # A longer back-off already set (a rejection, a suspect) stands.
        record.backoff_until = max(record.backoff_until or 0.0, self.clock() + delay)
        return delay

    def back_off(self, peer_id: str, seconds: float) -> None:
        """Leave a peer alone for a while, both ways (it sent messages we had to reject, or looks Byzantine)."""
        record = self.records.get(peer_id)
        if record is not None:
            until = self.clock() + seconds
            record.backoff_until = max(record.backoff_until or 0.0, until)
            record.penalty_until = max(record.penalty_until or 0.0, until)

    def refuses(self, peer_id: str) -> bool:
        """Whether exchanges the peer starts are refused now. Only a penalty refuses them: a peer backed off
        for failures alone (it hung, or its process was paused) that opens an exchange shows it is back, and
        refusing it would cut a resumed peer off from every neighbour that had backed it off, for up to the
        whole back-off (30 s at most), whenever the neighbours it still had went away."""
        record = self.records.get(peer_id)
        return record is not None and record.penalty_until is not None and record.penalty_until > self.clock()

    def is_live(self, peer_id: str) -> bool:
        record = self.records.get(peer_id)
        if record is None or not record.member or record.last_heard is None:
            return False
        now = self.clock()
        if now - record.last_heard > liveness_window(record.period, self.liveness):
            return False
        if record.penalty_until is not None and now < record.penalty_until:
            return False
        return record.backoff_until is None or now >= record.backoff_until

    def live_members(self) -> list[str]:
        return [peer for peer in self.records if self.is_live(peer)]

    def forget_stale(self, older_than: float) -> list[str]:
        """Drop peers not heard for `older_than` seconds (bounded memory under churn)."""
        now = self.clock()
        stale = [
            p
            for p, r in self.records.items()
            if now - (r.last_heard if r.last_heard is not None else r.first_seen) > older_than
        ]
        for peer in stale:
            del self.records[peer]
        return stale
