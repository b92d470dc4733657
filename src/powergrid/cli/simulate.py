"""``powergrid simulate`` and ``powergrid demo``: a whole data centre in virtual time.

``simulate`` runs a scenario given as a TOML file (``--scenario``) and/or
options (options override the file), shows a progress bar on stderr and
prints a summary; ``--json`` prints the summary as one JSON object instead,
``--trace`` writes every event as JSON lines, ``--plot`` draws the run,
``--sequence`` writes a Mermaid diagram of the first failover. ``demo`` runs
the default scenario (:data:`DEMO`) with the plot and the diagram written
under ``./out/``.

Exit status: 0 if no invariant was broken, 1 if one was (the seed and a
replay command are printed), 2 for a bad scenario or option (the message
names the field). See ``docs/simulator.md``.
"""

from __future__ import annotations

import argparse
import copy
import json
import shlex
import sys
import textwrap
import time
from pathlib import Path
from typing import IO, Any

from powergrid.cli import progress_wanted
from powergrid.errors import ConfigError, UsageError
from powergrid.sim.memory import Trace
from powergrid.sim.plot import INSTALL_HINT, PlotUnavailable, check_path, plot, plot_available
from powergrid.sim.report import format_summary, sequence_diagram, summary
from powergrid.sim.runner import Simulation
from powergrid.sim.scenario import (
    DEMAND_PROFILES,
    SUPPLY_PROFILES,
    Scenario,
    load_toml,
    parse_scenario,
    scenario_to_toml,
)
from powergrid.sim.story import format_header

__all__ = [
    "DEMO",
    "add_demo_arguments",
    "add_simulate_arguments",
    "build_scenario",
    "run_demo",
    "run_simulate",
]

DEMO: dict[str, Any] = {
    "scenario": {"name": "demo", "seed": 1, "duration": 40.0, "clusters": 4, "nodes": 5},
    "network": {"latency": 0.001, "jitter": 0.001, "loss": 0.02},
    "supply": {
        "profile": "steps",
        "steps": [[0.0, 3500], [14.0, 2600], [20.0, 1500], [28.0, 3000]],
    },
    "demand": {"profile": "diurnal", "required": 100, "amplitude": 0.15, "period": 40.0},
    "failures": [{"at": 10.0, "action": "crash_lead", "restart_after": 12.0}],
}
"""The demo: 4 x 5 nodes, 2% loss, supply dipping into a shortage and
recovering, the lead broker crashed at 10 s and restarted at 22 s."""


# ------------------------------------------------------------ arguments


def _common(p: argparse.ArgumentParser) -> None:
    out = p.add_argument_group("output")
    out.add_argument("--json", action="store_true", help="print the summary as one JSON object")
    out.add_argument("--trace", metavar="FILE", help="write every event as JSON lines to FILE")
    out.add_argument(
        "--plot", metavar="FILE", help="draw the run into FILE (PNG; needs matplotlib)"
    )
    out.add_argument(
        "--sequence", metavar="FILE", help="write a Mermaid sequence diagram of the first failover"
    )
    out.add_argument(
        "--progress",
        choices=("auto", "on", "off"),
        default="auto",
        help="progress bar on stderr (auto: only on a terminal)",
    )
    out.add_argument(
        "--check-each-event",
        action="store_true",
        help="check the invariants after every event, not at every sample (slow)",
    )


def add_simulate_arguments(p: argparse.ArgumentParser) -> None:
    """The options of ``powergrid simulate``."""
    p.add_argument("--scenario", metavar="FILE", help="a TOML scenario (options below override it)")
    sc = p.add_argument_group("data centre")
    sc.add_argument("--seed", type=int, help="the run's seed (default 1)")
    sc.add_argument("--duration", type=float, help="virtual seconds (default 30)")
    sc.add_argument("--clusters", type=int, help="clusters (default 4)")
    sc.add_argument("--nodes", type=int, help="servers per cluster (default 5)")
    sc.add_argument("--brokers", type=int, help="broker-capable servers per cluster (default 2)")
    sc.add_argument("--name", help="a name for the run")
    net = p.add_argument_group("network")
    net.add_argument("--latency", type=float, help="link latency, s (default 0.001)")
    net.add_argument("--jitter", type=float, help="extra uniform latency up to this, s")
    net.add_argument("--loss", type=float, help="datagram loss probability 0..1")
    mk = p.add_argument_group("market")
    mk.add_argument("--supply", type=int, metavar="WATTS", help="a constant supply")
    mk.add_argument("--supply-profile", choices=SUPPLY_PROFILES, help="the supply's shape")
    mk.add_argument("--supply-file", metavar="CSV", help="time,watts lines (the file profile)")
    mk.add_argument("--demand", choices=DEMAND_PROFILES, help="the servers' demand profile")
    mk.add_argument("--required", type=int, metavar="WATTS", help="a server's required power")
    fl = p.add_argument_group("failures (repeatable)")
    fl.add_argument("--crash-lead", type=float, action="append", metavar="T", default=[])
    fl.add_argument(
        "--crash-broker", action="append", metavar="CLUSTER@T", default=[], help="e.g. 2@10"
    )
    fl.add_argument(
        "--partition", action="append", metavar="CLUSTER@T", default=[], help="cut a cluster off"
    )
    fl.add_argument(
        "--restart-after", type=float, default=0.0, help="restart crashed nodes after S"
    )
    fl.add_argument("--heal-after", type=float, default=0.0, help="heal partitions after S")
    _common(p)


def add_demo_arguments(p: argparse.ArgumentParser) -> None:
    """The options of ``powergrid demo``."""
    p.add_argument("--out", default="out", metavar="DIR", help="where to write outputs (./out)")
    p.add_argument("--seed", type=int, help="the run's seed (default 1)")
    _common(p)


def _at(text: str, option: str) -> tuple[int, float]:
    try:
        cluster, at = text.split("@")
        return int(cluster), float(at)
    except ValueError:
        raise ConfigError(f"{option} {text!r}: give CLUSTER@TIME, e.g. 2@10.5") from None


def build_scenario(args: argparse.Namespace) -> tuple[Scenario, dict[str, Any]]:
    """The scenario the options (and ``--scenario`` file) describe, and its raw dict.

    Raises :class:`ConfigError` naming the faulty field or option.
    """
    source = "options"
    base = None
    raw: dict[str, Any] = {}
    if args.scenario:
        path = Path(args.scenario)
        raw = load_toml(path)
        source, base = path.name, path.parent
    raw = copy.deepcopy(raw)

    def table(name: str) -> dict[str, Any]:
        t = raw.setdefault(name, {})
        if not isinstance(t, dict):
            raise ConfigError(f"{source}: {name}: give a table")
        return t

    for key in ("seed", "duration", "clusters", "nodes", "brokers", "name"):
        value = getattr(args, key, None)
        if value is not None:
            table("scenario")[key] = value
    for key in ("latency", "jitter", "loss"):
        value = getattr(args, key, None)
        if value is not None:
            table("network")[key] = value
    if args.supply is not None:
        raw["supply"] = {"profile": "constant", "watts": args.supply}
    if args.supply_profile is not None:
        table("supply")["profile"] = args.supply_profile
    if args.supply_file is not None:
        raw["supply"] = {"profile": "file", "file": str(Path(args.supply_file).resolve())}
    if args.demand is not None:
        table("demand")["profile"] = args.demand
    if args.required is not None:
        table("demand")["required"] = args.required
    failures = raw.setdefault("failures", [])
    if not isinstance(failures, list):
        raise ConfigError(f"{source}: failures: give an array of tables")
    for t in args.crash_lead:
        failures.append({"at": t, "action": "crash_lead", "restart_after": args.restart_after})
    for text in args.crash_broker:
        c, t = _at(text, "--crash-broker")
        failures.append(
            {"at": t, "action": "crash_broker", "cluster": c, "restart_after": args.restart_after}
        )
    for text in args.partition:
        c, t = _at(text, "--partition")
        failures.append(
            {"at": t, "action": "partition", "cluster": c, "heal_after": args.heal_after}
        )
    return parse_scenario(raw, source=source, base=base), raw


# ---------------------------------------------------------------- running


class _Progress:
    """A plain-text progress bar on a stream, redrawn at most 10 times a wall second."""

    def __init__(self, stream: IO[str]) -> None:
        self.stream = stream
        self.started = time.monotonic()
        self.last = 0.0

    def __call__(self, now: float, duration: float) -> None:
        wall = time.monotonic()
        done = now >= duration
        if not done and wall - self.last < 0.1:
            return
        self.last = wall
        frac = min(1.0, now / duration) if duration else 1.0
        bar = "#" * int(frac * 30)
        self.stream.write(
            f"\r[{bar:<30}] {frac * 100:5.1f}%  t={now:7.2f}/{duration:g} s  "
            f"wall {wall - self.started:6.1f} s"
        )
        if done:
            self.stream.write("\n")
        self.stream.flush()


def _progress(mode: str) -> _Progress | None:
    return _Progress(sys.stderr) if progress_wanted(mode) else None


def _replay(scenario: Scenario, out_dir: Path) -> str:
    """Write the resolved scenario next to the outputs; the command that replays it."""
    path = out_dir / f"replay-{scenario.name}-seed{scenario.seed}.toml"
    try:
        out_dir.mkdir(parents=True, exist_ok=True)
        path.write_text(scenario_to_toml(scenario))
    except OSError as exc:
        return f"(could not write {path}: {exc.strerror})"
    return f"powergrid simulate --scenario {shlex.quote(str(path))}"


PLOT_GUIDE = (
    "top: power (black the supply, blue what the servers require and could use, orange the "
    "caps they hold, red dots each round's total); middle: price and regime; bottom: who led "
    "each group, crashes (x) and restarts (^). How to read it: docs/simulator.md, "
    '"Reading the demo".'
)
"""What the plot note after a text summary says about the picture."""


def _execute(scenario: Scenario, args: argparse.Namespace, out_dir: Path, demo: bool) -> int:
    if args.plot:
        check_path(args.plot)  # a bad name fails now, not after the run
        if not demo and not plot_available():
            raise PlotUnavailable(f"plots need matplotlib, which is not installed: {INSTALL_HINT}")
    if not args.json:  # say what is being run before running it
        print(format_header(scenario), flush=True)
        print(flush=True)
    trace_file = None
    trace = None
    try:
        if args.trace:
            Path(args.trace).parent.mkdir(parents=True, exist_ok=True)
            trace_file = open(args.trace, "w")  # noqa: SIM115 - closed below
            trace = Trace(file=trace_file)
        sim = Simulation(
            scenario,
            trace=trace,
            progress=_progress(args.progress),
            check_each_event=args.check_each_event,
            capture=bool(args.sequence),
            replay=f"powergrid simulate --scenario {out_dir}/replay-{scenario.name}-seed"
            f"{scenario.seed}.toml",
        )
        result = sim.run()
    finally:
        if trace_file is not None:
            trace_file.close()
    notes: list[str] = []
    if result.violations:
        notes.append(
            f"violations found with seed {scenario.seed}; replay: {_replay(scenario, out_dir)}"
        )
    if args.trace:
        notes.append(f"trace: {args.trace} ({trace.count if trace else 0} lines)")
    if args.sequence:
        Path(args.sequence).parent.mkdir(parents=True, exist_ok=True)
        Path(args.sequence).write_text(sequence_diagram(result))
        notes.append(f"sequence diagram: {args.sequence}")
    if args.plot:
        try:
            guide = textwrap.wrap(PLOT_GUIDE, width=98, initial_indent="  ", subsequent_indent="  ")
            notes.append("\n".join([f"plot: {plot(result, args.plot)}", *guide]))
        except PlotUnavailable as exc:
            if not demo:
                print(f"powergrid simulate: {exc}", file=sys.stderr)
                return 2
            notes.append(f"no plot: matplotlib is not installed; {INSTALL_HINT}")
    if args.json:
        print(json.dumps(summary(result), sort_keys=True))
        for note in notes:
            print(note, file=sys.stderr)
    else:
        print(format_summary(result, header=False))
        if notes:
            print()
            print("\n".join(notes))
    return 1 if result.violations else 0


def run_simulate(args: argparse.Namespace) -> int:
    """``powergrid simulate``: exit 0 if all invariants held, 1 if not, 2 for bad input."""
    try:
        scenario, _ = build_scenario(args)
        out_dir = Path(args.trace or args.plot or args.sequence or "out/x").parent
        return _execute(scenario, args, out_dir, demo=False)
    except (ConfigError, UsageError) as exc:
        print(f"powergrid simulate: {exc}", file=sys.stderr)
        return 2


def run_demo(args: argparse.Namespace) -> int:
    """``powergrid demo``: the default scenario, with the plot and diagram under ``--out``."""
    raw = copy.deepcopy(DEMO)
    if args.seed is not None:
        raw["scenario"]["seed"] = args.seed
    out_dir = Path(args.out)
    try:
        scenario = parse_scenario(raw, source="demo")
        if args.plot is None and plot_available():
            args.plot = str(out_dir / "demo.png")
        if args.sequence is None:
            args.sequence = str(out_dir / "demo-failover.md")
        status = _execute(scenario, args, out_dir, demo=True)
    except (ConfigError, UsageError) as exc:
        print(f"powergrid demo: {exc}", file=sys.stderr)
        return 2
    if args.plot is None and not args.json:
        print(f"no plot: matplotlib is not installed; {INSTALL_HINT}")
    return status
