"""The I/O-free half of a UDP transport: everything but the event loop.

Theory of operation
-------------------
A transport drives one endpoint (:class:`~powergrid.events.Endpoint`) with
sockets and a clock. Everything it decides is here, in :class:`Driver`, which
imports neither trio nor asyncio; a transport subclasses it and supplies only
how to wait (a socket readable or writable, a deadline, a parked reader of
events) and what time it is. :mod:`.trio_udp` and :mod:`.asyncio_udp` are
such subclasses.

The loop every transport runs is: *sleep until the next deadline or a
datagram, then feed the node*:

* a socket is readable: :meth:`Driver._read_batch` reads at most ``_BATCH``
  datagrams, drops our own looped-back multicasts (``stats.own``), splits
  bundles (:func:`split_bundle`; a malformed one is dropped whole and
  counted), hands each datagram to ``endpoint.receive(data, now)``, carries
  out the outputs (:meth:`Driver._dispatch`) and, at the end of the batch,
  runs the endpoint's deadline if the batch made it due by ``now`` (a gap's
  first Nak: not a scheduling round later, when the timer would fire), then
  flushes and re-arms the timer (:meth:`Driver._settle`);
* the timer fires: :meth:`Driver._on_deadline` calls
  ``endpoint.handle_deadline(now)`` if it is due, and flushes;
* the app gives a command: :meth:`Driver._commanded` carries out its outputs
  and says whether the caller should yield now (see *Bundling* in
  docs/transports.md); if not, the transport runs :meth:`Driver._flush_soon`
  the next time the caller lets other tasks run.

Outputs: ``Transmit``/``TransmitGroup`` become UDP datagrams to the node's
address (:func:`~powergrid.types.node_address`) or the group's
(:meth:`UdpConfig.group_address`; in unicast fan-out mode, one to each
address of the group's fan-out set, decided by :class:`~powergrid.fanout.FanOut`
and refreshed on every ``ViewChanged``), queued for the next flush and packed per
destination by :func:`pack_bundles`; ``JoinGroup``/``LeaveGroup`` open and
close a group socket (:func:`open_group_socket`), whose reader the transport
starts and stops; everything else is a notification for the app: handed to
``on_event`` at once, or kept in a bounded queue read by :meth:`Driver.events`
(the oldest dropped when full). :class:`MemberJoined` and :class:`MemberLeft`
come from the node itself (after each ``ViewChanged``), like every other
notification.

A UDP datagram goes straight to the kernel; when its buffer is full the
datagram waits in a bounded backlog (``max_queue``, the newest dropped beyond
it) that the transport drains when the socket is writable.

Shutdown (:meth:`Driver._begin_shutdown`): the node leaves gracefully unless
it failed (an endpoint bug, or an exception that ended the app's block), its
datagrams are flushed, and the transport then drains the backlog for at most
``flush_timeout`` seconds and closes every socket (:meth:`Driver._close`).
"""

from __future__ import annotations

import enum
import inspect
import ipaddress
import logging
import math
import socket
import struct
import sys
import time
from collections import deque
from collections.abc import AsyncIterator, Awaitable, Callable, Iterable, Sequence
from typing import TYPE_CHECKING, Any, Literal

import attrs

from powergrid._checks import flag, instance, integer, number, optional_callable, whole
from powergrid.errors import ConfigError, UsageError
from powergrid.events import (
    Endpoint,
    JoinGroup,
    LeaveGroup,
    MemberJoined,
    MemberLeft,
    Transmit,
    TransmitGroup,
    View,
    ViewChanged,
)
from powergrid.fanout import FanOut, parse_seeds
from powergrid.protocols.multicast import WindowOpen
from powergrid.types import (
    IPV6_NODE,
    NodeId,
    format_node,
    incarnation_at,
    ipv6_prefix_problem,
    node_address,
    node_id,
)
from powergrid.wire import HEADER_SIZE, MAGIC, WIRE_LIMIT

if TYPE_CHECKING:
    from powergrid.transports.metrics import MetricsServer

__all__ = [
    "BUNDLE_MAGIC",
    "Command",
    "Driver",
    "MemberJoined",
    "MemberLeft",
    "UdpConfig",
    "UdpStats",
    "default_incarnation",
    "format_event",
    "open_group_socket",
    "open_unicast_socket",
    "pack_bundles",
    "split_bundle",
]

log = logging.getLogger("powergrid.transports")

_BATCH = 64  # datagrams a reader handles before letting other tasks run

BUNDLE_MAGIC = b"PB"
"""The first two bytes of a bundle; every powergrid datagram begins with ``PG``."""
_BUNDLE_VERSION = 1
_BUNDLE_HEAD = BUNDLE_MAGIC + bytes([_BUNDLE_VERSION])
_MAX_HEARD = 65_536
"""Source addresses remembered for ``UdpConfig.check_source`` (the first heard goes first)."""
_BUNDLE_MIN = len(_BUNDLE_HEAD) + 2 * (2 + HEADER_SIZE)  # room for two minimal datagrams
_UDP_MAX = 65507  # the largest UDP payload over IPv4
assert BUNDLE_MAGIC != MAGIC

Command = Callable[[Any, float], Iterable[object]]
"""``(endpoint, now) -> outputs``: a local command given to the endpoint."""

Address = tuple[str, int]


def _ipv4(value: str, what: str) -> ipaddress.IPv4Address:
    try:
        return ipaddress.IPv4Address(value)
    except ValueError as exc:
        raise ConfigError(f"{what} {value!r} is not an IPv4 address") from exc


def _seed_list(value: Iterable[str] | None) -> tuple[str, ...] | None:
    if value is None:
        return None
    if isinstance(value, str):
        raise ConfigError(
            f"fanout_seeds must be a list of host:port strings, not the string {value!r}"
        )
    return tuple(value)


@attrs.frozen(kw_only=True)
class UdpConfig:
    """Socket settings of the UDP transports. Raises :class:`ConfigError` when invalid.

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
    * ``check_source``: a datagram whose claimed sender id is not the address it came
      from is dropped (the node counts it in ``NodeStats.spoofed``), and unicast goes
      only to addresses a datagram came from or to the configured ``fanout_seeds``
      (else dropped, ``UdpStats.unheard``), so a forged id cannot point replies
      anywhere; a fan-out group send goes to seeds and members of an authenticated
      view, never to a claimed sender. Turn it off only where a node's id is
      not the address its datagrams come from (NAT or port mapping between nodes).
    * ``ipv6_prefix``: the /96 the deployment's IPv6 node addresses share (an IPv6
      node id holds only the low 32 bits, :mod:`powergrid.types`); default ``::``,
      right for ``::1``. A datagram from an IPv6 address outside it is no node's
      (what it claims is ``spoofed``).
    * ``ipv6_interface``: the interface name IPv6 multicast leaves from and joins on
      (``IPV6_MULTICAST_IF``, ``IPV6_JOIN_GROUP``); ``""``: the kernel's choice.
    * ``ipv6_group_prefix``: IPv6 groups are this prefix plus the group id (32 bits):
      default ``ff15::`` (site-local), group 258 -> ``ff15::102``; ``ttl`` is the hop limit.
    * ``fanout_seeds``: None (the default) sends group datagrams by IP
      multicast. A list of ``"host:port"`` seed addresses (even an empty one)
      turns on **unicast fan-out**: no group socket is opened and no IP
      multicast is sent; a group datagram goes by unicast to each seed and each
      member of the group's last authenticated view, this node excepted (see
      :mod:`powergrid.fanout`). Without a keyring on the node, seeds only.
    """

    interface: str = attrs.field(default="127.0.0.1", validator=instance(str, "an IPv4 address"))
    ttl: int = attrs.field(default=1, validator=whole(0, 255, why="0: this host, 1: the LAN"))
    loopback: bool = attrs.field(default=True, validator=flag)
    recv_buffer: int = attrs.field(default=4 << 20, validator=whole(0, unit="bytes"))
    max_queue: int = attrs.field(default=1024, validator=whole(1, unit="datagrams"))
    event_queue: int = attrs.field(default=4096, validator=whole(1, unit="notifications"))
    flush_timeout: float = attrs.field(default=1.0, validator=number(0))
    bundle_size: int = attrs.field(default=WIRE_LIMIT, validator=integer)
    group_prefix: str = attrs.field(
        default="239.255.0.0", validator=instance(str, "an IPv4 multicast address")
    )
    group_port_base: int = attrs.field(default=20000, validator=integer)
    group_ports: int = attrs.field(default=1000, validator=whole(1))
    group_map: Callable[[int], tuple[str, int]] | None = attrs.field(
        default=None, validator=optional_callable
    )
    check_source: bool = attrs.field(default=True, validator=flag)
    ipv6_prefix: str = attrs.field(default="::", validator=instance(str, "an IPv6 /96"))
    ipv6_interface: str = attrs.field(default="", validator=instance(str, "an interface name"))
    ipv6_group_prefix: str = attrs.field(
        default="ff15::", validator=instance(str, "an IPv6 multicast prefix")
    )
    fanout_seeds: tuple[str, ...] | None = attrs.field(default=None, converter=_seed_list)

    def __attrs_post_init__(self) -> None:
        _ipv4(self.interface, "UdpConfig.interface:")
        if self.fanout_seeds is not None:
            parse_seeds(self.fanout_seeds, "UdpConfig.fanout_seeds")
        if self.bundle_size and not _BUNDLE_MIN <= self.bundle_size <= _UDP_MAX:
            raise ConfigError(
                f"UdpConfig.bundle_size: {self.bundle_size} must be 0 (no bundling) "
                f"or {_BUNDLE_MIN}..{_UDP_MAX} bytes"
            )
        prefix = _ipv4(self.group_prefix, "UdpConfig.group_prefix:")
        if not prefix.is_multicast or int(prefix) & 0xFFFF:
            raise ConfigError(
                f"UdpConfig.group_prefix: {self.group_prefix} must be a multicast /16 "
                "ending in .0.0, e.g. 239.255.0.0"
            )
        bad = ipv6_prefix_problem(self.ipv6_prefix)
        if bad is not None:
            raise ConfigError(f"UdpConfig.ipv6_prefix: {bad}")
        bad = ipv6_prefix_problem(self.ipv6_group_prefix)
        if bad is not None or not ipaddress.IPv6Address(self.ipv6_group_prefix).is_multicast:
            raise ConfigError(
                f"UdpConfig.ipv6_group_prefix: {self.ipv6_group_prefix} must be an IPv6 "
                "multicast address with 32 low bits free, e.g. ff15::"
            )
        if not 1 <= self.group_port_base <= 0x10000 - self.group_ports:
            raise ConfigError(
                f"UdpConfig.group_port_base: group ports {self.group_port_base}.."
                f"{self.group_port_base + self.group_ports - 1} (group_port_base "
                f"{self.group_port_base}, group_ports {self.group_ports})"
                " must lie within 1..65535: lower group_port_base or group_ports"
            )

    @property
    def fanout(self) -> bool:
        """True in unicast fan-out mode (``fanout_seeds`` is set), False for IP multicast."""
        return self.fanout_seeds is not None

    def seed_ids(self) -> tuple[NodeId, ...]:
        """The node ids of ``fanout_seeds``, sorted and distinct (empty without fan-out)."""
        return parse_seeds(self.fanout_seeds or (), "fanout_seeds")

    def group_address(self, group: int, ipv6: bool = False) -> tuple[str, int]:
        """The multicast ``(ip, port)`` of ``group`` (for IPv6 nodes if ``ipv6``).

        By default the ip is ``group_prefix`` plus the group's low 16 bits
        (group 0 -> 239.255.0.0, group 258 -> 239.255.1.2), for IPv6
        ``ipv6_group_prefix`` plus the group id (ff15::102), and the port is
        ``group_port_base + group % group_ports``. ``group_map`` overrides both.
        """
        if self.group_map is not None:
            return self.group_map(group)
        port = self.group_port_base + group % self.group_ports
        if ipv6:
            return str(ipaddress.IPv6Address(self.ipv6_group_prefix) + group), port
        prefix = int(ipaddress.IPv4Address(self.group_prefix))
        return str(ipaddress.IPv4Address(prefix | (group & 0xFFFF))), port

    def ipv6_ifindex(self) -> int:
        """The index of ``ipv6_interface`` (0: the kernel's choice). Raises
        :class:`ConfigError` if this host has no such interface."""
        if not self.ipv6_interface:
            return 0
        try:
            return socket.if_nametoindex(self.ipv6_interface)
        except OSError as exc:
            raise ConfigError(
                f"UdpConfig.ipv6_interface: this host has no interface {self.ipv6_interface!r}"
            ) from exc


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
    unheard: int = 0
    """Unicast datagrams not sent: no datagram ever came from that address
    (``UdpConfig.check_source``)."""


_NODE_FIELDS = frozenset({"node", "sender", "leader", "to"})


def _shown(name: str, value: object) -> str:
    if name in _NODE_FIELDS and type(value) is int:
        return format_node(value)
    if isinstance(value, enum.Enum):
        return value.name.lower()
    if attrs.has(type(value)):
        return format_event(value)
    if isinstance(value, tuple):
        return "[" + ", ".join(_shown(name, v) for v in value) + "]"
    if isinstance(value, bytes) and len(value) > 40:
        return repr(value[:40]) + f"...({len(value)} bytes)"
    return str(value) if isinstance(value, int | float | str) else repr(value)


def format_event(event: object) -> str:
    """One line a person reads, for any notification: node ids as ``127.0.0.1:47001``.

    ``MessageDelivered(group=1, sender=127.0.0.1:47001, seq=3, payload=b'hi')``;
    a view lists its members by address. Objects that are not attrs classes
    are shown with ``repr``. Never raises for an attrs event.
    """
    cls = type(event)
    if not attrs.has(cls):
        return repr(event)
    if cls.__name__ == "Member":
        return f"{format_node(event.node)}/{event.incarnation}"  # type: ignore[attr-defined]
    fields = ", ".join(
        f"{f.name}={_shown(f.name, getattr(event, f.name))}" for f in attrs.fields(cls)
    )
    return f"{cls.__name__}({fields})"


_picked: list[int] = []  # the last incarnation default_incarnation picked, if any


def default_incarnation() -> int:
    """This life's incarnation: the start time in tenths of a second, mod 2**32, and newer
    (:func:`~powergrid.types.incarnation_newer`) than any this process picked before
    (:func:`~powergrid.types.incarnation_at`). Pass one explicitly if the clock may be
    set back by more than the downtime of a restart."""
    inc = incarnation_at(time.time_ns(), _picked[-1] if _picked else None)
    _picked[:] = [inc]
    return inc


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
        size = data[pos] << 8 | data[pos + 1] if pos + 1 < end else 0  # u16, big-endian
        pos += 2
        if size == 0 or pos + size > end:  # also a lone length byte at the end (pos > end)
            return None
        out.append(data[pos : pos + size])
        pos += size
    return out or None


def _set_recv_buffer(sock: socket.socket, want: int, what: str) -> int:
    if want:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, want)
    granted: int = sock.getsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF)
    if granted < want:
        log.warning(
            "%s: asked for a %d-byte receive buffer, the kernel granted %d; raise "
            "net.core.rmem_max (Linux) or lower UdpConfig.recv_buffer",
            what,
            want,
            granted,
        )
    return granted


def open_unicast_socket(cfg: UdpConfig, host: str, port: int) -> tuple[socket.socket, int]:
    """A non-blocking UDP socket bound to ``host:port`` with the multicast send options.

    Returns the socket and the ``SO_RCVBUF`` granted (bytes). Raises
    :class:`ConfigError` if it cannot be bound (address in use, not an
    address of this host).
    """
    ipv6 = ":" in host
    sock = socket.socket(socket.AF_INET6 if ipv6 else socket.AF_INET, socket.SOCK_DGRAM)
    try:
        sock.setblocking(False)
        granted = _set_recv_buffer(sock, cfg.recv_buffer, f"{host}:{port}")
        if ipv6:
            v6 = socket.IPPROTO_IPV6
            sock.setsockopt(v6, socket.IPV6_V6ONLY, 1)
            sock.setsockopt(v6, socket.IPV6_MULTICAST_IF, cfg.ipv6_ifindex())
            sock.setsockopt(v6, socket.IPV6_MULTICAST_HOPS, cfg.ttl)
            sock.setsockopt(v6, socket.IPV6_MULTICAST_LOOP, int(cfg.loopback))
        else:
            iface = socket.inet_aton(cfg.interface)
            sock.setsockopt(socket.IPPROTO_IP, socket.IP_MULTICAST_IF, iface)
            sock.setsockopt(socket.IPPROTO_IP, socket.IP_MULTICAST_TTL, cfg.ttl)
            sock.setsockopt(socket.IPPROTO_IP, socket.IP_MULTICAST_LOOP, int(cfg.loopback))
        sock.bind((host, port))
    except OSError as exc:
        sock.close()
        raise ConfigError(
            f"cannot open the unicast socket {host}:{port}: {exc}; pick a free port on an "
            "address of this host (IPv6: UdpConfig.ipv6_prefix and the host's low 32 bits)"
        ) from exc
    if host != cfg.interface and not cfg.fanout and not ipv6:
        log.warning(
            "node address %s differs from the multicast interface %s: multicasts will "
            "carry source %s; set UdpConfig.interface to the node's host",
            host,
            cfg.interface,
            host,
        )
    return sock, granted


def open_group_socket(cfg: UdpConfig, group: int, ipv6: bool = False) -> socket.socket:
    """A non-blocking UDP socket receiving ``group``'s multicasts (shared with other
    processes), on IPv6 if ``ipv6``.

    Raises ``OSError`` if it cannot be bound or joined.
    """
    ip, port = cfg.group_address(group, ipv6)
    sock = socket.socket(socket.AF_INET6 if ipv6 else socket.AF_INET, socket.SOCK_DGRAM)
    try:
        sock.setblocking(False)
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        if hasattr(socket, "SO_REUSEPORT"):
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEPORT, 1)
        _set_recv_buffer(sock, cfg.recv_buffer, f"group {group} ({ip}:{port})")
        # Linux and BSD filter by destination when bound to the group; Windows cannot.
        sock.bind(("" if sys.platform == "win32" else ip, port))
        if ipv6:
            mreq = socket.inet_pton(socket.AF_INET6, ip) + struct.pack("@I", cfg.ipv6_ifindex())
            sock.setsockopt(socket.IPPROTO_IPV6, socket.IPV6_JOIN_GROUP, mreq)
        else:
            mreq = socket.inet_aton(ip) + socket.inet_aton(cfg.interface)
            sock.setsockopt(socket.IPPROTO_IP, socket.IP_ADD_MEMBERSHIP, mreq)
    except OSError:
        sock.close()
        raise
    return sock


def _not_open(data: bytes, addr: Address) -> int:
    raise OSError("the unicast socket is not open")


class Destinations:
    """Where a node's datagrams may go, and whom it has heard from: the one place
    of the network rule (FIGURES.md) that a node sends only to its groups'
    addresses (IP multicast) or, in fan-out mode, to the configured seeds and the
    members of its authenticated views, and unicast only to addresses it has heard
    from or been configured with (``check``: :attr:`UdpConfig.check_source`).
    Refusals are counted in the transport's :class:`UdpStats`.

    ``heard`` (source address -> node id, at most ``_MAX_HEARD``, oldest first
    forgotten) and ``groups`` (group -> its destination addresses, cached until
    the group's view or membership changes) are read by the driver's hot paths.
    """

    __slots__ = (
        "_addresses",
        "_config",
        "_ipv6",
        "_prefix",
        "_seeds",
        "_stats",
        "check",
        "fanout",
        "groups",
        "heard",
    )

    def __init__(
        self, config: UdpConfig, me: NodeId, stats: UdpStats, *, check: bool, keyed: bool
    ) -> None:
        self._config = config
        self._stats = stats
        self.check = check
        self.heard: dict[Address, int] = {}
        self.groups: dict[int, tuple[Address, ...]] = {}
        self._addresses: dict[int, Address] = {}  # node id -> its socket address
        self._prefix = config.ipv6_prefix  # the /96 of IPv6 node addresses
        self._ipv6 = bool(me & IPV6_NODE)  # our groups are IPv6 groups
        # the configured seeds may be sent to before they are heard from (a fan-out
        # node's first join request goes to a seed it never heard): the operator's word
        self._seeds = frozenset(node_address(n, self._prefix) for n in config.seed_ids())
        self.fanout: FanOut | None = None
        if config.fanout:
            self.fanout = FanOut(me, config.seed_ids(), learn=keyed)
            if not keyed:
                log.warning(
                    "unicast fan-out without a keyring: views are not authenticated, so "
                    "group datagrams go to the %d configured seeds only",
                    len(self.fanout.seeds),
                )

    def hear(self, source: Address) -> int:
        """Remember that a datagram came from ``source``; its node id (0: not a node's;
        -1: an IPv6 address outside ``ipv6_prefix``, whose every claim is refused)."""
        heard = self.heard
        try:
            sid: int = node_id(source[0], source[1])
        except ConfigError:
            return 0
        if sid & IPV6_NODE and node_address(sid, self._prefix) != source:
            sid = -1
        if len(heard) >= _MAX_HEARD:
            del heard[next(iter(heard))]  # the address heard from first
        heard[source] = sid
        return sid

    def unicast(self, to: NodeId) -> Address | None:
        """The address of node ``to``, or None (counted) if it may not be sent to."""
        addr = self._addresses.get(to)
        if addr is None:
            try:
                addr = node_address(to, self._prefix)
            except ConfigError as exc:
                self._stats.send_errors += 1
                log.warning("dropped a datagram: %s", exc)
                return None
            self._addresses[to] = addr
        if self.check and addr not in self.heard and addr not in self._seeds:
            self._stats.unheard += 1  # never heard from: maybe a forged id (check_source)
            return None
        return addr

    def group(self, group: int) -> tuple[Address, ...]:
        """Where ``group``'s datagrams go (cached in :attr:`groups`)."""
        if self.fanout is None:
            addrs: tuple[Address, ...] = (self._config.group_address(group, self._ipv6),)
        else:
            addrs = tuple(node_address(n, self._prefix) for n in self.fanout.targets(group))
        self.groups[group] = addrs
        return addrs

    def follow(self, view: View) -> None:
        """A view was installed: in fan-out mode its members become the group's targets."""
        if self.fanout is not None and self.fanout.install(view):
            self.groups.pop(view.group, None)

    def forget(self, group: int) -> None:
        """The node left ``group``: back to the seeds (fan-out) and no cached targets."""
        self.groups.pop(group, None)
        if self.fanout is not None:
            self.fanout.forget(group)


def require_key(endpoint: Endpoint, insecure: bool, who: str) -> None:
    """Refuse to run an unkeyed endpoint unless ``insecure`` says so (secure by default).

    ``who`` names the caller (``"run_node"``, ``"run_node_asyncio"``) in the error.
    An endpoint is keyed when its ``config.keyring`` is set (a :class:`Node` built
    with ``NodeConfig(keyring=...)``). Raises :class:`ConfigError` naming what to
    pass when an unkeyed endpoint runs without ``insecure=True``, and when a keyed
    one is given ``insecure=True`` as well (one or the other, as ``powergrid node``
    refuses ``--insecure`` with a key).
    """
    keyed = getattr(getattr(endpoint, "config", None), "keyring", None) is not None
    if not keyed and not insecure:
        raise ConfigError(
            f"{who}: no key: pass NodeConfig(keyring=Keyring.from_file(path)) (make a key "
            "file with `powergrid keygen PATH`; docs/security.md), or insecure=True to run "
            "without authentication"
        )
    if keyed and insecure:
        raise ConfigError(f"{who}: give insecure=True or a keyring, not both")


class Outbox:
    """The way out of a :class:`Driver`: datagrams waiting for the next flush, bundled
    per destination when they go (``UdpConfig.bundle_size``; 0: each alone), and the
    backlog of datagrams the kernel did not take yet (bounded by ``max_queue``; beyond,
    dropped and counted). ``sendto`` is the unicast socket's once it is open;
    ``wake_writer`` is called when the backlog gains datagrams, so the loop drains it
    (:meth:`drain`) when the socket is writable."""

    __slots__ = (
        "_config",
        "_last_size",
        "_pending_bytes",
        "_room",
        "_stats",
        "_wake_writer",
        "backlog",
        "pending",
        "queued",
        "sendto",
    )

    def __init__(self, config: UdpConfig, stats: UdpStats, wake_writer: Callable[[], None]) -> None:
        self._config = config
        self._stats = stats
        self._wake_writer = wake_writer
        self.sendto: Callable[[bytes, Address], int] = _not_open
        # datagrams waiting for the next flush, by destination (in the order of each
        # destination's first), how many in all, and their bytes as bundled
        self.pending: dict[Address, list[bytes]] = {}
        self.queued = 0
        self._pending_bytes = 0
        self._last_size = 0  # of the last datagram queued, framing included
        # a command flushes at once when one more such datagram would not fit
        self._room = config.bundle_size - len(_BUNDLE_HEAD) if config.bundle_size else -1
        self.backlog: deque[tuple[bytes, Address]] = deque()

    def full(self) -> bool:
        """Whether one more datagram like the last one queued would not fit a bundle."""
        return self._pending_bytes + self._last_size > self._room

    def queue(self, data: bytes, addr: Address) -> None:
        """Keep a datagram of the endpoint for the next :meth:`flush` (bundling on)."""
        waiting = self.pending.get(addr)
        if waiting is None:
            self.pending[addr] = [data]
        else:
            waiting.append(data)
        self.queued += 1
        size = len(data) + 2
        self._pending_bytes += size
        self._last_size = size

    def send_lone(self, data: bytes, addr: Address) -> None:
        """Send a datagram of the endpoint at once, unbundled (bundling off)."""
        self.send(_pack((data,)) if data[:2] == BUNDLE_MAGIC else data, addr)

    def flush(self) -> None:
        """Send the waiting datagrams, bundled per destination, in order per destination."""
        pending = self.pending
        if not pending:
            return
        queued = self.queued
        one_bundle = self._pending_bytes <= self._room  # all of it fits in one
        self.pending = {}
        self.queued = self._pending_bytes = self._last_size = 0
        stats = self._stats
        if len(pending) == 1:
            addr, datagrams = next(iter(pending.items()))
            if queued == 1:
                self.send_lone(datagrams[0], addr)
                return
            if one_bundle:  # (a stream's flush: what pack_bundles makes of it, at once)
                stats.bundles_sent += 1
                stats.bundled += queued
                self.send(_pack(datagrams), addr)
                return
        limit = self._config.bundle_size
        for addr, datagrams in pending.items():
            wire = pack_bundles(datagrams, limit)
            bundles = sum(1 for w in wire if w[:2] == BUNDLE_MAGIC)
            stats.bundles_sent += bundles
            stats.bundled += len(datagrams) - len(wire) + bundles
            for w in wire:
                self.send(w, addr)

    def send(self, data: bytes, addr: Address) -> None:
        """Hand one UDP datagram to the kernel, or to the backlog while the kernel is full."""
        if not self.backlog and self._send_now(data, addr):
            return
        if len(self.backlog) >= self._config.max_queue:
            self._stats.dropped_send_queue += 1
            return
        self._stats.queued += 1
        self.backlog.append((data, addr))
        self._wake_writer()

    def _send_now(self, data: bytes, addr: Address) -> bool:
        """Hand one datagram to the kernel; False if its buffer is full (try later).

        A closed socket (shutdown) or a refused send counts as a send error.
        """
        try:
            self.sendto(data, addr)
        except BlockingIOError:
            return False
        except OSError as exc:
            self._stats.send_errors += 1
            log.warning("send to %s:%d failed: %s", addr[0], addr[1], exc)
        else:
            self._stats.sent += 1
        return True

    def drain(self) -> bool:
        """Send the backlog while the kernel takes it; True when it is empty."""
        backlog = self.backlog
        while backlog:
            data, addr = backlog[0]
            if not self._send_now(data, addr):
                return False
            backlog.popleft()
        return True


class Driver:
    """The app's handle on a running node, and the loop-independent half of its transport.

    A transport subclass supplies the hooks at the end of this class (how to
    wait, start and stop readers, what time it is). Commands and
    :meth:`events` are used from tasks of that transport's event loop.
    """

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
        self._own = node_address(endpoint.node_id, config.ipv6_prefix)
        self._ipv6 = bool(endpoint.node_id & IPV6_NODE)  # sockets and groups of IPv6
        self._usock: socket.socket | None = None
        self._groups: dict[int, socket.socket] = {}
        self._armed = math.inf  # the timer's deadline as last set
        self._recv_size = max(WIRE_LIMIT, config.bundle_size) + 1  # +1: oversized is seen
        self._box = box = Outbox(config, self._stats, self._wake_writer)
        self._out = box.queue if config.bundle_size else box.send_lone
        self._backlog = box.backlog
        self._flush_due = False  # a flush is requested for when the commanding task yields
        self._events: deque[object] = deque()
        check = config.check_source and "source" in inspect.signature(endpoint.receive).parameters
        keyed = getattr(getattr(endpoint, "config", None), "keyring", None) is not None
        self._to = Destinations(config, endpoint.node_id, self._stats, check=check, keyed=keyed)
        self._fanout = self._to.fanout
        self._joined: set[int] = set()  # groups joined in fan-out mode (no sockets)
        self._running = False
        self._closed = False
        self._left = False
        self._failed = False  # a transport task raised: no graceful leave
        # the endpoint's flow control (multicast rule 27), if it has any
        self._multicast_room: Callable[..., int | None] | None = getattr(
            endpoint, "multicast_room", None
        )
        self._handlers: dict[type, Callable[[Any], None]] = {
            Transmit: self._on_transmit,
            JoinGroup: self._on_join,
            LeaveGroup: self._on_leave,
            ViewChanged: self._on_view,
            WindowOpen: self._on_window_open,
        }

    # ------------------------------------------------------------ surface

    @property
    def endpoint(self) -> Endpoint:
        """The endpoint being driven (read its properties; command it via :meth:`command`)."""
        return self._endpoint

    @property
    def node_id(self) -> NodeId:
        """This node's id (its unicast address; :func:`~powergrid.types.format_node` prints it)."""
        return self._endpoint.node_id

    @property
    def address(self) -> str:
        """This node's id as a person reads it: ``"127.0.0.1:47001"``."""
        return format_node(self._endpoint.node_id)

    @property
    def config(self) -> UdpConfig:
        """The socket settings this node runs with."""
        return self._config

    @property
    def stats(self) -> UdpStats:
        """The transport's counters (live; the node's own are ``endpoint.stats``)."""
        return self._stats

    def counters(self) -> dict[str, dict[str, int]]:
        """A copy of the node's and the transport's counters as of now:
        ``{"node_stats": {...}, "udp_stats": {...}}``, each field by name (see
        :class:`~powergrid.node.NodeStats` and :class:`UdpStats`; ``node_stats`` is empty
        for an endpoint that is not a :class:`~powergrid.node.Node`). The CLI's ``stats``
        event and the Prometheus exporter (:meth:`serve_metrics`) show these."""
        node_stats: Any = getattr(self._endpoint, "stats", None)
        return {
            "node_stats": attrs.asdict(node_stats) if attrs.has(type(node_stats)) else {},
            "udp_stats": attrs.asdict(self._stats),
        }

    def serve_metrics(self, port: int, host: str = "127.0.0.1") -> MetricsServer:
        """Serve :meth:`counters` to Prometheus at ``http://host:port/metrics`` (a thread)
        until the returned :class:`~powergrid.transports.metrics.MetricsServer` is
        closed; metric names in docs/cli.md. Needs the ``prometheus`` extra
        (``prometheus_client``): raises :class:`~powergrid.errors.LocalError` without it,
        :class:`~powergrid.errors.ConfigError` for a port that cannot be bound."""
        from powergrid.transports.metrics import serve_metrics  # noqa: PLC0415

        return serve_metrics(self, port, host)

    @property
    def groups(self) -> tuple[int, ...]:
        """The groups this node has joined, sorted: subscribed to their multicast
        address, or (fan-out) fanning their datagrams out."""
        return tuple(sorted(self._joined if self._fanout is not None else self._groups))

    def fanout_targets(self, group: int) -> tuple[str, ...]:
        """Fan-out mode: where a datagram to ``group`` goes now, as ``host:port``, sorted
        by node id; empty with IP multicast."""
        if self._fanout is None:
            return ()
        return tuple(format_node(n) for n in self._fanout.targets(group))

    @property
    def running(self) -> bool:
        """True from start until shutdown begins."""
        return self._running

    async def events(self) -> AsyncIterator[object]:
        """The node's notifications in order; ends once the node has stopped and all are read.

        There is one queue: with two readers each notification goes to one of
        them (whichever takes it first), never to both; fan out in the app if
        two tasks need every event. Empty when ``run_node`` was given ``on_event``.
        """
        while True:
            while self._events:
                yield self._events.popleft()
            if self._closed:
                return
            await self._wait_events()

    async def command(self, call: Command) -> None:
        """Give the endpoint a local command now: ``call(endpoint, now)`` returns its outputs.

        Errors raised by ``call`` (e.g. :class:`UsageError`) reach the caller;
        raises :class:`UsageError` if the node is not running.
        """
        self._check_running()
        await self._after_command(self._commanded(call(self._endpoint, self._now())))

    async def multicast(self, payload: bytes, *, group: int | None = None) -> None:
        """``node.multicast(payload, now, group=group)``: reliable, ordered per sender;
        in total order if the group is in the node's ``NodeConfig.total_order`` (every
        member that delivers two messages delivers them in the same order, the sender's
        own delivery included; see :mod:`powergrid.protocols.order`).

        ``group`` defaults to the node's cluster. Under flow control it first waits
        while the group's send window is full (multicast rule 27). Raises
        :class:`~powergrid.errors.PayloadTooLargeError` beyond the payload limit and
        :class:`UsageError` if the node is not running or not in ``group``.
        """
        if not self._running:
            self._check_running()  # raises
        endpoint: Any = self._endpoint
        room = self._multicast_room
        if room is not None and room(group=group) == 0:  # flow control: a full window
            await _room(self, room, group)
        if self._commanded(endpoint.multicast(payload, self._now(), group=group)):
            await self._after_command(True)
        elif self._check_cancelled is not None:  # (a stream's hot path: the loop's own check)
            await self._check_cancelled()

    async def send(self, to: int, payload: bytes, *, group: int | None = None) -> None:
        """``node.send(to, payload, now, group=group)``: reliable unicast to node ``to``.

        Raises what :meth:`multicast` raises.
        """
        self._check_running()
        endpoint: Any = self._endpoint
        await self._after_command(
            self._commanded(endpoint.send(to, payload, self._now(), group=group))
        )

    async def set_bid(self, bid: Any) -> None:
        """This server's bid (a :class:`~powergrid.Bid`, watts and price) is ``bid`` from now on.

        Raises :class:`UsageError` if the node is not running.
        """
        await self.command(lambda ep, now: ep.set_bid(bid, now))

    async def set_supply(self, watts: int) -> None:
        """The supply (watts) this node clears with when it is the lead broker.

        Raises :class:`UsageError` if the node is not running, and what the node
        raises for a negative supply.
        """
        await self.command(lambda ep, now: ep.set_supply(watts, now))

    async def leave(self) -> None:
        """``node.leave(now)``: leave every group gracefully; the transport keeps running.

        Raises :class:`UsageError` if the node is not running or has left already.
        """
        await self.command(lambda ep, now: ep.leave(now))
        self._left = True

    def __repr__(self) -> str:
        state = "running" if self._running else "stopped"
        return f"<{type(self).__name__} {self.address} {state}>"

    # ------------------------------------------------------------ feeding the node

    def _check_running(self) -> None:
        if not self._running:
            raise UsageError("the node is not running (run_node has exited or not started)")

    def _commanded(self, outputs: Iterable[object]) -> bool:
        """Carry out a command's outputs; True if its caller should let other tasks run now.

        What waits is flushed now, and the caller yields, when the command
        queued no datagram, or a bundle's worth waits (always without
        bundling); else the transport calls :meth:`_flush_soon` when the
        caller's task next lets others run. So a task goes on without
        yielding only while it adds to a bundle that is not full yet.
        """
        box = self._box
        before = box.queued
        self._dispatch(outputs)
        if box.queued == before or box.full():
            self._settle()
            return True
        if not self._flush_due:
            self._flush_due = True
            self._request_flush()
        return False

    def _flush_soon(self) -> None:
        """The flush a command asked for (:meth:`_request_flush`), now that its task yielded."""
        self._flush_due = False
        self._settle()

    def _read_batch(self, sock: socket.socket, group: bool) -> Literal[0, 1, 2]:
        """Read and feed what ``sock`` holds: 0 drained, 1 more may wait (yield first), 2 closed.

        Reads at most ``_BATCH`` datagrams; at the end flushes and re-arms once.
        """
        receive: Callable[..., list[Any]] = self._endpoint.receive
        check = self._to.check
        heard = self._to.heard
        dispatch = self._dispatch
        stats = self._stats
        own = self._own
        ipv6 = self._ipv6
        recvfrom = sock.recvfrom
        size = self._recv_size
        now = self._now()
        for _ in range(_BATCH):
            try:
                data, source = recvfrom(size)
            except BlockingIOError:
                break
            except OSError as exc:
                if sock.fileno() < 0:  # closed by a LeaveGroup we just carried out
                    self._settle()
                    return 2
                stats.recv_errors += 1
                log.debug("receive error: %s", exc)
                break
            if ipv6:
                source = source[:2]  # (host, port, flowinfo, scope id)
            if group and source == own:
                stats.own += 1
                continue
            sid = 0
            if check:  # the id of the address it came from (UdpConfig.check_source)
                sid = heard.get(source, 0)
                if not sid:
                    sid = self._to.hear(source)
            if data[:2] == BUNDLE_MAGIC:
                parts = split_bundle(data)
                if parts is None:
                    stats.bad_bundles += 1
                    continue
                stats.bundles_received += 1
                stats.received += len(parts)
                for part in parts:
                    dispatch(receive(part, now, sid) if sid else receive(part, now))
            else:
                stats.received += 1
                dispatch(receive(data, now, sid) if sid else receive(data, now))
            if sock.fileno() < 0:
                self._settle()
                return 2
        else:  # a full batch and maybe more waiting: let the other tasks run first
            self._settle_batch(now)
            return 1
        self._settle_batch(now)
        return 0

    def _settle_batch(self, now: float) -> None:
        """The end of a batch read at ``now``: a deadline its datagrams made due by then
        (a gap's first Nak, asked ``nak_delay`` after the gap shows, 0 by default) is
        run at once, so its datagrams leave with the batch's flush rather than a
        scheduling round later, when the timer would fire; then :meth:`_settle`."""
        due = self._endpoint.next_deadline()
        if due is not None and due <= now:
            self._stats.wakeups += 1
            self._dispatch(self._endpoint.handle_deadline(now))
            self._settle()
        else:
            self._flush()
            self._rearm(due)

    def _on_deadline(self) -> None:
        """The timer fired: wake the endpoint if its deadline is due, and flush."""
        now = self._now()
        due = self._endpoint.next_deadline()
        if due is not None and due <= now:
            self._stats.wakeups += 1
            self._dispatch(self._endpoint.handle_deadline(now))
            self._flush()

    def _start(self) -> None:
        """Start the endpoint (after :meth:`_open`, once the transport's unicast reader runs)."""
        self._running = True
        self._dispatch(self._endpoint.start(self._now()))
        self._settle()

    def _begin_shutdown(self, failed: bool) -> None:
        """Leave gracefully unless ``failed`` (or a task failed), flush, stop taking commands."""
        failed = failed or self._failed
        if self._running and not failed and not self._left and hasattr(self._endpoint, "leave"):
            self._left = True
            self._dispatch(self._endpoint.leave(self._now()))
        self._flush()
        self._running = False

    def _open(self) -> None:
        host, port = self._own
        sock, self._stats.recv_buffer = open_unicast_socket(self._config, host, port)
        self._usock = sock
        self._box.sendto = sock.sendto

    def _wake_writer(self) -> None:
        """The backlog has datagrams: have the loop drain it when the socket is writable."""
        if self._usock is not None:
            self._start_writer(self._usock)

    def _close(self) -> None:
        self._running = False
        self._closed = True
        for group in sorted(self._groups):
            self._close_group(group)
        if self._usock is not None:
            self._stop_writer(self._usock)
            self._usock.close()
        self._wake_events()

    # ------------------------------------------------------------ outputs

    def _settle(self) -> None:
        """Before a task lets other tasks run: send what it produced, re-arm the timer."""
        self._flush()
        self._rearm(self._endpoint.next_deadline())

    def _rearm(self, due: float | None) -> None:
        """Arm the timer for the endpoint's deadline ``due`` (None: none) if it moved."""
        if due is None:
            due = math.inf
        if due != self._armed:  # moving a loop's timer costs more than comparing
            self._armed = due
            self._arm(due)

    def _dispatch(self, outputs: Iterable[object]) -> None:
        handlers = self._handlers
        targets = self._to.groups
        on_event = self._on_event
        for out in outputs:
            kind = type(out)
            if kind is TransmitGroup:  # the hot path, inlined
                group = out.group  # type: ignore[attr-defined]
                addrs = targets.get(group)
                if addrs is None:
                    addrs = self._to.group(group)
                for addr in addrs:
                    self._out(out.data, addr)  # type: ignore[attr-defined]
                continue
            handler = handlers.get(kind)
            if handler is not None:
                handler(out)
            elif on_event is not None:  # (_notify's first case, inlined: a delivery each)
                on_event(out)
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
        self._wake_events()

    def _flush(self) -> None:
        """Send the waiting datagrams (:meth:`Outbox.flush`)."""
        self._box.flush()

    def _drain(self) -> bool:
        """Send the backlog while the kernel takes it; True when it is empty."""
        return self._box.drain()

    def _on_transmit(self, out: Transmit) -> None:
        addr = self._to.unicast(out.to)
        if addr is not None:
            self._out(out.data, addr)

    def _on_join(self, out: JoinGroup) -> None:
        group = out.group
        if group in self._groups or not self._running or self._closed:
            return
        if self._fanout is not None:  # datagrams of the group arrive on the unicast socket
            self._joined.add(group)
            return
        try:
            sock = open_group_socket(self._config, group, self._ipv6)
        except (OSError, ConfigError) as exc:
            ip, port = self._config.group_address(group, self._ipv6)
            self._stats.recv_errors += 1
            log.error("cannot join group %d at %s:%d: %s", group, ip, port, exc)
            return
        self._groups[group] = sock
        self._start_group_reader(group, sock)

    def _on_leave(self, out: LeaveGroup) -> None:
        self._to.forget(out.group)
        self._joined.discard(out.group)
        if out.group in self._groups:
            self._close_group(out.group)

    def _close_group(self, group: int) -> None:
        sock = self._groups.pop(group)
        self._stop_group_reader(group, sock)
        sock.close()

    def _on_window_open(self, out: WindowOpen) -> None:
        self._wake_events()  # a multicast waiting for room tries again (rule 27)
        self._notify(out)

    def _on_view(self, out: ViewChanged) -> None:
        """The fan-out set follows the view before the app sees it; then pass it on."""
        self._to.follow(out.view)
        self._notify(out)

    # ------------------------------------------------------------ the event loop's part

    def _now(self) -> float:
        """The loop's monotonic clock, seconds."""
        raise NotImplementedError

    def _arm(self, deadline: float) -> None:
        """Make the timer call :meth:`_on_deadline` at ``deadline`` (inf: never)."""
        raise NotImplementedError

    def _request_flush(self) -> None:
        """Call :meth:`_flush_soon` when the current task next lets other tasks run."""
        raise NotImplementedError

    def _start_writer(self, sock: socket.socket) -> None:
        """Call :meth:`_drain` whenever ``sock`` is writable, until the backlog is empty."""
        raise NotImplementedError

    def _stop_writer(self, sock: socket.socket) -> None:
        """Stop what :meth:`_start_writer` started (no-op if nothing runs)."""

    def _start_group_reader(self, group: int, sock: socket.socket) -> None:
        """Call :meth:`_read_batch` (``group=True``) whenever ``sock`` is readable."""
        raise NotImplementedError

    def _stop_group_reader(self, group: int, sock: socket.socket) -> None:
        """Stop the reader of ``sock`` before it is closed."""
        raise NotImplementedError

    def _wake_events(self) -> None:
        """Wake a task waiting in :meth:`_wait_events`, if any."""
        raise NotImplementedError

    async def _wait_events(self) -> None:
        """Wait until :meth:`_wake_events` is called."""
        raise NotImplementedError

    _check_cancelled: Callable[[], Awaitable[None]] | None = None
    """What :meth:`_after_command` does when not yielding, if anything (trio's
    cancellation check; None: nothing): :meth:`multicast` awaits it itself then."""

    async def _after_command(self, yield_now: bool) -> None:
        """Let other tasks run if ``yield_now``, else only check for cancellation."""
        raise NotImplementedError


async def _room(driver: Driver, room: Callable[..., int | None], group: int | None) -> None:
    """Wait while ``group``'s send window is full (``room`` is the endpoint's
    ``multicast_room``; multicast rule 27: flow control); raises :class:`UsageError`
    if the node stops meanwhile."""
    while room(group=group) == 0:
        await driver._wait_events()  # woken by WindowOpen (and by any event)
        driver._check_running()
