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
from powergrid.protocols.multicast import Deliver, Publish
from powergrid.protocols.multicast._config import new_deliver
from powergrid.protocols.order import (
    MAX_ORDERED_PAYLOAD,
    OrderConfig,
    OrderedPublish,
    TotalOrderMachine,
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
from powergrid.wire import KIND_APP, KIND_ORDER_CLOCK, KIND_ORDERED

A, B, C = NodeId(1), NodeId(2), NodeId(3)
CFG = OrderConfig(clock_delay=0.125, sync_wait=0.5, depart_wait=0.25)


def view(view_id: int, *nodes: NodeId, inc: int = 1) -> ViewChanged:
    members = tuple(
        Member(node=n, incarnation=Incarnation(inc), rank=0, broker_capable=True) for n in nodes
    )
    return ViewChanged(
        view=View(
            group=GroupId(1), view_id=view_id, leader=max(nodes), epoch=Epoch(1), members=members
        )
    )


def app(origin: NodeId, ts: int, n: int, payload: bytes, *, view_id: int = 1) -> Deliver:
    body = struct.pack("!QQQ", ts, view_id, n) + payload
    return Deliver(
        origin=origin, incarnation=Incarnation(1), seq=n, kind=KIND_ORDERED, payload=body
    )


def clock(origin: NodeId, ts: int, *, view_id: int = 1) -> Deliver:
    body = struct.pack("!QQ", ts, view_id)
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
    out = []
    for a in actions:
        if type(a) is Publish:
            size = 24 if a.kind == KIND_ORDERED else 16
            out.append((a.kind, struct.unpack("!QQQ" if size == 24 else "!QQ", a.payload[:size])))
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


def test_rule_o4_the_hold_ends_after_sync_wait() -> None:
    m = TotalOrderMachine(CFG, me=A, incarnation=Incarnation(1))
    m.handle(view(1, A, B), 0.0)
    assert m.handle(OrderedPublish(payload=b"x"), 0.25) == []
    out = m.handle(DeadlineReached(), 0.5)
    assert sent(out) == [(KIND_ORDERED, (2, 1, 1))]


def test_rule_o4_a_member_admitted_later_makes_everyone_exchange_clocks_again() -> None:
    m = synced(A, B)
    out = m.handle(view(2, A, B, C), 1.0)
    assert [k for k, _ in sent(out)] == [KIND_ORDER_CLOCK]
    assert m.handle(OrderedPublish(payload=b"x"), 1.0) == []
    assert m.handle(clock(B, 3, view_id=2), 1.0) == []
    assert [k for k, _ in sent(m.handle(clock(C, 9, view_id=2), 1.0))] == [KIND_ORDERED]


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
    for bad in ({"clock_delay": -1}, {"sync_wait": float("nan")}, {"max_pending": 0}):
        with pytest.raises(ConfigError):
            OrderConfig(**bad)
    for groups in ("1", [2**32], [-1], 5):
        with pytest.raises(ConfigError, match="total_order"):
            NodeConfig(port=9000, total_order=groups)  # type: ignore[arg-type]


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
