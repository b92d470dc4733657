"""Reliable multicast throughput: one sender, N receivers, codec included.

Real :class:`~powergrid.protocols.multicast.MulticastMachine` instances with a static view
(the sender is the view's leader, so it is the stability coordinator) run on the
memory network behind a thin endpoint adapter (:class:`McastEndpoint`): the
sender encodes each Data once, the network copies the bytes to every receiver,
each receiver decodes them and feeds the machine. Real Nodes are not used: they
would add membership and election traffic that is not what this measures.

Figures: delivered messages per CPU second (receivers' deliveries only, all
CPU of the run counted: network, codec, machines, stability traffic), the rate
of a bare loop that builds one frozen attrs event and returns one action
(``_common.baseline_rate``) in the same run, and their ratio; at 10% loss of
every datagram, Xmit datagrams per lost Data/Xmit copy and the peak resend
buffer. A second ratio, ``core_ratio``, leaves the memory network out (bytes
handed straight from the sender to the receivers) to show the network's share.

Total order (``total_order_ratio``): the same clean run with a
:class:`~powergrid.protocols.order.TotalOrderMachine` on top of every multicast
machine (:class:`OrderedEndpoint`), its app deliveries per CPU second over the FIFO
run's, measured interleaved (FIFO, ordered, FIFO, ordered, ...; the best of each),
with the clock messages it costs per app message (``total_order_clocks_per_message``)
and, with every member sending at once, the ratio again
(``total_order_ratio_all_send``).
"""

from __future__ import annotations

import gc
import random
import time
from collections import deque
from typing import Any

from _common import baseline_rate, emit, parse_args

from powergrid.events import (
    DeadlineReached,
    JoinGroup,
    Member,
    Multicast,
    Received,
    Send,
    Transmit,
    TransmitGroup,
    View,
    ViewChanged,
)
from powergrid.protocols.multicast import Deliver, MulticastConfig, MulticastMachine, Publish
from powergrid.protocols.order import OrderConfig, OrderedPublish, TotalOrderMachine
from powergrid.sim.memory import MemoryNetwork
from powergrid.types import GroupId, Incarnation, NodeId
from powergrid.wire import KIND_APP, decode, encode, record_builder

GROUP = GroupId(1)
INC = Incarnation(1)
PAYLOAD = bytes(range(64))
TYPE_DATA, TYPE_XMIT = 1, 2
LOSSY_RATE = 1000.0
"""Messages per virtual second in the 10% loss run: repair covers one gap per
``nak_interval`` per origin, so 10% loss of much more than 200/s outruns it
(see docs/performance.md)."""


_received = record_builder(Received)
_publish = record_builder(Publish)
_transmit = record_builder(Transmit)
_transmit_group = record_builder(TransmitGroup)


class McastEndpoint:
    """A MulticastMachine as an Endpoint: encode outputs, decode inputs, count deliveries.

    Every datagram goes through the real codec and the machine's ``handle``;
    records are built with :func:`~powergrid.wire.record_builder` (positional,
    the same records as the keyword constructors), as a lean driver would.
    """

    def __init__(self, node: NodeId, view: View, rng: random.Random) -> None:
        self.node_id = node
        self.machine = MulticastMachine(MulticastConfig(), me=node, incarnation=INC, rng=rng)
        self._handle = self.machine.handle
        self.next_deadline = self.machine.next_deadline  # the Endpoint method, bound once
        self._view = view
        self.delivered = 0

    def _out(self, actions: list[Any]) -> list[object]:
        me = self.node_id
        out: list[object] = []
        for act in actions:
            kind = type(act)
            if kind is Deliver:
                if act.origin != me:
                    self.delivered += 1
            elif kind is Multicast:
                out.append(_transmit_group(GROUP, encode(GROUP, me, INC, act.message)))
            elif kind is Send:
                out.append(_transmit(act.to, encode(GROUP, me, INC, act.message)))
        return out

    def start(self, now: float) -> list[object]:
        out: list[object] = [JoinGroup(group=GROUP)]
        out += self._out(self.machine.handle(ViewChanged(view=self._view), now))
        return out

    def receive(self, data: bytes, now: float) -> list[object]:
        env = decode(data)
        sender, incarnation, message = env.sender, env.incarnation, env.message
        actions = self._handle(_received(sender, incarnation, message), now)
        if len(actions) == 1 and type(actions[0]) is Deliver:  # the common case: one delivery
            self.delivered += 1  # (a machine never hands back its own messages it receives)
            return []
        return self._out(actions)

    def handle_deadline(self, now: float) -> list[object]:
        return self._out(self._handle(DeadlineReached(), now))

    def publish(self, now: float) -> list[object]:
        return self._out(self._handle(_publish(0, PAYLOAD, True), now))


class OrderedEndpoint(McastEndpoint):
    """:class:`McastEndpoint` with total order on top: the app publishes to the order
    machine, whose Publish commands go to the multicast machine, whose deliveries go
    back to the order machine; only the order machine's app deliveries count."""

    def __init__(self, node: NodeId, view: View, rng: random.Random) -> None:
        super().__init__(node, view, rng)
        self.order = TotalOrderMachine(OrderConfig(), me=node, incarnation=INC)
        mcast, order = self.machine, self.order

        def deadline() -> float | None:
            a, b = mcast.next_deadline(), order.next_deadline()
            return a if b is None or (a is not None and a < b) else b

        self.next_deadline = deadline

    def _out(self, actions: list[Any]) -> list[object]:
        me = self.node_id
        out: list[object] = []
        queue = list(actions)
        for act in queue:  # (a list iterator sees what is appended meanwhile)
            kind = type(act)
            if kind is Deliver:
                if act.kind == KIND_APP:
                    if act.origin != me:
                        self.delivered += 1
                else:
                    queue.extend(self.order.handle(act, self._now))
            elif kind is Publish:
                queue.extend(self.machine.handle(act, self._now))
            elif kind is Multicast:
                out.append(_transmit_group(GROUP, encode(GROUP, me, INC, act.message)))
            elif kind is Send:
                out.append(_transmit(act.to, encode(GROUP, me, INC, act.message)))
        return out

    _now = 0.0

    def start(self, now: float) -> list[object]:
        self._now = now
        out: list[object] = [JoinGroup(group=GROUP)]
        event = ViewChanged(view=self._view)
        out += self._out(self.machine.handle(event, now) + self.order.handle(event, now))
        return out

    def receive(self, data: bytes, now: float) -> list[object]:
        self._now = now
        env = decode(data)
        return self._out(self._handle(_received(env.sender, env.incarnation, env.message), now))

    def handle_deadline(self, now: float) -> list[object]:
        self._now = now
        tick = DeadlineReached()
        actions: list[Any] = []
        due = self.machine.next_deadline()
        if due is not None and due <= now:
            actions += self.machine.handle(tick, now)
        due = self.order.next_deadline()
        if due is not None and due <= now:
            actions += self.order.handle(tick, now)
        return self._out(actions)

    def publish(self, now: float) -> list[object]:
        self._now = now
        return self._out(self.order.handle(OrderedPublish(payload=PAYLOAD), now))


def _view(receivers: int) -> View:
    nodes = [NodeId(0x7F000001 << 16 | (9000 + i)) for i in range(receivers + 1)]
    members = tuple(Member(node=n, incarnation=INC) for n in nodes)
    return View(group=GROUP, view_id=1, leader=nodes[0], epoch=1, members=members)  # type: ignore[arg-type]


def run_network(
    messages: int,
    receivers: int,
    loss: float,
    *,
    rate: float = 10_000.0,
    seed: int = 1,
    endpoint: type[McastEndpoint] = McastEndpoint,
    senders: int = 1,
) -> dict[str, Any]:
    """Publish ``messages`` at ``rate`` per virtual second (in batches of 10, each of the
    first ``senders`` members its share) and run until every member has every other's
    (or 120 virtual seconds more have passed)."""
    view = _view(receivers)
    rng = random.Random(seed)
    drop = (lambda src, dst, data: rng.random() < loss) if loss else None
    net = MemoryNetwork(seed=seed, latency=0.0005, drop=drop, keep_log=False)
    eps = [endpoint(n, view, random.Random(seed * 1000 + i)) for i, n in enumerate(view.nodes)]
    for ep in eps[::-1]:  # the receivers first: all listen before the sender's first datagram
        net.add(ep)
    batch = 10
    gc.collect()  # the previous run's garbage is not this run's cost
    t0 = time.process_time()
    t = 0.0
    sent = 0
    while sent < messages:
        k = min(batch, messages - sent)
        sender = eps[(sent // batch) % senders]
        net.command(
            sender.node_id, lambda ep, now, k=k: [o for _ in range(k) for o in ep.publish(now)]
        )
        sent += k
        t += batch / rate
        net.run_until(t)
    target = messages * receivers
    limit = t + 120.0
    while sum(ep.delivered for ep in eps) < target and net.now < limit:
        net.run_until(net.now + 0.05)
    cpu = time.process_time() - t0
    delivered = sum(ep.delivered for ep in eps)
    st = net.stats
    lost = st.dropped_by_type.get(TYPE_DATA, 0) + st.dropped_by_type.get(TYPE_XMIT, 0)
    xmits = st.sent_by_type.get(TYPE_XMIT, 0)
    return {
        "cpu_s": cpu,
        "delivered": delivered,
        "complete": delivered == target,
        "virtual_s": net.now,
        "deliveries_per_cpu_s": delivered / cpu,
        "xmits": xmits,
        "lost": lost,
        "lost_data": st.dropped_by_type.get(TYPE_DATA, 0),
        "resent_per_lost": xmits / lost if lost else 0.0,
        "peak_resend_buffer": max(ep.machine.stats.peak_buffer for ep in eps),
        "datagrams": st.sent,
        "clocks": sum(ep.order.stats.clocks_sent for ep in eps if isinstance(ep, OrderedEndpoint)),
    }


def run_core(messages: int, receivers: int) -> float:
    """Deliveries per CPU second without the network: the sender's datagrams are
    decoded at once by every receiver (unicast replies too), timers run every 10."""
    view = _view(receivers)
    eps = [McastEndpoint(n, view, random.Random(i)) for i, n in enumerate(view.nodes)]
    by_id = {ep.node_id: ep for ep in eps}
    for ep in eps:
        ep.start(0.0)
    sender = eps[0]
    queue: deque[tuple[McastEndpoint, list[object]]] = deque()
    gc.collect()  # the previous run's garbage is not this run's cost
    t0 = time.process_time()
    for i in range(messages):
        now = i * 1e-4
        queue.append((sender, sender.publish(now)))
        if i % 10 == 9:
            for ep in eps:
                due = ep.next_deadline()
                if due is not None and due <= now:
                    queue.append((ep, ep.handle_deadline(now)))
        while queue:
            src, outs = queue.popleft()
            for out in outs:
                if type(out) is TransmitGroup:
                    for ep in eps:
                        if ep is not src:
                            queue.append((ep, ep.receive(out.data, now)))
                elif type(out) is Transmit:
                    dst = by_id[out.to]
                    queue.append((dst, dst.receive(out.data, now)))
    cpu = time.process_time() - t0
    return sum(ep.delivered for ep in eps[1:]) / cpu


def main() -> None:
    args = parse_args(__doc__.splitlines()[0])
    receivers = 4
    messages = 500 if args.quick else 20_000
    base = baseline_rate(20_000 if args.quick else 300_000)
    clean = max(
        (run_network(messages, receivers, 0.0) for _ in range(1 if args.quick else 3)),
        key=lambda r: r["deliveries_per_cpu_s"],
    )
    lossy = run_network(300 if args.quick else 5_000, receivers, 0.10, rate=LOSSY_RATE)
    core = max(run_core(messages, receivers) for _ in range(1 if args.quick else 3))
    fifo_runs: list[float] = []
    ordered_runs: list[dict[str, Any]] = []
    fifo_all: list[float] = []
    ordered_all: list[float] = []
    for _ in range(1 if args.quick else 3):  # interleaved: FIFO, ordered, FIFO, ordered ...
        fifo_runs.append(run_network(messages, receivers, 0.0)["deliveries_per_cpu_s"])
        ordered_runs.append(run_network(messages, receivers, 0.0, endpoint=OrderedEndpoint))
        fifo_all.append(
            run_network(messages, receivers, 0.0, senders=receivers + 1)["deliveries_per_cpu_s"]
        )
        ordered_all.append(
            run_network(messages, receivers, 0.0, senders=receivers + 1, endpoint=OrderedEndpoint)[
                "deliveries_per_cpu_s"
            ]
        )
    ordered = max(ordered_runs, key=lambda r: r["deliveries_per_cpu_s"])
    to_ratio = ordered["deliveries_per_cpu_s"] / max(fifo_runs)
    to_ratio_all = max(ordered_all) / max(fifo_all)
    result = {
        "receivers": receivers,
        "messages": messages,
        "payload_bytes": len(PAYLOAD),
        "deliveries_per_cpu_s": clean["deliveries_per_cpu_s"],
        "baseline_per_cpu_s": base,
        "ratio": clean["deliveries_per_cpu_s"] / base,
        "core_deliveries_per_cpu_s": core,
        "core_ratio": core / base,
        "deliveries_per_cpu_s_10pct": lossy["deliveries_per_cpu_s"],
        "resent_per_lost_10pct": lossy["resent_per_lost"],
        "lost_10pct": lossy["lost"],
        "xmits_10pct": lossy["xmits"],
        "complete_10pct": lossy["complete"],
        "rate_10pct_per_s": LOSSY_RATE,
        "repair_virtual_s_10pct": lossy["virtual_s"],
        "peak_resend_buffer": max(clean["peak_resend_buffer"], lossy["peak_resend_buffer"]),
        "peak_resend_buffer_0pct": clean["peak_resend_buffer"],
        "peak_resend_buffer_10pct": lossy["peak_resend_buffer"],
        "adapter": "thin endpoint adapter over MulticastMachine (no Node)",
        "total_order_deliveries_per_cpu_s": ordered["deliveries_per_cpu_s"],
        "total_order_fifo_deliveries_per_cpu_s": max(fifo_runs),
        "total_order_ratio": to_ratio,
        "total_order_complete": ordered["complete"],
        "total_order_clocks_per_message": ordered["clocks"] / messages,
        "total_order_ratio_all_send": to_ratio_all,
    }
    rows = [
        (
            "deliveries/CPU s, 0% loss",
            result["deliveries_per_cpu_s"],
            base,
            result["ratio"],
            ">= 0.25",
        ),
        ("  same, no network (core)", core, base, result["core_ratio"], ""),
        (
            "deliveries/CPU s, 10% loss",
            lossy["deliveries_per_cpu_s"],
            base,
            lossy["deliveries_per_cpu_s"] / base,
            "",
        ),
        ("Xmit / lost copy, 10% loss", lossy["resent_per_lost"], None, None, "<= 1.5"),
        (
            "total order / FIFO deliveries",
            ordered["deliveries_per_cpu_s"],
            max(fifo_runs),
            to_ratio,
            "",
        ),
        ("  same, all 5 members send", max(ordered_all), max(fifo_all), to_ratio_all, ""),
        ("peak resend buffer (msgs)", result["peak_resend_buffer"], None, None, "<= 10,000"),
    ]
    emit(
        args,
        result,
        f"multicast: 1 sender, {receivers} receivers, {messages} x 64 B",
        rows,
        [
            "baseline: bare loop building a frozen attrs Received and returning [Deliver]",
            f"10% loss at {LOSSY_RATE:g} msg/s, {lossy['delivered'] // receivers} msgs: "
            f"{lossy['lost']} copies lost, {lossy['xmits']} Xmits, all delivered: "
            f"{lossy['complete']}",
        ],
    )


if __name__ == "__main__":
    main()
