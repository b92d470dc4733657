"""IPv6: node ids and addresses, the wire, seeds and socket settings, and real nodes on ::1
with the trio and asyncio transports (multicast over IPv6 is in tests/test_netns.py)."""

from __future__ import annotations

import random
import socket
from collections.abc import Iterator
from typing import Any

import pytest
from loops import LOOPS

from powergrid.errors import ConfigError, DecodeError
from powergrid.events import ViewChanged
from powergrid.fanout import parse_seed
from powergrid.node import MessageDelivered, Node, NodeConfig, UnicastDelivered
from powergrid.transports._core import Destinations, UdpConfig, UdpStats
from powergrid.types import (
    IPV6_NODE,
    MAX_NODE_ID,
    format_node,
    ipv6_prefix_problem,
    node_address,
    node_id,
    node_repr,
)
from powergrid.wire import Nak, decode, encode

V6 = node_id("::1", 9000)


def test_an_ipv6_id_is_the_flag_the_low_32_bits_and_the_port() -> None:
    assert V6 == IPV6_NODE | (1 << 16) | 9000
    assert node_id("fd00:77::a:b", 47001) == IPV6_NODE | (0x000A000B << 16) | 47001
    assert node_address(V6) == ("::1", 9000)
    assert node_address(node_id("fd00:77::a:b", 47001), "fd00:77::") == ("fd00:77::a:b", 47001)
    assert format_node(V6) == "[::1]:9000" and node_repr(V6) == "[::1]:9000"
    assert MAX_NODE_ID == (1 << 49) - 1


def test_ipv4_ids_are_unchanged() -> None:
    nid = node_id("127.0.0.1", 9000)
    assert nid == (0x7F000001 << 16) | 9000 and not nid & IPV6_NODE
    assert node_address(nid) == ("127.0.0.1", 9000) and format_node(nid) == "127.0.0.1:9000"


def test_bad_hosts_and_prefixes_are_refused_clearly() -> None:
    with pytest.raises(ConfigError, match="not an IPv4 or IPv6 address"):
        node_id("localhost", 9000)
    with pytest.raises(ConfigError, match="not a node id"):
        node_address(1 << 49)
    assert ipv6_prefix_problem("fd00::") is None
    assert "low 32 bits" in (ipv6_prefix_problem("fd00::1") or "")
    assert "not an IPv6 address" in (ipv6_prefix_problem("10.0.0.0") or "")
    with pytest.raises(ConfigError, match=r"UdpConfig\.ipv6_prefix"):
        UdpConfig(ipv6_prefix="fd00::1")
    with pytest.raises(ConfigError, match=r"UdpConfig\.ipv6_group_prefix"):
        UdpConfig(ipv6_group_prefix="fd00::")
    with pytest.raises(ConfigError, match="no interface 'pg-none0'"):
        UdpConfig(ipv6_interface="pg-none0").ipv6_ifindex()


def test_node_config_takes_an_ipv6_host() -> None:
    cfg = NodeConfig(host="::1", port=9000)
    assert cfg.node_id == V6
    with pytest.raises(ConfigError, match="must be an IPv4 or IPv6 address"):
        NodeConfig(host="::1::", port=9000)


def test_the_wire_carries_ipv6_ids_in_the_header_and_in_bodies() -> None:
    other = node_id("::2", 9001)
    data = encode(1, V6, 3, Nak(other, 4, 1, 5, helper=V6))
    env = decode(data)
    assert (env.sender, env.message) == (V6, Nak(other, 4, 1, 5, helper=V6))
    too_big = encode(1, 1, 3, Nak(other, 4, 1, 5))
    too_big = too_big[:9] + (1 << 49).to_bytes(8, "big") + too_big[17:]
    with pytest.raises(DecodeError, match="not a node id"):
        decode(too_big)


def test_seeds_write_ipv6_in_brackets() -> None:
    assert parse_seed("[::1]:9000") == V6
    assert parse_seed("127.0.0.1:9000") == node_id("127.0.0.1", 9000)
    with pytest.raises(ConfigError, match=r"is not host:port.*\[fd00::5\]:9001"):
        parse_seed("::1:9000")


def test_group_addresses_of_ipv6_nodes() -> None:
    cfg = UdpConfig()
    assert cfg.group_address(258, ipv6=True) == ("ff15::102", 20000 + 258)
    assert cfg.group_address(258) == ("239.255.1.2", 20000 + 258)
    cfg = UdpConfig(ipv6_group_prefix="ff12:0:0:0:0:7::")
    assert cfg.group_address(1, ipv6=True)[0] == "ff12::7:0:1"


def test_a_source_outside_the_prefix_is_no_node_and_its_claims_are_refused() -> None:
    to = Destinations(UdpConfig(ipv6_prefix="fd00:77::"), V6, UdpStats(), check=True, keyed=False)
    assert to.hear(("fd00:77::1", 9000)) == node_id("fd00:77::1", 9000)
    assert to.hear(("fd00:99::1", 9000)) == -1  # same low bits, another /96
    assert to.unicast(node_id("fd00:77::1", 9000)) == ("fd00:77::1", 9000)


# ------------------------------------------------------------------ real sockets on ::1


def free_port6() -> int:
    with socket.socket(socket.AF_INET6, socket.SOCK_DGRAM) as s:
        s.bind(("::1", 0))
        port: int = s.getsockname()[1]
        return port


def _no_ipv6() -> str | None:
    try:
        free_port6()
    except OSError as exc:
        return f"no IPv6 loopback here: {exc}"
    return None


@pytest.fixture(params=["trio", "asyncio"])
def loop(request: pytest.FixtureRequest) -> Iterator[Any]:
    reason = _no_ipv6()
    if reason:
        pytest.skip(reason)
    yield LOOPS[request.param]


def test_nodes_on_ipv6_loopback_form_a_view_multicast_and_unicast(loop: Any) -> None:
    """Three nodes on ::1, groups fanned out as unicasts (every node a seed; IPv6
    multicast on loopback is not assumed): one view, a multicast (a small one and a
    200 KB one, as fragments) reaches both others in order, a unicast reaches its peer."""
    ports = [free_port6() for _ in range(3)]
    seeds = [f"[::1]:{p}" for p in ports]
    udp = UdpConfig(ttl=0, group_port_base=free_port6(), fanout_seeds=seeds)
    nodes = [
        Node(
            NodeConfig(host="::1", port=p, broker_capable=True, rank=3 - i),
            incarnation=1,
            rng=random.Random(i),
        )
        for i, p in enumerate(ports)
    ]
    got: dict[int, list[Any]] = {n.node_id: [] for n in nodes}
    big = bytes(range(256)) * 800

    async def main() -> None:
        def run(n: Node) -> Any:
            return loop.run_node(n, udp=udp, insecure=True, on_event=got[n.node_id].append)

        async with run(nodes[0]) as h0, run(nodes[1]), run(nodes[2]):

            def full_view(n: Node) -> bool:
                views = [e.view for e in got[n.node_id] if isinstance(e, ViewChanged)]
                return bool(views) and len(views[-1].members) == 3

            with loop.fail_after(10):
                while not all(full_view(n) for n in nodes):
                    await loop.sleep(0.01)
            await h0.multicast(b"hello over IPv6")
            await h0.multicast(big)
            await h0.send(nodes[2].node_id, b"just to you")

            def done() -> bool:
                return all(
                    len([e for e in got[n.node_id] if isinstance(e, MessageDelivered)]) >= 2
                    for n in nodes[1:]
                ) and any(isinstance(e, UnicastDelivered) for e in got[nodes[2].node_id])

            with loop.fail_after(10):
                while not done():
                    await loop.sleep(0.01)

    loop.run(main)
    sender = nodes[0].node_id
    assert format_node(sender) == f"[::1]:{ports[0]}"
    for n in nodes[1:]:
        payloads = [
            e.payload
            for e in got[n.node_id]
            if isinstance(e, MessageDelivered) and e.sender == sender
        ]
        assert payloads == [b"hello over IPv6", big]
    unicasts = [e for e in got[nodes[2].node_id] if isinstance(e, UnicastDelivered)]
    assert [(u.sender, u.payload) for u in unicasts] == [(sender, b"just to you")]
