"""Scripted multi-node stories over the fake network, checked by their whole transcript.

Theory of operation
-------------------
A script (etcd raft's ``interaction_test.go`` and cockroachdb's datadriven
files are the model) is a series of blocks. Each block is optional ``#``
comment lines, one command line, a ``----`` line and the output the command
is expected to print, ended by a blank line::

    # node 5 leads; it crashes and the others notice
    crash 5
    ----
    ok

:func:`run_script` executes the commands against one :class:`Story`, a
:class:`~powergrid.testing.fakenet.FakeNet` of bare machines, and returns the
script with every output replaced by what the command printed; a test
compares that with the file, or writes it back to rewrite the expectations.
Outputs are what a reader checks: every notification a machine returns
(``LeaderElected``, ``ViewChanged``, ``Deliver``, ``PriceUpdated``...), and
the messages of the types named by ``trace``, each line prefixed with the
virtual time in seconds. Nothing random is printed unless the script asks for
loss or a latency range (``network``); the default link has a fixed 1 ms
latency and no loss, so times read exactly.

Commands (ids are node ids, lists are separated by spaces or commas):

==============================================  ==========================================
``add-nodes KIND IDS [rank= capable= cluster=   put new machines on the network; KIND is
supply=]``                                      election, membership, multicast, client,
                                                broker or lead (a broker and the lead may
                                                share a node)
``network [latency=LO[-HI]] [loss=P] [seed=S]`` the link's conditions from now on
``view IDS [leader=L] [epoch=E]``               a view listing IDS to their election and
                                                multicast machines (default: no leader)
``leader-lost IDS``                             membership reports each one's leader lost
``elect LEADER epoch=E [group=G]``              the election's result to every machine of
                                                group G (a cluster number or ``broker``;
                                                default 1)
``join IDS`` / ``leave IDS``                    membership commands
``publish ID PAYLOAD``                          a multicast of PAYLOAD from ID
``set-bid ID floor= required= maximum=          a client's new bid (watts)
[priority=]``
``supply WATTS``                                the lead broker's usable supply
``run SECONDS`` (or ``tick``)                   advance virtual time
``deliver``                                     run until no message is in flight
``crash IDS`` / ``restart ID``                  stop machines / start a new life
``partition IDS | IDS ...`` / ``heal``          cut the network / join it again
``drop TYPE from=A to=B [count=N]``             lose the next N messages of TYPE
``trace TYPES|all|off``                         print deliveries of these message types
``status [IDS]``                                one line of state per machine
==============================================  ==========================================

A command that prints nothing prints ``ok``. Misuse (an unknown command or
kind, a missing argument) raises :class:`~powergrid.errors.UsageError` naming
the line.
"""

from __future__ import annotations

import random
import re
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import attrs

from powergrid.errors import UsageError
from powergrid.events import (
    LeaderElected,
    LeaderLost,
    Member,
    Multicast,
    MulticastReliable,
    Received,
    Send,
    SendReliable,
    View,
    ViewChanged,
)
from powergrid.protocols.election import ElectionConfig, ElectionMachine
from powergrid.protocols.market import (
    Bid,
    BidChanged,
    BrokerMachine,
    ClientMachine,
    LeadBrokerMachine,
    SupplyChanged,
)
from powergrid.protocols.membership import Join, Leave, MembershipConfig, MembershipMachine
from powergrid.protocols.multicast import MulticastConfig, MulticastMachine, Publish
from powergrid.testing.fakenet import Address, Conditions, FakeNet, Packet
from powergrid.types import BROKER_GROUP, Epoch, GroupId, Incarnation, NodeId
from powergrid.wire import Aggregate, Message

__all__ = ["Block", "Story", "parse", "render", "run_file", "run_script"]

GROUP = GroupId(1)
"""The group of election, membership and multicast machines (a cluster)."""

_SENDS = (Send, Multicast, SendReliable, MulticastReliable)
KINDS = ("election", "membership", "multicast", "client", "broker", "lead")


@attrs.frozen
class Block:
    """One command of a script: its comment lines, the command, its output lines."""

    comments: tuple[str, ...]
    command: str
    output: tuple[str, ...]
    line: int


def parse(text: str) -> list[Block]:
    """Split a script into blocks. Raises UsageError for a command without ``----``."""
    blocks: list[Block] = []
    lines = text.splitlines()
    i = 0
    while i < len(lines):
        comments: list[str] = []
        while i < len(lines) and (not lines[i].strip() or lines[i].startswith("#")):
            if lines[i].startswith("#"):
                comments.append(lines[i])
            i += 1
        if i >= len(lines):
            if comments:
                blocks.append(Block(tuple(comments), "", (), i))
            break
        command, at = lines[i], i + 1
        i += 1
        if i >= len(lines) or lines[i] != "----":
            raise UsageError(f"line {at}: {command!r} is not followed by ----")
        i += 1
        output: list[str] = []
        while i < len(lines) and lines[i].strip():
            output.append(lines[i])
            i += 1
        blocks.append(Block(tuple(comments), command, tuple(output), at))
    return blocks


def render(blocks: Sequence[Block]) -> str:
    """A script's text from its blocks (the inverse of :func:`parse`)."""
    parts = []
    for b in blocks:
        head = list(b.comments)
        if b.command:
            head += [b.command, "----", *b.output]
        parts.append("\n".join(head))
    return "\n\n".join(parts) + "\n"


def run_script(text: str) -> str:
    """Run a script on a fresh :class:`Story`; the script with actual outputs."""
    story = Story()
    blocks = []
    for b in parse(text):
        out = story.execute(b.command, b.line) if b.command else ()
        blocks.append(attrs.evolve(b, output=tuple(out)))
    return render(blocks)


def run_file(path: Path) -> tuple[str, str]:
    """(expected, actual) text of the script at ``path``."""
    text = path.read_text()
    return text, run_script(text)


@attrs.define(eq=False)
class _Node:
    kind: str
    rank: int = 0
    capable: bool = True
    cluster: GroupId = GROUP
    supply: int = 0


def _address(node: int, kind: str) -> Address:
    return Address(NodeId(node), kind if kind in ("broker", "lead") else "")


class Story:
    """The world a script acts on: machines on a FakeNet, and what to print."""

    def __init__(self) -> None:
        self.seed = 0
        self.net = FakeNet(rng=random.Random(0), record=False, observe=self._observe)
        self.net.conditions = Conditions(latency=(0.001, 0.001))
        self.net.route = self._route
        self.nodes: dict[Address, _Node] = {}
        self.view_id = 0
        self.traced: set[str] = set()
        self.drops: list[list[Any]] = []  # [type name, from, to, count left]
        self.out: list[str] = []

    # ----------------------------------------------------------- commands
    def execute(self, command: str, line: int = 0) -> list[str]:
        """Run one command line; the lines it prints. Raises UsageError on misuse."""
        words = command.split()
        if not words:
            raise UsageError(f"line {line}: empty command")
        name, args = words[0], words[1:]
        handler = getattr(self, "cmd_" + name.replace("-", "_"), None)
        if handler is None:
            raise UsageError(f"line {line}: unknown command {name!r}")
        self.out = []
        pos = [a for a in args if "=" not in a]
        kw = dict(a.split("=", 1) for a in args if "=" in a)
        try:
            handler(pos, kw)
        except (KeyError, ValueError, IndexError) as e:
            raise UsageError(f"line {line}: {command!r}: {e!r}") from e
        return self.out or ["ok"]

    def cmd_add_nodes(self, pos: list[str], kw: dict[str, str]) -> None:
        kind = pos[0]
        if kind not in KINDS:
            raise UsageError(f"unknown kind {kind!r}; one of {', '.join(KINDS)}")
        for i in _ids(pos[1:]):
            spec = _Node(
                kind,
                rank=int(kw.get("rank", 0)),
                capable=kw.get("capable", "true") == "true",
                cluster=GroupId(int(kw.get("cluster", GROUP))),
                supply=int(kw.get("supply", 0)),
            )
            addr = _address(i, kind)
            self.nodes[addr] = spec
            self.net.add(addr, self._machine(addr, spec, 1), **self._wiring(spec))

    def cmd_network(self, pos: list[str], kw: dict[str, str]) -> None:
        lo, _, hi = kw.get("latency", "0.001").partition("-")
        self.net.conditions = Conditions(
            latency=(float(lo), float(hi or lo)), loss=float(kw.get("loss", 0.0))
        )
        if "seed" in kw:
            self.seed = int(kw["seed"])
            self.net.rng.seed(self.seed)

    def cmd_view(self, pos: list[str], kw: dict[str, str]) -> None:
        ids = _ids(pos)
        self.view_id += 1
        members = []
        for i in ids:
            spec = self._spec(i, ("election", "multicast"))
            members.append(
                Member(
                    node=NodeId(i),
                    incarnation=self.net.incarnation(i),
                    rank=spec.rank,
                    broker_capable=spec.capable,
                )
            )
        view = View(
            group=GROUP,
            view_id=self.view_id,
            leader=NodeId(int(kw.get("leader", 0))),
            epoch=Epoch(int(kw.get("epoch", 0))),
            members=tuple(members),
        )
        for i in ids:
            self._feed(i, ViewChanged(view=view))

    def cmd_leader_lost(self, pos: list[str], kw: dict[str, str]) -> None:
        for i in _ids(pos):
            m = self.net.machine(i)
            self._feed(i, LeaderLost(group=GROUP, leader=m.leader, epoch=m.epoch))

    def cmd_elect(self, pos: list[str], kw: dict[str, str]) -> None:
        group = BROKER_GROUP if kw.get("group") == "broker" else GroupId(int(kw.get("group", 1)))
        event = LeaderElected(
            group=group, leader=NodeId(int(pos[0])), epoch=Epoch(int(kw["epoch"]))
        )
        for addr, spec in sorted(self.nodes.items()):
            in_group = (
                spec.kind in ("lead", "broker")
                if group == BROKER_GROUP
                else spec.cluster == group and spec.kind != "lead"
            )
            if in_group and self.net.up(addr):
                self._feed(addr, event)

    def cmd_join(self, pos: list[str], kw: dict[str, str]) -> None:
        for i in _ids(pos):
            self._feed(self._at(i, "membership"), Join())

    def cmd_leave(self, pos: list[str], kw: dict[str, str]) -> None:
        for i in _ids(pos):
            self._feed(self._at(i, "membership"), Leave())

    def cmd_publish(self, pos: list[str], kw: dict[str, str]) -> None:
        self._feed(self._at(int(pos[0]), "multicast"), Publish(kind=0, payload=pos[1].encode()))

    def cmd_set_bid(self, pos: list[str], kw: dict[str, str]) -> None:
        bid = Bid(
            floor=int(kw["floor"]),
            required=int(kw["required"]),
            maximum=int(kw["maximum"]),
            priority=int(kw.get("priority", 0)),
        )
        self._feed(self._at(int(pos[0]), "client"), BidChanged(bid=bid))

    def cmd_supply(self, pos: list[str], kw: dict[str, str]) -> None:
        for addr, spec in sorted(self.nodes.items()):
            if spec.kind == "lead" and self.net.up(addr):
                self._feed(addr, SupplyChanged(watts=int(pos[0])))

    def cmd_run(self, pos: list[str], kw: dict[str, str]) -> None:
        self.net.run(self.net.now + float(pos[0]))

    cmd_tick = cmd_run

    def cmd_deliver(self, pos: list[str], kw: dict[str, str]) -> None:
        if self.net.pending():
            self.net.run(self.net.now + 60.0, stop=lambda: not self.net.pending())

    def cmd_crash(self, pos: list[str], kw: dict[str, str]) -> None:
        for i in _ids(pos):
            for addr in self._all_at(i):
                self.net.crash(addr)

    def cmd_restart(self, pos: list[str], kw: dict[str, str]) -> None:
        for addr in self._all_at(int(pos[0])):
            life = self.net.incarnation(addr) + 1
            self.net.restart(addr, self._machine(addr, self.nodes[addr], life))
            self.out.append(f"{addr}: incarnation {life}")

    def cmd_partition(self, pos: list[str], kw: dict[str, str]) -> None:
        sides = " ".join(pos).split("|")
        self.net.partition(*(_ids(side.split()) for side in sides))

    def cmd_heal(self, pos: list[str], kw: dict[str, str]) -> None:
        self.net.heal()

    def cmd_drop(self, pos: list[str], kw: dict[str, str]) -> None:
        self.drops.append([pos[0], int(kw["from"]), int(kw["to"]), int(kw.get("count", 1))])

    def cmd_trace(self, pos: list[str], kw: dict[str, str]) -> None:
        self.traced = set() if pos == ["off"] else set(pos)

    def cmd_status(self, pos: list[str], kw: dict[str, str]) -> None:
        wanted = set(_ids(pos))
        for addr in sorted(self.nodes):
            if not wanted or addr.node in wanted:
                self.out.append(f"{addr}: {self._state(addr)}")

    # ----------------------------------------------------------- plumbing
    def _machine(self, addr: Address, spec: _Node, life: int) -> Any:
        node = addr.node
        rng = random.Random(f"{self.seed}/{node}/{spec.kind}/{life}")
        if spec.kind == "election":
            return ElectionMachine(
                ElectionConfig(),
                me=node,
                rank=spec.rank,
                broker_capable=spec.capable,
                group=GROUP,
                rng=rng,
            )
        if spec.kind == "membership":
            me = Member(node=node, incarnation=Incarnation(life), rank=spec.rank)
            return MembershipMachine(MembershipConfig(), me=me, group=GROUP, rng=rng)
        if spec.kind == "multicast":
            return MulticastMachine(
                MulticastConfig(), me=node, incarnation=Incarnation(life), rng=rng
            )
        if spec.kind == "client":
            return ClientMachine(node, spec.cluster)
        if spec.kind == "broker":
            return BrokerMachine(node, spec.cluster)
        return LeadBrokerMachine(node, spec.supply)

    @staticmethod
    def _wiring(spec: _Node) -> dict[str, Any]:
        """Market messages: the lead takes Aggregates and multicasts Clearings to the
        brokers; a broker multicasts prices to its cluster's clients."""
        if spec.kind == "lead":
            return {
                "accepts": lambda m: isinstance(m, Aggregate),
                "hears": (),
                "multicasts_to": BROKER_GROUP,
            }
        if spec.kind == "broker":
            return {
                "accepts": lambda m: not isinstance(m, Aggregate),
                "hears": (BROKER_GROUP,),
                "multicasts_to": spec.cluster,
            }
        return {"hears": (spec.cluster,), "multicasts_to": spec.cluster}

    def _route(self, packet: Packet) -> Sequence[float]:
        name = type(packet.message).__name__
        for drop in self.drops:
            if drop[3] > 0 and (name, packet.source.node, packet.destination.node) == tuple(
                drop[:3]
            ):
                drop[3] -= 1
                self.out.append(
                    f"{self.net.now:.3f} {packet.source} -> {packet.destination}: "
                    f"dropped {_describe(packet.message)}"
                )
                return []
        return self.net.default_route(packet)

    def _observe(self, addr: Address, event: object, actions: Sequence[object]) -> None:
        t = f"{self.net.now:.3f}"
        if isinstance(event, Received):
            name = type(event.message).__name__
            if "all" in self.traced or name in self.traced:
                self.out.append(f"{t} {event.sender} -> {addr}: {_describe(event.message)}")
        for act in actions:
            if not isinstance(act, _SENDS):  # a notification
                self.out.append(f"{t} {addr}: {_describe(act)}")

    def _feed(self, where: Address | int, event: object) -> None:
        self.net.feed(where, event)

    def _spec(self, node: int, kinds: tuple[str, ...]) -> _Node:
        for addr in self._all_at(node):
            if self.nodes[addr].kind in kinds:
                return self.nodes[addr]
        raise KeyError(f"no {' or '.join(kinds)} machine at node {node}")

    def _at(self, node: int, kind: str) -> Address:
        addr = _address(node, kind)
        if self.nodes.get(addr) is None or self.nodes[addr].kind != kind:
            raise KeyError(f"no {kind} machine at node {node}")
        return addr

    def _all_at(self, node: int) -> list[Address]:
        found = [a for a in sorted(self.nodes) if a.node == node]
        if not found:
            raise KeyError(f"no machine at node {node}")
        return found

    def _state(self, addr: Address) -> str:
        if not self.net.up(addr):
            return "down"
        m = self.net.machine(addr)
        kind = self.nodes[addr].kind
        if kind == "election":
            return f"{m.state} leader={m.leader} epoch={m.epoch}"
        if kind == "membership":
            v = m.view
            members = ",".join(str(n) for n in v.nodes) if v is not None else "-"
            view = v.view_id if v is not None else "-"
            return f"{m.state} view={view} leader={m.leader} members={members}"
        if kind == "multicast":
            got = " ".join(f"{o}:{seq}" for o, (_, seq) in sorted(m.delivered.items()))
            return f"delivered {got or '-'} buffer={m.buffer_size}"
        if kind == "client":
            price = "-" if m.price is None else f"{m.price:g}"
            return f"allocation={m.allocation} price={price} regime={_name(m.regime)}"
        if kind == "broker":
            return f"active={m.active} budget={m.budget} local={m.clearing_locally}"
        return f"active={m.active}"


def _ids(words: Sequence[str]) -> list[int]:
    return [int(x) for w in words for x in re.split(r"[,\s]+", w) if x]


def _name(value: object) -> str:
    return getattr(value, "name", str(value))


def _describe(obj: object) -> str:
    """A notification or message in one line (views by their members)."""
    if isinstance(obj, ViewChanged):
        v = obj.view
        members = ",".join(str(n) for n in v.nodes)
        return f"ViewChanged(view={v.view_id}, leader={v.leader}, epoch={v.epoch}: {members})"
    if isinstance(obj, Message) or attrs.has(type(obj)):
        fields = ", ".join(
            f"{a.name}={_value(getattr(obj, a.name))}"
            for a in attrs.fields(type(obj))  # type: ignore[arg-type]
        )
        return f"{type(obj).__name__}({fields})"
    return repr(obj)


def _value(v: object) -> str:
    if isinstance(v, float):
        return f"{v:g}"
    if hasattr(v, "name") and hasattr(v, "value"):  # an enum
        return str(v.name)
    if isinstance(v, tuple) and len(v) > 4:
        return f"<{len(v)} entries>"
    if isinstance(v, tuple) and v and attrs.has(type(v[0])):
        return "(" + ", ".join(_describe(x) for x in v) + ")"
    return repr(v)
