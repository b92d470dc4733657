"""The multicast machine: a router from events to the parts that own them.

Theory of operation
-------------------
:class:`MulticastMachine` is the package's one public machine (the protocol is in
the package docstring and ``docs/protocols/multicast.md``, whose rule numbers the
comments cite). It owns no protocol state of its own beyond the view and the
member's Status timer; it routes each event to a part:

* ``Received(Data)`` takes the in-order fast path here (rule 3: a few dict
  lookups, one buffer insert, one ``Deliver``); any other Data or an Xmit goes to
  the registry of lives (``_lives.Lives``), which places it in the right life;
* ``Received(Nak)`` goes to the resend buffer (``_buffer.ResendBuffer``, rules 8, 9);
* ``Received(Status)`` goes to the stability coordinator
  (``_coordinator.StabilityCoordinator``), which exists only while this node is the
  view's leader (rules 11, 12, 16, 24);
* ``Received(Stable)`` of the own view's coordinator trims, starts and skips lives
  (rules 13, 14, 17, 18); of a newer view, from a member, it only raises the
  ``highest`` of lives kept here, so they nak (rule 14);
* ``ViewChanged`` moves lives between LIVE and DEPARTING (rule 22), starts or
  ends the origin's hold (rule 28) before the view's first digest, and builds or
  drops the coordinator; ``DeadlineReached`` runs the parts' timers.

``next_deadline()`` is the minimum over the parts' deadlines (the Status timer here,
the coordinator's Stable timer, the lives' Nak and grace timers), as aioquic's
``get_timer``; while no life has a gap or a grace timer it is two field reads.
Every call takes ``now`` in seconds; ``rng`` only jitters the Status period.
"""

from __future__ import annotations

import random
from collections.abc import Mapping
from typing import Any

from powergrid._dispatch import Dispatching
from powergrid.errors import PayloadTooLargeError, UsageError
from powergrid.events import DeadlineReached, Received, Send, View, ViewChanged, member_maps
from powergrid.protocols.multicast._buffer import ResendBuffer
from powergrid.protocols.multicast._config import (
    MAX_MULTICAST_PAYLOAD,
    PENDING,
    STATUS_PER_DATAGRAM,
    MulticastConfig,
    MulticastStats,
    Publish,
    Stored,
    WindowFull,
    WindowOpen,
    new_data,
    new_deliver,
    new_multicast,
)
from powergrid.protocols.multicast._coordinator import StabilityCoordinator
from powergrid.protocols.multicast._life import OriginLife, Phase
from powergrid.protocols.multicast._lives import Lives
from powergrid.types import Incarnation, NodeId, incarnation_newer
from powergrid.wire import Data, Nak, Stable, Status, StatusEntry, Xmit


class MulticastMachine(Dispatching):
    """Reliable multicast, FIFO per origin, for one group (see the package docstring).

    ``rng`` jitters the Status period; nothing else is random.
    """

    __slots__ = (
        "_blocked",
        "_buffer",
        "_config",
        "_coord",
        "_departing",
        "_gappy",
        "_lives",
        "_me",
        "_origins",
        "_own",
        "_reporting",
        "_retired",
        "_rng",
        "_stats",
        "_status_due",
        "_view",
        "_window",
    )

    _EVENTS = {
        Received: "_on_received",
        DeadlineReached: "_on_deadline",
        Publish: "_on_publish",
        ViewChanged: "_on_view_changed",
    }

    _MESSAGES = {
        Data: "_on_data",
        Xmit: "_on_xmit",
        Nak: "_on_nak",
        Status: "_on_status",
        Stable: "_on_stable",
    }

    def __init__(
        self,
        config: MulticastConfig,
        *,
        me: NodeId,
        incarnation: Incarnation,
        rng: random.Random,
    ) -> None:
        self._config = config
        self._me = me
        self._rng = rng
        self._stats = stats = MulticastStats()
        origins: dict[int, OriginLife] = {}
        retired: dict[int, OriginLife] = {}
        self._buffer = buffer = ResendBuffer(config, stats, origins, retired)
        self._lives = lives = Lives(config, stats, me, buffer, origins, retired, self._arm_reports)
        # The registry's indexes, read here on the hot paths (the same dicts, never replaced).
        self._origins = origins
        self._retired = retired
        self._gappy = lives.gappy
        self._departing = lives.departing
        self._own = lives.begin(me, incarnation, 0, 0.0)
        self._view: View | None = None
        self._reporting = False  # someone else is the coordinator: send it Status
        self._coord: StabilityCoordinator | None = None  # while this node coordinates
        self._status_due: float | None = None
        self._window = config.send_window  # rule 27 (0: off)
        self._blocked = False  # a WindowFull was returned and no WindowOpen since

    # ------------------------------------------------------------ public

    @property
    def stats(self) -> MulticastStats:
        """Counters (see :class:`MulticastStats`)."""
        return self._stats

    @property
    def me(self) -> NodeId:
        """This node's id."""
        return self._me

    @property
    def view(self) -> View | None:
        """The last view installed, or None."""
        return self._view

    @property
    def coordinator(self) -> NodeId:
        """The view's leader, who computes stability; 0 if none."""
        return NodeId(self._lives.leader)

    @property
    def buffer_size(self) -> int:
        """Messages in the resend buffer now (all origins)."""
        return self._buffer.size

    @property
    def window_room(self) -> int | None:
        """How many flow-controlled Publishes the send window takes now (rule 27); None
        without flow control (``send_window`` 0). Reading 0 asks for a WindowOpen when
        room appears, as a refused Publish does (a driver waits on it)."""
        if not self._window:
            return None
        own = self._own
        room = max(0, self._window - (own.delivered - own.stable))
        if not room:
            self._blocked = True
        return room

    @property
    def delivered(self) -> Mapping[NodeId, tuple[Incarnation, int]]:
        """Per known origin (self included): its incarnation and the highest seq delivered.

        Origins whose start is not known yet are left out. A new dict each call.
        """
        return {
            NodeId(o): (Incarnation(st.incarnation), st.delivered)
            for o, st in sorted(self._origins.items())
            if st.delivered != PENDING
        }

    def handle(self, event: object, now: float) -> list[Any]:
        """Feed one event; returns the actions to take, in order.

        Raises :class:`~powergrid.errors.UsageError` for an event of an
        unknown type or a bad :class:`Publish`, and
        :class:`~powergrid.errors.PayloadTooLargeError` for a Publish too large.
        """
        kind = type(event)
        if kind is Received:  # the hot path: skip one dispatch step for Data
            msg = event.message  # type: ignore[attr-defined]
            if type(msg) is Data:
                return self._on_data(event, msg, now)  # type: ignore[arg-type]
        handler = self._on_event.get(kind)
        if handler is None:
            raise UsageError(f"MulticastMachine cannot handle {type(event).__name__}")
        return handler(self, event, now)

    def next_deadline(self) -> float | None:
        """When the machine next needs :class:`DeadlineReached` (seconds): the earliest of
        its parts' deadlines; None while all is quiet."""
        # Called by the driver after every event: without gaps, departing origins or
        # retired lives (the steady state) it is the earlier of two fields, with no loops.
        best = self._status_due
        coord = self._coord
        if coord is not None:
            due = coord.stable_due
            if due is not None and (best is None or due < best):
                best = due
        hold = self._buffer.hold_until  # rule 28
        if hold is not None and (best is None or hold < best):
            best = hold
        if not self._gappy and not self._departing and not self._retired:
            return best
        return self._lives.deadline(best)

    # ------------------------------------------------------------ commands

    def publish(self, kind: int, payload: bytes, flow: bool, now: float) -> list[Any]:
        """``handle(Publish(kind=kind, payload=payload, flow=flow), now)``."""
        sent = self.publish_data(kind, payload, flow, now)
        if isinstance(sent, WindowFull):
            return [sent]
        own = self._own  # self-delivery (rule 10), then the multicast
        return [
            new_deliver(own.origin, own.incarnation, sent.seq, kind, payload),
            new_multicast(sent),
        ]

    def publish_data(self, kind: int, payload: bytes, flow: bool, now: float) -> Data | WindowFull:
        """:meth:`publish`, without its actions: the :class:`~powergrid.wire.Data` to
        multicast (the message is delivered to this node already, whose ``Deliver`` is the
        caller's to make), or the :class:`WindowFull` that refuses it. The node's hot path
        for every multicast it sends (no command, no action records)."""
        if not isinstance(payload, bytes):
            raise UsageError(f"payload must be bytes, not {type(payload).__name__}")
        if not 0 <= kind <= 255:
            raise UsageError(f"kind {kind} is outside 0..255")
        if len(payload) > MAX_MULTICAST_PAYLOAD:
            raise PayloadTooLargeError(
                f"payload is {len(payload)} bytes, over the {MAX_MULTICAST_PAYLOAD}-byte "
                "limit of one multicast; split it"
            )
        own = self._own
        window = self._window
        if window and flow and own.delivered - own.stable >= window:  # rule 27
            self._stats.window_full += 1
            self._blocked = True
            return WindowFull(in_flight=own.delivered - own.stable, window=window)
        seq = own.delivered + 1
        msg: Data = new_data(seq, kind, payload)
        own.delivered = own.highest = seq
        self._stats.published += 1
        self._lives.keep(own, seq, msg)  # self-delivery (rule 10: kept for resends)
        self._arm_reports(now)
        return msg

    def _on_publish(self, cmd: Publish, now: float) -> list[Any]:
        return self.publish(cmd.kind, cmd.payload, cmd.flow, now)

    # ------------------------------------------------------------ receiving

    def _on_received(self, ev: Received, now: float) -> list[Any]:
        msg = ev.message
        handler = self._on_message.get(type(msg))
        if handler is None:
            self._stats.ignored += 1
            return []
        return handler(self, ev, msg, now)

    def _on_data(self, ev: Received, msg: Data, now: float) -> list[Any]:
        origin = ev.sender
        inc = ev.incarnation
        if self.deliver_next(origin, inc, msg, now):
            return [new_deliver(origin, inc, msg.seq, msg.kind, msg.payload)]
        return self._accept(origin, inc, msg.seq, msg, now)

    def deliver_next(self, origin: int, inc: int, msg: Data, now: float) -> bool:
        """The hot path of ``Received(Data)`` (rule 3): if ``msg``, a Data of ``origin`` in
        incarnation ``inc``, is the next message of a known life with nothing held, deliver
        it and return True (its ``Deliver`` is the caller's to make); else change nothing
        and return False (then :meth:`handle` places it). The node's hot path for every
        message of a stream it receives."""
        st = self._origins.get(origin)
        seq = msg.seq
        if (
            st is not None
            and seq == st.delivered + 1
            and st.incarnation == inc
            and not st.held
            and origin != self._me
        ):
            if seq > st.highest:  # noqa: PLR1730 (faster than max() on the hot path)
                st.highest = seq
            self._lives.keep(st, seq, msg)
            if self._status_due is None and self._reporting:
                self._arm_status(now)
            elif self._window and self._reporting:
                self._credit_due(st, now)
            else:
                coord = self._coord
                if coord is not None and coord.stable_due is None:
                    coord.stable_due = now + self._config.stable_interval
            if st.nak_due is not None:
                self._lives.check_gap(st, now)
            return True
        return False

    def hold_next(self, origin: int, inc: int, msg: Data, now: float) -> bool:
        """The hot path of a ``Received(Data)`` ahead of a gap that is being repaired (rule
        3): if ``msg``, a Data of ``origin`` in incarnation ``inc``, is the next message
        the origin sends after the highest seen of a known, listed life whose gap has its
        Nak timer already, hold it and return True (nothing to deliver; it is what
        :meth:`handle` does with it, without its records); else change nothing and
        return False. While loss is repaired, most of a stream arrives this way."""
        st = self._origins.get(origin)
        seq = msg.seq
        if (
            st is None
            or seq != st.highest + 1
            or st.nak_due is None
            or seq <= st.delivered + 1
            or st.incarnation != inc
            or origin == self._me
            or self._departing  # (_accept's hold bookkeeping, rule 28)
        ):
            return False
        held = st.held
        if len(held) >= self._config.max_held:
            return False
        st.highest = seq
        if seq > st.seen:  # noqa: PLR1730 (as place() keeps it)
            st.seen = seq
        held[seq] = msg
        # Rule 5: the message after the highest seen shows no missing seq that was not
        # missing before, so the Nak timer stands as it is (a fresh gap below it set it
        # already); only the scan for fresh gaps moves over it, if it had reached it.
        if st.scan == seq - 1 and seq <= st.delivered + self._config.max_nak_range:
            st.scan = seq
        if self._window and self._reporting and self._status_due is not None:
            self._credit_due(st, now)
        return True

    def _on_xmit(self, ev: Received, msg: Xmit, now: float) -> list[Any]:
        return self._accept(msg.origin, msg.origin_incarnation, msg.seq, msg, now)  # rule 4

    def _accept(self, origin: int, inc: int, seq: int, msg: Stored, now: float) -> list[Any]:
        """A Data or Xmit of ``origin``: deliver, hold, or drop it (rules 1, 3, 18-20, 23)."""
        stats = self._stats
        if origin == self._me:
            stats.ignored += 1
            return []
        lives = self._lives
        st = self._origins.get(origin)
        old = lives.past_life(origin, inc, st)
        if old is not None:  # also once its successor was dropped: never a new life of it
            if old.phase is Phase.HEARSAY:  # a life it never had: digested, not taken
                stats.ignored += 1
                return []
            st = old  # a retired life's messages are taken like a live one's (rule 23)
        elif st is None:
            st = lives.begin(origin, inc, lives.unknown_start(seq), now)
        elif inc != st.incarnation:
            if incarnation_newer(st.incarnation, inc):
                stats.stale += 1  # rule 1
                return []
            st = lives.begin(origin, inc, 0, now)  # we knew its last life: starts at 1
        out = lives.place(st, seq, msg, now)
        lives.check_gap(st, now)
        self._buffer.sync_hold(self._own, bool(self._departing), now)  # rule 28
        if self._window and self._reporting and self._status_due is not None:
            self._credit_due(st, now)
        return out

    def _on_nak(self, ev: Received, msg: Nak, now: float) -> list[Any]:
        me = self._me
        requester = ev.sender
        if requester == me or (msg.helper and me not in (msg.origin, msg.helper)):  # rule 8
            self._stats.ignored += 1
            return []
        lives = self._lives
        st = self._origins.get(msg.origin)
        if st is not None and incarnation_newer(st.incarnation, msg.origin_incarnation):
            st = lives.retired_life(msg.origin, msg.origin_incarnation) or st
        if st is None or st.incarnation != msg.origin_incarnation:
            if st is not None and incarnation_newer(st.incarnation, msg.origin_incarnation):
                self._stats.stale += 1
            else:
                self._stats.ignored += 1
            return []
        return self._buffer.answer(requester, msg, st, now, len(lives.members))

    def _on_status(self, ev: Received, msg: Status, now: float) -> list[Any]:
        coord = self._coord
        if coord is None:  # rule 14: Status is only for the coordinator
            self._stats.ignored += 1
            return []
        member = ev.sender
        if self._lives.members.get(member) != ev.incarnation or member == self._me:
            self._stats.stale += 1
            return []
        out = coord.on_status(member, msg, now)
        self._buffer.sync_hold(self._own, bool(self._departing), now)  # rule 28
        return out

    def _on_stable(self, ev: Received, msg: Stable, now: float) -> list[Any]:
        view = self._view
        if view is not None and msg.view_id < view.view_id:
            self._stats.stale += 1
            return []
        # Rule 14: only the coordinator of this node's own view may make it drop or skip
        # anything: a digest of a view it is not in (yet), or with no view, says what
        # *other* members delivered, and trusting it dropped messages members of our view lack.
        lives = self._lives
        if (
            view is None
            or msg.view_id != view.view_id
            or ev.sender != view.leader
            or lives.members.get(ev.sender) != ev.incarnation
            or self._coord is not None
        ):
            self._stats.ignored += 1
            if (
                view is not None
                and msg.view_id > view.view_id
                and ev.sender != self._me
                and lives.members.get(ev.sender) == ev.incarnation
            ):
                # Rule 14: yet a member's digest of a view this node has not installed
                # (yet) names how far lives went, which only makes it nak: a member that
                # lags in membership would otherwise wait for the view to learn of a last
                # message, and a retired life's grace may run out first (fresh seed
                # 36,410,936 with --supply-steps).
                lives.take_highest(msg, now)
            return []
        out = lives.take_digest(msg, now)
        if self._needs_status():  # e.g. the digest lags what we delivered: tell it
            if self._status_due is None:
                self._arm_status(now)
        else:
            self._status_due = None
        if self._blocked:
            self._open_window(out)
        return out

    def _stable_messages(self) -> tuple[list[Any], bool]:
        """The coordinator's digest (applied locally too), and whether anything is unstable."""
        assert self._coord is not None
        assert self._view is not None
        return self._coord.digest(self._view.view_id)

    # ------------------------------------------------------------ views

    def _on_view_changed(self, ev: ViewChanged, now: float) -> list[Any]:
        view = ev.view
        me = self._me
        lives = self._lives
        old_members = lives.members
        self._view = view
        members = lives.members = member_maps(view.members)[1]  # shared: read only
        lives.leader = view.leader
        lives.has_view = True
        lives.digest_lags = False  # the last Stable was of another view
        coordinating = view.leader == me
        self._reporting = view.leader not in (0, me)
        self._buffer.keep_requesters(members)
        for origin, st in sorted(self._origins.items()):  # rule 22
            if origin == me:
                continue
            if members.get(origin) == st.incarnation:
                if st.phase is Phase.DEPARTING:
                    lives.relist(st)
            elif st.phase is Phase.LIVE:
                lives.depart(st, now)
        # Rule 28: the hold starts (or its end is set) before this view's first digest, which
        # a coordinator applies to its own stream at once: started after it, the hold began
        # above the messages that the view without the departed member had just found stable
        # (fuzz seed 26202255 at 20 servers with --supply-steps).
        self._buffer.sync_hold(self._own, bool(self._departing), now)
        if any(m not in old_members for m in members if m != me):
            lives.regrace(now)  # rule 29: one who comes back may hold a retired life's end
        out: list[Any] = []
        coord = self._coord
        if coordinating:
            if coord is None:  # becomes coordinator: a fresh part, with nothing reported
                coord = StabilityCoordinator(self._config, me, self._own, lives, self._buffer)
                self._coord = lives.coordinator = coord
            else:
                coord.keep_reports(members, old_members)  # rule 12
            self._status_due = None
            coord.start_pending(now, out)  # rule 21
            coord.stable_left = self._config.stable_repeats  # rule 12
            stable, unstable = self._stable_messages()
            out.extend(stable)
            self._stats.stable_sent += len(stable)
            coord.stable_due = (
                now + self._config.stable_interval if unstable or coord.stable_left else None
            )
            if self._blocked:
                self._open_window(out)
        else:
            lives.drop_hearsay()  # rule 24: digest state only
            if coord is not None:  # stops coordinating: the part and its state go
                self._coord = lives.coordinator = None
            if self._needs_status():
                if self._status_due is None:
                    self._arm_status(now)
            else:
                self._status_due = None
        return out

    # ------------------------------------------------------------ timers

    def _on_deadline(self, ev: DeadlineReached, now: float) -> list[Any]:
        out: list[Any] = []
        if self._lives.expire(now, out) and not self._needs_status():
            self._status_due = None
        self._buffer.sync_hold(self._own, bool(self._departing), now)  # rule 28
        if self._status_due is not None and self._status_due <= now:
            if self._needs_status():
                sent = self._status_messages()
                self._stats.status_sent += len(sent)
                out.extend(sent)
                self._arm_status(now)
            else:
                self._status_due = None
        coord = self._coord
        if coord is not None and coord.stable_due is not None and coord.stable_due <= now:
            coord.skip_lost(now, out)  # rule 16
            sent, unstable = self._stable_messages()
            self._stats.stable_sent += len(sent)
            out.extend(sent)
            if coord.stable_left:
                coord.stable_left -= 1
            coord.stable_due = (
                now + self._config.stable_interval if unstable or coord.stable_left else None
            )
        if self._blocked:
            self._open_window(out)
        return out

    # ------------------------------------------------------------ flow control (rule 27)

    def _open_window(self, out: list[Any]) -> None:
        """After a WindowFull: say WindowOpen once stability has made room."""
        room = self.window_room
        if room:
            self._blocked = False
            out.append(WindowOpen(room=room))

    def _credit_due(self, st: OriginLife, now: float) -> None:
        """A member that delivered half a send window of ``st`` beyond what its last Status
        told and the last Stable declared reports now, not at its Status timer, so a
        flow-controlled origin gets its credit within a round trip (rule 27)."""
        if st.delivered - max(st.stable, st.reported) >= (self._window + 1) // 2:
            due = self._status_due
            if due is None or due > now:
                self._status_due = now

    # ------------------------------------------------------------ the member's reports

    def _arm_reports(self, now: float) -> None:
        """Start the Status timer (member) or the Stable timer (coordinator) if idle."""
        if self._reporting:
            if self._status_due is None:
                self._arm_status(now)
        else:
            coord = self._coord
            if coord is not None and coord.stable_due is None:
                coord.stable_due = now + self._config.stable_interval

    def _arm_status(self, now: float) -> None:
        cfg = self._config
        jitter = cfg.status_jitter * self._rng.random() if cfg.status_jitter else 0.0
        self._status_due = now + cfg.status_interval * (1.0 - jitter)

    def _needs_status(self) -> bool:
        """A member reports while it holds unstable messages, has gaps, or has delivered
        more of some origin than the coordinator last declared stable (it may have
        skipped there, so its buffer is empty, and the coordinator still needs to hear
        it: rule 11)."""
        if not self._reporting:
            return False
        if self._buffer.size > 0 or self._gappy or self._lives.digest_lags:
            return True
        if any(st.nak_due is not None for st in self._retired.values()):
            return True
        return any(st.delivered > st.stable for st in self._origins.values())

    def _status_messages(self) -> list[Any]:
        """This member's Status datagrams to the coordinator (rule 11); retired lives in
        datagrams of their own, for an origin appears once per datagram (rule 23)."""
        entries = [
            StatusEntry(o, st.incarnation, st.delivered, min(st.buf_low - 1, st.delivered))
            for o, st in sorted(self._origins.items())
            if st.delivered != PENDING
        ]
        for st in self._origins.values():
            st.reported = st.delivered  # (rule 27: what credit this Status carries)
        assert self._view is not None
        view_id = self._view.view_id
        to = NodeId(self._lives.leader)
        n = STATUS_PER_DATAGRAM
        out: list[Any] = [
            Send(to=to, message=Status(view_id=view_id, entries=tuple(entries[i : i + n])))
            for i in range(0, len(entries), n)
        ]
        if self._retired:
            old = [
                StatusEntry(o, st.incarnation, st.delivered, min(st.buf_low - 1, st.delivered))
                for o, st in sorted(self._retired.items())
            ]
            out.extend(
                Send(to=to, message=Status(view_id=view_id, entries=tuple(old[i : i + n])))
                for i in range(0, len(old), n)
            )
        return out
