"""Which rung of the auto ladder an edge's next exchange uses, from what this peer measured on that edge.

Time to accuracy is steps needed × time per step. Sending more per exchange (a higher rank, whole models)
mixes more per step, so fewer steps are needed, but only pays while an exchange stays short next to the
time it has: the time between two of this peer's exchanges (the steps between them times the measured step
time, or the exchange interval), times `time_share` (1 by default: the trainer steps on while an exchange
is in flight, so an exchange may take until the next is due). On a fast link that budget buys whole
models; on a slow link, or a big model on a modest one, a low rank. What an exchange costs is measured, not guessed: its
wall time from first message to last, which holds the link's bandwidth and round trip and the CPU both ends
spend, contention included.

Per edge the controller climbs one rung after `CLIMB_AFTER` exchanges in a row that took under half the budget
(after one that took under a tenth, `SWIFT`; at once if the next rung was measured within the budget lately),
if the next rung is predicted to fit (its own recent duration, or this rung's plus the extra bytes at the
measured cost per byte), and drops at once when the rung's running mean goes over the budget, when one
exchange takes over `SPIKE` budgets, or when one fails. A next rung not measured in the last `REMEASURE_AFTER`
exchanges is measured once, unless predicted over `SPIKE` budgets: where exchanges take over half the budget,
no calm comes, and a dearer mode whose time is mostly the same fixed part (round trips, the stack, a busy
core) would never be tried; a low rank's arithmetic can even cost more than a small model's whole copy.
Byte caps bound the rungs outright: this peer's own, and the neighbour's, learnt when it refuses a mode over
its cap (`over_cap`; caps are each peer's own setting, not the task's, so a capped peer mixes in the same
swarm as uncapped ones).

Where even the cheapest rung takes near or over the budget, no choice keeps within it, and the time is mostly
what every mode pays (round trips, the stack, a core shared by many trainers): the rungs are then held to an
*allowance*, FIXED_COST_SLACK times the cheapest rung's measured time, instead of the budget (the next rung is
measured as above, against the allowance, and the cheapest once per REMEASURE_AFTER exchanges while the edge
sits higher, as the allowance stands on its time). Modes that cost little more than rank 1 are then sent for
the mixing they buy, and dearer ones are not. A time older than REMEASURE_AFTER exchanges is replaced by the
next measurement, not blended with it.

What the exchanges this peer starts leave of their budgets is banked per edge (up to `BANK_CAP` budgets),
and once the bank covers a dearer mode's predicted time, one exchange is spent on it: whole models now and
then between low-rank ones, at the same time per exchange on average. On a model whose differences no low
rank captures (the 1.2M-parameter CNN: ranks 1-8 needed as many steps as rank 1, whole models half as many;
BENCHMARKS.md) that is where mixing gains per step; a mode over `BANK_CAP` budgets is never bought.

What a mode is worth is not only its time: low-rank exchanges send a sample of both models as well
(gossipd.mixing.probe), so each end learns what share of the pair's squared difference a mode captures
(`shares`: whole models capture all of it). Where the edge's own rung captures so little per second that a
dearer mode beyond this exchange's budget would capture more than `SAVE_GAIN` times as much per second of
its own time, the peer may *save* (`[gossip] save = true`; off by default): it skips its exchange on that
edge for this interval (answering others still), banks the budget, and spends the bank on the dearer mode
once it covers it, at most `SAVE_CAP` budgets ahead: fewer, fuller exchanges at the same time per interval.
Rank 1 captures about 1-3% of the difference per exchange on the MNIST CNNs, where whole models are 170-450
times its bytes: per byte rank 1 captures more, but where a rank-1 exchange's time is mostly fixed cost
(round trips, the stack), whole models every few intervals capture more per second. Time is not all an
exchange costs, though: daemons sharing two cores paid for whole models in training time, which this rule
does not see (docs/bench-peers/experiments/captured-share), hence off by default. Every `REMEASURE_SAVE`
skips the rung is measured again.

A peer past its training budget *finishes*: exchanges alone, to bring the copies to their average. Nothing
then competes for the time, and climbing wastes it: a switch to whole models restarts the edge, and before
warm switches (gossipd.mixing.auto) every switch restarted PowerGossip's warm start (three daemons on the MLP
stayed 26% apart after 20 finish exchanges climbing the ladder, against under 1% with whole models), so
a finishing peer starts every exchange at one mode per edge, `settle`: the dearest the byte caps allow whose
predicted time stays within a limit (half the exchange timeout), whole models on any link that carries them.

Pure bookkeeping: the exchange service feeds it durations and byte counts and asks it for modes.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field

from gossipd.mixing.auto import FULL, describe_mode

CLIMB_AFTER = 3  # exchanges comfortably within budget before trying the next rung
COMFORT = 0.5  # "comfortably": under this share of the budget
SWIFT = 0.1  # an exchange under this share of the budget tries the next rung at once
REMEASURE_AFTER = 64  # exchanges after which a rung's old duration no longer vetoes a climb
SMOOTHING = 0.3  # weight of the newest duration in a rung's running mean
SPIKE = 2.0  # one exchange over this many budgets steps down at once, whatever the running mean
BANK_CAP = 32  # budgets of unspent time an edge may save up for one dearer exchange
FINISH_TIME_SHARE = 0.5  # of the exchange timeout: what one exchange may take while finishing
SAVE_GAIN = 1.5  # a dearer mode must capture this many times more per second before exchanges are skipped for it
SAVE_CAP = 8  # budgets: the dearest exchange skipping may save for (the drift it allows between mixes)
REMEASURE_SAVE = 16  # skips since the rung's last exchange after which it is exchanged again, to measure it afresh
# A rung that takes at most this many times the cheapest rung's time costs little more than the exchange's
# fixed part (round trips, the stack, contention), which the cheapest rung pays too: where even that one is
# over the budget, such a rung is allowed (see `_allowance`).
FIXED_COST_SLACK = 1.5
SKIP = -1  # Choice.mode: start no exchange on this edge this interval (saving, see the module's docstring)


@dataclass(frozen=True)
class Choice:
    mode: int
    reason: str
    funded: float | None = None  # a dearer exchange paid from the bank: its predicted seconds


@dataclass
class EdgeLink:
    """What one peer knows of one edge's exchanges."""

    rung: int = 0  # index into the ladder
    calm: int = 0  # exchanges in a row comfortably within budget at this rung
    exchanges: int = 0
    seconds: dict[int, float] = field(default_factory=dict)  # mode → running mean duration
    measured_at: dict[int, int] = field(default_factory=dict)  # mode → `exchanges` when last measured
    bytes_per_second: float | None = None  # both directions over the exchange's wall time, running mean
    banked: float = 0.0  # seconds: what exchanges started here left of their budgets, not yet spent
    budget: float | None = None  # seconds: the budget of the latest exchange
    reason: str = "new edge: starting at the cheapest mode"
    last_mode: int | None = None
    last_seconds: float | None = None
    # An exchange at the rung kept within its allowance since the edge last moved or failed (exchanges the
    # neighbour chose at other modes, in between, do not count either way).
    fits: bool = False
    first_at: float | None = None  # clock of the first exchange
    last_at: float | None = None
    settled: int | None = None  # the rung exchanges started while finishing use (chosen once, lowered on failure)
    ceiling: int | None = None  # the highest rung the neighbour accepts: it refused the one above for its byte cap
    ceiling_at: int = 0  # `exchanges` when the ceiling was learnt (it lapses after REMEASURE_AFTER)
    shares: dict[int, float] = field(default_factory=dict)  # mode → running mean share of the difference captured
    skips: int = 0  # intervals skipped, saving for a dearer mode, since this end last exchanged at the rung


@dataclass(frozen=True)
class Bounds:
    """What the task allows per exchange (None: no cap)."""

    budget: float  # seconds one exchange may take
    max_bytes: float | None  # bytes one end may send in one exchange


class LinkBudget:
    """The per-edge controller of one peer."""

    def __init__(self, clock: Callable[[], float], *, save: bool = False) -> None:
        self.clock = clock
        self.save = save  # skip intervals to afford dearer exchanges (AutoConfig.save)
        self.links: dict[str, EdgeLink] = {}

    def choose(self, peer: str, ladder: Sequence[int], bytes_of: Callable[[int], int], bounds: Bounds) -> Choice:
        """The mode of the next exchange this peer starts with `peer`."""
        link = self.links.setdefault(peer, EdgeLink())
        top = _top(link, ladder, bytes_of, bounds)
        rung = min(link.rung, len(ladder) - 1, top)
        if rung < link.rung:
            link.reason = f"{describe_mode(ladder[rung])}: {_capped_by(link, top)} allows no more"
            link.fits = False
        link.rung = rung
        allowance = _allowance(link, ladder, bounds.budget)
        climbed = False
        if rung < top and (link.calm >= CLIMB_AFTER or _known_to_fit(link, ladder[rung + 1], allowance)):
            mode, higher = ladder[rung], ladder[rung + 1]
            predicted = self._predict(link, mode, higher, bytes_of)
            if predicted is not None and predicted <= allowance:
                link.rung, link.calm, link.fits, climbed = rung + 1, 0, False, True
                link.reason = (
                    f"{describe_mode(higher)}: {describe_mode(mode)} took {_ms(link.seconds[mode])}, "
                    f"{describe_mode(higher)} predicted {_ms(predicted)} of a {_ms(allowance)} "
                    + ("budget" if allowance == bounds.budget else "allowance (the cheapest near or over the budget)")
                )
        cheapest = ladder[0]
        if not climbed and allowance > bounds.budget and link.rung > 0 and _unmeasured(link, cheapest):
            # The allowance stands on the cheapest rung's time, which the edge no longer measures up here: a
            # slow first measurement (a busy start) would let dearer modes take up to 1.5 times it for good.
            return Choice(cheapest, f"{describe_mode(cheapest)} once, to measure it: the allowance stands on its time")
        if not climbed and link.rung < top and _unmeasured(link, ladder[link.rung + 1]):
            # The next rung is measured once (then a climb needs no calm below it), unless it is predicted far
            # over the allowance (cost per byte measured between two rungs; with one, its bytes scaled, an
            # over-estimate where the fixed part dominates). Where exchanges take over half the budget, calm
            # never comes, and a dearer mode that costs hardly more would never be tried: the MNIST MLP's
            # rank 2 took 0.6 of the budget, whole models 0.4, and its edges sat on rank 2.
            higher = ladder[link.rung + 1]
            predicted = self._predict(link, ladder[link.rung], higher, bytes_of)
            if predicted is not None and predicted <= SPIKE * allowance:
                return Choice(higher, f"{describe_mode(higher)} once, to measure it")
        spent = self._spend(link, ladder, top, bytes_of, bounds)
        if spent is not None:
            return spent
        saving = self._save(link, ladder, top, bytes_of, bounds) if self.save else None
        if saving is not None:
            link.reason = saving.reason  # the status shows it: the edge's pattern until something changes it
            link.skips += 1
            limit = BANK_CAP * bounds.budget
            link.banked = min(limit, link.banked + bounds.budget)
            return saving
        return Choice(ladder[link.rung], link.reason)

    def _save(
        self, link: EdgeLink, ladder: Sequence[int], top: int, bytes_of: Callable[[int], int], bounds: Bounds
    ) -> Choice | None:
        """SKIP, if a dearer mode beyond this budget captures SAVE_GAIN times more of the difference per second
        than the edge's rung (see the module's docstring); None to exchange at the rung as usual."""
        steady = ladder[link.rung]
        share, seconds = link.shares.get(steady), link.seconds.get(steady)
        if share is None or seconds is None or seconds <= 0 or link.skips >= REMEASURE_SAVE:
            return None
        for index in range(top, link.rung, -1):
            mode = ladder[index]
            gain = link.shares.get(mode, 1.0 if mode == FULL else None)
            predicted = self._predict(link, steady, mode, bytes_of)
            if gain is None or predicted is None or not bounds.budget < predicted <= SAVE_CAP * bounds.budget:
                continue
            if gain / predicted > SAVE_GAIN * share / seconds:
                return Choice(
                    SKIP,
                    f"saving for {describe_mode(mode)}: it captures {gain:.0%} of the difference in a predicted "
                    f"{_ms(predicted)}, {describe_mode(steady)} {share:.1%} in {_ms(seconds)}",
                )
        return None

    def _spend(
        self, link: EdgeLink, ladder: Sequence[int], top: int, bytes_of: Callable[[int], int], bounds: Bounds
    ) -> Choice | None:
        """The dearest mode above this edge's rung that its bank and this exchange's budget cover, if any."""
        steady = ladder[link.rung]
        if steady not in link.seconds:
            return None
        for index in range(top, link.rung, -1):
            mode = ladder[index]
            predicted = self._predict(link, steady, mode, bytes_of)
            if predicted is not None and bounds.budget < predicted <= link.banked + bounds.budget:
                return Choice(
                    mode,
                    f"{describe_mode(mode)} once: {_ms(link.banked)} saved from cheaper exchanges and this one's "
                    f"{_ms(bounds.budget)} cover its predicted {_ms(predicted)}",
                    funded=predicted,
                )
        return None

    def settle(
        self, peer: str, ladder: Sequence[int], bytes_of: Callable[[int], int], bounds: Bounds, *, limit: float
    ) -> Choice:
        """The mode of an exchange this peer starts while finishing: chosen once per edge (see the module's
        docstring), then kept, one rung lower after each failure."""
        link = self.links.setdefault(peer, EdgeLink())
        top = _top(link, ladder, bytes_of, bounds)
        if link.settled is None:
            link.settled = self._fastest_within(link, ladder, top, bytes_of, limit)
            mode = ladder[link.settled]
            link.reason = f"{describe_mode(mode)}: finishing, the dearest mode predicted within {_ms(limit)}"
            if link.settled == top and top < len(ladder) - 1:
                link.reason = f"{describe_mode(mode)}: finishing, {_capped_by(link, top)} allows no more"
        link.settled = min(link.settled, top)
        return Choice(ladder[link.settled], link.reason)

    def _fastest_within(
        self, link: EdgeLink, ladder: Sequence[int], top: int, bytes_of: Callable[[int], int], limit: float
    ) -> int:
        """The highest rung up to `top` predicted to take at most `limit`, from this edge's measurements: a
        rung's own, or from the cost per byte measured between two rungs. Scaling one rung's time by the bytes
        is not used: its fixed part (training's contention, round trips) scaled 30-fold put whole models of
        a small MLP on loopback over a 1.5 s limit. Nothing to predict from: the top, as a rung too slow
        fails and steps down."""
        measured = [m for m in ladder[: top + 1] if m in link.seconds]
        if not measured:
            return top
        # Predictions are made from the most recently measured mode, as a climb makes them.
        base = max(measured, key=lambda m: link.measured_at[m])
        for index in range(top, 0, -1):
            mode = ladder[index]
            predicted = link.seconds[base] if mode == base else self._predict(link, base, mode, bytes_of, scale=False)
            if predicted is None or predicted <= limit:
                return index
        return 0

    def record(
        self,
        peer: str,
        mode: int,
        ladder: Sequence[int],
        *,
        seconds: float,
        sent: int,
        received: int,
        budget: float,
        started_here: bool = False,
        captured: float | None = None,
    ) -> None:
        """An exchange of `mode` with `peer` finished in `seconds` (either end started it; only what this end
        started is paid from its budgets); `captured`: the share of the difference it captured, if known."""
        link = self.links.setdefault(peer, EdgeLink())
        if started_here:
            limit = BANK_CAP * budget
            link.banked = max(-limit, min(limit, link.banked + budget - seconds))
            if mode in ladder and ladder.index(mode) == link.rung:
                link.skips = 0  # the rung measured afresh
        if mode == FULL:
            link.shares[mode] = 1.0
        elif captured is not None:
            old_share = link.shares.get(mode)
            link.shares[mode] = captured if old_share is None else (1 - SMOOTHING) * old_share + SMOOTHING * captured
        now = self.clock()
        link.first_at = now if link.first_at is None else link.first_at
        link.last_at = now
        link.exchanges += 1
        link.budget = budget
        link.last_mode, link.last_seconds = mode, seconds
        # A mean older than REMEASURE_AFTER exchanges is replaced, not blended: it may hold a time remembered
        # at its worst, and one measurement blended with it would keep a mode out that now fits.
        old = None if _unmeasured(link, mode) else link.seconds[mode]
        link.seconds[mode] = seconds if old is None else (1 - SMOOTHING) * old + SMOOTHING * seconds
        link.measured_at[mode] = link.exchanges
        if seconds > 0:
            rate = (sent + received) / seconds
            link.bytes_per_second = (
                rate if link.bytes_per_second is None else (1 - SMOOTHING) * link.bytes_per_second + SMOOTHING * rate
            )
        if mode not in ladder or ladder.index(mode) != link.rung:
            return  # an exchange the peer chose at another rung: measured, but it does not move ours
        # Over budget on the running mean, or by far once: a lone spike (a core busy elsewhere for a moment)
        # does not move the edge, a slower link does.
        allowance = _allowance(link, ladder, budget)
        if (link.seconds[mode] > allowance or seconds > SPIKE * allowance) and link.rung > 0:
            # Remembered at its worst: a mode found too slow is not tried again until REMEASURE_AFTER.
            link.seconds[mode] = max(link.seconds[mode], seconds)
            link.rung -= 1
            link.calm = 0
            link.fits = False
            link.reason = (
                f"{describe_mode(ladder[link.rung])}: {describe_mode(mode)} took {_ms(seconds)}, "
                f"over its {_ms(allowance)} " + ("budget" if allowance == budget else "allowance")
            )
            return
        link.fits = seconds <= allowance
        if seconds <= SWIFT * budget:
            # Far within: three more exchanges at this rung only delay the climb. Eight peers of the character
            # transformer, each with six edges, spent two thirds of their exchanges while training climbing
            # one rung per three exchanges to whole models, which took a twentieth of the budget.
            link.calm = max(link.calm + 1, CLIMB_AFTER)
        elif seconds <= COMFORT * budget:
            link.calm += 1
        else:
            link.calm = 0

    def failed(self, peer: str, ladder: Sequence[int]) -> None:
        """An exchange with `peer` failed or timed out: one rung down (a dead link also sends little)."""
        link = self.links.setdefault(peer, EdgeLink())
        link.calm = 0
        link.fits = False
        if link.settled is not None and link.settled > 0:
            link.settled = min(link.settled, len(ladder) - 1) - 1
            link.reason = f"{describe_mode(ladder[link.settled])}: finishing, the last exchange failed"
            return
        if link.rung > 0:
            link.rung = min(link.rung, len(ladder) - 1) - 1
            link.reason = f"{describe_mode(ladder[link.rung])}: the last exchange failed"

    def over_cap(self, peer: str, mode: int, ladder: Sequence[int]) -> None:
        """`peer` refused an exchange of `mode` this peer started: it sends more than the neighbour's byte cap
        allows. The edge stays at most one rung lower for REMEASURE_AFTER exchanges (its cap per second
        follows its own pace, so the ceiling may lift), and the refusal counts as no failure."""
        if mode not in ladder:
            return
        link = self.links.setdefault(peer, EdgeLink())
        ceiling = max(0, ladder.index(mode) - 1)
        link.ceiling = ceiling if link.ceiling is None or _ceiling_lapsed(link) else min(link.ceiling, ceiling)
        link.ceiling_at = link.exchanges
        link.rung = min(link.rung, link.ceiling)
        link.calm = 0
        link.fits = False
        if link.settled is not None:
            link.settled = min(link.settled, link.ceiling)
        link.reason = f"{describe_mode(ladder[link.ceiling])}: the neighbour's byte cap refused {describe_mode(mode)}"

    def forget(self, peer: str) -> None:
        self.links.pop(peer, None)

    def rate(self, peer: str) -> float | None:
        """Exchanges per second with `peer` since the first one."""
        link = self.links.get(peer)
        return None if link is None else exchange_rate(link)

    @staticmethod
    def _predict(
        link: EdgeLink, mode: int, higher: int, bytes_of: Callable[[int], int], *, scale: bool = True
    ) -> float | None:
        """The next rung's duration: its own recent measurement if there is one. Otherwise this rung's plus
        the extra bytes at the cost per byte measured between two rungs (most of an exchange's time on a
        fast link is fixed: messages through the stack, round trips), or, with one rung measured, this
        rung's scaled by the bytes (an over-estimate, as the fixed part does not grow; None if not `scale`)."""
        if not _unmeasured(link, higher):
            return link.seconds[higher]
        current = link.seconds.get(mode)
        if current is None:
            return None
        size, bigger = bytes_of(mode), bytes_of(higher)
        others = [m for m in link.seconds if m != mode and bytes_of(m) != size and m != higher]
        if others:
            other = max(others, key=lambda m: link.measured_at[m])  # the most recently measured
            per_byte = (current - link.seconds[other]) / (size - bytes_of(other))
            if math.isfinite(per_byte):
                return current + max(0.0, per_byte) * (bigger - size)
        return current * bigger / max(1, size) if scale else None


def _allowance(link: EdgeLink, ladder: Sequence[int], budget: float) -> float:
    """What a rung's exchange may take: the budget, or, where even the cheapest rung's measured time is near or
    over it, FIXED_COST_SLACK times that time. An exchange's time is then mostly what every mode pays (round
    trips, the stack, a busy core): the cheapest mode would not keep within the budget either, so a mode
    that costs little more is sent for the mixing it buys. Without this, the MNIST MLP's and Titanic's edges
    in the simulator (steps under 2 ms, exchanges of any mode 1-5 ms) sat on rank 1 while training, whole
    models costing them hardly more."""
    cheapest = link.seconds.get(ladder[0]) if ladder else None
    return budget if cheapest is None else max(budget, FIXED_COST_SLACK * cheapest)


def _unmeasured(link: EdgeLink, mode: int) -> bool:
    """Whether `mode`'s time on this edge is unknown or older than REMEASURE_AFTER exchanges."""
    return mode not in link.seconds or link.exchanges - link.measured_at[mode] >= REMEASURE_AFTER


def _known_to_fit(link: EdgeLink, higher: int, allowance: float) -> bool:
    """Whether the edge's last exchange at its rung kept within the budget (the allowance, where even the
    cheapest rung is near or over it), and `higher` was measured within it lately (measured once on purpose,
    an exchange the neighbour chose, one the bank paid for): a rung known to fit needs no calm below it.
    Without this an edge of the MNIST MLP in the simulator sat at rank 16 (0.7-0.8 ms of a 1.6 ms budget,
    seldom under half) with whole models measured at 0.9 ms, and the bank never bought them again, as they
    fit the budget. After a climb, a failure or a step down, one exchange at the new rung comes first.
    Exchanges the neighbour chose at other modes, in between, do not reset it: both ends choose in turn, and
    where the edge's very last exchange had to be at its rung, the MLP's edges sent whole models on 83% of
    their exchanges, against 91% now (docs/bench-quality.md)."""
    seconds = link.seconds.get(higher)
    return link.fits and seconds is not None and not _unmeasured(link, higher) and seconds <= allowance


def _top(link: EdgeLink, ladder: Sequence[int], bytes_of: Callable[[int], int], bounds: Bounds) -> int:
    """The highest rung this edge may use: under this peer's byte caps and the neighbour's learnt ceiling,
    and never below the cheapest (an edge must mix)."""
    allowed = [i for i, mode in enumerate(ladder) if bounds.max_bytes is None or bytes_of(mode) <= bounds.max_bytes]
    top = allowed[-1] if allowed else 0
    if link.ceiling is not None and not _ceiling_lapsed(link):
        top = min(top, link.ceiling)
    return top


def _ceiling_lapsed(link: EdgeLink) -> bool:
    return link.exchanges - link.ceiling_at >= REMEASURE_AFTER


def _capped_by(link: EdgeLink, top: int) -> str:
    return "the neighbour's byte cap" if link.ceiling == top and not _ceiling_lapsed(link) else "the byte cap"


def exchange_rate(link: EdgeLink) -> float | None:
    """Exchanges per second on an edge since its first one; None before two."""
    if link.first_at is None or link.last_at is None or link.exchanges < 2:
        return None
    span = link.last_at - link.first_at
    return (link.exchanges - 1) / span if span > 0 else None


def exchange_bounds(
    *,
    interval: float,
    time_share: float,
    max_exchange_bytes: int | None,
    max_bytes_per_second: float | None,
) -> Bounds:
    """The bounds of one exchange, given the seconds between two exchanges this peer starts (`interval`).

    A peer starts one exchange per interval and answers about as many, so a cap in bytes per second allows
    half of interval × cap per exchange."""
    caps = [float(max_exchange_bytes)] if max_exchange_bytes is not None else []
    if max_bytes_per_second is not None:
        caps.append(max_bytes_per_second * interval / 2)
    return Bounds(budget=time_share * interval, max_bytes=min(caps) if caps else None)


def _ms(seconds: float) -> str:
    return f"{seconds * 1000:.0f} ms"
