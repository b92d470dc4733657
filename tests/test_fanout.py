"""Unicast fan-out groups without sockets: the fan-out set, and the UDP core driving real nodes.

:class:`powergrid.fanout.FanOut` is tested as a pure function of seeds and
views. The transport core (``powergrid.transports._core.Driver``) is then
driven without sockets: ``StubDriver`` replaces the loop's hooks and the
kernel (``_send_now`` puts each UDP datagram in the destination's inbox,
readers are fake sockets), so keyed and unkeyed ``Node`` clusters run
through the very code the trio and asyncio transports run, in virtual time,
and every address a datagram was sent to is recorded.
"""

from __future__ import annotations

import random
from collections import deque
from collections.abc import Callable, Iterable
from typing import Any

import pytest

from powergrid.auth import Authenticator, Keyring
from powergrid.errors import ConfigError
from powergrid.events import Member, View, ViewChanged
from powergrid.fanout import FanOut, parse_seed, parse_seeds
from powergrid.node import MessageDelivered, Node, NodeConfig
from powergrid.transports._core import Driver, UdpConfig
from powergrid.types import Epoch, GroupId, Incarnation, NodeId, format_node, node_id
from powergrid.wire import ViewEntry, ViewPart, encode

Address = tuple[str, int]
H = "127.0.0.1"
A, B, C, D, X = (node_id(H, p) for p in (9001, 9002, 9003, 9004, 9666))
RING = Keyring(primary=1, keys={1: b"k" * 32})
OTHER = Keyring(primary=1, keys={1: b"z" * 32})


def view(group: int, *nodes: int, view_id: int = 1) -> View:
    return View(
        group=GroupId(group),
        view_id=view_id,
        leader=NodeId(max(nodes)) if nodes else NodeId(0),
        epoch=Epoch(1),
        members=tuple(Member(node=NodeId(n), incarnation=Incarnation(1)) for n in sorted(nodes)),
    )


# ------------------------------------------------------------------ the fan-out set


def test_fan_out_set_is_seeds_and_view_members_minus_self_after_each_view() -> None:
    """Rule: targets(g) = sorted(seeds | members of g's last view) - me; each view replaces
    the last (a removed non-seed goes), other groups are untouched, leaving forgets."""
    f = FanOut(B, [A, B, A], learn=True)
    assert f.seeds == (A, B)
    assert f.targets(1) == (A,) and f.targets(0) == (A,)
    assert f.install(view(1, A, B, C)) is True
    assert f.targets(1) == (A, C)
    assert f.targets(0) == (A,)  # another group learns nothing from group 1's view
    assert f.install(view(1, A, B, C, D, view_id=2)) is True
    assert f.targets(1) == (A, C, D)
    assert f.install(view(1, B, D, view_id=3)) is True  # A and C removed: A stays, a seed
    assert f.targets(1) == (A, D)
    assert f.install(view(1, B, D, view_id=4)) is False  # same members, same set
    f.forget(1)
    assert f.targets(1) == (A,)


def test_without_learning_views_add_nobody() -> None:
    """Rule: learn=False (no keyring, views unauthenticated): seeds only, whatever a view says."""
    f = FanOut(B, [A, C], learn=False)
    assert f.learns is False
    assert f.install(view(1, A, B, C, D, X)) is False
    assert f.targets(1) == (A, C)


def test_seed_parsing_names_the_setting() -> None:
    """Rule: seeds are host:port (IPv4, or IPv6 in brackets); errors name the setting and
    the bad entry."""
    assert parse_seed(" 127.0.0.1:9001 ") == A
    assert parse_seeds(["127.0.0.1:9002", "127.0.0.1:9001", "127.0.0.1:9002"]) == (A, B)
    for bad, words in [
        ("127.0.0.1", "not host:port"),
        ("127.0.0.1:", "not host:port"),
        ("host:9001", "not an IPv4 or IPv6 address"),
        ("127.0.0.1:70000", "outside 1..65535"),
    ]:
        with pytest.raises(ConfigError, match=f"fanout_seeds: '{bad}'.*{words}"):
            parse_seed(bad)
    with pytest.raises(ConfigError, match="fanout_seeds must be a list"):
        UdpConfig(fanout_seeds="127.0.0.1:9001")
    with pytest.raises(ConfigError, match="fanout_seeds: 'nope'"):
        UdpConfig(fanout_seeds=["127.0.0.1:9001", "nope"])
    cfg = UdpConfig(fanout_seeds=["127.0.0.1:9002", "127.0.0.1:9001"])
    assert cfg.fanout and cfg.fanout_seeds == ("127.0.0.1:9002", "127.0.0.1:9001")
    assert cfg.seed_ids() == (A, B)
    assert not UdpConfig().fanout and UdpConfig(fanout_seeds=[]).fanout


# ------------------------------------------------------------------ the core, without sockets


class Wire:
    """Inboxes per address; every UDP datagram any stub sent, with its destination."""

    def __init__(self) -> None:
        self.inbox: dict[Address, deque[tuple[bytes, Address]]] = {}
        self.sent: list[tuple[Address, Address]] = []  # (source, destination)

    def put(self, src: Address, data: bytes, dst: Address) -> None:
        self.sent.append((src, dst))
        box = self.inbox.get(dst)
        if box is not None:  # nobody at other addresses: lost
            box.append((data, src))


class FakeSocket:
    def __init__(self, box: deque[tuple[bytes, Address]]) -> None:
        self.box = box

    def recvfrom(self, size: int) -> tuple[bytes, Address]:
        if not self.box:
            raise BlockingIOError
        return self.box.popleft()

    def fileno(self) -> int:
        return 3


class StubDriver(Driver):
    """The UDP core with a virtual clock and a :class:`Wire` for a kernel."""

    def __init__(self, node: Node, config: UdpConfig, wire: Wire) -> None:
        self.views: list[tuple[View, tuple[str, ...]]] = []  # each view and the set it left
        self.delivered: list[tuple[int, bytes]] = []
        super().__init__(node, config, on_event=self._seen)
        self.t = 0.0
        self.wire = wire
        wire.inbox[self._own] = deque()
        self.sock = FakeSocket(wire.inbox[self._own])
        self._box.sendto = self._put  # the transport's way out goes onto the wire

    def _seen(self, out: object) -> None:
        if isinstance(out, ViewChanged):
            self.views.append((out.view, self.fanout_targets(out.view.group)))
        elif isinstance(out, MessageDelivered):
            self.delivered.append((out.sender, out.payload))

    def _now(self) -> float:
        return self.t

    def _arm(self, deadline: float) -> None:
        pass

    def _request_flush(self) -> None:
        self._flush_soon()

    def _put(self, data: bytes, addr: Address) -> int:
        self.wire.put(self._own, data, addr)
        return len(data)

    def _start_writer(self, sock: Any) -> None:
        raise AssertionError("the wire never fills")

    def _start_group_reader(self, group: int, sock: Any) -> None:
        raise AssertionError("fan-out mode opened a group socket")

    def _stop_group_reader(self, group: int, sock: Any) -> None:
        pass

    def _wake_events(self) -> None:
        pass


def cluster(
    specs: Iterable[tuple[int, dict[str, Any]]], seeds: Iterable[int], keyring: Keyring | None
) -> tuple[Wire, dict[int, StubDriver]]:
    wire = Wire()
    seed_text = [format_node(s) for s in seeds]
    drivers = {}
    for nid, kw in specs:
        host, port = H, nid & 0xFFFF
        cfg = NodeConfig(host=host, port=port, cluster=1, keyring=keyring, **kw)
        node = Node(cfg, incarnation=1, rng=random.Random(port))
        drivers[nid] = StubDriver(node, UdpConfig(fanout_seeds=seed_text), wire)
    for d in drivers.values():
        d._start()
    return wire, drivers


def run(drivers: dict[int, StubDriver], until: float, t0: float = 0.0, step: float = 0.005) -> None:
    """Advance virtual time, firing deadlines and delivering every datagram at once."""
    t = t0
    while t < until:
        t = round(t + step, 6)
        for d in drivers.values():
            d.t = t
            d._on_deadline()
        busy = True
        while busy:
            busy = False
            for d in drivers.values():
                if d.sock.box:
                    busy = True
                    while d._read_batch(d.sock, False) == 1:  # type: ignore[arg-type]
                        pass


def last_view(d: StubDriver, group: int = 1) -> View:
    got = [v for v, _ in d.views if v.group == group]
    return got[-1] if got else view(group)


def settled(drivers: dict[int, StubDriver], members: tuple[int, ...]) -> Callable[[], bool]:
    def ok() -> bool:
        return all(last_view(d).nodes == members for d in drivers.values())

    return ok


def test_keyed_cluster_learns_members_from_views_and_sends_nowhere_else() -> None:
    """Rules, keyed, only A a seed: (1) B and C join through A and all three install one
    view; (2) after every view change each node's fan-out set is exactly seeds | view - self;
    (3) a multicast reaches both others in order; (4) no datagram ever went to an address
    outside the seeds and members of an authenticated view; no group socket was opened."""
    wire, ds = cluster([(A, {"broker_capable": True, "rank": 2}), (B, {}), (C, {})], [A], RING)
    run(ds, 8.0)
    assert settled(ds, (A, B, C))(), {format_node(n): last_view(d) for n, d in ds.items()}
    for me, d in ds.items():
        assert d.groups == ((0, 1) if me == A else (1,))
        for v, targets in d.views:
            want = sorted(({A} | set(v.nodes)) - {me})
            assert targets == tuple(format_node(n) for n in want), (format_node(me), v)
    assert ds[B].fanout_targets(1) == ("127.0.0.1:9001", "127.0.0.1:9003")
    for k in range(5):
        ds[C]._commanded(ds[C].endpoint.multicast(b"m%d" % k, ds[C].t))  # type: ignore[attr-defined]
    run(ds, 8.5, 8.0)
    for n in (A, B):
        assert ds[n].delivered == [(C, b"m%d" % k) for k in range(5)]
    allowed = {("127.0.0.1", p) for p in (9001, 9002, 9003)}
    assert {dst for _, dst in wire.sent} <= allowed


def test_forged_or_unauthenticated_view_adds_nobody_when_keyed() -> None:
    """Rule: with a keyring, a view sealed with another key or not sealed at all, naming an
    outsider X, is refused before the membership sees it: no ViewChanged, the fan-out set is
    unchanged and no datagram ever goes to X; a real view (C joining) still teaches."""
    wire, ds = cluster([(A, {"broker_capable": True, "rank": 2}), (B, {})], [A], RING)
    run(ds, 6.0)
    assert settled(ds, (A, B))()
    before_views = len(ds[B].views)
    before = ds[B].fanout_targets(1)
    assert before == ("127.0.0.1:9001",)
    entries = tuple(ViewEntry(n, 1, 0, 0, 0) for n in sorted((A, B, X)))
    part = ViewPart(epoch=99, view_id=99, part=0, parts=1, entries=entries)
    plain = encode(1, X, 1, part)
    for data in (plain, Authenticator(OTHER).seal(plain)):
        wire.put(("127.0.0.1", 9666), data, ("127.0.0.1", 9002))
    run(ds, 7.0, 6.0)
    stats: Any = ds[B].endpoint.stats  # type: ignore[attr-defined]
    assert stats.unauthenticated >= 2  # both reached the node and were refused
    assert len(ds[B].views) == before_views and ds[B].fanout_targets(1) == before
    assert ("127.0.0.1", 9666) not in {dst for _, dst in wire.sent}
    # the positive control: an authenticated view (a real joiner) does add a member
    ds2 = dict(ds)
    cfg = NodeConfig(host=H, port=9003, cluster=1, keyring=RING)
    node = Node(cfg, incarnation=1, rng=random.Random(3))
    ds2[C] = StubDriver(node, UdpConfig(fanout_seeds=["127.0.0.1:9001"]), wire)
    ds2[C].t = 7.0
    ds2[C]._start()
    run(ds2, 14.0, 7.0)
    assert ds[B].fanout_targets(1) == ("127.0.0.1:9001", "127.0.0.1:9003")


def test_unkeyed_fan_out_sends_to_seeds_only() -> None:
    """Rule: without a keyring views teach nothing: with A, B, C as seeds the cluster forms
    one view, and D (no seed) is never in a fan-out set, even in views that list it."""
    _, ds = cluster(
        [(A, {"broker_capable": True, "rank": 2}), (B, {}), (C, {}), (D, {})], [A, B, C], None
    )
    run(ds, 8.0)
    for n in (A, B, C):
        assert {A, B, C} <= set(last_view(ds[n]).nodes)
        seeds_only = tuple(format_node(s) for s in sorted({A, B, C} - {n}))
        assert [t for v, t in ds[n].views if v.group == 1] == [seeds_only] * len(
            [v for v, _ in ds[n].views if v.group == 1]
        )
    assert any(D in v.nodes for v, _ in ds[A].views)  # D did get in (by its own requests)
