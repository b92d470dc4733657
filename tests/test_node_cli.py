"""Tests of ``powergrid node`` (powergrid.cli.node): options, event lines, and real
processes on loopback.

The multi-process tests start ``python -m powergrid node --json`` processes on
127.0.0.1 with TTL 0, fresh ports (bound to port 0 first) and a fresh group
port base, read their JSON lines with a hard time limit, and always kill every
process in a ``finally``.
"""

from __future__ import annotations

import json
import re
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import pytest

from powergrid import cli
from powergrid.cli.node import COMMANDS, EVENTS, Joins, build_configs, describe, supply_warning
from powergrid.cli.processes import NodeProcesses
from powergrid.errors import ConfigError
from powergrid.events import LeaderElected, LeaderLost, Member, MemberJoined, View, ViewChanged
from powergrid.node import MessageDelivered, UnicastDelivered
from powergrid.protocols.market import PriceUpdated, Regime
from powergrid.protocols.membership import MemberRemoved, MemberSuspected
from powergrid.types import Epoch, GroupId, Incarnation, node_id

HOST = "127.0.0.1"


def free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as s:
        s.bind((HOST, 0))
        port: int = s.getsockname()[1]
        return port


# ------------------------------------------------------------------ options


def parse(*argv: str) -> Any:
    return cli.build_parser("node").parse_args(["node", "--insecure", *argv])


def test_options_build_the_node_and_socket_configs() -> None:
    """Rule: each option lands in NodeConfig/UdpConfig; a bid is built from
    --floor/--required/--maximum/--priority, required defaulting to floor."""
    args = parse(
        "--port", "9100", "--group", "3", "--broker-capable", "--rank", "7",
        "--supply", "5000", "--floor", "10", "--maximum", "300", "--priority", "2",
        "--ttl", "0", "--group-port-base", "30000", "--duration", "1.5",
    )  # fmt: skip
    node, udp = build_configs(args)
    assert (node.host, node.port, node.cluster, node.rank) == (HOST, 9100, 3, 7)
    assert node.broker_capable and node.supply == 5000
    assert node.bid is not None
    assert (node.bid.floor, node.bid.required, node.bid.maximum, node.bid.priority) == (
        10,
        10,
        300,
        2,
    )
    assert (udp.interface, udp.ttl, udp.group_port_base) == (HOST, 0, 30000)
    assert args.duration == 1.5 and not args.json
    assert (node.lead.provisioned, node.lead.floor_provision) == (0, 0)  # off by default
    node, _ = build_configs(
        parse("--port", "9100", "--provisioned", "8", "--floor-provision", "40")
    )
    assert (node.lead.provisioned, node.lead.floor_provision) == (8, 40)


def test_defaults_have_no_bid_and_use_the_host_as_interface() -> None:
    """Rule: without bid options the node does not bid; --interface defaults to --host."""
    node, udp = build_configs(parse("--port", "9100", "--host", "127.0.0.2"))
    assert node.bid is None and node.cluster == 1 and not node.broker_capable
    assert udp.interface == "127.0.0.2" and udp.ttl == 1


def test_seeds_turn_on_unicast_fan_out() -> None:
    """Rule: --seeds host:port,... becomes UdpConfig.fanout_seeds (spaces and empty entries
    dropped); without it the node uses IP multicast; a bad entry is an error naming --seeds."""
    _, udp = build_configs(parse("--port", "9100", "--seeds", "10.0.0.1:9001, 10.0.0.2:9001,"))
    assert udp.fanout and udp.fanout_seeds == ("10.0.0.1:9001", "10.0.0.2:9001")
    assert not build_configs(parse("--port", "9100"))[1].fanout
    with pytest.raises(ConfigError, match=r"--seeds: '10.0.0.1' is not host:port"):
        build_configs(parse("--port", "9100", "--seeds", "10.0.0.1"))


@pytest.mark.parametrize(
    ("argv", "words"),
    [
        (["--port", "0"], "NodeConfig.port: must be a whole number in 1..65535, got 0"),
        (["--port", "9100", "--host", "localhost"], "NodeConfig.host: must be an IPv4 or IPv6"),
        (["--port", "9100", "--group", "0"], "NodeConfig.cluster: must be a whole number in 1.."),
        (
            ["--port", "9100", "--rank", "70000"],
            "NodeConfig.rank: must be a whole number in 0..65535, got 70000",
        ),
        (["--port", "9100", "--ttl", "300"], "UdpConfig.ttl: must be a whole number in 0..255"),
        (["--port", "9100", "--interface", "eth0"], "interface"),
        (["--port", "9100", "--duration", "0"], "--duration"),
        (["--port", "9100", "--supply", "-1"], "--supply"),
        (["--port", "9100", "--provisioned", "-2"], "--provisioned"),
        (["--port", "9100", "--floor-provision", "50"], "--floor-provision needs --provisioned"),
        (
            ["--port", "9100", "--provisioned", "8", "--floor", "60", "--maximum", "90"],
            "--floor-provision 0 must be at least this server's --floor 60",
        ),
        (["--port", "9100", "--required", "5"], "--maximum"),
        (["--port", "9100", "--floor", "10", "--maximum", "5"], "Bid: watts must satisfy"),
        (
            ["--port", "9100", "--maximum", "5", "--priority", "16"],
            "Bid.priority: must be a whole number in 0..15, got 16",
        ),
        (["--port", "9100", "--group-port-base", "65535"], "group ports"),
    ],
)
def test_bad_options_exit_2_with_what_to_fix(
    argv: list[str], words: str, capsys: pytest.CaptureFixture[str]
) -> None:
    """Rule: an invalid value fails at once (exit 2) with a message naming it."""
    assert cli.main(["node", "--insecure", *argv]) == 2
    err = capsys.readouterr().err
    assert err.startswith("powergrid node: ") and words in err


@pytest.mark.parametrize("argv", [[], ["--port", "x"], ["--port", "9100", "--bogus"]])
def test_unparsable_options_exit_2(argv: list[str], capsys: pytest.CaptureFixture[str]) -> None:
    """Rule: a missing --port, a non-number or an unknown option is an argparse error (exit 2)."""
    with pytest.raises(SystemExit) as exc:
        cli.main(["node", *argv])
    assert exc.value.code == 2
    assert "error:" in capsys.readouterr().err


def test_busy_port_exits_2(capsys: pytest.CaptureFixture[str]) -> None:
    """Rule: a port already taken is reported (exit 2), not a traceback."""
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as s:
        s.bind((HOST, 0))
        port = s.getsockname()[1]
        assert cli.main(["node", "--insecure", "--port", str(port), "--duration", "1"]) == 2
    assert "cannot open the unicast socket" in capsys.readouterr().err


# ------------------------------------------------------------------ event lines

A = node_id(HOST, 9001)
B = node_id(HOST, 9002)


def test_describe_gives_each_event_its_fields() -> None:
    """Rule: every reported notification maps to its event name and exact fields."""
    view = View(
        group=GroupId(1),
        view_id=4,
        leader=B,
        epoch=Epoch(2),
        members=(
            Member(node=A, incarnation=Incarnation(1)),
            Member(node=B, incarnation=Incarnation(1)),
        ),
    )
    assert describe(ViewChanged(view=view)) == (
        "view",
        {
            "group": 1,
            "view_id": 4,
            "leader": "127.0.0.1:9002",
            "epoch": 2,
            "members": ["127.0.0.1:9001", "127.0.0.1:9002"],
            "incarnations": [1, 1],
        },
    )
    assert describe(LeaderElected(group=GroupId(0), leader=B, epoch=Epoch(3))) == (
        "leader",
        {"group": 0, "leader": "127.0.0.1:9002", "epoch": 3},
    )
    price = PriceUpdated(
        group=GroupId(1),
        epoch=Epoch(3),
        round=5,
        price=0.25,
        regime=Regime.SHORTAGE,
        allocation=120,
        includes_latest_bid=True,
        deficit=7,
        lead_epoch=Epoch(2),
        lead_round=41,
        counted=True,
    )
    assert describe(price) == (
        "price",
        {
            "group": 1,
            "broker": None,
            "epoch": 3,
            "round": 5,
            "lead_epoch": 2,
            "lead_round": 41,
            "price": 0.25,
            "regime": "shortage",
            "allocation": 120,
            "deficit": 7,
            "local": False,
            "counted": True,
            "carried": False,
        },
    )
    got = MessageDelivered(group=GroupId(1), sender=A, seq=2, payload=b"hi \xff")
    assert describe(got) == (
        "deliver",
        {
            "group": 1,
            "sender": "127.0.0.1:9001",
            "incarnation": None,
            "seq": 2,
            "data": "hi \ufffd",
        },
    )
    assert describe(LeaderLost(group=GroupId(1), leader=B, epoch=Epoch(2))) == (
        "leader_lost",
        {"group": 1, "leader": "127.0.0.1:9002", "epoch": 2},
    )
    assert describe(MemberSuspected(group=GroupId(1), node=A)) == (
        "suspect",
        {"group": 1, "member": "127.0.0.1:9001"},
    )
    assert describe(MemberRemoved(group=GroupId(1), node=A, reason="crashed")) == (
        "removed",
        {"group": 1, "member": "127.0.0.1:9001", "reason": "crashed"},
    )
    assert describe(UnicastDelivered(group=GroupId(1), sender=A, payload=b"x")) is None


# ------------------------------------------------------------------ processes


def start(p: NodeProcesses, port: int, *opts: str) -> str:
    """Run ``powergrid node --json --port PORT *opts`` named ``"127.0.0.1:PORT"``."""
    return p.start(f"{HOST}:{port}", "--insecure", "--port", str(port), *opts)


def last_leader(p: NodeProcesses, name: str, group: int) -> str | None:
    got = p.events(name, "leader", group=group)
    return got[-1]["leader"] if got else None


def test_three_processes_elect_multicast_and_fail_over(procs: NodeProcesses) -> None:
    """Rules: processes of one cluster agree on the highest broker-capable leader;
    multicasts from stdin are delivered to every node in order; a bad command
    prints an error and the node carries on; after the leader is killed the
    highest survivor leads the cluster and the broker group, and every
    survivor prints a price of the new epoch."""
    base = free_port()
    ports = [free_port() for _ in range(3)]
    common = ["--group", "1", "--ttl", "0", "--group-port-base", str(base)]
    a = start(procs, ports[0], *common, "--maximum", "300", "--required", "100", "--seed", "1")
    b = start(
        procs, ports[1], *common, "--broker-capable", "--rank", "1", "--supply", "500",
        "--maximum", "300", "--seed", "2",
    )  # fmt: skip
    c = start(
        procs, ports[2], *common, "--broker-capable", "--rank", "2", "--supply", "1000",
        "--maximum", "300", "--seed", "3",
    )  # fmt: skip
    names = [a, b, c]
    procs.until(
        lambda: (
            all(procs.events(n, "started") for n in names)
            and all(last_leader(procs, n, 1) == c for n in names)
        ),
        15,
        "the cluster to elect the rank-2 node",
    )
    procs.send(a, {"cmd": "nonsense"})
    procs.send(a, "not an object")
    procs.send(a, {"cmd": "multicast"})
    for k in range(3):
        procs.send(a, {"cmd": "multicast", "data": f"m{k} é"})
    procs.until(
        lambda: (
            all(len(procs.events(n, "deliver")) >= 3 for n in names)
            and len(procs.events(a, "error")) == 3
        ),
        10,
        "three deliveries",
    )
    for n in names:  # the sender delivers its own multicasts too
        got = [(e["sender"], e["seq"], e["data"]) for e in procs.events(n, "deliver")]
        assert got == [(a, k + 1, f"m{k} é") for k in range(3)]
    assert [e["message"].split(":")[0] for e in procs.events(a, "error")] == [
        "unknown cmd 'nonsense'",
        'a command is a JSON object like {"cmd"',
        'multicast needs "data"',
    ]

    # a price from the lead broker c reaches everyone before the failover
    procs.until(lambda: all(procs.events(n, "price") for n in names), 15, "a first price")
    procs.kill(c)
    mark = {n: len(procs.lines[n]) for n in names}
    survivors = [a, b]
    procs.until(
        lambda: (
            all(last_leader(procs, n, 1) == b for n in survivors) and last_leader(procs, b, 0) == b
        ),
        15,
        "b to lead the cluster and the broker group",
    )
    # a price carries the epoch of the cluster's broker (the cluster group's leader)
    new_epoch = procs.events(b, "leader", group=1)[-1]["epoch"]
    assert new_epoch > procs.events(c, "leader", group=1)[-1]["epoch"]

    def new_prices(n: str) -> list[dict[str, Any]]:
        return [
            e
            for e in procs.lines[n][mark[n] :]
            if e["event"] == "price" and e["epoch"] == new_epoch and not e["local"]
        ]

    procs.until(lambda: all(new_prices(n) for n in survivors), 15, "prices of the new epoch")
    for n in survivors:
        price = new_prices(n)[-1]
        assert price["regime"] in ("surplus", "normal", "shortage")
        assert 0 <= price["allocation"] <= 300
    # a lost leader is suspected, probed and then removed: that may come after the first
    # price of the new epoch, so wait for it rather than race it
    procs.until(
        lambda: any(
            e["member"] == c for n in survivors for e in procs.events(n, "removed", group=1)
        ),
        10,
        "the crashed node to be removed",
    )

    procs.send(a, {"cmd": "leave"})
    assert procs.procs[a].wait(timeout=5) == 0
    procs.pump(0.5)
    assert procs.lines[a][-1]["event"] == "left"


def test_readable_lines_and_duration_exit_0() -> None:
    """Rule: without --json each event is one readable line; --duration leaves and exits 0."""
    argv = [sys.executable, "-m", "powergrid", "node", "--insecure", "--port", str(free_port())]
    argv += ["--ttl", "0"]
    argv += ["--group-port-base", str(free_port()), "--duration", "0.5"]
    done = subprocess.run(argv, capture_output=True, timeout=15, text=True, check=False)
    assert done.returncode == 0, done.stderr
    lines = done.stdout.splitlines()
    assert lines[0].split()[2] == "started" and "group=1" in lines[0]
    assert lines[-1].split()[2:] == ["left", "reason=duration"]


def test_sigterm_leaves_and_exits_0(procs: NodeProcesses) -> None:
    """Rule: SIGTERM ends the run gracefully: a left line, exit status 0."""
    name = start(procs, free_port(), "--ttl", "0", "--group-port-base", str(free_port()))
    procs.until(lambda: bool(procs.events(name, "started")), 10, "the node to start")
    started = procs.events(name, "started")[0]
    assert started["group"] == 1 and started["broker_capable"] is False
    procs.procs[name].send_signal(signal.SIGTERM)
    assert procs.procs[name].wait(timeout=5) == 0
    procs.pump(0.5)
    assert procs.lines[name][-1]["event"] == "left"
    assert procs.lines[name][-1]["reason"] == "signal SIGTERM"


def test_joined_prints_the_nodes_member_joined_but_for_its_first_view() -> None:
    """Rule: `joined` is each MemberJoined of the node (a new member or a new life),
    except those right after this node's first view of a group (its view line lists them)."""

    def view(view_id: int, group: int = 1) -> ViewChanged:
        members = (Member(node=B, incarnation=Incarnation(1)),)
        return ViewChanged(
            view=View(
                group=GroupId(group), view_id=view_id, leader=B, epoch=Epoch(1), members=members
            )
        )

    def came(node: int, inc: int, group: int = 1) -> MemberJoined:
        return MemberJoined(group=GroupId(group), node=node, incarnation=Incarnation(inc))

    joins = Joins()
    notes = [
        view(1), came(B, 1),  # the first view of group 1: its members are not printed
        view(2), came(A, 5),
        view(1, group=0), came(B, 1, group=0),  # the first view of group 0
        view(3), came(A, 6),  # a restarted member (a new life)
    ]  # fmt: skip
    printed = [fields for note in notes if (fields := joins.joined(note)) is not None]
    assert printed == [
        {"group": 1, "member": "127.0.0.1:9001", "incarnation": 5},
        {"group": 1, "member": "127.0.0.1:9001", "incarnation": 6},
    ]


def test_supply_warning_only_for_a_broker_capable_node_without_supply() -> None:
    """Issue 19: a broker-capable node with --supply 0 is warned; others are not."""
    warn = supply_warning(build_configs(parse("--port", "9100", "--broker-capable"))[0])
    assert warn is not None and "--supply 0" in warn and "allocation 0" in warn
    assert supply_warning(build_configs(parse("--port", "9100"))[0]) is None
    capable = parse("--port", "9100", "--broker-capable", "--supply", "900")
    assert supply_warning(build_configs(capable)[0]) is None


def test_a_broker_capable_node_without_supply_warns_at_start() -> None:
    """Issue 19: `powergrid node --broker-capable` (supply 0 by default) prints a warning
    line after `started` and on stderr."""
    argv = [sys.executable, "-m", "powergrid", "node", "--insecure", "--port", str(free_port())]
    argv += ["--ttl", "0"]
    argv += ["--group-port-base", str(free_port()), "--duration", "0.3", "--broker-capable"]
    done = subprocess.run(argv, capture_output=True, timeout=15, text=True, check=False)
    assert done.returncode == 0, done.stderr
    lines = done.stdout.splitlines()
    assert lines[1].split()[2] == "warning" and "no supply (--supply 0)" in lines[1]
    assert "powergrid node: warning: this node may be elected lead" in done.stderr
    # and --insecure says on stderr what it gives up
    assert "warning: --insecure: datagrams are not authenticated" in done.stderr


def test_observability_of_real_processes(procs: NodeProcesses) -> None:
    """Issue 19: every line has `mono` (the host's monotonic clock, comparable across
    processes); a view lists incarnations; a member that joins later is announced by
    `joined`; a delivery names the sender's incarnation and a price the cluster's
    broker; `stats` answers a command (with its id) and comes periodically; commands'
    ids come back on `ok`, `error` and `left`; a lost leader prints `leader_lost`."""
    before = time.monotonic()
    base = free_port()
    ports = [free_port() for _ in range(3)]
    common = ["--group", "1", "--ttl", "0", "--group-port-base", str(base)]
    b = start(
        procs, ports[1], *common, "--broker-capable", "--rank", "1", "--supply", "500",
        "--maximum", "300", "--seed", "2",
    )  # fmt: skip
    c = start(
        procs, ports[2], *common, "--broker-capable", "--rank", "2", "--supply", "1000",
        "--maximum", "300", "--seed", "3",
    )  # fmt: skip
    procs.until(
        lambda: all(last_leader(procs, n, 1) == c for n in (b, c)), 15, "c to lead the cluster"
    )
    a = start(
        procs, ports[0], *common, "--maximum", "300", "--required", "100",
        "--stats-interval", "0.5", "--seed", "1",
    )  # fmt: skip
    names = [a, b, c]
    procs.until(lambda: bool(procs.events(a, "started")), 10, "a to start")
    inc = {n: procs.events(n, "started")[0]["incarnation"] for n in names}
    procs.until(lambda: all(procs.events(n, "joined", member=a) for n in (b, c)), 15, "a to join")
    for n in (b, c):
        assert procs.events(n, "joined", member=a)[0] == {
            **procs.events(n, "joined", member=a)[0],
            "group": 1,
            "incarnation": inc[a],
        }
    procs.until(lambda: bool(procs.events(a, "price")), 15, "a price at a")
    view = procs.events(a, "view", group=1)[-1]
    assert dict(zip(view["members"], view["incarnations"], strict=True)) == inc
    price = procs.events(a, "price")[-1]
    assert price["broker"] == c and price["epoch"] >= 1 and price["round"] >= 1

    procs.send(a, {"cmd": "multicast", "data": "hello", "id": 41})
    procs.send(a, {"cmd": "stats", "id": "s1"})
    procs.send(a, {"cmd": "bid", "maximum": -1, "id": [1, 2]})
    procs.until(
        lambda: bool(procs.events(b, "deliver") and procs.events(a, "error")), 10, "results"
    )
    assert procs.events(a, "ok") == [{**procs.events(a, "ok")[0], "cmd": "multicast", "id": 41}]
    got = procs.events(b, "deliver")[0]
    assert (got["sender"], got["incarnation"], got["data"]) == (a, inc[a], "hello")
    answer = procs.events(a, "stats", id="s1")
    assert len(answer) == 1
    counters = answer[0]["node_stats"]
    assert {"malformed", "unauthenticated", "replayed", "received"} <= set(counters)
    assert counters["received"] > 0 and counters["malformed"] == 0
    assert answer[0]["udp_stats"]["bad_bundles"] == 0 and answer[0]["udp_stats"]["received"] > 0
    assert procs.events(a, "error")[0]["id"] == [1, 2]
    procs.until(
        lambda: len([e for e in procs.events(a, "stats") if "id" not in e]) >= 2,
        5,
        "two periodic stats lines",
    )

    procs.kill(c)
    procs.until(
        lambda: any(procs.events(n, "leader_lost", group=1, leader=c) for n in (a, b)),
        15,
        "the loss of c to be noticed",
    )
    procs.send(a, {"cmd": "leave", "id": "bye"})
    assert procs.procs[a].wait(timeout=5) == 0
    procs.pump(0.5)
    assert procs.lines[a][-1] == {
        **procs.lines[a][-1],
        "event": "left",
        "reason": "leave command",
        "id": "bye",
    }
    after = time.monotonic()
    for n in names:
        for e in procs.lines[n]:
            assert before <= e["mono"] <= after, e
            assert e["event"] in EVENTS, e
    # the processes' clocks agree: c's crash-free lines precede b's leader_lost of c
    lost = [e["mono"] for n in (a, b) for e in procs.events(n, "leader_lost", leader=c)]
    assert max(e["mono"] for e in procs.lines[c]) < min(lost)


def test_docs_document_every_event_and_command_with_an_example() -> None:
    """Issue 19: docs/cli.md has a section with an example line for every event the
    node prints, and every command in its commands table."""
    doc = (Path(__file__).resolve().parent.parent / "docs" / "cli.md").read_text()
    events = doc.split("## Events (stdout)", 1)[1].split("## Commands", 1)[0]
    headings = re.findall(r"^\*\*`(\w+)`\*\* — ", events, flags=re.MULTILINE)
    assert headings == list(EVENTS)
    examples = [json.loads(x) for x in re.findall(r"```json\n(.*?)\n```", events, re.DOTALL)]
    assert [e["event"] for e in examples] == list(EVENTS)
    for e in examples:
        assert {"t", "mono", "node", "event"} <= set(e)
    commands = doc.split("## Commands", 1)[1].split("## Examples", 1)[0]
    documented = re.findall(r'^\| `\{"cmd": "(\w+)"', commands, flags=re.MULTILINE)
    assert documented == list(COMMANDS)
