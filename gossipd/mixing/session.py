"""One end of one pairwise exchange, as a state machine over messages; no I/O.

    opener = ExchangeSession(...)                 # the end that starts the exchange
    send(opener.start())                          # HELLO: our edge (epoch, round) and degree
    answerer = ExchangeSession(...)               # the end it reached
    outgoing = answerer.answer(hello)             # [phase 0] if the edge is in step, else [HELLO, phase 0]
    while not session.done:                       # either end
        send(*outgoing); incoming = receive()     # the two ends' messages cross in flight
        outgoing = session.receive(incoming)      # checks it, runs the algorithm's next round(s)
    send(*outgoing)                               # an opener may have its last round left to send
    result = session.result()                     # the delta to add, and the edge state to keep

An answering end whose edge is in step with the opener's hello skips its own hello: the opener learns it
from the round message itself (protocols/mix-v2.md, *Edges*). The daemon drives this over a libp2p stream
and the simulator over an in-memory pair; the messages and checks are the same. Any error leaves the
session failed: the caller drops the edge, and the next exchange with that peer starts it afresh.
"""

from __future__ import annotations

import enum
import random
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import torch

from gossipd.mixing.algorithm import Algorithm, Delta, ExchangeContext, MixOutcome, Outgoing, Rounds
from gossipd.mixing.auto import AutoGossip, describe_mode
from gossipd.mixing.clipping import Clipper
from gossipd.mixing.edge import EdgeState, derive_epoch
from gossipd.mixing.layout import ParamLayout, Params
from gossipd.mixing.momentum import clip_momentum, mixes_momentum
from gossipd.mixing.plain import PlainGossip
from gossipd.mixing.probe import captured_share
from gossipd.mixing.weights import edge_weight, sample_pull
from gossipd.wire.errors import ProtocolViolation, WireError
from gossipd.wire.messages import Message, MessageType
from gossipd.wire.tensors import pack_tensors, unpack_tensors


class PeerAborted(WireError):
    """The peer sent ABORT: it gave up on this exchange."""

    reason = "peer-aborted"


class Phase(enum.Enum):
    NEW = "new"
    HELLO = "hello"
    ROUNDS = "rounds"
    DONE = "done"
    FAILED = "failed"


@dataclass(frozen=True, kw_only=True)
class ExchangeResult:
    delta: Delta
    distance: float  # this end's estimate of ‖x_peer − x_self‖ at the exchange
    captured: float | None = None  # the share of ‖x_peer − x_self‖² the exchange captured, where estimated
    edge: EdgeState
    weight: float
    peer_degree: int
    reset: bool  # the edge was (re)started in this exchange
    rounds: int
    clipped: bool  # the delta was scaled down to the clipping radius
    # The share of the way to the neighbour this end's delta moves it (w·c, times the clipping's scale), of
    # the difference the exchange reconstructed (a low-rank one reconstructs part of it)
    share: float = 0.0
    # The change to this end's optimiser momentum, where the exchange mixed it (`[gossip] momentum_every`)
    momentum: Delta | None = None
    suspect: bool  # the peer has been clipped too many exchanges in a row: leave it alone for a while


class ExchangeSession:
    def __init__(
        self,
        *,
        algorithm: Algorithm[Any],
        params: Params,
        layout: ParamLayout,
        self_id: bytes,
        peer_id: bytes,
        edge: EdgeState | None,
        degree: int,
        task: bytes,
        fixed_weight: float | None,
        rng: random.Random,
        device: torch.device,
        clipper: Clipper | None = None,
        examples: int | None = None,
        mode: int | None = None,
        weighted: bool = False,
        momentum_every: int = 0,
        momentum: Callable[[], Params] | None = None,
    ) -> None:
        """`weighted`: the task weighs by samples (`weigh_by`); `examples`: this end's declared dataset size
        there (None: it declares none, as an attached script that gave none). The peer's comes in its
        messages; where both ends declare one, each end scales its step by `sample_pull`, else both mix with
        equal weight (each end sees both messages, so both agree which).

        With an `AutoGossip` algorithm the opener passes the exchange's `mode` (a rung of its ladder); the
        answering end passes none and follows the mode of the opener's hello.

        `momentum_every` (the task's `[gossip] momentum_every`): a whole-model exchange whose edge round is a
        multiple of it also mixes the optimisers' momentum, read from `momentum` (this end's, by parameter
        name) only then; both ends know the round, so both send it or neither does. Without a source, or for
        a parameter it lacks, this end sends zeros, which neither end mixes (gossipd.mixing.plain)."""
        if self_id == peer_id:
            raise ValueError("a peer cannot exchange with itself")
        missing = [name for name in layout.shapes if name not in params]
        if missing:
            raise ValueError(f"the layout's tensors {missing[:5]} are not among the parameters to mix")
        self.family = algorithm if isinstance(algorithm, AutoGossip) else None
        if self.family is None and mode is not None:
            raise ValueError(f"only an auto task's exchanges have a mode (got {mode} for {algorithm.name})")
        if self.family is not None and mode is not None and not self.family.accepts(mode, layout):
            raise ValueError(f"mode {mode} is not on this task's ladder {self.family.ladder(layout)}")
        self.mode = mode
        self.algorithm: Algorithm[Any] = algorithm
        if self.family is not None and mode is not None:
            self.algorithm = self.family.for_mode(mode)
        # Only the layout's tensors are mixed or sent, whatever else the caller holds: personal parameters
        # ([gossip] personal) are left out of the layout and so can never reach the wire.
        self.params = {name: params[name] for name in layout.shapes}
        self.layout = layout
        self.sign = -1.0 if self_id < peer_id else 1.0
        self.peer_id = peer_id
        self.edge = edge if edge is not None else EdgeState.fresh(rng)
        self.degree = degree
        self.task = task
        self.fixed_weight = fixed_weight
        self.rng = rng
        self.device = device
        self.clipper = clipper
        self.momentum_every = momentum_every
        self.momentum_source = momentum
        self.momentum_mixed = False  # whether this exchange mixes momentum (known once its rounds begin)
        self._own_momentum: dict[str, torch.Tensor] | None = None
        self.weighted = weighted or examples is not None
        self.examples = examples
        self.peer_declares: bool | None = None  # whether the peer's first message carried its dataset size
        self.pull = 1.0
        self.clipped = False
        self.clip_scale = 1.0
        self.phase = Phase.NEW
        self.rounds_done = 0
        self.reset = False
        # Once the algorithm's rounds start, the edge data may have changed: a failure must drop the edge.
        self.mixing_started = False
        self.weight = 0.0
        self.peer_degree = 0
        self._rounds: Rounds | None = None
        self._outgoing: Outgoing | None = None
        self._outcome: MixOutcome | None = None

    def start(self) -> Message:
        """The opener's first message: its hello."""
        self._expect_phase(Phase.NEW)
        if self.family is not None and self.mode is None:
            raise ValueError("the opener of an auto exchange must choose its mode")
        self.phase = Phase.HELLO
        return self._message(MessageType.HELLO)

    def answer(self, hello: Message) -> list[Message]:
        """The answering end's first messages, given the opener's hello: its phase-0 round alone when the
        edge is in step (the hello would tell the opener nothing), else its own hello and then phase 0."""
        self._expect_phase(Phase.NEW)
        try:
            if hello.type is not MessageType.HELLO:
                raise ProtocolViolation(f"expected hello, received {hello.type}")
            self._follow_mode(hello)
            if self._in_step(hello):
                self.phase = Phase.HELLO
                return self._on_hello(hello)
            own = self.start()
            return [own, *self._on_hello(hello)]
        except BaseException:
            self.phase = Phase.FAILED
            raise

    def receive(self, message: Message) -> list[Message]:
        """Take the peer's next message; return ours to send next (none once this end has all it needs)."""
        try:
            if message.type is MessageType.ABORT:
                raise PeerAborted(f"peer aborted the exchange: {message.reason or 'no reason given'}")
            if self.phase is Phase.HELLO:
                if message.type is MessageType.HELLO:
                    return self._on_hello(message)
                return self._on_first_round(message)
            self._expect_phase(Phase.ROUNDS)
            return self._on_round(message)
        except BaseException:
            self.phase = Phase.FAILED
            raise

    def abort(self, reason: str) -> Message:
        """An ABORT for the peer, so it stops waiting; this session is failed."""
        self.phase = Phase.FAILED
        return self._message(MessageType.ABORT, reason=reason[:256])

    def result(self) -> ExchangeResult:
        self._expect_phase(Phase.DONE)
        if self._outcome is None:  # pragma: no cover - DONE always sets it
            raise ProtocolViolation("the exchange finished without an outcome")
        return ExchangeResult(
            delta=self._outcome.delta,
            distance=self._outcome.distance,
            captured=self._captured(),
            edge=self.edge,
            weight=self.weight,
            peer_degree=self.peer_degree,
            reset=self.reset,
            rounds=self.rounds_done,
            clipped=self.clipped,
            share=self.weight * self.pull * self.clip_scale,
            momentum=self._outcome.momentum,
            suspect=self.clipper is not None and self.clipper.is_suspect(self.peer_id),
        )

    @property
    def done(self) -> bool:
        return self.phase is Phase.DONE

    def _in_step(self, peer: Message) -> bool:
        return self.edge.synced and self.edge.key == (peer.epoch, peer.round) and self.edge.mode == peer.mode

    def _follow_mode(self, hello: Message) -> None:
        """The answering end of an auto exchange takes the opener's mode, if it is on the task's ladder."""
        if self.family is None:
            return
        if hello.mode is None or not self.family.accepts(hello.mode, self.layout):
            ladder = ", ".join(describe_mode(mode) for mode in self.family.ladder(self.layout))
            raise ProtocolViolation(f"hello for exchange mode {hello.mode!r}, expected one of: {ladder}")
        self.mode = hello.mode
        self.algorithm = self.family.for_mode(hello.mode)

    def _on_hello(self, hello: Message) -> list[Message]:
        if hello.type is not MessageType.HELLO:
            raise ProtocolViolation(f"expected hello, received {hello.type}")
        self._check_examples(hello)
        if not self._in_step(hello):
            epoch = derive_epoch(self.edge.key, (hello.epoch, hello.round))
            data = self._switched(hello, epoch)
            if data is None:
                data = self.algorithm.reset_edge(epoch, self.layout, self.device)
                self.reset = True
            self.edge = EdgeState(epoch=epoch, round=0, synced=True, data=data, mode=self.mode)
        return self._begin_rounds(hello)

    def _switched(self, hello: Message, epoch: int) -> Any | None:
        """An auto edge in step but for its mode (the opener moved it to another rank): the edge's data
        carried over to the new mode, or None (see AutoGossip.switch_edge). Both ends see the same state
        here, the edge's key and old mode being equal on both, so both carry or both reset."""
        in_step_but_mode = self.edge.synced and self.edge.key == (hello.epoch, hello.round)
        if self.family is None or self.mode is None or not in_step_but_mode:
            return None
        return self.family.switch_edge(self.edge.data, self.edge.mode, self.mode, epoch, self.layout, self.device)

    def _on_first_round(self, message: Message) -> list[Message]:
        """The answering end skipped its hello: it found the edge in step, and this is its phase 0."""
        if not self._in_step(message):
            raise ProtocolViolation(
                f"expected hello, received {message.type} for edge state {(message.epoch, message.round)}, "
                f"ours {self.edge.key}"
            )
        self._check_examples(message)
        ours = self._begin_rounds(message)
        return ours + self._on_round(message)

    def _check_examples(self, message: Message) -> None:
        """In a task weighted by samples an end that declares its dataset size does so in every message of
        the exchange (one that declares none, in none); in any other task no message carries one. Every
        message of an auto exchange carries its mode, the same throughout; no other task's does."""
        declares = message.examples is not None
        if not self.weighted and declares:
            raise ProtocolViolation(f"{message.type} message should carry no dataset size (weigh_by)")
        if self.peer_declares is None:
            self.peer_declares = declares
        elif declares != self.peer_declares:
            expected = "its declared dataset size" if self.peer_declares else "no dataset size"
            raise ProtocolViolation(f"{message.type} message should carry {expected}, as its first did (weigh_by)")
        if message.mode != self.mode:
            raise ProtocolViolation(
                f"{message.type} message for exchange mode {message.mode!r}, expected {self.mode!r}"
            )

    def _begin_rounds(self, first: Message) -> list[Message]:
        """The weight, from the peer's first message (its hello, or its phase 0 when it skipped the hello)."""
        self.peer_degree = first.degree
        self.weight = edge_weight(self.fixed_weight, self.degree, first.degree)
        if self.examples is not None and first.examples is not None:
            self.pull = sample_pull(self.examples, first.examples)
        whole = isinstance(self.algorithm, PlainGossip)
        self.momentum_mixed = whole and mixes_momentum(self.momentum_every, self.edge.round)
        self._own_momentum = self._momentum() if self.momentum_mixed else None
        ctx = ExchangeContext(
            params=self.params,
            layout=self.layout,
            weight=self.weight * self.pull,
            sign=self.sign,
            epoch=self.edge.epoch,
            device=self.device,
            rng=torch.Generator().manual_seed(self.rng.getrandbits(63)),
            momentum=self._own_momentum,
        )
        self.phase = Phase.ROUNDS
        self.mixing_started = True
        self._rounds = self.algorithm.rounds(ctx, self.edge.data)
        return self._advance(lambda rounds: next(rounds))

    def _on_round(self, message: Message) -> list[Message]:
        expected = self._outgoing
        if expected is None:  # pragma: no cover - ROUNDS always has an outgoing round
            raise ProtocolViolation("no round is in progress")
        if message.type is not expected.type or message.phase != expected.phase:
            raise ProtocolViolation(
                f"expected {expected.type} phase {expected.phase}, received {message.type} phase {message.phase}"
            )
        if (message.epoch, message.round) != self.edge.key:
            raise ProtocolViolation(
                f"message for edge state {(message.epoch, message.round)}, expected {self.edge.key}"
            )
        self._check_examples(message)
        records = unpack_tensors(message.data, expected.expect)
        self.rounds_done += 1
        return self._advance(lambda rounds: rounds.send(records))

    def _advance(self, step: Callable[[Rounds], Outgoing]) -> list[Message]:
        if self._rounds is None:  # pragma: no cover - set before the first round
            raise ProtocolViolation("the exchange's rounds have not started")
        try:
            outgoing: Outgoing = step(self._rounds)
        except StopIteration as stop:
            self._outcome = self._clip(stop.value)
            self._outgoing = None
            self.edge.round += 1
            self.phase = Phase.DONE
            return []
        self._outgoing = outgoing
        # Both ends send the same layout in every round, so what we expect back is also what we send.
        return [
            self._message(outgoing.type, phase=outgoing.phase, data=pack_tensors(outgoing.tensors, outgoing.expect))
        ]

    def _momentum(self) -> dict[str, torch.Tensor]:
        """This end's momentum of every mixed tensor as of now (a copy: a trainer may step on meanwhile),
        zeros where it has none, in the parameters' dtypes."""
        own = self.momentum_source() if self.momentum_source is not None else {}
        momentum: dict[str, torch.Tensor] = {}
        for name, param in self.params.items():
            value = own.get(name)
            if value is None or value.shape != param.shape:
                momentum[name] = torch.zeros_like(param)
            else:
                momentum[name] = value.detach().to(param.device, param.dtype, copy=True)
        return momentum

    def _captured(self) -> float | None:
        assert self._outcome is not None
        total = self._outcome.total
        return None if total is None else captured_share(self._outcome.distance**2, total**2)

    def _clip(self, outcome: MixOutcome) -> MixOutcome:
        """Self-centred clipping: the move towards the peer is at most w·τ (only this end decides); a
        momentum mix may turn this end's momentum but not lengthen it (gossipd.mixing.momentum)."""
        if self.clipper is None:
            return outcome
        momentum = outcome.momentum
        if momentum and self._own_momentum is not None:
            momentum = clip_momentum(momentum, self._own_momentum)
        factor = self.clipper.factor(outcome.distance, self.peer_id, self.pull, kind=self.mode)
        if factor >= 1.0:
            return MixOutcome(outcome.delta, outcome.distance, outcome.total, momentum)
        self.clipped = True
        self.clip_scale = factor
        delta = {name: d * factor for name, d in outcome.delta.items()}
        return MixOutcome(delta, outcome.distance, outcome.total, momentum)

    def _message(self, kind: MessageType, **body: Any) -> Message:
        return Message(
            type=kind,
            task=self.task,
            epoch=self.edge.epoch,
            round=self.edge.round,
            degree=self.degree,
            examples=self.examples,
            mode=self.mode,
            **body,
        )

    def _expect_phase(self, phase: Phase) -> None:
        if self.phase is not phase:
            raise ProtocolViolation(f"exchange is {self.phase.value}, not {phase.value}")
