"""Power market: clearing time vs number of bids, messages per round, bid-to-price latency.

*Clearing* (pure functions, CPU seconds): ``aggregate`` the bids (their
ladders on the default 32-point grid), ``clear`` against a supply in the
normal regime, and ``allocate`` every bid; timed apart and together. Bids
are straight-line curves (no corners) with seeded random watts and classes.

*Messages per round* and *bid latency*: real Nodes on the memory network
(1 ms latency), clusters of clients, each cluster electing a broker and the
brokers a lead. In the steady state (after 8 virtual seconds) the market's
datagrams per round (``round_interval`` 1 s) are counted where they are sent
(a multicast counts once) by kind: bids (plain datagrams, resent until
acknowledged), BidAck, Aggregate, Clearing, Price, Applied (a client confirming a
cut; none in a steady state) (and UAck, had bids a reliable unicast's acks). The
design estimates about N + 3B per round (N clients, B brokers). Then one client changes its bid;
the figure is the virtual time until it applies a price that includes it.

*Power in time* (``powergrid.sim`` with its strict power ledger, no loss, 1 ms
latency): the same data centre, a wave of joins (5 servers per cluster at
10 s), a supply drop (to 80 % at 14 s) and a broker crash (cluster 1 at 16 s).
``admission_latency_s`` is ``{"median", "p99", "max"}`` of the joined servers'
time from their start to the first price that counts their bid (FIGURES:
p99 at most 1.0 s); ``overload_watt_seconds`` and ``starved_server_seconds``
are the run's (docs/protocols/market.md, "The guarantee in time").
"""

from __future__ import annotations

import random
import time
from collections import Counter
from typing import Any

from _common import emit, parse_args

from powergrid.events import Transmit, TransmitGroup
from powergrid.node import Node, NodeConfig
from powergrid.protocols.market import Bid, Grid, PriceUpdated, aggregate, allocate, clear
from powergrid.sim.memory import MemoryNetwork
from powergrid.sim.runner import Simulation
from powergrid.sim.scenario import parse_scenario
from powergrid.wire import HEADER_SIZE

STEADY_S = 8.0
KINDS = {
    6: "udata",
    7: "uack",
    48: "bid",
    49: "bid_ack",
    50: "aggregate",
    51: "clearing",
    52: "price",
    53: "applied",
}


def _bids(n: int, seed: int = 1) -> list[Bid]:
    rng = random.Random(seed)
    out = []
    for _ in range(n):
        h = rng.randrange(50, 100)
        r = h + rng.randrange(0, 100)
        out.append(
            Bid(floor=h, required=r, maximum=r + rng.randrange(0, 200), priority=rng.randrange(4))
        )
    return out


def clearing(n: int) -> dict[str, float]:
    """CPU seconds to aggregate, clear and allocate ``n`` bids."""
    grid = Grid()
    bids = _bids(n)
    t0 = time.process_time()
    totals = aggregate(bids, grid)
    t1 = time.process_time()
    supply = (totals.required + totals.maximum) // 2
    result = clear(totals, supply, grid)
    t2 = time.process_time()
    total = sum(allocate(b, result, grid) for b in bids)
    t3 = time.process_time()
    assert total <= supply
    return {"aggregate": t1 - t0, "clear": t2 - t1, "allocate": t3 - t2, "total": t3 - t0}


class Counting:
    """A Node that counts the market datagrams it sends, once per datagram."""

    def __init__(self, node: Node, counts: Counter[str]) -> None:
        self.node = node
        self.node_id = node.node_id
        self.counts = counts
        self.on = False

    def _count(self, outs: list[object]) -> list[object]:
        if self.on:
            for out in outs:
                if type(out) is Transmit or type(out) is TransmitGroup:
                    data: bytes = out.data  # type: ignore[attr-defined]
                    code = data[3]
                    name = KINDS.get(code)
                    if code == 6:  # reliable unicast: what does it carry?
                        name = "bid" if data[HEADER_SIZE + 16] == 48 else "udata_other"
                    if name is not None:
                        self.counts[name] += 1
        return outs

    def start(self, now: float) -> list[object]:
        return self._count(self.node.start(now))

    def receive(self, data: bytes, now: float) -> list[object]:
        return self._count(self.node.receive(data, now))

    def handle_deadline(self, now: float) -> list[object]:
        return self._count(self.node.handle_deadline(now))

    def next_deadline(self) -> float | None:
        return self.node.next_deadline()


def data_centre(clusters: int, clients: int, seed: int = 1) -> dict[str, Any]:
    counts: Counter[str] = Counter()
    seen: list[tuple[float, PriceUpdated]] = []
    watch: list[int] = []

    def observer(t: float, node: int, out: object) -> None:
        if watch and node == watch[0] and type(out) is PriceUpdated:
            seen.append((t, out))

    net = MemoryNetwork(seed=seed, latency=0.001, observer=observer, keep_log=False)
    eps = []
    for c in range(clusters):
        for i in range(clients):
            cfg = NodeConfig(
                port=10000 + c * 1000 + i,
                cluster=c + 1,
                broker_capable=i < 2,
                supply=clusters * clients * 150,
                bid=Bid(floor=50, required=100, maximum=200),
            )
            ep = Counting(
                Node(cfg, incarnation=1, rng=random.Random(seed * 100000 + c * 1000 + i)), counts
            )
            eps.append(ep)
            net.add(ep)
    net.run_until(STEADY_S)
    for ep in eps:
        ep.on = True
    window = 4.0
    net.run_until(STEADY_S + window)
    for ep in eps:
        ep.on = False
    per_round = {k: v / window for k, v in sorted(counts.items())}
    client = next(ep for ep in eps if _plain_client(ep.node))
    watch.append(client.node_id)
    t_change = net.now
    net.command(
        client.node_id,
        lambda ep, now: ep.node.set_bid(Bid(floor=60, required=120, maximum=220), now),
    )
    net.run_until(t_change + 10.0)
    first = next((t for t, p in seen if p.includes_latest_bid), None)
    return {
        "per_round": per_round,
        "total": sum(per_round.values()),
        "clients": clusters * clients,
        "brokers": clusters,
        "estimate_n_plus_3b": clusters * clients + 3 * clusters,
        "bid_to_price_s": None if first is None else round(first - t_change, 3),
    }


class _Joins(Simulation):
    """A simulation that notes when each joined server started and was first counted."""

    def __init__(self, *args: Any, **kw: Any) -> None:
        super().__init__(*args, **kw)
        self.joiners = set(self.failures.joiners)
        self.started: dict[int, float] = {}
        self.admitted: dict[int, float] = {}

    def _observe(self, t: float, node: Any, out: object) -> None:
        super()._observe(t, node, out)
        if node not in self.joiners or node in self.admitted:
            return
        if type(out).__name__ == "NodeStarted":
            self.started.setdefault(node, t)
        elif type(out) is PriceUpdated and out.counted and node in self.started:
            self.admitted[node] = t


def power_run(clusters: int, nodes: int, seed: int = 1) -> dict[str, Any]:
    """Joins, a supply drop and a broker crash on the simulator (see the docstring)."""
    watts = clusters * (nodes + 5) * 150
    doc = {
        "scenario": {
            "name": "bench-power",
            "seed": seed,
            "duration": 24.0,
            "clusters": clusters,
            "nodes": nodes,
        },
        "network": {"latency": 0.001, "loss": 0.0},
        "supply": {"profile": "steps", "steps": [[0.0, watts], [14.0, watts * 4 // 5]]},
        "demand": {"profile": "steady", "required": 100},
        "failures": [
            {"at": 10.0, "action": "join", "cluster": 0, "count": 5 * clusters},
            {"at": 16.0, "action": "crash_broker", "cluster": 1},
        ],
    }
    sim = _Joins(parse_scenario(doc))
    r = sim.run()
    lat = sorted(sim.admitted[n] - sim.started[n] for n in sim.admitted)

    def q(p: float) -> float | None:
        return round(lat[min(len(lat) - 1, int(p * len(lat)))], 3) if lat else None

    return {
        "admission_latency_s": {"median": q(0.5), "p99": q(0.99), "max": q(1.0)},
        "joins": len(sim.joiners),
        "joins_admitted": len(lat),
        "overload_watt_seconds": round(r.power.overload_ws, 3),
        "starved_server_seconds": round(r.power.starved_server_s, 3),
        "strict_overload_watt_seconds": round(r.power.strict_overload_ws, 3),
        "strict_starved_server_seconds": round(r.power.strict_starved_server_s, 3),
    }


def _plain_client(node: Node) -> bool:
    """The node is a plain client (not in the broker group)."""
    return node.groups == (node.config.cluster,)


def main() -> None:
    args = parse_args(__doc__.splitlines()[0])
    sizes = (100, 1_000) if args.quick else (100, 1_000, 10_000, 100_000)
    clear_parts = {str(n): clearing(n) for n in sizes}
    dc = data_centre(2, 5) if args.quick else data_centre(10, 100)
    power = power_run(2, 5) if args.quick else power_run(10, 100)
    result = {
        "clear_seconds": {k: v["total"] for k, v in clear_parts.items()},
        "clear_parts_seconds": clear_parts,
        "messages_per_round": dc["total"],
        "messages_per_round_by_kind": dc["per_round"],
        "estimate_n_plus_3b": dc["estimate_n_plus_3b"],
        "data_centre": f"{dc['brokers']} clusters x {dc['clients'] // dc['brokers']} clients",
        "bid_to_price_s": dc["bid_to_price_s"],
        **power,
    }
    rows = [
        (
            f"clear {n} bids (s): agg+clear+alloc",
            clear_parts[str(n)]["total"],
            None,
            None,
            f"agg {clear_parts[str(n)]['aggregate']:.3g}, alloc "
            f"{clear_parts[str(n)]['allocate']:.3g}",
        )
        for n in sizes
    ]
    rows.append(
        (
            f"messages/round, {result['data_centre']}",
            dc["total"],
            dc["estimate_n_plus_3b"],
            dc["total"] / dc["estimate_n_plus_3b"],
            "~ N + 3B",
        )
    )
    rows.append(("bid change -> price including it (s)", dc["bid_to_price_s"], None, None, ""))
    lat = power["admission_latency_s"]
    rows.append(("join -> admitted, p99 (s)", lat["p99"], None, None, "<= 1.0"))
    rows.append(
        ("overload beyond the bound (W*s)", power["overload_watt_seconds"], None, None, "0")
    )
    rows.append(("starved (server-s)", power["starved_server_seconds"], None, None, "0"))
    emit(args, result, "power market", rows, [f"by kind per round: {dc['per_round']}"])


if __name__ == "__main__":
    main()
