"""Core value types: node ids, groups, epochs, incarnations, sequence numbers.

A :data:`NodeId` is derived from the node's unicast socket address, so two live
processes can never share one: it is the IPv4 address in the high 32 bits and
the UDP port in the low 16 bits of a 48-bit integer. Ids are plain ``int`` at
run time (they are hashed and compared on every datagram) and ``NewType`` for
the type checker. Ordering ids orders addresses, which the bully election uses
as the tie-breaker after the operator-set rank (see :class:`ElectionKey`).

An *incarnation* numbers the lives of one address: a process that restarts on
the same address comes back with a higher incarnation and is never mistaken for
its old self. A transport picks it (the memory network counts restarts; the UDP
transport uses the start time in milliseconds, mod 2**32).
"""

from __future__ import annotations

import ipaddress
from typing import Any, NewType

import attrs

from powergrid.errors import ConfigError

__all__ = [
    "BROKER_GROUP",
    "EPOCH_WINDOW",
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
    "next_epoch",
    "next_view_id",
    "node_address",
    "node_field",
    "node_id",
    "node_repr",
    "view_newer",
]

NodeId = NewType("NodeId", int)
"""48 bits: IPv4 address << 16 | UDP port. 0 means "no node"."""

GroupId = NewType("GroupId", int)
"""32 bits. Group 0 is the broker group; clusters are 1 and up."""

Epoch = NewType("Epoch", int)
"""A leader's term, 32 bits; only grows, in serial number arithmetic (:func:`epoch_newer`).
0 means "no leader yet"."""

Incarnation = NewType("Incarnation", int)
"""The life of a process at one address, 32 bits; a restart picks a higher one."""

Seq = NewType("Seq", int)
"""A sender's sequence number, 64 bits; the first message is 1."""

MAX_NODE_ID = (1 << 48) - 1
BROKER_GROUP = GroupId(0)

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
    """The id of the node whose unicast socket is ``host:port`` (IPv4 dotted quad).

    Raises :class:`ConfigError` for a host that is not IPv4 or a port outside 1..65535.
    """
    try:
        addr = ipaddress.IPv4Address(host)
    except ValueError as exc:
        raise ConfigError(f"node address {host!r} is not an IPv4 address") from exc
    if not 1 <= port <= 0xFFFF:
        raise ConfigError(f"node port {port} is outside 1..65535")
    return NodeId((int(addr) << 16) | port)


def node_address(nid: int) -> tuple[str, int]:
    """The ``(host, port)`` a node id was derived from."""
    if not 0 < nid <= MAX_NODE_ID:
        raise ConfigError(f"{nid} is not a node id (1..2**48-1)")
    return str(ipaddress.IPv4Address(nid >> 16)), nid & 0xFFFF


def format_node(nid: int) -> str:
    """``"127.0.0.1:9000"`` for a node id, ``"-"`` for 0."""
    if nid == 0:
        return "-"
    host, port = node_address(nid)
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
