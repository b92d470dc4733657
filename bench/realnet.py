"""Real processes on loopback: startup, quiet traffic, detection, leader failover, first price.

Each run starts N ``python -m powergrid node --json`` processes (8 by default;
127.0.0.1, TTL 0, distinct ports, one cluster, a fresh ``--group-port-base``
per run). Three are broker-capable (ranks 3, 2, 1, each with the supply
``SUPPLY_PER_NODE * N`` watts; with N < 4 one fewer than N), the rest are
plain servers; all are keyed with one key file made by ``powergrid keygen``
(every datagram signed and checked, as a deployment runs); every node bids
``--maximum 300 --required 100`` at start and keeps that bid (a steady
market). ``--stats-interval 0``: counters are printed only when asked. Every
time is read from the ``mono`` field the nodes print (the host's monotonic
clock, the same in every process) or, for a kill, from ``time.monotonic()``
just before the SIGKILL, so neither the reading delay of this script nor the
1-2 s that Python and trio take to import count.

Per run, in this order:

* ``startup_s``: from the last process's ``started`` line to the moment every
  node's last view of the cluster lists all N nodes with the same view id and
  the same leader (the latest of the nodes' lines that installed that view).
* ``first_price_s``: from the last ``started`` line until every node has
  printed a ``price`` (its server applied a cap; a local clearing counts).
* ``quiet_datagrams_per_node_s``: ``SETTLE_S`` after every node has a price, a
  ``stats`` command to every node, ``QUIET_S`` later another; each node's
  ``udp_stats.sent`` difference over the difference of the two lines'
  ``mono``, averaged over the group (leader included). ``sent`` counts UDP
  datagrams handed to the kernel by the sender: a multicast once, a bundle
  once. Beside it: the leader's own rate (``quiet_leader_datagrams_s``) and
  the rate of protocol datagrams before bundling
  (``quiet_protocol_datagrams_per_node_s``: ``sent - bundles_sent + bundled``).
  Counts, not CPU: they do not move with the machine's load unless a timer
  fires late.
* ``detect_s``: a plain server (never the leader) is SIGKILLed; until every
  survivor has printed a view of the cluster without it.
* ``leader_failover_s`` (also under the issue's name ``failover_s``): the
  cluster's leader is SIGKILLed; until every survivor has printed a ``leader``
  line of the cluster naming the same new leader (the latest such line's
  ``mono``).

Every wait is bounded (``TIMEOUT_S``); a run that times out is counted in
``failed_runs`` (with the reason) and left out of the figures. Each figure is
``{"median", "max"}`` over the runs (``"runs"`` of them, at least 5 by
default; ``--quick``: N = 3, 1 run, 1 s quiet). Every process is stopped
(SIGTERM, then SIGKILL) at the end of its run, also on errors.
``load_average`` is the machine's 1-minute load at the start and end: the
times here are timers plus scheduling, and a loaded machine stretches the
latter. ``anchors`` repeats the published comparison figures of issue 17
(memberlist LAN defaults, PySyncObj Raft; measured on this machine by the
issue's author, not by this script).

Options beyond ``--json``/``--quick``: ``--nodes N``, ``--runs R``,
``--quiet S`` (seconds).
"""

from __future__ import annotations

import argparse
import os
import statistics
import subprocess
import sys
import tempfile
import time
from typing import Any

from _common import Row, emit, free_port

from powergrid.cli.processes import NodeProcesses

HOST = "127.0.0.1"
GROUP = 1
TIMEOUT_S = 30.0
SETTLE_S = 2.0
SUPPLY_PER_NODE = 200
BID = ("--maximum", "300", "--required", "100")

ANCHORS: dict[str, Any] = {
    "memberlist_detect_s": 5.98,
    "memberlist_quiet_datagrams_per_node_s": 2.2,
    "memberlist_startup_s": [0.2, 0.5],
    "pysyncobj_leader_failover_s": 1.93,
    "pysyncobj_quiet_tcp_segments_per_node_s": 23.6,
    "pysyncobj_startup_s": [1.0, 2.0],
}
"""Issue 17's side-by-side figures of other systems (10 runs each, loopback, 8 processes)."""

FIGURES = (
    "startup_s",
    "first_price_s",
    "quiet_datagrams_per_node_s",
    "quiet_leader_datagrams_s",
    "quiet_protocol_datagrams_per_node_s",
    "detect_s",
    "leader_failover_s",
)


class RunFailed(Exception):
    """A run timed out or saw something it cannot measure."""


def _last_view(p: NodeProcesses, name: str) -> dict[str, Any] | None:
    views = p.events(name, "view", group=GROUP)
    return views[-1] if views else None


def _agreed(p: NodeProcesses, names: list[str]) -> dict[str, Any] | None:
    """The view every node of ``names`` installed last, if they agree on one with all of them
    and a leader; else None."""
    views = [_last_view(p, n) for n in names]
    first = views[0]
    if first is None or first["leader"] == "-" or sorted(first["members"]) != sorted(names):
        return None
    key = (first["view_id"], first["leader"], first["members"])
    if all(v is not None and (v["view_id"], v["leader"], v["members"]) == key for v in views):
        return first
    return None


def _stats(p: NodeProcesses, names: list[str], ident: str) -> dict[str, dict[str, Any]]:
    for n in names:
        p.send(n, {"cmd": "stats", "id": ident})
    p.until(lambda: all(p.events(n, "stats", id=ident) for n in names), TIMEOUT_S, "stats")
    return {n: p.events(n, "stats", id=ident)[0] for n in names}


def one_run(nodes: int, quiet_s: float, seed: int) -> dict[str, float]:
    """One run's figures (see the module docstring); raises RunFailed."""
    brokers = min(3, nodes - 1)
    with tempfile.TemporaryDirectory() as tmp, NodeProcesses() as p:
        # Keyed, as a deployment runs (nodes refuse to start unkeyed without --insecure).
        keys = os.path.join(tmp, "keys")
        subprocess.run([sys.executable, "-m", "powergrid", "keygen", keys], check=True)
        common = ["--ttl", "0", "--group-port-base", str(free_port()), "--group", str(GROUP)]
        common += ["--key-file", keys]
        common += ["--stats-interval", "0", *BID]
        names: list[str] = []
        plain: list[str] = []
        for i in range(nodes):
            port = free_port()
            opts = [*common, "--port", str(port), "--seed", str(seed + i)]
            if i < brokers:
                rank, supply = str(brokers - i), str(SUPPLY_PER_NODE * nodes)
                opts += ["--broker-capable", "--rank", rank, "--supply", supply]
            name = p.start(f"{HOST}:{port}", *opts)
            names.append(name)
            if i >= brokers:
                plain.append(name)
        try:
            return _measure(p, names, plain, quiet_s)
        except TimeoutError as exc:
            raise RunFailed(str(exc)[:300]) from exc


def _measure(
    p: NodeProcesses, names: list[str], plain: list[str], quiet_s: float
) -> dict[str, float]:
    p.until(lambda: all(p.events(n, "started") for n in names), TIMEOUT_S, "started lines")
    started = max(p.events(n, "started")[0]["mono"] for n in names)
    p.until(lambda: _agreed(p, names) is not None, TIMEOUT_S, "one agreed view")
    agreed = _agreed(p, names)
    assert agreed is not None
    startup = max(_mono_of_last_view(p, n) for n in names) - started
    leader = agreed["leader"]

    p.until(lambda: all(p.events(n, "price") for n in names), TIMEOUT_S, "a price everywhere")
    first_price = max(p.events(n, "price")[0]["mono"] for n in names) - started

    end = time.monotonic() + SETTLE_S
    while time.monotonic() < end:
        p.pump(0.05)
    before = _stats(p, names, "quiet-0")
    end = time.monotonic() + quiet_s
    while time.monotonic() < end:
        p.pump(0.05)
    after = _stats(p, names, "quiet-1")
    if _agreed(p, names) != agreed:
        raise RunFailed("the view changed during the quiet period")
    rates: dict[str, float] = {}
    proto: dict[str, float] = {}
    for n in names:
        a, b = before[n], after[n]
        dt = b["mono"] - a["mono"]
        ua, ub = a["udp_stats"], b["udp_stats"]
        rates[n] = (ub["sent"] - ua["sent"]) / dt
        pa = ua["sent"] - ua["bundles_sent"] + ua["bundled"]
        pb = ub["sent"] - ub["bundles_sent"] + ub["bundled"]
        proto[n] = (pb - pa) / dt

    victim = plain[-1]
    survivors = [n for n in names if n != victim]
    t0 = time.monotonic()
    p.kill(victim)

    def gone(n: str) -> float | None:
        for e in p.events(n, "view", group=GROUP):
            if e["mono"] >= t0 and victim not in e["members"]:
                return float(e["mono"])
        return None

    p.until(lambda: all(gone(n) is not None for n in survivors), TIMEOUT_S, "the crash detected")
    detect = max(gone(n) or 0.0 for n in survivors) - t0

    rest = [n for n in survivors if n != leader]
    t1 = time.monotonic()
    p.kill(leader)

    def new_leader(n: str) -> tuple[str, float] | None:
        got = [e for e in p.events(n, "leader", group=GROUP) if e["mono"] >= t1]
        if not got or got[-1]["leader"] == leader:
            return None
        last = got[-1]["leader"]
        return last, min(float(e["mono"]) for e in got if e["leader"] == last)

    def known() -> bool:
        seen = [new_leader(n) for n in rest]
        return all(s is not None for s in seen) and len({s[0] for s in seen if s}) == 1

    p.until(known, TIMEOUT_S, "a new leader known to all")
    failover = max(s[1] for s in (new_leader(n) for n in rest) if s) - t1
    return {
        "startup_s": startup,
        "first_price_s": first_price,
        "quiet_datagrams_per_node_s": statistics.fmean(rates.values()),
        "quiet_leader_datagrams_s": rates[leader],
        "quiet_protocol_datagrams_per_node_s": statistics.fmean(proto.values()),
        "detect_s": detect,
        "leader_failover_s": failover,
    }


def _mono_of_last_view(p: NodeProcesses, name: str) -> float:
    view = _last_view(p, name)
    assert view is not None
    return float(view["mono"])


def summary(values: list[float]) -> dict[str, float]:
    """``{"median", "max"}`` of ``values`` (NaN for none)."""
    if not values:
        return {"median": float("nan"), "max": float("nan")}
    return {"median": statistics.median(values), "max": max(values)}


def measure(nodes: int, runs: int, quiet_s: float) -> dict[str, Any]:
    """Every run's figures and their summaries."""
    load_start = os.getloadavg()[0]
    done: list[dict[str, float]] = []
    failed: list[str] = []
    for r in range(runs):
        try:
            done.append(one_run(nodes, quiet_s, seed=1000 * r + 1))
        except RunFailed as exc:
            failed.append(str(exc))
    result: dict[str, Any] = {k: summary([d[k] for d in done]) for k in FIGURES}
    result["failover_s"] = result["leader_failover_s"]
    result.update(
        nodes=nodes,
        runs=len(done),
        failed_runs=len(failed),
        failures=failed,
        quiet_period_s=quiet_s,
        per_run=done,
        load_average={"start": load_start, "end": os.getloadavg()[0]},
        anchors=ANCHORS,
    )
    return result


def rows(res: dict[str, Any]) -> list[Row]:
    """The table rows (medians, with the anchors where the issue gives one)."""
    n = res["nodes"]
    a = ANCHORS
    return [
        (f"realnet {n} nodes: startup to agreed view (s)", res["startup_s"]["median"],
         a["memberlist_startup_s"][1], None, "<= 1.0"),
        (f"realnet {n} nodes: first price everywhere (s)", res["first_price_s"]["median"],
         None, None, "<= 1.0"),
        (f"realnet {n} nodes: quiet datagrams/node/s", res["quiet_datagrams_per_node_s"]["median"],
         a["memberlist_quiet_datagrams_per_node_s"], None, "<= 4"),
        (f"realnet {n} nodes: quiet datagrams/s, leader", res["quiet_leader_datagrams_s"]["median"],
         None, None, ""),
        (f"realnet {n} nodes: crash detected by all (s)", res["detect_s"]["median"],
         a["memberlist_detect_s"], None, "<= 1.0"),
        (f"realnet {n} nodes: new leader known to all (s)", res["leader_failover_s"]["median"],
         a["pysyncobj_leader_failover_s"], None, ""),
    ]  # fmt: skip


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--json", action="store_true", help="print one JSON object on stdout")
    parser.add_argument("--quick", action="store_true", help="3 nodes, 1 run, 1 s quiet")
    parser.add_argument("--nodes", type=int, default=None, help="processes per run (default 8)")
    parser.add_argument("--runs", type=int, default=None, help="runs (default 5)")
    parser.add_argument("--quiet", type=float, default=None, help="quiet period, s (default 5)")
    args = parser.parse_args()
    nodes = args.nodes or (3 if args.quick else 8)
    runs = args.runs or (1 if args.quick else 5)
    quiet = args.quiet or (1.0 if args.quick else 5.0)
    if nodes < 3:
        sys.exit("realnet: --nodes must be at least 3 (a server to kill, then a leader)")
    res = measure(nodes, runs, quiet)
    notes = [
        f"{res['runs']} runs ({res['failed_runs']} failed), medians; load average "
        f"{res['load_average']['start']:.1f} -> {res['load_average']['end']:.1f}",
        "baselines: memberlist LAN defaults / PySyncObj, from issue 17",
    ]
    emit(args, res, "powergrid real processes on loopback", rows(res), notes)


if __name__ == "__main__":
    main()
