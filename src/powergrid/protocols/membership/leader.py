"""The leader role of a membership machine: one object per term, rules L1-L9.

Theory of operation. ``LeaderElected`` naming this node makes the machine
build a :class:`Leader` (etcd raft's ``becomeLeader``) and :meth:`Leader.start`
its term: a first view with the members of the last one (a change of leader
alone removes nobody, rule E2), a heartbeat, and the tick timer. Every
``tick(n)`` the leader admits the pending joins (and ``admit_wait`` after the
first of them, if that comes sooner: rule L5), checks each member (suspect,
probe, remove) and multicasts a heartbeat (rule L1; a leader alone in its
view only every ``lone_heartbeat_interval``: nobody acks it, and it serves
only nodes that follow this leader without being in its view, after a
partition, telling them to ask for the view); suspects are also
probed every ``probe_interval`` from their suspicion, in probe rounds between
ticks (rule L3); with sparse acks the members are also checked ``ack_wait``
after each heartbeat (rule L2: an ack due at it and missing). Acks,
probe answers, view requests and duplicate joins are signs of life.

Everything that belongs to one term lives in this object: the next beat,
lone beat, check and probe round, each member's last sign of life, the suspicions, the joins
waiting for the next tick, the recent departures and the current view's
parts. Stepping down (following another leader) or leaving drops the object,
so none of it leaks into what the node does next, and a new term starts from
nothing. The few things a leader needs beyond its term live on the machine:
the member dict of the view it changes in place, the view-derived timeouts,
the highest view id seen, and the probe nonce counter (see
:class:`~.machine.MembershipMachine`).
"""

from __future__ import annotations

import math
from typing import TYPE_CHECKING, Any, cast

from powergrid.events import Member, Multicast, Send, View, ViewChanged
from powergrid.protocols.membership.messages import MemberRemoved, MemberSuspected
from powergrid.protocols.membership.roles import Member as MemberRole
from powergrid.protocols.membership.roles import Phase, _Role
from powergrid.protocols.membership.view import (
    MAX_VIEW_MEMBERS,
    REASONS,
    installable,
    newest,
    view_parts,
)
from powergrid.types import Epoch, NodeId, incarnation_newer, next_view_id, view_newer
from powergrid.wire import (
    VIEW_STATUS_CRASHED,
    VIEW_STATUS_LEFT,
    VIEW_STATUS_MEMBER,
    VIEW_STATUS_REPLACED,
    Heartbeat,
    HeartbeatAck,
    JoinRequest,
    Probe,
    ProbeAck,
    ViewEntry,
    ViewPart,
    ViewRequest,
)

if TYPE_CHECKING:
    from powergrid.events import Received
    from powergrid.protocols.membership.machine import MembershipMachine

__all__ = ["Leader"]

_MAX_U32 = 2**32 - 1


class _Suspicion:
    __slots__ = ("nonce", "since")

    def __init__(self, since: float, nonce: int) -> None:
        self.since = since
        self.nonce = nonce


class Leader(_Role):
    """This node leads the group for one term (see the module doc).

    ``next_beat`` is the next tick, ``lone_beat`` the earliest heartbeat while
    alone in the view, ``next_probe`` the next probe round while
    there are suspects; ``last_ack`` holds each other member's last sign of
    life (seconds), ``suspects`` the suspicions by node, ``pending`` the joins
    admitted at ``next_admit`` (or the next tick, if sooner), ``departures`` the
    recent departures listed in views (node -> incarnation, status, view id) and
    ``parts`` the current view as sent.
    """

    __slots__ = (
        "dense_until",
        "departures",
        "fast_until",
        "last_ack",
        "lone_beat",
        "next_admit",
        "next_beat",
        "next_check",
        "next_probe",
        "parts",
        "pending",
        "suspects",
    )

    PHASE = Phase.LEADER

    _MESSAGES = {
        **_Role._MESSAGES,
        HeartbeatAck: "heartbeat_ack",
        JoinRequest: "join_request",
        ViewRequest: "view_request",
    }

    def __init__(self, machine: MembershipMachine) -> None:
        super().__init__(machine)
        self.next_beat = 0.0
        self.dense_until = -math.inf  # beats go at half the tick until then (rule L1)
        self.fast_until = -math.inf  # alone in its view, it still beats every tick until then
        self.next_check = math.inf
        self.next_admit = math.inf  # the queued joins' admission (rule L5)
        self.lone_beat = 0.0
        self.next_probe = 0.0
        self.last_ack: dict[int, float] = {}
        self.suspects: dict[int, _Suspicion] = {}
        self.pending: dict[int, Member] = {}
        self.departures: dict[int, tuple[int, int, int]] = {}
        self.parts: tuple[ViewPart, ...] = ()

    def start(self, old: int, lost: bool, left: bool, now: float, actions: list[Any]) -> None:
        """Rule E2: the term's first view, from the last view's members, and a heartbeat.

        ``old`` is the leader followed before (0 if none), ``lost`` whether this
        node had reported it lost, ``left`` whether it sent a LeaveNotice.
        """
        m = self._m
        members = dict(m._members)
        departures: list[tuple[int, int, int]] = []
        suspect = 0
        if old and old != m._node and old in members:
            # A change of leader alone removes nobody: the old leader stays unless it said
            # it left. If it went silent (LeaderLost) it is suspected at once, and the
            # suspect/probe/remove rules decide; if the election replaced a leader still
            # heard (bullying, twins), it is an ordinary member.
            if left:
                departures.append((old, members.pop(old).incarnation, VIEW_STATUS_LEFT))
            elif lost:
                suspect = old
        members[m._node] = m._me
        m._members = members
        self.last_ack = {n: now for n in members if n != m._node}
        if old in self.last_ack and not suspect and m._ack_gap:
            # With sparse acks a member acks a new leader's first heartbeat at once (rule
            # M2): the old leader, silent to others though not to this node, owes that ack
            # within two ticks, not within an ack period.
            self.last_ack[old] = now - m._suspect_after + 2 * m._tick_s
        self.new_view(departures, actions)
        if suspect:
            self.suspect(suspect, now, actions)
        actions.append(Multicast(message=Heartbeat(epoch=m._lead.epoch, view_id=m._view_id())))
        m._stats.heartbeats_sent += 1
        self.lone_beat = now + m._config.lone_heartbeat_interval
        self.fast_until = now + m._config.lone_fast_for
        self.next_beat = now + m._tick_s
        self.next_check = now + m._ack_check if m._ack_check else math.inf

    def leader_changed(self) -> None:
        # Rules M1, E3: step down. This term's state goes with this object; the node keeps
        # its own view (on the machine) and acks the new leader as a member would.
        m = self._m
        m._become(MemberRole(m))

    # -------------------------------------------------------------- timers

    def next_deadline(self) -> float | None:
        due = self.next_beat if self.next_beat < self.next_admit else self.next_admit
        if self.suspects and self.next_probe < due:
            due = self.next_probe
        return self.next_check if self.next_check < due else due

    def on_deadline(self, now: float) -> list[Any]:
        actions: list[Any] = []
        if now >= self.next_check:
            self.next_check = math.inf
            self.check(now, actions)
        beat = now >= self.next_beat
        if beat or (self.suspects and now >= self.next_probe):
            self.tick(now, actions, beat)
        if now >= self.next_admit:  # rule L5: the joins queued admit_wait ago, before the tick
            departures: list[tuple[int, int, int]] = []
            if self.admit(now, departures):
                self.new_view(departures, actions)
        return actions

    def admit(self, now: float, departures: list[tuple[int, int, int]]) -> bool:
        """Rule L5: admit the queued joins (a higher incarnation replaces a member, noted in
        ``departures``); whether anyone was admitted."""
        members = self._m._members
        admitted = False
        for node, cand in sorted(self.pending.items()):
            cur = members.get(node)
            if cur is not None:
                if not incarnation_newer(cand.incarnation, cur.incarnation):
                    continue
                departures.append((node, cur.incarnation, VIEW_STATUS_REPLACED))
                self.suspects.pop(node, None)
            members[node] = cand
            self.last_ack[node] = now
            admitted = True
        self.pending.clear()
        self.next_admit = math.inf
        return admitted

    def check(self, now: float, actions: list[Any]) -> None:
        """Rule L2 with sparse acks: ``ack_wait`` after a heartbeat, suspect every member
        whose ack was due at it and has not come (probes and removal stay with the ticks
        and probe rounds)."""
        m = self._m
        last_ack = self.last_ack
        suspects = self.suspects
        after = m._suspect_after
        for node in m._others:
            if node not in suspects and now - last_ack[node] >= after:
                self.suspect(node, now, actions)

    def tick(self, now: float, actions: list[Any], beat: bool = True) -> None:
        """Rule L1: admit, suspect, probe, remove, then multicast a heartbeat (alone in the
        view, only every ``lone_heartbeat_interval``).

        Without ``beat`` (a probe round between two stretched ticks, rule L3)
        only the suspects are probed or removed.
        """
        m = self._m
        departures: list[tuple[int, int, int]] = []
        admitted = beat and self.admit(now, departures)  # rule L5
        members = m._members
        suspects = self.suspects
        last_ack = self.last_ack
        # A member replaced just now has a fresh last_ack. Suspects are probed in their
        # probe rounds (every probe_interval from the first suspicion), which a beat joins
        # only when one is due.
        probing = not beat or now >= self.next_probe
        for node in m._others if beat else sorted(suspects):
            sus = suspects.get(node)
            if sus is None:
                if now - last_ack[node] < m._suspect_after:
                    continue
                self.suspect(node, now, actions)  # rule L2
                continue
            if now - sus.since >= m._remove_after:  # rule L4
                departures.append((node, members[node].incarnation, VIEW_STATUS_CRASHED))
                continue
            if probing:
                self.send_probes(node, sus, actions)  # rule L3
        for node, _, status in departures:
            if status == VIEW_STATUS_CRASHED:
                del members[node]
                del suspects[node]
                del last_ack[node]
        if departures or admitted:
            self.new_view(departures, actions)
        if suspects and probing and now >= self.next_probe:
            # Rule L3: suspects are probed every probe_interval, whatever the tick (a first
            # suspicion in this call set its round already).
            interval = m._config.probe_interval
            self.next_probe += interval
            if self.next_probe <= now:
                self.next_probe = now + interval
        if not beat:
            return
        if m._others or now >= self.lone_beat or now < self.fast_until:
            # Alone in its view, the leader beats only every lone_heartbeat_interval, but
            # every tick for lone_fast_for after taking office: a twin of its epoch on
            # the other side of a bootstrap cut hears it within a tick of their contact
            # (election rule 7; fuzz seed 16305292: two lone twins beat once a second, and
            # every beat fell into the flapping cut between them for 1.5 s of contact).
            actions.append(Multicast(message=Heartbeat(epoch=m._lead.epoch, view_id=m._view_id())))
            m._stats.heartbeats_sent += 1
            self.lone_beat = now + m._config.lone_heartbeat_interval
        interval = m._tick_s if now >= self.dense_until else m._tick_s / 2
        self.next_beat += interval
        if self.next_beat <= now:
            self.next_beat = now + interval
        if m._ack_check and m._others:
            self.next_check = now + m._ack_check

    def suspect(self, node: int, now: float, actions: list[Any]) -> None:
        """Rule L2: start suspecting ``node``: MemberSuspected, a new nonce, the first probes."""
        m = self._m
        m._nonce = (m._nonce + 1) & _MAX_U32
        if m._ack_gap:  # sparse acks: a sign of loss; beat at half the tick for a while
            self.dense_until = now + m._config.dense_acks_for
        if not self.suspects:
            self.next_probe = now + m._config.probe_interval
        sus = self.suspects[node] = _Suspicion(now, m._nonce)
        actions.append(MemberSuspected(group=m._group, node=NodeId(node)))
        m._stats.suspected += 1
        self.send_probes(node, sus, actions)

    def send_probes(self, node: int, sus: _Suspicion, actions: list[Any]) -> None:
        """Rule L3: probe ``node`` directly and through ``indirect_probes`` helpers."""
        m = self._m
        target = m._members[node]
        probe = Probe(
            epoch=m._lead.epoch,
            nonce=sus.nonce,
            target=node,
            target_incarnation=target.incarnation,
            requester=m._node,
        )
        actions.append(Send(to=NodeId(node), message=probe))
        k = m._config.indirect_probes
        sent = 1
        if k:
            helpers = [n for n in m._others if n != node and n not in self.suspects]
            if len(helpers) > k:
                helpers = sorted(m._rng.sample(helpers, k))
            for helper in helpers:
                actions.append(Send(to=NodeId(helper), message=probe))
            sent += len(helpers)
        m._stats.probes_sent += sent

    def new_view(self, departures: list[tuple[int, int, int]], actions: list[Any]) -> None:
        """Rule L7: install and multicast the leader's next view, reporting ``departures``."""
        m = self._m
        view_id = next_view_id(newest(m._highest, m._view_id()))
        m._highest = view_id
        memory = m._config.departure_memory
        recent = self.departures
        for node, inc, status in departures:
            recent[node] = (inc, status, view_id)
        members = m._members
        for node in [
            n
            for n, (inc, _, vid) in recent.items()
            if (view_id - vid) % 2**64 >= memory or (n in members and members[n].incarnation == inc)
        ]:
            del recent[node]
        epoch = m._lead.epoch
        view = View(
            group=m._group,
            view_id=view_id,
            leader=NodeId(m._node),
            epoch=Epoch(epoch),
            members=tuple(sorted(members.values())),
        )
        for node, _, status in sorted(departures):
            actions.append(MemberRemoved(group=m._group, node=NodeId(node), reason=REASONS[status]))
            m._stats.removed += 1
        m._set_view(view, own=True)
        actions.append(ViewChanged(view=view))
        entries = [
            ViewEntry(e.node, e.incarnation, e.rank, VIEW_STATUS_MEMBER, int(e.broker_capable))
            for e in view.members
        ]
        entries.extend(ViewEntry(n, inc, 0, st, 0) for n, (inc, st, _) in recent.items())
        entries.sort(key=lambda e: (e.node, e.status))
        self.parts = view_parts(epoch, view_id, entries)
        actions.extend(Multicast(message=p) for p in self.parts)
        m._stats.view_parts_sent += len(self.parts)

    # ------------------------------------------------------------ messages

    def heartbeat(self, ev: Received, now: float) -> list[Any]:
        # Rule M1: another node's heartbeat is refused (an older or foreign epoch, or a
        # rival of this one), or it is of a newer epoch: this node steps down, and the
        # member it became takes the heartbeat. (Its fencing passes again without effect:
        # the sender, its epoch and life are the ones just followed.)
        m = self._m
        hb = cast(Heartbeat, ev.message)
        if not m._accept_leader(ev.sender, ev.incarnation, hb.epoch, hb.view_id, now):
            return []
        return m._role.heartbeat(ev, now)

    def is_member(self, ev: Received) -> bool:
        """Is the sender a member of the view, in the incarnation listed?"""
        mm = self._m._members.get(ev.sender)
        return mm is not None and mm.incarnation == ev.incarnation

    def alive(self, node: int, now: float) -> None:
        """A sign of life of ``node`` (rules L2, L3): any suspicion of it is cleared."""
        self.last_ack[node] = now
        if self.suspects.pop(node, None) is not None:
            self._m._stats.false_suspicions_cleared += 1

    def heartbeat_ack(self, ev: Received, now: float) -> list[Any]:
        m = self._m
        ack: HeartbeatAck = ev.message  # type: ignore[assignment]  # (no cast() call: every ack)
        if ack.epoch != m._lead.epoch:  # rule L9
            m._stats.stale_epoch += 1
            return []
        actions: list[Any] = []
        known = m._members.get(ev.sender)  # (is_member, in line: every ack)
        if known is not None and known.incarnation == ev.incarnation:
            m._stats.acks_received += 1
            self.alive(ev.sender, now)
        else:
            m._stats.dropped_not_member += 1
        own = m._view_id()
        if ack.view_id != own and view_newer(ack.view_id, own):  # (False for equals)
            # Rule L8: even a node we do not list holds a newer view id: go above it, so
            # that it installs our view (and, if left out, joins again).
            m._highest = newest(m._highest, ack.view_id)
            self.new_view([], actions)
        return actions

    def view_request(self, ev: Received, now: float) -> list[Any]:
        m = self._m
        req = cast(ViewRequest, ev.message)
        if self.is_member(ev):
            self.alive(ev.sender, now)
        actions: list[Any] = []
        if not installable(m._view_id(), req.view_id):
            # Rule L8: the member holds a view at least as new as ours (a member only asks
            # for a view with its own view's id if its view is not ours): go above it.
            m._highest = newest(m._highest, req.view_id)
            self.new_view([], actions)
            return actions
        m._stats.view_requests_answered += 1
        m._stats.view_parts_sent += len(self.parts)
        actions.extend(Send(to=ev.sender, message=p) for p in self.parts)
        return actions

    def join_request(self, ev: Received, now: float) -> list[Any]:
        # Rule L5: queue a join for admit_wait (or the next tick); a member's duplicate gets
        # the view.
        m = self._m
        req = cast(JoinRequest, ev.message)
        sender, inc = ev.sender, ev.incarnation
        cur = m._members.get(sender)
        if cur is not None and cur.incarnation == inc:
            m._stats.duplicate_joins += 1
            self.alive(sender, now)
            m._stats.view_parts_sent += len(self.parts)
            return [Send(to=sender, message=p) for p in self.parts]
        waiting = self.pending.get(sender)
        if cur is None and waiting is None:
            entries = len(m._members) + len(self.pending) + len(self.departures)
            if entries >= MAX_VIEW_MEMBERS:
                m._stats.dropped_full += 1  # a flood of made-up ids: what a view can carry
                return []
        if waiting is None or incarnation_newer(inc, waiting.incarnation):
            self.pending[sender] = Member(
                node=sender,
                incarnation=inc,
                rank=req.rank,
                broker_capable=bool(req.broker_capable),
            )
            if self.next_admit == math.inf:
                self.next_admit = now + m._config.admit_wait
        return []

    def leave_notice(self, ev: Received, now: float) -> list[Any]:
        # Rule L6: a member (in its incarnation) leaves: removed at once, a new view.
        m = self._m
        sender, inc = ev.sender, ev.incarnation
        actions: list[Any] = []
        waiting = self.pending.get(sender)
        if waiting is not None and waiting.incarnation == inc:
            del self.pending[sender]
        mm = m._members.get(sender)
        if mm is None or mm.incarnation != inc:
            m._stats.dropped_not_member += 1
            return actions
        del m._members[sender]
        del self.last_ack[sender]
        self.suspects.pop(sender, None)
        self.new_view([(sender, inc, VIEW_STATUS_LEFT)], actions)
        return actions

    def probe_answered(self, ev: Received, p: ProbeAck, now: float) -> list[Any]:
        # Rule L3: only an answer with the suspicion's nonce and the member's life clears it.
        m = self._m
        if p.epoch != m._lead.epoch:
            m._stats.stale_epoch += 1
            return []
        sus = self.suspects.get(p.target)
        mm = m._members.get(p.target)
        if (
            sus is None
            or mm is None
            or mm.incarnation != p.target_incarnation
            or sus.nonce != p.nonce
        ):
            m._stats.late_probe_acks += 1
            return []
        self.alive(p.target, now)
        return []
