"""How `powergrid simulate` scales: wall time and peak memory by number of nodes.

Each size runs in its own subprocess (``--worker``) so that its peak RSS is
its own. The data centre is ``C`` clusters of 100 nodes (2 broker-capable),
steady demand, a constant supply, default protocol timings, no failures,
for ``--duration`` virtual seconds (60 by default).

    python bench/scale.py --json                 # 1,000 .. 10,000 nodes
    python bench/scale.py --sizes 1000 2500 --duration 20
    python bench/scale.py --quick --json         # 100 and 200 nodes, 5 s (smoke test)

Output (``--json``): ``{"duration_s", "nodes_per_cluster", "wall_s": {n: s},
"cpu_s": {n: s}, "peak_rss_mb": {n: MB}, "delivered": {n: datagrams},
"baseline_per_cpu_s": {n: events}, "cpu_in_baseline_mevents": {n: M},
"growth_ratio", "targets": {...}}``; ``cpu_s`` is the worker's CPU time for
the run (the figure to read on a shared machine, where wall time includes
waiting for a core); ``growth_ratio`` is wall time at the largest size over
wall time at the smallest, divided by the size ratio / 10 (so linear growth
from 1,000 to 10,000 nodes gives 10, and the target is at most 12);
``cpu_growth_ratio`` is the same on CPU time.

The baseline, measured by each worker just before its run: events per CPU
second of the bare loop of ``_common.baseline_rate`` (build an event, call a
machine that returns one action). ``cpu_in_baseline_mevents`` is the run's
CPU time in millions of such events, a figure that does not move with the
machine's speed of the moment (this 2-core machine's runs of one size have
differed by 20% from one hour to the next); ``baseline_growth_ratio`` is the
growth on it.
"""

from __future__ import annotations

import argparse
import json
import resource
import subprocess
import sys
import time

PER_CLUSTER = 100


def worker(nodes: int, duration: float) -> dict[str, float]:
    from _common import baseline_rate  # noqa: PLC0415

    from powergrid.sim.runner import Simulation  # noqa: PLC0415
    from powergrid.sim.scenario import parse_scenario  # noqa: PLC0415

    base = baseline_rate(100_000)

    scenario = parse_scenario(
        {
            "scenario": {
                "name": f"scale-{nodes}",
                "seed": 1,
                "duration": duration,
                "clusters": nodes // PER_CLUSTER,
                "nodes": PER_CLUSTER,
                "brokers": 2,
                "sample_interval": 1.0,
            }
        }
    )
    started = time.perf_counter()
    cpu0 = time.process_time()
    result = Simulation(scenario).run()
    wall = time.perf_counter() - started
    cpu = time.process_time() - cpu0
    rss_kb = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    return {
        "wall_s": round(wall, 3),
        "cpu_s": round(cpu, 3),
        "peak_rss_mb": round(rss_kb / 1024, 1),
        "delivered": sum(result.delivered_by_type.values()),
        "baseline_per_cpu_s": round(base),
        "violations": len(result.violations),
        "rounds": len(result.rounds),
    }


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--sizes", type=int, nargs="+", default=[1000, 2500, 5000, 10000])
    p.add_argument("--duration", type=float, default=60.0)
    p.add_argument("--json", action="store_true")
    p.add_argument("--quick", action="store_true", help="100 and 200 nodes for 5 s (smoke test)")
    p.add_argument("--worker", type=int, help=argparse.SUPPRESS)
    args = p.parse_args()
    if args.worker:
        print(json.dumps(worker(args.worker, args.duration)))
        return 0
    if args.quick:
        args.sizes, args.duration = [100, 200], 5.0
    runs: dict[int, dict[str, float]] = {}
    for n in args.sizes:
        cmd = [sys.executable, __file__, "--worker", str(n), "--duration", str(args.duration)]
        out = subprocess.run(cmd, check=True, capture_output=True, text=True).stdout
        runs[n] = json.loads(out)
        if not args.json:
            print(f"{n:>6} nodes: {runs[n]}", file=sys.stderr)
    lo, hi = min(runs), max(runs)
    growth = runs[hi]["wall_s"] / runs[lo]["wall_s"] / (hi / lo) * 10 if hi > lo else None
    cpu_growth = runs[hi]["cpu_s"] / runs[lo]["cpu_s"] / (hi / lo) * 10 if hi > lo else None
    work = {n: r["cpu_s"] * r["baseline_per_cpu_s"] / 1e6 for n, r in runs.items()}
    work_growth = work[hi] / work[lo] / (hi / lo) * 10 if hi > lo else None
    report = {
        "duration_s": args.duration,
        "nodes_per_cluster": PER_CLUSTER,
        "wall_s": {str(n): r["wall_s"] for n, r in runs.items()},
        "cpu_s": {str(n): r["cpu_s"] for n, r in runs.items()},
        "peak_rss_mb": {str(n): r["peak_rss_mb"] for n, r in runs.items()},
        "delivered": {str(n): r["delivered"] for n, r in runs.items()},
        "violations": {str(n): r["violations"] for n, r in runs.items()},
        "baseline_per_cpu_s": {str(n): r["baseline_per_cpu_s"] for n, r in runs.items()},
        "cpu_in_baseline_mevents": {str(n): round(w, 2) for n, w in work.items()},
        "growth_ratio": round(growth, 2) if growth is not None else None,
        "cpu_growth_ratio": round(cpu_growth, 2) if cpu_growth is not None else None,
        "baseline_growth_ratio": round(work_growth, 2) if work_growth is not None else None,
        "targets": {"wall_s_at_10000": 60.0, "growth_ratio_max": 12.0},
    }
    print(json.dumps(report, indent=None if args.json else 2))
    return 0


if __name__ == "__main__":
    sys.exit(main())
