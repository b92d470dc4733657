"""Wire format: bytes <-> typed messages. The only place bytes are parsed.

Theory of operation
-------------------
Every datagram is a fixed 25-byte header followed by one message body::

    magic "PG" | version u8 (2) | type u8 | flags u8 | group u32 | sender u64 (a node id: 49 bits)
    | incarnation u32 | realm u32

All integers are big-endian (``struct`` with ``!``). The header says who sent
the datagram (``sender`` is the node id derived from its unicast address, its
``incarnation`` the life of that process), which group it concerns and, in
``realm``, the :func:`~powergrid.types.realm_tag` of the deployment it belongs
to (the node drops datagrams of other realms before anything else reads them;
the codec only carries the field). Flags bit 0 is authentication; bits 1-7 are
reserved for what this wire version will carry next (fragmentation, longer
node ids) and refused until then. A body
is one fixed-size ``struct`` part, then at most one variable tail: either an
opaque ``payload`` (the rest of the datagram) or a counted list of fixed-size
``entries`` (a u16 count, then the entries). Each message class declares that
layout once (:func:`_layout`), and one generic encoder and decoder serve every
type, so a new message is a class and a line, never new parsing code. For the
hot path, each type without entries also gets a small encoder and decoder
generated from the same layout at import (one ``struct`` call, slots filled
directly); whatever the generated decoder does not accept goes to the checked
decoder, which finds and names the fault, and a test holds the two to the same
results.

Decoding is strict: a datagram that is truncated, longer than
:data:`MAX_DATAGRAM`, of another magic or version, of an unknown type, with
unknown flags (the authentication flag included: :mod:`powergrid.auth` verifies
and strips it first), with trailing bytes, or whose fields contradict each other
(checked by the message's ``problem()``) raises :class:`DecodeError` and
nothing else, with a message that says what was wrong. Encoding checks the
size: a datagram over :data:`MAX_DATAGRAM` raises
:class:`PayloadTooLargeError` instead of being cut by the network.

Messages are frozen ``attrs`` records with positional fields; build them with
keywords in your own code. :func:`record_builder` makes a positional constructor
for any frozen slotted ``attrs`` record that fills its slots directly (the same
record in about half the time), for hot paths. Message *bodies* can be
nested: reliable channels (:class:`Data`, :class:`UData`) carry an inner
message as ``kind`` (its type code, or :data:`KIND_APP` for application bytes)
plus its encoded body, see :func:`encode_body` and :func:`decode_body`.

Type codes: 1-15 multicast, unicast and fragments (8, nested only), 16-31
membership, 32-47 election,
48-63 market. ``docs/wire.md`` has a table per type.
"""

from __future__ import annotations

import inspect
import operator
import struct
import types
from collections.abc import Callable
from typing import Any, ClassVar, NamedTuple, TypeVar, cast

import attrs

from powergrid.errors import DecodeError, PayloadTooLargeError
from powergrid.types import (
    DEFAULT_REALM,
    MAX_NODE_ID,
    GroupId,
    Incarnation,
    NodeId,
    realm_tag,
)

__all__ = [
    "AUTH_TRAILER_SIZE",
    "DEFAULT_REALM_TAG",
    "FLAG_AUTH",
    "FLAG_SECRET",
    "HEADER_SIZE",
    "KIND_APP",
    "KIND_ORDERED",
    "KIND_ORDERED_FRAGMENT",
    "KIND_ORDER_CLOCK",
    "MAGIC",
    "MAX_DATAGRAM",
    "MAX_FRAGMENTED",
    "MAX_PAYLOAD",
    "MAX_VIEW_PARTS",
    "REALM_OFFSET",
    "RESERVED_FLAGS",
    "VERSION",
    "VIEW_STATUS_CRASHED",
    "VIEW_STATUS_LEFT",
    "VIEW_STATUS_MEMBER",
    "VIEW_STATUS_REPLACED",
    "WIRE_LIMIT",
    "Aggregate",
    "Answer",
    "Applied",
    "Bid",
    "BidAck",
    "Clearing",
    "ClearingEntry",
    "Coordinator",
    "Corner",
    "Data",
    "Election",
    "Envelope",
    "Fenced",
    "Fragment",
    "Heartbeat",
    "HeartbeatAck",
    "JoinRequest",
    "LeaveNotice",
    "Message",
    "Nak",
    "Price",
    "Probe",
    "ProbeAck",
    "Shape",
    "Stable",
    "StableEntry",
    "Status",
    "StatusEntry",
    "UAck",
    "UData",
    "ViewEntry",
    "ViewPart",
    "ViewRequest",
    "Watts",
    "Xmit",
    "decode",
    "decode_body",
    "encode",
    "encode_body",
    "record_builder",
    "shapes",
    "version_problem",
]

MAGIC = b"PG"
VERSION = 2
"""The wire version. 1 had no realm (a 21-byte header); 2 added it. A datagram of
any other version is refused (:class:`DecodeError`; the node counts it in
``NodeStats.wrong_version``)."""
WIRE_LIMIT = 1400
"""Bytes a datagram may have on the wire, authentication trailer included: fits
an Ethernet MTU with IP/UDP headers. A transport must read datagrams this long."""
AUTH_TRAILER_SIZE = 24
"""Bytes :mod:`powergrid.auth` appends to a signed datagram: key id and counter
(8), then the truncated HMAC-SHA256 tag (16)."""
MAX_DATAGRAM = WIRE_LIMIT - AUTH_TRAILER_SIZE
"""Bytes :func:`encode` makes at most, header included (1,376): the room for the
authentication trailer is kept free, keyed or not, so that every machine's size
limits hold either way and a signed datagram never exceeds :data:`WIRE_LIMIT`."""
FLAG_AUTH = 0x01
"""Header ``flags`` bit: an authentication trailer follows the body. Only
:mod:`powergrid.auth` sets and strips it; :func:`decode` refuses it."""
FLAG_SECRET = 0x02
"""Header ``flags`` bit 1, set with :data:`FLAG_AUTH`: the body is encrypted with
AES-256-GCM and the trailer's tag is the GCM tag (``NodeConfig.encrypt``, see
docs/wire.md). Only :mod:`powergrid.auth` sets and strips it; :func:`decode` refuses it."""
RESERVED_FLAGS = 0xFE
"""Header ``flags`` bits 1-7, refused by :func:`decode`: bit 1 is :data:`FLAG_SECRET`
(stripped by :mod:`powergrid.auth` before decoding); bits 2-7 are reserved for later
additions to this wire version (a fragment header, longer node ids), so a node that
does not know them drops such a datagram instead of misreading it."""

_HEADER = struct.Struct("!2sBBBIQII")
HEADER_SIZE = _HEADER.size
REALM_OFFSET = HEADER_SIZE - 4
"""Where the header's realm tag (u32) starts: bytes ``[REALM_OFFSET:HEADER_SIZE]``."""
DEFAULT_REALM_TAG = realm_tag(DEFAULT_REALM)
KIND_APP = 0
"""``kind`` of an inner body that is application bytes, not a protocol message."""
KIND_ORDERED = 250
"""``kind`` of a multicast body that is an app message of a totally ordered group: a
header (timestamp, view id, number: three u64) and the app's bytes
(:mod:`powergrid.protocols.order`)."""
KIND_ORDER_CLOCK = 251
"""``kind`` of a multicast body that is a clock message of a totally ordered group:
timestamp and view id (two u64), never delivered to the app."""
KIND_ORDERED_FRAGMENT = 252
"""``kind`` of a multicast body that is one fragment of a large app message of a totally
ordered group: the same header as :data:`KIND_ORDERED`, then a
:class:`Fragment` body; the order layer delivers it in its turn and the fragment layer
reassembles the message. A node without it counts it malformed."""

_U16 = struct.Struct("!H")

_T = TypeVar("_T")


def record_builder(cls: type[_T]) -> Callable[..., _T]:
    """A positional constructor for the frozen, slotted ``attrs`` class ``cls``.

    ``build(*values)`` takes every field, in field order, and returns what
    ``cls(**fields)`` returns, equal in every way, about twice as fast: it fills
    the slots directly instead of going through the generated ``__init__`` (which
    for a frozen class sets each field through ``object.__setattr__``). Hot paths
    (the decoder, the multicast machine) use it; other code builds records with
    keywords. Raises ``TypeError`` at once for a class it cannot build exactly:
    not slotted, or with a validator, converter, ``on_setattr`` hook, hash cache or
    ``__attrs_pre_init__``/``__attrs_post_init__`` that ``__init__`` would run.
    """
    names, namespace = _slot_setters(cls)
    name = f"build_{cls.__name__}"
    lines = [f"def {name}({', '.join(names)}):", "    self = _new(_cls)"]
    lines += [f"    _set{i}(self, {n})" for i, n in enumerate(names)]
    lines.append("    return self")
    build: Callable[..., _T] = _compile(lines, namespace, name)
    return build


def _slot_setters(cls: type[Any]) -> tuple[list[str], dict[str, Any]]:
    """``cls``'s field names, and a namespace with ``_new``, ``_cls`` and ``_set0``,
    ``_set1``... (each field's slot setter) for generated code; see :func:`record_builder`."""
    names: list[str] = []
    namespace: dict[str, Any] = {"_new": object.__new__, "_cls": cls}
    for i, f in enumerate(attrs.fields(cls)):
        slot = inspect.getattr_static(cls, f.name, None)
        if f.validator is not None or f.converter is not None or f.on_setattr is not None:
            raise TypeError(f"{cls.__name__}.{f.name} has a validator, converter or hook")
        if type(slot) is not types.MemberDescriptorType:
            raise TypeError(f"{cls.__name__} is not a slotted attrs class")
        names.append(f.name)
        namespace[f"_set{i}"] = slot.__set__
    hooks = ("__attrs_pre_init__", "__attrs_post_init__", "_attrs_cached_hash")
    if any(inspect.getattr_static(cls, h, None) is not None for h in hooks):
        raise TypeError(f"{cls.__name__} has an init hook or a hash cache")
    return names, namespace


def _compile(lines: list[str], namespace: dict[str, Any], name: str) -> Any:
    """The function ``name`` defined by ``lines`` in ``namespace`` (as attrs builds
    ``__init__``: generated once at import, plain Python afterwards)."""
    exec(compile("\n".join(lines), f"<powergrid.wire {name}>", "exec"), namespace)
    fn = namespace[name]
    return fn


class Message:
    """Base of every message body. Subclasses are frozen attrs classes."""

    __slots__ = ()
    TYPE: ClassVar[int]

    def problem(self) -> str | None:
        """What is inconsistent about this message, or None. Checked on decode."""
        return None


class _Layout(NamedTuple):
    cls: Callable[..., Message]
    build: Callable[..., Message]  # record_builder(cls): positional, every field
    name: str
    fixed: struct.Struct  # the body's fixed part
    full: struct.Struct  # header + fixed part, for one unpack on the hot path
    fields: Callable[[Message], tuple[Any, ...]]  # all field values, in order
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
    """Register a message class: its fixed ``struct`` format and optional tail.

    The class's attrs fields map in order onto the fixed format's items, then
    the tail (``payload: bytes`` or ``entries: tuple[entry_type, ...]``).
    """

    def register(cls: type[Any]) -> type[Any]:
        code = cls.TYPE
        if code in _LAYOUTS or not 1 <= code <= 255:
            raise AssertionError(f"message type {code} reused or out of range")
        names = [f.name for f in attrs.fields(cls)]
        getter = operator.attrgetter(*names)
        _LAYOUTS[code] = _Layout(
            cls,
            record_builder(cls),
            cls.__name__,
            struct.Struct("!" + fixed),
            struct.Struct(_HEADER.format + fixed),
            (lambda m: (getter(m),)) if len(names) == 1 else getter,
            tail,
            struct.Struct("!" + entry) if entry else None,
            entry_type,
        )
        return cls

    return register


MAX_PAYLOAD = MAX_DATAGRAM - HEADER_SIZE
"""Room for a body after the header."""


class Shape(NamedTuple):
    """How message type ``cls`` is laid out, for tools that build every type (fuzzers).

    ``fixed``: the ``struct`` format of the fixed part, one character per field
    in the order of the class's fields (no byte-order prefix); ``tail``: None,
    ``"payload"`` (bytes) or ``"entries"`` (a u16 count, then ``entry`` records
    of ``entry_type``).
    """

    cls: type[Message]
    fixed: str
    tail: str | None
    entry: str | None
    entry_type: type[Any] | None


def shapes() -> dict[int, Shape]:
    """Every message type's :class:`Shape`, by wire type code (sorted)."""
    return {
        code: Shape(
            cast(type[Message], lay.cls),
            lay.fixed.format.lstrip("!"),
            lay.tail,
            None if lay.entry is None else lay.entry.format.lstrip("!"),
            cast(type[Any] | None, lay.entry_type),
        )
        for code, lay in sorted(_LAYOUTS.items())
    }


# --------------------------------------------------------------------------
# Reliable ordered multicast (powergrid.protocols.multicast)


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


@_layout("QIQQQ")
@attrs.frozen
class Nak(Message):
    """Please resend ``origin``'s messages ``first..last`` (inclusive) to me.

    ``helper`` 0: a unicast Nak, answered by whoever receives it. Otherwise a
    group Nak, answered only by the origin and by the member ``helper``.
    """

    TYPE: ClassVar[int] = 3
    origin: int
    origin_incarnation: int
    first: int
    last: int
    helper: int = 0

    def problem(self) -> str | None:
        if not 0 < self.first <= self.last:
            return f"range {self.first}..{self.last} is empty or starts at 0"
        if self.helper:
            bad = _bad_node(self.helper, "helper")
            if bad:
                return bad
        return _bad_node(self.origin, "origin")


class StatusEntry(NamedTuple):
    """Of ``origin`` in ``incarnation``: I have delivered everything up to ``delivered``
    and can no longer resend anything up to ``low`` (dropped as stable)."""

    origin: int
    incarnation: int
    delivered: int
    low: int = 0


@_layout("Q", tail="entries", entry="QIQQ", entry_type=StatusEntry)
@attrs.frozen
class Status(Message):
    """A member's delivered vector and resend-buffer floors, unicast to the coordinator."""

    TYPE: ClassVar[int] = 4
    view_id: int
    entries: tuple[StatusEntry, ...]

    def problem(self) -> str | None:
        for e in self.entries:
            if e.low > e.delivered:
                return f"low {e.low} above delivered {e.delivered}"
        return _bad_entries(self.entries)


class StableEntry(NamedTuple):
    """Of ``origin``: everyone has delivered up to ``stable``; the highest seen is ``highest``."""

    origin: int
    incarnation: int
    stable: int
    highest: int


@_layout("Q", tail="entries", entry="QIQQ", entry_type=StableEntry)
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
# Reliable unicast (powergrid.protocols.unicast)


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


@_layout("QII")
@attrs.frozen
class UAck(Message):
    """Cumulative ack: I have delivered everything up to ``seq`` from you.

    ``receiver_incarnation`` is the acker's own incarnation, echoed so the
    sender notices a restarted receiver. ``sender_incarnation`` is the life of
    the data sender being acked, so a restarted sender ignores acks meant for
    its old life (whose sequence numbers it reuses).
    """

    TYPE: ClassVar[int] = 7
    seq: int
    receiver_incarnation: int
    sender_incarnation: int


# --------------------------------------------------------------------------
# Fragmentation (powergrid.protocols.fragments): travels only inside a reliable channel

MAX_FRAGMENTED = (1 << 32) - 1
"""The largest ``total`` a :class:`Fragment` can name (u32); a node's own limit
(``FragmentConfig.max_message``, default 1 MiB) is far below it."""


@_layout("III", tail="payload")
@attrs.frozen
class Fragment(Message):
    """Bytes ``offset..offset+len(payload)`` of the sender's large message ``message``
    (``total`` bytes); nested in a reliable channel, never sent bare.

    The sender numbers its large messages 1, 2, ... per life; each message's
    fragments follow each other in one reliable, FIFO stream."""

    TYPE: ClassVar[int] = 8
    message: int
    total: int
    offset: int
    payload: bytes

    def problem(self) -> str | None:
        if self.message == 0:
            return "message 0"
        if not self.payload:
            return "no bytes"
        if self.offset + len(self.payload) > self.total:
            return (
                f"bytes {self.offset}..{self.offset + len(self.payload)} run past "
                f"the total {self.total}"
            )
        return None


# --------------------------------------------------------------------------
# Membership (powergrid.protocols.membership): type codes 16-31


@_layout("IQ")
@attrs.frozen
class Heartbeat(Message):
    """The leader of ``epoch`` is alive and its current view is ``view_id`` (multicast)."""

    TYPE: ClassVar[int] = 16
    epoch: int
    view_id: int

    def problem(self) -> str | None:
        return "epoch 0" if self.epoch == 0 else None


@_layout("IQ")
@attrs.frozen
class HeartbeatAck(Message):
    """A member answers a heartbeat of ``epoch``; ``view_id`` is the member's own view (unicast)."""

    TYPE: ClassVar[int] = 17
    epoch: int
    view_id: int

    def problem(self) -> str | None:
        return "epoch 0" if self.epoch == 0 else None


@_layout("IIQIQ")
@attrs.frozen
class Probe(Message):
    """Are you alive? Sent by ``requester`` (the leader) to ``target``, or to a helper
    that relays it to ``target`` (indirect probe). ``nonce`` names the suspicion."""

    TYPE: ClassVar[int] = 18
    epoch: int
    nonce: int
    target: int
    target_incarnation: int
    requester: int

    def problem(self) -> str | None:
        if self.epoch == 0:
            return "epoch 0"
        return _bad_node(self.target, "target") or _bad_node(self.requester, "requester")


@_layout("IIQIQ")
@attrs.frozen
class ProbeAck(Message):
    """``target`` (in ``target_incarnation``) answers a :class:`Probe`; helpers relay it."""

    TYPE: ClassVar[int] = 19
    epoch: int
    nonce: int
    target: int
    target_incarnation: int
    requester: int

    def problem(self) -> str | None:
        if self.epoch == 0:
            return "epoch 0"
        return _bad_node(self.target, "target") or _bad_node(self.requester, "requester")


@_layout("iB")
@attrs.frozen
class JoinRequest(Message):
    """Admit me (the header's sender and incarnation) to the group (multicast or unicast)."""

    TYPE: ClassVar[int] = 20
    rank: int
    broker_capable: int  # 0 or 1

    def problem(self) -> str | None:
        return None if self.broker_capable in (0, 1) else "broker_capable not 0 or 1"


@_layout("I")
@attrs.frozen
class LeaveNotice(Message):
    """I (the header's sender and incarnation) leave the group; I followed ``epoch`` (multicast)."""

    TYPE: ClassVar[int] = 21
    epoch: int


@_layout("IQ")
@attrs.frozen
class ViewRequest(Message):
    """Send me your current view; mine is ``view_id`` of ``epoch`` (unicast to the leader)."""

    TYPE: ClassVar[int] = 22
    epoch: int
    view_id: int


class ViewEntry(NamedTuple):
    """One entry of a view: a member (``status`` 0) or a recent departure (1 crashed,
    2 left, 3 replaced) of ``node`` in ``incarnation``; ``flags`` bit 0 is broker-capable."""

    node: int
    incarnation: int
    rank: int
    status: int
    flags: int


VIEW_STATUS_MEMBER = 0
VIEW_STATUS_CRASHED = 1
VIEW_STATUS_LEFT = 2
VIEW_STATUS_REPLACED = 3
MAX_VIEW_PARTS = 1024


@_layout("IQHH", tail="entries", entry="QIiBB", entry_type=ViewEntry)
@attrs.frozen
class ViewPart(Message):
    """Part ``part`` (0-based) of ``parts`` of view ``view_id`` of the leader of ``epoch``.

    The entries of all parts, in part order, are sorted by (node, status).
    """

    TYPE: ClassVar[int] = 23
    epoch: int
    view_id: int
    part: int
    parts: int
    entries: tuple[ViewEntry, ...]

    def problem(self) -> str | None:
        if self.epoch == 0 or self.view_id == 0:
            return "epoch 0 or view_id 0"
        if not 0 <= self.part < self.parts <= MAX_VIEW_PARTS:
            return f"part {self.part} of {self.parts} (at most {MAX_VIEW_PARTS})"
        last = (-1, -1)
        for e in self.entries:
            bad = _bad_node(e.node, "entry node")
            if bad:
                return bad
            if e.status > VIEW_STATUS_REPLACED or e.flags > 1:
                return f"entry status {e.status} or flags {e.flags} unknown"
            key = (e.node, e.status)
            if key <= last:
                return "entries not sorted by (node, status) or repeated"
            last = key
        return None


# --------------------------------------------------------------------------
# Election (powergrid.protocols.election): type codes 32-47


@_layout("Ii")
@attrs.frozen
class Election(Message):
    """I (rank ``rank``) stand for leader: are you, a higher key, alive? (unicast).

    ``epoch`` is the highest epoch the sender has seen.
    """

    TYPE: ClassVar[int] = 32
    epoch: int
    rank: int


@_layout("Ii")
@attrs.frozen
class Answer(Message):
    """I (rank ``rank``, a higher key) am alive and take over the election (unicast).

    ``epoch`` is the highest epoch the sender has seen.
    """

    TYPE: ClassVar[int] = 33
    epoch: int
    rank: int


@_layout("Ii")
@attrs.frozen
class Coordinator(Message):
    """I (rank ``rank``) lead the group in ``epoch`` (multicast; unicast to one asker)."""

    TYPE: ClassVar[int] = 34
    epoch: int
    rank: int

    def problem(self) -> str | None:
        return "epoch 0" if self.epoch == 0 else None


@_layout("I")
@attrs.frozen
class Fenced(Message):
    """Your Coordinator was refused: I have seen the newer ``epoch`` (unicast)."""

    TYPE: ClassVar[int] = 35
    epoch: int

    def problem(self) -> str | None:
        return "epoch 0" if self.epoch == 0 else None


# --------------------------------------------------------------------------
# Market (powergrid.protocols.market): type codes 48-63


class Corner(NamedTuple):
    """A corner of a demand curve: at ``price`` the bidder wants ``watts``."""

    price: float
    watts: int


@_layout("QIIIBIIQI", tail="entries", entry="dI", entry_type=Corner)
@attrs.frozen
class Bid(Message):
    """A client's bid ``seq`` (1, 2, ...; a refresh repeats it) to its broker, a plain datagram sent
    again until the broker's ``BidAck`` of that ``seq`` arrives.

    Watts: ``floor <= required <= maximum``; ``priority`` 0..15, higher is more
    important; ``corners`` (at most 8, prices strictly rising, watts never rising,
    each within ``required..maximum``) give the demand curve; none means the
    default straight line from ``maximum`` at the grid's lowest price to
    ``required`` at its highest. ``lead_epoch``: the lead broker's epoch of the last
    price the client applied (0: none yet); a broker that never applied a price stands
    in the broker group above it (``Node``, election rule 1). ``applied_epoch``,
    ``applied_round`` and ``applied_cap``: the last counted price the client applied, as
    an :class:`Applied` says it (0: none), so every refresh confirms it again (a lost
    ``Applied`` costs a hold until the next refresh at most).
    """

    TYPE: ClassVar[int] = 48
    MAX_PRIORITY: ClassVar[int] = 15
    MAX_CORNERS: ClassVar[int] = 8
    MAX_WATTS: ClassVar[int] = 0xFFFFFFFF
    seq: int
    floor: int
    required: int
    maximum: int
    priority: int
    lead_epoch: int
    applied_epoch: int = 0
    applied_round: int = 0
    applied_cap: int = 0
    corners: tuple[Corner, ...] = ()

    def problem(self) -> str | None:
        if self.seq == 0:
            return "seq 0"
        return Bid.check(self.floor, self.required, self.maximum, self.priority, self.corners)

    @staticmethod
    def check(
        floor: int, required: int, maximum: int, priority: int, corners: tuple[Corner, ...]
    ) -> str | None:
        """What is wrong with these bid fields, or None (shared by decode and ``market.Bid``)."""
        if not 0 <= floor <= required <= maximum <= Bid.MAX_WATTS:
            return (
                f"watts must satisfy 0 <= floor <= required <= maximum <= {Bid.MAX_WATTS}, "
                f"got floor {floor}, required {required}, maximum {maximum}"
            )
        if not 0 <= priority <= Bid.MAX_PRIORITY:
            return f"priority {priority} is outside 0..{Bid.MAX_PRIORITY}"
        if len(corners) > Bid.MAX_CORNERS:
            return f"{len(corners)} curve corners, at most {Bid.MAX_CORNERS} allowed"
        last_price = 0.0
        last_watts = maximum
        for i, (price, watts) in enumerate(corners):
            if not -_MARKET_FLOAT_MAX <= price <= _MARKET_FLOAT_MAX:  # also refuses NaN
                return f"curve price {price} is not a finite number"
            if i and price <= last_price:
                return "curve corner prices must rise strictly"
            if not required <= watts <= maximum:
                return f"curve watts {watts} outside required..maximum ({required}..{maximum})"
            if watts > last_watts:
                return "curve watts must never rise with price"
            last_price, last_watts = price, watts
        return None


@_layout("IQQ")
@attrs.frozen
class BidAck(Message):
    """The broker of ``epoch`` holds your bid ``seq``; its aggregate ``aggregate`` on counts it."""

    TYPE: ClassVar[int] = 49
    epoch: int
    seq: int
    aggregate: int

    def problem(self) -> str | None:
        return "seq 0 or aggregate 0" if self.seq == 0 or self.aggregate == 0 else None


class Watts(NamedTuple):
    """One value of an :class:`Aggregate`."""

    watts: int


@_layout("IIQIHH", tail="entries", entry="Q", entry_type=Watts)
@attrs.frozen
class Aggregate(Message):
    """Aggregate ``seq`` (1, 2, ...) of the broker of ``cluster`` in ``epoch``, to the lead.

    ``values``: the cluster's summed demand at each of the ``points`` grid prices
    (never rising), then ``(floor, required, maximum)`` sums for each priority
    class whose bit is set in ``classes``, lowest class first. ``bids`` counts
    the bids summed.
    """

    TYPE: ClassVar[int] = 50
    cluster: int
    epoch: int
    seq: int
    bids: int
    points: int
    classes: int
    values: tuple[Watts, ...]

    def problem(self) -> str | None:
        if self.cluster == 0 or self.seq == 0:
            return "cluster 0 or seq 0"
        n = self.points
        if n < 2 or len(self.values) != n + 3 * self.classes.bit_count():
            return f"{len(self.values)} values for {n} points and classes {self.classes:#06x}"
        demand = self.values[:n]
        for i in range(1, n):
            if demand[i].watts > demand[i - 1].watts:
                return "demand rises with price"
        total_r = total_m = 0
        for i in range(n, len(self.values), 3):
            h, r, m = self.values[i].watts, self.values[i + 1].watts, self.values[i + 2].watts
            if not h <= r <= m:
                return "class sums not floor <= required <= maximum"
            total_r += r
            total_m += m
        if total_r > demand[-1].watts or demand[0].watts > total_m:
            return "demand outside the sums of required and maximum"
        if total_m > _U64_MAX:  # a budget (up to the sum of maxima) must fit a Clearing
            return "class sums of maximum overflow 64 bits"
        return None


class ClearingEntry(NamedTuple):
    """The lead cleared aggregate ``aggregate`` of ``cluster``'s broker of ``epoch``.

    ``budget`` is the cluster's share, in watts.
    """

    cluster: int
    epoch: int
    aggregate: int
    budget: int


@_layout("IQBdHQQQ", tail="entries", entry="IIQQ", entry_type=ClearingEntry)
@attrs.frozen
class Clearing(Message):
    """Round ``round`` cleared by the lead broker of ``epoch`` (multicast to the broker group).

    ``regime`` 0 surplus, 1 normal, 2 shortage; ``level`` and ``fill`` (of
    ``2**32``) are the share factors; ``deficit`` is ``sum required - supply``
    in watts during a shortage. ``supply`` is the usable supply the round was cleared
    against (watts; 0: not known), passed on in each :class:`Price`. ``entries``
    (sorted by cluster) name what was cleared; a round with many clusters is sent as
    several Clearings. A broker
    forwards the last round it heard to a new lead broker, unicast, unchanged.
    """

    TYPE: ClassVar[int] = 51
    FILL_ONE: ClassVar[int] = 1 << 32
    epoch: int
    round: int
    regime: int
    price: float
    level: int
    fill: int
    deficit: int
    supply: int
    entries: tuple[ClearingEntry, ...]

    def problem(self) -> str | None:
        if self.epoch == 0 or self.round == 0:
            return "epoch 0 or round 0"
        last = 0
        for e in self.entries:
            if e.cluster <= last:
                return "entries not sorted by cluster, repeated or cluster 0"
            last = e.cluster
        return Clearing.check_result(self.regime, self.price, self.fill)

    @staticmethod
    def check_result(regime: int, price: float, fill: int) -> str | None:
        """What is wrong with these clearing fields, or None (shared with :class:`Price`)."""
        if regime > 2:
            return f"unknown regime {regime}"
        if not -_MARKET_FLOAT_MAX <= price <= _MARKET_FLOAT_MAX:
            return f"price {price} is not a finite number"
        if fill > Clearing.FILL_ONE:
            return f"fill {fill} above {Clearing.FILL_ONE}"
        return None


@_layout("IQBBdHQQQIQQQ")
@attrs.frozen
class Price(Message):
    """The price of round ``round`` (1, 2, ... per broker) from the broker of cluster ``epoch``.

    Multicast to the cluster. The clearing fields are those of :class:`Clearing`;
    ``aggregate`` is the broker's aggregate that was cleared (a client's bid is
    included if its :class:`BidAck` named that aggregate or an earlier one);
    ``flags`` bit 0 says the broker re-cleared its cluster alone (lead lost); bit 1
    (``FLAG_REPUBLISHED``) that a new broker republished the last price it heard
    under its own epoch: it counts no bid (``aggregate`` is 1, nominal).
    ``lead_epoch`` and ``lead_round`` name the lead broker's :class:`Clearing` the
    price comes from: the one cleared, or for a local clearing the one whose budget
    it spends, or for a republished price the one the heard price named. ``budget``
    is the cluster's budget that clearing gave (watts): what the cluster's caps under
    this price may sum to, which a node of the cluster that becomes the lead holds
    until its lease ends (lead broker, "Budgets in force"), and ``supply`` the supply
    that budget was granted from (the :class:`Clearing`'s; 0: not known): a client
    with no broker whose node learns of a lower supply cuts its cap by its cluster's
    share of the drop (market client, "Supply drops without a price").
    """

    TYPE: ClassVar[int] = 52
    FLAG_LOCAL: ClassVar[int] = 1
    FLAG_REPUBLISHED: ClassVar[int] = 2
    epoch: int
    round: int
    regime: int
    flags: int
    price: float
    level: int
    fill: int
    deficit: int
    aggregate: int
    lead_epoch: int
    lead_round: int
    budget: int
    supply: int

    def problem(self) -> str | None:
        if self.epoch == 0 or self.round == 0 or self.aggregate == 0:
            return "epoch 0, round 0 or aggregate 0"
        if self.lead_epoch == 0 or self.lead_round == 0:
            return "lead_epoch 0 or lead_round 0"
        if self.flags & ~(Price.FLAG_LOCAL | Price.FLAG_REPUBLISHED):
            return f"unknown flags {self.flags:#04x}"
        return Clearing.check_result(self.regime, self.price, self.fill)


@_layout("IQI")
@attrs.frozen
class Applied(Message):
    """I applied round ``round`` of the broker of cluster ``epoch``: my cap in force is now
    ``cap`` watts (unicast to that broker, once: when the price cut the most it may have
    thought I draw, or came after a round I missed; market client, "Cuts are confirmed").
    """

    TYPE: ClassVar[int] = 53
    epoch: int
    round: int
    cap: int

    def problem(self) -> str | None:
        return "epoch 0 or round 0" if self.epoch == 0 or self.round == 0 else None


_MARKET_FLOAT_MAX = 1.7976931348623157e308
_U64_MAX = 2**64 - 1


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


class Envelope(NamedTuple):
    """A decoded datagram: who sent it, for which group, the message, and the
    sender's realm tag (:func:`~powergrid.types.realm_tag`)."""

    group: GroupId
    sender: NodeId
    incarnation: Incarnation
    message: Message
    realm: int


def encode_body(msg: Message) -> bytes:
    """The body of ``msg`` without a header (for nesting in a reliable channel)."""
    lay = _LAYOUTS[msg.TYPE]
    values = lay.fields(msg)
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


def encode(
    group: int, sender: int, incarnation: int, msg: Message, realm: int = DEFAULT_REALM_TAG
) -> bytes:
    """One datagram: header and body; ``realm`` is the sender's realm tag
    (:func:`~powergrid.types.realm_tag`; default: that of the default realm).

    Raises :class:`PayloadTooLargeError` if it would exceed :data:`MAX_DATAGRAM`
    and ``ValueError`` if a field is out of its range.
    """
    fast = _FAST_ENCODE.get(msg.TYPE)
    if fast is None:
        data = _encode_checked(group, sender, incarnation, msg, realm)
    else:  # the hot path: header and fixed part in one pack (then the payload)
        try:
            data = fast(group, sender, incarnation, msg, realm)
        except struct.error:
            data = _encode_checked(group, sender, incarnation, msg, realm)  # names the bad field
    if len(data) > MAX_DATAGRAM:
        raise PayloadTooLargeError(
            f"{type(msg).__name__} datagram is {len(data)} bytes; with room for the "
            f"{AUTH_TRAILER_SIZE}-byte authentication trailer that is over the "
            f"{WIRE_LIMIT}-byte limit; send a smaller payload (at most "
            f"{len(data) - MAX_DATAGRAM} bytes less)"
        )
    return data


def _fast_encoder(code: int, lay: _Layout) -> Callable[[int, int, int, Message, int], bytes]:
    """The hot path of :func:`encode` for one type without entries, generated once:
    ``struct.pack`` of header and fixed part from the message's fields, then its
    payload. Raises ``struct.error`` for a field out of range (then :func:`encode`
    takes the checked path, which says which)."""
    names, _ = _slot_setters(lay.cls)  # type: ignore[arg-type]
    fixed = names[:-1] if lay.tail == "payload" else names
    args = ", ".join(f"msg.{n}" for n in fixed)
    body = f"_pack({MAGIC!r}, {VERSION}, {code}, 0, group, sender, incarnation, realm, {args})"
    if lay.tail == "payload":
        body += f" + msg.{names[-1]}"
    name = f"encode_{lay.name}"
    lines = [f"def {name}(group, sender, incarnation, msg, realm):", f"    return {body}"]
    fast: Callable[[int, int, int, Message, int], bytes] = _compile(
        lines, {"_pack": lay.full.pack}, name
    )
    return fast


_FAST_ENCODE: dict[int, Callable[[int, int, int, Message, int], bytes]] = {
    code: _fast_encoder(code, lay) for code, lay in _LAYOUTS.items() if lay.tail != "entries"
}


def _encode_checked(group: int, sender: int, incarnation: int, msg: Message, realm: int) -> bytes:
    """Header, then body, each packed on its own so a range error names its part."""
    try:
        header = _HEADER.pack(MAGIC, VERSION, msg.TYPE, 0, group, sender, incarnation, realm)
    except struct.error as exc:
        raise ValueError(f"header field out of range: {exc}") from exc
    return header + encode_body(msg)


def _build(lay: _Layout, values: tuple[Any, ...], data: bytes, end: int) -> Message:
    """The message from its fixed ``values`` and the tail at ``data[end:]``."""
    if lay.tail is None:
        if len(data) != end:
            raise DecodeError(f"{lay.name} has {len(data) - end} trailing bytes")
        msg = lay.build(*values)
    elif lay.tail == "payload":
        msg = lay.build(*values, data[end:])
    else:
        assert lay.entry is not None and lay.entry_type is not None
        if len(data) < end + 2:
            raise DecodeError(f"{lay.name} truncated before its entry count")
        (count,) = _U16.unpack_from(data, end)
        start = end + 2
        size = lay.entry.size
        if len(data) - start != count * size:
            raise DecodeError(
                f"{lay.name} says {count} entries of {size} bytes but has "
                f"{len(data) - start} bytes for them"
            )
        make = lay.entry_type
        entries = tuple([make(*e) for e in lay.entry.iter_unpack(data[start:])])
        msg = lay.build(*values, entries)
    bad = msg.problem()
    if bad is not None:
        raise DecodeError(f"inconsistent {lay.name}: {bad}")
    return msg


def decode_body(kind: int, body: bytes) -> Message:
    """The inner message of a reliable channel. Raises only :class:`DecodeError`."""
    lay = _LAYOUTS.get(kind)
    if lay is None:
        raise DecodeError(f"unknown message type {kind}")
    if len(body) < lay.fixed.size:
        raise DecodeError(
            f"{lay.name} truncated: {len(body)} body bytes, need at least {lay.fixed.size}"
        )
    return _build(lay, lay.fixed.unpack_from(body), body, lay.fixed.size)


def _fast_decoder(lay: _Layout) -> Callable[[bytes, int], Envelope | None]:
    """The hot path of :func:`decode` for one type without entries, generated once.

    ``fast(data, size)`` unpacks header and fixed part in one call (magic as a
    u16, the type byte skipped: :func:`decode` chose this decoder by it), builds
    the message straight into its slots and checks its ``problem()``. It
    returns None for anything it does not accept as well-formed (size, magic,
    version, flags, sender), and :func:`decode` then takes the checked path,
    which names the fault; a ``problem()`` raises :class:`DecodeError` here,
    with the checked path's message.
    """
    _, ns = _slot_setters(lay.cls)  # type: ignore[arg-type]
    fixed = [f"f{i}" for i in range(len(lay.fixed.unpack(bytes(lay.fixed.size))))]
    end = lay.full.size
    ns.update(
        _unpack=struct.Struct("!HBxBIQII" + lay.fixed.format[1:]).unpack_from,
        _env=tuple.__new__,
        _Envelope=Envelope,
        _DecodeError=DecodeError,
    )
    name = f"decode_{lay.name}"
    size_bad = f"size != {end}" if lay.tail is None else f"size < {end} or size > {MAX_DATAGRAM}"
    values = [*fixed, f"data[{end}:]"] if lay.tail == "payload" else fixed
    magic = int.from_bytes(MAGIC, "big")
    header_ok = f"magic == {magic} and version == {VERSION} and not flags"
    lines = [
        f"def {name}(data, size):",
        f"    if {size_bad}:",
        "        return None",
        f"    magic, version, flags, group, sender, incarnation, realm, {', '.join(fixed)} = (",
        "        _unpack(data))",
        f"    if not ({header_ok} and 0 < sender <= {MAX_NODE_ID}):",
        "        return None",
        "    msg = _new(_cls)",
        *(f"    _set{i}(msg, {v})" for i, v in enumerate(values)),
    ]
    if lay.cls.problem is not Message.problem:  # type: ignore[attr-defined]
        lines += [
            "    bad = msg.problem()",
            "    if bad is not None:",
            f"        raise _DecodeError('inconsistent {lay.name}: ' + bad)",
        ]
    lines.append("    return _env(_Envelope, (group, sender, incarnation, msg, realm))")
    fast: Callable[[bytes, int], Envelope | None] = _compile(lines, ns, name)
    return fast


_FAST: dict[int, Callable[[bytes, int], Envelope | None]] = {
    code: _fast_decoder(lay) for code, lay in _LAYOUTS.items() if lay.tail != "entries"
}


def decode(data: bytes) -> Envelope:
    """Parse one datagram. Raises only :class:`DecodeError`, saying what was wrong."""
    # The hot path: a well-formed datagram of a known type whose body is its fixed
    # part alone or with a payload tail (one generated decoder per type). Anything
    # else takes the checked path below, which finds and names the fault.
    size = len(data)
    if size >= HEADER_SIZE:
        fast = _FAST.get(data[3])
        if fast is not None:
            env = fast(data, size)
            if env is not None:
                return env
    return _decode_checked(data)


def _decode_checked(data: bytes) -> Envelope:
    """:func:`decode` with every check in turn."""
    size = len(data)
    if size < HEADER_SIZE:
        raise DecodeError(f"datagram truncated: {size} bytes, header needs {HEADER_SIZE}")
    if size > MAX_DATAGRAM:
        raise DecodeError(f"datagram oversized: {size} bytes, limit {MAX_DATAGRAM}")
    lay = _LAYOUTS.get(data[3])
    if lay is None or size < lay.full.size:
        magic, version, code, flags, group, sender, incarnation, realm = _HEADER.unpack_from(data)
    else:
        values = lay.full.unpack_from(data)
        magic, version, code, flags, group, sender, incarnation, realm = values[:8]
    if magic != MAGIC:
        raise DecodeError(f"bad magic {magic!r}, expected {MAGIC!r}")
    if version != VERSION:
        raise DecodeError(version_problem(version))
    if lay is None:
        raise DecodeError(f"unknown message type {code}")
    if flags & FLAG_AUTH:
        raise DecodeError(
            "authenticated datagram (flags bit 0): verify and strip its trailer "
            "with a powergrid.auth.Authenticator before decoding"
        )
    if flags:
        raise DecodeError(f"unknown flags {flags:#04x}: bits 1-7 are reserved in version {VERSION}")
    if not 0 < sender <= MAX_NODE_ID:
        raise DecodeError(f"sender {sender} is not a node id")
    if size < lay.full.size:
        raise DecodeError(
            f"{lay.name} truncated: {size - HEADER_SIZE} body bytes, need at least {lay.fixed.size}"
        )
    msg = _build(lay, values[8:], data, lay.full.size)
    return Envelope(group, sender, incarnation, msg, realm)


def version_problem(version: int) -> str:
    """Why a datagram of wire ``version`` (not :data:`VERSION`) is refused, in words."""
    if version < VERSION:
        return (
            f"unknown version {version}: an older powergrid (before realms); this node "
            f"speaks wire version {VERSION}: upgrade every node of the deployment"
        )
    return (
        f"unknown version {version}: newer than this node's wire version {VERSION}: "
        "upgrade this node"
    )
