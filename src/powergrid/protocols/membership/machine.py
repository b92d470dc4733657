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
epoch and view id) and does its checks. A leader alone in its view (the
broker group of a one-cluster data centre, a cluster of one) heartbeats
when it takes office and then only every ``lone_heartbeat_interval`` (its
tick, and so the admission of joins, keeps its period): no member listens,
and the heartbeat serves only nodes that follow it without being in its view
(after a partition, or a bullied twin), whom it tells to ask for the view and
join; a joiner also finds it by the election's periodic Coordinator. (The
broker of a one-cluster data centre used to send as many heartbeats into the
empty broker group as into its cluster.) Members ack only every
``ack_every(n)``-th heartbeat (``ack_interval`` / tick, 4 with the defaults:
the traffic of a quiet group is mostly acks). A member whose last ack (or
probe answer, or view request) is as old as the suspect timeout
(``suspect_timeout * s(n)``, at least one ack period) at a tick, or at the
check ``ack_wait`` after one (when the acks a heartbeat drew are in), is
*suspected* (:class:`MemberSuspected`): from then on, every
``probe_interval``, the leader probes it directly and through ``indirect_probes`` other members
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

*Scaling.* Every member acks (every ``ack_every``-th) heartbeat, so the leader
takes ``n - 1`` acks per acked tick; the tick is stretched to ``(n - 1) / max_ack_rate`` when that
is longer than ``heartbeat_interval`` (400 acks/s by default: groups of up to
81 are not stretched, 100 members tick every 0.25 s), which bounds both the
leader's load and the group's traffic.
With a stretched tick the suspect timeout is at least ``SUSPECT_TICKS`` (2)
ticks and the leader timeout at least ``LEADER_TICKS`` (4), so as many acks
or heartbeats must be lost in a row as at the unstretched defaults; suspects
are still probed every ``probe_interval``.
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
at once, and again if the election then names that leader and epoch (a stale
Coordinator of its term). A node that joined but has heard of no leader at all within
``join_timeout`` emits ``LeaderLost(group, 0, 0)`` once so the election can
bootstrap, and keeps retrying its join.

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
(the timeouts and tick of *Scaling*: 1.25 s for 8 members with the
defaults); a crashed leader by its successor within ``removal_timeout * s(n)
+ probe_interval`` of the successor's election.
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
``heartbeat_interval`` 0.2, ``ack_interval`` 0.8, ``ack_wait`` 0.05,
``probe_interval`` 0.1, ``suspect_timeout`` 0.3, ``removal_timeout``
0.3, ``leader_timeout`` 0.5, ``join_timeout`` 1.0, ``join_retry`` 0.2
(backoff 2, max 2.0, jitter 0.2), ``indirect_probes`` 2, ``size_factor``
0.1, ``max_ack_rate`` 400, ``lone_heartbeat_interval`` 1.0: a crashed member
of a group of 8 is removed about 0.85 s after the crash on the median
(within 1.25 s of its last ack).

*Roles.* The machine is a router: it keeps what outlives a role (who leads,
the last view, the leader-lost timer, the view assembly) and hands every
message and deadline to the object of its current role, an :class:`Idle`,
:class:`Joining`, :class:`Member` or :class:`Leader` (:mod:`.roles`,
:mod:`.leader`), swapped as etcd raft's ``become*`` swap its step and tick
functions. Leaving a role drops its object and its state with it; the
transitions allowed are :data:`~.roles.TRANSITIONS`. ``next_deadline()`` is
the earliest of the role's own deadline and the machine's one timer, the
leader-lost timer of a follower (rule M6). A member that reported its
leader lost multicasts a join request every ``join_retry_max`` until it
hears a leader (rule M11, the member role's timer): without IP multicast
(unicast fan-out, :mod:`powergrid.fanout`) a new leader sends only to seeds
and its own view's members, so a member it does not list would otherwise
wait forever. The staleness of a LeaderElected
is the shared :class:`~powergrid.protocols.leadership.Leadership` record's
rule. Rule numbers in comments (L1-L9 leader, M1-M11 member, E1-E4
leadership, V1 view ids, I1 incarnations) are those of
docs/protocols/membership.md.
"""

from __future__ import annotations

import math
import random
from typing import Any, Literal, cast

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
from powergrid.protocols.leadership import Leadership, Verdict
from powergrid.protocols.membership.config import MembershipConfig
from powergrid.protocols.membership.leader import Leader
from powergrid.protocols.membership.messages import (
    EndListen,
    Join,
    Leave,
    Left,
    MemberRemoved,
    MembershipStats,
)
from powergrid.protocols.membership.roles import TRANSITIONS, Idle, Joining, _Role
from powergrid.protocols.membership.roles import Member as MemberRole
from powergrid.protocols.membership.view import (
    REASONS,
    ViewAssembly,
    installable,
    newest,
    parse_view,
)
from powergrid.types import MAX_NODE_ID, Epoch, GroupId, NodeId, epoch_newer, incarnation_newer
from powergrid.wire import JoinRequest, LeaveNotice, ViewEntry, ViewPart, ViewRequest

__all__ = ["MembershipMachine"]

_MAX_U32 = 2**32 - 1


class MembershipMachine(Dispatching):
    """Heartbeat membership of one group, as leader or member (see the module doc)."""

    __slots__ = (
        "_ack_check",
        "_ack_gap",
        "_assembly",
        "_config",
        "_group",
        "_heard",
        "_highest",
        "_lead",
        "_leader_inc",
        "_leader_left",
        "_leader_timeout",
        "_lost_reported",
        "_me",
        "_members",
        "_node",
        "_nonce",
        "_others",
        "_remove_after",
        "_request_after",
        "_rng",
        "_role",
        "_stats",
        "_suspect_after",
        "_tick_s",
        "_view",
        "_view_from",
    )

    _EVENTS = {
        Received: "_received",
        DeadlineReached: "_deadline",
        Join: "_join",
        EndListen: "_end_listen",
        Leave: "_leave",
        LeaderElected: "_leader_elected",
    }
    # Messages are routed by the current role's own table (roles.py, leader.py).

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
        self._role: _Role = Idle(self)
        # Everything below outlives a change of role; each says why.
        # Who leads (leader 0: none). The election's fencing spans every role, and an idle
        # node still records what LeaderElected says (rules E1-E4).
        self._lead = Leadership(NodeId(0), Epoch(0))
        self._leader_inc: int | None = None  # the followed leader's incarnation, once known
        # The followed leader's liveness: joining and member share the leader-lost timer
        # (rule M6), and becoming leader reads both flags to decide the old leader's fate
        # (rule E2).
        self._heard = 0.0  # when the followed leader was last heard
        self._lost_reported = False
        self._leader_left = False  # the followed leader sent a LeaveNotice
        # The last view: a member left out keeps it while joining (its id is what its
        # view requests name, rule M5), a leader builds its first view from it and keeps
        # its own when it steps down (rule E2).
        self._highest = 0  # highest view id seen anywhere (a new leader goes above it)
        self._view: View | None = None  # the last view installed that lists this node
        self._view_from = (0, 0)  # the leader of _view and its incarnation
        self._members: dict[int, Member] = {}  # of _view, or the leader's working set
        self._others: tuple[int, ...] = ()  # member ids other than this node, sorted
        # Timeouts of the last view's size (config.tick and config.timeouts), set with the
        # view; they survive Leave too (a node that joins again keeps its last view's
        # leader timeout until it installs a view).
        self._tick_s = config.heartbeat_interval
        self._suspect_after = config.suspect_timeout
        self._remove_after = config.removal_timeout
        self._leader_timeout = config.leader_timeout
        # Sparse acks (config.ack_every > 1): a member acks a heartbeat only if its last
        # ack went out at least _ack_gap ago (rule M2); a leader also checks its members
        # _ack_check after each heartbeat (rule L2). 0: every heartbeat, at the tick.
        self._ack_gap = 0.0
        self._ack_check = 0.0
        # At most one ViewRequest per heartbeat_interval, whether joining or member
        # (rules M3, M5): a joiner that installs a view does not ask again at once.
        self._request_after = -math.inf
        # The view being assembled from its parts: parts collected in one role still count
        # in the next (a member left out of one view goes on collecting the next one while
        # joining); only Leave drops them.
        self._assembly = ViewAssembly()
        # The probe nonce counter, across this node's terms as leader: a node may lead one
        # epoch twice (twins settled one way, then back), and a late ProbeAck of the first
        # term must not clear a suspicion of the second (rule L3).
        self._nonce = 0

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
        return self._role.PHASE.value

    @property
    def view(self) -> View | None:
        """The last view installed that lists this node (stale while joining); None when idle."""
        return self._view

    @property
    def leader(self) -> NodeId:
        """The leader this node follows (itself when leading), 0 if none."""
        return NodeId(self._lead.leader or 0)

    @property
    def epoch(self) -> Epoch:
        """The epoch of the followed leader, 0 if none."""
        return self._lead.epoch

    @property
    def is_leader(self) -> bool:
        return type(self._role) is Leader

    @property
    def highest_view_id(self) -> int:
        """The highest view id seen in any heartbeat, ack, request or view."""
        return self._highest

    @property
    def suspects(self) -> tuple[NodeId, ...]:
        """The members the leader currently suspects, sorted (empty unless leading)."""
        role = self._role
        if type(role) is not Leader:
            return ()
        return tuple(NodeId(n) for n in sorted(role.suspects))

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
                "DeadlineReached, Join, EndListen, Leave or LeaderElected"
            ) from None
        return on(self, event, now)

    def next_deadline(self) -> float | None:
        """The earliest of the role's deadline (a leader's next heartbeat or probe round, a
        joiner's retry or bootstrap) and, while following, the leader timeout (rule M6)."""
        role = self._role
        due = role.next_deadline()
        if role.FOLLOWS and self._lead.leader and not self._lost_reported:
            lost = self._heard + self._leader_timeout
            if due is None or lost < due:
                return lost
        return due

    # ------------------------------------------------------------ roles

    def _become(self, role: _Role) -> None:
        """Swap the current role for ``role`` (a new object: it starts from scratch)."""
        if role.PHASE not in TRANSITIONS[self._role.PHASE]:
            raise AssertionError(f"membership cannot go from {self.state} to {role.PHASE.value}")
        self._role = role

    # ------------------------------------------------------------ commands

    def _join(self, ev: Join, now: float) -> list[Any]:
        if self._role.ACTIVE:
            raise UsageError(
                f"node already {self.state} in group {self._group}; Leave before joining again"
            )
        self._view = None
        self._members = {}
        self._others = ()
        lead = self._lead
        if lead.leader == self._node:
            # We led before leaving (or were elected while idle): no more.
            lead.follow(NodeId(0), lead.epoch)
        joining = Joining(self)
        self._become(joining)
        return joining.start(now, listen=ev.listen)

    def _end_listen(self, ev: EndListen, now: float) -> list[Any]:
        # Rule M8 without the rest of the wait: a joiner listening for a leader it never
        # heard of stops listening (the node learnt an epoch to stand above).
        role = self._role
        if type(role) is not Joining or role.bootstrap_due is None:
            return []
        return role.end_listen(now)

    def _leave(self, ev: Leave, now: float) -> list[Any]:
        # Rule M10: one LeaveNotice, Left, and idle (a leader's term, a joiner's timers end).
        if not self._role.ACTIVE:
            raise UsageError(f"node is not in group {self._group}; Join before leaving")
        actions: list[Any] = [Multicast(message=LeaveNotice(epoch=self._lead.epoch))]
        self._become(Idle(self))
        self._view = None
        self._members = {}
        self._others = ()
        self._assembly = ViewAssembly()
        actions.append(Left(group=self._group))
        return actions

    def _leader_elected(self, ev: LeaderElected, now: float) -> list[Any]:
        if ev.group != self._group:
            raise UsageError(
                f"LeaderElected for group {ev.group} passed to the machine of group {self._group}"
            )
        if not 0 < ev.epoch <= _MAX_U32 or not 0 < ev.leader <= MAX_NODE_ID:
            raise UsageError(f"LeaderElected needs epoch >= 1 and a node id, got {ev!r}")
        lead = self._lead
        verdict = lead.judge(ev.leader, ev.epoch)  # a foreign epoch is the election's call
        if verdict is Verdict.STALE:  # rule E4
            self._stats.stale_epoch += 1
            return []
        if verdict is Verdict.SAME:  # rule E4 (no-op), and rule I1:
            if self._lost_reported and type(self._role) is not Leader:
                if self._leader_left:
                    # Rule M6: that leader left (its LeaveNotice); a Coordinator of its term
                    # that reached the election after the notice is stale. Report it lost
                    # again, or nothing would: the election would follow a leader that
                    # never heartbeats again (fresh seed 19,503,297).
                    again: list[Any] = []
                    self._report_lost(now, again)
                    return again
                # The election heard the leader we lost, alive: whatever life we had
                # recorded (perhaps a forged one) goes; its next heartbeat names it.
                self._leader_inc = None
            return []
        if verdict is Verdict.TWIN:
            # Twin leaders of one epoch (two sides of a partition): the election settled
            # on ``ev.leader`` and it is the authority on who leads, so follow it.
            self._stats.twin_leaders_resolved += 1
        if not self._role.ACTIVE:  # rule E4: idle, only record it
            lead.follow(ev.leader, ev.epoch)
            self._leader_inc = None
            return []
        actions: list[Any] = []
        if ev.leader == self._node:
            self._become_leader(ev.epoch, now, actions)  # rule E1
        else:
            self._follow(ev.leader, ev.epoch, None, now)  # rule E3
            role = self._role
            if type(role) is Joining:
                role.join_now(now, actions)  # rule M7: ask the new leader
        return actions

    def _become_leader(self, epoch: Epoch, now: float, actions: list[Any]) -> None:
        """Rule E1: lead ``epoch`` from now on, a new term (rule E2 for its first view)."""
        lead = self._lead
        old, lost, left = lead.leader or 0, self._lost_reported, self._leader_left
        lead.follow(NodeId(self._node), epoch)
        self._leader_inc = self._me.incarnation
        self._lost_reported = False
        self._leader_left = False
        leader = Leader(self)
        self._become(leader)
        leader.start(old, lost, left, now, actions)

    def _follow(self, leader: int, epoch: int, inc: int | None, now: float) -> None:
        """Follow ``leader`` of the newer ``epoch`` (a leader steps down, rules M1, E3)."""
        self._role.leader_changed()
        self._lead.follow(NodeId(leader), Epoch(epoch))
        self._leader_inc = inc
        self._heard = now
        self._lost_reported = False
        self._leader_left = False

    # ------------------------------------------------------------ deadlines

    def _deadline(self, ev: DeadlineReached, now: float) -> list[Any]:
        role = self._role
        actions = role.on_deadline(now)
        if (
            role.FOLLOWS
            and self._lead.leader
            and not self._lost_reported
            and now >= self._heard + self._leader_timeout
        ):
            self._report_lost(now, actions, timed_out=True)  # rule M6
        return actions

    def _report_lost(self, now: float, actions: list[Any], *, timed_out: bool = False) -> None:
        """Rules M6, M8: LeaderLost for the followed leader (0, 0 if none), once; the role
        hears of it (a member whose leader ``timed_out`` starts asking to join, rule M11)."""
        self._lost_reported = True
        self._stats.leader_lost_reported += 1
        lead = self._lead
        actions.append(
            LeaderLost(group=self._group, leader=NodeId(lead.leader or 0), epoch=lead.epoch)
        )
        self._role.leader_lost(now, timed_out)

    def _join_request(self) -> JoinRequest:
        """This node's JoinRequest (its rank and broker capability), counted as sent (rules
        M7, M11)."""
        self._stats.joins_sent += 1
        me = self._me
        return JoinRequest(rank=me.rank, broker_capable=int(me.broker_capable))

    def _jittered(self, delay: float) -> float:
        """``delay`` lengthened by up to ``join_jitter`` of itself, from the rng (rule M7)."""
        jitter = self._config.join_jitter
        return delay * (1.0 + jitter * self._rng.random()) if jitter else delay

    # ------------------------------------------------------------ views

    def _view_id(self) -> int:
        return self._view.view_id if self._view is not None else 0

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
        self._tick_s = tick = cfg.tick(n)
        self._suspect_after, self._remove_after, self._leader_timeout = cfg.timeouts(n)
        every = cfg.ack_every(n)
        # Half a tick of slack: the member's clock reads its last ack a little before or
        # after the leader's reads its arrival, never half a tick apart.
        self._ack_gap = (every - 0.5) * tick if every > 1 else 0.0
        self._ack_check = cfg.ack_wait if every > 1 else 0.0
        self._stats.views_installed += 1

    # ------------------------------------------------------------ messages

    def _received(self, ev: Received, now: float) -> list[Any]:
        role = self._role
        if not role.ACTIVE:  # rule M10
            self._stats.dropped_inactive += 1
            return []
        sender = ev.sender
        if sender == self._node:  # rule I1
            self._stats.dropped_own += 1
            return []
        known = self._members.get(sender)
        if (
            known is not None
            and known.incarnation != ev.incarnation  # (the common case: no call)
            and incarnation_newer(known.incarnation, ev.incarnation)
            and sender != self._lead.leader
        ):
            # Rule I1. (The followed leader's lives are fenced by _accept_leader: a view that
            # lists it in a forged higher life must not shut out its real heartbeats and
            # views.)
            self._stats.stale_incarnation += 1
            return []
        on = role._on_message.get(type(ev.message))
        if on is None:
            self._stats.unexpected += 1
            return []
        return on(role, ev, now)

    def _accept_leader(self, sender: int, inc: int, epoch: int, view_id: int, now: float) -> bool:
        """Rule M1, fencing for a leader's heartbeat or view of ``view_id``: follow newer
        epochs, refuse older (and foreign) ones. An accepted message raises the highest
        view id seen."""
        lead = self._lead
        followed = lead.epoch
        if epoch != followed and not epoch_newer(epoch, followed):
            # Older or foreign. (A LeaderElected of a foreign epoch is obeyed, rule E4, but
            # a leader's own message of one is not: Leadership.judge would call it NEWER.)
            self._stats.stale_epoch += 1
            return False
        if epoch == followed:
            if sender != lead.leader:
                self._stats.conflicting_leader += 1
                return False
            if self._leader_inc is None:
                self._leader_inc = inc
            elif inc != self._leader_inc:
                if incarnation_newer(self._leader_inc, inc):
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
        if view_id != self._highest:  # (newest of equals is either)
            self._highest = newest(self._highest, view_id)
        return True

    def _request_view(self, leader: int, now: float, actions: list[Any]) -> None:
        """Rules M3, M5: ask ``leader`` for its view, at most once per heartbeat interval."""
        if now < self._request_after:
            return
        self._request_after = now + self._config.heartbeat_interval
        view = self._view
        epoch, view_id = (view.epoch, view.view_id) if view is not None else (0, 0)
        actions.append(Send(to=NodeId(leader), message=ViewRequest(epoch=epoch, view_id=view_id)))
        self._stats.view_requests_sent += 1

    def _view_part(self, ev: Received, now: float) -> list[Any]:
        vp = cast(ViewPart, ev.message)
        actions: list[Any] = []
        if not self._accept_leader(ev.sender, ev.incarnation, vp.epoch, vp.view_id, now):
            return actions
        if not installable(vp.view_id, self._view_id()):  # rule M4
            self._stats.dropped_old_view += 1
            return actions
        if vp.parts == 1:
            self._install(ev.sender, vp, (vp.entries,), now, actions)
            return actions
        parts = self._assembly.add(ev.sender, vp)
        if parts == ():  # of an older view than the one being assembled
            self._stats.dropped_old_view += 1
        elif parts is not None:
            self._install(ev.sender, vp, parts, now, actions)
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
        parsed = parse_view(parts)
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
            self._role.left_out(departed, now, actions)  # rule M5
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
                reason = REASONS[gone[1]] if gone and gone[0] == m.incarnation else "crashed"
                actions.append(MemberRemoved(group=self._group, node=m.node, reason=reason))
                self._stats.removed += 1
        self._set_view(view)
        actions.append(ViewChanged(view=view))
        if type(self._role) is not MemberRole:
            self._become(MemberRole(self))  # rule M4: a joiner is in; its join timers end
