"""Multicast's public records: its config, its command and action, its counters, its sizes.

Theory of operation
-------------------
Plain values shared by every part of the package (see the package docstring for
the protocol): :class:`MulticastConfig` validates its own relations when built
(:class:`~powergrid.errors.ConfigError` names the field), :class:`Publish` and
:class:`Deliver` are frozen records, :class:`MulticastStats` holds counters that
only grow. Nothing here keeps state between calls or reads a clock.
"""

from __future__ import annotations

import math
import struct
from typing import Final

import attrs

from powergrid._checks import config_problem, integer, real
from powergrid.events import Multicast, Send
from powergrid.types import Incarnation, NodeId
from powergrid.wire import HEADER_SIZE, MAX_DATAGRAM, Data, Nak, Xmit, record_builder

MAX_MULTICAST_PAYLOAD: Final = MAX_DATAGRAM - HEADER_SIZE - struct.calcsize("!QIQB")
"""The largest payload one :class:`Publish` can carry (bytes): what still fits
when a holder resends it inside an :class:`~powergrid.wire.Xmit`."""

_LIST_HEAD: Final = struct.calcsize("!QH")  # view_id, entry count
STATUS_PER_DATAGRAM: Final = (MAX_DATAGRAM - HEADER_SIZE - _LIST_HEAD) // struct.calcsize("!QIQQ")
"""Entries in one Status datagram; more origins take more datagrams."""
STABLE_PER_DATAGRAM: Final = (MAX_DATAGRAM - HEADER_SIZE - _LIST_HEAD) // struct.calcsize("!QIQQ")
"""Entries in one Stable datagram; more origins take more datagrams."""

PENDING: Final = -1
"""``delivered`` of a life whose stream start is not known yet (a joiner's, rule 18)."""
NO_REPORT: Final[dict[int, tuple[int, int, int]]] = {}
"""An empty report (shared, read only)."""

Stored = Data | Xmit
"""A message of an origin's stream as it arrived (held ahead of a gap)."""


# ----------------------------------------------------------------- config


@attrs.frozen(kw_only=True)
class MulticastConfig:
    """Settings of :class:`MulticastMachine`. Times in seconds, sizes in messages.

    Raises :class:`~powergrid.errors.ConfigError` for a value out of range or
    values that contradict each other.
    """

    nak_delay: float = attrs.field(default=0.0, validator=real)
    """How long a fresh gap may last before it is asked (reordering tolerance; 0: at once)."""
    nak_interval: float = attrs.field(default=0.05, validator=real)
    """Most time between two re-asks of one origin's gap (the re-ask interval is four
    measured repair round trips, at least a tenth of this); also the Xmit rate window."""
    nak_escalate_after: int = attrs.field(default=2, validator=integer)
    """Unicast Naks to the origin without progress before Naks go to the group."""
    max_nak_range: int = attrs.field(default=64, validator=integer)
    """Most messages one Nak asks for, and most one Nak is answered with."""
    max_xmit_per_interval: int = attrs.field(default=256, validator=integer)
    """Most Xmits this node sends one requester per ``nak_interval``."""
    max_held: int = attrs.field(default=1024, validator=integer)
    """Most messages held ahead of a gap, per origin."""
    max_buffer: int = attrs.field(default=10_000, validator=integer)
    """Most delivered messages kept for resending, all origins together (without flow
    control; under it the send windows bound the buffer and nothing is evicted)."""
    status_interval: float = attrs.field(default=0.25, validator=real)
    """Between two Status reports to the coordinator, while any are needed."""
    status_jitter: float = attrs.field(default=0.1, validator=real)
    """Up to this fraction of ``status_interval`` is taken off each period, at random."""
    stable_interval: float = attrs.field(default=0.25, validator=real)
    """Between two Stable digests of the coordinator, while any are needed."""
    stable_repeats: int = attrs.field(default=3, validator=integer)
    """After a view change the coordinator sends a Stable at once and this many more."""
    flush_grace: float = attrs.field(default=2.0, validator=real)
    """How long the state of an origin that left the view is kept."""
    send_window: int = attrs.field(default=0, validator=integer)
    """Flow control (rule 27): the most of this node's own messages unstable at once
    (published, not yet declared stable by its view's coordinator); a flow-controlled
    :class:`Publish` beyond it is refused with :class:`WindowFull`. 0: no window."""

    def __attrs_post_init__(self) -> None:
        for name in (
            "nak_delay",
            "nak_interval",
            "status_interval",
            "status_jitter",
            "stable_interval",
            "flush_grace",
        ):
            value = getattr(self, name)
            if not math.isfinite(value):
                raise config_problem(self, f"{name} is {value}; set it to a finite number")
        if self.nak_delay < 0:
            raise config_problem(
                self, f"nak_delay is {self.nak_delay}; set it to 0 seconds or more"
            )
        for name in ("nak_interval", "status_interval", "stable_interval"):
            if getattr(self, name) <= 0:
                raise config_problem(
                    self, f"{name} is {getattr(self, name)}; set it above 0 seconds"
                )
        if self.nak_delay > self.nak_interval:
            raise config_problem(
                self,
                f"nak_delay ({self.nak_delay}) is above nak_interval ({self.nak_interval}); "
                "set nak_delay <= nak_interval (the first Nak must not wait longer than a repeat)",
            )
        if not 0 <= self.status_jitter < 1:
            raise config_problem(
                self, f"status_jitter is {self.status_jitter}; set it within 0..1 (not 1)"
            )
        if self.nak_escalate_after < 0:
            raise config_problem(
                self, f"nak_escalate_after is {self.nak_escalate_after}; set it to 0 or more"
            )
        for name in ("max_nak_range", "max_held", "max_buffer"):
            if getattr(self, name) < 1:
                raise config_problem(self, f"{name} is {getattr(self, name)}; set it to 1 or more")
        if self.max_xmit_per_interval < self.max_nak_range:
            raise config_problem(
                self,
                f"max_xmit_per_interval ({self.max_xmit_per_interval}) is below max_nak_range "
                f"({self.max_nak_range}); set it >= max_nak_range so one Nak can be answered",
            )
        if self.send_window < 0:
            raise config_problem(
                self, f"send_window is {self.send_window}; set it to 0 (no flow control) or more"
            )
        if self.stable_repeats < 0:
            raise config_problem(
                self, f"stable_repeats is {self.stable_repeats}; set it to 0 or more"
            )
        least_grace = self.nak_delay + (self.nak_escalate_after + 1) * self.nak_interval
        if self.flush_grace < least_grace:
            raise config_problem(
                self,
                f"flush_grace ({self.flush_grace}) is below nak_delay ({self.nak_delay}) + "
                f"(nak_escalate_after ({self.nak_escalate_after}) + 1) * nak_interval "
                f"({self.nak_interval}) = {least_grace:g}; raise it so "
                "survivors can ask the group for a departed origin's last messages",
            )


# ------------------------------------------------------------ events, actions


@attrs.frozen(kw_only=True)
class Publish:
    """Command: multicast ``payload`` (of ``kind``, 0..255) to the group, reliably, FIFO.

    ``handle`` raises :class:`~powergrid.errors.PayloadTooLargeError` if the
    payload exceeds :data:`MAX_MULTICAST_PAYLOAD` bytes and
    :class:`~powergrid.errors.UsageError` for a ``kind`` outside 0..255 or a
    payload that is not bytes.
    """

    kind: int
    payload: bytes
    flow: bool = True
    """Whether the send window applies (rule 27). The node's own protocol messages (the
    market's) pass ``False``: they are never refused, and count in the window."""


@attrs.frozen(kw_only=True)
class WindowFull:
    """Result of a flow-controlled :class:`Publish` refused by the send window (rule 27):
    ``in_flight`` of this node's messages are unstable, ``window`` is ``send_window``.
    Nothing was sent and no seq was used; publish again after :class:`WindowOpen`."""

    in_flight: int
    window: int


@attrs.frozen(kw_only=True)
class WindowOpen:
    """After a :class:`WindowFull`: stability freed ``room`` places in the send window."""

    room: int


@attrs.frozen(kw_only=True)
class Deliver:
    """Hand the app message ``seq`` of ``origin`` (in ``incarnation``): ``kind`` and ``payload``."""

    origin: NodeId
    incarnation: Incarnation
    seq: int
    kind: int
    payload: bytes


# Positional constructors for the hot paths (see wire.record_builder): the same
# records as the keyword constructors, built in about half the time.
new_deliver: Final = record_builder(Deliver)
new_data: Final = record_builder(Data)
new_multicast: Final = record_builder(Multicast)
new_send: Final = record_builder(Send)  # to, message
new_xmit: Final = record_builder(Xmit)  # origin, origin_incarnation, seq, kind, payload
new_nak: Final = record_builder(Nak)  # origin, origin_incarnation, first, last, helper


@attrs.define(kw_only=True)
class MulticastStats:
    """Counters of one :class:`MulticastMachine` (mutable ints, only grow)."""

    published: int = 0
    delivered: int = 0
    """Deliver actions, own messages included."""
    duplicates: int = 0
    """Data or Xmit already delivered or held."""
    stale: int = 0
    """Messages of an older incarnation, Stable of an older view, Status of a non-member."""
    ignored: int = 0
    """Messages not meant for this node's role (e.g. Status when not coordinator), and
    Stable digests of a view other than this node's own."""
    held_dropped: int = 0
    """Messages ahead of a gap dropped because ``max_held`` was reached."""
    skipped: int = 0
    """Messages never delivered because Stable moved past them (see the buffer cap)."""
    implausible: int = 0
    """Stable points beyond what the origin was seen to send, applied only up to there
    (rule 25: a forged or corrupted digest cannot wedge a sender)."""
    overtaken: int = 0
    """Stable digests showing members delivered messages of this node's own life that it
    never sent (forged, unkeyed): its send point moved past them (rule 26)."""
    naks_sent: int = 0
    """Naks sent, unicast and group."""
    naks_group: int = 0
    """Of those, multicast to the group."""
    xmits_sent: int = 0
    xmits_rate_limited: int = 0
    """Xmits not sent because of ``max_xmit_per_interval``."""
    status_sent: int = 0
    """Status datagrams sent."""
    stable_sent: int = 0
    """Stable datagrams sent."""
    buffer_overflow: int = 0
    """Messages dropped from the resend buffer before they were stable."""
    peak_buffer: int = 0
    """The most messages the resend buffer ever held."""
    window_full: int = 0
    """Flow-controlled Publishes refused because the send window was full (rule 27)."""
