"""Attacks on a keyed data centre: intruders, forged, tampered and replayed prices, floods.

Each attack also runs against an unkeyed data centre where it matters, to show
that the attack is real and the test could fail: the key is what stops it.

The flood figure in docs/security.md is measured over real UDP by::

    .venv/bin/python tests/test_attacks.py flood --seconds 10
"""

from __future__ import annotations

import argparse
import os
import random
import sys
from collections import defaultdict
from typing import Any

import pytest
import trio

from powergrid.auth import Authenticator, Keyring
from powergrid.events import JoinGroup, LeaderElected, LeaderLost, Transmit, TransmitGroup
from powergrid.node import MessageDelivered, Node, NodeConfig
from powergrid.protocols.market import Bid, PriceUpdated
from powergrid.protocols.membership import MemberRemoved, MemberSuspected
from powergrid.sim.memory import MemoryNetwork
from powergrid.transports.trio_udp import UdpConfig, run_node
from powergrid.types import NodeId, node_id
from powergrid.wire import Coordinator, Heartbeat, Price, encode

RING = Keyring(primary=1, keys={1: bytes.fromhex("8f1e2d3c4b5a69788796a5b4c3d2e1f0")})
WRONG = Keyring(primary=1, keys={1: bytes(range(32))})
PRICE_TYPE = Price.TYPE
BID = Bid(floor=50, required=100, maximum=200)


class Intruder:
    """An endpoint on the segment with no key: it listens to groups and sends what it likes."""

    def __init__(self, port: int, groups: tuple[int, ...] = (1,)) -> None:
        self._id = node_id("127.0.0.1", port)
        self._groups = groups
        self.heard = 0

    @property
    def node_id(self) -> NodeId:
        return self._id

    def start(self, now: float) -> list[Any]:
        return [JoinGroup(group=g) for g in self._groups]

    def receive(self, data: bytes, now: float) -> list[Any]:
        self.heard += 1
        return []

    def handle_deadline(self, now: float) -> list[Any]:
        return []

    def next_deadline(self) -> float | None:
        return None


class Cluster:
    """One cluster of broker-capable nodes on a memory network, with a wiretap."""

    def __init__(self, *, keyed: bool, size: int = 4, seed: int = 3) -> None:
        self.ring = RING if keyed else None
        self.notes: dict[int, list[tuple[float, Any]]] = defaultdict(list)
        self.captured: list[tuple[float, int, int, bytes]] = []
        self.drop_prices_to: int | None = None
        self.net = MemoryNetwork(seed=seed, observer=self._observe, keep_log=False, drop=self._tap)
        self.nodes = [self._make(9000 + i) for i in range(size)]
        for node in self.nodes:
            self.net.add(node, at=0.0)
        self.intruder = Intruder(9999)
        self.net.add(self.intruder, at=0.0)

    def _make(self, port: int, incarnation: int = 1) -> Node:
        cfg = NodeConfig(port=port, broker_capable=True, supply=10_000, bid=BID, keyring=self.ring)
        return Node(cfg, incarnation=incarnation, rng=random.Random(port * 7 + incarnation))

    def _observe(self, time: float, node: int, out: object) -> None:
        self.notes[node].append((time, out))

    def _tap(self, src: int, dst: int, data: bytes) -> bool:
        self.captured.append((self.net.now, src, dst, data))
        held = dst == self.drop_prices_to and src != self.intruder.node_id
        return held and data[3] == PRICE_TYPE

    @property
    def broker(self) -> Node:
        return self.nodes[-1]

    @property
    def client(self) -> Node:
        return self.nodes[0]

    def inject(self, dst: int | None, *datagrams: bytes) -> None:
        """The intruder sends ``datagrams`` to ``dst`` (None: the cluster group)."""

        def send(ep: Any, now: float) -> list[Any]:
            if dst is None:
                return [TransmitGroup(group=1, data=d) for d in datagrams]
            return [Transmit(to=NodeId(dst), data=d) for d in datagrams]

        self.net.command(self.intruder.node_id, send)

    def prices(self, node: Node) -> list[PriceUpdated]:
        return [o for _, o in self.notes[node.node_id] if isinstance(o, PriceUpdated)]

    def last_price_datagram(self, dst: int) -> bytes:
        return [d for _, _, to, d in self.captured if to == dst and d[3] == PRICE_TYPE][-1]

    def run(self, seconds: float) -> None:
        self.net.run_until(self.net.now + seconds)


# ------------------------------------------------------------- intruder


@pytest.mark.parametrize("keyed", [True, False])
def test_unkeyed_node_with_the_highest_id_and_rank_never_leads_nor_sets_a_price(
    keyed: bool,
) -> None:
    """Rule: a node without the key, highest id and rank, low supply, joins a keyed
    cluster: it never wins the election and its (shortage) prices are never applied.
    Unkeyed (control): it takes over the cluster and its shortage price is applied."""
    dc = Cluster(keyed=keyed)
    rogue = Node(
        NodeConfig(port=9998, broker_capable=True, rank=65535, supply=1, bid=BID),
        incarnation=1,
        rng=random.Random(0),
    )
    dc.net.add(rogue, at=0.0)
    dc.run(15.0)
    rid = rogue.node_id
    leaders = {n.stack(1).membership.leader for n in dc.nodes}
    elected = [o for n in dc.nodes for _, o in dc.notes[n.node_id] if isinstance(o, LeaderElected)]
    regimes = {p.regime.name for n in dc.nodes for p in dc.prices(n)}
    if keyed:
        assert leaders == {dc.broker.node_id}
        assert all(o.leader != rid for o in elected)
        for node in dc.nodes:
            view = node.stack(1).membership.view
            assert view is not None and rid not in view.nodes
            assert node.stats.unauthenticated > 0 and node.client.allocation == 200
        assert regimes == {"SURPLUS"}
        assert rogue.stats.malformed > 0  # it cannot read the keyed traffic either
    else:
        assert leaders == {rid}
        assert "SHORTAGE" in regimes


@pytest.mark.parametrize("keyed", [True, False])
def test_forged_price_from_the_brokers_address_is_never_applied(keyed: bool) -> None:
    """Rule: a Price forged in the broker's name (its epoch, absurd price), unsigned or
    signed with a wrong key, is refused. Unkeyed (control): the unsigned forgery is applied
    (a forgery of a newer epoch is not: a price never moves the client's epoch)."""
    dc = Cluster(keyed=keyed)
    dc.run(6.0)
    client = dc.client
    epoch = client.client.epoch
    forged = Price(
        epoch=epoch,
        round=10**6,
        regime=2,  # a shortage with floors cut
        flags=0,
        price=0.987654,
        level=0,
        fill=0,
        deficit=999,
        aggregate=10**6,
        lead_epoch=1,
        lead_round=10**6,
        budget=10**6,
        supply=10**6,
    )
    plain = encode(1, dc.broker.node_id, 1, forged)
    wrong_key = Authenticator(WRONG).seal(plain)
    dc.inject(client.node_id, plain, wrong_key)
    dc.inject(None, plain, wrong_key)
    dc.run(0.5)
    applied = [p for p in dc.prices(client) if p.price == 0.987654]
    if keyed:
        assert applied == []
        assert client.stats.unauthenticated == 4
    else:
        assert applied and applied[0].epoch == epoch
        assert applied[0].allocation < BID.required  # the forger cut the server below r


# ------------------------------------------------------------- tampering


def test_a_price_with_any_one_bit_flipped_is_refused_and_the_original_applied() -> None:
    """Rule: a captured Price with one bit flipped (every bit in turn) is refused; the
    untampered datagram, delivered after, is applied (so the check can fail)."""
    dc = Cluster(keyed=True)
    client = dc.client
    dc.run(5.0)
    dc.drop_prices_to = client.node_id  # the attacker holds back the client's prices
    dc.run(1.5)
    original = dc.last_price_datagram(client.node_id)
    before = len(dc.prices(client))
    flipped = []
    for bit in range(len(original) * 8):
        bad = bytearray(original)
        bad[bit // 8] ^= 1 << (bit % 8)
        flipped.append(bytes(bad))
    dc.inject(client.node_id, *flipped)
    dc.run(0.002)
    assert len(dc.prices(client)) == before
    # a flipped version or realm bit is dropped before the tag is checked (8 and 32 bits)
    s = client.stats
    assert (s.wrong_version, s.foreign_realm) == (8, 32)
    assert s.unauthenticated == len(flipped) - 40
    dc.inject(client.node_id, original)
    dc.run(0.002)
    assert len(dc.prices(client)) == before + 1


# ------------------------------------------------------------- replay


@pytest.mark.parametrize("keyed", [True, False])
def test_a_replayed_old_epoch_price_is_refused(keyed: bool) -> None:
    """Rule: a Price captured in epoch E and replayed after the broker failed over (epoch
    > E) is refused: by the replay window with a key, by epoch fencing without one."""
    dc = Cluster(keyed=keyed)
    client = dc.client
    dc.run(6.0)
    old = dc.last_price_datagram(client.node_id)
    old_epoch = client.client.epoch
    dc.net.remove(dc.broker.node_id)
    dc.run(10.0)
    assert client.client.epoch > old_epoch
    assert dc.prices(client)[-1].epoch == client.client.epoch
    applied = len(dc.prices(client))
    stale = client.client.stats.dropped_stale
    dc.inject(client.node_id, old)
    dc.run(0.002)
    assert len(dc.prices(client)) == applied
    if keyed:
        assert client.stats.replayed == 1
        assert client.client.stats.dropped_stale == stale  # never reached the market
    else:
        assert client.client.stats.dropped_stale == stale + 1


def test_a_replayed_datagram_of_the_same_epoch_is_refused_by_the_window() -> None:
    """Rule: with a key, any captured datagram replayed (same epoch, any type) is refused."""
    dc = Cluster(keyed=True)
    dc.run(6.0)
    client = dc.client
    recent = [d for _, _, to, d in dc.captured if to == client.node_id][-50:]
    dc.inject(client.node_id, *recent)
    dc.run(0.002)
    assert client.stats.replayed == len(recent)


def test_a_restarted_senders_old_life_is_refused() -> None:
    """Rule: after a node restarts (higher incarnation), its old life's datagrams are refused."""
    dc = Cluster(keyed=True)
    dc.run(5.0)
    victim = dc.nodes[1]
    old = [d for _, src, to, d in dc.captured if src == victim.node_id and to == dc.client.node_id]
    dc.net.remove(victim.node_id)
    dc.net.add(dc._make(9001, incarnation=2), incarnation=2)
    dc.run(3.0)
    # The client hears the new life (it joins by unicast to the leader, so make it multicast).
    dc.net.command(victim.node_id, lambda ep, now: ep.multicast(b"new life", now))
    dc.run(0.01)
    auth = dc.client._auth
    assert auth is not None
    refused = auth.stats.old_incarnation
    dc.inject(dc.client.node_id, old[-1])
    dc.run(0.002)
    assert auth.stats.old_incarnation == refused + 1


# ------------------------------------------------------------- flood


def _garbage(rng: random.Random, victim: int, captured: list[bytes]) -> list[bytes]:
    """One burst of every kind of garbage: random bytes, unsigned claims, forged tags, replays."""
    ring = Authenticator(WRONG)
    fake = node_id("127.0.0.1", 65000)
    claim = encode(1, fake, 1, Coordinator(epoch=rng.randrange(1, 2**32), rank=65535))
    heartbeat = encode(1, fake, 1, Heartbeat(epoch=2**32 - 1, view_id=rng.randrange(2**63)))
    forged = bytearray(ring.seal(claim))
    forged[-16:] = rng.randbytes(16)
    return [
        rng.randbytes(rng.randrange(0, 1400)),
        claim,
        heartbeat,
        ring.seal(heartbeat),
        bytes(forged),
        rng.choice(captured),
    ]


def test_a_garbage_flood_does_not_stop_heartbeats() -> None:
    """Rule: 10 s of garbage (random, unsigned claims, forged tags, replays) at every node
    and the group: nobody is suspected or removed, the leader stays, a multicast is delivered."""
    dc = Cluster(keyed=True)
    dc.run(5.0)
    leader = dc.broker.node_id
    start = dc.net.now
    captured = [d for _, _, _, d in dc.captured[-500:]]
    rng = random.Random(9)
    sent = 0
    while dc.net.now < start + 10.0:
        for node in dc.nodes:
            burst = _garbage(rng, node.node_id, captured)
            dc.inject(node.node_id, *burst)
            sent += len(burst)
        dc.inject(None, *_garbage(rng, 0, captured))
        dc.run(0.01)
    bad = (MemberSuspected, MemberRemoved, LeaderLost, LeaderElected)
    for node in dc.nodes:
        notes = [o for t, o in dc.notes[node.node_id] if t >= start and isinstance(o, bad)]
        assert notes == [], node.node_id
        assert node.stack(1).membership.leader == leader
        assert node.stats.unauthenticated + node.stats.replayed >= 6000
    dc.net.command(dc.client.node_id, lambda ep, now: ep.multicast(b"still here", now))
    dc.run(0.5)
    for node in dc.nodes[1:]:
        got = [o for _, o in dc.notes[node.node_id] if isinstance(o, MessageDelivered)]
        assert [m.payload for m in got] == [b"still here"]
    assert sent >= 24_000


# ------------------------------------------------- the real-UDP measurement

_FLOODER = r"""
import os, random, socket, sys, time
host, port, seconds, rate = sys.argv[1], int(sys.argv[2]), float(sys.argv[3]), float(sys.argv[4])
rng = random.Random(1)
s = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
# forged signed datagrams: flag set, key id 1, a random tag: each costs the node an HMAC
head = b"PG\x01\x10\x01" + (1).to_bytes(4, "big") + (0xFFFF).to_bytes(8, "big") + bytes(4)
pool = [head + os.urandom(12) + (1 << 48 | i).to_bytes(8, "big") + os.urandom(16)
        for i in range(1, 4097)]
sent = 0
start = time.monotonic()
end = start + seconds
while (now := time.monotonic()) < end:
    if rate and sent > rate * (now - start):  # paced: at most rate datagrams/s
        time.sleep(0.001)
        continue
    for d in pool[:64]:
        try:
            s.sendto(d, (host, port))
            sent += 1
        except OSError:
            pass
    pool.append(pool.pop(0))
print(sent)
"""


def measure_flood(seconds: float, rate: float = 0.0) -> dict[str, Any]:
    """3 keyed nodes on loopback UDP; a separate process floods one with forged datagrams.

    ``rate``: datagrams per second the flooder sends (0: as fast as it can).
    """

    async def main() -> dict[str, Any]:
        base = 21000 + os.getpid() % 2000
        udp = UdpConfig(ttl=0, group_port_base=base, group_ports=2)
        cfgs = [NodeConfig(port=base + 10 + i, broker_capable=True, keyring=RING) for i in range(3)]
        async with (
            run_node(cfgs[0], udp=udp, incarnation=1) as h0,
            run_node(cfgs[1], udp=udp, incarnation=1) as h1,
            run_node(cfgs[2], udp=udp, incarnation=1) as h2,
        ):
            nodes: list[Any] = [h.endpoint for h in (h0, h1, h2)]
            top = cfgs[2].node_id
            notes: list[object] = []

            async def watch() -> None:
                async for ev in h0.events():
                    notes.append(ev)

            async with trio.open_nursery() as nursery:
                nursery.start_soon(watch)
                with trio.fail_after(15):
                    while {n.stack(1).membership.leader for n in nodes} != {top}:
                        await trio.sleep(0.1)
                await trio.sleep(1.0)
                mark = len(notes)
                before = nodes[0].stats.unauthenticated
                argv = [sys.executable, "-c", _FLOODER, "127.0.0.1", str(cfgs[0].port)]
                proc = await trio.run_process([*argv, str(seconds), str(rate)], capture_stdout=True)
                await trio.sleep(0.5)  # let the backlog drain
                nursery.cancel_scope.cancel()
            absorbed = nodes[0].stats.unauthenticated - before
            kinds = MemberSuspected | MemberRemoved | LeaderLost | LeaderElected
            bad = [type(n).__name__ for n in notes[mark:] if isinstance(n, kinds)]
            leaders = {n.stack(1).membership.leader for n in nodes}
            return {
                "seconds": seconds,
                "sent": int(proc.stdout.decode().strip()),
                "absorbed": absorbed,
                "absorbed_per_s": round(absorbed / seconds),
                "group_kept": not bad and leaders == {top},
                "trouble": bad,
            }

    return trio.run(main)


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("what", choices=["flood"])
    parser.add_argument("--seconds", type=float, default=10.0)
    parser.add_argument("--rate", type=float, default=0.0, help="datagrams/s (0: flat out)")
    args = parser.parse_args()
    print(measure_flood(args.seconds, args.rate))
