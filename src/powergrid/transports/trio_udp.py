"""Real UDP multicast with trio: drives one endpoint over sockets and trio's clock.

Theory of operation
-------------------
Everything a UDP transport decides (bundling, group addresses, dropping our
own multicasts, the event queue, shutdown) is in :mod:`._core`; this module
is only trio's way of waiting. :func:`run_node` opens, in a trio nursery:

* a reader task per socket (the unicast socket bound to the node's id, and a
  group socket per subscribed group): it waits with
  ``trio.lowlevel.wait_readable`` and calls :meth:`Driver._read_batch`, which
  reads at most 64 datagrams and feeds them to the node; after a full batch
  it lets other tasks run before reading on;
* a timer task: a cancel scope whose deadline is the endpoint's
  ``next_deadline()`` (moved only when it changed); when it fires,
  :meth:`Driver._on_deadline` runs;
* a flusher task: sends what commands left waiting (see *Bundling* in
  docs/transports.md) as soon as the commanding task next lets others run;
* a sender task: drains the backlog when the kernel's send buffer had no room.

``now`` is ``trio.current_time()``. On leaving the ``async with`` block the
node leaves gracefully whenever it stops on purpose (the block ends, or is
cancelled from outside: a signal, a deadline); only an exception from the
endpoint or from the block counts as a failure and skips the leave. Then the
backlog is flushed (at most ``flush_timeout`` seconds), the tasks are
cancelled and every socket is closed. ``import powergrid`` never imports this
module (or trio).
"""

from __future__ import annotations

import random
import socket
from collections.abc import AsyncIterator, Awaitable, Callable
from contextlib import asynccontextmanager
from typing import Any

import trio

from powergrid.errors import UsageError
from powergrid.events import Endpoint
from powergrid.node import Node, NodeConfig
from powergrid.transports._core import (
    BUNDLE_MAGIC,
    Driver,
    UdpConfig,
    UdpStats,
    default_incarnation,
    log,
    pack_bundles,
    require_key,
    split_bundle,
)

__all__ = [
    "BUNDLE_MAGIC",
    "UdpConfig",
    "UdpHandle",
    "UdpStats",
    "default_incarnation",
    "pack_bundles",
    "run_node",
    "split_bundle",
]


class UdpHandle(Driver):
    """The app's handle on a node run by :func:`run_node`. Use it from trio tasks.

    Commands (``multicast``, ``send``, ``set_bid``, ``set_supply``, ``leave``,
    ``command``) and ``events()`` are described on :class:`Driver`. A group in the
    config's ``NodeConfig.total_order`` gets its ``multicast`` payloads delivered in
    total order at every member (:mod:`powergrid.protocols.order`); the option is the
    config's, the handle's calls are the same.
    """

    def __init__(
        self,
        endpoint: Endpoint,
        config: UdpConfig,
        on_event: Callable[[object], object] | None = None,
    ) -> None:
        super().__init__(endpoint, config, on_event)
        self._nursery: trio.Nursery | None = None
        self._timer: trio.CancelScope | None = None
        self._scopes: dict[int, trio.CancelScope] = {}
        self._flush_lot = trio.lowlevel.ParkingLot()
        self._backlog_lot = trio.lowlevel.ParkingLot()
        self._drained_lot = trio.lowlevel.ParkingLot()
        self._events_lot = trio.lowlevel.ParkingLot()
        self._check_cancelled = trio.lowlevel.checkpoint_if_cancelled

    # ------------------------------------------------------------ Driver's hooks

    def _now(self) -> float:
        return trio.current_time()

    def _arm(self, deadline: float) -> None:
        if self._timer is not None:
            self._timer.deadline = deadline

    def _request_flush(self) -> None:
        self._flush_lot.unpark_all()

    def _start_writer(self, sock: socket.socket) -> None:
        self._backlog_lot.unpark_all()

    def _start_group_reader(self, group: int, sock: socket.socket) -> None:
        assert self._nursery is not None
        scope = self._scopes[group] = trio.CancelScope()
        self._nursery.start_soon(self._scoped_reader, sock, scope)

    def _stop_group_reader(self, group: int, sock: socket.socket) -> None:
        self._scopes.pop(group).cancel()
        trio.lowlevel.notify_closing(sock)

    def _wake_events(self) -> None:
        if self._events_lot:  # someone waits in events()
            self._events_lot.unpark_all()

    async def _wait_events(self) -> None:
        await self._events_lot.park()

    async def _after_command(self, yield_now: bool) -> None:
        if yield_now:
            await trio.lowlevel.checkpoint()
        else:
            await trio.lowlevel.checkpoint_if_cancelled()

    # ------------------------------------------------------------ lifecycle

    def _run(self, nursery: trio.Nursery) -> None:
        self._nursery = nursery
        assert self._usock is not None
        for task in (self._sender, self._flusher, self._run_timer):
            nursery.start_soon(self._guard, task)
        nursery.start_soon(self._guard, lambda: self._reader(self._usock, False))
        self._start()

    async def _guard(self, task: Callable[[], Awaitable[None]]) -> None:
        """Run a transport task; if it raises (an endpoint bug), the node failed: no leave."""
        try:
            await task()
        except BaseException as exc:
            if not _on_purpose(exc):
                self._failed = True
            raise

    async def _shutdown(self, failed: bool) -> None:
        self._begin_shutdown(failed)
        with trio.move_on_after(self._config.flush_timeout):
            while self._backlog:
                await self._drained_lot.park()
        if self._backlog:
            log.warning("shutdown: %d datagrams not flushed in time", len(self._backlog))

    # ------------------------------------------------------------ tasks

    async def _reader(self, sock: Any, group: bool) -> None:
        read_batch = self._read_batch
        while True:
            if sock.fileno() < 0:  # closed (LeaveGroup) before this task got to run
                return
            try:
                await trio.lowlevel.wait_readable(sock)
            except trio.ClosedResourceError:
                return
            state = read_batch(sock, group)
            if state == 2:
                return
            if state == 1:  # a full batch and maybe more waiting: let the other tasks run
                await trio.lowlevel.checkpoint()
            # drained: wait_readable is the next yield

    async def _scoped_reader(self, sock: socket.socket, scope: trio.CancelScope) -> None:
        with scope:
            await self._guard(lambda: self._reader(sock, True))

    async def _run_timer(self) -> None:
        while True:
            with trio.CancelScope() as scope:
                self._timer = scope
                self._armed = scope.deadline = self._endpoint_deadline()
                await trio.sleep_forever()
            self._timer = None
            self._on_deadline()

    def _endpoint_deadline(self) -> float:
        due = self._endpoint.next_deadline()
        return float("inf") if due is None else due

    async def _flusher(self) -> None:
        """Send what commands left waiting, and re-arm, when their task lets others run."""
        while True:
            if not self._flush_due:
                await self._flush_lot.park()
            self._flush_soon()

    async def _sender(self) -> None:
        while True:
            if not self._backlog:
                self._drained_lot.unpark_all()
                await self._backlog_lot.park()
                continue
            sock = self._usock
            assert sock is not None
            await trio.lowlevel.wait_writable(sock)
            self._drain()


@asynccontextmanager
async def run_node(
    node: Endpoint | NodeConfig,
    *,
    udp: UdpConfig | None = None,
    incarnation: int | None = None,
    rng: random.Random | None = None,
    on_event: Callable[[object], object] | None = None,
    insecure: bool = False,
) -> AsyncIterator[UdpHandle]:
    """Run ``node`` (an endpoint, or a :class:`NodeConfig` to build a :class:`Node` from) on UDP.

    ``incarnation`` defaults to :func:`default_incarnation` and ``rng`` to a
    fresh ``random.Random()``; both are used only to build a Node.
    ``on_event(notification)``, if given, takes every notification at once,
    inside the transport's tasks, instead of the :meth:`UdpHandle.events`
    queue (see docs/transports.md). **Secure by default**: an endpoint without a
    keyring (``NodeConfig.keyring``) runs only with ``insecure=True``. Raises
    :class:`ConfigError` without a key and without ``insecure=True`` (the error
    names what to pass), with both, or if the
    unicast socket cannot be opened, :class:`UsageError` outside trio (e.g. under
    asyncio: use ``run_node_asyncio``). Yields a :class:`UdpHandle`; leaving the
    block (also by cancellation from outside) leaves gracefully, flushes and
    closes every socket; an exception from the block or the endpoint skips
    the leave (peers see a crash). An exception from the endpoint ends the
    block with it.
    """
    try:
        trio.lowlevel.current_task()
    except RuntimeError:
        raise UsageError(
            "powergrid.run_node runs under trio (trio.run); "
            "under asyncio use powergrid.run_node_asyncio"
        ) from None
    if isinstance(node, NodeConfig):
        inc = default_incarnation() if incarnation is None else incarnation
        endpoint: Endpoint = Node(node, incarnation=inc, rng=rng or random.Random())
    else:
        endpoint = node
    require_key(endpoint, insecure, "powergrid.run_node")
    handle = UdpHandle(endpoint, udp or UdpConfig(), on_event)
    handle._open()
    try:
        async with trio.open_nursery() as nursery:
            handle._run(nursery)
            failed = True
            try:
                yield handle
                failed = False
            except trio.Cancelled:
                failed = False  # stopped from outside (or by a failed task: handle._failed)
                raise
            except BaseExceptionGroup as group:
                failed = not all(_on_purpose(e) for e in group.exceptions)
                raise
            except BaseException as exc:
                failed = not _on_purpose(exc)
                raise
            finally:
                with trio.CancelScope(shield=True):
                    await handle._shutdown(failed)
                nursery.cancel_scope.cancel()
    except BaseExceptionGroup as group:
        if len(group.exceptions) == 1:
            raise group.exceptions[0] from None
        raise
    finally:
        handle._close()


def _on_purpose(exc: BaseException) -> bool:
    """A stop someone asked for: a cancellation, Ctrl-C, ``sys.exit``, a generator close."""
    return isinstance(exc, trio.Cancelled | KeyboardInterrupt | SystemExit | GeneratorExit)
