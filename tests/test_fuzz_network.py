"""Tests of powergrid.sim.fuzz (the fault model) and powergrid.sim.harness (the runner).

The harness tests use the toy MaxGossip protocol from toys.py, with two
planted bugs the harness must catch: a node that sometimes forgets (safety)
and a restarted node that is deaf (liveness).
"""

from __future__ import annotations

import json
import random
from collections.abc import Iterable

import pytest
from hypothesis import HealthCheck, find, given, settings
from toys import (
    GROUP,
    Converged,
    Learned,
    MaxGossip,
    MonotoneLearning,
    Recorder,
    Ticker,
    datagram,
)

from powergrid.errors import ConfigError, UsageError
from powergrid.events import JoinGroup, Output, Transmit
from powergrid.sim import fuzz
from powergrid.sim.fuzz import (
    Crash,
    Delay,
    FaultOptions,
    FaultSchedule,
    FuzzNetwork,
    Heal,
    Isolate,
    LinkFaults,
    NodeCrashed,
    NodeStarted,
    OneWay,
    Pause,
    Restart,
    Resume,
    SetLoss,
    Split,
    split_rng,
)
from powergrid.sim.harness import (
    Build,
    Invariant,
    System,
    fault_options,
    run_seed,
    run_seeds,
    schedules,
)
from powergrid.types import Incarnation, NodeId

# ------------------------------------------------------------------ helpers


def burst(src: int, dst: int, n: int) -> list[Output]:
    return [Transmit(to=NodeId(dst), data=datagram(src, v)) for v in range(n)]


def sink_run(link: LinkFaults, *, n: int = 400, seed: int = 7) -> tuple[FuzzNetwork, Recorder]:
    net = FuzzNetwork(seed=seed, link=link)
    sink = Recorder(2)
    net.add(sink)
    net.add(Recorder(1, on_start=burst(1, 2, n)))
    net.run_until_quiet(100)
    return net, sink


def values(sink: Recorder) -> list[int]:
    return [v for _, _, v in sink.received]


# --------------------------------------------------------------- link faults


def test_no_faults_delivers_everything_in_order() -> None:
    """Rule: a default link loses, duplicates and reorders nothing; delay is 1 ms."""
    net, sink = sink_run(LinkFaults())
    assert values(sink) == list(range(400))
    assert {t for t, _, _ in sink.received} == {0.001}
    assert net.faults == {}


def test_total_loss_drops_everything() -> None:
    """Rule: loss 1.0 loses every copy, counted as a loss fault and a drop."""
    net, sink = sink_run(LinkFaults(loss=1.0), n=50)
    assert sink.received == []
    assert net.faults == {"loss": 50}
    assert (net.stats.sent, net.stats.dropped) == (50, 50)


def test_loss_draws_do_not_shift_when_other_faults_switch_on() -> None:
    """Rule: each fault kind has its own random stream: duplication and delay
    do not change which datagrams are lost."""
    _, plain = sink_run(LinkFaults(loss=0.3))
    _, noisy = sink_run(
        LinkFaults(
            loss=0.3,
            duplicate=0.5,
            reorder=0.5,
            delay=Delay(kind="exponential", base=0.001, spread=0.01),
        )
    )
    kept = set(values(plain))
    assert 200 < len(kept) < 360
    assert set(values(noisy)) == kept
    assert len(values(noisy)) > len(kept)  # duplicates arrived too


def test_duplication_sends_a_second_copy() -> None:
    """Rule: duplicate 1.0 delivers every datagram twice, each copy counted as sent."""
    net, sink = sink_run(LinkFaults(duplicate=1.0), n=10)
    assert values(sink) == sorted(list(range(10)) * 2)
    assert net.faults == {"duplicate": 10}
    assert (net.stats.sent, net.stats.delivered) == (20, 20)


def test_reordering_holds_copies_back_within_the_window() -> None:
    """Rule: a reordered copy arrives up to reorder_window late, so later ones overtake it."""
    net, sink = sink_run(LinkFaults(reorder=0.3, reorder_window=0.05))
    got = values(sink)
    assert sorted(got) == list(range(400))
    assert got != sorted(got)
    assert 80 < net.faults["reorder"] < 160
    assert all(0.001 <= t <= 0.051 for t, _, _ in sink.received)


@pytest.mark.parametrize(
    ("delay", "low", "high"),
    [
        (Delay(kind="constant", base=0.01), 0.01, 0.01),
        (Delay(kind="uniform", base=0.01, spread=0.02), 0.01, 0.03),
        (Delay(kind="exponential", base=0.01, spread=0.02, cap=0.05), 0.01, 0.06),
    ],
)
def test_delay_models_stay_in_their_bounds(delay: Delay, low: float, high: float) -> None:
    """Rule: constant/uniform/exponential delays fall in [base, base + spread or cap]."""
    _, sink = sink_run(LinkFaults(delay=delay))
    times = [t for t, _, _ in sink.received]
    assert len(times) == 400
    assert low <= min(times) and max(times) <= high + 1e-12
    if delay.kind == "exponential":
        assert sum(times) / len(times) == pytest.approx(0.01 + 0.02, rel=0.2)
        assert max(times) == pytest.approx(0.06)  # the tail reaches the cap


def test_per_link_override() -> None:
    """Rule: set_link changes one directed link; the others keep the default."""
    net = FuzzNetwork(seed=1)
    a, b = Recorder(2), Recorder(3)
    net.add(a)
    net.add(b)
    net.set_link(1, 3, LinkFaults(loss=1.0))
    net.add(Recorder(1, on_start=burst(1, 2, 5) + burst(1, 3, 5)))
    net.run_until_quiet(1)
    assert (len(a.received), len(b.received)) == (5, 0)


# ---------------------------------------------------------------- partitions


def ping_all(net: FuzzNetwork, nodes: Iterable[int]) -> set[tuple[int, int]]:
    """Which directed pairs get a datagram through right now."""
    ids = sorted(nodes)
    got: set[tuple[int, int]] = set()
    for src in ids:
        for dst in ids:
            if src != dst:
                ep = net.endpoint(dst)
                assert isinstance(ep, Recorder)
                before = len(ep.received)
                net._route(src, dst, datagram(src, 0))
                net.run_until(net.now + 0.01)
                if len(ep.received) > before:
                    got.add((src, dst))
    return got


def all_pairs(ids: Iterable[int]) -> set[tuple[int, int]]:
    xs = list(ids)
    return {(a, b) for a in xs for b in xs if a != b}


def test_a_link_that_loses_everything_is_not_connected() -> None:
    """connected() (what the twin-leader check's clock runs on): a loss of 1, by default
    or on one directed link, passes nothing, so it is a cut too (a Hypothesis schedule
    of SetLoss(at=0, loss=1) had twins of one epoch flagged for not resolving while no
    datagram could pass); any loss below 1 still connects."""
    net = FuzzNetwork(seed=1)
    for n in (1, 2):
        net.add(Recorder(n))
    net.set_loss(1.0)
    assert not net.connected(1, 2) and not net.connected(2, 1) and net.connected(1, 1)
    assert ping_all(net, (1, 2)) == set()
    net.set_loss(0.99)
    assert net.connected(1, 2)
    net.set_loss(0.0)
    net.set_link(1, 2, LinkFaults(loss=1.0))
    assert not net.connected(1, 2) and net.connected(2, 1)


def test_isolate_split_one_way_and_heal() -> None:
    """Rule: isolate cuts a node both ways; split confines talk to groups; one-way
    cuts one direction; heal restores every pair; connected() agrees."""
    net = FuzzNetwork(seed=1)
    for n in (1, 2, 3, 4):
        net.add(Recorder(n))
    every = all_pairs((1, 2, 3, 4))
    net.isolate(2)
    assert ping_all(net, (1, 2, 3, 4)) == all_pairs((1, 3, 4))
    net.split([(1, 2)])
    assert ping_all(net, (1, 2, 3, 4)) == {(1, 2), (2, 1), (3, 4), (4, 3)}
    net.heal()
    net.one_way([1], [2, 3])
    assert ping_all(net, (1, 2, 3, 4)) == every - {(1, 2), (1, 3)}
    assert net.connected(2, 1) and not net.connected(1, 2)
    assert net.partitioned
    net.heal()
    assert ping_all(net, (1, 2, 3, 4)) == every
    assert not net.partitioned
    assert net.faults["partition_drop"] == 6 + 8 + 2


# ----------------------------------------------------------- process faults


def ticker_factory(made: list[tuple[int, int]]) -> fuzz.Make:
    def make(node: NodeId, inc: Incarnation) -> Ticker:
        made.append((node, inc))
        return Ticker(node, period=1.0)

    return make


def test_crash_loses_state_in_flight_datagrams_and_timer_restart_is_fresh() -> None:
    """Rule: crash discards the endpoint, datagrams in flight to it and its timer;
    restart builds a new endpoint with the next incarnation at the same address."""
    made: list[tuple[int, int]] = []
    seen: list[tuple[float, int, object]] = []
    net = FuzzNetwork(
        seed=3,
        make=ticker_factory(made),
        link=LinkFaults(delay=Delay(base=0.5)),
        observer=lambda t, n, o: seen.append((t, n, o)),
    )
    net.spawn(1)
    old = net.endpoint(1)
    assert isinstance(old, Ticker)
    net.add(Recorder(2, on_start=burst(2, 1, 1)))
    net.run_until(0.25)
    assert net.crash(1) is True
    assert net.down == (1,)
    assert net.crash(1) is False  # skipped: already down
    net.run_until(0.3)  # the datagram is still in flight (it is due at 0.5)
    assert net.restart(1) is True
    assert net.restart(1) is False  # skipped: already up
    new = net.endpoint(1)
    assert isinstance(new, Ticker) and new is not old
    net.run_until(1.8)
    assert old.received == [] and old.wakes == []
    assert new.received == []  # the datagram in flight at the crash vanished
    assert new.wakes == [1.3]
    assert made == [(1, 1), (1, 2)]
    assert net.incarnation(1) == 2
    assert seen == [
        (0.0, 1, NodeStarted(node=NodeId(1), incarnation=Incarnation(1))),
        (0.0, 2, NodeStarted(node=NodeId(2), incarnation=Incarnation(1))),
        (0.25, 1, NodeCrashed(node=NodeId(1), incarnation=Incarnation(1))),
        (0.3, 1, NodeStarted(node=NodeId(1), incarnation=Incarnation(2))),
    ]
    assert net.faults == {"crash": 1, "restart": 1, "skipped": 2}


def test_restart_needs_a_factory_and_spawn_checks_ids() -> None:
    """Rule: restart without a factory is skipped; spawn without one, or a factory
    that builds the wrong id, raises UsageError."""
    net = FuzzNetwork(seed=1)
    net.add(Recorder(1))
    net.crash(1)
    assert net.restart(1) is False
    with pytest.raises(UsageError, match="factory"):
        net.spawn(2)
    wrong = FuzzNetwork(seed=1, make=lambda n, i: Recorder(n + 1))
    with pytest.raises(UsageError, match="with id 3"):
        wrong.spawn(2)


def test_schedule_applies_steps_at_their_times() -> None:
    """Rule: a schedule's steps run at their virtual times, in order; a paused node's
    deliveries queue until resume; settle cancels what is left."""
    net = FuzzNetwork(seed=1, make=lambda n, i: Ticker(n, period=10.0))
    net.spawn(1)
    sink = net.endpoint(1)
    assert isinstance(sink, Ticker)
    net.add(Recorder(2, on_start=burst(2, 1, 1)))
    net.schedule(
        FaultSchedule(
            (
                Resume(at=0.5, node=1),
                Pause(at=0.0, node=1),
                Isolate(at=0.6, node=1),
                SetLoss(at=0.7, loss=0.5),
                Heal(at=9.0),
            )
        )
    )
    net.run_until(0.4)
    assert sink.received == []
    net.run_until(0.8)
    assert sink.received == [(0.5, 2, 0)]
    assert net.partitioned and net.link.loss == 0.5
    net.settle()
    assert not net.partitioned and net.link.loss == 0.0
    net.run_until(10.0)
    assert net.faults == {
        "cancelled": 1,
        "heal": 1,
        "isolate": 1,
        "pause": 1,
        "resume": 1,
        "set_loss": 1,
    }
    with pytest.raises(UsageError, match="in the past"):
        net.schedule(FaultSchedule((Heal(at=1.0),)))


def test_settle_resumes_and_restarts_in_id_order() -> None:
    """Rule: settle heals, resumes paused nodes, restarts crashed ones, stops loss."""
    made: list[tuple[int, int]] = []
    net = FuzzNetwork(seed=1, make=ticker_factory(made), link=LinkFaults(loss=0.4))
    for n in (3, 1, 2):
        net.spawn(n)
    net.crash(3)
    net.crash(1)
    net.pause(2)
    net.split([(1,), (2,)])
    net.settle()
    assert made == [(3, 1), (1, 1), (2, 1), (1, 2), (3, 2)]
    assert net.down == () and not net.is_paused(2) and not net.partitioned
    assert net.link.loss == 0.0


# ------------------------------------------------------------ options, schedules


def test_fault_options_draw_is_deterministic_and_varied() -> None:
    """Rule: options are a function of the rng; over many seeds some are calm, some brutal."""
    drawn = [FaultOptions.draw(split_rng(s, "swarm")) for s in range(200)]
    again = [FaultOptions.draw(split_rng(s, "swarm")) for s in range(200)]
    assert drawn == again
    kinds = {o.intensity for o in drawn}
    assert kinds == {"calm", "gentle", "rough", "brutal"}
    calm = [o for o in drawn if o.intensity == "calm"]
    assert all(o.link.loss == 0 and o.crashes == 0 and o.partitions == 0 for o in calm)
    assert any(o.flapping for o in drawn)
    assert any(o.link.loss > 0.2 for o in drawn)


def test_fault_options_print_and_json_round_trip() -> None:
    """Rule: options print as one line and survive JSON and repr round trips."""
    for s in range(30):
        o = FaultOptions.draw(split_rng(s, "swarm"))
        assert FaultOptions.from_json(o.to_json()) == o
        assert eval(repr(o), vars(fuzz)) == o
        assert str(o).startswith(f"intensity={o.intensity} loss=")
    assert json.loads(FaultOptions().to_json())["link"]["delay"]["kind"] == "constant"
    with pytest.raises(ConfigError, match="not FaultOptions JSON"):
        FaultOptions.from_json("{}")


@pytest.mark.parametrize(
    ("make", "message"),
    [
        (lambda: LinkFaults(loss=1.5), "probability"),
        (lambda: Delay(kind="gamma"), "delay kind"),  # type: ignore[arg-type]
        (lambda: Delay(base=-1), ">= 0"),
        (lambda: FaultOptions(crashes=-1), "count"),
        (lambda: FaultOptions(partitions=1, partition_kinds=()), "partition_kinds"),
        (lambda: FaultOptions(partition_kinds=("moon",)), "partition_kinds"),
        (lambda: SetLoss(at=0, loss=2), "probability"),
        (lambda: FaultSchedule((Heal(at=-1),)), "negative"),
    ],
)
def test_config_validation(make: object, message: str) -> None:
    """Rule: invalid fault configuration raises ConfigError saying what to fix."""
    with pytest.raises(ConfigError, match=message):
        make()  # type: ignore[operator]


BRUTAL = FaultOptions(
    intensity="brutal",
    crashes=3,
    pauses=2,
    partitions=4,
    flapping=True,
    restart_after=0.5,
)


def test_schedule_draw_is_deterministic_sorted_and_in_range() -> None:
    """Rule: a drawn schedule is a function of the seed, sorted, within the duration,
    and names only the given nodes."""
    nodes = (10, 20, 30, 40)
    a = FaultSchedule.draw(BRUTAL, nodes, 5.0, seed=11)
    assert a == FaultSchedule.draw(BRUTAL, nodes, 5.0, seed=11)
    assert a != FaultSchedule.draw(BRUTAL, nodes, 5.0, seed=12)
    times = [s.at for s in a.steps]
    assert times == sorted(times) and all(0 <= t < 5.0 for t in times)
    counts = a.count_by_kind()
    assert counts["crash"] == 3 and counts["pause"] == 2 and counts["split"] >= 1
    for s in a.steps:
        assert getattr(s, "node", 10) in nodes
    assert FaultSchedule.draw(BRUTAL, (), 5.0, seed=1) == FaultSchedule(())


def test_schedule_streams_are_independent() -> None:
    """Rule: switching crashes off leaves the partition steps exactly as they were."""
    nodes = (1, 2, 3, 4, 5)

    def partitions(s: FaultSchedule) -> list[object]:
        return [x for x in s.steps if isinstance(x, Isolate | Split | OneWay | Heal)]

    with_crashes = FaultSchedule.draw(BRUTAL, nodes, 5.0, seed=4)
    without = FaultSchedule.draw(
        FaultOptions(partitions=4, flapping=True, crashes=0, pauses=0), nodes, 5.0, seed=4
    )
    assert partitions(with_crashes) == partitions(without)
    assert len(with_crashes) > len(without)


def test_schedule_prints_as_pasteable_python() -> None:
    """Rule: to_python() evaluates back to the same schedule."""
    s = FaultSchedule.draw(BRUTAL, (1, 2, 3), 5.0, seed=2)
    code = s.to_python()
    assert code.startswith("FaultSchedule(\n    (\n        ")
    assert eval(code, vars(fuzz)) == s
    assert eval(FaultSchedule(()).to_python(), vars(fuzz)) == FaultSchedule(())


# ----------------------------------------------------------------- harness

N = 4


def gossip(*, forget: float = 0.0, deaf: bool = False, crashy: bool = False) -> Build:
    """A MaxGossip system of N nodes with values drawn from the system stream."""

    def build(rng: random.Random) -> System:
        nodes = tuple(NodeId(i) for i in range(1, N + 1))
        values = {n: rng.randrange(1000) for n in nodes}
        base = rng.getrandbits(32)

        def make(node: NodeId, inc: Incarnation) -> MaxGossip:
            return MaxGossip(
                node,
                inc,
                value=values[node],
                rng=random.Random(base + 1000 * node + inc),
                forget=forget,
                deaf_after_restart=deaf,
            )

        return System(nodes=nodes, make=make, info=values)

    return build


def invariants(system: System) -> list[Invariant]:
    assert isinstance(system.info, dict)
    return [MonotoneLearning(system.info), Converged(system.info)]


def test_correct_toy_passes_many_seeds() -> None:
    """Rule: a correct protocol passes both phases for every seed, under varied faults."""
    summary = run_seeds(range(30), gossip(), invariants, safety_s=4.0, liveness_s=4.0)
    assert summary.failures == (), summary.format()
    assert {r.options.intensity for r in summary.results} == {"calm", "gentle", "rough", "brutal"}
    faults = summary.faults
    for kind in ("crash", "restart", "loss", "duplicate", "split", "isolate", "pause", "heal"):
        assert faults.get(kind, 0) > 0, kind
    assert summary.format().startswith("30 seeds, 30 ok, 0 failed, ")
    print(f"\nharness speed on the toy: {summary.seeds_per_second:.1f} seeds/s")


def test_same_seed_same_trace_hash_different_seeds_differ() -> None:
    """Rule: a run is a function of its seed, bit for bit (trace SHA-256)."""
    hashes = []
    for seed in (1, 2, 3):
        a = run_seed(seed, gossip(), invariants, safety_s=3.0, liveness_s=2.0, keep_trace=True)
        b = run_seed(seed, gossip(), invariants, safety_s=3.0, liveness_s=2.0)
        assert a.trace_hash == b.trace_hash
        assert a.messages == b.messages and a.faults == b.faults
        assert a.trace_lines is not None and len(a.trace_lines) > 100
        hashes.append(a.trace_hash)
    assert len(set(hashes)) == 3


def test_harness_catches_a_forgetful_node() -> None:
    """Rule: a safety bug (a node that forgets) is caught in the safety phase with
    its seed, time and replay command."""
    summary = run_seeds(range(5), gossip(forget=0.05), invariants, safety_s=3.0, liveness_s=1.0)
    assert len(summary.failures) == 5
    v = summary.failures[0].violations[0]
    assert v.invariant == "monotone-learning"
    assert "went from" in v.detail
    assert v.time < 3.0
    assert v.replay == f"powergrid fuzz --replay {v.seed}"
    assert "FAIL" in summary.failures[0].summary()


def test_harness_catches_a_liveness_bug_and_the_snippet_replays_it() -> None:
    """Rule: a liveness bug (a restarted node stays deaf) fails check_final, and the
    printed snippet is a test that reproduces the failure."""
    schedule = FaultSchedule((Crash(at=0.5, node=2), Restart(at=1.0, node=2)))
    result = run_seed(
        9,
        gossip(deaf=True),
        invariants,
        options=FaultOptions(),
        schedule=schedule,
        safety_s=2.0,
        liveness_s=2.0,
    )
    values = system_values(9)
    assert [(v.invariant, v.detail) for v in result.violations] == [
        ("converged", f"node 2 knows {values[NodeId(2)]}, the maximum is {max(values.values())}")
    ]
    assert result.faults == {"crash": 1, "restart": 1, "heal": 1}
    code = result.snippet(build="build", invariants="invariants")
    namespace: dict[str, object] = {"build": gossip(deaf=True), "invariants": invariants}
    exec(code, namespace)
    with pytest.raises(AssertionError, match="converged"):
        namespace["test_fuzz_seed_9"]()  # type: ignore[operator]
    fixed: dict[str, object] = {"build": gossip(), "invariants": invariants}
    exec(code, fixed)
    fixed["test_fuzz_seed_9"]()  # type: ignore[operator]


def system_values(seed: int) -> dict[NodeId, int]:
    info = gossip()(split_rng(seed, "system")).info
    assert isinstance(info, dict)
    return info


def test_endpoint_exception_is_a_violation() -> None:
    """Rule: an endpoint that raises ends the run with an raised violation."""

    class Boom(Recorder):
        def receive(self, data: bytes, now: float) -> list[Output]:
            raise RuntimeError("bad datagram")

    def build(rng: random.Random) -> System:
        def make(node: NodeId, inc: Incarnation) -> Recorder:
            if node == 1:
                return Recorder(1, on_start=[Transmit(to=NodeId(2), data=datagram(1, 0))])
            return Boom(node, on_start=[JoinGroup(group=GROUP)])

        return System(nodes=(NodeId(1), NodeId(2)), make=make)

    result = run_seed(1, build, lambda s: [], options=FaultOptions(), schedule=FaultSchedule())
    assert [(v.invariant, v.detail, v.time) for v in result.violations] == [
        ("raised", "RuntimeError: bad datagram", 0.001)
    ]


@settings(max_examples=15, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(options=fault_options(), schedule=schedules([NodeId(i) for i in range(1, N + 1)], 2.0))
def test_hypothesis_schedules_hold_for_the_correct_toy(
    options: FaultOptions, schedule: FaultSchedule
) -> None:
    """Rule: the correct toy survives any schedule Hypothesis builds."""
    result = run_seed(
        5, gossip(), invariants, options=options, schedule=schedule, safety_s=2.0, liveness_s=3.0
    )
    assert result.ok, result.report()


def test_hypothesis_shrinks_a_liveness_bug_to_one_crash() -> None:
    """Rule: Hypothesis finds the deaf-restart bug and shrinks the schedule to a single
    crash (the liveness phase restarts the node)."""

    def fails(schedule: FaultSchedule) -> bool:
        result = run_seed(
            5,
            gossip(deaf=True),
            invariants,
            options=FaultOptions(),
            schedule=schedule,
            safety_s=1.0,
            liveness_s=2.0,
        )
        return not result.ok

    minimal = find(
        schedules([NodeId(i) for i in range(1, N + 1)], 1.0),
        fails,
        settings=settings(max_examples=200, deadline=None, database=None),
    )
    assert minimal == FaultSchedule((Crash(at=0.0, node=1),))


def test_learned_notifications_reach_invariants() -> None:
    """Rule: invariants observe every notification, including NodeStarted/NodeCrashed."""
    seen: list[object] = []

    class Spy:
        name = "spy"

        def observe(self, time: float, node: NodeId, output: object) -> None:
            seen.append(type(output).__name__)

        def check(self, network: FuzzNetwork) -> list[str]:
            return []

        def check_final(self, network: FuzzNetwork) -> list[str]:
            return []

    run_seed(
        1,
        gossip(),
        lambda s: [Spy()],
        options=FaultOptions(),
        schedule=FaultSchedule((Crash(at=0.5, node=1),)),
        safety_s=1.0,
        liveness_s=1.0,
    )
    assert seen[:2] == ["NodeStarted", "Learned"]
    assert "NodeCrashed" in seen
    assert seen.count("NodeStarted") == N + 1
    assert Learned.__name__ in seen
