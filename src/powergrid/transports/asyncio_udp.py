"""Real UDP multicast with asyncio: drives one endpoint over sockets and the loop's clock.

Theory of operation
-------------------
Everything a UDP transport decides (bundling, group addresses, dropping our
own multicasts, the event queue, shutdown) is in :mod:`._core`; this module
is only asyncio's way of waiting, with callbacks instead of tasks:

* each socket (the unicast socket bound to the node's id, a group socket per
  subscribed group) has a reader callback (``loop.add_reader``) that calls
  :meth:`Driver._read_batch`: at most 64 datagrams fed to the node, then a
  flush. When more wait, the selector reports the socket again on the next
  loop iteration, after the other ready callbacks;
* one timer (``loop.call_at``) at the endpoint's ``next_deadline()``, moved
  only when it changed; when it fires, :meth:`Driver._on_deadline` runs;
* a command that leaves datagrams waiting for company schedules one flush
  with ``loop.call_soon``: it runs when the commanding task next awaits;
* while the kernel's send buffer is full, a writer callback
  (``loop.add_writer``) drains the backlog.

``now`` is ``loop.time()`` (monotonic). A callback that raises (an endpoint
bug) cancels the task that entered :func:`run_node`, which then ends with
that exception, and the node does not leave (peers see a crash). A node
stopped on purpose (the block ends, or is cancelled from outside:
``asyncio.timeout``, a signal handler cancelling the task) leaves gracefully.

The sockets are the same non-blocking stdlib sockets as trio's, so this needs
a selector event loop (the default on Linux and macOS, and uvloop); on
Windows use ``asyncio.WindowsSelectorEventLoopPolicy``. ``import powergrid``
never imports this module (or asyncio).
"""

from __future__ import annotations

import asyncio
import math
import random
import socket
from collections.abc import AsyncIterator, Callable
from contextlib import asynccontextmanager, suppress

from powergrid.errors import UsageError
from powergrid.events import Endpoint
from powergrid.node import Node, NodeConfig
from powergrid.transports._core import Driver, UdpConfig, default_incarnation, log, require_key

__all__ = ["AsyncioUdpHandle", "run_node"]


class AsyncioUdpHandle(Driver):
    """The app's handle on a node run by :func:`run_node`. Use it from the loop's tasks.

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
        self._loop = asyncio.get_running_loop()
        self._clock = self._loop.time
        self._timer: asyncio.TimerHandle | None = None
        self._writing = False
        self._drained: asyncio.Future[None] | None = None
        self._waiters: list[asyncio.Future[None]] = []
        self._host: asyncio.Task[object] | None = None
        self._error: BaseException | None = None

    # ------------------------------------------------------------ Driver's hooks

    def _now(self) -> float:
        return self._clock()

    def _arm(self, deadline: float) -> None:
        if self._timer is not None:
            self._timer.cancel()
            self._timer = None
        if deadline != math.inf and not self._closed:
            self._timer = self._loop.call_at(deadline, self._guarded, self._fire)

    def _request_flush(self) -> None:
        self._loop.call_soon(self._guarded, self._flush_soon)

    def _start_writer(self, sock: socket.socket) -> None:
        if not self._writing and not self._closed:
            self._writing = True
            self._loop.add_writer(sock, self._guarded, self._on_writable)

    def _stop_writer(self, sock: socket.socket) -> None:
        if self._writing:
            self._writing = False
            self._loop.remove_writer(sock)

    def _start_group_reader(self, group: int, sock: socket.socket) -> None:
        self._loop.add_reader(sock, self._guarded, self._on_readable, sock, True)

    def _stop_group_reader(self, group: int, sock: socket.socket) -> None:
        self._loop.remove_reader(sock)

    def _wake_events(self) -> None:
        if self._waiters:  # every reader waiting in events(), as trio's ParkingLot does
            for waiter in self._waiters:
                if not waiter.done():
                    waiter.set_result(None)
            self._waiters.clear()

    async def _wait_events(self) -> None:
        waiter = self._loop.create_future()
        self._waiters.append(waiter)
        try:
            await waiter
        finally:
            if waiter in self._waiters:
                self._waiters.remove(waiter)

    async def _after_command(self, yield_now: bool) -> None:
        if yield_now:
            await asyncio.sleep(0)

    # ------------------------------------------------------------ callbacks

    def _guarded(self, call: Callable[..., object], *args: object) -> None:
        """Run a loop callback; if it raises (an endpoint bug), fail the node and its host task."""
        if self._error is not None:
            return
        try:
            call(*args)
        except (KeyboardInterrupt, SystemExit):
            raise
        except BaseException as exc:
            self._error = exc
            self._failed = True
            if self._host is not None and not self._host.done():
                self._host.cancel()

    def _on_readable(self, sock: socket.socket, group: bool) -> None:
        if self._read_batch(sock, group) == 2 and sock.fileno() >= 0:
            self._loop.remove_reader(sock)

    def _fire(self) -> None:
        self._timer = None
        self._armed = math.inf
        self._on_deadline()
        self._settle()

    def _on_writable(self) -> None:
        if self._drain():
            assert self._usock is not None
            self._stop_writer(self._usock)
            if self._drained is not None and not self._drained.done():
                self._drained.set_result(None)

    # ------------------------------------------------------------ lifecycle

    def _run(self) -> None:
        self._host = asyncio.current_task()
        assert self._usock is not None
        self._loop.add_reader(self._usock, self._guarded, self._on_readable, self._usock, False)
        self._start()

    async def _shutdown(self, failed: bool) -> None:
        self._begin_shutdown(failed)
        if self._backlog and self._usock is not None:
            self._drained = self._loop.create_future()
            with suppress(TimeoutError, asyncio.CancelledError):
                await asyncio.wait_for(asyncio.shield(self._drained), self._config.flush_timeout)
        if self._backlog:
            log.warning("shutdown: %d datagrams not flushed in time", len(self._backlog))

    def _close(self) -> None:
        if self._timer is not None:
            self._timer.cancel()
            self._timer = None
        if self._usock is not None and self._usock.fileno() >= 0:
            self._loop.remove_reader(self._usock)
        super()._close()


@asynccontextmanager
async def run_node(
    node: Endpoint | NodeConfig,
    *,
    udp: UdpConfig | None = None,
    incarnation: int | None = None,
    rng: random.Random | None = None,
    on_event: Callable[[object], object] | None = None,
    insecure: bool = False,
) -> AsyncIterator[AsyncioUdpHandle]:
    """Run ``node`` (an endpoint, or a :class:`NodeConfig` to build a :class:`Node` from)
    on UDP with the running asyncio loop.

    The same contract as :func:`powergrid.transports.trio_udp.run_node`:
    ``incarnation`` defaults to :func:`default_incarnation`, ``rng`` to a fresh
    ``random.Random()``; ``on_event`` replaces the :meth:`events` queue; an
    unkeyed endpoint runs only with ``insecure=True``.
    Raises :class:`ConfigError` without a key and without ``insecure=True`` (or
    with both), if the unicast socket cannot be opened, and
    :class:`UsageError` outside asyncio (e.g. under trio: use ``run_node``). Yields
    an :class:`AsyncioUdpHandle`; leaving the block (also by cancellation from
    outside) leaves gracefully, flushes and closes every socket; an exception
    from the block or the endpoint skips the leave, and an exception from the
    endpoint ends the block with it.
    """
    try:
        asyncio.get_running_loop()
    except RuntimeError:
        raise UsageError(
            "powergrid.run_node_asyncio runs under asyncio (asyncio.run); "
            "under trio use powergrid.run_node"
        ) from None
    if isinstance(node, NodeConfig):
        inc = default_incarnation() if incarnation is None else incarnation
        endpoint: Endpoint = Node(node, incarnation=inc, rng=rng or random.Random())
    else:
        endpoint = node
    require_key(endpoint, insecure, "powergrid.run_node_asyncio")
    handle = AsyncioUdpHandle(endpoint, udp or UdpConfig(), on_event)
    handle._open()
    failed = True
    try:
        handle._run()
        try:
            yield handle
            failed = False
        except asyncio.CancelledError:
            if handle._error is None:
                failed = False  # cancelled from outside: stopped on purpose
                raise
            host = handle._host
            if host is not None:
                host.uncancel()
            raise handle._error from None
        except (KeyboardInterrupt, SystemExit, GeneratorExit):
            failed = False
            raise
        finally:
            await handle._shutdown(failed)
        if handle._error is not None:  # the endpoint failed after the block's last await
            raise handle._error
    finally:
        handle._close()
