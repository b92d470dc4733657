"""Hostile input: random and mutated datagrams against the decoder and running nodes.

The invariant (as in h11's fuzz script): the decoder parses or raises
DecodeError, nothing else; a Node never raises from ``receive``, whatever the
bytes; and a cluster fed the garbage still has its leader and delivers a
multicast afterwards.

Counts per run (the default suite; ``POWERGRID_HEAVY=1`` multiplies them by 10):
600,000 mutated datagrams decoded, 200,000 mutated datagrams fed to a running
unkeyed node and 100,000 to a keyed one through the memory network, plus the
Hypothesis examples below.
"""

from __future__ import annotations

import os
import random
import struct
from collections.abc import Callable
from typing import Any

from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from powergrid.auth import Keyring
from powergrid.errors import DecodeError
from powergrid.events import Transmit, TransmitGroup
from powergrid.node import MessageDelivered, Node, NodeConfig
from powergrid.protocols.market import Bid, PriceUpdated
from powergrid.sim.memory import MemoryNetwork
from powergrid.types import NodeId, node_id
from powergrid.wire import WIRE_LIMIT, ViewEntry, ViewPart, decode, encode

HEAVY = os.environ.get("POWERGRID_HEAVY") == "1"
SCALE = 10 if HEAVY else 1
RING = Keyring(primary=1, keys={1: bytes(range(1, 33))})
_INTERESTING = (0, 1, 2, 0x7F, 0x80, 0xFF, 0xFFFF, 0xFFFFFFFF, (1 << 63) - 1, (1 << 64) - 1)


class Garbage:
    """The attacker: an endpoint that sends whatever it is told, from its own address."""

    def __init__(self) -> None:
        self._id = node_id("127.0.0.1", 9999)

    @property
    def node_id(self) -> NodeId:
        return self._id

    def start(self, now: float) -> list[Any]:
        return []

    def receive(self, data: bytes, now: float) -> list[Any]:
        return []

    def handle_deadline(self, now: float) -> list[Any]:
        return []

    def next_deadline(self) -> float | None:
        return None


def mutate(rng: random.Random, data: bytes, corpus: list[bytes], members: list[int]) -> bytes:
    """One random mutation of ``data``: bits, bytes, fields, length, splices, impersonation."""
    b = bytearray(data)
    op = rng.randrange(10)
    if op == 0 and b:
        i = rng.randrange(len(b) * 8)
        b[i // 8] ^= 1 << (i % 8)
    elif op == 1 and b:
        for _ in range(rng.randrange(1, 5)):
            b[rng.randrange(len(b))] = rng.choice((0, 0xFF, 0x7F, 0x80, rng.randrange(256)))
    elif op == 2 and len(b) >= 8:  # a whole field set to an edge value
        size = rng.choice((1, 2, 4, 8))
        at = rng.randrange(len(b) - size + 1)
        value = rng.choice(_INTERESTING) & ((1 << (8 * size)) - 1)
        b[at : at + size] = value.to_bytes(size, "big")
    elif op == 3:
        del b[rng.randrange(len(b) + 1) :]
    elif op == 4:
        b += rng.randbytes(rng.randrange(1, 64))
    elif op == 5 and b:
        at = rng.randrange(len(b))
        del b[at : at + rng.randrange(1, 9)]
    elif op == 6:
        other = rng.choice(corpus)
        cut = rng.randrange(len(other) + 1)
        b = b[: rng.randrange(len(b) + 1)] + bytearray(other[cut:])
    elif op == 7 and len(b) > 4:  # another message type, same body
        b[3] = rng.randrange(1, 64)
    elif op == 8 and len(b) >= 21:  # impersonate a member, maybe in another life
        b[9:17] = rng.choice(members).to_bytes(8, "big")
        if rng.random() < 0.5:
            b[17:21] = rng.choice((0, 2, 0xFFFFFFFF)).to_bytes(4, "big")
    else:
        b = bytearray(rng.randbytes(rng.randrange(0, WIRE_LIMIT + 2)))
    return bytes(b)


def _cluster(ring: Keyring | None, size: int = 4) -> tuple[MemoryNetwork, list[Node], list[bytes]]:
    captured: list[bytes] = []

    def tap(src: int, dst: int, data: bytes) -> bool:
        if len(captured) < 5000:
            captured.append(data)
        return False

    net = MemoryNetwork(seed=5, keep_log=True, drop=tap)
    nodes = [
        Node(
            NodeConfig(
                port=9000 + i,
                broker_capable=True,
                supply=1000,
                bid=Bid(floor=50, required=100, maximum=400),
                keyring=ring,
            ),
            incarnation=1,
            rng=random.Random(i),
        )
        for i in range(size)
    ]
    for node in nodes:
        net.add(node, at=0.0)
    net.run_until(5.0)
    for i, node in enumerate(nodes):  # some multicast and unicast traffic for the corpus
        net.command(node.node_id, lambda ep, now, i=i: ep.multicast(b"m%d" % i, now))
        net.command(node.node_id, lambda ep, now, i=i: ep.send(nodes[0].node_id, b"u", now))
    net.run_until(6.0)
    return net, nodes, captured


def _fuzz_running_cluster(ring: Keyring | None, count: int) -> tuple[list[Node], MemoryNetwork]:
    net, nodes, corpus = _cluster(ring)
    attacker = Garbage()
    net.add(attacker)
    members = [n.node_id for n in nodes]
    rng = random.Random(2024)
    sent = 0
    while sent < count:
        burst = [mutate(rng, rng.choice(corpus), corpus, members) for _ in range(500)]
        target = rng.choice(members)

        def send(ep: Any, now: float, burst: list[bytes] = burst, to: int = target) -> list[Any]:
            out: list[Any] = [Transmit(to=NodeId(to), data=d) for d in burst[:400]]
            out += [TransmitGroup(group=1, data=d) for d in burst[400:]]
            return out

        net.command(attacker.node_id, send)
        net.run_until(net.now + 0.01)
        sent += len(burst)
    net.remove(attacker.node_id)
    net.run_until(net.now + 15.0)  # the garbage stops: the cluster must be whole again
    return nodes, net


def _assert_cluster_works(nodes: list[Node], net: MemoryNetwork) -> None:
    top = max(n.node_id for n in nodes)
    for node in nodes:
        assert node.stack(1).membership.leader == top, node.node_id
        view = node.stack(1).membership.view
        assert view is not None and view.nodes == tuple(sorted(n.node_id for n in nodes))
    assert net.log is not None
    mark = len(net.log)
    sender = nodes[1]
    net.command(sender.node_id, lambda ep, now: ep.multicast(b"after the garbage", now))
    net.run_until(net.now + 2.0)
    got = {
        nid
        for _, nid, o in net.log[mark:]
        if isinstance(o, MessageDelivered) and o.payload == b"after the garbage"
    }
    assert got == {n.node_id for n in nodes}
    # And the market: every client applies its real broker's price, with at least r.
    priced = {
        nid
        for _, nid, o in net.log[mark:]
        if isinstance(o, PriceUpdated) and not o.local and o.allocation >= 100
    }
    assert priced == {n.node_id for n in nodes}


_unkeyed_runs: dict[int, tuple[list[Node], MemoryNetwork]] = {}


def _unkeyed_fuzzed() -> tuple[list[Node], MemoryNetwork]:
    if not _unkeyed_runs:
        _unkeyed_runs[0] = _fuzz_running_cluster(None, 200_000 * SCALE)
    return _unkeyed_runs[0]


def test_unkeyed_node_survives_mutated_traffic() -> None:
    """Rule: 200,000 mutated datagrams (many well formed, some impersonating members) at a
    running unkeyed cluster raise nothing (they are dropped and counted, or applied)."""
    nodes, _ = _unkeyed_fuzzed()
    assert sum(n.stats.malformed for n in nodes) > 0


def test_unkeyed_cluster_recovers_after_mutated_traffic() -> None:
    """Rule: once the garbage stops, the unkeyed cluster heals by itself: forged epochs
    (near 2**32 too) wrap or stay foreign, phantom leaders are lost, phantom members are
    removed, forged lives and stuck streams expire, and within 15 s every node follows the
    highest node, in one view, a multicast is delivered and every client applies its
    broker's price (docs/security.md)."""
    nodes, net = _unkeyed_fuzzed()
    _assert_cluster_works(nodes, net)


def test_keyed_node_refuses_mutated_traffic_before_decoding() -> None:
    """Rule: 100,000 mutated datagrams at a keyed cluster: every one is refused by the tag or
    the replay window (none reaches the decoder), and the cluster keeps working."""
    nodes, net = _fuzz_running_cluster(RING, 100_000 * SCALE)
    assert sum(n.stats.malformed for n in nodes) == 0
    assert sum(n.stats.unauthenticated + n.stats.replayed for n in nodes) >= 100_000 * SCALE
    _assert_cluster_works(nodes, net)


def _decode_loop(count: int, seed: int) -> tuple[int, int]:
    _, nodes, corpus = _cluster(None, size=3)
    members = [n.node_id for n in nodes]
    rng = random.Random(seed)
    ok = bad = 0
    for _ in range(count):
        data = mutate(rng, rng.choice(corpus), corpus, members)
        try:
            env = decode(data)
        except DecodeError:
            bad += 1
            continue
        ok += 1
        # canonical: what decodes re-encodes to the same bytes
        assert encode(env.group, env.sender, env.incarnation, env.message, env.realm) == data
    return ok, bad


def test_mutated_datagrams_decode_canonically_or_raise_only_decode_error() -> None:
    """Rule: 600,000 mutated datagrams: each decodes, and re-encodes to the same bytes, or
    raises DecodeError; nothing else escapes."""
    ok, bad = _decode_loop(600_000 * SCALE, seed=7)
    assert ok > 10_000 and bad > 10_000


_node_cache: dict[str, Callable[[bytes], list[Any]]] = {}


def _lone_node() -> Callable[[bytes], list[Any]]:
    if "node" not in _node_cache:
        node = Node(NodeConfig(port=9000, broker_capable=True), incarnation=1, rng=random.Random())
        node.start(0.0)
        clock = [0.0]

        def feed(data: bytes) -> list[Any]:
            clock[0] += 0.001
            out = node.receive(data, clock[0])
            out += node.handle_deadline(clock[0])
            return out

        _node_cache["node"] = feed
    return _node_cache["node"]


@settings(
    max_examples=50_000 if HEAVY else 2_000,
    deadline=None,
    suppress_health_check=[HealthCheck.too_slow],
)
@given(st.binary(max_size=WIRE_LIMIT + 1) | st.binary(max_size=200).map(lambda t: b"PG\x01" + t))
def test_hypothesis_bytes_never_raise_from_a_node(data: bytes) -> None:
    """Rule: any bytes at all (and any bytes after a valid prefix) never raise from receive."""
    _lone_node()(data)


def test_header_fields_at_their_limits_never_raise() -> None:
    """Rule: every known type with an empty, short or all-0xFF body never raises from a node."""
    feed = _lone_node()
    sender = node_id("127.0.0.1", 9001)
    for code in range(256):
        head = struct.pack("!2sBBBIQI", b"PG", 1, code, 0, 1, sender, 1)
        for body in (b"", b"\x00", b"\xff" * 8, b"\x00" * 64, b"\xff" * 200):
            feed(head + body)


def test_a_forged_view_id_above_u32_does_not_crash_a_node() -> None:
    """Rule: a ViewPart forged in the leader's name with view_id 2**32 (unkeyed) is
    dropped or applied, never raises (found by the mutation fuzzer above)."""
    net, nodes, _ = _cluster(None)
    leader = nodes[-1]
    member = nodes[0]
    epoch = member.stack(1).membership.view.epoch  # type: ignore[union-attr]
    entries = tuple(ViewEntry(n.node_id, 1, 0, 0, 1) for n in nodes)
    forged = encode(
        1, leader.node_id, 1, ViewPart(epoch=epoch, view_id=2**32, part=0, parts=1, entries=entries)
    )
    attacker = Garbage()
    net.add(attacker)
    net.command(attacker.node_id, lambda ep, now: [Transmit(to=member.node_id, data=forged)])
    net.run_until(net.now + 3.0)
