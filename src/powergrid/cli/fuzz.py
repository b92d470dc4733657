"""``powergrid fuzz``: seeded fault-injection runs of a small data centre, from the shell.

::

    powergrid fuzz --seeds N [--start S] [--nodes K] [--safety S] [--liveness S] [--json]
                   [--workers N | --dask ADDRESS]
    powergrid fuzz --replay SEED [--nodes K] [--safety S] [--liveness S] [--json]

Runs :func:`powergrid.sim.fuzzing.run_datacentre` on each seed and prints a
summary (seeds, violations, faults by kind, datagrams delivered, virtual and
wall time), or one JSON object with ``--json``. A progress bar goes to
stderr only when stderr is a terminal (``--progress on`` forces it). Every
violation names the command that replays it with every option it ran with;
``--workers N`` runs the seeds in N processes and ``--dask ADDRESS`` on a
Dask cluster (:mod:`powergrid.cli.campaign`); either way the summary is the
serial run's, wall time and rate aside. ``--replay`` prints that run's trace,
its report and, when it failed, a pytest test that reproduces it and runs as
it is.

Exit status: 0 if every invariant held, 1 if one broke, 2 for bad options
(checked before anything runs, one line on stderr).
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from typing import Any

from powergrid.cli import progress_wanted
from powergrid.cli.campaign import run_campaign, summarize, violation_json
from powergrid.errors import ConfigError
from powergrid.sim.fuzzing import (
    DEFAULT_LIVENESS_S,
    DEFAULT_SAFETY_S,
    check_options,
    run_datacentre,
)
from powergrid.sim.harness import RunResult

__all__ = ["add_arguments", "run"]


def add_arguments(parser: argparse.ArgumentParser) -> None:
    """The options of ``powergrid fuzz``."""
    parser.add_argument("--seeds", type=int, default=100, help="how many seeds to run (100)")
    parser.add_argument("--start", type=int, default=0, help="first seed (0)")
    parser.add_argument(
        "--nodes", type=int, default=None, help="servers per run (default: 3-15, drawn)"
    )
    parser.add_argument("--json", action="store_true", help="print one JSON object")
    parser.add_argument(
        "--fanout",
        action="store_true",
        help="no IP multicast: group sends fan out as unicasts to seeds and view members",
    )
    parser.add_argument(
        "--total-order",
        action="store_true",
        help="deliver the app multicasts of every cluster in total order, and check that "
        "any two members deliver any two messages in the same order",
    )
    parser.add_argument(
        "--large",
        action="store_true",
        help="about half the app multicasts are large messages (fragments; up to 1 MiB)",
    )
    parser.add_argument(
        "--flow",
        action="store_true",
        help="multicast flow control in every cluster (send window 4, 12-message buffers, "
        "bursting apps)",
    )
    parser.add_argument(
        "--supply-steps",
        action="store_true",
        help="change the supply 1-3 times within the safety phase (drops, rises, shortages)",
    )
    parser.add_argument(
        "--replay", type=int, default=None, metavar="SEED", help="re-run SEED, print its trace"
    )
    parser.add_argument(
        "--safety", type=float, default=DEFAULT_SAFETY_S, help="seconds under faults (5)"
    )
    parser.add_argument(
        "--liveness", type=float, default=DEFAULT_LIVENESS_S, help="seconds to converge (10)"
    )
    parser.add_argument(
        "--workers",
        type=int,
        default=1,
        metavar="N",
        help="run seeds in N processes (1); the summary is the same as a serial run's",
    )
    parser.add_argument(
        "--dask",
        default=None,
        metavar="ADDRESS",
        help="run seeds on a Dask cluster: a scheduler address, or local[:N] "
        "(needs the cluster extra)",
    )
    parser.add_argument(
        "--progress",
        choices=("auto", "on", "off"),
        default="auto",
        help="progress bar on stderr (auto: only on a terminal)",
    )


def _bar(done: int, total: int, bad: int, started: float) -> str:
    width = 30
    filled = width * done // max(total, 1)
    rate = done / max(time.perf_counter() - started, 1e-9)
    return (
        f"\r[{'#' * filled}{'.' * (width - filled)}] {done}/{total} seeds, "
        f"{bad} failed, {rate:.1f} seeds/s"
    )


def run(args: argparse.Namespace) -> int:
    """Run ``powergrid fuzz``; returns the exit status (1 if an invariant broke)."""
    try:
        if args.seeds < 0:
            raise ConfigError(f"--seeds {args.seeds}: give 0 or more")
        check_options(args.nodes, args.safety, args.liveness)
    except ConfigError as exc:
        print(f"powergrid fuzz: {exc}", file=sys.stderr)
        return 2
    common: dict[str, Any] = {
        "nodes": args.nodes,
        "safety_s": args.safety,
        "liveness_s": args.liveness,
        "fanout": args.fanout,
        "total_order": args.total_order,
        "large": args.large,
        "flow": args.flow,
        "supply_steps": args.supply_steps,
    }
    if args.replay is not None:
        result = run_datacentre(args.replay, keep_trace=True, **common)
        if args.json:
            print(json.dumps(_result_json(result), sort_keys=True))
        else:
            for line in result.trace_lines or ():
                print(line)
            print(result.report())
            print(f"trace sha256 {result.trace_hash}")
        return 0 if result.ok else 1
    show = progress_wanted(args.progress)
    started = time.perf_counter()

    def progress(done: int, bad: int) -> None:
        if show:
            print(_bar(done, args.seeds, bad, started), end="", file=sys.stderr, flush=True)

    seeds = range(args.start, args.start + args.seeds)
    try:
        outcomes = run_campaign(
            seeds, common, workers=args.workers, dask=args.dask, progress=progress
        )
    except ConfigError as exc:
        print(f"powergrid fuzz: {exc}", file=sys.stderr)
        return 2
    if show and args.seeds:
        print(file=sys.stderr)
    wall = time.perf_counter() - started
    summary = summarize(outcomes, args.start, wall)
    violations: list[dict[str, Any]] = summary["violations"]
    if args.json:
        print(json.dumps(summary, sort_keys=True))
    else:
        print(
            f"{len(outcomes)} seeds ({args.start}..{args.start + len(outcomes) - 1}), "
            f"{len(violations)} with violations, {summary['seeds_per_s']:.1f} seeds/s"
        )
        print("faults: " + (", ".join(f"{k}={v}" for k, v in summary["faults"].items()) or "none"))
        print(
            f"messages delivered: {summary['messages']}, virtual time: "
            f"{summary['virtual_s']:.1f} s, wall time: {wall:.2f} s"
        )
        print("power: " + ", ".join(f"{k} {v}" for k, v in summary["power"].items()))
        if summary["exempted"]:
            print("exempted: " + ", ".join(f"{k}={v}" for k, v in summary["exempted"].items()))
        for v in violations:
            print(
                f"FAIL seed {v['seed']}: {v['invariant']} at t={v['time']:.3f}: {v['detail']}\n"
                f"  replay: {v['replay']}"
            )
    return 1 if violations else 0


def _result_json(result: RunResult) -> dict[str, Any]:
    return {
        "seed": result.seed,
        "ok": result.ok,
        "violations": [violation_json(v) for v in result.violations],
        "faults": result.faults,
        "messages": result.messages,
        "virtual_s": result.virtual_time,
        "wall_s": result.wall_time,
        "trace_sha256": result.trace_hash,
        "power": result.power,
        "exempted": result.exempted,
        "options": str(result.options),
    }
