"""The node: composition, routing, and whole data centres on the memory network."""

from __future__ import annotations

import random
from collections import defaultdict
from typing import Any

import pytest

from powergrid import node as node_mod
from powergrid import wire
from powergrid.errors import ConfigError, UsageError
from powergrid.events import JoinGroup, LeaderElected, LeaderLost, Transmit, TransmitGroup
from powergrid.node import MessageDelivered, Node, NodeConfig
from powergrid.protocols.market import Bid, ClientConfig, Grid, PriceUpdated
from powergrid.sim.memory import MemoryNetwork
from powergrid.types import BROKER_GROUP, node_id
from powergrid.wire import Data, encode


def make_node(port: int, cluster: int = 1, **kw: Any) -> Node:
    cfg = NodeConfig(port=port, cluster=cluster, **kw)
    return Node(cfg, incarnation=1, rng=random.Random(port))


class DataCentre:
    """Clusters of nodes on one memory network, with everything they reported."""

    def __init__(self, clusters: int, per_cluster: int, *, supply: int = 10_000, seed: int = 1):
        self.notes: dict[int, list[tuple[float, Any]]] = defaultdict(list)
        self.loss = 0.0
        self._lossy = random.Random(seed)
        self.net = MemoryNetwork(seed=seed, observer=self._observe, keep_log=False, drop=self._drop)
        self.nodes: dict[int, Node] = {}
        for c in range(clusters):
            for i in range(per_cluster):
                port = 9000 + 100 * c + i
                node = make_node(
                    port,
                    cluster=c + 1,
                    broker_capable=i < 3,
                    supply=supply,
                    bid=Bid(floor=50, required=100, maximum=200),
                )
                self.nodes[node.node_id] = node
                self.net.add(node, at=0.0)

    def _drop(self, src: int, dst: int, data: bytes) -> bool:
        return self.loss > 0 and self._lossy.random() < self.loss

    def _observe(self, time: float, node: int, output: object) -> None:
        self.notes[node].append((time, output))

    def leader(self, nid: int, group: int) -> int:
        return int(self.nodes[nid].stack(group).membership.leader)

    def live(self) -> list[Node]:
        return [n for nid, n in sorted(self.nodes.items()) if self.net.endpoint(nid) is n]

    def crash(self, nid: int) -> None:
        self.net.remove(nid)

    def last_price(self, nid: int) -> PriceUpdated | None:
        prices = [o for _, o in self.notes[nid] if isinstance(o, PriceUpdated)]
        return prices[-1] if prices else None


def test_config_errors_say_what_to_fix() -> None:
    with pytest.raises(ConfigError, match=r"NodeConfig\.host: must be an IPv4 or IPv6 address"):
        NodeConfig(host="example", port=1)
    with pytest.raises(ConfigError, match=r"NodeConfig\.port: .* in 1\.\.65535, got 0"):
        NodeConfig(port=0)
    with pytest.raises(ConfigError, match="group 0 is the broker group"):
        NodeConfig(port=9000, cluster=0)
    with pytest.raises(ConfigError, match="same price grid"):
        NodeConfig(port=9000, client=ClientConfig(grid=Grid(points=8)))
    with pytest.raises(
        ConfigError, match=r"client\.ack_timeout: must be below broker\.bid_timeout"
    ):
        NodeConfig(port=9000, client=ClientConfig(ack_timeout=6.0))
    with pytest.raises(ConfigError, match="incarnation"):
        Node(NodeConfig(port=9000), incarnation=-1, rng=random.Random(0))


def test_start_joins_the_cluster_group_once() -> None:
    node = make_node(9000)
    out = node.start(0.0)
    assert out[0] == JoinGroup(group=1)
    # With no leader known it listens for a heartbeat before it asks to join.
    assert not any(isinstance(o, TransmitGroup) for o in out)
    assert node.groups == (1,)
    with pytest.raises(UsageError, match="already started"):
        node.start(0.0)


def test_peer_garbage_and_own_loopback_are_counted_never_raised() -> None:
    node = make_node(9000)
    node.start(0.0)
    assert node.receive(b"garbage", 0.1) == []
    own = encode(1, node.node_id, 1, Data(seq=1, kind=0, payload=b"x"))
    assert node.receive(own, 0.1) == []
    other = node_id("127.0.0.1", 9001)
    assert node.receive(encode(7, other, 1, Data(seq=1, kind=0, payload=b"x")), 0.1) == []
    # an inner body that does not decode, inside a valid Data
    assert node.receive(encode(1, other, 1, Data(seq=1, kind=51, payload=b"\x01")), 0.1) == []
    stats = node.stats
    assert (stats.malformed, stats.own, stats.foreign_group) == (2, 1, 1)


def count_decodings(monkeypatch: pytest.MonkeyPatch) -> list[bytes]:
    """Start the node's cache of decodings empty; the list of datagrams decoded from now."""
    decoded: list[bytes] = []

    def counting_decode(data: bytes) -> Any:
        decoded.append(data)
        return wire.decode(data)

    monkeypatch.setattr(node_mod, "decode", counting_decode)
    monkeypatch.setattr(node_mod, "_decoded", {})
    monkeypatch.setattr(node_mod, "_recent_data", {})
    return decoded


def test_equal_datagrams_are_decoded_once_and_the_cache_is_bounded(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """An equal datagram (another bytes object) reuses the first decoding, at any node;
    the cache of decodings is cleared when it is full."""
    decoded = count_decodings(monkeypatch)
    monkeypatch.setattr(node_mod, "_RECENT_DATA_MAX", 2)  # (Data's own cache)
    a, b = make_node(9000), make_node(9001)
    a.start(0.0)
    b.start(0.0)
    other = node_id("127.0.0.1", 9005)
    first = encode(1, other, 1, Data(seq=1, kind=0, payload=b"x"))
    again = bytes(bytearray(first))
    assert again == first and again is not first
    assert a.receive(first, 0.1) == b.receive(again, 0.1)
    assert decoded == [first]
    for seq in (2, 3):
        a.receive(encode(1, other, 1, Data(seq=seq, kind=0, payload=b"x")), 0.2)
    assert len(node_mod._recent_data) == 1  # full at two: cleared before the third
    a.receive(again, 0.3)
    assert len(decoded) == 4


def test_data_is_kept_decoded_apart_and_briefly(monkeypatch: pytest.MonkeyPatch) -> None:
    """Data has a small cache of its own: a stream of multicasts clears it, not the
    other datagrams' decodings (here a heartbeat), which are kept until their cache
    is full; an equal heartbeat is then not decoded again."""
    decoded = count_decodings(monkeypatch)
    monkeypatch.setattr(node_mod, "_DECODED_MAX", 3)
    a = make_node(9000)
    a.start(0.0)
    other = node_id("127.0.0.1", 9005)
    beat = encode(1, other, 1, wire.Heartbeat(epoch=1, view_id=1))
    a.receive(beat, 0.1)
    stream = [encode(1, other, 1, Data(seq=s, kind=0, payload=b"x")) for s in range(1, 100)]
    for seq, datagram in enumerate(stream, 1):
        a.receive(datagram, 0.1 + seq * 1e-3)
    assert list(node_mod._decoded) == [beat]
    assert 0 < len(node_mod._recent_data) <= node_mod._RECENT_DATA_MAX < len(stream)
    assert stream[-1] in node_mod._recent_data and stream[0] not in node_mod._recent_data
    a.receive(bytes(bytearray(beat)), 0.3)
    assert len(decoded) == 1 + len(stream)  # the heartbeat once, each Data once
    for n in range(3):  # other datagrams fill their own cache, which is cleared when full
        a.receive(encode(1, other, 1, wire.Heartbeat(epoch=2 + n, view_id=1)), 0.4)
    assert len(node_mod._decoded) == 1


def test_a_process_of_many_nodes_makes_room_for_their_decodings_while_it_runs(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """decoding_room raises the cache's bound for the block (the simulator: what
    repeats is per node) and brings the cache back under its own bound after."""
    decoded = count_decodings(monkeypatch)
    monkeypatch.setattr(node_mod, "_DECODED_MAX", 2)
    a = make_node(9000)
    a.start(0.0)
    other = node_id("127.0.0.1", 9005)
    beats = [encode(1, other, 1, wire.Heartbeat(epoch=e, view_id=1)) for e in (1, 2, 3)]
    with node_mod.decoding_room(4):
        assert node_mod._DECODED_MAX == 4
        for beat in beats + beats:
            a.receive(beat, 0.1)
        assert decoded == beats  # each once: no clear at two
    assert node_mod._DECODED_MAX == 2 and not node_mod._decoded
    with node_mod.decoding_room(1):  # never lowers it
        assert node_mod._DECODED_MAX == 2


def test_a_reliable_unicast_datagram_is_not_kept_decoded(monkeypatch: pytest.MonkeyPatch) -> None:
    """UData is unlike any other datagram (sender, sequence, payload): it is decoded at each
    arrival and never takes a place in the cache of decodings, which other datagrams do."""
    decoded = count_decodings(monkeypatch)
    a = make_node(9000)
    a.start(0.0)
    other = node_id("127.0.0.1", 9005)
    udata = encode(1, other, 1, wire.UData(seq=1, base=1, kind=0, payload=b"x"))
    data = encode(1, other, 1, Data(seq=1, kind=0, payload=b"x"))
    for datagram in (udata, udata, data, data):
        a.receive(datagram, 0.1)
    assert decoded == [udata, udata, data]
    assert list(node_mod._decoded) == [] and list(node_mod._recent_data) == [data]


def test_commands_on_a_group_the_node_is_not_in_raise() -> None:
    node = make_node(9000)
    node.start(0.0)
    with pytest.raises(UsageError, match="not in group 5"):
        node.multicast(b"x", 0.0, group=5)


def test_a_data_centre_elects_brokers_and_a_lead_broker_and_prices_reach_everyone() -> None:
    dc = DataCentre(clusters=3, per_cluster=4)
    dc.net.run_until(12.0)
    nodes = dc.live()
    for node in nodes:
        cluster = node.config.cluster
        members = [n for n in nodes if n.config.cluster == cluster]
        capable = [n for n in members if n.config.broker_capable]
        # the highest broker-capable id of the cluster leads it, and every member agrees
        assert dc.leader(node.node_id, cluster) == max(n.node_id for n in capable)
        view = node.stack(cluster).membership.view
        assert view is not None and view.nodes == tuple(sorted(n.node_id for n in members))
    brokers = [n for n in nodes if BROKER_GROUP in n.groups]
    assert len(brokers) == 3
    lead = {dc.leader(b.node_id, BROKER_GROUP) for b in brokers}
    assert lead == {max(b.node_id for b in brokers)}
    for node in nodes:  # surplus: everyone gets its maximum
        price = dc.last_price(node.node_id)
        assert price is not None and price.allocation == 200


def test_multicast_reaches_every_member_once_in_order_under_loss() -> None:
    dc = DataCentre(clusters=1, per_cluster=5)
    dc.net.run_until(4.0)
    dc.loss = 0.2
    sender = dc.live()[0]
    for i in range(50):
        dc.net.command(sender.node_id, lambda n, now, i=i: n.multicast(b"m%d" % i, now))
        dc.net.run_until(dc.net.now + 0.01)
    dc.loss = 0.0
    dc.net.run_until(dc.net.now + 3.0)
    expected = [b"m%d" % i for i in range(50)]
    for node in dc.live():
        got = [
            o.payload
            for _, o in dc.notes[node.node_id]
            if isinstance(o, MessageDelivered) and o.sender == sender.node_id
        ]
        assert got == expected, node.node_id


def test_crash_of_the_lead_broker_fails_over_at_both_levels() -> None:
    dc = DataCentre(clusters=2, per_cluster=4)
    dc.net.run_until(10.0)
    a_broker = next(n for n in dc.live() if BROKER_GROUP in n.groups)
    lead = dc.leader(a_broker.node_id, BROKER_GROUP)
    cluster = dc.nodes[lead].config.cluster
    crashed_at = dc.net.now
    dc.crash(lead)
    dc.net.run_until(crashed_at + 10.0)
    survivors = [n for n in dc.live() if n.config.cluster == cluster]
    new_broker = max(n.node_id for n in survivors if n.config.broker_capable)
    for node in survivors:
        assert dc.leader(node.node_id, cluster) == new_broker
        assert lead not in node.stack(cluster).membership.view.nodes  # type: ignore[union-attr]
    brokers = [n for n in dc.live() if BROKER_GROUP in n.groups]
    assert len(brokers) == 2
    new_lead = max(b.node_id for b in brokers)
    assert {dc.leader(b.node_id, BROKER_GROUP) for b in brokers} == {new_lead}
    # every surviving client applied a price of its cluster's new epoch after the crash
    for node in survivors:
        elected = [
            o
            for t, o in dc.notes[node.node_id]
            if isinstance(o, LeaderElected) and o.group == cluster and t > crashed_at
        ]
        price = dc.last_price(node.node_id)
        assert elected and price is not None
        assert price.epoch == elected[-1].epoch


def test_a_restarted_broker_stands_in_the_broker_group_above_its_clients_lead_epoch() -> None:
    """Node, election rule 1 (issue 16, fresh seed 36,800,068): a restarted node that
    re-wins its running cluster (a cluster epoch after 1) and never applied a price knows
    no lead epoch of its own; its clients' bids, re-sent to it at once, name the lead
    epoch of their last price, and the first ends its broker-group listen (rule M8 without
    the wait) with its election seeded above that epoch. Before, it listened
    ``join_timeout`` (0.5 s) and won the broker group in epoch 1, below the lead epoch 2
    its clients had followed."""
    dc = DataCentre(clusters=1, per_cluster=3)
    dc.net.run_until(6.0)
    top = max(dc.nodes)
    assert dc.leader(top, BROKER_GROUP) == top
    dc.crash(top)
    dc.net.run_until(9.0)
    followed = {dc.last_price(n).lead_epoch for n in dc.nodes if n != top}  # type: ignore[union-attr]
    assert followed == {2}  # the second broker's lead
    again = Node(dc.nodes[top].config, incarnation=2, rng=random.Random(5))
    dc.nodes[top] = again
    dc.net.add(again, at=9.0)
    dc.net.run_until(12.0)
    notes = [(t, o) for t, o in dc.notes[top] if t >= 9.0]
    won = [t for t, o in notes if isinstance(o, LeaderElected) and o.group == 1]
    lost = [t for t, o in notes if isinstance(o, LeaderLost) and o.group == BROKER_GROUP]
    led = [o for _, o in notes if isinstance(o, LeaderElected) and o.group == BROKER_GROUP]
    assert len(won) == len(lost) == len(led) == 1
    assert 0.0 < lost[0] - won[0] < 0.01  # the first bid, not join_timeout
    assert led[0] == LeaderElected(group=BROKER_GROUP, leader=top, epoch=3)  # type: ignore[arg-type]
    assert {dc.last_price(n).lead_epoch for n in dc.nodes if n != top} == {3}  # type: ignore[union-attr]


def test_transmissions_name_only_members_and_the_group() -> None:
    """Unicast datagrams go to node ids; multicasts to the node's groups."""
    dc = DataCentre(clusters=1, per_cluster=3)
    seen: list[object] = []
    node = dc.live()[0]
    seen.extend(node.handle_deadline(100.0))
    for out in seen:
        if isinstance(out, Transmit):
            assert out.to in dc.nodes
        if isinstance(out, TransmitGroup):
            assert out.group in node.groups


def test_a_broker_that_loses_its_cluster_stops_clearing_as_lead() -> None:
    """Node rule: leaving the broker group steps the lead broker down at once."""
    notes: dict[int, list[tuple[float, object]]] = defaultdict(list)
    net = MemoryNetwork(seed=3, observer=lambda t, n, o: notes[n].append((t, o)), keep_log=False)
    low = make_node(
        9000, broker_capable=True, supply=1000, bid=Bid(floor=0, required=10, maximum=20)
    )
    net.add(low, at=0.0)
    net.run_until(6.0)
    assert BROKER_GROUP in low.groups and low.lead.next_deadline() is not None
    high = make_node(9001, broker_capable=True, supply=1000)
    net.add(high, at=6.0)
    net.run_until(12.0)
    assert low.stack(1).membership.leader == high.node_id
    assert BROKER_GROUP not in low.groups
    assert low.lead.next_deadline() is None
    left_at = max(
        t
        for t, o in notes[low.node_id]
        if isinstance(o, LeaderElected) and o.leader == high.node_id
    )
    cleared = [t for t, o in notes[low.node_id] if type(o).__name__ == "MarketCleared"]
    assert cleared and max(cleared) <= left_at


def test_a_supply_drop_reaches_every_cap_within_milliseconds() -> None:
    """Node rule: set_supply lower at the lead clears at once, so the caps in force fit
    the new supply after one message delay (lead -> broker -> client), not one round later;
    the other brokers' lead machines overhear the Clearings (their reserve's source)."""
    dc = DataCentre(clusters=2, per_cluster=4)
    dc.net.run_until(10.0)
    live = dc.live()
    assert sum(n.client.allocation or 0 for n in live) == 8 * 200  # surplus: everyone gets m
    a_broker = next(n for n in live if BROKER_GROUP in n.groups)
    lead = dc.leader(a_broker.node_id, BROKER_GROUP)
    dc.net.command(lead, lambda n, now: n.set_supply(1000, now))
    dc.net.run_until(dc.net.now + 0.01)
    caps = [n.client.allocation or 0 for n in live]
    assert sum(caps) <= 1000 and min(caps) >= 100  # normal: within S, everyone at least r
    brokers = [n for n in live if BROKER_GROUP in n.groups]
    assert dc.nodes[lead].lead.stats.clearings_overheard == 0
    assert all(b.lead.stats.clearings_overheard > 0 for b in brokers if b.node_id != lead)


def test_churn_members_that_stay_deliver_everything_once_in_order() -> None:
    """Membership under churn: while servers join and leave every 0.3 s and two senders
    multicast, the members that stay deliver every message of each sender exactly once,
    in order, and end in one view with exactly the nodes up at the end."""
    dc = DataCentre(clusters=1, per_cluster=4, seed=7)
    dc.loss = 0.02
    dc.net.run_until(4.0)
    stayers = dc.live()
    senders = stayers[:2]
    churners: list[Node] = []
    port = 9500
    sent: dict[int, list[bytes]] = {s.node_id: [] for s in senders}
    rng = random.Random(7)
    t = 4.0
    for step in range(40):
        if churners and (len(churners) >= 4 or rng.random() < 0.4):
            gone = churners.pop(rng.randrange(len(churners)))
            dc.net.command(gone.node_id, lambda n, now: n.leave(now))
            dc.net.run_until(t + 0.05)
            dc.net.remove(gone.node_id)
        else:
            port += 1
            joiner = make_node(port, cluster=1)
            dc.nodes[joiner.node_id] = joiner
            dc.net.add(joiner, at=dc.net.now)
            churners.append(joiner)
        for s in senders:
            payload = b"%d-%d" % (s.node_id & 0xFFFF, step)
            sent[s.node_id].append(payload)
            dc.net.command(s.node_id, lambda n, now, p=payload: n.multicast(p, now))
        t += 0.3
        dc.net.run_until(t)
    dc.loss = 0.0
    dc.net.run_until(t + 5.0)
    for node in stayers:
        for s in senders:
            got = [
                o.payload
                for _, o in dc.notes[node.node_id]
                if isinstance(o, MessageDelivered) and o.sender == s.node_id
            ]
            assert got == sent[s.node_id], (node.node_id, s.node_id)
    up = sorted(n.node_id for n in stayers + churners)
    for node in stayers + churners:
        view = node.stack(1).membership.view
        assert view is not None and list(view.nodes) == up, node.node_id


def test_a_new_broker_counts_its_own_bid_in_its_first_round() -> None:
    """Issue 16: a node that becomes broker activates its broker before its own client
    re-sends its bid, so its own server is counted (not 0 W) in the new broker's first
    price, at the start and after a failover."""
    dc = DataCentre(clusters=1, per_cluster=3)
    dc.net.run_until(8.0)
    broker = dc.leader(dc.live()[0].node_id, 1)
    dc.crash(broker)
    dc.net.run_until(16.0)
    for node in dc.live():
        # The new broker's republished price (it counts no bid: the cap is carried) comes
        # first after the failover; the first price of its own clearing counts the bid.
        prices = [
            o for _, o in dc.notes[node.node_id] if isinstance(o, PriceUpdated) and not o.carried
        ]
        firsts = [p for i, p in enumerate(prices) if i == 0 or p.epoch != prices[i - 1].epoch]
        assert len(firsts) == 2, node.node_id
        for first in firsts:
            assert first.counted and first.allocation == 200, (node.node_id, first)
        # its own bid reached an active broker: nothing was dropped as unexpected
        assert node.broker.stats.dropped_unexpected == 0, node.node_id
