"""The resend buffer: its size, its cap, trimming stable messages, and answering Naks.

Theory of operation
-------------------
Every life keeps the messages it delivered and that are not stable yet in its own
``buf`` (seq -> what ``_life.stored`` keeps: an app message's payload, else
``(kind, payload)``; seqs ``buf_low..delivered``, rule 10). This part
counts them over all lives (``size``) and enforces ``max_buffer`` (rule 15): beyond
it, the oldest message of the life with the most buffered is dropped
(``buffer_overflow``), and the coordinator also declares it stable so members stuck
behind it skip it. Under flow control (``send_window``, rule 27) the cap drops
nothing: every origin's window bounds what is unstable, and a member keeps every
message it delivered until it is stable, so none that a live member lacks is lost.
It trims a life up to its stable point (rule 13), except that while the machine keeps
a DEPARTING life (an origin its view does not list), and for ``flush_grace`` after, it
keeps this node's own messages even once stable (the origin's hold, rule 28: at most
``max_buffer`` of them), and answers a
Nak from the buffer with one Xmit per message it holds in the (capped) range, at
most ``max_xmit_per_interval`` per requester per ``nak_interval`` window (rules 8, 9;
beyond: ``xmits_rate_limited``).

Guarantees: ``size`` is the number of messages buffered in every LIVE, DEPARTING and
RETIRED life (the registry calls :meth:`ResendBuffer.release` when a life's state
goes) and, without flow control, never exceeds ``max_buffer`` after a delivery (under
flow control: at most ``send_window`` per origin, plus protocol messages and what a
missed Stable leaves until the next), plus at most ``max_buffer`` of its own messages
during a hold. Its one timer is the end of the hold, ``hold_until`` (the machine
reads it). Driven by the machine (Naks, views, the hold) and the registry of lives
(deliveries, dropped lives).
"""

from __future__ import annotations

import math
from typing import Any

from powergrid.protocols.multicast._config import (
    MulticastConfig,
    MulticastStats,
    new_send,
    new_xmit,
)
from powergrid.protocols.multicast._life import OriginLife, unstored
from powergrid.types import NodeId
from powergrid.wire import Nak


class ResendBuffer:
    """The resend buffer of one machine over all its lives (see the module docstring)."""

    __slots__ = (
        "_cap",
        "_config",
        "_current",
        "_held",
        "_hold_floor",
        "_retired",
        "_stats",
        "_windows",
        "evicted",
        "hold_until",
        "size",
    )

    def __init__(
        self,
        config: MulticastConfig,
        stats: MulticastStats,
        current: dict[int, OriginLife],
        retired: dict[int, OriginLife],
    ) -> None:
        self._config = config
        # under flow control (rule 27) the cap evicts nothing: the windows bound the buffer
        self._cap = math.inf if config.send_window else config.max_buffer
        self._stats = stats
        self._current = current  # the registry's dicts (read only here)
        self._retired = retired
        self.size = 0
        """Messages buffered now, all lives together."""
        self._windows: dict[int, list[float]] = {}  # requester -> [window start, count]
        self.evicted: dict[int, tuple[int, int]] = {}
        """origin -> (incarnation, seq): the coordinator's latest eviction of the origin's
        current life, for its digest to declare stable (rule 15; it empties this)."""
        self._held: OriginLife | None = None  # this node's own life, during a hold (rule 28)
        self._hold_floor = 0  # the hold keeps its messages above this seq
        self.hold_until: float | None = None
        """When the origin's hold ends (seconds); None: no hold, or one with no end yet."""

    def new_peak(self, size: int, coordinating: bool) -> None:
        """The buffer grew past its peak: enforce the cap (rule 15; not under flow control,
        rule 27), then record the peak."""
        if size > self._cap:
            self._overflow(coordinating)
            size = self.size
        stats = self._stats
        if size > stats.peak_buffer:  # noqa: PLR1730 (at every message while it grows)
            stats.peak_buffer = size

    def _overflow(self, coordinating: bool) -> None:
        """Drop the oldest message of the life with the most buffered, while over the cap."""
        limit = self._config.max_buffer
        while self.size > limit:
            st = self._fullest()
            seq = st.buf_low
            while seq not in st.buf:
                seq += 1
            del st.buf[seq]
            st.buf_low = seq + 1
            self.size -= 1
            self._stats.buffer_overflow += 1
            if coordinating and seq > st.stable:
                st.stable = seq  # nobody can fetch it any more: let laggards skip it
                if self._current.get(st.origin) is st:
                    self.evicted[st.origin] = (st.incarnation, seq)

    def _fullest(self) -> OriginLife:
        """The life with the most buffered messages: of equal ones the lowest origin's,
        and of one origin's the current life before the retired one (what
        ``max(key=(len(buf), -origin))`` over the current lives, then the retired, picks;
        a loop, for the buffer overflows at every message of a stream it cannot keep)."""
        best: OriginLife | None = None
        most = best_origin = -1
        for lives in (self._current, self._retired):
            for origin, st in lives.items():
                n = len(st.buf)
                if n > most or (n == most and origin < best_origin):
                    best, most, best_origin = st, n, origin
        assert best is not None  # (called while the buffer holds a message)
        return best

    def release(self, st: OriginLife) -> None:
        """``st``'s state is dropped: its buffered messages no longer count."""
        self.size -= len(st.buf)

    def sync_hold(self, own: OriginLife, departing: bool, now: float) -> None:
        """Rule 28, the origin's hold: while the machine keeps a DEPARTING life
        (``departing``: an origin its view does not list, which left or never was in this
        view), and for ``flush_grace`` after the last, keep ``own`` (this node's own life)
        buffered even once stable, from what it holds when the hold begins. That origin
        may come back into a view with this node missing some of them, and a view without
        it (this node alone, at worst) finds them stable at once: dropped, they would be
        lost history although their origin is live and in the view again (fuzz seed
        15113405). A hold that holds nothing ends at once. ``now`` in seconds."""
        if departing:
            if self._held is not own:
                self._held = own
                self._hold_floor = own.buf_low - 1
            self.hold_until = None
        elif self._held is not None:
            if self.hold_until is None and own.buf:
                self.hold_until = now + self._config.flush_grace
            elif self.hold_until is None or self.hold_until <= now:
                self.end_hold()

    def end_hold(self) -> None:
        """The hold ends: drop what is stable of the own life."""
        own = self._held
        self._held = self.hold_until = None
        if own is not None:
            self.trim(own, own.stable)

    def trim(self, st: OriginLife, stable: int) -> None:
        """Raise ``st``'s stable point to ``stable`` and drop buffered messages up to it (but
        none of this node's own above the hold's floor during a hold, rule 28)."""
        st.stable = max(st.stable, stable)
        buf = st.buf
        top = min(stable, st.delivered)
        if st is self._held:  # at most max_buffer held
            top = min(top, max(self._hold_floor, st.delivered - self._config.max_buffer))
        if top < st.buf_low:
            return
        if top - st.buf_low >= len(buf):
            dropped = len(buf)
            st.buf = {s: m for s, m in buf.items() if s > top}
            dropped -= len(st.buf)
        else:
            dropped = 0
            for seq in range(st.buf_low, top + 1):
                if buf.pop(seq, None) is not None:
                    dropped += 1
        st.buf_low = top + 1
        self.size -= dropped

    # ------------------------------------------------------------ answering Naks

    def answer(
        self, requester: int, msg: Nak, st: OriginLife, now: float, members: int
    ) -> list[Any]:
        """Xmits of ``st`` answering ``msg`` from ``requester`` (rule 9), rate limited per
        requester per ``nak_interval`` (``now`` in seconds; ``members``: the view's size)."""
        cfg = self._config
        window = self._windows.get(requester)
        if window is None or now >= window[0] + cfg.nak_interval:
            if window is None and len(self._windows) > 4 * members + 16:
                self._prune(now)
            window = self._windows[requester] = [now, 0.0]
        budget = cfg.max_xmit_per_interval - int(window[1])
        first = max(msg.first, st.buf_low)
        last = min(msg.last, msg.first + cfg.max_nak_range - 1, st.delivered)
        out: list[Any] = []
        to = NodeId(requester)
        buf = st.buf
        origin, inc = msg.origin, st.incarnation
        for seq in range(first, last + 1):
            stored = buf.get(seq)
            if stored is None:
                continue
            if budget <= 0:
                self._stats.xmits_rate_limited += 1
                continue
            budget -= 1
            kind, payload = unstored(stored)
            out.append(new_send(to, new_xmit(origin, inc, seq, kind, payload)))
        window[1] = cfg.max_xmit_per_interval - budget
        self._stats.xmits_sent += len(out)
        return out

    def _prune(self, now: float) -> None:
        span = self._config.nak_interval
        for requester in sorted(self._windows):
            if now >= self._windows[requester][0] + span:
                del self._windows[requester]

    def keep_requesters(self, members: dict[int, int]) -> None:
        """A view is installed: forget the rate windows of requesters it does not list."""
        for requester in sorted(self._windows):
            if requester not in members:
                del self._windows[requester]
