"""The failure schedule of a simulation: crashes, restarts, cuts, loss, join and leave waves.

Theory of operation
-------------------
A :class:`~powergrid.sim.scenario.Scenario` lists :class:`~powergrid.sim.scenario.Failure`
entries, each an action at a virtual time. :class:`FailureSchedule` turns them
into jobs on the owning :class:`~powergrid.sim.runner.Simulation`'s agenda
and applies each to its fuzz network when due:

* ``crash_lead`` / ``crash_broker`` crash whoever leads the broker group or
  the cluster *then*, as the nodes last announced it (a crash of nobody is
  marked, not an error); ``crash`` / ``restart`` name one server;
  ``restart_after`` schedules the restart as a new job;
* ``partition`` cuts a whole cluster off, ``isolate`` one server;
  ``heal_after`` schedules the heal;
* ``join`` starts servers that were placed in advance (so every server that
  may ever run has a fixed id and position from the start), ``leave`` makes
  the newest non-broker-capable live server of each named cluster leave on
  purpose;
* ``loss`` changes the link loss for everyone.

Every action leaves a :class:`Marker` for the plot, a
``sim`` record in the trace, and a count for the summary. The schedule keeps
no clock of its own: it reads the network's virtual time.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import TYPE_CHECKING

import attrs

from powergrid.node import Node
from powergrid.sim.scenario import Failure, Scenario
from powergrid.types import BROKER_GROUP, NodeId, node_id

if TYPE_CHECKING:
    from powergrid.sim.runner import Simulation

__all__ = ["FailureSchedule", "Marker", "server_address", "server_id", "server_name"]

_BASE_PORT = 7000


def server_name(node: int) -> str:
    """``"c4.1"`` for server 1 of cluster 4 (the short name plots use)."""
    return f"c{(node >> 24) & 0xFFFF}.{(node & 0xFFFF) - _BASE_PORT}"


def server_address(cluster: int, index: int) -> tuple[str, int]:
    """``("10.<c_hi>.<c_lo>.1", 7000 + index)``: where server ``index`` of ``cluster`` lives."""
    return f"10.{(cluster >> 8) & 255}.{cluster & 255}.1", _BASE_PORT + index


def server_id(cluster: int, index: int) -> NodeId:
    """The node id of server ``index`` of ``cluster`` (its :func:`server_address`).

    Ids grow with the cluster and then the index, so with equal ranks the
    last broker-capable server of a cluster wins its election, and the
    broker of the last cluster becomes the lead broker.
    """
    return node_id(*server_address(cluster, index))


@attrs.frozen(kw_only=True)
class Marker:
    """A scheduled event that happened: ``what`` to ``node`` (0: none) of ``group`` at ``t``."""

    t: float
    what: str
    node: int = 0
    group: int = -1
    until: float | None = None


class FailureSchedule:
    """The failure schedule of ``sim`` (see the module docstring).

    Building it places every server a join wave will start: their ids and
    positions go into ``where`` (server -> ``(cluster, index)``), which
    already holds the initial servers.
    """

    def __init__(self, sim: Simulation, where: dict[int, tuple[int, int]]) -> None:
        s: Scenario = sim.scenario
        self._sim = sim
        self.markers: list[Marker] = []
        self.counts = {"crashed": 0, "restarted": 0, "joined": 0, "left": 0}
        self.failover: tuple[float, int, int] | None = None
        """``(t, group, node)`` of the first crash of a leader, when capturing."""
        self._next_index = dict.fromkeys(range(1, s.clusters + 1), s.nodes)
        self.joiners: list[int] = []
        """Every server a join wave will start, in order."""
        extra = dict(self._next_index)
        for f in s.failures:
            if f.action == "join":
                for c in self._wave_clusters(f):
                    node = server_id(c, extra[c])
                    where[node] = (c, extra[c])
                    self.joiners.append(node)
                    extra[c] += 1

    def schedule(self) -> None:
        """Put every failure on the simulation's agenda."""
        for f in self._sim.scenario.failures:
            self._sim._at(f.at, self._job(f))

    def _job(self, f: Failure) -> Callable[[float], None]:
        return lambda t: self._apply(f)

    def _apply(self, f: Failure) -> None:
        sim = self._sim
        net = sim.network
        now = net.now
        act = f.action
        if act == "crash_lead":
            self._crash(sim.leader(BROKER_GROUP), f.restart_after, "crash lead broker", 0)
        elif act == "crash_broker":
            self._crash(sim.leader(f.cluster), f.restart_after, "crash broker", f.cluster)
        elif act == "crash":
            self._crash(server_id(f.cluster, f.node), f.restart_after, "crash", f.cluster)
        elif act == "restart":
            self._restart(server_id(f.cluster, f.node))
        elif act in ("partition", "isolate"):
            cut = (
                self._cluster_nodes(f.cluster)
                if act == "partition"
                else [server_id(f.cluster, f.node)]
            )
            until = now + f.heal_after if f.heal_after > 0 else None
            sim._note(act, group=f.cluster)
            net.split([cut])
            self.markers.append(Marker(t=now, what=act, group=f.cluster, until=until))
            if until is not None:
                sim._at(until, lambda t: self._heal())
        elif act == "heal":
            self._heal()
        elif act == "join":
            self._join_wave(f)
        elif act == "leave":
            self._leave_wave(f)
        else:  # loss
            sim._note("loss", loss=f.loss)
            net.set_loss(f.loss)
            self.markers.append(Marker(t=now, what=f"loss {f.loss:g}"))

    def _cluster_nodes(self, cluster: int) -> list[int]:
        where = self._sim._where
        return [n for n in sorted(where) if where[n][0] == cluster]

    def _crash(self, node: int, restart_after: float, what: str, group: int) -> None:
        sim = self._sim
        net = sim.network
        ep = net.endpoint(node)
        if not isinstance(ep, Node):
            self.markers.append(Marker(t=net.now, what=f"{what} (nobody to crash)", group=group))
            return
        sim._harvest_stats(ep)
        sim._note(what, node=node, group=group)
        rec = sim.records
        for g, (_, leader) in sorted(rec.leaders.items()):
            if leader == node:
                rec.leaderless.setdefault(g, net.now)
        if sim._capture and self.failover is None:
            self._open_capture(node, group)
        self.markers.append(Marker(t=net.now, what=what, node=node, group=group))
        net.crash(node)
        self.counts["crashed"] += 1
        if restart_after > 0:
            sim._at(net.now + restart_after, lambda t: self._restart(node))

    def _restart(self, node: int) -> None:
        sim = self._sim
        net = sim.network
        if net.restart(node):
            self.counts["restarted"] += 1
            sim._note("restart", node=node)
            group = sim._where[node][0]
            self.markers.append(Marker(t=net.now, what="restart", node=node, group=group))

    def _open_capture(self, node: int, group: int) -> None:
        sim = self._sim
        net = sim.network
        self.failover = (net.now, group, node)
        if group == BROKER_GROUP:
            people: set[int] = set(net.subscribers(BROKER_GROUP))
            cluster = sim._where[node][0]
        else:
            people = set()
            cluster = group
        people.update(n for n in self._cluster_nodes(cluster) if sim.broker_capable(n))
        net.start_capture(node, group, people)

    def _heal(self) -> None:
        sim = self._sim
        sim._note("heal")
        sim.network.heal()
        self.markers.append(Marker(t=sim.network.now, what="heal"))

    def _wave_clusters(self, f: Failure) -> list[int]:
        if f.cluster:
            return [f.cluster] * f.count
        return [1 + k % self._sim.scenario.clusters for k in range(f.count)]

    def _join_wave(self, f: Failure) -> None:
        sim = self._sim
        net = sim.network
        for c in self._wave_clusters(f):
            index = self._next_index[c]
            self._next_index[c] = index + 1
            node = server_id(c, index)
            sim._note("join", node=node, group=c)
            net.spawn(node)
            self.counts["joined"] += 1
        self.markers.append(Marker(t=net.now, what=f"join x{f.count}", group=f.cluster))

    def _leave_wave(self, f: Failure) -> None:
        sim = self._sim
        net = sim.network
        left = 0
        for c in self._wave_clusters(f):
            who = [
                n for n in self._cluster_nodes(c) if n in sim._live and not sim.broker_capable(n)
            ]
            if not who:
                continue
            node = who[-1]
            ep = net.endpoint(node)
            if isinstance(ep, Node):
                sim._harvest_stats(ep)
            sim._note("leave", node=node, group=c)
            net.command(node, lambda ep, now: ep.leave(now))
            net.remove(node)
            sim.power.ledger.left(net.now, node)
            sim._drop_live(node)
            self.counts["left"] += 1
            left += 1
        self.markers.append(Marker(t=net.now, what=f"leave x{left}", group=f.cluster))
