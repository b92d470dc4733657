"""The stability coordinator: the members' reports, the Stable digest, lost history, hearsay.

Theory of operation
-------------------
A :class:`StabilityCoordinator` exists only while this node is its view's leader:
the machine builds one when a view makes it coordinator and drops it when a view
makes someone else coordinator, so its state (the members' reports, the Stable
timer and the digests still owed after a view change) resets by construction.

It keeps each member's last :class:`~powergrid.wire.Status` report per origin,
``(incarnation, delivered, low)`` (rule 11), for current lives and, apart, for
retired ones; a report speaks for the member life that sent it, so a view change
keeps only the reports of members listed with the same incarnation (rule 12). From
them it computes per life ``stable`` = the minimum delivered over the view's members
and ``highest`` = the most seen, trims its own buffer to it and digests both in
:class:`~powergrid.wire.Stable` datagrams, retired lives in datagrams of their own
(rules 12, 23). Before each digest it skips history nobody holds any more (rule 16).
A member's report of a past life it has no state of makes a HEARSAY life (rule 24),
whose reports are kept like a retired life's and walked the same way.

It declares only the stable points it found itself (``vouched``) from the reports of
its view's members, as lost history or by its own buffer cap: one carried from a
view without some of today's members (another coordinator's Stable, or this node's
own view of fewer members) is void, so a new coordinator, and a view that admits a
member life, declare ``0`` for a life until every member has reported it (rule 12).

Guarantees: the declared ``stable`` of a life never goes down while this node
coordinates views of the same member lives; it never passes what a member of the
view lacks, unless nobody holds it (rules 15, 16). Assumes the view lists this node and that the
machine routes Status here only while it coordinates. Its deadline is
``stable_due`` (None while nothing is unstable and no digest is owed).
"""

from __future__ import annotations

from typing import Any

from powergrid.events import Multicast
from powergrid.protocols.multicast._buffer import ResendBuffer
from powergrid.protocols.multicast._config import (
    NO_REPORT,
    PENDING,
    STABLE_PER_DATAGRAM,
    MulticastConfig,
)
from powergrid.protocols.multicast._life import OriginLife, Phase
from powergrid.protocols.multicast._lives import Lives
from powergrid.types import incarnation_newer
from powergrid.wire import Stable, StableEntry, Status

_Reports = dict[int, dict[int, tuple[int, int, int]]]
"""member -> origin -> (incarnation, delivered, low)."""


class StabilityCoordinator:
    """The coordinator's part of one machine, alive while this node coordinates."""

    __slots__ = (
        "_buffer",
        "_config",
        "_lives",
        "_me",
        "_own",
        "reports",
        "retired_reports",
        "stable_due",
        "stable_left",
        "vouched",
    )

    def __init__(
        self,
        config: MulticastConfig,
        me: int,
        own: OriginLife,
        lives: Lives,
        buffer: ResendBuffer,
    ) -> None:
        self._config = config
        self._me = me
        self._own = own
        self._lives = lives
        self._buffer = buffer
        buffer.evicted.clear()  # a past coordinatorship's: its digests declared them
        self.reports: _Reports = {}  # of current lives
        self.retired_reports: _Reports = {}  # of retired lives (their origin -> the report)
        self.stable_due: float | None = None
        """When the next Stable digest goes out (seconds), None while none is needed."""
        self.stable_left = 0
        """Stable digests still owed after a view change (rule 12)."""
        self.vouched: dict[int, tuple[int, int]] = {}
        """origin -> (incarnation, stable): the stable point this coordinator has found for
        the origin's current life from the reports of its view's members, or as lost
        history, since it last admitted a member life (rule 12). Only this is declared."""

    # ------------------------------------------------------------ reports follow lives

    def keep_reports(self, members: dict[int, int], old_members: dict[int, int]) -> None:
        """A view is installed: keep the reports of member lives it lists again; a view
        that admits a member life the last one did not list voids the stable points
        found so far, which spoke only for the old members (rule 12)."""
        self.reports, self.retired_reports = (
            {m: r for m, r in reports.items() if m in members and members[m] == old_members.get(m)}
            for reports in (self.reports, self.retired_reports)
        )
        if any(old_members.get(m) != inc for m, inc in members.items()):
            self.vouched = {}

    def declared(self, st: OriginLife) -> int:
        """The stable point this coordinator declares for current life ``st`` (rule 12):
        what it found in views of today's members, ``0`` before it found any. Never the
        life's own ``stable``, which may come from a view without some of today's
        members (a Stable of another coordinator, or this node's own view of one
        member): declared, it made members skip what a live origin of the view still
        held (fuzz seed 1004785)."""
        got = self.vouched.get(st.origin)
        return got[1] if got is not None and got[0] == st.incarnation else 0

    def _vouch(self, st: OriginLife, stable: int) -> None:
        if stable > self.declared(st):
            self.vouched[st.origin] = (st.incarnation, stable)

    def forget(self, origin: int) -> None:
        """``origin``'s current life is gone: so are the reports of it."""
        for report in self.reports.values():
            report.pop(origin, None)
        self.vouched.pop(origin, None)

    def retire(self, origin: int, inc: int) -> None:
        """``origin``'s life ``inc`` was retired: its reports become retired reports."""
        retired = self.retired_reports
        for m, report in self.reports.items():
            got = report.pop(origin, None)
            if got is not None and got[0] == inc:
                retired.setdefault(m, {})[origin] = got
        self.vouched.pop(origin, None)

    def forget_retired(self, origin: int) -> None:
        """``origin``'s past life is gone: so are the reports of it."""
        for report in self.retired_reports.values():
            report.pop(origin, None)

    @staticmethod
    def _report(
        report: dict[int, tuple[int, int, int]], origin: int, inc: int, delivered: int, low: int
    ) -> None:
        """Record a member's point for ``origin`` (both only grow within a life: keep the max)."""
        prev = report.get(origin)
        if prev is None or prev[0] != inc:
            report[origin] = (inc, delivered, low)
        elif delivered > prev[1] or low > prev[2]:
            report[origin] = (inc, max(delivered, prev[1]), max(low, prev[2]))

    # ------------------------------------------------------------ Status in

    def on_status(self, member: int, msg: Status, now: float) -> list[Any]:
        """A Status of ``member`` (a member of the view, not this node): record its points,
        learn of lives and gaps from them, and answer with a Stable soon (rules 11, 12)."""
        lives = self._lives
        me = self._me
        own = self._own
        report = self.reports.setdefault(member, {})
        out: list[Any] = []
        for origin, inc, delivered, low in msg.entries:
            low = min(low, delivered)
            if origin == me:
                if inc == own.incarnation:
                    self._report(report, origin, inc, min(delivered, own.delivered), low)
                elif incarnation_newer(own.incarnation, inc):
                    self._hearsay(member, origin, inc, delivered, low, now)
                continue
            if self._hearsay_of(origin, inc):
                self._hearsay(member, origin, inc, delivered, low, now)
                continue
            if lives.unlisted(origin, inc) and lives.retired_life(origin, inc) is None:
                continue  # (rule 2; a retired life is repaired for its flush_grace, never revived)
            st = lives.current.get(origin)
            old = lives.past_life(origin, inc, st)
            if old is not None:  # the member delivered this much of the old life
                old.highest = max(old.highest, delivered)
                retired = self.retired_reports.setdefault(member, {})
                self._report(retired, origin, inc, delivered, low)
                lives.check_gap(old, now)
                continue
            if st is None:
                if lives.dropped(origin, inc):
                    continue
                st = lives.begin(origin, inc, 0, now)
            elif inc != st.incarnation:
                if incarnation_newer(st.incarnation, inc):
                    continue
                st = lives.begin(origin, inc, 0, now)
            elif st.delivered == PENDING:
                lives.start(st, delivered, out)
            self._report(report, origin, inc, delivered, low)
            st.highest = max(st.highest, delivered)
            lives.check_gap(st, now)
        cfg = self._config
        # under flow control the digest is the origins' credit: sent sooner (rule 27)
        due = now + (cfg.stable_interval / 8 if cfg.send_window else cfg.stable_interval)
        if self.stable_due is None or due < self.stable_due:
            self.stable_due = due
        return out

    def _hearsay(
        self, member: int, origin: int, inc: int, delivered: int, low: int, now: float
    ) -> None:
        """``member`` reports it delivered up to ``delivered`` (and dropped up to ``low``) of a
        past life ``inc`` of ``origin`` that this node has no state of (its own past life,
        or a life of another origin it never knew: it joined, restarted or took over after
        that life ended): keep it as a HEARSAY life, for ``flush_grace`` from the first
        report, so its highest goes out in the digest like any retired life's and members
        behind fetch its end from those that delivered it. Only its highest grows, with the
        reports, which are kept like a retired life's for the lost-history walk (rules 16,
        24)."""
        lives = self._lives
        old = lives.retired.get(origin)
        if old is None or incarnation_newer(inc, old.incarnation):
            old = lives.hear(origin, inc, now)
        elif incarnation_newer(old.incarnation, inc):
            return
        if delivered > old.highest:
            old.highest = old.delivered = delivered  # no gap: this node never asks for it
        self._report(self.retired_reports.setdefault(member, {}), origin, inc, delivered, low)

    def _hearsay_of(self, origin: int, inc: int) -> bool:
        """Whether a Status entry of life ``inc`` of ``origin`` (not this node) is of a past
        life this coordinator has no state of: the view lists a later life of the origin,
        this node knows no life of it or only a later one, and keeps no retired life of it
        but one it heard of the same way (rule 24)."""
        lives = self._lives
        old = lives.retired.get(origin)
        if old is not None:
            if old.phase is not Phase.HEARSAY:
                return False  # a life it had state of: digested from that state
            if not incarnation_newer(inc, old.incarnation):
                return old.incarnation == inc
        listed = lives.members.get(origin)
        if listed is None or not incarnation_newer(listed, inc):
            return False
        st = lives.current.get(origin)
        return st is None or incarnation_newer(st.incarnation, inc)

    # ------------------------------------------------------------ the view's coordinator

    def start_pending(self, now: float, out: list[Any]) -> None:
        """Lives whose start is unknown start at 0 here: the coordinator gets no Stable
        (rule 21); what nobody holds any more is skipped as lost history (rule 16)."""
        lives = self._lives
        for _, st in sorted(lives.current.items()):
            if st.delivered == PENDING:
                lives.start(st, 0, out)
                lives.check_gap(st, now)

    # ------------------------------------------------------------ lost history

    def skip_lost(self, now: float, out: list[Any]) -> None:
        """Raise each life's stable point to where its history is lost for good (rule 16).

        With every member's report in, the messages anyone can still resend are the
        union of the members' ``(low, delivered]`` (this node's included). Counting down
        from the highest delivered, the first message nobody holds is lost: messages
        dropped as stable in a view some of today's members were not in (a partition, a
        restart). Members behind it can never get it, so it is declared stable and they
        skip to it; the coordinator skips first. Retired lives too: with the reports of
        every member but the origin (its new life holds none of the old one), for the
        coordinator may have started the old life at 0 and not yet skipped when the
        origin restarted. And hearsay lives (rule 24), of which this node holds nothing:
        a member may be stuck behind a past life's lost stretch that only this digest
        can let it skip.
        """
        lives = self._lives
        me = self._me
        others = [m for m in sorted(lives.members) if m != me]
        for _, st in sorted(lives.current.items()):
            if st.delivered == PENDING:
                continue
            # Its own stream too: this node may have dropped its own messages as stable
            # in a view without some of today's members, where they are lost now.
            lost = self._lost_point(st, others, self.reports)
            if lost > self.declared(st):
                self._vouch(st, lost)
                st.stable = max(st.stable, lost)
                if lost > st.delivered:
                    got = self.reports.get(st.origin, NO_REPORT).get(st.origin)
                    claim = got[1] if got is not None and got[0] == st.incarnation else 0
                    lives.skip_to(st, lives.plausible(st, lost, claim), out)  # rule 25
                    lives.check_gap(st, now)
        for origin, st in sorted(lives.retired.items()):
            # A hearsay life too (rule 24): this node holds none of it, and a member stuck
            # behind its lost stretch (a joiner started at a new coordinator's 0) waits
            # for this digest alone (fuzz seed 32,101,199).
            holders = [m for m in others if m != origin]
            lost = self._lost_point(st, holders, self.retired_reports)
            if lost > st.stable:
                st.stable = lost
                if lost > st.delivered and st.phase is not Phase.HEARSAY:
                    lives.skip_to(st, lost, out)
                    lives.check_gap(st, now)

    @staticmethod
    def _lost_point(st: OriginLife, others: list[int], reports: _Reports) -> int:
        """The highest message of life ``st`` that nobody holds (``0``: none, or a member
        of ``others`` has not reported this life yet). This node's own span counts too,
        except for a HEARSAY life, of which it holds nothing (rule 24).

        The origin, when it is among ``others`` (a member of the view in this life),
        holds every message of its life above its reported ``low``, up to ``highest``:
        it drops its own messages only as stable, so its span is ``(low, highest]``
        however old its report's ``delivered`` is (rule 16; trusting that stale
        ``delivered`` declared a message the origin still buffered lost: fuzz seed
        1005943)."""
        origin = st.origin
        inc = st.incarnation
        top = st.highest
        spans: list[tuple[int, int]] = []
        if st.phase is not Phase.HEARSAY:  # this node holds none of a hearsay life (rule 24)
            spans.append((min(st.buf_low - 1, st.delivered), st.delivered))
        for m in others:
            got = reports.get(m, NO_REPORT).get(origin)
            if got is None or got[0] != inc:
                return 0
            spans.append((got[2], max(top, got[1]) if m == origin else got[1]))
        if not spans:
            return 0
        lost = max(d for _, d in spans)
        held = st.held
        while lost > 0:
            below = [low for low, d in spans if low < lost <= d]
            if below:
                lost = min(below)
            elif lost in held:  # this node can still deliver it, and then resend it
                lost -= 1
            else:
                break
        return lost

    # ------------------------------------------------------------ Stable out

    def digest(self, view_id: int) -> tuple[list[Any], bool]:
        """The Stable datagrams of view ``view_id`` (applied to this node's buffer too),
        and whether anything is unstable (rules 12, 23)."""
        lives = self._lives
        me = self._me
        others = [m for m in sorted(lives.members) if m != me]
        reports = self.reports
        buffer = self._buffer
        trim = buffer.trim
        evicted = buffer.evicted
        if evicted:  # what this node can no longer resend may be declared (rule 15)
            for origin, (inc, seq) in sorted(evicted.items()):
                st = lives.current.get(origin)
                if st is not None and st.incarnation == inc:
                    self._vouch(st, seq)
            evicted.clear()
        entries: list[StableEntry] = []
        unstable = False
        for origin, st in sorted(lives.current.items()):
            if st.delivered == PENDING:
                continue
            inc = st.incarnation
            low = st.delivered
            for m in others:
                got = reports.get(m, NO_REPORT).get(origin)
                if got is None or got[0] != inc:
                    low = st.stable
                    break
                low = min(low, got[1])
            else:
                self._vouch(st, low)
            trim(st, max(low, st.stable))
            stable = self.declared(st)
            entries.append(StableEntry(origin, inc, stable, st.highest))
            if stable < st.highest:
                unstable = True
        n = STABLE_PER_DATAGRAM
        out: list[Any] = [
            Multicast(message=Stable(view_id=view_id, entries=tuple(entries[i : i + n])))
            for i in range(0, len(entries), n)
        ]
        if lives.retired:  # the highest of each retired life, so laggards fetch its end
            old = [
                StableEntry(o, st.incarnation, min(st.stable, st.highest), st.highest)
                for o, st in sorted(lives.retired.items())
            ]
            out.extend(
                Multicast(message=Stable(view_id=view_id, entries=tuple(old[i : i + n])))
                for i in range(0, len(old), n)
            )
            unstable = True  # repeated until the retired lives are dropped
        return out, unstable
