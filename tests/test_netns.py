"""Nodes on separate (namespaced) hosts: election, multicast, failover on a cut link, merge;
and the same cluster with multicast off on every link, in unicast fan-out mode (``--seeds``).

Four hosts on one bridge (see ``tests/netns.py``), one ``powergrid node --json``
process each, every one in cluster 1 with a bid; hosts 0 and 1 are
broker-capable (rank 2 and rank 1), hosts 2 and 3 are plain servers. The test
cuts and restores host 0's link at the bridge. It needs root and the ``ip``
command, and skips with the reason otherwise. Every wait is bounded; the whole
run takes about 15 s.
"""

from __future__ import annotations

import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from netns import Network, unavailable

REASON = unavailable()
pytestmark = pytest.mark.skipif(REASON is not None, reason=f"netns: {REASON}")

PORT = 9001
CLUSTER = 1
BROKERS = 0


@pytest.fixture
def net() -> Iterator[Network]:
    with Network(4) as n:
        yield n


def leader(net: Network, name: str, group: int) -> str | None:
    got = net.events(name, "leader", group=group)
    return got[-1]["leader"] if got else None


def prices_since(net: Network, name: str, mark: int, epoch: int) -> list[dict[str, Any]]:
    """Prices from the lead broker (not local re-clears) of ``epoch``, after line ``mark``."""
    return [
        e
        for e in net.lines[name][mark:]
        if e["event"] == "price" and e["epoch"] == epoch and not e["local"]
    ]


def test_elect_multicast_fail_over_on_a_cut_and_merge_on_heal(net: Network) -> None:
    """Rules, across real hosts: (1) the cluster and the broker group elect the highest
    broker-capable node; (2) a multicast reaches every host, in order, once;
    (3) when the leader's link is cut the others elect the next broker-capable node,
    with a newer epoch, and get a price of that epoch; (4) when the link is restored
    the two sides merge under the highest key (one view of all four, one leader
    with a newer epoch, prices of that epoch everywhere) and (5) elections stop."""
    h0, h1, h2, h3 = net.hosts
    bid = ["--maximum", "300", "--required", "100"]
    a = net.start(
        h0, PORT, "--broker-capable", "--rank", "2", "--supply", "1000", *bid, "--seed", "1"
    )
    b = net.start(
        h1, PORT, "--broker-capable", "--rank", "1", "--supply", "1000", *bid, "--seed", "2"
    )
    c = net.start(h2, PORT, *bid, "--seed", "3")
    d = net.start(h3, PORT, *bid, "--seed", "4")
    names = [a, b, c, d]

    # (1) election of the highest broker-capable node, in the cluster and the broker group
    net.until(
        lambda: all(leader(net, n, CLUSTER) == a for n in names) and leader(net, a, BROKERS) == a,
        15,
        "every host to follow host 0",
    )
    # (2) one view of all four; multicast from host 2, delivered on every host (the
    # sender included) in order
    _one_view_and_ordered_deliveries(net, names, c)
    net.until(lambda: all(net.events(n, "price") for n in names), 10, "a first price")
    old_epoch = net.events(a, "leader", group=CLUSTER)[-1]["epoch"]

    # (3) cut host 0: the other three fail over to host 1
    net.cut(h0)
    mark = {n: len(net.lines[n]) for n in names}
    rest = [b, c, d]
    took = net.until(
        lambda: all(leader(net, n, CLUSTER) == b for n in rest) and leader(net, b, BROKERS) == b,
        10,
        "hosts 1-3 to follow host 1",
    )
    cut_epoch = net.events(b, "leader", group=CLUSTER)[-1]["epoch"]
    assert cut_epoch > old_epoch
    net.until(
        lambda: all(prices_since(net, n, mark[n], cut_epoch) for n in rest),
        10,
        "a price of host 1's epoch on hosts 1-3",
    )
    assert took < 5, took
    net.until(  # removal (suspect, probe, remove) may come after the first new price
        lambda: all(
            any(e["member"] == a for e in net.events(n, "removed", group=CLUSTER)) for n in rest
        ),
        10,
        "hosts 1-3 to remove host 0",
    )
    assert leader(net, a, CLUSTER) == a  # alone on its side, host 0 still leads itself

    # (4) restore the link: one group under host 0 again, with a newer epoch
    net.heal(h0)
    mark = {n: len(net.lines[n]) for n in names}

    def merged() -> bool:
        for n in names:
            lead = net.events(n, "leader", group=CLUSTER)
            views = net.events(n, "view", group=CLUSTER)
            if not (lead and lead[-1]["leader"] == a and lead[-1]["epoch"] > cut_epoch):
                return False
            if not (views and views[-1]["leader"] == a and len(views[-1]["members"]) == 4):
                return False
        return leader(net, a, BROKERS) == a  # host 1 is no broker now: it left group 0

    net.until(merged, 15, "the two sides to merge under host 0")
    merged_epoch = net.events(a, "leader", group=CLUSTER)[-1]["epoch"]
    assert all(net.events(n, "leader", group=CLUSTER)[-1]["epoch"] == merged_epoch for n in names)
    net.until(
        lambda: all(prices_since(net, n, mark[n], merged_epoch) for n in names),
        10,
        "a price of the merged epoch everywhere",
    )

    # (5) elections stop: no leader change and no new view anywhere for 3 s
    settled = {n: len(net.events(n, "leader")) + len(net.events(n, "view")) for n in names}
    end = time.monotonic() + 3.0
    while time.monotonic() < end:
        net.pump(0.1)
    after = {n: len(net.events(n, "leader")) + len(net.events(n, "view")) for n in names}
    assert after == settled, {n: net.lines[n][-6:] for n in names}
    for n in names:
        assert net.procs[n].poll() is None, f"{n} exited"


def test_fan_out_without_multicast_on_the_links(tmp_path: Path) -> None:
    """Rules, on hosts whose links carry no multicast (the MULTICAST flag off on every eth0
    and bridge port, no multicast route): nodes started with ``--seeds`` (the two
    broker-capable hosts) and a key (1) elect host 0 and form one view of all four, the two
    plain servers learning each other from it, and (2) a multicast from host 2 reaches
    every host once and in order."""
    key = tmp_path / "keys"
    key.write_text("1 hex:" + "5a" * 32 + "\n")
    key.chmod(0o600)
    with Network(4) as net:
        net.multicast_off()
        assert net.multicast_flags() == [False] * 4
        h0, h1, h2, h3 = net.hosts
        seeds = f"{h0.address}:{PORT},{h1.address}:{PORT}"
        common = ["--seeds", seeds, "--key-file", str(key), "--maximum", "300"]
        a = net.start(h0, PORT, "--broker-capable", "--rank", "2", "--supply", "1000", *common)
        b = net.start(h1, PORT, "--broker-capable", "--rank", "1", "--supply", "1000", *common)
        c = net.start(h2, PORT, *common)
        d = net.start(h3, PORT, *common)
        names = [a, b, c, d]
        net.until(
            lambda: all(leader(net, n, CLUSTER) == a for n in names), 15, "all to follow host 0"
        )
        _one_view_and_ordered_deliveries(net, names, c)
        assert net.multicast_flags() == [False] * 4


def test_ipv6_multicast_group_on_the_veth_links() -> None:
    """IPv6: four hosts on their IPv6 addresses (fd00:77:N::1..4), the cluster an IPv6
    multicast group (ff15::1 on eth0, hop limit 1): they elect host 0, form one view of
    all four, and a multicast from host 2 reaches every host once and in order."""
    with Network(4, ipv6=True) as net:
        h0, h1, h2, h3 = net.hosts
        common = ["--maximum", "300"]
        a = net.start(
            h0, PORT, "--broker-capable", "--rank", "2", "--supply", "1000", *common, ipv6=True
        )
        b = net.start(
            h1, PORT, "--broker-capable", "--rank", "1", "--supply", "1000", *common, ipv6=True
        )
        c = net.start(h2, PORT, *common, ipv6=True)
        d = net.start(h3, PORT, *common, ipv6=True)
        names = [a, b, c, d]
        assert a == f"[::1]:{PORT}"
        net.until(
            lambda: all(leader(net, n, CLUSTER) == a for n in names), 15, "all to follow host 0"
        )
        _one_view_and_ordered_deliveries(net, names, c)


def _one_view_and_ordered_deliveries(net: Network, names: list[str], sender: str) -> None:
    """Every host installs a view of all four; five multicasts from ``sender`` are
    delivered on every host (the sender included) once each and in order."""
    net.until(
        lambda: all(
            (v := net.events(n, "view", group=CLUSTER)) and len(v[-1]["members"]) == 4
            for n in names
        ),
        10,
        "a view of all four hosts",
    )
    for k in range(5):
        net.send(sender, {"cmd": "multicast", "data": f"m{k}"})
    net.until(lambda: all(len(net.events(n, "deliver")) >= 5 for n in names), 10, "deliveries")
    net.pump(0.3)  # a duplicate would show up here
    for n in names:
        got = [(e["sender"], e["seq"], e["data"]) for e in net.events(n, "deliver")]
        assert got == [(sender, k + 1, f"m{k}") for k in range(5)], n
