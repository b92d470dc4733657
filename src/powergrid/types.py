"""Core value types: node ids, groups, epochs, incarnations, sequence numbers.

A :data:`NodeId` is derived from the node's unicast socket address, so two live
processes can never share one: for IPv4 it is the address in the high 32 bits and
the UDP port in the low 16 bits of a 48-bit integer; for IPv6 it is bit 48
(:data:`IPV6_NODE`), the low 32 bits of the address, then the port (49 bits). The
top 96 bits of an IPv6 node's address are not in its id: the IPv6 nodes of one
deployment share them (a /96 prefix, ``UdpConfig.ipv6_prefix``, default ``::``
for ``::1``), and :func:`node_address` takes them back from the caller. Ids are plain ``int`` at
run time (they are hashed and compared on every datagram) and ``NewType`` for
the type checker. Ordering ids orders addresses, which the bully election uses
as the tie-breaker after the operator-set rank (see :class:`ElectionKey`).

An *incarnation* numbers the lives of one address: a process that restarts on
the same address comes back with a newer incarnation and is never mistaken for
its old self; lives compare as serial numbers (:func:`incarnation_newer`), so the
wrap after 2**32-1 is a step forward. A transport picks it (the memory network
counts restarts; the UDP transports use the start time in tenths of a second, mod
2**32: :func:`incarnation_at`).

A *realm* names a deployment (a data centre): every datagram carries the
32-bit :func:`realm_tag` of its sender's realm, and a node drops datagrams of
any other realm, so two deployments on the same addresses and ports never
merge. A cluster (:data:`GroupId`) is a group within one realm.
"""

from __future__ import annotations

import hashlib
import ipaddress
import re
from typing import Any, NewType

import attrs

from powergrid.errors import ConfigError

__all__ = [
    "BROKER_GROUP",
    "DEFAULT_REALM",
    "EPOCH_WINDOW",
    "IPV6_NODE",
    "MAX_NODE_ID",
    "VIEW_WINDOW",
    "ElectionKey",
    "Epoch",
    "GroupId",
    "Incarnation",
    "NodeId",
    "Seq",
    "epoch_newer",
    "format_node",
    "incarnation_at",
    "incarnation_newer",
    "ipv6_prefix_problem",
    "next_epoch",
    "next_view_id",
    "node_address",
    "node_field",
    "node_id",
    "node_repr",
    "realm_problem",
    "realm_tag",
    "view_newer",
]

NodeId = NewType("NodeId", int)
"""IPv4 address << 16 | UDP port (48 bits), or :data:`IPV6_NODE` | the low 32 bits of
an IPv6 address << 16 | port (49 bits). 0 means "no node"."""

GroupId = NewType("GroupId", int)
"""32 bits. Group 0 is the broker group; clusters are 1 and up."""

Epoch = NewType("Epoch", int)
"""A leader's term, 32 bits; only grows, in serial number arithmetic (:func:`epoch_newer`).
0 means "no leader yet"."""

Incarnation = NewType("Incarnation", int)
"""The life of a process at one address, 32 bits; a restart picks a newer one, in serial
number arithmetic (:func:`incarnation_newer`): after 2**32-1 comes 0."""

Seq = NewType("Seq", int)
"""A sender's sequence number, 64 bits; the first message is 1."""

IPV6_NODE = 1 << 48
"""The bit that marks an IPv6 node's id (no IPv4 id has it)."""
MAX_NODE_ID = (1 << 49) - 1
"""The largest node id (an IPv6 one); an IPv4 id is below 2**48."""
BROKER_GROUP = GroupId(0)

DEFAULT_REALM = "default"
"""The realm of a node that names none. Name yours: two deployments that both
keep the default (and share no key) are one realm to each other."""
_REALM_RE = re.compile(r"[A-Za-z0-9][A-Za-z0-9._-]{0,63}")


def realm_problem(name: object) -> str | None:
    """What is wrong with ``name`` as a realm name, or None: a realm is 1 to 64
    ASCII letters, digits, ``.``, ``-`` or ``_``, starting with a letter or digit."""
    if not isinstance(name, str) or _REALM_RE.fullmatch(name) is None:
        return (
            f"realm {name!r} must be 1 to 64 ASCII letters, digits, '.', '-' or '_', "
            "starting with a letter or digit (e.g. 'dc-east')"
        )
    return None


def realm_tag(name: str) -> int:
    """The 32-bit tag of realm ``name`` that every datagram carries: the first four
    bytes of SHA-256 of ``b"powergrid realm\0" + name``, big-endian. Two names share
    a tag with probability 2**-32; with keys, the whole name is also bound into
    every datagram's tag (:mod:`powergrid.auth`). Raises :class:`ConfigError` for
    an invalid name (:func:`realm_problem`)."""
    bad = realm_problem(name)
    if bad is not None:
        raise ConfigError(bad)
    digest = hashlib.sha256(b"powergrid realm\0" + name.encode("ascii")).digest()
    return int.from_bytes(digest[:4], "big")


EPOCH_WINDOW = 1 << 20
"""How far ahead (or behind) of a known epoch another epoch still compares: see
:func:`epoch_newer`. No honest group runs a million elections between two nodes' views."""
VIEW_WINDOW = 1 << 32
"""The same for view ids (64 bits): see :func:`view_newer`."""


def _serial_newer(a: int, b: int, bits: int, window: int) -> bool:
    # RFC 1982 serial number arithmetic, limited to a window: a is newer than b if it
    # lies 1..window steps after b, counting modulo 2**bits. 0 means "none": anything
    # else is newer than it, and it is newer than nothing.
    if a == 0:
        return False
    if b == 0:
        return True
    return 0 < (a - b) % (1 << bits) <= window


def epoch_newer(a: int, b: int) -> bool:
    """Is epoch ``a`` newer than epoch ``b``?

    Epochs are 32 bits and compare like serial numbers (RFC 1982), within a window:
    ``a`` is newer if it lies 1 to :data:`EPOCH_WINDOW` steps after ``b`` modulo 2**32
    (so 1 is newer than 2**32-1: there is no top value a forged epoch could stick
    at). Any epoch is newer than 0 ("none"), which is newer than nothing. Two epochs
    that are neither equal nor within the window of each other are *foreign*:
    neither is newer, and the machines never order them (a node without a live
    leader follows a foreign epoch's leader; one with a live leader refuses it).
    """
    return _serial_newer(a, b, 32, EPOCH_WINDOW)


INCARNATION_HALF = 1 << 31
"""Incarnations compare within half their space (RFC 1982): see :func:`incarnation_newer`."""


def incarnation_newer(a: int, b: int) -> bool:
    """Is incarnation ``a`` a newer life than ``b``?

    Incarnations are 32-bit serial numbers (RFC 1982): ``a`` is newer if it lies 1 to
    2**31-1 steps after ``b`` modulo 2**32, so a life after 2**32-1 may be 0, 1, ...
    and is still newer, and no value is a top that the next life cannot pass. Every
    value, 0 included, is a life (unlike epochs, there is no "none"). Two lives exactly
    2**31 apart are unordered: neither is newer. The UDP transports' default
    incarnation counts tenths of a second, so a restart is newer than any life that
    began less than 2**31 tenths (6.8 years) before it.
    """
    return 0 < (a - b) % (1 << 32) < INCARNATION_HALF


def incarnation_at(time_ns: int, previous: int | None = None) -> int:
    """The incarnation of a life that starts at wall-clock ``time_ns`` (ns since the Unix
    epoch): tenths of a second, mod 2**32 (it wraps every 13.6 years, harmlessly:
    :func:`incarnation_newer`). If that is not newer than ``previous`` (a life of the same
    process that started within the same tenth, or a clock set back), the life after
    ``previous`` instead."""
    inc = (time_ns // 100_000_000) % (1 << 32)
    if previous is not None and not incarnation_newer(inc, previous):
        inc = (previous + 1) % (1 << 32)
    return inc


def next_epoch(e: int) -> int:
    """The epoch after ``e``: ``e + 1``, wrapping from 2**32-1 to 1 (0 means "none")."""
    return e % 0xFFFFFFFF + 1


def view_newer(a: int, b: int) -> bool:
    """Is view id ``a`` newer than ``b``? Like :func:`epoch_newer`, over 64 bits and
    :data:`VIEW_WINDOW`."""
    return _serial_newer(a, b, 64, VIEW_WINDOW)


def next_view_id(v: int) -> int:
    """The view id after ``v``: ``v + 1``, wrapping from 2**64-1 to 1."""
    return v % 0xFFFFFFFFFFFFFFFF + 1


def node_id(host: str, port: int) -> NodeId:
    """The id of the node whose unicast socket is ``host:port`` (an IPv4 dotted quad, or
    an IPv6 address: only its low 32 bits go into the id, see the module docstring).

    Raises :class:`ConfigError` for a host that is neither or a port outside 1..65535.
    """
    try:
        if not isinstance(host, str):
            raise ValueError(host)
        addr = ipaddress.ip_address(host)
    except ValueError as exc:
        raise ConfigError(f"node address {host!r} is not an IPv4 or IPv6 address") from exc
    if not 1 <= port <= 0xFFFF:
        raise ConfigError(f"node port {port} is outside 1..65535")
    if addr.version == 4:
        return NodeId((int(addr) << 16) | port)
    return NodeId(IPV6_NODE | ((int(addr) & 0xFFFFFFFF) << 16) | port)


def ipv6_prefix_problem(prefix: object) -> str | None:
    """What is wrong with ``prefix`` as the /96 of a deployment's IPv6 nodes, or None:
    an IPv6 address whose low 32 bits are 0 (``::``, ``fd00:77::``)."""
    try:
        addr = ipaddress.IPv6Address(prefix)
    except ValueError:
        return f"{prefix!r} is not an IPv6 address"
    if int(addr) & 0xFFFFFFFF:
        return f"{prefix} has low 32 bits; give the /96 alone, e.g. {addr.exploded[:29]}::"
    return None


def node_address(nid: int, ipv6_prefix: str = "::") -> tuple[str, int]:
    """The ``(host, port)`` a node id was derived from; an IPv6 id's host is
    ``ipv6_prefix`` (a /96, :func:`ipv6_prefix_problem`) plus the id's 32 bits.

    Raises :class:`ConfigError` for a value that is not a node id.
    """
    if not 0 < nid <= MAX_NODE_ID:
        raise ConfigError(f"{nid} is not a node id (1..2**49-1)")
    if nid & IPV6_NODE:
        low = (nid >> 16) & 0xFFFFFFFF
        return str(
            ipaddress.IPv6Address(int(ipaddress.IPv6Address(ipv6_prefix)) | low)
        ), nid & 0xFFFF
    return str(ipaddress.IPv4Address(nid >> 16)), nid & 0xFFFF


def format_node(nid: int) -> str:
    """``"127.0.0.1:9000"`` for a node id, ``"[::1]:9000"`` for an IPv6 one (its /96
    prefix shown as ``::``: the id does not hold it), ``"-"`` for 0."""
    if nid == 0:
        return "-"
    host, port = node_address(nid)
    if nid & IPV6_NODE:
        return f"[{host}]:{port}"
    return f"{host}:{port}"


def node_repr(nid: object) -> str:
    """How a node id shows in a notification's ``repr``: ``127.0.0.1:47001`` (``-`` for 0).

    Never raises: a value that is not a node id shows as its ``repr``.
    """
    if type(nid) is int and 0 <= nid <= MAX_NODE_ID:
        return format_node(nid)
    return repr(nid)


def node_field() -> Any:
    """An attrs field holding a node id that ``repr`` shows as ``host:port``
    (:func:`node_repr`). Costs nothing but in ``repr``: the value stays an ``int``.

    The simulator's trace writes notifications with the plain attrs repr (ids as
    ints, see :func:`powergrid.sim.memory.trace_repr`), so traces do not depend on it.
    """
    return attrs.field(repr=node_repr)


@attrs.frozen(order=True)
class ElectionKey:
    """What the bully election compares: operator rank first, then the node id."""

    rank: int
    node: NodeId

    def __str__(self) -> str:
        return f"{self.rank}/{format_node(self.node)}"
