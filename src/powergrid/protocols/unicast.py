"""Reliable unicast: in-order, exactly-once messages between two nodes, with acks.

Theory of operation
-------------------
One :class:`UnicastMachine` per node serves every peer (there is no group).
Each direction of each pair of nodes is an independent channel.

*Sender.* :class:`Submit` queues a message for peer ``to``. Messages get
per-peer sequence numbers 1, 2, ... when first sent; at most
``config.window`` are in flight (sent, not yet acked), the rest wait in a
queue of at most ``config.max_queue`` (:class:`~powergrid.errors.UsageError`
beyond, for the caller to slow down; see *Hostile peers* for the messages a
peer's traffic makes). Every :class:`~powergrid.wire.UData` carries ``base``, the oldest
unacked sequence number at the moment it is (re)sent. Each peer has one
retransmission timer: it is armed when the first message goes in flight and
re-armed, at the initial RTO, whenever an ack makes progress. When it
expires, every in-flight message is sent again and the RTO is multiplied by
``rto_backoff`` up to ``rto_max`` (each timeout gets ``jitter`` of extra,
random delay from the ``rng``). After ``max_attempts`` transmissions without
progress the sender gives up: :class:`PeerUnreachable` reports how many
messages were not confirmed and the peer's queue is emptied; a later
:class:`Submit` starts afresh with the next sequence number (its ``base``
tells the receiver to skip the abandoned ones). :class:`PeerGone` (membership
removed the peer) does the same at once.

*Receiver.* State per peer is keyed by the peer's incarnation: a higher
incarnation (the sender restarted) resets it, so whatever the old life left
unfinished is forgotten; a lower one is stale and dropped. On first contact
the receiver expects ``base``; when ``base`` is above what it expects (the
sender gave up on older messages) it skips ahead. Messages are delivered in
order (:class:`DeliverUnicast`); those ahead of a gap are held, up to
``receive_window`` ahead (beyond: dropped, counted in ``out_of_window``);
duplicates are dropped and counted. Every accepted
:class:`~powergrid.wire.UData` is answered with a cumulative
:class:`~powergrid.wire.UAck` of everything delivered so far.

*Stuck streams.* If everything a peer sends is refused (stale, duplicate or
out of window), with gaps of at most twice ``rto_max``, for twice the time an
honest sender retransmits before it gives up, the receiver's state for that
peer is wrong (without a key, a forged higher incarnation, ``base`` or
``seq`` leaves it so), and it starts over from the message at hand
(``stats.restarted``).

*Hostile peers.* Whatever a peer sends, the machine never raises and its
memory stays bounded; what does not fit is dropped and counted:

* A :class:`Submit` with ``supersedes`` (the node's protocol messages, i.e.
  bids, which a peer's forged Coordinators can make a client send to a "new
  broker" over and over) first drops every message of its kind still queued
  (not yet sent), to any peer (``stats.superseded``): a newer bid makes them
  worthless. If the queue is still full, the new message is dropped
  (``stats.overflowed``) instead of raising.
* At most ``config.max_peers`` peers are kept on each side (what we send to,
  what we receive from); a forged sender id or a forged broker makes a new
  one. Beyond that the least recently progressing peer's record is evicted
  (``stats.evicted``): an outgoing one is given up on (PeerUnreachable), an
  incoming one forgets what it held. A real peer evicted by a flood starts
  again like a peer never heard of (an outgoing stream from seq 1, which its
  receiver may refuse until the stuck-stream rule restarts it).
* At most ``config.max_held`` messages are held ahead of gaps over all
  peers together (each peer also at most ``receive_window`` ahead); beyond,
  an out-of-order message is dropped (``stats.held_full``), to be
  retransmitted.

*Restarts.* A :class:`~powergrid.wire.UAck` names the receiver's incarnation:
a higher one than last seen means the receiver restarted and lost what it
held, so the sender resends every in-flight message at once. It also names
the sender incarnation it acks, so acks meant for an earlier life of this
node are dropped.

Guarantees: within one life of the sender and one life of the receiver, each
message is delivered at most once and in submission order; while the peer is
reachable every message is delivered; the sender is told
(:class:`PeerUnreachable`) whenever it stops trying. Not guaranteed: delivery
of messages the sender gave up on (some may have been delivered, their acks
lost), and exactly-once across a receiver restart (messages unacked when it
restarted may reach both lives).

Assumptions: datagrams may be lost, duplicated, reordered and delayed, but
not corrupted (the codec rejects malformed ones); incarnations only grow.

Driving: ``handle(event, now)`` with :class:`~powergrid.events.Received`
(UData or UAck), :class:`~powergrid.events.DeadlineReached`, :class:`Submit`
or :class:`PeerGone`; ``next_deadline()`` is the earliest retransmission
time, None when nothing is in flight. Timeouts (seconds): ``rto_initial``
0.1, ``rto_backoff`` 2, ``rto_max`` 1.0, ``jitter`` 0.1 (fraction of the
RTO), ``max_attempts`` 8, so a dead peer is reported after about 5.5 s.

After :class:`PeerGone` or giving up, a peer keeps two small records (the
next sequence number to send, and the incarnation and next expected number
of what it sent us), so a peer that was removed but is still alive in the
same life is neither confused by restarted numbering nor delivered
duplicates.
"""

from __future__ import annotations

import math
import random
from collections import deque
from typing import Any, cast

import attrs

from powergrid._checks import config_problem, integer, real
from powergrid._dispatch import Dispatching
from powergrid.errors import ConfigError, PayloadTooLargeError, UsageError
from powergrid.events import DeadlineReached, Received, Send
from powergrid.types import MAX_NODE_ID, Incarnation, NodeId, format_node, incarnation_newer
from powergrid.wire import HEADER_SIZE, MAX_DATAGRAM, UAck, UData, encode_body

__all__ = [
    "MAX_UNICAST_PAYLOAD",
    "DeliverUnicast",
    "PeerGone",
    "PeerUnreachable",
    "Submit",
    "UnicastConfig",
    "UnicastMachine",
    "UnicastStats",
]

MAX_UNICAST_PAYLOAD = (
    MAX_DATAGRAM - HEADER_SIZE - len(encode_body(UData(seq=1, base=1, kind=0, payload=b"")))
)
"""The largest payload one :class:`Submit` can carry (bytes)."""

_MAX_INCARNATION = 2**32 - 1


# ----------------------------------------------------------------- config


@attrs.frozen(kw_only=True)
class UnicastConfig:
    """Settings of :class:`UnicastMachine`. Times in seconds.

    Raises :class:`~powergrid.errors.ConfigError` for a value out of range or
    values that contradict each other.
    """

    window: int = attrs.field(default=32, validator=integer)
    """Messages in flight per peer (sent, not yet acked)."""
    max_queue: int = attrs.field(default=1024, validator=integer)
    """Messages waiting per peer beyond the window; a Submit beyond it raises UsageError."""
    rto_initial: float = attrs.field(default=0.1, validator=real)
    """First retransmission timeout, and the timeout after every ack that makes progress."""
    rto_backoff: float = attrs.field(default=2.0, validator=real)
    """Factor applied to the timeout after each retransmission."""
    rto_max: float = attrs.field(default=1.0, validator=real)
    """Cap of the timeout."""
    jitter: float = attrs.field(default=0.1, validator=real)
    """Each timeout is lengthened by up to this fraction of itself, at random."""
    max_attempts: int = attrs.field(default=8, validator=integer)
    """Transmissions without progress before the sender gives up on the peer."""
    receive_window: int = attrs.field(default=256, validator=integer)
    """How far ahead of the next expected message a receiver holds messages."""
    max_peers: int = attrs.field(default=65536, validator=integer)
    """Peers kept on each side (sending to, receiving from); beyond, the least recently
    progressing one is evicted (``stats.evicted``)."""
    max_held: int = attrs.field(default=16384, validator=integer)
    """Messages held ahead of gaps over all peers together; beyond, dropped (``held_full``)."""

    def __attrs_post_init__(self) -> None:
        if self.window < 1:
            raise config_problem(self, f"window is {self.window}; set it to 1 or more")
        if self.max_queue < 0:
            raise config_problem(self, f"max_queue is {self.max_queue}; set it to 0 or more")
        for name in ("rto_initial", "rto_backoff", "rto_max", "jitter"):
            value = getattr(self, name)
            if not math.isfinite(value):
                raise config_problem(self, f"{name} is {value}; set it to a finite number")
        if self.rto_initial <= 0:
            raise config_problem(self, f"rto_initial is {self.rto_initial}; set it above 0 seconds")
        if self.rto_max < self.rto_initial:
            raise config_problem(
                self,
                f"rto_max ({self.rto_max}) is below rto_initial ({self.rto_initial}); "
                "set rto_max >= rto_initial",
            )
        if self.rto_backoff < 1:
            raise config_problem(self, f"rto_backoff is {self.rto_backoff}; set it to 1 or more")
        if not 0 <= self.jitter <= 1:
            raise config_problem(self, f"jitter is {self.jitter}; set it within 0..1")
        if self.max_peers < 1:
            raise config_problem(self, f"max_peers is {self.max_peers}; set it to 1 or more")
        if self.max_held < 0:
            raise config_problem(self, f"max_held is {self.max_held}; set it to 0 or more")
        if self.max_attempts < 1:
            raise config_problem(self, f"max_attempts is {self.max_attempts}; set it to 1 or more")
        if self.receive_window < self.window:
            raise config_problem(
                self,
                f"receive_window ({self.receive_window}) is below window ({self.window}); "
                "set receive_window >= window or in-flight messages will be dropped",
            )

    def give_up_time(self) -> float:
        """The longest (seconds) a sender retransmits without progress before it gives up."""
        total, rto = 0.0, self.rto_initial
        for _ in range(self.max_attempts):
            total += rto
            rto = min(rto * self.rto_backoff, self.rto_max)
        return total * (1.0 + self.jitter)


# ----------------------------------------------------------------- events


@attrs.frozen(kw_only=True)
class Submit:
    """Command: send ``payload`` (of ``kind``, 0..255) to ``to`` reliably and in order.

    ``handle`` raises :class:`~powergrid.errors.PayloadTooLargeError` if the
    payload exceeds :data:`MAX_UNICAST_PAYLOAD`, and
    :class:`~powergrid.errors.UsageError` for a bad ``to`` or ``kind`` or when
    the peer's queue is full and ``supersedes`` is False.

    ``supersedes``: this message makes every queued (not yet sent) message of
    the same ``kind``, to any peer, worthless: they are dropped first
    (``stats.superseded``), and if the queue is still full this one is dropped
    (``stats.overflowed``) rather than raising. For state that a newer message
    replaces (a bid), sent in response to what peers send.
    """

    to: NodeId
    kind: int
    payload: bytes
    supersedes: bool = False


@attrs.frozen(kw_only=True)
class PeerGone:
    """Membership removed ``peer``: stop sending to it and drop messages held from it.

    Unacked messages are reported with :class:`PeerUnreachable`. Only the
    sequence-number positions are kept (see the module doc).
    """

    peer: NodeId


# ---------------------------------------------------------------- actions


@attrs.frozen(kw_only=True)
class DeliverUnicast:
    """Hand ``payload`` (of ``kind``) from ``sender`` in ``incarnation`` to the node."""

    sender: NodeId
    incarnation: Incarnation
    kind: int
    payload: bytes


@attrs.frozen(kw_only=True)
class PeerUnreachable:
    """The sender gave up on ``peer``; ``undelivered`` messages were never confirmed.

    The peer's queue is now empty; a later :class:`Submit` starts afresh.
    """

    peer: NodeId
    undelivered: int


# ------------------------------------------------------------------ stats


@attrs.define
class UnicastStats:
    """Counters, all since the machine was made."""

    sent: int = 0
    """Messages sent for the first time."""
    retransmitted: int = 0
    """UData sent again (timeout or restarted receiver)."""
    delivered: int = 0
    """Messages delivered (DeliverUnicast)."""
    duplicates: int = 0
    """UData dropped because already delivered or held (re-acked)."""
    stale: int = 0
    """UData of an older sender life, UAck of an older life of either side, or older than acked."""
    out_of_window: int = 0
    """UData dropped because too far ahead of the next expected message."""
    gave_up: int = 0
    """PeerUnreachable reported (timeouts exhausted or PeerGone)."""
    abandoned: int = 0
    """Messages given up on (the sum of ``undelivered`` reported)."""
    invalid: int = 0
    """UAck for a sequence number never sent (hostile or confused peer)."""
    restarted: int = 0
    """Receiving streams started over because everything their peer sent was refused
    for twice the sender's give-up time (state left by forged datagrams)."""
    unexpected: int = 0
    """Received messages that are neither UData nor UAck."""
    superseded: int = 0
    """Queued messages dropped because a newer Submit of their kind supersedes them."""
    overflowed: int = 0
    """Superseding Submits dropped because the peer's queue was full of other messages."""
    evicted: int = 0
    """Peer records evicted because ``max_peers`` were kept (outgoing and incoming)."""
    held_full: int = 0
    """Out-of-order UData dropped because ``max_held`` messages were held already."""


# ------------------------------------------------------------ peer state


class _Outgoing:
    """What we send to one peer. ``inflight[i]`` is message ``acked + 1 + i``."""

    __slots__ = ("acked", "attempts", "due", "inflight", "next_seq", "queue", "receiver", "rto")

    def __init__(self, rto: float) -> None:
        self.next_seq = 1  # sequence number of the next message sent for the first time
        self.acked = 0  # everything up to here is acked (or abandoned)
        self.inflight: deque[tuple[int, bytes]] = deque()
        self.queue: deque[tuple[int, bytes]] = deque()
        self.attempts = 0  # transmissions of the in-flight messages since the last progress
        self.rto = rto
        self.due: float | None = None
        self.receiver: int | None = None  # the peer's incarnation, as its acks last said


class _Incoming:
    """What one peer sends us, in its life ``incarnation``."""

    __slots__ = ("expected", "held", "incarnation", "refused_last", "refused_since")

    def __init__(self, incarnation: int, expected: int) -> None:
        self.incarnation = incarnation
        self.expected = expected
        self.held: dict[int, tuple[int, bytes]] = {}
        self.refused_since = -math.inf  # start of the current run of refusals, if any
        self.refused_last = -math.inf


# ---------------------------------------------------------------- machine


class UnicastMachine(Dispatching):
    """Reliable, ordered unicast to and from every peer of one node (see the module doc)."""

    __slots__ = (
        "_armed",
        "_config",
        "_held",
        "_in",
        "_incarnation",
        "_out",
        "_rng",
        "_stats",
        "_stuck_after",
        "_stuck_gap",
        "_waiting",
    )

    _EVENTS = {
        Received: "_received",
        DeadlineReached: "_deadline",
        Submit: "_submit",
        PeerGone: "_peer_gone",
    }

    _MESSAGES = {
        UData: "_data",
        UAck: "_ack",
    }

    def __init__(
        self, config: UnicastConfig, *, incarnation: Incarnation, rng: random.Random
    ) -> None:
        if not 0 <= incarnation <= _MAX_INCARNATION:
            raise ConfigError(f"incarnation {incarnation} is outside 0..2**32-1")
        self._config = config
        self._incarnation = incarnation
        self._rng = rng
        self._stats = UnicastStats()
        self._stuck_after = 2.0 * config.give_up_time()
        self._stuck_gap = 2.0 * config.rto_max * (1.0 + config.jitter)
        self._out: dict[int, _Outgoing] = {}
        self._in: dict[int, _Incoming] = {}
        self._armed: dict[int, float] = {}  # peer -> retransmission time
        self._held = 0  # messages held ahead of gaps, over all incoming records
        self._waiting: set[int] = set()  # peers whose queue is not empty

    # ------------------------------------------------------------ surface

    @property
    def config(self) -> UnicastConfig:
        return self._config

    @property
    def incarnation(self) -> Incarnation:
        return self._incarnation

    @property
    def stats(self) -> UnicastStats:
        return self._stats

    @property
    def backlog(self) -> dict[NodeId, int]:
        """Messages not yet acked (in flight or queued), per peer that has any, sorted by peer."""
        return {
            NodeId(p): len(o.inflight) + len(o.queue)
            for p, o in sorted(self._out.items())
            if o.inflight or o.queue
        }

    def handle(self, event: object, now: float) -> list[Any]:
        """Process one event; return the actions (Send, DeliverUnicast, PeerUnreachable).

        Raises :class:`~powergrid.errors.UsageError` for an event this machine
        does not take, and as documented on :class:`Submit`.
        """
        try:
            on = self._on_event[type(event)]
        except KeyError:
            raise UsageError(
                f"UnicastMachine does not handle {type(event).__name__}; pass Received, "
                "DeadlineReached, Submit or PeerGone"
            ) from None
        return on(self, event, now)

    def next_deadline(self) -> float | None:
        """The earliest retransmission time, or None when nothing is in flight."""
        return min(self._armed.values()) if self._armed else None

    # -------------------------------------------------------------- sender

    def _submit(self, ev: Submit, now: float) -> list[Any]:
        to, kind, payload = ev.to, ev.kind, ev.payload
        if not 0 < to <= MAX_NODE_ID:
            raise UsageError(f"Submit to {to}: not a node id (1..2**48-1)")
        if not 0 <= kind <= 0xFF:
            raise UsageError(f"Submit kind {kind} is outside 0..255")
        if len(payload) > MAX_UNICAST_PAYLOAD:
            raise PayloadTooLargeError(
                f"Submit payload is {len(payload)} bytes; a reliable unicast carries at most "
                f"{MAX_UNICAST_PAYLOAD}, so split it"
            )
        actions: list[Any] = []
        out = self._out.get(to)
        if out is None:
            if len(self._out) >= self._config.max_peers:
                self._evict_out(actions)
            out = self._out[to] = _Outgoing(self._config.rto_initial)
        if ev.supersedes:
            self._supersede(kind)
        if len(out.inflight) < self._config.window:
            if not out.inflight:
                self._arm(to, out, now, self._config.rto_initial)
            actions.append(self._send_new(to, out, kind, payload))
            return actions
        if len(out.queue) >= self._config.max_queue:
            if ev.supersedes:
                self._stats.overflowed += 1
                return actions
            raise UsageError(
                f"unicast queue to {format_node(to)} is full ({self._config.max_queue} "
                "messages wait beyond the window); wait for PeerUnreachable or for acks, "
                "or raise max_queue"
            )
        out.queue.append((kind, payload))
        self._waiting.add(to)
        return actions

    def _supersede(self, kind: int) -> None:
        """Drop every queued message of ``kind``, to any peer (a newer one replaces them)."""
        for peer in sorted(self._waiting):
            out = self._out[peer]
            queue = out.queue
            if any(k == kind for k, _ in queue):
                kept = [item for item in queue if item[0] != kind]
                self._stats.superseded += len(queue) - len(kept)
                out.queue = deque(kept)
                if not kept:
                    self._waiting.discard(peer)

    def _evict_out(self, actions: list[Any]) -> None:
        """Make room for one more outgoing record: give up on the least recently progressing."""
        peer = next(iter(self._out))
        actions.extend(self._give_up(peer, self._out.pop(peer)))
        self._stats.evicted += 1

    def _send_new(self, to: int, out: _Outgoing, kind: int, payload: bytes) -> Send:
        seq = out.next_seq
        out.next_seq = seq + 1
        out.inflight.append((kind, payload))
        self._stats.sent += 1
        return Send(
            to=NodeId(to), message=UData(seq=seq, base=out.acked + 1, kind=kind, payload=payload)
        )

    def _resend_all(self, to: int, out: _Outgoing, actions: list[Any]) -> None:
        base = out.acked + 1
        peer = NodeId(to)
        for i, (kind, payload) in enumerate(out.inflight):
            actions.append(
                Send(to=peer, message=UData(seq=base + i, base=base, kind=kind, payload=payload))
            )
        self._stats.retransmitted += len(out.inflight)

    def _arm(self, to: int, out: _Outgoing, now: float, rto: float) -> None:
        """Start a fresh round: first transmission of the in-flight set, timer at ``rto``."""
        out.attempts = 1
        out.rto = rto
        out.due = self._armed[to] = now + self._jittered(rto)

    def _jittered(self, rto: float) -> float:
        jitter = self._config.jitter
        return rto * (1.0 + jitter * self._rng.random()) if jitter else rto

    def _disarm(self, to: int, out: _Outgoing) -> None:
        out.due = None
        self._armed.pop(to, None)

    def _ack(self, ev: Received, now: float) -> list[Any]:
        msg = cast(UAck, ev.message)
        peer = ev.sender
        out = self._out.get(peer)
        stats = self._stats
        if out is None or msg.sender_incarnation != self._incarnation:
            stats.stale += 1  # we never sent to it, or it acks an earlier life of ours
            return []
        if out.receiver is not None and incarnation_newer(out.receiver, msg.receiver_incarnation):
            stats.stale += 1  # from an earlier life of the receiver
            return []
        if msg.seq >= out.next_seq:
            stats.invalid += 1
            return []
        restarted = out.receiver is not None and incarnation_newer(
            msg.receiver_incarnation, out.receiver
        )
        out.receiver = msg.receiver_incarnation
        progress = msg.seq > out.acked
        if not progress and not restarted:
            if msg.seq < out.acked:
                stats.stale += 1
            return []
        actions: list[Any] = []
        if progress:
            for _ in range(msg.seq - out.acked):
                out.inflight.popleft()
            out.acked = msg.seq
            self._out[peer] = self._out.pop(peer)  # most recently progressing: evicted last
        if restarted:
            self._resend_all(peer, out, actions)
        window = self._config.window
        while out.queue and len(out.inflight) < window:
            kind, payload = out.queue.popleft()
            actions.append(self._send_new(peer, out, kind, payload))
            if not out.queue:
                self._waiting.discard(peer)
        if out.inflight:
            self._arm(peer, out, now, self._config.rto_initial)
        else:
            self._disarm(peer, out)
        return actions

    def _deadline(self, ev: DeadlineReached, now: float) -> list[Any]:
        actions: list[Any] = []
        due = sorted(p for p, t in self._armed.items() if t <= now)
        cfg = self._config
        for peer in due:
            out = self._out[peer]
            if out.attempts >= cfg.max_attempts:
                actions.extend(self._give_up(peer, out))
                continue
            self._resend_all(peer, out, actions)
            out.attempts += 1
            out.rto = min(out.rto * cfg.rto_backoff, cfg.rto_max)
            out.due = self._armed[peer] = now + self._jittered(out.rto)
        return actions

    def _give_up(self, peer: int, out: _Outgoing) -> list[Any]:
        undelivered = len(out.inflight) + len(out.queue)
        out.acked = out.next_seq - 1  # abandoned; the next message's base skips them
        out.inflight.clear()
        out.queue.clear()
        self._waiting.discard(peer)
        self._disarm(peer, out)
        if not undelivered:
            return []
        self._stats.gave_up += 1
        self._stats.abandoned += undelivered
        return [PeerUnreachable(peer=NodeId(peer), undelivered=undelivered)]

    def _peer_gone(self, ev: PeerGone, now: float) -> list[Any]:
        peer = ev.peer
        inc = self._in.get(peer)
        if inc is not None:
            self._held -= len(inc.held)
            inc.held.clear()
        out = self._out.get(peer)
        return self._give_up(peer, out) if out is not None else []

    # ------------------------------------------------------------ receiver

    def _received(self, ev: Received, now: float) -> list[Any]:
        on = self._on_message.get(type(ev.message))
        if on is None:
            self._stats.unexpected += 1
            return []
        return on(self, ev, now)

    def _data(self, ev: Received, now: float) -> list[Any]:
        msg = cast(UData, ev.message)
        peer, life = ev.sender, ev.incarnation
        stats = self._stats
        inc = self._in.get(peer)
        if inc is None or incarnation_newer(life, inc.incarnation):
            inc = self._new_incoming(peer, life, msg.base)
        elif self._refused(inc, life, msg) and self._stuck(inc, now):
            # Everything this peer sent has been refused for longer than any honest sender
            # retransmits: our state is wrong (a forged higher incarnation, base or seq), so
            # start over with what it sends now.
            stats.restarted += 1
            inc = self._new_incoming(peer, life, msg.base)
        elif incarnation_newer(inc.incarnation, life):
            stats.stale += 1
            return []
        actions: list[Any] = []
        held = inc.held
        if msg.base > inc.expected:
            # The sender gave up on everything below base: forget it, skip ahead.
            for seq in [s for s in held if s < msg.base]:
                del held[seq]
                self._held -= 1
            inc.expected = msg.base
            self._drain(peer, inc, actions)
        seq = msg.seq
        if seq < inc.expected or seq in held:
            stats.duplicates += 1
        elif seq - inc.expected >= self._config.receive_window:
            stats.out_of_window += 1
        elif seq == inc.expected:
            inc.expected = seq + 1
            inc.refused_since = inc.refused_last = -math.inf
            self._in[peer] = self._in.pop(peer)  # most recently progressing: evicted last
            stats.delivered += 1
            actions.append(
                DeliverUnicast(sender=peer, incarnation=life, kind=msg.kind, payload=msg.payload)
            )
            self._drain(peer, inc, actions)
        elif self._held >= self._config.max_held:
            stats.held_full += 1
        else:
            held[seq] = (msg.kind, msg.payload)
            self._held += 1
        actions.append(
            Send(
                to=peer,
                message=UAck(
                    seq=inc.expected - 1,
                    receiver_incarnation=self._incarnation,
                    sender_incarnation=life,
                ),
            )
        )
        return actions

    def _new_incoming(self, peer: int, life: int, expected: int) -> _Incoming:
        """A fresh record of what ``peer`` sends in ``life`` (replacing any), within max_peers."""
        old = self._in.pop(peer, None)
        if old is not None:
            self._held -= len(old.held)
        elif len(self._in) >= self._config.max_peers:
            evicted = self._in.pop(next(iter(self._in)))
            self._held -= len(evicted.held)
            self._stats.evicted += 1
        inc = self._in[peer] = _Incoming(life, expected)
        return inc

    def _refused(self, inc: _Incoming, life: int, msg: UData) -> bool:
        """Would ``msg`` of ``life`` be refused (stale, duplicate, out of window)?"""
        if life != inc.incarnation:
            return incarnation_newer(inc.incarnation, life)
        expected = max(inc.expected, msg.base)
        seq = msg.seq
        return seq < expected or seq in inc.held or seq - expected >= self._config.receive_window

    def _stuck(self, inc: _Incoming, now: float) -> bool:
        """Note a refusal at ``now``; True once refusals have run, with gaps of at most twice
        the longest retransmission timeout, for twice the sender's give-up time."""
        if now - inc.refused_last > self._stuck_gap:  # the first refusal of a run
            inc.refused_since = now
        inc.refused_last = now
        return now - inc.refused_since >= self._stuck_after

    def _drain(self, peer: NodeId, inc: _Incoming, actions: list[Any]) -> None:
        """Deliver the held run that starts at ``inc.expected``."""
        held = inc.held
        life = Incarnation(inc.incarnation)
        while held:
            item = held.pop(inc.expected, None)
            if item is None:
                return
            self._held -= 1
            inc.expected += 1
            self._stats.delivered += 1
            actions.append(
                DeliverUnicast(sender=peer, incarnation=life, kind=item[0], payload=item[1])
            )
