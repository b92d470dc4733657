"""Wire format: bytes <-> typed messages. The only place bytes are parsed.

Theory of operation
-------------------
Every datagram is a fixed 21-byte header followed by one message body::

    magic "PG" | version u8 | type u8 | flags u8 | group u32 | sender u48 in u64 | incarnation u32

All integers are big-endian (``struct`` with ``!``). The header says who sent
the datagram (``sender`` is the node id derived from its unicast address, its
``incarnation`` the life of that process) and which group it concerns. A body
is one fixed-size ``struct`` part, then at most one variable tail: either an
opaque ``payload`` (the rest of the datagram) or a counted list of fixed-size
``entries`` (a u16 count, then the entries). Each message class declares that
layout once (:func:`_layout`), and one generic encoder and decoder serve every
type, so a new message is a class and a line, never new parsing code.

Decoding is strict: a datagram that is truncated, longer than
:data:`MAX_DATAGRAM`, of another magic or version, of an unknown type, with
unknown flags, with trailing bytes, or whose fields contradict each other
(checked by the message's ``problem()``) raises :class:`DecodeError` and
nothing else, with a message that says what was wrong. Encoding checks the
size: a datagram over :data:`MAX_DATAGRAM` raises
:class:`PayloadTooLargeError` instead of being cut by the network.

Messages are frozen ``attrs`` records, positional so that the decoder can build
them fast; build them with keywords in your own code. Message *bodies* can be
nested: reliable channels (:class:`Data`, :class:`UData`) carry an inner
message as ``kind`` (its type code, or :data:`KIND_APP` for application bytes)
plus its encoded body, see :func:`encode_body` and :func:`decode_body`.

Type codes: 1-15 multicast and unicast, 16-31 membership, 32-47 election,
48-63 market. ``docs/wire.md`` has a table per type.
"""

from __future__ import annotations

import struct
from collections.abc import Callable
from typing import Any, ClassVar, NamedTuple

import attrs

from powergrid.errors import DecodeError, PayloadTooLargeError
from powergrid.types import MAX_NODE_ID, GroupId, Incarnation, NodeId

__all__ = [
    "HEADER_SIZE",
    "KIND_APP",
    "MAGIC",
    "MAX_DATAGRAM",
    "MAX_PAYLOAD",
    "VERSION",
    "Data",
    "Envelope",
    "Message",
    "Nak",
    "Stable",
    "StableEntry",
    "Status",
    "StatusEntry",
    "UAck",
    "UData",
    "Xmit",
    "decode",
    "decode_body",
    "encode",
    "encode_body",
]

MAGIC = b"PG"
VERSION = 1
MAX_DATAGRAM = 1400
"""Bytes on the wire, header included: fits an Ethernet MTU with IP/UDP headers."""

_HEADER = struct.Struct("!2sBBBIQI")
HEADER_SIZE = _HEADER.size
KIND_APP = 0
"""``kind`` of an inner body that is application bytes, not a protocol message."""

_U16 = struct.Struct("!H")


class Message:
    """Base of every message body. Subclasses are frozen attrs classes."""

    __slots__ = ()
    TYPE: ClassVar[int]

    def problem(self) -> str | None:
        """What is inconsistent about this message, or None. Checked on decode."""
        return None


class _Layout(NamedTuple):
    cls: Callable[..., Message]
    fixed: struct.Struct
    tail: str | None  # None, "payload" or "entries"
    entry: struct.Struct | None
    entry_type: Callable[..., Any] | None


_LAYOUTS: dict[int, _Layout] = {}


def _layout(
    fixed: str,
    tail: str | None = None,
    entry: str | None = None,
    entry_type: Callable[..., Any] | None = None,
) -> Callable[[type[Any]], type[Any]]:
    """Register a message class: its fixed ``struct`` format and optional tail."""

    def register(cls: type[Any]) -> type[Any]:
        code = cls.TYPE
        if code in _LAYOUTS or not 1 <= code <= 255:
            raise AssertionError(f"message type {code} reused or out of range")
        _LAYOUTS[code] = _Layout(
            cls,
            struct.Struct("!" + fixed),
            tail,
            struct.Struct("!" + entry) if entry else None,
            entry_type,
        )
        return cls

    return register


MAX_PAYLOAD = MAX_DATAGRAM - HEADER_SIZE
"""Room for a body after the header."""


# --------------------------------------------------------------------------
# Reliable ordered multicast (powergrid.multicast)


@_layout("QB", tail="payload")
@attrs.frozen
class Data(Message):
    """A sender's multicast number ``seq`` (1, 2, ...) to its group, sent by its origin."""

    TYPE: ClassVar[int] = 1
    seq: int
    kind: int
    payload: bytes

    def problem(self) -> str | None:
        return "seq 0" if self.seq == 0 else None


@_layout("QIQB", tail="payload")
@attrs.frozen
class Xmit(Message):
    """A resent multicast of ``origin`` (any holder may send it, to one node)."""

    TYPE: ClassVar[int] = 2
    origin: int
    origin_incarnation: int
    seq: int
    kind: int
    payload: bytes

    def problem(self) -> str | None:
        if self.seq == 0:
            return "seq 0"
        return _bad_node(self.origin, "origin")


@_layout("QIQQ")
@attrs.frozen
class Nak(Message):
    """Please resend ``origin``'s messages ``first..last`` (inclusive) to me."""

    TYPE: ClassVar[int] = 3
    origin: int
    origin_incarnation: int
    first: int
    last: int

    def problem(self) -> str | None:
        if not 0 < self.first <= self.last:
            return f"range {self.first}..{self.last} is empty or starts at 0"
        return _bad_node(self.origin, "origin")


class StatusEntry(NamedTuple):
    """Of ``origin`` in ``incarnation``: I have delivered everything up to ``delivered``."""

    origin: int
    incarnation: int
    delivered: int


@_layout("I", tail="entries", entry="QIQ", entry_type=StatusEntry)
@attrs.frozen
class Status(Message):
    """A member's delivered vector, unicast to the coordinator (unreliable, periodic)."""

    TYPE: ClassVar[int] = 4
    view_id: int
    entries: tuple[StatusEntry, ...]

    def problem(self) -> str | None:
        return _bad_entries(self.entries)


class StableEntry(NamedTuple):
    """Of ``origin``: everyone has delivered up to ``stable``; the highest seen is ``highest``."""

    origin: int
    incarnation: int
    stable: int
    highest: int


@_layout("I", tail="entries", entry="QIQQ", entry_type=StableEntry)
@attrs.frozen
class Stable(Message):
    """The coordinator's stability digest, multicast to the group (unreliable, periodic)."""

    TYPE: ClassVar[int] = 5
    view_id: int
    entries: tuple[StableEntry, ...]

    def problem(self) -> str | None:
        for e in self.entries:
            if e.stable > e.highest:
                return f"stable {e.stable} above highest {e.highest}"
        return _bad_entries(self.entries)


# --------------------------------------------------------------------------
# Reliable unicast (powergrid.unicast)


@_layout("QQB", tail="payload")
@attrs.frozen
class UData(Message):
    """Reliable unicast number ``seq``; ``base`` is the sender's oldest unacked seq."""

    TYPE: ClassVar[int] = 6
    seq: int
    base: int
    kind: int
    payload: bytes

    def problem(self) -> str | None:
        if not 0 < self.base <= self.seq:
            return f"base {self.base} not in 1..seq {self.seq}"
        return None


@_layout("QI")
@attrs.frozen
class UAck(Message):
    """Cumulative ack: I have delivered everything up to ``seq`` from you.

    ``receiver_incarnation`` is the acker's own incarnation, echoed so the
    sender notices a restarted receiver.
    """

    TYPE: ClassVar[int] = 7
    seq: int
    receiver_incarnation: int


# --------------------------------------------------------------------------
# Membership (powergrid.membership): type codes 16-31

# --------------------------------------------------------------------------
# Election (powergrid.election): type codes 32-47

# --------------------------------------------------------------------------
# Market (powergrid.market): type codes 48-63

# --------------------------------------------------------------------------
# Helpers shared by problem() checks


def _bad_node(nid: int, what: str) -> str | None:
    if not 0 < nid <= MAX_NODE_ID:
        return f"{what} {nid} is not a node id"
    return None


def _bad_entries(entries: tuple[Any, ...]) -> str | None:
    last = -1
    for e in entries:
        bad = _bad_node(e[0], "entry origin")
        if bad:
            return bad
        if e[0] <= last:
            return "entries not sorted by origin or repeated"
        last = e[0]
    return None


# --------------------------------------------------------------------------
# The codec


@attrs.frozen
class Envelope:
    """A decoded datagram: who sent it, for which group, and the message."""

    group: GroupId
    sender: NodeId
    incarnation: Incarnation
    message: Message


def encode_body(msg: Message) -> bytes:
    """The body of ``msg`` without a header (for nesting in a reliable channel)."""
    lay = _LAYOUTS[msg.TYPE]
    values = attrs.astuple(msg, recurse=False)  # type: ignore[arg-type]
    try:
        if lay.tail is None:
            return lay.fixed.pack(*values)
        head = lay.fixed.pack(*values[:-1])
        if lay.tail == "payload":
            payload: bytes = values[-1]
            return head + payload
        assert lay.entry is not None
        entries = values[-1]
        pack = lay.entry.pack
        return b"".join([head, _U16.pack(len(entries)), *(pack(*e) for e in entries)])
    except struct.error as exc:
        raise ValueError(f"cannot encode {msg!r}: {exc}") from exc


def encode(group: int, sender: int, incarnation: int, msg: Message) -> bytes:
    """One datagram: header and body.

    Raises :class:`PayloadTooLargeError` if it would exceed :data:`MAX_DATAGRAM`
    and ``ValueError`` if a field is out of its range.
    """
    try:
        header = _HEADER.pack(MAGIC, VERSION, msg.TYPE, 0, group, sender, incarnation)
    except struct.error as exc:
        raise ValueError(f"header field out of range: {exc}") from exc
    data = header + encode_body(msg)
    if len(data) > MAX_DATAGRAM:
        raise PayloadTooLargeError(
            f"{type(msg).__name__} datagram is {len(data)} bytes, over the "
            f"{MAX_DATAGRAM}-byte limit; send a smaller payload (at most "
            f"{len(data) - MAX_DATAGRAM} bytes less)"
        )
    return data


def _decode_body(code: int, data: bytes | memoryview, offset: int) -> Message:
    lay = _LAYOUTS.get(code)
    if lay is None:
        raise DecodeError(f"unknown message type {code}")
    name = lay.cls.__name__
    end = offset + lay.fixed.size
    if len(data) < end:
        raise DecodeError(
            f"{name} truncated: {len(data) - offset} body bytes, need at least {lay.fixed.size}"
        )
    values = lay.fixed.unpack_from(data, offset)
    msg: Message
    if lay.tail is None:
        if len(data) != end:
            raise DecodeError(f"{name} has {len(data) - end} trailing bytes")
        msg = lay.cls(*values)
    elif lay.tail == "payload":
        msg = lay.cls(*values, bytes(data[end:]))
    else:
        assert lay.entry is not None and lay.entry_type is not None
        if len(data) < end + 2:
            raise DecodeError(f"{name} truncated before its entry count")
        (count,) = _U16.unpack_from(data, end)
        start = end + 2
        size = lay.entry.size
        if len(data) - start != count * size:
            raise DecodeError(
                f"{name} says {count} entries of {size} bytes but has "
                f"{len(data) - start} bytes for them"
            )
        make = lay.entry_type
        entries = tuple(make(*e) for e in lay.entry.iter_unpack(data[start:]))
        msg = lay.cls(*values, entries)
    bad = msg.problem()
    if bad is not None:
        raise DecodeError(f"inconsistent {name}: {bad}")
    return msg


def decode_body(kind: int, body: bytes) -> Message:
    """The inner message of a reliable channel. Raises only :class:`DecodeError`."""
    return _decode_body(kind, body, 0)


def decode(data: bytes) -> Envelope:
    """Parse one datagram. Raises only :class:`DecodeError`, saying what was wrong."""
    size = len(data)
    if size < HEADER_SIZE:
        raise DecodeError(f"datagram truncated: {size} bytes, header needs {HEADER_SIZE}")
    if size > MAX_DATAGRAM:
        raise DecodeError(f"datagram oversized: {size} bytes, limit {MAX_DATAGRAM}")
    magic, version, code, flags, group, sender, incarnation = _HEADER.unpack_from(data)
    if magic != MAGIC:
        raise DecodeError(f"bad magic {magic!r}, expected {MAGIC!r}")
    if version != VERSION:
        raise DecodeError(f"unknown version {version}, this node speaks {VERSION}")
    if flags:
        raise DecodeError(f"unknown flags {flags:#04x}")
    if not 0 < sender <= MAX_NODE_ID:
        raise DecodeError(f"sender {sender} is not a node id")
    return Envelope(
        GroupId(group),
        NodeId(sender),
        Incarnation(incarnation),
        _decode_body(code, data, HEADER_SIZE),
    )
