"""Heartbeat membership: crash detection time, wrongful removals under loss, traffic.

Real :class:`~powergrid.node.Node` instances (default configs) form one cluster
on the memory network (1 ms latency). *Detection*: after the group has settled,
a random non-leader member is removed from the network (a crash) at a random
instant of the following second (detection depends on where in the members'
ack cycle it falls); the time until every live member has installed a view
without it, over seeded runs.
*Wrongful removals*: the same group, nobody crashes, every datagram lost with
probability 0, 10% or 30% for a long virtual time; every removal of a live
node (reason ``"crashed"``, reported by the group's leader) is wrongful.
*Traffic*: datagrams sent per second per member in the quiet group (all
types, and membership's own, type codes 16-31).
"""

from __future__ import annotations

import random
import time
from typing import Any

from _common import emit, parse_args, percentile

from powergrid.events import LeaderElected
from powergrid.node import Node, NodeConfig
from powergrid.protocols.membership import MemberRemoved
from powergrid.sim.memory import MemoryNetwork

ANCHORS = (
    "Akka cluster: ~5.5 s default detection; HashiCorp memberlist: suspicion ~4-6 s; "
    "JGroups FD_ALL3: 40 s default timeout"
)
SETTLE_S = 5.0


def _group(net: MemoryNetwork, size: int, seed: int) -> list[Node]:
    nodes = []
    for i in range(size):
        cfg = NodeConfig(port=9000 + i, cluster=1, broker_capable=i < 2)
        node = Node(cfg, incarnation=1, rng=random.Random(seed * 1000 + i))
        nodes.append(node)
        net.add(node)
    return nodes


def detect_once(size: int, seed: int) -> float:
    """Seconds from a member's crash to its removal at every live member."""
    net = MemoryNetwork(seed=seed, latency=0.001, keep_log=False)
    nodes = _group(net, size, seed)
    rng = random.Random(seed)
    # The crash comes at a random instant of a second after settling: detection depends
    # on where in the ack cycle it falls (members ack every ack_every-th heartbeat).
    net.run_until(SETTLE_S + rng.random())
    leader = nodes[0].stack(1).membership.leader
    victims = [n for n in nodes if n.node_id != leader]
    victim = rng.choice(victims)
    net.remove(victim.node_id)
    crash = net.now
    live = [n for n in nodes if n is not victim]
    while net.now < crash + 60.0:
        net.run_until(net.now + 0.01)
        views = [n.stack(1).membership.view for n in live]
        if all(v is not None and victim.node_id not in v.nodes for v in views):
            return net.now - crash
    return float("inf")


def soak(size: int, loss: float, seconds: float, seed: int) -> dict[str, Any]:
    """Run a crash-free group under ``loss`` for ``seconds``; count wrongful removals."""
    removals = 0
    leader_changes = 0
    net: MemoryNetwork

    def observer(t: float, node: int, out: object) -> None:
        nonlocal removals, leader_changes
        if type(out) is MemberRemoved and out.reason == "crashed" and out.node != node:
            endpoint = net.endpoint(node)
            assert isinstance(endpoint, Node)
            if endpoint.stack(out.group).membership.leader == node:
                removals += 1
        elif type(out) is LeaderElected and out.leader == node and t > SETTLE_S:
            leader_changes += 1

    rng = random.Random(seed)
    drop = (lambda src, dst, data: rng.random() < loss) if loss else None
    net = MemoryNetwork(seed=seed, latency=0.001, drop=drop, observer=observer, keep_log=False)
    _group(net, size, seed)
    net.run_until(SETTLE_S)
    removals = 0
    sent0 = net.stats.sent
    by0 = dict(net.stats.sent_by_type)
    net.run_until(SETTLE_S + seconds)
    sent = net.stats.sent - sent0
    ms = sum(v - by0.get(k, 0) for k, v in net.stats.sent_by_type.items() if 16 <= k < 32)
    hours = size * seconds / 3600
    return {
        "removals": removals,
        "node_hours": hours,
        "per_node_hour": removals / hours,
        "leader_elections": leader_changes,
        "datagrams_per_s_per_member": sent / seconds / size,
        "membership_datagrams_per_s_per_member": ms / seconds / size,
    }


def main() -> None:
    args = parse_args(__doc__.splitlines()[0])
    size = 4 if args.quick else 8
    runs = 3 if args.quick else 40
    soak_s = 20.0 if args.quick else 900.0
    t0 = time.process_time()
    detect = [detect_once(size, seed) for seed in range(1, runs + 1)]
    soaks = {str(p): soak(size, p / 100, soak_s, seed=7) for p in (0, 10, 30)}
    wrongful = {k: v["per_node_hour"] for k, v in soaks.items()}
    result = {
        "group_size": size,
        "runs": runs,
        "detect_median_s": percentile(detect, 0.5),
        "detect_p99_s": percentile(detect, 0.99),
        "detect_max_s": max(detect),
        "wrongful_removals_per_node_hour": wrongful,
        "wrongful_removals": {k: v["removals"] for k, v in soaks.items()},
        "node_hours_per_loss": soaks["0"]["node_hours"],
        "leader_elections_after_settle": {k: v["leader_elections"] for k, v in soaks.items()},
        "datagrams_per_s_per_member": soaks["0"]["datagrams_per_s_per_member"],
        "membership_datagrams_per_s_per_member": soaks["0"][
            "membership_datagrams_per_s_per_member"
        ],
        "anchors": ANCHORS,
        "cpu_s": time.process_time() - t0,
    }
    rows = [
        (
            "detection median (s)",
            result["detect_median_s"],
            5.5,
            result["detect_median_s"] / 5.5,
            "< 5.5 (Akka)",
        ),
        ("detection p99 (s)", result["detect_p99_s"], None, None, ""),
        *[
            (f"wrongful removals/node-h, {k}% loss", v, None, None, "0 at 0%")
            for k, v in wrongful.items()
        ],
        ("datagrams/s per member (all)", result["datagrams_per_s_per_member"], None, None, ""),
        ("  of which membership", result["membership_datagrams_per_s_per_member"], None, None, ""),
    ]
    emit(
        args,
        result,
        f"membership: group of {size}, {runs} crash runs, "
        f"{result['node_hours_per_loss']:.2g} node-hours per loss level",
        rows,
        [f"anchors: {ANCHORS}"],
    )


if __name__ == "__main__":
    main()
