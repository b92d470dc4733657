"""A view on the wire: how a leader splits it into ViewParts and a member reads them back.

Theory of operation. A view travels as one or more
:class:`~powergrid.wire.ViewPart` datagrams (:func:`view_parts`), whose
entries, in part order, are sorted by ``(node, status)``: members (status 0)
and the recent departures with their reasons. :func:`parse_view` turns the
entries of all parts back into members and departures, or refuses entries
that are not strictly sorted. View ids compare as serial numbers
(:func:`~powergrid.types.view_newer`): :func:`newest` and :func:`installable`
are the two comparisons the machine makes (docs/protocols/membership.md,
*View ids*, rule V1), and a :class:`ViewAssembly` collects the parts of the
newest view heard of (rule M4). Pure functions otherwise; the one
module-level state is :func:`parse_view`'s cache of its last answer.
"""

from __future__ import annotations

from typing import Any

from powergrid.events import Member
from powergrid.protocols.membership.messages import RemovalReason
from powergrid.types import Incarnation, NodeId, epoch_newer, view_newer
from powergrid.wire import (
    MAX_PAYLOAD,
    MAX_VIEW_PARTS,
    VIEW_STATUS_CRASHED,
    VIEW_STATUS_LEFT,
    VIEW_STATUS_MEMBER,
    VIEW_STATUS_REPLACED,
    ViewEntry,
    ViewPart,
    encode_body,
)

__all__ = [
    "MAX_VIEW_MEMBERS",
    "REASONS",
    "VIEW_ENTRIES_PER_PART",
    "ViewAssembly",
    "installable",
    "newest",
    "parse_view",
    "view_parts",
]

_EMPTY_PART = len(encode_body(ViewPart(epoch=1, view_id=1, part=0, parts=1, entries=())))
_ENTRY_SIZE = (
    len(
        encode_body(
            ViewPart(epoch=1, view_id=1, part=0, parts=1, entries=(ViewEntry(1, 0, 0, 0, 0),))
        )
    )
    - _EMPTY_PART
)
VIEW_ENTRIES_PER_PART = (MAX_PAYLOAD - _EMPTY_PART) // _ENTRY_SIZE
"""View entries (members and recent departures) that fit in one ViewPart datagram."""
MAX_VIEW_MEMBERS = VIEW_ENTRIES_PER_PART * MAX_VIEW_PARTS
"""The most entries one view can carry (75,776): a leader admits no new node while its
members, joiners and remembered departures reach it (forged JoinRequests from made-up ids,
without a key, used to grow a view without bound, past what its ViewParts can carry, so
members refused them)."""

REASONS: dict[int, RemovalReason] = {
    VIEW_STATUS_CRASHED: "crashed",
    VIEW_STATUS_LEFT: "left",
    VIEW_STATUS_REPLACED: "replaced",
}


def view_parts(
    epoch: int, view_id: int, entries: list[ViewEntry] | tuple[ViewEntry, ...]
) -> tuple[ViewPart, ...]:
    """Split sorted view ``entries`` into ViewPart messages that each fit one datagram."""
    per = VIEW_ENTRIES_PER_PART
    parts = max(1, -(-len(entries) // per))
    return tuple(
        ViewPart(
            epoch=epoch,
            view_id=view_id,
            part=i,
            parts=parts,
            entries=tuple(entries[i * per : (i + 1) * per]),
        )
        for i in range(parts)
    )


def newest(a: int, b: int) -> int:
    """The newer of view ids ``a`` and ``b`` (``a`` if they are foreign to each other)."""
    return b if view_newer(b, a) else a


def installable(vid: int, own: int) -> bool:
    """May a view ``vid`` of the followed leader replace view ``own``? If it is newer, or
    foreign (a forged view id far off must not pin a member for good)."""
    return vid != own and not view_newer(own, vid)


_Parsed = tuple[tuple[Member, ...], dict[int, tuple[int, int]]]
_last_parsed: list[Any] = [(), None]
"""The view parts :func:`parse_view` read last (the entry tuples themselves) and its answer."""


def parse_view(parts: tuple[tuple[ViewEntry, ...], ...]) -> _Parsed | None:
    """The members and the departures (node -> incarnation, status) a view's entries
    list, or None if the entries are not sorted strictly by (node, status).

    A view reaches every member of its group as the same decoded parts (see
    :mod:`powergrid.node`), so the last answer is kept and given again for the
    same entry tuples (immutable; the answer is never modified).
    """
    last = _last_parsed
    seen = last[0]
    if len(seen) == len(parts) and all(a is b for a, b in zip(seen, parts, strict=True)):
        cached: _Parsed | None = last[1]
        return cached
    members: list[Member] = []
    departed: dict[int, tuple[int, int]] = {}
    result: _Parsed | None = (), departed
    prev = (-1, -1)
    for entries in parts:
        for e in entries:
            key = (e.node, e.status)
            if key <= prev:
                result = None
                break
            prev = key
            if e.status == VIEW_STATUS_MEMBER:
                members.append(
                    Member(
                        node=NodeId(e.node),
                        incarnation=Incarnation(e.incarnation),
                        rank=e.rank,
                        broker_capable=bool(e.flags & 1),
                    )
                )
            else:
                departed[e.node] = (e.incarnation, e.status)
        if result is None:
            break
    if result is not None:
        result = tuple(members), departed
    last[0], last[1] = parts, result
    return result


_Parts = tuple[tuple[ViewEntry, ...], ...]


class ViewAssembly:
    """The parts of one multi-part view being collected (rule M4).

    Parts of a newer view (or of another sender, or another part count)
    abandon an unfinished older one; parts of an older view than the one
    being collected are refused; duplicates are harmless.
    """

    __slots__ = ("key", "parts")

    def __init__(self) -> None:
        self.key: tuple[int, int, int, int] | None = None  # sender, epoch, view id, parts
        self.parts: dict[int, tuple[ViewEntry, ...]] = {}

    def add(self, sender: int, vp: ViewPart) -> _Parts | None:
        """Collect ``vp`` from ``sender``. Returns the entries of every part, in part
        order, when the view is complete (and starts over); ``()`` if ``vp`` is of an
        older view than the one being collected (refused); None while parts are missing.
        """
        key = (sender, vp.epoch, vp.view_id, vp.parts)
        if key != self.key:
            asm = self.key
            if asm is not None and (
                epoch_newer(asm[1], vp.epoch)
                or (vp.epoch == asm[1] and view_newer(asm[2], vp.view_id))
            ):
                return ()
            self.key = key
            self.parts = {}
        self.parts[vp.part] = vp.entries
        if len(self.parts) < vp.parts:
            return None
        parts = self.parts
        self.key = None
        self.parts = {}
        return tuple(parts[i] for i in range(vp.parts))
