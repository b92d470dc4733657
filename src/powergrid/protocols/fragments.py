"""Fragmentation: large application payloads split into fragments and reassembled.

Theory of operation
-------------------
One :class:`FragmentMachine` per group the node is in, between the app and the
reliable channels (the multicast and the unicast machine), which it never
touches: the node hands it what is too large for one datagram and what the
channels deliver with the fragment kind.

*Sending.* :class:`Split` cuts a payload of up to ``max_message`` bytes
(default 1 MiB) into :class:`Piece` actions of at most :data:`FRAGMENT_DATA`
bytes each (or fewer, ``Split.data``: a totally ordered group's fragments leave room
for the order layer's header), every one the body of a :class:`~powergrid.wire.Fragment`
(``message``, ``total``, ``offset``, bytes), which the node publishes (or
submits, for unicast) one after the other, with the fragment type code as
the channel's ``kind``. Messages are numbered 1, 2, ... per machine (so per
life of the node; after 2**32-1 comes 1). A payload that fits one datagram
is never split: the node sends it as before, so small messages cost nothing
and look as they did on the wire.

*Receiving.* The channel below delivers each origin's stream reliably, in
order and exactly once (multicast: per origin life; unicast: per sender), so
a message's fragments arrive one after the other, each once, starting at
offset 0. :class:`FragmentArrived` therefore keeps at most one *partial*
message per (channel, origin, life) and accepts exactly one next fragment:
the same message and ``total``, at the offset where the bytes so far end.
When the bytes reach ``total`` the message is complete: :class:`Reassembled`
gives it to the app, numbered with the channel sequence number of its first
fragment (the number the sender's publication got). Order and exactly-once
follow from the channel's: a message completes only when each of its bytes
arrived once, in order, after every earlier message of its origin. In a totally
ordered group the fragments come from the order layer (:mod:`powergrid.protocols.order`)
instead, one ordered message each, ``seq`` its number ``n``: it too gives an origin's
messages in the origin's order, each at most once, so the same holds; where it drops
one as late (its rule O5) the rest of that message is dropped here (``misplaced`` or
``stray``) and the message is not delivered at that member.

*Hostile or broken streams* (forged datagrams of an unkeyed group; a stream
that skipped lost history, see the multicast's *lost history*) never raise and
never assemble a wrong message; each fragment dropped is counted in
:class:`FragmentStats`: a body the codec refuses, e.g. bytes past its own
``total`` (``malformed``); a ``total`` over ``max_message`` (``too_large``);
a fragment at another offset than where the partial ends, overlapping it or
leaving a gap (``misplaced``); a ``total`` that differs from the partial's
(``total_changed``); a later fragment without its partial (``stray``). A
misplaced or total-changing fragment also drops the partial, and a new first
fragment drops the partial it interrupts (``incomplete``): the stream moved
on, the rest of that message will never come.

*Memory.* A partial holds only bytes that arrived (nothing is allocated from
a claimed ``total``): at most ``max_message`` bytes per life of an origin, and
at most two lives per origin and channel (the multicast still delivers a
restarted origin's retired life beside its new one; a third life's first
fragment drops the oldest-started partial, ``incomplete``). All partials
together hold at most ``max_reassembly`` bytes: a fragment that would pass it
first evicts the largest partials (``evicted``); each partial is charged
:data:`PARTIAL_COST` bytes beyond its data, which bounds their number too. A
partial is one growing buffer, never a list of pieces. Partials of origins that leave
the view (:class:`~powergrid.events.ViewChanged`) are kept ``departed_grace``
seconds, in which the channel may still bring their last fragments, then
dropped (``departed``); an origin that comes back in time keeps them.

Rules F1-F5 (cited below and in ``tests/test_fragments.py``) are those of
``docs/protocols/multicast.md``, *Large messages*.

Driving: ``handle(event, now)`` with :class:`Split`, :class:`FragmentArrived`,
:class:`~powergrid.events.ViewChanged` and
:class:`~powergrid.events.DeadlineReached`; ``next_deadline()`` is the
earliest end of a departed origin's grace, None while no departed origin has
a partial (so a group that sends no large messages never wakes it).
"""

from __future__ import annotations

import struct
from typing import Any, Final, Literal

import attrs

from powergrid._checks import config_error, number, whole
from powergrid._dispatch import Dispatching
from powergrid.errors import DecodeError, PayloadTooLargeError, UsageError
from powergrid.events import DeadlineReached, ViewChanged, member_maps
from powergrid.protocols.multicast import MAX_MULTICAST_PAYLOAD
from powergrid.protocols.unicast import MAX_UNICAST_PAYLOAD
from powergrid.types import Incarnation, NodeId, node_field
from powergrid.wire import MAX_FRAGMENTED, Fragment, decode_body, encode_body

__all__ = [
    "FRAGMENT_DATA",
    "KIND_FRAGMENT",
    "PARTIAL_COST",
    "FragmentArrived",
    "FragmentConfig",
    "FragmentMachine",
    "FragmentStats",
    "Piece",
    "Reassembled",
    "Split",
    "fragment_count",
]

KIND_FRAGMENT: Final = Fragment.TYPE
"""The reliable channels' ``kind`` of a fragment body."""
FRAGMENT_DATA: Final = min(MAX_MULTICAST_PAYLOAD, MAX_UNICAST_PAYLOAD) - struct.calcsize("!III")
"""Bytes of a large message carried by one fragment (what fits in either channel
after the fragment's 12-byte head)."""

Channel = Literal["multicast", "unicast"]


PARTIAL_COST: Final = 256
"""Bytes a partial is charged for its bookkeeping, beyond its data, against
``max_reassembly``: so a flood of tiny partials is bounded in number too (at most
65,536 with the default 16 MiB)."""


def fragment_count(
    size: int, *, fits: int = MAX_MULTICAST_PAYLOAD, data: int = FRAGMENT_DATA
) -> int:
    """How many channel messages (sequence numbers) an app payload of ``size`` bytes
    takes: 1 if it fits one message of the channel (``fits`` bytes; default one datagram
    of the multicast), else its fragments of ``data`` bytes each (:class:`Split`'s)."""
    if size <= fits:
        return 1
    return -(-size // data)


@attrs.frozen(kw_only=True)
class FragmentConfig:
    """Settings of :class:`FragmentMachine`; sizes in bytes, times in seconds.

    Raises :class:`~powergrid.errors.ConfigError` naming the field for a value
    out of range, or ``max_reassembly`` below ``max_message`` + :data:`PARTIAL_COST`.
    """

    max_message: int = attrs.field(default=1 << 20, validator=whole(1, MAX_FRAGMENTED))
    """The largest app payload sent or reassembled (default 1 MiB)."""
    max_reassembly: int = attrs.field(default=16 << 20, validator=whole(1))
    """Bytes all partial messages together may hold (default 16 MiB)."""
    departed_grace: float = attrs.field(default=2.0, validator=number(0))
    """How long the partials of an origin that left the view are kept."""

    def __attrs_post_init__(self) -> None:
        if self.max_reassembly < self.max_message + PARTIAL_COST:
            problem = f"must be at least max_message + {PARTIAL_COST} ({self.max_message})"
            raise config_error(self, "max_reassembly", problem, self.max_reassembly)


@attrs.frozen(kw_only=True)
class Split:
    """Command: cut ``payload`` into fragments of at most ``data`` bytes each (default
    :data:`FRAGMENT_DATA`; a smaller size leaves room for a header of the layer that
    carries them, e.g. the total order's). Raises
    :class:`~powergrid.errors.PayloadTooLargeError` over ``max_message`` bytes and
    :class:`~powergrid.errors.UsageError` if it is not bytes or ``data`` is not
    1..:data:`FRAGMENT_DATA`."""

    payload: bytes
    data: int = FRAGMENT_DATA


@attrs.frozen(kw_only=True)
class Piece:
    """Action: send ``payload`` (a fragment body) through the channel as ``kind``."""

    kind: int
    payload: bytes


@attrs.frozen(kw_only=True)
class FragmentArrived:
    """A channel delivered a fragment body ``payload`` of ``origin`` (life ``incarnation``),
    as its message ``seq`` (multicast; 0 for unicast)."""

    channel: Channel
    origin: NodeId = node_field()
    incarnation: Incarnation
    seq: int
    payload: bytes


@attrs.frozen(kw_only=True)
class Reassembled:
    """Action: hand the app ``payload``, a whole message of ``origin`` (life
    ``incarnation``) from ``channel``; ``seq`` is its first fragment's number."""

    channel: Channel
    origin: NodeId = node_field()
    incarnation: Incarnation
    seq: int
    payload: bytes


@attrs.define(kw_only=True)
class FragmentStats:
    """Counters that only grow (messages and fragments, not bytes)."""

    split: int = 0
    """Large messages this node cut into fragments."""
    fragments: int = 0
    """Fragments this node made."""
    reassembled: int = 0
    """Large messages completed and handed to the app."""
    malformed: int = 0
    """Fragment bodies the codec refused (e.g. bytes past their own total)."""
    too_large: int = 0
    """Fragments of a message whose total is over ``max_message``."""
    misplaced: int = 0
    """Fragments that overlap the bytes so far or leave a gap (the partial is dropped)."""
    total_changed: int = 0
    """Fragments whose total differs from their partial's (the partial is dropped)."""
    stray: int = 0
    """Later fragments without their message's first (joined mid-message, or skipped)."""
    incomplete: int = 0
    """Partials dropped because their stream moved on to another message or life."""
    evicted: int = 0
    """Partials dropped to keep all partials within ``max_reassembly``."""
    departed: int = 0
    """Partials dropped ``departed_grace`` after their origin left the view."""


_Key = tuple[str, int, int]  # channel, origin, incarnation


class _Partial:
    """The bytes of one message so far (one buffer, however small the fragments)."""

    __slots__ = ("born", "data", "message", "seq", "total")

    def __init__(self, frag: Fragment, seq: int, born: int) -> None:
        self.message = frag.message
        self.total = frag.total
        self.seq = seq
        self.born = born  # start order, to drop the oldest of an origin's lives
        self.data = bytearray(frag.payload)

    @property
    def have(self) -> int:
        """Bytes so far."""
        return len(self.data)


class FragmentMachine(Dispatching):
    """Splits large payloads and reassembles them (see the module docstring)."""

    __slots__ = (
        "_born",
        "_config",
        "_departed",
        "_held",
        "_members",
        "_next",
        "_partials",
        "_stats",
    )

    _EVENTS = {
        Split: "_split",
        FragmentArrived: "_arrived",
        ViewChanged: "_view",
        DeadlineReached: "_deadline",
    }

    def __init__(self, config: FragmentConfig | None = None) -> None:
        self._config = config or FragmentConfig()
        self._stats = FragmentStats()
        self._next = 1  # the number of our next large message
        self._partials: dict[_Key, _Partial] = {}
        self._held = 0  # bytes in all partials
        self._born = 0
        self._members: dict[int, int] | None = None  # of the last view (shared: read only)
        self._departed: dict[int, float] = {}  # origin -> end of its grace

    @property
    def config(self) -> FragmentConfig:
        return self._config

    @property
    def stats(self) -> FragmentStats:
        return self._stats

    @property
    def held(self) -> int:
        """Bytes charged for partial messages now: their data, plus :data:`PARTIAL_COST`
        each."""
        return self._held

    @property
    def partials(self) -> tuple[tuple[str, int, int, int], ...]:
        """``(channel, origin, incarnation, bytes so far)`` of each partial, sorted."""
        return tuple((*k, p.have) for k, p in sorted(self._partials.items()))

    def next_deadline(self) -> float | None:
        return min(self._departed.values(), default=None)

    # ------------------------------------------------------------ sending

    def _split(self, ev: Split, now: float) -> list[Piece]:  # F1
        payload = ev.payload
        if not isinstance(payload, bytes):
            raise UsageError(f"a payload must be bytes, got {type(payload).__name__}")
        total = len(payload)
        if total > self._config.max_message:
            raise PayloadTooLargeError(
                f"payload is {total} bytes, over FragmentConfig.max_message "
                f"({self._config.max_message}); raise it or send less"
            )
        step = ev.data
        if type(step) is not int or not 1 <= step <= FRAGMENT_DATA:
            raise UsageError(f"Split.data must be 1..{FRAGMENT_DATA} bytes, got {step!r}")
        message = self._next
        self._next = message % MAX_FRAGMENTED + 1
        pieces = [
            Piece(
                kind=KIND_FRAGMENT,
                payload=encode_body(Fragment(message, total, at, payload[at : at + step])),
            )
            for at in range(0, max(total, 1), step)
        ]
        self._stats.split += 1
        self._stats.fragments += len(pieces)
        return pieces

    # ------------------------------------------------------------ receiving

    def _arrived(self, ev: FragmentArrived, now: float) -> list[Reassembled]:  # F2, F3
        stats = self._stats
        try:
            frag = decode_body(KIND_FRAGMENT, ev.payload)
        except DecodeError:
            stats.malformed += 1
            return []
        assert isinstance(frag, Fragment)
        key = (ev.channel, int(ev.origin), int(ev.incarnation))
        part = self._partials.get(key)
        if frag.total > self._config.max_message:
            stats.too_large += 1
            if part is not None:
                self._drop(key, "incomplete")
            return []
        if frag.offset == 0:
            if part is not None:
                self._drop(key, "incomplete")
            if len(frag.payload) == frag.total:
                return [self._done(ev, ev.seq, frag.payload)]
            return self._start(key, ev, frag, now)
        if part is None or part.message != frag.message:
            stats.stray += 1
            if part is not None:
                self._drop(key, "incomplete")
            return []
        if frag.total != part.total:
            stats.total_changed += 1
            self._drop(key, None)
            return []
        if frag.offset != part.have:
            stats.misplaced += 1
            self._drop(key, None)
            return []
        size = len(frag.payload)
        if not self._room(size, key):
            return []
        part.data += frag.payload
        self._held += size
        if part.have < part.total:
            return []
        self._drop(key, None)
        return [self._done(ev, part.seq, bytes(part.data))]

    def _start(self, key: _Key, ev: FragmentArrived, frag: Fragment, now: float) -> list[Any]:
        lives = sorted(
            (p.born, k) for k, p in self._partials.items() if k[0] == key[0] and k[1] == key[1]
        )
        if len(lives) >= 2:  # F4: a third life of one origin: the oldest-started goes
            self._drop(lives[0][1], "incomplete")
        cost = len(frag.payload) + PARTIAL_COST
        if not self._room(cost, None):
            return []
        self._born += 1
        self._partials[key] = _Partial(frag, ev.seq, self._born)
        self._held += cost
        members = self._members
        if members is not None and key[1] not in members:
            self._departed.setdefault(key[1], now + self._config.departed_grace)
        return []

    def _done(self, ev: FragmentArrived, seq: int, payload: bytes) -> Reassembled:
        self._stats.reassembled += 1
        return Reassembled(
            channel=ev.channel,
            origin=ev.origin,
            incarnation=ev.incarnation,
            seq=seq,
            payload=payload,
        )

    def _room(self, size: int, keep: _Key | None) -> bool:  # F4
        """Make room for ``size`` more bytes by evicting the largest partials; False
        (the fragment is dropped) if partial ``keep`` itself had to go."""
        limit = self._config.max_reassembly
        while self._held + size > limit and self._partials:
            _, victim = max((p.have, k) for k, p in self._partials.items())
            self._drop(victim, "evicted")
            if victim == keep:
                return False
        return True

    def _drop(self, key: _Key, why: str | None) -> None:
        part = self._partials.pop(key)
        self._held -= part.have + PARTIAL_COST
        if why == "incomplete":
            self._stats.incomplete += 1
        elif why == "evicted":
            self._stats.evicted += 1
        elif why == "departed":
            self._stats.departed += 1
        origin = key[1]
        if origin in self._departed and not any(k[1] == origin for k in self._partials):
            del self._departed[origin]

    # ------------------------------------------------------------ views and time

    def _view(self, ev: ViewChanged, now: float) -> list[Any]:  # F5
        # The group's one dict for this view (member_maps), not a set per node: every
        # node of a data centre's group installs each view.
        members = self._members = member_maps(ev.view.members)[1]
        if not self._partials:
            return []
        for origin in sorted({k[1] for k in self._partials}):
            if origin in members:
                self._departed.pop(origin, None)
            else:
                self._departed.setdefault(origin, now + self._config.departed_grace)
        return []

    def _deadline(self, ev: DeadlineReached, now: float) -> list[Any]:
        for origin, due in sorted(self._departed.items()):
            if due <= now:
                for key in sorted(k for k in self._partials if k[1] == origin):
                    self._drop(key, "departed")
                self._departed.pop(origin, None)
        return []
