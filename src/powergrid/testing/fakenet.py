"""A fake network for bare machines: virtual time, seeded faults, a record of what happened.

Theory of operation
-------------------
:class:`FakeNet` drives objects that follow the machine contract
(``docs/architecture.md``): ``handle(event, now) -> list[action]`` and
``next_deadline() -> float | None``. It needs no node, no codec and no
sockets, so a test can put three membership machines, or a lead broker and
two brokers, on one network and watch them talk. (trio's
``testing/_fake_net.py`` is the model: frozen ``attrs`` records and a route
hook.)

*Addresses.* Each machine sits at an :class:`Address`, a node id and an
optional name, so one node can host several machines (a lead broker and a
broker). A ``Send(to=n)`` goes to every machine at node ``n`` whose
``accepts`` filter takes the message; a ``Multicast`` goes to every other
machine that is in the group the sender multicasts to, in sorted address
order. Machines that are down still count as addressed (their copies are
drawn and then dropped); removed ones do not.

*Actions.* ``Send`` and ``Multicast`` become :class:`Packet` records that
:attr:`FakeNet.route` turns into arrival times (the default draws duplication,
loss and latency from :attr:`FakeNet.conditions` with the ``random.Random``
passed in); ``SendReliable`` and ``MulticastReliable`` stand in for the
reliable layer: delayed, cut by partitions and crashes, never lost or
duplicated at random. A packet arrives as ``Received(sender, incarnation,
message)`` if at its arrival time the destination is up and connected to the
sender (a partition drops what is in flight across it). Every other action
is a notification: it is recorded as a :class:`Notice`.

*Time.* One queue holds arrivals and scheduled calls, ordered by (time,
sequence number). Each step takes the earliest of the queue's head and the
machines' deadlines; at a tie the queue goes first unless ``timers_first``.
A timer step wakes, in sorted address order, every machine that is up and
whose deadline has come, with ``DeadlineReached()``. Nothing reads a clock;
the draws of the route happen in the order actions are returned and
addresses sort, so a run is a pure function of the seed and the machines.

*What it records.* :attr:`FakeNet.delivered` (every :class:`Delivery`) and
:attr:`FakeNet.notices` (every notification), unless ``record=False``;
:attr:`FakeNet.observe` sees every call's event and actions as they happen.

Misuse (an unknown address, an address added twice, time going backwards)
raises :class:`~powergrid.errors.UsageError`; a run whose virtual time stops
advancing raises :class:`Stuck`. Exceptions from a machine propagate.
"""

from __future__ import annotations

import heapq
import random
from collections.abc import Callable, Hashable, Iterable, Sequence
from typing import Any, Protocol, TypeAlias

import attrs

from powergrid import wire
from powergrid.errors import ConfigError, UsageError
from powergrid.events import (
    DeadlineReached,
    Multicast,
    MulticastReliable,
    Received,
    Send,
    SendReliable,
)
from powergrid.types import Incarnation, NodeId

__all__ = [
    "Address",
    "Conditions",
    "Delivery",
    "FakeNet",
    "Machine",
    "Notice",
    "Packet",
    "Stuck",
]

WAKE = DeadlineReached()
ALL: Hashable = "all"
"""The group every machine multicasts to and hears unless told otherwise."""


class Machine(Protocol):
    """The machine contract (``powergrid.events``)."""

    def handle(self, event: Any, now: float) -> Sequence[object]:
        """Take one event at ``now`` (seconds); return actions."""

    def next_deadline(self) -> float | None:
        """When the machine next wants ``DeadlineReached`` (seconds), or None."""


class Stuck(AssertionError):
    """Virtual time stopped advancing: some deadline or message loop does not make progress."""


@attrs.frozen(order=True)
class Address:
    """Where a machine sits: its node's id and a name among that node's machines."""

    node: NodeId
    name: str = ""

    def __str__(self) -> str:
        return f"{self.node}/{self.name}" if self.name else str(self.node)


AddressLike: TypeAlias = Address | int


@attrs.frozen(kw_only=True)
class Conditions:
    """How the default route treats an unreliable packet.

    ``latency`` is (min, max) seconds, drawn uniformly (not drawn when equal);
    ``loss`` and ``duplicate`` are probabilities per copy and per packet (not
    drawn when 0). Raises :class:`~powergrid.errors.ConfigError` when out of range.
    """

    latency: tuple[float, float] = (0.001, 0.001)
    loss: float = 0.0
    duplicate: float = 0.0

    def __attrs_post_init__(self) -> None:
        lo, hi = self.latency
        if not 0.0 <= lo <= hi:
            raise ConfigError(f"latency must be 0 <= min <= max seconds, got {self.latency}")
        for name in ("loss", "duplicate"):
            if not 0.0 <= getattr(self, name) <= 1.0:
                raise ConfigError(f"{name} must be a probability in [0, 1]")


@attrs.frozen(kw_only=True)
class Packet:
    """One message on its way: who sent it (which life), to whom, when."""

    source: Address
    incarnation: Incarnation
    destination: Address
    message: wire.Message
    sent: float
    reliable: bool = False


@attrs.frozen
class Delivery:
    """A packet handed to its destination at ``time`` (seconds)."""

    time: float
    packet: Packet


@attrs.frozen
class Notice:
    """A notification (any action that is not a send) a machine returned at ``time``."""

    time: float
    address: Address
    action: object


@attrs.define(eq=False)
class _Slot:
    machine: Machine
    incarnation: Incarnation
    accepts: Callable[[wire.Message], bool] | None
    hears: frozenset[Hashable]
    multicasts_to: Hashable
    up: bool = True


Route: TypeAlias = Callable[[Packet], Sequence[float]]
"""When each copy of a packet arrives (absolute seconds); empty to drop it."""

Observer: TypeAlias = Callable[[Address, object, Sequence[object]], None]
"""Called after every ``handle`` with the address, the event and the actions."""


@attrs.define(eq=False)
class FakeNet:
    """Machines on one virtual-time network. See the module docstring.

    ``rng`` draws every fault and latency; ``codec`` sends every message
    through the real wire codec (proving it fits a datagram and round-trips);
    ``crash_drops_in_flight`` drops a crashed life's packets still on their way
    (default: they arrive, as datagrams would).
    """

    rng: random.Random
    conditions: Conditions = attrs.Factory(Conditions)
    timers_first: bool = False
    codec: bool = False
    crash_drops_in_flight: bool = False
    record: bool = True
    max_spins: int = 10_000
    now: float = 0.0
    observe: Observer | None = None
    route: Route | None = None
    """The route hook (None: :meth:`default_route`); replace it to drop, delay or copy."""
    delivered: list[Delivery] = attrs.field(init=False, factory=list)
    notices: list[Notice] = attrs.field(init=False, factory=list)
    sent: int = attrs.field(init=False, default=0)
    """Copies routed onto the wire (after duplication and loss)."""
    _slots: dict[Address, _Slot] = attrs.field(init=False, factory=dict)
    _order: list[Address] = attrs.field(init=False, factory=list)
    _queue: list[tuple[float, int, Packet | None, Callable[[], object] | None]] = attrs.field(
        init=False, factory=list
    )
    _seq: int = attrs.field(init=False, default=0)
    _side: dict[NodeId, int] = attrs.field(init=False, factory=dict)

    # ------------------------------------------------------------- machines
    def add(
        self,
        where: AddressLike,
        machine: Machine,
        *,
        incarnation: int = 1,
        accepts: Callable[[wire.Message], bool] | None = None,
        hears: Iterable[Hashable] = (ALL,),
        multicasts_to: Hashable = ALL,
    ) -> Address:
        """Put ``machine`` at ``where``; ``accepts`` filters what it is handed (default:
        everything addressed to it), ``hears`` names the groups whose multicasts it
        receives and ``multicasts_to`` the group its ``Multicast`` goes to.
        Raises UsageError if the address is taken."""
        addr = _address(where)
        if addr in self._slots:
            raise UsageError(f"address {addr} is already on the network")
        self._slots[addr] = _Slot(
            machine, Incarnation(incarnation), accepts, frozenset(hears), multicasts_to
        )
        self._order = sorted(self._slots)
        return addr

    def remove(self, where: AddressLike) -> None:
        """Take a machine off the network: no longer addressed, and packets in flight to
        it are dropped; its own still arrive unless ``crash_drops_in_flight``.
        Raises UsageError for an unknown address."""
        del self._slots[self._known(where)]
        self._order = sorted(self._slots)

    def machine(self, where: AddressLike) -> Any:
        """The machine at ``where`` (typed Any so tests can read its state)."""
        return self._slots[self._known(where)].machine

    def addresses(self) -> list[Address]:
        """Every address on the network, sorted."""
        return list(self._order)

    def up(self, where: AddressLike) -> bool:
        """Whether the machine at ``where`` is running."""
        return self._slots[self._known(where)].up

    def incarnation(self, where: AddressLike) -> Incarnation:
        """The life of the machine at ``where`` (1 at first, +1 per restart)."""
        return self._slots[self._known(where)].incarnation

    def crash(self, where: AddressLike) -> None:
        """Stop a machine: it gets no events and its deadline no longer counts."""
        self._slots[self._known(where)].up = False

    def restart(self, where: AddressLike, machine: Machine) -> None:
        """Replace a machine by a new life (incarnation + 1), up. Feed it its start."""
        slot = self._slots[self._known(where)]
        slot.machine, slot.up = machine, True
        slot.incarnation = Incarnation(slot.incarnation + 1)

    # ----------------------------------------------------------- partitions
    def partition(self, *sides: Iterable[int]) -> None:
        """Cut the network: nodes in different sides stop hearing each other. Nodes
        named in no side keep the side they had (all start on side 0)."""
        for k, side in enumerate(sides):
            for node in side:
                self._side[NodeId(node)] = k

    def heal(self) -> None:
        """Join every side again."""
        self._side.clear()

    def connected(self, a: int, b: int) -> bool:
        """Whether node ``a`` hears node ``b`` now."""
        return self._side.get(NodeId(a), 0) == self._side.get(NodeId(b), 0)

    # --------------------------------------------------------------- inputs
    def feed(self, where: AddressLike, event: object) -> Sequence[object]:
        """Hand ``event`` to the machine at ``where`` now and route what it returns
        (the actions are returned too). Raises UsageError if it is down."""
        addr = self._known(where)
        slot = self._slots[addr]
        if not slot.up:
            raise UsageError(f"machine {addr} is down")
        return self._handle(addr, slot, event)

    def call_at(self, time: float, call: Callable[[], object]) -> None:
        """Run ``call()`` at virtual ``time`` (seconds), in the queue with the packets."""
        self._seq += 1
        heapq.heappush(self._queue, (time, self._seq, None, call))

    # ----------------------------------------------------------------- time
    def run(self, until: float, *, stop: Callable[[], bool] | None = None) -> bool:
        """Step through everything due at or before ``until`` (seconds). With ``stop``,
        return True as soon as it holds after a step (``now`` is that step's time);
        otherwise end with ``now = until`` and return False. Raises UsageError if
        ``until`` is in the past, :class:`Stuck` if time stops advancing."""
        if until < self.now:
            raise UsageError(f"cannot run back to {until} from {self.now}")
        spins = 0
        while True:
            due = self._next_time()
            if due is None or due > until:
                self.now = until
                return False
            spins = spins + 1 if due <= self.now else 0
            if spins > self.max_spins:
                raise Stuck(f"virtual time does not advance at {self.now}")
            self._step(due)
            if stop is not None and stop():
                return True

    def run_until_quiet(self, limit: float) -> bool:
        """Run until nothing is queued and no machine that is up has a deadline; True
        if that happened by ``limit`` (seconds), else False with ``now = limit``."""
        spins = 0
        while True:
            due = self._next_time()
            if due is None:
                return True
            if due > limit:
                self.now = limit
                return False
            spins = spins + 1 if due <= self.now else 0
            if spins > self.max_spins:
                raise Stuck(f"virtual time does not advance at {self.now}")
            self._step(due)

    def pending(self) -> list[Packet]:
        """Packets on their way, in arrival order."""
        return [p for _, _, p, _ in sorted(self._queue) if p is not None]

    # ------------------------------------------------------------- routing
    def default_route(self, packet: Packet) -> Sequence[float]:
        """Arrival times under :attr:`conditions`: a duplicate draw per packet, then
        per copy a loss draw and a latency draw (draws skipped when they cannot
        matter). Reliable packets get the latency only."""
        c, rng = self.conditions, self.rng
        copies = 1
        if not packet.reliable and c.duplicate and rng.random() < c.duplicate:
            copies = 2
        lo, hi = c.latency
        times = []
        for _ in range(copies):
            if not packet.reliable and c.loss and rng.random() < c.loss:
                continue
            times.append(packet.sent + (rng.uniform(lo, hi) if hi > lo else lo))
        return times

    def notices_of(self, kind: type, where: AddressLike | None = None) -> list[Any]:
        """The recorded notifications of type ``kind`` (at ``where`` if given)."""
        addr = None if where is None else _address(where)
        return [
            n.action
            for n in self.notices
            if isinstance(n.action, kind) and (addr is None or n.address == addr)
        ]

    # ------------------------------------------------------------ internals
    def _known(self, where: AddressLike) -> Address:
        addr = _address(where)
        if addr not in self._slots:
            raise UsageError(f"no machine at {addr}")
        return addr

    def _next_time(self) -> float | None:
        best = self._queue[0][0] if self._queue else None
        for slot in self._slots.values():
            if slot.up:
                d = slot.machine.next_deadline()
                if d is not None and (best is None or d < best):
                    best = d
        return best

    def _step(self, due: float) -> None:
        self.now = max(self.now, due)
        head = self._queue[0][0] if self._queue else None
        if head is not None and head <= due and not (self.timers_first and self._timer_due(due)):
            _, _, packet, call = heapq.heappop(self._queue)
            if call is not None:
                call()
            else:
                assert packet is not None
                self._deliver(packet)
            return
        for addr in self._order:
            slot = self._slots.get(addr)
            if slot is None or not slot.up:
                continue
            d = slot.machine.next_deadline()
            if d is not None and d <= self.now:
                self._handle(addr, slot, WAKE)

    def _timer_due(self, due: float) -> bool:
        for slot in self._slots.values():
            if slot.up:
                d = slot.machine.next_deadline()
                if d is not None and d <= due:
                    return True
        return False

    def _deliver(self, packet: Packet) -> None:
        slot = self._slots.get(packet.destination)
        if slot is None or not slot.up:
            return
        src, dst = packet.source, packet.destination
        if not self.connected(src.node, dst.node):
            return
        if self.crash_drops_in_flight:
            sender = self._slots.get(src)
            if sender is None or not sender.up or sender.incarnation != packet.incarnation:
                return
        if self.record:
            self.delivered.append(Delivery(self.now, packet))
        event = Received(sender=src.node, incarnation=packet.incarnation, message=packet.message)
        self._handle(dst, slot, event)

    def _handle(self, addr: Address, slot: _Slot, event: object) -> Sequence[object]:
        actions = slot.machine.handle(event, self.now)
        if self.observe is not None:
            self.observe(addr, event, actions)
        for act in actions:
            if isinstance(act, (Send, SendReliable)):
                self._post(addr, slot, act.message, self._at_node(act.to, act.message), act)
            elif isinstance(act, (Multicast, MulticastReliable)):
                targets = [
                    a
                    for a in self._order
                    if a != addr
                    and slot.multicasts_to in self._slots[a].hears
                    and self._takes(a, act.message)
                ]
                self._post(addr, slot, act.message, targets, act)
            elif self.record:
                self.notices.append(Notice(self.now, addr, act))
        return actions

    def _at_node(self, node: NodeId, message: wire.Message) -> list[Address]:
        return [a for a in self._order if a.node == node and self._takes(a, message)]

    def _takes(self, addr: Address, message: wire.Message) -> bool:
        accepts = self._slots[addr].accepts
        return accepts is None or accepts(message)

    def _post(
        self,
        src: Address,
        slot: _Slot,
        message: wire.Message,
        targets: list[Address],
        act: object,
    ) -> None:
        if self.codec:  # one datagram per action, as a node would send it
            data = wire.encode(1, src.node, slot.incarnation, message)
            message = wire.decode(data).message
        reliable = isinstance(act, (SendReliable, MulticastReliable))
        route = self.route or self.default_route
        for dst in targets:
            packet = Packet(
                source=src,
                incarnation=slot.incarnation,
                destination=dst,
                message=message,
                sent=self.now,
                reliable=reliable,
            )
            for when in route(packet):
                self.sent += 1
                self._seq += 1
                heapq.heappush(self._queue, (when, self._seq, packet, None))


def _address(where: AddressLike) -> Address:
    return where if isinstance(where, Address) else Address(NodeId(where))
