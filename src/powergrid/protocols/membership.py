"""Heartbeat membership: who is in a group, as its leader announces it.

Theory of operation
-------------------
One :class:`MembershipMachine` per group the node is in; the same class serves
cluster groups and the broker group. Who leads is not decided here: the
election machine says so with :class:`~powergrid.events.LeaderElected`, and
this machine tells it when the leader seems gone with
:class:`~powergrid.events.LeaderLost`.

*Leader.* Every tick (``heartbeat_interval``, stretched in large groups, see
*Scaling*) the leader multicasts a :class:`~powergrid.wire.Heartbeat` (its
epoch and view id) and does its checks. A member whose last
ack (or probe answer, or view request) is ``suspect_timeout * s(n)`` old at a
tick is *suspected* (:class:`MemberSuspected`): from then on, every
``heartbeat_interval`` (at every tick while the tick is not stretched),
the leader probes it directly and through ``indirect_probes`` other members
chosen with the ``rng`` (SWIM-style :class:`~powergrid.wire.Probe`, relayed,
answered with :class:`~powergrid.wire.ProbeAck`). Any answer clears the
suspicion (``stats.false_suspicions_cleared``). A member still suspected
``removal_timeout * s(n)`` after its suspicion began is removed (reason
``"crashed"``). Join requests are admitted in a batch at the next tick; a
:class:`~powergrid.wire.LeaveNotice` removes the member at once (``"left"``);
a join from a higher incarnation of a member replaces it (``"replaced"``).
Every change is a new view (view id + 1), multicast as one or more
:class:`~powergrid.wire.ViewPart` datagrams, and a view is re-sent by unicast
to a member that asks (:class:`~powergrid.wire.ViewRequest`) or that asks to
join again while already in it.

*Scaling.* Every member acks every heartbeat, so the leader takes ``n - 1``
acks per tick; the tick is stretched to ``(n - 1) / max_ack_rate`` when that
is longer than ``heartbeat_interval`` (400 acks/s by default: groups of up to
41 are not stretched, 100 members tick every 0.25 s), which bounds both the
leader's load and the group's traffic (two datagrams per member per tick).
With a stretched tick the suspect timeout is at least ``SUSPECT_TICKS`` (2)
ticks and the leader timeout at least ``LEADER_TICKS`` (4), so as many acks
or heartbeats must be lost in a row as at the unstretched defaults; suspects
are still probed every ``heartbeat_interval``.
``s(n) = 1 + size_factor * log2(n)`` for a view of ``n`` members
(``s(1) = 1``). The leader's chance that *some* member loses ``k`` acks in a
row grows like ``n * p**k``; holding the group's false-suspicion rate fixed
needs ``k`` to grow with ``log n``, hence the logarithm. ``s`` scales
``suspect_timeout``, ``removal_timeout`` and ``leader_timeout``.

*Member.* A member answers each heartbeat of the leader it follows with a
unicast :class:`~powergrid.wire.HeartbeatAck` carrying its own view id, and
asks for the view (at most once per ``heartbeat_interval``) when the heartbeat
names a newer one. It installs a view only when the view id is higher than its
own, so view ids only grow. It also asks when the heartbeat names its own view
id but the heartbeat's sender (node and incarnation) did not issue its view (a
twin leader of the same epoch, or a new life of its leader): that view id
names two views. A node not in its leader's view asks when the heartbeat
names a view id it never saw, or one it could not install (not newer than its
last view's id: a new leader, or new life of it, counts from 1 again). A leader
that learns of a view id higher than its own (from an ack or a view request),
or is asked for a view with its own id, issues a new view above it. A member
that hears nothing from its leader for
``leader_timeout * s(n)`` emits ``LeaderLost`` once (again only after hearing
the leader again or following a new one); a leader's LeaveNotice triggers it
at once. A node that joined but has heard of no leader at all within
``join_timeout`` emits ``LeaderLost(group, 0, 0)`` once so the election can
bootstrap, and keeps retrying its join. A member that reported ``LeaderLost``
and still hears no leader multicasts a join request every ``join_retry_max``
until it hears one: without IP multicast (unicast fan-out, see
:mod:`powergrid.fanout`) a new leader sends only to seeds and its own view's
members, so a member it does not list would otherwise wait forever.

*Joining.* :class:`Join` sends a :class:`~powergrid.wire.JoinRequest` by
unicast to the leader when one is known, and again after ``join_retry``,
doubling (``join_backoff``) up to ``join_retry_max``, each delay lengthened
by up to ``join_jitter`` of itself at random, until a view that includes
this node (in this incarnation) arrives. A node that knows no leader listens
first: a live leader names itself in its next heartbeat, and the bootstrap
(below) elects one otherwise; only after ``join_timeout + join_retry_max``
does it multicast a request, then again every ``join_retry_max`` while it
still knows none (a cold start of a 100-node cluster used to multicast about
four rounds of requests to the whole cluster before anyone could admit
them). Learning of a new leader (LeaderElected, or its heartbeat) sends a
request to it at once and starts the delay over from ``join_retry``. A member that receives
a view of its leader without itself reports ``MemberRemoved`` for itself and
joins again.

*Fencing.* Epochs and view ids compare as serial numbers within a window
(:func:`~powergrid.types.epoch_newer`, :func:`~powergrid.types.view_newer`):
they wrap, and values too far apart are *foreign*. A heartbeat or view of an
epoch older than the one this node follows, or foreign to it, is refused
(``stats.stale_epoch``); one of a newer epoch makes this
node follow its sender (a leader hearing it steps down); one of the followed
epoch from another node is refused (``stats.conflicting_leader``), and from
the followed leader in a higher incarnation is followed (it restarted and was
elected again in that epoch, ``stats.leader_restarts``). Messages from an
older incarnation of a node in the view are dropped
(``stats.stale_incarnation``), except the followed leader's (its lives are
fenced as above; a LeaderElected naming the leader we reported lost, in the
same epoch, drops the life we recorded, perhaps a forged one).

*Leadership.* The election is the authority on who leads: a LeaderElected
of a newer epoch, or of the followed epoch naming another leader (the
election settled twin leaders of a partition, ``stats.twin_leaders_resolved``),
is obeyed. On ``LeaderElected(group, me, epoch)`` the node installs view
``highest view id seen + 1`` of that epoch, led by itself, with the members of
its last view, and starts heartbeating. A change of leader alone removes
nobody: the old leader is dropped from that view only if it sent a
LeaveNotice (``"left"``); if this node had reported it lost it stays in the
view *suspected* at once (probed, removed ``removal_timeout * s(n)`` later
unless it answers), else (a live leader bullied out) as an ordinary member.
On ``LeaderElected(group, other, epoch)`` it follows ``other`` (and stops
heartbeating if it led).

Guarantees: view ids seen by one member only grow; a view lists its members
sorted by node id, the leader included; every member of a view was admitted
by that view's leader and in the incarnation listed. A crashed member is
removed by the leader within ``suspect + removal + tick`` of its last ack
(the scaled timeouts and tick of *Scaling*; ``(suspect_timeout +
removal_timeout) * s(n) + heartbeat_interval`` unstretched); a crashed leader
by its successor within ``removal_timeout * s(n) + heartbeat_interval`` of
the successor's election.
Not guaranteed: that all members
install every view (a member may skip views; it then learns removal reasons
only for departures in the last ``departure_memory`` views, others are
reported as ``"crashed"``), that a LeaveNotice arrives (a lost one is found by
crash detection), or agreement between two leaders of one epoch (the
election's job; this machine drops the second one's messages).

Assumptions: datagrams may be lost, duplicated, reordered or delayed but not
corrupted; epochs and incarnations only grow; every node of the group hears
the group's multicast.

Driving: ``handle(event, now)`` with :class:`~powergrid.events.Received`,
:class:`~powergrid.events.DeadlineReached`, :class:`Join`, :class:`Leave` or
:class:`~powergrid.events.LeaderElected`; ``next_deadline()`` is the next
heartbeat (or probe round) for a leader, and otherwise the earliest of the
join retry, the bootstrap timeout and the leader timeout. Defaults (seconds):
``heartbeat_interval`` 0.1, ``suspect_timeout`` 0.3, ``removal_timeout``
0.3, ``leader_timeout`` 0.5, ``join_timeout`` 1.0, ``join_retry`` 0.2
(backoff 2, max 2.0, jitter 0.2), ``indirect_probes`` 2, ``size_factor``
0.1, ``max_ack_rate`` 400: a crashed member of a group of 8 is removed
within about 0.9 s, of a group of 100 within about 1.3 s.
"""

from __future__ import annotations

import math
import random
from collections.abc import Callable
from typing import Any, Literal, cast

import attrs

from powergrid._dispatch import Dispatching
from powergrid.errors import ConfigError, UsageError
from powergrid.events import (
    DeadlineReached,
    LeaderElected,
    LeaderLost,
    Member,
    Multicast,
    Received,
    Send,
    View,
    ViewChanged,
    member_maps,
)
from powergrid.types import (
    MAX_NODE_ID,
    Epoch,
    GroupId,
    Incarnation,
    NodeId,
    epoch_newer,
    next_view_id,
    view_newer,
)
from powergrid.wire import (
    MAX_PAYLOAD,
    VIEW_STATUS_CRASHED,
    VIEW_STATUS_LEFT,
    VIEW_STATUS_MEMBER,
    VIEW_STATUS_REPLACED,
    Heartbeat,
    HeartbeatAck,
    JoinRequest,
    LeaveNotice,
    Probe,
    ProbeAck,
    ViewEntry,
    ViewPart,
    ViewRequest,
    encode_body,
)

__all__ = [
    "VIEW_ENTRIES_PER_PART",
    "Join",
    "Leave",
    "Left",
    "MemberRemoved",
    "MemberSuspected",
    "MembershipConfig",
    "MembershipMachine",
    "MembershipStats",
    "RemovalReason",
    "view_parts",
]

RemovalReason = Literal["crashed", "left", "replaced"]

_EMPTY_PART = len(encode_body(ViewPart(epoch=1, view_id=1, part=0, parts=1, entries=())))
_ENTRY_SIZE = (
    len(
        encode_body(
            ViewPart(epoch=1, view_id=1, part=0, parts=1, entries=(ViewEntry(1, 0, 0, 0, 0),))
        )
    )
    - _EMPTY_PART
)
VIEW_ENTRIES_PER_PART = (MAX_PAYLOAD - _EMPTY_PART) // _ENTRY_SIZE
"""View entries (members and recent departures) that fit in one ViewPart datagram."""

_MAX_U32 = 2**32 - 1
SUSPECT_TICKS = 2
"""A member is suspected no sooner than this many (stretched) ticks after its last ack."""
LEADER_TICKS = 4
"""A member reports its leader lost no sooner than this many (stretched) ticks of silence."""
_REASONS: dict[int, RemovalReason] = {
    VIEW_STATUS_CRASHED: "crashed",
    VIEW_STATUS_LEFT: "left",
    VIEW_STATUS_REPLACED: "replaced",
}


# ----------------------------------------------------------------- config


@attrs.frozen(kw_only=True)
class MembershipConfig:
    """Settings of :class:`MembershipMachine`. Times in seconds.

    Timeouts marked *scaled* are multiplied by ``scale(n)`` for a view of
    ``n`` members. Raises :class:`~powergrid.errors.ConfigError` for a value
    out of range or values that contradict each other.
    """

    heartbeat_interval: float = 0.1
    """The leader multicasts a heartbeat, and checks its members, this often."""
    suspect_timeout: float = 0.3
    """*Scaled.* A member silent this long is suspected and probed."""
    removal_timeout: float = 0.3
    """*Scaled.* A member still suspected this long after its suspicion began is removed."""
    indirect_probes: int = 2
    """Other members asked, at every tick, to probe a suspect on the leader's behalf."""
    leader_timeout: float = 0.5
    """*Scaled.* A member that hears nothing from its leader this long reports LeaderLost."""
    join_timeout: float = 1.0
    """A joining node that hears of no leader at all this long reports LeaderLost(0, 0)."""
    join_retry: float = 0.2
    """First delay before a join request is repeated."""
    join_backoff: float = 2.0
    """Factor applied to the join delay after each retry."""
    join_retry_max: float = 2.0
    """Cap of the join delay."""
    join_jitter: float = 0.2
    """Each join delay is lengthened by up to this fraction of itself, at random."""
    size_factor: float = 0.1
    """``scale(n) = 1 + size_factor * log2(n)``; 0 turns scaling off."""
    max_ack_rate: float = 400.0
    """HeartbeatAcks per second a leader's heartbeats may draw: the tick of a view of
    ``n`` members is ``max(heartbeat_interval, (n - 1) / max_ack_rate)``; 0 turns the
    stretching off."""
    departure_memory: int = 16
    """Views for which the leader keeps announcing a departure and its reason."""

    def __attrs_post_init__(self) -> None:
        floats = (
            "heartbeat_interval",
            "suspect_timeout",
            "removal_timeout",
            "leader_timeout",
            "join_timeout",
            "join_retry",
            "join_backoff",
            "join_retry_max",
            "join_jitter",
            "size_factor",
            "max_ack_rate",
        )
        for name in floats:
            value = getattr(self, name)
            if not math.isfinite(value):
                raise ConfigError(f"{name} is {value}; set it to a finite number")
        hb = self.heartbeat_interval
        if hb <= 0:
            raise ConfigError(f"heartbeat_interval is {hb}; set it above 0 seconds")
        if self.suspect_timeout <= hb:
            raise ConfigError(
                f"suspect_timeout ({self.suspect_timeout}) must exceed heartbeat_interval "
                f"({hb}), or members are suspected between two heartbeats; "
                "set it to 2-3 heartbeat intervals or more"
            )
        if self.removal_timeout < hb:
            raise ConfigError(
                f"removal_timeout ({self.removal_timeout}) is below heartbeat_interval "
                f"({hb}): a suspect would be removed before one probe; set it >= {hb}"
            )
        if self.leader_timeout <= hb:
            raise ConfigError(
                f"leader_timeout ({self.leader_timeout}) must exceed heartbeat_interval "
                f"({hb}), or the leader is lost between two heartbeats; "
                "set it to 3 heartbeat intervals or more"
            )
        if self.join_timeout < self.leader_timeout:
            raise ConfigError(
                f"join_timeout ({self.join_timeout}) is below leader_timeout "
                f"({self.leader_timeout}): a joiner would start an election before a member "
                "would; set join_timeout >= leader_timeout"
            )
        if self.join_retry <= 0:
            raise ConfigError(f"join_retry is {self.join_retry}; set it above 0 seconds")
        if self.join_backoff < 1:
            raise ConfigError(f"join_backoff is {self.join_backoff}; set it to 1 or more")
        if self.join_retry_max < self.join_retry:
            raise ConfigError(
                f"join_retry_max ({self.join_retry_max}) is below join_retry "
                f"({self.join_retry}); set join_retry_max >= join_retry"
            )
        if not 0 <= self.join_jitter <= 1:
            raise ConfigError(f"join_jitter is {self.join_jitter}; set it within 0..1")
        if self.size_factor < 0:
            raise ConfigError(f"size_factor is {self.size_factor}; set it to 0 or more")
        if self.max_ack_rate < 0:
            raise ConfigError(
                f"max_ack_rate is {self.max_ack_rate}; set it to 0 (no limit) or more"
            )
        if self.indirect_probes < 0:
            raise ConfigError(f"indirect_probes is {self.indirect_probes}; set it to 0 or more")
        if self.departure_memory < 1:
            raise ConfigError(f"departure_memory is {self.departure_memory}; set it to 1 or more")

    def scale(self, n: int) -> float:
        """``1 + size_factor * log2(n)``, the factor of the scaled timeouts for ``n`` members."""
        return 1.0 + self.size_factor * math.log2(max(n, 1))

    def tick(self, n: int) -> float:
        """The leader's heartbeat period for ``n`` members (seconds): ``heartbeat_interval``,
        stretched so that the acks it draws stay within ``max_ack_rate`` per second."""
        rate = self.max_ack_rate
        if not rate:
            return self.heartbeat_interval
        return max(self.heartbeat_interval, (n - 1) / rate)

    def timeouts(self, n: int) -> tuple[float, float, float]:
        """``(suspect, removal, leader)`` timeouts for ``n`` members (seconds).

        Each is its config value times ``scale(n)``; with a stretched tick the
        suspect timeout is at least :data:`SUSPECT_TICKS` ticks and the leader
        timeout at least :data:`LEADER_TICKS` ticks, so that as many heartbeats
        or acks must be lost in a row as with the unstretched defaults.
        """
        s = self.scale(n)
        tick = self.tick(n)
        return (
            max(self.suspect_timeout * s, SUSPECT_TICKS * tick),
            self.removal_timeout * s,
            max(self.leader_timeout * s, LEADER_TICKS * tick),
        )


# ----------------------------------------------------------------- events


@attrs.frozen(kw_only=True)
class Join:
    """Command: become a member of the group (retried until admitted).

    ``handle`` raises :class:`~powergrid.errors.UsageError` if the node has
    already joined (or is joining) and has not left since.
    """


@attrs.frozen(kw_only=True)
class Leave:
    """Command: leave the group now (one LeaveNotice is multicast; the machine goes idle).

    ``handle`` raises :class:`~powergrid.errors.UsageError` if the node has not joined.
    """


# ---------------------------------------------------------------- actions


@attrs.frozen(kw_only=True)
class MemberSuspected:
    """The leader stopped hearing ``node`` and is probing it (emitted by the leader only)."""

    group: GroupId
    node: NodeId


@attrs.frozen(kw_only=True)
class MemberRemoved:
    """``node`` is no longer a member of ``group``: it ``"crashed"``, ``"left"`` or was
    ``"replaced"`` by a newer incarnation. ``node`` may be this node itself (it was removed)."""

    group: GroupId
    node: NodeId
    reason: RemovalReason


@attrs.frozen(kw_only=True)
class Left:
    """This node left ``group`` (answer to :class:`Leave`); the machine is idle."""

    group: GroupId


# ------------------------------------------------------------------ stats


@attrs.define
class MembershipStats:
    """Counters, all since the machine was made."""

    heartbeats_sent: int = 0
    acks_sent: int = 0
    """HeartbeatAcks sent (as a member)."""
    acks_received: int = 0
    """HeartbeatAcks accepted (as the leader)."""
    probes_sent: int = 0
    """Probes sent by the leader, direct and indirect."""
    probe_acks_sent: int = 0
    """ProbeAcks sent as a probe's target."""
    probes_relayed: int = 0
    """Probes and ProbeAcks relayed as a helper of an indirect probe."""
    suspected: int = 0
    false_suspicions_cleared: int = 0
    """Suspicions ended by an answer of the suspect."""
    removed: int = 0
    """MemberRemoved emitted (as leader or member)."""
    views_installed: int = 0
    view_parts_sent: int = 0
    view_requests_sent: int = 0
    view_requests_answered: int = 0
    joins_sent: int = 0
    leader_lost_reported: int = 0
    stale_epoch: int = 0
    """Messages or LeaderElected of an older epoch than the one followed (fencing)."""
    stale_incarnation: int = 0
    """Messages from an older incarnation of a node than the one in the view."""
    conflicting_leader: int = 0
    """Heartbeats or views from another leader of the epoch already followed."""
    twin_leaders_resolved: int = 0
    """LeaderElected naming another leader of the epoch already followed (then followed)."""
    leader_restarts: int = 0
    """The followed leader came back in a higher incarnation in the same epoch (followed)."""
    dropped_not_leader: int = 0
    """Leader-bound messages (join, ack, view request) received while not leading."""
    dropped_not_member: int = 0
    """Acks, view requests or leaves from a node (or incarnation) not in the leader's view."""
    dropped_old_view: int = 0
    """View parts of a view no newer than the one installed, or of an abandoned assembly."""
    dropped_bad_view: int = 0
    """Assembled views that do not list their own leader or are not sorted across parts."""
    dropped_inactive: int = 0
    """Messages received while idle (before Join or after Leave)."""
    dropped_own: int = 0
    """Messages from this node's own id (multicast loopback or an older life)."""
    dropped_probe: int = 0
    """Probes or ProbeAcks that are not ours to answer or relay."""
    late_probe_acks: int = 0
    """ProbeAcks that match no current suspicion."""
    duplicate_joins: int = 0
    """Join requests from a node already in the view (answered with the view)."""
    unexpected: int = 0
    """Received messages that are not membership messages."""


# ---------------------------------------------------------------- helpers


def view_parts(
    epoch: int, view_id: int, entries: list[ViewEntry] | tuple[ViewEntry, ...]
) -> tuple[ViewPart, ...]:
    """Split sorted view ``entries`` into ViewPart messages that each fit one datagram."""
    per = VIEW_ENTRIES_PER_PART
    parts = max(1, -(-len(entries) // per))
    return tuple(
        ViewPart(
            epoch=epoch,
            view_id=view_id,
            part=i,
            parts=parts,
            entries=tuple(entries[i * per : (i + 1) * per]),
        )
        for i in range(parts)
    )


def _newest(a: int, b: int) -> int:
    """The newer of view ids ``a`` and ``b`` (``a`` if they are foreign to each other)."""
    return b if view_newer(b, a) else a


def _installable(vid: int, own: int) -> bool:
    """May a view ``vid`` of the followed leader replace view ``own``? If it is newer, or
    foreign (a forged view id far off must not pin a member for good)."""
    return vid != own and not view_newer(own, vid)


_Parsed = tuple[tuple[Member, ...], dict[int, tuple[int, int]]]
_last_parsed: list[Any] = [(), None]
"""The view parts :func:`_parse_view` read last (the entry tuples themselves) and its answer."""


def _parse_view(parts: tuple[tuple[ViewEntry, ...], ...]) -> _Parsed | None:
    """The members and the departures (node -> incarnation, status) a view's entries
    list, or None if the entries are not sorted strictly by (node, status).

    A view reaches every member of its group as the same decoded parts (see
    :mod:`powergrid.node`), so the last answer is kept and given again for the
    same entry tuples (immutable; the answer is never modified).
    """
    last = _last_parsed
    seen = last[0]
    if len(seen) == len(parts) and all(a is b for a, b in zip(seen, parts, strict=True)):
        cached: _Parsed | None = last[1]
        return cached
    members: list[Member] = []
    departed: dict[int, tuple[int, int]] = {}
    result: _Parsed | None = (), departed
    prev = (-1, -1)
    for entries in parts:
        for e in entries:
            key = (e.node, e.status)
            if key <= prev:
                result = None
                break
            prev = key
            if e.status == VIEW_STATUS_MEMBER:
                members.append(
                    Member(
                        node=NodeId(e.node),
                        incarnation=Incarnation(e.incarnation),
                        rank=e.rank,
                        broker_capable=bool(e.flags & 1),
                    )
                )
            else:
                departed[e.node] = (e.incarnation, e.status)
        if result is None:
            break
    if result is not None:
        result = tuple(members), departed
    last[0], last[1] = parts, result
    return result


class _Suspicion:
    __slots__ = ("nonce", "since")

    def __init__(self, since: float, nonce: int) -> None:
        self.since = since
        self.nonce = nonce


_Handler = Callable[[Any, float], list[Any]]


# ---------------------------------------------------------------- machine


class MembershipMachine(Dispatching):
    """Heartbeat membership of one group, as leader or member (see the module doc)."""

    __slots__ = (
        "_ack_out",
        "_active",
        "_asm_key",
        "_asm_parts",
        "_bootstrap_due",
        "_config",
        "_departures",
        "_epoch",
        "_group",
        "_heard",
        "_highest",
        "_in_view",
        "_join_delay",
        "_join_due",
        "_last_ack",
        "_leader",
        "_leader_inc",
        "_leader_left",
        "_leader_timeout",
        "_leading",
        "_lost_reported",
        "_me",
        "_members",
        "_next_beat",
        "_next_probe",
        "_node",
        "_nonce",
        "_others",
        "_parts",
        "_pending",
        "_remove_after",
        "_request_after",
        "_rng",
        "_stats",
        "_suspect_after",
        "_suspects",
        "_tick_s",
        "_view",
        "_view_from",
    )

    _EVENTS = {
        Received: "_received",
        DeadlineReached: "_deadline",
        Join: "_join",
        Leave: "_leave",
        LeaderElected: "_leader_elected",
    }

    _MESSAGES = {
        Heartbeat: "_heartbeat",
        HeartbeatAck: "_heartbeat_ack",
        Probe: "_probe",
        ProbeAck: "_probe_ack",
        JoinRequest: "_join_request",
        LeaveNotice: "_leave_notice",
        ViewRequest: "_view_request",
        ViewPart: "_view_part",
    }

    def __init__(
        self,
        config: MembershipConfig,
        *,
        me: Member,
        group: GroupId,
        rng: random.Random,
    ) -> None:
        if not 0 < me.node <= MAX_NODE_ID:
            raise ConfigError(f"me.node {me.node} is not a node id (1..2**48-1)")
        if not 0 <= me.incarnation <= _MAX_U32:
            raise ConfigError(f"me.incarnation {me.incarnation} is outside 0..2**32-1")
        if not 0 <= group <= _MAX_U32:
            raise ConfigError(f"group {group} is outside 0..2**32-1")
        self._config = config
        self._me = me
        self._node = me.node
        self._group = group
        self._rng = rng
        self._stats = MembershipStats()
        # What every role keeps.
        self._active = False  # Join given and no Leave since
        self._in_view = False  # the last view of the followed leader lists this node
        self._view: View | None = None  # the last view installed that lists this node
        self._view_from = (0, 0)  # the leader of _view and its incarnation
        self._members: dict[int, Member] = {}  # of _view, or the leader's working set
        self._others: tuple[int, ...] = ()  # member ids other than this node, sorted
        self._leader = 0
        self._epoch = 0
        self._leader_inc: int | None = None  # the followed leader's incarnation, once known
        self._highest = 0  # highest view id seen anywhere
        self._heard = 0.0  # when the followed leader was last heard
        self._lost_reported = False
        self._leader_left = False  # the followed leader sent a LeaveNotice
        self._leader_timeout = config.leader_timeout
        self._request_after = -math.inf
        self._ack_out: tuple[tuple[int, int, int], Send] | None = None  # the last ack sent
        self._join_due: float | None = None
        self._join_delay = config.join_retry
        self._bootstrap_due: float | None = None
        self._asm_key: tuple[int, int, int, int] | None = None  # sender, epoch, view id, parts
        self._asm_parts: dict[int, tuple[ViewEntry, ...]] = {}
        # What the leader keeps.
        self._leading = False
        self._next_beat = 0.0
        self._next_probe = 0.0  # the next probe round while there are suspects
        self._tick_s = config.heartbeat_interval  # config.tick(n) of the current view
        self._last_ack: dict[int, float] = {}
        self._suspects: dict[int, _Suspicion] = {}
        self._pending: dict[int, Member] = {}  # admissions waiting for the next tick
        self._departures: dict[int, tuple[int, int, int]] = {}  # node -> inc, status, view id
        self._parts: tuple[ViewPart, ...] = ()  # the current view, as sent
        self._nonce = 0
        self._suspect_after = config.suspect_timeout
        self._remove_after = config.removal_timeout

    # ------------------------------------------------------------ surface

    @property
    def config(self) -> MembershipConfig:
        return self._config

    @property
    def stats(self) -> MembershipStats:
        return self._stats

    @property
    def me(self) -> Member:
        return self._me

    @property
    def group(self) -> GroupId:
        return self._group

    @property
    def state(self) -> Literal["idle", "joining", "member", "leader"]:
        """idle (no Join, or left), joining (not in the leader's view), member, or leader."""
        if not self._active:
            return "idle"
        if self._leading:
            return "leader"
        return "member" if self._in_view else "joining"

    @property
    def view(self) -> View | None:
        """The last view installed that lists this node (stale while joining); None when idle."""
        return self._view

    @property
    def leader(self) -> NodeId:
        """The leader this node follows (itself when leading), 0 if none."""
        return NodeId(self._leader)

    @property
    def epoch(self) -> Epoch:
        """The epoch of the followed leader, 0 if none."""
        return Epoch(self._epoch)

    @property
    def is_leader(self) -> bool:
        return self._leading

    @property
    def highest_view_id(self) -> int:
        """The highest view id seen in any heartbeat, ack, request or view."""
        return self._highest

    @property
    def suspects(self) -> tuple[NodeId, ...]:
        """The members the leader currently suspects, sorted (empty unless leading)."""
        return tuple(NodeId(n) for n in sorted(self._suspects))

    def handle(self, event: object, now: float) -> list[Any]:
        """Process one event; return the actions.

        Actions: Send, Multicast, ViewChanged, LeaderLost, MemberSuspected,
        MemberRemoved, Left. Raises :class:`~powergrid.errors.UsageError` for an
        event this machine does not take, and as documented on :class:`Join`,
        :class:`Leave` and for a LeaderElected of another group or epoch 0.
        """
        try:
            on = self._on_event[type(event)]
        except KeyError:
            raise UsageError(
                f"MembershipMachine does not handle {type(event).__name__}; pass Received, "
                "DeadlineReached, Join, Leave or LeaderElected"
            ) from None
        return on(self, event, now)

    def next_deadline(self) -> float | None:
        """The next heartbeat (leader), else the earliest join retry, bootstrap, leader timeout."""
        if not self._active:
            return None
        if self._leading:
            if self._suspects and self._next_probe < self._next_beat:
                return self._next_probe
            return self._next_beat
        due = self._join_due
        if self._bootstrap_due is not None and (due is None or self._bootstrap_due < due):
            due = self._bootstrap_due
        if self._leader and not self._lost_reported:
            lost = self._heard + self._leader_timeout
            if due is None or lost < due:
                due = lost
        return due

    # ------------------------------------------------------------ commands

    def _join(self, ev: Join, now: float) -> list[Any]:
        if self._active:
            raise UsageError(
                f"node already {self.state} in group {self._group}; Leave before joining again"
            )
        self._active = True
        self._in_view = False
        self._view = None
        self._members = {}
        self._others = ()
        self._join_delay = self._config.join_retry
        if self._leader == self._node:
            self._leader = 0  # we led before leaving (or were elected while idle): no more
        if self._leader:
            self._heard = now
            self._lost_reported = False
            self._bootstrap_due = None
        else:
            self._bootstrap_due = now + self._config.join_timeout
        actions: list[Any] = []
        if self._leader:
            self._join_now(now, actions)
        else:
            # Listen first: a leader names itself in every heartbeat (the join then goes
            # to it at once), the bootstrap election names one after join_timeout, and
            # until a leader exists nobody could admit us anyway.
            cfg = self._config
            self._join_due = now + self._jittered(cfg.join_timeout + cfg.join_retry_max)
        return actions

    def _leave(self, ev: Leave, now: float) -> list[Any]:
        if not self._active:
            raise UsageError(f"node is not in group {self._group}; Join before leaving")
        actions: list[Any] = [Multicast(message=LeaveNotice(epoch=self._epoch))]
        if self._leading:
            self._step_down()
        self._active = False
        self._in_view = False
        self._view = None
        self._members = {}
        self._others = ()
        self._join_due = None
        self._bootstrap_due = None
        self._asm_key = None
        self._asm_parts = {}
        actions.append(Left(group=self._group))
        return actions

    def _leader_elected(self, ev: LeaderElected, now: float) -> list[Any]:
        if ev.group != self._group:
            raise UsageError(
                f"LeaderElected for group {ev.group} passed to the machine of group {self._group}"
            )
        if not 0 < ev.epoch <= _MAX_U32 or not 0 < ev.leader <= MAX_NODE_ID:
            raise UsageError(f"LeaderElected needs epoch >= 1 and a node id, got {ev!r}")
        if epoch_newer(self._epoch, ev.epoch):  # a foreign epoch is the election's call
            self._stats.stale_epoch += 1
            return []
        if ev.epoch == self._epoch:
            if ev.leader == self._leader:
                if self._lost_reported and not self._leading:
                    # The election heard the leader we lost, alive: whatever life we had
                    # recorded (perhaps a forged one) goes; its next heartbeat names it.
                    self._leader_inc = None
                return []
            # Twin leaders of one epoch (two sides of a partition): the election settled
            # on ``ev.leader`` and it is the authority on who leads, so follow it.
            self._stats.twin_leaders_resolved += 1
        if not self._active:
            self._leader, self._epoch, self._leader_inc = ev.leader, ev.epoch, None
            return []
        actions: list[Any] = []
        if ev.leader == self._node:
            self._become_leader(ev.epoch, now, actions)
        else:
            self._follow(ev.leader, ev.epoch, None, now)
            if not self._in_view:
                self._join_now(now, actions)
        return actions

    # ------------------------------------------------------------ deadlines

    def _deadline(self, ev: DeadlineReached, now: float) -> list[Any]:
        actions: list[Any] = []
        if not self._active:
            return actions
        if self._leading:
            beat = now >= self._next_beat
            if beat or (self._suspects and now >= self._next_probe):
                self._tick(now, actions, beat)
            return actions
        if self._join_due is not None and now >= self._join_due:
            if self._in_view and not self._lost_reported:
                self._join_due = None  # a lost leader's member hears a leader again
            else:
                cfg = self._config
                self._join_delay = min(self._join_delay * cfg.join_backoff, cfg.join_retry_max)
                self._join_now(now, actions)
        if self._bootstrap_due is not None and now >= self._bootstrap_due:
            self._bootstrap_due = None
            if not self._leader:
                self._report_lost(actions)
        if self._leader and not self._lost_reported and now >= self._heard + self._leader_timeout:
            self._report_lost(actions)
            if self._join_due is None:
                # Ask to join (multicast, while no leader is heard) every join_retry_max:
                # a leader whose view lacks this member may never send to it where group
                # datagrams go only to seeds and view members (unicast fan-out).
                self._join_due = now + self._jittered(self._config.join_retry_max)
        return actions

    def _tick(self, now: float, actions: list[Any], beat: bool = True) -> None:
        """The leader's heartbeat: admit, suspect, probe, remove, then multicast a heartbeat.

        Without ``beat`` (a probe round between two stretched ticks) only the
        suspects are probed or removed.
        """
        departures: list[tuple[int, int, int]] = []
        admitted = False
        members = self._members
        for node, cand in sorted(self._pending.items()) if beat else ():
            cur = members.get(node)
            if cur is not None:
                if cur.incarnation >= cand.incarnation:
                    continue
                departures.append((node, cur.incarnation, VIEW_STATUS_REPLACED))
                self._suspects.pop(node, None)
            members[node] = cand
            self._last_ack[node] = now
            admitted = True
        if beat:
            self._pending.clear()
        last_ack = self._last_ack
        # A member replaced just now has a fresh last_ack.
        for node in self._others if beat else sorted(self._suspects):
            sus = self._suspects.get(node)
            if sus is None:
                if now - last_ack[node] < self._suspect_after:
                    continue
                self._suspect(node, now, actions)
                continue
            if now - sus.since >= self._remove_after:
                departures.append((node, members[node].incarnation, VIEW_STATUS_CRASHED))
                continue
            self._send_probes(node, sus, actions)
        for node, _, status in departures:
            if status == VIEW_STATUS_CRASHED:
                del members[node]
                del self._suspects[node]
                del last_ack[node]
        if departures or admitted:
            self._new_view(departures, actions)
        if self._suspects:
            # Suspects are probed every heartbeat_interval even while the tick is stretched.
            interval = self._config.heartbeat_interval
            if now >= self._next_probe:
                self._next_probe += interval
                if self._next_probe <= now:
                    self._next_probe = now + interval
            else:  # a beat probed them before their round was due
                self._next_probe = now + interval
        if not beat:
            return
        actions.append(Multicast(message=Heartbeat(epoch=self._epoch, view_id=self._view_id())))
        self._stats.heartbeats_sent += 1
        interval = self._tick_s
        self._next_beat += interval
        if self._next_beat <= now:
            self._next_beat = now + interval

    def _suspect(self, node: int, now: float, actions: list[Any]) -> None:
        """Start suspecting ``node``: MemberSuspected, a new nonce, the first probes."""
        self._nonce = (self._nonce + 1) & _MAX_U32
        if not self._suspects:
            self._next_probe = now + self._config.heartbeat_interval
        sus = self._suspects[node] = _Suspicion(now, self._nonce)
        actions.append(MemberSuspected(group=self._group, node=NodeId(node)))
        self._stats.suspected += 1
        self._send_probes(node, sus, actions)

    def _send_probes(self, node: int, sus: _Suspicion, actions: list[Any]) -> None:
        target = self._members[node]
        probe = Probe(
            epoch=self._epoch,
            nonce=sus.nonce,
            target=node,
            target_incarnation=target.incarnation,
            requester=self._node,
        )
        actions.append(Send(to=NodeId(node), message=probe))
        k = self._config.indirect_probes
        sent = 1
        if k:
            helpers = [n for n in self._others if n != node and n not in self._suspects]
            if len(helpers) > k:
                helpers = sorted(self._rng.sample(helpers, k))
            for helper in helpers:
                actions.append(Send(to=NodeId(helper), message=probe))
            sent += len(helpers)
        self._stats.probes_sent += sent

    def _report_lost(self, actions: list[Any]) -> None:
        self._lost_reported = True
        self._stats.leader_lost_reported += 1
        actions.append(
            LeaderLost(group=self._group, leader=NodeId(self._leader), epoch=Epoch(self._epoch))
        )

    def _jittered(self, delay: float) -> float:
        jitter = self._config.join_jitter
        return delay * (1.0 + jitter * self._rng.random()) if jitter else delay

    def _join_now(self, now: float, actions: list[Any]) -> None:
        """Send a join request now and restart the retry timer at the current delay.

        A request multicast because no leader is known is repeated no sooner
        than ``join_retry_max``: only a leader admits, and a leader that exists
        names itself in its next heartbeat, which sends the request to it at once.
        """
        msg = self._join_message()
        actions.append(msg)
        delay = self._join_delay
        if type(msg) is Multicast:
            delay = max(delay, self._config.join_retry_max)
        self._join_due = now + self._jittered(delay)

    def _join_message(self) -> Send | Multicast:
        self._stats.joins_sent += 1
        msg = JoinRequest(rank=self._me.rank, broker_capable=int(self._me.broker_capable))
        if self._leader and not self._lost_reported and not self._leading:
            return Send(to=NodeId(self._leader), message=msg)
        return Multicast(message=msg)

    # ------------------------------------------------------------ leadership

    def _become_leader(self, epoch: int, now: float, actions: list[Any]) -> None:
        old, lost = self._leader, self._lost_reported
        self._leading = True
        self._leader, self._epoch, self._leader_inc = self._node, epoch, self._me.incarnation
        self._lost_reported = False
        self._join_due = None
        self._bootstrap_due = None
        self._in_view = True
        self._suspects = {}
        self._pending = {}
        self._departures = {}
        members = dict(self._members)
        departures: list[tuple[int, int, int]] = []
        suspect = 0
        if old and old != self._node and old in members:
            # A change of leader alone removes nobody: the old leader stays unless it said
            # it left. If it went silent (LeaderLost) it is suspected at once, and the
            # suspect/probe/remove rules decide; if the election replaced a leader still
            # heard (bullying, twins), it is an ordinary member.
            if self._leader_left:
                departures.append((old, members.pop(old).incarnation, VIEW_STATUS_LEFT))
            elif lost:
                suspect = old
        self._leader_left = False
        members[self._node] = self._me
        self._members = members
        self._last_ack = {n: now for n in members if n != self._node}
        self._new_view(departures, actions)
        if suspect:
            self._suspect(suspect, now, actions)
        actions.append(Multicast(message=Heartbeat(epoch=epoch, view_id=self._view_id())))
        self._stats.heartbeats_sent += 1
        self._next_beat = now + self._tick_s

    def _step_down(self) -> None:
        self._leading = False
        self._last_ack = {}
        self._suspects = {}
        self._pending = {}
        self._departures = {}
        self._parts = ()

    def _follow(self, leader: int, epoch: int, inc: int | None, now: float) -> None:
        """Follow ``leader`` of the newer ``epoch`` (stepping down if leading)."""
        if self._leading:
            self._step_down()
        self._leader, self._epoch, self._leader_inc = leader, epoch, inc
        self._heard = now
        self._lost_reported = False
        self._leader_left = False
        self._bootstrap_due = None
        self._join_delay = self._config.join_retry  # a new leader: retry joining briskly

    def _view_id(self) -> int:
        return self._view.view_id if self._view is not None else 0

    def _new_view(self, departures: list[tuple[int, int, int]], actions: list[Any]) -> None:
        """Install and multicast the leader's next view, reporting ``departures``."""
        view_id = next_view_id(_newest(self._highest, self._view_id()))
        self._highest = view_id
        memory = self._config.departure_memory
        recent = self._departures
        for node, inc, status in departures:
            recent[node] = (inc, status, view_id)
        members = self._members
        for node in [
            n
            for n, (inc, _, vid) in recent.items()
            if (view_id - vid) % 2**64 >= memory or (n in members and members[n].incarnation == inc)
        ]:
            del recent[node]
        view = View(
            group=self._group,
            view_id=view_id,
            leader=NodeId(self._node),
            epoch=Epoch(self._epoch),
            members=tuple(sorted(members.values())),
        )
        for node, _, status in sorted(departures):
            actions.append(
                MemberRemoved(group=self._group, node=NodeId(node), reason=_REASONS[status])
            )
            self._stats.removed += 1
        self._set_view(view, own=True)
        actions.append(ViewChanged(view=view))
        entries = [
            ViewEntry(m.node, m.incarnation, m.rank, VIEW_STATUS_MEMBER, int(m.broker_capable))
            for m in view.members
        ]
        entries.extend(ViewEntry(n, inc, 0, st, 0) for n, (inc, st, _) in recent.items())
        entries.sort(key=lambda e: (e.node, e.status))
        self._parts = view_parts(self._epoch, view_id, entries)
        actions.extend(Multicast(message=p) for p in self._parts)
        self._stats.view_parts_sent += len(self._parts)

    def _set_view(self, view: View, *, own: bool = False) -> None:
        """Install ``view``. A leader (``own``) keeps a dict of the members it changes in
        place; a member reads the one dict every member of the view shares."""
        self._view = view
        if own:
            self._members = {m.node: m for m in view.members}
        else:
            self._members = member_maps(view.members)[0]
        self._view_from = (view.leader, self._members[view.leader].incarnation)
        self._others = tuple(n for n in view.nodes if n != self._node)
        n = len(view.members)
        cfg = self._config
        self._tick_s = cfg.tick(n)
        self._suspect_after, self._remove_after, self._leader_timeout = cfg.timeouts(n)
        self._stats.views_installed += 1

    # ------------------------------------------------------------ messages

    def _received(self, ev: Received, now: float) -> list[Any]:
        if not self._active:
            self._stats.dropped_inactive += 1
            return []
        sender = ev.sender
        if sender == self._node:
            self._stats.dropped_own += 1
            return []
        known = self._members.get(sender)
        if known is not None and ev.incarnation < known.incarnation and sender != self._leader:
            # (The followed leader's lives are fenced by _accept_leader: a view that lists
            # it in a forged higher life must not shut out its real heartbeats and views.)
            self._stats.stale_incarnation += 1
            return []
        on = self._on_message.get(type(ev.message))
        if on is None:
            self._stats.unexpected += 1
            return []
        return on(self, ev, now)

    def _accept_leader(self, sender: int, inc: int, epoch: int, now: float) -> bool:
        """Fencing for a leader's heartbeat or view: follow newer epochs, refuse older (and
        foreign) ones."""
        if epoch != self._epoch and not epoch_newer(epoch, self._epoch):
            self._stats.stale_epoch += 1
            return False
        if epoch == self._epoch:
            if sender != self._leader:
                self._stats.conflicting_leader += 1
                return False
            if self._leader_inc is None:
                self._leader_inc = inc
            elif inc != self._leader_inc:
                if inc < self._leader_inc:
                    self._stats.stale_incarnation += 1
                    return False
                # The leader restarted and was elected again in this epoch: follow its new life.
                self._leader_inc = inc
                self._stats.leader_restarts += 1
        else:
            self._follow(sender, epoch, inc, now)
        self._heard = now
        self._lost_reported = False
        self._leader_left = False
        return True

    def _heartbeat(self, ev: Received, now: float) -> list[Any]:
        hb = cast(Heartbeat, ev.message)
        actions: list[Any] = []
        followed, highest = self._leader, self._highest
        if not self._accept_leader(ev.sender, ev.incarnation, hb.epoch, now):
            return actions
        self._highest = _newest(highest, hb.view_id)
        if not self._in_view:
            if self._leader != followed:
                self._join_now(now, actions)  # a joiner found its leader: ask it directly
            elif view_newer(hb.view_id, highest) or not _installable(hb.view_id, self._view_id()):
                # A view we never saw: perhaps the one admitting us, lost on the way. Or
                # one we could not install: our last view (of an older leader, or life of
                # it) has an id at least as high, so the leader must go above it; our
                # request names that id, as an ack would if we were in its view.
                self._request_view(ev.sender, now, actions)
            return actions
        view = self._view
        assert view is not None
        if _installable(hb.view_id, view.view_id) or (
            hb.view_id == view.view_id
            and (hb.epoch != view.epoch or self._view_from != (ev.sender, ev.incarnation))
        ):
            # A newer view, or one with our view's id that is not our view (another epoch,
            # or another leader of this epoch: a twin, or a new life of our leader).
            self._request_view(ev.sender, now, actions)
        key = (ev.sender, hb.epoch, view.view_id)
        ack = self._ack_out
        if ack is None or ack[0] != key:  # else the same (immutable) action as last time
            send = Send(to=ev.sender, message=HeartbeatAck(epoch=hb.epoch, view_id=view.view_id))
            ack = self._ack_out = (key, send)
        actions.append(ack[1])
        self._stats.acks_sent += 1
        return actions

    def _request_view(self, leader: int, now: float, actions: list[Any]) -> None:
        """Ask ``leader`` for its view, at most once per heartbeat interval."""
        if now < self._request_after:
            return
        self._request_after = now + self._config.heartbeat_interval
        view = self._view
        epoch, view_id = (view.epoch, view.view_id) if view is not None else (0, 0)
        actions.append(Send(to=NodeId(leader), message=ViewRequest(epoch=epoch, view_id=view_id)))
        self._stats.view_requests_sent += 1

    def _to_leader(self, epoch: int) -> bool:
        """May this node take a leader-bound message of ``epoch``?"""
        if not self._leading:
            self._stats.dropped_not_leader += 1
            return False
        if epoch != self._epoch:
            self._stats.stale_epoch += 1
            return False
        return True

    def _is_member(self, ev: Received) -> bool:
        m = self._members.get(ev.sender)
        return m is not None and m.incarnation == ev.incarnation

    def _alive(self, node: int, now: float) -> None:
        self._last_ack[node] = now
        if self._suspects.pop(node, None) is not None:
            self._stats.false_suspicions_cleared += 1

    def _heartbeat_ack(self, ev: Received, now: float) -> list[Any]:
        ack = cast(HeartbeatAck, ev.message)
        if not self._to_leader(ack.epoch):
            return []
        actions: list[Any] = []
        if self._is_member(ev):
            self._stats.acks_received += 1
            self._alive(ev.sender, now)
        else:
            self._stats.dropped_not_member += 1
        if view_newer(ack.view_id, self._view_id()):
            # Even a node we do not list holds a newer view id: go above it, so that
            # it installs our view (and, if left out, joins again).
            self._highest = _newest(self._highest, ack.view_id)
            self._new_view([], actions)
        return actions

    def _view_request(self, ev: Received, now: float) -> list[Any]:
        req = cast(ViewRequest, ev.message)
        if not self._to_leader(self._epoch):
            return []
        if self._is_member(ev):
            self._alive(ev.sender, now)
        actions: list[Any] = []
        if not _installable(self._view_id(), req.view_id):
            # The member holds a view at least as new as ours (a member only asks for
            # a view with its own view's id if its view is not ours): go above it.
            self._highest = _newest(self._highest, req.view_id)
            self._new_view([], actions)
            return actions
        self._stats.view_requests_answered += 1
        self._stats.view_parts_sent += len(self._parts)
        actions.extend(Send(to=ev.sender, message=p) for p in self._parts)
        return actions

    def _join_request(self, ev: Received, now: float) -> list[Any]:
        req = cast(JoinRequest, ev.message)
        if not self._leading:
            self._stats.dropped_not_leader += 1
            return []
        sender, inc = ev.sender, ev.incarnation
        cur = self._members.get(sender)
        if cur is not None and cur.incarnation == inc:
            self._stats.duplicate_joins += 1
            self._alive(sender, now)
            self._stats.view_parts_sent += len(self._parts)
            return [Send(to=sender, message=p) for p in self._parts]
        waiting = self._pending.get(sender)
        if waiting is None or waiting.incarnation < inc:
            self._pending[sender] = Member(
                node=sender,
                incarnation=inc,
                rank=req.rank,
                broker_capable=bool(req.broker_capable),
            )
        return []

    def _leave_notice(self, ev: Received, now: float) -> list[Any]:
        sender, inc = ev.sender, ev.incarnation
        actions: list[Any] = []
        if self._leading:
            waiting = self._pending.get(sender)
            if waiting is not None and waiting.incarnation == inc:
                del self._pending[sender]
            m = self._members.get(sender)
            if m is None or m.incarnation != inc:
                self._stats.dropped_not_member += 1
                return actions
            del self._members[sender]
            del self._last_ack[sender]
            self._suspects.pop(sender, None)
            self._new_view([(sender, inc, VIEW_STATUS_LEFT)], actions)
        elif (
            sender == self._leader
            and inc == self._leader_inc
            and not self._lost_reported
            and cast(LeaveNotice, ev.message).epoch == self._epoch
        ):
            self._leader_left = True
            self._report_lost(actions)
        return actions

    def _probe(self, ev: Received, now: float) -> list[Any]:
        p = cast(Probe, ev.message)
        if epoch_newer(self._epoch, p.epoch):
            self._stats.stale_epoch += 1
            return []
        if p.target == self._node:
            if p.target_incarnation != self._me.incarnation:
                self._stats.stale_incarnation += 1
                return []
            if ev.sender == self._leader and p.epoch == self._epoch and not self._leading:
                self._heard = now
                self._lost_reported = False
            self._stats.probe_acks_sent += 1
            ack = ProbeAck(
                epoch=p.epoch,
                nonce=p.nonce,
                target=self._node,
                target_incarnation=self._me.incarnation,
                requester=p.requester,
            )
            return [Send(to=ev.sender, message=ack)]
        if (
            self._leading
            or ev.sender != self._leader
            or p.requester != ev.sender
            or p.epoch != self._epoch
        ):
            self._stats.dropped_probe += 1
            return []
        self._stats.probes_relayed += 1
        return [Send(to=NodeId(p.target), message=p)]

    def _probe_ack(self, ev: Received, now: float) -> list[Any]:
        p = cast(ProbeAck, ev.message)
        if p.requester == self._node:
            if not self._leading or p.epoch != self._epoch:
                self._stats.stale_epoch += 1
                return []
            sus = self._suspects.get(p.target)
            m = self._members.get(p.target)
            if (
                sus is None
                or m is None
                or m.incarnation != p.target_incarnation
                or sus.nonce != p.nonce
            ):
                self._stats.late_probe_acks += 1
                return []
            self._alive(p.target, now)
            return []
        if (
            self._leading
            or ev.sender != p.target
            or ev.incarnation != p.target_incarnation
            or p.requester != self._leader
            or p.epoch != self._epoch
        ):
            self._stats.dropped_probe += 1
            return []
        self._stats.probes_relayed += 1
        return [Send(to=NodeId(p.requester), message=p)]

    def _view_part(self, ev: Received, now: float) -> list[Any]:
        vp = cast(ViewPart, ev.message)
        actions: list[Any] = []
        if not self._accept_leader(ev.sender, ev.incarnation, vp.epoch, now):
            return actions
        self._highest = _newest(self._highest, vp.view_id)
        if not _installable(vp.view_id, self._view_id()):
            self._stats.dropped_old_view += 1
            return actions
        if vp.parts == 1:
            self._install(ev.sender, vp, (vp.entries,), now, actions)
            return actions
        key = (ev.sender, vp.epoch, vp.view_id, vp.parts)
        if key != self._asm_key:
            asm = self._asm_key
            if asm is not None and (
                epoch_newer(asm[1], vp.epoch)
                or (vp.epoch == asm[1] and view_newer(asm[2], vp.view_id))
            ):
                self._stats.dropped_old_view += 1
                return actions
            self._asm_key = key
            self._asm_parts = {}
        self._asm_parts[vp.part] = vp.entries
        if len(self._asm_parts) == vp.parts:
            parts = self._asm_parts
            self._asm_key = None
            self._asm_parts = {}
            self._install(ev.sender, vp, tuple(parts[i] for i in range(vp.parts)), now, actions)
        return actions

    def _install(
        self,
        sender: int,
        vp: ViewPart,
        parts: tuple[tuple[ViewEntry, ...], ...],
        now: float,
        actions: list[Any],
    ) -> None:
        """All entries of the followed leader's view ``vp`` are here (``parts``, in part
        order): install it, or join again if it leaves this node out."""
        parsed = _parse_view(parts)
        if parsed is None:
            self._stats.dropped_bad_view += 1
            return
        members, departed = parsed
        mine: Member | None = None
        leader_listed = False
        for m in members:
            if m.node == self._node:
                mine = m
            elif m.node == sender:
                leader_listed = True
        if not leader_listed:
            self._stats.dropped_bad_view += 1
            return
        if mine is None or mine.incarnation != self._me.incarnation:
            if self._in_view:
                self._in_view = False
                gone = departed.get(self._node)
                reason = (
                    _REASONS[gone[1]] if gone and gone[0] == self._me.incarnation else "crashed"
                )
                actions.append(
                    MemberRemoved(group=self._group, node=NodeId(self._node), reason=reason)
                )
                self._stats.removed += 1
                self._join_delay = self._config.join_retry
                self._join_now(now, actions)
            return
        view = View(
            group=self._group,
            view_id=vp.view_id,
            leader=NodeId(sender),
            epoch=Epoch(vp.epoch),
            members=members,
        )
        if self._view is not None:
            now_in = {(m.node, m.incarnation) for m in members}
            for m in self._view.members:
                if m.node == self._node or (m.node, m.incarnation) in now_in:
                    continue
                gone = departed.get(m.node)
                reason = _REASONS[gone[1]] if gone and gone[0] == m.incarnation else "crashed"
                actions.append(MemberRemoved(group=self._group, node=m.node, reason=reason))
                self._stats.removed += 1
        self._set_view(view)
        actions.append(ViewChanged(view=view))
        self._in_view = True
        self._join_due = None
        self._bootstrap_due = None
        self._join_delay = self._config.join_retry
