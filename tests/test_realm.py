"""Realms: a deployment's name in every datagram, checked on every datagram, keyed or not.

Unit tests of the realm tag, the header's realm and version checks in the node, the
realm bound into the authentication, and real processes of two realms on the same
host and group ports that never merge (``docs/wire.md``, ``docs/security.md``).
"""

from __future__ import annotations

import random
import struct

import pytest
from toys import free_port

from powergrid.auth import Authenticator, Keyring
from powergrid.cli.node import ForeignWarner
from powergrid.cli.processes import NodeProcesses
from powergrid.errors import ConfigError, DecodeError
from powergrid.events import ViewChanged
from powergrid.node import Node, NodeConfig
from powergrid.types import DEFAULT_REALM, node_id, realm_problem, realm_tag
from powergrid.wire import (
    DEFAULT_REALM_TAG,
    HEADER_SIZE,
    REALM_OFFSET,
    VERSION,
    Heartbeat,
    JoinRequest,
    decode,
    encode,
)

SENDER = node_id("127.0.0.1", 9001)
RING = Keyring(primary=1, keys={1: bytes(range(16))})
EAST = realm_tag("dc-east")
WEST = realm_tag("dc-west")


def _node(realm: str = "dc-east", keyring: Keyring | None = None) -> Node:
    cfg = NodeConfig(port=9000, realm=realm, keyring=keyring, broker_capable=True)
    node = Node(cfg, incarnation=1, rng=random.Random(1))
    node.start(0.0)
    return node


def _run(node: Node, now: float, until: float) -> tuple[float, set[int]]:
    """Wake ``node`` at each of its deadlines up to ``until`` (its peers are silent);
    the time then and every node a view installed meanwhile listed."""
    listed: set[int] = set()
    while (due := node.next_deadline()) is not None and due <= until:
        now = max(now, due)
        for out in node.handle_deadline(now):
            if isinstance(out, ViewChanged):
                listed |= {m.node for m in out.view.members}
    return until, listed


def _join(realm: int) -> bytes:
    return encode(1, SENDER, 1, JoinRequest(rank=5, broker_capable=1), realm)


# ------------------------------------------------------------------ names and tags


def test_realm_names_are_validated_and_tags_are_stable() -> None:
    """Rule: a realm is 1-64 of [A-Za-z0-9._-], starting alphanumeric; its tag is the first
    4 bytes of SHA-256("powergrid realm\\0" + name), so distinct names give distinct tags."""
    assert realm_problem("dc-east.2_b") is None and realm_problem("x" * 64) is None
    for bad in ("", "-x", "a b", "é", "x" * 65, 7):
        assert realm_problem(bad) is not None
    assert realm_tag(DEFAULT_REALM) == DEFAULT_REALM_TAG
    assert EAST != WEST and realm_tag("dc-east") == EAST
    assert 0 <= EAST < 2**32
    with pytest.raises(ConfigError, match="realm"):
        realm_tag("no spaces")


def test_node_config_validates_the_realm_naming_the_field() -> None:
    """Rule: NodeConfig(realm=...) is checked when built; the message names the field."""
    with pytest.raises(ConfigError, match=r"NodeConfig\.realm 'a b' must be"):
        NodeConfig(port=9000, realm="a b")
    assert NodeConfig(port=9000).realm == DEFAULT_REALM


def test_the_header_carries_the_realm_and_the_codec_round_trips_it() -> None:
    """Rule: bytes 21..25 of the header are the sender's realm tag; decode returns it."""
    data = encode(1, SENDER, 1, Heartbeat(epoch=1, view_id=1), WEST)
    assert data[REALM_OFFSET:HEADER_SIZE] == struct.pack("!I", WEST)
    assert decode(data).realm == WEST
    assert decode(encode(1, SENDER, 1, Heartbeat(epoch=1, view_id=1))).realm == DEFAULT_REALM_TAG


def test_a_version_1_datagram_is_refused_with_a_clear_reason() -> None:
    """Rule: the old wire version (21-byte header, no realm) is refused by the codec with a
    message that says what to do, and counted by the node as wrong_version."""
    old = struct.pack("!2sBBBIQI", b"PG", 1, Heartbeat.TYPE, 0, 1, SENDER, 1)
    old += struct.pack("!IQ", 1, 1)
    assert VERSION == 2
    with pytest.raises(DecodeError, match=r"older powergrid.*upgrade every node"):
        decode(old)
    for keyring in (None, RING):
        node = _node(keyring=keyring)
        assert node.receive(old, 0.1) == []
        assert node.stats.wrong_version == 1
        assert node.stats.malformed == node.stats.unauthenticated == 0


def test_reserved_flag_bits_are_refused() -> None:
    """Rule: flags bits 1-7 are reserved for later additions to version 2 and refused."""
    data = bytearray(encode(1, SENDER, 1, Heartbeat(epoch=1, view_id=1)))
    for bit in range(1, 8):
        data[4] = 1 << bit
        with pytest.raises(DecodeError, match=r"bits 1-7 are reserved"):
            decode(bytes(data))


# ------------------------------------------------------------------ the node's check


@pytest.mark.parametrize("keyed", [False, True])
def test_a_datagram_of_another_realm_is_dropped_and_counted(keyed: bool) -> None:
    """Rule: keyed or not, a datagram whose realm tag is not ours never reaches a machine
    (a join of another realm admits nobody) and counts in foreign_realm; ours does."""
    ring = RING if keyed else None
    node = _node(keyring=ring)
    now, _ = _run(node, 0.0, 10.0)  # alone: it leads its group
    assert node.stack(1).election.state == "leader"
    seal = Authenticator(RING, realm="dc-west").seal if keyed else bytes
    assert node.receive(seal(_join(WEST)), now) == []
    assert node.stats.foreign_realm == 1
    assert node.stats.unauthenticated == node.stats.malformed == 0
    now, listed = _run(node, now, now + 5.0)
    assert listed <= {node.node_id}
    # the same join of our realm is admitted
    seal = Authenticator(RING, realm="dc-east").seal if keyed else bytes
    node.receive(seal(_join(EAST)), now)
    _, listed = _run(node, now, now + 5.0)
    assert SENDER in listed
    assert node.stats.foreign_realm == 1


def test_the_realm_name_is_bound_into_the_tag() -> None:
    """Rule: with the same key, a datagram signed in another realm fails its tag even when
    its header carries our realm's tag (a collision or a rewrite of the field)."""
    node = _node(keyring=RING)
    forged = Authenticator(RING, realm="dc-west").seal(_join(EAST))
    assert node.receive(forged, 0.1) == []
    assert node.stats.unauthenticated == 1 and node.stats.foreign_realm == 0
    assert Authenticator(RING, realm="dc-east").open(forged) is None


def test_the_warner_warns_at_once_then_at_most_once_per_interval() -> None:
    """Rule: the CLI warns when new foreign datagrams arrived, at most once per `every` s."""
    w = ForeignWarner("dc-east", every=30.0)
    assert w.check(0, 0, 0.0) is None
    first = w.check(3, 0, 1.0)
    assert first is not None and "3 datagrams of another realm (not 'dc-east')" in first["message"]
    assert first["foreign_realm"] == 3
    assert w.check(9, 0, 20.0) is None  # rate-limited
    again = w.check(9, 2, 31.0)
    assert again is not None and "6 datagrams of another realm" in again["message"]
    assert "2 datagrams of another wire version" in again["message"]
    assert w.check(9, 2, 100.0) is None  # nothing new


# ------------------------------------------------------------------ real processes


def test_two_realms_on_the_same_host_and_group_ports_never_merge(procs: NodeProcesses) -> None:
    """Rule: two deployments (realms) on one host, the same cluster id and the same group
    ports, over real loopback sockets, each elect their own leader and list only their
    own members, and each node warns that it heard datagrams of another realm."""
    base = free_port()
    common = ["--group", "1", "--ttl", "0", "--group-port-base", str(base), "--insecure"]
    names: dict[str, list[str]] = {"dc-east": [], "dc-west": []}
    for realm, ranks in (("dc-east", (1, 2)), ("dc-west", (3, 4))):
        for rank in ranks:
            port = free_port()
            opts = ["--port", str(port), "--realm", realm, "--rank", str(rank)]
            opts += ["--broker-capable", "--supply", "500", *common]
            names[realm].append(procs.start(f"{realm}/{port}", *opts))

    def members(name: str) -> set[str]:
        views = procs.events(name, "view", group=1)
        return set(views[-1]["members"]) if views else set()

    ports = {r: {n.split("/")[1] for n in ns} for r, ns in names.items()}

    def settled() -> bool:
        for realm, ns in names.items():
            for n in ns:
                if {m.split(":")[1] for m in members(n)} != ports[realm]:
                    return False
                if not realm_warnings(n):
                    return False
        return True

    def realm_warnings(name: str) -> list[dict[str, object]]:
        return [e for e in procs.events(name, "warning") if "foreign_realm" in e]

    procs.until(settled, 20, "each realm to form its own view and warn of the other")
    for realm, ns in names.items():
        for n in ns:
            for view in procs.events(n, "view"):
                assert {m.split(":")[1] for m in view["members"]} <= ports[realm], view
            started = procs.events(n, "started")[0]
            assert started["realm"] == realm
            warning = realm_warnings(n)[0]
            assert f"of another realm (not '{realm}')" in str(warning["message"])
