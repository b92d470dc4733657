"""MemberJoined / MemberLeft come from the node itself, right after each ViewChanged, so
every network (memory, fuzz, real sockets) gives them the same way."""

from __future__ import annotations

import random
from collections import defaultdict

from powergrid.events import MemberJoined, MemberLeft, ViewChanged
from powergrid.node import Node, NodeConfig
from powergrid.protocols.membership import MemberRemoved
from powergrid.sim.memory import MemoryNetwork


def _node(port: int, incarnation: int = 1) -> Node:
    config = NodeConfig(port=port, broker_capable=True, rank=port % 100)
    return Node(config, incarnation=incarnation, rng=random.Random(port))


def _check_follows_views(notes: list[object], me: int) -> dict[int, tuple[object, ...]]:
    """Every member event follows a ViewChanged (or another member event of that view)
    and agrees with it; returns the members of the last view seen, by group."""
    views: dict[int, tuple[object, ...]] = {}
    previous: object = None
    for note in notes:
        if isinstance(note, MemberJoined | MemberLeft):
            assert isinstance(previous, ViewChanged | MemberJoined | MemberLeft)
            assert note.node != me  # never this node itself
            nodes = {m.node: m.incarnation for m in views[note.group]}  # type: ignore[attr-defined]
            if isinstance(note, MemberJoined):
                assert nodes[note.node] == note.incarnation
            elif note.reason != "replaced":
                assert note.node not in nodes
        if isinstance(note, ViewChanged):
            views[note.view.group] = note.view.members
        previous = note
    return views


def test_members_coming_and_going_are_reported_once_each_after_the_view() -> None:
    """Rule: after each view, one MemberJoined per other member new to it (all of them for
    the first view), one MemberLeft per member gone, with the reason MemberRemoved gave
    ("left", "crashed"), or "replaced" before the join of a member's newer life."""
    notes: dict[int, list[object]] = defaultdict(list)
    net = MemoryNetwork(seed=5, observer=lambda t, n, o: notes[n].append(o), keep_log=False)
    a, b, c, d = (_node(port) for port in (9001, 9002, 9003, 9004))
    for node in (a, b, c):
        net.add(node, at=0.0)
    net.run_until(3.0)
    joined = [(o.node, o.incarnation) for o in notes[a.node_id] if isinstance(o, MemberJoined)]
    assert sorted(joined) == [(b.node_id, 1), (c.node_id, 1)]  # once each, never a itself
    net.add(d, at=3.0)
    net.run_until(5.0)
    net.command(b.node_id, lambda ep, now: ep.leave(now))  # b leaves gracefully
    net.remove(c.node_id)  # c crashes
    net.run_until(9.0)
    net.remove(d.node_id)  # d crashes and comes back at once, a new life
    net.add(_node(9004, incarnation=2), at=9.05)
    net.run_until(14.0)

    mine = notes[a.node_id]
    views = _check_follows_views(mine, a.node_id)
    events = [
        (type(o).__name__, o.node, getattr(o, "reason", getattr(o, "incarnation", None)))
        for o in mine
        if isinstance(o, MemberJoined | MemberLeft)
    ]
    assert events.count(("MemberJoined", d.node_id, 1)) == 1
    assert events.count(("MemberLeft", b.node_id, "left")) == 1
    assert events.count(("MemberLeft", c.node_id, "crashed")) == 1
    assert ("MemberJoined", d.node_id, 2) in events
    gone_d = [e for e in events if e[1] == d.node_id and e[0] == "MemberLeft"]
    assert len(gone_d) == 1 and gone_d[0][2] in ("replaced", "crashed")
    assert {m.node: m.incarnation for m in views[1]} == {a.node_id: 1, d.node_id: 2}  # type: ignore[attr-defined]
    removed = [(o.node, o.reason) for o in mine if isinstance(o, MemberRemoved)]
    if (c.node_id, "crashed") not in removed:  # only the leader's membership removes
        assert a.stack(1).membership.leader != a.node_id
    # every node reports the same from its side: d's new life sees a and nobody gone
    new_d = [o for o in notes[d.node_id] if isinstance(o, MemberJoined | MemberLeft)]
    assert any(isinstance(o, MemberJoined) and o.node == a.node_id for o in new_d)
