"""Scenarios: what a simulated data centre looks like and what happens to it.

A :class:`Scenario` is plain data: the clusters and their nodes, which nodes
may become brokers (and their ranks), the network (latency, jitter, loss), a
supply profile, a demand profile and a schedule of failures. It is built from
a TOML document (:func:`load_scenario`, :func:`parse_scenario`) or from a plain
dict (the CLI merges its options into one). Every problem raises
:class:`~powergrid.errors.ConfigError` with a message that names the field,
e.g. ``demo.toml: supply.steps[1]: give [time, watts], got 3``.

The profiles are pure functions of time (and, for random demand, of a
``random.Random`` passed in), so a scenario and a seed fix the whole run.
"""

from __future__ import annotations

import math
import random
import tomllib
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import attrs

from powergrid.errors import ConfigError
from powergrid.protocols.market import Bid

__all__ = [
    "ACTIONS",
    "DEMAND_PROFILES",
    "SUPPLY_PROFILES",
    "DemandModel",
    "DemandSpec",
    "Failure",
    "NetworkSpec",
    "Scenario",
    "SupplySpec",
    "load_scenario",
    "parse_scenario",
    "scenario_to_toml",
]

SUPPLY_PROFILES = ("constant", "steps", "solar", "file")
DEMAND_PROFILES = ("steady", "diurnal", "random_walk", "batch")
ACTIONS = (
    "crash_lead",
    "crash_broker",
    "crash",
    "restart",
    "partition",
    "isolate",
    "heal",
    "join",
    "leave",
    "loss",
)
MAX_NODES_PER_CLUSTER = 50_000


# ------------------------------------------------------------------ specs


@attrs.frozen(kw_only=True)
class NetworkSpec:
    """Links: ``latency`` s (plus up to ``jitter`` s, uniform), ``loss``/``duplicate`` 0..1."""

    latency: float = 0.001
    jitter: float = 0.0
    loss: float = 0.0
    duplicate: float = 0.0


@attrs.frozen(kw_only=True)
class SupplySpec:
    """The usable supply (watts) over time.

    ``constant``: ``watts`` (None: 1.5 x the nodes' total required power).
    ``steps``: ``steps`` of ``(time, watts)``, each holding until the next.
    ``solar``: ``base`` at night, ``base + peak`` at noon; a day lasts
    ``period`` s (None: the run), daylight from ``sunrise`` to ``sunset``
    (fractions of the day). ``file``: steps read from a CSV of ``time,watts``.
    The lead broker is told the value every ``interval`` s (when it changes).
    """

    profile: str = "constant"
    watts: int | None = None
    steps: tuple[tuple[float, int], ...] = ()
    base: int = 0
    peak: int = 0
    period: float | None = None
    sunrise: float = 0.25
    sunset: float = 0.75
    file: str | None = None
    interval: float = 1.0

    def at(self, t: float, *, default: int, duration: float) -> int:
        """The supply in watts at time ``t`` (``default`` for a constant without watts)."""
        if self.profile == "constant":
            return default if self.watts is None else self.watts
        if self.profile in ("steps", "file"):
            value = self.steps[0][1]
            for when, watts in self.steps:
                if when > t:
                    break
                value = watts
            return value
        period = self.period or duration
        f = (t / period) % 1.0
        if not self.sunrise <= f <= self.sunset:
            return self.base
        sun = math.sin(math.pi * (f - self.sunrise) / (self.sunset - self.sunrise))
        return self.base + round(self.peak * sun)


@attrs.frozen(kw_only=True)
class DemandSpec:
    """What each server bids over time, in watts.

    Every server's required power ``r`` follows the profile around
    ``required``: ``steady`` (fixed, each server within ``spread`` of it),
    ``diurnal`` (a sine of relative ``amplitude`` and ``period`` s),
    ``random_walk`` (steps of ``step`` x required per ``interval``, kept within
    ``amplitude``) or ``batch`` (a ``fraction`` of servers run flexible batch
    jobs of about ``job_s`` s separated by about ``idle_s`` s; the rest are
    steady). A bid is ``floor = floor_ratio x r``, ``r``,
    ``maximum = (1 + headroom) x r``, rounded to ``quantum`` W, in one of
    ``priorities`` classes (server index mod priorities). Bids are updated
    every ``interval`` s.
    """

    profile: str = "steady"
    required: int = 100
    headroom: float = 1.0
    floor_ratio: float = 0.5
    spread: float = 0.0
    amplitude: float = 0.3
    period: float | None = None
    step: float = 0.05
    fraction: float = 0.3
    job_s: float = 10.0
    idle_s: float = 10.0
    interval: float = 1.0
    quantum: int = 10
    priorities: int = 1


@attrs.frozen(kw_only=True)
class Failure:
    """One scheduled event at ``at`` s (see ``docs/simulator.md`` for each ``action``).

    ``cluster`` 1..clusters (0: every cluster, for join/leave), ``node`` the
    server index in its cluster, ``count`` for join/leave waves,
    ``restart_after``/``heal_after`` s (0: never), ``loss`` for ``loss``.
    """

    at: float
    action: str
    cluster: int = 0
    node: int = 0
    count: int = 1
    restart_after: float = 0.0
    heal_after: float = 0.0
    loss: float = 0.0


@attrs.frozen(kw_only=True)
class Scenario:
    """A whole simulated run (see the module docstring). Build with :func:`parse_scenario`."""

    name: str = "scenario"
    seed: int = 1
    duration: float = 30.0
    clusters: int = 4
    nodes: int = 5
    brokers: int = 2
    ranks: tuple[int, ...] = ()
    sample_interval: float | None = None
    network: NetworkSpec = NetworkSpec()
    supply: SupplySpec = SupplySpec()
    demand: DemandSpec = DemandSpec()
    failures: tuple[Failure, ...] = ()

    @property
    def node_count(self) -> int:
        """Servers at the start."""
        return self.clusters * self.nodes

    @property
    def sample_every(self) -> float:
        """Seconds between samples of the run's state (plots, checks)."""
        if self.sample_interval is not None:
            return self.sample_interval
        return max(0.05, self.duration / 600)

    def rank_of(self, index: int) -> int:
        """The rank of server ``index`` of a cluster (0 unless it is a ranked broker)."""
        return self.ranks[index] if index < len(self.ranks) else 0

    def default_supply(self) -> int:
        """1.5 x the required power of every server at the start (a constant's default)."""
        return self.node_count * self.demand.required * 3 // 2

    def supply_at(self, t: float) -> int:
        """The usable supply (watts) at time ``t``."""
        return self.supply.at(t, default=self.default_supply(), duration=self.duration)


# ---------------------------------------------------------------- demand


class DemandModel:
    """Each server's bid over time; deterministic for a given ``rng``.

    ``bid(key, index, t)`` is the bid of the server ``key`` (any hashable,
    e.g. its node id), the ``index``-th of its cluster, at ``t``. Random
    profiles draw from ``rng`` in the order of the calls, so call it for
    servers in a fixed order.
    """

    def __init__(self, spec: DemandSpec, rng: random.Random, duration: float) -> None:
        self.spec = spec
        self.rng = rng
        self.duration = duration
        self._state: dict[int, list[float]] = {}

    def floor_bound(self) -> int:
        """An upper bound (watts) on any server's floor at any time, whatever the profile:
        what the data centre provisions per server for its join reserve."""
        spec = self.spec
        q = spec.quantum
        req = spec.required * (1 + spec.spread) * (1 + spec.amplitude) + q
        return math.ceil(max(q, req * max(spec.floor_ratio, 0.125) + q))

    def _init(self, key: int, t: float) -> list[float]:
        spec, rng = self.spec, self.rng
        # [base factor, phase, walk value, batch flag, batch running, batch next switch]
        base = 1.0 + spec.spread * (2 * rng.random() - 1)
        phase = (rng.random() - 0.5) * 0.6
        batch = 1.0 if spec.profile == "batch" and rng.random() < spec.fraction else 0.0
        running = 1.0 if rng.random() < 0.5 else 0.0
        switch = t + rng.expovariate(1.0 / (spec.job_s if running else spec.idle_s))
        state = [base, phase, 1.0, batch, running, switch]
        self._state[key] = state
        return state

    def bid(self, key: int, index: int, t: float) -> Bid:
        spec = self.spec
        st = self._state.get(key) or self._init(key, t)
        r = spec.required * st[0]
        if spec.profile == "diurnal":
            period = spec.period or self.duration
            r *= 1 + spec.amplitude * math.sin(2 * math.pi * t / period + st[1])
        elif spec.profile == "random_walk":
            lo, hi = 1 - spec.amplitude, 1 + spec.amplitude
            st[2] = min(hi, max(lo, st[2] + spec.step * self.rng.gauss(0.0, 1.0)))
            r *= st[2]
        elif spec.profile == "batch" and st[3]:
            while t >= st[5]:
                st[4] = 0.0 if st[4] else 1.0
                st[5] += self.rng.expovariate(1.0 / (spec.job_s if st[4] else spec.idle_s))
            if not st[4]:
                q = spec.quantum
                idle = max(q, round(r * 0.1 / q) * q)
                return Bid(floor=idle, required=idle, maximum=idle, priority=0)
            # a running batch job: needs half, can use a lot more (flexible)
            q = spec.quantum
            req = max(q, round(r * 0.5 / q) * q)
            top = max(req, round(r * (1 + spec.headroom) * 1.5 / q) * q)
            return Bid(floor=req // 4, required=req, maximum=top, priority=0)
        q = spec.quantum
        req = max(q, round(r / q) * q)
        top = max(req, round(req * (1 + spec.headroom) / q) * q)
        low = min(req, round(req * spec.floor_ratio / q) * q)
        return Bid(floor=low, required=req, maximum=top, priority=index % spec.priorities)


# --------------------------------------------------------------- parsing


class _Reader:
    """Reads one TOML table, naming ``where.key`` in every error."""

    def __init__(self, source: str, where: str, table: object) -> None:
        if not isinstance(table, Mapping):
            raise ConfigError(f"{source}: {where}: give a table, got {table!r}")
        self.source = source
        self.where = where
        self.table: Mapping[str, Any] = table
        self.used: set[str] = set()

    def path(self, key: str) -> str:
        return f"{self.where}.{key}" if self.where else key

    def fail(self, key: str, what: str) -> ConfigError:
        return ConfigError(f"{self.source}: {self.path(key)}: {what}")

    def get(self, key: str, kind: str, default: Any) -> Any:
        self.used.add(key)
        if key not in self.table:
            return default
        v = self.table[key]
        if kind == "int":
            if type(v) is not int:
                raise self.fail(key, f"give a whole number, got {v!r}")
        elif kind == "float":
            if type(v) not in (int, float) or not math.isfinite(v):
                raise self.fail(key, f"give a number, got {v!r}")
            v = float(v)
        elif kind == "str" and not isinstance(v, str):
            raise self.fail(key, f"give a string, got {v!r}")
        return v

    def number(self, key: str, default: float, lo: float, hi: float = math.inf) -> float:
        v: float = self.get(key, "float", default)
        if not lo <= v <= hi:
            bound = f"{lo:g}..{hi:g}" if hi != math.inf else f">= {lo:g}"
            raise self.fail(key, f"{v:g} is out of range; give a value {bound}")
        return v

    def positive(self, key: str, default: float) -> float:
        v: float = self.get(key, "float", default)
        if not v > 0:
            raise self.fail(key, f"{v:g} must be > 0 seconds")
        return v

    def whole(self, key: str, default: int, lo: int, hi: int = 2**62) -> int:
        v: int = self.get(key, "int", default)
        if not lo <= v <= hi:
            raise self.fail(key, f"{v} is out of range; give {lo}..{hi}")
        return v

    def choice(self, key: str, default: str, options: Sequence[str]) -> str:
        v: str = self.get(key, "str", default)
        if v not in options:
            raise self.fail(key, f"{v!r} is not one of {', '.join(options)}")
        return v

    def done(self) -> None:
        extra = sorted(set(self.table) - self.used)
        if extra:
            known = ", ".join(sorted(self.used))
            raise self.fail(extra[0], f"unknown field; the fields here are: {known}")


def _steps(r: _Reader, raw: object) -> tuple[tuple[float, int], ...]:
    if not isinstance(raw, list) or not raw:
        raise r.fail("steps", "give a non-empty list of [time, watts] pairs")
    out: list[tuple[float, int]] = []
    for i, item in enumerate(raw):
        where = f"steps[{i}]"
        if not isinstance(item, list) or len(item) != 2:
            raise r.fail(where, f"give [time, watts], got {item!r}")
        t, w = item
        if type(t) not in (int, float) or not t >= 0:
            raise r.fail(where, f"time {t!r} must be a number >= 0")
        if type(w) is not int or w < 0:
            raise r.fail(where, f"watts {w!r} must be a whole number >= 0")
        if out and t <= out[-1][0]:
            raise r.fail(where, f"time {t} must be after the previous step's {out[-1][0]}")
        out.append((float(t), w))
    return tuple(out)


def _read_supply_file(r: _Reader, name: str, base: Path | None) -> tuple[tuple[float, int], ...]:
    path = Path(name)
    if base is not None and not path.is_absolute():
        path = base / path
    try:
        text = path.read_text()
    except OSError as exc:
        raise r.fail("file", f"cannot read {str(path)!r}: {exc.strerror}") from exc
    rows: list[list[Any]] = []
    for n, line in enumerate(text.splitlines(), 1):
        line = line.split("#", 1)[0].strip()
        if not line or line.lower().startswith("time"):
            continue
        parts = [p.strip() for p in line.split(",")]
        try:
            if len(parts) != 2:
                raise ValueError
            rows.append([float(parts[0]), int(float(parts[1]))])
        except ValueError:
            raise r.fail("file", f"{path.name} line {n}: give 'time,watts', got {line!r}") from None
    return _steps(_Reader(f"{r.source} ({path.name})", r.where, {}), rows)


def _network(source: str, raw: object) -> NetworkSpec:
    r = _Reader(source, "network", raw)
    spec = NetworkSpec(
        latency=r.number("latency", 0.001, 0.0, 10.0),
        jitter=r.number("jitter", 0.0, 0.0, 10.0),
        loss=r.number("loss", 0.0, 0.0, 1.0),
        duplicate=r.number("duplicate", 0.0, 0.0, 1.0),
    )
    r.done()
    return spec


def _supply(source: str, raw: object, base: Path | None) -> SupplySpec:
    r = _Reader(source, "supply", raw)
    profile = r.choice("profile", "constant", SUPPLY_PROFILES)
    watts = r.get("watts", "int", None)
    if watts is not None and watts < 0:
        raise r.fail("watts", f"{watts} must be >= 0")
    raw_steps = r.get("steps", "any", None)
    steps: tuple[tuple[float, int], ...] = ()
    if profile == "steps":
        if raw_steps is None:
            raise r.fail("steps", "the steps profile needs steps = [[time, watts], ...]")
        steps = _steps(r, raw_steps)
    elif raw_steps is not None:
        raise r.fail("steps", f"only the steps profile takes steps (profile is {profile!r})")
    file = r.get("file", "str", None)
    if profile == "file":
        if file is None:
            raise r.fail("file", "the file profile needs file = 'supply.csv' (time,watts lines)")
        steps = _read_supply_file(r, file, base)
    period = r.get("period", "float", None)
    if period is not None and not period > 0:
        raise r.fail("period", f"{period:g} must be > 0 seconds")
    spec = SupplySpec(
        profile=profile,
        watts=watts,
        steps=steps,
        base=r.whole("base", 0, 0),
        peak=r.whole("peak", 0, 0),
        period=period,
        sunrise=r.number("sunrise", 0.25, 0.0, 1.0),
        sunset=r.number("sunset", 0.75, 0.0, 1.0),
        file=file,
        interval=r.positive("interval", 1.0),
    )
    if profile == "solar" and not spec.sunrise < spec.sunset:
        raise r.fail("sunset", f"{spec.sunset:g} must be after sunrise ({spec.sunrise:g})")
    r.done()
    return spec


def _demand(source: str, raw: object) -> DemandSpec:
    r = _Reader(source, "demand", raw)
    period = r.get("period", "float", None)
    if period is not None and not period > 0:
        raise r.fail("period", f"{period:g} must be > 0 seconds")
    spec = DemandSpec(
        profile=r.choice("profile", "steady", DEMAND_PROFILES),
        required=r.whole("required", 100, 1, 2**24),
        headroom=r.number("headroom", 1.0, 0.0, 100.0),
        floor_ratio=r.number("floor_ratio", 0.5, 0.0, 1.0),
        spread=r.number("spread", 0.0, 0.0, 0.9),
        amplitude=r.number("amplitude", 0.3, 0.0, 0.9),
        period=period,
        step=r.number("step", 0.05, 0.0, 1.0),
        fraction=r.number("fraction", 0.3, 0.0, 1.0),
        job_s=r.positive("job_s", 10.0),
        idle_s=r.positive("idle_s", 10.0),
        interval=r.positive("interval", 1.0),
        quantum=r.whole("quantum", 10, 1, 10_000),
        priorities=r.whole("priorities", 1, 1, 16),
    )
    r.done()
    return spec


def _failure(source: str, i: int, raw: object, sc: dict[str, Any]) -> Failure:
    r = _Reader(source, f"failures[{i}]", raw)
    if "action" not in r.table:
        raise r.fail("action", f"missing; give one of {', '.join(ACTIONS)}")
    if "at" not in r.table:
        raise r.fail("at", "missing; give the time in seconds")
    action = r.choice("action", "", ACTIONS)
    f = Failure(
        at=r.number("at", 0.0, 0.0, sc["duration"]),
        action=action,
        cluster=r.whole("cluster", 0, 0, sc["clusters"]),
        node=r.whole("node", 0, 0, MAX_NODES_PER_CLUSTER - 1),
        count=r.whole("count", 1, 1, MAX_NODES_PER_CLUSTER),
        restart_after=r.number("restart_after", 0.0, 0.0),
        heal_after=r.number("heal_after", 0.0, 0.0),
        loss=r.number("loss", 0.0, 0.0, 1.0),
    )
    needs_cluster = action in ("crash_broker", "crash", "restart", "partition", "isolate")
    if needs_cluster and f.cluster == 0:
        raise r.fail("cluster", f"{action} needs cluster = 1..{sc['clusters']}")
    if action in ("crash", "restart", "isolate") and f.node >= sc["nodes"]:
        raise r.fail("node", f"{f.node} is not a server index of a cluster (0..{sc['nodes'] - 1})")
    r.done()
    return f


def parse_scenario(
    data: Mapping[str, Any], *, source: str = "scenario", base: Path | None = None
) -> Scenario:
    """A scenario from a TOML-shaped dict; ``base`` resolves a supply file's relative path.

    Raises :class:`ConfigError` naming the faulty field.
    """
    top = _Reader(source, "", data)
    r = _Reader(source, "scenario", top.get("scenario", "any", {}))
    sc: dict[str, Any] = {
        "name": r.get("name", "str", "scenario"),
        "seed": r.whole("seed", 1, 0, 2**63),
        "duration": r.positive("duration", 30.0),
        "clusters": r.whole("clusters", 4, 1, 65_535),
        "nodes": r.whole("nodes", 5, 1, MAX_NODES_PER_CLUSTER),
    }
    sc["brokers"] = r.whole("brokers", min(2, sc["nodes"]), 1, sc["nodes"])
    ranks = r.get("ranks", "any", [])
    if not isinstance(ranks, list) or any(type(x) is not int or not 0 <= x < 2**16 for x in ranks):
        raise r.fail("ranks", f"give a list of whole numbers 0..65535, got {ranks!r}")
    if len(ranks) > sc["brokers"]:
        raise r.fail("ranks", f"{len(ranks)} ranks for {sc['brokers']} broker-capable servers")
    sc["ranks"] = tuple(ranks)
    sample = r.get("sample_interval", "float", None)
    if sample is not None and not sample > 0:
        raise r.fail("sample_interval", f"{sample:g} must be > 0 seconds")
    sc["sample_interval"] = sample
    r.done()
    raw_failures = top.get("failures", "any", [])
    if not isinstance(raw_failures, list):
        raise top.fail("failures", "give an array of tables: [[failures]] at = ..., action = ...")
    failures = tuple(_failure(source, i, f, sc) for i, f in enumerate(raw_failures))
    scenario = Scenario(
        network=_network(source, top.get("network", "any", {})),
        supply=_supply(source, top.get("supply", "any", {}), base),
        demand=_demand(source, top.get("demand", "any", {})),
        failures=tuple(sorted(failures, key=lambda f: f.at)),
        **sc,
    )
    top.done()
    return scenario


def load_toml(path: str | Path) -> dict[str, Any]:
    """Read a TOML file. Raises :class:`ConfigError` naming the file and the syntax error."""
    p = Path(path)
    try:
        with p.open("rb") as fh:
            return tomllib.load(fh)
    except OSError as exc:
        raise ConfigError(f"cannot read scenario file {str(p)!r}: {exc.strerror}") from exc
    except tomllib.TOMLDecodeError as exc:
        raise ConfigError(f"{p.name}: not valid TOML: {exc}") from exc


def load_scenario(path: str | Path) -> Scenario:
    """The scenario in the TOML file ``path``. Raises :class:`ConfigError`."""
    p = Path(path)
    return parse_scenario(load_toml(p), source=p.name, base=p.parent)


# --------------------------------------------------------------- writing


def _toml_value(v: object) -> str:
    if isinstance(v, bool):
        return "true" if v else "false"
    if isinstance(v, int):
        return str(v)
    if isinstance(v, float):
        return repr(v)
    if isinstance(v, str):
        return '"' + v.replace("\\", "\\\\").replace('"', '\\"') + '"'
    if isinstance(v, (list, tuple)):
        return "[" + ", ".join(_toml_value(x) for x in v) + "]"
    raise TypeError(f"cannot write {v!r} as TOML")


def _toml_table(name: str, fields: Mapping[str, object], *, array: bool = False) -> list[str]:
    head = f"[[{name}]]" if array else f"[{name}]"
    body = [f"{k} = {_toml_value(v)}" for k, v in fields.items() if v is not None]
    return [head, *body, ""]


def scenario_to_toml(s: Scenario) -> str:
    """``s`` as a TOML document that :func:`parse_scenario` reads back to an equal scenario.

    A ``file`` supply is written as its steps, so the document stands alone.
    """
    top = {
        "name": s.name,
        "seed": s.seed,
        "duration": s.duration,
        "clusters": s.clusters,
        "nodes": s.nodes,
        "brokers": s.brokers,
        "ranks": list(s.ranks),
        "sample_interval": s.sample_interval,
    }
    supply = attrs.asdict(s.supply, recurse=False)
    if supply["profile"] == "file":
        supply["profile"] = "steps"
        supply["file"] = None
    if supply["profile"] != "steps":
        supply.pop("steps")
    else:
        supply["steps"] = [[t, w] for t, w in s.supply.steps]
    lines = ["# written by powergrid simulate; replays the run exactly", ""]
    lines += _toml_table("scenario", top)
    lines += _toml_table("network", attrs.asdict(s.network))
    lines += _toml_table("supply", supply)
    lines += _toml_table("demand", attrs.asdict(s.demand))
    for f in s.failures:
        lines += _toml_table("failures", attrs.asdict(f), array=True)
    return "\n".join(lines)
