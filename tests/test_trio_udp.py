"""Tests of the UDP transports (trio_udp, asyncio_udp) on real sockets, loopback only.

Every test that runs a node runs on both event loops (the ``loop`` fixture,
see ``tests/loops.py``), except those that watch trio's scheduling itself.

Every socket is on 127.0.0.1, multicast goes out on interface 127.0.0.1 with
TTL 0, and ports are picked by binding port 0 first. Waiting is polling the
real clock with a hard ``fail_after`` limit, never a fixed sleep that a
result depends on.
"""

from __future__ import annotations

import contextlib
import logging
import random
import socket
import subprocess
import sys
from collections.abc import Awaitable, Callable, Iterator
from typing import Any

import attrs
import pytest
import trio
from loops import LOOPS
from toys import GROUP, Echo, Got, Member, Recorder, Ticker, datagram, value_of

from powergrid.auth import Keyring
from powergrid.errors import ConfigError, DecodeError, UsageError
from powergrid.events import (
    JoinGroup,
    LeaderElected,
    Output,
    Transmit,
    TransmitGroup,
    ViewChanged,
)
from powergrid.node import MessageDelivered, Node, NodeConfig
from powergrid.protocols.multicast import WindowFull, WindowOpen
from powergrid.transports._core import Outbox, open_group_socket
from powergrid.transports.trio_udp import (
    BUNDLE_MAGIC,
    UdpConfig,
    UdpHandle,
    UdpStats,
    pack_bundles,
    split_bundle,
)
from powergrid.types import GroupId, NodeId, format_node, node_id
from powergrid.wire import MAGIC, WIRE_LIMIT

HOST = "127.0.0.1"


def free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as s:
        s.bind((HOST, 0))
        port: int = s.getsockname()[1]
        return port


def new_id() -> NodeId:
    return node_id(HOST, free_port())


def udp_config(**kw: object) -> UdpConfig:
    """Loopback settings with fresh group ports (group g -> port base + g % 2)."""
    return UdpConfig(ttl=0, group_port_base=free_port(), group_ports=2, **kw)  # type: ignore[arg-type]


class _Current:
    """The event loop of the test running (set by the ``loop`` fixture); trio otherwise."""

    loop: Any = LOOPS["trio"]

    def __getattr__(self, name: str) -> Any:
        return getattr(self.loop, name)


L = _Current()


@pytest.fixture(params=["trio", "asyncio"])
def loop(request: pytest.FixtureRequest) -> Iterator[Any]:
    """Run the test on trio, then on asyncio."""
    L.loop = LOOPS[request.param]
    yield L.loop
    L.loop = LOOPS["trio"]


def run_node(*args: Any, insecure: bool = True, **kw: Any) -> Any:
    """The running loop's transport's ``run_node``; unkeyed (``insecure=True``) unless a
    test with a keyring passes ``insecure=False``: these tests are about the transport."""
    return L.run_node(*args, insecure=insecure, **kw)


async def until(cond: Callable[[], bool], timeout: float = 5.0) -> None:
    with L.fail_after(timeout):
        while not cond():
            await L.sleep(0.002)


def run(main: Callable[[], Awaitable[None]]) -> None:
    L.run(main)


@pytest.fixture
def raw() -> Iterator[socket.socket]:
    """A plain socket for sending hand-made datagrams to a node."""
    s = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    s.bind((HOST, 0))
    s.setsockopt(socket.IPPROTO_IP, socket.IP_MULTICAST_IF, socket.inet_aton(HOST))
    s.setsockopt(socket.IPPROTO_IP, socket.IP_MULTICAST_TTL, 0)
    yield s
    s.close()


class Tolerant(Recorder):
    """A group member that counts datagrams it cannot decode instead of raising."""

    def __init__(self, node: int) -> None:
        super().__init__(node, on_start=[JoinGroup(group=GROUP)])
        self.bad: list[bytes] = []

    def receive(self, data: bytes, now: float) -> list[Output]:
        try:
            value_of(data)
        except (DecodeError, AssertionError):
            self.bad.append(data)
            return []
        return super().receive(data, now)


class Settable(Recorder):
    """A recorder whose deadline a command sets; records its wake-ups."""

    def __init__(self, node: int) -> None:
        super().__init__(node)
        self.deadline: float | None = None
        self.wakes: list[tuple[float, float]] = []

    def set_deadline(self, at: float | None) -> list[Output]:
        self.deadline = at
        return []

    def handle_deadline(self, now: float) -> list[Output]:
        assert self.deadline is not None
        self.wakes.append((self.deadline, now))
        self.deadline = None
        return []

    def next_deadline(self) -> float | None:
        return self.deadline


# ------------------------------------------------------------------ config


def test_config_defaults_and_address_scheme() -> None:
    """Rule: group g maps to group_prefix + (g & 0xFFFF), port group_port_base + g % group_ports."""
    cfg = UdpConfig()
    assert (cfg.interface, cfg.ttl, cfg.loopback, cfg.recv_buffer) == (HOST, 1, True, 4 << 20)
    assert (cfg.max_queue, cfg.event_queue, cfg.flush_timeout) == (1024, 4096, 1.0)
    assert cfg.bundle_size == WIRE_LIMIT == 1400
    assert cfg.group_address(0) == ("239.255.0.0", 20000)
    assert cfg.group_address(1) == ("239.255.0.1", 20001)
    assert cfg.group_address(258) == ("239.255.1.2", 20258)
    assert cfg.group_address(1258) == ("239.255.4.234", 20258)
    assert cfg.group_address(0x10001) == ("239.255.0.1", 20000 + 0x10001 % 1000)
    other = UdpConfig(group_prefix="239.1.0.0", group_port_base=5000, group_ports=10)
    assert other.group_address(13) == ("239.1.0.13", 5003)
    mapped = UdpConfig(group_map=lambda g: ("239.9.9.9", 7000 + g))
    assert mapped.group_address(4) == ("239.9.9.9", 7004)
    assert UdpConfig(ttl=0).ttl == 0


@pytest.mark.parametrize(
    ("kw", "words"),
    [
        ({"interface": "eth0"}, "interface"),
        ({"ttl": -1}, "ttl"),
        ({"ttl": 256}, "ttl"),
        ({"recv_buffer": -1}, "recv_buffer"),
        ({"max_queue": 0}, "max_queue"),
        ({"event_queue": 0}, "event_queue"),
        ({"flush_timeout": -0.5}, "flush_timeout"),
        ({"flush_timeout": float("nan")}, "flush_timeout"),
        ({"group_prefix": "10.0.0.0"}, "group_prefix"),
        ({"group_prefix": "239.255.1.0"}, "group_prefix"),
        ({"group_prefix": "nope"}, "group_prefix"),
        ({"group_ports": 0}, "group_ports"),
        ({"group_port_base": 0}, "group_port_base"),
        ({"group_port_base": 65000}, "group_port_base"),
        ({"bundle_size": -1}, "bundle_size"),
        ({"bundle_size": 48}, "bundle_size"),
        ({"bundle_size": 65508}, "bundle_size"),
    ],
)
def test_config_rejects(kw: dict[str, object], words: str) -> None:
    """Rule: an invalid setting raises ConfigError naming the setting to fix."""
    with pytest.raises(ConfigError, match=words):
        UdpConfig(**kw)  # type: ignore[arg-type]


def test_config_bundle_size_bounds() -> None:
    """Rule: bundle_size is 0 (off) or room for two minimal datagrams (57: 3 + 2 x (2 + the
    25-byte header)) up to 65,507."""
    assert [UdpConfig(bundle_size=n).bundle_size for n in (0, 57, 65507)] == [0, 57, 65507]
    with pytest.raises(ConfigError, match=r"57\.\.65507"):
        UdpConfig(bundle_size=56)


# ------------------------------------------------------------------ bundles


def test_bundle_framing_is_magic_version_then_length_prefixed_datagrams() -> None:
    """Rule: a bundle is b"PB", version 1, then each datagram as u16 length + bytes."""
    assert BUNDLE_MAGIC == b"PB" != MAGIC  # never the start of a powergrid datagram
    assert pack_bundles([b"abc", b"de"], 1400) == [b"PB\x01\x00\x03abc\x00\x02de"]
    assert split_bundle(b"PB\x01\x00\x03abc\x00\x02de") == [b"abc", b"de"]


def test_bundle_pack_split_round_trip() -> None:
    """Rule: split(pack(datagrams)) gives the datagrams back, unchanged and in order."""
    rng = random.Random(7)
    for _ in range(200):
        sizes = [rng.randint(1, 700) for _ in range(rng.randint(2, 30))]
        datagrams = [bytes(rng.getrandbits(8) for _ in range(n)) for n in sizes]
        wire = pack_bundles(datagrams, 1400)
        back: list[bytes] = []
        for w in wire:
            if w[:2] == BUNDLE_MAGIC:
                parts = split_bundle(w)
                assert parts is not None and len(parts) >= 2
                back.extend(parts)
            else:
                back.append(w)
        assert back == datagrams


def test_bundles_respect_the_limit_and_fill_greedily() -> None:
    """Rule: each bundle is at most ``limit`` bytes; consecutive datagrams fill it in order."""
    d = [bytes([i]) * 40 for i in range(10)]  # 42 bytes each framed; 3 + 3 * 42 = 129
    wire = pack_bundles(d, 129)
    assert [len(w) for w in wire] == [129, 129, 129, 40]  # the last one has no company
    assert [split_bundle(w) for w in wire[:3]] == [d[0:3], d[3:6], d[6:9]]
    assert wire[3] == d[9]
    assert [len(w) for w in pack_bundles(d, 128)] == [87, 87, 87, 87, 87]  # 2 per bundle


def test_a_lone_datagram_leaves_unbundled() -> None:
    """Rule: a datagram with no company (alone, or too big to share) is sent as it is;
    one that begins with the bundle magic is wrapped so it is never read as a bundle."""
    small, big = b"PG" + b"s" * 30, b"PG" + b"b" * 1390
    assert pack_bundles([small], 1400) == [small]
    assert pack_bundles([small, big, small], 1400) == [small, big, small]
    assert pack_bundles([b"PBx"], 1400) == [b"PB\x01\x00\x03PBx"]
    assert split_bundle(pack_bundles([b"PBx"], 1400)[0]) == [b"PBx"]


def test_a_flush_sends_each_destinations_bundles_in_order() -> None:
    """Rule: a flush sends, per destination (in the order of each one's first datagram),
    what pack_bundles makes of that destination's datagrams, and counts the bundles."""
    rng = random.Random(11)
    dests = [("239.255.0.1", 20001), ("127.0.0.1", 47001), ("127.0.0.1", 47002)]
    for _ in range(300):
        stats = UdpStats()
        box = Outbox(UdpConfig(), stats, lambda: None)
        sent: list[tuple[bytes, tuple[str, int]]] = []

        def sendto(data: bytes, addr: tuple[str, int], sent: list[Any] = sent) -> int:
            sent.append((data, addr))
            return len(data)

        box.sendto = sendto
        queued = [
            (b"PG" + bytes([rng.getrandbits(8)]) * rng.choice([20, 130, 700]), rng.choice(dests))
            for _ in range(rng.randint(1, 14))
        ]
        for data, addr in queued:
            box.queue(data, addr)
        assert box.queued == len(queued)
        box.flush()
        by_dest: dict[tuple[str, int], list[bytes]] = {}
        for data, addr in queued:
            by_dest.setdefault(addr, []).append(data)
        expected = [(w, a) for a, ds in by_dest.items() for w in pack_bundles(ds, WIRE_LIMIT)]
        assert sent == expected
        bundles = [w for w, _ in expected if w[:2] == BUNDLE_MAGIC]
        assert stats.bundles_sent == len(bundles)
        assert stats.bundled == sum(len(split_bundle(w) or []) for w in bundles)
        assert (box.queued, box.pending) == (0, {})


@pytest.mark.parametrize(
    "data",
    [
        b"PB",  # no version
        b"PB\x02\x00\x01a",  # another version
        b"PB\x01",  # no datagram
        b"PB\x01\x00\x00",  # a length of 0
        b"PB\x01\x00\x05abc",  # a length past the end
        b"PB\x01\x00\x01a\x00",  # a lone length byte at the end
        b"PB\x01\x00\x01a\x05",
        b"PG\x01\x00\x01a",  # not a bundle
    ],
)
def test_split_refuses_malformed_bundles(data: bytes) -> None:
    """Rule: a malformed bundle is refused whole (None), never partly read, never raising."""
    assert split_bundle(data) is None


def test_datagrams_of_one_step_share_a_bundle_per_destination(raw: socket.socket) -> None:
    """Rule: the datagrams one command outputs leave bundled per destination, in order;
    a lone one leaves unbundled; a bundle is split and handed over in order."""
    b_id = new_id()
    b = Recorder(b_id)
    raw_addr = raw.getsockname()
    raw_id = node_id(*raw_addr)

    async def main() -> None:
        udp = udp_config()
        async with run_node(b, udp=udp) as hb, run_node(Recorder(new_id()), udp=udp) as ha:
            mine = [datagram(ha.node_id, v) for v in range(6)]
            out = [Transmit(to=b_id if v % 2 == 0 else raw_id, data=d) for v, d in enumerate(mine)]
            await ha.command(lambda ep, now: out)
            await until(lambda: len(b.received) == 3)
            assert raw.recv(2048) == pack_bundles([mine[1], mine[3], mine[5]], 1400)[0]
            assert (ha.stats.sent, ha.stats.bundles_sent, ha.stats.bundled) == (2, 2, 6)
            assert (hb.stats.received, hb.stats.bundles_received) == (3, 1)
            await ha.command(lambda ep, now: [Transmit(to=raw_id, data=mine[4])])
            with trio.fail_after(5):  # the flusher sends it once this task waits
                await trio.lowlevel.wait_readable(raw)
            assert raw.recv(2048) == mine[4]  # alone: unbundled
            assert (ha.stats.sent, ha.stats.bundles_sent) == (3, 2)

    run(main)
    assert [v for _, _, v in b.received] == [0, 2, 4]


def test_bundling_off_sends_one_udp_datagram_each(raw: socket.socket) -> None:
    """Rule: with bundle_size 0 every datagram leaves at once, on its own."""
    raw_id = node_id(*raw.getsockname())

    async def main() -> None:
        async with run_node(Recorder(new_id()), udp=udp_config(bundle_size=0)) as h:
            mine = [datagram(h.node_id, v) for v in range(3)]
            await h.command(lambda ep, now: [Transmit(to=raw_id, data=d) for d in mine])
            assert h.stats.sent == 3  # before the command returned
            assert [raw.recv(2048) for _ in mine] == mine
            assert h.stats.bundles_sent == 0

    run(main)


class Steps(trio.abc.Instrument):
    """Counts the steps of one task: a new step begins each time it resumes after yielding."""

    def __init__(self) -> None:
        self.task = trio.lowlevel.current_task()
        self.count = 0

    def before_task_step(self, task: trio.lowlevel.Task) -> None:
        if task is self.task:
            self.count += 1


def test_commands_flush_full_bundles_and_yield(raw: socket.socket) -> None:
    """Rule: commands that do not yield queue datagrams until one more would not fit,
    then send the full bundle and yield; the rest leaves when the caller lets others run."""
    raw_id = node_id(*raw.getsockname())
    raw.setblocking(False)

    async def main() -> None:
        async with run_node(Recorder(new_id()), udp=udp_config()) as h:
            mine = [datagram(h.node_id, v) for v in range(70)]  # 42 bytes, 44 framed
            steps = Steps()
            trio.lowlevel.add_instrument(steps)
            for d in mine:
                await h.command(lambda ep, now, d=d: [Transmit(to=raw_id, data=d)])
            trio.lowlevel.remove_instrument(steps)
            # 3 + 31 * 44 = 1367 <= 1400 < 1411: two full bundles of 31 sent so far
            assert (h.stats.sent, h.stats.bundled) == (2, 62)
            assert steps.count == 2  # yielded once per full bundle
            await until(lambda: h.stats.sent == 3)  # the flusher's, once this task waits
            assert h.stats.bundled == 70
            got: list[bytes] = []
            with trio.fail_after(5):
                while len(got) < 3:
                    await trio.lowlevel.wait_readable(raw)
                    got.append(raw.recv(2048))
            assert [split_bundle(g) for g in got] == [mine[:31], mine[31:62], mine[62:]]

    run(main)


def test_a_command_yields_unless_it_adds_to_an_open_bundle(raw: socket.socket) -> None:
    """Rule: a command is a schedule point when it queues no datagram (and then sends what
    waits) and always without bundling; one that adds to an open bundle does not yield."""
    raw_id = node_id(*raw.getsockname())

    async def main() -> None:
        udp = udp_config()
        async with (
            run_node(Recorder(new_id()), udp=udp) as h,
            run_node(Recorder(new_id()), udp=attrs.evolve(udp, bundle_size=0)) as off,
        ):
            one = [Transmit(to=raw_id, data=datagram(h.node_id, 1))]
            steps = Steps()
            trio.lowlevel.add_instrument(steps)
            await h.command(lambda ep, now: one)
            assert (steps.count, h.stats.sent) == (0, 0)
            await h.command(lambda ep, now: [Got(sender=0, value=0)])
            assert (steps.count, h.stats.sent) == (1, 1)
            await off.command(lambda ep, now: one)
            assert (steps.count, off.stats.sent) == (2, 1)
            trio.lowlevel.remove_instrument(steps)

    run(main)


def test_malformed_bundles_are_dropped_and_counted(raw: socket.socket, loop: Any) -> None:
    """Rule: a malformed bundle reaches nobody, is counted, and the loop keeps going."""
    ep = Recorder(new_id(), on_start=[JoinGroup(group=GROUP)])
    udp = udp_config()

    async def main() -> None:
        async with run_node(ep, udp=udp) as h:
            for dest in (node_addr(ep.node_id), udp.group_address(GROUP)):
                raw.sendto(b"PB", dest)
                raw.sendto(b"PB\x01\x00\x40" + datagram(1, 7), dest)  # length past the end
                raw.sendto(b"PB\x09" + pack_bundles([datagram(1, 8)] * 2, 1400)[0][3:], dest)
            raw.sendto(
                pack_bundles([datagram(1, 1), datagram(1, 2)], 1400)[0], node_addr(ep.node_id)
            )
            await until(lambda: len(ep.received) == 2 and h.stats.bad_bundles == 6)
            assert (h.stats.bundles_received, h.stats.received) == (1, 2)

    run(main)
    assert [v for _, _, v in ep.received] == [1, 2]


# ------------------------------------------------------------- datagrams


def test_unicast_ping_pong_between_two_endpoints(loop: Any) -> None:
    """Rule: a Transmit reaches node ``to``'s unicast socket; receive outputs are carried out."""
    a_id, b_id = new_id(), new_id()
    a = Echo(a_id, limit=6, on_start=[Transmit(to=b_id, data=datagram(a_id, 0))])
    b = Echo(b_id, limit=6)
    seen: list[object] = []

    async def main() -> None:
        udp = udp_config()
        async with run_node(b, udp=udp) as hb, run_node(a, udp=udp) as ha:
            with L.fail_after(5):
                async for ev in hb.events():
                    seen.append(ev)
                    if len(seen) == 4:
                        break
            assert ha.stats.sent == 4  # 0, 2, 4, 6
            assert hb.stats.sent == 3  # 1, 3, 5
            assert hb.stats.received == 4

    run(main)
    assert [v for _, _, v in b.received] == [0, 2, 4, 6]
    assert [v for _, _, v in a.received] == [1, 3, 5]
    assert {s for _, s, _ in b.received} == {a_id}
    assert seen == [Got(sender=a_id, value=v) for v in (0, 2, 4, 6)]


def test_multicast_reaches_the_other_members_not_the_sender(loop: Any) -> None:
    """Rule: a TransmitGroup reaches every subscribed node but the sender (counted as own)."""
    ids = [new_id() for _ in range(3)]
    tickers = [Ticker(i, period=0.02, talk=True) for i in ids]

    async def main() -> None:
        udp = udp_config()
        async with (
            run_node(tickers[0], udp=udp) as h0,
            run_node(tickers[1], udp=udp),
            run_node(tickers[2], udp=udp),
        ):
            assert h0.groups == (GROUP,)
            await until(lambda: all(len(t.received) >= 10 for t in tickers))
            assert h0.stats.own >= 1

    run(main)
    for me, t in zip(ids, tickers, strict=True):
        senders = sorted({s for _, s, _ in t.received})
        assert senders == sorted(set(ids) - {me})
        for s in senders:
            values = [v for _, src, v in t.received if src == s]
            assert values == list(range(values[0], values[0] + len(values)))


def test_leave_group_stops_multicast_delivery(raw: socket.socket, loop: Any) -> None:
    """Rule: after LeaveGroup the node's group socket is closed; later multicasts miss it."""
    mid = new_id()
    member = Member(mid, leave_after=2)
    udp = udp_config()
    group_addr = udp.group_address(GROUP)

    async def main() -> None:
        async with run_node(member, udp=udp) as h:
            assert h.groups == (GROUP,)
            for v in (1, 2):
                raw.sendto(datagram(1, v), group_addr)
            await until(lambda: len(member.received) == 2)
            await until(lambda: h.groups == ())
            raw.sendto(datagram(1, 3), group_addr)
            raw.sendto(datagram(1, 4), node_addr(mid))  # unicast still works
            await until(lambda: len(member.received) == 3)

    run(main)
    assert [v for _, _, v in member.received] == [1, 2, 4]


def node_addr(nid: int) -> tuple[str, int]:
    return HOST, nid & 0xFFFF


# ------------------------------------------------------------------ time


def test_deadline_loop_wakes_the_endpoint_on_time(loop: Any) -> None:
    """Rule: handle_deadline runs at next_deadline(), never before, soon after."""
    t = Ticker(new_id(), period=0.03)

    async def main() -> None:
        async with run_node(t, udp=udp_config()) as h:
            await until(lambda: len(t.wakes) >= 10)
            assert h.stats.wakeups == len(t.wakes)

    run(main)
    gaps = [b - a for a, b in zip(t.wakes, t.wakes[1:], strict=False)]
    assert all(g >= 0.03 for g in gaps)  # the Ticker also asserts it is never woken early
    assert sum(gaps) / len(gaps) < 0.03 + 0.01
    assert max(gaps) < 0.03 + 0.1


def test_a_command_rearms_the_timer(loop: Any) -> None:
    """Rule: a deadline set by a command is honoured; None means never woken."""
    ep = Settable(new_id())

    async def main() -> None:
        async with run_node(ep, udp=udp_config()) as h:
            await L.sleep(0.05)
            assert ep.wakes == []
            at = L.now() + 0.05
            await h.command(lambda e, now: e.set_deadline(at))
            await until(lambda: len(ep.wakes) == 1)
            due, woke = ep.wakes[0]
            assert due == at
            assert at <= woke < at + 0.05
            # moving a deadline later: not woken at the old time
            early = L.now() + 0.02
            await h.command(lambda e, now: e.set_deadline(early))
            await h.command(lambda e, now: e.set_deadline(early + 0.1))
            await L.sleep(0.05)
            assert len(ep.wakes) == 1
            await until(lambda: len(ep.wakes) == 2)
            assert ep.wakes[1][1] >= early + 0.1

    run(main)


# ------------------------------------------------------------- robustness


def test_malformed_datagrams_do_not_kill_the_loop(raw: socket.socket, loop: Any) -> None:
    """Rule: garbage, empty and oversized datagrams reach the endpoint; the loop keeps going."""
    ep = Tolerant(new_id())
    udp = udp_config()

    async def main() -> None:
        async with run_node(ep, udp=udp) as h:
            for dest in (node_addr(ep.node_id), udp.group_address(GROUP)):
                raw.sendto(b"", dest)
                raw.sendto(b"\xff" * 30, dest)
                raw.sendto(datagram(1, 5)[:10], dest)  # a truncated header
                raw.sendto(b"x" * 5000, dest)
            raw.sendto(datagram(1, 42), node_addr(ep.node_id))
            await until(lambda: len(ep.received) == 1)
            assert h.running

    run(main)
    assert len(ep.bad) == 8
    assert sorted(len(b) for b in ep.bad) == [0, 0, 10, 10, 30, 30, 1401, 1401]
    assert [v for _, _, v in ep.received] == [42]


def test_node_counts_malformed_and_keeps_running(raw: socket.socket, loop: Any) -> None:
    """Rule: a Node behind the transport counts malformed datagrams and stays up."""
    port = free_port()

    async def main() -> None:
        async with run_node(NodeConfig(port=port), udp=udp_config(), incarnation=1) as h:
            node = h.endpoint
            assert isinstance(node, Node)
            raw.sendto(b"garbage", (HOST, port))
            raw.sendto(b"PG" + b"\x00" * 40, (HOST, port))  # wire version 0
            await until(lambda: node.stats.malformed == 1 and node.stats.wrong_version == 1)
            assert h.running
            await h.multicast(b"still here")

    run(main)


def test_endpoint_exception_ends_run_node(raw: socket.socket, loop: Any) -> None:
    """Rule: an exception raised by the endpoint is a bug: run_node ends with it, unwrapped."""

    class Buggy(Recorder):
        def receive(self, data: bytes, now: float) -> list[Output]:
            raise RuntimeError("endpoint bug")

    ep = Buggy(new_id())

    async def main() -> None:
        async with run_node(ep, udp=udp_config()):
            raw.sendto(b"boom", node_addr(ep.node_id))
            await L.sleep_forever()

    with pytest.raises(RuntimeError, match="endpoint bug"):
        run(main)


def test_busy_unicast_address_is_a_config_error(loop: Any) -> None:
    """Rule: a node whose address is taken cannot start (ids are addresses, unique)."""
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as s:
        s.bind((HOST, 0))
        port = s.getsockname()[1]

        async def main() -> None:
            async with run_node(Recorder(node_id(HOST, port)), udp=udp_config()):
                pass

        with pytest.raises(ConfigError, match=f"{HOST}:{port}"):
            run(main)


def test_receive_buffer_is_read_back(loop: Any) -> None:
    """Rule: SO_RCVBUF is set to recv_buffer and the granted size is what the kernel reports."""
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as s:
        s.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 1 << 16)
        expected = s.getsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF)

    async def main() -> None:
        async with run_node(Recorder(new_id()), udp=udp_config(recv_buffer=1 << 16)) as h:
            assert h.stats.recv_buffer == expected

    run(main)


def test_short_receive_buffer_logs_a_warning(caplog: pytest.LogCaptureFixture, loop: Any) -> None:
    """Rule: a warning is logged exactly when the kernel grants less than asked."""
    asked = 1 << 30
    granted: list[int] = []

    async def main() -> None:
        async with run_node(Recorder(new_id()), udp=udp_config(recv_buffer=asked)) as h:
            granted.append(h.stats.recv_buffer)

    with caplog.at_level(logging.WARNING, logger="powergrid.transports"):
        run(main)
    warned = [r for r in caplog.records if "receive buffer" in r.getMessage()]
    assert granted[0] > 0
    assert bool(warned) == (granted[0] < asked)


class _Blockable:
    """Wraps a socket; while ``blocked``, sendto says the kernel buffer is full."""

    def __init__(self, sock: socket.socket) -> None:
        self.sock = sock
        self.blocked = True

    def sendto(self, data: bytes, addr: tuple[str, int]) -> int:
        if self.blocked:
            raise BlockingIOError
        return self.sock.sendto(data, addr)

    def fileno(self) -> int:
        return self.sock.fileno()

    def close(self) -> None:
        self.sock.close()


def test_send_backlog_is_bounded_and_flushed_in_order(loop: Any) -> None:
    """Rule: while the kernel is full, datagrams wait (max_queue, then dropped), sent in order."""
    a_id, b_id = new_id(), new_id()
    b = Recorder(b_id)

    async def main() -> None:
        udp = udp_config(max_queue=3, bundle_size=0)  # one UDP datagram per datagram
        async with run_node(b, udp=udp), run_node(Recorder(a_id), udp=udp) as ha:
            blockable = _Blockable(ha._usock)  # type: ignore[arg-type]
            ha._usock = blockable  # type: ignore[assignment]
            ha._box.sendto = blockable.sendto
            out = [Transmit(to=b_id, data=datagram(a_id, v)) for v in range(5)]
            await ha.command(lambda ep, now: out)
            assert (ha.stats.sent, ha.stats.queued, ha.stats.dropped_send_queue) == (0, 3, 2)
            blockable.blocked = False
            await until(lambda: len(b.received) == 3)
            assert ha.stats.sent == 3

    run(main)
    assert [v for _, _, v in b.received] == [0, 1, 2]


def test_event_queue_drops_oldest_when_the_app_does_not_read(raw: socket.socket, loop: Any) -> None:
    """Rule: beyond event_queue notifications the oldest is dropped and counted."""
    ep = Recorder(new_id())
    seen: list[object] = []

    async def main() -> None:
        async with run_node(ep, udp=udp_config(event_queue=2)) as h:
            for v in range(5):
                raw.sendto(datagram(1, v), node_addr(ep.node_id))
            await until(lambda: len(ep.received) == 5)
            assert h.stats.dropped_events == 3
        async for ev in h.events():  # the rest can be read after exit; then it ends
            seen.append(ev)

    run(main)
    assert seen == [Got(sender=1, value=3), Got(sender=1, value=4)]


class Counting(Recorder):
    """A recorder that counts calls to ``next_deadline``."""

    def __init__(self, node: int) -> None:
        super().__init__(node)
        self.asked = 0

    def next_deadline(self) -> float | None:
        self.asked += 1
        return None


def test_a_burst_is_read_in_one_batch_and_rearmed_once(raw: socket.socket, loop: Any) -> None:
    """Rule: datagrams already waiting are read in one batch, with one re-arm after it."""
    ep = Counting(new_id())

    async def main() -> None:
        async with run_node(ep, udp=udp_config()):
            await L.sleep(0.01)
            before = ep.asked
            for v in range(10):  # queued in the kernel before the reader runs again
                raw.sendto(datagram(1, v), node_addr(ep.node_id))
            await until(lambda: len(ep.received) == 10)
            assert ep.asked - before <= 2  # one batch, maybe split by the kernel's timing

    run(main)
    assert [v for _, _, v in ep.received] == list(range(10))


class DueNow(Settable):
    """A recorder whose every datagram makes its deadline due at once (as a gap makes a
    multicast machine's first Nak due), and whose wake-up sends a datagram back."""

    def __init__(self, node: int, reply_to: int) -> None:
        super().__init__(node)
        self.reply_to = reply_to

    def receive(self, data: bytes, now: float) -> list[Output]:
        out = super().receive(data, now)
        self.deadline = now
        return out

    def handle_deadline(self, now: float) -> list[Output]:
        super().handle_deadline(now)
        return [Transmit(to=NodeId(self.reply_to), data=datagram(self.node_id, len(self.wakes)))]


def test_a_deadline_a_batch_makes_due_runs_at_its_end(raw: socket.socket, loop: Any) -> None:
    """Rule: a deadline that the datagrams of a batch make due by the batch's time runs at
    the end of the batch, with that time, and what it sends leaves with the batch's
    flush, not a timer round later."""
    raw.settimeout(5.0)
    me = node_id(HOST, raw.getsockname()[1])  # (so the node unicasts back to raw)
    ep = DueNow(new_id(), me)

    async def main() -> None:
        async with run_node(ep, udp=udp_config()) as h:
            for v in range(3):
                raw.sendto(datagram(me, v), node_addr(ep.node_id))
                await until(lambda v=v: len(ep.wakes) == v + 1)
            assert h.stats.wakeups == 3

    run(main)
    assert [due for due, _ in ep.wakes] == [now for now, _, _ in ep.received]
    assert all(woke == due for due, woke in ep.wakes)  # the batch's time: no timer ran it
    assert [value_of(raw.recv(2048))[1] for _ in range(3)] == [1, 2, 3]


def test_on_event_takes_notifications_inline_in_order(raw: socket.socket, loop: Any) -> None:
    """Rule: with on_event every notification goes to it at once, in order; none is queued."""
    ep = Recorder(new_id())
    seen: list[object] = []
    queued: list[object] = []

    async def main() -> None:
        async with run_node(ep, udp=udp_config(event_queue=1), on_event=seen.append) as h:
            for v in range(5):
                raw.sendto(datagram(1, v), node_addr(ep.node_id))
            await until(lambda: len(seen) == 5)
            await h.command(lambda e, now: [Got(sender=0, value=99)])
            assert seen[-1] == Got(sender=0, value=99)  # a command's, before it returns
            assert h.stats.dropped_events == 0
        async for ev in h.events():
            queued.append(ev)

    run(main)
    assert seen == [Got(sender=1, value=v) for v in range(5)] + [Got(sender=0, value=99)]
    assert queued == []


def test_on_event_exception_ends_run_node(raw: socket.socket, loop: Any) -> None:
    """Rule: on_event runs in the transport's tasks: what it raises ends run_node, unwrapped."""
    ep = Recorder(new_id())

    def fail(note: object) -> None:
        raise RuntimeError("app bug")

    async def main() -> None:
        async with run_node(ep, udp=udp_config(), on_event=fail):
            raw.sendto(datagram(1, 1), node_addr(ep.node_id))
            await L.sleep_forever()

    with pytest.raises(RuntimeError, match="app bug"):
        run(main)


# ---------------------------------------------------------------- shutdown


class Leaver(Recorder):
    """A recorder with a ``leave`` command that multicasts a goodbye (value 99)."""

    def __init__(self, node: int) -> None:
        super().__init__(node, on_start=[JoinGroup(group=GROUP)])
        self.left = 0

    def leave(self, now: float) -> list[Output]:
        self.left += 1
        return [TransmitGroup(group=GROUP, data=datagram(self.node_id, 99))]


def test_clean_shutdown_leaves_flushes_and_closes_sockets(loop: Any) -> None:
    """Rule: leaving run_node calls leave once, sends its goodbye, closes every socket."""
    ep = Leaver(new_id())
    listener = Tolerant(new_id())
    udp = udp_config()
    handles: list[UdpHandle] = []

    async def main() -> None:
        async with run_node(listener, udp=udp):
            async with run_node(ep, udp=udp) as h:
                handles.append(h)
                assert h.running
            assert not h.running
            await until(lambda: len(listener.received) == 1)
            with pytest.raises(UsageError, match="not running"):
                await h.multicast(b"late")
            assert [e async for e in h.events()] == []

    run(main)
    assert ep.left == 1
    assert [v for _, _, v in listener.received] == [99]
    h = handles[0]
    assert h._usock is not None and h._usock.fileno() == -1
    assert h.groups == ()
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as s:
        s.bind(node_addr(ep.node_id))  # the address is free again


def test_explicit_leave_is_not_repeated_on_exit(loop: Any) -> None:
    """Rule: after handle.leave(), shutdown does not leave a second time."""
    ep = Leaver(new_id())

    async def main() -> None:
        async with run_node(ep, udp=udp_config()) as h:
            await h.leave()
            assert ep.left == 1

    run(main)
    assert ep.left == 1


def test_import_powergrid_never_imports_an_event_loop() -> None:
    """Rule: ``import powergrid`` (and the sans-IO modules, and naming ``run_node``) imports
    neither trio nor asyncio; each transport imports its own loop when used."""
    code = (
        "import sys, powergrid, powergrid.node, powergrid.sim.memory, powergrid.sim.fuzz\n"
        "from powergrid import NodeConfig, UdpConfig\n"
        "assert 'trio' not in sys.modules and 'asyncio' not in sys.modules, 'loop imported'\n"
        "import powergrid.transports._core\n"
        "assert 'trio' not in sys.modules and 'asyncio' not in sys.modules, 'core imports a loop'\n"
        "from powergrid import run_node\n"
        "assert 'trio' in sys.modules and 'asyncio' not in sys.modules\n"
        "from powergrid import run_node_asyncio\n"
        "assert 'asyncio' in sys.modules\n"
    )
    subprocess.run([sys.executable, "-c", code], check=True)


# ----------------------------------------------------------------- nodes


def test_three_nodes_form_a_cluster_and_multicast_in_order(loop: Any) -> None:
    """Rule: real Nodes over loopback elect the highest id, agree on a view of 3,
    and deliver each sender's multicasts in order to every member."""
    ports = sorted({free_port() for _ in range(3)})
    assert len(ports) == 3
    ids = [node_id(HOST, p) for p in ports]
    udp = udp_config()
    views: dict[int, list[ViewChanged]] = {i: [] for i in ids}
    leaders: dict[int, list[LeaderElected]] = {i: [] for i in ids}
    delivered: dict[int, list[MessageDelivered]] = {i: [] for i in ids}

    async def watch(h: UdpHandle) -> None:
        async for ev in h.events():
            if isinstance(ev, ViewChanged) and ev.view.group == GROUP:
                views[h.node_id].append(ev)
            elif isinstance(ev, LeaderElected) and ev.group == GROUP:
                leaders[h.node_id].append(ev)
            elif isinstance(ev, MessageDelivered):
                delivered[h.node_id].append(ev)

    def formed() -> bool:
        return all(
            views[i] and len(views[i][-1].view.members) == 3 and views[i][-1].view.leader == ids[-1]
            for i in ids
        )

    async def main() -> None:
        async with (
            run_node(
                NodeConfig(port=ports[0], broker_capable=True), udp=udp, rng=random.Random(1)
            ) as a,
            run_node(
                NodeConfig(port=ports[1], broker_capable=True), udp=udp, rng=random.Random(2)
            ) as b,
            run_node(
                NodeConfig(port=ports[2], broker_capable=True), udp=udp, rng=random.Random(3)
            ) as c,
            L.tasks() as nursery,
        ):
            for h in (a, b, c):
                nursery.start_soon(watch, h)
            await until(formed, timeout=10)
            assert c.groups == (GroupId(0), GROUP)  # the broker joined the broker group
            for k in range(5):
                await a.multicast(b"a%d" % k)
                await b.multicast(b"b%d" % k)
            await until(lambda: all(len(delivered[i]) == 10 for i in ids), timeout=5)
            nursery.cancel()

    run(main)
    for i in ids:
        assert leaders[i][-1].leader == ids[-1]
        assert views[i][-1].view.nodes == tuple(ids)
        for sender, tag in ((ids[0], b"a"), (ids[1], b"b")):
            mine = [(d.seq, d.payload) for d in delivered[i] if d.sender == sender]
            assert mine == [(k + 1, tag + b"%d" % k) for k in range(5)]


def test_keyed_nodes_stream_bundled_multicasts_in_order(loop: Any) -> None:
    """Rule: with a keyring, bundled datagrams keep their own tags: a streaming sender's
    multicasts leave in bundles and every one is accepted and delivered in order."""
    ring = Keyring(primary=1, keys={1: bytes(range(32))})
    ports = sorted({free_port() for _ in range(2)})
    cfgs = [
        NodeConfig(port=ports[1], broker_capable=True, keyring=ring),
        NodeConfig(port=ports[0], keyring=ring),
    ]
    sender_id = cfgs[0].node_id
    got: list[tuple[int, bytes]] = []
    members = [0]

    def take(note: object) -> None:
        if isinstance(note, MessageDelivered) and note.sender == sender_id:
            got.append((note.seq, note.payload))
        elif isinstance(note, ViewChanged) and note.view.group == GROUP:
            members[0] = len(note.view.members)

    async def main() -> None:
        udp = udp_config()
        async with (
            run_node(
                cfgs[0], udp=udp, rng=random.Random(1), on_event=lambda n: None, insecure=False
            ) as tx,
            run_node(cfgs[1], udp=udp, rng=random.Random(2), on_event=take, insecure=False) as rx,
        ):
            await until(lambda: members[0] == 2, timeout=10)
            for k in range(100):
                await tx.multicast(b"%03d" % k + b"." * 97)
            await until(lambda: len(got) == 100)
            assert tx.stats.bundles_sent >= 5  # 100 datagrams of 154 bytes: 8 to a bundle
            node = rx.endpoint
            assert isinstance(node, Node)
            assert (node.stats.unauthenticated, node.stats.replayed) == (0, 0)
            assert rx.stats.bad_bundles == 0

    run(main)
    assert got == [(k + 1, b"%03d" % k + b"." * 97) for k in range(100)]


# ------------------------------------------------------------------ source addresses


def test_a_datagram_claiming_another_address_is_dropped_and_counted(
    raw: socket.socket, loop: Any
) -> None:
    """Rule (check_source): a datagram whose claimed sender id is not the address it came
    from is dropped by the node and counted in ``spoofed``; one that claims its own
    address is taken. (Before, an unkeyed node answered whatever id a datagram claimed.)"""
    port = free_port()
    me = node_id(HOST, raw.getsockname()[1])
    forged = node_id("10.9.8.7", 4321)

    async def main() -> None:
        async with run_node(NodeConfig(port=port), udp=udp_config(), incarnation=1) as h:
            node = h.endpoint
            assert isinstance(node, Node)
            raw.sendto(datagram(forged, 1), (HOST, port))
            await until(lambda: node.stats.spoofed == 1)
            raw.sendto(datagram(me, 2), (HOST, port))
            await until(lambda: node.stats.received == 2)
            await L.sleep(0.05)
            assert node.stats.spoofed == 1

    run(main)


def test_unicast_goes_only_to_addresses_heard_from(raw: socket.socket, loop: Any) -> None:
    """Rule (check_source): a node sends unicast only to an address a datagram came from;
    before that it drops it (``UdpStats.unheard``). With check_source off it sends."""
    port = free_port()
    raw.setblocking(False)
    peer = node_id(HOST, raw.getsockname()[1])

    def got() -> int:
        n = 0
        with contextlib.suppress(BlockingIOError):
            while raw.recv(4096):
                n += 1
        return n

    async def main(check: bool) -> None:
        udp = udp_config(check_source=check)
        async with run_node(NodeConfig(port=port), udp=udp, incarnation=1) as h:
            await h.send(peer, b"first")
            if check:
                await until(lambda: h.stats.unheard >= 1)
                await L.sleep(0.05)
                assert got() == 0
                raw.sendto(datagram(peer, 1), (HOST, port))  # now heard from
                await until(lambda: h.endpoint.stats.received >= 1)
                await h.send(peer, b"second")
            await L.sleep(0.1)
            assert got() >= 1

    run(lambda: main(True))
    run(lambda: main(False))


def test_unicast_goes_to_configured_seeds_before_they_are_heard_from(
    raw: socket.socket, loop: Any
) -> None:
    """Rule (check_source with fan-out): a configured seed is an allowed destination before
    anything came from it (a fan-out node's first join or election message goes to a seed
    it never heard); another address never heard from still is not."""
    port = free_port()
    raw.setblocking(False)
    seed = node_id(HOST, raw.getsockname()[1])
    stranger = node_id(HOST, free_port())

    def got() -> int:
        n = 0
        with contextlib.suppress(BlockingIOError):
            while raw.recv(4096):
                n += 1
        return n

    async def main() -> None:
        udp = udp_config(fanout_seeds=[format_node(seed)])
        async with run_node(NodeConfig(port=port), udp=udp, incarnation=1) as h:
            await h.send(stranger, b"nobody")
            await until(lambda: h.stats.unheard >= 1)
            unheard = h.stats.unheard
            await h.send(seed, b"to the seed")
            await until(lambda: got() >= 1)
            assert h.stats.unheard == unheard

    run(main)


def test_fan_out_cluster_without_multicast_elects_forms_a_view_and_delivers(loop: Any) -> None:
    """Rule: with ``fanout_seeds`` (keyed; the two broker-capable nodes are the seeds, the two
    servers learn the rest from views) the nodes open no group socket and send no IP
    multicast (a listener on the group addresses hears nothing), yet they elect the
    highest-ranked broker, all install one view of four, every node's fan-out set is the
    three others, and each sender's multicasts reach every member in order."""
    ring = Keyring(primary=1, keys={1: bytes(range(32))})
    ports = sorted({free_port() for _ in range(4)})
    assert len(ports) == 4
    ids = [node_id(HOST, p) for p in ports]
    udp = udp_config(fanout_seeds=[f"{HOST}:{p}" for p in ports[:2]])
    listeners = [open_group_socket(udp, g) for g in (0, 1)]
    views: dict[int, list[ViewChanged]] = {i: [] for i in ids}
    delivered: dict[int, list[MessageDelivered]] = {i: [] for i in ids}

    def take(me: int) -> Callable[[object], None]:
        def note(ev: object) -> None:
            if isinstance(ev, ViewChanged) and ev.view.group == GROUP:
                views[me].append(ev)
            elif isinstance(ev, MessageDelivered):
                delivered[me].append(ev)

        return note

    def formed() -> bool:
        return all(
            views[i]
            and views[i][-1].view.nodes == tuple(ids)
            and views[i][-1].view.leader == ids[1]
            for i in ids
        )

    async def main() -> None:
        cfgs = [
            NodeConfig(port=p, broker_capable=k < 2, rank=k + 1 if k < 2 else 0, keyring=ring)
            for k, p in enumerate(ports)
        ]
        async with (
            run_node(
                cfgs[0], udp=udp, rng=random.Random(1), on_event=take(ids[0]), insecure=False
            ) as a,
            run_node(
                cfgs[1], udp=udp, rng=random.Random(2), on_event=take(ids[1]), insecure=False
            ) as b,
            run_node(
                cfgs[2], udp=udp, rng=random.Random(3), on_event=take(ids[2]), insecure=False
            ) as c,
            run_node(
                cfgs[3], udp=udp, rng=random.Random(4), on_event=take(ids[3]), insecure=False
            ) as d,
        ):
            handles = (a, b, c, d)
            await until(formed, timeout=15)
            for h in handles:
                brokers = (GroupId(0), GROUP) if h is b else (GROUP,)  # the cluster broker
                assert h.groups == brokers and h._groups == {}  # no group socket
                others = tuple(format_node(i) for i in ids if i != h.node_id)
                assert h.fanout_targets(GROUP) == others
            for k in range(5):
                await a.multicast(b"a%d" % k)
                await d.multicast(b"d%d" % k)
            await until(lambda: all(len(delivered[i]) >= 10 for i in ids), timeout=5)

    try:
        run(main)
        for s in listeners:
            with pytest.raises(BlockingIOError):
                s.recvfrom(2048)
    finally:
        for s in listeners:
            s.close()
    for i in ids:
        for sender, tag in ((ids[0], b"a"), (ids[3], b"d")):
            mine = [(e.seq, e.payload) for e in delivered[i] if e.sender == sender]
            assert mine == [(k + 1, tag + b"%d" % k) for k in range(5)]


# ------------------------------------------------------------------ flow control


class Windowed(Recorder):
    """An endpoint with a send window (multicast rule 27): ``room`` multicasts fit, then
    ``WindowFull``; the ``open`` command makes room and says ``WindowOpen``."""

    def __init__(self, node: int, room: int) -> None:
        super().__init__(node)
        self.room = room
        self.sent: list[tuple[float, bytes]] = []

    def multicast_room(self, *, group: int | None = None) -> int | None:
        return self.room

    def multicast(self, payload: bytes, now: float, *, group: int | None = None) -> list[Output]:
        if self.room == 0:
            return [WindowFull(in_flight=1, window=1)]
        self.room -= 1
        self.sent.append((now, payload))
        return []

    def open(self, now: float) -> list[Output]:
        self.room = 1
        return [WindowOpen(room=1)]


def test_await_multicast_waits_for_room_in_the_send_window(loop: Any) -> None:
    """Multicast rule 27: ``await multicast`` waits while the window is full and goes on
    when WindowOpen comes; nothing is refused on the way (no WindowFull reaches the app)."""
    ep = Windowed(new_id(), room=1)
    seen: list[object] = []

    async def main() -> None:
        async with run_node(ep, udp=udp_config(), on_event=seen.append) as h:
            await h.multicast(b"1")
            done: list[float] = []

            async def second() -> None:
                await h.multicast(b"2")
                done.append(L.now())

            async with L.tasks() as tasks:
                tasks.start_soon(second)
                await L.sleep(0.05)
                assert done == [] and [p for _, p in ep.sent] == [b"1"]  # it waits
                opened = L.now()
                await h.command(lambda e, now: e.open(now))
                await until(lambda: bool(done))
                assert done[0] >= opened

    run(main)
    assert [p for _, p in ep.sent] == [b"1", b"2"]
    assert WindowOpen(room=1) in seen
    assert not any(isinstance(e, WindowFull) for e in seen)
