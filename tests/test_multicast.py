"""Tests of powergrid.protocols.multicast: exact actions per rule, then seeded simulations."""

from __future__ import annotations

import random
from typing import Any

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from powergrid.errors import ConfigError, PayloadTooLargeError, UsageError
from powergrid.events import (
    DeadlineReached,
    Member,
    Multicast,
    Received,
    Send,
    View,
    ViewChanged,
)
from powergrid.protocols.multicast import (
    MAX_MULTICAST_PAYLOAD,
    STABLE_PER_DATAGRAM,
    STATUS_PER_DATAGRAM,
    Deliver,
    MulticastConfig,
    MulticastMachine,
    MulticastStats,
    Publish,
    WindowFull,
)
from powergrid.protocols.multicast._buffer import ResendBuffer
from powergrid.protocols.multicast._life import (
    CURRENT,
    PAST,
    TRANSITIONS,
    IllegalTransitionError,
    OriginLife,
    Phase,
    Trigger,
    next_phase,
)
from powergrid.testing import Conditions, FakeNet
from powergrid.types import Epoch, GroupId, Incarnation, NodeId
from powergrid.wire import (
    MAX_DATAGRAM,
    Data,
    Nak,
    Stable,
    StableEntry,
    Status,
    StatusEntry,
    Xmit,
    decode,
    encode,
)

A, B, C, D, E = (NodeId(n) for n in (1, 2, 3, 4, 5))
ME = C
I1, I2 = Incarnation(1), Incarnation(2)

CFG = MulticastConfig(status_jitter=0.0)
"""Defaults, without jitter, so that every deadline is exact."""


def machine(cfg: MulticastConfig = CFG, me: NodeId = ME) -> MulticastMachine:
    return MulticastMachine(cfg, me=me, incarnation=I1, rng=random.Random(7))


def view(*nodes: NodeId, leader: NodeId = A, view_id: int = 1) -> ViewChanged:
    members = tuple(Member(node=n, incarnation=I1) for n in sorted(nodes))
    return ViewChanged(
        view=View(group=GroupId(1), view_id=view_id, leader=leader, epoch=Epoch(1), members=members)
    )


def data(seq: int, sender: NodeId = A, inc: int = 1, payload: bytes = b"") -> Received:
    if not payload:
        payload = b"%d" % seq
    return Received(
        sender=sender, incarnation=Incarnation(inc), message=Data(seq=seq, kind=0, payload=payload)
    )


def deliver(seq: int, origin: NodeId = A, inc: int = 1, payload: bytes = b"") -> Deliver:
    if not payload:
        payload = b"%d" % seq
    return Deliver(origin=origin, incarnation=Incarnation(inc), seq=seq, kind=0, payload=payload)


def recv(sender: NodeId, message: Any, inc: int = 1) -> Received:
    return Received(sender=sender, incarnation=Incarnation(inc), message=message)


def stable(*entries: tuple[int, int, int, int], view_id: int = 1) -> Received:
    return recv(A, Stable(view_id=view_id, entries=tuple(StableEntry(*e) for e in entries)))


TICK = DeadlineReached()


# ------------------------------------------------------------------ publish


def test_publish_delivers_to_self_and_multicasts_numbered_data() -> None:
    """Interface (Publish; rule 10 keeps it for resends): Publish delivers to self at once
    and multicasts Data seq 1, 2, ..."""
    m = machine()
    assert m.handle(Publish(kind=3, payload=b"hi"), 0.0) == [
        Deliver(origin=ME, incarnation=I1, seq=1, kind=3, payload=b"hi"),
        Multicast(message=Data(seq=1, kind=3, payload=b"hi")),
    ]
    assert m.handle(Publish(kind=0, payload=b""), 0.0)[1] == Multicast(
        message=Data(seq=2, kind=0, payload=b"")
    )
    assert (m.stats.published, m.stats.delivered, m.buffer_size) == (2, 2, 2)
    assert m.next_deadline() is None  # no view, no coordinator: nobody to report to


def test_publish_rejects_misuse() -> None:
    """Interface (errors): a payload too large for an Xmit, or a bad kind, raises at Publish."""
    m = machine()
    with pytest.raises(PayloadTooLargeError):
        m.handle(Publish(kind=0, payload=b"x" * (MAX_MULTICAST_PAYLOAD + 1)), 0.0)
    with pytest.raises(UsageError):
        m.handle(Publish(kind=256, payload=b""), 0.0)
    with pytest.raises(UsageError):
        m.handle(Publish(kind=0, payload="text"), 0.0)  # type: ignore[arg-type]
    with pytest.raises(UsageError):
        m.handle(object(), 0.0)
    assert m.stats.published == 0
    # The largest payload still fits when resent inside an Xmit.
    big = Xmit(origin=A, origin_incarnation=1, seq=1, kind=0, payload=b"x" * MAX_MULTICAST_PAYLOAD)
    assert len(encode(1, B, 1, big)) == MAX_DATAGRAM


# ------------------------------------------------------------------ receiving


def test_in_order_delivered_and_duplicate_dropped() -> None:
    """Rule 3: FIFO exactly once: in-order Data is delivered, a duplicate dropped and counted."""
    m = machine()
    assert m.handle(data(1), 0.0) == [deliver(1)]
    assert m.handle(data(2), 0.0) == [deliver(2)]
    assert m.handle(data(2), 0.0) == []
    assert m.handle(data(1), 0.0) == []
    assert m.stats.duplicates == 2
    assert m.delivered[A] == (I1, 2)


def test_out_of_order_held_then_delivered_in_order() -> None:
    """Rule 3: a message ahead of a gap is held, then delivered after the gap fills."""
    m = machine()
    m.handle(data(1), 0.0)
    assert m.handle(data(4), 0.0) == []
    assert m.handle(data(3), 0.0) == []
    assert m.handle(data(3), 0.0) == []  # held already: a duplicate
    assert m.handle(data(2), 0.001) == [deliver(2), deliver(3), deliver(4)]
    assert m.stats.duplicates == 1
    assert m.next_deadline() is None  # the gap closed before its Nak was due


def test_the_hot_paths_do_what_handle_does() -> None:
    """Interface (hot paths): publish is handle(Publish), publish_data the same without
    the actions (the Data, or the WindowFull), deliver_next the in-order Data alone and
    nothing else (False, no state changed: handle then places it)."""
    a, b = machine(), machine()
    assert a.publish(3, b"hi", True, 0.0) == b.handle(Publish(kind=3, payload=b"hi"), 0.0)
    assert a.publish_data(0, b"x", True, 0.0) == Data(seq=2, kind=0, payload=b"x")
    assert (a.stats.published, a.stats.delivered, a.buffer_size) == (2, 2, 2)
    full = machine(MulticastConfig(status_jitter=0.0, send_window=1))
    full.publish_data(0, b"1", True, 0.0)
    assert full.publish_data(0, b"2", True, 0.0) == WindowFull(in_flight=1, window=1)
    assert full.publish(0, b"2", True, 0.0) == [WindowFull(in_flight=1, window=1)]
    m = machine()
    assert m.handle(data(1), 0.0) == [deliver(1)]  # the life is known from here on
    assert m.deliver_next(A, I1, data(2).message, 0.0)
    assert m.delivered[A] == (I1, 2)
    assert not m.deliver_next(A, I1, data(4).message, 0.0)  # ahead of a gap
    assert not m.deliver_next(A, I2, data(3).message, 0.0)  # another life
    assert not m.deliver_next(B, I1, data(1, sender=B).message, 0.0)  # an unknown origin
    assert m.delivered[A] == (I1, 2) and B not in m.delivered
    assert (m.stats.delivered, m.buffer_size) == (2, 2)
    assert m.handle(data(4), 0.0) == []  # held
    assert not m.deliver_next(A, I1, data(3).message, 0.0)  # next, but a message is held
    assert m.handle(data(3), 0.0) == [deliver(3), deliver(4)]


def test_hold_next_holds_what_handle_holds() -> None:
    """Interface (hot paths): hold_next takes the Data after the highest seen of a life
    whose gap has its Nak timer, as handle would (held, the same Naks and deliveries
    after), and nothing else (False, no state changed)."""
    fast, slow = machine(), machine()
    for m in (fast, slow):
        m.handle(view(ME, A), 0.0)
        m.handle(data(1), 0.0)
    assert not fast.hold_next(A, I1, data(2).message, 0.0)  # in order: deliver_next's
    assert not fast.hold_next(A, I1, data(4).message, 0.0)  # opens the gap: handle's
    for m in (fast, slow):
        assert m.handle(data(4), 0.0) == []
    assert not fast.hold_next(A, I1, data(6).message, 0.0)  # shows a new gap (5)
    assert not fast.hold_next(A, I2, data(5).message, 0.0)  # another life
    assert not fast.hold_next(B, I1, data(5, sender=B).message, 0.0)  # an unknown origin
    assert (fast.stats.delivered, fast.next_deadline()) == (slow.stats.delivered, 0.0)
    due = fast.next_deadline()
    assert due is not None
    naks = fast.handle(DeadlineReached(), due)
    assert naks == slow.handle(DeadlineReached(), due)
    assert [a.message.first for a in naks] == [2]
    for seq in range(5, 9):  # the stream goes on while the gap is repaired
        assert fast.hold_next(A, I1, data(seq).message, 0.01)
        assert slow.handle(data(seq), 0.01) == []
    assert fast.next_deadline() == slow.next_deadline()
    assert fast.handle(data(2), 0.02) == slow.handle(data(2), 0.02)  # the repair (a Data)
    assert fast.handle(data(3), 0.02) == [deliver(s) for s in range(3, 9)]
    assert slow.handle(data(3), 0.02) == [deliver(s) for s in range(3, 9)]
    assert fast.next_deadline() == slow.next_deadline()
    assert fast.stats == slow.stats


def test_held_beyond_max_held_dropped_and_counted() -> None:
    """Rule 3: at most max_held messages are held per origin; beyond, dropped and counted."""
    m = machine(MulticastConfig(status_jitter=0.0, max_held=2))
    m.handle(data(1), 0.0)
    for seq in (3, 4, 5):
        assert m.handle(data(seq), 0.0) == []
    assert m.stats.held_dropped == 1
    assert m.handle(data(2), 0.0) == [deliver(2), deliver(3), deliver(4)]


def test_a_full_hold_keeps_the_messages_nearest_the_gap() -> None:
    """Rule 3: when max_held is reached, the held message farthest ahead makes room for a
    nearer one (repair answers arrive in any order), and is repaired later."""
    m = machine(MulticastConfig(status_jitter=0.0, max_held=2))
    m.handle(data(1), 0.0)
    for seq in (9, 8):  # the newest stream messages fill the hold
        assert m.handle(data(seq), 0.0) == []
    assert m.handle(data(3), 0.0) == []  # nearer: 9 goes
    assert m.handle(data(4), 0.0) == []  # nearer: 8 goes
    assert m.handle(data(7), 0.0) == []  # the farthest: itself dropped
    assert m.stats.held_dropped == 3
    assert m.handle(data(2), 0.0) == [deliver(2), deliver(3), deliver(4)]


def test_stale_incarnation_dropped() -> None:
    """Rule 1: Data of a lower incarnation than known is stale: dropped and counted."""
    m = machine()
    m.handle(data(1, inc=2), 0.0)
    assert m.handle(data(2, inc=1), 0.0) == []
    assert m.stats.stale == 1


def test_higher_incarnation_resets_stream() -> None:
    """Rules 1 and 23: a higher incarnation resets the origin: its new life starts at 1; the old
    life's buffer is kept for flush_grace (see the retired-life tests), then dropped."""
    m = machine()
    m.handle(data(1), 0.0)
    m.handle(data(2), 0.0)
    assert m.buffer_size == 2
    assert m.handle(data(1, inc=2, payload=b"new"), 0.0) == [deliver(1, inc=2, payload=b"new")]
    assert m.buffer_size == 3
    assert m.delivered[A] == (I2, 1)
    # A restarted origin we knew, seen first at seq 3: it started at 1, so ask for 1..2.
    m.handle(data(3, inc=3), 0.0)
    assert m.handle(TICK, CFG.nak_delay) == [
        Send(to=A, message=Nak(origin=A, origin_incarnation=3, first=1, last=2))
    ]
    assert m.buffer_size == 1  # life 2's one message; life 1 gave way to it
    m.handle(TICK, CFG.flush_grace)
    assert m.buffer_size == 0


def test_a_life_the_view_does_not_list_is_dropped_after_grace() -> None:
    """Rule 2 (unlisted life): the state of an origin's life that the view does not list (a
    restart not admitted yet, or a forged incarnation) is kept for flush_grace, then
    dropped, unless a view lists that life by then; the listed life, retired meanwhile, is
    then taken again (resuming after what was delivered of it, remembered when it was
    dropped), so a forged incarnation cannot shut it out for good."""
    m = machine()
    m.handle(view(A, B, ME), 0.0)
    m.handle(data(1), 0.0)
    assert m.handle(data(1, inc=9, payload=b"forged"), 0.5) == [
        deliver(1, inc=9, payload=b"forged")
    ]
    # the listed life is retired meanwhile (rule "retired lives"): still delivered
    assert m.handle(data(2), 0.6) == [deliver(2)]
    m.handle(TICK, 0.5 + CFG.flush_grace - 0.01)
    assert m.delivered[A] == (9, 1)
    m.handle(TICK, 0.5 + CFG.flush_grace)
    assert A not in m.delivered
    assert m.handle(data(3), 2.6) == [deliver(3)]  # resumes after what was delivered
    assert m.handle(stable((A, 1, 2, 3)), 2.7) == []
    # A view that lists the new life ends its grace: nothing is dropped.
    r = machine()
    r.handle(view(A, B, ME), 0.0)
    r.handle(data(1, inc=2), 0.5)
    listed = tuple(Member(node=n, incarnation=I2 if n == A else I1) for n in (A, B, ME))
    r.handle(
        ViewChanged(
            view=View(group=GroupId(1), view_id=2, leader=A, epoch=Epoch(1), members=listed)
        ),
        0.6,
    )
    r.handle(TICK, 2.6)
    assert r.handle(data(2, inc=2), 3.0) == [deliver(2, inc=2)]


def test_digests_never_start_a_life_the_view_does_not_list() -> None:
    """Rule 2 (unlisted life): a Stable (or Status) entry for an origin the view lists in
    another life is ignored: digests cannot start or keep alive a forged incarnation."""
    m = machine()
    m.handle(view(A, B, ME), 0.0)
    assert m.handle(stable((B, 7, 5, 9)), 0.1) == []
    assert B not in m.delivered
    coord = machine(me=A)
    coord.handle(view(A, B, ME), 0.0)
    entries = (StatusEntry(origin=ME, incarnation=7, delivered=4, low=0),)
    coord.handle(recv(B, Status(view_id=1, entries=entries)), 0.1)
    assert ME not in coord.delivered


def test_xmit_handled_like_data() -> None:
    """Rule 4: an Xmit (from any holder) is handled like the Data it carries."""
    m = machine()
    xmit = Xmit(origin=A, origin_incarnation=1, seq=1, kind=0, payload=b"1")
    assert m.handle(recv(B, xmit), 0.0) == [deliver(1)]
    assert m.handle(recv(D, xmit), 0.0) == []
    assert m.stats.duplicates == 1


def test_own_messages_echoed_back_are_ignored() -> None:
    """Interface (own datagrams): Data claiming to be ours (the node filters them) is
    dropped, never delivered."""
    m = machine()
    m.handle(Publish(kind=0, payload=b"a"), 0.0)
    assert m.handle(data(2, sender=ME), 0.0) == []
    assert m.stats.ignored == 1


# ------------------------------------------------------------------ resend requester


def gap_machine(cfg: MulticastConfig = CFG) -> MulticastMachine:
    """Knows A; has delivered A's 1 and holds 3: message 2 is missing."""
    m = machine(cfg)
    m.handle(view(A, B, ME, D), 0.0)
    m.handle(data(1), 0.0)
    assert m.handle(data(3), 0.0) == []
    return m


def test_gap_naks_origin_after_exactly_nak_delay() -> None:
    """Rule 5: a gap waits nak_delay, then a Nak for the missing range goes to the origin."""
    m = gap_machine()
    assert m.next_deadline() == CFG.nak_delay
    assert m.handle(TICK, CFG.nak_delay - 0.001) == []
    assert m.handle(TICK, CFG.nak_delay) == [
        Send(to=A, message=Nak(origin=A, origin_incarnation=1, first=2, last=2))
    ]
    assert m.next_deadline() == CFG.nak_delay + CFG.nak_interval
    assert m.stats.naks_sent == 1


def test_nak_repeats_rate_limited_then_escalates_to_group_with_rotating_helper() -> None:
    """Rules 5 and 6: Naks repeat once per nak_interval; after nak_escalate_after tries they are
    multicast with a helper: the coordinator first, then the other members by id."""
    m = gap_machine()
    t = CFG.nak_delay
    nak = Nak(origin=A, origin_incarnation=1, first=2, last=2)
    assert m.handle(TICK, t) == [Send(to=A, message=nak)]
    assert m.handle(TICK, t + CFG.nak_interval / 2) == []  # rate limit
    t += CFG.nak_interval
    assert m.handle(TICK, t) == [Send(to=A, message=nak)]
    # A is both origin and coordinator here, so helpers are B, then D, then B again.
    for helper in (B, D, B):
        t += CFG.nak_interval
        assert m.handle(TICK, t) == [
            Multicast(message=Nak(origin=A, origin_incarnation=1, first=2, last=2, helper=helper))
        ]
    assert (m.stats.naks_sent, m.stats.naks_group) == (5, 3)
    # The gap closes: the timer stops.
    m.handle(recv(B, Xmit(origin=A, origin_incarnation=1, seq=2, kind=0, payload=b"2")), t)
    assert m.delivered[A] == (I1, 3)
    assert m.next_deadline() == CFG.status_interval  # only the Status report (armed at 0) is left


def test_group_nak_helper_is_the_coordinator_first() -> None:
    """Rule 6: the first group round asks the view's coordinator (when not the origin)."""
    m = machine(MulticastConfig(status_jitter=0.0, nak_escalate_after=0))
    m.handle(view(A, B, ME, D, leader=D), 0.0)
    m.handle(data(2, sender=B), 0.0)  # unknown origin, seq 2: held until a Stable
    m.handle(recv(D, Stable(view_id=1, entries=(StableEntry(B, 1, 0, 2),))), 0.0)
    assert m.handle(TICK, CFG.nak_delay) == [
        Multicast(message=Nak(origin=B, origin_incarnation=1, first=1, last=1, helper=D))
    ]


def test_origin_not_in_view_naked_through_group_at_once() -> None:
    """Rule 6: if the origin left the view, its gaps are asked of the group at once."""
    m = gap_machine()
    m.handle(view(B, ME, D, leader=B, view_id=2), 0.0)
    assert m.handle(TICK, CFG.nak_delay) == [
        Multicast(message=Nak(origin=A, origin_incarnation=1, first=2, last=2, helper=B))
    ]


def test_nak_range_capped_at_max_nak_range() -> None:
    """Rule 5: one Nak asks for at most max_nak_range messages, from the first missing one."""
    cfg = MulticastConfig(status_jitter=0.0, max_nak_range=10)
    m = machine(cfg)
    m.handle(data(1), 0.0)
    m.handle(data(100), 0.0)
    assert m.handle(TICK, cfg.nak_delay) == [
        Send(to=A, message=Nak(origin=A, origin_incarnation=1, first=2, last=11))
    ]


def test_every_missing_range_in_the_window_is_asked_for_at_once() -> None:
    """Rule 5: one Nak round asks for every missing range within max_nak_range after the
    delivered point, so repair keeps up with scattered loss (one range a round does not)."""
    cfg = MulticastConfig(status_jitter=0.0, max_nak_range=10)
    m = machine(cfg)
    m.handle(data(1), 0.0)
    for seq in (3, 6, 7, 20):
        m.handle(data(seq), 0.0)
    assert m.handle(TICK, cfg.nak_delay) == [
        Send(to=A, message=Nak(origin=A, origin_incarnation=1, first=2, last=2)),
        Send(to=A, message=Nak(origin=A, origin_incarnation=1, first=4, last=5)),
        Send(to=A, message=Nak(origin=A, origin_incarnation=1, first=8, last=11)),
    ]
    assert m.stats.naks_sent == 3


def test_a_fresh_gap_is_asked_at_once_while_re_asks_wait() -> None:
    """Rule 5: a gap no Nak has asked for yet is asked nak_delay after it appears, even
    within nak_interval of the last Nak; only the ranges already asked wait for the re-ask,
    and a fresh-only Nak is not a try."""
    cfg = MulticastConfig(status_jitter=0.0, nak_delay=0.002)
    m = machine(cfg)
    m.handle(view(A, B, ME, D), 0.0)
    m.handle(data(1), 0.0)
    m.handle(data(3), 0.0)
    gap2 = Send(to=A, message=Nak(origin=A, origin_incarnation=1, first=2, last=2))
    assert m.handle(TICK, 0.002) == [gap2]
    m.handle(data(5), 0.010)  # a new gap at 4, 8 ms after the first Nak
    assert m.next_deadline() == pytest.approx(0.012)
    assert m.handle(TICK, 0.012) == [
        Send(to=A, message=Nak(origin=A, origin_incarnation=1, first=4, last=4))
    ]
    m.handle(data(6), 0.013)  # in order behind the gap: nothing fresh, no early Nak
    assert m.next_deadline() == pytest.approx(0.002 + cfg.nak_interval)
    assert m.handle(TICK, 0.002 + cfg.nak_interval) == [
        gap2,
        Send(to=A, message=Nak(origin=A, origin_incarnation=1, first=4, last=4)),
    ]
    assert m.stats.naks_sent == 4


def test_re_asks_follow_the_measured_repair_round_trip() -> None:
    """Rule 5: re-asks wait four smoothed repair round trips (a Nak to the delivery it
    brought), no less than nak_interval / 10 and no more than nak_interval."""
    m = gap_machine()
    assert m.handle(TICK, 0.0) == [
        Send(to=A, message=Nak(origin=A, origin_incarnation=1, first=2, last=2))
    ]
    m.handle(recv(A, xmit(2)), 0.004)  # a 4 ms round trip
    m.handle(data(5), 0.010)  # a fresh gap at 4: asked at once
    assert m.handle(TICK, 0.010) == [
        Send(to=A, message=Nak(origin=A, origin_incarnation=1, first=4, last=4))
    ]
    # the next re-ask: four round trips after the last one (at 0), not nak_interval
    assert m.next_deadline() == pytest.approx(4 * 0.004)
    m2 = gap_machine()
    m2.handle(TICK, 0.0)
    m2.handle(recv(A, xmit(2)), 0.0001)  # a 0.1 ms round trip: floored
    m2.handle(data(5), 0.010)
    m2.handle(TICK, 0.010)  # a re-ask (0.005 after the last): the next one waits the floor
    assert m2.next_deadline() == pytest.approx(0.010 + CFG.nak_interval / 10)


# ------------------------------------------------------------------ answering Naks


def holder(count: int, cfg: MulticastConfig = CFG) -> MulticastMachine:
    """Delivered A's messages 1..count (kept in its resend buffer)."""
    m = machine(cfg)
    m.handle(view(A, B, ME, D, E), 0.0)
    for seq in range(1, count + 1):
        m.handle(data(seq), 0.0)
    return m


def xmit(seq: int, origin: NodeId = A) -> Xmit:
    return Xmit(origin=origin, origin_incarnation=1, seq=seq, kind=0, payload=b"%d" % seq)


def test_holder_answers_unicast_nak_with_xmits() -> None:
    """Rules 8 and 9: any holder answers a unicast Nak with one Xmit per message it holds."""
    m = holder(3)
    nak = Nak(origin=A, origin_incarnation=1, first=2, last=9)
    assert m.handle(recv(B, nak), 0.0) == [Send(to=B, message=xmit(2)), Send(to=B, message=xmit(3))]
    assert m.stats.xmits_sent == 2


def test_origin_answers_nak_for_its_own_messages() -> None:
    """Rule 8: the origin resends its own messages as Xmits, each of its kind (the buffer
    keeps an app message's payload alone, any other's kind with it)."""
    m = machine()
    m.handle(Publish(kind=1, payload=b"p"), 0.0)
    m.handle(Publish(kind=0, payload=b"q"), 0.0)
    nak = Nak(origin=ME, origin_incarnation=1, first=1, last=2)
    assert m.handle(recv(B, nak), 0.0) == [
        Send(to=B, message=Xmit(origin=ME, origin_incarnation=1, seq=1, kind=1, payload=b"p")),
        Send(to=B, message=Xmit(origin=ME, origin_incarnation=1, seq=2, kind=0, payload=b"q")),
    ]


def test_group_nak_answered_only_by_origin_and_helper() -> None:
    """Rule 8: a group Nak is answered by its helper (and the origin), nobody else."""
    m = holder(2)
    to_d = Nak(origin=A, origin_incarnation=1, first=1, last=1, helper=D)
    to_me = Nak(origin=A, origin_incarnation=1, first=1, last=1, helper=ME)
    assert m.handle(recv(B, to_d), 0.0) == []
    assert m.handle(recv(B, to_me), 0.0) == [Send(to=B, message=xmit(1))]
    assert m.stats.ignored == 1


def test_nak_answer_range_capped_and_rate_limited_per_requester() -> None:
    """Rule 9: a request storm is capped: max_nak_range per Nak and
    max_xmit_per_interval per requester per nak_interval; the rest is counted."""
    cfg = MulticastConfig(status_jitter=0.0, max_nak_range=4, max_xmit_per_interval=6)
    m = holder(20, cfg)
    nak = Nak(origin=A, origin_incarnation=1, first=1, last=20)
    assert m.handle(recv(B, nak), 0.0) == [Send(to=B, message=xmit(s)) for s in (1, 2, 3, 4)]
    assert m.handle(recv(B, nak), 0.01) == [Send(to=B, message=xmit(s)) for s in (1, 2)]
    assert m.handle(recv(B, nak), 0.02) == []
    assert m.stats.xmits_rate_limited == 6
    # Another requester has its own budget; B's refills after nak_interval.
    assert len(m.handle(recv(D, nak), 0.02)) == 4
    assert len(m.handle(recv(B, nak), cfg.nak_interval)) == 4
    assert m.stats.xmits_sent == 14


def test_nak_of_other_incarnation_not_answered() -> None:
    """Rules 9 and 23: once flush_grace has passed, neither the retired life 1 nor life 2 (which the
    view never listed) is known any more: a Nak for either life, or an unknown one, is
    ignored and answered by nothing."""
    m = holder(2)
    m.handle(data(1, inc=2), 0.0)
    m.handle(TICK, CFG.flush_grace)
    assert m.handle(recv(B, Nak(origin=A, origin_incarnation=1, first=1, last=1)), 2.0) == []
    assert m.handle(recv(B, Nak(origin=A, origin_incarnation=3, first=1, last=1)), 2.0) == []
    assert (m.stats.stale, m.stats.ignored) == (0, 2)


# ------------------------------------------------------------------ stability


def test_member_reports_status_while_it_buffers_and_goes_quiet_when_stable() -> None:
    """Rule 11: a member unicasts Status to the coordinator every status_interval while it
    holds unstable messages; Stable drops them; then the member is quiet."""
    m = machine()
    assert m.handle(view(A, B, ME), 0.0) == []
    assert m.next_deadline() is None
    m.handle(data(1), 0.0)
    m.handle(data(1, sender=B), 0.0)
    assert m.next_deadline() == CFG.status_interval
    status = Status(
        view_id=1, entries=(StatusEntry(A, 1, 1), StatusEntry(B, 1, 1), StatusEntry(ME, 1, 0))
    )
    assert m.handle(TICK, CFG.status_interval) == [Send(to=A, message=status)]
    assert m.next_deadline() == 2 * CFG.status_interval
    assert m.handle(stable((A, 1, 1, 1), (B, 1, 0, 1), (ME, 1, 0, 0)), 0.3) == []
    assert m.buffer_size == 1  # B's message is not stable yet
    assert m.handle(stable((A, 1, 1, 1), (B, 1, 1, 1), (ME, 1, 0, 0)), 0.4) == []
    assert m.buffer_size == 0
    assert m.next_deadline() is None


def test_coordinator_stable_is_min_over_members_and_unreported_member_holds_it() -> None:
    """Rule 12: stable = min delivered over the view's members (the coordinator's own
    included); a member that has not reported keeps it where it is; highest = max seen."""
    m = machine(me=A)
    out = m.handle(view(A, B, D), 0.0)  # coordinator: one Stable at once
    assert out == [Multicast(message=Stable(view_id=1, entries=(StableEntry(A, 1, 0, 0),)))]
    m.handle(Publish(kind=0, payload=b"a"), 0.0)
    m.handle(Publish(kind=0, payload=b"b"), 0.0)
    m.handle(recv(B, Status(view_id=1, entries=(StatusEntry(A, 1, 2),))), 0.01)
    assert m.handle(TICK, CFG.stable_interval) == [
        Multicast(message=Stable(view_id=1, entries=(StableEntry(A, 1, 0, 2),)))
    ]
    assert m.buffer_size == 2
    m.handle(recv(D, Status(view_id=1, entries=(StatusEntry(A, 1, 1),))), 0.3)
    assert m.handle(TICK, 2 * CFG.stable_interval) == [
        Multicast(message=Stable(view_id=1, entries=(StableEntry(A, 1, 1, 2),)))
    ]
    assert m.buffer_size == 1
    m.handle(recv(D, Status(view_id=1, entries=(StatusEntry(A, 1, 2),))), 0.6)
    assert m.handle(TICK, 3 * CFG.stable_interval) == [
        Multicast(message=Stable(view_id=1, entries=(StableEntry(A, 1, 2, 2),)))
    ]
    assert m.buffer_size == 0
    assert m.next_deadline() is None  # all stable and the repeats are spent


def test_report_of_a_restarted_member_is_dropped_with_its_old_life() -> None:
    """Rule 12: the coordinator computes stable from the reports of the members of its current
    view; a member that comes back as a new incarnation (a restart) has delivered nothing
    its old life reported, so that report is dropped at the view change and the new life
    holds stable where it is until it reports. (Kept, it made the coordinator declare
    stable what the new life lacked, and skip nothing it had lost: seed 5666.)"""
    m = machine(me=A)
    m.handle(view(A, B, D), 0.0)
    m.handle(Publish(kind=0, payload=b"a"), 0.0)
    m.handle(Publish(kind=0, payload=b"b"), 0.0)
    m.handle(recv(D, Status(view_id=1, entries=(StatusEntry(A, 1, 2),))), 0.1)
    members = (Member(node=A, incarnation=I1), Member(node=B, incarnation=I1))
    members += (Member(node=D, incarnation=I2),)
    again = View(group=GroupId(1), view_id=2, leader=A, epoch=Epoch(1), members=members)
    assert m.handle(ViewChanged(view=again), 0.2) == [
        Multicast(message=Stable(view_id=2, entries=(StableEntry(A, 1, 0, 2),)))
    ]
    m.handle(recv(B, Status(view_id=2, entries=(StatusEntry(A, 1, 2),))), 0.3)
    assert m.handle(TICK, 0.2 + CFG.stable_interval) == [
        Multicast(message=Stable(view_id=2, entries=(StableEntry(A, 1, 0, 2),)))
    ]
    assert m.buffer_size == 2  # D's new life may still need both
    m.handle(recv(D, Status(view_id=2, entries=(StatusEntry(A, 1, 2),)), inc=2), 0.5)
    assert m.handle(TICK, 0.2 + 2 * CFG.stable_interval) == [
        Multicast(message=Stable(view_id=2, entries=(StableEntry(A, 1, 2, 2),)))
    ]
    assert m.buffer_size == 0


def test_coordinator_learns_highest_from_status_and_repeats_after_view_change() -> None:
    """Rule 12: after a view change the coordinator sends Stable at once and stable_repeats
    more; a Status showing a message it missed makes it nak."""
    cfg = MulticastConfig(status_jitter=0.0, stable_repeats=1)
    m = machine(cfg, me=A)
    m.handle(view(A, B), 0.0)
    m.handle(recv(B, Status(view_id=1, entries=(StatusEntry(B, 1, 1),))), 0.0)
    assert m.next_deadline() == cfg.nak_delay
    assert m.handle(TICK, cfg.nak_delay) == [
        Send(to=B, message=Nak(origin=B, origin_incarnation=1, first=1, last=1))
    ]
    m.handle(recv(B, Xmit(origin=B, origin_incarnation=1, seq=1, kind=0, payload=b"1")), 0.1)
    entries = (StableEntry(A, 1, 0, 0), StableEntry(B, 1, 1, 1))
    assert m.handle(TICK, cfg.stable_interval) == [
        Multicast(message=Stable(view_id=1, entries=entries))
    ]
    assert m.next_deadline() is None


def test_status_and_stable_from_wrong_roles_or_views_dropped() -> None:
    """Rule 14: Status to a non-coordinator, Status from a non-member, Stable of an older
    view or from a non-coordinator are dropped and counted."""
    m = machine()
    m.handle(view(A, B, ME, view_id=5), 0.0)
    assert m.handle(recv(B, Status(view_id=5, entries=())), 0.0) == []
    assert m.handle(stable((A, 1, 0, 3), view_id=4), 0.0) == []
    assert m.handle(recv(B, Stable(view_id=5, entries=(StableEntry(A, 1, 0, 3),))), 0.0) == []
    assert (m.stats.ignored, m.stats.stale) == (2, 1)
    coord = machine(me=A)
    coord.handle(view(A, B), 0.0)
    assert coord.handle(recv(D, Status(view_id=1, entries=())), 0.0) == []
    assert coord.stats.stale == 1
    assert m.next_deadline() is None


def test_origin_keeps_own_messages_despite_stable_of_a_view_it_is_not_in() -> None:
    """Rule 14: only the coordinator of this node's own view can make it drop buffered
    messages; with no view yet, an origin ignores another group's Stable (which says
    nothing about what members of its future view hold) and can still resend them."""
    m = machine()
    m.handle(Publish(kind=0, payload=b"1"), 0.0)
    m.handle(Publish(kind=0, payload=b"2"), 0.0)
    foreign = recv(B, Stable(view_id=1, entries=(StableEntry(ME, 1, 2, 2),)))
    assert m.handle(foreign, 0.1) == []
    assert (m.buffer_size, m.stats.ignored) == (2, 1)
    m.handle(view(A, ME), 0.2)
    assert m.handle(recv(A, Nak(origin=ME, origin_incarnation=1, first=1, last=2)), 0.3) == [
        Send(to=A, message=Xmit(origin=ME, origin_incarnation=1, seq=1, kind=0, payload=b"1")),
        Send(to=A, message=Xmit(origin=ME, origin_incarnation=1, seq=2, kind=0, payload=b"2")),
    ]


def test_stable_of_a_newer_view_neither_skips_nor_drops() -> None:
    """Rule 14: a Stable with a higher view id (a view this node is not in, or not yet) is
    ignored: it does not make a member skip a gap or drop buffered messages."""
    m = machine()
    m.handle(view(A, B, ME), 0.0)
    m.handle(data(1), 0.0)
    m.handle(data(3), 0.0)  # 2 is missing, and A still holds it
    newer = recv(D, Stable(view_id=2, entries=(StableEntry(A, 1, 3, 3),)))
    assert m.handle(newer, 0.0) == []
    assert m.delivered[A] == (I1, 1)
    assert (m.buffer_size, m.stats.ignored, m.stats.skipped) == (1, 1, 0)
    assert m.handle(TICK, CFG.nak_delay) == [
        Send(to=A, message=Nak(origin=A, origin_incarnation=1, first=2, last=2))
    ]


def test_stable_of_a_newer_view_from_a_member_names_how_far_lives_went() -> None:
    """Rules 13, 14: a Stable of a newer view (one this node has not installed yet) from a
    member of its own view drops, skips and starts nothing, but its ``highest`` for a life
    this node keeps (current or retired, not its own) is taken: a member behind it naks,
    before the life's grace may run out. (Before, it was ignored whole: fresh seed
    36,410,936 (--safety 15 --supply-steps), where 9022, cut off when 9021 published #16
    and 9021 crashed, lagged a view behind its leader 9023 for four seconds; it ignored
    eleven digests of views 6 and 7 naming #16, dropped 9021's retired life 1 at the end of its
    flush_grace before it installed view 7, and never delivered #16, which 9020 and 9023
    had and still held.)"""
    m = machine(SLOW_STATUS)
    m.handle(view(A, B, ME), 0.0)
    m.handle(data(1), 0.0)
    m.handle(data(1, sender=B), 0.0)
    m.handle(Publish(kind=0, payload=b"mine"), 0.0)
    m.handle(data(1, sender=B, inc=2), 0.1)  # B restarted: its life 1 retired, #2 missed
    newer = recv(
        A,
        Stable(
            view_id=2,
            entries=(
                StableEntry(A, 1, 1, 3),
                StableEntry(B, 1, 1, 2),
                StableEntry(D, 1, 0, 4),  # a life this node has no state of: not started
                StableEntry(ME, 1, 1, 1),
            ),
        ),
    )
    assert m.handle(newer, 0.2) == []
    assert (m.buffer_size, m.stats.ignored, m.stats.skipped) == (4, 1, 0)  # nothing dropped
    assert m.delivered == {A: (I1, 1), B: (I2, 1), ME: (I1, 1)}
    assert m.handle(TICK, 0.2 + CFG.nak_delay) == [
        Send(to=A, message=Nak(origin=A, origin_incarnation=1, first=2, last=3)),
        Multicast(message=Nak(origin=B, origin_incarnation=1, first=2, last=2, helper=A)),
    ]
    # One of a node that is not in this node's view is still ignored whole.
    m = machine(SLOW_STATUS)
    m.handle(view(A, B, ME), 0.0)
    m.handle(data(1), 0.0)
    foreign = recv(D, Stable(view_id=2, entries=(StableEntry(A, 1, 1, 3),)))
    assert m.handle(foreign, 0.2) == []
    assert m.stats.ignored == 1
    assert m.handle(TICK, 0.2 + CFG.nak_delay) == []  # no Nak


def test_lost_last_message_found_through_stable() -> None:
    """Rule 13: Stable carries each origin's highest; a member behind it naks."""
    m = machine()
    m.handle(view(A, B, ME), 0.0)
    m.handle(data(1), 1.0)
    assert m.handle(stable((A, 1, 0, 2)), 1.0) == []
    assert m.next_deadline() == 1.0 + CFG.nak_delay
    assert m.handle(TICK, 1.0 + CFG.nak_delay) == [
        Send(to=A, message=Nak(origin=A, origin_incarnation=1, first=2, last=2))
    ]


def test_buffer_cap_drops_oldest_and_counts() -> None:
    """Rule 15: the resend buffer never exceeds max_buffer: the oldest message of the
    largest stream is dropped and counted (and then cannot be resent)."""
    cfg = MulticastConfig(status_jitter=0.0, max_buffer=3)
    m = machine(cfg)
    for seq in range(1, 6):
        m.handle(data(seq), 0.0)
    m.handle(data(1, sender=B), 0.0)
    assert m.buffer_size == 3
    assert (m.stats.buffer_overflow, m.stats.peak_buffer) == (3, 3)
    nak = Nak(origin=A, origin_incarnation=1, first=1, last=5)
    assert m.handle(recv(D, nak), 0.0) == [Send(to=D, message=xmit(s)) for s in (4, 5)]


@given(
    st.lists(st.tuples(st.integers(1, 4), st.integers(0, 3)), max_size=5),
    st.lists(st.tuples(st.integers(1, 4), st.integers(0, 3)), max_size=5),
)
def test_buffer_cap_takes_from_the_fullest_life(
    current: list[tuple[int, int]], retired: list[tuple[int, int]]
) -> None:
    """Rule 15: the cap takes from the life with the most buffered; of equal ones the
    lowest origin's, of one origin's the current life before the retired one."""
    lives: list[dict[int, OriginLife]] = [{}, {}]
    for index, pairs in enumerate((current, retired)):
        for origin, size in pairs:
            life = OriginLife(origin, index + 1, 0, Phase.LIVE)
            life.buf = {seq: (0, b"") for seq in range(1, size + 1)}
            lives[index][origin] = life
    if not lives[0] and not lives[1]:
        return
    buffer = ResendBuffer(CFG, MulticastStats(), lives[0], lives[1])
    _, expected = max(  # the rule as one expression
        [*lives[0].items(), *lives[1].items()], key=lambda item: (len(item[1].buf), -item[0])
    )
    assert buffer._fullest() is expected


def test_coordinator_overflow_declares_evicted_stable_so_laggards_skip() -> None:
    """Rules 15 and 17: when the coordinator's buffer overflows, the evicted message becomes stable,
    and a member behind it skips it (counted) instead of asking forever."""
    cfg = MulticastConfig(status_jitter=0.0, max_buffer=2)
    coord = machine(cfg, me=A)
    coord.handle(view(A, B, ME), 0.0)
    for _ in range(3):
        coord.handle(Publish(kind=0, payload=b"x"), 0.0)
    out = coord.handle(TICK, cfg.stable_interval)
    assert out == [Multicast(message=Stable(view_id=1, entries=(StableEntry(A, 1, 1, 3),)))]
    m = machine(cfg)
    m.handle(view(A, B, ME), 0.0)
    m.handle(data(3), 0.0)
    assert m.handle(recv(A, out[0].message), 0.0) == []  # start after 1: naks 2 later
    lagging = machine(cfg)
    lagging.handle(view(A, B, ME), 0.0)
    lagging.handle(data(1), 0.0)
    lagging.handle(data(3), 0.0)
    assert lagging.handle(stable((A, 1, 2, 3)), 0.0) == [deliver(3)]
    assert lagging.stats.skipped == 1


def test_many_origins_split_over_several_datagrams() -> None:
    """Rules 11 and 12: Status and Stable entries that do not fit one datagram are split."""
    origins = [NodeId(100 + i) for i in range(STATUS_PER_DATAGRAM + 5)]
    coord = machine(me=A)
    out = coord.handle(view(A, *origins), 0.0)
    for o in origins:
        coord.handle(data(1, sender=o), 0.0)
    assert len(out) == 1
    out = coord.handle(TICK, CFG.stable_interval)
    total = len(origins) + 1  # and the coordinator's own stream
    assert [len(a.message.entries) for a in out] == [
        STABLE_PER_DATAGRAM,
        total - STABLE_PER_DATAGRAM,
    ]
    for a in out:
        assert len(encode(1, A, 1, a.message)) <= MAX_DATAGRAM
    member = machine()
    member.handle(view(A, ME, *origins), 0.0)
    for o in origins[: STATUS_PER_DATAGRAM + 1]:
        member.handle(data(1, sender=o), 0.0)
    out = member.handle(TICK, CFG.status_interval)
    assert [len(a.message.entries) for a in out] == [STATUS_PER_DATAGRAM, 2]
    for a in out:
        assert decode(encode(1, ME, 1, a.message)).message == a.message


# ------------------------------------------------------------------ joiners, views


def test_joiner_holds_data_until_stable_gives_the_start() -> None:
    """Rule 18: for an unknown origin, Data at seq > 1 is held until the first Stable, which
    sets the start (after stable) and how far to nak (highest); no older history."""
    m = machine()
    m.handle(view(A, B, ME), 0.0)
    assert m.handle(data(7, sender=B), 0.0) == []
    assert B not in m.delivered
    assert m.next_deadline() is None
    assert m.handle(stable((A, 1, 3, 3), (B, 1, 5, 6)), 0.5) == []
    assert m.delivered[A] == (I1, 3)
    assert m.delivered[B] == (I1, 5)
    assert m.handle(TICK, 0.5 + CFG.nak_delay) == [
        Send(to=B, message=Nak(origin=B, origin_incarnation=1, first=6, last=6))
    ]
    xm = Xmit(origin=B, origin_incarnation=1, seq=6, kind=0, payload=b"6")
    assert m.handle(recv(A, xm), 0.6) == [deliver(6, B), deliver(7, B)]


def test_joiner_drops_held_data_below_the_start() -> None:
    """Rule 18: held messages at or below the learned start are history: dropped."""
    m = machine()
    m.handle(view(A, ME), 0.0)
    m.handle(data(4), 0.0)
    m.handle(data(6), 0.0)
    assert m.handle(stable((A, 1, 5, 6)), 0.0) == [deliver(6)]


def test_seq_one_accepted_directly_without_view() -> None:
    """Rules 19 and 20: with no view or coordinator, Data at seq 1 starts the stream at once;
    later seqs of unknown origins wait for a coordinator."""
    m = machine()
    assert m.handle(data(1), 0.0) == [deliver(1)]
    assert m.handle(data(3, sender=B), 0.0) == []
    # Becoming coordinator resolves it: it starts at 0 and asks for 1..2.
    m2 = machine(me=A)
    m2.handle(data(3, sender=B), 0.0)
    m2.handle(view(A, B), 0.0)
    assert m2.delivered[B] == (I1, 0)
    assert m2.handle(TICK, CFG.nak_delay) == [
        Send(to=B, message=Nak(origin=B, origin_incarnation=1, first=1, last=2))
    ]


def test_coordinator_starts_unknown_origin_at_zero() -> None:
    """Rule 21: the coordinator, which gets no Stable, fetches an unknown origin from 1."""
    m = machine(me=A)
    m.handle(view(A, B), 0.0)
    m.handle(data(2, sender=B), 0.0)
    assert m.handle(TICK, CFG.nak_delay) == [
        Send(to=B, message=Nak(origin=B, origin_incarnation=1, first=1, last=1))
    ]


def test_coordinator_skips_history_nobody_can_resend_and_declares_it_stable() -> None:
    """Rule 16: with every member's report in, the first message (counting down from the
    highest delivered) that no member holds in its (low, delivered] is lost for good: the
    coordinator skips to it, delivers what it holds above, and declares it stable."""
    m = machine(me=A)
    m.handle(view(A, B, D), 0.0)
    m.handle(data(3, sender=B), 0.2)  # held: 1..2 were dropped as stable in another view
    m.handle(recv(B, Status(view_id=1, entries=(StatusEntry(B, 1, 3, 2),))), 0.2)
    m.handle(recv(D, Status(view_id=1, entries=(StatusEntry(B, 1, 3, 2),))), 0.2)
    assert m.handle(TICK, CFG.stable_interval) == [
        Send(to=B, message=Nak(origin=B, origin_incarnation=1, first=1, last=2)),
        deliver(3, B),
        Multicast(
            message=Stable(view_id=1, entries=(StableEntry(A, 1, 0, 0), StableEntry(B, 1, 3, 3)))
        ),
    ]
    assert m.stats.skipped == 2
    assert m.next_deadline() == 2 * CFG.stable_interval  # the view change's repeats
    # A gap someone still holds is fetched, never skipped.
    m2 = machine(me=A)
    m2.handle(view(A, B, D), 0.0)
    m2.handle(data(3, sender=B), 0.2)
    m2.handle(recv(B, Status(view_id=1, entries=(StatusEntry(B, 1, 3, 0),))), 0.2)
    m2.handle(recv(D, Status(view_id=1, entries=(StatusEntry(B, 1, 3, 2),))), 0.2)
    assert m2.handle(TICK, CFG.stable_interval) == [
        Send(to=B, message=Nak(origin=B, origin_incarnation=1, first=1, last=2)),
        Multicast(
            message=Stable(view_id=1, entries=(StableEntry(A, 1, 0, 0), StableEntry(B, 1, 0, 3)))
        ),
    ]
    assert m2.stats.skipped == 0


def test_skip_over_lost_history_drops_what_is_held_below_the_lost_point() -> None:
    """Rule 17: skipping to a stable point drops the messages held at or below it too
    (counted in skipped): the stream jumps once, never delivering with gaps between."""
    m = machine(me=A)
    m.handle(view(A, B, D), 0.0)
    m.handle(data(2, sender=B), 0.1)  # held: 1 and 3 are lost for good
    m.handle(data(4, sender=B), 0.1)
    m.handle(recv(B, Status(view_id=1, entries=(StatusEntry(B, 1, 5, 3),))), 0.2)
    m.handle(recv(D, Status(view_id=1, entries=(StatusEntry(B, 1, 5, 3),))), 0.2)
    assert m.handle(TICK, CFG.stable_interval) == [
        Send(to=B, message=Nak(origin=B, origin_incarnation=1, first=1, last=1)),
        Send(to=B, message=Nak(origin=B, origin_incarnation=1, first=3, last=3)),
        Send(to=B, message=Nak(origin=B, origin_incarnation=1, first=5, last=5)),
        deliver(4, B),
        Multicast(
            message=Stable(view_id=1, entries=(StableEntry(A, 1, 0, 0), StableEntry(B, 1, 4, 5)))
        ),
    ]
    assert (m.stats.skipped, m.delivered[B]) == (3, (I1, 4))
    lagging = machine()
    lagging.handle(view(A, B, ME), 0.0)
    lagging.handle(data(1), 0.0)
    lagging.handle(data(3), 0.0)
    lagging.handle(data(5), 0.0)
    assert lagging.handle(stable((A, 1, 4, 5)), 0.0) == [deliver(5)]
    assert lagging.stats.skipped == 3


def test_lost_history_point_is_below_what_the_coordinator_holds() -> None:
    """Rule 16: a message the coordinator holds ahead of its gap is not lost (it delivers and
    then resends it), so the lost point counts down past it and is not declared stable."""
    m = machine(me=A)
    m.handle(view(A, B, D), 0.0)
    m.handle(data(3, sender=B), 0.1)  # held; B holds 4..5, D delivered only up to 2
    m.handle(recv(B, Status(view_id=1, entries=(StatusEntry(B, 1, 5, 3),))), 0.2)
    m.handle(recv(D, Status(view_id=1, entries=(StatusEntry(B, 1, 2, 2),))), 0.2)
    assert m.handle(TICK, CFG.stable_interval) == [
        Send(to=B, message=Nak(origin=B, origin_incarnation=1, first=1, last=2)),
        Send(to=B, message=Nak(origin=B, origin_incarnation=1, first=4, last=5)),
        deliver(3, B),
        Multicast(
            message=Stable(view_id=1, entries=(StableEntry(A, 1, 0, 0), StableEntry(B, 1, 2, 5)))
        ),
    ]
    assert m.stats.skipped == 2
    nak = Nak(origin=B, origin_incarnation=1, first=3, last=3)
    assert m.handle(recv(D, nak), 0.3) == [
        Send(to=D, message=Xmit(origin=B, origin_incarnation=1, seq=3, kind=0, payload=b"3"))
    ]


def test_status_reports_what_the_member_can_no_longer_resend() -> None:
    """Rule 11: each Status entry carries ``low``, the point up to which the member dropped the
    origin's messages as stable; an entry with low above delivered is malformed."""
    m = machine()
    m.handle(view(A, B, ME), 0.0)
    m.handle(data(1), 0.0)
    m.handle(data(2), 0.0)
    m.handle(stable((A, 1, 1, 2)), 0.1)
    assert m.handle(TICK, CFG.status_interval) == [
        Send(
            to=A,
            message=Status(view_id=1, entries=(StatusEntry(A, 1, 2, 1), StatusEntry(ME, 1, 0, 0))),
        )
    ]
    assert (
        Status(view_id=1, entries=(StatusEntry(A, 1, 2, 3),)).problem() == "low 3 above delivered 2"
    )


SLOW_STATUS = MulticastConfig(status_jitter=0.0, status_interval=10.0)
"""Status reports later than the grace period, so the grace deadline is the next one."""


def test_restarted_origins_old_life_is_repaired_from_holders_within_flush_grace() -> None:
    """Rule 23 (retired lives): a newer incarnation of an origin (a restart) starts a new
    stream at once, but the old life is kept for flush_grace like a departed origin: a
    Stable entry of the old life (sent apart, one origin per datagram) shows a laggard
    how far it went, the laggard naks the group for it at once (the origin cannot
    resend it), Xmits of it are delivered, and Status reports it. (Replaced at once,
    the old life's last messages were lost to members that missed them although others
    had delivered them: 36 multicast-agreement seeds, e.g. 1248.)"""
    m = machine()
    m.handle(view(A, B, ME, D), 0.0)
    assert m.handle(data(1, sender=B), 0.0) == [deliver(1, B)]
    assert m.handle(data(1, sender=B, inc=2, payload=b"new"), 0.1) == [
        deliver(1, B, inc=2, payload=b"new")
    ]
    assert m.handle(stable((B, 2, 0, 1)), 0.2) == []
    assert m.handle(stable((B, 1, 0, 3)), 0.2) == []  # life 1 went up to 3
    assert m.next_deadline() == 0.2 + CFG.nak_delay
    assert m.handle(TICK, 0.2 + CFG.nak_delay) == [
        Multicast(message=Nak(origin=B, origin_incarnation=1, first=2, last=3, helper=A))
    ]
    old = Xmit(origin=B, origin_incarnation=1, seq=2, kind=0, payload=b"2")
    assert m.handle(recv(D, old), 0.22) == [deliver(2, B)]
    assert m.handle(TICK, CFG.status_interval) == [
        # 3 is still missing: re-asked nak_interval after the first ask (rule 5)
        Multicast(message=Nak(origin=B, origin_incarnation=1, first=3, last=3, helper=A)),
        Send(
            to=A, message=Status(view_id=1, entries=(StatusEntry(B, 2, 1), StatusEntry(ME, 1, 0)))
        ),
        Send(to=A, message=Status(view_id=1, entries=(StatusEntry(B, 1, 2),))),
    ]
    assert m.buffer_size == 3  # life 1's 1..2 and life 2's 1
    # A holder of the old life answers Naks for it until flush_grace has passed.
    nak = Nak(origin=B, origin_incarnation=1, first=1, last=2)
    assert m.handle(recv(D, nak), 0.3) == [
        Send(to=D, message=Xmit(origin=B, origin_incarnation=1, seq=s, kind=0, payload=b"%d" % s))
        for s in (1, 2)
    ]
    m.handle(TICK, 0.1 + CFG.flush_grace)
    assert m.buffer_size == 0  # life 1 retired, and life 2 never listed by a view (its grace)
    assert m.handle(recv(D, nak), 2.2) == []
    # Both dropped: the life the view lists is taken again, after what was delivered of it.
    assert m.handle(
        recv(D, Xmit(origin=B, origin_incarnation=1, seq=3, kind=0, payload=b"3")), 2.2
    ) == [deliver(3, B)]


def test_coordinator_learns_a_retired_lifes_end_from_status_and_digests_it() -> None:
    """Rule 23 (retired lives): the coordinator raises a retired life's highest from the
    members' Status entries of that life, naks for what it lacks, and multicasts the
    life's (stable, highest) in a Stable datagram of its own until flush_grace ends."""
    m = machine(me=A)
    m.handle(view(A, B, D), 0.0)
    m.handle(data(1, sender=B), 0.0)
    m.handle(data(1, sender=B, inc=2, payload=b"new"), 0.1)
    m.handle(recv(D, Status(view_id=1, entries=(StatusEntry(B, 1, 2),))), 0.15)
    assert m.handle(TICK, 0.15 + CFG.nak_delay) == [
        Multicast(message=Nak(origin=B, origin_incarnation=1, first=2, last=2, helper=D))
    ]
    assert m.handle(TICK, CFG.stable_interval) == [
        Multicast(message=Nak(origin=B, origin_incarnation=1, first=2, last=2, helper=D)),
        Multicast(
            message=Stable(view_id=1, entries=(StableEntry(A, 1, 0, 0), StableEntry(B, 2, 0, 1)))
        ),
        Multicast(message=Stable(view_id=1, entries=(StableEntry(B, 1, 0, 2),))),
    ]


def test_restarted_coordinator_digests_its_own_past_life_from_status() -> None:
    """Rule 24 (hearsay lives): a coordinator that is itself a restarted origin has no state
    of its past life, so the members' Status entries of that life are all it learns of
    it: it keeps the life's highest (nothing held or delivered here, nothing declared
    stable) for flush_grace from the first report and digests it like any retired life,
    so members behind fetch the end from those that delivered it. (Before, it skipped
    those entries, no Stable named the end of its past life, and a last message one
    member had delivered never reached the others: multicast-agreement seed 7684.)"""
    m = MulticastMachine(CFG, me=A, incarnation=I2, rng=random.Random(7))
    members = (Member(node=A, incarnation=I2), *(Member(node=n, incarnation=I1) for n in (B, D)))
    m.handle(
        ViewChanged(
            view=View(group=GroupId(1), view_id=1, leader=A, epoch=Epoch(1), members=members)
        ),
        0.0,
    )
    while (due := m.next_deadline()) is not None:  # the view change's digests
        m.handle(TICK, due)
    t = 1.0
    assert m.handle(recv(D, Status(view_id=1, entries=(StatusEntry(A, 1, 26),))), t) == []
    assert m.handle(recv(B, Status(view_id=1, entries=(StatusEntry(A, 1, 27),))), t) == []
    assert m.handle(recv(D, Status(view_id=1, entries=(StatusEntry(A, 1, 25),))), t) == []
    assert m.next_deadline() == t + CFG.stable_interval
    mine = Multicast(message=Stable(view_id=1, entries=(StableEntry(A, 2, 0, 0),)))
    past = Multicast(message=Stable(view_id=1, entries=(StableEntry(A, 1, 0, 27),)))
    assert m.handle(TICK, t + CFG.stable_interval) == [mine, past]
    assert m.buffer_size == 0
    # Repeated until flush_grace from the first report, then dropped.
    for k in range(2, 8):
        assert m.handle(TICK, t + k * CFG.stable_interval) == [mine, past]
    assert m.next_deadline() == t + CFG.flush_grace
    assert m.handle(TICK, t + CFG.flush_grace) == [mine]
    assert m.next_deadline() is None


_RESTARTED = (
    Member(node=A, incarnation=I2),
    Member(node=B, incarnation=I2),
    *(Member(node=n, incarnation=I1) for n in (D, E)),
)


def _restarted_coordinator() -> MulticastMachine:
    """A, restarted (life 2), coordinates a view with B's life 2 and D's and E's life 1;
    B's #1 delivered and the view change's digests sent (0.9 s)."""
    m = MulticastMachine(CFG, me=A, incarnation=I2, rng=random.Random(7))
    m.handle(
        ViewChanged(
            view=View(group=GroupId(1), view_id=1, leader=A, epoch=Epoch(1), members=_RESTARTED)
        ),
        0.0,
    )
    assert m.handle(data(1, sender=B, inc=2, payload=b"new"), 0.0) == [
        deliver(1, B, inc=2, payload=b"new")
    ]
    while (due := m.next_deadline()) is not None and due < 0.9:  # the view change's digests
        m.handle(TICK, due)
    return m


def test_coordinator_that_never_knew_a_past_life_digests_it_from_status() -> None:
    """Rule 24 (hearsay lives): a coordinator with no state of an origin's past life (it
    joined, restarted or took over after that life ended; the view lists the origin's
    later life) keeps the members' Status entries of that life as a retired life of its
    own, for flush_grace from the first report: it holds and delivers nothing of it (its
    Data and Xmits are ignored) and declares stable only what nobody holds any more
    (rule 16, with the members' reports of it), but its highest goes out in the
    Stable digest, so a member that missed the life's last message fetches it from one
    that delivered it. It is digest state only: dropped when the node stops
    coordinating. A life above the listed one (forged) is still ignored. (Before, it
    skipped those entries: a new coordinator, itself restarted and in the group only
    after the origin's restart, never named the old life's last message, which one
    member had lost and two had delivered: multicast-agreement seed 17141.)"""
    m = _restarted_coordinator()
    t = 0.9
    assert m.handle(recv(D, Status(view_id=1, entries=(StatusEntry(B, 1, 13, 13),))), t) == []
    assert m.handle(recv(E, Status(view_id=1, entries=(StatusEntry(B, 1, 14, 13),))), t) == []
    assert m.handle(recv(E, Status(view_id=1, entries=(StatusEntry(B, 3, 9, 0),))), t) == []
    assert m.next_deadline() == 1.0  # life 2 of B is unstable: a digest every interval
    live = Multicast(
        message=Stable(view_id=1, entries=(StableEntry(A, 2, 0, 0), StableEntry(B, 2, 0, 1)))
    )
    # rule 16: D and E dropped up to 13, which nobody holds any more
    past = Multicast(message=Stable(view_id=1, entries=(StableEntry(B, 1, 13, 14),)))
    assert m.handle(TICK, 1.0) == [live, past]
    assert m.handle(data(15, sender=B), 1.0) == []  # the old life: not taken here
    assert m.stats.ignored == 1
    assert m.buffer_size == 1  # life 2's message only
    assert m.stats.skipped == 0
    # A member behind it asks the group; the coordinator holds none of it.
    nak = Nak(origin=B, origin_incarnation=1, first=14, last=14, helper=A)
    assert m.handle(recv(D, nak), t + 0.3) == []
    # Stepping down drops it: it is not reported to the next coordinator.
    m.handle(
        ViewChanged(
            view=View(group=GroupId(1), view_id=2, leader=D, epoch=Epoch(2), members=_RESTARTED)
        ),
        t + 0.4,
    )
    assert m.handle(TICK, t + 0.4 + CFG.status_interval) == [
        Send(
            to=D,
            message=Status(view_id=2, entries=(StatusEntry(A, 2, 0, 0), StatusEntry(B, 2, 1, 0))),
        )
    ]


def test_coordinator_skips_lost_history_of_a_retired_life() -> None:
    """Rules 16 and 23 (lost history, retired lives): a coordinator that started an origin at 0 and
    held its later messages, waiting for every member's report to skip what nobody holds
    any more, keeps the members' reports when the origin restarts and the life retires;
    with the reports of every member but the origin (its new life holds none of the old
    one), it skips the retired life to its lost point and delivers what it held. (Before,
    the retired life lost the reports and was never counted: the coordinator held the
    old life's end to the last and never delivered what the others had: the old course
    of multicast-agreement seed 11219.)"""
    m = machine(me=A)
    m.handle(view(A, B, D), 0.0)
    while (due := m.next_deadline()) is not None:  # the view change's digests
        m.handle(TICK, due)
    assert m.handle(data(16, sender=B), 1.0) == []  # started at 0: held, 1..15 missing
    # D delivered up to 17 and dropped up to 15 as stable (in a view A was not in).
    assert m.handle(recv(D, Status(view_id=1, entries=(StatusEntry(B, 1, 17, 15),))), 1.0) == []
    assert m.handle(data(1, sender=B, inc=2, payload=b"new"), 1.0) == [
        deliver(1, B, inc=2, payload=b"new")
    ]
    ask = [
        Multicast(message=Nak(origin=B, origin_incarnation=1, first=1, last=15, helper=D)),
        Multicast(message=Nak(origin=B, origin_incarnation=1, first=17, last=17, helper=D)),
    ]
    while (due := m.next_deadline()) is not None and due < 1.0 + CFG.stable_interval:
        assert m.handle(TICK, due) == ask
    assert m.handle(TICK, 1.0 + CFG.stable_interval) == [
        deliver(16, B),  # 1..15 are lost for good: skipped, and 16 delivered
        Multicast(
            message=Stable(view_id=1, entries=(StableEntry(A, 1, 0, 0), StableEntry(B, 2, 0, 1)))
        ),
        Multicast(message=Stable(view_id=1, entries=(StableEntry(B, 1, 15, 17),))),
    ]
    assert m.handle(TICK, m.next_deadline() or 0.0) == ask[1:]  # only 17 now, from D
    assert m.stats.skipped == 15


def test_coordinator_skips_lost_history_of_a_hearsay_life() -> None:
    """Rules 16 and 24 (lost history, hearsay lives): a coordinator that never knew an
    origin's past life keeps the members' reports of it and walks it like a retired
    life's, holding none of it itself: with every member but the origin reported, the
    first message nobody holds is declared stable, so a member stuck behind it skips
    there and delivers the rest. (Before, a hearsay life was never walked and went out
    as stable 0: fuzz seed 32,101,199, where 9002, a joiner started at 0 of 9001's life 1
    by a new coordinator's first digest, held #4-#13 behind #1-#3 that nobody held; 9001
    restarted and the last coordinator, itself restarted after that life, only heard of
    it, so 9002 never delivered #12 and #13, which 9003 had.)"""
    m = _restarted_coordinator()
    live = Multicast(
        message=Stable(view_id=1, entries=(StableEntry(A, 2, 0, 0), StableEntry(B, 2, 0, 1)))
    )
    # D is stuck at 0 of B's life 1; until E reports it too, nothing is known lost.
    assert m.handle(recv(D, Status(view_id=1, entries=(StatusEntry(B, 1, 0, 0),))), 0.9) == []
    assert m.handle(TICK, 1.0) == [
        live,
        Multicast(message=Stable(view_id=1, entries=(StableEntry(B, 1, 0, 0),))),
    ]
    # E delivered up to 13 and dropped up to 7 as stable: nobody holds 7 or below.
    assert m.handle(recv(E, Status(view_id=1, entries=(StatusEntry(B, 1, 13, 7),))), 1.1) == []
    assert m.handle(TICK, 1.25) == [
        live,
        Multicast(message=Stable(view_id=1, entries=(StableEntry(B, 1, 7, 13),))),
    ]
    assert (m.buffer_size, m.stats.skipped) == (1, 0)  # nothing of it held or skipped here


def test_departed_origin_kept_for_flush_grace_then_dropped() -> None:
    """Rule 22: an origin that leaves the view keeps its state for flush_grace (holders can
    still resend its messages), then its state is dropped and not recreated."""
    m = machine(SLOW_STATUS)
    m.handle(view(A, B, ME), 0.0)
    m.handle(data(1, sender=B), 0.0)
    m.handle(view(A, ME, view_id=2), 1.0)
    assert m.next_deadline() == 1.0 + CFG.flush_grace
    nak = Nak(origin=B, origin_incarnation=1, first=1, last=1, helper=ME)
    assert m.handle(recv(A, nak), 1.5) == [Send(to=A, message=xmit(1, B))]
    assert m.handle(TICK, 1.0 + CFG.flush_grace) == []
    assert B not in m.delivered
    assert m.buffer_size == 0
    assert m.handle(stable((B, 1, 0, 1), view_id=2), 4.0) == []  # a late digest: no ghost
    assert B not in m.delivered
    assert m.next_deadline() is None


def test_origin_back_within_grace_keeps_state() -> None:
    """Rule 22: an origin that comes back into the view before flush_grace keeps its stream."""
    m = machine(SLOW_STATUS)
    m.handle(view(A, B, ME), 0.0)
    m.handle(data(1, sender=B), 0.0)
    m.handle(view(A, ME, view_id=2), 1.0)
    m.handle(view(A, B, ME, view_id=3), 2.0)
    assert m.handle(TICK, 1.0 + CFG.flush_grace) == []
    assert m.handle(data(2, sender=B), 3.5) == [deliver(2, B)]


def test_dropped_life_resumes_after_what_was_delivered_at_the_coordinator() -> None:
    """Rule 22: when a life whose state was dropped after flush_grace comes back, it resumes
    after what this node delivered of it (nothing twice), and the coordinator declares
    neither what it delivered nor the stable point it knew from another coordinator's
    view: nothing, until the members of its own view report (rule 12)."""
    m = machine(SLOW_STATUS)
    m.handle(view(A, B, ME), 0.0)
    for seq in (1, 2, 3):
        m.handle(data(seq, sender=B), 0.0)
    m.handle(stable((B, 1, 1, 3)), 0.5)
    m.handle(view(A, ME, view_id=2), 1.0)
    m.handle(TICK, 1.0 + CFG.flush_grace)
    assert B not in m.delivered
    m.handle(view(ME, B, leader=ME, view_id=3), 4.0)  # now the coordinator; B is back
    assert m.handle(data(4, sender=B), 4.0) == [deliver(4, B)]
    assert m.handle(TICK, 4.0 + CFG.stable_interval) == [
        Multicast(
            message=Stable(view_id=3, entries=(StableEntry(B, 1, 0, 4), StableEntry(ME, 1, 0, 0)))
        )
    ]
    assert m.stats.duplicates == 0


def test_dropped_life_resumes_after_what_was_delivered_at_a_member() -> None:
    """Rule 22: a member told by Stable to start a dropped life at its stable point resumes
    after what it delivered instead, and naks only what it has not got."""
    m = machine(SLOW_STATUS)
    m.handle(view(A, B, ME), 0.0)
    for seq in (1, 2, 3):
        m.handle(data(seq, sender=B), 0.0)
    m.handle(view(A, ME, view_id=2), 1.0)
    m.handle(TICK, 1.0 + CFG.flush_grace)
    m.handle(view(A, B, ME, view_id=3), 4.0)
    assert m.handle(stable((B, 1, 1, 5), view_id=3), 4.0) == []
    assert m.delivered[B] == (I1, 3)
    assert m.handle(TICK, 4.0 + CFG.nak_delay) == [
        Send(to=B, message=Nak(origin=B, origin_incarnation=1, first=4, last=5))
    ]


def test_each_dropped_life_is_remembered_apart_from_the_others() -> None:
    """Rule 22: what was delivered of a dropped life is remembered for each life apart (an
    unlisted life dropped after grace, a retired one at its end): the listed life taken
    again from a Stable resumes after what was delivered of it, and the later life, when
    it comes back, after what was delivered of it (fuzz seed 64959: the origin restarted,
    the view kept listing its old life, the new life's state was dropped after grace, a
    Stable naming the old life started it again at its stable point and the new life's
    memory went with it; the new life's next Data then started it at 1, and 1..8 were
    delivered twice)."""
    m = machine(SLOW_STATUS)
    m.handle(view(A, B, ME, leader=B), 0.0)  # lists A's life 1 throughout
    for seq in (1, 2, 3):
        m.handle(data(seq), 0.0)
    for seq in (1, 2):  # A restarted: life 2 is not listed, and life 1 is retired
        assert m.handle(data(seq, inc=2), 0.5) == [deliver(seq, inc=2)]
    m.handle(TICK, 0.5 + CFG.flush_grace)  # both dropped, both remembered
    assert A not in m.delivered
    digest = recv(B, Stable(view_id=1, entries=(StableEntry(A, 1, 1, 3),)))
    assert m.handle(digest, 2.6) == []
    assert m.delivered[A] == (I1, 3)  # life 1 taken again, after what was delivered of it
    assert m.handle(TICK, 2.6 + CFG.nak_delay) == []  # nothing of it asked for again
    assert m.handle(data(3, inc=2), 2.7) == [deliver(3, inc=2)]  # life 2 resumes after 2
    assert m.handle(TICK, 2.7 + CFG.nak_delay) == []
    assert m.stats.duplicates == 0


# ------------------------------------------------------------------ parts: lives and their phases


def _phases(m: MulticastMachine) -> dict[tuple[int, int], str]:
    """(origin, incarnation) -> phase of every life the machine keeps state of."""
    lives = m._lives
    return {
        (life.origin, life.incarnation): life.phase.value
        for life in [*lives.current.values(), *lives.retired.values()]
    }


def _assert_indexes_follow_phases(m: MulticastMachine) -> None:
    """The registry's dicts are indexes of the phases, nothing more."""
    lives = m._lives
    assert all(life.phase in CURRENT for life in lives.current.values())
    assert all(life.phase in PAST for life in lives.retired.values())
    assert all(o == life.origin for o, life in [*lives.current.items(), *lives.retired.items()])
    assert lives.departing == {
        o: life for o, life in lives.current.items() if life.phase is Phase.DEPARTING
    }
    assert all(life.gone_at is not None for life in lives.departing.values())
    assert lives.gappy == {o: life for o, life in lives.current.items() if life.nak_due is not None}
    assert all(life.gone_at is not None for life in lives.retired.values())
    assert (m._coord is not None) == (m.view is not None and m.view.leader == m.me)
    assert lives.coordinator is m._coord
    buffered = sum(len(life.buf) for life in [*lives.current.values(), *lives.retired.values()])
    assert m.buffer_size == buffered


def test_phase_changes_only_by_the_table() -> None:
    """Parts: every phase change is an entry of the table; any other raises an internal
    error (a bug in the package, never peer input), and every phase is reachable."""
    for phase in Phase:
        for trigger in Trigger:
            if (phase, trigger) in TRANSITIONS:
                assert next_phase(phase, trigger) is TRANSITIONS[phase, trigger]
            else:
                with pytest.raises(IllegalTransitionError, match=phase.value):
                    next_phase(phase, trigger)
    reached = {Phase.ABSENT} | set(TRANSITIONS.values())
    assert reached == set(Phase)
    assert next_phase(Phase.LIVE, Trigger.REPLACED) is Phase.RETIRED
    with pytest.raises(IllegalTransitionError):
        next_phase(Phase.RETIRED, Trigger.LISTED)  # a past life is never revived


def test_a_life_goes_live_departing_live_retired_dropped() -> None:
    """Rules 1, 22, 23: an origin's life is LIVE while listed, DEPARTING while the view
    leaves it out (and LIVE again when listed within flush_grace), RETIRED when a newer
    incarnation starts, and DROPPED after flush_grace: only its points are remembered."""
    m = machine(SLOW_STATUS)
    m.handle(view(A, B, ME), 0.0)
    m.handle(data(1, sender=B), 0.0)
    assert _phases(m)[B, 1] == "live"
    m.handle(view(A, ME, view_id=2), 0.5)
    assert _phases(m)[B, 1] == "departing"
    m.handle(view(A, B, ME, view_id=3), 1.0)
    assert _phases(m)[B, 1] == "live"
    m.handle(data(1, sender=B, inc=2), 1.0)
    assert (_phases(m)[B, 1], _phases(m)[B, 2]) == ("retired", "departing")  # 2 not listed
    _assert_indexes_follow_phases(m)
    m.handle(TICK, 1.0 + CFG.flush_grace)
    assert (B, 1) not in _phases(m)
    assert (B, 2) not in _phases(m)
    assert m._lives.tombstones.covers(B, 2)
    assert m.buffer_size == 0
    _assert_indexes_follow_phases(m)


def test_coordinator_part_exists_only_while_coordinating() -> None:
    """Rules 12, 24: the stability coordinator is built when this node becomes the view's
    leader and dropped when it stops, so what it was told (reports, hearsay lives) does
    not outlive its term: back as coordinator, an old report no longer counts."""
    m = machine()
    assert m._coord is None
    m.handle(view(B, ME, leader=ME), 0.0)
    first = m._coord
    assert first is not None
    m.handle(data(1, sender=B), 0.0)
    m.handle(recv(B, Status(view_id=1, entries=(StatusEntry(B, 1, 1, 0),))), 0.1)
    assert first.reports == {B: {B: (1, 1, 0)}}
    m.handle(view(B, ME, leader=B, view_id=2), 0.2)
    assert m._coord is None
    m.handle(view(B, ME, leader=ME, view_id=3), 0.3)
    assert m._coord is not None
    assert m._coord is not first
    assert m._coord.reports == {}
    _assert_indexes_follow_phases(m)


@pytest.mark.parametrize("seed", range(20))
def test_indexes_follow_phases_under_random_input(seed: int) -> None:
    """Parts: under random peer input (Data and Xmit of several lives, Naks, Status,
    Stable, views that come and go, ticks), the registry's dicts stay exactly the
    indexes of the lives' phases, and the coordinator part exists exactly while
    this node leads its view."""
    rnd = random.Random(seed)
    m = machine(MulticastConfig(status_jitter=0.0, max_buffer=20, max_held=4), me=ME)
    now = 0.0
    view_id = 0
    for _ in range(400):
        now += rnd.choice((0.0, 0.01, 0.05, 0.3, 1.0))
        sender = rnd.choice((A, B, D))
        inc = rnd.choice((1, 1, 2, 3))
        roll = rnd.random()
        if roll < 0.45:
            event: object = data(rnd.randint(1, 12), sender=sender, inc=inc)
        elif roll < 0.55:
            event = recv(
                B,
                Xmit(
                    origin=sender,
                    origin_incarnation=inc,
                    seq=rnd.randint(1, 12),
                    kind=0,
                    payload=b"x",
                ),
            )
        elif roll < 0.6:
            event = recv(
                sender,
                Nak(
                    origin=rnd.choice((ME, A)),
                    origin_incarnation=1,
                    first=1,
                    last=rnd.randint(1, 9),
                ),
            )
        elif roll < 0.68:
            entries = tuple(
                StatusEntry(o, rnd.choice((1, 2)), rnd.randint(0, 9), 0) for o in (A, B, ME)
            )
            event = recv(sender, Status(view_id=view_id, entries=entries))
        elif roll < 0.76:
            entries2 = tuple(
                StableEntry(o, rnd.choice((1, 2)), rnd.randint(0, 6), rnd.randint(6, 12))
                for o in (A, B, D)
            )
            event = recv(A, Stable(view_id=view_id, entries=entries2))
        elif roll < 0.84:
            view_id += 1
            nodes = {ME} | {n for n in (A, B, D) if rnd.random() < 0.6}
            members = tuple(
                Member(node=n, incarnation=Incarnation(rnd.choice((1, 1, 2))))
                for n in sorted(nodes)
            )
            event = ViewChanged(
                view=View(
                    group=GroupId(1),
                    view_id=view_id,
                    leader=rnd.choice(sorted(nodes)),
                    epoch=Epoch(1),
                    members=members,
                )
            )
        elif roll < 0.9:
            event = Publish(kind=0, payload=b"p")
        else:
            event = TICK
        m.handle(event, now)
        _assert_indexes_follow_phases(m)


# ------------------------------------------------------------------ config


@pytest.mark.parametrize(
    ("kwargs", "says"),
    [
        ({"nak_delay": -1.0}, "nak_delay"),
        ({"nak_interval": 0.0}, "nak_interval"),
        ({"nak_delay": 0.2, "nak_interval": 0.1}, "nak_delay <= nak_interval"),
        ({"status_interval": float("nan")}, "finite"),
        ({"stable_interval": -1.0}, "stable_interval"),
        ({"status_jitter": 1.0}, "status_jitter"),
        ({"nak_escalate_after": -1}, "nak_escalate_after"),
        ({"max_nak_range": 0}, "max_nak_range"),
        ({"max_held": 0}, "max_held"),
        ({"max_buffer": 0}, "max_buffer"),
        ({"max_xmit_per_interval": 10, "max_nak_range": 20}, "max_xmit_per_interval"),
        ({"stable_repeats": -1}, "stable_repeats"),
        ({"flush_grace": 0.1}, "flush_grace"),
    ],
)
def test_config_validation_says_what_to_fix(kwargs: dict[str, Any], says: str) -> None:
    """Config: a bad config value, or a bad relation between values, raises ConfigError."""
    with pytest.raises(ConfigError, match=says):
        MulticastConfig(**kwargs)


def test_status_jitter_shortens_the_period_within_bounds() -> None:
    """Rule 11: each Status period is status_interval minus up to status_jitter of it."""
    cfg = MulticastConfig(status_jitter=0.5)
    m = MulticastMachine(cfg, me=ME, incarnation=I1, rng=random.Random(3))
    m.handle(view(A, ME), 0.0)
    m.handle(data(1), 0.0)
    due = m.next_deadline()
    assert due is not None
    assert cfg.status_interval * 0.5 <= due <= cfg.status_interval


# ------------------------------------------------------------------ properties

_node = st.sampled_from([A, B, ME, D])
_seq = st.integers(1, 12)
_messages = st.one_of(
    st.builds(Data, seq=_seq, kind=st.integers(0, 255), payload=st.binary(max_size=3)),
    st.builds(
        Xmit,
        origin=_node,
        origin_incarnation=st.integers(0, 3),
        seq=_seq,
        kind=st.just(0),
        payload=st.just(b""),
    ),
    st.builds(
        lambda o, i, f, n, h: Nak(origin=o, origin_incarnation=i, first=f, last=f + n, helper=h),
        _node,
        st.integers(0, 3),
        _seq,
        st.integers(0, 80),
        st.sampled_from([0, A, ME]),
    ),
    st.builds(
        lambda v, es: Status(view_id=v, entries=tuple(sorted(es.items()))),
        st.integers(0, 3),
        st.dictionaries(_node, st.tuples(st.integers(0, 3), st.integers(0, 15))).map(
            lambda d: {o: StatusEntry(o, *v) for o, v in d.items()}
        ),
    ).map(lambda s: Status(view_id=s.view_id, entries=tuple(e for _, e in s.entries))),
    st.builds(
        lambda v, es: Stable(view_id=v, entries=tuple(es[o] for o in sorted(es))),
        st.integers(0, 3),
        st.dictionaries(
            _node, st.tuples(st.integers(0, 3), st.integers(0, 8), st.integers(0, 8))
        ).map(lambda d: {o: StableEntry(o, i, min(a, b), max(a, b)) for o, (i, a, b) in d.items()}),
    ),
)
_events = st.one_of(
    st.builds(
        lambda s, i, m: Received(sender=s, incarnation=Incarnation(i), message=m),
        _node,
        st.integers(0, 3),
        _messages,
    ),
    st.just(TICK),
    st.builds(lambda v, lead: view(A, B, ME, leader=lead, view_id=v), st.integers(0, 3), _node),
    st.just(Publish(kind=0, payload=b"p")),
)


@settings(max_examples=150, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(
    me=st.sampled_from([A, ME]), events=st.lists(st.tuples(_events, st.floats(0, 0.2)), max_size=40)
)
def test_peer_input_never_raises_and_delivery_stays_fifo(
    me: NodeId, events: list[tuple[object, float]]
) -> None:
    """Property: any sequence of peer messages, views and ticks never raises; deliveries
    per origin and incarnation are strictly increasing; the buffer respects its cap;
    next_deadline never lies in the past after a tick."""
    cfg = MulticastConfig(status_jitter=0.0, max_buffer=5, max_held=3)
    m = machine(cfg, me=me)
    now = 0.0
    last: dict[tuple[int, int], int] = {}
    for event, dt in events:
        now += dt
        for action in m.handle(event, now):
            assert isinstance(action, (Deliver, Send, Multicast))
            if isinstance(action, Deliver):
                key = (action.origin, action.incarnation)
                assert action.seq > last.get(key, 0)
                last[key] = action.seq
            else:
                encode(1, me, 1, action.message)  # every message fits a datagram
        assert m.buffer_size <= cfg.max_buffer
    m.handle(TICK, now)
    due = m.next_deadline()
    assert due is None or due > now


# ------------------------------------------------------------------ simulation


def simulate(
    seed: int,
    n: int,
    *,
    loss: float,
    dup: float,
    per_publisher: int,
    publishers: int,
    crash: bool,
) -> None:
    """Run n machines over a lossy, duplicating, reordering FakeNet, through the codec,
    until quiet; then check the multicast invariants."""
    rnd = random.Random(seed)
    ids = [NodeId(1000 + i) for i in range(n)]
    cfg = MulticastConfig()
    net = FakeNet(
        rng=rnd,
        conditions=Conditions(latency=(0.0005, 0.01), loss=loss, duplicate=dup),
        codec=True,  # every message fits a datagram
    )
    ms = {
        i: MulticastMachine(cfg, me=i, incarnation=I1, rng=random.Random(seed * 31 + i))
        for i in ids
    }
    for i in ids:
        net.add(i, ms[i])

    def install(members: list[NodeId], view_id: int) -> None:
        v = View(
            group=GroupId(1),
            view_id=view_id,
            leader=members[0],
            epoch=Epoch(1),
            members=tuple(Member(node=i, incarnation=I1) for i in members),
        )
        for i in members:
            net.feed(i, ViewChanged(view=v))

    install(ids, 1)
    plan = sorted(
        (rnd.uniform(0.0, 1.0), p) for p in ids[:publishers] for _ in range(per_publisher)
    )
    sent = dict.fromkeys(ids, 0)
    victim = ids[rnd.randrange(n)] if crash else None
    crash_at = rnd.uniform(0.1, 1.0)

    def publish(p: NodeId) -> None:
        if p in ms:  # a crashed publisher publishes no more
            sent[p] += 1
            net.feed(p, Publish(kind=1, payload=b"%d.%d" % (p, sent[p])))

    def crash_victim(victim: NodeId) -> None:
        del ms[victim]
        ids.remove(victim)
        net.remove(victim)
        install(ids, 2)

    for t, p in plan:
        net.call_at(t, lambda p=p: publish(p))  # type: ignore[misc]
    if victim is not None:
        net.call_at(crash_at, lambda: crash_victim(victim))
        dead = victim
    assert net.run_until_quiet(120.0), "the group never went quiet"
    assert all(isinstance(n.action, Deliver) for n in net.notices)
    delivered: dict[NodeId, list[tuple[int, int, bytes]]] = {i: [] for i in ids}
    for note in net.notices:
        if note.address.node in delivered:
            d = note.action
            delivered[note.address.node].append((d.origin, d.seq, d.payload))
    for i in ids:
        got: dict[int, list[int]] = {}
        for origin, seq, payload in delivered[i]:
            assert payload == b"%d.%d" % (origin, seq)  # integrity: only what was sent
            got.setdefault(origin, []).append(seq)
        for p in ids:  # validity, FIFO, exactly once for live publishers
            assert got.get(p, []) == list(range(1, sent[p] + 1)), (i, p)
        assert ms[i].buffer_size == 0
        assert ms[i].stats.peak_buffer <= cfg.max_buffer
        assert ms[i].next_deadline() is None  # a quiet group costs nothing
    if crash:  # agreement on the dead origin's messages among survivors
        counts = {len([1 for o, _, _ in delivered[i] if o == dead]) for i in ids}
        assert len(counts) == 1, counts


@settings(max_examples=40, deadline=None)
@given(
    seed=st.integers(0, 2**32),
    n=st.integers(3, 6),
    loss=st.floats(0.0, 0.3),
    dup=st.floats(0.0, 0.1),
    per_publisher=st.integers(1, 25),
    publishers=st.integers(1, 6),
    crash=st.booleans(),
)
def test_simulation_every_member_delivers_everything_once_in_order(
    seed: int, n: int, loss: float, dup: float, per_publisher: int, publishers: int, crash: bool
) -> None:
    """Property: over a link losing up to 30%, duplicating and reordering, every member
    delivers every message of every live publisher exactly once in FIFO order, survivors
    agree on a crashed publisher's messages, and buffers and timers end empty."""
    simulate(
        seed,
        n,
        loss=loss,
        dup=dup,
        per_publisher=per_publisher,
        publishers=min(publishers, n),
        crash=crash,
    )


@pytest.mark.parametrize("seed", range(6))
def test_simulation_seeded(seed: int) -> None:
    """Seeded replays of the simulation at the worst loss, with and without a crash."""
    simulate(
        seed, 3 + seed % 4, loss=0.3, dup=0.05, per_publisher=20, publishers=3, crash=seed % 2 == 1
    )


def test_lost_history_walk_takes_the_origin_as_holding_everything_above_its_low() -> None:
    """Rule 16: a live origin in the view drops its own messages only as stable, so it holds
    every message of its life above its reported ``low``, however stale the ``delivered``
    of its last report. (Trusting that, the walk declared B's #5 lost, which nobody else
    reported holding, while B, live and in the view, still buffered it: D had dropped B's
    stream in an older view and resumed it higher; fuzz seed 1005943.)"""
    m = machine(me=A)
    m.handle(view(A, B, D, E), 0.0)
    m.handle(recv(B, Status(view_id=1, entries=(StatusEntry(B, 1, 3, 0),))), 0.1)  # stale
    m.handle(recv(D, Status(view_id=1, entries=(StatusEntry(B, 1, 6, 5),))), 0.1)  # resumed
    m.handle(recv(E, Status(view_id=1, entries=(StatusEntry(B, 1, 4, 0),))), 0.1)
    out = m.handle(TICK, CFG.stable_interval)
    digests = [a.message for a in out if isinstance(a, Multicast)]
    (entry,) = [e for d in digests for e in d.entries if e.origin == B]
    assert entry == StableEntry(B, 1, 0, 6)  # nothing of B is lost: B holds 1..6
    assert m.stats.skipped == 0
    assert m.delivered[B] == (I1, 0)


def test_coordinator_declares_no_stable_point_from_a_view_without_todays_members() -> None:
    """Rule 12: the stable point a coordinator declares must come from the reports of its
    view's members (or lost history, rule 16); one found in a view without some of today's
    members is void. (A node left out of its leader's view coordinated a view of itself,
    where stable is just what it delivered, then led a larger view whose first Stable
    carried that point: a member skipped messages the live origin still held; fuzz seed
    1004785.)"""
    m = machine(me=A)
    m.handle(view(A, leader=A), 0.0)
    for seq in (1, 2, 3):
        m.handle(data(seq, sender=B), 0.1)
    alone = m.handle(TICK, CFG.stable_interval)
    assert [e for a in alone for e in a.message.entries if e.origin == B] == [
        StableEntry(B, 1, 3, 3)  # in a view of one, everything it delivered is stable
    ]
    out = m.handle(view(A, B, D, leader=A, view_id=2), 0.5)
    assert [e for a in out for e in a.message.entries if e.origin == B] == [
        StableEntry(B, 1, 0, 3)  # D may lack 2..3, which B still holds
    ]
    m.handle(recv(B, Status(view_id=2, entries=(StatusEntry(B, 1, 3, 0),))), 0.6)
    m.handle(recv(D, Status(view_id=2, entries=(StatusEntry(B, 1, 1, 0),))), 0.6)
    out = m.handle(TICK, 0.5 + CFG.stable_interval)
    assert [e for a in out for e in a.message.entries if e.origin == B] == [
        StableEntry(B, 1, 1, 3)  # the minimum the members of view 2 delivered
    ]
    assert m.stats.skipped == 0


def test_member_reports_while_the_digest_declares_less_than_it_delivered() -> None:
    """Rule 11: a member whose coordinator's last Stable declared less of an origin than it
    delivered reports, although its buffer is empty (a new coordinator declares nothing
    until every member has reported: rule 12)."""
    m = machine()
    m.handle(view(A, B, ME), 0.0)
    m.handle(data(1), 0.0)
    m.handle(stable((A, 1, 1, 1)), 0.1)
    assert m.buffer_size == 0
    assert m.next_deadline() is None  # quiet: all it delivered is stable
    m.handle(view(A, B, ME, leader=B, view_id=2), 1.0)
    fresh = recv(B, Stable(view_id=2, entries=(StableEntry(A, 1, 0, 1),)))
    assert m.handle(fresh, 1.0) == []
    due = m.next_deadline()
    assert due is not None
    assert m.handle(TICK, due) == [
        Send(
            to=B,
            message=Status(view_id=2, entries=(StatusEntry(A, 1, 1, 1), StatusEntry(ME, 1, 0))),
        )
    ]


def test_corrupted_stable_cannot_move_the_point_beyond_what_the_origin_sent() -> None:
    """Rule 25: a Stable naming a point beyond what the origin was seen to send (a Data or
    Xmit received) moves this member's delivered point only up to there, counted in
    ``implausible``. (A bit-flipped Stable raised the point members skip to to 65,536
    while the sender was at seq 6: every later message of it was dropped as a duplicate,
    a sender wedged for good.)"""
    m = machine()
    m.handle(view(A, B, ME), 0.0)
    for seq in range(1, 5):
        m.handle(data(seq), 0.0)
    m.handle(data(6), 0.0)  # held: 5 is missing
    assert m.handle(stable((A, 1, 65_536, 65_536)), 0.1) == []
    assert m.stats.skipped == 2  # 5 and 6 (held: rule 17), as told; nothing beyond 6
    assert m.stats.implausible == 1
    assert m.delivered[A] == (I1, 6)
    assert m.handle(data(7), 0.2) == [deliver(7)]
    assert m.stats.duplicates == 0


def test_origin_overtaken_by_forged_messages_sends_past_them() -> None:
    """Rule 26: a Stable of the own view's coordinator whose ``highest`` for this node's own
    life is beyond what it sent (members delivered a forged Data of it, unkeyed) moves its
    send point there, so its next message is new to them, not dropped as a duplicate; a
    ``highest`` more than ``max_nak_range`` ahead (a forged digest) is ignored. (After the
    hostile-input flood, a forged Data at seq 2 of a member was delivered by all the others,
    its real seq 2 dropped by each as a duplicate.) Only once every member has what it did
    send (``stable`` = its point): it holds none of the skipped seqs, so a member missing
    them is told they are lost (rule 16)."""
    m = machine()
    m.handle(view(A, B, ME), 0.0)
    m.handle(Publish(kind=0, payload=b"1"), 0.0)
    far = 1 + CFG.max_nak_range + 1
    assert m.handle(stable((ME, 1, 0, 2)), 0.1) == []  # a member still lacks our seq 1
    assert (m.stats.overtaken, m.delivered[ME], m.buffer_size) == (0, (I1, 1), 1)
    assert m.handle(stable((ME, 1, 1, far)), 0.1) == []
    assert (m.stats.overtaken, m.delivered[ME]) == (0, (I1, 1))
    assert m.handle(stable((ME, 1, 1, 2)), 0.2) == []  # they delivered a seq 2 we never sent
    assert (m.stats.overtaken, m.delivered[ME]) == (1, (I1, 2))
    due = m.next_deadline()
    assert due is not None
    sent = [o.message for o in m.handle(TICK, due) if isinstance(o, Send)]
    assert [e for s in sent for e in s.entries if e[0] == ME] == [StatusEntry(ME, 1, 2, 2)]
    assert m.handle(Publish(kind=0, payload=b"3"), due)[1] == Multicast(
        message=Data(seq=3, kind=0, payload=b"3")
    )
    assert m.handle(stable((ME, 1, 3, 3)), due + 0.1) == []  # caught up: nothing moves
    assert (m.stats.overtaken, m.delivered[ME]) == (1, (I1, 3))


def test_origin_holds_its_messages_while_it_keeps_an_origin_its_view_does_not_list() -> None:
    """Rule 28 (the origin's hold): while this node keeps a DEPARTING life (here B, which
    sends although this node's view of itself alone does not list it), it keeps its own
    messages even once stable, so B, back in a view with it, can still fetch them; the
    hold ends ``flush_grace`` after the last such life is listed again or dropped. (Before,
    a node alone in its view found everything it published stable at once and dropped
    it; merged with members that had missed some, its live stream's messages were lost
    history and the members skipped them: fuzz seed 15113405.)"""
    m = machine(me=A)
    m.handle(view(A, leader=A), 0.0)
    m.handle(data(1, sender=B), 0.1)  # B is not in this view: its life is DEPARTING
    for _ in range(3):
        m.handle(Publish(kind=0, payload=b"x"), 0.2)
    digest = StableEntry(A, 1, 3, 3), StableEntry(B, 1, 1, 1)  # a view of one: all stable
    assert m.handle(TICK, CFG.stable_interval) == [
        Multicast(message=Stable(view_id=1, entries=digest))
    ]
    assert m.buffer_size == 3  # yet its own 1..3 are kept
    m.handle(view(A, B, leader=A, view_id=2), 1.0)  # B is listed again: the hold closes
    nak = Nak(origin=A, origin_incarnation=1, first=1, last=3)
    assert m.handle(recv(B, nak), 1.1) == [
        Send(to=B, message=Xmit(origin=A, origin_incarnation=1, seq=s, kind=0, payload=b"x"))
        for s in (1, 2, 3)
    ]
    assert m.stats.skipped == 0
    m.handle(TICK, 1.0 + CFG.flush_grace)  # the hold ends: what is stable goes
    assert m.buffer_size == 0


def test_coordinator_starts_the_hold_before_the_first_digest_of_a_view_without_a_member() -> None:
    """Rule 28 at a view change: the coordinator's hold begins before the view's first
    Stable, which it applies to its own stream at once. Here B, cut off, missed A's 1..2;
    the view without B finds them stable (C has them), yet A keeps them and answers B's
    Nak once B is back. (Before, the hold began after that digest had dropped them, above
    them: fuzz seed 26,202,255 at 20 servers with --supply-steps, where the coordinator
    9013 dropped its #4 in the view without 9011 and 9011, back 0.3 s later, never got
    it, nor #5-#9 behind it.)"""
    m = machine(me=A)
    m.handle(view(A, B, ME, leader=A), 0.0)
    m.handle(data(1, sender=B), 0.05)  # A keeps a life of B
    for _ in range(2):
        m.handle(Publish(kind=0, payload=b"x"), 0.1)
    assert m.handle(recv(ME, Status(view_id=1, entries=(StatusEntry(A, 1, 2, 0),))), 0.2) == []
    digest = StableEntry(A, 1, 2, 2), StableEntry(B, 1, 0, 1)  # A's 1..2 stable without B
    assert m.handle(view(A, ME, leader=A, view_id=2), 0.5) == [
        Multicast(message=Stable(view_id=2, entries=digest))
    ]
    assert m.buffer_size == 3  # B's 1, and A's own 1..2 held
    m.handle(view(A, B, ME, leader=A, view_id=3), 1.0)  # B is back
    nak = Nak(origin=A, origin_incarnation=1, first=1, last=2)
    assert m.handle(recv(B, nak), 1.1) == [
        Send(to=B, message=Xmit(origin=A, origin_incarnation=1, seq=s, kind=0, payload=b"x"))
        for s in (1, 2)
    ]


def test_a_view_that_admits_a_member_restarts_the_grace_of_retired_lives() -> None:
    """Rule 29: a retired life is kept flush_grace from the last view that admitted a
    member, not only from the restart: a member that comes back may hold the old life's
    last messages (fuzz seed 18,209,308: the two members that held #13 of a crashed
    origin rejoined 1.76 s after its restart; one survivor fetched it just in time, the
    other dropped the retired life 0.24 s after their return and never delivered it)."""
    m = machine(SLOW_STATUS)
    m.handle(view(A, B, ME), 0.0)
    m.handle(data(1, sender=B), 0.0)
    m.handle(view(A, B, ME, view_id=2), 0.5)  # nobody new: no change
    m.handle(data(1, sender=B, inc=2), 1.0)  # B restarted: life 1 retired until 3.0
    assert _phases(m)[B, 1] == "retired"
    m.handle(view(A, B, ME, view_id=3), 2.0)  # nobody new: still until 3.0
    m.handle(TICK, 1.0 + CFG.flush_grace)
    assert (B, 1) not in _phases(m)
    m = machine(SLOW_STATUS)
    m.handle(view(A, B, ME), 0.0)
    m.handle(data(1, sender=B), 0.0)
    m.handle(view(A, ME, view_id=2), 0.5)
    m.handle(data(1, sender=B, inc=2), 1.0)  # life 1 retired until 3.0
    m.handle(view(A, B, D, ME, view_id=3), 2.0)  # D (and B) admitted: until 2.0 + grace
    m.handle(TICK, 1.0 + CFG.flush_grace)
    assert _phases(m)[B, 1] == "retired"
    m.handle(TICK, 2.0 + CFG.flush_grace)
    assert (B, 1) not in _phases(m)
    _assert_indexes_follow_phases(m)


def test_a_retired_lifes_messages_go_to_it_after_its_successor_was_dropped() -> None:
    """Rules 23, 29: a message (or digest) of a retired life's incarnation belongs to that
    retired life even when the origin has no current life any more (its newer life left
    the view and was dropped while rule 29 kept the retired one): it is never taken as a
    new life of that incarnation, which would deliver its messages again (fresh seed
    19,201,411: #1 of a restarted origin's first life delivered twice)."""
    m = machine(SLOW_STATUS)
    m.handle(view(A, B, ME), 0.0)
    assert deliver(1, origin=B) in m.handle(data(1, sender=B), 0.0)
    m.handle(data(1, sender=B, inc=2), 0.1)  # B restarted: life 1 retired
    m.handle(view(A, ME, view_id=2), 0.2)  # life 2 departs
    m.handle(view(A, D, ME, view_id=3), 2.0)  # D admitted: the retired life is kept
    m.handle(TICK, 0.2 + CFG.flush_grace)  # life 2 dropped
    assert (B, 2) not in _phases(m) and _phases(m)[B, 1] == "retired"
    out = m.handle(data(1, sender=B), 2.3)
    assert not any(isinstance(a, Deliver) for a in out)  # delivered already
    assert deliver(2, origin=B) in m.handle(data(2, sender=B), 2.3)
    assert _phases(m)[B, 1] == "retired"
    _assert_indexes_follow_phases(m)
