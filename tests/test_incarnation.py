"""Incarnations that survive the wrap and restarts (issue 21, item 5).

Incarnations are 32-bit serial numbers (RFC 1982, ``types.incarnation_newer``): a
restart from 2**32-1 to 0 (or any small value) is a newer life for the replay window,
membership, multicast, unicast and the election alike.
"""

from __future__ import annotations

import random

import pytest

from powergrid import cli
from powergrid.auth import Authenticator, Keyring
from powergrid.cli.node import build_configs
from powergrid.errors import ConfigError
from powergrid.events import Received
from powergrid.node import MessageDelivered, Node, NodeConfig
from powergrid.protocols.membership import MemberRemoved
from powergrid.protocols.unicast import UnicastConfig, UnicastMachine
from powergrid.sim.memory import MemoryNetwork
from powergrid.types import incarnation_at, incarnation_newer, node_id
from powergrid.wire import UData

TOP = 2**32 - 1
RING = Keyring(primary=1, keys={1: bytes(range(16))})
PEER = node_id("127.0.0.1", 9001)


def test_incarnation_newer_is_serial_number_arithmetic() -> None:
    """Rule: a is newer than b iff it is 1..2**31-1 steps after b, mod 2**32; 0 is a life."""
    assert incarnation_newer(0, TOP) and incarnation_newer(5, TOP - 5)
    assert not incarnation_newer(TOP, 0) and not incarnation_newer(7, 7)
    assert incarnation_newer(2, 1) and not incarnation_newer(1, 2)
    assert incarnation_newer(2**31 - 1, 0) and not incarnation_newer(2**31, 0)
    assert not incarnation_newer(0, 2**31)  # exactly half-way: unordered


def test_incarnation_at_counts_tenths_and_moves_past_the_previous_life() -> None:
    """Rule: the default incarnation is wall-clock tenths of a second mod 2**32, and newer
    than the process's previous pick even within one tenth or across the wrap."""
    assert incarnation_at(12_345_678_912_345_678_912) == (123_456_789_123 % 2**32)
    assert incarnation_at(10**8 * (2**32 + 3)) == 3  # wrapped
    assert incarnation_at(10**8 * 40, previous=40) == 41  # same tenth: the next one
    assert incarnation_at(10**8 * 40, previous=TOP) == 40  # across the wrap: already newer
    assert incarnation_at(10**8 * 40, previous=50) == 51  # the clock went back
    assert incarnation_at(10**8 * TOP, previous=TOP) == 0


def test_replay_window_takes_a_new_life_across_the_wrap() -> None:
    """Rule: a sender's life after 2**32-1 (0, 1, ...) starts a fresh window; the old life
    is then refused as older, the same as a plain lower one."""
    auth = Authenticator(RING)
    assert auth.accept(PEER, TOP, 900)
    assert auth.accept(PEER, 0, 1)  # the restart after the wrap: counter 1 again
    assert auth.accept(PEER, 0, 2)
    assert not auth.accept(PEER, TOP, 901)  # the old life, replayed
    assert auth.stats.old_incarnation == 1
    assert auth.accept(PEER, 3, 1) and not auth.accept(PEER, 2, 5)


def test_unicast_takes_a_sender_and_a_receiver_restarted_across_the_wrap() -> None:
    """Rule: unicast treats a peer's life after 2**32-1 as a restart, as sender and as
    receiver (its stream starts over; its acks are not stale)."""
    rx = UnicastMachine(UnicastConfig(), incarnation=1, rng=random.Random(1))
    old = Received(sender=PEER, incarnation=TOP, message=UData(seq=7, base=7, kind=0, payload=b"x"))
    new = Received(sender=PEER, incarnation=0, message=UData(seq=1, base=1, kind=0, payload=b"y"))
    rx.handle(old, 0.0)
    got = rx.handle(new, 0.1)
    assert any(getattr(a, "payload", None) == b"y" for a in got)  # delivered, not stale
    assert rx.stats.stale == 0
    stale = rx.handle(old, 0.2)  # the old life again: stale now
    assert not any(getattr(a, "payload", None) == b"x" for a in stale) and rx.stats.stale == 1


def _node(port: int, inc: int, ring: Keyring | None) -> Node:
    cfg = NodeConfig(port=port, broker_capable=True, rank=port - 9000, keyring=ring)
    return Node(cfg, incarnation=inc, rng=random.Random(port * 7 + inc))


@pytest.mark.parametrize("ring", [RING, None], ids=["keyed", "unkeyed"])
def test_a_restart_across_the_wrap_is_admitted_and_heard(ring: Keyring | None) -> None:
    """Rule: keyed or not, a member at incarnation 2**32-1 that restarts at 3 is
    admitted as a new life (the view lists it at 3), and its multicasts reach the others.
    (Compared as plain integers, its peers took the new life for an old one.)"""
    net = MemoryNetwork(seed=3)
    a, b = _node(9002, 1, ring), _node(9001, TOP, ring)
    net.add(a, at=0.0, incarnation=1)
    net.add(b, at=0.0, incarnation=TOP)
    net.run_until(5.0)
    lives = {m.node: m.incarnation for m in a.stack(1).membership.view.members}
    assert lives == {a.node_id: 1, b.node_id: TOP}
    net.remove(b.node_id)
    b2 = _node(9001, 3, ring)
    net.add(b2, at=5.05, incarnation=3)  # back before its old life is suspected
    net.run_until(12.0)
    lives = {m.node: m.incarnation for m in a.stack(1).membership.view.members}
    assert lives == {a.node_id: 1, b.node_id: 3}
    # the new life replaced the old one (not: the old one crashed, then a stranger joined)
    removed = [
        o for _, nid, o in net.log or [] if nid == a.node_id and isinstance(o, MemberRemoved)
    ]
    assert [(r.node, r.reason) for r in removed] == [(b.node_id, "replaced")]
    assert a.stats.replayed == 0
    net.command(b2.node_id, lambda ep, now: ep.multicast(b"after the wrap", now))
    net.run_until(13.0)
    got = [o for _, nid, o in net.log or [] if nid == a.node_id and isinstance(o, MessageDelivered)]
    assert [(d.sender, d.payload) for d in got][-1:] == [(b.node_id, b"after the wrap")]


def test_cli_incarnation_option() -> None:
    """Rule: powergrid node --incarnation N sets this life's incarnation (0..2**32-1)."""
    args = cli.build_parser("node").parse_args(
        ["node", "--port", "9100", "--insecure", "--incarnation", "0"]
    )
    assert args.incarnation == 0
    build_configs(args, environ={})
    bad = cli.build_parser("node").parse_args(
        ["node", "--port", "9100", "--insecure", "--incarnation", str(2**32)]
    )
    with pytest.raises(ConfigError, match="--incarnation 4294967296 is outside"):
        build_configs(bad, environ={})
