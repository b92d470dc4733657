"""Total order for one group: a deterministic merge of the FIFO streams by Lamport time.

Theory of operation
-------------------
One :class:`TotalOrderMachine` per group whose app multicasts are totally ordered
(an option per group: ``NodeConfig.total_order``). It sits on top of the reliable
FIFO multicast (:mod:`powergrid.protocols.multicast`), which it never changes: it
hands the multicast machine ``Publish`` commands of two channel kinds and takes
back the multicast's ``Deliver`` of those kinds, in FIFO order per origin.

*The promise (order agreement).* Any two members that deliver messages m1 and m2
deliver them in the same order, whatever happens to views, leaders, partitions and
restarts. It holds **by construction**: every message carries a Lamport timestamp
``ts`` fixed by its origin when it is sent, so its *key*
``(ts, origin, incarnation, n)`` is a function of the message alone and the same at
every member; each member delivers in strictly increasing key order, and drops
(``late``, counted) a message whose key is not above the last one it delivered.
Every member's delivery sequence is then a subsequence of one global order, so no
two members can deliver a pair in opposite orders. No agreement protocol is needed
for safety: not across a leader change, not across a partition.

*Rule O1 (clocks).* A node's clock only grows: it rises to every ``ts`` it receives,
and each message it sends takes ``clock + 1``. So an origin's messages have strictly
increasing keys, and a message sent after receiving m has a key above m's.

*Rule O2 (waiting: agreement and liveness).* A pending message with timestamp
``ts`` is delivered once every *other* member life the current view lists has
*passed* it: this node has received (in FIFO order) a message of that life with a
timestamp ``>= ts``. FIFO order means nothing of that life with a smaller key can
still come, so within a view nothing is late. This node's own later messages are
above anything it received (rule O1), so it never waits for itself. A life that
leaves the view is still waited for ``depart_wait`` (its last messages may still
come through the multicast's repair from members that have them), then no more.

*Rule O3 (clock messages).* A member that receives an app message with a timestamp
at or above the last it sent owes the group a sign that it passed it: unless it
sends an app message first, it multicasts a *clock* message (timestamp only, never
delivered to the app) ``clock_delay`` later, one for every app message that arrived
meanwhile. Clock messages never call for clock messages, so a quiet group sends
nothing, and a group where one member talks costs ``n - 1`` clock messages per
``clock_delay`` while it talks.

*Rule O4 (exchanging clocks at admission).* A new member life's clock starts at 0,
and a side of a healed partition may have delivered far beyond the other side's
clocks: what they sent at once would be below what the others delivered and late
there. So when a view may admit this node anywhere, it multicasts a clock message
stamped with the view and holds its publications until every other member of the
view has sent it a message stamped with a view that lists this node, installed here
since the hold began. A member whose message is stamped with such a view waits for
this node (rule O2) since it installed it, and everything it delivered before is
below that message's timestamp, so below this node's clock once it arrives. A view
*may admit this node somewhere* when it admits a member life this node did not list,
first lists this node, or does not follow this node's last view in its leader's
numbering (another leader, leader life or epoch, or a view id not one above the
last): of twin leaders of a flapping split, the other side's may have left this node
out and back in while this node's own views listed everyone. The stamp is a 64-bit
digest of the whole view (group, id, leader, epoch, member lives), so twin leaders'
views numbered alike are told apart. A member that has sent nothing stamped with its
current view answers a clock message stamped with it at once with one of its own (so
a member to which the view admits nobody still ends the others' holds), and does so on
installing a view some member's latest message was stamped with; a holding member
sends its clock message again every ``sync_wait`` (a member that joined the origin's
stream after it may never get the first). The hold ends only so, or after ``sync_max``
(the last resort: a member listed but unheard that long): never on a guess, since a
message sent before the others' clocks came may be late at every one of them.
Nothing is published before the first view that lists this node. The message's
number ``n`` (per life, 1, 2, ...) is given when the app publishes, so the app's
numbering does not depend on the wait.

*Rule O5 (late).* A message whose key is not above the last key delivered is
dropped (``late``). Within a view this does not happen (O2, O4); it happens to a
message of a life that was not in this node's view when it delivered the later key
(a partition, a removal, a restart not yet listed), and only that member misses it.

*Rule O6 (bounds).* At most ``max_pending`` messages wait (beyond, the highest key
is dropped, ``overflow``: a drop never breaks the order); a timestamp more than
:data:`MAX_JUMP` above the clock is dropped (``implausible``).

*What it costs, what it gives up.* Latency: a message waits for the slowest
member's next message or clock message (at least ``clock_delay`` when the others
are silent); a crashed member blocks delivery until the view removes it and
``depart_wait`` more. Agreement (every member delivers the message) is therefore promised only
between members that keep each other in their views; the order promise has no
condition. Compared with a sequencer (JGroups SEQUENCER, the leader numbering every
message): no extra hop and no single sender of all order, and nothing to hand over
when the leader changes; a sequencer whose two sides of a partition both number
messages gives two orders that a heal cannot reconcile without a primary-partition
rule, where here both sides deliver subsequences of one order.

Only app messages are ordered; the node's protocol messages (market prices) keep
their FIFO channel.

*Large messages.* An app payload over :data:`MAX_ORDERED_PAYLOAD` bytes is cut by
the fragment layer (:mod:`powergrid.protocols.fragments`) into pieces of
:data:`ORDERED_FRAGMENT_DATA` bytes, and each piece is one ordered message of its
own (``OrderedPublish(kind=<fragment kind>)``, outer kind
:data:`~powergrid.wire.KIND_ORDERED_FRAGMENT`): it takes its own number ``n`` and
key, waits and is delivered like any other, with its inner kind, and the fragment
layer reassembles the message from the deliveries. An origin's fragments are
delivered in the origin's order (keys grow per origin, rule O1) and no other message
of the origin comes between them, so the whole message is delivered (numbered by its
first fragment) where its last fragment falls in the one global order, and every
member that delivers two messages, large or small, delivers them in the same order. A fragment
dropped as late (O5) or over ``max_pending`` (O6) costs that member the whole
message (the fragment layer drops the rest); nothing wrong is ever assembled.

Driving: ``handle(event, now)`` with :class:`OrderedPublish` (the app's command),
the multicast's :class:`~powergrid.protocols.multicast.Deliver` of kind
:data:`~powergrid.wire.KIND_ORDERED`, :data:`~powergrid.wire.KIND_ORDERED_FRAGMENT`
or :data:`~powergrid.wire.KIND_ORDER_CLOCK`,
:class:`~powergrid.events.ViewChanged` and :class:`~powergrid.events.DeadlineReached`;
actions: multicast :class:`~powergrid.protocols.multicast.Publish` commands for the
FIFO layer and :class:`~powergrid.protocols.multicast.Deliver` of kind
:data:`~powergrid.wire.KIND_APP` or of the fragment kind (``seq`` is ``n``) for the
app or the fragment layer. ``next_deadline()``
is the earliest of the clock message's time, the end of the hold (O4) and the end of
the wait for departed lives (O2); None when there is none.
Pure: no clock, no randomness. Rule numbers (O1-O6) are those of
``docs/protocols/multicast.md``.
"""

from __future__ import annotations

import hashlib
import heapq
import math
import struct
from typing import Any, Final

import attrs

from powergrid._checks import integer, real
from powergrid._dispatch import Dispatching
from powergrid.errors import ConfigError, PayloadTooLargeError, UsageError
from powergrid.events import DeadlineReached, View, ViewChanged, member_maps
from powergrid.protocols.multicast import MAX_MULTICAST_PAYLOAD, Deliver, Publish
from powergrid.protocols.multicast._config import new_deliver
from powergrid.types import Incarnation, NodeId
from powergrid.wire import (
    KIND_APP,
    KIND_ORDER_CLOCK,
    KIND_ORDERED,
    KIND_ORDERED_FRAGMENT,
    Fragment,
)

__all__ = [
    "MAX_ORDERED_PAYLOAD",
    "ORDERED_FRAGMENT_DATA",
    "OrderConfig",
    "OrderStats",
    "OrderedPublish",
    "TotalOrderMachine",
    "view_stamp",
]

_CLOCK = struct.Struct("!QQ")  # ts, stamp of the sender's view (view_stamp)
_APP = struct.Struct("!QQQ")  # ts, view stamp, n
MAX_ORDERED_PAYLOAD: Final = MAX_MULTICAST_PAYLOAD - _APP.size
"""The largest payload one :class:`OrderedPublish` can carry (bytes)."""
ORDERED_FRAGMENT_DATA: Final = MAX_ORDERED_PAYLOAD - struct.calcsize("!III")
"""Bytes of a large app message carried by one ordered fragment: what fits one ordered
message after the fragment's 12-byte head (``Split(..., data=ORDERED_FRAGMENT_DATA)``)."""
_KINDS: Final = {KIND_APP: KIND_ORDERED, Fragment.TYPE: KIND_ORDERED_FRAGMENT}
"""Inner kind of an ordered message -> its outer (multicast) kind."""
_INNER: Final = {outer: inner for inner, outer in _KINDS.items()}
MAX_TS: Final = (1 << 64) - 1
"""The largest timestamp a header can carry."""
MAX_JUMP: Final = 1 << 40
"""A timestamp further than this above the receiver's clock is implausible (a forged or
corrupted header): dropped and counted, so it cannot push the clocks to their end."""
_VIEW_HEAD = struct.Struct("!IQQQI")  # group, view id, leader, epoch, members
_LIFE = struct.Struct("!QQ")  # node, incarnation


def view_stamp(view: View) -> int:
    """The 64-bit digest of ``view`` its members stamp their ordered messages with
    (rule O4): views of twin leaders numbered alike have different stamps."""
    digest = hashlib.blake2b(digest_size=8)
    digest.update(
        _VIEW_HEAD.pack(view.group, view.view_id, view.leader, view.epoch, len(view.members))
    )
    for m in view.members:
        digest.update(_LIFE.pack(m.node, m.incarnation))
    return int.from_bytes(digest.digest(), "big")


@attrs.frozen(kw_only=True)
class OrderConfig:
    """Settings of :class:`TotalOrderMachine`. Times in seconds, sizes in messages.

    Raises :class:`~powergrid.errors.ConfigError` for a value out of range.
    """

    clock_delay: float = attrs.field(default=0.01, validator=real)
    """How long after an app message others wait on a silent member sends its clock
    message (rule O3); the clock messages of all app messages within it are one."""
    sync_wait: float = attrs.field(default=2.0, validator=real)
    """How often a member that holds its publications at an admission sends its clock
    message again while some member's clock has not come (rule O4)."""
    sync_max: float = attrs.field(default=20.0, validator=real)
    """The longest a hold lasts (rule O4): a member listed but not heard from that long
    (a cut the membership does not see) no longer holds the others' publications."""
    depart_wait: float = attrs.field(default=2.0, validator=real)
    """How long a member life that left the view is still waited for (rule O2): its last
    messages may still come through the multicast's repair (within its ``flush_grace``,
    2 s by default), and delivering past them would make them late here."""
    max_pending: int = attrs.field(default=10_000, validator=integer)
    """Most messages waiting for their turn (rule O6)."""

    def __attrs_post_init__(self) -> None:
        for name in ("clock_delay", "sync_wait", "sync_max", "depart_wait"):
            value = getattr(self, name)
            if not math.isfinite(value) or value < 0:
                raise ConfigError(f"OrderConfig.{name}: must be finite seconds >= 0, got {value}")
        if self.max_pending < 1:
            raise ConfigError(f"OrderConfig.max_pending: must be 1 or more, got {self.max_pending}")


@attrs.frozen(kw_only=True)
class OrderedPublish:
    """Command: multicast ``payload`` to the group, delivered in total order.

    ``kind`` is :data:`~powergrid.wire.KIND_APP` (app bytes) or the fragment kind
    (``payload`` is one fragment body of a large message, cut by the fragment layer with
    :data:`ORDERED_FRAGMENT_DATA`); it is delivered with the same kind. ``handle``
    raises :class:`~powergrid.errors.PayloadTooLargeError` above
    :data:`MAX_ORDERED_PAYLOAD` bytes and :class:`~powergrid.errors.UsageError` for a
    payload that is not bytes or another kind.
    """

    payload: bytes
    kind: int = KIND_APP


@attrs.define(kw_only=True)
class OrderStats:
    """Counters of one :class:`TotalOrderMachine` (only grow)."""

    published: int = 0
    delivered: int = 0
    """App messages delivered in order, own included."""
    clocks_sent: int = 0
    """Clock messages sent (rule O3, and on admitting a member: rule O4)."""
    late: int = 0
    """Messages whose key was not above the last delivered one: never delivered (rule O5)."""
    malformed: int = 0
    """Ordered payloads too short to hold their header."""
    implausible: int = 0
    """Timestamps more than :data:`MAX_JUMP` above the clock (rule O1)."""
    overflow: int = 0
    """Pending messages dropped above ``max_pending`` (rule O6)."""
    held: int = 0
    """Publications a new life held while it waited for the others' clocks (rule O4)."""


class TotalOrderMachine(Dispatching):
    """Total order over the FIFO multicast of one group (see the module docstring)."""

    __slots__ = (
        "_clock",
        "_clock_due",
        "_config",
        "_departing",
        "_floor",
        "_heard",
        "_held",
        "_hold_until",
        "_inc",
        "_last",
        "_me",
        "_members",
        "_n",
        "_passed",
        "_pending",
        "_sent",
        "_sent_stamp",
        "_stamp",
        "_stats",
        "_sync_stamps",
        "_sync_started",
        "_synced",
        "_view",
    )

    _EVENTS = {
        OrderedPublish: "_on_publish",
        Deliver: "_on_deliver",
        ViewChanged: "_on_view",
        DeadlineReached: "_on_deadline",
    }

    def __init__(self, config: OrderConfig, *, me: NodeId, incarnation: Incarnation) -> None:
        self._config = config
        self._me = me
        self._inc = incarnation
        self._stats = OrderStats()
        self._clock = 0  # rule O1
        self._sent = 0  # the timestamp of the last message this node sent
        self._n = 0  # app messages numbered so far (this life)
        self._last: tuple[int, int, int, int] = (0, 0, 0, 0)  # the last key delivered
        # (ts, origin, incarnation, n, inner kind, payload), smallest key first
        self._pending: list[tuple[int, int, int, int, int, bytes]] = []
        self._passed: dict[tuple[int, int], int] = {}  # (origin, incarnation) -> ts received
        self._floor: int | None = None  # _least_passed(), kept; None: to compute again
        # (origin, incarnation) -> the view stamp of its latest message (rule O4)
        self._heard: dict[tuple[int, int], int] = {}
        self._members: dict[int, int] = {}  # node -> incarnation, the view's
        self._view: View | None = None
        self._stamp = 0  # view_stamp(self._view); 0: no view
        # stamps of the views installed since the hold began: a member's message stamped
        # with one of them ends the wait for that member (rule O4); None: no hold yet
        self._sync_stamps: set[int] | None = None
        self._synced = False  # rule O4
        self._held: list[tuple[int, int, bytes]] = []  # (n, kind, payload) held until synced
        self._hold_until: float | None = None  # the hold's next clock message (rule O4)
        self._sync_started: float | None = None  # when the current hold began (rule O4)
        self._sent_stamp = 0  # the view stamp of the last message this node sent
        # lives that left the view -> until when they are still waited for (rule O2)
        self._departing: dict[tuple[int, int], float] = {}
        self._clock_due: float | None = None

    # ------------------------------------------------------------ public

    @property
    def stats(self) -> OrderStats:
        """Counters (see :class:`OrderStats`)."""
        return self._stats

    @property
    def clock(self) -> int:
        """The Lamport clock (rule O1)."""
        return self._clock

    @property
    def next_number(self) -> int:
        """The ``n`` (the delivered ``seq``) the next :class:`OrderedPublish` gets."""
        return self._n + 1

    @property
    def pending(self) -> int:
        """Messages received and waiting for their turn."""
        return len(self._pending)

    @property
    def last_key(self) -> tuple[int, int, int, int]:
        """``(ts, origin, incarnation, n)`` of the last message delivered (zeros: none)."""
        return self._last

    def next_deadline(self) -> float | None:
        """When the machine next needs :class:`DeadlineReached` (seconds), or None."""
        due = self._clock_due
        hold = self._hold_until
        if hold is not None and (due is None or hold < due):
            due = hold
        if self._departing:
            until = min(self._departing.values())
            if due is None or until < due:
                due = until
        return due

    # ------------------------------------------------------------ commands

    def _on_publish(self, cmd: OrderedPublish, now: float) -> list[Any]:
        payload = cmd.payload
        if not isinstance(payload, bytes):
            raise UsageError(f"payload must be bytes, not {type(payload).__name__}")
        kind = cmd.kind
        if kind not in _KINDS:
            raise UsageError(f"OrderedPublish.kind must be one of {sorted(_KINDS)}, got {kind!r}")
        if len(payload) > MAX_ORDERED_PAYLOAD:
            raise PayloadTooLargeError(
                f"payload is {len(payload)} bytes, over the {MAX_ORDERED_PAYLOAD}-byte "
                "limit of one totally ordered multicast; split it"
            )
        self._n += 1
        self._stats.published += 1
        if not self._synced:  # rule O4
            self._held.append((self._n, kind, payload))
            self._stats.held += 1
            return []
        return self._send_app(self._n, kind, payload)

    def _send_app(self, n: int, kind: int, payload: bytes) -> list[Any]:
        ts = self._tick()
        self._clock_due = None  # an app message passes what a clock message would (rule O3)
        self._sent_stamp = self._stamp
        return [Publish(kind=_KINDS[kind], payload=_APP.pack(ts, self._stamp, n) + payload)]

    def _send_clock(self) -> list[Any]:
        ts = self._tick()
        self._clock_due = None
        self._stats.clocks_sent += 1
        self._sent_stamp = self._stamp
        return [Publish(kind=KIND_ORDER_CLOCK, payload=_CLOCK.pack(ts, self._stamp))]

    def _tick(self) -> int:
        self._clock = self._sent = self._clock + 1  # rule O1
        return self._clock

    # ------------------------------------------------------------ receiving

    def _on_deliver(self, ev: Deliver, now: float) -> list[Any]:
        """An ordered message, delivered by the FIFO layer (own ones included)."""
        kind = ev.kind
        body = ev.payload
        inner = _INNER.get(kind, -1)  # the kind it is delivered with (-1: not an ordered one)
        if inner >= 0 and len(body) >= _APP.size:
            ts, stamp, n = _APP.unpack_from(body)
        elif kind == KIND_ORDER_CLOCK and len(body) == _CLOCK.size:
            ts, stamp = _CLOCK.unpack(body)
            n = -1
        else:
            self._stats.malformed += 1
            return []
        origin = ev.origin
        inc = ev.incarnation
        own = origin == self._me and inc == self._inc
        if not own:
            if ts > self._clock + MAX_JUMP or ts == 0:
                self._stats.implausible += 1
                return []
            self._clock = max(self._clock, ts)
            life = (origin, inc)
            before = self._passed.get(life, -1)
            if ts > before:
                self._passed[life] = ts
                floor = self._floor
                if floor is not None and before <= floor:  # it may have held the floor
                    self._floor = None
            self._heard[life] = stamp  # FIFO: the view it was in when it sent this
        out: list[Any] = []
        if n >= 0:
            key = (ts, origin, inc, n)
            if key <= self._last:  # rule O5: it would break the order
                self._stats.late += 1
            else:
                heapq.heappush(self._pending, (ts, origin, inc, n, inner, body[_APP.size :]))
                if len(self._pending) > self._config.max_pending:  # rule O6
                    self._pending.remove(max(self._pending))
                    heapq.heapify(self._pending)
                    self._stats.overflow += 1
                if not own and ts >= self._sent and self._clock_due is None:  # rule O3
                    self._clock_due = now + self._config.clock_delay
        if not own:
            if n < 0 and stamp == self._stamp != self._sent_stamp:
                out.extend(self._send_clock())  # rule O4: answer a clock of this view
            if not self._synced:
                out.extend(self._try_sync())
        self._deliver_ready(out)
        return out

    def _deliver_ready(self, out: list[Any]) -> None:
        """Rule O2: deliver, smallest key first, what every other listed life passed."""
        pending = self._pending
        if not pending or self._view is None:  # no view: nobody known to wait for
            return
        floor = self._floor
        if floor is None:
            floor = self._floor = self._least_passed()
        if pending[0][0] > floor:
            return
        stats = self._stats
        while pending and pending[0][0] <= floor:
            ts, origin, inc, n, inner, payload = heapq.heappop(pending)
            key = (ts, origin, inc, n)
            if key <= self._last:  # (defensive: pushed keys are above it)
                stats.late += 1
                continue
            self._last = key
            stats.delivered += 1
            out.append(new_deliver(origin, inc, n, inner, payload))

    def _least_passed(self) -> int:
        """The least timestamp every other listed life passed (rule O2; -1: one passed
        nothing; no other member: no limit). Kept in ``_floor`` until a life that may
        hold it passes further or the view changes."""
        me = self._me
        passed = self._passed
        floor = MAX_TS
        for node, inc in self._members.items():
            if node != me:
                ts = passed.get((node, inc), -1)
                floor = min(floor, ts)
        for life in self._departing:
            floor = min(floor, passed.get(life, -1))
        return floor

    # ------------------------------------------------------------ views, timers

    def _on_view(self, ev: ViewChanged, now: float) -> list[Any]:
        view = ev.view
        old = self._members
        last = self._view
        members = member_maps(view.members)[1]
        self._view = view
        self._stamp = stamp = view_stamp(view)
        self._members = members
        lives = set(members.items())
        # Rule O2: a life that left is still waited for ``depart_wait``: the multicast
        # may still bring its last messages from the members that have them.
        departing = self._departing
        for node, inc in sorted(old.items()):
            if node != self._me and members.get(node) != inc and (node, inc) not in departing:
                departing[(node, inc)] = now + self._config.depart_wait
        for life in lives & departing.keys():
            del departing[life]
        kept = lives | departing.keys()
        self._passed = {k: v for k, v in self._passed.items() if k in kept}
        self._floor = None
        self._heard = {k: v for k, v in self._heard.items() if k in lives}
        out: list[Any] = []
        listed = members.get(self._me) == self._inc
        if listed and _may_admit(last, old, view, members):
            # Rule O4: exchange clocks before sending anything more, both ways.
            cfg = self._config
            self._sync_stamps = {stamp}
            self._synced = False
            self._hold_until = now + min(cfg.sync_wait, cfg.sync_max)
            self._sync_started = now
            out.extend(self._send_clock())
        else:
            if not self._synced and self._sync_stamps is not None:
                self._sync_stamps.add(stamp)
            heard = self._heard
            if listed and any(heard.get(life) == stamp for life in lives):
                out.extend(self._send_clock())  # rule O4: answer a clock of this view
        if not self._synced:
            out.extend(self._try_sync())
        self._deliver_ready(out)
        return out

    def _try_sync(self) -> list[Any]:
        """Rule O4: release the held publications once every other member's clock came."""
        stamps = self._sync_stamps
        if stamps is None:
            return []
        heard = self._heard
        me = self._me
        for node, inc in self._members.items():
            if node != me and heard.get((node, inc)) not in stamps:
                return []
        return self._release()

    def _release(self) -> list[Any]:
        self._synced = True
        self._hold_until = None
        held, self._held = self._held, []
        out: list[Any] = []
        for n, kind, payload in held:
            out.extend(self._send_app(n, kind, payload))
        return out

    def _on_deadline(self, ev: DeadlineReached, now: float) -> list[Any]:
        out: list[Any] = []
        departing = self._departing
        gone = [life for life, until in sorted(departing.items()) if until <= now]
        if gone:  # rule O2: waited long enough for those lives' last messages
            for life in gone:
                del departing[life]
                self._passed.pop(life, None)
            self._floor = None
            self._deliver_ready(out)
        hold, started = self._hold_until, self._sync_started
        if hold is not None and hold <= now and started is not None:
            cfg = self._config
            if now >= started + cfg.sync_max:
                out.extend(self._release())  # rule O4: the last resort
            else:  # rule O4: some member's clock has not come: send ours again
                out.extend(self._send_clock())
                self._hold_until = min(now + cfg.sync_wait, started + cfg.sync_max)
        if self._clock_due is not None and self._clock_due <= now:
            out.extend(self._send_clock())
        return out


def _may_admit(last: View | None, old: dict[int, int], view: View, members: dict[int, int]) -> bool:
    """Whether ``view`` may admit this node at some member (rule O4): it lists a life
    the last view did not, or does not follow the last view in its leader's numbering
    (another leader, leader life or epoch, or a view id not one above)."""
    if last is None or any(old.get(node) != inc for node, inc in members.items()):
        return True
    leader = view.leader
    return (
        leader != last.leader
        or view.epoch != last.epoch
        or members.get(leader) != old.get(leader)
        or view.view_id != last.view_id + 1
    )
