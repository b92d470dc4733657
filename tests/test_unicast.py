"""Reliable unicast (powergrid.protocols.unicast): exact actions per rule, and a lossy-link
property."""

from __future__ import annotations

import random
from typing import Any

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from powergrid.errors import ConfigError, PayloadTooLargeError, UsageError
from powergrid.events import DeadlineReached, Received, Send
from powergrid.protocols.unicast import (
    MAX_UNICAST_PAYLOAD,
    DeliverUnicast,
    PeerGone,
    PeerUnreachable,
    Submit,
    UnicastConfig,
    UnicastMachine,
)
from powergrid.testing import Conditions, FakeNet
from powergrid.types import Incarnation, NodeId, node_id
from powergrid.wire import MAX_DATAGRAM, Nak, UAck, UData, encode

A = node_id("10.0.0.1", 9000)
B = node_id("10.0.0.2", 9000)
EXACT = UnicastConfig(jitter=0.0, rto_initial=0.125)  # binary-exact deadlines
WAKE = DeadlineReached()


def machine(config: UnicastConfig = EXACT, inc: int = 1, seed: int = 0) -> UnicastMachine:
    return UnicastMachine(config, incarnation=Incarnation(inc), rng=random.Random(seed))


def submit(payload: bytes, to: NodeId = B, kind: int = 0) -> Submit:
    return Submit(to=to, kind=kind, payload=payload)


def data(seq: int, base: int, payload: bytes, kind: int = 0) -> UData:
    return UData(seq=seq, base=base, kind=kind, payload=payload)


def send_data(seq: int, base: int, payload: bytes, to: NodeId = B) -> Send:
    return Send(to=to, message=data(seq, base, payload))


def from_b(msg: Any, inc: int = 1) -> Received:
    return Received(sender=B, incarnation=Incarnation(inc), message=msg)


def from_a(msg: Any, inc: int = 1) -> Received:
    return Received(sender=A, incarnation=Incarnation(inc), message=msg)


def ack(seq: int, receiver: int = 1, sender: int = 1) -> UAck:
    return UAck(seq=seq, receiver_incarnation=receiver, sender_incarnation=sender)


def ack_to_a(seq: int, receiver: int = 1, sender: int = 1) -> Send:
    return Send(to=A, message=ack(seq, receiver, sender))


def deliver(payload: bytes, inc: int = 1, kind: int = 0) -> DeliverUnicast:
    return DeliverUnicast(sender=A, incarnation=Incarnation(inc), kind=kind, payload=payload)


# ------------------------------------------------------------------ sender


def test_submit_sends_numbered_udata_and_arms_timer() -> None:
    """Sender: messages are numbered from 1, base is the oldest unacked; the RTO starts at send."""
    m = machine()
    assert m.next_deadline() is None
    assert m.handle(submit(b"a", kind=5), 1.0) == [
        Send(to=B, message=data(1, 1, b"a", kind=5)),
    ]
    assert m.next_deadline() == 1.125
    assert m.handle(submit(b"b"), 1.0625) == [send_data(2, 1, b"b")]
    assert m.next_deadline() == 1.125  # one timer per peer, set by the first
    assert m.backlog == {B: 2}
    assert m.stats.sent == 2


def test_cumulative_ack_ends_it() -> None:
    """Sender: a cumulative ack of everything sent yields nothing more and disarms the timer."""
    m = machine()
    m.handle(submit(b"a"), 0.0)
    m.handle(submit(b"b"), 0.0)
    assert m.handle(from_b(ack(2)), 0.02) == []
    assert m.next_deadline() is None
    assert m.backlog == {}
    assert m.handle(WAKE, 5.0) == []


def test_partial_ack_rearms_at_initial_rto() -> None:
    """Sender: an ack that makes progress restarts the timer at now + rto_initial."""
    m = machine()
    m.handle(submit(b"a"), 0.0)
    m.handle(submit(b"b"), 0.0)
    assert m.handle(from_b(ack(1)), 0.0625) == []
    assert m.next_deadline() == 0.1875
    assert m.handle(WAKE, 0.1875) == [send_data(2, 2, b"b")]


def test_loss_retransmits_at_deadline_with_backoff_and_cap() -> None:
    """Sender: on timeout every in-flight message is resent; the RTO doubles up to rto_max."""
    m = machine()
    m.handle(submit(b"a"), 0.0)
    m.handle(submit(b"b"), 0.0)
    assert m.handle(WAKE, 0.0625) == []  # early wake-up is harmless
    expected = [send_data(1, 1, b"a"), send_data(2, 1, b"b")]
    deadlines = []
    for _ in range(5):
        when = m.next_deadline()
        assert when is not None
        deadlines.append(when)
        assert m.handle(WAKE, when) == expected
    assert deadlines == [0.125, 0.375, 0.875, 1.875, 2.875]  # RTO 0.125, 0.25, 0.5, 1, 1
    assert m.next_deadline() == 3.875
    assert m.stats.retransmitted == 10
    assert m.stats.sent == 2


def test_jitter_comes_from_the_rng() -> None:
    """Sender: each timeout is lengthened by up to jitter * RTO, drawn from the rng passed in."""
    cfg = UnicastConfig(jitter=0.1)
    m = machine(cfg, seed=7)
    m.handle(submit(b"a"), 0.0)
    draw = random.Random(7)
    first = 0.1 * (1 + 0.1 * draw.random())
    assert m.next_deadline() == first
    m.handle(WAKE, first)
    assert m.next_deadline() == first + 0.2 * (1 + 0.1 * draw.random())


def test_gives_up_after_max_attempts() -> None:
    """Sender: after max_attempts transmissions without progress, PeerUnreachable; queue emptied."""
    m = machine(UnicastConfig(jitter=0.0, rto_initial=0.125, max_attempts=3, window=1))
    m.handle(submit(b"a"), 0.0)
    assert m.handle(submit(b"b"), 0.0) == []  # queued behind the window
    assert m.handle(WAKE, 0.125) == [send_data(1, 1, b"a")]
    assert m.handle(WAKE, 0.375) == [send_data(1, 1, b"a")]
    assert m.next_deadline() == 0.875
    assert m.handle(WAKE, 0.875) == [PeerUnreachable(peer=B, undelivered=2)]
    assert m.next_deadline() is None
    assert m.backlog == {}
    assert (m.stats.gave_up, m.stats.abandoned) == (1, 2)
    # A later Submit starts afresh; its base tells the receiver to skip message 1.
    assert m.handle(submit(b"c"), 1.0) == [send_data(2, 2, b"c")]
    assert m.next_deadline() == 1.125
    assert m.handle(from_b(ack(0)), 1.01) == []  # an old ack is stale
    assert m.stats.stale == 1


def test_window_bounds_inflight_and_acks_release_the_queue() -> None:
    """Sender: at most `window` in flight; progress sends queued messages with the new base."""
    m = machine(UnicastConfig(jitter=0.0, rto_initial=0.125, window=2))
    m.handle(submit(b"a"), 0.0)
    m.handle(submit(b"b"), 0.0)
    assert m.handle(submit(b"c"), 0.0) == []
    assert m.handle(submit(b"d"), 0.0) == []
    assert m.backlog == {B: 4}
    assert m.handle(from_b(ack(1)), 0.0625) == [send_data(3, 2, b"c")]
    assert m.handle(from_b(ack(3)), 0.09375) == [send_data(4, 4, b"d")]
    assert m.next_deadline() == 0.21875


def test_restarted_receiver_gets_everything_unacked_at_once() -> None:
    """Sender: an ack naming a higher receiver incarnation resends every in-flight message now."""
    m = machine()
    for p in (b"a", b"b", b"c"):
        m.handle(submit(p), 0.0)
    assert m.handle(from_b(ack(1, receiver=5), inc=5), 0.03125) == []
    assert m.handle(from_b(ack(1, receiver=6), inc=6), 0.0625) == [
        send_data(2, 2, b"b"),
        send_data(3, 2, b"c"),
    ]
    assert m.next_deadline() == 0.1875
    assert m.stats.retransmitted == 2
    # The old life's late ack is stale, even if it would make progress.
    assert m.handle(from_b(ack(3, receiver=5), inc=5), 0.05) == []
    assert m.stats.stale == 1
    assert m.backlog == {B: 2}


def test_ack_for_an_earlier_life_of_the_sender_is_stale() -> None:
    """Sender: an ack naming another sender_incarnation is for an earlier life: dropped, counted."""
    m = machine(inc=2)
    m.handle(submit(b"a"), 0.0)
    assert m.handle(from_b(ack(1, sender=1)), 0.01) == []
    assert m.stats.stale == 1
    assert m.backlog == {B: 1}


def test_ack_beyond_what_was_sent_is_invalid() -> None:
    """Sender: an ack of a sequence number never sent is dropped and counted, never raises."""
    m = machine()
    m.handle(submit(b"a"), 0.0)
    assert m.handle(from_b(ack(2)), 0.01) == []
    assert m.stats.invalid == 1
    assert m.handle(from_a(ack(1)), 0.01) == []  # A was never sent anything
    assert m.stats.stale == 1
    assert m.backlog == {B: 1}


def test_peer_gone_reports_unacked_and_continues_numbering() -> None:
    """Sender: PeerGone with unacked messages reports them and stops; numbering continues."""
    m = machine(UnicastConfig(jitter=0.0, window=1))
    m.handle(submit(b"a"), 0.0)
    m.handle(submit(b"b"), 0.0)
    assert m.handle(PeerGone(peer=B), 0.01) == [PeerUnreachable(peer=B, undelivered=2)]
    assert m.next_deadline() is None
    assert m.handle(PeerGone(peer=B), 0.02) == []  # nothing unacked: nothing to report
    assert m.handle(PeerGone(peer=A), 0.02) == []  # never heard of: nothing
    assert m.handle(submit(b"c"), 1.0) == [send_data(2, 2, b"c")]


def test_queue_full_raises_usage_error_naming_the_peer() -> None:
    """Sender: a Submit beyond window + max_queue raises UsageError naming the peer."""
    m = machine(UnicastConfig(window=1, max_queue=2))
    for p in (b"a", b"b", b"c"):
        m.handle(submit(p), 0.0)
    with pytest.raises(UsageError, match=r"10\.0\.0\.2:9000"):
        m.handle(submit(b"d"), 0.0)
    assert m.backlog == {B: 3}


def test_superseding_submit_drops_queued_messages_of_its_kind_to_any_peer() -> None:
    """Hostile peers: a superseding Submit first drops every queued (unsent) message of its
    kind, to any peer (a newer bid makes them worthless); other kinds and in-flight stay."""
    m = machine(UnicastConfig(window=1, max_queue=4))
    for to, kind, p in ((B, 48, b"b1"), (B, 48, b"b2"), (B, 0, b"app"), (A, 48, b"a1")):
        m.handle(submit(p, to=to, kind=kind), 0.0)
    m.handle(submit(b"a2", to=A, kind=48), 0.0)
    assert m.backlog == {A: 2, B: 3}
    m.handle(Submit(to=B, kind=48, payload=b"b3", supersedes=True), 0.0)
    assert m.stats.superseded == 2  # b2 to B and a2 to A; b1 and a1 are in flight
    assert m.backlog == {A: 1, B: 3}  # B: b1 in flight, app and b3 queued
    m.handle(from_b(ack(1)), 0.1)
    assert m.handle(from_b(ack(2)), 0.2) == [Send(to=B, message=data(3, 3, b"b3", kind=48))]


def test_superseding_submit_to_a_full_queue_is_dropped_and_counted() -> None:
    """Hostile peers: a superseding Submit that finds the queue full of other kinds is
    dropped and counted (stats.overflowed); it never raises."""
    m = machine(UnicastConfig(window=1, max_queue=2))
    for p in (b"a", b"b", b"c"):
        m.handle(submit(p), 0.0)
    assert m.handle(Submit(to=B, kind=48, payload=b"bid", supersedes=True), 0.0) == []
    assert (m.stats.overflowed, m.backlog) == (1, {B: 3})


def test_at_most_max_peers_outgoing_records_the_least_recently_progressing_evicted() -> None:
    """Hostile peers: a Submit to a new peer beyond max_peers evicts the record of the
    least recently progressing peer (given up on: PeerUnreachable), not one that acked."""
    m = machine(UnicastConfig(max_peers=2, jitter=0.0))
    c = node_id("10.0.0.3", 9000)
    m.handle(submit(b"to b"), 0.0)
    m.handle(submit(b"to a", to=A), 0.0)
    m.handle(from_b(ack(1)), 0.1)  # B progresses: A is now the least recent
    assert m.handle(submit(b"to c", to=c), 0.2) == [
        PeerUnreachable(peer=A, undelivered=1),
        Send(to=c, message=data(1, 1, b"to c")),
    ]
    assert m.stats.evicted == 1 and m.backlog == {c: 1}


def test_at_most_max_peers_incoming_records_and_max_held_messages() -> None:
    """Hostile peers: forged senders beyond max_peers evict the least recently progressing
    incoming record (with what it held); messages held ahead of gaps over all peers are at
    most max_held (beyond: dropped, counted in held_full, to be retransmitted)."""
    m = machine(UnicastConfig(max_peers=2, max_held=3))
    m.handle(from_a(data(1, 1, b"x")), 0.0)  # A delivered: most recent
    for i in range(2, 12):
        forged = Received(
            sender=node_id(f"10.9.0.{i}", 9000),
            incarnation=Incarnation(1),
            message=data(5, 1, b"ahead"),
        )
        m.handle(forged, 0.0)
    assert m.stats.evicted == 9 and m.stats.held_full == 0  # each forged one held 1, evicted
    m.handle(from_a(data(3, 2, b"3")), 0.1)
    m.handle(from_a(data(4, 2, b"4")), 0.1)
    m.handle(from_a(data(5, 2, b"5")), 0.1)  # 1 forged + 2 of A held: full
    assert m.stats.held_full == 1
    assert m.handle(from_a(data(2, 2, b"2")), 0.2)[:3] == [
        deliver(b"2"),
        deliver(b"3"),
        deliver(b"4"),
    ]


def test_payload_limit() -> None:
    """Sender: the largest payload fills one datagram exactly; one byte more raises at Submit."""
    m = machine()
    [out] = m.handle(submit(b"x" * MAX_UNICAST_PAYLOAD), 0.0)
    assert isinstance(out, Send)
    assert len(encode(0, A, 1, out.message)) == MAX_DATAGRAM
    with pytest.raises(PayloadTooLargeError, match=str(MAX_UNICAST_PAYLOAD)):
        m.handle(submit(b"x" * (MAX_UNICAST_PAYLOAD + 1)), 0.0)
    assert m.stats.sent == 1


@pytest.mark.parametrize(
    ("command", "pattern"),
    [
        (Submit(to=NodeId(0), kind=0, payload=b""), "not a node id"),
        (Submit(to=B, kind=256, payload=b""), "kind 256"),
        (Submit(to=B, kind=-1, payload=b""), "kind -1"),
    ],
)
def test_bad_submit_raises_usage_error(command: Submit, pattern: str) -> None:
    """Local misuse: a Submit with a bad target or kind raises UsageError at once."""
    with pytest.raises(UsageError, match=pattern):
        machine().handle(command, 0.0)


def test_unknown_event_is_usage_error() -> None:
    """Local misuse: an event the machine does not take raises UsageError."""
    with pytest.raises(UsageError, match="does not handle str"):
        machine().handle("hello", 0.0)


def test_other_messages_are_dropped_and_counted() -> None:
    """Peer input: a message that is neither UData nor UAck is dropped and counted."""
    m = machine()
    assert m.handle(from_a(Nak(origin=A, origin_incarnation=1, first=1, last=2)), 0.0) == []
    assert m.stats.unexpected == 1


# ---------------------------------------------------------------- receiver


def test_in_order_delivery_and_cumulative_ack() -> None:
    """Receiver: the expected message is delivered and answered with a cumulative ack."""
    m = machine()
    assert m.handle(from_a(data(1, 1, b"a", kind=9)), 0.0) == [
        deliver(b"a", kind=9),
        ack_to_a(1),
    ]
    assert m.handle(from_a(data(2, 1, b"b")), 0.0) == [deliver(b"b"), ack_to_a(2)]
    assert m.stats.delivered == 2
    assert m.next_deadline() is None  # receiving never arms a timer


def test_out_of_order_is_held_then_delivered_in_order() -> None:
    """Receiver: messages after a gap are held and acked at the gap; the gap releases the run."""
    m = machine()
    assert m.handle(from_a(data(3, 1, b"c")), 0.0) == [ack_to_a(0)]
    assert m.handle(from_a(data(2, 1, b"b")), 0.0) == [ack_to_a(0)]
    assert m.handle(from_a(data(1, 1, b"a")), 0.0) == [
        deliver(b"a"),
        deliver(b"b"),
        deliver(b"c"),
        ack_to_a(3),
    ]


def test_duplicates_are_dropped_counted_and_reacked() -> None:
    """Receiver: a delivered or already held message is dropped, counted and acked again."""
    m = machine()
    m.handle(from_a(data(1, 1, b"a")), 0.0)
    m.handle(from_a(data(3, 1, b"c")), 0.0)
    assert m.handle(from_a(data(1, 1, b"a")), 0.0) == [ack_to_a(1)]
    assert m.handle(from_a(data(3, 1, b"c")), 0.0) == [ack_to_a(1)]
    assert m.stats.duplicates == 2
    assert m.handle(from_a(data(2, 1, b"b")), 0.0) == [deliver(b"b"), deliver(b"c"), ack_to_a(3)]


def test_too_far_ahead_is_dropped() -> None:
    """Receiver: a message receive_window or more ahead of the expected one is dropped, acked."""
    m = machine(UnicastConfig(window=2, receive_window=4))
    assert m.handle(from_a(data(5, 1, b"e")), 0.0) == [ack_to_a(0)]
    assert m.stats.out_of_window == 1
    assert m.handle(from_a(data(4, 1, b"d")), 0.0) == [ack_to_a(0)]  # held: 3 ahead
    assert m.stats.out_of_window == 1


def test_first_contact_starts_at_base() -> None:
    """Receiver: with no state for the sender, the next expected message is the UData's base."""
    m = machine()
    assert m.handle(from_a(data(7, 5, b"g")), 0.0) == [ack_to_a(4)]
    assert m.handle(from_a(data(5, 5, b"e")), 0.0) == [deliver(b"e"), ack_to_a(5)]
    assert m.handle(from_a(data(6, 5, b"f")), 0.0) == [deliver(b"f"), deliver(b"g"), ack_to_a(7)]


def test_base_above_expected_skips_abandoned_messages() -> None:
    """Receiver: a base above the expected number (sender gave up) forgets what lies below it."""
    m = machine()
    m.handle(from_a(data(3, 1, b"c")), 0.0)  # held, behind the gap at 1
    m.handle(from_a(data(6, 1, b"f")), 0.0)  # held
    assert m.handle(from_a(data(5, 4, b"e")), 0.0) == [ack_to_a(3)]
    assert m.handle(from_a(data(4, 4, b"d")), 0.0) == [
        deliver(b"d"),
        deliver(b"e"),
        deliver(b"f"),
        ack_to_a(6),
    ]
    assert m.stats.delivered == 3


def test_stream_refused_for_twice_the_give_up_time_starts_over() -> None:
    """Receiver rule (stuck stream): if everything a peer sends is refused (stale,
    duplicate, out of window), with gaps of at most 2 * rto_max, for twice the time an
    honest sender retransmits before giving up (2 * 5.875 s here), the state is wrong (a
    forged higher incarnation or base left it so): the receiver starts over from the
    message at hand. A longer gap starts a new run, so an honest sender never trips it."""
    m = machine()
    assert m.handle(from_a(data(1, 1, b"forged"), inc=9), 0.0)[0] == deliver(b"forged", inc=9)
    for t in (0.5, 2.0, 3.5, 5.0, 6.5, 8.0, 9.5, 11.0, 12.0):
        assert m.handle(from_a(data(1, 1, b"x")), t) == []  # stale: an older life
    assert m.handle(from_a(data(1, 1, b"x")), 12.25) == [deliver(b"x"), ack_to_a(1)]
    assert (m.stats.stale, m.stats.restarted) == (9, 1)
    # A forged base far ahead: the real messages are duplicates until the run is long enough.
    m = machine()
    m.handle(from_a(data(2**40, 2**40, b"forged")), 0.0)
    assert m.handle(from_a(data(5, 5, b"r")), 0.5) == [ack_to_a(2**40)]
    assert m.handle(from_a(data(5, 5, b"r")), 12.25) == [ack_to_a(2**40)]  # gap > 2 s: new run
    for i in range(1, 8):  # the run from 12.25 goes on, every 1.5 s, to 22.75
        assert m.handle(from_a(data(5, 5, b"r")), 12.25 + 1.5 * i) == [ack_to_a(2**40)]
    assert m.handle(from_a(data(5, 5, b"r")), 24.0) == [deliver(b"r"), ack_to_a(5)]
    assert m.stats.restarted == 1


def test_restarted_sender_resets_and_old_life_is_stale() -> None:
    """Receiver: a higher sender incarnation starts afresh; its old life's leftovers vanish."""
    m = machine(inc=4)
    m.handle(from_a(data(1, 1, b"a")), 0.0)
    m.handle(from_a(data(3, 1, b"c")), 0.0)  # held; lost with the old life
    assert m.handle(from_a(data(1, 1, b"A"), inc=2), 0.0) == [
        deliver(b"A", inc=2),
        ack_to_a(1, receiver=4, sender=2),
    ]
    assert m.handle(from_a(data(2, 1, b"b")), 0.0) == []
    assert m.stats.stale == 1
    assert m.handle(from_a(data(2, 1, b"B"), inc=2), 0.0) == [
        deliver(b"B", inc=2),
        ack_to_a(2, receiver=4, sender=2),
    ]


def test_peer_gone_forgets_held_but_keeps_position() -> None:
    """Receiver: PeerGone drops held messages; delivered ones stay delivered (no duplicates)."""
    m = machine()
    m.handle(from_a(data(1, 1, b"a")), 0.0)
    m.handle(from_a(data(3, 1, b"c")), 0.0)
    assert m.handle(PeerGone(peer=A), 0.0) == []
    assert m.handle(from_a(data(1, 1, b"a")), 0.0) == [ack_to_a(1)]
    assert m.handle(from_a(data(2, 1, b"b")), 0.0) == [deliver(b"b"), ack_to_a(2)]
    assert m.handle(from_a(data(3, 1, b"c")), 0.0) == [deliver(b"c"), ack_to_a(3)]


# ------------------------------------------------------------------ config


@pytest.mark.parametrize(
    ("kwargs", "pattern"),
    [
        ({"window": 0}, "window is 0"),
        ({"max_queue": -1}, "max_queue"),
        ({"rto_initial": 0.0}, "rto_initial is 0.0"),
        ({"rto_initial": 2.0}, "rto_max .* below rto_initial"),
        ({"rto_max": float("inf")}, "finite"),
        ({"rto_backoff": 0.5}, "rto_backoff"),
        ({"jitter": 1.5}, "jitter"),
        ({"max_attempts": 0}, "max_attempts"),
        ({"window": 300}, "receive_window .* below window"),
    ],
)
def test_config_errors(kwargs: dict[str, Any], pattern: str) -> None:
    """Config: bad values and contradicting timeouts raise ConfigError saying what to fix."""
    with pytest.raises(ConfigError, match=pattern):
        UnicastConfig(**kwargs)


def test_incarnation_out_of_range() -> None:
    """Config: the machine's incarnation must fit the wire's 32 bits."""
    with pytest.raises(ConfigError, match="incarnation"):
        machine(inc=2**32)


# ---------------------------------------------------------------- property


class Link:
    """Two machines on a FakeNet that loses, duplicates, delays and reorders.

    Datagrams go through the real codec. Faults stop at ``heal_at`` (then every
    datagram arrives after 1 ms); the run ends when nothing is in flight.
    """

    def __init__(self, seed: int, loss: float, dup: float, heal_at: float, cfg: UnicastConfig):
        self.nodes = {
            A: UnicastMachine(cfg, incarnation=Incarnation(1), rng=random.Random(seed + 1)),
            B: UnicastMachine(cfg, incarnation=Incarnation(2), rng=random.Random(seed + 2)),
        }
        self.net = FakeNet(
            rng=random.Random(seed),
            conditions=Conditions(latency=(0.0005, 0.05), loss=loss, duplicate=dup),
            codec=True,
        )
        for me, m in self.nodes.items():
            self.net.add(me, m, incarnation=m.incarnation)
        self.net.call_at(heal_at, self.heal)

    def heal(self) -> None:
        self.net.conditions = Conditions(latency=(0.001, 0.001))

    def push(self, when: float, at: NodeId, item: Submit) -> None:
        self.net.call_at(when, lambda: self.net.feed(at, item))

    @property
    def delivered(self) -> dict[NodeId, list[DeliverUnicast]]:
        return {n: self.net.notices_of(DeliverUnicast, n) for n in (A, B)}

    @property
    def unreachable(self) -> list[PeerUnreachable]:
        return self.net.notices_of(PeerUnreachable)

    def run(self) -> None:
        assert self.net.run_until_quiet(600.0), "the link did not go quiet"
        kinds = {type(n.action) for n in self.net.notices}
        assert kinds <= {DeliverUnicast, PeerUnreachable}, kinds


@settings(max_examples=100, deadline=None)
@given(
    seed=st.integers(0, 2**32 - 1),
    n_ab=st.integers(0, 60),
    n_ba=st.integers(0, 20),
    loss=st.floats(0.0, 0.5),
    dup=st.floats(0.0, 0.3),
)
def test_lossy_link_delivers_everything_exactly_once_in_order(
    seed: int, n_ab: int, n_ba: int, loss: float, dup: float
) -> None:
    """Property: through loss, duplication and reordering, each message arrives once, in order."""
    cfg = UnicastConfig(window=8, max_attempts=50)  # 50 attempts outlast the 3 s of faults
    link = Link(seed, loss, dup, heal_at=3.0, cfg=cfg)
    plan = random.Random(seed ^ 0x5EED)
    sent: dict[NodeId, list[bytes]] = {A: [], B: []}
    for me, peer, n in ((A, B, n_ab), (B, A, n_ba)):
        times = sorted(plan.uniform(0.0, 2.0) for _ in range(n))
        for i, when in enumerate(times):
            payload = b"%d:%d" % (me, i)
            sent[me].append(payload)
            link.push(when, me, Submit(to=peer, kind=i % 256, payload=payload))
    link.run()
    assert link.unreachable == []
    for me, peer in ((A, B), (B, A)):
        got = link.delivered[peer]
        assert [d.payload for d in got] == sent[me]
        assert [d.kind for d in got] == [i % 256 for i in range(len(sent[me]))]
        assert {(d.sender, d.incarnation) for d in got} <= {(me, link.nodes[me].incarnation)}
        assert link.nodes[me].backlog == {}
        assert link.nodes[me].next_deadline() is None


@settings(max_examples=60, deadline=None)
@given(seed=st.integers(0, 2**32 - 1), n=st.integers(1, 40), loss=st.floats(0.3, 0.9))
def test_giving_up_never_duplicates_or_reorders(seed: int, n: int, loss: float) -> None:
    """Property: when the sender gives up on heavy loss, what arrives is in order, at most once,
    every message not reported undelivered was delivered, and a message sent once the link
    heals gets through (the receiver skips what was abandoned)."""
    cfg = UnicastConfig(window=4, max_attempts=3)
    link = Link(seed, loss, 0.2, heal_at=20.0, cfg=cfg)
    plan = random.Random(seed)
    sent = []
    for i, when in enumerate(sorted(plan.uniform(0.0, 15.0) for _ in range(n))):
        sent.append(b"%d" % i)
        link.push(when, A, Submit(to=B, kind=0, payload=sent[-1]))
    link.push(21.0, A, Submit(to=B, kind=0, payload=b"%d" % n))  # after the faults end
    link.run()
    got = [d.payload for d in link.delivered[B]]
    assert got[-1] == b"%d" % n  # the receiver skipped whatever was abandoned
    got.pop()
    indices = [int(p) for p in got]
    assert indices == sorted(set(indices))  # in order, no duplicates
    assert set(got) <= set(sent)
    abandoned = sum(u.undelivered for u in link.unreachable)
    assert len(got) + abandoned >= n
    assert link.nodes[A].stats.abandoned == abandoned
