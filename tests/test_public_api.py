"""The public surface (issue 18): ``from powergrid import ...`` gives what an app needs,
the handle has the app's commands on both loops, and node ids print as addresses."""

from __future__ import annotations

import random
import socket
from typing import Any

import pytest
from loops import LOOPS

import powergrid as pg
from powergrid.types import node_id

HOST = "127.0.0.1"
A = node_id(HOST, 47001)


def free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as s:
        s.bind((HOST, 0))
        port: int = s.getsockname()[1]
        return port


def test_every_public_name_resolves_and_has_a_docstring() -> None:
    """Rule: each name in ``powergrid.__all__`` exists (transports load lazily) and the
    classes and functions among them say what they are."""
    for name in pg.__all__:
        value = getattr(pg, name)
        if callable(value) and not isinstance(value, type(pg.NodeId)):
            assert (value.__doc__ or "").strip(), f"{name} has no docstring"
    assert pg.run_node_asyncio.__module__ == "powergrid.transports.asyncio_udp"
    assert pg.run_node.__module__ == "powergrid.transports.trio_udp"
    with pytest.raises(AttributeError, match="no attribute 'nope'"):
        pg.nope  # type: ignore[attr-defined]  # noqa: B018


@pytest.mark.parametrize("handle", ["UdpHandle", "AsyncioUdpHandle"])
def test_the_handle_has_the_apps_commands(handle: str) -> None:
    """Rule: both handles offer multicast, send, set_bid, set_supply, leave, stats, events."""
    cls = getattr(pg, handle)
    for name in ("multicast", "send", "set_bid", "set_supply", "leave", "command", "events"):
        assert callable(getattr(cls, name)), name
    assert isinstance(cls.stats, property) and isinstance(cls.address, property)


def test_events_print_node_ids_as_addresses() -> None:
    """Rule: wherever a person reads an event, a node id shows as ``127.0.0.1:47001``."""
    view = pg.View(
        group=pg.GroupId(1),
        view_id=2,
        leader=A,
        epoch=pg.Epoch(3),
        members=(pg.Member(node=A, incarnation=pg.Incarnation(7)),),
    )
    assert pg.format_event(pg.ViewChanged(view=view)) == (
        "ViewChanged(view=View(group=1, view_id=2, leader=127.0.0.1:47001, epoch=3, "
        "members=[127.0.0.1:47001/7]))"
    )
    got = pg.MessageDelivered(group=pg.GroupId(1), sender=A, seq=4, payload=b"hi")
    assert pg.format_event(got) == (
        "MessageDelivered(group=1, sender=127.0.0.1:47001, seq=4, payload=b'hi')"
    )
    left = pg.MemberLeft(group=pg.GroupId(1), node=A, reason="crashed")
    assert str(left) == "left group 1: 127.0.0.1:47001 (crashed)"
    joined = pg.MemberJoined(group=pg.GroupId(1), node=A, incarnation=pg.Incarnation(9))
    assert str(joined) == "joined group 1: 127.0.0.1:47001 (life 9)"


@pytest.mark.parametrize("loop", ["trio", "asyncio"])
def test_set_supply_and_set_bid_reach_the_market(loop: str) -> None:
    """Rule: ``set_supply`` and ``set_bid`` on the handle drive the market: a lone
    broker-capable node leads, clears, and prices the new bid with the new supply."""
    lp = LOOPS[loop]
    prices: list[Any] = []
    udp = pg.UdpConfig(ttl=0, group_port_base=free_port(), group_ports=2)
    cfg = pg.NodeConfig(port=free_port(), broker_capable=True, supply=0)

    async def main() -> None:
        async with lp.run_node(cfg, udp=udp, rng=random.Random(1), insecure=True) as node:
            assert repr(node) == f"<{type(node).__name__} {HOST}:{cfg.port} running>"
            await node.set_supply(500)
            await node.set_bid(pg.Bid(floor=100, required=200, maximum=800))
            with lp.fail_after(15):
                async for ev in node.events():
                    if isinstance(ev, pg.PriceUpdated) and ev.includes_latest_bid:
                        prices.append(ev)
                        break
            assert node.stats.sent > 0

    lp.run(main)
    # supply 0 would be a shortage (allocation 0); 500 W for a bid of 200..800 W is not
    assert prices[0].regime == pg.Regime.NORMAL and 200 < prices[0].allocation <= 500


@pytest.mark.parametrize("loop", ["trio", "asyncio"])
def test_two_readers_of_events_share_one_queue(loop: str) -> None:
    """Rule (docs/api.md): two tasks reading ``events()`` share one queue: every
    notification goes to exactly one of them, in order within each."""
    from toys import Got, Recorder, datagram  # noqa: PLC0415

    lp = LOOPS[loop]
    ep = Recorder(node_id(HOST, free_port()))
    got: dict[str, list[int]] = {"a": [], "b": []}
    n = 40

    async def main() -> None:
        udp = pg.UdpConfig(ttl=0, group_port_base=free_port())
        async with lp.run_node(ep, udp=udp, insecure=True) as h:

            async def read(name: str) -> None:
                async for ev in h.events():
                    assert isinstance(ev, Got)
                    got[name].append(ev.value)
                    await lp.sleep(0)  # let the other reader take the next one

            async with lp.tasks() as tasks:
                tasks.start_soon(read, "a")
                tasks.start_soon(read, "b")
                with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as raw:
                    for v in range(n):
                        raw.sendto(datagram(1, v), pg.node_address(ep.node_id))
                        await lp.sleep(0.001)
                with lp.fail_after(5):
                    while len(got["a"]) + len(got["b"]) < n:
                        await lp.sleep(0.005)
                tasks.cancel()

    lp.run(main)
    assert sorted(got["a"] + got["b"]) == list(range(n))  # each to one reader, none twice
    assert got["a"] and got["b"]  # both took some
    assert got["a"] == sorted(got["a"]) and got["b"] == sorted(got["b"])


def test_each_run_node_says_which_loop_it_needs() -> None:
    """Rule (issue 18): ``run_node`` under asyncio, or ``run_node_asyncio`` under trio,
    raises UsageError naming the other, not an AttributeError from inside trio."""
    import asyncio  # noqa: PLC0415

    import trio  # noqa: PLC0415

    cfg = pg.NodeConfig(port=free_port())

    async def trio_under_asyncio() -> None:
        async with pg.run_node(cfg, insecure=True):
            pass  # pragma: no cover

    async def asyncio_under_trio() -> None:
        async with pg.run_node_asyncio(cfg, insecure=True):
            pass  # pragma: no cover

    with pytest.raises(pg.UsageError, match=r"under asyncio use powergrid\.run_node_asyncio"):
        asyncio.run(trio_under_asyncio())
    with pytest.raises(pg.UsageError, match=r"under trio use powergrid\.run_node"):
        trio.run(asyncio_under_trio)


@pytest.mark.parametrize("loop", ["trio", "asyncio"])
def test_run_node_refuses_to_run_unkeyed_unless_insecure_is_asked_for(loop: str) -> None:
    """Rule (issue 21, secure by default): ``run_node`` / ``run_node_asyncio`` refuse a
    node without a keyring unless ``insecure=True`` is passed, with a ConfigError naming
    both ways out, before any socket is opened; a keyed node runs, and a keyring with
    ``insecure=True`` is refused as contradictory. (On main an unkeyed node ran.)"""
    lp = LOOPS[loop]
    udp = pg.UdpConfig(ttl=0, group_port_base=free_port(), group_ports=2)
    port = free_port()
    ring = pg.Keyring(primary=1, keys={1: bytes(range(32))})
    ran: list[bool] = []

    async def start(cfg: pg.NodeConfig, **kw: Any) -> None:
        async with lp.run_node(cfg, udp=udp, rng=random.Random(1), **kw) as node:
            ran.append(node.running)

    def run(cfg: pg.NodeConfig, **kw: Any) -> None:
        lp.run(lambda: start(cfg, **kw))

    with pytest.raises(pg.ConfigError, match=r"no key: pass NodeConfig\(keyring=.*insecure=True"):
        run(pg.NodeConfig(port=port))
    with pytest.raises(pg.ConfigError, match="insecure=True or a keyring, not both"):
        run(pg.NodeConfig(port=port, keyring=ring), insecure=True)
    assert ran == []
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as probe:
        probe.bind((HOST, port))  # the refusals opened no socket on the node's port
    run(pg.NodeConfig(port=port, keyring=ring))
    run(pg.NodeConfig(port=port), insecure=True)
    assert ran == [True, True]
