"""Node ids show as host:port in the repr of every public notification; the simulator's
trace writes them as ints (its hash does not depend on how people read events)."""

from __future__ import annotations

import powergrid as pg
from powergrid.sim.memory import trace_repr
from powergrid.types import node_repr

A = pg.node_id("127.0.0.1", 47001)
B = pg.node_id("10.0.0.2", 9000)


def test_notifications_show_node_ids_as_addresses() -> None:
    """Rule: wherever a person reads an event (repr, str, f-string, a log's %r), a node id
    is host:port; the field stays an int."""
    view = pg.View(
        group=1,
        view_id=3,
        leader=A,
        epoch=2,
        members=(pg.Member(node=B, incarnation=5), pg.Member(node=A, incarnation=7)),
    )
    shown = {
        pg.MessageDelivered(group=1, sender=A, seq=4, payload=b"hi"): (
            "MessageDelivered(group=1, sender=127.0.0.1:47001, seq=4, payload=b'hi')"
        ),
        pg.UnicastDelivered(group=1, sender=A, payload=b"x"): (
            "UnicastDelivered(group=1, sender=127.0.0.1:47001, payload=b'x')"
        ),
        pg.LeaderElected(group=1, leader=A, epoch=2): (
            "LeaderElected(group=1, leader=127.0.0.1:47001, epoch=2)"
        ),
        pg.LeaderLost(group=1, leader=0, epoch=2): "LeaderLost(group=1, leader=-, epoch=2)",
        pg.MemberSuspected(group=1, node=B): "MemberSuspected(group=1, node=10.0.0.2:9000)",
        pg.MemberRemoved(group=1, node=B, reason="crashed"): (
            "MemberRemoved(group=1, node=10.0.0.2:9000, reason='crashed')"
        ),
        pg.MemberJoined(group=1, node=B, incarnation=5): (
            "MemberJoined(group=1, node=10.0.0.2:9000, incarnation=5)"
        ),
        pg.MemberLeft(group=1, node=B, reason="left"): (
            "MemberLeft(group=1, node=10.0.0.2:9000, reason='left')"
        ),
        pg.ViewChanged(view=view): (
            "ViewChanged(view=View(group=1, view_id=3, leader=127.0.0.1:47001, epoch=2, "
            "members=(Member(node=10.0.0.2:9000, incarnation=5, rank=0, broker_capable=False), "
            "Member(node=127.0.0.1:47001, incarnation=7, rank=0, broker_capable=False))))"
        ),
    }
    for event, text in shown.items():
        assert repr(event) == text
        assert f"{event}" == text or isinstance(event, pg.MemberJoined | pg.MemberLeft)
    assert type(view.leader) is int and view.leader == A


def test_a_value_that_is_no_node_id_shows_as_itself() -> None:
    """Rule: a repr never raises, whatever a field holds."""
    assert node_repr(2**60) == repr(2**60)
    assert node_repr("x") == "'x'"
    assert repr(pg.LeaderElected(group=1, leader=-1, epoch=0)) == (  # type: ignore[arg-type]
        "LeaderElected(group=1, leader=-1, epoch=0)"
    )


def test_the_trace_writes_node_ids_as_ints() -> None:
    """Rule: the trace keeps attrs' default repr (ids as ints), nested views included, so
    fuzz trace hashes do not change with how events are shown."""
    view = pg.View(
        group=1, view_id=3, leader=A, epoch=2, members=(pg.Member(node=A, incarnation=7),)
    )
    assert trace_repr(pg.ViewChanged(view=view)) == (
        f"ViewChanged(view=View(group=1, view_id=3, leader={A}, epoch=2, "
        f"members=(Member(node={A}, incarnation=7, rank=0, broker_capable=False),)))"
    )
    assert trace_repr(pg.MessageDelivered(group=1, sender=A, seq=4, payload=b"hi")) == (
        f"MessageDelivered(group=1, sender={A}, seq=4, payload=b'hi')"
    )
    assert trace_repr([(1, "a"), {2: None}]) == "[(1, 'a'), {2: None}]"
