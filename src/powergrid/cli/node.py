"""``powergrid node``: run one real node over UDP multicast and report what it sees.

The command builds a :class:`~powergrid.node.NodeConfig` and a
:class:`~powergrid.transports.trio_udp.UdpConfig` from its options, runs the
node with :func:`~powergrid.transports.trio_udp.run_node`, and prints one line
per notification: a readable line, or with ``--json`` one JSON object per line
(flushed at once), each with ``t`` (seconds since start) and ``mono`` (the
host's monotonic clock, comparable across processes). Beside the node's
notifications it prints what an operator needs to watch it: ``joined`` (the
node's ``MemberJoined``, but for the members of its first view of a group),
``stats`` (the node's and the transport's counters, every ``--stats-interval``
s and on command) and a ``warning`` when a broker-capable node has no
supply, and (at most once per :data:`FOREIGN_WARNING_EVERY` s) when datagrams
of another realm or wire version arrive. With ``--json`` it also
reads commands from stdin, one JSON object per line (``multicast``, ``bid``,
``supply``, ``stats``, ``leave``), each answered by ``ok``, ``stats`` or
``left`` with the command's ``id``; a bad line prints an ``error`` event
(with the id, if any) and the node carries on. ``--duration``, a ``leave``
command, SIGINT or SIGTERM end the run: the node leaves its groups
gracefully, prints ``left`` with the reason and exits 0. Invalid options exit
2 with a message that says what to fix. Every event and command is in
``docs/cli.md`` (:data:`EVENTS` lists the event names).
"""

from __future__ import annotations

import argparse
import contextlib
import importlib.util
import ipaddress
import json
import math
import os
import random
import signal
import sys
import time
from collections.abc import AsyncIterator, Callable, Mapping
from typing import Any

import attrs
import trio

from powergrid.auth import ENV_VAR, Keyring
from powergrid.errors import ConfigError, PowergridError
from powergrid.events import LeaderElected, LeaderLost, MemberJoined, ViewChanged
from powergrid.fanout import parse_seeds
from powergrid.node import MessageDelivered, Node, NodeConfig
from powergrid.protocols.market import Bid, LeadConfig, PriceUpdated
from powergrid.protocols.membership import MemberRemoved, MemberSuspected
from powergrid.transports import trio_udp
from powergrid.transports.trio_udp import UdpConfig, UdpHandle, default_incarnation
from powergrid.types import DEFAULT_REALM, format_node

__all__ = [
    "COMMANDS",
    "EVENTS",
    "FOREIGN_WARNING_EVERY",
    "NO_KEY",
    "ForeignWarner",
    "Joins",
    "add_arguments",
    "build_configs",
    "describe",
    "run",
    "stats",
    "supply_warning",
]

Fields = dict[str, Any]

EVENTS = (
    "started",
    "metrics",
    "warning",
    "view",
    "joined",
    "leader",
    "leader_lost",
    "price",
    "deliver",
    "suspect",
    "removed",
    "stats",
    "ok",
    "error",
    "left",
)
"""Every event name a line can have (each documented in docs/cli.md)."""
COMMANDS = ("multicast", "bid", "supply", "stats", "leave")
"""Every stdin command (each documented in docs/cli.md)."""


def add_arguments(parser: argparse.ArgumentParser) -> None:
    """The options of ``powergrid node``."""
    a = parser.add_argument
    a(
        "--host",
        default="127.0.0.1",
        help="IPv4 or IPv6 address of the node's socket (default 127.0.0.1); the IPv6 "
        "nodes of a deployment share the address's top 96 bits",
    )
    a("--port", type=int, required=True, help="UDP port of the node's socket; with --host its id")
    a(
        "--realm",
        default=DEFAULT_REALM,
        help="name of the deployment (data centre); datagrams of other realms are dropped "
        f"(default {DEFAULT_REALM!r}: name yours)",
    )
    a("--group", type=int, default=1, help="cluster id within the realm, 1 or more (default 1)")
    a(
        "--interface",
        default=None,
        help="IPv4 address multicast uses (default: --host); with an IPv6 --host, the "
        "interface name (e.g. eth0; default: the kernel's choice)",
    )
    a("--ttl", type=int, default=1, help="multicast hops: 0 this host, 1 the LAN (default 1)")
    a("--group-port-base", type=int, default=20000, help="UDP port of group 0 (default 20000)")
    a(
        "--seeds",
        default=None,
        help="host:port,...: no IP multicast; send group datagrams by unicast to these "
        "seeds and the members of each group's view (learned only with a key)",
    )
    a("--broker-capable", action="store_true", help="the node may be elected broker")
    a("--rank", type=int, default=0, help="election rank, 0..65535; higher wins (default 0)")
    a("--supply", type=int, default=0, help="usable supply in watts while lead broker")
    a(
        "--provisioned",
        type=int,
        default=0,
        help="servers of the data centre that may be powered; while lead broker, keep "
        "a floor for each one not counted and clear only counting more than half (0: off)",
    )
    a(
        "--floor-provision",
        type=int,
        default=0,
        help="watts kept for each uncounted server's floor (at least any --floor; "
        "with --provisioned)",
    )
    a("--floor", type=int, default=None, help="bid: watts the server must keep (default 0)")
    a("--required", type=int, default=None, help="bid: watts to run as promised (default floor)")
    a("--maximum", type=int, default=None, help="bid: watts it can use; giving it bids at start")
    a("--priority", type=int, default=0, help="bid: priority class 0..15 (default 0)")
    a("--duration", type=float, default=None, help="seconds to run, then leave and exit 0")
    a("--seed", type=int, default=None, help="seed of the node's random jitter")
    a(
        "--incarnation",
        type=int,
        default=None,
        help="this life's incarnation, 0..2**32-1, newer than the last in serial-number "
        "order (after 4294967295 comes 0); default: start time in tenths of a second",
    )
    a("--json", action="store_true", help="JSON lines on stdout; JSON commands on stdin")
    a(
        "--stats-interval",
        type=float,
        default=10.0,
        help="seconds between stats events (default 10; 0: only on the stats command)",
    )
    a(
        "--metrics-port",
        type=int,
        default=None,
        help="serve the stats counters to Prometheus on this TCP port (/metrics; "
        "needs the prometheus extra; metric names in docs/cli.md)",
    )
    a(
        "--metrics-host",
        default="127.0.0.1",
        help="address the metrics server binds (default 127.0.0.1: loopback only)",
    )
    a(
        "--key-file",
        default=None,
        help=f"file of group keys: sign every datagram and refuse unsigned, forged and "
        f"replayed ones (docs/security.md); or put the keys in ${ENV_VAR}. "
        "Keys are never given on the command line",
    )
    a(
        "--insecure",
        action="store_true",
        help="run without keys: unsigned datagrams, which anyone who reaches the ports can "
        "forge (without a key, --key-file or $POWERGRID_KEYS, the node refuses to start)",
    )
    a(
        "--encrypt",
        action="store_true",
        help="with a key: encrypt every datagram's body (AES-256-GCM, the crypto extra); "
        "every node of the realm must give it",
    )
    a("--key", nargs="?", action=_NoKeyArgument, help=argparse.SUPPRESS)


class _NoKeyArgument(argparse.Action):
    """``--key``: refused without echoing it (argparse would take it for ``--key-file``)."""

    def __call__(self, parser: argparse.ArgumentParser, *args: Any, **kw: Any) -> None:
        parser.error(f"keys are never given on the command line: use --key-file or ${ENV_VAR}")


def _bid(args: argparse.Namespace) -> Bid | None:
    given = [args.floor, args.required, args.maximum]
    if all(v is None for v in given):
        return None
    if args.maximum is None:
        raise ConfigError("a bid needs --maximum (and optionally --floor, --required)")
    floor = 0 if args.floor is None else args.floor
    required = floor if args.required is None else args.required
    return Bid(floor=floor, required=required, maximum=args.maximum, priority=args.priority)


NO_KEY = (
    f"no key: give --key-file PATH (make one with `powergrid keygen PATH`) or ${ENV_VAR}, "
    "or --insecure to run without authentication"
)
"""The one-line error of a node started with neither a key nor ``--insecure``."""


def _keyring(args: argparse.Namespace, environ: Mapping[str, str]) -> Keyring | None:
    """The keyring of ``--key-file`` or ``$POWERGRID_KEYS``; None only with ``--insecure``
    (secure by default). Raises :class:`ConfigError`."""
    if args.key_file is not None:
        if ENV_VAR in environ:
            raise ConfigError(f"give --key-file or ${ENV_VAR}, not both (unset one of them)")
        ring: Keyring | None = Keyring.from_file(args.key_file)
    else:
        ring = Keyring.from_env(environ)
    if ring is None and not args.insecure:
        raise ConfigError(NO_KEY)
    if ring is not None and args.insecure:
        source = "--key-file" if args.key_file is not None else f"${ENV_VAR}"
        raise ConfigError(f"give --insecure or a key ({source}), not both")
    return ring


def build_configs(
    args: argparse.Namespace, *, environ: Mapping[str, str] | None = None
) -> tuple[NodeConfig, UdpConfig]:
    """The node and socket settings from parsed options; raises :class:`ConfigError`.

    The keyring comes from ``--key-file`` or from ``$POWERGRID_KEYS`` in
    ``environ`` (default: the process environment); without either, only
    ``--insecure`` lets the node run (unkeyed), else :data:`NO_KEY` is raised.
    """
    if args.duration is not None and not (args.duration > 0 and math.isfinite(args.duration)):
        raise ConfigError(f"--duration {args.duration} must be a positive number of seconds")
    if args.supply < 0:
        raise ConfigError(f"--supply {args.supply} must be >= 0 watts")
    if args.provisioned < 0 or args.floor_provision < 0:
        raise ConfigError(
            f"--provisioned {args.provisioned} and --floor-provision {args.floor_provision} "
            "must be >= 0"
        )
    if args.floor_provision and not args.provisioned:
        raise ConfigError("--floor-provision needs --provisioned (how many servers may be powered)")
    if args.incarnation is not None and not 0 <= args.incarnation < 2**32:
        raise ConfigError(f"--incarnation {args.incarnation} is outside 0..2**32-1")
    if not (args.stats_interval >= 0 and math.isfinite(args.stats_interval)):
        raise ConfigError(f"--stats-interval {args.stats_interval} must be >= 0 seconds (0: off)")
    if args.metrics_port is not None:
        if not 0 <= args.metrics_port <= 65535:
            raise ConfigError(f"--metrics-port {args.metrics_port} is outside 0..65535")
        if importlib.util.find_spec("prometheus_client") is None:
            raise ConfigError(
                "--metrics-port needs prometheus_client: pip install 'powergrid[prometheus]'"
            )
    node = NodeConfig(
        host=args.host,
        port=args.port,
        realm=args.realm,
        cluster=args.group,
        rank=args.rank,
        broker_capable=args.broker_capable,
        supply=args.supply,
        lead=LeadConfig(provisioned=args.provisioned, floor_provision=args.floor_provision),
        bid=_bid(args),
        keyring=_keyring(args, os.environ if environ is None else environ),
        encrypt=args.encrypt,
    )
    if node.bid is not None and args.provisioned and node.bid.floor > args.floor_provision:
        raise ConfigError(
            f"--floor-provision {args.floor_provision} must be at least this server's "
            f"--floor {node.bid.floor}: each server's floor is kept within it"
        )
    ipv6 = ":" in args.host
    udp = UdpConfig(
        interface="127.0.0.1" if ipv6 else args.interface or args.host,
        ipv6_interface=args.interface or "" if ipv6 else "",
        ipv6_prefix=_prefix96(args.host) if ipv6 else "::",
        ttl=args.ttl,
        group_port_base=args.group_port_base,
        fanout_seeds=_seeds(args.seeds),
    )
    return node, udp


def _prefix96(host: str) -> str:
    """The /96 of IPv6 address ``host`` (its top 96 bits), ``UdpConfig.ipv6_prefix``."""
    return str(ipaddress.IPv6Address(int(ipaddress.IPv6Address(host)) & ~0xFFFFFFFF))


def _seeds(text: str | None) -> tuple[str, ...] | None:
    """``--seeds host:port,...`` as a list (None: IP multicast); raises ConfigError naming it."""
    if text is None:
        return None
    seeds = tuple(s.strip() for s in text.split(",") if s.strip())
    parse_seeds(seeds, "--seeds")
    return seeds


# ------------------------------------------------------------------ events


def supply_warning(config: NodeConfig) -> str | None:
    """The warning a broker-capable node with no supply deserves, or None."""
    if not config.broker_capable or config.supply > 0:
        return None
    return (
        "this node may be elected lead broker but has no supply (--supply 0): while it "
        "leads, every server of every cluster gets allocation 0 (a shortage); give "
        "--supply WATTS, the usable supply of the data centre"
    )


FOREIGN_WARNING_EVERY = 30.0
"""Seconds between two warnings about datagrams of another realm or version."""


class ForeignWarner:
    """Warns of datagrams of another realm or wire version, at most once per ``every`` s.

    :meth:`check` takes the node's counters and the time (s, any monotonic clock) and
    returns the warning's fields when new such datagrams arrived since the last
    warning and ``every`` s have passed since it (the first at once), else None.
    """

    def __init__(self, realm: str, every: float = FOREIGN_WARNING_EVERY) -> None:
        self.realm = realm
        self.every = every
        self._warned: tuple[int, int] = (0, 0)  # counters at the last warning
        self._at: float | None = None

    def check(self, foreign_realm: int, wrong_version: int, now: float) -> Fields | None:
        realm_new = foreign_realm - self._warned[0]
        version_new = wrong_version - self._warned[1]
        if realm_new <= 0 and version_new <= 0:
            return None
        if self._at is not None and now - self._at < self.every:
            return None
        self._warned = (foreign_realm, wrong_version)
        self._at = now
        what = []
        if realm_new > 0:
            what.append(
                f"{realm_new} datagrams of another realm (not {self.realm!r}): another "
                "deployment shares these addresses or ports, or a node has the wrong --realm"
            )
        if version_new > 0:
            what.append(
                f"{version_new} datagrams of another wire version: a node runs another "
                "powergrid release; upgrade it"
            )
        return {
            "message": "dropped " + "; and ".join(what),
            "foreign_realm": foreign_realm,
            "wrong_version": wrong_version,
        }


def _view_of(node: Node | None, group: int) -> Any:
    if node is None or group not in node.groups:
        return None
    return node.stack(group).membership.view


def _view(ev: ViewChanged, node: Node | None) -> tuple[str, Fields]:
    v = ev.view
    return "view", {
        "group": v.group,
        "view_id": v.view_id,
        "leader": format_node(v.leader),
        "epoch": v.epoch,
        "members": [format_node(m.node) for m in v.members],
        "incarnations": [m.incarnation for m in v.members],
    }


def _leader(ev: LeaderElected, node: Node | None) -> tuple[str, Fields]:
    return "leader", {"group": ev.group, "leader": format_node(ev.leader), "epoch": ev.epoch}


def _leader_lost(ev: LeaderLost, node: Node | None) -> tuple[str, Fields]:
    return "leader_lost", {"group": ev.group, "leader": format_node(ev.leader), "epoch": ev.epoch}


def _price(ev: PriceUpdated, node: Node | None) -> tuple[str, Fields]:
    view = _view_of(node, ev.group)
    return "price", {
        "group": ev.group,
        "broker": None if view is None else format_node(view.leader),
        "epoch": ev.epoch,
        "round": ev.round,
        "lead_epoch": ev.lead_epoch,
        "lead_round": ev.lead_round,
        "price": ev.price,
        "regime": ev.regime.name.lower(),
        "allocation": ev.allocation,
        "deficit": ev.deficit,
        "local": ev.local,
        "counted": ev.counted,
        "carried": ev.carried,
    }


def _deliver(ev: MessageDelivered, node: Node | None) -> tuple[str, Fields]:
    view = _view_of(node, ev.group)
    incarnation = None
    if view is not None:
        incarnation = next((m.incarnation for m in view.members if m.node == ev.sender), None)
    return "deliver", {
        "group": ev.group,
        "sender": format_node(ev.sender),
        "incarnation": incarnation,
        "seq": ev.seq,
        "data": ev.payload.decode("utf-8", errors="replace"),
    }


def _suspect(ev: MemberSuspected, node: Node | None) -> tuple[str, Fields]:
    return "suspect", {"group": ev.group, "member": format_node(ev.node)}


def _removed(ev: MemberRemoved, node: Node | None) -> tuple[str, Fields]:
    return "removed", {"group": ev.group, "member": format_node(ev.node), "reason": ev.reason}


_DESCRIBE: dict[type[Any], Callable[[Any, Node | None], tuple[str, Fields]]] = {
    ViewChanged: _view,
    LeaderElected: _leader,
    LeaderLost: _leader_lost,
    PriceUpdated: _price,
    MessageDelivered: _deliver,
    MemberSuspected: _suspect,
    MemberRemoved: _removed,
}


def describe(note: object, node: Node | None = None) -> tuple[str, Fields] | None:
    """``(event name, fields)`` of a node notification, or None for one not reported.

    ``node`` (the running node) supplies what the notification does not carry:
    a price's cluster broker and a delivery's sender incarnation, both as this
    node's current view of the group shows them (None without a node or a view).
    """
    fn = _DESCRIBE.get(type(note))
    return None if fn is None else fn(note, node)


class Joins:
    """Which of the node's :class:`~powergrid.events.MemberJoined` the command prints as
    ``joined``: all but those that follow this node's first view of a group (its
    ``view`` line lists those members). Feed it every notification, in order."""

    def __init__(self) -> None:
        self._seen: set[int] = set()  # groups this node has had a view of
        self._first: set[int] = set()  # groups whose latest view is this node's first

    def joined(self, note: object) -> Fields | None:
        """The ``joined`` event's fields for ``note``, or None to print nothing more."""
        if isinstance(note, ViewChanged):
            group = note.view.group
            if group in self._seen:
                self._first.discard(group)
            else:
                self._seen.add(group)
                self._first.add(group)
        elif isinstance(note, MemberJoined) and note.group not in self._first:
            return {
                "group": note.group,
                "member": format_node(note.node),
                "incarnation": note.incarnation,
            }
        return None


def stats(handle: UdpHandle) -> Fields:
    """The ``stats`` event's fields: the node's :class:`~powergrid.node.NodeStats` and the
    transport's :class:`~powergrid.transports.trio_udp.UdpStats`, as of now."""
    return {"groups": list(handle.groups), **handle.counters()}


class _Printer:
    def __init__(self, node: str, as_json: bool, start: float) -> None:
        self.node = node
        self.as_json = as_json
        self.start = start

    def emit(self, event: str, fields: Fields) -> None:
        t = round(trio.current_time() - self.start, 6)
        mono = round(time.monotonic(), 6)
        if self.as_json:
            line = json.dumps({"t": t, "mono": mono, "node": self.node, "event": event, **fields})
        else:
            parts = " ".join(f"{k}={_plain(v)}" for k, v in fields.items())
            line = f"{t:9.3f} {self.node} {event:<8} {parts}".rstrip()
        try:
            sys.stdout.write(line + "\n")
            sys.stdout.flush()
        except BrokenPipeError:  # the reader went away; keep running quietly
            pass


def _plain(v: Any) -> str:
    if isinstance(v, list):
        return ",".join(str(x) for x in v)
    if isinstance(v, dict):
        return ",".join(f"{k}:{x}" for k, x in v.items())
    if v is None:
        return "-"
    if isinstance(v, str) and (" " in v or not v):
        return json.dumps(v)
    return str(v)


# ---------------------------------------------------------------- commands


def _int(obj: Fields, key: str, default: int | None = None) -> int:
    v = obj.get(key, default)
    if type(v) is not int:
        raise ConfigError(f"{key!r} must be an integer number of watts, got {v!r}")
    return v


class _Ending:
    """How the run ends: the ``left`` event's reason, and the id of a ``leave`` command."""

    def __init__(self, stop: trio.CancelScope) -> None:
        self.stop = stop
        self.reason = "duration"
        self.id: Any = None

    def end(self, reason: str, cmd_id: Any = None) -> None:
        if not self.stop.cancel_called:
            self.reason = reason
            self.id = cmd_id
        self.stop.cancel()


_COMMAND_NAMES = ", ".join(COMMANDS)


async def _command(handle: UdpHandle, obj: Any, out: _Printer, ending: _Ending) -> None:
    """Carry out one stdin command and print its result (``ok``, ``stats``; ``leave``
    ends the run); raises PowergridError/ValueError for a bad one."""
    if not isinstance(obj, dict):
        raise ConfigError('a command is a JSON object like {"cmd": "leave"}')
    cmd = obj.get("cmd")
    ident: Fields = {"id": obj["id"]} if "id" in obj else {}
    if cmd == "multicast":
        data = obj.get("data")
        if not isinstance(data, str):
            raise ConfigError('multicast needs "data": a string')
        await handle.multicast(data.encode())
    elif cmd == "bid":
        floor = _int(obj, "floor", 0)
        required = _int(obj, "required", floor)
        bid = Bid(
            floor=floor,
            required=required,
            maximum=_int(obj, "maximum"),
            priority=_int(obj, "priority", 0),
        )
        await handle.command(lambda ep, now: ep.set_bid(bid, now))
    elif cmd == "supply":
        watts = _int(obj, "watts")
        if watts < 0:
            raise ConfigError(f"supply watts {watts} must be >= 0")
        await handle.command(lambda ep, now: ep.set_supply(watts, now))
        node = handle.endpoint
        if isinstance(node, Node):
            warning = supply_warning(attrs.evolve(node.config, supply=watts))
            if warning is not None:
                out.emit("warning", {"message": warning, **ident})
    elif cmd == "stats":
        out.emit("stats", {**stats(handle), **ident})
        return
    elif cmd == "leave":
        ending.end("leave command", obj.get("id"))
        return
    else:
        raise ConfigError(f"unknown cmd {cmd!r}: use one of {_COMMAND_NAMES}")
    out.emit("ok", {"cmd": cmd, **ident})


async def _read_commands(handle: UdpHandle, out: _Printer, ending: _Ending) -> None:
    stream = trio.lowlevel.FdStream(os.dup(0))
    buf = b""
    async with stream:
        while True:
            chunk = await stream.receive_some(65536)
            if not chunk:
                return  # end of input: keep running
            buf += chunk
            *lines, buf = buf.split(b"\n")
            for raw in lines:
                text = raw.decode("utf-8", errors="replace").strip()
                if not text:
                    continue
                obj: Any = None
                try:
                    obj = json.loads(text)
                    await _command(handle, obj, out, ending)
                except (ValueError, PowergridError) as exc:
                    fields: Fields = {"message": str(exc), "line": text[:200]}
                    if isinstance(obj, dict) and "id" in obj:
                        fields["id"] = obj["id"]
                    out.emit("error", fields)


async def _watch(handle: UdpHandle, out: _Printer) -> None:
    node = handle.endpoint if isinstance(handle.endpoint, Node) else None
    joins = Joins()
    async for note in handle.events():
        desc = describe(note, node)
        if desc is not None:
            out.emit(*desc)
        fields = joins.joined(note)
        if fields is not None:
            out.emit("joined", fields)


async def _periodic_stats(handle: UdpHandle, out: _Printer, every: float) -> None:
    while True:
        await trio.sleep(every)
        out.emit("stats", stats(handle))


async def _watch_foreign(handle: UdpHandle, out: _Printer, realm: str) -> None:
    node = handle.endpoint
    if not isinstance(node, Node):
        return
    warner = ForeignWarner(realm)
    while True:
        await trio.sleep(1.0)
        fields = warner.check(
            node.stats.foreign_realm, node.stats.wrong_version, trio.current_time()
        )
        if fields is not None:
            out.emit("warning", fields)


async def _signals(signals: AsyncIterator[int], ending: _Ending) -> None:
    async for signum in signals:
        ending.end(f"signal {signal.Signals(signum).name}")
        return


async def _main(args: argparse.Namespace, node: NodeConfig, udp: UdpConfig) -> None:
    out = _Printer(format_node(node.node_id), args.json, trio.current_time())
    incarnation = default_incarnation() if args.incarnation is None else args.incarnation
    rng = random.Random(args.seed)
    # the handlers are in place before "started" is printed
    with (
        trio.open_signal_receiver(signal.SIGINT, signal.SIGTERM) as signals,
        trio.CancelScope() as stop,
        contextlib.ExitStack() as stack,
    ):
        ending = _Ending(stop)
        if args.duration is not None:
            stop.deadline = trio.current_time() + args.duration
        async with trio_udp.run_node(
            node, udp=udp, incarnation=incarnation, rng=rng, insecure=node.keyring is None
        ) as handle:
            out.emit(
                "started",
                {
                    "realm": node.realm,
                    "group": node.cluster,
                    "incarnation": incarnation,
                    "broker_capable": node.broker_capable,
                    "rank": node.rank,
                    "supply": node.supply,
                    "authenticated": node.keyring is not None,
                },
            )
            if node.keyring is None:
                print(
                    "powergrid node: warning: --insecure: datagrams are not authenticated; "
                    "anyone who reaches these ports can join, lead and set prices",
                    file=sys.stderr,
                    flush=True,
                )
            if args.metrics_port is not None:
                metrics = handle.serve_metrics(args.metrics_port, args.metrics_host)
                stack.callback(metrics.close)
                out.emit("metrics", {"url": f"http://{metrics.host}:{metrics.port}/metrics"})
            warning = supply_warning(node)
            if warning is not None:
                out.emit("warning", {"message": warning})
                print(f"powergrid node: warning: {warning}", file=sys.stderr, flush=True)
            async with trio.open_nursery() as nursery:
                nursery.start_soon(_watch, handle, out)
                nursery.start_soon(_signals, signals, ending)
                nursery.start_soon(_watch_foreign, handle, out, node.realm)
                if args.stats_interval > 0:
                    nursery.start_soon(_periodic_stats, handle, out, args.stats_interval)
                if args.json:
                    nursery.start_soon(_read_commands, handle, out, ending)
    left: Fields = {"reason": ending.reason}
    if ending.id is not None:
        left["id"] = ending.id
    out.emit("left", left)


def run(args: argparse.Namespace) -> int:
    """Run the node until ``--duration``, a leave command, SIGINT or SIGTERM; the exit status."""
    try:
        node, udp = build_configs(args)
    except ConfigError as exc:
        print(f"powergrid node: {exc}", file=sys.stderr)
        return 2
    try:
        blocking = os.get_blocking(0)
    except OSError:  # no stdin
        blocking = True
    try:
        trio.run(_main, args, node, udp)
    except ConfigError as exc:  # e.g. the port is taken
        print(f"powergrid node: {exc}", file=sys.stderr)
        return 2
    finally:
        if args.json:
            with contextlib.suppress(OSError):
                os.set_blocking(0, blocking)  # FdStream made stdin non-blocking
    return 0
