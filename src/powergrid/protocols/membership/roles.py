"""Membership roles: idle, joining and member (the leader is in :mod:`.leader`).

Theory of operation. A :class:`~.machine.MembershipMachine` is always in one
role, an object of one of four classes (:class:`Phase` names them), as etcd
raft's ``becomeFollower``/``becomeLeader`` swap the step and tick functions:

- :class:`Idle`: before ``Join()`` and after ``Leave()``; drops every message.
- :class:`Joining`: ``Join()`` given, not (or no longer) listed by its
  leader's view; owns the join retry and the bootstrap timers (rules M7, M8).
- :class:`Member`: listed by the last view of the leader it follows; acks
  heartbeats (rule M2) and asks for views it lacks (rule M3); once its leader
  is reported lost, multicasts a join request every ``join_retry_max`` until
  it hears a leader (rule M11).
- :class:`~.leader.Leader`: ticks, admits, suspects, probes and removes
  (rules L1-L9), from ``LeaderElected`` naming this node until it follows
  another leader or leaves.

Each role class has its own message table (built by
:class:`~powergrid._dispatch.Dispatching`) and its own deadline; the state of
one role lives in its object, so it goes when the machine swaps the object
(the bootstrap timer of a joiner, a leader's acks and suspects) and a new
object of the role starts from scratch. What outlives a role change (who
leads, the last view, the leader-lost timer, the view assembly) lives on the
machine, each field with the reason it must. The machine may move only along
:data:`TRANSITIONS`:

    idle -> joining            Join()                                  (rule M7)
    joining -> member          a view of the leader lists this node    (rule M4)
    member -> joining          a view of the leader leaves it out      (rule M5)
    joining, member -> leader  LeaderElected names this node           (rule E1)
    leader -> leader           ... again, in a newer epoch: a new term (rule E1)
    leader -> member           a newer leader followed; keeps its view (rules M1, E3)
    any but idle -> idle       Leave()                                 (rule M10)

Handlers the roles share sit on :class:`_Role` (the probe answer, the
view fencing, which the machine does, and a non-leader's drops) and on
:class:`_Following` (joining and member: relaying probes, a leader's
LeaveNotice); each role fences a heartbeat itself (rule M1) and overrides
only what it does differently. Rule numbers are those of docs/protocols/membership.md.
"""

from __future__ import annotations

import enum
import math
from typing import TYPE_CHECKING, Any, ClassVar, cast

from powergrid._dispatch import Dispatching
from powergrid.events import Multicast, Send
from powergrid.protocols.membership.messages import MemberRemoved
from powergrid.protocols.membership.view import REASONS, installable
from powergrid.types import NodeId, view_newer
from powergrid.wire import (
    Heartbeat,
    HeartbeatAck,
    JoinRequest,
    LeaveNotice,
    Probe,
    ProbeAck,
    ViewPart,
    ViewRequest,
)

if TYPE_CHECKING:
    from powergrid.events import Received
    from powergrid.protocols.membership.machine import MembershipMachine

__all__ = ["TRANSITIONS", "Idle", "Joining", "Member", "Phase"]


class Phase(enum.Enum):
    """The role a membership machine is in; the value is ``MembershipMachine.state``."""

    IDLE = "idle"
    JOINING = "joining"
    MEMBER = "member"
    LEADER = "leader"


TRANSITIONS: dict[Phase, frozenset[Phase]] = {
    Phase.IDLE: frozenset({Phase.JOINING}),
    Phase.JOINING: frozenset({Phase.MEMBER, Phase.LEADER, Phase.IDLE}),
    Phase.MEMBER: frozenset({Phase.JOINING, Phase.LEADER, Phase.IDLE}),
    Phase.LEADER: frozenset({Phase.MEMBER, Phase.LEADER, Phase.IDLE}),
}
"""The role changes a machine may make (see the module doc for what triggers each)."""


class _Role(Dispatching):
    """What every role does alike; the defaults are a non-leader's."""

    __slots__ = ("_m",)

    PHASE: ClassVar[Phase]
    ACTIVE: ClassVar[bool] = True
    """Takes messages and has deadlines (every role but :class:`Idle`)."""
    FOLLOWS: ClassVar[bool] = False
    """Follows a leader it may lose: the machine's leader-lost timer is armed (rule M6)."""

    _MESSAGES = {
        Heartbeat: "heartbeat",
        HeartbeatAck: "not_leader",
        Probe: "probe",
        ProbeAck: "probe_ack",
        JoinRequest: "not_leader",
        LeaveNotice: "leave_notice",
        ViewRequest: "not_leader",
        ViewPart: "view_part",
    }

    def __init__(self, machine: MembershipMachine) -> None:
        self._m = machine

    # -------------------------------------------------------------- timers

    def next_deadline(self) -> float | None:
        """This role's own next deadline (seconds), None if it has none."""
        return None

    def on_deadline(self, now: float) -> list[Any]:
        """This role's timers that are due at ``now``; a new list of actions."""
        return []

    # --------------------------------------------------------------- hooks

    def leader_changed(self) -> None:
        """The machine follows a new leader (or a new epoch of one), not this node."""

    def leader_lost(self, now: float, timed_out: bool) -> None:
        """The machine reported its leader lost at ``now`` (seconds; rules M6, M8), by
        timeout or not (a LeaveNotice, the bootstrap): only a member acts on it (rule M11)."""

    def left_out(
        self, departed: dict[int, tuple[int, int]], now: float, actions: list[Any]
    ) -> None:
        """A complete view of the followed leader does not list this node (rule M5): a
        joiner keeps retrying."""

    def probed_by(self, sender: int, epoch: int, now: float) -> None:
        """A probe of this node from ``sender`` in ``epoch`` is answered."""

    def relay_probe(self, ev: Received, p: Probe) -> list[Any]:
        """A probe for another node: only a follower relays (rule M9)."""
        self._m._stats.dropped_probe += 1
        return []

    def probe_answered(self, ev: Received, p: ProbeAck, now: float) -> list[Any]:
        """A ProbeAck for this node's probe: only a leader asks (rule L3)."""
        self._m._stats.stale_epoch += 1
        return []

    def relay_probe_ack(self, ev: Received, p: ProbeAck) -> list[Any]:
        """A ProbeAck for another node: only a follower relays (rule M9)."""
        self._m._stats.dropped_probe += 1
        return []

    # ------------------------------------------------------------ messages

    def not_leader(self, ev: Received, now: float) -> list[Any]:
        """Rule L9: joins, acks and view requests reaching a node that does not lead."""
        self._m._stats.dropped_not_leader += 1
        return []

    def heartbeat(self, ev: Received, now: float) -> list[Any]:
        """A leader's heartbeat: each role fences it (rule M1) and then acts on it."""
        raise NotImplementedError

    def view_part(self, ev: Received, now: float) -> list[Any]:
        """Rules M1, M4, M5: the machine fences, assembles and installs views."""
        return self._m._view_part(ev, now)

    def probe(self, ev: Received, now: float) -> list[Any]:
        """Rule M9: answer a probe of this node; what to do with another's is the role's."""
        m = self._m
        p = cast(Probe, ev.message)
        if m._lead.stale(p.epoch):
            m._stats.stale_epoch += 1
            return []
        if p.target == m._node:
            if p.target_incarnation != m._me.incarnation:
                m._stats.stale_incarnation += 1
                return []
            self.probed_by(ev.sender, p.epoch, now)
            m._stats.probe_acks_sent += 1
            ack = ProbeAck(
                epoch=p.epoch,
                nonce=p.nonce,
                target=m._node,
                target_incarnation=m._me.incarnation,
                requester=p.requester,
            )
            return [Send(to=ev.sender, message=ack)]
        return self.relay_probe(ev, p)

    def probe_ack(self, ev: Received, now: float) -> list[Any]:
        """Rules L3 and M9: an answer to this node's probe, or one to relay."""
        p = cast(ProbeAck, ev.message)
        if p.requester == self._m._node:
            return self.probe_answered(ev, p, now)
        return self.relay_probe_ack(ev, p)

    def leave_notice(self, ev: Received, now: float) -> list[Any]:
        """A LeaveNotice this role has no use for."""
        return []


class Idle(_Role):
    """No ``Join()`` yet, or ``Leave()`` since (rule M10): no deadline, no messages (the
    machine drops them before any table, ``dropped_inactive``)."""

    __slots__ = ()

    PHASE = Phase.IDLE
    ACTIVE = False


class _Following(_Role):
    """Joining or member: follows a leader, relays its probes, hears it leave."""

    __slots__ = ()

    FOLLOWS = True

    def probed_by(self, sender: int, epoch: int, now: float) -> None:
        # Rule M1: a probe from the followed leader counts as hearing it.
        m = self._m
        if sender == m._lead.leader and epoch == m._lead.epoch:
            m._heard = now
            m._lost_reported = False

    def relay_probe(self, ev: Received, p: Probe) -> list[Any]:
        # Rule M9: relay the followed leader's own probe, in its epoch, to the target.
        m = self._m
        lead = m._lead
        if ev.sender != lead.leader or p.requester != ev.sender or p.epoch != lead.epoch:
            m._stats.dropped_probe += 1
            return []
        m._stats.probes_relayed += 1
        return [Send(to=NodeId(p.target), message=p)]

    def relay_probe_ack(self, ev: Received, p: ProbeAck) -> list[Any]:
        # Rule M9: relay the target's own answer to the followed leader that asked.
        m = self._m
        lead = m._lead
        if (
            ev.sender != p.target
            or ev.incarnation != p.target_incarnation
            or p.requester != lead.leader
            or p.epoch != lead.epoch
        ):
            m._stats.dropped_probe += 1
            return []
        m._stats.probes_relayed += 1
        return [Send(to=NodeId(p.requester), message=p)]

    def leave_notice(self, ev: Received, now: float) -> list[Any]:
        # Rule M6: the followed leader (its life and epoch) says it leaves: lost at once.
        m = self._m
        actions: list[Any] = []
        if (
            ev.sender == m._lead.leader
            and ev.incarnation == m._leader_inc
            and not m._lost_reported
            and cast(LeaveNotice, ev.message).epoch == m._lead.epoch
        ):
            m._leader_left = True
            m._report_lost(now, actions)
        return actions


class Joining(_Following):
    """Not in the leader's view: asks to join until a view lists this node (rules M7, M8).

    ``join_due`` is the next request (always set: the creator calls :meth:`start`
    or :meth:`join_now` at once), ``join_delay`` the current retry delay (from
    ``join_retry``, times ``join_backoff`` per retry, up to ``join_retry_max``),
    ``bootstrap_due`` when a joiner that knows no leader reports ``LeaderLost(0,
    0)``. All three end with the role: installing a view, leading or leaving.
    """

    __slots__ = ("bootstrap_due", "join_delay", "join_due")

    PHASE = Phase.JOINING

    def __init__(self, machine: MembershipMachine) -> None:
        super().__init__(machine)
        self.join_delay = machine._config.join_retry
        self.join_due = 0.0
        self.bootstrap_due: float | None = None

    def start(self, now: float, *, listen: bool = True) -> list[Any]:
        """``Join()``: ask a known leader now, or listen first (rule M7) and arm the
        bootstrap (rule M8), at once if not ``listen``."""
        m = self._m
        cfg = m._config
        actions: list[Any] = []
        if m._lead.leader:
            m._heard = now
            m._lost_reported = False
            self.join_now(now, actions)
        else:
            self.bootstrap_due = now + cfg.join_timeout
            # Listen first: a leader names itself in every heartbeat (the join then goes
            # to it at once), the bootstrap election names one after join_timeout, and
            # until a leader exists nobody could admit us anyway.
            self.join_due = now + m._jittered(cfg.join_timeout + cfg.join_retry_max)
            if not listen:  # rule M8 without the wait: the election stands now
                self.bootstrap_due = None
                m._report_lost(now, actions)
        return actions

    def end_listen(self, now: float) -> list[Any]:
        """``EndListen()``: rule M8 now, if this joiner is still listening (no leader)."""
        actions: list[Any] = []
        if self.bootstrap_due is not None:
            self.bootstrap_due = None
            if not self._m._lead.leader:  # (as the bootstrap deadline does)
                self._m._report_lost(now, actions)
        return actions

    def join_now(self, now: float, actions: list[Any]) -> None:
        """Rule M7: send a join request now and restart the retry timer at the current delay.

        A request multicast because no leader is known is repeated no sooner
        than ``join_retry_max``: only a leader admits, and a leader that exists
        names itself in its next heartbeat, which sends the request to it at once.
        """
        m = self._m
        req = m._join_request()
        delay = self.join_delay
        if m._lead.leader and not m._lost_reported:
            actions.append(Send(to=NodeId(m._lead.leader), message=req))
        else:
            actions.append(Multicast(message=req))
            delay = max(delay, m._config.join_retry_max)
        self.join_due = now + m._jittered(delay)

    def left_out(
        self, departed: dict[int, tuple[int, int]], now: float, actions: list[Any]
    ) -> None:
        # Rule M7: a complete view of the leader it follows leaves this joiner out. A
        # joiner that found its leader by that view (before any heartbeat) would wait out
        # its listening delay (join_timeout + join_retry_max): ask the leader now.
        m = self._m
        soonest = now + self.join_delay * (1.0 + m._config.join_jitter)  # a retry's latest
        if m._lead.leader and not m._lost_reported and self.join_due > soonest:
            self.join_now(now, actions)

    def leader_changed(self) -> None:
        # Rules M7, M8: a leader is known now (no bootstrap); retry joining it briskly.
        self.bootstrap_due = None
        self.join_delay = self._m._config.join_retry

    def next_deadline(self) -> float | None:
        due = self.join_due
        boot = self.bootstrap_due
        if boot is not None and boot < due:
            return boot
        return due

    def on_deadline(self, now: float) -> list[Any]:
        m = self._m
        actions: list[Any] = []
        if now >= self.join_due:  # rule M7: retry, backing off
            cfg = m._config
            self.join_delay = min(self.join_delay * cfg.join_backoff, cfg.join_retry_max)
            self.join_now(now, actions)
        boot = self.bootstrap_due
        if boot is not None and now >= boot:  # rule M8: no leader heard of at all
            self.bootstrap_due = None
            if not m._lead.leader:
                m._report_lost(now, actions)
        return actions

    def heartbeat(self, ev: Received, now: float) -> list[Any]:
        m = self._m
        hb = cast(Heartbeat, ev.message)
        followed, highest = m._lead.leader, m._highest
        actions: list[Any] = []
        if not m._accept_leader(ev.sender, ev.incarnation, hb.epoch, hb.view_id, now):
            return actions  # rule M1
        if m._lead.leader != followed:
            self.join_now(now, actions)  # rule M7: a joiner found its leader: ask it directly
        elif view_newer(hb.view_id, highest) or not installable(hb.view_id, m._view_id()):
            # Rule M5: a view we never saw: perhaps the one admitting us, lost on the way.
            # Or one we could not install: our last view (of an older leader, or life of
            # it) has an id at least as high, so the leader must go above it; our
            # request names that id, as an ack would if we were in its view.
            m._request_view(ev.sender, now, actions)
        return actions


class Member(_Following):
    """Listed by the last view of the leader it follows: acks its heartbeats (rule M2).

    ``ack_out`` keeps the last ack sent with what it answered (leader, epoch,
    view id): the same immutable action is sent again while they stay.
    ``lost_join_due`` is when a member whose leader was reported lost next
    multicasts a join request (rule M11); it counts only while the machine's
    ``_lost_reported`` holds, which hearing a leader clears (rule M1), so the
    timer needs no clearing of its own; every report sets it anew (None when
    the leader sent a LeaveNotice).
    """

    __slots__ = ("ack_out", "acked_at", "beat_at", "dense_until", "lost_join_due")

    PHASE = Phase.MEMBER

    def __init__(self, machine: MembershipMachine) -> None:
        super().__init__(machine)
        self.ack_out: tuple[tuple[int, int, int], Send] | None = None
        self.acked_at = -math.inf  # when the last ack went out
        self.beat_at = -math.inf  # when the last heartbeat of the followed leader came
        self.dense_until = -math.inf  # acks go with every heartbeat until then (rule M2)
        self.lost_join_due: float | None = None

    def probed_by(self, sender: int, epoch: int, now: float) -> None:
        # Rule M2: the leader suspects this node (an ack of it was lost): ack densely.
        super().probed_by(sender, epoch, now)
        self.dense_until = now + self._m._config.dense_acks_for

    def leader_lost(self, now: float, timed_out: bool) -> None:
        # Rule M11: a leader that timed out: ask to join (multicast) join_retry_max from
        # now, jittered. Without IP multicast a new leader whose view lacks this member may
        # never send to it (group datagrams go only to seeds and view members, unicast
        # fan-out). A leader that said it leaves: no timer (an earlier one is dropped).
        m = self._m
        self.lost_join_due = now + m._jittered(m._config.join_retry_max) if timed_out else None

    def next_deadline(self) -> float | None:
        return self.lost_join_due if self._m._lost_reported else None

    def on_deadline(self, now: float) -> list[Any]:
        m = self._m
        due = self.lost_join_due
        if due is None or not m._lost_reported or now < due:
            return []
        # Rule M11: still no leader heard: multicast a join request, again join_retry_max on.
        req = m._join_request()
        self.lost_join_due = now + m._jittered(m._config.join_retry_max)
        return [Multicast(message=req)]

    def heartbeat(self, ev: Received, now: float) -> list[Any]:
        m = self._m
        hb: Heartbeat = ev.message  # type: ignore[assignment]  # (no cast() call: every beat)
        actions: list[Any] = []
        if not m._accept_leader(ev.sender, ev.incarnation, hb.epoch, hb.view_id, now):
            return actions  # rule M1
        view = m._view
        assert view is not None
        sender, epoch, vid, own = ev.sender, hb.epoch, hb.view_id, view.view_id
        view_from = m._view_from
        if (vid != own and installable(vid, own)) or (
            vid == own
            and (epoch != view.epoch or view_from[0] != sender or view_from[1] != ev.incarnation)
        ):
            # Rule M3: a newer view, or one with our view's id that is not our view (another
            # epoch, or another leader of this epoch: a twin, or a new life of our leader).
            m._request_view(sender, now, actions)
        # Rule M2: ack with our own view id; with sparse acks, only once the last ack
        # (to any leader, in any view) is _ack_gap old: every ack_every-th heartbeat;
        # but every heartbeat for dense_acks_for after a sign of loss (a heartbeat
        # missed: more than 2.5 ticks since the last, two beats lost, not one beat
        # late; or a probe of this node).
        key = (sender, epoch, own)
        ack = self.ack_out
        last = None if ack is None else ack[0]  # the key of the last ack
        if (
            last is not None
            and last[0] == sender  # the same leader's beat
            and last[1] == epoch
            and now - self.beat_at > 2.5 * m._tick_s
        ):
            self.dense_until = now + m._config.dense_acks_for
        self.beat_at = now
        if last == key and now - self.acked_at < m._ack_gap and now >= self.dense_until:
            return actions
        self.acked_at = now
        if ack is None or last != key:  # else the same (immutable) action as last time
            send = Send(to=sender, message=HeartbeatAck(epoch=epoch, view_id=own))
            ack = self.ack_out = (key, send)
        actions.append(ack[1])
        m._stats.acks_sent += 1
        return actions

    def left_out(
        self, departed: dict[int, tuple[int, int]], now: float, actions: list[Any]
    ) -> None:
        # Rule M5: removed from the view: say so (with the reason the view gives, if it
        # is about this life), and join again.
        m = self._m
        gone = departed.get(m._node)
        reason = REASONS[gone[1]] if gone and gone[0] == m._me.incarnation else "crashed"
        actions.append(MemberRemoved(group=m._group, node=NodeId(m._node), reason=reason))
        m._stats.removed += 1
        joining = Joining(m)
        m._become(joining)
        joining.join_now(now, actions)
