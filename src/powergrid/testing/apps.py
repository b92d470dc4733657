"""Test an app written against the public handle on a simulated data centre, in virtual time.

Theory of operation
-------------------
An app talks to its node through a handle (``multicast``, ``send``,
``set_bid``, ``set_supply``, ``leave``, ``events()``). :class:`SimDatacenter`
gives the app the same handle (:class:`SimHandle`, the transports' own
:class:`~powergrid.transports._core.Driver` with its notifications and
event queue; the node gives ``MemberJoined``/``MemberLeft``) but drives the nodes over a
:class:`~powergrid.sim.fuzz.FuzzNetwork` instead of sockets: seeded loss,
crashes and restarts, in virtual time.

Time is trio's: the app runs under ``trio.run`` with a
``trio.testing.MockClock(autojump_threshold=0)`` (:func:`run`), so whenever
every task waits, trio jumps its clock to the next deadline. One driver task
keeps the network's clock equal to trio's: it runs the network up to
``trio.current_time()``, then sleeps until the network's next event or until
a command wakes it. A command runs the network up to now first, so it is
given to the node at the same virtual time the app sees. A 30-second
scenario runs in milliseconds of real time, and the same seed gives the same
run.

Only trio apps are driven (asyncio has no virtual clock to jump); an app
written for ``run_node_asyncio`` is tested with the same code under trio if
it keeps its loop calls to the handle. Raises
:class:`~powergrid.errors.UsageError` for a command to a node that crashed.
"""

from __future__ import annotations

import math
import random
from collections.abc import AsyncIterator, Awaitable, Callable, Iterable
from contextlib import asynccontextmanager

import trio
import trio.testing

from powergrid.errors import UsageError
from powergrid.events import Endpoint
from powergrid.node import Node, NodeConfig
from powergrid.sim.fuzz import FuzzNetwork, LinkFaults
from powergrid.transports._core import Driver, UdpConfig
from powergrid.types import Incarnation, NodeId

__all__ = ["SimDatacenter", "SimHandle", "run", "sim_datacenter"]


def run(main: Callable[[], Awaitable[object]]) -> None:
    """``trio.run(main)`` in virtual time (a ``MockClock`` that jumps whenever all tasks wait)."""
    trio.run(main, clock=trio.testing.MockClock(autojump_threshold=0))


class SimHandle(Driver):
    """The app's handle on a simulated node: the same commands and events as ``run_node``'s.

    ``stats`` stays zero (no sockets); the node's own counters are ``endpoint.stats``.
    """

    def __init__(self, dc: SimDatacenter, endpoint: Endpoint) -> None:
        super().__init__(endpoint, UdpConfig())
        self._dc = dc
        self._lot = trio.lowlevel.ParkingLot()

    # commands go through the network, at the network's time (= trio's)
    def _now(self) -> float:
        return self._dc._sync()

    def _commanded(self, outputs: Iterable[object]) -> bool:
        produced = list(outputs)
        self._dc.net.command(self.node_id, lambda ep, now: produced)
        self._dc._wake()
        return True

    def _check_running(self) -> None:
        if self._dc.net.endpoint(self.node_id) is not self._endpoint:
            self._running = False
        super()._check_running()

    def _arm(self, deadline: float) -> None:
        pass  # the network keeps the node's timer

    def _wake_events(self) -> None:
        if self._lot:
            self._lot.unpark_all()

    async def _wait_events(self) -> None:
        await self._lot.park()

    async def _after_command(self, yield_now: bool) -> None:
        await trio.lowlevel.checkpoint()


class SimDatacenter:
    """Nodes on one seeded :class:`~powergrid.sim.fuzz.FuzzNetwork` driven in trio's virtual time.

    Build it with :func:`sim_datacenter`. ``start(config)`` adds a node and
    returns its :class:`SimHandle`; ``crash``, ``restart`` and ``isolate``/``heal``
    inject faults now. Raises :class:`UsageError` for an unknown node.
    """

    def __init__(self, seed: int, loss: float) -> None:
        self.seed = seed
        self._configs: dict[int, NodeConfig] = {}
        self._handles: dict[int, SimHandle] = {}
        self.net = FuzzNetwork(
            seed=seed, make=self._make, link=LinkFaults(loss=loss), observer=self._observe
        )
        self._event = trio.Event()

    def _make(self, node: NodeId, incarnation: Incarnation) -> Endpoint:
        rng = random.Random(f"{self.seed}/{node}/{incarnation}")
        return Node(self._configs[node], incarnation=incarnation, rng=rng)

    def _observe(self, time: float, node: NodeId, output: object) -> None:
        handle = self._handles.get(node)
        if handle is not None and self.net.endpoint(node) is handle._endpoint:
            handle._dispatch((output,))

    def _sync(self) -> float:
        """Run the network up to trio's clock; its time (seconds)."""
        now = trio.current_time()
        if now > self.net.now:
            self.net.run_until(now)
        return self.net.now

    def _wake(self) -> None:
        self._event.set()

    async def _drive(self) -> None:
        while True:
            self._sync()
            due = self.net.next_time()
            self._event = trio.Event()
            with trio.move_on_at(math.inf if due is None else due):
                await self._event.wait()

    def start(self, config: NodeConfig) -> SimHandle:
        """Add a node built from ``config`` now (its first life); its handle."""
        node = config.node_id
        if node in self._configs:
            raise UsageError(f"node {config.host}:{config.port} was already started")
        self._configs[node] = config
        self._sync()
        self.net.spawn(node)
        handle = self._attach(node)
        self._wake()
        return handle

    def _attach(self, node: int) -> SimHandle:
        endpoint = self.net.endpoint(node)
        assert endpoint is not None
        handle = self._handles[node] = SimHandle(self, endpoint)
        handle._running = True
        return handle

    def handle(self, node: int) -> SimHandle:
        """The handle of ``node``'s current life. Raises :class:`UsageError` if unknown."""
        if node not in self._handles:
            raise UsageError(f"no node {node} in this data centre")
        return self._handles[node]

    def crash(self, node: int) -> None:
        """Crash ``node`` now: it stops without a word; its handle's events end."""
        self._sync()
        if not self.net.crash(node):
            raise UsageError(f"node {node} is not up")
        handle = self._handles[node]
        handle._running = False
        handle._closed = True
        handle._wake_events()
        self._wake()

    def restart(self, node: int) -> SimHandle:
        """Restart crashed ``node`` with its next incarnation; the new life's handle."""
        self._sync()
        if not self.net.restart(node):
            raise UsageError(f"node {node} is not down")
        handle = self._attach(node)
        self._wake()
        return handle

    def isolate(self, node: int) -> None:
        """Cut ``node`` off from every other node, both ways, until :meth:`heal`."""
        self._sync()
        self.net.isolate(node)

    def heal(self) -> None:
        """End every partition."""
        self._sync()
        self.net.heal()


@asynccontextmanager
async def sim_datacenter(*, seed: int = 0, loss: float = 0.0) -> AsyncIterator[SimDatacenter]:
    """A simulated data centre for the block: run it under :func:`run` (virtual time).

    ``seed`` fixes every random choice (node timers, loss); ``loss`` is the
    probability (0..1) that a datagram is lost. Raises ``ConfigError`` for a
    loss outside 0..1.
    """
    dc = SimDatacenter(seed, loss)
    async with trio.open_nursery() as nursery:
        nursery.start_soon(dc._drive)
        try:
            yield dc
        finally:
            for handle in dc._handles.values():
                handle._running = False
                handle._closed = True
                handle._wake_events()
            nursery.cancel_scope.cancel()
