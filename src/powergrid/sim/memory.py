"""An in-memory network with virtual time: drives endpoints without sockets or clocks.

Theory of operation
-------------------
:class:`MemoryNetwork` is a discrete-event simulator. It takes pending events
in ``(virtual time, sequence number)`` order: datagram deliveries, endpoint
wake-ups, delayed starts and (in the fuzz network) fault steps. The sequence
number breaks ties in the order events were scheduled, so a run is a pure
function of its inputs: the same seed and the same endpoints give the same
deliveries, in the same order, at the same times. The events wait in a heap,
except deliveries due no earlier than the last delivery queued, which wait in
a plain queue (with a constant latency, every delivery: a datagram sent later
is due later) that is already in that order; the next event is the earlier of
the two queues' first, the order one heap would give, without a heap sift per
delivery (at 10,000 nodes the heap holds a wake-up per node).

*Driving endpoints.* The network calls an :class:`~powergrid.events.Endpoint`'s
``start``, ``receive`` and ``handle_deadline`` with the virtual ``now``, and
handles what they return:

* :class:`~powergrid.events.Transmit` -- one copy to node ``to`` after the link
  latency;
* :class:`~powergrid.events.TransmitGroup` -- one copy to every node subscribed
  to the group, in sorted id order, not to the sender unless ``loopback``;
  with ``fanout_seeds`` (a network without IP multicast) one copy to each node
  of the sender's fan-out set instead (:class:`~powergrid.fanout.FanOut`:
  seeds and the members of the group's last view the sender installed,
  refreshed on each of its ``ViewChanged``), as the UDP transports do;
* :class:`~powergrid.events.JoinGroup` / :class:`~powergrid.events.LeaveGroup`
  -- the node's subscriptions;
* anything else is a notification for the application: it goes to the
  ``observer`` callback, the in-memory :attr:`MemoryNetwork.log` (unless turned
  off) and the :class:`Trace`.

*Timers cost nothing while idle.* After every call into an endpoint the
network reads its ``next_deadline()`` once and schedules a single wake-up for
it. A wake-up carries a token (its heap sequence number); rescheduling an
earlier deadline just replaces the node's token, so superseded wake-ups are
discarded when they surface (lazy invalidation) and no node is ever scanned
or ticked. A deadline that moves *later* keeps the wake-up already
scheduled. When it surfaces, the network reschedules it at the deadline it
read last if that is still ahead, without asking the node (a node's deadline
changes only in a call, and every call is followed by a read); otherwise it
asks the node, and wakes it only if the deadline has come. So a member whose
leader timeout moves with every heartbeat costs one heap entry per timeout,
not one per heartbeat, and no call. An endpoint's ``handle_deadline`` is never called
before its deadline. Running the clock forward jumps straight from event to
event: a thousand idle nodes cost nothing per simulated second.

*Group sends.* The copies of one group datagram that fall due at the same
time share one heap entry and are delivered one after another in sorted id
order; since nothing is scheduled between them, that is exactly the order
separate entries would give (``step`` still processes one copy at a time).

*What it assumes.* Endpoints are deterministic given their inputs (their
randomness comes from a seeded ``random.Random``). Latency is fixed or a
function of the link; a ``drop`` hook can lose chosen datagrams. Datagrams to
an address with no node, or to a node that was removed while they were in
flight, are dropped and counted; a node added later at that address never
sees datagrams that were in flight to its predecessor.

*Pause.* :meth:`MemoryNetwork.pause` freezes a node: deliveries queue in its
inbox and its timer does not fire; :meth:`MemoryNetwork.resume` hands it the
queued datagrams in arrival order and rearms its timer (firing at once if it
is overdue).

Local misuse (adding a node id twice, running the clock backwards, a negative
latency) raises :class:`~powergrid.errors.UsageError` or
:class:`~powergrid.errors.ConfigError`. Exceptions raised by an endpoint
propagate to the caller of ``step``/``run_until``: they are bugs to report.
"""

from __future__ import annotations

import hashlib
import heapq
import json
import random
from collections import deque
from collections.abc import Callable, Iterable
from json.encoder import encode_basestring_ascii as _json_str
from typing import IO, Any

import attrs

from powergrid.errors import ConfigError, UsageError
from powergrid.events import (
    Endpoint,
    JoinGroup,
    LeaveGroup,
    Transmit,
    TransmitGroup,
    ViewChanged,
)
from powergrid.fanout import FanOut
from powergrid.types import NodeId

__all__ = [
    "Latency",
    "MemoryNetwork",
    "NetworkStats",
    "Observer",
    "Trace",
]

Latency = float | Callable[[NodeId, NodeId], float]
"""Seconds from send to delivery: a constant, or a function of ``(src, dst)``."""

Observer = Callable[[float, NodeId, object], None]
"""Called with ``(time, node, output)`` for every notification a node returns."""

# Heap entry kinds. An entry is (time, seq, kind, node, a, b, c).
_WAKE = 1  # a, b, c unused; valid iff seq is the node's current wake token
_START = 2  # a=endpoint
_STEP = 3  # a=an object the subclass applies (fault step)
_DELIVER_MANY = 4  # a=[(dst, data, src, life of dst's address when sent), ...]

_TYPE_OFFSET = 3  # the message type code's offset in the datagram header


def _type_of(data: bytes) -> int:
    return data[_TYPE_OFFSET] if len(data) > _TYPE_OFFSET else -1


@attrs.define
class NetworkStats:
    """Counters of a network run. ``*_by_type`` are keyed by the header's type code (-1: too short).

    ``sent`` counts datagram copies put on the wire (one per destination),
    ``delivered`` copies handed to an endpoint, ``dropped`` copies lost for
    any reason (no such node, the drop hook, a fault); copies still in flight
    account for the difference.
    """

    sent: int = 0
    delivered: int = 0
    dropped: int = 0
    calls: int = 0
    wakeups: int = 0
    stale_wakeups: int = 0
    notifications: int = 0
    sent_by_type: dict[int, int] = attrs.field(factory=dict)
    delivered_by_type: dict[int, int] = attrs.field(factory=dict)
    dropped_by_type: dict[int, int] = attrs.field(factory=dict)


def _json_line(fields: dict[str, Any]) -> str:
    """``json.dumps(fields, sort_keys=True, separators=(",", ":"))``, the same text, but
    faster for the values a trace line holds (str, int, finite float); a line with
    any other value is left to ``json.dumps``."""
    parts = []
    for key in sorted(fields):
        value = fields[key]
        kind = type(value)
        if kind is str:
            text = _json_str(value)
        elif kind is int:
            text = int.__repr__(value)
        elif kind is float and -_INF < value < _INF:
            text = float.__repr__(value)
        else:
            return json.dumps(fields, sort_keys=True, separators=(",", ":"))
        prefix = _JSON_KEYS.get(key)
        if prefix is None:
            prefix = _JSON_KEYS[key] = _json_str(key) + ":"
        parts.append(prefix + text)
    return "{" + ",".join(parts) + "}"


_JSON_KEYS: dict[str, str] = {}  # key -> its JSON text and the colon
_INF = float("inf")


_RAW_FIELDS: dict[type, tuple[str, ...] | None] = {}
"""Per class: the fields attrs' generated ``repr`` shows, or None to use ``repr`` itself."""


def _raw_fields(cls: type) -> tuple[str, ...] | None:
    fields: tuple[str, ...] | None = None
    if attrs.has(cls) and cls.__repr__.__code__.co_filename.startswith("<attrs generated"):
        fields = tuple(a.name for a in attrs.fields(cls) if a.repr is not False)
    _RAW_FIELDS[cls] = fields
    return fields


def trace_repr(value: object) -> str:
    """``repr(value)`` as attrs' default ``repr`` would give it: node ids as ints.

    The trace (and so its hash) is kept independent of how notifications show
    node ids to people (:func:`powergrid.types.node_repr`): an attrs class with a
    generated ``repr`` is written ``Class(field=...)`` with every shown field's
    value written by this function, as are the items of tuples, lists and dicts;
    anything else is ``repr(value)``.
    """
    cls = type(value)
    if cls is tuple:
        items = [trace_repr(v) for v in value]  # type: ignore[attr-defined]
        return "(" + ", ".join(items) + ("," if len(items) == 1 else "") + ")"
    if cls is list:
        return "[" + ", ".join(trace_repr(v) for v in value) + "]"  # type: ignore[attr-defined]
    if cls is dict:
        return (
            "{"
            + ", ".join(f"{trace_repr(k)}: {trace_repr(v)}" for k, v in value.items())  # type: ignore[attr-defined]
            + "}"
        )
    fields = _RAW_FIELDS[cls] if cls in _RAW_FIELDS else _raw_fields(cls)
    if fields is None:
        return repr(value)
    name = cls.__qualname__.rsplit(">.", 1)[-1]
    return f"{name}(" + ", ".join(f"{f}={trace_repr(getattr(value, f))}" for f in fields) + ")"


class Trace:
    """A run's transcript as JSON lines, with a running SHA-256 of every line.

    Each line is ``{"t": time, "node": id, "ev": event, ...fields}`` with
    sorted keys, so the same run gives the same bytes and the same
    :attr:`hexdigest`. Lines are kept in :attr:`lines` if ``keep`` and written
    to ``file`` if given; the hash is always computed.
    """

    __slots__ = ("_file", "_hash", "_unhashed", "count", "lines")

    def __init__(self, *, keep: bool = False, file: IO[str] | None = None) -> None:
        self._hash = hashlib.sha256()
        self._unhashed: list[str] = []  # lines not yet fed to the hash (fed in batches)
        self._file = file
        self.lines: list[str] | None = [] if keep else None
        self.count = 0

    def record(self, time: float, node: int, event: str, **fields: Any) -> None:
        """Append one line. Field values must be JSON-serialisable."""
        fields["t"] = time
        fields["node"] = node
        fields["ev"] = event
        self._add(_json_line(fields))

    def deliver(self, time: float, node: int, src: int, data: bytes) -> None:
        """``record(time, node, "deliver", src=src, data=data.hex())``, the same line,
        built by hand (it is most of a trace)."""
        if type(time) is float and -_INF < time < _INF and type(node) is type(src) is int:
            self._add(
                f'{{"data":"{data.hex()}","ev":"deliver","node":{node},"src":{src},"t":{time!r}}}'
            )
        else:
            self.record(time, node, "deliver", src=src, data=data.hex())

    def _add(self, line: str) -> None:
        unhashed = self._unhashed
        unhashed.append(line)
        if len(unhashed) >= 256:
            self._feed()
        self.count += 1
        if self.lines is not None:
            self.lines.append(line)
        if self._file is not None:
            self._file.write(line + "\n")

    def _feed(self) -> None:
        """Hash the lines not yet hashed: the same bytes as one line at a time."""
        self._unhashed.append("")  # the newline after the last line
        self._hash.update("\n".join(self._unhashed).encode())
        self._unhashed = []

    @property
    def hexdigest(self) -> str:
        """SHA-256 of every line so far (each followed by a newline)."""
        if self._unhashed:
            self._feed()
        return self._hash.hexdigest()


@attrs.define(eq=False)
class _Slot:
    endpoint: Endpoint
    incarnation: int
    life: int  # the life of its address (a datagram sent to another life is not for it)
    wake_token: int = -1
    wake_at: float = 0.0
    due: float | None = None  # next_deadline() as last read (it changes only in a call)
    paused: bool = False
    inbox: list[tuple[bytes, int]] = attrs.field(factory=list)
    groups: set[int] = attrs.field(factory=set)
    fanout: FanOut | None = None  # fan-out mode: where its group datagrams go


class _Groups:
    """Who receives a node's group datagrams: the group's subscribers, in sorted id
    order and not the sender unless ``loopback`` (IP multicast); or, for a node in
    fan-out mode, its fan-out set (the seeds and the members of its last view of
    the group, :class:`~powergrid.fanout.FanOut`)."""

    __slots__ = ("loopback", "subscribers")

    def __init__(self, loopback: bool) -> None:
        self.loopback = loopback
        self.subscribers: dict[int, list[int]] = {}  # group -> subscribed nodes, sorted

    def join(self, node: int, slot: _Slot, group: int) -> None:
        if group in slot.groups:
            return
        slot.groups.add(group)
        subs = self.subscribers.setdefault(group, [])
        subs.append(node)
        subs.sort()

    def leave(self, node: int, slot: _Slot, group: int) -> None:
        if slot.fanout is not None:
            slot.fanout.forget(group)
        if group not in slot.groups:
            return
        slot.groups.discard(group)
        subs = self.subscribers.get(group)
        if subs is not None:
            subs.remove(node)
            if not subs:
                del self.subscribers[group]

    def receivers(self, node: int, slot: _Slot, group: int) -> list[int]:
        if slot.fanout is not None:
            return list(slot.fanout.targets(group))
        dsts = self.subscribers.get(group, [])
        return dsts if self.loopback else [d for d in dsts if d != node]


class MemoryNetwork:
    """Delivers datagrams between endpoints in virtual time (see the module docstring).

    :param seed: seeds :attr:`rng` (a fresh ``random.Random``); give this or ``rng``.
    :param rng: the network's random stream, for latency functions and builders.
    :param latency: seconds per datagram, or a function ``(src, dst) -> seconds``.
    :param drop: ``(src, dst, data) -> bool``; True loses that copy.
    :param observer: ``(time, node, output)`` for every notification.
    :param loopback: deliver a node's group datagrams to itself too.
    :param keep_log: keep notifications in :attr:`log`.
    :param trace: a :class:`Trace` to record deliveries, drops and notifications in.
    :param fanout_seeds: None: group datagrams reach the group's subscribers (IP
        multicast). Node ids: unicast fan-out mode, each node sending a group
        datagram to these seeds and the members of its last view of the group.
        Views teach (``learn=True``) as they do for keyed nodes: the simulated
        wire forges nothing.
    """

    def __init__(
        self,
        *,
        seed: int | None = None,
        rng: random.Random | None = None,
        latency: Latency = 0.001,
        drop: Callable[[NodeId, NodeId, bytes], bool] | None = None,
        observer: Observer | None = None,
        loopback: bool = False,
        keep_log: bool = True,
        trace: Trace | None = None,
        fanout_seeds: tuple[NodeId, ...] | None = None,
    ) -> None:
        if seed is not None and rng is not None:
            raise ConfigError("give MemoryNetwork a seed or an rng, not both")
        if not callable(latency) and not latency >= 0:
            raise ConfigError(f"latency {latency!r} must be >= 0 seconds")
        self.rng: random.Random = rng if rng is not None else random.Random(seed)
        self._latency = latency
        self._drop = drop
        self._observer = observer
        self._fanout_seeds = fanout_seeds
        self.trace = trace
        self.log: list[tuple[float, NodeId, object]] | None = [] if keep_log else None
        self.stats = NetworkStats()
        self._now = 0.0
        self._seq = 0
        self._heap: list[tuple[Any, ...]] = []
        # Delivery entries due no earlier than the last one queued here (with a constant
        # latency, all of them), in (time, seq) order: a queue, not the heap (see _first).
        self._fifo: deque[tuple[Any, ...]] = deque()
        self._slots: dict[int, _Slot] = {}
        self._life: dict[int, int] = {}
        self._groups = _Groups(loopback)
        # The copies of the delivery entry pushed last, while it is the last entry pushed:
        # the next copy due at the same time joins it (see _send_after).
        self._run: list[tuple[int, bytes, int, int]] | None = None
        self._run_key: tuple[float, int] = (-1.0, -1)  # its time and sequence number
        # (time, dst, data, src) before each delivery, if set (the simulator's capture)
        self._tap: Callable[[float, int, bytes, int], None] | None = None
        self._handlers: dict[type, Callable[[int, _Slot, Any], None]] = {  # Transmit aside
            TransmitGroup: self._on_transmit_group,
            JoinGroup: self._on_join,
            LeaveGroup: self._on_leave,
        }
        if fanout_seeds is not None:
            self._handlers[ViewChanged] = self._on_view

    # ------------------------------------------------------------ properties

    @property
    def now(self) -> float:
        """The virtual time, in seconds."""
        return self._now

    @property
    def nodes(self) -> tuple[NodeId, ...]:
        """The ids of the nodes present (running or paused), sorted."""
        return tuple(NodeId(n) for n in sorted(self._slots))

    @property
    def pending(self) -> int:
        """Heap entries not yet processed (including superseded wake-ups)."""
        return len(self._heap) + len(self._fifo)

    def endpoint(self, node: int) -> Endpoint | None:
        """The endpoint at ``node``, or None."""
        slot = self._slots.get(node)
        return slot.endpoint if slot is not None else None

    def incarnation(self, node: int) -> int | None:
        """The incarnation the endpoint at ``node`` was added with, or None."""
        slot = self._slots.get(node)
        return slot.incarnation if slot is not None else None

    def is_paused(self, node: int) -> bool:
        """Whether ``node`` is present and paused."""
        slot = self._slots.get(node)
        return slot is not None and slot.paused

    def subscribers(self, group: int) -> tuple[NodeId, ...]:
        """The nodes subscribed to ``group``, sorted."""
        return tuple(NodeId(n) for n in self._groups.subscribers.get(group, ()))

    def next_time(self) -> float | None:
        """When the next heap entry is due (it may be a superseded wake-up), or None."""
        first = self._first()
        return first[0] if first is not None else None

    # ------------------------------------------------------------- topology

    def add(self, endpoint: Endpoint, *, at: float | None = None, incarnation: int = 1) -> None:
        """Add ``endpoint`` and call its ``start`` now, or at virtual time ``at``.

        Raises :class:`UsageError` if a node with that id is present, or
        ``at`` is in the past. A delayed start is cancelled by :meth:`remove`.
        """
        node = endpoint.node_id
        if node in self._slots:
            raise UsageError(f"node {node} is already on the network; remove it first")
        if at is not None and at > self._now:
            self._push(at, _START, node, endpoint, b=incarnation, c=self._life.get(node, 0))
            return
        if at is not None and at < self._now:
            raise UsageError(f"cannot add node {node} at {at}: the time is already {self._now}")
        self._start(node, endpoint, incarnation)

    def remove(self, node: int) -> Endpoint | None:
        """Take ``node`` off the network: its endpoint, timer, inbox, subscriptions
        and the datagrams in flight to it are gone. Returns the endpoint, or None
        if the node was not present (a pending delayed start is cancelled)."""
        self._life[node] = self._life.get(node, 0) + 1
        slot = self._slots.pop(node, None)
        if slot is None:
            return None
        for group in sorted(slot.groups):
            self._groups.leave(node, slot, group)
        self.stats.dropped += len(slot.inbox)
        if self.trace is not None:
            self.trace.record(self._now, node, "remove", inc=slot.incarnation)
        return slot.endpoint

    def pause(self, node: int) -> bool:
        """Freeze ``node``: queue its deliveries and hold its timer. False if absent or paused."""
        slot = self._slots.get(node)
        if slot is None or slot.paused:
            return False
        slot.paused = True
        slot.wake_token = -1
        return True

    def resume(self, node: int) -> bool:
        """Unfreeze ``node``: deliver its inbox in order, rearm its timer.

        False if ``node`` is absent or not paused.
        """
        slot = self._slots.get(node)
        if slot is None or not slot.paused:
            return False
        slot.paused = False
        inbox, slot.inbox = slot.inbox, []
        self._deliver(self._now, [(node, data, src, slot.life) for data, src in inbox], None)
        if self._slots.get(node) is slot:
            self._rearm(node, slot)
        return True

    def command(self, node: int, call: Callable[[Any, float], Iterable[object]]) -> None:
        """Give ``node`` a local command now: ``call(endpoint, now)`` returns its outputs.

        For example ``net.command(n, lambda ep, now: ep.multicast(b"hi", now))``.
        The outputs are handled like any other and the node's timer is rearmed.
        Raises :class:`UsageError` if ``node`` is absent or paused.
        """
        slot = self._slots.get(node)
        if slot is None or slot.paused:
            state = "paused" if slot is not None else "not on the network"
            raise UsageError(f"cannot command node {node}: it is {state}")
        self.stats.calls += 1
        self._emit(node, slot, call(slot.endpoint, self._now))
        if self._slots.get(node) is slot:
            self._rearm(node, slot)

    # ----------------------------------------------------------------- clock

    def step(self) -> bool:
        """Process the next event (skipping superseded wake-ups). False if there was none."""
        while True:
            entry = self._first()
            if entry is None:
                return False
            self._pop(entry)
            if entry[2] == _DELIVER_MANY:
                time, seq, _, _, copies, _, _ = entry
                self._run = None
                if len(copies) > 1:  # the rest keeps its place: same time, same sequence
                    # (first of all, so the queue's order holds wherever it came from)
                    self._fifo.appendleft((time, seq, _DELIVER_MANY, 0, copies[1:], 0, 0))
                self._deliver(time, copies[:1], None)
                return True
            if self._process(entry):
                return True

    def run_until(self, t: float, *, on_event: Callable[[], object] | None = None) -> None:
        """Process every event due at or before ``t``, then set the clock to ``t``.

        ``on_event`` is called after each processed event. Raises
        :class:`UsageError` if ``t`` is before :attr:`now`.
        """
        if t < self._now:
            raise UsageError(f"cannot run until {t}: the time is already {self._now}")
        heap = self._heap
        fifo = self._fifo
        pop = heapq.heappop
        take = fifo.popleft
        process = self._process
        deliver = self._deliver
        while True:  # the earlier of the two queues' first entries (see _first)
            if fifo:
                entry = fifo[0]
                if not heap or entry < heap[0]:
                    if entry[0] > t:
                        break
                    take()
                    deliver(entry[0], entry[4], on_event)
                    continue
            if not heap or heap[0][0] > t:
                break
            entry = pop(heap)
            if entry[2] == _DELIVER_MANY:
                deliver(entry[0], entry[4], on_event)
            elif process(entry) and on_event is not None:
                on_event()
        self._now = t

    def run_until_quiet(self, limit: float) -> bool:
        """Process events until none are left or the next is after virtual time ``limit``.

        Returns True if the network went quiet (nothing pending), False if it
        stopped at the limit; the clock stays at the last event processed.
        """
        process = self._process
        while True:
            entry = self._first()
            if entry is None:
                return True
            if entry[0] > limit:
                if not self._void(entry):
                    return False
                self._pop(entry)  # a superseded wake-up or cancelled start: nothing pending
                continue
            self._pop(entry)
            if entry[2] == _DELIVER_MANY:
                self._deliver(entry[0], entry[4], None)
            else:
                process(entry)

    # -------------------------------------------------------------- internals

    def _push(
        self, time: float, kind: int, node: int, a: Any = None, *, b: Any = 0, c: Any = 0
    ) -> int:
        self._seq += 1
        seq = self._seq
        heapq.heappush(self._heap, (time, seq, kind, node, a, b, c))
        return seq

    def _push_delivery(self, time: float, copies: list[tuple[int, bytes, int, int]]) -> int:
        """Schedule a delivery entry: at the end of :attr:`_fifo` if it is due no earlier
        than the last entry there (so the queue stays in (time, seq) order), else on the
        heap. Every entry has its own sequence number, so the two queues' entries are
        taken in exactly the (time, seq) order one heap would give (see :meth:`_first`);
        a delivery due 1 ms after it was sent, in time order, costs no heap sift."""
        self._seq += 1
        seq = self._seq
        entry = (time, seq, _DELIVER_MANY, 0, copies, 0, 0)
        fifo = self._fifo
        if not fifo or fifo[-1][0] <= time:
            fifo.append(entry)
        else:
            heapq.heappush(self._heap, entry)
        return seq

    def _first(self) -> tuple[Any, ...] | None:
        """The entry due first of both queues: the smaller (time, seq) of their first
        entries (sequence numbers are unique, so the comparison never reaches further)."""
        heap, fifo = self._heap, self._fifo
        if fifo and (not heap or fifo[0] < heap[0]):
            return fifo[0]
        return heap[0] if heap else None

    def _pop(self, entry: tuple[Any, ...]) -> None:
        """Take ``entry``, the one :meth:`_first` returned, off its queue."""
        if self._fifo and self._fifo[0] is entry:
            self._fifo.popleft()
        else:
            heapq.heappop(self._heap)

    def _push_step(self, time: float, step: object) -> None:
        self._push(time, _STEP, 0, step)

    def _void(self, entry: tuple[Any, ...]) -> bool:
        """Whether a heap entry would do nothing (superseded wake-up, cancelled start)."""
        _, seq, kind, node, _, _, c = entry
        if kind == _WAKE:
            slot = self._slots.get(node)
            return slot is None or slot.wake_token != seq
        if kind == _START:
            return c != self._life.get(node, 0) or node in self._slots
        return False

    def _process(self, entry: tuple[Any, ...]) -> bool:
        """Handle one heap entry; False if it was void (superseded wake-up, gone node)."""
        time, seq, kind, node, a, b, c = entry
        if kind == _DELIVER_MANY:
            self._deliver(time, a, None)
            return True
        if kind == _WAKE:
            slot = self._slots.get(node)
            if slot is None or slot.wake_token != seq:
                self.stats.stale_wakeups += 1
                return False
            slot.wake_token = -1
            due = slot.due
            if due is None or due <= time:  # else known to have moved later: no need to ask
                due = slot.due = slot.endpoint.next_deadline()
            if due is None or due > time:  # the deadline moved later since (see _rearm)
                self.stats.stale_wakeups += 1
                self._rearm_to(node, slot, due)  # (a paused node's token is -1: not here)
                return False
            self._now = time
            self.stats.wakeups += 1
            self.stats.calls += 1
            outs = slot.endpoint.handle_deadline(time)
            self._emit(node, slot, outs)
            if self._slots.get(node) is slot:
                self._rearm(node, slot)
            return True
        if kind == _START:
            if c != self._life.get(node, 0) or node in self._slots:
                return False
            self._now = time
            self._start(node, a, b)
            return True
        self._now = time
        self._apply_step(a)
        return True

    def _deliver(
        self,
        time: float,
        copies: list[tuple[int, bytes, int, int]],
        on_event: Callable[[], object] | None,
    ) -> None:
        """Datagram copies ``(dst, data, src, life of dst's address when sent)`` due at
        ``time``, in the order they were sent; ``on_event`` after each.

        They were sent one after another with nothing scheduled in between, so
        delivering them in a row is exactly what separate heap entries would do.
        A copy for a node gone (or for an earlier life of its address) is dropped,
        one for a paused node queues in its inbox; the others are handed to their
        endpoint, whose outputs are handled and whose wake-up is kept or rearmed.
        """
        self._now = time
        self._run = None
        slots = self._slots
        stats = self.stats
        by = stats.delivered_by_type
        trace = self.trace
        tap = self._tap
        emit = self._emit
        for dst, data, src, life in copies:
            slot = slots.get(dst)
            if slot is None or slot.life != life:
                self._count_drop(dst, data, src, "no-node")
            elif slot.paused:
                slot.inbox.append((data, src))
            else:
                stats.delivered += 1
                stats.calls += 1
                code = data[_TYPE_OFFSET] if len(data) > _TYPE_OFFSET else -1
                by[code] = by.get(code, 0) + 1
                if trace is not None:
                    trace.deliver(time, dst, src, data)
                if tap is not None:
                    tap(time, dst, data, src)
                endpoint = slot.endpoint
                outs = endpoint.receive(data, time)
                if outs:
                    emit(dst, slot, outs)
                if (not outs or slots.get(dst) is slot) and not slot.paused:
                    deadline = slot.due = endpoint.next_deadline()
                    if deadline is None or slot.wake_token < 0 or deadline < slot.wake_at:
                        self._rearm_to(dst, slot, deadline)
                    # else the common case: the wake-up already scheduled stands (see _rearm)
            if on_event is not None:
                on_event()

    def _apply_step(self, step: Any) -> None:
        raise UsageError(f"this network does not apply steps like {step!r}")

    def _start(self, node: int, endpoint: Endpoint, incarnation: int) -> None:
        slot = _Slot(endpoint, incarnation, self._life.get(node, 0))
        if self._fanout_seeds is not None:
            slot.fanout = FanOut(NodeId(node), self._fanout_seeds, learn=True)
        self._slots[node] = slot
        if self.trace is not None:
            self.trace.record(self._now, node, "start", inc=incarnation)
        self.stats.calls += 1
        outs = endpoint.start(self._now)
        self._emit(node, slot, outs)
        if self._slots.get(node) is slot:
            self._rearm(node, slot)

    def _rearm(self, node: int, slot: _Slot) -> None:
        """Schedule ``node``'s next wake-up at its ``next_deadline()``.

        A deadline that moved *later* keeps the wake-up already scheduled: when
        that one comes due the node is asked again and nothing is called before
        its deadline (a member whose leader timeout moves with every heartbeat
        costs one heap entry per timeout, not one per heartbeat).
        """
        if slot.paused:
            return
        slot.due = slot.endpoint.next_deadline()
        self._rearm_to(node, slot, slot.due)

    def _rearm_to(self, node: int, slot: _Slot, deadline: float | None) -> None:
        if deadline is None:
            slot.wake_token = -1
            return
        deadline = max(deadline, self._now)
        if slot.wake_token >= 0 and slot.wake_at <= deadline:
            return
        slot.wake_at = deadline
        slot.wake_token = self._push(deadline, _WAKE, node)

    def _emit(self, node: int, slot: _Slot, outputs: Iterable[object]) -> None:
        handlers = self._handlers
        route = self._route
        for out in outputs:
            if type(out) is Transmit:  # the commonest output, routed without a handler
                route(node, out.to, out.data)
                continue
            handler = handlers.get(type(out))
            if handler is not None:
                handler(node, slot, out)
            else:
                self._notify(node, out)

    def _notify(self, node: int, out: object) -> None:
        self.stats.notifications += 1
        if self.log is not None:
            self.log.append((self._now, NodeId(node), out))
        if self.trace is not None:
            self.trace.record(self._now, node, "output", out=trace_repr(out))
        if self._observer is not None:
            self._observer(self._now, NodeId(node), out)

    def _on_transmit_group(self, node: int, slot: _Slot, out: TransmitGroup) -> None:
        self._route_group(node, self._groups.receivers(node, slot, out.group), out.data)

    def _route_group(self, src: int, dsts: list[int], data: bytes) -> None:
        """Put one copy of ``data`` from ``src`` to each of ``dsts`` (in order) on the wire."""
        route = self._route
        for dst in dsts:
            route(src, dst, data)

    def _on_join(self, node: int, slot: _Slot, out: JoinGroup) -> None:
        self._groups.join(node, slot, out.group)

    def _on_view(self, node: int, slot: _Slot, out: ViewChanged) -> None:
        if slot.fanout is not None:
            slot.fanout.install(out.view)
        self._notify(node, out)

    def _on_leave(self, node: int, slot: _Slot, out: LeaveGroup) -> None:
        self._groups.leave(node, slot, out.group)

    def _count_sent(self, data: bytes, copies: int = 1) -> None:
        stats = self.stats
        stats.sent += copies
        code = data[_TYPE_OFFSET] if len(data) > _TYPE_OFFSET else -1
        by = stats.sent_by_type
        by[code] = by.get(code, 0) + copies

    def _count_drop(self, dst: int, data: bytes, src: int, why: str) -> None:
        stats = self.stats
        stats.dropped += 1
        code = _type_of(data)
        by = stats.dropped_by_type
        by[code] = by.get(code, 0) + 1
        if self.trace is not None:
            self.trace.record(self._now, dst, "drop", src=src, why=why, type=code)

    def _route(self, src: int, dst: int, data: bytes) -> None:
        """Put one copy of ``data`` from ``src`` to ``dst`` on the wire."""
        self._count_sent(data)
        if self._drop is not None and self._drop(NodeId(src), NodeId(dst), data):
            self._count_drop(dst, data, src, "hook")
            return
        latency = self._latency
        delay = latency(NodeId(src), NodeId(dst)) if callable(latency) else latency
        self._send_after(delay, src, dst, data)

    def _send_all_after(self, delay: float, src: int, dsts: list[int], data: bytes) -> None:
        """Count and send a copy of ``data`` to each of ``dsts`` after ``delay``: what
        :meth:`_count_sent` and :meth:`_send_after` do for each in turn, in one go (the
        copies are due at one time, so the first one's run takes the others)."""
        if not dsts:
            return
        self._count_sent(data, len(dsts))
        self._send_after(delay, src, dsts[0], data)
        run = self._run
        assert run is not None  # the first copy's run, and nothing scheduled since
        life_of = self._life.get
        run += [(dst, data, src, life_of(dst, 0)) for dst in dsts[1:]]  # (no generator)

    def _send_after(self, delay: float, src: int, dst: int, data: bytes) -> None:
        if not delay >= 0:
            raise ConfigError(f"latency from {src} to {dst} is {delay!r}; it must be >= 0")
        time = self._now + delay
        copy = (dst, data, src, self._life.get(dst, 0))
        run = self._run
        if run is not None and self._run_key == (time, self._seq):
            # Nothing was scheduled since this entry and it is due at the same time:
            # delivering the copy right after it is what a separate entry would do.
            run.append(copy)
            return
        run = [copy]
        self._run = run
        self._run_key = (time, self._push_delivery(time, run))
