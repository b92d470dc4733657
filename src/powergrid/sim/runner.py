"""Run a :class:`~powergrid.sim.scenario.Scenario` on the fuzz network and record what happened.

Theory of operation
-------------------
:class:`Simulation` builds one :class:`~powergrid.node.Node` per server on a
:class:`~powergrid.sim.fuzz.FuzzNetwork` (the scenario's latency,
jitter, loss and duplication are its link faults) and drives virtual time
with its own agenda of timed jobs, run between ``network.run_until`` calls:

* every ``supply.interval`` s the supply profile's value is given to every
  live broker-capable node (``Node.set_supply``; only the lead broker's
  counts) when it changed;
* every ``demand.interval`` s each live server's bid is recomputed and given
  to it (``Node.set_bid``) when it changed;
* the failure schedule (:class:`~powergrid.sim.failures.FailureSchedule`):
  crash the lead broker or a cluster's broker (whoever leads *then*, as the
  nodes last announced), crash/restart/isolate one server, partition a
  cluster, heal, join and leave waves, change the loss;
* every ``sample_every`` s a :class:`Sample` of supply, demand, allocation,
  price and leaders is taken and every invariant's ``check`` runs.

Everything the nodes notify goes through one observer that records
elections, membership changes and market rounds, and feeds the invariants
(:class:`~powergrid.sim.harness.Invariant`: ``observe``/``check``/``check_final``);
:class:`_Records` keeps what the summary reports of them.
:class:`MarketGuarantee` (per round) and the power guarantee in time
(:class:`~powergrid.sim.power.PowerGuarantee`, which also gives the figures
of ``SimResult.power`` and ``guarantee_violations``) are always on; others
are passed in (see
:func:`default_invariants`). A run is a pure function of the scenario: the
same scenario and seed give the same records and the same trace hash. Wall
time is read only to report speed.

The cyclic garbage collector is paused while :meth:`Simulation.run` runs
(and switched back on after, if it was on). A run makes almost no cyclic
garbage (reference counting frees what it drops: a 1,000-node minute leaves
a few thousand objects to the collector), but its full passes walk every
live object, and a large data centre holds millions of them: at 10,000
nodes they took about a fifth of the CPU time. Before the collector is
switched back on, everything the run made is moved to its oldest generation
(``gc.freeze()`` then ``gc.unfreeze()``); left young, the millions of objects
would be walked by the first young-generation pass after the run, then again
as they aged (0.5 s at 10,000 nodes).

The nodes of a run share one cache of decodings (:mod:`powergrid.node`), bounded
for one node's process at 16,384 datagrams; while a run goes it has room for
:data:`_DECODINGS_PER_NODE` datagrams per node if that is more (what repeats is
per node: each member's ack of its leader's heartbeats, each server's bid), so a
10,000-node data centre's acks and bids are decoded once, not again at every clear.
"""

from __future__ import annotations

import contextlib
import gc
import heapq
import importlib
import random
import time
from collections.abc import Callable, Iterable, Iterator
from typing import Any

import attrs

from powergrid import wire
from powergrid.errors import DecodeError
from powergrid.events import LeaderElected, LeaderLost, ViewChanged
from powergrid.node import Node, NodeConfig, decoding_room
from powergrid.protocols.market import (
    Bid,
    ClientConfig,
    LeadConfig,
    MarketCleared,
    PriceUpdated,
    Regime,
)
from powergrid.protocols.membership import MemberRemoved
from powergrid.sim.failures import (
    FailureSchedule,
    Marker,
    server_address,
    server_id,
    server_name,
)
from powergrid.sim.fuzz import (
    Delay,
    FuzzNetwork,
    LinkFaults,
    NodeCrashed,
    NodeStarted,
    split_rng,
)
from powergrid.sim.harness import Invariant, Violation, watches
from powergrid.sim.memory import Trace
from powergrid.sim.power import PowerBounds, PowerFigures, PowerGuarantee
from powergrid.sim.scenario import DemandModel, Scenario
from powergrid.types import BROKER_GROUP, Incarnation, NodeId

__all__ = [
    "MESSAGE_NAMES",
    "Capture",
    "Election",
    "MarketGuarantee",
    "MembershipChange",
    "Round",
    "Sample",
    "SimResult",
    "Simulation",
    "default_invariants",
    "server_id",
    "server_name",
    "settled_at",
]

MESSAGE_NAMES: dict[int, str] = {
    cls.TYPE: name
    for name in wire.__all__
    if isinstance(cls := getattr(wire, name), type)
    and issubclass(cls, wire.Message)
    and cls is not wire.Message
}
"""Wire type code -> message class name."""

SIM_REALM = "sim"
"""The realm of every simulated node (one data centre per simulation)."""


# ---------------------------------------------------------------- records


@attrs.frozen(kw_only=True)
class Election:
    """``leader`` was first reported leading ``group`` in ``epoch`` at ``t``.

    ``leaderless_s``: how long the group had no leader before (since the
    start, the crash of the previous leader, or the first LeaderLost about it).
    """

    t: float
    group: int
    epoch: int
    leader: int
    leaderless_s: float | None


@attrs.frozen(kw_only=True)
class MembershipChange:
    """The leader of ``group`` installed view ``view_id`` of ``size`` members at ``t``."""

    t: float
    group: int
    view_id: int
    size: int
    joined: int
    removed: int


@attrs.frozen(kw_only=True)
class Round:
    """One market round as the lead broker cleared it, with the true demand at that time."""

    t: float
    epoch: int
    round: int
    regime: str
    price: float
    supply: int
    demand_required: int
    demand_max: int
    allocated: int
    deficit: int
    clusters: int
    bids: int


@attrs.frozen(kw_only=True)
class Sample:
    """The state at ``t``: supply, demand (sum of r and m over live servers), allocation
    (sum of the caps in force, crashed servers' on their lease included), last cleared
    price and regime, and leaders per group (0 while the group is known to have lost
    its leader)."""

    t: float
    supply: int
    demand_required: int
    demand_max: int
    allocation: int
    price: float | None
    regime: str | None
    live: int
    leaders: tuple[tuple[int, int], ...]


@attrs.frozen(kw_only=True)
class Capture:
    """One datagram delivered while the failover capture window was open."""

    t: float
    src: int
    dst: int
    group: int
    name: str


@attrs.frozen(kw_only=True)
class SimResult:
    """Everything a run recorded; see :mod:`powergrid.sim.report` for the summary."""

    scenario: Scenario
    elections: tuple[Election, ...]
    membership: tuple[MembershipChange, ...]
    removals: dict[str, int]
    rounds: tuple[Round, ...]
    samples: tuple[Sample, ...]
    markers: tuple[Marker, ...]
    violations: tuple[Violation, ...]
    guarantee_violations: int
    prices_applied: int
    stale_rounds: int
    """MarketCleared from a node that no longer led the broker group (left out of ``rounds``)."""
    power: PowerFigures
    """The guarantee in time (:mod:`powergrid.sim.power`); ``guarantee_violations`` counts
    its violating intervals."""
    notifications: dict[str, int]
    sent_by_type: dict[str, int]
    delivered_by_type: dict[str, int]
    dropped_by_type: dict[str, int]
    retransmissions: dict[str, int]
    faults: dict[str, int]
    nodes: dict[str, int]
    virtual_s: float
    wall_s: float
    events: int
    trace_hash: str | None
    capture: tuple[Capture, ...]
    failover: tuple[float, int, int] | None
    """(crash time, group, crashed node) of the failover the capture covers."""


# -------------------------------------------------------------- invariants


class MarketGuarantee:
    """The market's promise, checked on every round and every applied price.

    * ``allocated <= supply`` for every round the lead broker clears;
    * a client whose price counted its current bid, in a round that was not a
      shortage, gets at least its required power;
    * every price lies on the grid's range.

    Follows :class:`~powergrid.sim.harness.Invariant`; ``bid_of(node)`` returns a
    live node's current bid.
    """

    name = "market-guarantee"

    def __init__(self, bid_of: Callable[[int], Bid | None], price_min: float, price_max: float):
        self._bid_of = bid_of
        self._lo = price_min
        self._hi = price_max
        self._problems: list[str] = []
        self.count = 0

    def observe(self, time: float, node: NodeId, output: object) -> None:
        kind = type(output)
        if kind is MarketCleared:
            mc: MarketCleared = output  # type: ignore[assignment]
            if mc.allocated > mc.supply:
                self._fail(
                    f"round {mc.round} (epoch {mc.epoch}) allocated {mc.allocated} W "
                    f"of a supply of {mc.supply} W"
                )
        elif kind is PriceUpdated:
            pu: PriceUpdated = output  # type: ignore[assignment]
            if not self._lo <= pu.price <= self._hi:
                self._fail(f"node {node} applied price {pu.price} outside the grid")
            if pu.regime is Regime.SHORTAGE or not pu.includes_latest_bid:
                return
            bid = self._bid_of(node)
            if bid is not None and pu.allocation < bid.required:
                self._fail(
                    f"node {node} got {pu.allocation} W < required {bid.required} W in "
                    f"{pu.regime.name} round {pu.round} of cluster {pu.group} "
                    f"(epoch {pu.epoch}{', local' if pu.local else ''})"
                )

    def watches(self, kind: type) -> bool:
        """The notification types :meth:`observe` acts on."""
        return kind is MarketCleared or kind is PriceUpdated

    def _fail(self, text: str) -> None:
        self.count += 1
        if len(self._problems) < 100:
            self._problems.append(text)

    def check(self, network: FuzzNetwork) -> list[str]:
        problems, self._problems = self._problems, []
        return problems

    def check_final(self, network: FuzzNetwork) -> list[str]:
        return self.check(network)


InvariantFactory = Callable[["Simulation"], Iterable[Invariant]]


_SAFETY = (
    "Sessions",
    "DeliveryIntegrity",
    "FifoPerSender",
    "BoundedBuffers",
    "ViewIdsGrow",
    "LeaderPerEpoch",  # twins resolving within resolve_s of their contact pass (strict=False)
    "PriceBounds",
    "StaleEpochRefused",
)
"""Invariants of :mod:`powergrid.sim.invariants` that hold at every moment of any scenario."""

_FINAL = ("MembersRemoved", "MembershipConverges", "ElectionsConverge", "PricesFresh")
"""Convergence invariants: checked only when the scenario ends with a quiet tail."""

QUIET_TAIL_S = 10.0
"""Seconds without failures (and no crashed node or partition left) a run must end
with for the convergence invariants to be checked."""


def settled_at(s: Scenario) -> float | None:
    """When the last scheduled failure (with its restart or heal) is over, if the run
    then has :data:`QUIET_TAIL_S` seconds left, no crashed node stays down, no
    partition stays up, and there are no join or leave waves (the convergence
    invariants assume a fixed set of servers); else None."""
    last = 0.0
    for f in s.failures:
        if f.action in ("join", "leave"):
            return None
        if f.action in ("crash_lead", "crash_broker", "crash") and not f.restart_after:
            return None
        if f.action in ("partition", "isolate") and not f.heal_after:
            return None
        last = max(last, f.at + f.restart_after + f.heal_after)
    return last if last <= s.duration - QUIET_TAIL_S else None


def default_invariants(sim: Simulation) -> list[Invariant]:
    """The checkers of :mod:`powergrid.sim.invariants` that apply to a simulation.

    The safety ones (:data:`_SAFETY`) always; the convergence ones
    (:data:`_FINAL`) when the scenario :func:`settled_at` a time. The
    library's market-supply and market-required checkers assume a constant
    supply and fixed bids, so the simulation's own :class:`MarketGuarantee`
    (always on) takes their place. Returns [] if the library is missing.
    """
    try:
        mod: Any = importlib.import_module("powergrid.sim.invariants")
    except ImportError:
        return []
    s = sim.scenario
    specs = tuple(
        mod.NodeSpec(
            node=n,
            cluster=sim.placement(n)[0],
            rank=s.rank_of(sim.placement(n)[1]),
            broker_capable=sim.broker_capable(n),
            bid=sim.initial_bid(n),
        )
        for n in sim.nodes
    )
    settle = settled_at(s)
    info = mod.DataCentre(
        nodes=specs, supply=s.supply_at(0.0), grid=sim.grid, settle_at=settle or 0.0
    )
    names = _SAFETY + (_FINAL if settle is not None else ())
    out: list[Invariant] = []
    sessions = None
    for name in names:
        cls = getattr(mod, name, None)
        if cls is None:
            continue
        if name == "Sessions":
            sessions = cls(info)
            out.append(sessions)
        elif name in ("DeliveryIntegrity", "FifoPerSender"):
            if sessions is not None:
                out.append(cls(info, sessions))
        elif name == "LeaderPerEpoch":
            out.append(cls(info, strict=False))
        else:
            out.append(cls(info))
    return out


_Observe = Callable[[float, NodeId, Any], None]


def _observer(inv: Invariant, kind: type) -> _Observe:
    """What to call for ``inv`` with each notification of type ``kind``: its ``observe``,
    or the one function that would call (see ``observer_of`` of the data centre's
    invariants), one call less for every price every client applies."""
    of = getattr(inv, "observer_of", None)
    direct = of(kind) if of is not None else None
    return direct if direct is not None else inv.observe


def _bid_command(bid: Bid) -> Callable[[Any, float], list[object]]:
    return lambda ep, now: ep.set_bid(bid, now)


_DECODINGS_PER_NODE = 4
"""Room in the cache of decodings per simulated node (see the module docstring): its
ack and its bid, which repeat, and as much again for what passes once."""


@contextlib.contextmanager
def _collector_paused() -> Iterator[None]:
    """Pause the cyclic garbage collector for the block (if it was on, it is on after)."""
    was_on = gc.isenabled()
    gc.disable()
    try:
        yield
    finally:
        if was_on:
            gc.freeze()  # every object the run made goes straight to the oldest generation
            gc.unfreeze()
            gc.enable()


# -------------------------------------------------------------- the network


class _Network(FuzzNetwork):
    """The fuzz network, plus a capture of deliveries while a window is open."""

    capture_until = -1.0
    capture: list[Capture]
    participants: frozenset[int] = frozenset()

    def start_capture(self, node: int, group: int, people: set[int]) -> None:
        """Record deliveries for 8 s from the crash of ``node`` (a leader of ``group``) among
        ``node`` and at most 12 of ``people`` (the highest ids)."""
        self.participants = frozenset(sorted(people | {node})[-12:]) | {node}
        self.capture_until = self.now + 8.0
        self._tap = self._captured
        self.capture.clear()
        self.capture.append(
            Capture(t=self.now - 1e-9, src=node, dst=node, group=group, name="CRASH")
        )

    def _captured(self, t: float, node: int, data: bytes, src: int) -> None:
        if t <= self.capture_until and node in self.participants and src in self.participants:
            self.capture.append(_captured(t, src, node, data))


_QUIET = {"Heartbeat", "HeartbeatAck", "Status", "Stable", "UAck"}


def _captured(t: float, src: int, dst: int, data: bytes) -> Capture:
    try:
        env = wire.decode(data)
    except DecodeError:
        return Capture(t=t, src=src, dst=dst, group=-1, name="(malformed)")
    msg = env.message
    name = type(msg).__name__
    kind = getattr(msg, "kind", None)
    if type(msg) in (wire.Data, wire.UData, wire.Xmit) and kind is not None:
        inner = MESSAGE_NAMES.get(kind, "app") if kind else "app"
        name = f"{name}({inner})"
    return Capture(t=t, src=src, dst=dst, group=env.group, name=name)


# ------------------------------------------------------------- simulation


class _Records:
    """What a :class:`Simulation` records from the nodes' notifications: elections (and how
    long each group went without a leader), views, removals, market rounds and prices."""

    def __init__(self, sim: Simulation) -> None:
        self._sim = sim
        self.leaders: dict[int, tuple[int, int]] = {}  # group -> (epoch, leader)
        self.leaderless: dict[int, float | None] = {}
        self.elections: list[Election] = []
        self.views: dict[int, tuple[int, frozenset[int]]] = {}
        self.changes: list[MembershipChange] = []
        self.removals: dict[str, int] = {}
        self.rounds: list[Round] = []
        self.prices = 0
        self.stale_rounds = 0
        self.price: float | None = None
        self.regime: str | None = None

    def leader(self, group: int) -> int:
        """The leader of ``group`` as the nodes last announced it (highest epoch), or 0."""
        held = self.leaders.get(group)
        return held[1] if held is not None else 0

    def on_elected(self, t: float, node: int, out: LeaderElected) -> None:
        group, epoch = out.group, out.epoch
        held = self.leaders.get(group)
        if held is not None and epoch <= held[0]:
            return
        self.leaders[group] = (epoch, out.leader)
        since = self.leaderless.pop(group, 0.0 if held is None else None)
        gap = None if since is None else round(t - since, 6)
        self.elections.append(
            Election(t=t, group=group, epoch=epoch, leader=out.leader, leaderless_s=gap)
        )

    def on_lost(self, t: float, node: int, out: LeaderLost) -> None:
        # Only a real loss counts (the leader is down, or cut off from the
        # reporter); a LeaderLost from a lossy link is followed by no election.
        held = self.leaders.get(out.group)
        if held is None or out.leader != held[1] or out.group in self.leaderless:
            return
        if held[1] not in self._sim._live or not self._sim.network.connected(node, held[1]):
            self.leaderless[out.group] = t

    def on_view(self, t: float, node: int, out: ViewChanged) -> None:
        view = out.view
        if view.leader != node:
            return
        members = frozenset(view.nodes)
        old = self.views.get(view.group)
        if old is not None and view.view_id <= old[0]:
            return
        before = old[1] if old is not None else frozenset()
        self.views[view.group] = (view.view_id, members)
        self.changes.append(
            MembershipChange(
                t=t,
                group=view.group,
                view_id=view.view_id,
                size=len(members),
                joined=len(members - before),
                removed=len(before - members),
            )
        )

    def on_removed(self, t: float, node: int, out: MemberRemoved) -> None:
        if node == self.leader(out.group) and out.node != node:
            self.removals[out.reason] = self.removals.get(out.reason, 0) + 1

    def on_cleared(self, t: float, node: int, out: MarketCleared) -> None:
        held = self.leaders.get(BROKER_GROUP)
        if held is None or held != (out.epoch, node):
            # a node that no longer leads the broker group still clearing
            self.stale_rounds += 1
            return
        self.price = out.price
        self.regime = out.regime.name.lower()
        self.rounds.append(
            Round(
                t=t,
                epoch=out.epoch,
                round=out.round,
                regime=self.regime,
                price=out.price,
                supply=out.supply,
                demand_required=self._sim._req_sum,
                demand_max=self._sim._max_sum,
                allocated=out.allocated,
                deficit=out.deficit,
                clusters=out.clusters,
                bids=out.bids,
            )
        )

    def on_price(self, t: float, node: int, out: PriceUpdated) -> None:
        self.prices += 1


class Simulation:
    """One run of ``scenario`` (see the module docstring).

    :param trace: records every delivery, drop, notification, fault and
        scenario job, and hashes them.
    :param progress: called with ``(virtual now, duration)`` at every sample.
    :param invariants: makes the extra invariants (default: :func:`default_invariants`).
    :param check_each_event: run the invariants' ``check`` after every event
        (slow at scale) instead of at every sample.
    :param capture: record the deliveries around the first scheduled crash of
        a leader, for a sequence diagram.
    """

    def __init__(
        self,
        scenario: Scenario,
        *,
        trace: Trace | None = None,
        progress: Callable[[float, float], object] | None = None,
        invariants: InvariantFactory | None = default_invariants,
        check_each_event: bool = False,
        capture: bool = False,
        replay: str = "",
    ) -> None:
        self.scenario = s = scenario
        self.trace = trace
        self._progress = progress
        self._check_each_event = check_each_event
        self._capture = capture
        self._replay = replay or f"powergrid simulate --seed {s.seed}"
        self._demand = DemandModel(s.demand, split_rng(s.seed, "demand"), s.duration)
        self.supply = s.supply_at(0.0)
        self._where: dict[int, tuple[int, int]] = {}
        for c in range(1, s.clusters + 1):
            for i in range(s.nodes):
                self._where[server_id(c, i)] = (c, i)
        self.failures = FailureSchedule(self, self._where)
        self.grid = NodeConfig(port=1).client.grid
        # Floors from the join reserve: every server that may be powered has its floor
        # provisioned (an upper bound over the run) and draws it from the moment it joins.
        self._client_cfg = ClientConfig(floor_reserve=True)
        self._lead_cfg = LeadConfig(
            provisioned=len(self._where), floor_provision=self._demand.floor_bound()
        )
        self._bids: dict[int, Bid] = {}
        self._live: set[int] = set()
        self._req_sum = 0
        self._max_sum = 0
        self.records = rec = _Records(self)
        self._samples: list[Sample] = []
        self._notes: dict[type, int] = {}  # notification type -> how many
        self._harvest: dict[str, int] = {"unicast": 0}
        self._started = 0
        self._agenda: list[tuple[float, int, Callable[[float], None]]] = []
        self._agenda_seq = 0
        self._violations: list[Violation] = []
        self.guarantee = MarketGuarantee(self._bid_of, self.grid.price_min, self.grid.price_max)
        net = self.network = _Network(
            seed=s.seed,
            make=self._make,
            link=LinkFaults(
                loss=s.network.loss,
                duplicate=s.network.duplicate,
                delay=Delay(
                    kind="uniform" if s.network.jitter else "constant",
                    base=s.network.latency,
                    spread=s.network.jitter,
                ),
            ),
            observer=self._observe,
            keep_log=False,
            trace=trace,
        )
        net.capture = []
        for n in sorted(self._where):
            self.initial_bid(n)
        self.power = PowerGuarantee(
            self.supply,
            self._bids.__getitem__,
            bounds=PowerBounds(reaction_s=0.05 if s.network.loss <= 0.02 else 5.0),
            network=net,
            servers={
                n: (self._where[n][0], self.broker_capable(n), self._bids[n].floor)
                for n in sorted(self._where)
            },
        )
        self.invariants: list[Invariant] = [self.guarantee, self.power]
        if invariants is not None:
            self.invariants.extend(invariants(self))
        # notification type -> (its record keeper or None, what to call of the invariants
        # that watch it: see _observer)
        self._plans: dict[type, tuple[Callable[[float, int, Any], None] | None, list[_Observe]]]
        self._plans = {}
        self._on: dict[type, Callable[[float, int, Any], None]] = {
            LeaderElected: rec.on_elected,
            LeaderLost: rec.on_lost,
            ViewChanged: rec.on_view,
            MemberRemoved: rec.on_removed,
            MarketCleared: rec.on_cleared,
            PriceUpdated: rec.on_price,
            NodeStarted: self._on_started,
            NodeCrashed: self._on_crashed,
        }

    # ------------------------------------------------------------ queries

    @property
    def nodes(self) -> tuple[NodeId, ...]:
        """Every server of the scenario (initial ones and those join waves add), sorted."""
        return tuple(NodeId(n) for n in sorted(self._where))

    def initial_bid(self, node: int) -> Bid:
        """The bid ``node`` starts with (it may change over the run)."""
        bid = self._bids.get(node)
        if bid is None:
            bid = self._demand.bid(node, self._where[node][1], 0.0)
            self._bids[node] = bid
        return bid

    @property
    def live(self) -> tuple[NodeId, ...]:
        """Servers running now, sorted."""
        return tuple(NodeId(n) for n in sorted(self._live))

    def placement(self, node: int) -> tuple[int, int]:
        """``(cluster, index)`` of a server."""
        return self._where[node]

    def broker_capable(self, node: int) -> bool:
        return self._where[node][1] < self.scenario.brokers

    def leader(self, group: int) -> int:
        """The leader of ``group`` as the nodes last announced it (highest epoch), or 0."""
        return self.records.leader(group)

    def _bid_of(self, node: int) -> Bid | None:
        ep = self.network.endpoint(node)
        return ep.client.bid if isinstance(ep, Node) else None

    # ----------------------------------------------------------- building

    def _make(self, node: NodeId, incarnation: Incarnation) -> Node:
        s = self.scenario
        cluster, index = self._where[node]
        host, port = server_address(cluster, index)
        bid = self._bids.get(node)
        if bid is None:
            bid = self._demand.bid(node, index, self.network.now)
        cfg = NodeConfig(
            realm=SIM_REALM,
            host=host,
            port=port,
            cluster=cluster,
            rank=s.rank_of(index),
            broker_capable=index < s.brokers,
            supply=self.supply,
            bid=bid,
            client=self._client_cfg,
            lead=self._lead_cfg,
        )
        self._set_bid_record(node, bid)
        return Node(
            cfg, incarnation=incarnation, rng=random.Random(f"{s.seed}/{node}/{incarnation}")
        )

    def _set_bid_record(self, node: int, bid: Bid) -> None:
        old = self._bids.get(node)
        self._bids[node] = bid
        if node in self._live:
            self.power.ledger.bid(self.network.now, node, bid)
            if old is not None:
                self._req_sum -= old.required
                self._max_sum -= old.maximum
            self._req_sum += bid.required
            self._max_sum += bid.maximum

    # ---------------------------------------------------------- observing

    def _observe(self, t: float, node: NodeId, out: object) -> None:
        # Called for every notification of every node (at 10,000 nodes, a million
        # MemberJoined as the clusters form): one lookup finds what to do with its type.
        kind = type(out)
        notes = self._notes
        plan = self._plans.get(kind)
        if plan is None:
            watchers = [_observer(inv, kind) for inv in self.invariants if watches(inv, kind)]
            plan = self._plans[kind] = (self._on.get(kind), watchers)
            notes[kind] = 0
        notes[kind] += 1
        handler, watchers = plan
        if handler is not None:
            handler(t, node, out)
        for observe in watchers:
            observe(t, node, out)

    def _on_started(self, t: float, node: int, out: NodeStarted) -> None:
        self._live.add(node)
        bid = self._bids.get(node)
        if bid is not None:
            self._req_sum += bid.required
            self._max_sum += bid.maximum
        self._started += 1

    def _drop_live(self, node: int) -> None:
        if node not in self._live:
            return
        self._live.discard(node)
        bid = self._bids.get(node)
        if bid is not None:
            self._req_sum -= bid.required
            self._max_sum -= bid.maximum

    def _on_crashed(self, t: float, node: int, out: NodeCrashed) -> None:
        self._drop_live(node)

    # ------------------------------------------------------------- agenda

    def _at(self, t: float, job: Callable[[float], None]) -> None:
        self._agenda_seq += 1
        heapq.heappush(self._agenda, (t, self._agenda_seq, job))

    def _note(self, what: str, **fields: Any) -> None:
        if self.trace is not None:
            self.trace.record(self.network.now, fields.pop("node", 0), "sim", what=what, **fields)

    def _supply_job(self, t: float) -> None:
        watts = self.scenario.supply_at(t)
        if watts != self.supply:
            self.supply = watts
            self.power.ledger.supply(t, watts)
            self._note("supply", watts=watts)
            for n in sorted(self._live):
                if self.broker_capable(n):
                    self.network.command(n, lambda ep, now: ep.set_supply(watts, now))
        self._at(t + self.scenario.supply.interval, self._supply_job)

    def _demand_job(self, t: float) -> None:
        model = self._demand
        for n in sorted(self._live):
            bid = model.bid(n, self._where[n][1], t)
            if bid != self._bids.get(n):
                self._set_bid_record(n, bid)
                self.network.command(n, _bid_command(bid))
        self._at(t + self.scenario.demand.interval, self._demand_job)

    def _sample_job(self, t: float) -> None:
        self._sample(t)
        self._check()
        if self._progress is not None:
            self._progress(t, self.scenario.duration)
        nxt = t + self.scenario.sample_every
        if nxt < self.scenario.duration:
            self._at(nxt, self._sample_job)

    def _sample(self, t: float) -> None:
        self.power.ledger.advance(t)
        rec = self.records
        self._samples.append(
            Sample(
                t=round(t, 6),
                supply=self.supply,
                demand_required=self._req_sum,
                demand_max=self._max_sum,
                allocation=self.power.ledger.cap_sum,
                price=rec.price,
                regime=rec.regime,
                live=len(self._live),
                leaders=tuple(
                    (g, 0 if g in rec.leaderless else v[1]) for g, v in sorted(rec.leaders.items())
                ),
            )
        )

    def _check(self) -> None:
        net = self.network
        for inv in self.invariants:
            for p in inv.check(net):
                self._violate(inv.name, p)

    def _violate(self, name: str, detail: str) -> None:
        s = self.scenario
        self._violations.append(
            Violation(
                seed=s.seed,
                invariant=name,
                time=self.network.now,
                detail=detail,
                replay=self._replay,
            )
        )

    def _harvest_stats(self, ep: Node) -> None:
        for g in ep.groups:
            self._harvest["unicast"] += ep.stack(g).unicast.stats.retransmitted

    # ---------------------------------------------------------------- run

    def run(self) -> SimResult:
        """Run the scenario to its end; returns the records. Endpoint exceptions propagate.

        The cyclic garbage collector is paused meanwhile, and the nodes' shared cache of
        decodings has room for the data centre's size (see the module docstring).
        """
        with _collector_paused(), decoding_room(_DECODINGS_PER_NODE * len(self._where)):
            return self._run()

    def _run(self) -> SimResult:
        s = self.scenario
        net = self.network
        started = time.perf_counter()
        joiners = set(self.failures.joiners)
        for node in sorted(self._where):
            if node not in joiners:
                net.spawn(node)
        self._at(s.supply.interval, self._supply_job)
        if s.demand.profile != "steady":
            self._at(s.demand.interval, self._demand_job)
        self.failures.schedule()
        self._at(0.0, self._sample_job)
        on_event = self._check if self._check_each_event else None
        agenda = self._agenda
        while agenda and agenda[0][0] <= s.duration:
            t, _, job = heapq.heappop(agenda)
            net.run_until(t, on_event=on_event)
            job(t)
        net.run_until(s.duration, on_event=on_event)
        self._sample(s.duration)
        self._check()
        power = self.power.figures(s.duration)
        for inv in self.invariants:
            for p in inv.check_final(net):
                self._violate(inv.name, p)
        if self._progress is not None:
            self._progress(s.duration, s.duration)
        wall = time.perf_counter() - started
        for n in sorted(self._live):
            ep = net.endpoint(n)
            if isinstance(ep, Node):
                self._harvest_stats(ep)
        names = MESSAGE_NAMES
        st = net.stats

        def by_name(d: dict[int, int]) -> dict[str, int]:
            return {names.get(k, str(k)): v for k, v in sorted(d.items())}

        rec = self.records
        return SimResult(
            scenario=s,
            elections=tuple(rec.elections),
            membership=tuple(rec.changes),
            removals=dict(sorted(rec.removals.items())),
            rounds=tuple(rec.rounds),
            samples=tuple(self._samples),
            markers=tuple(self.failures.markers),
            violations=tuple(self._violations),
            guarantee_violations=power.violations,
            prices_applied=rec.prices,
            stale_rounds=rec.stale_rounds,
            power=power,
            notifications=dict(sorted((k.__name__, n) for k, n in self._notes.items())),
            sent_by_type=by_name(st.sent_by_type),
            delivered_by_type=by_name(st.delivered_by_type),
            dropped_by_type=by_name(st.dropped_by_type),
            retransmissions={
                "multicast_xmit": st.sent_by_type.get(wire.Xmit.TYPE, 0),
                "multicast_nak": st.sent_by_type.get(wire.Nak.TYPE, 0),
                "unicast": self._harvest["unicast"],
            },
            faults=dict(sorted(net.faults.items())),
            nodes={
                "started": self._started,
                **self.failures.counts,
                "live_at_end": len(self._live),
            },
            virtual_s=s.duration,
            wall_s=wall,
            events=st.calls,
            trace_hash=self.trace.hexdigest if self.trace is not None else None,
            capture=tuple(net.capture),
            failover=self.failures.failover,
        )


def quiet_message(name: str) -> bool:
    """Whether a message kind is routine traffic a sequence diagram leaves out."""
    return name in _QUIET
