"""A structure-aware adversary: well-formed datagrams whose fields are hostile.

Theory of operation
-------------------
Mutating captured bytes (``tests/test_hostile_input.py``) mostly yields
datagrams the codec refuses. This adversary builds datagrams the codec
accepts, of every wire type, through the real encoder, and spends its
effort on the fields: the values a machine compares, stores or counts from.

*Shapes.* :func:`powergrid.wire.shapes` gives every type's fields and their
widths; nothing here lists message types by hand, so a new type is fuzzed
as soon as it is registered.

*Values.* Each field is picked by what its name means, within its width:

* node ids (``origin``, ``target``, ``node``..., and the header's sender):
  a real member (impersonation), a phantom (made-up ids, some above every
  member, so they win elections), or an edge (1, the largest id);
* epochs, view ids, incarnations and sequence numbers (``seq``, ``base``,
  ``stable``, ``round``...): a value *learned* from the real traffic
  (:meth:`Adversary.observe` decodes what the tap sees), moved by a small or
  large step (-1, +1, +2^16, +2^20, +2^31...), or an edge of the width
  (0, 1, 2^(bits-1), 2^bits - 1, near the wrap);
* floats (prices): 0, ±1e292, the largest finite, the smallest subnormal,
  or ordinary ones; small enums (kind, regime, status): in range and past it;
* payloads of ``Data``, ``Xmit`` and ``UData``: an inner protocol message
  built the same way (so bids and Coordinators also arrive through the
  reliable channels), or raw bytes;
* entries (views, status, stable points, clearings, corners): 0 to dozens,
  mostly sorted and unique so that they pass the codec's checks.

*Runs.* Some attacks need persistence rather than variety: 1,057 Coordinators
from one phantom in rising epochs, a stream of sequence numbers climbing
towards a wrap. So now and then (``run_chance`` per message) a message is
repeated 16 to 2,048 times from one sender, one of its learned fields
counting up by one each time.

Most messages pass their type's own ``problem()`` check (a failing one is
rebuilt up to three times, then sent anyway, so the decoder's refusals are
exercised too). Everything comes from one ``random.Random(seed)``; a run is
replayed by its seed.

:func:`footprint` measures a node's state (the sizes of every container its
machines hold, two levels deep) for the fuzzer's bounded-memory check.
"""

from __future__ import annotations

import math
import random
from collections import deque
from collections.abc import Callable, Iterable, Sequence
from typing import Any

import attrs

from powergrid import wire
from powergrid.errors import PayloadTooLargeError
from powergrid.events import Transmit, TransmitGroup
from powergrid.node import Node, NodeConfig
from powergrid.protocols.market import Bid, BrokerConfig, ClientConfig, Grid, LeadConfig
from powergrid.protocols.market.bids import DEFAULT_GRID
from powergrid.sim.memory import MemoryNetwork
from powergrid.types import MAX_NODE_ID, GroupId, NodeId, node_id

__all__ = ["Adversary", "Campaign", "footprint", "node_machines", "recovered", "run_campaign"]

_BITS = {"B": 8, "H": 16, "I": 32, "Q": 64, "i": 32}
_IDS = frozenset({"origin", "target", "requester", "helper", "node"})
_LEARNED = frozenset(
    {
        "epoch",
        "view_id",
        "seq",
        "base",
        "first",
        "last",
        "delivered",
        "low",
        "stable",
        "highest",
        "round",
        "aggregate",
        "nonce",
        "incarnation",
        "origin_incarnation",
        "target_incarnation",
        "receiver_incarnation",
        "sender_incarnation",
        "cluster",
        "part",
        "parts",
        "rank",
    }
)
_STEPS: tuple[int, ...] = (
    0,
    0,
    0,
    1,
    -1,
    1,
    2,
    -2,
    3,
    7,
    255,
    256,
    1 << 16,
    1 << 20,
    (1 << 20) + 1,
    1 << 31,
)
_STEPS = _STEPS + tuple(-s for s in _STEPS[8:])
_EDGES = {
    bits: (0, 1, 2, 3, (1 << bits) - 1, (1 << bits) - 2, 1 << (bits - 1), (1 << (bits - 1)) - 1)
    for bits in (8, 16, 32, 64)
}
_FLOATS = (
    0.0,
    -0.0,
    0.25,
    0.5,
    1.0,
    -1.0,
    1e292,
    -1e292,
    1.7976931348623157e308,
    -1.7976931348623157e308,
    5e-324,
    1e-300,
)
_SMALL = frozenset({"broker_capable", "regime", "flags", "priority", "status", "points", "classes"})
"""Enums and small counts: mostly in range (0..3, where checks pass), sometimes past it."""
_RUN_TYPES = (
    wire.Coordinator.TYPE,
    wire.Heartbeat.TYPE,
    wire.Election.TYPE,
    wire.UData.TYPE,
    wire.Nak.TYPE,
    wire.ViewRequest.TYPE,
    wire.BidAck.TYPE,
    wire.Price.TYPE,
)
"""Types a run prefers: what a machine orders by epoch or sequence number."""
_POOL = 24
"""Values remembered per field name (the most recent)."""


class Adversary:
    """Builds hostile, well-formed datagrams for a data centre of ``members``.

    ``members``: the real node ids (impersonated); ``groups``: group ids to
    address (the cluster and the broker group); ``phantoms``: how many
    made-up ids to use (half above every member); ``fresh``: the chance that a
    node id is a new random one instead (a flood of distinct ids, which fills
    whatever a machine keeps per peer). Pure: all randomness comes
    from ``seed``.
    """

    def __init__(
        self,
        seed: int,
        *,
        members: Sequence[int],
        groups: Sequence[int] = (1, 0),
        phantoms: int = 6,
        fresh: float = 0.0,
    ) -> None:
        self.rng = random.Random(seed)
        self.members = sorted(members)
        self.groups = tuple(groups)
        top = max(self.members)
        self.phantoms = sorted(
            {top + 1 + i * 7919 for i in range(phantoms - phantoms // 2)}
            | {min(self.members) - 1 - i for i in range(phantoms // 2)}
        )
        self.fresh = fresh
        self._learned: dict[str, deque[int]] = {}
        self._shapes = wire.shapes()
        self._fields = {
            code: [a.name for a in shape.cls.__attrs_attrs__]  # type: ignore[attr-defined]
            for code, shape in self._shapes.items()
        }
        self._codes = list(self._shapes)
        # what travels in a channel: protocol messages, and fragments of large messages
        self._inner = [c for c in self._codes if c >= 16 or c == wire.Fragment.TYPE]
        self.run_chance = 0.004
        """Chance per message of starting a run (see the module doc)."""
        self._run: tuple[wire.Message, int, int, int, int] | None = None
        self._run_left = 0
        self.built = 0
        """Datagrams built so far."""
        self.problems = 0
        """Of those, how many fail their type's own check (the decoder refuses them)."""

    # ------------------------------------------------------------- learning

    def observe(self, data: bytes) -> None:
        """Learn field values from one real datagram (anything undecodable is ignored)."""
        try:
            env = wire.decode(data)
        except Exception:
            return
        self._note("incarnation", env.incarnation)
        msg = env.message
        names = self._fields[msg.TYPE]
        for name, value in zip(names, (getattr(msg, n) for n in names), strict=True):
            if type(value) is int:
                self._note(name, value)
            elif type(value) is tuple:
                for entry in value:
                    for ename, evalue in zip(type(entry)._fields, entry, strict=True):
                        if type(evalue) is int:
                            self._note(ename, evalue)

    def _note(self, name: str, value: int) -> None:
        if name not in _LEARNED:
            return
        pool = self._learned.get(name)
        if pool is None:
            pool = self._learned[name] = deque(maxlen=_POOL)
        pool.append(value)

    # ------------------------------------------------------------- building

    def datagram(self) -> bytes:
        """One hostile datagram: an adversarial header and a message of any type."""
        return self.datagrams(1)[0]

    def datagrams(self, count: int) -> list[bytes]:
        """``count`` hostile datagrams; each message goes out under one to four headers
        (senders, lives and groups), which is cheaper than building it again."""
        rng = self.rng
        out: list[bytes] = []
        while len(out) < count:
            if self._run_left or rng.random() < self.run_chance:
                self._next_in_run(out, count)
                continue
            msg = self.message()
            for _ in range(min(count - len(out), 1 + int(rng.random() * 4))):
                group = rng.choice(self.groups) if rng.random() < 0.95 else rng.getrandbits(32)
                try:
                    data = wire.encode(group, self._node(), self._int("incarnation", "I"), msg)
                except (ValueError, PayloadTooLargeError):
                    break
                out.append(data)
                self.built += 1
                if msg.problem() is not None:
                    self.problems += 1
        return out

    def _next_in_run(self, out: list[bytes], count: int) -> None:
        """Continue (or start) a run: the same message, one field counting up."""
        rng = self.rng
        if not self._run_left:
            msg = self.message(_RUN_TYPES if rng.random() < 0.7 else self._codes)
            names = self._fields[msg.TYPE]
            counted = [
                i for i, n in enumerate(names) if n in _LEARNED and type(getattr(msg, n)) is int
            ]
            if not counted:
                return
            top = self.phantoms[-1] if rng.random() < 0.5 else self._node()
            self._run = (msg, rng.choice(counted), rng.choice(self.groups), top, 1)
            self._run_left = rng.choice((16, 64, 256, 1100, 2048))
        assert self._run is not None
        msg, at, group, sender, inc = self._run
        names = self._fields[msg.TYPE]
        while self._run_left and len(out) < count:
            self._run_left -= 1
            values = [getattr(msg, n) for n in names]
            values[at] += 1
            try:
                nxt = type(msg)(*values)
                data = wire.encode(group, sender, inc, nxt)
            except (ValueError, PayloadTooLargeError):
                self._run_left = 0
                return
            msg = nxt
            out.append(data)
            self.built += 1
        self._run = (msg, at, group, sender, inc)

    def message(self, codes: Sequence[int] | None = None, depth: int = 0) -> wire.Message:
        """One message of a type from ``codes`` (default: any), fields adversarial."""
        code = self.rng.choice(codes if codes is not None else self._codes)
        shape = self._shapes[code]
        msg = self._build(shape, depth)
        for _ in range(3):
            if msg.problem() is None:
                break
            msg = self._build(shape, depth)
        return msg

    def _build(self, shape: wire.Shape, depth: int) -> wire.Message:
        names = self._fields[shape.cls.TYPE]
        values: list[Any] = [
            self._value(name, char) for name, char in zip(names, shape.fixed, strict=False)
        ]
        if shape.tail == "payload":
            values.append(self._payload(names, values, depth))
        elif shape.tail == "entries":
            assert shape.entry is not None and shape.entry_type is not None
            values.append(self._entries(shape.entry, shape.entry_type))
        if shape.cls is wire.Bid and self.rng.random() < 0.9:
            # mostly floor <= required <= maximum, corner watts within required..maximum
            values[1:4] = sorted(values[1:4])
            lo, hi = values[2], values[3]
            values[-1] = tuple(wire.Corner(c.price, min(hi, max(lo, c.watts))) for c in values[-1])
            if any(a.watts < b.watts for a, b in zip(values[-1], values[-1][1:], strict=False)):
                values[-1] = ()  # (the corners are the tail, after lead_epoch)
        if shape.cls is wire.Aggregate and self.rng.random() < 0.8:
            values[3:7] = self._aggregate_tail()
        return shape.cls(*values)

    def _aggregate_tail(self) -> list[Any]:
        """``bids, points, classes, values`` of an Aggregate that passes its checks (on the
        default grid), its watts anywhere up to 64 bits: sums that overflow what they feed."""
        rng = self.rng
        points = DEFAULT_GRID.points
        classes = rng.sample(range(16), rng.choice((1, 1, 2, 3)))
        top = rng.choice((1000, 10**9, 2**32, 2**63, 2**64 - 1, 2**64 - 1)) // len(classes)
        triples = []
        for _ in classes:
            h, r, m = sorted(rng.randrange(0, top + 1) for _ in range(3))
            triples.append((h, r, m))
        low = sum(t[1] for t in triples)
        high = sum(t[2] for t in triples)
        demand = sorted((rng.randint(low, high) for _ in range(points)), reverse=True)
        flat = [w for t in triples for w in t]
        mask = sum(1 << k for k in classes)
        bids = self._int("bids", "I")
        return [bids, points, mask, tuple(map(wire.Watts, [*demand, *flat]))]

    def _payload(self, names: list[str], values: list[Any], depth: int) -> bytes:
        rng = self.rng
        if "kind" not in names:  # a Fragment: bytes of a large message, mostly consistent
            data = rng.randbytes(rng.choice((1, 8, rng.randrange(1, 200))))
            if rng.random() < 0.8:
                at = names.index("offset")
                values[at] %= 1 << 20
                values[names.index("total")] = values[at] + len(data) + rng.choice((0, 0, 9, 5000))
                values[names.index("message")] = values[names.index("message")] or 1
            return data
        kind_at = names.index("kind")
        if depth == 0 and rng.random() < 0.7:
            inner = self.message(self._inner, depth + 1)
            values[kind_at] = inner.TYPE
            return wire.encode_body(inner)
        if rng.random() < 0.5:
            values[kind_at] = wire.KIND_APP
        return rng.randbytes(rng.choice((0, 1, 8, rng.randrange(0, 200))))

    def _entries(self, fmt: str, entry_type: type[Any]) -> tuple[Any, ...]:
        rng = self.rng
        r = rng.random()
        count = int(r * 6) if r < 0.95 else rng.randrange(6, 48)
        names = entry_type._fields
        rows = [
            tuple(self._value(n, c) for n, c in zip(names, fmt, strict=True)) for _ in range(count)
        ]
        if rng.random() < 0.8:  # sorted and unique by the first field: passes the checks
            rows = sorted({r[0]: r for r in rows}.values())
            if fmt[0] == "d":  # corners: watts never rising with price
                watts = sorted((r[1] for r in rows), reverse=True)
                rows = [(r[0], w) for r, w in zip(rows, watts, strict=True)]
        return tuple(entry_type(*r) for r in rows)

    def _value(self, name: str, char: str) -> Any:
        if char == "d":
            rng = self.rng
            return rng.choice(_FLOATS) if rng.random() < 0.6 else rng.uniform(-2.0, 3.0)
        if name in _IDS:
            return self._node()
        if name in _SMALL and self.rng.random() < 0.9:
            return self.rng.randrange(0, 3)
        return self._int(name, char)

    def _node(self) -> int:
        rng = self.rng
        if self.fresh and rng.random() < self.fresh:
            return rng.randrange(1, MAX_NODE_ID)
        r = rng.random()
        if r < 0.45:
            return rng.choice(self.members)
        if r < 0.9:
            return rng.choice(self.phantoms)
        return rng.choice((1, 2, MAX_NODE_ID, MAX_NODE_ID - 1, rng.randrange(1, MAX_NODE_ID)))

    def _int(self, name: str, char: str) -> int:
        rng = self.rng
        bits = _BITS[char]
        signed = char == "i"
        r = rng.random()
        pool = self._learned.get(name)
        if pool and r < 0.55:
            value = pool[int(r * 1e6) % len(pool)] + _STEPS[int(r * 1e4) % len(_STEPS)]
        elif r < 0.8:
            value = _EDGES[bits][int(r * 1e4) & 7]
        elif r < 0.9:
            value = int(r * 1e4) & 15
        else:
            value = rng.getrandbits(bits)
        if signed:
            value &= (1 << bits) - 1
            return value - (1 << bits) if value >= 1 << (bits - 1) else value
        return value & ((1 << bits) - 1)


# ---------------------------------------------------------------- footprint


def footprint(machines: Iterable[Any]) -> dict[str, int]:
    """The state ``machines`` hold: per machine class, items in their containers.

    Counts the length of every dict, list, set, tuple and deque among each
    machine's slots, plus those held one level down (in a dict's values or a
    list's items that have slots of their own, e.g. per-peer records). Items,
    not bytes: the bound checked is on counts of messages, peers and members.
    """
    sizes: dict[str, int] = {}
    for machine in machines:
        name = type(machine).__name__
        sizes[name] = sizes.get(name, 0) + _deep_len(machine, 2)
    return sizes


_CONTAINERS = (dict, list, set, frozenset, tuple, deque)


def _slots(obj: Any) -> Iterable[Any]:
    for cls in type(obj).__mro__:
        for slot in getattr(cls, "__slots__", ()):
            value = getattr(obj, slot, None)
            if value is not None:
                yield value


def _deep_len(obj: Any, depth: int) -> int:
    total = 0
    for value in _slots(obj):
        if isinstance(value, _CONTAINERS):
            total += len(value)
            if depth > 1:
                items = value.values() if isinstance(value, dict) else value
                if isinstance(value, (dict, list, deque)):
                    for item in items:
                        if hasattr(type(item), "__slots__") and not isinstance(item, tuple):
                            total += _deep_len(item, depth - 1)
                        elif isinstance(item, _CONTAINERS):
                            total += len(item)
    return total


# ---------------------------------------------------------------- campaign


@attrs.define
class Campaign:
    """What one adversarial run did and found (see :func:`run_campaign`)."""

    seed: int
    sent: int = 0
    """Hostile datagrams delivered to nodes (to one node or to a group)."""
    malformed: int = 0
    """Of those the nodes' codecs refused (fields that fail their type's checks)."""
    peak: dict[str, int] = attrs.Factory(dict)
    """The largest footprint seen, per machine class, over all nodes (items)."""
    views_after: float | None = None
    """Seconds of quiet until one leader and full views everywhere; None: not within bound."""
    recovered_after: float | None = None
    """Seconds of quiet until, besides, a multicast of every member reached every other
    member (:func:`delivering`); None: not within bound."""


class _Attacker:
    """The adversary's endpoint: it only sends what it is told, from its own address."""

    def __init__(self, nid: NodeId) -> None:
        self.node_id = nid

    def start(self, now: float) -> list[Any]:
        return []

    def receive(self, data: bytes, now: float) -> list[Any]:
        return []

    def handle_deadline(self, now: float) -> list[Any]:
        return []

    def next_deadline(self) -> float | None:
        return None


def node_machines(node: Node) -> list[Any]:
    """Every machine of ``node``, once: each group's stack, then the market's (the broker
    group's stack lists the lead machine too, which was counted twice)."""
    machines: list[Any] = []
    for group in node.groups:
        machines.extend(node.stack(group).machines)
    machines.extend((node.client, node.broker, node.lead))
    return list({id(m): m for m in machines}.values())


def recovered(nodes: Sequence[Node]) -> bool:
    """One leader (the highest node) and one view of every node, everywhere."""
    top = max(n.node_id for n in nodes)
    everyone = tuple(sorted(n.node_id for n in nodes))
    for node in nodes:
        membership = node.stack(node.config.cluster).membership
        view = membership.view
        if membership.leader != top or view is None or view.nodes != everyone:
            return False
    return True


def delivering(nodes: Sequence[Node], targets: dict[int, int]) -> bool:
    """Whether every node delivered, of every other node's cluster multicasts, at least
    ``targets[origin]`` (its seq when it last published a probe) and no more than the
    origin itself has sent (a point beyond it is a wedged sender: its real messages would
    be dropped as duplicates), in the origin's incarnation."""
    own: dict[int, Any] = {n.node_id: n.stack(n.config.cluster).multicast for n in nodes}
    for node in nodes:
        got = own[node.node_id].delivered
        for origin, target in targets.items():
            if origin == node.node_id:
                continue
            mine = own[origin].delivered[NodeId(origin)]
            point = got.get(NodeId(origin))
            if point is None or point[0] != mine[0] or not target <= point[1] <= mine[1]:
                return False
    return True


def run_campaign(
    seed: int,
    messages: int,
    *,
    size: int = 4,
    rate: float = 20_000.0,
    burst: int = 200,
    recover_within: float = 15.0,
    grid: Grid | None = None,
    fresh: float = 0.0,
    check: Callable[[Campaign], None] | None = None,
) -> Campaign:
    """``messages`` hostile datagrams at ``rate`` per virtual second against ``size`` nodes.

    The nodes (unkeyed, broker capable, bidding) form their group on a memory
    network for 5 s; the adversary learns from their traffic and sends bursts
    of ``burst`` datagrams, each to one member or to a group. After every
    burst ``check`` (if given) is called with the campaign so far (``peak``
    updated). ``grid``: the market's price grid (default: the default grid; a
    wide one lets hostile bids' corner prices overflow naive arithmetic).
    ``fresh``: see :class:`Adversary`. Then the adversary stops and the group
    is watched every 0.25 s for up to ``recover_within`` seconds until :func:`recovered`
    (``views_after``) and then until a probe multicast by every node (again each second
    until then) is delivered by every other node (:func:`delivering`: ``recovered_after``).

    An exception out of a node propagates (the caller reports the seed).
    """
    report = Campaign(seed=seed)
    market: dict[str, Any] = {}
    if grid is not None:
        market = {
            "client": ClientConfig(grid=grid),
            "broker": BrokerConfig(grid=grid),
            "lead": LeadConfig(grid=grid),
        }
    nodes = [
        Node(
            NodeConfig(
                port=9000 + i,
                broker_capable=True,
                supply=1000,
                bid=Bid(floor=50, required=100, maximum=400),
                **market,
            ),
            incarnation=1,
            rng=random.Random(seed * 1000 + i),
        )
        for i in range(size)
    ]
    attacker = _Attacker(node_id("127.0.0.1", 9999))
    adversary = Adversary(seed, members=[n.node_id for n in nodes], fresh=fresh)
    learn = [0]

    def tap(src: int, dst: int, data: bytes) -> bool:
        if src != attacker.node_id:
            learn[0] += 1
            if learn[0] % 8 == 0:
                adversary.observe(data)
        return False

    net = MemoryNetwork(seed=seed, drop=tap)
    for node in nodes:
        net.add(node, at=0.0)
    net.run_until(5.0)
    net.add(attacker)
    members = [n.node_id for n in nodes]
    rng = adversary.rng
    step = burst / rate
    while report.sent < messages:
        batch = adversary.datagrams(min(burst, messages - report.sent))
        outs: list[Any] = []
        for data in batch:
            r = rng.random()
            if r < 0.8:
                outs.append(Transmit(to=members[int(r * 1000) % size], data=data))
            else:
                outs.append(
                    TransmitGroup(group=GroupId(adversary.groups[int(r * 1000) % 2]), data=data)
                )

        def send(ep: Any, now: float, outs: list[Any] = outs) -> list[Any]:
            return outs

        net.command(attacker.node_id, send)
        net.run_until(net.now + step)
        report.sent += len(batch)
        for node in nodes:
            for name, items in footprint(node_machines(node)).items():
                if items > report.peak.get(name, 0):
                    report.peak[name] = items
        if check is not None:
            check(report)
    net.remove(attacker.node_id)
    report.malformed = sum(n.stats.malformed for n in nodes)
    quiet = net.now
    targets: dict[int, int] = {}
    probed = -math.inf
    while net.now - quiet < recover_within:
        net.run_until(net.now + 0.25)
        if report.views_after is None:
            if not recovered(nodes):
                continue
            report.views_after = net.now - quiet
        if targets and delivering(nodes, targets):
            report.recovered_after = net.now - quiet
            break
        if net.now - probed >= 1.0:  # every node multicasts a probe (again if not through)
            probed = net.now
            for node in nodes:
                net.command(node.node_id, lambda ep, now: ep.multicast(b"probe", now))
                mine = node.stack(node.config.cluster).multicast.delivered
                targets[node.node_id] = mine[node.node_id][1]
    return report
