"""The fuzz network: the memory network plus faults drawn from one seed.

Theory of operation
-------------------
:class:`FuzzNetwork` is a :class:`~powergrid.sim.memory.MemoryNetwork`
whose links and processes misbehave. Everything it does is a function of its
``seed``: the same seed and the same endpoints replay the same run, bit for
bit (compare :attr:`Trace.hexdigest`).

*Independent random streams.* The seed is split into one ``random.Random``
per concern (:func:`split_rng`): ``loss``, ``duplicate``, ``reorder`` and
``delay`` for the links, ``partitions`` and ``process`` for the schedule,
``swarm`` for the options, ``system`` for the system under test. A stream is
only drawn from by its own concern, so switching one fault kind on never
shifts the draws of another.

*The fault model.*

* Links (per directed link; a default for all, overrides with
  :meth:`FuzzNetwork.set_link`): loss, duplication (a second copy with its own
  delay), reordering (a copy held back by up to ``reorder_window`` seconds so
  later ones overtake it) and delay (:class:`Delay`: constant, uniform, or
  exponential with a capped tail).
* Partitions: :class:`Isolate` one node, :class:`Split` into groups,
  :class:`OneWay` (``senders``' datagrams to ``receivers`` are lost, the other
  direction works), :class:`Heal`. Flapping is a schedule pattern: splits and
  heals alternating with stability windows. Partitions are checked when a
  datagram is sent; a datagram already in flight still arrives.
* Processes: :class:`Crash` discards the endpoint (volatile state is lost) and
  the datagrams in flight to it and its timer vanish; :class:`Restart` builds
  a fresh endpoint at the same address with the next incarnation through the
  ``make(node_id, incarnation)`` factory; :class:`Pause` freezes a node
  (deliveries queue, the timer holds) until :class:`Resume`.
* :class:`SetLoss` changes the default link loss.

A fault that does not apply (crash a node that is down, resume one that is not
paused, restart without a factory) is skipped and counted as ``skipped``: a
schedule built by Hypothesis may be nonsense and must still run.

*Fault schedules are data.* :class:`FaultSchedule` is a tuple of timed steps.
:meth:`FaultSchedule.draw` draws one from a seed and :class:`FaultOptions`;
Hypothesis builds them too (``powergrid.sim.harness.schedules``) so a failure
shrinks to a minimal schedule. :meth:`FaultSchedule.to_python` prints it as
code to paste into a test. :class:`FaultOptions` are the swarm-testing knobs:
:meth:`FaultOptions.draw` turns a random subset of fault kinds on, at a
random strength (some seeds calm, some brutal), and prints as text or JSON.

The network tells the observer (and the trace) about process faults with
:class:`NodeStarted` and :class:`NodeCrashed` notifications, so invariants
know when a node's volatile state began or ended.
"""

from __future__ import annotations

import json
import random
from collections.abc import Callable, Sequence
from typing import Any, ClassVar, Literal

import attrs

from powergrid.errors import ConfigError, UsageError
from powergrid.events import Endpoint
from powergrid.sim.memory import MemoryNetwork, Observer, Trace
from powergrid.types import Incarnation, NodeId

__all__ = [
    "PARTITION_KINDS",
    "Crash",
    "Delay",
    "FaultOptions",
    "FaultSchedule",
    "FaultStep",
    "FuzzNetwork",
    "Heal",
    "Isolate",
    "LinkFaults",
    "Make",
    "NodeCrashed",
    "NodeStarted",
    "OneWay",
    "Pause",
    "Restart",
    "Resume",
    "SetLoss",
    "Split",
    "replay_command",
    "split_rng",
]

Make = Callable[[NodeId, Incarnation], Endpoint]
"""Builds the endpoint for ``node_id`` in its ``incarnation`` (1 for the first life)."""

PARTITION_KINDS = ("isolate", "split", "one_way")


def split_rng(seed: int, concern: str) -> random.Random:
    """The independent random stream of ``concern`` for ``seed`` (stable across runs and hosts)."""
    return random.Random(f"powergrid/{seed}/{concern}")


def replay_command(seed: int) -> str:
    """The shell command that replays the run of ``seed``."""
    return f"powergrid fuzz --replay {seed}"


def _probability(name: str, value: float) -> None:
    if not 0.0 <= value <= 1.0:
        raise ConfigError(f"{name} is {value!r}; give a probability in 0..1")


def _non_negative(name: str, value: float) -> None:
    if not value >= 0:
        raise ConfigError(f"{name} is {value!r}; give a value >= 0")


# ------------------------------------------------------------------ links


@attrs.frozen(kw_only=True)
class Delay:
    """Link delay in seconds: ``base`` plus a random part.

    ``constant``: ``base``. ``uniform``: ``base + U(0, spread)``.
    ``exponential``: ``base + min(Exp(mean=spread), cap)``, a long but
    bounded tail.
    """

    kind: Literal["constant", "uniform", "exponential"] = "constant"
    base: float = 0.001
    spread: float = 0.0
    cap: float = 1.0

    def __attrs_post_init__(self) -> None:
        if self.kind not in ("constant", "uniform", "exponential"):
            raise ConfigError(
                f"delay kind {self.kind!r}; use 'constant', 'uniform' or 'exponential'"
            )
        _non_negative("delay base", self.base)
        _non_negative("delay spread", self.spread)
        _non_negative("delay cap", self.cap)

    def sample(self, rng: random.Random) -> float:
        """One delay, drawn from ``rng`` (no draw for ``constant``)."""
        if self.kind == "constant" or self.spread == 0:
            return self.base
        if self.kind == "uniform":
            return self.base + rng.random() * self.spread
        return self.base + min(rng.expovariate(1.0 / self.spread), self.cap)

    def __str__(self) -> str:
        if self.kind == "constant" or self.spread == 0:
            return f"{self.base:g}s"
        if self.kind == "uniform":
            return f"{self.base:g}+U({self.spread:g})s"
        return f"{self.base:g}+Exp({self.spread:g},cap {self.cap:g})s"


@attrs.frozen(kw_only=True)
class LinkFaults:
    """What a directed link does to each datagram (probabilities per copy)."""

    loss: float = 0.0
    duplicate: float = 0.0
    reorder: float = 0.0
    reorder_window: float = 0.05
    delay: Delay = Delay()

    def __attrs_post_init__(self) -> None:
        _probability("loss", self.loss)
        _probability("duplicate", self.duplicate)
        _probability("reorder", self.reorder)
        _non_negative("reorder_window", self.reorder_window)


# ---------------------------------------------------------------- options


_SCALE = {"calm": 0.0, "gentle": 0.3, "rough": 0.7, "brutal": 1.0}


@attrs.frozen(kw_only=True)
class FaultOptions:
    """Which faults a run injects and how hard: the run's swarm-testing options.

    :param link: the default link behaviour (loss, duplication, reordering, delay).
    :param crashes: crash episodes drawn into the schedule.
    :param restart_after: mean seconds before a crashed node restarts (0: it
        stays down until the liveness phase).
    :param pauses: pause episodes; each lasts about ``pause_for`` seconds.
    :param partitions: partition episodes of the kinds in ``partition_kinds``,
        each healed after about ``partition_for`` seconds.
    :param flapping: add a stretch of splits and heals with short stability windows.
    """

    intensity: str = "custom"
    link: LinkFaults = LinkFaults()
    crashes: int = 0
    restart_after: float = 1.0
    pauses: int = 0
    pause_for: float = 0.5
    partitions: int = 0
    partition_kinds: tuple[str, ...] = PARTITION_KINDS
    partition_for: float = 1.0
    flapping: bool = False

    def __attrs_post_init__(self) -> None:
        for name in ("crashes", "pauses", "partitions"):
            if getattr(self, name) < 0:
                raise ConfigError(f"{name} is {getattr(self, name)}; give a count >= 0")
        _non_negative("restart_after", self.restart_after)
        _non_negative("pause_for", self.pause_for)
        _non_negative("partition_for", self.partition_for)
        bad = [k for k in self.partition_kinds if k not in PARTITION_KINDS]
        if bad or (self.partitions and not self.partition_kinds):
            raise ConfigError(
                f"partition_kinds {self.partition_kinds!r}: name at least one of {PARTITION_KINDS}"
            )

    @classmethod
    def draw(cls, rng: random.Random) -> FaultOptions:
        """Swarm testing: a random subset of fault kinds, at a random strength.

        Always makes the same number of draws from ``rng``, whatever is on.
        """
        intensity = rng.choice(tuple(_SCALE))
        s = _SCALE[intensity]
        on = [rng.random() < 0.5 for _ in range(7)]
        loss = rng.uniform(0.0, 0.3) * s
        dup = rng.uniform(0.0, 0.2) * s
        reorder = rng.uniform(0.0, 0.3) * s
        window = rng.uniform(0.001, 0.1)
        kind = rng.choice(("constant", "uniform", "exponential"))
        base = round(rng.uniform(0.0005, 0.002), 6)
        spread = round(rng.uniform(0.0, 0.05) * s, 6)
        crashes = rng.randint(1, 4)
        pauses = rng.randint(1, 3)
        partitions = rng.randint(1, 4)
        kinds = tuple(k for k in PARTITION_KINDS if rng.random() < 0.7) or ("isolate",)
        restart_after = round(rng.uniform(0.0, 2.0), 3) if rng.random() < 0.9 else 0.0
        link = LinkFaults(
            loss=round(loss, 4) if on[0] else 0.0,
            duplicate=round(dup, 4) if on[1] else 0.0,
            reorder=round(reorder, 4) if on[2] else 0.0,
            reorder_window=round(window, 4),
            delay=Delay(kind=kind, base=base, spread=spread),  # type: ignore[arg-type]
        )
        calm = s == 0.0
        return cls(
            intensity=intensity,
            link=link,
            crashes=crashes if on[3] and not calm else 0,
            restart_after=restart_after,
            pauses=pauses if on[4] and not calm else 0,
            partitions=partitions if on[5] and not calm else 0,
            partition_kinds=kinds,
            flapping=on[6] and not calm and s >= 0.7,
        )

    def to_json(self) -> str:
        """The options as one JSON object (sorted keys)."""
        return json.dumps(attrs.asdict(self), sort_keys=True)

    @classmethod
    def from_json(cls, text: str) -> FaultOptions:
        """The inverse of :meth:`to_json`. Raises :class:`ConfigError` on bad input."""
        try:
            raw = json.loads(text)
            link = raw.pop("link")
            delay = Delay(**link.pop("delay"))
            raw["partition_kinds"] = tuple(raw["partition_kinds"])
            return cls(link=LinkFaults(delay=delay, **link), **raw)
        except (ValueError, KeyError, TypeError, AttributeError) as exc:
            raise ConfigError(f"not FaultOptions JSON: {exc}") from exc

    def __str__(self) -> str:
        lk = self.link
        parts = [
            f"intensity={self.intensity}",
            f"loss={lk.loss:g}",
            f"dup={lk.duplicate:g}",
            f"reorder={lk.reorder:g}/{lk.reorder_window:g}s",
            f"delay={lk.delay}",
            f"crashes={self.crashes}(restart~{self.restart_after:g}s)",
            f"pauses={self.pauses}",
            f"partitions={self.partitions}[{','.join(self.partition_kinds)}]",
        ]
        if self.flapping:
            parts.append("flapping")
        return " ".join(parts)


# ------------------------------------------------------------ fault steps


@attrs.frozen(kw_only=True)
class Crash:
    """At ``at``, crash ``node``: its endpoint and everything in flight to it are lost."""

    KIND: ClassVar[str] = "crash"
    at: float
    node: int


@attrs.frozen(kw_only=True)
class Restart:
    """At ``at``, restart the crashed ``node`` with the next incarnation."""

    KIND: ClassVar[str] = "restart"
    at: float
    node: int


@attrs.frozen(kw_only=True)
class Pause:
    """At ``at``, freeze ``node`` (deliveries queue, its timer holds)."""

    KIND: ClassVar[str] = "pause"
    at: float
    node: int


@attrs.frozen(kw_only=True)
class Resume:
    """At ``at``, unfreeze ``node``."""

    KIND: ClassVar[str] = "resume"
    at: float
    node: int


@attrs.frozen(kw_only=True)
class Isolate:
    """At ``at``, cut ``node`` off from every other node (both directions)."""

    KIND: ClassVar[str] = "isolate"
    at: float
    node: int


@attrs.frozen(kw_only=True)
class Split:
    """At ``at``, partition into ``groups``; nodes in no group form one more group."""

    KIND: ClassVar[str] = "split"
    at: float
    groups: tuple[tuple[int, ...], ...]


@attrs.frozen(kw_only=True)
class OneWay:
    """At ``at``, lose every datagram from ``senders`` to ``receivers`` (not the reverse)."""

    KIND: ClassVar[str] = "one_way"
    at: float
    senders: tuple[int, ...]
    receivers: tuple[int, ...]


@attrs.frozen(kw_only=True)
class Heal:
    """At ``at``, remove every partition and one-way cut."""

    KIND: ClassVar[str] = "heal"
    at: float


@attrs.frozen(kw_only=True)
class SetLoss:
    """At ``at``, set the default link loss to ``loss``."""

    KIND: ClassVar[str] = "set_loss"
    at: float
    loss: float

    def __attrs_post_init__(self) -> None:
        _probability("SetLoss.loss", self.loss)


FaultStep = Crash | Restart | Pause | Resume | Isolate | Split | OneWay | Heal | SetLoss


def _halves(rng: random.Random, nodes: Sequence[int]) -> tuple[tuple[int, ...], tuple[int, ...]]:
    shuffled = list(nodes)
    rng.shuffle(shuffled)
    cut = rng.randint(1, len(shuffled) - 1)
    return tuple(sorted(shuffled[:cut])), tuple(sorted(shuffled[cut:]))


@attrs.frozen
class FaultSchedule:
    """Timed fault steps, sorted by time (ties keep their order)."""

    steps: tuple[FaultStep, ...] = ()

    def __attrs_post_init__(self) -> None:
        for step in self.steps:
            if not step.at >= 0:
                raise ConfigError(f"{step!r} has a negative time; fault times are >= 0")
        ordered = tuple(sorted(self.steps, key=lambda s: s.at))
        if ordered != self.steps:
            object.__setattr__(self, "steps", ordered)

    def __len__(self) -> int:
        return len(self.steps)

    @classmethod
    def draw(
        cls,
        options: FaultOptions,
        nodes: Sequence[int],
        duration: float,
        *,
        seed: int,
    ) -> FaultSchedule:
        """A schedule of faults in ``[0, duration)`` for ``nodes``, as ``options`` ask.

        Process faults come from ``seed``'s ``process`` stream, partitions
        from its ``partitions`` stream. Times are rounded to milliseconds so
        the schedule prints short; a step that would fall at or after
        ``duration`` (a late restart or heal) is left out.
        """
        ids = sorted(nodes)
        steps: list[FaultStep] = []
        if not ids or duration <= 0:
            return cls(())

        def t(x: float) -> float:
            return round(x, 3)

        proc = split_rng(seed, "process")
        for _ in range(options.crashes):
            node, at = proc.choice(ids), t(proc.uniform(0, duration))
            back = t(at + proc.uniform(0.5, 1.5) * options.restart_after)
            steps.append(Crash(at=at, node=node))
            if options.restart_after > 0 and back < duration:
                steps.append(Restart(at=back, node=node))
        for _ in range(options.pauses):
            node, at = proc.choice(ids), t(proc.uniform(0, duration))
            back = t(at + proc.uniform(0.5, 1.5) * options.pause_for)
            steps.append(Pause(at=at, node=node))
            if back < duration:
                steps.append(Resume(at=back, node=node))
        part = split_rng(seed, "partitions")
        for _ in range(options.partitions):
            at = t(part.uniform(0, duration))
            kind = part.choice(options.partition_kinds)
            end = t(at + part.uniform(0.5, 1.5) * options.partition_for)
            if kind == "isolate" or len(ids) < 2:
                steps.append(Isolate(at=at, node=part.choice(ids)))
            elif kind == "split":
                steps.append(Split(at=at, groups=_halves(part, ids)))
            else:
                a, b = _halves(part, ids)
                steps.append(OneWay(at=at, senders=a, receivers=b))
            if end < duration:
                steps.append(Heal(at=end))
        if options.flapping and len(ids) >= 2:
            at = t(part.uniform(0, duration / 2))
            for _ in range(20):
                if at >= duration:
                    break
                steps.append(Split(at=at, groups=_halves(part, ids)))
                at = t(at + part.uniform(0.05, 0.5))
                if at >= duration:
                    break
                steps.append(Heal(at=at))
                at = t(at + part.uniform(0.05, 0.5))
        return cls(tuple(steps))

    def to_python(self, indent: str = "") -> str:
        """The schedule as a Python expression to paste into a test.

        It needs ``from powergrid.sim.fuzz import *`` (every step class
        and :class:`FaultSchedule` are exported).
        """
        if not self.steps:
            return f"{indent}FaultSchedule(())"
        body = "".join(f"{indent}        {step!r},\n" for step in self.steps)
        return f"{indent}FaultSchedule(\n{indent}    (\n{body}{indent}    )\n{indent})"

    def count_by_kind(self) -> dict[str, int]:
        """How many steps of each kind, sorted by kind."""
        counts: dict[str, int] = {}
        for step in self.steps:
            counts[step.KIND] = counts.get(step.KIND, 0) + 1
        return dict(sorted(counts.items()))


# ----------------------------------------------------------- notifications


@attrs.frozen(kw_only=True)
class NodeStarted:
    """The network started ``node`` in ``incarnation`` (first life or a restart)."""

    node: NodeId
    incarnation: Incarnation


@attrs.frozen(kw_only=True)
class NodeCrashed:
    """The network crashed ``node``'s ``incarnation``: its volatile state is gone."""

    node: NodeId
    incarnation: Incarnation


# ---------------------------------------------------------------- network


class FuzzNetwork(MemoryNetwork):
    """A :class:`MemoryNetwork` with seeded link, partition and process faults.

    :param seed: the run's seed; every random stream is split from it.
    :param make: the endpoint factory used by :meth:`spawn` and restarts.
    :param link: the default link behaviour (the latency comes from its delay).
    :param observer, loopback, keep_log, trace, drop, fanout_seeds: as for
        :class:`MemoryNetwork`.
    """

    def __init__(
        self,
        *,
        seed: int,
        make: Make | None = None,
        link: LinkFaults | None = None,
        observer: Observer | None = None,
        loopback: bool = False,
        keep_log: bool = True,
        trace: Trace | None = None,
        drop: Callable[[NodeId, NodeId, bytes], bool] | None = None,
        fanout_seeds: tuple[NodeId, ...] | None = None,
    ) -> None:
        super().__init__(
            fanout_seeds=fanout_seeds,
            rng=split_rng(seed, "network"),
            observer=observer,
            loopback=loopback,
            keep_log=keep_log,
            trace=trace,
            drop=drop,
        )
        self.seed = seed
        self._make = make
        self._link = link if link is not None else LinkFaults()
        self._links: dict[tuple[int, int], LinkFaults] = {}
        self._r_loss = split_rng(seed, "loss")
        self._r_dup = split_rng(seed, "duplicate")
        self._r_reorder = split_rng(seed, "reorder")
        self._r_delay = split_rng(seed, "delay")
        self._component: dict[int, int] = {}
        self._oneway: set[tuple[int, int]] = set()
        self._down: set[int] = set()
        self._lives: dict[int, int] = {}
        self._steps_active = True
        self.faults: dict[str, int] = {}
        self._appliers: dict[type, Callable[[Any], bool]] = {
            Crash: lambda s: self.crash(s.node),
            Restart: lambda s: self.restart(s.node),
            Pause: lambda s: self.pause(s.node),
            Resume: lambda s: self.resume(s.node),
            Isolate: lambda s: self.isolate(s.node),
            Split: lambda s: self.split(s.groups),
            OneWay: lambda s: self.one_way(s.senders, s.receivers),
            Heal: lambda s: self.heal(),
            SetLoss: lambda s: self.set_loss(s.loss),
        }
        # The delay of every datagram while no fault can apply (no loss, duplication,
        # reordering, partition, drop hook or link override, and a fixed delay): _route
        # then draws nothing. None otherwise. Kept by _faults_changed.
        self._fault_free: float | None = None
        self._faults_changed()

    # ------------------------------------------------------------ properties

    @property
    def down(self) -> tuple[NodeId, ...]:
        """Crashed nodes not (yet) restarted, sorted."""
        return tuple(NodeId(n) for n in sorted(self._down))

    @property
    def link(self) -> LinkFaults:
        """The default link behaviour."""
        return self._link

    @property
    def partitioned(self) -> bool:
        """Whether any partition or one-way cut is in force."""
        return bool(self._component) or bool(self._oneway)

    def connected(self, src: int, dst: int) -> bool:
        """Whether a datagram from ``src`` to ``dst`` could pass now: the partitions let it,
        and its link does not lose everything (a loss of 1 is a cut too)."""
        if src == dst:
            return True
        comp = self._component
        if comp.get(src, 0) != comp.get(dst, 0) or (src, dst) in self._oneway:
            return False
        return self._links.get((src, dst), self._link).loss < 1.0

    # ---------------------------------------------------------- process faults

    def spawn(self, node: int, *, at: float | None = None) -> None:
        """Add ``node``'s first life (or next life) built by the factory."""
        if self._make is None:
            raise UsageError("spawn needs the make(node_id, incarnation) factory")
        self._launch(node, at)

    def _launch(self, node: int, at: float | None = None) -> None:
        assert self._make is not None
        inc = self._lives.get(node, 0) + 1
        self._lives[node] = inc
        endpoint = self._make(NodeId(node), Incarnation(inc))
        if endpoint.node_id != node:
            raise UsageError(f"make({node}, {inc}) built an endpoint with id {endpoint.node_id}")
        self._down.discard(node)
        self.add(endpoint, at=at, incarnation=inc)

    def _start(self, node: int, endpoint: Endpoint, incarnation: int) -> None:
        self._notify(node, NodeStarted(node=NodeId(node), incarnation=Incarnation(incarnation)))
        super()._start(node, endpoint, incarnation)

    def crash(self, node: int) -> bool:
        """Crash ``node`` now. False (and counted as skipped) if it is not present."""
        inc = self.incarnation(node)
        if inc is None:
            return self._skip()
        self.remove(node)
        self._down.add(node)
        self._lives[node] = max(self._lives.get(node, 0), inc)
        self._notify(node, NodeCrashed(node=NodeId(node), incarnation=Incarnation(inc)))
        return self._count("crash")

    def restart(self, node: int) -> bool:
        """Restart crashed ``node`` with the next incarnation. False if it is up or unknown."""
        if self._make is None or node not in self._down or self.endpoint(node) is not None:
            return self._skip()
        self._launch(node)
        return self._count("restart")

    def pause(self, node: int) -> bool:
        """Freeze ``node``. False (counted as skipped) if absent or already paused."""
        return self._count("pause") if super().pause(node) else self._skip()

    def resume(self, node: int) -> bool:
        """Unfreeze ``node``. False (counted as skipped) if absent or not paused."""
        return self._count("resume") if super().resume(node) else self._skip()

    # ------------------------------------------------------------- partitions

    def isolate(self, node: int) -> bool:
        """Cut ``node`` off from all others, both ways."""
        self._component[node] = max(self._component.values(), default=0) + 1
        self._faults_changed()
        return self._count("isolate")

    def split(self, groups: Sequence[Sequence[int]]) -> bool:
        """Replace the partitions: each group talks only within itself; the rest form one group."""
        self._component = {n: i + 1 for i, g in enumerate(groups) for n in g}
        self._faults_changed()
        return self._count("split")

    def one_way(self, senders: Sequence[int], receivers: Sequence[int]) -> bool:
        """Lose datagrams from each of ``senders`` to each of ``receivers`` (not the reverse)."""
        self._oneway.update((s, r) for s in senders for r in receivers if s != r)
        self._faults_changed()
        return self._count("one_way")

    def heal(self) -> bool:
        """Remove every partition and one-way cut."""
        self._component.clear()
        self._oneway.clear()
        self._faults_changed()
        return self._count("heal")

    # ------------------------------------------------------------------ links

    def set_loss(self, loss: float) -> bool:
        """Set the default link loss probability."""
        self._link = attrs.evolve(self._link, loss=loss)
        self._faults_changed()
        return self._count("set_loss")

    def set_link(self, src: int, dst: int, link: LinkFaults | None) -> None:
        """Override the behaviour of the directed link ``src -> dst`` (None: the default)."""
        if link is None:
            self._links.pop((src, dst), None)
        else:
            self._links[(src, dst)] = link
        self._faults_changed()

    # --------------------------------------------------------------- schedule

    def schedule(self, schedule: FaultSchedule) -> None:
        """Queue every step of ``schedule`` at its time. Raises UsageError for a past step."""
        for step in schedule.steps:
            if step.at < self.now:
                raise UsageError(f"{step!r} is in the past (the time is {self.now})")
        for step in schedule.steps:
            self._push_step(step.at, step)

    def apply(self, step: FaultStep) -> bool:
        """Apply one fault step now; False if it did not apply (skipped)."""
        if self.trace is not None:
            fields = attrs.asdict(step)
            del fields["at"]
            node = fields.pop("node", 0)
            self.trace.record(self.now, node, "fault", kind=step.KIND, **fields)
        return self._appliers[type(step)](step)

    def settle(self) -> None:
        """End the faults: cancel pending steps, heal, resume, restart, stop loss.

        Paused nodes are resumed and crashed nodes restarted in id order (a
        crashed node stays down if there is no factory). Duplication,
        reordering and delay stay as they are.
        """
        self._steps_active = False
        if self.trace is not None:
            self.trace.record(self.now, 0, "settle")
        self.heal()
        for node in self.nodes:
            if self.is_paused(node):
                self.resume(node)
        for node in self.down:
            self.restart(node)
        self._link = attrs.evolve(self._link, loss=0.0)
        self._links = {k: attrs.evolve(v, loss=0.0) for k, v in self._links.items()}
        self._faults_changed()

    # -------------------------------------------------------------- internals

    def _count(self, kind: str) -> bool:
        self.faults[kind] = self.faults.get(kind, 0) + 1
        return True

    def _skip(self) -> bool:
        self.faults["skipped"] = self.faults.get("skipped", 0) + 1
        return False

    def _apply_step(self, step: Any) -> None:
        if self._steps_active:
            self.apply(step)
        else:
            self.faults["cancelled"] = self.faults.get("cancelled", 0) + 1

    def _faults_changed(self) -> None:
        """Note whether a datagram can meet a fault now (``_fault_free``)."""
        link = self._link
        delay = link.delay
        plain = not (link.loss or link.duplicate or link.reorder) and (
            delay.kind == "constant" or delay.spread == 0
        )
        clear = not (self._component or self._oneway or self._drop is not None or self._links)
        self._fault_free = delay.base if plain and clear else None

    def _route(self, src: int, dst: int, data: bytes) -> None:
        self._count_sent(data)
        base = self._fault_free
        if base is not None:
            self._send_after(base, src, dst, data)  # no fault can apply, no draw
            return
        if src != dst and (
            self._component.get(src, 0) != self._component.get(dst, 0) or (src, dst) in self._oneway
        ):
            self._count("partition_drop")
            self._count_drop(dst, data, src, "partition")
            return
        if self._drop is not None and self._drop(NodeId(src), NodeId(dst), data):
            self._count_drop(dst, data, src, "hook")
            return
        link = self._links.get((src, dst), self._link)
        if link.loss and self._r_loss.random() < link.loss:
            self._count("loss")
            self._count_drop(dst, data, src, "loss")
            return
        self._send_after(self._delay(link), src, dst, data)
        if link.duplicate and self._r_dup.random() < link.duplicate:
            self._count("duplicate")
            self._count_sent(data)
            self._send_after(self._delay(link), src, dst, data)

    def _route_group(self, src: int, dsts: list[int], data: bytes) -> None:
        base = self._fault_free
        if base is None:
            super()._route_group(src, dsts, data)
        else:  # no fault can apply: what _route does, without its checks
            self._send_all_after(base, src, dsts, data)

    def _delay(self, link: LinkFaults) -> float:
        delay = link.delay.sample(self._r_delay)
        if link.reorder and self._r_reorder.random() < link.reorder:
            self._count("reorder")
            delay += self._r_reorder.random() * link.reorder_window
        return delay
