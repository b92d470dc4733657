"""Reliable multicast: FIFO per origin, exactly once, with repair and a bounded resend buffer.

Theory of operation
-------------------
One :class:`MulticastMachine` per group the node is in. Every member is an
*origin* of its own stream: :class:`Publish` numbers the message (1, 2, ...
per incarnation), delivers it to the local app at once (:class:`Deliver`)
and multicasts a :class:`~powergrid.wire.Data`. Receivers keep, per origin,
the incarnation, the highest sequence number *delivered* and the highest
*seen*.

*Receiving.* A message of a higher incarnation than known resets the
origin's stream (the new life starts at 1); a lower one is stale (dropped,
counted). A life the view does not list (not admitted yet, or forged) is kept
for ``flush_grace`` unless a view lists it by then, and digests never start a
life other than the one the view lists, so a forged incarnation cannot shut out
the real one for good. In-order messages are delivered, then any held successors;
duplicates are dropped and counted; messages ahead of a gap are held, at most
``max_held`` per origin (beyond: dropped, counted in ``held_dropped``, still
repaired later). An :class:`~powergrid.wire.Xmit` is handled like the Data
it carries.

*Repair (the resend requester).* A gap waits ``nak_delay`` (reordering
tolerance), then the machine sends ``Nak(origin, incarnation, first, last)``
to the origin for the first missing range, capped at ``max_nak_range``
messages, and repeats at most once per ``nak_interval`` per origin while the
gap persists. After ``nak_escalate_after`` tries without progress (or at
once if the origin is not in the view) the Nak is multicast to the group with
a ``helper``: only the origin and the helper answer a group Nak, so each
missing message is resent at most twice per round. The helper rotates, one
per group round, through the view's coordinator first, then the other
members in id order (never the requester or the origin), so every holder is
asked in turn. Any member answering a Nak unicasts one ``Xmit`` per message it
holds in the (capped) range, at most ``max_xmit_per_interval`` per requester
per ``nak_interval`` (beyond: counted in ``xmits_rate_limited``).

*Stability.* Every member keeps every delivered message in its resend buffer
until it is stable. Members unicast ``Status`` (per origin: what they
delivered and ``low``, up to where they dropped it as stable) to
the view's leader, the *coordinator*, every ``status_interval`` (with up to
``status_jitter`` of it taken off at random) while they buffer messages,
are behind, or have delivered more of an origin than the coordinator last
declared stable, and are quiet otherwise. The coordinator computes, per origin,
``stable`` = the minimum delivered over the members of its current view (a
member that has not reported the origin's current incarnation holds it where
it is: stable never goes down) and ``highest`` = the maximum seen, and
multicasts ``Stable`` every ``stable_interval`` while anything is unstable,
after any Status, and at once plus ``stable_repeats`` times after a view
change.
On Stable every member drops buffered messages up to ``stable`` and naks if
it is behind ``highest`` (this is how a lost *last* message is found). A
Stable is only taken from the coordinator of the member's own view (same view
id, the leader, its incarnation): one of another view, or any before the first
view, says nothing about what this view's members hold, so it is ignored (an
origin keeps its own messages until its own view finds them stable). Status
and Stable are split into several datagrams when there are many origins.

*Lost history.* Messages dropped as stable in a view that some of today's
members were not in (a partition, a coordinator that restarted or changed)
may be held by nobody now. Before each Stable, with every member's report of
an origin in, the coordinator counts down from the highest delivered through
the members' ``(low, delivered]`` spans (its own included) and the messages it
holds ahead of its own gap; the first message nobody holds is lost for good, so
it raises the origin's stable point to it, skipping there itself (``skipped``)
and so making every member behind skip too, instead of asking forever. Within
one view nobody drops what a member lacks, so this never skips a message
someone can still resend. Retired lives (see *Restarts*) are counted the same
way, with the reports of every member but their origin. A member that skips to
a stable point also drops what it holds at or below it (``skipped``): the
stream jumps once and goes on after the point, never delivering with gaps in
between.

*Buffer cap.* If stability stalls, at most ``max_buffer`` messages are
buffered in all: beyond, the oldest message of the origin with the most
buffered messages is dropped (``buffer_overflow``). A member that still
misses it cannot get it from this node. When the coordinator drops one, it
also declares it stable, so members stuck behind it skip it (``skipped``)
instead of asking forever; agreement is lost for those messages.

*Joiners.* For an origin it has no state for, a machine starts after the
``stable`` point of the first Stable (of its own view) that names the origin (naking up to
``highest``), so it never asks for history everyone else has dropped. Data
from such an origin that arrives before is held. Exceptions: seq 1 is always
accepted directly (it starts the stream), and the coordinator, which receives
no Stable, starts an unknown origin at 0 and relies on *lost history* above
to skip what nobody holds any more. Without a coordinator, Data at seq > 1
from an unknown origin is held until one appears.

*Views.* :class:`~powergrid.events.ViewChanged` sets the members and the
coordinator. State of an origin that is not in the view is kept for
``flush_grace`` seconds, so survivors can still fetch its last messages from
holders, then dropped (an origin that comes back in time keeps its state).
What was delivered of a dropped life (after grace, or a retired life at its
end), and its stable point, are remembered (for the last 4096 origins, their
latest 4 lives, each life apart): if that life comes back, its stream resumes
after what was delivered (nothing twice) and the stable point declared stays
the one known, even if another life of the origin was taken meanwhile.

*Restarts.* A newer incarnation of an origin starts a new stream at once, and
the old life is *retired*: kept for ``flush_grace`` (one per origin), its
Xmits delivered, its gaps asked of the group at once, its buffer answering
Naks, its point reported in Status and its ``(stable, highest)`` digested by
the coordinator in Stable (in datagrams of their own: an origin appears once
per datagram), so members that missed the old life's last messages fetch them
from those that delivered them. Then it is dropped whole. A coordinator that
has no state of the past life (it is the restarted origin itself, or it joined,
restarted or took over after that life ended) learns of it only from Status: it
keeps that life's highest reported (nothing held, delivered or stable) as a
retired life from the first such report, so the digest names it all the same;
such a *hearsay* life is dropped when the node stops coordinating.

Guarantees: within one life of each origin, each member delivers the
origin's messages at most once and in order (FIFO per origin); while the
origin, or a member that delivered a message, stays reachable in the view and
nothing overflows, every member in the view delivers it; the resend buffer
never exceeds ``max_buffer``; a quiet, stable group sends nothing and
``next_deadline()`` is None. Not guaranteed: any order between different
origins (no total or causal order), virtual synchrony (a view change does not
flush, it only keeps departed origins' state for ``flush_grace``), delivery
of messages evicted by the buffer cap or lost with the buffers of a
partition (see *lost history*), history from before a member joined, and the
last messages of a life whose origin restarts that nobody else delivered, or
that are not fetched within ``flush_grace`` of the restart and before the origin
restarts again (one retired life per origin).

Assumptions: datagrams may be lost, duplicated, reordered and delayed but
not corrupted; the node never passes this machine its own datagrams;
incarnations only grow; the view lists the coordinator among its members.

Driving: ``handle(event, now)`` with :class:`Publish`,
:class:`~powergrid.events.Received` (Data, Xmit, Nak, Status, Stable),
:class:`~powergrid.events.ViewChanged` and
:class:`~powergrid.events.DeadlineReached`; ``next_deadline()`` is the
earliest of the Nak, Status, Stable and grace timers. Defaults (seconds):
``nak_delay`` 0.01, ``nak_interval`` 0.05, ``status_interval`` 0.25,
``stable_interval`` 0.25, ``flush_grace`` 2.0.
"""

from __future__ import annotations

import math
import random
import struct
from collections.abc import Mapping
from typing import Any, Final

import attrs

from powergrid._dispatch import Dispatching
from powergrid.errors import ConfigError, PayloadTooLargeError, UsageError
from powergrid.events import (
    DeadlineReached,
    Multicast,
    Received,
    Send,
    View,
    ViewChanged,
    member_maps,
)
from powergrid.types import Incarnation, NodeId, incarnation_newer
from powergrid.wire import (
    HEADER_SIZE,
    MAX_DATAGRAM,
    Data,
    Nak,
    Stable,
    StableEntry,
    Status,
    StatusEntry,
    Xmit,
    record_builder,
)

__all__ = [
    "MAX_MULTICAST_PAYLOAD",
    "Deliver",
    "MulticastConfig",
    "MulticastMachine",
    "MulticastStats",
    "Publish",
]

MAX_MULTICAST_PAYLOAD: Final = MAX_DATAGRAM - HEADER_SIZE - struct.calcsize("!QIQB")
"""The largest payload one :class:`Publish` can carry (bytes): what still fits
when a holder resends it inside an :class:`~powergrid.wire.Xmit`."""

_LIST_HEAD: Final = struct.calcsize("!QH")  # view_id, entry count
STATUS_PER_DATAGRAM: Final = (MAX_DATAGRAM - HEADER_SIZE - _LIST_HEAD) // struct.calcsize("!QIQQ")
"""Entries in one Status datagram; more origins take more datagrams."""
STABLE_PER_DATAGRAM: Final = (MAX_DATAGRAM - HEADER_SIZE - _LIST_HEAD) // struct.calcsize("!QIQQ")
"""Entries in one Stable datagram; more origins take more datagrams."""

_PENDING: Final = -1  # ``delivered`` of an origin whose start is not known yet
_NO_REPORT: Final[dict[int, tuple[int, int, int]]] = {}
_MAX_FLOORS: Final = 4096  # dropped origins whose delivered and stable points are remembered
_FLOOR_LIVES: Final = 4  # lives remembered per dropped origin (the latest)


# ----------------------------------------------------------------- config


@attrs.frozen(kw_only=True)
class MulticastConfig:
    """Settings of :class:`MulticastMachine`. Times in seconds, sizes in messages.

    Raises :class:`~powergrid.errors.ConfigError` for a value out of range or
    values that contradict each other.
    """

    nak_delay: float = 0.01
    """How long a gap may last before the first Nak (reordering tolerance)."""
    nak_interval: float = 0.05
    """Least time between two Naks for one origin; also the window of the Xmit rate limit."""
    nak_escalate_after: int = 2
    """Unicast Naks to the origin without progress before Naks go to the group."""
    max_nak_range: int = 64
    """Most messages one Nak asks for, and most one Nak is answered with."""
    max_xmit_per_interval: int = 256
    """Most Xmits this node sends one requester per ``nak_interval``."""
    max_held: int = 1024
    """Most messages held ahead of a gap, per origin."""
    max_buffer: int = 10_000
    """Most delivered messages kept for resending, all origins together."""
    status_interval: float = 0.25
    """Between two Status reports to the coordinator, while any are needed."""
    status_jitter: float = 0.1
    """Up to this fraction of ``status_interval`` is taken off each period, at random."""
    stable_interval: float = 0.25
    """Between two Stable digests of the coordinator, while any are needed."""
    stable_repeats: int = 3
    """After a view change the coordinator sends a Stable at once and this many more."""
    flush_grace: float = 2.0
    """How long the state of an origin that left the view is kept."""

    def __attrs_post_init__(self) -> None:
        for name in (
            "nak_delay",
            "nak_interval",
            "status_interval",
            "status_jitter",
            "stable_interval",
            "flush_grace",
        ):
            value = getattr(self, name)
            if not math.isfinite(value):
                raise ConfigError(f"{name} is {value}; set it to a finite number")
        if self.nak_delay < 0:
            raise ConfigError(f"nak_delay is {self.nak_delay}; set it to 0 seconds or more")
        for name in ("nak_interval", "status_interval", "stable_interval"):
            if getattr(self, name) <= 0:
                raise ConfigError(f"{name} is {getattr(self, name)}; set it above 0 seconds")
        if self.nak_delay > self.nak_interval:
            raise ConfigError(
                f"nak_delay ({self.nak_delay}) is above nak_interval ({self.nak_interval}); "
                "set nak_delay <= nak_interval (the first Nak must not wait longer than a repeat)"
            )
        if not 0 <= self.status_jitter < 1:
            raise ConfigError(f"status_jitter is {self.status_jitter}; set it within 0..1 (not 1)")
        if self.nak_escalate_after < 0:
            raise ConfigError(
                f"nak_escalate_after is {self.nak_escalate_after}; set it to 0 or more"
            )
        for name in ("max_nak_range", "max_held", "max_buffer"):
            if getattr(self, name) < 1:
                raise ConfigError(f"{name} is {getattr(self, name)}; set it to 1 or more")
        if self.max_xmit_per_interval < self.max_nak_range:
            raise ConfigError(
                f"max_xmit_per_interval ({self.max_xmit_per_interval}) is below max_nak_range "
                f"({self.max_nak_range}); set it >= max_nak_range so one Nak can be answered"
            )
        if self.stable_repeats < 0:
            raise ConfigError(f"stable_repeats is {self.stable_repeats}; set it to 0 or more")
        least_grace = self.nak_delay + (self.nak_escalate_after + 1) * self.nak_interval
        if self.flush_grace < least_grace:
            raise ConfigError(
                f"flush_grace ({self.flush_grace}) is below nak_delay + "
                f"(nak_escalate_after + 1) * nak_interval ({least_grace:g}); raise it so "
                "survivors can ask the group for a departed origin's last messages"
            )


# ------------------------------------------------------------ events, actions


@attrs.frozen(kw_only=True)
class Publish:
    """Command: multicast ``payload`` (of ``kind``, 0..255) to the group, reliably, FIFO.

    ``handle`` raises :class:`~powergrid.errors.PayloadTooLargeError` if the
    payload exceeds :data:`MAX_MULTICAST_PAYLOAD` bytes and
    :class:`~powergrid.errors.UsageError` for a ``kind`` outside 0..255 or a
    payload that is not bytes.
    """

    kind: int
    payload: bytes


@attrs.frozen(kw_only=True)
class Deliver:
    """Hand the app message ``seq`` of ``origin`` (in ``incarnation``): ``kind`` and ``payload``."""

    origin: NodeId
    incarnation: Incarnation
    seq: int
    kind: int
    payload: bytes


# Positional constructors for the hot paths (see wire.record_builder): the same
# records as the keyword constructors, built in about half the time.
_new_deliver: Final = record_builder(Deliver)
_new_data: Final = record_builder(Data)
_new_multicast: Final = record_builder(Multicast)


@attrs.define(kw_only=True)
class MulticastStats:
    """Counters of one :class:`MulticastMachine` (mutable ints, only grow)."""

    published: int = 0
    delivered: int = 0
    """Deliver actions, own messages included."""
    duplicates: int = 0
    """Data or Xmit already delivered or held."""
    stale: int = 0
    """Messages of an older incarnation, Stable of an older view, Status of a non-member."""
    ignored: int = 0
    """Messages not meant for this node's role (e.g. Status when not coordinator), and
    Stable digests of a view other than this node's own."""
    held_dropped: int = 0
    """Messages ahead of a gap dropped because ``max_held`` was reached."""
    skipped: int = 0
    """Messages never delivered because Stable moved past them (see the buffer cap)."""
    naks_sent: int = 0
    """Naks sent, unicast and group."""
    naks_group: int = 0
    """Of those, multicast to the group."""
    xmits_sent: int = 0
    xmits_rate_limited: int = 0
    """Xmits not sent because of ``max_xmit_per_interval``."""
    status_sent: int = 0
    """Status datagrams sent."""
    stable_sent: int = 0
    """Stable datagrams sent."""
    buffer_overflow: int = 0
    """Messages dropped from the resend buffer before they were stable."""
    peak_buffer: int = 0
    """The most messages the resend buffer ever held."""


# ----------------------------------------------------------------- machine

_Stored = Data | Xmit


class _Origin:
    """What one member knows of one origin's stream (in one incarnation)."""

    __slots__ = (
        "buf",
        "buf_low",
        "delivered",
        "gone_at",
        "group_round",
        "held",
        "highest",
        "incarnation",
        "last_nak",
        "nak_due",
        "stable",
        "tries",
    )

    def __init__(self, incarnation: int, start: int) -> None:
        self.incarnation = incarnation
        self.delivered = start  # _PENDING until the start is known
        self.highest = max(start, 0)
        self.stable = max(start, 0)
        self.held: dict[int, _Stored] = {}
        # delivered, not yet stable: seq -> (kind, payload), seqs buf_low..delivered
        self.buf: dict[int, tuple[int, bytes]] = {}
        self.buf_low = start + 1
        self.nak_due: float | None = None
        self.last_nak = -math.inf
        self.tries = 0
        self.group_round = 0
        self.gone_at: float | None = None


class MulticastMachine(Dispatching):
    """Reliable multicast, FIFO per origin, for one group (see the module docstring).

    ``rng`` jitters the Status period; nothing else is random.
    """

    __slots__ = (
        "_buffer_size",
        "_config",
        "_coordinating",
        "_coordinator",
        "_floors",
        "_gappy",
        "_grace",
        "_hearsay",
        "_incarnation",
        "_me",
        "_member_inc",
        "_origins",
        "_own",
        "_reporting",
        "_reports",
        "_retired",
        "_retired_reports",
        "_rng",
        "_stable_due",
        "_stable_left",
        "_stats",
        "_status_due",
        "_view",
        "_xmit_window",
    )

    _EVENTS = {
        Received: "_on_received",
        DeadlineReached: "_on_deadline",
        Publish: "_on_publish",
        ViewChanged: "_on_view_changed",
    }

    _MESSAGES = {
        Data: "_on_data",
        Xmit: "_on_xmit",
        Nak: "_on_nak",
        Status: "_on_status",
        Stable: "_on_stable",
    }

    def __init__(
        self,
        config: MulticastConfig,
        *,
        me: NodeId,
        incarnation: Incarnation,
        rng: random.Random,
    ) -> None:
        self._config = config
        self._me = me
        self._incarnation = incarnation
        self._rng = rng
        self._stats = MulticastStats()
        own = _Origin(incarnation, 0)
        self._origins: dict[int, _Origin] = {me: own}
        self._own = own
        self._buffer_size = 0
        self._view: View | None = None
        self._member_inc: dict[int, int] = {}  # member -> incarnation, of the current view
        self._coordinator = 0
        self._coordinating = False  # I am the coordinator
        self._reporting = False  # someone else is the coordinator
        self._gappy: dict[int, _Origin] = {}  # origins with a Nak timer
        self._grace: dict[int, float] = {}  # origin -> when its state is dropped
        # origin -> its previous life, replaced by a newer incarnation (a restart): kept
        # until its gone_at (flush_grace) so members can still fetch its last messages
        self._retired: dict[int, _Origin] = {}
        # origins whose retired life this coordinator knows only from members' Status (its
        # own past life, or one it never had state of): nothing held, delivered or declared
        self._hearsay: set[int] = set()
        self._status_due: float | None = None
        self._stable_due: float | None = None
        self._stable_left = 0  # Stable digests still owed after a view change
        # member -> origin -> (inc, delivered, low): what it delivered, what it can no longer resend
        self._reports: dict[int, dict[int, tuple[int, int, int]]] = {}
        # the same, of retired lives (its origin -> the retired life's report)
        self._retired_reports: dict[int, dict[int, tuple[int, int, int]]] = {}
        self._xmit_window: dict[int, list[float]] = {}  # requester -> [window start, count]
        # dropped origin -> inc -> (stable, delivered) when that life's state was dropped
        # (after grace, or a retired life at its end); each life's apart from the others'
        self._floors: dict[int, dict[int, tuple[int, int]]] = {}

    # ------------------------------------------------------------ public

    @property
    def stats(self) -> MulticastStats:
        """Counters (see :class:`MulticastStats`)."""
        return self._stats

    @property
    def me(self) -> NodeId:
        """This node's id."""
        return self._me

    @property
    def view(self) -> View | None:
        """The last view installed, or None."""
        return self._view

    @property
    def coordinator(self) -> NodeId:
        """The view's leader, who computes stability; 0 if none."""
        return NodeId(self._coordinator)

    @property
    def buffer_size(self) -> int:
        """Messages in the resend buffer now (all origins)."""
        return self._buffer_size

    @property
    def delivered(self) -> Mapping[NodeId, tuple[Incarnation, int]]:
        """Per known origin (self included): its incarnation and the highest seq delivered.

        Origins whose start is not known yet are left out. A new dict each call.
        """
        return {
            NodeId(o): (Incarnation(st.incarnation), st.delivered)
            for o, st in sorted(self._origins.items())
            if st.delivered != _PENDING
        }

    def handle(self, event: object, now: float) -> list[Any]:
        """Feed one event; returns the actions to take, in order.

        Raises :class:`~powergrid.errors.UsageError` for an event of an
        unknown type or a bad :class:`Publish`, and
        :class:`~powergrid.errors.PayloadTooLargeError` for a Publish too large.
        """
        kind = type(event)
        if kind is Received:  # the hot path: skip one dispatch step for Data
            msg = event.message  # type: ignore[attr-defined]
            if type(msg) is Data:
                return self._on_data(event, msg, now)  # type: ignore[arg-type]
        handler = self._on_event.get(kind)
        if handler is None:
            raise UsageError(f"MulticastMachine cannot handle {type(event).__name__}")
        return handler(self, event, now)

    def next_deadline(self) -> float | None:
        """When the machine next needs :class:`DeadlineReached`; None while all is quiet."""
        # Called by the driver after every event: without gaps, departed origins or
        # retired lives (the steady state) it is the earlier of two fields, with no loops.
        best = self._status_due
        due = self._stable_due
        if due is not None and (best is None or due < best):
            best = due
        if not self._gappy and not self._grace and not self._retired:
            return best
        for st in self._gappy.values():
            due = st.nak_due
            if due is not None and (best is None or due < best):
                best = due
        for due in self._grace.values():
            if best is None or due < best:
                best = due
        for st in self._retired.values():
            for due in (st.nak_due, st.gone_at):
                if due is not None and (best is None or due < best):
                    best = due
        return best

    # ------------------------------------------------------------ commands

    def _on_publish(self, cmd: Publish, now: float) -> list[Any]:
        payload = cmd.payload
        if not isinstance(payload, bytes):
            raise UsageError(f"payload must be bytes, not {type(payload).__name__}")
        if not 0 <= cmd.kind <= 255:
            raise UsageError(f"kind {cmd.kind} is outside 0..255")
        if len(payload) > MAX_MULTICAST_PAYLOAD:
            raise PayloadTooLargeError(
                f"payload is {len(payload)} bytes, over the {MAX_MULTICAST_PAYLOAD}-byte "
                "limit of one multicast; split it"
            )
        own = self._own
        seq = own.delivered + 1
        msg = _new_data(seq, cmd.kind, payload)
        own.delivered = own.highest = seq
        self._stats.published += 1
        out: list[Any] = []
        self._deliver(own, self._me, seq, msg, out)
        out.append(_new_multicast(msg))
        if self._status_due is None or self._stable_due is None:
            self._arm_reports(now)
        return out

    # ------------------------------------------------------------ receiving

    def _on_received(self, ev: Received, now: float) -> list[Any]:
        msg = ev.message
        handler = self._on_message.get(type(msg))
        if handler is None:
            self._stats.ignored += 1
            return []
        return handler(self, ev, msg, now)

    def _on_data(self, ev: Received, msg: Data, now: float) -> list[Any]:
        origin = ev.sender
        inc = ev.incarnation
        st = self._origins.get(origin)
        seq = msg.seq
        # The hot path: the next message of a known origin, nothing held.
        if (
            st is not None
            and seq == st.delivered + 1
            and st.incarnation == inc
            and not st.held
            and origin != self._me
        ):
            st.delivered = seq
            if seq > st.highest:  # noqa: PLR1730 (faster than max() on the hot path)
                st.highest = seq
            st.buf[seq] = (msg.kind, msg.payload)
            size = self._buffer_size = self._buffer_size + 1
            stats = self._stats
            stats.delivered += 1
            if size > stats.peak_buffer:
                self._new_peak(size)
            if self._status_due is None and self._reporting:
                self._arm_status(now)
            elif self._stable_due is None and self._coordinating:
                self._stable_due = now + self._config.stable_interval
            if st.nak_due is not None:
                self._check_gap(origin, st, now)
            return [_new_deliver(origin, inc, seq, msg.kind, msg.payload)]
        return self._accept(origin, inc, seq, msg, now)

    def _on_xmit(self, ev: Received, msg: Xmit, now: float) -> list[Any]:
        return self._accept(msg.origin, msg.origin_incarnation, msg.seq, msg, now)

    def _accept(self, origin: int, inc: int, seq: int, msg: _Stored, now: float) -> list[Any]:
        """A Data or Xmit of ``origin``: deliver, hold, or drop it."""
        stats = self._stats
        if origin == self._me:
            stats.ignored += 1
            return []
        st = self._origins.get(origin)
        if st is None:
            st = self._new_origin(origin, inc, self._unknown_start(origin, inc, seq), now)
        elif inc != st.incarnation:
            if incarnation_newer(st.incarnation, inc):
                old = self._retired.get(origin)
                if old is not None and old.incarnation == inc:
                    if origin in self._hearsay:  # a life it never had: digested, not taken
                        stats.ignored += 1
                        return []
                    return self._accept_retired(origin, old, seq, msg, now)
                stats.stale += 1
                return []
            st = self._new_origin(origin, inc, 0, now)  # we knew its last life: starts at 1
        out = self._place(origin, st, seq, msg, now)
        self._check_gap(origin, st, now)
        return out

    def _place(self, origin: int, st: _Origin, seq: int, msg: _Stored, now: float) -> list[Any]:
        """Deliver (with what it unblocks), hold or drop message ``seq`` of a life ``st``."""
        st.highest = max(st.highest, seq)
        out: list[Any] = []
        if seq <= st.delivered or seq in st.held:
            self._stats.duplicates += 1
        elif seq == st.delivered + 1:
            self._deliver(st, origin, seq, msg, out)
            self._drain(st, origin, out)
            st.tries = st.group_round = 0
            self._arm_reports(now)
        elif len(st.held) >= self._config.max_held:
            self._stats.held_dropped += 1
        else:
            st.held[seq] = msg
        return out

    def _unknown_start(self, origin: int, inc: int, seq: int) -> int:
        """Where the stream of an origin we have no state for starts, on a message ``seq``.

        (:meth:`_new_origin` resumes a life whose state was dropped after what we delivered.)
        """
        if seq == 1 or self._coordinating:
            return 0
        return _PENDING

    def _unlisted(self, origin: int, inc: int) -> bool:
        """Whether the view lists ``origin`` in another life than ``inc``: a digest then
        says nothing of the listed life, and must not start (or keep alive) another one."""
        listed = self._member_inc.get(origin)
        return listed is not None and listed != inc

    def _dropped(self, origin: int, inc: int) -> bool:
        """Whether this life of ``origin`` left the view and its state was dropped after grace."""
        lives = self._floors.get(origin)
        return (
            lives is not None
            and any(not incarnation_newer(inc, life) for life in lives)
            and origin not in self._member_inc
        )

    def _new_origin(self, origin: int, inc: int, start: int, now: float) -> _Origin:
        """Fresh state for ``origin`` in ``inc`` starting after ``start``, replacing any older
        life's. A life whose state we dropped resumes after what we delivered of it (never
        delivering anything twice) with the stable point we knew (never declaring more)."""
        old = self._origins.get(origin)
        if old is not None:
            retire = incarnation_newer(inc, old.incarnation) and old.delivered != _PENDING
            kept = {  # the members' reports of the old life go with it
                m: got
                for m, r in self._reports.items()
                if retire and (got := r.get(origin)) is not None and got[0] == old.incarnation
            }
            self._forget(origin, old)
            if retire:
                self._retire(origin, old, now, kept)
        lives = self._floors.get(origin)
        known = None if lives is None else lives.pop(inc, None)
        if lives is not None and not lives:
            del self._floors[origin]
        if known is not None and known[1] > start:
            st = _Origin(inc, known[1])
            st.stable = max(known[0], start, 0)
        else:
            st = _Origin(inc, start)
        self._origins[origin] = st
        if self._view is not None and self._member_inc.get(origin) != inc:
            # A life the view does not list (not admitted yet, or forged): kept for
            # flush_grace unless a view lists it by then, so a forged incarnation cannot
            # shut out the listed life for good.
            st.gone_at = self._grace[origin] = now + self._config.flush_grace
        return st

    def _remember(self, origin: int, st: _Origin) -> None:
        """Keep what was delivered of a dropped life ``st`` of ``origin``, and its stable
        point, apart from the other lives' (a later life's must survive an earlier one
        started again, e.g. from a Stable while the view still lists the earlier one)."""
        lives = self._floors.pop(origin, None)  # put back last: the most recent origin
        if lives is None:
            if len(self._floors) >= _MAX_FLOORS:
                del self._floors[next(iter(self._floors))]
            lives = {}
        lives[st.incarnation] = (st.stable, st.delivered)
        while len(lives) > _FLOOR_LIVES:
            del lives[min(lives)]
        self._floors[origin] = lives

    def _forget(self, origin: int, st: _Origin) -> None:
        del self._origins[origin]
        self._buffer_size -= len(st.buf)
        self._gappy.pop(origin, None)
        self._grace.pop(origin, None)
        for report in self._reports.values():
            report.pop(origin, None)

    # ------------------------------------------------------------ retired lives

    def _retire(
        self, origin: int, st: _Origin, now: float, reports: dict[int, tuple[int, int, int]]
    ) -> None:
        """A newer life of ``origin`` replaced ``st`` (a restart): keep the old life for
        ``flush_grace``, like an origin that left the view, so that members can still
        fetch its last messages from whoever delivered them (the origin cannot resend).
        ``reports``: the members' reports of the old life (the coordinator's)."""
        if origin in self._retired:
            self._drop_retired(origin)
        for m, got in reports.items():
            self._retired_reports.setdefault(m, {})[origin] = got
        st.gone_at = now + self._config.flush_grace
        st.nak_due = None
        st.tries = st.group_round = 0
        self._retired[origin] = st
        self._buffer_size += len(st.buf)
        self._check_retired_gap(st, now)

    def _reported_past_life(self, origin: int, inc: int, delivered: int, now: float) -> None:
        """A member reports it delivered up to ``delivered`` of a past life ``inc`` of
        ``origin`` that this node, the coordinator, has no state of (its own past life, or
        a life of another origin it never knew: it joined, restarted or took over after
        that life ended): keep the life as retired, for ``flush_grace`` from the first
        report, so that its highest goes out in the Stable digest like any retired life's
        and members behind fetch its end from those that delivered it. Nothing of it is
        held or delivered here and nothing is declared stable: only its highest grows,
        with the reports (a *hearsay* life, dropped when this node stops coordinating)."""
        old = self._retired.get(origin)
        if old is None or incarnation_newer(inc, old.incarnation):
            if old is not None:
                self._drop_retired(origin)
            old = self._retired[origin] = _Origin(inc, 0)
            old.gone_at = now + self._config.flush_grace
            self._hearsay.add(origin)
        elif incarnation_newer(old.incarnation, inc):
            return
        if delivered > old.highest:
            old.highest = old.delivered = delivered  # no gap: this node never asks for it

    def _hearsay_of(self, origin: int, inc: int) -> bool:
        """Whether a Status entry of life ``inc`` of ``origin`` (not this node) is of a past
        life this coordinator has no state of: the view lists a later life of the origin,
        this node knows no life of it or only a later one, and keeps no retired life of it
        but one it heard of the same way."""
        old = self._retired.get(origin)
        if old is not None:
            if origin not in self._hearsay:
                return False  # a life it had state of: digested from that state
            if not incarnation_newer(inc, old.incarnation):
                return old.incarnation == inc
        listed = self._member_inc.get(origin)
        if listed is None or not incarnation_newer(listed, inc):
            return False
        st = self._origins.get(origin)
        return st is None or incarnation_newer(st.incarnation, inc)

    def _retired_life(self, origin: int, inc: int) -> _Origin | None:
        old = self._retired.get(origin)
        return old if old is not None and old.incarnation == inc else None

    def _accept_retired(
        self, origin: int, st: _Origin, seq: int, msg: _Stored, now: float
    ) -> list[Any]:
        """A Data or Xmit of a retired life: deliver, hold or drop it, like a live one's."""
        out = self._place(origin, st, seq, msg, now)
        self._check_retired_gap(st, now)
        return out

    def _check_retired_gap(self, st: _Origin, now: float) -> None:
        """Start or stop a retired life's Nak timer to match whether it has a gap."""
        if st.highest > st.delivered:
            if st.nak_due is None:
                cfg = self._config
                st.nak_due = max(now + cfg.nak_delay, st.last_nak + cfg.nak_interval)
                self._arm_reports(now)
        else:
            st.nak_due = None
            st.tries = st.group_round = 0

    def _drop_retired(self, origin: int) -> None:
        st = self._retired.pop(origin)
        self._hearsay.discard(origin)
        self._buffer_size -= len(st.buf)
        for report in self._retired_reports.values():
            report.pop(origin, None)

    def _deliver(self, st: _Origin, origin: int, seq: int, msg: _Stored, out: list[Any]) -> None:
        st.delivered = seq
        st.buf[seq] = (msg.kind, msg.payload)
        size = self._buffer_size = self._buffer_size + 1
        self._stats.delivered += 1
        if size > self._stats.peak_buffer:
            self._new_peak(size)
        out.append(_new_deliver(origin, st.incarnation, seq, msg.kind, msg.payload))

    def _drain(self, st: _Origin, origin: int, out: list[Any]) -> None:
        """Deliver held messages that are now in order."""
        held = st.held
        while held:
            nxt = held.pop(st.delivered + 1, None)
            if nxt is None:
                break
            self._deliver(st, origin, st.delivered + 1, nxt, out)

    def _new_peak(self, size: int) -> None:
        """The buffer grew past its peak: enforce the cap, then record the new peak."""
        if size > self._config.max_buffer:
            self._overflow()
            size = self._buffer_size
        self._stats.peak_buffer = max(self._stats.peak_buffer, size)

    def _overflow(self) -> None:
        """Drop the oldest message of the origin with the most buffered, while over the cap."""
        limit = self._config.max_buffer
        while self._buffer_size > limit:
            _, st = max(
                [*self._origins.items(), *self._retired.items()],
                key=lambda item: (len(item[1].buf), -item[0]),
            )
            seq = st.buf_low
            while seq not in st.buf:
                seq += 1
            del st.buf[seq]
            st.buf_low = seq + 1
            self._buffer_size -= 1
            self._stats.buffer_overflow += 1
            if self._coordinating and seq > st.stable:
                st.stable = seq  # nobody can fetch it any more: let laggards skip it

    def _trim(self, st: _Origin, stable: int) -> None:
        """Drop buffered messages up to ``stable``."""
        st.stable = max(st.stable, stable)
        buf = st.buf
        top = min(stable, st.delivered)
        if top < st.buf_low:
            return
        if top - st.buf_low >= len(buf):
            dropped = len(buf)
            st.buf = {s: m for s, m in buf.items() if s > top}
            dropped -= len(st.buf)
        else:
            dropped = 0
            for seq in range(st.buf_low, top + 1):
                if buf.pop(seq, None) is not None:
                    dropped += 1
        st.buf_low = top + 1
        self._buffer_size -= dropped

    # ------------------------------------------------------------ gaps, Naks

    def _check_gap(self, origin: int, st: _Origin, now: float) -> None:
        """Start or stop the origin's Nak timer to match whether it has a gap."""
        if st.delivered != _PENDING and st.highest > st.delivered:
            if st.nak_due is None:
                cfg = self._config
                st.nak_due = max(now + cfg.nak_delay, st.last_nak + cfg.nak_interval)
                self._gappy[origin] = st
                self._arm_reports(now)
        elif st.nak_due is not None:
            st.nak_due = None
            st.tries = st.group_round = 0
            del self._gappy[origin]

    def _send_nak(
        self, origin: int, st: _Origin, now: float, out: list[Any], *, retired: bool = False
    ) -> None:
        """Ask for every missing range within ``max_nak_range`` after the delivered point."""
        cfg = self._config
        held = st.held
        first = st.delivered + 1
        end = min(st.highest, st.delivered + cfg.max_nak_range)
        ranges: list[tuple[int, int]] = []
        seq = first
        while seq <= end:
            if seq in held:
                seq += 1
                continue
            start = seq
            while seq <= end and seq not in held:
                seq += 1
            ranges.append((start, seq - 1))
        st.last_nak = now
        st.nak_due = now + cfg.nak_interval
        stats = self._stats
        gone = retired or (self._view is not None and origin not in self._member_inc)
        if st.tries >= cfg.nak_escalate_after or gone:
            helper = self._helper(origin, st.group_round)
            st.group_round += 1
            for lo, hi in ranges:
                stats.naks_sent += 1
                stats.naks_group += 1
                nak = Nak(
                    origin=origin,
                    origin_incarnation=st.incarnation,
                    first=lo,
                    last=hi,
                    helper=helper,
                )
                out.append(Multicast(message=nak))
        else:
            for lo, hi in ranges:
                stats.naks_sent += 1
                nak = Nak(origin=origin, origin_incarnation=st.incarnation, first=lo, last=hi)
                out.append(Send(to=NodeId(origin), message=nak))
        st.tries += 1

    def _helper(self, origin: int, round_: int) -> int:
        """Who besides the origin answers group Nak round ``round_`` (the origin if nobody)."""
        skip = (self._me, origin, self._coordinator)
        candidates = [m for m in sorted(self._member_inc) if m not in skip]
        if self._coordinator not in (0, self._me, origin):
            candidates.insert(0, self._coordinator)
        if not candidates:
            return origin
        return candidates[round_ % len(candidates)]

    def _on_nak(self, ev: Received, msg: Nak, now: float) -> list[Any]:
        me = self._me
        requester = ev.sender
        if requester == me or (msg.helper and me not in (msg.origin, msg.helper)):
            self._stats.ignored += 1
            return []
        st = self._origins.get(msg.origin)
        if st is not None and incarnation_newer(st.incarnation, msg.origin_incarnation):
            st = self._retired_life(msg.origin, msg.origin_incarnation) or st
        if st is None or st.incarnation != msg.origin_incarnation:
            if st is not None and incarnation_newer(st.incarnation, msg.origin_incarnation):
                self._stats.stale += 1
            else:
                self._stats.ignored += 1
            return []
        cfg = self._config
        window = self._xmit_window.get(requester)
        if window is None or now >= window[0] + cfg.nak_interval:
            if window is None and len(self._xmit_window) > 4 * len(self._member_inc) + 16:
                self._prune_windows(now)
            window = self._xmit_window[requester] = [now, 0.0]
        budget = cfg.max_xmit_per_interval - int(window[1])
        first = max(msg.first, st.buf_low)
        last = min(msg.last, msg.first + cfg.max_nak_range - 1, st.delivered)
        out: list[Any] = []
        to = NodeId(requester)
        for seq in range(first, last + 1):
            stored = st.buf.get(seq)
            if stored is None:
                continue
            if budget <= 0:
                self._stats.xmits_rate_limited += 1
                continue
            budget -= 1
            kind, payload = stored
            xmit = Xmit(
                origin=msg.origin,
                origin_incarnation=st.incarnation,
                seq=seq,
                kind=kind,
                payload=payload,
            )
            out.append(Send(to=to, message=xmit))
        window[1] = cfg.max_xmit_per_interval - budget
        self._stats.xmits_sent += len(out)
        return out

    def _prune_windows(self, now: float) -> None:
        span = self._config.nak_interval
        for requester in sorted(self._xmit_window):
            if now >= self._xmit_window[requester][0] + span:
                del self._xmit_window[requester]

    # ------------------------------------------------------------ stability

    def _arm_reports(self, now: float) -> None:
        """Start the Status timer (member) or the Stable timer (coordinator) if idle."""
        if self._reporting:
            if self._status_due is None:
                self._arm_status(now)
        elif self._coordinating and self._stable_due is None:
            self._stable_due = now + self._config.stable_interval

    def _arm_status(self, now: float) -> None:
        cfg = self._config
        jitter = cfg.status_jitter * self._rng.random() if cfg.status_jitter else 0.0
        self._status_due = now + cfg.status_interval * (1.0 - jitter)

    def _needs_status(self) -> bool:
        """A member reports while it holds unstable messages, has gaps, or has delivered
        more of some origin than the coordinator last declared stable (it may have
        skipped there, so its buffer is empty, and the coordinator still needs to hear it)."""
        if not self._reporting:
            return False
        if self._buffer_size > 0 or self._gappy:
            return True
        if any(st.nak_due is not None for st in self._retired.values()):
            return True
        return any(st.delivered > st.stable for st in self._origins.values())

    def _status_messages(self) -> list[Any]:
        entries = [
            StatusEntry(o, st.incarnation, st.delivered, min(st.buf_low - 1, st.delivered))
            for o, st in sorted(self._origins.items())
            if st.delivered != _PENDING
        ]
        assert self._view is not None
        view_id = self._view.view_id
        to = NodeId(self._coordinator)
        n = STATUS_PER_DATAGRAM
        out: list[Any] = [
            Send(to=to, message=Status(view_id=view_id, entries=tuple(entries[i : i + n])))
            for i in range(0, len(entries), n)
        ]
        if self._retired:  # an origin appears once per datagram: retired lives go apart
            old = [
                StatusEntry(o, st.incarnation, st.delivered, min(st.buf_low - 1, st.delivered))
                for o, st in sorted(self._retired.items())
            ]
            out.extend(
                Send(to=to, message=Status(view_id=view_id, entries=tuple(old[i : i + n])))
                for i in range(0, len(old), n)
            )
        return out

    def _on_status(self, ev: Received, msg: Status, now: float) -> list[Any]:
        if not self._coordinating:
            self._stats.ignored += 1
            return []
        member = ev.sender
        if self._member_inc.get(member) != ev.incarnation or member == self._me:
            self._stats.stale += 1
            return []
        report = self._reports.setdefault(member, {})
        out: list[Any] = []
        for origin, inc, delivered, low in msg.entries:
            low = min(low, delivered)
            if origin == self._me:
                if inc == self._incarnation:
                    self._report(report, origin, inc, min(delivered, self._own.delivered), low)
                elif incarnation_newer(self._incarnation, inc):
                    self._reported_past_life(origin, inc, delivered, now)
                continue
            if self._hearsay_of(origin, inc):
                self._reported_past_life(origin, inc, delivered, now)
                continue
            if self._unlisted(origin, inc) and self._retired_life(origin, inc) is None:
                continue  # (a retired life is repaired for its flush_grace, never revived)
            st = self._origins.get(origin)
            if st is None:
                if self._dropped(origin, inc):
                    continue
                st = self._new_origin(origin, inc, 0, now)
            elif inc != st.incarnation:
                if incarnation_newer(st.incarnation, inc):
                    old = self._retired_life(origin, inc)
                    if old is not None:  # the member delivered this much of the old life
                        old.highest = max(old.highest, delivered)
                        retired = self._retired_reports.setdefault(member, {})
                        self._report(retired, origin, inc, delivered, low)
                        self._check_retired_gap(old, now)
                    continue
                st = self._new_origin(origin, inc, 0, now)
            elif st.delivered == _PENDING:
                self._start(origin, st, delivered, out)
            self._report(report, origin, inc, delivered, low)
            st.highest = max(st.highest, delivered)
            self._check_gap(origin, st, now)
        if self._stable_due is None:
            self._stable_due = now + self._config.stable_interval
        return out

    @staticmethod
    def _report(
        report: dict[int, tuple[int, int, int]], origin: int, inc: int, delivered: int, low: int
    ) -> None:
        """Record a member's point for ``origin`` (both only grow within a life: keep the max)."""
        prev = report.get(origin)
        if prev is None or prev[0] != inc:
            report[origin] = (inc, delivered, low)
        elif delivered > prev[1] or low > prev[2]:
            report[origin] = (inc, max(delivered, prev[1]), max(low, prev[2]))

    def _skip_lost(self, now: float, out: list[Any]) -> None:
        """Raise each origin's stable point to where its history is lost for good.

        With every member's report in, the messages anyone can still resend are
        the union of the members' ``(low, delivered]`` (this node's included).
        Counting down from the highest delivered, the first message nobody holds
        is lost: messages dropped as stable in a view some of today's members were
        not in (a partition, a restart). Members behind it can never get it, so it
        is declared stable and they skip to it; the coordinator skips first.
        Retired lives too: with the reports of every member but the origin (its new
        life holds none of the old one), for the coordinator may have started the
        old life at 0 and not yet skipped when the origin restarted.
        """
        me = self._me
        others = [m for m in sorted(self._member_inc) if m != me]
        for origin, st in sorted(self._origins.items()):
            if origin == me or st.delivered == _PENDING:
                continue
            lost = self._lost_point(origin, st, others, self._reports)
            if lost > st.stable:
                st.stable = lost
                if lost > st.delivered:
                    self._skip_to(origin, st, lost, out)
                    self._check_gap(origin, st, now)
        for origin, st in sorted(self._retired.items()):
            if origin in self._hearsay:  # a life known from reports: nothing held here
                continue
            holders = [m for m in others if m != origin]
            lost = self._lost_point(origin, st, holders, self._retired_reports)
            if lost > st.stable:
                st.stable = lost
                if lost > st.delivered:
                    self._skip_to(origin, st, lost, out)
                    self._check_retired_gap(st, now)

    def _lost_point(
        self,
        origin: int,
        st: _Origin,
        others: list[int],
        reports: dict[int, dict[int, tuple[int, int, int]]],
    ) -> int:
        """The highest message of life ``st`` that nobody holds (``0``: none, or a member
        of ``others`` has not reported this life yet)."""
        inc = st.incarnation
        spans = [(min(st.buf_low - 1, st.delivered), st.delivered)]
        for m in others:
            got = reports.get(m, _NO_REPORT).get(origin)
            if got is None or got[0] != inc:
                return 0
            spans.append((got[2], got[1]))
        lost = max(d for _, d in spans)
        held = st.held
        while lost > 0:
            below = [low for low, d in spans if low < lost <= d]
            if below:
                lost = min(below)
            elif lost in held:  # this node can still deliver it, and then resend it
                lost -= 1
            else:
                break
        return lost

    def _stable_messages(self) -> tuple[list[Any], bool]:
        """The coordinator's digest (applied locally too), and whether anything is unstable."""
        me = self._me
        others = [m for m in sorted(self._member_inc) if m != me]
        reports = self._reports
        entries: list[StableEntry] = []
        unstable = False
        for origin, st in sorted(self._origins.items()):
            if st.delivered == _PENDING:
                continue
            inc = st.incarnation
            low = st.delivered
            for m in others:
                got = reports.get(m, _NO_REPORT).get(origin)
                if got is None or got[0] != inc:
                    low = st.stable
                    break
                low = min(low, got[1])
            self._trim(st, max(low, st.stable))
            entries.append(StableEntry(origin, inc, st.stable, st.highest))
            if st.stable < st.highest:
                unstable = True
        assert self._view is not None
        view_id = self._view.view_id
        n = STABLE_PER_DATAGRAM
        out: list[Any] = [
            Multicast(message=Stable(view_id=view_id, entries=tuple(entries[i : i + n])))
            for i in range(0, len(entries), n)
        ]
        if self._retired:  # the highest of each retired life, so laggards fetch its end
            old = [
                StableEntry(o, st.incarnation, min(st.stable, st.highest), st.highest)
                for o, st in sorted(self._retired.items())
            ]
            out.extend(
                Multicast(message=Stable(view_id=view_id, entries=tuple(old[i : i + n])))
                for i in range(0, len(old), n)
            )
            unstable = True  # repeated until the retired lives are dropped
        return out, unstable

    def _on_stable(self, ev: Received, msg: Stable, now: float) -> list[Any]:
        view = self._view
        if view is not None and msg.view_id < view.view_id:
            self._stats.stale += 1
            return []
        # Only the coordinator of this node's own view may make it drop or skip anything:
        # a digest of a view it is not in (yet), or with no view, says what *other*
        # members delivered, and trusting it dropped messages members of our view lack.
        if (
            view is None
            or msg.view_id != view.view_id
            or ev.sender != view.leader
            or self._member_inc.get(ev.sender) != ev.incarnation
            or self._coordinating
        ):
            self._stats.ignored += 1
            return []
        out: list[Any] = []
        for origin, inc, stable, highest in msg.entries:
            st = self._origins.get(origin)
            if origin == self._me:
                if st is not None and inc == st.incarnation:
                    self._trim(st, min(stable, st.delivered))
                continue
            if self._unlisted(origin, inc) and self._retired_life(origin, inc) is None:
                continue  # (a retired life is repaired for its flush_grace, never revived)
            if st is None:
                if self._dropped(origin, inc):
                    continue
                st = self._new_origin(origin, inc, stable, now)
            elif inc != st.incarnation:
                if incarnation_newer(st.incarnation, inc):
                    old = self._retired_life(origin, inc)
                    if old is not None:
                        if stable > old.delivered:
                            self._skip_to(origin, old, stable, out)
                        old.highest = max(old.highest, highest)
                        self._check_retired_gap(old, now)
                    continue
                st = self._new_origin(origin, inc, stable, now)
            elif st.delivered == _PENDING:
                self._start(origin, st, stable, out)
            elif stable > st.delivered:
                self._skip_to(origin, st, stable, out)
            self._trim(st, stable)
            st.highest = max(st.highest, highest)
            self._check_gap(origin, st, now)
        if self._needs_status():  # e.g. the digest lags what we delivered: tell it
            if self._status_due is None:
                self._arm_status(now)
        else:
            self._status_due = None
        return out

    def _start(self, origin: int, st: _Origin, start: int, out: list[Any]) -> None:
        """A pending origin's stream starts after ``start``: drop older held, deliver the rest."""
        st.delivered = start
        st.buf_low = start + 1
        st.stable = max(st.stable, start)
        for seq in sorted(s for s in st.held if s <= start):
            del st.held[seq]
        self._drain(st, origin, out)

    def _skip_to(self, origin: int, st: _Origin, stable: int, out: list[Any]) -> None:
        """Stable moved past what we delivered: skip everything up to it, then go on from it.

        Messages held up to ``stable`` are dropped (skipped) too: delivering them would
        leave gaps between deliveries, so the stream jumps once, at the lost point.
        """
        held = st.held
        for seq in [s for s in held if s <= stable]:
            del held[seq]
        self._stats.skipped += stable - st.delivered
        st.delivered = stable
        self._drain(st, origin, out)
        st.tries = st.group_round = 0

    # ------------------------------------------------------------ views

    def _on_view_changed(self, ev: ViewChanged, now: float) -> list[Any]:
        view = ev.view
        me = self._me
        was_coordinating = self._coordinating
        old_inc = self._member_inc
        self._view = view
        self._member_inc = member_maps(view.members)[1]  # shared: read only
        self._coordinator = view.leader
        self._coordinating = view.leader == me
        self._reporting = view.leader not in (0, me)
        for requester in sorted(self._xmit_window):
            if requester not in self._member_inc:
                del self._xmit_window[requester]
        for origin, st in sorted(self._origins.items()):
            if origin == me:
                continue
            if self._member_inc.get(origin) == st.incarnation:
                if st.gone_at is not None:
                    st.gone_at = None
                    del self._grace[origin]
            elif st.gone_at is None:
                st.gone_at = self._grace[origin] = now + self._config.flush_grace
        out: list[Any] = []
        if self._coordinating:
            # A report speaks for the member life that sent it: a member that left, or
            # came back as a new incarnation (a restart), has delivered nothing of it.
            self._reports, self._retired_reports = (
                {
                    m: r
                    for m, r in reports.items()
                    if m in self._member_inc and self._member_inc[m] == old_inc.get(m)
                }
                for reports in (self._reports, self._retired_reports)
            )
            self._status_due = None
            for origin, st in sorted(self._origins.items()):
                if st.delivered == _PENDING:
                    self._start(origin, st, 0, out)
                    self._check_gap(origin, st, now)
            self._stable_left = self._config.stable_repeats
            stable, unstable = self._stable_messages()
            out.extend(stable)
            self._stats.stable_sent += len(stable)
            self._stable_due = (
                now + self._config.stable_interval if unstable or self._stable_left else None
            )
        else:
            for origin in sorted(self._hearsay):  # digest state only: not reported on
                self._drop_retired(origin)
            if was_coordinating:
                self._reports = {}
                self._retired_reports = {}
                self._stable_due = None
                self._stable_left = 0
            if self._needs_status():
                if self._status_due is None:
                    self._arm_status(now)
            else:
                self._status_due = None
        return out

    # ------------------------------------------------------------ timers

    def _on_deadline(self, ev: DeadlineReached, now: float) -> list[Any]:
        out: list[Any] = []
        for origin in sorted(self._gappy):
            st = self._gappy[origin]
            if st.nak_due is not None and st.nak_due <= now:
                self._send_nak(origin, st, now, out)
        for origin in sorted(self._retired):
            st = self._retired[origin]
            if st.gone_at is not None and st.gone_at <= now:
                if origin not in self._hearsay and st.delivered != _PENDING:
                    self._remember(origin, st)
                self._drop_retired(origin)
                if not self._needs_status():
                    self._status_due = None
            elif st.nak_due is not None and st.nak_due <= now:
                self._send_nak(origin, st, now, out, retired=True)
        for origin in sorted(o for o, t in self._grace.items() if t <= now):
            st = self._origins[origin]
            self._forget(origin, st)
            self._remember(origin, st)
            if not self._needs_status():
                self._status_due = None
        if self._status_due is not None and self._status_due <= now:
            if self._needs_status():
                sent = self._status_messages()
                self._stats.status_sent += len(sent)
                out.extend(sent)
                self._arm_status(now)
            else:
                self._status_due = None
        if self._stable_due is not None and self._stable_due <= now:
            self._skip_lost(now, out)
            sent, unstable = self._stable_messages()
            self._stats.stable_sent += len(sent)
            out.extend(sent)
            if self._stable_left:
                self._stable_left -= 1
            self._stable_due = (
                now + self._config.stable_interval if unstable or self._stable_left else None
            )
        return out
