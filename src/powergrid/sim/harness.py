"""The simulation harness: run a system on the fuzz network and hold it to invariants.

Theory of operation
-------------------
A *system* is a set of node ids and a factory that builds their endpoints
(:class:`System`); a *build* function makes one from the run's ``system``
random stream. An :class:`Invariant` watches every notification the nodes
return (``observe``) and judges the whole network (``check``,
``check_final``). :func:`run_seed` runs one seed in two phases:

1. **Safety** for ``safety_s`` virtual seconds: the faults of the run's
   :class:`~powergrid.sim.fuzz.FaultOptions` (drawn from the seed
   unless given) and :class:`~powergrid.sim.fuzz.FaultSchedule`
   (drawn unless given) are in force; every invariant's ``check`` runs after
   every processed event (delivery, timer, fault). The first problem stops
   the run.
2. **Liveness** for ``liveness_s`` more: the network settles (partitions
   healed, paused nodes resumed, crashed nodes restarted with a new
   incarnation, loss off, pending fault steps cancelled), ``check`` keeps
   running, and at the end ``check_final`` must find that the system
   converged within that bound.

The result (:class:`RunResult`) holds the options, the schedule, the faults
injected by kind, the datagrams delivered, virtual and wall time, the
SHA-256 of the run's trace and the :class:`Violation` list. The same seed
gives the same trace hash, bit for bit; an endpoint that raises is itself a
violation (``raised``). A failing run replays with
``powergrid fuzz --replay SEED`` (drawn options and schedule) or with the
pasteable test from :meth:`RunResult.snippet`.

For Hypothesis, :func:`fault_options` and :func:`schedules` are strategies;
run the system with the drawn values and call :func:`assert_ok`, whose
failure message is the snippet, so a shrunk failure is a ready-made
regression test. Hypothesis is imported only when a strategy is asked for.

Wall time is read (``time.perf_counter``) only to report speed; it never
enters the run or its trace.
"""

from __future__ import annotations

import random
import time
from collections import Counter
from collections.abc import Callable, Iterable, Sequence
from typing import IO, TYPE_CHECKING, Any, Protocol

import attrs

from powergrid.errors import ConfigError
from powergrid.sim.fuzz import (
    Crash,
    Delay,
    FaultOptions,
    FaultSchedule,
    FaultStep,
    FuzzNetwork,
    Heal,
    Isolate,
    LinkFaults,
    Make,
    OneWay,
    Pause,
    Restart,
    Resume,
    SetLoss,
    Split,
    replay_command,
    split_rng,
)
from powergrid.sim.memory import Trace
from powergrid.types import NodeId

if TYPE_CHECKING:
    from hypothesis.strategies import SearchStrategy

__all__ = [
    "Build",
    "Invariant",
    "Invariants",
    "RunResult",
    "Summary",
    "System",
    "Trace",
    "Violation",
    "assert_ok",
    "fault_options",
    "run_seed",
    "run_seeds",
    "schedules",
    "watches",
]


@attrs.frozen(kw_only=True)
class Violation:
    """An invariant broken in the run of ``seed`` at virtual ``time``."""

    seed: int
    invariant: str
    time: float
    detail: str
    replay: str

    def __str__(self) -> str:
        return f"seed {self.seed}: {self.invariant} at t={self.time:.6f}: {self.detail}"


def watches(inv: Invariant, kind: type) -> bool:
    """Whether ``inv`` observes notifications of type ``kind`` (see :meth:`Invariant.observe`)."""
    says = getattr(inv, "watches", None)
    return says is None or bool(says(kind))


class Invariant(Protocol):
    """A property the harness holds the system to. Build a fresh one per run.

    ``check`` and ``check_final`` return problems as text (empty: all well);
    the harness turns them into :class:`Violation` records with the seed,
    the time and the replay command.
    """

    @property
    def name(self) -> str:
        """A short name, e.g. ``"fifo-per-sender"``."""

    def observe(self, time: float, node: NodeId, output: object) -> None:
        """See one notification of ``node`` (also the network's NodeStarted/NodeCrashed).

        An invariant with a ``watches(kind) -> bool`` method sees only the types
        it says it watches (asked once per type); one without sees everything.
        """

    def check(self, network: FuzzNetwork) -> list[str]:
        """Safety: called after every processed event in both phases.

        An invariant whose ``passive`` attribute is true says that its check only
        reports problems its observe found: it is then called only after events
        that brought some invariant a notification.
        """

    def check_final(self, network: FuzzNetwork) -> list[str]:
        """Liveness: called once, after the liveness phase."""


@attrs.frozen(kw_only=True)
class System:
    """What a run starts: ``nodes`` (each spawned at time 0) and their endpoint factory.

    ``info`` is whatever the build wants its invariants to know (initial
    values, configs); the harness does not look at it.
    """

    nodes: tuple[NodeId, ...]
    make: Make
    info: object = None
    fanout_seeds: tuple[NodeId, ...] | None = None
    """None: group sends reach the subscribers (IP multicast); else the run's network is in
    unicast fan-out mode with these seeds (see :class:`~powergrid.sim.memory.MemoryNetwork`)."""


Build = Callable[[random.Random], System]
"""Makes the system under test from the run's ``system`` random stream."""

Invariants = Callable[[System], Iterable[Invariant]]
"""Makes a run's fresh invariants for the system just built."""


@attrs.frozen(kw_only=True)
class RunResult:
    """What one seed's run did and found."""

    seed: int
    options: FaultOptions
    schedule: FaultSchedule
    drawn: bool
    safety_s: float
    liveness_s: float
    faults: dict[str, int]
    sent: int
    messages: int
    virtual_time: float
    wall_time: float
    trace_hash: str
    violations: tuple[Violation, ...]
    trace_lines: tuple[str, ...] | None = None
    recipe: str = ""
    """Python source that defines the names :meth:`snippet` calls the build and the
    invariants by (``build``, ``invariants``), with its imports; empty: the
    reader defines them."""
    power: dict[str, Any] | None = None
    """The power guarantee's figures (:meth:`powergrid.sim.power.PowerFigures.as_json`),
    if an invariant measured them."""
    exempted: dict[str, int] = attrs.field(factory=dict)
    """Cases an invariant did not judge, by exemption name: how many (an invariant's
    ``exempted`` dict; e.g. ``total-order-disjoint-views``)."""

    @property
    def ok(self) -> bool:
        """No invariant was broken."""
        return not self.violations

    def summary(self) -> str:
        """One line: seed, verdict, traffic, faults and the options."""
        verdict = "ok" if self.ok else f"FAIL {self.violations[0]}"
        faults = ",".join(f"{k}={v}" for k, v in sorted(self.faults.items())) or "none"
        return (
            f"seed {self.seed} {verdict} | {self.messages} delivered, "
            f"t={self.virtual_time:g}s, {self.wall_time * 1000:.0f} ms | faults {faults} | "
            f"{self.options}"
        )

    def report(self) -> str:
        """The summary, every violation, and how to replay the run."""
        lines = [self.summary(), *(f"  {v}" for v in self.violations)]
        if not self.ok:
            lines.append(f"  replay: {self.violations[0].replay}")
            lines.append(self.snippet())
        return "\n".join(lines)

    def snippet(self, *, build: str = "build", invariants: str = "invariants") -> str:
        """A pasteable regression test replaying this run's options and schedule.

        With a :attr:`recipe` (``powergrid fuzz`` runs have one) the text is a
        whole test module that runs as it is; without one, ``build`` and
        ``invariants`` name what the reader must define.
        """
        names = {"FaultOptions", "FaultSchedule", "LinkFaults", "Delay"}
        names.update(type(s).__name__ for s in self.schedule.steps)
        imports = ", ".join(sorted(names))
        schedule = self.schedule.to_python(indent="    ").lstrip()
        recipe = f"{self.recipe.rstrip()}\n" if self.recipe else ""
        return (
            f"from powergrid.sim.harness import run_seed\n"
            f"from powergrid.sim.fuzz import {imports}\n"
            f"{recipe}\n\n"
            f"def test_fuzz_seed_{self.seed}() -> None:\n"
            f"    options = {self.options!r}\n"
            f"    schedule = {schedule}\n"
            f"    result = run_seed(\n"
            f"        {self.seed},\n"
            f"        {build},\n"
            f"        {invariants},\n"
            f"        options=options,\n"
            f"        schedule=schedule,\n"
            f"        safety_s={self.safety_s!r},\n"
            f"        liveness_s={self.liveness_s!r},\n"
            f"    )\n"
            f"    assert result.ok, result.report()\n"
        )


class _Stop(Exception):
    pass


def run_seed(
    seed: int,
    build: Build,
    invariants: Invariants,
    *,
    safety_s: float = 10.0,
    liveness_s: float = 10.0,
    options: FaultOptions | None = None,
    schedule: FaultSchedule | None = None,
    keep_trace: bool = False,
    trace_file: IO[str] | None = None,
    replay: str | None = None,
    recipe: str = "",
) -> RunResult:
    """Run ``seed`` through the safety and liveness phases (see the module docstring).

    ``invariants(system)`` is called once to make this run's fresh invariants.
    ``options`` and ``schedule`` default to the ones drawn from ``seed``.
    ``replay`` is the shell command a violation of a drawn run names (default
    ``powergrid fuzz --replay SEED``: give the full command when the build
    took options); ``recipe`` goes to :attr:`RunResult.recipe`.
    Raises :class:`ConfigError` for a negative phase length.
    """
    if not (safety_s >= 0 and liveness_s >= 0):
        raise ConfigError(f"phase lengths {safety_s}, {liveness_s} must be >= 0 seconds")
    started = time.perf_counter()
    drawn = options is None and schedule is None
    if options is None:
        options = FaultOptions.draw(split_rng(seed, "swarm"))
    system = build(split_rng(seed, "system"))
    if schedule is None:
        schedule = FaultSchedule.draw(options, system.nodes, safety_s, seed=seed)
    if not drawn:
        replay = "the options and schedule of RunResult.snippet()"
    elif replay is None:
        replay = replay_command(seed)
    checks = list(invariants(system))
    trace = Trace(keep=keep_trace, file=trace_file)
    violations: list[Violation] = []
    watchers: dict[type, list[Invariant]] = {}  # notification type -> invariants
    active = [inv for inv in checks if not getattr(inv, "passive", False)]
    observed = True  # a notification was observed since the last check

    def observe(t: float, node: NodeId, output: object) -> None:
        nonlocal observed
        observed = True
        kind = type(output)
        those = watchers.get(kind)
        if those is None:
            those = watchers[kind] = [inv for inv in checks if watches(inv, kind)]
        for inv in those:
            inv.observe(t, node, output)

    net = FuzzNetwork(
        seed=seed,
        make=system.make,
        link=options.link,
        observer=observe,
        keep_log=False,
        trace=trace,
        fanout_seeds=system.fanout_seeds,
    )

    def record(name: str, problems: list[str]) -> None:
        violations.extend(
            Violation(seed=seed, invariant=name, time=net.now, detail=p, replay=replay)
            for p in problems
        )

    def check() -> None:
        nonlocal observed
        for inv in checks if observed else active:
            problems = inv.check(net)
            if problems:
                record(inv.name, problems)
        observed = False
        if violations:
            raise _Stop

    try:
        for node in sorted(system.nodes):
            net.spawn(node)
        net.schedule(schedule)
        check()
        net.run_until(safety_s, on_event=check)
        net.settle()
        check()
        net.run_until(safety_s + liveness_s, on_event=check)
        for inv in checks:
            record(inv.name, inv.check_final(net))
    except _Stop:
        pass
    except Exception as exc:  # an endpoint raised: that is the bug to report
        record("raised", [f"{type(exc).__name__}: {exc}"])
    power = next(
        (inv.figures(net.now).as_json() for inv in checks if hasattr(inv, "figures")), None
    )
    exempted: Counter[str] = Counter()
    for inv in checks:
        exempted.update(getattr(inv, "exempted", {}))
    return RunResult(
        seed=seed,
        power=power,
        exempted=dict(sorted(exempted.items())),
        options=options,
        schedule=schedule,
        drawn=drawn,
        safety_s=safety_s,
        liveness_s=liveness_s,
        faults=dict(sorted(net.faults.items())),
        sent=net.stats.sent,
        messages=net.stats.delivered,
        virtual_time=net.now,
        wall_time=time.perf_counter() - started,
        trace_hash=trace.hexdigest,
        violations=tuple(violations),
        trace_lines=tuple(trace.lines) if trace.lines is not None else None,
        recipe=recipe,
    )


@attrs.frozen(kw_only=True)
class Summary:
    """The outcome of many seeds."""

    results: tuple[RunResult, ...]
    wall_time: float

    @property
    def failures(self) -> tuple[RunResult, ...]:
        """The runs that broke an invariant."""
        return tuple(r for r in self.results if not r.ok)

    @property
    def seeds_per_second(self) -> float:
        """Seeds run per wall-clock second."""
        return len(self.results) / self.wall_time if self.wall_time > 0 else float("inf")

    @property
    def faults(self) -> dict[str, int]:
        """Faults injected over all runs, by kind."""
        total: dict[str, int] = {}
        for r in self.results:
            for k, v in r.faults.items():
                total[k] = total.get(k, 0) + v
        return dict(sorted(total.items()))

    def format(self) -> str:
        """A short text report: counts, speed, faults, and each failure's replay."""
        n, bad = len(self.results), self.failures
        lines = [
            f"{n} seeds, {n - len(bad)} ok, {len(bad)} failed, {self.seeds_per_second:.1f} seeds/s",
            "faults: " + (", ".join(f"{k}={v}" for k, v in self.faults.items()) or "none"),
        ]
        for r in bad:
            lines.append(f"  {r.violations[0]}  (replay: {r.violations[0].replay})")
        return "\n".join(lines)


def run_seeds(
    seeds: Iterable[int],
    build: Build,
    invariants: Invariants,
    *,
    safety_s: float = 10.0,
    liveness_s: float = 10.0,
    stop_after: int | None = None,
    progress: Callable[[RunResult], object] | None = None,
) -> Summary:
    """Run each of ``seeds`` with :func:`run_seed` (drawn options and schedules).

    Stops early after ``stop_after`` failures; ``progress`` is called with
    each result.
    """
    started = time.perf_counter()
    results: list[RunResult] = []
    failed = 0
    for seed in seeds:
        result = run_seed(seed, build, invariants, safety_s=safety_s, liveness_s=liveness_s)
        results.append(result)
        if progress is not None:
            progress(result)
        failed += not result.ok
        if stop_after is not None and failed >= stop_after:
            break
    return Summary(results=tuple(results), wall_time=time.perf_counter() - started)


def assert_ok(result: RunResult) -> None:
    """Raise AssertionError with the report and a pasteable test if ``result`` failed."""
    if not result.ok:
        raise AssertionError(result.report())


# ------------------------------------------------------------- hypothesis


def fault_options() -> SearchStrategy[FaultOptions]:
    """Hypothesis strategy for the link part of :class:`FaultOptions` (no drawn episodes).

    Episodes come from :func:`schedules`, so shrinking acts on explicit steps.
    """
    from hypothesis import strategies as st  # noqa: PLC0415

    prob = st.sampled_from([0.0, 0.01, 0.05, 0.1, 0.3])
    delay = st.builds(
        Delay,
        kind=st.sampled_from(["constant", "uniform", "exponential"]),
        base=st.sampled_from([0.001, 0.0005, 0.005]),
        spread=st.sampled_from([0.0, 0.001, 0.01, 0.05]),
    )
    link = st.builds(
        LinkFaults,
        loss=prob,
        duplicate=prob,
        reorder=prob,
        reorder_window=st.sampled_from([0.01, 0.05]),
        delay=delay,
    )
    return st.builds(FaultOptions, intensity=st.just("hypothesis"), link=link)


def schedules(
    nodes: Sequence[int], duration: float, *, max_steps: int = 8
) -> SearchStrategy[FaultSchedule]:
    """Hypothesis strategy for fault schedules over ``nodes`` within ``[0, duration)``.

    Shrinks towards fewer steps, earlier times and the first node.
    """
    from hypothesis import strategies as st  # noqa: PLC0415

    if not nodes or duration <= 0:
        raise ConfigError("schedules needs at least one node and a positive duration")
    ids = sorted(nodes)
    at = st.integers(0, max(0, int(duration * 1000) - 1)).map(lambda ms: ms / 1000)
    node = st.sampled_from(ids)
    some = st.lists(node, min_size=1, max_size=len(ids), unique=True).map(
        lambda xs: tuple(sorted(xs))
    )
    step: SearchStrategy[FaultStep] = st.one_of(
        st.builds(Crash, at=at, node=node),
        st.builds(Restart, at=at, node=node),
        st.builds(Heal, at=at),
        st.builds(Isolate, at=at, node=node),
        st.builds(Split, at=at, groups=some.map(lambda g: (g,))),
        st.builds(OneWay, at=at, senders=some, receivers=some),
        st.builds(Pause, at=at, node=node),
        st.builds(Resume, at=at, node=node),
        st.builds(SetLoss, at=at, loss=st.sampled_from([0.0, 0.2, 0.5, 1.0])),
    )
    return st.lists(step, max_size=max_steps).map(lambda xs: FaultSchedule(tuple(xs)))
