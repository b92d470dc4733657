"""Bully election: messages per election and time to a stable leader vs group size.

Real :class:`~powergrid.protocols.election.ElectionMachine` instances (default config,
every node broker-capable, rank 0) run on the memory network (1 ms latency)
behind a thin endpoint adapter; membership is not run: the bench gives the
machines the view and the :class:`~powergrid.events.LeaderLost` membership
would give. The group first elects a leader (bootstrap, not measured), then
the leader crashes (leaves the network) and:

* ``leader_crash``: every survivor is told at once (LeaderLost), as a
  leader's heartbeat loss is seen by all members at about the same time;
* ``worst_case``: only the lowest node is told (the classic O(n^2) bully run:
  it challenges every higher node, each answers and challenges those above).

Figures: election messages sent (Election, Answer, Coordinator, Fenced; a
multicast counts once, its copies are given apart) from the crash until every
survivor follows the highest survivor, and that time in virtual seconds.
"""

from __future__ import annotations

import random
from typing import Any

from _common import emit, parse_args

from powergrid.events import (
    DeadlineReached,
    JoinGroup,
    LeaderLost,
    Member,
    Multicast,
    Received,
    Send,
    Transmit,
    TransmitGroup,
    View,
    ViewChanged,
)
from powergrid.protocols.election import ElectionConfig, ElectionMachine
from powergrid.sim.memory import MemoryNetwork
from powergrid.types import Epoch, GroupId, Incarnation, NodeId
from powergrid.wire import decode, encode

GROUP = GroupId(1)
INC = Incarnation(1)
SIZES = (5, 10, 25, 50, 100)


class ElectionEndpoint:
    """An ElectionMachine as an Endpoint; counts the messages it sends."""

    def __init__(self, node: NodeId, view: View, rng: random.Random) -> None:
        self.node_id = node
        self.machine = ElectionMachine(
            ElectionConfig(), me=node, rank=0, broker_capable=True, group=GROUP, rng=rng
        )
        self._view = view
        self.sent = 0

    def _out(self, actions: list[Any]) -> list[object]:
        me = self.node_id
        out: list[object] = []
        for act in actions:
            kind = type(act)
            if kind is Multicast:
                self.sent += 1
                out.append(TransmitGroup(group=GROUP, data=encode(GROUP, me, INC, act.message)))
            elif kind is Send:
                self.sent += 1
                out.append(Transmit(to=act.to, data=encode(GROUP, me, INC, act.message)))
        return out

    def start(self, now: float) -> list[object]:
        out: list[object] = [JoinGroup(group=GROUP)]
        out += self._out(self.machine.handle(ViewChanged(view=self._view), now))
        out += self._out(
            self.machine.handle(LeaderLost(group=GROUP, leader=NodeId(0), epoch=Epoch(0)), now)
        )
        return out

    def receive(self, data: bytes, now: float) -> list[object]:
        env = decode(data)
        ev = Received(sender=env.sender, incarnation=env.incarnation, message=env.message)
        return self._out(self.machine.handle(ev, now))

    def handle_deadline(self, now: float) -> list[object]:
        return self._out(self.machine.handle(DeadlineReached(), now))

    def next_deadline(self) -> float | None:
        return self.machine.next_deadline()

    def lose_leader(self, now: float) -> list[object]:
        m = self.machine
        return self._out(m.handle(LeaderLost(group=GROUP, leader=m.leader, epoch=m.epoch), now))


def _settled(eps: list[ElectionEndpoint]) -> bool:
    top = max(ep.node_id for ep in eps)
    return all(ep.machine.leader == top for ep in eps) and all(
        ep.machine.state == ("leader" if ep.node_id == top else "follower") for ep in eps
    )


def run(size: int, worst: bool, seed: int = 1) -> dict[str, Any]:
    """One election after the leader of a group of ``size`` crashes."""
    nodes = [NodeId(0x7F000001 << 16 | (9000 + i)) for i in range(size)]
    view = View(
        group=GROUP,
        view_id=1,
        leader=NodeId(0),
        epoch=Epoch(0),
        members=tuple(Member(node=n, incarnation=INC, broker_capable=True) for n in nodes),
    )
    net = MemoryNetwork(seed=seed, latency=0.001, keep_log=False)
    eps = [ElectionEndpoint(n, view, random.Random(seed * 1000 + i)) for i, n in enumerate(nodes)]
    for ep in eps:
        net.add(ep)
    while not _settled(eps) and net.now < 60:
        net.run_until(net.now + 0.05)
    net.run_until(net.now + 2.0)  # a couple of announcements: all quiet
    leader = max(eps, key=lambda ep: ep.node_id)
    net.remove(leader.node_id)
    live = [ep for ep in eps if ep is not leader]
    sent0 = sum(ep.sent for ep in live)
    copies0 = net.stats.sent
    crash = net.now
    for ep in live[:1] if worst else live:
        net.command(ep.node_id, lambda e, now: e.lose_leader(now))
    while not _settled(live) and net.now < crash + 120:
        net.run_until(net.now + 0.001)
    seconds = net.now - crash
    # messages until settled; the new leader's periodic announcements after are not counted
    return {
        "messages": sum(ep.sent for ep in live) - sent0,
        "copies": net.stats.sent - copies0,
        "seconds": round(seconds, 3),
        "settled": _settled(live),
    }


def main() -> None:
    args = parse_args(__doc__.splitlines()[0])
    sizes = SIZES[:2] if args.quick else SIZES
    crash = {str(n): run(n, worst=False) for n in sizes}
    worst = {str(n): run(n, worst=True) for n in sizes}
    result = {"leader_crash": crash, "worst_case": worst, "sizes": list(sizes)}
    rows = []
    for n in sizes:
        c, w = crash[str(n)], worst[str(n)]
        rows.append(
            (f"n={n} leader crash: msgs / s", c["messages"], None, None, f"{c['seconds']} s")
        )
        rows.append((f"n={n} worst case: msgs / s", w["messages"], None, None, f"{w['seconds']} s"))
    emit(
        args,
        result,
        "bully election after the leader crashes (value: messages; target "
        "column: time to a stable leader)",
        rows,
        ["a multicast counts as one message; 'copies' in --json counts datagram copies"],
    )


if __name__ == "__main__":
    main()
