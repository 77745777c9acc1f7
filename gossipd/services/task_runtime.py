"""One task inside a daemon: its data, model and trainer, and the services that train, discover and mix.

    loading -> (waiting: fewer live neighbours than [train] min_peers) -> (joining: copy a full model from a
    neighbour) -> training (<-> waiting, once short of neighbours for min_peers_grace) -> stopping

A task resumes from its newest valid checkpoint. Without one (or with one older than `catch_up_after`) it
first looks for a live neighbour that has trained and copies that neighbour's model, so compressed gossip
never has to close a full-rank gap. It checkpoints on an interval and when it stops.
"""

from __future__ import annotations

import dataclasses
import functools
import json
import logging
import math
import random
import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

import torch
import trio

from gossipd.adapters.checkpoint_store import CheckpointError, CheckpointStore
from gossipd.adapters.export import model_to_safetensors
from gossipd.adapters.memory import release_free_memory
from gossipd.data.registry import load_data, load_peer_data
from gossipd.data.spec import ArrayDataset, DataBundle
from gossipd.mixing.algorithm import Algorithm
from gossipd.mixing.auto import describe_mode
from gossipd.mixing.clipping import Clipper
from gossipd.mixing.edge_store import edges_from_state, edges_to_state
from gossipd.mixing.layout import ParamLayout, max_message_bytes, mixed_parameters, personal_of
from gossipd.mixing.link_budget import EdgeLink, exchange_rate
from gossipd.mixing.local import plain_exchange_bytes
from gossipd.mixing.personal import Personal, personal_part, shared_part
from gossipd.mixing.registry import make_algorithm
from gossipd.mixing.state import half_state, state_specs
from gossipd.models.registry import build_model, count_parameters
from gossipd.peering.ledger import Ledger
from gossipd.peering.start_wait import FirstSteps, Start, StartWait
from gossipd.peering.table import SOURCES, PeerRecord, PeerTable
from gossipd.peering.view import PeerView
from gossipd.services.attached_trainer import AttachedTrainer
from gossipd.services.discovery import DiscoveryService
from gossipd.services.exchange import ExchangeService
from gossipd.services.model_host import ModelHost
from gossipd.services.network import DialError, FrameStream, FrameTooLarge, Network, StreamClosed
from gossipd.services.state_transfer import fetch_state, serve_state
from gossipd.services.status import ContributionStatus, LinkStatus, PeerStatus, TaskState, TaskStatus
from gossipd.services.trainer_service import TrainerService
from gossipd.task.access import Access, resolve_access
from gossipd.task.loader import Task
from gossipd.task.sharing import ModelSummary
from gossipd.train.device import pick_device
from gossipd.train.trainer import Trainer
from gossipd.wire.errors import WireError
from gossipd.wire.heartbeat import Heartbeat
from gossipd.wire.messages import Message

if TYPE_CHECKING:
    # trio-typing's stubs (pulled in by libp2p) shadow trio's own annotations and lack TaskStatus.
    from trio_typing import TaskStatus as StartStatus

log = logging.getLogger("gossipd.task")
RECOVERY_RETRY = 2.0  # seconds between attempts to copy a neighbour's model over a diverged one
RECOVERY_BACKOFF_MAX = 60.0
PEER_CHECK_INTERVAL = 0.5  # seconds between counts of live neighbours ([train] min_peers)
# A start wait looks more often: its co-starters begin within this of the first of them (a Titanic budget
# is half a second); each look only reads the peer table.
START_CHECK_INTERVAL = 0.05
ANNOUNCE_LIMIT = 5.0  # seconds a start waits to announce its step 0 (a publish normally takes milliseconds)
FIRST_STEP_LIMIT = 60.0  # seconds a started peer waits for its first step to announce it (a slow first step)
SETTLE = 4.0  # seconds without a new live neighbour after which a start wait's peers begin (or 2 heartbeats)


@dataclass(frozen=True, kw_only=True)
class RunOptions:
    """How this daemon runs a task (local choices, not part of the task file)."""

    data_root: Path | None = None
    peer_index: int | None = None
    peer_count: int | None = None
    bootstrap: tuple[str, ...] = ()
    join_timeout: float = 10.0  # how long a fresh peer looks for a neighbour to copy a model from
    catch_up_after: float = 600.0  # a checkpoint older than this is treated like a fresh start
    checkpoint_interval: float = 60.0
    keep_checkpoints: int = 3
    state_timeout: float = 60.0
    heartbeat_interval: float = 2.0
    seed: int | None = None  # local randomness (exchange partners, compression); None: from the OS
    init_seed: int | None = None  # start from another model than the task's (experiments); None: task seed


@dataclass(frozen=True)
class Attachment:
    """A script's model that a task runs with (`gossipd.attach`) instead of the daemon's own trainer."""

    trainer: AttachedTrainer
    pid: int
    device: str  # where the script's model is, as it says
    fresh: bool  # the script has not trained yet: copy a neighbour's model into it first
    examples: int | None = None  # the training examples the script declares (`gossipd.attach(examples=)`)


@dataclass(frozen=True)
class Services:
    """A loaded task's working parts."""

    trainer: ModelHost
    exchange: ExchangeService
    discovery: DiscoveryService
    store: CheckpointStore | None  # None for an attached task: its script saves its own model
    state_specs: dict[str, Any]
    fresh: bool  # no usable checkpoint: copy a neighbour's model before mixing


class TaskRuntime:
    def __init__(
        self,
        task: Task,
        options: RunOptions,
        *,
        network: Network,
        state_dir: Path,
        attachment: Attachment | None = None,
    ) -> None:
        self.task = task
        self.attachment = attachment
        self.options = options
        self.network = network
        self.folder = state_dir / "tasks" / task.id
        self.state = TaskState.LOADING
        self.error: str | None = None
        self.rng = random.Random(options.seed)
        self.peers = PeerTable(
            self_id=network.peer_id,
            clock=trio.current_time,
            liveness=max(15.0, 5 * options.heartbeat_interval),
            wall_offset=time.time() - trio.current_time(),
        )
        self.view: PeerView[str] = PeerView(task.gossip.view_size, random.Random(self.rng.getrandbits(64)))
        self.ledger = Ledger(clock=time.time, gap=self.peers.liveness)
        self.examples: int | None = None  # training examples it declares (None: an attached script gave none)
        self.services: Services | None = None
        self.device = torch.device("cpu")
        self.state_transfers = 0
        self.divergences = 0  # times the model blew up and was replaced by a neighbour's
        self.last_checkpoint: float | None = None
        self._checkpointed_version: int | None = None  # the trainer's model version in the last checkpoint
        self._cancel = trio.CancelScope()
        self.half_state = half_state(task.gossip.config)
        self.personal = Personal()  # what [gossip] personal keeps on this peer, known once the model is
        self._initial_personal: dict[str, torch.Tensor] = {}  # its first values (a diverged model's reset)
        self.model_summary: ModelSummary | None = None  # once loaded: what the task's advert tells of its model
        self._first_steps = FirstSteps()  # what neighbours declared while this peer waited for min_peers
        self.start_outcome: Start | None = None  # how a start wait ([train] start_wait) ended; None: there was none
        self._starting = False  # in a start wait now

    # -- lifecycle -------------------------------------------------------------------------------------

    async def run(self, *, task_status: StartStatus[None] = trio.TASK_STATUS_IGNORED) -> None:
        """Load, start every service, signal `started`, then run until cancelled or stopped."""
        with self._cancel:
            try:
                services = self.services = await self._load()
            except (ValueError, OSError, RuntimeError) as exc:
                self.state = TaskState.FAILED
                self.error = f"{type(exc).__name__}: {exc}"
                log.error("task %s could not start: %s", self.task.id, self.error)
                task_status.started()
                return
            if self.task.train.min_peers > 0 or self._waits_to_start(services):
                # Held from its first step: no neighbour is known yet (discovery has not even started).
                self.state = TaskState.WAITING
                services.trainer.pause()
            services.exchange.adopt = functools.partial(self._adopt_agreed_model, services)
            async with trio.open_nursery() as nursery:
                await nursery.start(services.discovery.run)
                await nursery.start(services.trainer.run)
                await nursery.start(services.exchange.run)
                nursery.start_soon(self._checkpoint_loop)
                task_status.started()
                await self._wait_for_peers(services)
                if self.start_outcome in (Start.TOGETHER, Start.ALONE):
                    nursery.start_soon(self._announce_first_step, services)
                await self._join_if_needed(services)
                nursery.start_soon(self._recover_when_diverged, services)
                if self.task.train.min_peers > 0:
                    nursery.start_soon(self._keep_min_peers, services)
                if isinstance(services.trainer, TrainerService) and services.trainer.personal_steps:
                    nursery.start_soon(self._personalise_when_finished, services.trainer, services.exchange)

    async def stop(self, grace: float) -> None:
        """Stop gracefully: refuse new exchanges, give those in flight `grace` seconds to finish (then
        abandon them), write a final checkpoint, then cancel every service."""
        if self.state is TaskState.FAILED or self.services is None:
            self._cancel.cancel()
            return
        self.state = TaskState.STOPPING
        await self.services.exchange.stop_accepting()
        with trio.move_on_after(grace):
            await self.services.exchange.wait_idle()
        with trio.move_on_after(max(grace, 30.0)):
            await self.checkpoint()
        self._cancel.cancel()

    # -- loading and joining ---------------------------------------------------------------------------

    async def _load(self) -> Services:
        if self.attachment is not None:
            return self._load_attached(self.attachment)
        task, options = self.task, self.options
        section = task.data
        if options.data_root is not None:
            section = dataclasses.replace(section, base_dir=options.data_root)
        if options.peer_count is None:
            data: DataBundle = await trio.to_thread.run_sync(load_data, section, task.task.seed)
        else:
            share = (section.partition, options.peer_index or 0, options.peer_count)
            data = await trio.to_thread.run_sync(load_peer_data, section, task.task.seed, *share)
        train: ArrayDataset = data.train
        # What loading freed (the raw file, the examples of other peers) stays mapped in the loader thread's
        # malloc arena unless handed back: about 100 MB of a daemon's resident size on MNIST.
        await trio.to_thread.run_sync(release_free_memory)
        self.examples = len(train)
        self.device = pick_device(task.train.device)
        init_seed = task.task.seed if options.init_seed is None else options.init_seed
        model = build_model(task.model, data.spec, init_seed)
        self.model_summary = ModelSummary(count_parameters(model), data.spec.input_shape)
        self.personal = personal_of(model, task.gossip.personal)  # a pattern that fits nothing fails the task
        self._initial_personal = {
            k: v.detach().clone() for k, v in personal_part(model.state_dict(), self.personal.state).items()
        }
        trainer = Trainer(
            model,
            task.train,
            train,
            kind=data.spec.kind,
            device=self.device,
            seed=self.rng.getrandbits(31),
            privacy=task.privacy,
            personal=self.personal.parameters,
        )
        store = CheckpointStore(self.folder / "checkpoints", keep=options.keep_checkpoints)
        loaded = await trio.to_thread.run_sync(store.load_latest)
        algorithm = make_algorithm(task.gossip)
        edges = {}
        fresh = True
        if loaded is not None:
            try:
                trainer.load_state_dict(loaded.state["trainer"])
                edges = edges_from_state(loaded.state.get("edges", {}), algorithm)
                self._restore_peers(loaded.state.get("peers", []))
                self.ledger.restore(loaded.state.get("ledger", []))
                fresh = time.time() - loaded.saved_at > options.catch_up_after
                self.last_checkpoint = loaded.saved_at
                log.info("task %s resumed at step %d from %s", task.id, trainer.step, loaded.path.name)
            except (KeyError, RuntimeError, ValueError, TypeError) as exc:
                log.warning("checkpoint %s does not fit this task (%s); starting afresh", loaded.path, exc)
        access = resolve_access(task.access, task.folder)
        params = mixed_parameters(trainer.model, self.personal.parameters)
        trainer_service = TrainerService(
            trainer,
            # A daemon evaluates on the first eval_samples held-out examples only: keep no more (MNIST's
            # 10,000 test images are 31 MB as float32, the 1,000 it scores 3 MB).
            data.validation.head(task.train.eval_samples),
            eval_every=task.train.eval_every,
            eval_samples=task.train.eval_samples,
            budget=task.train.total_steps,
            personal=self.personal.parameters,
            personal_steps=task.train.personal_steps,
            mixed_peers=self._mixed_peers,
        )
        exchange = self._exchange_service(trainer_service, params, access, algorithm)
        exchange.edges.update(edges)
        return Services(
            trainer=trainer_service,
            exchange=exchange,
            discovery=self._discovery_service(exchange, access),
            store=store,
            state_specs=state_specs(shared_part(trainer.model.state_dict(), self.personal.state), half=self.half_state),
            fresh=fresh,
        )

    def _mixed_peers(self) -> int:
        """This peer and the live neighbours in its view: the peers whose steps mixing averages into its
        model, for `[train] swarm_batch`."""
        return 1 + sum(1 for member in self.view.members if self.peers.is_live(member))

    def _load_attached(self, attachment: Attachment) -> Services:
        """The services around a script's model: no data, no trainer, no checkpoints of the daemon's."""
        host = attachment.trainer
        self.examples = attachment.examples
        access = resolve_access(self.task.access, self.task.folder)
        self.personal = host.personal
        params = {e.name: host.mirror[e.name] for e in host.mixed}
        exchange = self._exchange_service(host, params, access, make_algorithm(self.task.gossip))
        return Services(
            trainer=host,
            exchange=exchange,
            discovery=self._discovery_service(exchange, access),
            store=None,
            state_specs=state_specs(shared_part(host.mirror, self.personal.state), half=self.half_state),
            fresh=attachment.fresh,
        )

    def _exchange_service(
        self, host: ModelHost, params: dict[str, torch.Tensor], access: Access, algorithm: Algorithm[Any]
    ) -> ExchangeService:
        task = self.task
        layout = ParamLayout.of(params)
        return ExchangeService(
            task_hash=task.hash,
            gossip=task.gossip,
            algorithm=algorithm,
            layout=layout,
            max_message_bytes=max_message_bytes(layout),
            plain_exchange_bytes=plain_exchange_bytes(params, task.hash),
            trainer=host,
            network=self.network,
            peers=self.peers,
            view=self.view,
            ready=lambda: self.state is TaskState.TRAINING,
            rng=random.Random(self.rng.getrandbits(64)),
            device=self.device,
            edge_capacity=task.gossip.view_size + 4,
            clipper=Clipper(task.robust),
            access=access,
            ledger=self.ledger,
            examples=self._weighing_examples(),
        )

    def _weighing_examples(self) -> int | None:
        """The dataset size that weights this peer's exchanges (`[gossip] weigh_by = "samples"`), else None;
        None too for an attached script that declared none: it mixes with equal weight."""
        if self.task.gossip.weigh_by != "samples":
            return None
        return self.examples

    def _discovery_service(self, exchange: ExchangeService, access: Access) -> DiscoveryService:
        task, options = self.task, self.options
        discovery = DiscoveryService(
            network=self.network,
            task_hash=task.hash,
            peers=self.peers,
            view=self.view,
            heartbeat=self._heartbeat,
            # A neighbour rewired out of the view keeps its edge state (bounded by edge_capacity) for when the
            # two meet again; one that stopped being live loses it.
            on_leave_view=lambda peer: None if self.peers.is_live(peer) else exchange.forget_edge(peer),
            mixable=exchange.same_phase,
            bootstrap=options.bootstrap,
            heartbeat_interval=options.heartbeat_interval,
            rewire_interval=task.gossip.rewire_interval,
            access=access,
            ledger=self.ledger,
            rng=random.Random(self.rng.getrandbits(64)),
        )
        # Neighbours past the budget refuse this peer's exchanges until they hear it is past it too.
        exchange.on_budget = discovery.announce_now
        return discovery

    def _enough_peers(self) -> bool:
        return len(self.peers.live_members()) >= self.task.train.min_peers

    def _waits_to_start(self, services: Services) -> bool:
        """`[train] start_wait` applies: a budgeted task, no quorum of its own, a peer that has not trained.
        Not an attached script's: it steps before its daemon's hold reaches it, and its neighbours would see a
        trained peer to copy from in a script that has taken one step (`min_peers` holds it instead)."""
        train = self.task.train
        return (
            self.attachment is None
            and train.total_steps is not None
            and train.start_wait > 0
            and train.min_peers == 0
            and services.fresh
            and services.trainer.step == 0
        )

    async def _wait_for_peers(self, services: Services) -> None:
        """`[train] min_peers`: neither train nor mix until that many neighbours are live (state `waiting`,
        entered in `run` before the trainer starts); else `[train] start_wait` (gossipd.peering.start_wait)."""
        if self.state is not TaskState.WAITING:
            return
        if self.task.train.min_peers == 0:
            await self._wait_to_start(services)
            return
        log.info("task %s waits for %d live neighbours ([train] min_peers)", self.task.id, self.task.train.min_peers)
        await _until(self._quorum_with_first_steps)
        services.trainer.resume()
        log.info("task %s sees %d live neighbours: training starts", self.task.id, len(self.peers.live_members()))

    async def _wait_to_start(self, services: Services) -> None:
        limit = self.task.train.start_wait
        log.info(
            "task %s waits up to %.0f s for its neighbours before its first step ([train] start_wait)",
            self.task.id,
            limit,
        )
        wait = StartWait(
            limit=limit, settle=max(SETTLE, 2 * self.options.heartbeat_interval), since=trio.current_time()
        )
        self._starting = True
        # Liveness changes as heartbeats age out, with no event to wait on (as in `_until`).
        while True:
            wait.first_steps.note(self._live_first_steps())
            start = wait.decide(trio.current_time(), self._live_steps())
            if start is not Start.WAIT:
                break
            await trio.sleep(START_CHECK_INTERVAL)
        self.start_outcome, self._starting = start, False
        if start in (Start.TOGETHER, Start.ALONE):
            # Step 0 first, then the first step (`_announce_first_step`): a neighbour whose earlier heartbeats
            # from this peer were lost (sent before its GossipSub mesh formed) would otherwise first hear of it
            # already training, and take it for a running swarm to copy rather than a co-starter.
            with trio.move_on_after(ANNOUNCE_LIMIT):
                await services.discovery.announce()
        services.trainer.resume()
        log.info(
            "task %s starts (%s) after %.1f s with %d live neighbours",
            self.task.id,
            start.value,
            trio.current_time() - wait.since,
            len(self.peers.live_members()),
        )

    async def _announce_first_step(self, services: Services) -> None:
        """Tell the neighbours at once that this peer's wait is over: those still waiting start when they hear
        a co-starter has begun (`StartWait.decide`), and the heartbeat period of a swarm of four is 8 s. On
        Titanic's half-second budget the waits ended up to 0.9 s apart, the first starter trained alone, and
        the finish averaged its model into the others' (3 runs of 29 ended near one class)."""
        with trio.move_on_after(FIRST_STEP_LIMIT):
            while services.trainer.step == 0:  # noqa: ASYNC110 (the trainer signals no event for it)
                await trio.sleep(0.01)
            services.discovery.announce_now()

    def _live_steps(self) -> dict[str, int | None]:
        return {peer: self.peers.records[peer].step for peer in self.peers.live_members()}

    def _live_first_steps(self) -> dict[str, int | None]:
        """The step each live neighbour's first heartbeat declared, as it arrived: a neighbour heard at step 0
        and then at step 1 within one look is a co-starter, not a swarm that had trained."""
        return {peer: self.peers.records[peer].first_step for peer in self.peers.live_members()}

    async def _keep_min_peers(self, services: Services) -> None:
        """Once training, fall back to waiting when fewer than `min_peers` neighbours have been live for the
        grace period (a neighbour restarting, or a blip in its heartbeats, is not reason enough). A peer past
        its training budget has nothing left to hold back."""
        grace = self.task.train.min_peers_grace
        short_since: float | None = None
        while True:
            await trio.sleep(PEER_CHECK_INTERVAL)
            if self.state is not TaskState.TRAINING or services.trainer.training_done or self._enough_peers():
                short_since = None
                continue
            now = trio.current_time()
            short_since = now if short_since is None else short_since
            if now - short_since < grace:
                continue
            log.warning(
                "task %s: %d live neighbours for %.0f s, fewer than [train] min_peers = %d: training pauses",
                self.task.id,
                len(self.peers.live_members()),
                now - short_since,
                self.task.train.min_peers,
            )
            self.state = TaskState.WAITING
            services.trainer.pause()
            await _until(lambda: self._enough_peers() or self.state is not TaskState.WAITING)
            if self.state is TaskState.WAITING:  # not stopping meanwhile
                services.trainer.resume()
                self.state = TaskState.TRAINING
                log.info(
                    "task %s sees %d live neighbours again: training goes on",
                    self.task.id,
                    len(self.peers.live_members()),
                )
            short_since = None

    def _quorum_with_first_steps(self) -> bool:
        """`_enough_peers`, polled while waiting for `min_peers`, noting the first step each live neighbour
        declares meanwhile (`_nobody_trained_yet` goes by them)."""
        self._first_steps.note(self._live_first_steps())
        self._first_steps.note(self._live_steps())
        return self._enough_peers()

    def _a_neighbour_finished(self, services: Services) -> bool:
        """Whether a live neighbour is known to be past its training budget (its heartbeats' `done`)."""
        return any(services.exchange.past_budget_known(peer) for peer in self.peers.live_members())

    def _nobody_trained_yet(self) -> bool:
        """With `min_peers`, peers that waited for each other start together: when every live neighbour was
        first heard of at step 0 (still there, or begun since: its own wait ended a moment sooner) there is
        no trained model to copy, and each starts from the task's seed at once."""
        self._first_steps.note(self._live_first_steps())
        return self.task.train.min_peers > 0 and self._first_steps.co_starters(self._live_steps())

    async def _join_if_needed(self, services: Services) -> None:
        # After a start wait that found no trained neighbour there is no model to copy, and a neighbour that
        # started a moment earlier has only its first steps: start from the task's model. Unless one is past
        # its budget already: a task that trains in moments (Titanic's 300 steps, half a second) was over
        # for the peers whose wait ended half a second sooner, and this one, with nobody left training to
        # mix with, trained its budget alone in 77 ms; the finish then averaged a model trained apart into
        # theirs, and all four ended near one class (62.9-67.4%, in 5 runs of 25). It joins them instead.
        finished = self._a_neighbour_finished(services)
        waited = self.start_outcome in (Start.TOGETHER, Start.ALONE) and not finished
        if (
            not services.fresh
            or self.options.join_timeout <= 0
            or waited
            or (self._nobody_trained_yet() and not finished)
        ):
            self.state = TaskState.TRAINING
            return
        if finished:
            log.info("task %s: a neighbour is past the training budget already: copying a model first", self.task.id)
        self.state = TaskState.JOINING
        services.trainer.pause()
        with trio.move_on_after(self.options.join_timeout):
            while True:
                if await self._copy_from_a_neighbour(services) is not None:
                    break
                if self._nobody_trained_yet() and not finished:
                    break
                await trio.sleep(0.5)
        services.trainer.resume()
        if self.state is TaskState.JOINING:
            self.state = TaskState.TRAINING

    async def _recover_when_diverged(self, services: Services) -> None:
        """A model that blew up cannot be mixed back (see gossipd.services.trainer_service): replace it with a
        neighbour's, as a joining peer does. Meanwhile the task is `joining` again: it neither mixes nor serves
        its model, and writes no checkpoint over the last good one."""
        while True:
            await services.trainer.diverged.wait()
            # Waiting for min_peers: the neighbours to copy a model from are not there yet.
            await _until(lambda: self.state is not TaskState.WAITING)
            if self.state is not TaskState.TRAINING:
                return  # stopping: the checkpoint it writes is skipped (see checkpoint), nothing to recover
            self.state = TaskState.JOINING
            self.divergences += 1
            # A model that keeps blowing up (a learning rate far too high) must not hammer its neighbours
            # for copies: the wait doubles with every divergence.
            delay = min(RECOVERY_BACKOFF_MAX, RECOVERY_RETRY * 2 ** (self.divergences - 1))
            while True:
                await trio.sleep(delay)
                if await self._copy_from_a_neighbour(services, reset_personal=True) is not None:
                    break
                delay = RECOVERY_RETRY
            services.trainer.recovered()
            if self.state is TaskState.JOINING:
                self.state = TaskState.TRAINING

    async def _adopt_agreed_model(self, services: Services, donors: Sequence[str], budget: int) -> str | None:
        """Past the budget, a peer its neighbours never finished with takes their model (see
        ExchangeService._end_stalled_finish): that of the first of `donors` whose state is at step `budget` or
        past it; None if none is."""
        records = [r for r in (self.peers.get(p) for p in donors) if r is not None]
        copied = await self._copy_from_a_neighbour(services, donors=records, min_step=budget)
        return copied.peer_id if copied is not None else None

    async def _copy_from_a_neighbour(
        self,
        services: Services,
        *,
        reset_personal: bool = False,
        donors: Sequence[PeerRecord] | None = None,
        min_step: int = 0,
    ) -> PeerRecord | None:
        """Copy a live neighbour's shared state (all but the personal part, which it never sends); the
        personal part stays this peer's own, or with `reset_personal` (a model that blew up, which part is
        unknown) goes back to its first values. The neighbour is the first of `donors` (by default those
        furthest in training; at most 3 are asked) that answers with a state at step `min_step` or past it;
        returns it, or None."""
        if donors is None:
            donors = sorted(
                (r for r in self.peers.records.values() if self.peers.is_live(r.peer_id) and (r.step or 0) > 0),
                key=lambda r: -(r.step or 0),
            )
        for donor in donors[:3]:
            try:
                with trio.fail_after(self.options.state_timeout):
                    state, step, received = await fetch_state(
                        self.network,
                        donor.peer_id,
                        task_hash=self.task.hash,
                        specs=services.state_specs,
                        device=self.device,
                        handshake=services.exchange.handshake(donor.peer_id),
                    )
            except (DialError, StreamClosed, FrameTooLarge, WireError, trio.TooSlowError) as exc:
                log.info("could not copy the model from %s: %s", donor.peer_id, exc)
                self.peers.exchange_failed(donor.peer_id)
                continue
            if step < min_step:
                log.info("not the model of %s: at step %d, before step %d", donor.peer_id, step, min_step)
                continue
            keep = self._initial_personal if reset_personal else None
            await services.trainer.at_boundary(
                functools.partial(self._load_shared, services.trainer, state, step, keep)
            )
            services.exchange.forget_all_edges()
            services.exchange.count_state_transfer(donor.peer_id, received=received)
            self.state_transfers += 1
            log.info("task %s copied the model of %s at step %d", self.task.id, donor.peer_id, step)
            return donor
        return None

    def _load_shared(
        self, host: ModelHost, shared: dict[str, torch.Tensor], step: int, personal: dict[str, torch.Tensor] | None
    ) -> None:
        """At a boundary: a neighbour's shared state with this peer's personal part (its own, or `personal`)."""
        own = personal if personal is not None else personal_part(host.model_state(), self.personal.state)
        host.load_model_state({**shared, **own}, step)

    async def serve_state(self, stream: FrameStream, request: Message) -> None:
        """Answer a neighbour's state request (the daemon routed it here by task hash)."""
        services = self.services
        if services is None or self.state not in (TaskState.TRAINING, TaskState.STOPPING):
            await stream.reset()
            return
        try:
            with trio.fail_after(self.options.state_timeout):
                if not services.exchange.access.admits(stream.peer_id):
                    raise WireError(f"{stream.peer_id} is not on the task's allow-list")
                await services.exchange.admit(stream, request)
                sent = await serve_state(
                    stream,
                    services.trainer,
                    task_hash=self.task.hash,
                    half=self.half_state,
                    personal=self.personal.state,
                )
        except (StreamClosed, FrameTooLarge, trio.TooSlowError, RuntimeError, WireError) as exc:
            log.info("state transfer to %s failed: %s", stream.peer_id, exc)
            await stream.reset()
            return
        services.exchange.count_state_transfer(stream.peer_id, sent=sent)

    # -- personal fine-tuning ([train] personal_steps) -------------------------------------------------

    async def _personalise_when_finished(self, trainer: TrainerService, exchange: ExchangeService) -> None:
        """Once this peer has finished (past its budget, done with its finish exchanges), fine-tune its
        personal parameters: after the finish, so the shared part they are fitted to is the swarm's."""
        # The finish has no change event; it takes seconds to minutes, so a look every 0.5 s costs nothing.
        while not exchange.finished:  # noqa: ASYNC110
            await trio.sleep(0.5)
        trainer.start_personal()

    @staticmethod
    def _personalised(host: ModelHost) -> bool:
        return not isinstance(host, TrainerService) or host.personalised

    @staticmethod
    def _personal_steps_done(host: ModelHost) -> int:
        return host.trainer.personal_steps if isinstance(host, TrainerService) else 0

    # -- checkpoints -----------------------------------------------------------------------------------

    async def _checkpoint_loop(self) -> None:
        while True:
            await trio.sleep(self.options.checkpoint_interval)
            if self.state is TaskState.TRAINING:
                # A finished or paused peer's model holds still: rewriting it would only wear the disk.
                await self.checkpoint(only_if_changed=True)

    async def checkpoint(self, *, only_if_changed: bool = False) -> Path | None:
        """Write a checkpoint now (with `only_if_changed`, only if the model moved since the last one); a
        failure (full disk, I/O error) is logged and training goes on."""
        if self.services is None or self.services.store is None:
            return None  # an attached task's script saves its own model
        trainer, exchange, store = self.services.trainer, self.services.exchange, self.services.store
        if trainer.diverged.is_set():
            log.warning("task %s: not checkpointing a diverged model over the last good checkpoint", self.task.id)
            return None
        version = trainer.version

        def capture() -> dict[str, Any] | None:
            nonlocal version
            version = trainer.version  # at the boundary: pending deltas are in it
            if only_if_changed and version == self._checkpointed_version:
                return None
            return {
                "task_hash": self.task.hash.hex(),
                "trainer": trainer.capture(),
                "edges": edges_to_state({p: e for p, e in exchange.edges.items() if p not in exchange.in_flight}),
                "peers": [self._peer_to_state(r) for r in self.peers.records.values()],
                "ledger": self.ledger.to_state(),
            }

        try:
            state = await trainer.at_boundary(capture)
        except RuntimeError:
            return None  # the trainer has stopped
        if state is None:
            log.debug("task %s: the model has not changed since the last checkpoint", self.task.id)
            return None
        step = int(state["trainer"]["step"])
        try:
            path = await trio.to_thread.run_sync(lambda: store.save(state, step=step))
        except CheckpointError as exc:
            log.error("checkpoint of task %s failed, training goes on: %s", self.task.id, exc)
            return None
        self.last_checkpoint = time.time()
        self._checkpointed_version = version
        return path

    @staticmethod
    def _peer_to_state(record: PeerRecord) -> dict[str, Any]:
        return {"peer_id": record.peer_id, "addresses": list(record.addresses), "sources": sorted(record.sources)}

    def _restore_peers(self, records: list[Any]) -> None:
        for entry in records:
            try:
                peer = self.peers.saw(
                    str(entry["peer_id"]), "bootstrap", addresses=[str(a) for a in entry["addresses"]], heard=False
                )
            except (KeyError, TypeError):
                continue
            if peer is not None:
                peer.sources = {s for s in entry.get("sources", []) if s in SOURCES} or {"bootstrap"}

    # -- what others read ------------------------------------------------------------------------------

    def admits(self, peer_id: str) -> bool:
        """Whether the task's allow-list (if it has one) lets the peer in; a relay serves only such peers."""
        section = self.task.access
        return section is None or not section.allow or peer_id in section.allow

    def _heartbeat(self) -> Heartbeat:
        services = self.services
        stats = services.trainer.statistics() if services is not None else None
        return Heartbeat(
            task=self.task.hash,
            peer=self.network.peer_id,
            addresses=tuple(self.network.addresses()),
            step=stats.step if stats else 0,
            loss=stats.loss if stats else None,
            exchanges=services.exchange.counters.exchanges if services else 0,
            dataset=self.examples,
            done=services.trainer.training_done if services is not None else False,
        )

    async def export(self) -> bytes:
        if self.services is None:
            raise RuntimeError("the task has no model yet")
        trainer = self.services.trainer
        state = await trainer.at_boundary(trainer.model_state)
        metadata = {
            "task": self.task.id,
            "task_hash": self.task.hash.hex(),
            "step": str(trainer.step),
            "algorithm": self.task.gossip.algorithm,
            "model": self.task.model.name,
            # The personal parameters ([gossip] personal) are in the file too: it is this peer's own model.
            "personal": json.dumps(sorted(self.personal.parameters)),
        }
        return await trio.to_thread.run_sync(model_to_safetensors, state, metadata)

    def status(self) -> TaskStatus:
        services = self.services
        trainer = services.trainer.statistics() if services is not None else None
        exchange = services.exchange.statistics() if services is not None else None
        evaluation = trainer.evaluation if trainer else None
        config = self.task.gossip.config
        settings = (
            dataclasses.asdict(config) if dataclasses.is_dataclass(config) and not isinstance(config, type) else {}
        )
        state = self.state
        if state is TaskState.TRAINING and services is not None and services.trainer.training_done:
            done = services.exchange.finished and self._personalised(services.trainer)
            state = TaskState.FINISHED if done else TaskState.FINISHING
        return TaskStatus(
            id=self.task.id,
            hash=self.task.hash.hex(),
            state=state,
            error=self.error,
            algorithm=self.task.gossip.algorithm,
            settings=settings,
            device=self.attachment.device if self.attachment is not None else str(self.device),
            step=trainer.step if trainer else 0,
            samples=trainer.samples if trainer else 0,
            samples_per_second=trainer.samples_per_second if trainer else 0.0,
            loss=_finite(trainer.loss) if trainer else None,
            accuracy=_finite(evaluation.accuracy) if evaluation else None,
            validation_loss=_finite(evaluation.loss) if evaluation else None,
            evaluated_at_step=trainer.evaluated_at_step if trainer else None,
            exchanges=exchange.exchanges if exchange else 0,
            failed_exchanges=exchange.failed if exchange else 0,
            exchanges_in_flight=exchange.in_flight if exchange else 0,
            bytes_sent=exchange.bytes_sent if exchange else 0,
            bytes_received=exchange.bytes_received if exchange else 0,
            compression_ratio=exchange.compression_ratio if exchange else None,
            consensus_distance=exchange.consensus_distance if exchange else None,
            state_transfers=self.state_transfers,
            last_checkpoint=self.last_checkpoint,
            rejections={
                **(exchange.rejections if exchange else {}),
                **(services.discovery.rejections if services else {}),
            },
            clipped_exchanges=exchange.clipped if exchange else 0,
            momentum_mixes=exchange.momentum_mixes if exchange else 0,
            repeats_skipped=exchange.repeats_skipped if exchange else 0,
            privacy_epsilon=services.trainer.epsilon() if services is not None else None,
            privacy_delta=self.task.privacy.delta if self.task.privacy is not None else None,
            suspects=exchange.suspects if exchange else 0,
            pull_declined=exchange.pull_declined if exchange else 0,
            mix_per_step=exchange.mix_per_step if exchange else None,
            mix_wait_seconds=trainer.held_seconds if trainer else 0.0,
            swarm_batch_peers=(
                services.trainer.trainer.swarm_peers
                if services is not None and isinstance(services.trainer, TrainerService)
                else None
            ),
            divergences=self.divergences,
            personal=tuple(sorted(self.personal.parameters)),
            personal_values=self.personal.values,
            personal_steps=self.task.train.personal_steps,
            personal_steps_done=self._personal_steps_done(services.trainer) if services is not None else 0,
            total_steps=self.task.train.total_steps,
            finish_exchanges=exchange.finish_exchanges if exchange else 0,
            attached_pid=self.attachment.pid if self.attachment is not None else None,
            steps_per_exchange=exchange.steps_per_exchange if exchange else None,
            mixing_cpu=exchange.mixing_cpu if exchange else None,
            mixing_cpu_allowed=exchange.mixing_cpu_allowed if exchange else None,
            min_peers=self.task.train.min_peers,
            live_peers=len(self.peers.live_members()),
            finished_neighbours=exchange.finished_neighbours if exchange else 0,
            start_wait=self.task.train.start_wait if self._starting else None,
            start=self.start_outcome.value if self.start_outcome is not None else None,
            weigh_by=self.task.gossip.weigh_by,
            examples=self.examples,
            peers=self._peer_statuses(),
            ledger=self._ledger_statuses(),
            links=link_statuses(exchange.links) if exchange else (),
            exchange_budget_ms=_ms(exchange.exchange_budget) if exchange else None,
        )

    def _ledger_statuses(self) -> tuple[ContributionStatus, ...]:
        # The ledger's lines carry the status's fields one for one (asdict copies the rejections too).
        return tuple(
            ContributionStatus(live=self.peers.is_live(c.peer_id), **dataclasses.asdict(c))
            for c in self.ledger.entries()
        )

    def _peer_statuses(self) -> tuple[PeerStatus, ...]:
        offset = self.peers.wall_offset

        def wall(t: float | None) -> float | None:
            return None if t is None else t + offset

        view = set(self.view.members)
        exchange = self.services.exchange if self.services is not None else None
        return tuple(
            PeerStatus(
                peer_id=r.peer_id,
                addresses=r.addresses,
                sources=tuple(s for s in SOURCES if s in r.sources),
                first_seen=r.first_seen + offset,
                last_heard=wall(r.last_heard),
                in_view=r.peer_id in view,
                step=r.step,
                loss=r.loss,
                exchanges=r.exchanges,
                failures=r.failures,
                last_exchange=wall(r.last_exchange),
                distance=r.distance,
                backoff_until=wall(r.backoff_until),
                reached=self.network.connection_kind(r.peer_id),
                past_budget=exchange is not None and exchange.past_budget_known(r.peer_id),
            )
            for r in sorted(self.peers.records.values(), key=lambda r: r.peer_id)
        )


async def _until(condition: Callable[[], bool]) -> None:
    # Liveness changes as heartbeats age out, with no event to wait on: look again every PEER_CHECK_INTERVAL.
    while not condition():  # noqa: ASYNC110
        await trio.sleep(PEER_CHECK_INTERVAL)


def link_statuses(links: Mapping[str, EdgeLink]) -> tuple[LinkStatus, ...]:
    """An auto task's edges as the status shows them, by peer id; an edge with no completed exchange yet has
    nothing measured to show."""
    return tuple(
        LinkStatus(
            peer_id=peer,
            mode=describe_mode(link.last_mode),
            reason=link.reason,
            exchanges=link.exchanges,
            exchanges_per_second=exchange_rate(link),
            exchange_ms=_ms(link.seconds.get(link.last_mode)),
            budget_ms=_ms(link.budget),
            bytes_per_second=link.bytes_per_second,
            captured=link.shares.get(link.last_mode),
        )
        for peer, link in sorted(links.items())
        if link.last_mode is not None
    )


def _ms(seconds: float | None) -> float | None:
    return None if seconds is None else seconds * 1000


def _finite(value: float | None) -> float | None:
    return value if value is not None and math.isfinite(value) else None
