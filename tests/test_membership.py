"""Heartbeat membership (powergrid.protocols.membership): exact actions per rule,
properties, simulation.

Each rule test's docstring names the rules it checks by their numbers in
docs/protocols/membership.md (L leader, M member, E leadership, V view ids, I
incarnations), as the code's comments do at each rule's implementation."""

from __future__ import annotations

import itertools
import random
from collections.abc import Iterable, Sequence
from typing import Any

import attrs
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

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
)
from powergrid.protocols.membership import (
    VIEW_ENTRIES_PER_PART,
    EndListen,
    Join,
    Leave,
    Left,
    MemberRemoved,
    MembershipConfig,
    MembershipMachine,
    MemberSuspected,
)
from powergrid.testing import Address, Conditions, FakeNet
from powergrid.types import EPOCH_WINDOW, VIEW_WINDOW, Epoch, GroupId, Incarnation, NodeId
from powergrid.wire import (
    MAX_DATAGRAM,
    Heartbeat,
    HeartbeatAck,
    JoinRequest,
    LeaveNotice,
    Probe,
    ProbeAck,
    UAck,
    ViewEntry,
    ViewPart,
    ViewRequest,
    decode,
    encode,
)

G = GroupId(7)
A, B, C, D = NodeId(1), NodeId(2), NodeId(3), NodeId(4)
L = NodeId(9)  # the leader in most tests
EXACT = MembershipConfig(
    heartbeat_interval=0.25,
    suspect_timeout=0.5,
    removal_timeout=0.5,
    leader_timeout=1.0,
    join_timeout=2.0,
    join_retry=0.25,
    join_backoff=2.0,
    join_retry_max=1.0,
    join_jitter=0.0,
    size_factor=0.0,
    indirect_probes=2,
    ack_interval=0.0,
    probe_interval=0.25,
    admit_wait=0.25,
)  # binary-exact times, no scaling, no jitter; every heartbeat acked, probes at the ticks,
# joins admitted at the ticks
WAKE = DeadlineReached()
DEFAULTS = MembershipConfig()
JOIN = JoinRequest(rank=0, broker_capable=0)


def machine(
    node: int, inc: int = 1, config: MembershipConfig = EXACT, seed: int = 0
) -> MembershipMachine:
    me = Member(node=NodeId(node), incarnation=Incarnation(inc))
    return MembershipMachine(config, me=me, group=G, rng=random.Random(seed))


def rcv(sender: int, msg: Any, inc: int = 1) -> Received:
    return Received(sender=NodeId(sender), incarnation=Incarnation(inc), message=msg)


def mem(node: int, inc: int = 1) -> Member:
    return Member(node=NodeId(node), incarnation=Incarnation(inc))


def view(view_id: int, leader: int, epoch: int, *members: Member) -> View:
    return View(
        group=G,
        view_id=view_id,
        leader=NodeId(leader),
        epoch=Epoch(epoch),
        members=tuple(sorted(members)),
    )


def part(
    epoch: int, view_id: int, members: Iterable[Member], gone: Iterable[tuple[int, int, int]] = ()
) -> ViewPart:
    """A one-part view: ``members``, and departures ``gone`` as (node, incarnation, status)."""
    entries = [ViewEntry(m.node, m.incarnation, m.rank, 0, int(m.broker_capable)) for m in members]
    entries += [ViewEntry(n, inc, 0, status, 0) for n, inc, status in gone]
    entries.sort(key=lambda e: (e.node, e.status))
    return ViewPart(epoch=epoch, view_id=view_id, part=0, parts=1, entries=tuple(entries))


def lead(*others: int, epoch: int = 1) -> MembershipMachine:
    """Leader L at time 0.25 with view 2 = L + ``others`` (admitted at the 0.25 tick)."""
    m = machine(L)
    m.handle(Join(), 0.0)
    m.handle(LeaderElected(group=G, leader=L, epoch=Epoch(epoch)), 0.0)
    for n in others:
        assert m.handle(rcv(n, JOIN), 0.125) == []
    m.handle(WAKE, 0.25)
    assert m.view is not None and m.view.view_id == 2
    return m


def follower(node: int, *others: int, view_id: int = 2, epoch: int = 1) -> MembershipMachine:
    """A member ``node`` that joined at 0 and installed view ``view_id`` of L at 0.25."""
    m = machine(node)
    m.handle(Join(), 0.0)
    members = [mem(n) for n in (node, L, *others)]
    acts = m.handle(rcv(L, part(epoch, view_id, members)), 0.25)
    assert acts == [ViewChanged(view=view(view_id, L, epoch, *members))]
    return m


def ack_all(m: MembershipMachine, nodes: Iterable[int], now: float, epoch: int = 1) -> None:
    vid = m.view.view_id if m.view else 0
    for n in nodes:
        assert m.handle(rcv(n, HeartbeatAck(epoch=epoch, view_id=vid)), now) == []


# ------------------------------------------------------------------ joining


def test_join_listens_first_then_multicasts_every_cap_while_no_leader_is_known() -> None:
    """Join (rule M7): with no leader known, listen (a leader names itself in every heartbeat, the
    bootstrap election names one) and multicast a request only after join_timeout + join_retry_max,
    then again every join_retry_max."""
    m = machine(A)
    assert m.state == "idle" and m.next_deadline() is None
    assert m.handle(Join(), 0.0) == []
    assert m.state == "joining"
    assert m.next_deadline() == 2.0  # the bootstrap
    assert m.handle(WAKE, 1.0) == []  # early wake-up is harmless
    assert m.handle(WAKE, 2.0) == [LeaderLost(group=G, leader=NodeId(0), epoch=Epoch(0))]
    assert m.next_deadline() == 3.0
    assert m.handle(WAKE, 3.0) == [Multicast(message=JOIN)]
    assert m.next_deadline() == 4.0
    assert m.handle(WAKE, 4.0) == [Multicast(message=JOIN)]
    assert m.stats.joins_sent == 2


def test_join_to_a_known_leader_retries_with_backoff_and_cap() -> None:
    """Join (rule M7): a joiner that hears a leader's heartbeat asks it by unicast at once, then
    again after join_retry, doubling up to the cap."""
    m = machine(A)
    assert m.handle(Join(), 0.0) == []
    hb = Heartbeat(epoch=1, view_id=1)
    assert m.handle(rcv(L, hb), 0.0) == [Send(to=L, message=JOIN)]
    assert m.next_deadline() == 0.25
    assert m.handle(WAKE, 0.25) == [Send(to=L, message=JOIN)]
    assert m.next_deadline() == 0.75
    m.handle(rcv(L, hb), 0.5)  # no new view id: no view request
    assert m.handle(WAKE, 0.75) == [Send(to=L, message=JOIN)]
    assert m.next_deadline() == 1.5  # the leader timeout (heard at 0.5) before the retry (1.75)
    m.handle(rcv(L, hb), 1.0)
    assert m.handle(WAKE, 1.75) == [Send(to=L, message=JOIN)]
    assert m.next_deadline() == 2.0  # heard at 1.0; the next retry is at 2.75 (the cap)
    assert m.stats.joins_sent == 4


def test_join_request_carries_rank_and_broker_flag() -> None:
    """Join (rule M7): the request names the node's rank and whether it may become a broker."""
    me = Member(node=A, incarnation=Incarnation(3), rank=5, broker_capable=True)
    m = MembershipMachine(EXACT, me=me, group=G, rng=random.Random(0))
    m.handle(Join(), 0.0)
    m.handle(WAKE, 2.0)
    assert m.handle(WAKE, 3.0) == [Multicast(message=JoinRequest(rank=5, broker_capable=1))]


def test_join_jitter_comes_from_the_rng() -> None:
    """Join (rule M7): each retry delay is lengthened by up to join_jitter of itself, from the
    rng."""
    cfg = attrs.evolve(EXACT, join_jitter=0.5)
    m = machine(A, config=cfg, seed=4)
    m.handle(Join(), 0.0)  # listens: 3.0 * (1 + 0.5 * the first draw)
    m.handle(rcv(L, Heartbeat(epoch=1, view_id=1)), 0.0)  # asks L, retries after join_retry
    rng = random.Random(4)
    rng.random()
    assert m.next_deadline() == 0.25 * (1 + 0.5 * rng.random())


def test_bootstrap_leader_lost_once_and_keeps_joining() -> None:
    """Bootstrap (rule M8): no leader heard within join_timeout -> LeaderLost(group, 0, 0), once."""
    m = machine(A)
    m.handle(Join(), 0.0)
    assert m.handle(WAKE, 2.0) == [LeaderLost(group=G, leader=NodeId(0), epoch=Epoch(0))]
    assert m.next_deadline() == 3.0
    assert m.handle(WAKE, 3.0) == [Multicast(message=JOIN)]
    assert m.next_deadline() == 4.0
    assert m.handle(WAKE, 4.0) == [Multicast(message=JOIN)]
    assert m.stats.leader_lost_reported == 1


def test_leader_admits_joins_at_next_heartbeat_in_one_view() -> None:
    """Join (rules L1, L5): the leader admits every request heard since its last tick in one new
    view."""
    m = machine(L)
    m.handle(Join(), 0.0)
    m.handle(LeaderElected(group=G, leader=L, epoch=Epoch(1)), 0.0)
    assert m.handle(rcv(B, JOIN), 0.125) == []
    assert m.handle(rcv(A, JoinRequest(rank=2, broker_capable=1)), 0.125) == []
    a = Member(node=A, incarnation=Incarnation(1), rank=2, broker_capable=True)
    v2 = view(2, L, 1, a, mem(B), mem(L))
    assert m.handle(WAKE, 0.25) == [
        ViewChanged(view=v2),
        Multicast(message=part(1, 2, [a, mem(B), mem(L)])),
        Multicast(message=Heartbeat(epoch=1, view_id=2)),
    ]
    assert m.view == v2


def test_leader_admits_joins_admit_wait_after_the_first_before_its_tick() -> None:
    """Join (rule L5): the joins queued within admit_wait of the first are admitted then, in
    one view, without waiting for the tick; the tick that follows only beats."""
    m = machine(L, config=attrs.evolve(EXACT, admit_wait=0.0625))
    m.handle(Join(), 0.0)
    m.handle(LeaderElected(group=G, leader=L, epoch=Epoch(1)), 0.0)
    assert m.handle(rcv(B, JOIN), 0.125) == []
    assert m.next_deadline() == 0.1875
    assert m.handle(rcv(A, JOIN), 0.15625) == []
    assert m.next_deadline() == 0.1875  # the first join set the admission
    v2 = view(2, L, 1, mem(A), mem(B), mem(L))
    assert m.handle(WAKE, 0.1875) == [
        ViewChanged(view=v2),
        Multicast(message=part(1, 2, [mem(A), mem(B), mem(L)])),
    ]
    assert m.next_deadline() == 0.25
    assert m.handle(WAKE, 0.25) == [Multicast(message=Heartbeat(epoch=1, view_id=2))]
    assert m.handle(rcv(C, JOIN), 0.3125) == []
    assert m.next_deadline() == 0.375


def test_join_without_listening_reports_the_bootstrap_at_once() -> None:
    """Bootstrap (rule M8): Join(listen=False) reports LeaderLost(group, 0, 0) at once (the
    broker group's join: election rule 1), then keeps joining as after a bootstrap."""
    m = machine(A)
    assert m.handle(Join(listen=False), 0.0) == [
        LeaderLost(group=G, leader=NodeId(0), epoch=Epoch(0))
    ]
    assert m.next_deadline() == 3.0
    assert m.handle(WAKE, 3.0) == [Multicast(message=JOIN)]
    assert m.stats.leader_lost_reported == 1


def test_end_listen_reports_the_bootstrap_of_a_listening_joiner_at_once() -> None:
    """Bootstrap (rule M8 without the rest of the wait): EndListen makes a joiner still
    listening for a leader report LeaderLost(group, 0, 0) now, as Join(listen=False)
    would have (the node's new broker that learnt a lead epoch from a client's bid,
    issue 16); it keeps joining as after a bootstrap. Once reported, or with a leader
    known, or in another phase, it does nothing."""
    m = machine(A)
    assert m.handle(EndListen(), 0.0) == []  # idle
    m.handle(Join(), 0.0)
    assert m.next_deadline() == 2.0  # the listen (join_timeout)
    assert m.handle(EndListen(), 0.25) == [LeaderLost(group=G, leader=NodeId(0), epoch=Epoch(0))]
    assert m.handle(EndListen(), 0.3) == []
    assert m.next_deadline() == 3.0  # the join retry, no bootstrap any more
    assert m.handle(WAKE, 3.0) == [Multicast(message=JOIN)]
    assert m.stats.leader_lost_reported == 1
    heard = machine(A)
    heard.handle(Join(), 0.0)
    heard.handle(rcv(L, Heartbeat(epoch=1, view_id=1)), 0.125)
    assert heard.handle(EndListen(), 0.25) == []  # a leader is known: it asks it


def test_joiner_installs_view_that_lists_it() -> None:
    """Join (rule M4): a view of the leader that lists this node ends joining; retries stop."""
    m = machine(A)
    m.handle(Join(), 0.0)
    members = [mem(A), mem(L)]
    assert m.handle(rcv(L, part(1, 2, members)), 0.125) == [
        ViewChanged(view=view(2, L, 1, *members))
    ]
    assert m.state == "member" and m.leader == L and m.epoch == 1
    assert m.next_deadline() == 1.125  # leader timeout only


def test_joiner_hearing_a_leader_asks_it_directly() -> None:
    """Join (rule M7): a joiner that hears a leader's heartbeat sends its request to that leader."""
    m = machine(A)
    m.handle(Join(), 0.0)
    assert m.handle(rcv(L, Heartbeat(epoch=1, view_id=1)), 0.125) == [Send(to=L, message=JOIN)]
    assert m.handle(rcv(L, Heartbeat(epoch=1, view_id=1)), 0.15) == []  # no ack, no repeat
    assert m.handle(WAKE, 0.375) == [Send(to=L, message=JOIN)]  # retries go to the leader


def test_joiner_finding_its_leader_by_a_view_that_leaves_it_out_asks_it_directly() -> None:
    """Join (rule M7): a joiner that learns of its leader from a complete view that does
    not list it (the view came before any heartbeat) asks that leader at once, not at its
    listening retry (join_timeout + join_retry_max: 2.5 s in the demo before, where 4 of
    its 20 servers were admitted 2 s after the others); once asked, another such view
    asks no more often than the retry."""
    m = machine(A)
    m.handle(Join(), 0.0)
    assert m.handle(rcv(L, part(1, 1, [mem(L)])), 0.125) == [Send(to=L, message=JOIN)]
    assert m.handle(rcv(L, part(1, 2, [mem(B), mem(L)])), 0.25) == []
    assert m.state == "joining" and m.leader == L


def test_joiner_asks_for_a_view_it_never_saw() -> None:
    """Join (rule M5): a joiner hearing its leader name a view id it never saw asks for that view
    (it may be the view admitting it, lost on the way)."""
    m = machine(A)
    m.handle(Join(), 0.0)
    m.handle(rcv(L, Heartbeat(epoch=1, view_id=1)), 0.125)
    assert m.handle(rcv(L, Heartbeat(epoch=1, view_id=2)), 0.25) == [
        Send(to=L, message=ViewRequest(epoch=0, view_id=0))
    ]
    assert m.handle(rcv(L, Heartbeat(epoch=1, view_id=2)), 0.5) == []  # seen: no repeat


def test_joiner_whose_last_view_id_blocks_its_leaders_view_asks_for_it() -> None:
    """Join (rules M5, L8): a node left out of a view keeps its last view's id. A new leader (here a
    new life of L, whose view ids start again at 1) admits it in a view whose id is not above that
    one, so it may not install it (view ids only grow) and, sending no acks, never told the leader
    why. Its leader's heartbeat naming such a view id makes it ask for the view with its own view's
    id, which lifts the leader above it (fuzz seed 10018 and the multicast-buffer seeds 3319, 5146,
    8485, 9409, 11508: a node stuck joining for good)."""
    m = follower(A, B)  # view 2 of epoch 1
    m.handle(rcv(L, part(1, 3, [mem(B), mem(L)], gone=[(A, 1, 1)])), 0.5)
    assert m.state == "joining"
    members = [mem(A), mem(B), mem(L, 2)]
    assert m.handle(rcv(L, part(2, 2, members), inc=2), 0.6) == []  # view 2 of epoch 2
    assert m.stats.dropped_old_view == 1
    assert m.handle(rcv(L, Heartbeat(epoch=2, view_id=2), inc=2), 0.65) == [
        Send(to=L, message=ViewRequest(epoch=1, view_id=2))
    ]
    assert m.handle(rcv(L, Heartbeat(epoch=2, view_id=2), inc=2), 0.7) == []  # once per interval
    assert m.handle(rcv(L, part(2, 3, members), inc=2), 0.8) == [
        MemberRemoved(group=G, node=L, reason="crashed"),  # L's first life
        ViewChanged(view=view(3, L, 2, *members)),
    ]
    assert m.state == "member"


def test_duplicate_join_is_answered_with_the_view_by_unicast() -> None:
    """Join (rule L5): a request from a member already in the view gets the view by unicast."""
    m = lead(A)
    assert m.handle(rcv(A, JOIN), 0.3) == [Send(to=A, message=part(1, 2, [mem(A), mem(L)]))]
    assert m.stats.duplicate_joins == 1


def test_join_twice_or_leave_while_idle_is_usage_error() -> None:
    """Commands (rules M7, M10): Join while joined and Leave while idle raise UsageError at once."""
    m = machine(A)
    with pytest.raises(UsageError, match="Join before leaving"):
        m.handle(Leave(), 0.0)
    m.handle(Join(), 0.0)
    with pytest.raises(UsageError, match="Leave before joining again"):
        m.handle(Join(), 0.1)


# ------------------------------------------------------------------ heartbeats


def test_leader_heartbeat_cadence_and_exact_deadlines() -> None:
    """Leader (rule L1): a heartbeat every heartbeat_interval; early wake-ups do nothing; late ones
    catch up."""
    m = lead(A)  # view 2 at the 0.25 tick
    hb = Multicast(message=Heartbeat(epoch=1, view_id=2))
    assert m.next_deadline() == 0.5
    ack_all(m, [A], 0.375)
    assert m.handle(WAKE, 0.5) == [hb]
    assert m.next_deadline() == 0.75
    assert m.handle(WAKE, 0.625) == []
    ack_all(m, [A], 0.75)
    assert m.handle(WAKE, 0.75) == [hb]
    assert m.next_deadline() == 1.0
    ack_all(m, [A], 1.0)
    assert m.handle(WAKE, 1.3125) == [hb]  # woken late: one heartbeat, then on from now
    assert m.next_deadline() == 1.5625
    assert m.stats.heartbeats_sent == 5  # taking office, 0.25, 0.5, 0.75, 1.3125


def test_a_leader_alone_in_its_view_beats_only_every_lone_heartbeat_interval() -> None:
    """Leader alone: a heartbeat when it takes office, then one per lone_heartbeat_interval
    (1 s) while nobody else is in its view; its tick keeps admitting joins at its period,
    and with a member admitted it beats every tick again. (Past lone_fast_for, here 0.)"""
    m = machine(L, config=attrs.evolve(EXACT, lone_fast_for=0.0))
    m.handle(Join(), 0.0)
    took = m.handle(LeaderElected(group=G, leader=L, epoch=Epoch(1)), 0.0)
    assert took[-1] == Multicast(message=Heartbeat(epoch=1, view_id=1))
    assert m.next_deadline() == 0.25
    for t in (0.25, 0.5, 0.75):
        assert m.handle(WAKE, t) == []
    assert m.handle(WAKE, 1.0) == [Multicast(message=Heartbeat(epoch=1, view_id=1))]
    assert m.handle(WAKE, 1.25) == []
    assert m.next_deadline() == 1.5
    assert m.handle(rcv(A, JOIN), 1.375) == []
    assert m.handle(WAKE, 1.5) == [
        ViewChanged(view=view(2, L, 1, mem(A), mem(L))),
        Multicast(message=part(1, 2, [mem(A), mem(L)])),
        Multicast(message=Heartbeat(epoch=1, view_id=2)),
    ]
    ack_all(m, [A], 1.625)
    assert m.handle(WAKE, 1.75) == [Multicast(message=Heartbeat(epoch=1, view_id=2))]
    assert m.stats.heartbeats_sent == 4


def test_a_lone_leader_beats_every_tick_for_lone_fast_for_after_taking_office() -> None:
    """Leader alone (election rule 7's twin bound): for lone_fast_for after it takes office
    a leader alone in its view still beats every tick, so a twin of its epoch across a
    bootstrap cut hears it within a tick of their contact; then once a lone interval.
    (Two lone twins beating once a second kept leading epoch 1 through 1.5 s of contact
    when every beat fell into their flapping cut: fuzz seed 16305292.)"""
    m = machine(L, config=attrs.evolve(EXACT, lone_fast_for=0.6))
    m.handle(Join(), 0.0)
    took = m.handle(LeaderElected(group=G, leader=L, epoch=Epoch(1)), 0.0)
    beat = Multicast(message=Heartbeat(epoch=1, view_id=1))
    assert took[-1] == beat
    got = [m.handle(WAKE, 0.25 * i) for i in range(1, 9)]
    #        0.25    0.5   | 0.75 1.0 1.25 | 1.5 (a lone interval after 0.5) 1.75 2.0
    assert got == [[beat], [beat], [], [], [], [beat], [], []]


def test_lone_heartbeat_interval_below_the_tick_is_refused() -> None:
    """Config: a lone leader may not beat more often than heartbeat_interval."""
    with pytest.raises(ConfigError, match="lone_heartbeat_interval"):
        MembershipConfig(heartbeat_interval=0.2, lone_heartbeat_interval=0.1)


def test_member_acks_heartbeat_of_its_leader() -> None:
    """Member (rule M2): every heartbeat of the followed leader is answered with a unicast ack."""
    m = follower(A)
    assert m.handle(rcv(L, Heartbeat(epoch=1, view_id=2)), 0.5) == [
        Send(to=L, message=HeartbeatAck(epoch=1, view_id=2))
    ]
    assert m.next_deadline() == 1.5  # leader timeout re-armed from the heartbeat
    assert m.stats.acks_sent == 1


def test_member_requests_newer_view_at_most_once_per_interval() -> None:
    """View request (rule M3): a heartbeat naming a newer view makes the member ask the leader for
    it."""
    m = follower(A)
    hb = rcv(L, Heartbeat(epoch=1, view_id=3))
    ack = Send(to=L, message=HeartbeatAck(epoch=1, view_id=2))
    assert m.handle(hb, 0.5) == [Send(to=L, message=ViewRequest(epoch=1, view_id=2)), ack]
    assert m.handle(hb, 0.625) == [ack]  # a duplicate within the interval
    assert m.handle(hb, 0.75) == [Send(to=L, message=ViewRequest(epoch=1, view_id=2)), ack]
    assert m.highest_view_id == 3


def test_leader_answers_view_request_by_unicast() -> None:
    """View request (rule L8): the leader sends its current view to the asking member by unicast."""
    m = lead(A, B)
    assert m.handle(rcv(A, ViewRequest(epoch=1, view_id=1)), 0.3) == [
        Send(to=A, message=part(1, 2, [mem(A), mem(B), mem(L)]))
    ]
    assert m.stats.view_requests_answered == 1


def test_ack_with_higher_view_id_lifts_the_leader_above_it() -> None:
    """View ids only grow (rules L8, V1): an ack naming a view id above the leader's makes a new
    view above it."""
    m = lead(A)
    assert m.handle(rcv(A, HeartbeatAck(epoch=1, view_id=7)), 0.3) == [
        ViewChanged(view=view(8, L, 1, mem(A), mem(L))),
        Multicast(message=part(1, 8, [mem(A), mem(L)])),
    ]


def test_view_request_with_the_leaders_own_view_id_lifts_the_leader() -> None:
    """View ids only grow (rule L8): a member asks for a view with its own view's id only when its
    view is not this leader's (a twin leader's of this epoch): the leader goes above it."""
    m = lead(A)  # view 2 of epoch 1
    assert m.handle(rcv(A, ViewRequest(epoch=1, view_id=2)), 0.3) == [
        ViewChanged(view=view(3, L, 1, mem(A), mem(L))),
        Multicast(message=part(1, 3, [mem(A), mem(L)])),
    ]
    assert m.handle(rcv(A, ViewRequest(epoch=1, view_id=2)), 0.35) == [
        Send(to=A, message=part(1, 3, [mem(A), mem(L)]))
    ]


def test_member_asks_for_a_view_with_its_id_from_another_leader() -> None:
    """Ask (rule M3): a heartbeat naming the member's own view id and epoch, from a node (or an
    incarnation) that did not issue the member's view, means two views share that id: ask."""
    m = follower(A, B)  # view 2 of L (incarnation 1), epoch 1
    assert m.handle(rcv(L, Heartbeat(epoch=1, view_id=2), inc=2), 0.5) == [
        Send(to=L, message=ViewRequest(epoch=1, view_id=2)),
        Send(to=L, message=HeartbeatAck(epoch=1, view_id=2)),
    ]
    assert m.handle(rcv(L, Heartbeat(epoch=1, view_id=2), inc=2), 0.75) == [
        Send(to=L, message=ViewRequest(epoch=1, view_id=2)),
        Send(to=L, message=HeartbeatAck(epoch=1, view_id=2)),
    ]
    # From the leader that issued it: no request.
    n = follower(A, B)
    assert n.handle(rcv(L, Heartbeat(epoch=1, view_id=2)), 0.5) == [
        Send(to=L, message=HeartbeatAck(epoch=1, view_id=2))
    ]


def test_member_refuses_views_not_newer_than_its_own() -> None:
    """View ids only grow (rules M4, V1): a member drops a view whose id is not above the installed
    one."""
    m = follower(A, view_id=5)
    assert m.handle(rcv(L, part(1, 5, [mem(A), mem(L)])), 0.3) == []
    assert m.handle(rcv(L, part(1, 4, [mem(A), mem(L), mem(B)])), 0.3) == []
    assert m.stats.dropped_old_view == 2
    assert m.view is not None and m.view.view_id == 5


# ------------------------------------------------------------- failure detection


def test_silent_member_is_suspected_probed_then_removed() -> None:
    """Detection (rules L2, L3, L4): no ack for suspect_timeout -> MemberSuspected and probes
    (direct and via k members) every tick; still silent removal_timeout later -> removed as crashed.
    """
    m = lead(A, B, C)
    probe = Probe(epoch=1, nonce=1, target=A, target_incarnation=1, requester=L)
    ack_all(m, (B, C), 0.375)
    assert m.handle(WAKE, 0.5) == [Multicast(message=Heartbeat(epoch=1, view_id=2))]
    ack_all(m, (B, C), 0.625)
    assert m.handle(WAKE, 0.75) == [
        MemberSuspected(group=G, node=A),
        Send(to=A, message=probe),
        Send(to=B, message=probe),
        Send(to=C, message=probe),
        Multicast(message=Heartbeat(epoch=1, view_id=2)),
    ]
    assert m.suspects == (A,)
    ack_all(m, (B, C), 0.875)
    assert m.handle(WAKE, 1.0) == [
        Send(to=A, message=probe),
        Send(to=B, message=probe),
        Send(to=C, message=probe),
        Multicast(message=Heartbeat(epoch=1, view_id=2)),
    ]
    ack_all(m, (B, C), 1.125)
    survivors = [mem(B), mem(C), mem(L)]
    assert m.handle(WAKE, 1.25) == [
        MemberRemoved(group=G, node=A, reason="crashed"),
        ViewChanged(view=view(3, L, 1, *survivors)),
        Multicast(message=part(1, 3, survivors, gone=[(A, 1, 1)])),
        Multicast(message=Heartbeat(epoch=1, view_id=3)),
    ]
    assert m.suspects == ()
    assert (m.stats.suspected, m.stats.removed, m.stats.probes_sent) == (1, 1, 6)


def test_tick_stretches_with_group_size_to_bound_the_leaders_ack_rate() -> None:
    """Scaling (rule L1): the tick is heartbeat_interval until the acks of n - 1 members would
    exceed max_ack_rate per second; then the suspect and leader timeouts are at least 2 and 4 ticks.
    """
    cfg = attrs.evolve(DEFAULTS, heartbeat_interval=0.1, ack_interval=0.0, ack_wait=0.0)
    assert cfg.tick(8) == 0.1 and cfg.tick(41) == 0.1
    assert cfg.tick(100) == 99 / 400
    s8, s100 = cfg.scale(8), cfg.scale(100)
    assert cfg.timeouts(8) == (0.3 * s8, 0.3 * s8, 0.5 * s8)  # not stretched: as before
    assert cfg.timeouts(100) == (0.3 * s100, 0.3 * s100, 4 * 99 / 400)
    off = attrs.evolve(cfg, max_ack_rate=0.0)
    assert off.tick(1000) == 0.1


def test_sparse_acks_set_the_suspect_timeout_to_the_ack_period() -> None:
    """Scaling (rules L1, L2, M2): with the defaults (a 0.2 s tick, ack_interval 0.8 s) a member
    acks every 4th heartbeat, so a member is suspected once one ack is due and missing: the
    suspect timeout is the ack period, 4 ticks (more than suspect_timeout * scale(8)); the
    stretched tick of 100 members (0.2475 s) takes every 3rd."""
    cfg = DEFAULTS
    assert cfg.tick(8) == 0.2 and cfg.tick(81) == 0.2 and cfg.tick(100) == 99 / 400
    assert cfg.ack_every(8) == 4 and cfg.ack_every(100) == 3 and cfg.ack_every(1) == 4
    s8 = cfg.scale(8)
    assert cfg.timeouts(8) == (4 * 0.2, 0.3 * s8, 4 * 0.2)
    assert cfg.timeouts(100)[0] == 3 * (99 / 400)
    assert attrs.evolve(cfg, ack_interval=0.0).ack_every(8) == 1


SPARSE = attrs.evolve(EXACT, ack_interval=1.0, ack_wait=0.0625, probe_interval=0.125)
"""EXACT with sparse acks: every 4th heartbeat (of 0.25 s) is acked; checks 0.0625 s after."""


def test_member_acks_every_ack_every_th_heartbeat() -> None:
    """Ack (rule M2, sparse): a member acks the first heartbeat of a leader, epoch and view at
    once, then only once its last ack is ack_every - 1/2 ticks old: every 4th heartbeat."""
    m = machine(A, config=SPARSE)
    m.handle(Join(), 0.0)
    m.handle(rcv(L, part(1, 2, [mem(A), mem(L)])), 0.25)
    ack = Send(to=L, message=HeartbeatAck(epoch=1, view_id=2))
    hb = Heartbeat(epoch=1, view_id=2)
    got = [m.handle(rcv(L, hb), 0.25 * i + 0.001) for i in range(2, 11)]
    assert got == [[ack], [], [], [], [ack], [], [], [], [ack]]
    assert m.stats.acks_sent == 3
    # A new view is acked at once (its id is what the leader reads, rule L8).
    m.handle(rcv(L, part(1, 3, [mem(A), mem(L)])), 2.8)
    assert m.handle(rcv(L, Heartbeat(epoch=1, view_id=3)), 3.001) == [
        Send(to=L, message=HeartbeatAck(epoch=1, view_id=3))
    ]


def test_leader_checks_acks_ack_wait_after_a_heartbeat() -> None:
    """Suspect (rule L2, sparse acks): ack_wait after each heartbeat the leader suspects every
    member whose ack was due at it (its last sign of life is an ack period old) and has not
    come, at once rather than a tick later; the probes then go every probe_interval."""
    m = machine(L, config=SPARSE)
    m.handle(Join(), 0.0)
    m.handle(LeaderElected(group=G, leader=L, epoch=Epoch(1)), 0.0)
    for n in (A, B):
        m.handle(rcv(n, JOIN), 0.125)
    m.handle(WAKE, 0.25)  # admits A and B: last signs of life at 0.25
    assert m.next_deadline() == 0.3125
    assert m.handle(WAKE, 0.3125) == []
    ack_all(m, (A, B), 0.51)
    for t in (0.75, 1.0, 1.25):
        assert m.handle(WAKE, t) == [Multicast(message=Heartbeat(epoch=1, view_id=2))]
        assert m.handle(WAKE, t + 0.0625) == []  # A's and B's acks of 0.5 are recent
    assert m.handle(WAKE, 1.5) == [Multicast(message=Heartbeat(epoch=1, view_id=2))]
    ack_all(m, (B,), 1.51)  # B's ack of the heartbeat of 1.5 comes; A's does not
    probe = Probe(epoch=1, nonce=1, target=A, target_incarnation=1, requester=L)
    assert m.next_deadline() == 1.5625
    assert m.handle(WAKE, 1.5625) == [
        MemberSuspected(group=G, node=A),
        Send(to=A, message=probe),
        Send(to=B, message=probe),
    ]
    assert m.next_deadline() == 1.6875  # the next probe round


DENSE = attrs.evolve(SPARSE, dense_acks_for=1.0)
"""SPARSE, dense for 1 s after a sign of loss."""


def dense_member() -> tuple[MembershipMachine, Send, Heartbeat]:
    """Member A of L's view 2 under DENSE, its first ack sent at 0.501; its ack, the beat."""
    m = machine(A, config=DENSE)
    m.handle(Join(), 0.0)
    m.handle(rcv(L, part(1, 2, [mem(A), mem(L)])), 0.25)
    ack = Send(to=L, message=HeartbeatAck(epoch=1, view_id=2))
    hb = Heartbeat(epoch=1, view_id=2)
    assert m.handle(rcv(L, hb), 0.501) == [ack]
    return m, ack, hb


def test_member_acks_every_heartbeat_for_a_while_after_one_was_missed() -> None:
    """Ack (rule M2, dense after loss): a heartbeat of the same leader more than 2.5 ticks
    after the last (two were lost; one late beat does not count) makes the member ack
    every heartbeat for dense_acks_for; then it acks sparsely again."""
    m, ack, hb = dense_member()
    assert m.handle(rcv(L, hb), 0.751) == []
    assert m.handle(rcv(L, hb), 1.101) == []  # one beat 0.1 s late: still sparse
    # the heartbeats of 1.25 and 1.5 are lost: 1.75 is 0.65 s (2.6 ticks) after the last
    got = [m.handle(rcv(L, hb), 0.25 * i + 0.001) for i in range(7, 15)]
    #        1.75   2.0    2.25   2.5  | 2.75 3.0 (dense until 2.751) 3.25   3.5
    assert got == [[ack], [ack], [ack], [ack], [], [], [], [ack]]


def test_member_acks_every_heartbeat_for_a_while_after_a_probe_of_itself() -> None:
    """Ack (rule M2, dense after loss): a probe of this node (the leader suspected it: an
    ack was lost) makes it ack every heartbeat for dense_acks_for."""
    m, ack, hb = dense_member()
    probe = Probe(epoch=1, nonce=7, target=A, target_incarnation=1, requester=L)
    assert m.handle(rcv(L, probe), 0.6) == [
        Send(to=L, message=ProbeAck(epoch=1, nonce=7, target=A, target_incarnation=1, requester=L))
    ]
    got = [m.handle(rcv(L, hb), 0.25 * i + 0.001) for i in range(3, 9)]
    assert got == [[ack], [ack], [ack], [ack], [], []]  # dense until 1.6


def test_leader_heartbeats_every_half_tick_for_a_while_after_a_suspicion() -> None:
    """Tick (rule L1, dense after loss): once it suspected a member (a lost ack), the leader
    heartbeats every half tick for dense_acks_for, then at the tick again."""
    m = machine(L, config=DENSE)
    m.handle(Join(), 0.0)
    m.handle(LeaderElected(group=G, leader=L, epoch=Epoch(1)), 0.0)
    for n in (A, B):
        m.handle(rcv(n, JOIN), 0.125)
    m.handle(WAKE, 0.25)  # admits A and B
    beats = []
    suspected = []
    t = 0.25
    while t < 4.0:
        t = m.next_deadline() or 0.0
        acks = (A, B) if t < 1.3 or t > 2.6 else (B,)  # A's acks go missing for 1.3 s
        out = m.handle(WAKE, t)
        if any(isinstance(a, Multicast) and isinstance(a.message, Heartbeat) for a in out):
            beats.append(t)
            ack_all(m, acks, t + 0.01)
        if any(isinstance(a, MemberSuspected) for a in out):
            suspected.append(t)
            ack_all(m, (A,), t + 0.02)  # A answers its probe: the suspicion clears
            m.handle(
                rcv(A, ProbeAck(epoch=1, nonce=1, target=A, target_incarnation=1, requester=L)),
                t + 0.02,
            )
    gaps = sorted({round(b - a, 4) for a, b in itertools.pairwise(beats)})
    assert gaps == [0.125, 0.25]
    dense = [b for a, b in itertools.pairwise(beats) if round(b - a, 4) == 0.125]
    (sus,) = suspected
    # the beat already due, then every half tick until dense_acks_for after the suspicion
    assert sus < dense[0] <= sus + 0.25 + 0.125 and dense[-1] <= sus + 1.0 + 0.125


def test_stretched_tick_probes_suspects_every_heartbeat_interval() -> None:
    """Scaling (rules L3, L4): with a stretched tick the leader still probes its suspects (and
    removes them) every heartbeat_interval, between two heartbeats."""
    cfg = attrs.evolve(EXACT, max_ack_rate=4.0)  # 4 members: tick 0.75; suspect after 1.5
    m = machine(L, config=cfg)
    m.handle(Join(), 0.0)
    m.handle(LeaderElected(group=G, leader=L, epoch=Epoch(1)), 0.0)
    for n in (A, B, C):
        m.handle(rcv(n, JOIN), 0.125)
    m.handle(WAKE, 0.25)  # admits A, B, C: view 2 of 4 members
    assert m.next_deadline() == 1.0
    assert m.handle(WAKE, 1.0) == [Multicast(message=Heartbeat(epoch=1, view_id=2))]
    ack_all(m, (B, C), 1.125)
    assert m.next_deadline() == 1.75
    probe = Probe(epoch=1, nonce=1, target=A, target_incarnation=1, requester=L)
    probes = [Send(to=n, message=probe) for n in (A, B, C)]
    assert m.handle(WAKE, 1.75) == [
        MemberSuspected(group=G, node=A),
        *probes,
        Multicast(message=Heartbeat(epoch=1, view_id=2)),
    ]
    assert m.next_deadline() == 2.0  # a probe round, before the next heartbeat at 2.5
    assert m.handle(WAKE, 2.0) == probes
    assert m.next_deadline() == 2.25
    survivors = [mem(B), mem(C), mem(L)]
    assert m.handle(WAKE, 2.25) == [
        MemberRemoved(group=G, node=A, reason="crashed"),
        ViewChanged(view=view(3, L, 1, *survivors)),
        Multicast(message=part(1, 3, survivors, gone=[(A, 1, 1)])),
    ]
    assert m.next_deadline() == 2.5
    ack_all(m, (B, C), 2.375)
    assert m.handle(WAKE, 2.5) == [Multicast(message=Heartbeat(epoch=1, view_id=3))]
    assert m.next_deadline() == 3.0  # 3 members: tick 0.5
    assert (m.stats.suspected, m.stats.removed, m.stats.probes_sent) == (1, 1, 6)


def test_member_leader_timeout_is_at_least_four_stretched_ticks() -> None:
    """Scaling (rule M6): a member of a view with a stretched tick reports its leader lost only
    after LEADER_TICKS ticks of silence."""
    cfg = attrs.evolve(EXACT, max_ack_rate=4.0)  # 4 members: tick 0.75, leader timeout 3.0
    m = machine(A, config=cfg)
    m.handle(Join(), 0.0)
    members = [mem(n) for n in (A, B, C, L)]
    m.handle(rcv(L, part(1, 2, members)), 0.25)
    assert m.next_deadline() == 3.25
    assert m.handle(WAKE, 3.25) == [LeaderLost(group=G, leader=L, epoch=Epoch(1))]


def test_indirect_probe_helpers_are_sampled_with_the_rng() -> None:
    """Detection (rule L3): with more candidates than indirect_probes, helpers come from the rng,
    sorted."""
    m = lead(A, B, C, D)
    ack_all(m, (B, C, D), 0.375)
    m.handle(WAKE, 0.5)
    ack_all(m, (B, C, D), 0.625)
    acts = m.handle(WAKE, 0.75)
    sends = [a.to for a in acts if isinstance(a, Send)]
    expected = sorted(random.Random(0).sample([B, C, D], 2))
    assert sends == [A, *expected]


def test_ack_clears_suspicion() -> None:
    """Detection (rule L3): an ack from a suspect clears the suspicion; probing stops."""
    m = lead(A, B, C)
    for t in (0.375, 0.625):
        ack_all(m, (B, C), t)
    m.handle(WAKE, 0.5)
    assert MemberSuspected(group=G, node=A) in m.handle(WAKE, 0.75)
    assert m.handle(rcv(A, HeartbeatAck(epoch=1, view_id=2)), 0.8) == []
    assert m.suspects == () and m.stats.false_suspicions_cleared == 1
    ack_all(m, (B, C), 0.875)
    assert m.handle(WAKE, 1.0) == [Multicast(message=Heartbeat(epoch=1, view_id=2))]


def test_relayed_probe_ack_clears_suspicion_only_with_its_nonce() -> None:
    """Detection (rule L3): a ProbeAck relayed by a helper clears the suspicion whose nonce it
    names."""
    m = lead(A, B, C)
    for t in (0.375, 0.625):
        ack_all(m, (B, C), t)
    m.handle(WAKE, 0.5)
    m.handle(WAKE, 0.75)
    wrong = ProbeAck(epoch=1, nonce=99, target=A, target_incarnation=1, requester=L)
    assert m.handle(rcv(B, wrong), 0.8) == []
    assert m.suspects == (A,) and m.stats.late_probe_acks == 1
    right = attrs.evolve(wrong, nonce=1)
    assert m.handle(rcv(B, right), 0.8) == []
    assert m.suspects == () and m.stats.false_suspicions_cleared == 1


def test_member_answers_probe_and_relays_indirect_probes() -> None:
    """Probes (rule M9): the target answers whoever asked; a helper relays the probe and the
    answer."""
    probe = Probe(epoch=1, nonce=5, target=A, target_incarnation=1, requester=L)
    answer = ProbeAck(epoch=1, nonce=5, target=A, target_incarnation=1, requester=L)
    a = follower(A, B)
    assert a.handle(rcv(L, probe), 0.3) == [Send(to=L, message=answer)]
    assert a.handle(rcv(B, probe), 0.3) == [Send(to=B, message=answer)]
    b = follower(B, A)
    assert b.handle(rcv(L, probe), 0.3) == [Send(to=A, message=probe)]
    assert b.handle(rcv(A, answer), 0.3) == [Send(to=L, message=answer)]
    assert b.stats.probes_relayed == 2
    # Not the leader's request, or not from the target: dropped.
    assert b.handle(rcv(C, probe), 0.3) == []
    assert b.handle(rcv(C, answer), 0.3) == []
    assert b.stats.dropped_probe == 2
    # A probe for an older life of A is not answered.
    assert a.handle(rcv(L, attrs.evolve(probe, target_incarnation=0)), 0.3) == []


# -------------------------------------------------------------------- leaving


def test_leave_notice_removes_member_at_once() -> None:
    """Leave (rule L6): the leader removes a member that sends LeaveNotice at once, reason left."""
    m = lead(A, B)
    rest = [mem(B), mem(L)]
    assert m.handle(rcv(A, LeaveNotice(epoch=1)), 0.3) == [
        MemberRemoved(group=G, node=A, reason="left"),
        ViewChanged(view=view(3, L, 1, *rest)),
        Multicast(message=part(1, 3, rest, gone=[(A, 1, 2)])),
    ]


def test_leave_command_multicasts_notice_and_goes_idle() -> None:
    """Leave (rule M10): the node multicasts a LeaveNotice, reports Left, and ignores the group
    after."""
    m = follower(A)
    assert m.handle(Leave(), 0.5) == [Multicast(message=LeaveNotice(epoch=1)), Left(group=G)]
    assert m.state == "idle" and m.view is None and m.next_deadline() is None
    assert m.handle(rcv(L, Heartbeat(epoch=1, view_id=2)), 0.6) == []
    assert m.stats.dropped_inactive == 1


def test_leader_that_left_rejoins_by_multicast() -> None:
    """Leave (rules M10, M7): a leader that left and joins again does not ask itself; it
    multicasts."""
    m = lead(A)
    assert m.handle(Leave(), 0.3) == [Multicast(message=LeaveNotice(epoch=1)), Left(group=G)]
    assert m.handle(Join(), 0.4) == []
    assert m.state == "joining" and m.leader == 0 and m.epoch == 1
    assert m.next_deadline() == 2.4  # it listens: the bootstrap at 2.4, a multicast at 3.4
    m.handle(WAKE, 2.4)
    assert m.handle(WAKE, 3.4) == [Multicast(message=JOIN)]


def test_member_reports_leader_lost_at_once_when_leader_leaves() -> None:
    """Leave (rule M6): a member whose leader sends LeaveNotice reports LeaderLost at once, once."""
    m = follower(A)
    lost = [LeaderLost(group=G, leader=L, epoch=Epoch(1))]
    assert m.handle(rcv(L, LeaveNotice(epoch=1)), 0.5) == lost
    assert m.handle(rcv(L, LeaveNotice(epoch=1)), 0.5) == []
    assert m.handle(WAKE, 2.0) == []


def test_a_stale_coordinator_of_a_leader_that_left_is_reported_lost_again() -> None:
    """Leave (rule M6): the election may take a Coordinator of the leader's term that was
    sent before its LeaveNotice and arrives after it (reordered); it names the leader and
    epoch already lost, and the member reports it lost again at once, so the election
    goes on instead of following a leader that never heartbeats again (fresh seed
    19,503,297: a broker followed a departed lead for 3.7 s, until a new lead removed it
    as crashed). A lost leader that did not leave and is heard alive is not reported."""
    m = follower(A)
    lost = [LeaderLost(group=G, leader=L, epoch=Epoch(1))]
    assert m.handle(rcv(L, LeaveNotice(epoch=1)), 0.5) == lost
    assert m.handle(LeaderElected(group=G, leader=L, epoch=Epoch(1)), 0.6) == lost
    timed_out = follower(A)
    assert timed_out.handle(WAKE, 5.0) == lost  # silent, not left
    assert timed_out.handle(LeaderElected(group=G, leader=L, epoch=Epoch(1)), 5.1) == []


def test_member_reports_removals_with_their_reasons() -> None:
    """Views (rule M4): members report every node a new view drops, with the leader's stated reason
    (a departure not announced is reported as crashed)."""
    m = follower(A, B, C, D)
    rest = [mem(A), mem(D, 2), mem(L)]
    gone = [(B, 1, 2), (D, 1, 3)]
    assert m.handle(rcv(L, part(1, 3, rest, gone)), 0.5) == [
        MemberRemoved(group=G, node=B, reason="left"),
        MemberRemoved(group=G, node=C, reason="crashed"),
        MemberRemoved(group=G, node=D, reason="replaced"),
        ViewChanged(view=view(3, L, 1, *rest)),
    ]


def test_member_left_out_of_a_view_reports_itself_and_joins_again() -> None:
    """Views (rule M5): a member missing from its leader's view reports its own removal and
    rejoins."""
    m = follower(A, B)
    assert m.handle(rcv(L, part(1, 3, [mem(B), mem(L)], gone=[(A, 1, 1)])), 0.5) == [
        MemberRemoved(group=G, node=A, reason="crashed"),
        Send(to=L, message=JOIN),
    ]
    assert m.state == "joining"
    assert m.handle(rcv(L, Heartbeat(epoch=1, view_id=3)), 0.6) == []  # no ack while out
    assert m.next_deadline() == 0.75


# ---------------------------------------------------------------- incarnations


def test_old_incarnation_is_dropped() -> None:
    """Incarnations (rule I1): messages from an older life of a member are dropped and counted."""
    m = lead(A)
    m.handle(rcv(A, JoinRequest(rank=0, broker_capable=0), inc=2), 0.3)
    m.handle(WAKE, 0.5)
    assert m.handle(rcv(A, HeartbeatAck(epoch=1, view_id=3), inc=1), 0.6) == []
    assert m.handle(rcv(A, LeaveNotice(epoch=1), inc=1), 0.6) == []
    assert m.stats.stale_incarnation == 2


def test_higher_incarnation_replaces_the_member() -> None:
    """Incarnations (rule L5): a join from a higher incarnation replaces the member (reason
    replaced)."""
    m = lead(A, B)
    assert m.handle(rcv(A, JOIN, inc=2), 0.3) == []
    ack_all(m, (A, B), 0.4)
    now = [mem(A, 2), mem(B), mem(L)]
    assert m.handle(WAKE, 0.5) == [
        MemberRemoved(group=G, node=A, reason="replaced"),
        ViewChanged(view=view(3, L, 1, *now)),
        Multicast(message=part(1, 3, now, gone=[(A, 1, 3)])),
        Multicast(message=Heartbeat(epoch=1, view_id=3)),
    ]


def test_own_messages_are_dropped() -> None:
    """Peers (rule I1): messages bearing this node's own id (loopback, older life) are dropped."""
    m = lead(A)
    assert m.handle(rcv(L, Heartbeat(epoch=1, view_id=2)), 0.3) == []
    assert m.stats.dropped_own == 1


# ---------------------------------------------------------------- epochs, leaders


def test_stale_epoch_is_refused() -> None:
    """Fencing (rules M1, E4): heartbeats, views and LeaderElected of an older epoch are refused and
    counted."""
    m = follower(A, B, epoch=2)
    assert m.handle(rcv(B, Heartbeat(epoch=1, view_id=9)), 0.5) == []
    assert m.handle(rcv(B, part(1, 9, [mem(A), mem(B)])), 0.5) == []
    assert m.handle(LeaderElected(group=G, leader=B, epoch=Epoch(1)), 0.5) == []
    assert m.stats.stale_epoch == 3
    assert m.leader == L and m.epoch == 2 and m.view is not None and m.view.view_id == 2


def test_foreign_epoch_heartbeat_is_refused_but_the_election_is_obeyed() -> None:
    """Fencing (epoch window; rules M1, E4): a heartbeat or view of an epoch more than EPOCH_WINDOW
    away from the one followed (foreign, neither newer nor older) is refused like an older one, so
    one forged datagram cannot move membership; LeaderElected of a foreign epoch is obeyed (the
    election is the authority, and it only goes there without a live leader)."""
    far = 2 + EPOCH_WINDOW + 1
    m = follower(A, B, epoch=2)
    assert m.handle(rcv(B, Heartbeat(epoch=far, view_id=9)), 0.5) == []
    assert m.handle(rcv(B, part(far, 9, [mem(A), mem(B)])), 0.5) == []
    assert (m.stats.stale_epoch, m.leader, m.epoch) == (2, L, 2)
    assert m.handle(LeaderElected(group=G, leader=B, epoch=Epoch(far)), 0.5) == []
    assert (m.leader, m.epoch) == (B, far)


def test_epochs_wrap_past_the_top() -> None:
    """Fencing (serial epochs; rule M1): epoch 1 is newer than 2**32-1, so a node that followed a
    (forged) leader of epoch 2**32-1 follows the next leader, of epoch 1; 2**32-1 is then older and
    refused."""
    top = 2**32 - 1
    m = follower(A, B, epoch=top)
    m.handle(rcv(B, Heartbeat(epoch=1, view_id=2)), 0.5)
    assert (m.leader, m.epoch) == (B, 1)
    assert m.handle(rcv(L, Heartbeat(epoch=top, view_id=9)), 0.6) == []
    assert m.handle(LeaderElected(group=G, leader=L, epoch=Epoch(top)), 0.6) == []
    assert m.stats.stale_epoch == 2


def test_view_ids_wrap_past_the_top() -> None:
    """View ids (serial, 64 bits; rule V1): the view after 2**64-1 is view 1, newer than it, so a
    forged view id at the top never stops a leader from making views (it used to raise)."""
    top = 2**64 - 1
    m = follower(A, B, view_id=top)
    assert m.handle(LeaderElected(group=G, leader=A, epoch=Epoch(2)), 0.5)[:2] == [
        ViewChanged(view=view(1, A, 2, mem(A), mem(B), mem(L))),
        Multicast(message=part(2, 1, [mem(A), mem(B), mem(L)])),
    ]
    b = follower(B, A, view_id=top)
    acts = b.handle(rcv(A, part(2, 1, [mem(A), mem(B), mem(L)])), 0.6)
    assert acts == [ViewChanged(view=view(1, A, 2, mem(A), mem(B), mem(L)))]


def test_view_id_far_off_is_foreign() -> None:
    """View ids (window; rule V1): an ack naming a view id more than VIEW_WINDOW from the leader's
    does not lift the leader (one forged ack cannot drag view ids anywhere), and a member holding a
    view id that far from its leader's installs the leader's views (a forged view cannot pin it):
    only a view id at most VIEW_WINDOW below its own is older."""
    far = 3 + VIEW_WINDOW + 1
    m = lead(A)
    assert m.handle(rcv(A, HeartbeatAck(epoch=1, view_id=far)), 0.3) == []
    assert m.view is not None and m.view.view_id == 2
    a = follower(A, B, view_id=far)
    assert a.handle(rcv(L, Heartbeat(epoch=1, view_id=3)), 0.5) == [
        Send(to=L, message=ViewRequest(epoch=1, view_id=far)),
        Send(to=L, message=HeartbeatAck(epoch=1, view_id=far)),
    ]
    assert a.handle(rcv(L, part(1, 3, [mem(A), mem(B), mem(L)])), 0.6) == [
        ViewChanged(view=view(3, L, 1, mem(A), mem(B), mem(L)))
    ]
    assert a.handle(rcv(L, part(1, 2, [mem(A), mem(L)])), 0.7) == []  # older: refused


def test_a_forged_life_of_the_leader_is_dropped_when_the_election_hears_it() -> None:
    """Incarnations (forged lives; rule I1): a forged view in the leader's name, listing it in a
    higher life, makes its real heartbeats stale; once they are missed (LeaderLost), a LeaderElected
    naming the same leader and epoch (the election heard it alive) drops the recorded life, and the
    real heartbeats are followed again. The view's incarnation of the followed leader never shuts
    them out: its lives are fenced by the leader rules."""
    m = follower(A, B)  # L in incarnation 1, epoch 1
    forged = [mem(A), mem(B), mem(L, inc=9)]
    assert m.handle(rcv(L, part(1, 3, forged), inc=9), 0.5)[-1] == ViewChanged(
        view=view(3, L, 1, *forged)
    )
    assert m.handle(rcv(L, Heartbeat(epoch=1, view_id=4)), 0.6) == []
    assert m.handle(WAKE, 1.5) == [LeaderLost(group=G, leader=L, epoch=Epoch(1))]
    assert m.handle(LeaderElected(group=G, leader=L, epoch=Epoch(1)), 1.6) == []
    assert m.handle(rcv(L, Heartbeat(epoch=1, view_id=4)), 1.7)[-1] == Send(
        to=L, message=HeartbeatAck(epoch=1, view_id=3)
    )


def test_second_leader_of_the_same_epoch_is_dropped() -> None:
    """Fencing (rule M1): a heartbeat from another node claiming the followed epoch is dropped."""
    m = follower(A, B)
    assert m.handle(rcv(B, Heartbeat(epoch=1, view_id=5)), 0.5) == []
    assert m.stats.conflicting_leader == 1


def test_leader_elected_naming_a_twin_of_the_same_epoch_is_followed() -> None:
    """Leadership (twins; rule E3): LeaderElected naming another leader of the epoch this node leads
    (the election settled a twin of a partition on the other one) makes it step down and follow that
    leader; its heartbeats are then acked (the other ones were refused before)."""
    m = lead(A)  # L leads epoch 1, view 2
    assert m.handle(rcv(B, Heartbeat(epoch=1, view_id=2)), 0.3) == []
    assert m.stats.conflicting_leader == 1
    assert m.handle(LeaderElected(group=G, leader=B, epoch=Epoch(1)), 0.35) == []
    assert not m.is_leader and m.leader == B and m.epoch == 1 and m.state == "member"
    assert m.stats.twin_leaders_resolved == 1
    assert m.next_deadline() == 1.35
    assert m.handle(WAKE, 0.5) == []  # no more heartbeats of its own
    assert m.handle(rcv(B, Heartbeat(epoch=1, view_id=2)), 0.6) == [
        Send(to=B, message=ViewRequest(epoch=1, view_id=2)),  # view 2 is L's, not B's
        Send(to=B, message=HeartbeatAck(epoch=1, view_id=2)),
    ]
    # B lifts its view above the request (see the leader's rule); L, left out, joins again.
    gone = m.handle(rcv(B, part(1, 3, [mem(B), mem(C)])), 0.7)
    assert gone == [MemberRemoved(group=G, node=L, reason="crashed"), Send(to=B, message=JOIN)]
    assert m.state == "joining"


def test_leader_elected_twin_makes_a_member_lead_the_epoch() -> None:
    """Leadership (twins; rule E1): LeaderElected naming this node for the epoch it follows under
    another leader makes it lead that epoch, above every view id it has seen."""
    m = follower(A, B)
    assert m.handle(LeaderElected(group=G, leader=A, epoch=Epoch(1)), 0.5) == [
        ViewChanged(view=view(3, A, 1, mem(A), mem(B), mem(L))),
        Multicast(message=part(1, 3, [mem(A), mem(B), mem(L)])),
        Multicast(message=Heartbeat(epoch=1, view_id=3)),
    ]
    assert m.is_leader and m.stats.twin_leaders_resolved == 1


def test_restarted_leader_of_the_same_epoch_is_followed() -> None:
    """Incarnations (rule M1): a heartbeat of the followed epoch from a higher incarnation of the
    followed leader (it restarted and the election accepted it again in that epoch) is accepted and
    its new life followed; the older life's late messages are then stale."""
    m = follower(A, B)
    assert m.handle(rcv(L, Heartbeat(epoch=1, view_id=1), inc=2), 0.5) == [
        Send(to=L, message=HeartbeatAck(epoch=1, view_id=2))
    ]
    assert m.stats.leader_restarts == 1 and m.next_deadline() == 1.5
    assert m.handle(rcv(L, Heartbeat(epoch=1, view_id=2), inc=1), 0.6) == []
    assert m.stats.stale_incarnation == 1
    # Its new life lifts its view above the ack and leaves A out: A joins again.
    assert m.handle(rcv(L, part(1, 3, [mem(L, 2)]), inc=2), 0.7) == [
        MemberRemoved(group=G, node=A, reason="crashed"),
        Send(to=L, message=JOIN),
    ]


def test_leader_lost_reported_once_and_rearmed_by_hearing_the_leader() -> None:
    """Leader loss (rule M6): leader_timeout without the leader -> LeaderLost once, not every
    tick; then (rule M11), while no leader is heard, a join request multicast every
    join_retry_max (without IP multicast a new leader that does not list this member would
    never reach it); hearing the leader again drops that timer."""
    r = EXACT.join_retry_max  # 1.0, no jitter
    m = follower(A)
    assert m.next_deadline() == 1.25
    assert m.handle(WAKE, 1.25) == [LeaderLost(group=G, leader=L, epoch=Epoch(1))]
    assert m.next_deadline() == 1.25 + r
    assert m.handle(WAKE, 1.25 + r) == [Multicast(message=JOIN)]
    assert m.next_deadline() == 1.25 + 2 * r
    m.handle(rcv(L, Heartbeat(epoch=1, view_id=2)), 3.0)
    assert m.next_deadline() == 4.0  # the join timer is gone with the loss
    assert m.handle(WAKE, 3.25) == []  # nothing sent where it would have been due
    assert m.handle(WAKE, 4.0) == [LeaderLost(group=G, leader=L, epoch=Epoch(1))]
    assert m.stats.leader_lost_reported == 2


def test_leader_timeout_scales_with_group_size() -> None:
    """Scaling (rule M6): leader_timeout * (1 + size_factor * log2(n)) for a view of n members."""
    cfg = attrs.evolve(EXACT, size_factor=0.5)
    m = machine(A, config=cfg)
    m.handle(Join(), 0.0)
    members = [mem(n) for n in (A, B, C, L)]
    m.handle(rcv(L, part(1, 2, members)), 0.25)
    assert m.next_deadline() == 0.25 + 1.0 * (1 + 0.5 * 2)
    assert cfg.scale(1) == 1.0 and cfg.scale(4) == 2.0


def test_becoming_leader_keeps_a_live_old_leader_as_a_member() -> None:
    """Leadership (rules E1, E2): LeaderElected(me) -> view id highest seen + 1, heartbeats; a
    change of leader alone removes nobody: an old leader still heard (bullied out) stays an ordinary
    member."""
    m = follower(B, A, C)
    m.handle(rcv(L, Heartbeat(epoch=1, view_id=5)), 0.5)  # B has seen view id 5
    everyone = [mem(A), mem(B), mem(C), mem(L)]
    assert m.handle(LeaderElected(group=G, leader=B, epoch=Epoch(2)), 0.75) == [
        ViewChanged(view=view(6, B, 2, *everyone)),
        Multicast(message=part(2, 6, everyone)),
        Multicast(message=Heartbeat(epoch=2, view_id=6)),
    ]
    assert m.is_leader and m.state == "leader" and m.next_deadline() == 1.0
    assert m.suspects == ()
    # The old leader hears the new epoch, steps down and acks like any member.
    ack_all(m, [A, C, L], 1.0, epoch=2)
    assert m.handle(WAKE, 1.0) == [Multicast(message=Heartbeat(epoch=2, view_id=6))]


def test_becoming_leader_suspects_a_lost_old_leader_then_removes_it() -> None:
    """Leadership (rule E2): an old leader reported lost stays in the first view but is suspected at
    once (probed directly and through helpers) and removed removal_timeout later if silent."""
    m = follower(B, A, C)
    assert m.handle(WAKE, 1.25) == [LeaderLost(group=G, leader=L, epoch=Epoch(1))]
    everyone = [mem(A), mem(B), mem(C), mem(L)]
    probe = Probe(epoch=2, nonce=1, target=L, target_incarnation=1, requester=B)
    assert m.handle(LeaderElected(group=G, leader=B, epoch=Epoch(2)), 1.5) == [
        ViewChanged(view=view(3, B, 2, *everyone)),
        Multicast(message=part(2, 3, everyone)),
        MemberSuspected(group=G, node=L),
        Send(to=L, message=probe),
        Send(to=A, message=probe),
        Send(to=C, message=probe),
        Multicast(message=Heartbeat(epoch=2, view_id=3)),
    ]
    assert m.suspects == (L,)
    ack_all(m, [A, C], 1.75, epoch=2)
    assert m.handle(WAKE, 1.75) == [
        Send(to=L, message=probe),
        Send(to=A, message=probe),
        Send(to=C, message=probe),
        Multicast(message=Heartbeat(epoch=2, view_id=3)),
    ]
    ack_all(m, [A, C], 2.0, epoch=2)
    rest = [mem(A), mem(B), mem(C)]
    assert m.handle(WAKE, 2.0) == [
        MemberRemoved(group=G, node=L, reason="crashed"),
        ViewChanged(view=view(4, B, 2, *rest)),
        Multicast(message=part(2, 4, rest, gone=[(L, 1, 1)])),
        Multicast(message=Heartbeat(epoch=2, view_id=4)),
    ]


def test_becoming_leader_keeps_a_lost_old_leader_that_answers() -> None:
    """Leadership (rule E2): a suspected old leader that answers a probe (it was only cut off) is
    cleared and stays a member: no false removal after a heal."""
    m = follower(B, A)
    m.handle(WAKE, 1.25)  # LeaderLost
    m.handle(LeaderElected(group=G, leader=B, epoch=Epoch(2)), 1.5)
    ack = ProbeAck(epoch=2, nonce=1, target=L, target_incarnation=1, requester=B)
    assert m.handle(rcv(L, ack), 1.6) == []
    assert m.suspects == () and m.stats.false_suspicions_cleared == 1
    ack_all(m, [A, L], 1.75, epoch=2)
    assert m.handle(WAKE, 1.75) == [Multicast(message=Heartbeat(epoch=2, view_id=3))]
    assert m.view is not None and set(m.view.nodes) == {A, B, L}


def test_becoming_leader_after_the_leader_left_says_left() -> None:
    """Leadership (rule E2): an old leader that sent LeaveNotice is removed with reason left."""
    m = follower(B, A)
    m.handle(rcv(L, LeaveNotice(epoch=1)), 0.5)
    acts = m.handle(LeaderElected(group=G, leader=B, epoch=Epoch(2)), 0.6)
    assert acts[0] == MemberRemoved(group=G, node=L, reason="left")


def test_bootstrap_leader_with_no_view_leads_alone() -> None:
    """Leadership (rule E1): a joiner elected with no view at all leads a view of itself."""
    m = machine(A)
    m.handle(Join(), 0.0)
    assert m.handle(LeaderElected(group=G, leader=A, epoch=Epoch(1)), 2.0) == [
        ViewChanged(view=view(1, A, 1, mem(A))),
        Multicast(message=part(1, 1, [mem(A)])),
        Multicast(message=Heartbeat(epoch=1, view_id=1)),
    ]
    assert m.next_deadline() == 2.25


def test_leader_elected_other_makes_a_joiner_ask_it() -> None:
    """Leadership (rules E3, M7): on LeaderElected(other), a node not in a view sends its join to
    other."""
    m = machine(A)
    m.handle(Join(), 0.0)
    assert m.handle(LeaderElected(group=G, leader=L, epoch=Epoch(1)), 0.125) == [
        Send(to=L, message=JOIN)
    ]
    assert m.leader == L
    assert m.next_deadline() == 0.375


def test_leader_steps_down_on_a_newer_leader() -> None:
    """Leadership (rule M1): a leader hearing a heartbeat of a newer epoch stops heartbeating and
    follows."""
    m = lead(A)
    assert m.handle(rcv(A, Heartbeat(epoch=2, view_id=2)), 0.3) == [
        Send(to=A, message=ViewRequest(epoch=1, view_id=2)),
        Send(to=A, message=HeartbeatAck(epoch=2, view_id=2)),
    ]
    assert not m.is_leader and m.leader == A and m.state == "member"
    assert m.next_deadline() == 1.3
    # LeaderElected of the same epoch and leader is then a no-op.
    assert m.handle(LeaderElected(group=G, leader=A, epoch=Epoch(2)), 0.4) == []


def test_leader_elected_stops_a_leader() -> None:
    """Leadership (rule E3): LeaderElected(other) with a newer epoch ends this node's
    heartbeating."""
    m = lead(A)
    assert m.handle(LeaderElected(group=G, leader=A, epoch=Epoch(2)), 0.3) == []
    assert m.state == "member" and m.next_deadline() == 1.3
    assert m.handle(WAKE, 0.5) == []


def test_leader_with_lower_view_id_is_lifted_by_member_view_request() -> None:
    """View ids only grow (rule L8): a new leader whose view id equals a member's (other epoch) goes
    above."""
    m = lead(A)  # view 2 of epoch 1
    acts = m.handle(rcv(A, ViewRequest(epoch=3, view_id=2)), 0.3)
    assert acts == [
        ViewChanged(view=view(3, L, 1, mem(A), mem(L))),
        Multicast(message=part(1, 3, [mem(A), mem(L)])),
    ]


# --------------------------------------------------------------- multi-part views


def test_view_of_300_members_is_split_and_reassembled() -> None:
    """Views (rule M4): a view larger than a datagram goes in parts; members install it when all
    arrived."""
    m = machine(L)
    m.handle(Join(), 0.0)
    m.handle(LeaderElected(group=G, leader=L, epoch=Epoch(1)), 0.0)
    others = list(range(100, 399))
    for n in others:
        m.handle(rcv(n, JOIN), 0.1)
    acts = m.handle(WAKE, 0.25)
    parts = [
        a.message for a in acts if isinstance(a, Multicast) and isinstance(a.message, ViewPart)
    ]
    n = len(parts)
    assert n == -(-300 // VIEW_ENTRIES_PER_PART) >= 4
    for p in parts:
        data = encode(G, L, 1, p)
        assert len(data) <= MAX_DATAGRAM
        assert decode(data).message == p
    full = view(2, L, 1, *[mem(n) for n in [*others, L]])
    assert acts[0] == ViewChanged(view=full)

    member = machine(100)
    member.handle(Join(), 0.0)
    order = [2, 0, 2, *range(3, n)]  # out of order, with a duplicate
    for i in order:
        assert member.handle(rcv(L, parts[i]), 0.3) == []
    assert member.handle(rcv(L, parts[1]), 0.3) == [ViewChanged(view=full)]
    assert member.view is not None and len(member.view.members) == 300
    assert list(member.view.nodes) == sorted(member.view.nodes)


def test_one_more_entry_than_fits_would_not_fit() -> None:
    """Views (rule L7): VIEW_ENTRIES_PER_PART is the most entries one datagram holds."""
    entries = tuple(ViewEntry(n, 1, 0, 0, 0) for n in range(1, VIEW_ENTRIES_PER_PART + 2))
    fits = ViewPart(epoch=1, view_id=1, part=0, parts=1, entries=entries[:-1])
    assert len(encode(G, L, 1, fits)) <= MAX_DATAGRAM
    with pytest.raises(ValueError, match="over the"):
        encode(G, L, 1, attrs.evolve(fits, entries=entries))


def test_newer_partial_view_replaces_older_assembly() -> None:
    """Views (rule M4): parts of a newer view abandon an unfinished older one; older parts are
    dropped."""
    m = follower(A)
    mk = [mem(A), mem(L)]

    def parted(view_id: int, i: int) -> ViewPart:
        return ViewPart(
            epoch=1, view_id=view_id, part=i, parts=2, entries=part(1, view_id, mk).entries[i:][:1]
        )

    assert m.handle(rcv(L, parted(3, 0)), 0.3) == []
    assert m.handle(rcv(L, parted(4, 0)), 0.3) == []
    assert m.handle(rcv(L, parted(3, 1)), 0.3) == []
    assert m.stats.dropped_old_view == 1
    assert m.handle(rcv(L, parted(4, 1)), 0.3) == [ViewChanged(view=view(4, L, 1, *mk))]


def test_view_not_listing_its_leader_is_dropped() -> None:
    """Views (rule M4): a view that does not list the leader that sent it is dropped and counted."""
    m = follower(A)
    assert m.handle(rcv(L, part(1, 3, [mem(A)])), 0.3) == []
    assert m.stats.dropped_bad_view == 1


# ---------------------------------------------------------------- misuse, config


def test_unknown_event_and_foreign_group_are_usage_errors() -> None:
    """Commands: an event the machine does not take, or another group's LeaderElected, raise."""
    m = machine(A)
    with pytest.raises(UsageError, match="does not handle"):
        m.handle(object(), 0.0)
    with pytest.raises(UsageError, match="group 8"):
        m.handle(LeaderElected(group=GroupId(8), leader=B, epoch=Epoch(1)), 0.0)
    with pytest.raises(UsageError, match="epoch >= 1"):
        m.handle(LeaderElected(group=G, leader=B, epoch=Epoch(0)), 0.0)


def test_other_messages_are_dropped_and_counted() -> None:
    """Peers: a message that is not a membership message is dropped and counted."""
    m = follower(A)
    assert m.handle(rcv(L, UAck(seq=1, receiver_incarnation=1, sender_incarnation=1)), 0.3) == []
    assert m.stats.unexpected == 1


def test_leader_bound_messages_at_a_member_are_dropped() -> None:
    """Peers (rule L9): joins, acks and view requests sent to a non-leader are dropped and
    counted."""
    m = follower(A, B)
    for msg in (JOIN, HeartbeatAck(epoch=1, view_id=2), ViewRequest(epoch=1, view_id=1)):
        assert m.handle(rcv(B, msg), 0.3) == []
    assert m.stats.dropped_not_leader == 3


@pytest.mark.parametrize(
    ("kwargs", "pattern"),
    [
        ({"heartbeat_interval": 0}, "heartbeat_interval is 0"),
        ({"heartbeat_interval": float("nan")}, "finite"),
        ({"suspect_timeout": 0.1}, "suspect_timeout .* must exceed heartbeat_interval"),
        ({"removal_timeout": 0.05}, "removal_timeout .* below heartbeat_interval"),
        ({"leader_timeout": 0.1}, "leader_timeout .* must exceed heartbeat_interval"),
        ({"join_timeout": 0.4}, "join_timeout .* below leader_timeout"),
        ({"max_ack_rate": -1.0}, "max_ack_rate is -1.0"),
        ({"join_retry": 0}, "join_retry is 0"),
        ({"join_backoff": 0.5}, "join_backoff"),
        ({"join_retry_max": 0.1}, "join_retry_max .* below join_retry"),
        ({"join_jitter": 2}, "join_jitter"),
        ({"size_factor": -1}, "size_factor"),
        ({"indirect_probes": -1}, "indirect_probes"),
        ({"departure_memory": 0}, "departure_memory"),
    ],
)
def test_config_errors(kwargs: dict[str, Any], pattern: str) -> None:
    """Config: values out of range and contradicting timeouts raise ConfigError saying what
    to fix."""
    with pytest.raises(ConfigError, match=pattern):
        MembershipConfig(**kwargs)


def test_bad_identity_is_config_error() -> None:
    """Config: the node's own id and incarnation must be in range."""
    with pytest.raises(ConfigError, match="not a node id"):
        machine(0)
    with pytest.raises(ConfigError, match="incarnation"):
        machine(A, inc=2**32)


def test_default_config_detects_a_crash_within_about_a_second() -> None:
    """Config: the defaults remove a crashed member of 8 within about 1 s of its last ack."""
    cfg = MembershipConfig()
    bound = (cfg.suspect_timeout + cfg.removal_timeout) * cfg.scale(8) + cfg.heartbeat_interval
    assert bound <= 1.0


# ------------------------------------------------------------------ property


_nodes = st.sampled_from([A, B, C, L])
_small = st.integers(0, 6)
_messages = st.one_of(
    st.builds(Heartbeat, epoch=st.integers(1, 4), view_id=_small),
    st.builds(HeartbeatAck, epoch=st.integers(1, 4), view_id=_small),
    st.builds(
        Probe,
        epoch=st.integers(1, 4),
        nonce=_small,
        target=_nodes,
        target_incarnation=st.integers(0, 2),
        requester=_nodes,
    ),
    st.builds(
        ProbeAck,
        epoch=st.integers(1, 4),
        nonce=_small,
        target=_nodes,
        target_incarnation=st.integers(0, 2),
        requester=_nodes,
    ),
    st.builds(JoinRequest, rank=_small, broker_capable=st.integers(0, 1)),
    st.builds(LeaveNotice, epoch=st.integers(0, 4)),
    st.builds(ViewRequest, epoch=st.integers(0, 4), view_id=_small),
    st.builds(
        lambda e, v, ms: part(e, v, [mem(n, i) for n, i in sorted(dict(ms).items())]),
        st.integers(1, 4),
        st.integers(1, 8),
        st.lists(st.tuples(_nodes, st.integers(0, 2)), max_size=4),
    ),
)
_events = st.one_of(
    st.builds(rcv, _nodes, _messages, st.integers(0, 2)),
    st.just(WAKE),
    st.builds(
        lambda n, e: LeaderElected(group=G, leader=n, epoch=Epoch(e)), _nodes, st.integers(1, 4)
    ),
)


@settings(max_examples=150, deadline=None)
@given(st.lists(st.tuples(_events, st.floats(0, 0.3)), max_size=40))
def test_peer_input_never_raises_and_view_ids_only_grow(
    script: list[tuple[Any, float]],
) -> None:
    """Peers cannot crash it: any sequence of messages, wake-ups and elections is taken
    without an exception, and the installed view id never goes down."""
    m = machine(A)
    m.handle(Join(), 0.0)
    now, last = 0.0, 0
    for event, dt in script:
        now += dt
        for act in m.handle(event, now):
            if isinstance(act, ViewChanged):
                assert act.view.view_id > last
                last = act.view.view_id
                assert list(act.view.nodes) == sorted(set(act.view.nodes))
        deadline = m.next_deadline()
        assert deadline is None or deadline >= 0


# ---------------------------------------------------------------- simulation


@attrs.define
class Sim:
    """5-10 machines on a lossy FakeNet; the test plays the election."""

    n: int
    loss: float
    seed: int
    config: MembershipConfig = DEFAULTS
    latency: float = 0.0005  # to 2 * latency, uniform
    net: FakeNet = attrs.field(init=False)
    machines: dict[int, MembershipMachine] = attrs.field(init=False)
    alive: set[int] = attrs.field(init=False)
    epoch: int = 0
    elected: int = 0
    election_due: float | None = None
    removals: list[tuple[float, int, int, str]] = attrs.Factory(list)  # time, observer, node
    view_ids: dict[int, list[int]] = attrs.Factory(dict)

    def __attrs_post_init__(self) -> None:
        self.net = FakeNet(
            rng=random.Random(self.seed),
            conditions=Conditions(latency=(self.latency, 2 * self.latency), loss=self.loss),
            record=False,
            max_spins=1000,
            observe=self.observe,
        )
        self.machines = {
            i: MembershipMachine(
                self.config,
                me=Member(node=NodeId(i), incarnation=Incarnation(1)),
                group=G,
                rng=random.Random(self.seed * 1000 + i),
            )
            for i in range(1, self.n + 1)
        }
        for i, m in self.machines.items():
            self.net.add(i, m)
        self.alive = set(self.machines)
        self.view_ids = {i: [] for i in self.machines}
        for i in sorted(self.machines):
            self.feed(i, Join())

    @property
    def now(self) -> float:
        return self.net.now

    def feed(self, node: int, event: Any) -> None:
        self.net.feed(node, event)

    def observe(self, addr: Address, event: object, actions: Sequence[object]) -> None:
        src = addr.node
        for act in actions:
            if isinstance(act, ViewChanged):
                self.view_ids[src].append(act.view.view_id)
            elif isinstance(act, MemberRemoved):
                self.removals.append((self.now, src, act.node, act.reason))
            elif (
                isinstance(act, LeaderLost)
                and self.elected not in self.alive
                and self.election_due is None
            ):
                self.election_due = self.now + 0.05
                self.net.call_at(self.election_due, self.elect)

    def elect(self) -> None:
        self.election_due = None
        self.epoch += 1
        self.elected = max(self.alive)
        for i in sorted(self.alive):
            self.feed(
                i, LeaderElected(group=G, leader=NodeId(self.elected), epoch=Epoch(self.epoch))
            )

    def crash(self, node: int) -> None:
        self.alive.discard(node)
        self.net.crash(node)

    def run(self, until: float) -> None:
        self.net.run(until)

    def settled(self) -> bool:
        """Every live node is in one view of the elected leader listing exactly the live nodes."""
        views = {self.machines[i].view for i in self.alive}
        if len(views) != 1:
            return False
        (v,) = views
        return v is not None and set(v.nodes) == self.alive and v.leader == self.elected

    def wrongful(self, since: float = 0.0) -> int:
        """Removals of a live node, as decided by its leader (one per removal)."""
        return sum(
            1
            for t, obs, node, _ in self.removals
            if t >= since and node in self.alive and obs == self.elected
        )


def start(n: int, loss: float, seed: int, settle: float = 5.0) -> Sim:
    """``n`` nodes join at time 0 and settle (bootstrap, election, admission) by ``settle``."""
    sim = Sim(n=n, loss=loss, seed=seed)
    sim.run(settle)
    assert sim.settled(), (sim.elected, {i: sim.machines[i].view for i in sim.alive})
    return sim


def crash_to_removal(sim: Sim, victim: int) -> float:
    """Crash ``victim``; run until every live node removed it; the time that took (s)."""
    t0 = sim.now
    sim.crash(victim)
    sim.run(t0 + 10.0)
    seen = {obs: t for t, obs, node, _ in sim.removals if node == victim and t >= t0}
    assert set(seen) >= sim.alive, f"not removed by {sorted(sim.alive - set(seen))}"
    return max(seen[i] for i in sim.alive) - t0


@pytest.mark.parametrize(("seed", "loss"), [(1, 0.0), (2, 0.1), (3, 0.1), (4, 0.3)])
def test_sim_crashed_member_is_removed_by_every_live_member_within_the_bound(
    seed: int, loss: float
) -> None:
    """Simulation: a crashed member is removed by every live member, within the detection bound
    plus a margin for views lost on the way; view ids only grow at every node."""
    sim = start(8, loss, seed)
    cfg = sim.config
    suspect, removal, _ = cfg.timeouts(8)
    tick = cfg.tick(8)
    # Suspected at the first check (a tick, or ack_wait after one) past the suspect
    # timeout; removed at the first probe round past the removal timeout.
    bound = suspect + removal + tick + cfg.probe_interval
    victim = sorted(sim.alive - {sim.elected})[seed % 7]
    took = crash_to_removal(sim, victim)
    # Margin: delivery at 0% loss; at 10-30% the removing view may be lost and re-fetched
    # (asked for when a heartbeat names it: a few ticks).
    assert took <= bound + {0.0: 0.01, 0.1: 3 * tick, 0.3: 10 * tick}[loss]
    for ids in sim.view_ids.values():
        assert ids == sorted(set(ids))


@pytest.mark.parametrize("loss", [0.0, 0.1])
def test_sim_crashed_leader_is_replaced_and_removed(loss: float) -> None:
    """Simulation: when the leader crashes, members report LeaderLost, the (test's) election
    names the highest live node, and every live node removes the old leader."""
    sim = start(6, loss, 11)
    old = sim.elected
    took = crash_to_removal(sim, old)
    cfg = sim.config
    # LeaderLost within the leader timeout of the last heartbeat (leader_timeout * s(n), at
    # least LEADER_TICKS ticks), the test's election 50 ms later, the new leader suspects
    # the old one at once and removes it after removal_timeout * s(n) (on its tick grid),
    # then the view reaches every member (at 10% loss possibly re-fetched).
    _, removal, leader = cfg.timeouts(6)
    detect = leader + 0.05
    remove = removal + cfg.tick(6)
    assert took <= detect + remove + {0.0: 0.01, 0.1: 0.3}[loss]
    sim.run(sim.now + 2.0)
    assert sim.elected != old and sim.settled()


def test_sim_no_live_member_is_removed_at_ten_percent_loss() -> None:
    """Simulation: over a long run at 10% loss no live member is removed, and view ids
    only grow."""
    sim = start(8, 0.1, 21)
    t0 = sim.now
    sim.run(t0 + 1200.0)
    assert sim.wrongful(t0) == 0
    assert sim.settled()
    for ids in sim.view_ids.values():
        assert ids == sorted(set(ids))
