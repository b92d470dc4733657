"""Real UDP multicast with trio: drives one endpoint over sockets and the monotonic clock.

Theory of operation
-------------------
This adapter moves bytes and time, nothing else (aioquic's asyncio adapter is
the model). :func:`run_node` opens, in a trio nursery:

* one **unicast socket**, bound to the endpoint's own address
  (:func:`~powergrid.types.node_address` of its id: the id *is* the address).
  Every datagram the node sends leaves through it, multicasts included, so the
  source address of everything a node sends is its id;
* one **group socket** per group the endpoint subscribes to
  (:class:`~powergrid.events.JoinGroup` / :class:`~powergrid.events.LeaveGroup`),
  bound to the group's address from :meth:`UdpConfig.group_address` with
  ``SO_REUSEADDR``/``SO_REUSEPORT``, so several processes on one host share
  it. Group sockets only receive;
* one reader task per socket, a timer task, a flusher task and a sender task.

Sockets are non-blocking stdlib sockets waited on with
``trio.lowlevel.wait_readable``/``wait_writable``, so handling an output
never awaits: a reader wakes, reads every datagram waiting (at most 64
before it lets other tasks run), hands each to ``endpoint.receive(data,
now)`` and carries out the outputs at once.

**Bundling** (opportunistic, as JGroups' bundler and Aeron do; ``bundle_size``
0 turns it off). The datagrams the endpoint outputs wait in a list until the
next *flush*, which comes before the task that produced them lets other tasks
run: at the end of a reader's batch, after a wake-up, at start and leave;
after a command, at once if one more datagram like the last would not fit in a
bundle or if it queued none (then the command yields), else by the flusher task
when the commanding task next lets others run. So nothing waits for company (no timer, no
minimum): a datagram waits at most until the task that produced it lets other
tasks run, and the datagrams produced meanwhile share UDP datagrams. At a
flush the waiting datagrams are grouped by destination (in order within each)
and packed by :func:`pack_bundles` into bundles of at most ``bundle_size``
bytes; a datagram with no company leaves as it is. A reader splits a bundle
(:func:`split_bundle`) and hands each datagram to the endpoint in order; a
malformed bundle is dropped whole and counted (``stats.bad_bundles``). Each
datagram in a bundle is exactly what the endpoint produced, so its
authentication tag still covers it; the framing itself is not signed (a
tampered one can only cut datagrams that then fail their own checks).

A UDP datagram goes straight to the kernel, and only when the kernel's send
buffer is full does it wait in a bounded backlog (``max_queue``; when that is
full too the new datagram is dropped and counted, never blocking). With each
flush the single timer is re-armed at ``endpoint.next_deadline()`` (trio's
deadline is only touched when that changed); when it fires,
``handle_deadline(now)`` runs. ``now`` is ``trio.current_time()``. So
nothing awaits between a call into the endpoint and the re-arm, and no
deadline is missed in between.

Like the memory network with ``loopback=False``, a node does not receive its
own multicasts: ``IP_MULTICAST_LOOP`` stays on (other processes on the host
need it) and the group readers drop datagrams whose source is the node's own
address (``stats.own``).

Outputs other than datagrams and subscriptions are notifications for the app:
they go to a bounded queue read with :meth:`UdpHandle.events`; when it is
full the oldest is dropped and counted (``stats.dropped_events``). An app
that wants them without a task switch per notification passes ``on_event``
to :func:`run_node`: it is called at once, in order, inside the transport's
tasks, and nothing is queued (it must not block; what it raises ends
:func:`run_node` like an endpoint bug, or reaches the caller of a command).

Socket errors (a refused send, an unreachable network, an error on receive)
are counted and logged, never raised. Malformed datagrams are the endpoint's
business (a :class:`~powergrid.node.Node` counts them). An exception raised
*by the endpoint* is a bug: it ends :func:`run_node` with that exception.

On leaving the ``async with`` block the node leaves gracefully
(``endpoint.leave(now)`` if it has one and has not left yet), the backlog is
flushed (at most ``flush_timeout`` seconds), the tasks are cancelled and every
socket is closed. ``import powergrid`` never imports this module (or trio).
"""

from __future__ import annotations

import ipaddress
import logging
import math
import random
import socket
import sys
import time
from collections import deque
from collections.abc import AsyncIterator, Callable, Iterable, Sequence
from contextlib import asynccontextmanager
from typing import Any

import attrs
import trio

from powergrid.errors import ConfigError, UsageError
from powergrid.events import Endpoint, JoinGroup, LeaveGroup, Transmit, TransmitGroup
from powergrid.node import Node, NodeConfig
from powergrid.types import NodeId, node_address
from powergrid.wire import HEADER_SIZE, MAGIC, WIRE_LIMIT

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

log = logging.getLogger(__name__)

_BATCH = 64  # datagrams a reader handles before letting other tasks run

BUNDLE_MAGIC = b"PB"
"""The first two bytes of a bundle; every powergrid datagram begins with ``PG``."""
_BUNDLE_VERSION = 1
_BUNDLE_HEAD = BUNDLE_MAGIC + bytes([_BUNDLE_VERSION])
_BUNDLE_MIN = len(_BUNDLE_HEAD) + 2 * (2 + HEADER_SIZE)  # room for two minimal datagrams
_UDP_MAX = 65507  # the largest UDP payload over IPv4
assert BUNDLE_MAGIC != MAGIC

Command = Callable[[Any, float], Iterable[object]]
"""``(endpoint, now) -> outputs``: a local command given to the endpoint."""


def _ipv4(value: str, what: str) -> ipaddress.IPv4Address:
    try:
        return ipaddress.IPv4Address(value)
    except ValueError as exc:
        raise ConfigError(f"{what} {value!r} is not an IPv4 address") from exc


@attrs.frozen(kw_only=True)
class UdpConfig:
    """Socket settings of the trio UDP transport. Raises :class:`ConfigError` when invalid.

    * ``interface``: the local IPv4 address multicast leaves from
      (``IP_MULTICAST_IF``) and joins on (``IP_ADD_MEMBERSHIP``).
    * ``ttl``: multicast hops, 0..255; 0 keeps it on this host, 1 on the LAN.
    * ``loopback``: ``IP_MULTICAST_LOOP``; keep it on when several nodes share a host.
    * ``recv_buffer``: bytes asked for with ``SO_RCVBUF`` on every socket (0: the
      OS default); the granted size is read back and a warning is logged when
      it is less.
    * ``max_queue``: datagrams waiting for room in the kernel's send buffer;
      beyond it new datagrams are dropped and counted.
    * ``event_queue``: notifications waiting for the app; beyond it the oldest is dropped.
    * ``flush_timeout``: seconds shutdown waits for the send backlog to drain.
    * ``bundle_size``: the most bytes of one bundle, framing included (see
      :func:`pack_bundles`); 0 sends every datagram on its own. Receiving
      bundles is always on: a node reads datagrams of up to
      ``max(WIRE_LIMIT, bundle_size)`` bytes, so give every node of a cluster
      the same setting (the default fits an Ethernet MTU).
    * ``group_prefix``, ``group_port_base``, ``group_ports``: the default address
      scheme, see :meth:`group_address`; ``group_map`` replaces it.
    """

    interface: str = "127.0.0.1"
    ttl: int = 1
    loopback: bool = True
    recv_buffer: int = 4 << 20
    max_queue: int = 1024
    event_queue: int = 4096
    flush_timeout: float = 1.0
    bundle_size: int = WIRE_LIMIT
    group_prefix: str = "239.255.0.0"
    group_port_base: int = 20000
    group_ports: int = 1000
    group_map: Callable[[int], tuple[str, int]] | None = None

    def __attrs_post_init__(self) -> None:
        _ipv4(self.interface, "interface")
        if not 0 <= self.ttl <= 255:
            raise ConfigError(f"ttl {self.ttl} is outside 0..255 (0: this host, 1: the LAN)")
        if self.recv_buffer < 0:
            raise ConfigError(f"recv_buffer {self.recv_buffer} must be >= 0 bytes (0: OS default)")
        if self.max_queue < 1:
            raise ConfigError(f"max_queue {self.max_queue} must be at least 1 datagram")
        if self.event_queue < 1:
            raise ConfigError(f"event_queue {self.event_queue} must be at least 1 notification")
        if not self.flush_timeout >= 0:
            raise ConfigError(f"flush_timeout {self.flush_timeout} must be >= 0 seconds")
        if self.bundle_size and not _BUNDLE_MIN <= self.bundle_size <= _UDP_MAX:
            raise ConfigError(
                f"bundle_size {self.bundle_size} must be 0 (no bundling) or "
                f"{_BUNDLE_MIN}..{_UDP_MAX} bytes"
            )
        prefix = _ipv4(self.group_prefix, "group_prefix")
        if not prefix.is_multicast or int(prefix) & 0xFFFF:
            raise ConfigError(
                f"group_prefix {self.group_prefix} must be a multicast /16 ending in .0.0, "
                "e.g. 239.255.0.0"
            )
        if self.group_ports < 1:
            raise ConfigError(f"group_ports {self.group_ports} must be at least 1")
        if not 1 <= self.group_port_base <= 0x10000 - self.group_ports:
            raise ConfigError(
                f"group ports {self.group_port_base}..{self.group_port_base + self.group_ports - 1}"
                " must lie within 1..65535: lower group_port_base or group_ports"
            )

    def group_address(self, group: int) -> tuple[str, int]:
        """The multicast ``(ip, port)`` of ``group``.

        By default the ip is ``group_prefix`` plus the group's low 16 bits
        (group 0 -> 239.255.0.0, group 258 -> 239.255.1.2) and the port is
        ``group_port_base + group % group_ports``. ``group_map`` overrides both.
        """
        if self.group_map is not None:
            return self.group_map(group)
        prefix = int(ipaddress.IPv4Address(self.group_prefix))
        ip = str(ipaddress.IPv4Address(prefix | (group & 0xFFFF)))
        return ip, self.group_port_base + group % self.group_ports


@attrs.define(kw_only=True)
class UdpStats:
    """Counters of one transport run."""

    sent: int = 0
    """UDP datagrams handed to the kernel (a bundle is one)."""
    received: int = 0
    """Datagrams handed to the endpoint (each datagram of a bundle counts)."""
    bundles_sent: int = 0
    """Bundles made of the endpoint's datagrams (each is one datagram in ``sent``)."""
    bundled: int = 0
    """The endpoint's datagrams that left inside those bundles."""
    bundles_received: int = 0
    """Bundles received and split."""
    bad_bundles: int = 0
    """Malformed bundles received, dropped whole (see :func:`split_bundle`)."""
    own: int = 0
    """Our own multicasts looped back, dropped."""
    send_errors: int = 0
    """Sends the kernel refused (unreachable network, firewall, bad destination)."""
    recv_errors: int = 0
    """Errors reading a socket (e.g. an ICMP error reported on some systems)."""
    queued: int = 0
    """Datagrams that had to wait for room in the kernel's send buffer."""
    dropped_send_queue: int = 0
    """Datagrams dropped because the send backlog was full."""
    dropped_events: int = 0
    """Notifications dropped (oldest first) because the app did not read them."""
    wakeups: int = 0
    """Calls to ``handle_deadline``."""
    recv_buffer: int = 0
    """``SO_RCVBUF`` the kernel granted the unicast socket (Linux reports twice the
    usable size)."""


def default_incarnation() -> int:
    """The start time in milliseconds, mod 2**32 (a restart picks a higher one)."""
    return (time.time_ns() // 1_000_000) % (1 << 32)


def _pack(datagrams: Sequence[bytes]) -> bytes:
    parts = [_BUNDLE_HEAD]
    for data in datagrams:
        parts.append(len(data).to_bytes(2, "big"))
        parts.append(data)
    return b"".join(parts)


def pack_bundles(datagrams: Sequence[bytes], limit: int) -> list[bytes]:
    """The UDP datagrams that carry ``datagrams`` (for one destination), in order.

    Consecutive datagrams are packed into bundles of at most ``limit`` bytes:
    ``BUNDLE_MAGIC``, a version byte (1), then each datagram as a u16 length
    (big-endian, at least 1) and its bytes, unchanged. A datagram that has no
    company within the limit leaves as it is, unless it begins with
    ``BUNDLE_MAGIC`` itself: then it is a bundle of one, so a receiver never
    takes a lone datagram for a bundle.
    """
    out: list[bytes] = []
    run: list[bytes] = []
    size = len(_BUNDLE_HEAD)
    for data in datagrams:
        n = len(data) + 2
        if run and size + n > limit:
            out.append(_pack(run) if len(run) > 1 or run[0][:2] == BUNDLE_MAGIC else run[0])
            run = []
            size = len(_BUNDLE_HEAD)
        run.append(data)
        size += n
    if run:
        out.append(_pack(run) if len(run) > 1 or run[0][:2] == BUNDLE_MAGIC else run[0])
    return out


def split_bundle(data: bytes) -> list[bytes] | None:
    """The datagrams of the bundle ``data``, in order; None if it is malformed.

    Malformed: another magic or version, no datagram, a length of 0, or a
    length running past the end. A malformed bundle is refused whole.
    """
    if data[:3] != _BUNDLE_HEAD:
        return None
    out: list[bytes] = []
    pos = len(_BUNDLE_HEAD)
    end = len(data)
    while pos < end:
        size = int.from_bytes(data[pos : pos + 2], "big")
        pos += 2
        if size == 0 or pos + size > end:  # also a lone length byte at the end (pos > end)
            return None
        out.append(data[pos : pos + size])
        pos += size
    return out or None


def _not_open(data: bytes, addr: tuple[str, int]) -> int:
    raise OSError("the unicast socket is not open")


def _reuse(sock: socket.socket) -> None:
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    if hasattr(socket, "SO_REUSEPORT"):
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEPORT, 1)


class UdpHandle:
    """The app's handle on a running node (see :func:`run_node`). Use it from trio tasks."""

    def __init__(
        self,
        endpoint: Endpoint,
        config: UdpConfig,
        on_event: Callable[[object], object] | None = None,
    ) -> None:
        self._endpoint = endpoint
        self._config = config
        self._on_event = on_event
        self._stats = UdpStats()
        self._own = node_address(endpoint.node_id)
        self._usock: socket.socket | None = None
        self._sendto: Callable[[bytes, tuple[str, int]], int] = _not_open
        self._groups: dict[int, tuple[socket.socket, trio.CancelScope]] = {}
        self._nursery: trio.Nursery | None = None
        self._timer: trio.CancelScope | None = None
        self._armed = math.inf  # the timer's deadline as last set
        self._recv_size = max(WIRE_LIMIT, config.bundle_size) + 1  # +1: oversized is seen
        # datagrams waiting for the next flush, and their bytes as bundled
        self._pending: list[tuple[bytes, tuple[str, int]]] = []
        self._pending_bytes = 0
        self._last_size = 0  # of the last datagram queued, framing included
        # a command flushes at once when one more such datagram would not fit
        self._room = config.bundle_size - len(_BUNDLE_HEAD) if config.bundle_size else -1
        self._out = self._queue if config.bundle_size else self._send_lone
        self._flush_due = False  # the flusher task is woken (or will look before parking)
        self._flush_lot = trio.lowlevel.ParkingLot()
        self._backlog: deque[tuple[bytes, tuple[str, int]]] = deque()
        self._backlog_lot = trio.lowlevel.ParkingLot()
        self._drained_lot = trio.lowlevel.ParkingLot()
        self._events: deque[object] = deque()
        self._events_lot = trio.lowlevel.ParkingLot()
        self._addresses: dict[int, tuple[str, int]] = {}  # node id -> its socket address
        self._group_addresses: dict[int, tuple[str, int]] = {}  # group -> (ip, port)
        self._running = False
        self._closed = False
        self._left = False
        self._handlers: dict[type, Callable[[Any], None]] = {
            Transmit: self._on_transmit,
            JoinGroup: self._on_join,
            LeaveGroup: self._on_leave,
        }

    # ------------------------------------------------------------ surface

    @property
    def endpoint(self) -> Endpoint:
        """The endpoint being driven (read its properties; command it via :meth:`command`)."""
        return self._endpoint

    @property
    def node_id(self) -> NodeId:
        return self._endpoint.node_id

    @property
    def config(self) -> UdpConfig:
        return self._config

    @property
    def stats(self) -> UdpStats:
        return self._stats

    @property
    def groups(self) -> tuple[int, ...]:
        """The groups whose multicast address this node is subscribed to, sorted."""
        return tuple(sorted(self._groups))

    @property
    def running(self) -> bool:
        """True from start until shutdown begins."""
        return self._running

    async def events(self) -> AsyncIterator[object]:
        """The node's notifications in order; ends once the node has stopped and all are read.

        Empty when :func:`run_node` was given ``on_event``.
        """
        while True:
            while self._events:
                yield self._events.popleft()
            if self._closed:
                return
            await self._events_lot.park()

    async def command(self, call: Command) -> None:
        """Give the endpoint a local command now: ``call(endpoint, now)`` returns its outputs.

        Errors raised by ``call`` (e.g. :class:`UsageError`) reach the caller;
        raises :class:`UsageError` if the node is not running.
        """
        self._check_running()
        if self._commanded(call(self._endpoint, trio.current_time())):
            await trio.lowlevel.checkpoint()
        else:
            await trio.lowlevel.checkpoint_if_cancelled()

    async def multicast(self, payload: bytes, *, group: int | None = None) -> None:
        """``node.multicast(payload, now, group=group)``: reliable ordered multicast."""
        self._check_running()
        endpoint: Any = self._endpoint
        if self._commanded(endpoint.multicast(payload, trio.current_time(), group=group)):
            await trio.lowlevel.checkpoint()
        else:
            await trio.lowlevel.checkpoint_if_cancelled()

    async def send(self, to: int, payload: bytes, *, group: int | None = None) -> None:
        """``node.send(to, payload, now, group=group)``: reliable unicast."""
        self._check_running()
        endpoint: Any = self._endpoint
        if self._commanded(endpoint.send(to, payload, trio.current_time(), group=group)):
            await trio.lowlevel.checkpoint()
        else:
            await trio.lowlevel.checkpoint_if_cancelled()

    def _check_running(self) -> None:
        if not self._running:
            raise UsageError("the node is not running (run_node has exited or not started)")

    def _commanded(self, outputs: Iterable[object]) -> bool:
        """Carry out a command's outputs; True if its caller should let other tasks run now.

        What waits is flushed now, and the caller yields, when the command
        queued no datagram, or a bundle's worth waits (always without
        bundling); else the flusher task sends it, and re-arms the timer, when
        the caller's task next lets others run. So a task goes on without
        yielding only while it adds to a bundle that is not full yet.
        """
        before = len(self._pending)
        self._dispatch(outputs)
        if len(self._pending) == before or self._pending_bytes + self._last_size > self._room:
            self._flush()
            self._rearm()
            return True
        if not self._flush_due:
            self._flush_due = True
            self._flush_lot.unpark_all()
        return False

    async def leave(self) -> None:
        """``node.leave(now)``: leave every group gracefully; the node keeps running."""
        await self.command(lambda ep, now: ep.leave(now))
        self._left = True

    # ------------------------------------------------------------ lifecycle

    def _open(self) -> None:
        host, port = self._own
        cfg = self._config
        sock = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
        try:
            sock.setblocking(False)
            self._stats.recv_buffer = self._set_recv_buffer(sock, f"{host}:{port}")
            iface = socket.inet_aton(cfg.interface)
            sock.setsockopt(socket.IPPROTO_IP, socket.IP_MULTICAST_IF, iface)
            sock.setsockopt(socket.IPPROTO_IP, socket.IP_MULTICAST_TTL, cfg.ttl)
            sock.setsockopt(socket.IPPROTO_IP, socket.IP_MULTICAST_LOOP, int(cfg.loopback))
            sock.bind((host, port))
        except OSError as exc:
            sock.close()
            raise ConfigError(
                f"cannot open the unicast socket {host}:{port}: {exc}; "
                "pick a free port on an address of this host"
            ) from exc
        self._usock = sock
        self._sendto = sock.sendto
        if host != cfg.interface:
            log.warning(
                "node address %s differs from the multicast interface %s: multicasts will "
                "carry source %s; set UdpConfig.interface to the node's host",
                host,
                cfg.interface,
                host,
            )

    def _start(self, nursery: trio.Nursery) -> None:
        self._nursery = nursery
        self._running = True
        assert self._usock is not None
        nursery.start_soon(self._reader, self._usock, False)
        nursery.start_soon(self._sender)
        nursery.start_soon(self._flusher)
        nursery.start_soon(self._run_timer)
        self._dispatch(self._endpoint.start(trio.current_time()))
        self._flush()

    async def _shutdown(self, failed: bool) -> None:
        if self._running and not failed and not self._left and hasattr(self._endpoint, "leave"):
            self._left = True
            self._dispatch(self._endpoint.leave(trio.current_time()))
        self._flush()
        self._running = False
        with trio.move_on_after(self._config.flush_timeout):
            while self._backlog:
                await self._drained_lot.park()
        if self._backlog:
            log.warning("shutdown: %d datagrams not flushed in time", len(self._backlog))

    def _close(self) -> None:
        self._running = False
        self._closed = True
        for group in sorted(self._groups):
            self._close_group(group)
        if self._usock is not None:
            self._usock.close()
        self._events_lot.unpark_all()

    # ------------------------------------------------------------ tasks

    async def _reader(self, sock: socket.socket, group: bool) -> None:
        receive = self._endpoint.receive
        dispatch = self._dispatch
        stats = self._stats
        own = self._own
        recvfrom = sock.recvfrom
        size = self._recv_size
        clock = trio.current_time
        while True:
            if sock.fileno() < 0:  # closed (LeaveGroup) before this task got to run
                return
            try:
                await trio.lowlevel.wait_readable(sock)
            except trio.ClosedResourceError:
                return
            for _ in range(_BATCH):
                try:
                    data, source = recvfrom(size)
                except BlockingIOError:
                    break
                except OSError as exc:
                    if sock.fileno() < 0:  # closed by a LeaveGroup we just carried out
                        self._settle()
                        return
                    stats.recv_errors += 1
                    log.debug("receive error: %s", exc)
                    break
                if group and source == own:
                    stats.own += 1
                    continue
                now = clock()
                if data[:2] == BUNDLE_MAGIC:
                    parts = split_bundle(data)
                    if parts is None:
                        stats.bad_bundles += 1
                        continue
                    stats.bundles_received += 1
                    stats.received += len(parts)
                    for part in parts:
                        dispatch(receive(part, now))
                else:
                    stats.received += 1
                    dispatch(receive(data, now))
                if sock.fileno() < 0:
                    self._settle()
                    return
            else:  # a full batch and maybe more waiting: let the other tasks run first
                self._settle()
                await trio.lowlevel.checkpoint()
                continue
            # drained: flush and re-arm once for the whole batch; wait_readable is the next yield
            self._settle()

    async def _run_timer(self) -> None:
        endpoint = self._endpoint
        while True:
            with trio.CancelScope() as scope:
                self._timer = scope
                self._armed = math.inf
                self._rearm()
                await trio.sleep_forever()
            self._timer = None
            now = trio.current_time()
            due = endpoint.next_deadline()
            if due is not None and due <= now:
                self._stats.wakeups += 1
                self._dispatch(endpoint.handle_deadline(now))
                self._flush()

    async def _flusher(self) -> None:
        """Send what commands left waiting, and re-arm, when their task lets others run."""
        while True:
            if not self._flush_due:
                await self._flush_lot.park()
            self._flush_due = False
            self._flush()
            self._rearm()

    async def _sender(self) -> None:
        backlog = self._backlog
        while True:
            if not backlog:
                self._drained_lot.unpark_all()
                await self._backlog_lot.park()
                continue
            sock = self._usock
            assert sock is not None
            await trio.lowlevel.wait_writable(sock)
            while backlog:
                data, addr = backlog[0]
                if not self._send_now(data, addr):
                    break
                backlog.popleft()

    # ------------------------------------------------------------ outputs

    def _settle(self) -> None:
        """Before a reader lets other tasks run: send what its batch produced, re-arm."""
        self._flush()
        self._rearm()

    def _rearm(self) -> None:
        timer = self._timer
        if timer is not None:
            due = self._endpoint.next_deadline()
            if due is None:
                due = math.inf
            if due != self._armed:  # moving a trio deadline costs more than comparing
                self._armed = timer.deadline = due

    def _dispatch(self, outputs: Iterable[object]) -> None:
        handlers = self._handlers
        for out in outputs:
            kind = type(out)
            if kind is TransmitGroup:  # the hot path, inlined
                group = out.group  # type: ignore[attr-defined]
                addr = self._group_addresses.get(group)
                if addr is None:
                    addr = self._group_addresses[group] = self._config.group_address(group)
                self._out(out.data, addr)  # type: ignore[attr-defined]
                continue
            handler = handlers.get(kind)
            if handler is not None:
                handler(out)
            else:
                self._notify(out)

    def _notify(self, out: object) -> None:
        if self._on_event is not None:
            self._on_event(out)
            return
        events = self._events
        if len(events) >= self._config.event_queue:
            events.popleft()
            self._stats.dropped_events += 1
        events.append(out)
        if self._events_lot:  # someone waits in events()
            self._events_lot.unpark_all()

    def _queue(self, data: bytes, addr: tuple[str, int]) -> None:
        """Keep a datagram of the endpoint for the next :meth:`_flush` (bundling on)."""
        self._pending.append((data, addr))
        size = len(data) + 2
        self._pending_bytes += size
        self._last_size = size

    def _send_lone(self, data: bytes, addr: tuple[str, int]) -> None:
        """Send a datagram of the endpoint at once, unbundled (bundling off)."""
        self._send(_pack((data,)) if data[:2] == BUNDLE_MAGIC else data, addr)

    def _flush(self) -> None:
        """Send the waiting datagrams, bundled per destination, in order per destination."""
        pending = self._pending
        if not pending:
            return
        self._pending = []
        self._pending_bytes = self._last_size = 0
        if len(pending) == 1:
            data, addr = pending[0]
            self._send_lone(data, addr)
            return
        by_addr: dict[tuple[str, int], list[bytes]] = {}
        for data, addr in pending:
            datagrams = by_addr.get(addr)
            if datagrams is None:
                by_addr[addr] = [data]
            else:
                datagrams.append(data)
        stats = self._stats
        limit = self._config.bundle_size
        for addr, datagrams in by_addr.items():
            wire = pack_bundles(datagrams, limit)
            bundles = sum(1 for w in wire if w[:2] == BUNDLE_MAGIC)
            stats.bundles_sent += bundles
            stats.bundled += len(datagrams) - len(wire) + bundles
            for w in wire:
                self._send(w, addr)

    def _send(self, data: bytes, addr: tuple[str, int]) -> None:
        """Hand one UDP datagram to the kernel, or to the backlog while the kernel is full."""
        if not self._backlog and self._send_now(data, addr):
            return
        if len(self._backlog) >= self._config.max_queue:
            self._stats.dropped_send_queue += 1
            return
        self._stats.queued += 1
        self._backlog.append((data, addr))
        self._backlog_lot.unpark_all()

    def _send_now(self, data: bytes, addr: tuple[str, int]) -> bool:
        """Hand one datagram to the kernel; False if its buffer is full (try later).

        A closed socket (shutdown) or a refused send counts as a send error.
        """
        try:
            self._sendto(data, addr)
        except BlockingIOError:
            return False
        except OSError as exc:
            self._stats.send_errors += 1
            log.warning("send to %s:%d failed: %s", addr[0], addr[1], exc)
        else:
            self._stats.sent += 1
        return True

    def _on_transmit(self, out: Transmit) -> None:
        addr = self._addresses.get(out.to)
        if addr is None:
            try:
                addr = node_address(out.to)
            except ConfigError as exc:
                self._stats.send_errors += 1
                log.warning("dropped a datagram: %s", exc)
                return
            self._addresses[out.to] = addr
        self._out(out.data, addr)

    def _on_join(self, out: JoinGroup) -> None:
        group = out.group
        if group in self._groups or self._nursery is None:
            return
        ip, port = self._config.group_address(group)
        sock = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
        try:
            sock.setblocking(False)
            _reuse(sock)
            self._set_recv_buffer(sock, f"group {group} ({ip}:{port})")
            # Linux and BSD filter by destination when bound to the group; Windows cannot.
            sock.bind(("" if sys.platform == "win32" else ip, port))
            mreq = socket.inet_aton(ip) + socket.inet_aton(self._config.interface)
            sock.setsockopt(socket.IPPROTO_IP, socket.IP_ADD_MEMBERSHIP, mreq)
        except OSError as exc:
            sock.close()
            self._stats.recv_errors += 1
            log.error("cannot join group %d at %s:%d: %s", group, ip, port, exc)
            return
        scope = trio.CancelScope()
        self._groups[group] = (sock, scope)
        self._nursery.start_soon(self._scoped_reader, sock, scope)

    async def _scoped_reader(self, sock: socket.socket, scope: trio.CancelScope) -> None:
        with scope:
            await self._reader(sock, True)

    def _on_leave(self, out: LeaveGroup) -> None:
        self._group_addresses.pop(out.group, None)
        if out.group in self._groups:
            self._close_group(out.group)

    def _close_group(self, group: int) -> None:
        sock, scope = self._groups.pop(group)
        scope.cancel()
        trio.lowlevel.notify_closing(sock)
        sock.close()

    def _set_recv_buffer(self, sock: socket.socket, what: str) -> int:
        want = self._config.recv_buffer
        if want:
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, want)
        granted = sock.getsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF)
        if granted < want:
            log.warning(
                "%s: asked for a %d-byte receive buffer, the kernel granted %d; raise "
                "net.core.rmem_max (Linux) or lower UdpConfig.recv_buffer",
                what,
                want,
                granted,
            )
        return granted


@asynccontextmanager
async def run_node(
    node: Endpoint | NodeConfig,
    *,
    udp: UdpConfig | None = None,
    incarnation: int | None = None,
    rng: random.Random | None = None,
    on_event: Callable[[object], object] | None = None,
) -> AsyncIterator[UdpHandle]:
    """Run ``node`` (an endpoint, or a :class:`NodeConfig` to build a :class:`Node` from) on UDP.

    ``incarnation`` defaults to :func:`default_incarnation` and ``rng`` to a
    fresh ``random.Random()``; both are used only to build a Node.
    ``on_event(notification)``, if given, takes every notification at once,
    inside the transport's tasks, instead of the :meth:`UdpHandle.events`
    queue (see the module docstring). Raises
    :class:`ConfigError` if the unicast socket cannot be opened. Yields a
    :class:`UdpHandle`; leaving the block leaves gracefully, flushes and
    closes every socket. An exception from the endpoint ends the block with it.
    """
    if isinstance(node, NodeConfig):
        inc = default_incarnation() if incarnation is None else incarnation
        endpoint: Endpoint = Node(node, incarnation=inc, rng=rng or random.Random())
    else:
        endpoint = node
    handle = UdpHandle(endpoint, udp or UdpConfig(), on_event)
    handle._open()
    try:
        async with trio.open_nursery() as nursery:
            handle._start(nursery)
            try:
                yield handle
            finally:
                with trio.CancelScope(shield=True):
                    # a task that raised cancelled the nursery: skip the leave then
                    await handle._shutdown(nursery.cancel_scope.cancel_called)
                nursery.cancel_scope.cancel()
    except BaseExceptionGroup as group:
        if len(group.exceptions) == 1:
            raise group.exceptions[0] from None
        raise
    finally:
        handle._close()
