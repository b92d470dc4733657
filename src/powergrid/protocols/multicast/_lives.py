"""The registry of origin lives: their phase changes, their streams, and their repair.

Theory of operation
-------------------
:class:`Lives` holds every life this member knows, indexed by phase, and is the
only code that changes a phase (each change goes through
:func:`~._life.next_phase`, so the table in ``_life.py`` is the single source of
truth; the dicts here are indexes kept in step with it):

* ``current``: origin -> its LIVE or DEPARTING life (its own life included);
* ``departing``: the DEPARTING ones (their ``gone_at`` is a grace timer);
* ``retired``: origin -> its one RETIRED or HEARSAY life;
* ``gappy``: the current lives with a Nak timer (an index for the deadline, not a
  phase: a gap is orthogonal to the phase);
* ``tombstones``: what DROPPED lives left.

On a life it keeps the stream: place a Data or Xmit (deliver in order and drain
what it unblocks, hold ahead of a gap, drop duplicates: rules 3, 4), start a
pending stream (rule 18), skip to a stable point (rule 17), apply a Stable digest
of the own view's coordinator (rule 13). And it is the resend requester: a Nak
timer per life with a gap, unicast Naks to the origin, then group Naks with a
rotating helper (rules 5-7). Its deadline is the earliest Nak, grace and
retired-life timer (:meth:`Lives.deadline`).

Assumes the machine tells it the view (``members``, ``leader``, ``has_view``) and
whether a coordinator part exists (``coordinator``, whose reports go with the
lives they speak of). Every call takes ``now`` in seconds; nothing here reads a
clock or draws a random number.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import TYPE_CHECKING, Any

from powergrid.protocols.multicast._buffer import ResendBuffer
from powergrid.protocols.multicast._config import (
    PENDING,
    MulticastConfig,
    MulticastStats,
    Stored,
    new_deliver,
    new_multicast,
    new_nak,
    new_send,
)
from powergrid.protocols.multicast._life import (
    CURRENT,
    OriginLife,
    Phase,
    Tombstones,
    Trigger,
    next_phase,
    stored,
)
from powergrid.types import NodeId, incarnation_newer
from powergrid.wire import KIND_APP, Stable

if TYPE_CHECKING:
    from powergrid.protocols.multicast._coordinator import StabilityCoordinator


class Lives:
    """Every origin life one machine knows, by phase (see the module docstring)."""

    __slots__ = (
        "_arm",
        "_buffer",
        "_config",
        "_me",
        "_stats",
        "coordinator",
        "current",
        "departing",
        "digest_lags",
        "gappy",
        "has_view",
        "leader",
        "members",
        "retired",
        "rtt",
        "tombstones",
    )

    def __init__(
        self,
        config: MulticastConfig,
        stats: MulticastStats,
        me: int,
        buffer: ResendBuffer,
        current: dict[int, OriginLife],
        retired: dict[int, OriginLife],
        arm: Callable[[float], None],
    ) -> None:
        self._config = config
        self._stats = stats
        self._me = me
        self._buffer = buffer
        self._arm = arm  # starts the Status or Stable timer if idle (the machine's)
        self.current = current
        self.retired = retired
        self.departing: dict[int, OriginLife] = {}
        self.gappy: dict[int, OriginLife] = {}
        self.tombstones = Tombstones()
        self.members: dict[int, int] = {}  # member -> incarnation, of the current view
        self.leader = 0  # the view's leader (the stability coordinator), 0 if none
        self.has_view = False
        self.coordinator: StabilityCoordinator | None = None  # while this node coordinates
        self.rtt: float | None = None
        """The smoothed repair round trip (seconds, a Nak to the delivery it brings), or None
        before the first; re-asks wait :meth:`reask_interval`."""
        self.digest_lags = False
        """The own coordinator's last Stable declared less of some current life than this
        member delivered: it has not heard (rule 11)."""

    # ------------------------------------------------------------ phase changes

    def begin(self, origin: int, inc: int, start: int, now: float) -> OriginLife:
        """A new current life of ``origin`` in ``inc``, its stream after ``start``.

        The life it replaces is RETIRED, or ABANDONED if its start was unknown (rule
        1). A DROPPED life that comes back resumes after what was delivered of it
        (never delivering anything twice) with the stable point known (rule 22). A
        life the view does not list starts DEPARTING, so a forged incarnation cannot
        shut out the listed life for good (rule 2).
        """
        old = self.current.get(origin)
        if old is not None:
            if incarnation_newer(inc, old.incarnation) and old.delivered != PENDING:
                self._retire(old, now)
            else:
                self._leave_current(old, Trigger.ABANDONED)
        known = self.tombstones.revive(origin, inc)
        if known is not None and known[1] > start:
            st = OriginLife(origin, inc, known[1], Phase.DROPPED)
            st.stable = max(known[0], start, 0)
        else:
            st = OriginLife(origin, inc, start, Phase.ABSENT if known is None else Phase.DROPPED)
        self.current[origin] = st
        if self.has_view and self.members.get(origin) != inc:
            st.phase = next_phase(st.phase, Trigger.UNLISTED)
            st.gone_at = now + self._config.flush_grace
            self.departing[origin] = st
        else:
            st.phase = next_phase(st.phase, Trigger.LISTED)
        return st

    def depart(self, st: OriginLife, now: float) -> None:
        """A view no longer lists ``st``: keep it for ``flush_grace`` (rule 22)."""
        st.phase = next_phase(st.phase, Trigger.UNLISTED)
        st.gone_at = now + self._config.flush_grace
        self.departing[st.origin] = st

    def relist(self, st: OriginLife) -> None:
        """A view lists ``st`` again within its grace: it keeps its stream (rule 22)."""
        st.phase = next_phase(st.phase, Trigger.LISTED)
        st.gone_at = None
        del self.departing[st.origin]

    def _leave_current(self, st: OriginLife, trigger: Trigger) -> None:
        """``st`` stops being its origin's current life (dropped or abandoned)."""
        origin = st.origin
        st.phase = next_phase(st.phase, trigger)
        del self.current[origin]
        self._buffer.release(st)
        self.gappy.pop(origin, None)
        self.departing.pop(origin, None)
        if self.coordinator is not None:
            self.coordinator.forget(origin)

    def _retire(self, st: OriginLife, now: float) -> None:
        """A newer life replaced ``st`` (a restart): keep it as the origin's retired life for
        ``flush_grace``, so members can still fetch its last messages from whoever
        delivered them (rule 23). The coordinator's reports of it go with it."""
        origin = st.origin
        st.phase = next_phase(st.phase, Trigger.REPLACED)
        del self.current[origin]
        self.gappy.pop(origin, None)
        self.departing.pop(origin, None)
        prev = self.retired.get(origin)
        if prev is not None:
            self.drop_past(prev, Trigger.SUPERSEDED)
        if self.coordinator is not None:
            self.coordinator.retire(origin, st.incarnation)
        st.gone_at = now + self._config.flush_grace
        st.nak_due = None
        st.tries = st.group_round = 0
        self.retired[origin] = st  # its buffer stays counted
        self.check_gap(st, now)

    def hear(self, origin: int, inc: int, now: float) -> OriginLife:
        """A HEARSAY life ``inc`` of ``origin``, in its retired slot for ``flush_grace``
        (rule 24): nothing of it is held, delivered or declared stable here."""
        prev = self.retired.get(origin)
        if prev is not None:
            self.drop_past(prev, Trigger.SUPERSEDED)
        st = self.retired[origin] = OriginLife(origin, inc, 0, Phase.ABSENT)
        st.phase = next_phase(st.phase, Trigger.HEARD)
        st.gone_at = now + self._config.flush_grace
        return st

    def regrace(self, now: float) -> None:
        """A view admitted a member (rule 29): every retired slot is kept ``flush_grace``
        from now at least, so a member that comes back holding a retired life's last
        messages can still hand them to the members that missed them."""
        until = now + self._config.flush_grace
        for origin in sorted(self.retired):
            st = self.retired[origin]
            if st.gone_at is not None and st.gone_at < until:
                st.gone_at = until

    def drop_past(self, st: OriginLife, trigger: Trigger) -> None:
        """``st`` leaves its origin's retired slot (SUPERSEDED, GRACE_OVER or DEPOSED);
        a RETIRED life whose grace is over is remembered (rule 22)."""
        origin = st.origin
        st.phase = next_phase(st.phase, trigger)
        if st.phase is Phase.DROPPED:
            self.tombstones.remember(st)
        del self.retired[origin]
        self._buffer.release(st)
        if self.coordinator is not None:
            self.coordinator.forget_retired(origin)

    def drop_hearsay(self) -> None:
        """This node stops coordinating: its HEARSAY lives were digest state only (rule 24)."""
        for origin in sorted(self.retired):
            st = self.retired[origin]
            if st.phase is Phase.HEARSAY:
                self.drop_past(st, Trigger.DEPOSED)

    def expire(self, now: float, out: list[Any]) -> bool:
        """Run the Nak and grace timers due at ``now``; whether any life was dropped."""
        dropped = False
        gappy = self.gappy
        for origin in sorted(gappy):
            st = gappy[origin]
            if st.nak_due is not None and st.nak_due <= now:
                self.send_nak(st, now, out)
        retired = self.retired
        for origin in sorted(retired):
            st = retired[origin]
            if st.gone_at is not None and st.gone_at <= now:
                self.drop_past(st, Trigger.GRACE_OVER)
                dropped = True
            elif st.nak_due is not None and st.nak_due <= now:
                self.send_nak(st, now, out)
        departing = self.departing
        for origin in sorted(o for o, st in departing.items() if st.gone_at <= now):  # type: ignore[operator]
            st = departing[origin]
            self._leave_current(st, Trigger.GRACE_OVER)
            self.tombstones.remember(st)
            dropped = True
        return dropped

    def deadline(self, best: float | None) -> float | None:
        """The earlier of ``best`` and every Nak, grace and retired-life timer."""
        for st in self.gappy.values():
            due = st.nak_due
            if due is not None and (best is None or due < best):
                best = due
        for st in self.departing.values():
            due = st.gone_at
            if due is not None and (best is None or due < best):
                best = due
        for st in self.retired.values():
            for due in (st.nak_due, st.gone_at):
                if due is not None and (best is None or due < best):
                    best = due
        return best

    # ------------------------------------------------------------ questions

    def unknown_start(self, seq: int) -> int:
        """Where the stream of an origin we have no state for starts, on a message ``seq``
        (rules 18-21; :meth:`begin` resumes a dropped life after what we delivered)."""
        if seq == 1 or self.coordinator is not None:
            return 0
        return PENDING

    def unlisted(self, origin: int, inc: int) -> bool:
        """Whether the view lists ``origin`` in another life than ``inc``: a digest then
        says nothing of the listed life, and must not start (or keep alive) another one
        (rule 2)."""
        listed = self.members.get(origin)
        return listed is not None and listed != inc

    def dropped(self, origin: int, inc: int) -> bool:
        """Whether this life of ``origin`` left the view and its state was dropped after grace."""
        return self.tombstones.covers(origin, inc) and origin not in self.members

    def past_life(self, origin: int, inc: int, current: OriginLife | None) -> OriginLife | None:
        """The retired (or hearsay) life a message or digest entry of ``origin``'s life
        ``inc`` belongs to, ``current`` being the origin's current life: none if it is of
        the current life, and the retired one also when there is no current life (a
        retired life can outlive its successor, rule 29)."""
        if current is not None and inc == current.incarnation:
            return None
        return self.retired_life(origin, inc)

    def retired_life(self, origin: int, inc: int) -> OriginLife | None:
        """``origin``'s past life (RETIRED or HEARSAY) if it is life ``inc``."""
        old = self.retired.get(origin)
        return old if old is not None and old.incarnation == inc else None

    # ------------------------------------------------------------ streams

    def place(self, st: OriginLife, seq: int, msg: Stored, now: float) -> list[Any]:
        """Deliver (with what it unblocks), hold or drop message ``seq`` of ``st`` (rule 3)."""
        st.highest = max(st.highest, seq)
        st.seen = max(st.seen, seq)  # (the in-order fast path leaves it: delivered covers it)
        out: list[Any] = []
        if seq <= st.delivered or seq in st.held:
            self._stats.duplicates += 1
        elif seq == st.delivered + 1:
            asked = st.asked_at
            if asked is not None:  # a repair round trip (or a late Data: a shorter one)
                st.asked_at = None
                rtt = self.rtt
                self.rtt = now - asked if rtt is None else rtt + (now - asked - rtt) / 8
            self.deliver(st, seq, msg, out)
            self.drain(st, out)
            st.tries = st.group_round = 0  # progress (rule 7)
            self._arm(now)
        elif len(st.held) >= self._config.max_held:
            # Full: keep the messages nearest the gap, which repair fills next; the
            # farthest one goes (this one, if it is the farthest), repaired later.
            self._stats.held_dropped += 1
            far = max(st.held)
            if seq < far:
                del st.held[far]
                st.held[seq] = msg
        else:
            st.held[seq] = msg
        return out

    def deliver(self, st: OriginLife, seq: int, msg: Stored, out: list[Any]) -> None:
        """Deliver ``seq`` of ``st`` and keep it in the resend buffer (rule 10)."""
        self.keep(st, seq, msg)
        out.append(new_deliver(st.origin, st.incarnation, seq, msg.kind, msg.payload))

    def keep(self, st: OriginLife, seq: int, msg: Stored) -> None:
        """:meth:`deliver` without the ``Deliver`` action (the caller makes it, or its
        equivalent): ``seq`` of ``st`` is delivered and kept in the resend buffer."""
        st.delivered = seq
        st.buf[seq] = stored(msg.kind, msg.payload)
        buffer = self._buffer
        size = buffer.size = buffer.size + 1
        self._stats.delivered += 1
        if size > self._stats.peak_buffer:
            buffer.new_peak(size, self.coordinator is not None)

    def drain(self, st: OriginLife, out: list[Any]) -> None:
        """Deliver held messages that are now in order (rule 3): :meth:`deliver` of each,
        in one loop (a repair under loss drains most of a stream)."""
        held = st.held
        if not held:
            return
        seq = st.delivered + 1
        msg = held.pop(seq, None)
        if msg is None:
            return
        buffer = self._buffer
        stats = self._stats
        origin, inc = st.origin, st.incarnation
        coordinating = self.coordinator is not None
        while msg is not None:
            kind, payload = msg.kind, msg.payload
            st.delivered = seq
            st.buf[seq] = payload if kind == KIND_APP else (kind, payload)  # (as stored())
            size = buffer.size = buffer.size + 1
            stats.delivered += 1
            if size > stats.peak_buffer:
                buffer.new_peak(size, coordinating)
            out.append(new_deliver(origin, inc, seq, kind, payload))
            if not held:
                break
            seq += 1
            msg = held.pop(seq, None)

    def start(self, st: OriginLife, start: int, out: list[Any]) -> None:
        """A pending stream starts after ``start``: drop older held, deliver the rest (rule 18)."""
        st.delivered = start
        st.buf_low = start + 1
        st.stable = max(st.stable, start)
        for seq in sorted(s for s in st.held if s <= start):
            del st.held[seq]
        self.drain(st, out)

    def skip_to(self, st: OriginLife, stable: int, out: list[Any]) -> None:
        """Stable moved past what we delivered: skip everything up to it, then go on from it.

        Messages held up to ``stable`` are dropped (skipped) too: delivering them would
        leave gaps between deliveries, so the stream jumps once, at the lost point (rule 17).
        """
        held = st.held
        for seq in [s for s in held if s <= stable]:
            del held[seq]
        self._stats.skipped += stable - st.delivered
        st.delivered = stable
        self.drain(st, out)
        st.tries = st.group_round = 0

    def plausible(self, st: OriginLife, point: int, claim: int = 0) -> int:
        """``point`` (a stable point a digest names for ``st``), but no further than the
        origin was seen to send (a Data or Xmit received), delivered, or ``claim`` (what
        the origin itself reported delivering, at the coordinator): a forged or corrupted
        digest cannot move this member's point beyond what the origin has sent, after
        which its real messages would be dropped as duplicates (rule 25)."""
        cap = max(st.seen, st.delivered, claim)
        if point > cap:
            self._stats.implausible += 1
            return cap
        return point

    def take_digest(self, msg: Stable, now: float) -> list[Any]:
        """Apply a Stable of the own view's coordinator (rule 14 checked by the caller):
        trim to ``stable`` and nak up to ``highest`` (rule 13), start a joiner's streams
        (rule 18), skip lost stretches (rule 17), learn how far retired lives went (rule 23),
        send past forged messages of our own life the members delivered (rule 26).
        Returns the deliveries it causes."""
        out: list[Any] = []
        trim = self._buffer.trim
        origins = self.current
        lags = False
        for origin, inc, stable, highest in msg.entries:
            st = origins.get(origin)
            if origin == self._me:
                if st is not None and inc == st.incarnation:
                    trim(st, min(stable, st.delivered))  # rule 13
                    if (
                        stable == st.delivered
                        and 0 < highest - stable <= self._config.max_nak_range
                    ):
                        # rule 26: members delivered seqs of our life we never sent (forged):
                        # send past them; we hold none of them (low = highest), so members
                        # still missing them are told they are lost (rule 16)
                        self._stats.overtaken += 1
                        st.delivered = st.highest = highest
                        st.buf_low = highest + 1
                    lags = lags or stable < st.delivered
                continue
            if self.unlisted(origin, inc) and self.retired_life(origin, inc) is None:
                continue  # (rule 2; a retired life is repaired for its flush_grace, never revived)
            old = self.past_life(origin, inc, st)
            if old is not None:  # rule 23: learn how far the retired life went
                if stable > old.delivered:
                    self.skip_to(old, self.plausible(old, stable), out)  # rule 25
                old.highest = max(old.highest, highest)
                self.check_gap(old, now)
                continue
            if st is None:
                if self.dropped(origin, inc):
                    continue
                st = self.begin(origin, inc, stable, now)  # a joiner starts here (rule 18)
            elif inc != st.incarnation:
                if incarnation_newer(st.incarnation, inc):
                    continue
                st = self.begin(origin, inc, stable, now)
            elif st.delivered == PENDING:
                if st.seen:  # held messages show how far the origin went (rule 25)
                    stable = self.plausible(st, stable)
                self.start(st, stable, out)  # rule 18
            else:
                told, stable = stable, self.plausible(st, stable)  # rule 25
                if told > stable:
                    st.claimed = max(st.claimed, told)  # asked beyond, to make it plausible
                if stable > st.delivered:
                    self.skip_to(st, stable, out)  # rule 17
            trim(st, stable)  # rule 13
            st.highest = max(st.highest, highest)
            self.check_gap(st, now)  # behind highest: nak (rule 13)
            lags = lags or stable < st.delivered
        self.digest_lags = lags
        return out

    def take_highest(self, msg: Stable, now: float) -> None:
        """Take only the ``highest`` of a Stable of a newer view than this node's, from a
        member of its view (rule 14: such a digest may not make it drop, skip or start
        anything): a life it keeps, current or retired, never its own, naks up to there
        (rule 13). Every ``highest`` is what some member reported delivering, so it only
        makes this node ask holders for what it missed, before it installs that view, and
        before the grace of a retired life it lacks the end of runs out."""
        for origin, inc, _, highest in msg.entries:
            if origin == self._me:
                continue
            st = self.current.get(origin)
            if st is None or st.incarnation != inc:
                st = self.retired_life(origin, inc)
                if st is None or st.phase is not Phase.RETIRED:
                    continue  # no state of it (nothing is started), or hearsay (rule 24)
            if st.delivered == PENDING or highest <= st.highest:
                continue
            st.highest = highest
            self.check_gap(st, now)

    # ------------------------------------------------------------ the resend requester

    def check_gap(self, st: OriginLife, now: float) -> None:
        """Start, advance or stop ``st``'s Nak timer to match its gap (rule 5): a fresh gap
        (a missing seq never asked) is asked ``nak_delay`` from now, a known one is asked
        again ``nak_interval`` after the last re-ask."""
        if st.delivered != PENDING and st.highest > st.delivered:
            cfg = self._config
            due = st.nak_due
            if self._fresh(st):
                fresh_due = now + cfg.nak_delay
                if due is None or fresh_due < due:
                    due = fresh_due
            elif due is None:
                due = max(now + cfg.nak_delay, st.last_nak + self.reask_interval())
            if due is not st.nak_due:
                if st.nak_due is None:
                    if st.phase in CURRENT:
                        self.gappy[st.origin] = st
                    self._arm(now)
                st.nak_due = due
        elif st.nak_due is not None:
            st.nak_due = None
            st.tries = st.group_round = 0
            if st.phase in CURRENT:
                del self.gappy[st.origin]

    def _fresh(self, st: OriginLife) -> bool:
        """Whether ``st`` misses a seq within ``max_nak_range`` of its delivered point that
        no Nak has asked for yet; moves ``st.scan`` over what is held on the way
        (amortised O(1) per message)."""
        end = min(st.highest, st.delivered + self._config.max_nak_range)
        seq = max(st.scan, st.delivered) + 1
        held = st.held
        while seq <= end and seq in held:
            seq += 1
        st.scan = seq - 1
        return seq <= end

    def send_nak(self, st: OriginLife, now: float, out: list[Any]) -> None:
        """Ask for missing ranges within ``max_nak_range`` after the delivered point: every
        one once ``nak_interval`` has passed since the last re-ask (a try, rule 5), else
        only the fresh ones, never asked before (no try); of the origin, or of the group
        with a helper after ``nak_escalate_after`` tries, at once for an origin not in the
        view or a past life (rule 6)."""
        cfg = self._config
        held = st.held
        origin = st.origin
        end = min(st.highest, st.delivered + cfg.max_nak_range)
        wait = self.reask_interval()
        reask = now >= st.last_nak + wait
        first = st.delivered + 1 if reask else max(st.scan, st.delivered) + 1
        ranges: list[tuple[int, int]] = []
        seq = first
        while seq <= end:
            if seq in held:
                seq += 1
                continue
            start = seq
            while seq <= end and seq not in held:
                seq += 1
            ranges.append((start, seq - 1))
        claimed = st.claimed
        if reask and end < claimed < st.highest:
            # rule 25: a stable point beyond what was seen of the origin is skipped to only
            # once a message past it is seen; ask for those too (the history below may be
            # held by nobody, and under flow control the origin sends nothing new)
            ranges.append((claimed + 1, min(st.highest, claimed + cfg.max_nak_range)))
        st.scan = max(st.scan, end)
        if reask:
            st.last_nak = now
        st.nak_due = st.last_nak + wait
        if ranges:
            st.asked_at = now
        stats = self._stats
        gone = st.phase not in CURRENT or (self.has_view and origin not in self.members)
        if st.tries >= cfg.nak_escalate_after or gone:
            helper = self._helper(origin, st.group_round)
            if reask:
                st.group_round += 1
            for lo, hi in ranges:
                stats.naks_sent += 1
                stats.naks_group += 1
                out.append(new_multicast(new_nak(origin, st.incarnation, lo, hi, helper)))
        else:
            to = NodeId(origin)
            for lo, hi in ranges:
                stats.naks_sent += 1
                out.append(new_send(to, new_nak(origin, st.incarnation, lo, hi, 0)))
        if reask:
            st.tries += 1

    def reask_interval(self) -> float:
        """Seconds between two re-asks of an origin's gap (rule 5): four smoothed repair
        round trips, within ``nak_interval / 10 .. nak_interval`` (``nak_interval``
        before any round trip was measured)."""
        cfg = self._config
        rtt = self.rtt
        if rtt is None:
            return cfg.nak_interval
        return min(cfg.nak_interval, max(4 * rtt, cfg.nak_interval / 10))

    def _helper(self, origin: int, round_: int) -> int:
        """Who besides the origin answers group Nak round ``round_`` (the origin if nobody):
        the coordinator first, then the other members in id order (rule 6)."""
        leader = self.leader
        skip = (self._me, origin, leader)
        candidates = [m for m in sorted(self.members) if m not in skip]
        if leader not in (0, self._me, origin):
            candidates.insert(0, leader)
        if not candidates:
            return origin
        return candidates[round_ % len(candidates)]
