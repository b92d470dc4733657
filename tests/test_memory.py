"""Tests of powergrid.sim.memory: delivery, groups, timers, cost of idleness, determinism."""

from __future__ import annotations

import hashlib
import io
import json
import random
from typing import Any

import pytest
from hypothesis import given
from hypothesis import strategies as st
from toys import GROUP, Echo, Got, Member, Recorder, Ticker, datagram

from powergrid.errors import ConfigError, UsageError
from powergrid.events import JoinGroup, LeaveGroup, Transmit, TransmitGroup, View, ViewChanged
from powergrid.events import Member as Member_
from powergrid.sim.memory import MemoryNetwork, Trace
from powergrid.types import Epoch, GroupId, Incarnation, NodeId


def send(src: int, dst: int, value: int) -> Transmit:
    return Transmit(to=NodeId(dst), data=datagram(src, value))


def test_unicast_arrives_after_the_latency() -> None:
    """Rule: a Transmit reaches its node exactly one link latency later."""
    net = MemoryNetwork(latency=0.25)
    b = Recorder(2)
    net.add(b)
    net.add(Recorder(1, on_start=[send(1, 2, 7)]))
    net.run_until(0.2)
    assert b.received == []
    net.run_until(1.0)
    assert b.received == [(0.25, 1, 7)]
    assert net.now == 1.0
    assert net.log == [(0.25, 2, Got(sender=1, value=7))]


def test_latency_function_per_link() -> None:
    """Rule: a latency callable is asked per (src, dst)."""
    asked: list[tuple[int, int]] = []

    def latency(src: NodeId, dst: NodeId) -> float:
        asked.append((src, dst))
        return 0.1 * dst

    net = MemoryNetwork(latency=latency)
    b, c = Recorder(2), Recorder(3)
    net.add(b)
    net.add(c)
    net.add(Recorder(1, on_start=[send(1, 3, 1), send(1, 2, 2)]))
    net.run_until_quiet(10)
    assert asked == [(1, 3), (1, 2)]
    assert b.received == [(0.1 * 2, 1, 2)]
    assert c.received == [(0.1 * 3, 1, 1)]


def test_group_copies_go_to_subscribers_in_id_order_not_the_sender() -> None:
    """Rule: TransmitGroup sends one copy per subscriber, sorted by id, skipping the sender."""
    order: list[int] = []
    net = MemoryNetwork(observer=lambda t, node, out: order.append(node))
    members = [Member(n) for n in (5, 3, 9)]
    for m in members:
        net.add(m)
    net.add(Member(1))
    net.add(
        Recorder(
            4,
            on_start=[JoinGroup(group=GROUP), TransmitGroup(group=GROUP, data=datagram(4, 1))],
        )
    )
    assert net.subscribers(GROUP) == (1, 3, 4, 5, 9)
    net.run_until_quiet(1)
    assert order == [1, 3, 5, 9]
    assert net.stats.sent == 4
    assert net.stats.delivered == 4


def test_loopback_delivers_group_datagrams_to_the_sender() -> None:
    """Rule: with loopback=True the sender gets its own group datagram too."""
    net = MemoryNetwork(loopback=True)
    a = Recorder(
        1, on_start=[JoinGroup(group=GROUP), TransmitGroup(group=GROUP, data=datagram(1, 3))]
    )
    net.add(a)
    net.run_until_quiet(1)
    assert a.received == [(0.001, 1, 3)]


def test_leave_group_stops_group_copies() -> None:
    """Rule: after LeaveGroup a node gets no more group datagrams."""
    net = MemoryNetwork()
    m = Member(2, leave_after=1)
    net.add(m)
    talker = Ticker(1, period=1.0, talk=True)
    net.add(talker)
    net.run_until(3.5)
    assert m.received == [(1.001, 1, 1)]
    assert net.subscribers(GROUP) == (1,)


def test_notifications_go_to_observer_log_and_can_be_unlogged() -> None:
    """Rule: non-datagram outputs go to the observer; the log can be turned off."""
    seen: list[tuple[float, int, object]] = []
    net = MemoryNetwork(keep_log=False, observer=lambda t, n, o: seen.append((t, n, o)))
    net.add(Recorder(2))
    net.add(Recorder(1, on_start=[send(1, 2, 4)]))
    net.run_until_quiet(1)
    assert seen == [(0.001, 2, Got(sender=1, value=4))]
    assert net.log is None
    assert net.stats.notifications == 1


def test_drop_hook_loses_chosen_copies() -> None:
    """Rule: drop(src, dst, data) -> True loses that copy and counts it by type."""
    net = MemoryNetwork(drop=lambda s, d, data: d == 3)
    b, c = Member(2), Member(3)
    net.add(b)
    net.add(c)
    net.add(Ticker(1, talk=True))
    net.run_until(1.5)
    assert [v for _, _, v in b.received] == [1]
    assert c.received == []
    assert net.stats.sent == 2
    assert net.stats.dropped == 1
    assert net.stats.dropped_by_type == {1: 1}
    assert net.stats.delivered_by_type == {1: 1}
    assert net.stats.sent_by_type == {1: 2}


def test_datagram_to_absent_node_is_dropped() -> None:
    """Rule: a datagram to an address with no node is counted as dropped."""
    net = MemoryNetwork()
    net.add(Recorder(1, on_start=[send(1, 99, 1)]))
    assert net.run_until_quiet(1) is True
    assert (net.stats.sent, net.stats.delivered, net.stats.dropped) == (1, 0, 1)


def test_timer_fires_at_the_exact_deadline() -> None:
    """Rule: handle_deadline is called at next_deadline(), not before, and rearmed after."""
    net = MemoryNetwork()
    t = Ticker(1, period=0.3)
    net.add(t, at=0.5)
    net.run_until(1.45)
    assert t.wakes == [0.8, pytest.approx(1.1), pytest.approx(1.4)]
    assert net.stats.wakeups == 3


def test_moving_a_deadline_supersedes_the_old_wakeup() -> None:
    """Rule: a deadline that moves replaces the scheduled wake-up (lazy invalidation)."""
    net = MemoryNetwork()
    t = Ticker(1, period=5.0)
    net.add(t)
    # the endpoint moves its deadline earlier, then a datagram makes the network re-read it
    t.deadline = 2.0
    net.add(Recorder(2, on_start=[Transmit(to=NodeId(1), data=datagram(2, 0))]))
    net.run_until(6.0)
    assert t.wakes == [2.0]  # not 5.0: that wake-up was superseded
    assert net.stats.stale_wakeups == 1
    t.deadline = None
    net.add(Recorder(3, on_start=[Transmit(to=NodeId(1), data=datagram(3, 0))]))
    net.run_until(100.0)
    assert t.wakes == [2.0]  # deadline None cancels


def test_overdue_deadline_fires_now() -> None:
    """Rule: a deadline already in the past wakes the node at the current time."""
    net = MemoryNetwork()
    net.run_until(10.0)
    t = Ticker(1)
    net.add(t)
    t.deadline = 3.0
    net.add(Recorder(2, on_start=[Transmit(to=NodeId(1), data=datagram(2, 0))]))
    net.run_until(10.001)
    assert t.wakes == [10.001]


def test_a_thousand_idle_nodes_cost_nothing_per_simulated_second() -> None:
    """Rule: the clock jumps from event to event; idle nodes are never ticked."""
    net = MemoryNetwork()
    idle = [Recorder(n) for n in range(1, 1001)]
    for r in idle:
        net.add(r)
    slow = [Ticker(n, period=100.0) for n in range(2001, 2011)]
    for s in slow:
        net.add(s)
    calls_after_start = net.stats.calls
    assert calls_after_start == 1010
    net.run_until(10_000.0)
    # 10 tickers x 100 wake-ups; the 1000 idle nodes are never called again
    assert net.stats.calls - calls_after_start == 1000
    assert sum(r.calls for r in idle) == 1000
    assert net.pending == 10
    assert net.stats.stale_wakeups == 0


def test_run_until_quiet_reports_quiet_or_limit() -> None:
    """Rule: run_until_quiet returns True when nothing is pending, False at the limit."""
    net = MemoryNetwork()
    net.add(Echo(1, limit=4))
    net.add(Recorder(2, on_start=[send(2, 1, 0)]))
    assert net.run_until_quiet(100) is True
    assert net.now == pytest.approx(0.002)  # the echo's reply was the last event
    cancelled = MemoryNetwork()
    t = Ticker(1)
    cancelled.add(t)
    t.deadline = None  # the wake-up at 1.0 is now superseded
    cancelled.add(Recorder(2, on_start=[send(2, 1, 0)]))
    assert cancelled.run_until_quiet(0.5) is True
    assert cancelled.pending == 0 and t.wakes == []
    ticking = MemoryNetwork()
    ticking.add(Ticker(1))
    assert ticking.run_until_quiet(5.5) is False
    assert ticking.now == 5.0


def test_echo_ping_pong_times() -> None:
    """Rule: replies go out at receive time and arrive one latency later, alternating."""
    net = MemoryNetwork(latency=0.5)
    a, b = Echo(1, limit=3), Echo(2, limit=3, on_start=[send(2, 1, 0)])
    net.add(a)
    net.add(b)
    net.run_until_quiet(100)
    assert a.received == [(0.5, 2, 0), (1.5, 2, 2)]
    assert b.received == [(1.0, 1, 1), (2.0, 1, 3)]


def test_step_processes_one_event() -> None:
    """Rule: step() processes exactly one event and returns False when none is left."""
    net = MemoryNetwork()
    b = Recorder(2)
    net.add(b)
    net.add(Recorder(1, on_start=[send(1, 2, 1), send(1, 2, 2)]))
    assert net.step() is True
    assert [v for _, _, v in b.received] == [1]
    assert net.step() is True
    assert net.step() is False
    assert [v for _, _, v in b.received] == [1, 2]


@given(
    delays=st.lists(st.sampled_from([0.0, 0.001, 0.002, 0.003]), min_size=1, max_size=30),
    stepping=st.booleans(),
)
def test_deliveries_in_time_then_send_order_whatever_the_latencies(
    delays: list[float], stepping: bool
) -> None:
    """Rule: datagrams are delivered in (due time, send order), also when a later send is
    due earlier (deliveries wait in a queue while in time order, else in the heap)."""
    pending = list(delays)

    def latency(src: NodeId, dst: NodeId) -> float:
        return pending.pop(0)

    net = MemoryNetwork(latency=latency)
    for n in (2, 3, 4):
        net.add(Recorder(n))
    sends = [send(1, 2 + i % 3, i) for i in range(len(delays))]
    net.add(Recorder(1, on_start=sends))
    assert net.pending >= 1 and net.next_time() == min(delays)
    if stepping:
        while net.step():
            pass
    else:
        net.run_until_quiet(1.0)
    assert net.pending == 0 and net.next_time() is None
    got = [(t, out.value) for t, _, out in net.log or []]
    assert got == sorted((d, i) for i, d in enumerate(delays))


def test_remove_loses_in_flight_datagrams_and_timer() -> None:
    """Rule: remove() discards the endpoint, its timer and datagrams in flight to it,
    even if a new node takes the address before they arrive."""
    net = MemoryNetwork(latency=1.0)
    t = Ticker(2, period=0.5)
    net.add(t)
    net.add(Recorder(1, on_start=[send(1, 2, 1)]))
    net.run_until(0.4)
    assert net.remove(2) is t
    fresh = Recorder(2)
    net.add(fresh)
    net.run_until(5.0)
    assert fresh.received == []
    assert t.wakes == []
    assert net.stats.dropped == 1
    assert net.remove(77) is None


def test_pause_queues_deliveries_and_holds_the_timer() -> None:
    """Rule: a paused node gets nothing; resume delivers the inbox in order and rearms."""
    net = MemoryNetwork()
    t = Ticker(1, period=1.0)
    net.add(t)
    net.add(Recorder(2, on_start=[send(2, 1, 5), send(2, 1, 6)]))
    assert net.pause(1) is True
    assert net.pause(1) is False
    net.run_until(3.5)
    assert t.received == [] and t.wakes == []
    assert net.resume(1) is True
    assert net.resume(1) is False
    assert t.received == [(3.5, 2, 5), (3.5, 2, 6)]
    net.run_until(4.6)
    assert t.wakes == [3.5, 4.5]  # the overdue deadline fires at once, then every period


def test_add_errors_and_delayed_start() -> None:
    """Rule: duplicate ids, adding in the past and running backwards raise UsageError."""
    net = MemoryNetwork()
    r = Recorder(1)
    net.add(r)
    with pytest.raises(UsageError, match="already on the network"):
        net.add(Recorder(1))
    net.run_until(2.0)
    with pytest.raises(UsageError, match=r"already 2\.0"):
        net.add(Recorder(3), at=1.0)
    with pytest.raises(UsageError, match="cannot run until"):
        net.run_until(1.0)
    late = Recorder(4)
    net.add(late, at=3.0)
    assert list(net.nodes) == [1]
    net.run_until(3.0)
    assert list(net.nodes) == [1, 4] and late.calls == 1


def test_config_errors() -> None:
    """Rule: seed with rng, or a negative latency, raise ConfigError."""
    with pytest.raises(ConfigError):
        MemoryNetwork(seed=1, rng=random.Random(1))
    with pytest.raises(ConfigError, match=">= 0"):
        MemoryNetwork(latency=-1)


def _jittery_run(seed: int) -> list[tuple[float, int, int, int]]:
    got: list[tuple[float, int, int, int]] = []

    def watch(t: float, node: int, out: object) -> None:
        assert isinstance(out, Got)
        got.append((t, node, out.sender, out.value))

    net = MemoryNetwork(seed=seed, latency=lambda s, d: net.rng.uniform(0.001, 0.1), observer=watch)
    for n in range(1, 6):
        net.add(Ticker(n, period=0.1 * n, talk=True))
    for n in range(10, 13):
        net.add(Member(n))
    net.run_until(3.0)
    return got


def test_same_seed_same_deliveries() -> None:
    """Rule: same seed and endpoints -> the identical sequence of deliveries."""
    a, b, c = _jittery_run(1), _jittery_run(1), _jittery_run(2)
    assert a == b
    assert len(a) > 100
    assert a != c


def test_trace_lines_and_hash() -> None:
    """Rule: the trace records starts, deliveries and outputs as sorted-key JSON lines."""
    buf = io.StringIO()
    trace = Trace(keep=True, file=buf)
    net = MemoryNetwork(trace=trace)
    net.add(Recorder(2))
    net.add(Recorder(1, on_start=[send(1, 2, 9)]))
    net.run_until_quiet(1)
    assert trace.lines is not None
    events = [json.loads(line)["ev"] for line in trace.lines]
    assert events == ["start", "start", "deliver", "output"]
    assert json.loads(trace.lines[2]) == {
        "t": 0.001,
        "node": 2,
        "ev": "deliver",
        "src": 1,
        "data": datagram(1, 9).hex(),
    }
    assert buf.getvalue() == "".join(line + "\n" for line in trace.lines)
    again = Trace()
    for line in trace.lines:
        d = json.loads(line)
        again.record(d.pop("t"), d.pop("node"), d.pop("ev"), **d)
    assert again.hexdigest == trace.hexdigest


_VALUES = st.one_of(
    st.text(),
    st.integers(),
    st.floats(),  # NaN and infinities included: json.dumps writes them its own way
    st.booleans(),
    st.none(),
    st.lists(st.integers(), max_size=3),
)


@given(fields=st.dictionaries(st.text(min_size=1), _VALUES, max_size=6), t=st.floats())
def test_trace_lines_are_exactly_json_dumps(fields: dict[str, Any], t: float) -> None:
    """Rule: a line is json.dumps of its fields with sorted keys and no spaces, byte for
    byte (the hashes of runs recorded before the hand-built lines still hold)."""
    fields = {k: v for k, v in fields.items() if k not in ("t", "node", "ev")}
    trace = Trace(keep=True)
    trace.record(t, 7, "ev", **fields)
    expected = {**fields, "t": t, "node": 7, "ev": "ev"}
    assert trace.lines == [json.dumps(expected, sort_keys=True, separators=(",", ":"))]


@given(
    t=st.one_of(st.floats(), st.integers(0, 10)),
    node=st.integers(0, 2**48),
    src=st.integers(0, 2**48),
    data=st.binary(max_size=40),
)
def test_trace_deliver_is_the_recorded_line(t: float, node: int, src: int, data: bytes) -> None:
    """Rule: deliver() writes the line record() would write for a delivery."""
    fast, slow = Trace(keep=True), Trace(keep=True)
    fast.deliver(t, node, src, data)
    slow.record(t, node, "deliver", src=src, data=data.hex())
    assert fast.lines == slow.lines
    assert fast.hexdigest == slow.hexdigest


def test_trace_hash_is_the_sha256_of_every_line_at_any_point() -> None:
    """Rule: hexdigest is the SHA-256 of the lines so far, each with its newline, whenever
    it is read (lines are hashed in batches)."""
    trace = Trace(keep=True)
    for i in range(700):
        trace.record(i * 0.5, i, "x", n=i)
        if i in (0, 255, 256, 300):
            assert trace.lines is not None
            text = "".join(line + "\n" for line in trace.lines)
            assert trace.hexdigest == hashlib.sha256(text.encode()).hexdigest()
    assert trace.lines is not None and trace.count == 700
    text = "".join(line + "\n" for line in trace.lines)
    assert trace.hexdigest == hashlib.sha256(text.encode()).hexdigest()


def test_command_emits_outputs_and_rearms() -> None:
    """Rule: command() runs a local call on the endpoint now, routes its outputs and
    re-reads its deadline; an absent or paused node raises UsageError."""
    net = MemoryNetwork()
    t = Ticker(1, period=10.0)
    net.add(t)
    sink = Recorder(2)
    net.add(sink)
    net.run_until(1.0)

    def poke(ep: Ticker, now: float) -> list[Transmit]:
        ep.deadline = now + 0.5
        return [send(1, 2, 42)]

    net.command(1, poke)
    net.run_until(2.0)
    assert sink.received == [(1.001, 1, 42)]
    assert t.wakes == [1.5]
    net.pause(2)
    with pytest.raises(UsageError, match="paused"):
        net.command(2, lambda ep, now: [])
    with pytest.raises(UsageError, match="not on the network"):
        net.command(9, lambda ep, now: [])


def test_fan_out_mode_sends_group_datagrams_to_seeds_and_the_senders_view_only() -> None:
    """Rule: with fanout_seeds a group datagram goes to the seeds and the members of the
    sender's last view of the group (its ViewChanged refreshes that), in id order, never to
    the sender, and not to a subscriber that is neither; LeaveGroup falls back to seeds."""
    view = View(
        group=GroupId(GROUP),
        view_id=1,
        leader=NodeId(5),
        epoch=Epoch(1),
        members=tuple(Member_(node=NodeId(n), incarnation=Incarnation(1)) for n in (4, 5)),
    )
    net = MemoryNetwork(fanout_seeds=(NodeId(3), NodeId(4)))
    lurker, seed, peer = Member(2), Recorder(3), Recorder(5)
    for n in (lurker, seed, peer):
        net.add(n)
    net.add(
        Recorder(
            4,
            on_start=[
                JoinGroup(group=GROUP),
                TransmitGroup(group=GROUP, data=datagram(4, 1)),
                ViewChanged(view=view),
                TransmitGroup(group=GROUP, data=datagram(4, 2)),
                LeaveGroup(group=GROUP),
                TransmitGroup(group=GROUP, data=datagram(4, 3)),
            ],
        )
    )
    net.run_until_quiet(1)
    assert [v for _, _, v in seed.received] == [1, 2, 3]
    assert [v for _, _, v in peer.received] == [2]
    assert lurker.received == []
    assert net.stats.sent == 4
