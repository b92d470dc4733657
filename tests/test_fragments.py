"""Fragmentation: large payloads split, reassembled in order once, hostile fragments
dropped and counted, memory bounded (powergrid.protocols.fragments)."""

from __future__ import annotations

import random
from collections import defaultdict
from typing import Any

import pytest

from powergrid import node as node_mod
from powergrid.errors import ConfigError, DecodeError, PayloadTooLargeError, UsageError
from powergrid.events import DeadlineReached, Member, View, ViewChanged
from powergrid.node import MessageDelivered, Node, NodeConfig, UnicastDelivered
from powergrid.protocols.fragments import (
    FRAGMENT_DATA,
    KIND_FRAGMENT,
    PARTIAL_COST,
    FragmentArrived,
    FragmentConfig,
    FragmentMachine,
    Piece,
    Reassembled,
    Split,
    fragment_count,
)
from powergrid.protocols.multicast import MAX_MULTICAST_PAYLOAD
from powergrid.sim.fuzzing import replay_command, run_datacentre
from powergrid.sim.invariants import app_payload, parse_payload
from powergrid.sim.memory import MemoryNetwork
from powergrid.types import Epoch, GroupId, Incarnation, NodeId, node_id
from powergrid.wire import Fragment, decode_body, encode, encode_body

A = node_id("127.0.0.1", 9001)
B = node_id("127.0.0.1", 9002)


def big(n: int, salt: int = 0) -> bytes:
    """``n`` bytes that differ at every position mod 251 (a misplaced byte shows)."""
    return bytes((i * 7 + salt) % 251 for i in range(n))


def arrive(
    m: FragmentMachine, body: bytes, *, origin: int = A, inc: int = 1, seq: int = 1, now: float = 0
) -> list[Any]:
    ev = FragmentArrived(
        channel="multicast",
        origin=NodeId(origin),
        incarnation=Incarnation(inc),
        seq=seq,
        payload=body,
    )
    return m.handle(ev, now)


def frag(message: int, total: int, offset: int, data: bytes) -> bytes:
    return encode_body(Fragment(message, total, offset, data))


def view(*nodes: int) -> ViewChanged:
    members = tuple(Member(node=NodeId(n), incarnation=Incarnation(1)) for n in nodes)
    return ViewChanged(
        view=View(
            group=GroupId(1), view_id=1, epoch=Epoch(1), leader=NodeId(nodes[0]), members=members
        )
    )


# ------------------------------------------------------------------ the machine


def test_split_then_reassemble_gives_the_payload_back_numbered_by_its_first_fragment() -> None:
    """F1, F2."""
    payload = big(1 << 20)  # the default limit, exactly
    sender, receiver = FragmentMachine(), FragmentMachine()
    pieces = sender.handle(Split(payload=payload), 0.0)
    assert len(pieces) == fragment_count(len(payload)) == -(-len(payload) // FRAGMENT_DATA)
    assert all(isinstance(p, Piece) and p.kind == KIND_FRAGMENT for p in pieces)
    assert max(len(p.payload) for p in pieces) <= MAX_MULTICAST_PAYLOAD
    out: list[Any] = []
    for i, p in enumerate(pieces):
        out += arrive(receiver, p.payload, seq=10 + i)
    assert out == [
        Reassembled(
            channel="multicast", origin=A, incarnation=Incarnation(1), seq=10, payload=payload
        )
    ]
    assert receiver.held == 0 and receiver.partials == ()
    assert (sender.stats.split, sender.stats.fragments) == (1, len(pieces))
    assert receiver.stats.reassembled == 1


def test_messages_are_numbered_per_machine_and_each_completes_once_in_order() -> None:
    sender, receiver = FragmentMachine(), FragmentMachine()
    payloads = [big(3000, 1), big(FRAGMENT_DATA * 2, 2), big(5000, 3)]
    bodies = [p.payload for x in payloads for p in sender.handle(Split(payload=x), 0.0)]
    numbers = sorted({decode_body(KIND_FRAGMENT, b).message for b in bodies})  # type: ignore[attr-defined]
    assert numbers == [1, 2, 3]
    got = [r.payload for b in bodies for r in arrive(receiver, b)]
    assert got == payloads


def test_split_cuts_to_a_given_piece_size_and_any_piece_size_reassembles() -> None:
    """F1 with ``data``: pieces of at most ``data`` bytes (room for a carrier's header,
    as the total order's), counted by fragment_count; F2 takes any piece size."""
    payload = big(10_000, 4)
    for data in (1, 700, FRAGMENT_DATA - 24):
        sender, receiver = FragmentMachine(), FragmentMachine()
        pieces = sender.handle(Split(payload=payload, data=data), 0.0)
        assert len(pieces) == fragment_count(len(payload), fits=0, data=data)
        assert len(pieces) == -(-len(payload) // data)
        assert all(len(p.payload) <= data + 12 for p in pieces)
        out = [r for i, p in enumerate(pieces) for r in arrive(receiver, p.payload, seq=i + 1)]
        assert [(r.seq, r.payload) for r in out] == [(1, payload)]
    assert fragment_count(1306, fits=1306, data=1294) == 1
    assert fragment_count(1307, fits=1306, data=1294) == 2
    m = FragmentMachine()
    for bad in (0, FRAGMENT_DATA + 1, 1.5):
        with pytest.raises(UsageError, match=r"Split\.data"):
            m.handle(Split(payload=payload, data=bad), 0.0)  # type: ignore[arg-type]
    assert m.stats.split == 0


def test_split_refuses_too_large_and_non_bytes() -> None:
    m = FragmentMachine(FragmentConfig(max_message=5000))
    with pytest.raises(PayloadTooLargeError, match=r"5001 bytes, over FragmentConfig.max_message"):
        m.handle(Split(payload=bytes(5001)), 0.0)
    with pytest.raises(UsageError, match="must be bytes"):
        m.handle(Split(payload="text" * 1000), 0.0)  # type: ignore[arg-type]
    assert m.stats.split == 0


def test_config_is_checked() -> None:
    with pytest.raises(ConfigError, match=r"FragmentConfig.max_reassembly: must be at least"):
        FragmentConfig(max_message=2000, max_reassembly=2000)
    with pytest.raises(ConfigError, match=r"FragmentConfig.max_message"):
        FragmentConfig(max_message=0)
    with pytest.raises(ConfigError, match=r"FragmentConfig.departed_grace"):
        FragmentConfig(departed_grace=-1.0)


# ------------------------------------------------------------------ hostile fragments


def test_the_codec_refuses_bytes_past_the_total_and_empty_fragments() -> None:
    """F3: malformed."""
    with pytest.raises(DecodeError, match="run past the total"):
        decode_body(KIND_FRAGMENT, frag(1, 100, 90, bytes(20)))
    with pytest.raises(DecodeError, match="no bytes"):
        decode_body(KIND_FRAGMENT, frag(1, 100, 0, b""))
    m = FragmentMachine()
    assert arrive(m, frag(1, 100, 90, bytes(20))) == []
    assert arrive(m, b"\x00\x01") == []
    assert m.stats.malformed == 2


def test_an_absurd_total_is_dropped_and_allocates_nothing() -> None:
    """F3: too_large."""
    m = FragmentMachine(FragmentConfig(max_message=10_000))
    assert arrive(m, frag(1, 2**32 - 1, 0, bytes(1000))) == []
    assert arrive(m, frag(1, 10_001, 0, bytes(1000))) == []
    assert m.stats.too_large == 2 and m.held == 0


def test_an_overlap_and_a_gap_are_misplaced_and_drop_the_partial() -> None:
    """F3: misplaced, stray."""
    m = FragmentMachine()
    assert arrive(m, frag(1, 3000, 0, bytes(1000))) == []
    assert arrive(m, frag(1, 3000, 500, bytes(1000))) == []  # overlaps 500..1000
    assert m.stats.misplaced == 1 and m.partials == ()
    assert arrive(m, frag(2, 3000, 0, bytes(1000))) == []
    assert arrive(m, frag(2, 3000, 2000, bytes(1000))) == []  # leaves a gap
    assert m.stats.misplaced == 2 and m.held == 0
    # the rest of the broken message is stray, never completes anything
    assert arrive(m, frag(2, 3000, 1000, bytes(1000))) == []
    assert m.stats.stray == 1


def test_a_lie_about_the_total_drops_the_partial() -> None:
    """F3: total_changed."""
    m = FragmentMachine()
    arrive(m, frag(1, 3000, 0, bytes(1000)))
    assert arrive(m, frag(1, 2000, 1000, bytes(1000))) == []  # would "complete" at 2000
    assert m.stats.total_changed == 1 and m.partials == ()


def test_a_fragment_of_another_message_is_stray_and_ends_the_partial() -> None:
    m = FragmentMachine()
    arrive(m, frag(1, 3000, 0, bytes(1000)))
    arrive(m, frag(1, 3000, 1000, bytes(1000)))
    # message 1's last fragment was skipped; message 2 lost its first: nothing mixes
    assert arrive(m, frag(2, 3000, 2000, bytes(1000))) == []
    assert (m.stats.stray, m.stats.incomplete, m.held) == (1, 1, 0)


def test_a_new_first_fragment_ends_an_interrupted_partial() -> None:
    m = FragmentMachine()
    arrive(m, frag(1, 3000, 0, bytes(1000)))
    arrive(m, frag(2, 2000, 0, b"x" * 1000))
    out = arrive(m, frag(2, 2000, 1000, b"y" * 1000))
    assert [r.payload for r in out] == [b"x" * 1000 + b"y" * 1000]
    assert m.stats.incomplete == 1


# ------------------------------------------------------------------ memory


def test_each_life_keeps_its_own_partial_and_a_third_life_drops_the_oldest() -> None:
    """F4: lives."""
    m = FragmentMachine()
    arrive(m, frag(1, 3000, 0, bytes(1000)), inc=1)
    arrive(m, frag(1, 3000, 0, bytes(1000)), inc=2)
    assert [p[2] for p in m.partials] == [1, 2]
    out = arrive(m, frag(1, 3000, 1000, bytes(2000)), inc=1)  # the retired life completes
    assert len(out) == 1 and out[0].incarnation == 1
    arrive(m, frag(1, 3000, 0, bytes(1000)), inc=1)
    arrive(m, frag(1, 3000, 0, bytes(1000)), inc=3)
    assert [p[2] for p in m.partials] == [1, 3] and m.stats.incomplete == 1


def test_all_partials_stay_within_max_reassembly_by_evicting_the_largest() -> None:
    """F4: max_reassembly."""
    m = FragmentMachine(FragmentConfig(max_message=4000, max_reassembly=6100))
    origins = [node_id("127.0.0.1", 9100 + i) for i in range(4)]
    for o in origins:
        arrive(m, frag(1, 4000, 0, bytes(1000)), origin=o)
    assert m.held == 4 * (1000 + PARTIAL_COST)
    arrive(m, frag(1, 4000, 1000, bytes(1000)), origin=origins[0])
    assert m.held == 6024
    arrive(m, frag(1, 4000, 1000, bytes(1000)), origin=origins[1])  # evicts origins[0]'s
    assert m.held == 6024 - 2256 + 1000 and m.stats.evicted == 1
    assert [p[1] for p in m.partials] == origins[1:]
    for _ in range(10):  # whatever arrives, the bound holds
        for o in origins:
            arrive(m, frag(2, 4000, 0, bytes(1300)), origin=o)
            assert m.held <= 6100


def test_a_flood_of_tiny_partials_is_bounded_in_number() -> None:
    """F4: each partial is charged PARTIAL_COST, so one-byte first fragments from ever new
    origins cannot pile up without bound."""
    m = FragmentMachine(FragmentConfig(max_message=1000, max_reassembly=1000 + 100 * PARTIAL_COST))
    for i in range(1000):
        arrive(m, frag(1, 10, 0, b"x"), origin=node_id("10.0.0.1", 1 + i))
    most = (1000 + 100 * PARTIAL_COST) // (1 + PARTIAL_COST)  # 103
    assert len(m.partials) == most and m.stats.evicted == 1000 - most
    assert m.held == most * (1 + PARTIAL_COST)


def test_partials_of_an_origin_that_left_go_after_the_grace_unless_it_returns() -> None:
    """F5."""
    m = FragmentMachine(FragmentConfig(departed_grace=2.0))
    m.handle(view(A, B), 0.0)
    assert m.next_deadline() is None  # nothing held: never woken
    arrive(m, frag(1, 3000, 0, bytes(1000)), origin=B)
    m.handle(view(A), 1.0)
    assert m.next_deadline() == 3.0
    out = arrive(m, frag(1, 3000, 1000, bytes(2000)), origin=B, now=2.0)  # its last, late
    assert len(out) == 1 and m.next_deadline() is None
    arrive(m, frag(2, 3000, 0, bytes(1000)), origin=B, now=2.5)  # not in the view
    assert m.next_deadline() == 4.5
    m.handle(DeadlineReached(), 4.4)
    assert m.held == 1000 + PARTIAL_COST
    m.handle(DeadlineReached(), 4.5)
    assert (m.held, m.stats.departed, m.next_deadline()) == (0, 1, None)
    arrive(m, frag(3, 3000, 0, bytes(1000)), origin=A, now=5.0)
    m.handle(view(B), 5.0)
    m.handle(view(A, B), 6.0)  # came back in time: kept
    m.handle(DeadlineReached(), 10.0)
    assert m.held == 1000 + PARTIAL_COST and m.next_deadline() is None


# ------------------------------------------------------------------ through nodes


class Cluster:
    def __init__(self, n: int, *, seed: int = 1, **cfg: Any) -> None:
        self.notes: dict[int, list[Any]] = defaultdict(list)
        self.loss = 0.0
        self._lossy = random.Random(seed)
        self.net = MemoryNetwork(seed=seed, observer=self._observe, keep_log=False, drop=self._drop)
        self.nodes: list[Node] = []
        for i in range(n):
            config = NodeConfig(port=9000 + i, broker_capable=i < 3, **cfg)
            node = Node(config, incarnation=1, rng=random.Random(i))
            self.nodes.append(node)
            self.net.add(node, at=0.0)

    def _drop(self, src: int, dst: int, data: bytes) -> bool:
        return self.loss > 0 and self._lossy.random() < self.loss

    def _observe(self, time: float, node: int, output: object) -> None:
        self.notes[node].append(output)

    def got(self, node: Node, kind: type[Any], sender: int) -> list[Any]:
        return [o for o in self.notes[node.node_id] if isinstance(o, kind) and o.sender == sender]


def test_large_multicasts_reach_every_member_whole_once_in_order_under_loss() -> None:
    c = Cluster(4)
    c.net.run_until(4.0)
    c.loss = 0.1
    sender = c.nodes[1]
    payloads = [b"small", big(200_000, 1), big(MAX_MULTICAST_PAYLOAD + 1, 2), b"tail", big(70_000)]
    for p in payloads:

        def send(n: Any, now: float, p: bytes = p) -> Any:
            return n.multicast(p, now)

        c.net.command(sender.node_id, send)
        c.net.run_until(c.net.now + 0.05)
    c.loss = 0.0
    c.net.run_until(c.net.now + 5.0)
    for node in c.nodes:
        got = c.got(node, MessageDelivered, sender.node_id)
        assert [d.payload for d in got] == payloads, node.node_id
        seqs = [d.seq for d in got]  # each numbered by its first fragment
        spans = [fragment_count(len(p)) for p in payloads]
        assert seqs == [1 + sum(spans[:i]) for i in range(len(payloads))]
        assert node.stack(1).fragments.held == 0


def test_a_large_unicast_arrives_whole() -> None:
    c = Cluster(3)
    c.net.run_until(3.0)
    a, b = c.nodes[0], c.nodes[2]
    payload = big(300_000, 5)
    c.net.command(a.node_id, lambda n, now: n.send(b.node_id, payload, now))
    c.net.run_until(c.net.now + 3.0)
    assert [d.payload for d in c.got(b, UnicastDelivered, a.node_id)] == [payload]


def test_the_node_refuses_a_payload_over_its_limit_and_sends_nothing() -> None:
    node = Node(
        NodeConfig(port=9000, fragments=FragmentConfig(max_message=10_000)),
        incarnation=1,
        rng=random.Random(1),
    )
    node.start(0.0)
    with pytest.raises(PayloadTooLargeError, match="max_message"):
        node.multicast(bytes(10_001), 0.0)
    assert node.stack(1).multicast.delivered.get(node.node_id, (1, 0))[1] == 0


def test_a_bare_fragment_datagram_is_unroutable() -> None:
    node = Node(NodeConfig(port=9000), incarnation=1, rng=random.Random(1))
    node.start(0.0)
    data = encode(1, A, 1, Fragment(1, 10, 0, b"0123456789"))
    assert node.receive(data, 1.0) == []
    assert node.stats.unroutable == 1


# ------------------------------------------------------------------ fuzzing with large messages


def test_app_payloads_of_any_size_parse_and_a_changed_byte_does_not() -> None:
    for size in (0, 20, 21, 1400, 70_001):
        p = app_payload(A, 3, 9, size)
        assert len(p) == max(size, 20) and parse_payload(p) == (A, 3, 9)
    changed = bytearray(app_payload(A, 3, 9, 5000))
    changed[4000] ^= 1
    assert parse_payload(bytes(changed)) is None


class Counted(FragmentMachine):
    done: list[int] = []

    def _done(self, ev: FragmentArrived, seq: int, payload: bytes) -> Reassembled:
        Counted.done.append(len(payload))
        return super()._done(ev, seq, payload)


class LastByteLost(FragmentMachine):
    """Canary: a reassembled message loses its last byte."""

    def _done(self, ev: FragmentArrived, seq: int, payload: bytes) -> Reassembled:
        return super()._done(ev, seq, payload[:-1])


class NumberedByLast(FragmentMachine):
    """Canary: a message is numbered by its last fragment instead of its first."""

    def _done(self, ev: FragmentArrived, seq: int, payload: bytes) -> Reassembled:
        return super()._done(ev, ev.seq, payload)


@pytest.mark.parametrize("seed", [13_400_000, 13_400_001])
def test_large_message_fuzz_runs_hold_every_invariant(
    seed: int, monkeypatch: pytest.MonkeyPatch
) -> None:
    Counted.done = []
    monkeypatch.setattr(node_mod, "FragmentMachine", Counted)
    r = run_datacentre(seed, large=True)
    assert r.ok, r.report()
    assert len(Counted.done) > 50 and max(Counted.done) > MAX_MULTICAST_PAYLOAD
    assert "--large" in replay_command(seed, large=True)


@pytest.mark.parametrize(
    ("mutant", "caught_by"),
    [(LastByteLost, "multicast-integrity"), (NumberedByLast, "multicast-integrity")],
)
def test_broken_reassembly_is_caught(
    mutant: type[FragmentMachine], caught_by: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(node_mod, "FragmentMachine", mutant)
    r = run_datacentre(13_400_000, large=True)
    assert caught_by in {v.invariant for v in r.violations}
