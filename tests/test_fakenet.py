"""The fake network for bare machines (powergrid.testing.fakenet)."""

from __future__ import annotations

import random
from typing import Any

import pytest

from powergrid import wire
from powergrid.errors import ConfigError, UsageError
from powergrid.events import (
    DeadlineReached,
    Multicast,
    MulticastReliable,
    Received,
    Send,
    SendReliable,
)
from powergrid.testing import Address, Conditions, FakeNet, Packet, Stuck
from powergrid.types import NodeId


def data(seq: int, payload: bytes = b"") -> wire.Data:
    return wire.Data(seq=seq, kind=0, payload=payload)


class Toy:
    """Records its events; sends what it is told to at its deadlines."""

    def __init__(self, plan: dict[float, list[object]] | None = None) -> None:
        self.plan = dict(plan or {})
        self.events: list[tuple[float, object]] = []

    def handle(self, event: object, now: float) -> list[object]:
        self.events.append((now, event))
        if isinstance(event, DeadlineReached):
            out: list[object] = []
            for t in sorted(t for t in self.plan if t <= now):
                out += self.plan.pop(t)
            return out
        return []

    def next_deadline(self) -> float | None:
        return min(self.plan, default=None)

    def received(self) -> list[tuple[float, int, int, Any]]:
        return [
            (t, e.sender, e.incarnation, e.message)
            for t, e in self.events
            if isinstance(e, Received)
        ]


def net(**kw: Any) -> FakeNet:
    return FakeNet(rng=random.Random(7), **kw)


def test_send_arrives_after_the_latency_as_received_and_is_recorded() -> None:
    n = net(conditions=Conditions(latency=(0.25, 0.25)))
    a = Toy({1.0: [Send(to=NodeId(2), message=data(1))]})
    b = Toy()
    n.add(1, a, incarnation=3)
    n.add(2, b)
    assert n.run_until_quiet(10.0)
    assert b.received() == [(1.25, 1, 3, data(1))]
    assert a.events == [(1.0, DeadlineReached())]  # woken exactly at its deadline
    assert [(d.time, d.packet.source, d.packet.destination) for d in n.delivered] == [
        (1.25, Address(NodeId(1)), Address(NodeId(2)))
    ]


def test_multicast_goes_to_every_other_hearer_in_address_order() -> None:
    n = net(conditions=Conditions(latency=(0.0, 0.0)))
    n.add(5, Toy({0.5: [Multicast(message=data(1))]}), multicasts_to="g")
    got = {i: Toy() for i in (1, 2, 3, 4)}
    n.add(3, got[3], hears=["g"])
    n.add(1, got[1], hears=["g", "h"])
    n.add(2, got[2], hears=["h"])  # not in the group
    n.add(4, got[4], hears=["g"], accepts=lambda m: not isinstance(m, wire.Data))
    n.run(1.0)
    assert [d.packet.destination.node for d in n.delivered] == [1, 3]
    assert got[2].events == [] and got[4].events == []


def test_two_machines_on_one_node_split_sends_by_accepts() -> None:
    n = net()
    n.add(
        1,
        Toy(
            {
                0.1: [
                    Send(to=NodeId(9), message=data(1)),
                    Send(to=NodeId(9), message=wire.Nak(1, 1, 1, 1)),
                ]
            }
        ),
    )
    data_m, nak_m = Toy(), Toy()
    n.add(Address(NodeId(9), "data"), data_m, accepts=lambda m: isinstance(m, wire.Data))
    n.add(Address(NodeId(9), "nak"), nak_m, accepts=lambda m: isinstance(m, wire.Nak))
    n.run(1.0)
    assert [type(m) for *_, m in data_m.received()] == [wire.Data]
    assert [type(m) for *_, m in nak_m.received()] == [wire.Nak]
    assert n.machine(Address(NodeId(9), "nak")) is nak_m


def test_loss_drops_unreliable_copies_but_not_reliable_ones() -> None:
    n = net(conditions=Conditions(loss=1.0))
    sends = [Send(to=NodeId(2), message=data(1)), SendReliable(to=NodeId(2), message=data(2))]
    n.add(1, Toy({0.0: [*sends, MulticastReliable(message=data(3))]}))
    b = Toy()
    n.add(2, b)
    n.run(1.0)
    assert [m.seq for *_, m in b.received()] == [2, 3]
    assert all(d.packet.reliable for d in n.delivered)


def test_duplicate_makes_two_copies() -> None:
    n = net(conditions=Conditions(duplicate=1.0, latency=(0.001, 0.002)))
    n.add(1, Toy({0.0: [Send(to=NodeId(2), message=data(1))]}))
    b = Toy()
    n.add(2, b)
    n.run(1.0)
    assert [m for *_, m in b.received()] == [data(1), data(1)]
    assert n.sent == 2


def test_partition_drops_what_arrives_across_the_cut_and_heal_restores() -> None:
    n = net(conditions=Conditions(latency=(0.1, 0.1)))
    n.add(1, Toy({0.0: [Multicast(message=data(1))], 0.5: [Multicast(message=data(2))]}))
    two, three = Toy(), Toy()
    n.add(2, two)
    n.add(3, three)
    n.call_at(0.05, lambda: n.partition({1, 2}, {3}))  # data(1) is in flight
    n.run(0.3)
    assert not n.connected(1, 3) and n.connected(1, 2)
    n.heal()
    n.run(1.0)
    assert [m.seq for *_, m in two.received()] == [1, 2]
    assert [m.seq for *_, m in three.received()] == [2]


def test_crash_stops_events_and_deadlines_restart_is_a_new_life() -> None:
    n = net(conditions=Conditions(latency=(0.1, 0.1)))
    a = Toy({0.0: [Send(to=NodeId(2), message=data(1))]})
    b = Toy({0.05: []})
    n.add(1, a)
    n.add(2, b)
    n.run(0.01)
    n.crash(2)
    assert not n.up(2)
    n.run(1.0)
    assert b.events == []  # neither its deadline nor the packet
    with pytest.raises(UsageError, match="down"):
        n.feed(2, DeadlineReached())
    fresh = Toy()
    n.restart(2, fresh)
    assert n.incarnation(2) == 2 and n.up(2)
    n.restart(1, Toy({1.5: [Send(to=NodeId(2), message=data(2))]}))
    n.run(2.0)
    assert fresh.received() == [(1.6, 1, 2, data(2))]


@pytest.mark.parametrize("drops", [False, True])
def test_a_crashed_lifes_packets_in_flight(drops: bool) -> None:
    n = net(conditions=Conditions(latency=(0.1, 0.1)), crash_drops_in_flight=drops)
    n.add(1, Toy({0.0: [Send(to=NodeId(2), message=data(1))]}))
    b = Toy()
    n.add(2, b)
    n.run(0.05)
    n.crash(1)
    n.run(1.0)
    assert len(b.received()) == (0 if drops else 1)


def test_same_seed_same_run_other_seed_other_run() -> None:
    def run(seed: int) -> list[tuple[float, int]]:
        n = FakeNet(
            rng=random.Random(seed),
            conditions=Conditions(latency=(0.001, 0.05), loss=0.3, duplicate=0.2),
        )
        plan: dict[float, list[object]] = {
            i / 10: [Multicast(message=data(i))] for i in range(1, 30)
        }
        n.add(1, Toy(plan))
        for i in (2, 3, 4):
            n.add(i, Toy())
        n.run(5.0)
        return [(d.time, d.packet.message.seq) for d in n.delivered]  # type: ignore[attr-defined]

    assert run(1) == run(1)
    assert run(1) != run(2)


@pytest.mark.parametrize("timers_first", [False, True])
def test_a_tie_between_an_arrival_and_a_deadline(timers_first: bool) -> None:
    n = net(conditions=Conditions(latency=(0.5, 0.5)), timers_first=timers_first)
    n.add(1, Toy({0.5: [Send(to=NodeId(2), message=data(1))]}))
    b = Toy({1.0: []})
    n.add(2, b)
    n.run(2.0)
    kinds = [type(e).__name__ for _, e in b.events]
    assert kinds == (
        ["DeadlineReached", "Received"] if timers_first else ["Received", "DeadlineReached"]
    )


def test_scheduled_calls_run_in_order_and_stop_ends_a_run() -> None:
    n = net()
    seen: list[int] = []
    for i in (3, 1, 2):
        n.call_at(float(i), lambda i=i: seen.append(i))  # type: ignore[misc]
    n.call_at(2.0, lambda: seen.append(20))
    assert n.run(10.0, stop=lambda: len(seen) == 3)
    assert seen == [1, 2, 20] and n.now == 2.0
    assert not n.run(10.0) and n.now == 10.0 and seen == [1, 2, 20, 3]


class Stubborn:
    def handle(self, event: object, now: float) -> list[object]:
        return []

    def next_deadline(self) -> float:
        return 1.0


def test_a_deadline_that_does_not_advance_is_stuck() -> None:
    n = net(max_spins=50)
    n.add(1, Stubborn())
    with pytest.raises(Stuck, match=r"does not advance at 1\.0"):
        n.run(5.0)


def test_run_until_quiet_reports_a_network_that_never_quiets() -> None:
    n = net()
    n.add(1, Toy({float(i): [] for i in range(100)}))
    assert not n.run_until_quiet(10.5) and n.now == 10.5
    assert n.run_until_quiet(200.0) and n.now == 99.0


def test_route_hook_drops_or_delays_chosen_packets() -> None:
    n = net()

    def route(p: Packet) -> list[float]:
        if isinstance(p.message, wire.Data) and p.message.seq == 2:
            return []
        return [p.sent + 3.0]

    n.route = route
    n.add(1, Toy({0.0: [Multicast(message=data(1)), Multicast(message=data(2))]}))
    b = Toy()
    n.add(2, b)
    n.run(5.0)
    assert [(t, m.seq) for t, _, _, m in b.received()] == [(3.0, 1)]


def test_codec_sends_through_the_wire_format() -> None:
    n = net(codec=True)
    big = data(1, b"x" * (wire.MAX_DATAGRAM + 1))
    n.add(
        1, Toy({0.0: [Send(to=NodeId(2), message=data(1, b"ok"))], 1.0: [Multicast(message=big)]})
    )
    b = Toy()
    n.add(2, b)
    n.run(0.5)
    assert [m for *_, m in b.received()] == [data(1, b"ok")]
    with pytest.raises(wire.PayloadTooLargeError):
        n.run(2.0)


def test_notices_are_recorded_and_observe_sees_every_call() -> None:
    calls: list[tuple[Address, str, int]] = []
    n = net(observe=lambda a, e, acts: calls.append((a, type(e).__name__, len(acts))))
    n.add(1, Toy({0.2: ["hello", Send(to=NodeId(1), message=data(1))]}))
    n.run(1.0)
    assert n.notices_of(str) == ["hello"] and n.notices[0].time == 0.2
    assert n.notices_of(str, 2) == []
    assert calls == [
        (Address(NodeId(1)), "DeadlineReached", 2),
        (Address(NodeId(1)), "Received", 0),
    ]


def test_misuse_is_refused() -> None:
    n = net()
    n.add(1, Toy())
    with pytest.raises(UsageError, match="already"):
        n.add(1, Toy())
    with pytest.raises(UsageError, match="no machine at 2"):
        n.machine(2)
    n.run(1.0)
    with pytest.raises(UsageError, match="back"):
        n.run(0.5)
    with pytest.raises(ConfigError, match="latency"):
        Conditions(latency=(0.2, 0.1))
    with pytest.raises(ConfigError, match="loss"):
        Conditions(loss=1.5)
    n.remove(1)
    assert n.addresses() == []
