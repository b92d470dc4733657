"""Multicast flow control (rule 27): the send window, credits that follow stability,
a buffer cap that never evicts the node's own window, and back-pressure in the node."""

from __future__ import annotations

import random
from typing import Any

import pytest

from powergrid.errors import ConfigError
from powergrid.events import DeadlineReached, Member, Multicast, Received, Send, View, ViewChanged
from powergrid.protocols.multicast import (
    MulticastConfig,
    MulticastMachine,
    Publish,
    WindowFull,
    WindowOpen,
)
from powergrid.types import Epoch, GroupId, Incarnation, NodeId
from powergrid.wire import Data, Nak, Stable, StableEntry, Status, StatusEntry, Xmit

A, B, C = (NodeId(n) for n in (1, 2, 3))
I1 = Incarnation(1)
TICK = DeadlineReached()


def cfg(**kw: Any) -> MulticastConfig:
    return MulticastConfig(status_jitter=0.0, **kw)


def machine(config: MulticastConfig, me: NodeId = C) -> MulticastMachine:
    return MulticastMachine(config, me=me, incarnation=I1, rng=random.Random(7))


def view(*nodes: NodeId, leader: NodeId = A, view_id: int = 1) -> ViewChanged:
    members = tuple(Member(node=n, incarnation=I1) for n in nodes)
    return ViewChanged(
        view=View(group=GroupId(1), view_id=view_id, epoch=Epoch(1), leader=leader, members=members)
    )


def recv(sender: NodeId, message: Any) -> Received:
    return Received(sender=sender, incarnation=I1, message=message)


def stable(*entries: tuple[int, int, int, int]) -> Received:
    return recv(A, Stable(view_id=1, entries=tuple(StableEntry(*e) for e in entries)))


def publish(m: MulticastMachine, payload: bytes, now: float = 0.0, flow: bool = True) -> list[Any]:
    return m.handle(Publish(kind=0, payload=payload, flow=flow), now)


def test_a_full_window_refuses_a_publish_and_stability_reopens_it() -> None:
    """Rule 27: at most send_window own messages are unstable; beyond, a Publish returns
    WindowFull, sends nothing and uses no seq; the own coordinator's Stable makes room and
    the machine says WindowOpen once."""
    m = machine(cfg(send_window=3))
    m.handle(view(A, B, C), 0.0)
    assert m.window_room == 3
    for i in range(3):
        assert any(isinstance(a, Multicast) for a in publish(m, b"%d" % i))
    assert m.window_room == 0
    assert publish(m, b"x") == [WindowFull(in_flight=3, window=3)]
    assert publish(m, b"x") == [WindowFull(in_flight=3, window=3)]
    assert (m.stats.published, m.stats.window_full) == (3, 2)
    out = m.handle(stable((C, 1, 2, 3)), 0.1)
    assert out.count(WindowOpen(room=2)) == 1
    assert m.window_room == 2
    assert m.handle(stable((C, 1, 2, 3)), 0.2).count(WindowOpen(room=2)) == 0  # said once
    sent = [a.message for a in publish(m, b"y", 0.3) if isinstance(a, Multicast)]
    assert sent == [Data(seq=4, kind=0, payload=b"y")]


def test_without_a_window_nothing_is_refused_and_room_is_none() -> None:
    m = machine(cfg())
    m.handle(view(A, B, C), 0.0)
    for i in range(50):
        publish(m, b"%d" % i)
    assert m.window_room is None
    assert (m.stats.published, m.stats.window_full) == (50, 0)


def test_protocol_messages_pass_a_full_window_and_count_in_it() -> None:
    """Rule 27: a Publish with flow=False (the node's market messages) is never refused."""
    m = machine(cfg(send_window=2))
    m.handle(view(A, B, C), 0.0)
    publish(m, b"1")
    publish(m, b"2")
    assert any(isinstance(a, Multicast) for a in publish(m, b"market", flow=False))
    assert m.window_room == 0
    assert publish(m, b"3") == [WindowFull(in_flight=3, window=2)]


def test_a_slow_member_holds_the_window_until_it_reports() -> None:
    """Rule 27 with rule 12: the coordinator's credit is the minimum over members, so the
    origin (here the coordinator) stays blocked while one member has not delivered."""
    m = machine(cfg(send_window=2), me=A)
    m.handle(view(A, B, C), 0.0)
    publish(m, b"1")
    publish(m, b"2")
    assert publish(m, b"3") == [WindowFull(in_flight=2, window=2)]
    m.handle(recv(B, Status(view_id=1, entries=(StatusEntry(A, 1, 2, 0),))), 0.1)
    m.handle(TICK, 1.0)
    assert m.window_room == 0  # C, the slow member, has delivered nothing
    m.handle(recv(C, Status(view_id=1, entries=(StatusEntry(A, 1, 1, 0),))), 1.1)
    due = m.next_deadline()
    assert due is not None and due <= 1.1 + cfg().stable_interval / 8  # credit soon
    out = m.handle(TICK, due)
    assert WindowOpen(room=1) in out
    assert m.window_room == 1


def test_a_member_reports_after_half_a_window_not_at_its_status_timer() -> None:
    """Rule 27: a member that delivered half a send window of an origin beyond what it last
    reported sends its Status at once (the origin's credit); then the timer again."""
    m = machine(cfg(send_window=4))
    m.handle(view(A, B, C), 0.0)
    m.handle(recv(A, Data(seq=1, kind=0, payload=b"")), 0.0)  # arms the Status timer
    assert m.next_deadline() == cfg().status_interval
    m.handle(recv(A, Data(seq=2, kind=0, payload=b"")), 0.01)
    assert m.next_deadline() == 0.01
    out = m.handle(TICK, 0.01)
    entries = (StatusEntry(A, 1, 2, 0), StatusEntry(C, 1, 0, 0))
    assert out == [Send(to=A, message=Status(view_id=1, entries=entries))]
    m.handle(recv(A, Data(seq=3, kind=0, payload=b"")), 0.02)  # one beyond the report
    assert m.next_deadline() == pytest.approx(0.01 + cfg().status_interval)


def test_under_flow_control_the_buffer_cap_evicts_nothing() -> None:
    """Rule 27 with rule 15: under flow control the cap drops nothing (the windows bound the
    buffer): every member keeps what it delivered until it is stable, so it can still
    resend it to a member that lacks it, whoever the origin, and nothing is declared."""
    m = machine(cfg(send_window=2, max_buffer=4), me=A)
    m.handle(view(A, B, C), 0.0)
    publish(m, b"own1")
    publish(m, b"own2")
    for seq in range(1, 6):
        m.handle(recv(B, Data(seq=seq, kind=0, payload=b"%d" % seq)), 0.0)
    assert (m.buffer_size, m.stats.buffer_overflow) == (7, 0)
    nak = Nak(origin=B, origin_incarnation=1, first=1, last=5)
    assert [a.message.seq for a in m.handle(recv(C, nak), 0.1)] == [1, 2, 3, 4, 5]
    out = m.handle(TICK, 0.25)
    entries = [e for a in out if isinstance(a, Multicast) for e in a.message.entries]
    assert [e.stable for e in entries if e.origin == B] == [0]  # C has not reported


def test_without_flow_control_the_cap_still_evicts_and_declares() -> None:
    """The contrast (rule 15): without a window the coordinator's evictions are declared."""
    m = machine(cfg(max_buffer=4), me=A)
    m.handle(view(A, B), 0.0)
    for seq in range(1, 7):
        m.handle(recv(B, Data(seq=seq, kind=0, payload=b"")), 0.0)
    out = m.handle(TICK, 0.25)
    entries = [e for a in out if isinstance(a, Multicast) for e in a.message.entries]
    assert [e.stable for e in entries if e.origin == B] == [2]


def test_send_window_is_validated() -> None:
    with pytest.raises(ConfigError, match="send_window"):
        MulticastConfig(send_window=-1)
    assert MulticastConfig(send_window=20, max_buffer=10).send_window == 20


def test_xmit_is_not_refused_by_the_window() -> None:
    """Only Publish is flow controlled: a full window still takes and answers repairs."""
    m = machine(cfg(send_window=1))
    m.handle(view(A, B, C), 0.0)
    publish(m, b"1")
    assert publish(m, b"2") == [WindowFull(in_flight=1, window=1)]
    xmit = Xmit(origin=A, origin_incarnation=1, seq=1, kind=0, payload=b"a")
    assert len(m.handle(recv(B, xmit), 0.0)) == 1


def test_a_member_behind_lost_history_asks_past_the_named_point() -> None:
    """Rule 25 with rule 27: a Stable naming a point beyond what a member has seen of the
    origin is not skipped to until a message past it is seen; the member's re-asks then
    add a range just above the named point, so a holder's Xmit shows it and the next Stable
    is taken. Without it a flow-controlled origin, whose window waits for that member,
    sent nothing new and both waited for good (fuzz seed 13200939 with --flow)."""
    m = machine(cfg(max_nak_range=2))
    m.handle(view(A, B, C), 0.0)
    m.handle(recv(B, Data(seq=1, kind=0, payload=b"1")), 0.0)
    m.handle(stable((B, 1, 5, 8)), 0.1)  # 2..5 are lost history; B went up to 8
    assert m.delivered[B] == (I1, 1)  # nothing of B beyond 1 seen: no skip yet
    assert m.handle(TICK, 0.1) == [
        Send(to=B, message=Nak(origin=B, origin_incarnation=1, first=2, last=3)),
        Send(to=B, message=Nak(origin=B, origin_incarnation=1, first=6, last=7)),
    ]
    m.handle(recv(A, Xmit(origin=B, origin_incarnation=1, seq=6, kind=0, payload=b"6")), 0.11)
    m.handle(stable((B, 1, 5, 8)), 0.2)
    assert m.delivered[B] == (I1, 6)
    assert m.stats.skipped == 4


def test_reading_a_full_window_asks_for_window_open() -> None:
    """Rule 27: a driver that reads window_room 0 and waits (instead of publishing and
    being refused) is told WindowOpen all the same when stability makes room."""
    m = machine(cfg(send_window=1))
    m.handle(view(A, B, C), 0.0)
    publish(m, b"1")
    assert m.window_room == 0
    assert WindowOpen(room=1) in m.handle(stable((C, 1, 1, 1)), 0.1)
