"""``powergrid fuzz``: seeded fault-injection runs of a real data centre, held to the invariants.

Theory of operation
-------------------
:func:`datacentre` returns a :data:`~powergrid.sim.harness.Build`: from the run's
``system`` random stream it draws a small data centre (1-3 clusters of 3-5
real :class:`~powergrid.node.Node` s, at least one broker-capable node per
cluster, ranks, bids, and a usable supply that gives a surplus, a normal
market, a shortage or a deep shortage, and with ``supply_steps`` one to three changes
of it in the safety phase; every server is provisioned at the lead,
``LeadConfig.provisioned`` and ``floor_provision``, so the join reserve and the
islanding rule are on), and wraps each node in an
:class:`App` that multicasts numbered payloads to its cluster every 0.1-0.4
s (drawn per node) until ``publish_until`` and reports each one as a
:class:`~powergrid.sim.invariants.Published` notification. Restarted nodes come
back through the same factory with the next incarnation and a fresh
``random.Random`` derived from the run's seed, so a seed replays bit for bit.

:func:`run_datacentre` runs one seed through :func:`powergrid.sim.harness.run_seed`
with :func:`powergrid.sim.invariants.all_invariants`: a safety phase of
``safety_s`` (5 s by default) under the seed's drawn faults, then a liveness
phase of ``liveness_s`` (10 s): everything heals, and the run must converge
(elections, views, multicast delivery, fresh prices) within that bound. The
apps stop publishing halfway through the liveness phase so that the resend
buffers must drain before the end.

Every run carries the shell command that replays it (:func:`replay_command`,
with every option the build took) and the Python source that rebuilds it
(:func:`recipe`), so the test :meth:`~powergrid.sim.harness.RunResult.snippet`
prints runs as it is. The command line is :mod:`powergrid.cli.fuzz`.
"""

from __future__ import annotations

import random
from collections.abc import Callable, Iterable
from typing import IO, Any

from powergrid.errors import ConfigError
from powergrid.events import Output
from powergrid.node import Node, NodeConfig
from powergrid.protocols.market import Bid, LeadConfig
from powergrid.protocols.multicast import MAX_MULTICAST_PAYLOAD, MulticastConfig, WindowFull
from powergrid.sim import fuzz
from powergrid.sim.harness import RunResult, System, run_seed
from powergrid.sim.invariants import (
    Bounds,
    DataCentre,
    NodeSpec,
    Published,
    all_invariants,
    app_payload,
)
from powergrid.sim.power import SupplySteps
from powergrid.types import GroupId, Incarnation, NodeId, node_id

__all__ = [
    "DEFAULT_LIVENESS_S",
    "DEFAULT_SAFETY_S",
    "MAX_NODES",
    "App",
    "check_options",
    "datacentre",
    "invariants",
    "power_totals",
    "recipe",
    "replay_command",
    "run_datacentre",
]

DEFAULT_SAFETY_S = 5.0
"""Seconds of virtual time under faults."""
DEFAULT_LIVENESS_S = 10.0
"""Seconds of virtual time after the heal within which the system must converge."""
BASE_PORT = 9000
LARGE_MAX = 32 << 10
"""With ``large``, most large payloads are at most this many bytes (see :meth:`App._size`)."""
_CLUSTER_SIZE = 5
MAX_NODES = _CLUSTER_SIZE * ((65535 - (_CLUSTER_SIZE - 1) - BASE_PORT) // 10 + 1)
"""The most servers a run can have: server ``i`` of cluster ``c`` (from 0) listens on
port ``BASE_PORT + 10 c + i``, and clusters hold at most five servers."""


FLOW_WINDOW = 4
"""The send window (messages) of the nodes of a flow-controlled cluster (rule 27)."""
FLOW_BUFFER = 12
"""Their resend buffer: smaller than the bursts of a cluster's apps need without a window."""
FLOW_BURST = 3
"""Messages their apps try to multicast at each tick (as many as the window takes)."""


class App:
    """An :class:`~powergrid.events.Endpoint`: a node plus an app that multicasts to its cluster.

    Every ``interval`` seconds (the first after a random fraction of it),
    until ``until``, it multicasts the next :func:`~powergrid.sim.invariants.app_payload`
    (up to ``burst`` of them, as many as the send window takes under flow control)
    and returns a :class:`Published` notification with the number the
    multicast machine gave each. ``supply_steps`` (``(t, watts)``, sorted) are given to
    the node at ``t`` (``Node.set_supply``; at its start, those already past).
    """

    def __init__(
        self,
        node: Node,
        *,
        interval: float,
        until: float,
        rng: random.Random,
        large: bool = False,
        burst: int = 1,
        supply_steps: tuple[tuple[float, int], ...] = (),
    ) -> None:
        self.node = node
        self._steps = SupplySteps(supply_steps)
        self._large = large
        self._burst = burst
        self._interval = interval
        self._until = until
        self._rng = rng
        self._next: float | None = None
        self._n = 0
        self._group = GroupId(node.config.cluster)

    @property
    def node_id(self) -> NodeId:
        return self.node.node_id

    def start(self, now: float) -> list[Output]:
        out = self.node.start(now)
        self._supply(now, out)  # a restarted node learns the supply in force
        first = now + self._interval * self._rng.random()
        self._next = first if first < self._until else None
        return out

    def receive(self, data: bytes, now: float) -> list[Output]:
        return self.node.receive(data, now)

    def handle_deadline(self, now: float) -> list[Output]:
        node = self.node
        due = node.next_deadline()
        out = node.handle_deadline(now) if due is not None and due <= now else []
        at = self._steps.next_at
        if at is not None and at <= now:
            self._supply(now, out)
        if self._next is not None and self._next <= now:
            for _ in range(self._burst):
                if not self._publish(now, out):  # the window is full: try at the next tick
                    break
            nxt = now + self._interval
            self._next = nxt if nxt < self._until else None
        return out

    def _size(self) -> int:
        """Bytes of the next payload: 20 (the numbers alone), or with ``large`` drawn:
        small half the time, else past one datagram up to 32 KiB, and one in 50 up
        to 1 MiB (the default ``FragmentConfig.max_message``)."""
        if not self._large:
            return 0
        x = self._rng.random()
        if x < 0.5:
            return 0
        top = LARGE_MAX if x < 0.98 else self.node.config.fragments.max_message
        return self._rng.randint(MAX_MULTICAST_PAYLOAD + 1, top)

    def _publish(self, now: float, out: list[Output]) -> bool:
        """Multicast the next payload; False if flow control refused it (nothing sent)."""
        node = self.node
        payload = app_payload(node.node_id, node.incarnation, self._n + 1, self._size())
        me = node.node_id
        stack = node.stack(self._group)
        if stack.order is not None:  # total order numbers the app's messages itself (a
            # large one takes a number per fragment; it is delivered with its first's)
            seq = stack.order.next_number
        else:
            seq = stack.multicast.delivered[me][1] + 1
        sent = node.multicast(payload, now)
        if any(isinstance(o, WindowFull) for o in sent):
            return False
        self._n += 1
        out.append(  # before the multicast's own delivery, which it announces
            Published(
                group=self._group,
                origin=me,
                incarnation=node.incarnation,
                seq=seq,
                payload=payload,
            )
        )
        out.extend(sent)
        return True

    def _supply(self, now: float, out: list[Output]) -> None:
        """Tell the node the supply steps due by ``now`` (the last one is in force)."""
        due = self._steps.due(now)
        if due:
            out.extend(self.node.set_supply(due[-1][1], now))

    def next_deadline(self) -> float | None:
        due = self.node.next_deadline()
        nxt = self._next
        at = self._steps.next_at
        if at is not None and (nxt is None or at < nxt):
            nxt = at
        if nxt is not None and (due is None or nxt < due):
            return nxt
        return due


def _sizes(rng: random.Random, nodes: int | None) -> list[int]:
    """Cluster sizes: drawn (1-3 clusters of 3-5), or ``nodes`` split into clusters of <= 5."""
    if nodes is None:
        return [rng.choice((3, 3, 4, 4, 5)) for _ in range(rng.choice((1, 1, 2, 2, 3)))]
    clusters = max(1, -(-nodes // _CLUSTER_SIZE))
    base, extra = divmod(nodes, clusters)
    return [base + (i < extra) for i in range(clusters)]


def _supply(rng: random.Random, specs: list[NodeSpec]) -> int:
    h = sum(s.bid.floor for s in specs)
    r = sum(s.bid.required for s in specs)
    m = sum(s.bid.maximum for s in specs)
    x = rng.random()
    if x < 0.4:
        return m + rng.randint(0, m)  # surplus
    if x < 0.75:
        return rng.randint(r, m - 1) if m > r else r  # normal
    if x < 0.95:
        return rng.randint(h, r - 1) if r > h else h  # shortage
    return rng.randint(0, max(h - 1, 0))  # even the floors are cut


def _supply_steps(
    rng: random.Random, specs: list[NodeSpec], safety_s: float
) -> tuple[tuple[float, int], ...]:
    """One to three supply changes at drawn instants of the safety phase (from 0.5 s), each
    to a supply drawn like the first (:func:`_supply`): surplus, normal, shortage or below
    the floors, so they drop, rise and cross the regimes."""
    if safety_s <= 0.5:
        return ()
    times = sorted(round(rng.uniform(0.5, safety_s), 3) for _ in range(rng.randint(1, 3)))
    return tuple((t, _supply(rng, specs)) for t in times)


def check_options(nodes: int | None, safety_s: float, liveness_s: float) -> None:
    """Raise :class:`ConfigError` unless ``nodes`` (None: drawn) is 1..:data:`MAX_NODES`
    and both phase lengths are finite seconds >= 0."""
    if nodes is not None and not 1 <= nodes <= MAX_NODES:
        raise ConfigError(
            f"--nodes {nodes}: give 1..{MAX_NODES} servers (each needs a port from {BASE_PORT})"
        )
    for name, value in (("--safety", safety_s), ("--liveness", liveness_s)):
        if not 0 <= value < float("inf"):
            raise ConfigError(f"{name} {value}: give a number of seconds >= 0")


def replay_command(
    seed: int,
    *,
    nodes: int | None = None,
    safety_s: float = DEFAULT_SAFETY_S,
    liveness_s: float = DEFAULT_LIVENESS_S,
    fanout: bool = False,
    total_order: bool = False,
    large: bool = False,
    flow: bool = False,
    supply_steps: bool = False,
) -> str:
    """The ``powergrid fuzz`` command that replays ``seed`` with these options
    (an option at its default is left out)."""
    cmd = fuzz.replay_command(seed)
    if nodes is not None:
        cmd += f" --nodes {nodes}"
    if safety_s != DEFAULT_SAFETY_S:
        cmd += f" --safety {safety_s!r}"
    if liveness_s != DEFAULT_LIVENESS_S:
        cmd += f" --liveness {liveness_s!r}"
    if fanout:
        cmd += " --fanout"
    if total_order:
        cmd += " --total-order"
    if large:
        cmd += " --large"
    if flow:
        cmd += " --flow"
    if supply_steps:
        cmd += " --supply-steps"
    return cmd


def recipe(
    *,
    nodes: int | None = None,
    safety_s: float = DEFAULT_SAFETY_S,
    liveness_s: float = DEFAULT_LIVENESS_S,
    fanout: bool = False,
    total_order: bool = False,
    large: bool = False,
    flow: bool = False,
    supply_steps: bool = False,
) -> str:
    """Python source that defines ``build`` and ``invariants`` as :func:`run_datacentre` does."""
    return (
        "from powergrid.sim.fuzzing import datacentre, invariants\n\n"
        f"build = datacentre(nodes={nodes!r}, safety_s={safety_s!r}, liveness_s={liveness_s!r}"
        + (", fanout=True" if fanout else "")
        + (", total_order=True" if total_order else "")
        + (", large=True" if large else "")
        + (", flow=True" if flow else "")
        + (", supply_steps=True" if supply_steps else "")
        + ")\n"
    )


def datacentre(
    *,
    nodes: int | None = None,
    safety_s: float = DEFAULT_SAFETY_S,
    liveness_s: float = DEFAULT_LIVENESS_S,
    node_class: Callable[..., Node] = Node,
    fanout: bool = False,
    total_order: bool = False,
    large: bool = False,
    flow: bool = False,
    supply_steps: bool = False,
) -> Callable[[random.Random], System]:
    """A build of a small data centre (see the module docstring).

    ``nodes`` fixes the number of servers (else 3-15 are drawn); ``fanout``
    runs it without IP multicast: group datagrams are fanned out as unicasts
    to seeds (every broker-capable node, i.e. every node that can lead) and
    the members of each sender's last view of the group; ``total_order`` delivers
    the app multicasts of every cluster in total order (``NodeConfig.total_order``) and
    adds the :class:`~powergrid.sim.invariants.TotalOrderAgreement` invariant;
    ``large`` makes about
    half the apps' multicasts large messages, sent as fragments (:meth:`App._size`);
    the members of each sender's last view of the group; ``flow`` runs every
    cluster with multicast flow control (rule 27: ``FLOW_WINDOW``, ``FLOW_BUFFER``,
    apps that try ``FLOW_BURST`` messages a tick); ``supply_steps`` changes the supply
    one to three times within the safety phase (:func:`_supply_steps`: each step a
    supply of any of the four kinds, so drops, rises and regime changes; the apps tell
    their nodes, the invariants judge against the supply in force);
    ``node_class`` lets tests build deliberately broken nodes. Raises
    :class:`ConfigError` for options :func:`check_options` refuses.
    """
    check_options(nodes, safety_s, liveness_s)

    def build(rng: random.Random) -> System:
        base = rng.getrandbits(32)
        realm = f"fuzz-{base:08x}"  # each seed's data centre is a realm of its own
        specs: list[NodeSpec] = []
        configs: dict[int, NodeConfig] = {}
        intervals: dict[int, float] = {}
        for c, size in enumerate(_sizes(rng, nodes)):
            capable = [i == 0 or rng.random() < 0.5 for i in range(size)]
            rng.shuffle(capable)
            for i in range(size):
                port = BASE_PORT + 10 * c + i
                floor = rng.randint(20, 60)
                required = floor + rng.randint(0, 100)
                bid = Bid(
                    floor=floor,
                    required=required,
                    maximum=required + rng.randint(0, 200),
                    priority=rng.choice((0, 0, 1, 2)),
                )
                rank = rng.choice((0, 0, 0, 1))
                nid = node_id("127.0.0.1", port)
                specs.append(
                    NodeSpec(node=nid, cluster=c + 1, rank=rank, broker_capable=capable[i], bid=bid)
                )
                intervals[nid] = round(rng.uniform(0.1, 0.4), 3)
                configs[nid] = NodeConfig(
                    port=port,
                    realm=realm,
                    cluster=c + 1,
                    rank=rank,
                    broker_capable=capable[i],
                    bid=bid,
                )
        supply = _supply(rng, specs)
        steps = (
            _supply_steps(random.Random(f"{base}/supply"), specs, safety_s) if supply_steps else ()
        )
        # Every server may be powered, each with its floor provisioned: the lead's join
        # reserve, and no clearing while it counts at most half of them (islanding).
        lead = LeadConfig(provisioned=len(specs), floor_provision=max(s.bid.floor for s in specs))
        publish_until = safety_s + liveness_s / 2
        flowing = frozenset(s.cluster for s in specs) if flow else frozenset()
        windowed = MulticastConfig(send_window=FLOW_WINDOW, max_buffer=FLOW_BUFFER)
        configs = {
            n: NodeConfig(
                port=cfg.port,
                realm=cfg.realm,
                cluster=cfg.cluster,
                rank=cfg.rank,
                broker_capable=cfg.broker_capable,
                bid=cfg.bid,
                supply=supply,
                total_order=frozenset((cfg.cluster,)) if total_order else frozenset(),
                multicast=windowed if cfg.cluster in flowing else cfg.multicast,
                lead=lead,
            )
            for n, cfg in configs.items()
        }
        info = DataCentre(
            nodes=tuple(specs),
            supply=supply,
            settle_at=safety_s,
            publish_until=publish_until,
            bounds=Bounds(),
            total_order=total_order,
            flow_clusters=flowing,
            supply_steps=steps,
        )

        def make(node: NodeId, incarnation: Incarnation) -> App:
            r = random.Random(f"{base}/{node}/{incarnation}")
            n = node_class(configs[node], incarnation=incarnation, rng=r)
            burst = FLOW_BURST if configs[node].cluster in flowing else 1
            return App(
                n,
                interval=intervals[node],
                until=publish_until,
                rng=r,
                large=large,
                burst=burst,
                supply_steps=steps,
            )

        seeds = tuple(s.node for s in specs if s.broker_capable) if fanout else None
        return System(nodes=tuple(s.node for s in specs), make=make, info=info, fanout_seeds=seeds)

    return build


def invariants(system: System) -> list[Any]:
    """Every invariant of :mod:`powergrid.sim.invariants`, fresh, for ``system``."""
    assert isinstance(system.info, DataCentre)
    return all_invariants(system.info)


def run_datacentre(
    seed: int,
    *,
    nodes: int | None = None,
    safety_s: float = DEFAULT_SAFETY_S,
    liveness_s: float = DEFAULT_LIVENESS_S,
    keep_trace: bool = False,
    trace_file: IO[str] | None = None,
    node_class: Callable[..., Node] = Node,
    fanout: bool = False,
    total_order: bool = False,
    large: bool = False,
    flow: bool = False,
    supply_steps: bool = False,
    **kwargs: Any,
) -> RunResult:
    """Run ``seed`` of the drawn data centre; extra keywords go to :func:`run_seed`.

    The result's violations name the full replay command and its snippet runs
    as it is (for ``node_class`` :class:`~powergrid.node.Node`). Raises
    :class:`ConfigError` for options :func:`check_options` refuses.
    """
    build = datacentre(
        nodes=nodes,
        safety_s=safety_s,
        liveness_s=liveness_s,
        node_class=node_class,
        fanout=fanout,
        total_order=total_order,
        large=large,
        flow=flow,
        supply_steps=supply_steps,
    )
    opts: dict[str, Any] = {
        "nodes": nodes,
        "safety_s": safety_s,
        "liveness_s": liveness_s,
        "fanout": fanout,
        "total_order": total_order,
        "large": large,
        "flow": flow,
        "supply_steps": supply_steps,
    }
    return run_seed(
        seed,
        build,
        invariants,
        safety_s=safety_s,
        liveness_s=liveness_s,
        keep_trace=keep_trace,
        trace_file=trace_file,
        replay=replay_command(seed, **opts),
        recipe=recipe(**opts),
        **kwargs,
    )


def power_totals(figures: Iterable[dict[str, Any] | None]) -> dict[str, Any]:
    """Totals over runs of the power figures (:mod:`powergrid.sim.power`): watt-seconds and
    server-seconds summed (strict and per exemption), the worst admission latency and
    price gap, and how many runs had a strict violation of each kind."""
    out: dict[str, Any] = {
        "overload_watt_seconds": 0.0,
        "strict_overload_watt_seconds": 0.0,
        "starved_server_seconds": 0.0,
        "strict_starved_server_seconds": 0.0,
        "admission_latency_max_s": 0.0,
        "longest_without_price_s": 0.0,
        "exempt": {},
    }
    for f in figures:
        if f is None:
            continue
        for key in (
            "overload_watt_seconds",
            "strict_overload_watt_seconds",
            "starved_server_seconds",
            "strict_starved_server_seconds",
        ):
            out[key] = round(out[key] + f[key], 3)
        worst = f["admission_latency_s"]["max"]
        if worst is not None:
            out["admission_latency_max_s"] = max(out["admission_latency_max_s"], worst)
        out["longest_without_price_s"] = max(
            out["longest_without_price_s"], f["longest_without_price_s"]
        )
        for name, fig in f["exempt"].items():
            into = out["exempt"].setdefault(name, {})
            for k, v in fig.items():
                into[k] = round(into.get(k, 0.0) + v, 3)
    out["exempt"] = dict(sorted(out["exempt"].items()))
    return out
