"""Total order (powergrid.protocols.order): rules O1-O6 of docs/protocols/multicast.md,
the node option, the fuzz invariant and its canaries."""

from __future__ import annotations

import json
import random
import shlex
import struct
from collections import defaultdict
from typing import Any

import pytest

import powergrid.node as node_module
from powergrid import node as node_mod
from powergrid.cli import main
from powergrid.errors import ConfigError, PayloadTooLargeError, UsageError
from powergrid.events import DeadlineReached, Member, View, ViewChanged
from powergrid.node import MessageDelivered, Node, NodeConfig
from powergrid.protocols import order
from powergrid.protocols.fragments import (
    KIND_FRAGMENT,
    FragmentArrived,
    FragmentMachine,
    Reassembled,
    Split,
)
from powergrid.protocols.multicast import MAX_MULTICAST_PAYLOAD, Deliver, Publish
from powergrid.protocols.multicast._config import new_deliver
from powergrid.protocols.order import (
    MAX_ORDERED_PAYLOAD,
    ORDERED_FRAGMENT_DATA,
    OrderConfig,
    OrderedPublish,
    TotalOrderMachine,
    view_stamp,
)
from powergrid.sim.fuzzing import replay_command, run_datacentre
from powergrid.sim.invariants import (
    DataCentre,
    Sessions,
    TotalOrderAgreement,
    app_payload,
)
from powergrid.sim.memory import MemoryNetwork
from powergrid.types import Epoch, GroupId, Incarnation, NodeId
from powergrid.wire import (
    KIND_APP,
    KIND_ORDER_CLOCK,
    KIND_ORDERED,
    KIND_ORDERED_FRAGMENT,
    Fragment,
    decode_body,
)

A, B, C = NodeId(1), NodeId(2), NodeId(3)
CFG = OrderConfig(clock_delay=0.125, sync_wait=0.5, depart_wait=0.25)


_STAMP: dict[int, int] = {}
"""view id -> the stamp of the last view :func:`view` made with it (rule O4)."""
_VIEW_ID: dict[int, int] = {}
"""view stamp -> view id, to read the stamps of sent messages as view ids."""


def view(
    view_id: int, *nodes: NodeId, inc: int = 1, leader: NodeId | None = None, epoch: int = 1
) -> ViewChanged:
    members = tuple(
        Member(node=n, incarnation=Incarnation(inc), rank=0, broker_capable=True) for n in nodes
    )
    v = View(
        group=GroupId(1),
        view_id=view_id,
        leader=min(nodes) if leader is None else leader,
        epoch=Epoch(epoch),
        members=members,
    )
    stamp = view_stamp(v)
    _STAMP[view_id] = stamp
    _VIEW_ID[stamp] = view_id
    return ViewChanged(view=v)


def app(origin: NodeId, ts: int, n: int, payload: bytes, *, view_id: int = 1) -> Deliver:
    body = struct.pack("!QQQ", ts, _STAMP.get(view_id, 0), n) + payload
    return Deliver(
        origin=origin, incarnation=Incarnation(1), seq=n, kind=KIND_ORDERED, payload=body
    )


def clock(origin: NodeId, ts: int, *, view_id: int = 1) -> Deliver:
    body = struct.pack("!QQ", ts, _STAMP.get(view_id, 0))
    return Deliver(
        origin=origin, incarnation=Incarnation(1), seq=0, kind=KIND_ORDER_CLOCK, payload=body
    )


def synced(me: NodeId = A, *others: NodeId) -> TotalOrderMachine:
    """A machine of ``me`` in view 1 with ``others``, having heard each one's clock (O4)."""
    m = TotalOrderMachine(CFG, me=me, incarnation=Incarnation(1))
    m.handle(view(1, me, *others), 0.0)
    for o in others:
        m.handle(clock(o, 1), 0.0)
    return m


def delivered(actions: list[Any]) -> list[tuple[int, int, bytes]]:
    return [(a.origin, a.seq, a.payload) for a in actions if type(a) is Deliver]


def sent(actions: list[Any]) -> list[tuple[int, tuple[int, ...]]]:
    """(kind, (ts, view id, n) or (ts, view id)) of each message sent; the view id is
    read from the stamp (rule O4) of the view :func:`view` made last with it."""
    out = []
    for a in actions:
        if type(a) is Publish:
            size = 16 if a.kind == KIND_ORDER_CLOCK else 24
            head = struct.unpack("!QQQ" if size == 24 else "!QQ", a.payload[:size])
            out.append((a.kind, (head[0], _VIEW_ID.get(head[1], -1), *head[2:])))
    return out


# ------------------------------------------------------------------ rules


def test_rule_o1_a_message_takes_clock_plus_one_and_the_clock_rises_to_what_comes() -> None:
    m = synced(A, B)
    assert m.clock == 1  # its own clock message at the view took 1; B's (1) is no higher
    m.handle(clock(B, 40), 0.0)
    assert m.clock == 40
    out = m.handle(OrderedPublish(payload=b"x"), 0.0)
    assert sent(out) == [(KIND_ORDERED, (41, 1, 1))]
    assert m.clock == 41


def test_rule_o2_a_message_waits_until_every_other_member_passed_it() -> None:
    m = synced(A, B, C)
    out = m.handle(app(B, 5, 1, b"b1"), 0.0)
    assert delivered(out) == []  # C has not passed 5
    out = m.handle(clock(C, 4), 0.0)
    assert delivered(out) == []
    out = m.handle(app(C, 6, 1, b"c1"), 0.0)  # C passed 5: (5, B) goes, (6, C) waits for B
    assert delivered(out) == [(B, 1, b"b1")]
    out = m.handle(clock(B, 6), 0.0)
    assert delivered(out) == [(C, 1, b"c1")]
    assert m.last_key == (6, C, 1, 1)


def test_rule_o2_own_messages_wait_for_the_others_too() -> None:
    m = synced(A, B)
    out = m.handle(OrderedPublish(payload=b"mine"), 0.0)
    ((kind, payload),) = [(a.kind, a.payload) for a in out]
    own = Deliver(origin=A, incarnation=Incarnation(1), seq=5, kind=kind, payload=payload)
    assert delivered(m.handle(own, 0.0)) == []
    ts = struct.unpack("!Q", payload[:8])[0]
    assert delivered(m.handle(clock(B, ts), 0.0)) == [(A, 1, b"mine")]


def test_rule_o3_a_clock_message_answers_app_messages_once_after_clock_delay() -> None:
    m = synced(A, B, C)
    m.handle(app(B, 10, 1, b"1"), 1.0)
    assert m.next_deadline() == 1.125
    m.handle(app(B, 11, 2, b"2"), 1.0625)  # within the delay: the same clock message
    assert m.next_deadline() == 1.125
    out = m.handle(DeadlineReached(), 1.125)
    assert sent(out) == [(KIND_ORDER_CLOCK, (12, 1))]
    assert m.next_deadline() is None
    m.handle(clock(C, 20), 1.25)  # clock messages never call for clock messages
    assert m.next_deadline() is None
    assert m.stats.clocks_sent == 2  # the view's and this one


def test_rule_o3_an_app_message_sent_meanwhile_replaces_the_clock_message() -> None:
    m = synced(A, B)
    m.handle(app(B, 10, 1, b"1"), 1.0)
    m.handle(OrderedPublish(payload=b"mine"), 1.0)
    assert m.next_deadline() is None


def test_rule_o4_a_new_life_holds_its_publications_until_it_heard_every_clock() -> None:
    m = TotalOrderMachine(CFG, me=A, incarnation=Incarnation(1))
    assert m.handle(OrderedPublish(payload=b"early"), 0.0) == []  # no view yet
    out = m.handle(view(3, A, B), 1.0)
    assert sent(out) == [(KIND_ORDER_CLOCK, (1, 3))]  # tells the others its clock
    assert m.next_deadline() == 1.5
    assert m.handle(clock(B, 30, view_id=2), 1.0) == []  # stamped in an older view
    out = m.handle(clock(B, 31, view_id=3), 1.25)
    assert sent(out) == [(KIND_ORDERED, (32, 3, 1))]  # above everything B delivered
    assert m.stats.held == 1


def test_rule_o4_a_holding_member_sends_its_clock_again_every_sync_wait_until_sync_max() -> None:
    """Fuzz seeds 22,402,054 and 22,401,751: a member that released its hold after
    ``sync_wait`` without the others' clocks stamped its messages below what they had
    delivered, late at all of them. It now sends its clock message again every
    ``sync_wait`` (a member that joined its stream after the first never got it) and
    releases without the clocks only after ``sync_max``, the last resort."""
    cfg = OrderConfig(clock_delay=0.125, sync_wait=0.5, sync_max=1.25, depart_wait=0.25)
    m = TotalOrderMachine(cfg, me=A, incarnation=Incarnation(1))
    m.handle(view(2, A, B, C), 0.0)
    assert m.handle(OrderedPublish(payload=b"x"), 0.0) == []
    assert m.next_deadline() == 0.5
    m.handle(clock(C, 3, view_id=2), 0.25)  # C heard; B not
    assert sent(m.handle(DeadlineReached(), 0.5)) == [(KIND_ORDER_CLOCK, (4, 2))]
    assert m.next_deadline() == 1.0
    m.handle(clock(B, 5, view_id=1), 0.75)  # B's backlog of an older view: not its clock
    assert sent(m.handle(DeadlineReached(), 1.0)) == [(KIND_ORDER_CLOCK, (6, 2))]
    assert m.next_deadline() == 1.25  # capped at sync_max
    out = m.handle(DeadlineReached(), 1.25)
    assert sent(out) == [(KIND_ORDERED, (7, 2, 1))]
    assert m.next_deadline() is None


def test_rule_o4_a_member_answers_a_clock_of_its_view_it_has_sent_nothing_in() -> None:
    """A member to which a view admits nobody (the next view of its leader) holds
    nothing and sends no clock of its own; it answers a clock message stamped with its
    view once, so the holding member's wait ends."""
    m = synced(A, B)
    m.handle(view(2, A, B, C), 1.0)  # C admitted: A exchanges clocks
    m.handle(clock(B, 3, view_id=2), 1.0)
    m.handle(clock(C, 4, view_id=2), 1.0)
    out = m.handle(view(3, A, B, C), 1.5)  # the next view of A: nothing to exchange
    assert sent(out) == []
    assert sent(m.handle(clock(C, 9, view_id=3), 1.5)) == [(KIND_ORDER_CLOCK, (10, 3))]
    assert sent(m.handle(clock(B, 11, view_id=3), 1.5)) == []  # answered once a view


def test_rule_o4_a_member_answers_on_installing_the_view_a_clock_came_stamped_with() -> None:
    m = synced(A, B)
    view(2, A, B)  # (made before A installs it: B's clock is stamped with it)
    assert sent(m.handle(clock(B, 5, view_id=2), 1.0)) == []  # not A's view yet
    out = m.handle(view(2, A, B), 1.25)
    assert sent(out) == [(KIND_ORDER_CLOCK, (6, 2))]


def test_rule_o4_a_member_admitted_later_makes_everyone_exchange_clocks_again() -> None:
    m = synced(A, B)
    out = m.handle(view(2, A, B, C), 1.0)
    assert [k for k, _ in sent(out)] == [KIND_ORDER_CLOCK]
    assert m.handle(OrderedPublish(payload=b"x"), 1.0) == []
    assert m.handle(clock(B, 3, view_id=2), 1.0) == []
    assert [k for k, _ in sent(m.handle(clock(C, 9, view_id=2), 1.0))] == [KIND_ORDERED]


def test_rule_o4_a_twin_leaders_view_numbered_alike_is_not_this_nodes_view() -> None:
    """Fuzz seed 22,110,028: of twin leaders of a flapping split, B's side numbered its
    view 5 like A's own view 5 but left A out (and delivered without waiting for A). A
    message of B stamped with B's view 5 must not end A's hold; one stamped with A's
    view 5 (B installed it: it lists A) does."""
    view(5, B, C, leader=B, epoch=3)  # B's side, without A
    twin = clock(B, 80, view_id=5)  # (clock() stamps with the view made last)
    m = TotalOrderMachine(CFG, me=A, incarnation=Incarnation(1))
    m.handle(view(5, A, B, C, leader=A, epoch=2), 0.0)  # A's, numbered alike
    assert m.handle(OrderedPublish(payload=b"x"), 0.0) == []
    assert m.handle(twin, 0.0) == []
    assert m.handle(clock(C, 81, view_id=5), 0.0) == []  # C heard, B still awaited
    out = m.handle(clock(B, 82, view_id=5), 0.0)
    assert sent(out) == [(KIND_ORDERED, (83, 5, 1))]


@pytest.mark.parametrize(
    ("view_id", "leader", "epoch", "exchange"),
    [
        (2, A, 1, False),  # the next view of the same leader and epoch
        (3, A, 1, True),  # a view skipped: it may have left this node out and back in
        (2, A, 2, True),  # a new epoch
        (2, B, 1, True),  # another leader
    ],
)
def test_rule_o4_a_view_not_next_in_its_leaders_numbering_exchanges_clocks(
    view_id: int, leader: NodeId, epoch: int, exchange: bool
) -> None:
    """Fuzz seed 22,110,028: A's views listed B throughout while B's side (another
    leader) left A out and delivered without it; A's next view, of a new leader or epoch
    with the same members, admits A at B, so A holds until B's clock of that view came."""
    m = synced(A, B)
    out = m.handle(view(view_id, A, B, leader=leader, epoch=epoch), 1.0)
    assert [k for k, _ in sent(out)] == ([KIND_ORDER_CLOCK] if exchange else [])
    out = m.handle(OrderedPublish(payload=b"x"), 1.0)
    assert [k for k, _ in sent(out)] == ([] if exchange else [KIND_ORDERED])
    if exchange:
        out = m.handle(clock(B, 40, view_id=view_id), 1.0)
        assert sent(out) == [(KIND_ORDERED, (41, view_id, 1))]


def test_rule_o5_a_message_below_the_last_delivered_key_is_never_delivered() -> None:
    m = synced(A, B)
    m.handle(view(2, A, B, C), 0.0)  # (clocks of C not needed to deliver)
    m.handle(view(3, A, B), 0.0)  # C removed: still waited for until 0.25 (rule O2)
    assert delivered(m.handle(app(B, 9, 1, b"b"), 0.0)) == []
    assert [k for k, _ in sent(m.handle(DeadlineReached(), 0.125))] == [KIND_ORDER_CLOCK]
    assert m.next_deadline() == 0.25
    assert delivered(m.handle(DeadlineReached(), 0.25)) == [(B, 1, b"b")]
    assert delivered(m.handle(app(C, 5, 1, b"c"), 0.5)) == []  # below (9, B): late
    assert m.stats.late == 1


def test_rule_o2_a_life_that_left_is_waited_for_its_last_messages() -> None:
    m = synced(A, B, C)
    m.handle(view(2, A, B), 1.0)  # C left (crashed): its last message is still on its way
    assert delivered(m.handle(app(B, 9, 1, b"b"), 1.0)) == []
    out = m.handle(app(C, 5, 1, b"c"), 1.125)  # repaired from a member that had it
    assert delivered(out) == [(C, 1, b"c")]  # in its place; (9, B) waits for C to pass 9
    assert delivered(m.handle(DeadlineReached(), 1.25)) == [(B, 1, b"b")]
    assert delivered(m.handle(app(C, 6, 2, b"c2"), 1.0)) == []  # (too late: below 9)
    assert m.next_deadline() is None


def test_rule_o6_pending_is_bounded_by_dropping_the_highest_key() -> None:
    m = TotalOrderMachine(OrderConfig(max_pending=2), me=A, incarnation=Incarnation(1))
    m.handle(view(1, A, B, C), 0.0)
    for ts in (7, 5, 6):
        m.handle(app(B, ts, ts, b"%d" % ts), 0.0)
    assert m.pending == 2 and m.stats.overflow == 1
    out = m.handle(clock(C, 7), 0.0)
    assert [p for _, _, p in delivered(out)] == [b"5", b"6"]


def test_peer_garbage_is_counted_never_raised() -> None:
    m = synced(A, B)
    bad = Deliver(origin=B, incarnation=Incarnation(1), seq=3, kind=KIND_ORDERED, payload=b"x")
    assert m.handle(bad, 0.0) == []
    assert m.handle(clock(B, order.MAX_JUMP + 100), 0.0) == []
    assert m.handle(clock(B, 0), 0.0) == []
    assert (m.stats.malformed, m.stats.implausible) == (1, 2)


def test_local_misuse_raises() -> None:
    m = synced(A, B)
    with pytest.raises(PayloadTooLargeError):
        m.handle(OrderedPublish(payload=bytes(MAX_ORDERED_PAYLOAD + 1)), 0.0)
    with pytest.raises(UsageError):
        m.handle(OrderedPublish(payload="text"), 0.0)  # type: ignore[arg-type]
    with pytest.raises(UsageError):
        m.handle(object(), 0.0)
    for bad in (
        {"clock_delay": -1},
        {"sync_wait": float("nan")},
        {"sync_max": -1.0},
        {"max_pending": 0},
    ):
        with pytest.raises(ConfigError):
            OrderConfig(**bad)
    for groups in ("1", [2**32], [-1], 5):
        with pytest.raises(ConfigError, match="total_order"):
            NodeConfig(port=9000, total_order=groups)  # type: ignore[arg-type]


# ------------------------------------------------------------------ large messages


def pieces(payload: bytes) -> list[bytes]:
    """The fragment bodies of ``payload``, cut to fit an ordered message."""
    out = FragmentMachine().handle(Split(payload=payload, data=ORDERED_FRAGMENT_DATA), 0.0)
    return [p.payload for p in out]


def ofrag(origin: NodeId, ts: int, n: int, body: bytes) -> Deliver:
    payload = struct.pack("!QQQ", ts, 1, n) + body
    return Deliver(
        origin=origin,
        incarnation=Incarnation(1),
        seq=n,
        kind=KIND_ORDERED_FRAGMENT,
        payload=payload,
    )


def test_a_large_ordered_publish_is_k_ordered_fragment_publishes() -> None:
    """Each fragment is an ordered message of its own: its own n and timestamp, outer
    kind 252, the order header (24 bytes) and the fragment body within one multicast."""
    payload = bytes(range(256)) * 20  # 5,120 bytes
    bodies = pieces(payload)
    assert len(bodies) == -(-len(payload) // ORDERED_FRAGMENT_DATA) == 4
    m = synced(A, B)
    out: list[Any] = []
    for body in bodies:
        out += m.handle(OrderedPublish(payload=body, kind=KIND_FRAGMENT), 0.0)
    assert [type(a) for a in out] == [Publish] * 4
    assert all(a.kind == KIND_ORDERED_FRAGMENT for a in out)
    assert [head for _, head in sent(out)] == [(2, 1, 1), (3, 1, 2), (4, 1, 3), (5, 1, 4)]
    assert [a.payload[24:] for a in out] == bodies
    assert max(len(a.payload) for a in out) <= MAX_MULTICAST_PAYLOAD
    assert len(out[0].payload) == MAX_MULTICAST_PAYLOAD  # a full piece fills the datagram
    assert m.next_number == 5 and m.stats.published == 4
    with pytest.raises(UsageError, match="kind"):
        m.handle(OrderedPublish(payload=b"x", kind=7), 0.0)


def test_rule_o4_held_fragments_keep_their_kind() -> None:
    m = TotalOrderMachine(CFG, me=A, incarnation=Incarnation(1))
    m.handle(view(1, A, B), 0.0)
    assert m.handle(OrderedPublish(payload=b"f", kind=KIND_FRAGMENT), 0.0) == []
    assert m.handle(OrderedPublish(payload=b"a"), 0.0) == []
    out = m.handle(clock(B, 1), 0.0)  # B's clock came: released in order
    assert [(a.kind, a.payload[16:24], a.payload[24:]) for a in out] == [
        (KIND_ORDERED_FRAGMENT, struct.pack("!Q", 1), b"f"),
        (KIND_ORDERED, struct.pack("!Q", 2), b"a"),
    ]


def ordered_app_sequence(
    me: NodeId, arrivals: list[Deliver], others: tuple[NodeId, ...]
) -> list[tuple[int, int, bytes]]:
    """What ``me``'s app gets from ``arrivals`` through its order layer and fragment
    machine, as the node wires them: (origin, seq, payload)."""
    m = synced(me, *others)
    frags = FragmentMachine()
    app_seq: list[tuple[int, int, bytes]] = []
    flush = [clock(o, 100) for o in others]
    for ev in [*arrivals, *flush]:
        for act in m.handle(ev, 0.0):
            if type(act) is not Deliver:
                continue
            if act.kind == KIND_APP:
                app_seq.append((act.origin, act.seq, act.payload))
            else:
                assert act.kind == KIND_FRAGMENT
                arrived = FragmentArrived(
                    channel="multicast",
                    origin=act.origin,
                    incarnation=act.incarnation,
                    seq=act.seq,
                    payload=act.payload,
                )
                for done in frags.handle(arrived, 0.0):
                    assert isinstance(done, Reassembled)
                    app_seq.append((done.origin, done.seq, done.payload))
    assert frags.partials == ()
    return app_seq


def test_large_and_small_messages_of_two_senders_deliver_in_one_order_everywhere() -> None:
    """B sends L1 (3 fragments) then b1; C sends c1, L2 (2 fragments), c2; the keys
    interleave. Each member, whatever the interleaving of the two FIFO streams, gets
    each message once, whole, numbered by its first fragment, in one order: a large
    message takes the place of its last fragment."""
    large1 = bytes(range(251)) * 11  # 2,761 bytes: 3 pieces
    large2 = bytes(range(7, 240)) * 6  # 1,398 bytes: 2 pieces
    l1, l2 = pieces(large1), pieces(large2)
    assert (len(l1), len(l2)) == (3, 2)
    from_b = [ofrag(B, 3, 1, l1[0]), ofrag(B, 4, 2, l1[1]), ofrag(B, 7, 3, l1[2])]
    from_b.append(app(B, 8, 4, b"b1"))
    from_c = [app(C, 2, 1, b"c1"), ofrag(C, 5, 2, l2[0]), ofrag(C, 6, 3, l2[1])]
    from_c.append(app(C, 9, 4, b"c2"))
    want = [(C, 1, b"c1"), (C, 2, large2), (B, 1, large1), (B, 4, b"b1"), (C, 4, b"c2")]
    rng = random.Random(20)
    members = (A, B, C)
    for me in members:
        others = tuple(x for x in members if x != me)
        for _ in range(5):  # interleavings that keep each origin's FIFO order
            streams = [list(from_b), list(from_c)]
            arrivals = []
            while any(streams):
                stream = rng.choice([st for st in streams if st])
                arrivals.append(stream.pop(0))
            assert ordered_app_sequence(me, arrivals, others) == want


def test_a_late_fragment_costs_that_member_the_whole_message_only() -> None:
    """Rule O5 with fragments: B is not in A's view (a partition), so A delivers C's
    (10, C) without waiting for B; B's first fragment (ts 3) then comes late and is
    dropped, the fragment machine drops the rest of that message (never a wrong one),
    and B's next message is delivered."""
    big_one = bytes(range(200)) * 10  # 2,000 bytes: 2 pieces
    f1, f2 = pieces(big_one)
    arrivals = [app(C, 10, 1, b"c1"), ofrag(B, 3, 1, f1), ofrag(B, 13, 2, f2)]
    arrivals.append(app(B, 14, 3, b"b3"))
    got = ordered_app_sequence(A, arrivals, (C,))
    assert got == [(C, 1, b"c1"), (B, 3, b"b3")]
    assert decode_body(KIND_FRAGMENT, f2) == Fragment(1, 2000, ORDERED_FRAGMENT_DATA, f2[12:])


# ------------------------------------------------------------------ nodes


def run_cluster(total_order: bool, *, loss: float = 0.0) -> dict[int, list[bytes]]:
    """Three nodes, each multicasting 20 messages at once with the others; what each
    delivered, in order."""
    got: dict[int, list[bytes]] = defaultdict(list)

    def observe(time: float, node: int, out: object) -> None:
        if isinstance(out, MessageDelivered):
            got[node].append(out.payload)

    lossy = random.Random(5)
    net = MemoryNetwork(
        seed=3,
        observer=observe,
        keep_log=False,
        drop=lambda s, d, b: loss > 0 and lossy.random() < loss,
    )
    nodes = []
    for i in range(3):
        cfg = NodeConfig(
            port=9000 + i, broker_capable=True, total_order={1} if total_order else set()
        )
        n = Node(cfg, incarnation=1, rng=random.Random(i))
        nodes.append(n)
        net.add(n, at=0.0)
    net.run_until(4.0)
    for k in range(20):
        for n in nodes:
            net.command(
                n.node_id, lambda nd, now, k=k: nd.multicast(b"%d-%d" % (nd.node_id, k), now)
            )
        net.run_until(net.now + 0.003)
    net.run_until(net.now + 3.0)
    return {n.node_id: got[n.node_id] for n in nodes}


def test_nodes_deliver_everything_in_one_order_under_loss() -> None:
    got = run_cluster(True, loss=0.1)
    first = next(iter(got.values()))
    assert len(first) == 60
    assert all(seq == first for seq in got.values())


def test_large_and_small_ordered_messages_of_two_senders_one_order_under_loss() -> None:
    """3 nodes, 10% loss: two senders multicast large (fragmented) and small messages at
    once; every member delivers all of them, whole, once, in the same order, each
    numbered by its first fragment (a large one takes a number per fragment)."""
    got: dict[int, list[tuple[int, int, bytes]]] = defaultdict(list)

    def observe(time: float, node: int, out: object) -> None:
        if isinstance(out, MessageDelivered):
            got[node].append((out.sender, out.seq, out.payload))

    lossy = random.Random(13_800_007)
    loss = [0.0]
    net = MemoryNetwork(
        seed=13_800_007,
        observer=observe,
        keep_log=False,
        drop=lambda s, d, b: lossy.random() < loss[0],
    )
    nodes = []
    for i in range(3):
        cfg = NodeConfig(port=9000 + i, broker_capable=True, total_order={1})
        nodes.append(Node(cfg, incarnation=1, rng=random.Random(i)))
        net.add(nodes[-1], at=0.0)
    net.run_until(4.0)
    loss[0] = 0.1
    sizes = [40_000, 20, 3_000, MAX_ORDERED_PAYLOAD + 1, 20, 100_000, 1_400, 20]
    sent: dict[int, list[bytes]] = defaultdict(list)
    for k, size in enumerate(sizes):
        for sender in nodes[:2]:
            payload = (bytes([sender.node_id % 251, k]) * size)[:size]
            sent[sender.node_id].append(payload)

            def send(nd: Node, now: float, p: bytes = payload) -> list[Any]:
                return nd.multicast(p, now)

            net.command(sender.node_id, send)
        net.run_until(net.now + 0.004)
    net.run_until(net.now + 5.0)
    loss[0] = 0.0
    net.run_until(net.now + 5.0)
    first = got[nodes[0].node_id]
    assert len(first) == 2 * len(sizes)
    assert all(got[n.node_id] == first for n in nodes)
    for sender in nodes[:2]:
        mine = [(seq, p) for origin, seq, p in first if origin == sender.node_id]
        assert [p for _, p in mine] == sent[sender.node_id]
        spans = [
            1 if len(p) <= MAX_ORDERED_PAYLOAD else -(-len(p) // ORDERED_FRAGMENT_DATA)
            for p in sent[sender.node_id]
        ]
        assert [seq for seq, _ in mine] == [1 + sum(spans[:i]) for i in range(len(spans))]
    senders = [origin for origin, _, _ in first]
    assert senders != sorted(senders)  # the two senders' messages interleave
    for n in nodes:
        assert n.stack(1).fragments.stats.reassembled == 10  # 5 large from each sender
        assert n.stack(1).fragments.held == 0


def test_without_the_option_the_same_run_is_fifo_only() -> None:
    got = run_cluster(False)
    orders = {tuple(seq) for seq in got.values()}
    assert all(len(seq) == 60 for seq in got.values())
    assert len(orders) > 1  # concurrent senders: each node delivers its own first


def test_a_node_without_the_option_drops_ordered_messages_counted() -> None:
    n = Node(NodeConfig(port=9000), incarnation=1, rng=random.Random(0))
    n.start(0.0)
    stack = n.stack(1)
    queue: list[Any] = []
    node_module._on_deliver(n, stack, app(B, 3, 1, b"x"), 0.0, queue, [])
    assert (queue, n.stats.unroutable) == ([], 1)
    out: list[Any] = []
    node_module._on_deliver(n, stack, ofrag(B, 4, 2, pieces(bytes(2000))[0]), 0.0, queue, out)
    assert (queue, out, n.stats.unroutable) == ([], [], 2)  # kind 252 too


# ------------------------------------------------------------------ the invariant


def test_the_invariant_catches_two_members_delivering_a_pair_the_other_way_round() -> None:
    info = DataCentre(nodes=(), supply=0, total_order=True)
    inv = TotalOrderAgreement(info, Sessions(info))
    m1 = MessageDelivered(group=GroupId(1), sender=A, seq=1, payload=app_payload(A, 1, 1))
    m2 = MessageDelivered(group=GroupId(1), sender=B, seq=1, payload=app_payload(B, 1, 1))
    m3 = MessageDelivered(group=GroupId(1), sender=C, seq=1, payload=app_payload(C, 1, 1))
    for node, msgs in ((10, (m1, m2, m3)), (11, (m1, m3)), (12, (m2, m3))):
        for ev in msgs:
            inv.observe(0.0, NodeId(node), ev)
    assert inv.problems == []  # subsequences of one order
    inv.observe(1.0, NodeId(13), m3)
    inv.observe(1.0, NodeId(13), m1)
    assert len(inv.problems) == 2  # against 10 and against 11
    assert "delivered #1 of 0.0.0.0:3 life 1 before #1 of 0.0.0.0:1 life 1" in inv.problems[0]


def test_the_fuzz_replay_command_and_recipe_carry_the_option() -> None:
    assert replay_command(7, total_order=True) == "powergrid fuzz --replay 7 --total-order"
    r = run_datacentre(13_300_100, total_order=True, nodes=4, safety_s=2.0, liveness_s=6.0)
    assert r.ok, r.report()
    assert "total_order=True" in r.recipe


class ArrivalOrder(TotalOrderMachine):
    """Canary: a sequencer that delivers every message as it arrives (no rule O2)."""

    def _deliver_ready(self, out: list[Any]) -> None:
        pending = self._pending
        while pending:
            _ts, origin, inc, n, kind, payload = pending.pop()
            out.append(
                Deliver(
                    origin=NodeId(origin),
                    incarnation=Incarnation(inc),
                    seq=n,
                    kind=kind,
                    payload=payload,
                )
            )


class LateDelivered(TotalOrderMachine):
    """Canary: a late message (rule O5) is delivered when it comes instead of dropped,
    as a sequencer that takes over would deliver what its predecessor ordered later."""

    def _on_deliver(self, ev: Deliver, now: float) -> list[Any]:
        late = self._stats.late
        out = super()._on_deliver(ev, now)
        if self._stats.late > late and ev.kind == KIND_ORDERED:
            _, _, n = struct.unpack("!QQQ", ev.payload[:24])
            out.append(new_deliver(ev.origin, ev.incarnation, n, KIND_APP, ev.payload[24:]))
        return out


@pytest.mark.parametrize("mutant", [ArrivalOrder, LateDelivered])
def test_canary_a_broken_sequencer_is_caught_by_the_total_order_invariant(
    mutant: type[TotalOrderMachine], monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(node_mod, "TotalOrderMachine", mutant)
    for seed in range(13_300_200, 13_300_260):
        r = run_datacentre(seed, total_order=True, nodes=5, safety_s=3.0, liveness_s=4.0)
        names = {v.invariant for v in r.violations}
        if "total-order" in names:
            caught = next(v for v in r.violations if v.invariant == "total-order")
            assert caught.replay.endswith("--total-order")
            print(f"{mutant.__name__} caught at seed {seed}")
            return
    pytest.fail(f"{mutant.__name__} was not caught within 60 seeds")


def test_the_cli_flag_turns_it_on_and_a_replay_of_a_caught_canary_fails_again(
    capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    """``powergrid fuzz --total-order``: clean with the real machine; with the canary the
    violation's replay names --total-order, and running it fails the same way."""
    args = ["fuzz", "--seeds", "1", "--start", "13300200", "--nodes", "4", "--json"]
    assert main([*args, "--total-order"]) == 0
    assert json.loads(capsys.readouterr().out)["violations"] == []
    monkeypatch.setattr(node_mod, "TotalOrderMachine", ArrivalOrder)
    assert main([*args, "--total-order"]) == 1
    v = json.loads(capsys.readouterr().out)["violations"][0]
    assert v["replay"] == "powergrid fuzz --replay 13300200 --nodes 4 --total-order"
    assert main([*shlex.split(v["replay"])[1:], "--json"]) == 1
    again = json.loads(capsys.readouterr().out)["violations"][0]
    assert (again["invariant"], again["detail"]) == (v["invariant"], v["detail"])
