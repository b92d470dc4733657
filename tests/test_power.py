"""The power guarantee measured instant by instant (powergrid.sim.power), and its canaries:
deliberately broken market machines the new accounting must catch (docs/testing.md)."""

from __future__ import annotations

from typing import Any

import pytest

from powergrid import node as node_mod
from powergrid.events import LeaderElected
from powergrid.protocols.market import Bid, CapHeld
from powergrid.protocols.market.broker import BrokerMachine
from powergrid.protocols.market.client import ClientMachine
from powergrid.sim.fuzzing import run_datacentre
from powergrid.sim.power import PowerBounds, PowerLedger
from powergrid.sim.runner import Simulation
from powergrid.sim.scenario import parse_scenario

BID = Bid(floor=20, required=50, maximum=100)


def admitted(ledger: PowerLedger, t: float, node: int, cap: int) -> None:
    """``node`` starts at ``t`` and at once applies a counted price giving ``cap``."""
    ledger.started(t, node, BID)
    ledger.priced(t, node, counted=True)
    ledger.cap(t, node, cap)


def test_overload_is_integrated_exactly_and_split_at_the_exemption_window() -> None:
    """Rule: caps in force above the supply count as watt-seconds from the instant they are;
    the first skew_s (1.5 s) after a raise is the named exemption raise-before-cut, the
    rest is strict."""
    ledger = PowerLedger(110)
    admitted(ledger, 0.0, 1, 55)
    admitted(ledger, 0.0, 2, 55)
    ledger.cap(1.0, 2, 75)  # 20 W too much from t=1 ...
    ledger.cap(3.0, 2, 55)  # ... to t=3
    f = ledger.figures(5.0)
    assert f.overload_ws == pytest.approx(40.0) and f.max_excess_w == 20
    assert f.intervals == ((1.0, 3.0),) and f.violations == 1
    assert f.exempt["raise-before-cut"]["overload_watt_seconds"] == pytest.approx(30.0)
    assert f.strict_overload_ws == pytest.approx(10.0)
    assert ledger.strict_events == ["from t=2.500: caps in force 130 W > supply 110 W"]


def test_overload_long_after_any_raise_is_strict() -> None:
    ledger = PowerLedger(100)
    admitted(ledger, 0.0, 1, 60)
    admitted(ledger, 0.0, 2, 60)
    f = ledger.figures(4.0)
    assert f.strict_overload_ws == pytest.approx(20 * 2.5)  # from 1.5 s after the raise at 0
    assert ledger.strict_events == ["from t=1.500: caps in force 120 W > supply 100 W"]


def test_reaction_bound_after_a_supply_drop() -> None:
    """Rule: overload within reaction_s of an announced drop is reported apart."""
    ledger = PowerLedger(200, bounds=PowerBounds(reaction_s=0.05, round_s=0.0, skew_s=0.0))
    admitted(ledger, 0.0, 1, 120)
    ledger.supply(1.0, 100)
    ledger.cap(1.2, 1, 100)
    f = ledger.figures(2.0)
    assert f.overload_in_bound_ws == pytest.approx(20 * 0.05)
    assert f.overload_ws == pytest.approx(20 * 0.15) == f.strict_overload_ws
    ((start, end),) = f.intervals
    assert start == pytest.approx(1.05) and end == 1.2


def test_a_crashed_server_draws_its_cap_until_its_lease_ends() -> None:
    """Rule (FIGURES): a crashed server keeps its last cap until lease_s after its last price."""
    ledger = PowerLedger(1000, bounds=PowerBounds(lease_s=5.0))
    admitted(ledger, 0.0, 1, 80)
    ledger.crashed(2.0, 1)
    ledger.advance(4.9)
    assert ledger.cap_sum == 80
    ledger.advance(5.0)
    assert ledger.cap_sum == 0


def test_overload_while_a_crashed_server_holds_its_lease_is_strict() -> None:
    """Rule (issue 16, grantors wait out leases): re-granting a crashed server's watts
    while its lease runs is no longer exempt (the exemption crashed-lease is gone): the
    lead holds the old budget until the lease ends."""
    ledger = PowerLedger(100, bounds=PowerBounds(lease_s=5.0, skew_s=0.0))
    admitted(ledger, 0.0, 1, 50)
    admitted(ledger, 0.0, 2, 50)
    ledger.crashed(1.0, 1)
    ledger.cap(2.0, 2, 100)  # its watts re-granted at once: 50 W too much until 5.0
    f = ledger.figures(6.0)
    assert f.strict_overload_ws == pytest.approx(150.0)
    assert "crashed-lease" not in f.exempt
    assert ledger.strict_events == ["from t=2.000: caps in force 150 W > supply 100 W"]


def test_what_the_caps_of_servers_down_at_a_drop_exceed_the_supply_by_is_dead_at_drop() -> None:
    """Rule (exemption dead-at-drop): after a supply drop, the part of the excess by which
    the caps of the servers already down at the drop (on their leases) exceed the supply
    by themselves is no protocol's to remove: no message reaches them, and shedding every
    live server would leave it. What live servers' caps add, and the caps of servers that
    crash after the drop, stay strict (fresh seed 35,300,221 with supply steps: 305 W of a
    server crashed at 6.43 s against a supply of 91 W from 7.77 s)."""
    bounds = PowerBounds(lease_s=5.0, reaction_s=0.05, round_s=0.5, skew_s=0.0)

    def run(live_cap: int) -> PowerLedger:
        ledger = PowerLedger(400, bounds=bounds)
        admitted(ledger, 0.0, 1, 300)
        admitted(ledger, 0.0, 2, 50)
        admitted(ledger, 0.0, 3, 50)
        ledger.crashed(1.0, 1)  # its 300 W in force until 5.0
        ledger.supply(2.0, 100)
        ledger.cap(2.01, 2, live_cap)
        ledger.cap(2.01, 3, 0)
        ledger.crashed(2.2, 3)  # down after the drop (at 0 W): nothing of it is excused
        return ledger

    f = run(0).figures(6.0)
    assert f.exempt["dead-at-drop"]["overload_watt_seconds"] == pytest.approx(200 * 2.5)
    assert f.strict_overload_ws == 0.0
    ledger = run(20)
    f = ledger.figures(6.0)
    assert f.exempt["dead-at-drop"]["overload_watt_seconds"] == pytest.approx(200 * 2.5)
    assert f.strict_overload_ws == pytest.approx(20 * 2.5)  # the live server's 20 W
    assert "from t=2.500: caps in force 320 W > supply 100 W" in ledger.strict_events
    ledger = PowerLedger(400, bounds=bounds)
    admitted(ledger, 0.0, 1, 300)
    admitted(ledger, 0.0, 2, 50)
    ledger.supply(2.0, 100)
    ledger.crashed(2.01, 1)  # crashed after the drop, its cut never applied: strict
    assert ledger.figures(6.0).strict_overload_ws == pytest.approx(250 * 2.5)


def test_a_restart_inherits_the_lease_until_it_applies_its_own_cap() -> None:
    ledger = PowerLedger(1000, bounds=PowerBounds(lease_s=5.0))
    admitted(ledger, 0.0, 1, 80)
    ledger.crashed(1.0, 1)
    ledger.started(2.0, 1, BID)
    assert ledger.cap_sum == 80
    ledger.cap(3.0, 1, 30)
    assert ledger.cap_sum == 30
    ledger.advance(6.0)  # the old lease's end no longer touches the new life's cap
    assert ledger.cap_sum == 30


def test_an_admitted_server_below_r_is_starved_while_the_supply_covers_r() -> None:
    ledger = PowerLedger(1000)
    admitted(ledger, 0.0, 1, 50)
    admitted(ledger, 0.0, 2, 50)
    ledger.cap(1.0, 2, 40)
    ledger.supply(3.0, 95)  # below sum r (100), above sum h (40): owed h, 40 >= 20
    f = ledger.figures(4.0)
    assert f.starved_server_s == pytest.approx(2.0) == f.strict_starved_server_s
    assert f.intervals == ((1.0, 3.0),)


def test_below_r_while_a_broker_holds_a_departed_members_cap_is_held_cap() -> None:
    """Rule (``held-cap``): while a broker holds a departed member's cap (``CapHeld``), the
    level owed is what the supply less the holds (beyond that node's own r, h in the owed
    sums) pays. Server 3, cut off (alive, r 50), may hold 90 W for all its broker knows:
    of 200 W, 110 W are left for servers 1 and 2 (sum r 100 fits) but 1 at 40 W is owed
    r: strict. With 3 holding 130 W, 70 W are left (sum h 40 fits, sum r does not): 1 at
    40 W is held-cap, not starved strictly; the hold counts ``round_s`` past its end (the
    lead may clear an aggregate that held it), then r is owed again, a rise of the owed
    level (``stale-aggregates`` within ``regime_s``)."""
    ledger = PowerLedger(200, bounds=PowerBounds(admission_s=0.0, round_s=0.5))
    for n in (1, 2, 3):
        admitted(ledger, 0.0, n, 50)
    ledger.held(1.0, CapHeld(group=1, node=3, watts=90, until=9.0))
    ledger.cap(1.0, 1, 40)
    ledger.advance(2.0)
    assert ledger.figures(2.0).strict_starved_server_s == pytest.approx(1.0)
    ledger.held(2.0, CapHeld(group=1, node=3, watts=130, until=9.0))
    ledger.advance(3.0)
    f = ledger.figures(3.0)
    assert f.strict_starved_server_s == pytest.approx(1.0)
    assert f.exempt["held-cap"]["starved_server_seconds"] == pytest.approx(1.0)
    ledger.held(3.0, CapHeld(group=1, node=3, watts=0, until=3.0))
    f = ledger.figures(4.0)  # the hold counts round_s more (a clearing of an older aggregate)
    assert f.exempt["held-cap"]["starved_server_seconds"] == pytest.approx(1.5)
    assert f.exempt["stale-aggregates"]["starved_server_seconds"] == pytest.approx(0.5)


def test_unadmitted_beyond_the_bound_is_starved_from_its_start() -> None:
    """Rule (FIGURES): a server not admitted within admission_s is starved from its start."""
    ledger = PowerLedger(1000)
    ledger.started(0.0, 1, BID)
    ledger.priced(2.5, 1, counted=True)
    ledger.cap(2.5, 1, 50)
    ledger.started(3.0, 2, BID)
    ledger.priced(3.5, 2, counted=True)  # within the bound: not starved
    ledger.cap(3.5, 2, 50)
    f = ledger.figures(5.0)
    assert f.exempt["unadmitted"]["starved_server_seconds"] == pytest.approx(2.5)
    assert f.strict_starved_server_s == 0
    assert f.admission_latency_s == {"median": 2.5, "p99": 2.5, "max": 2.5}
    assert f.intervals == ((0.0, 2.5),)
    assert f.longest_without_price_s == pytest.approx(2.5)


def test_a_joining_servers_bid_counts_in_the_regime_before_it_is_admitted() -> None:
    """Rule (owed): the regime is judged over every live server that bids, the joining ones
    too. A shortage clearing that admits two servers reaches one first: it applies its
    share (40 W, below r) a moment before the other is admitted; the supply (90 W) covers
    its r alone but not both servers' r, so it is owed its floor, not r. The regime judged
    over the admitted server alone would have owed r: measured, not counted as starved."""
    ledger = PowerLedger(90)
    ledger.started(0.0, 1, BID)
    ledger.started(0.0, 2, BID)
    ledger.priced(0.5, 1, counted=True)
    ledger.cap(0.5, 1, 40)  # the shortage share: above h (20), below r (50)
    ledger.priced(0.52, 2, counted=True)
    ledger.cap(0.52, 2, 40)
    f = ledger.figures(2.0)
    assert f.starved_server_s == 0 and f.intervals == ()
    assert f.joining_regime_server_s == pytest.approx(0.02)
    assert f.as_json()["joining_regime_server_seconds"] == 0.02
    ledger.cap(2.0, 1, 10)  # below its floor: starved, strict
    assert ledger.figures(3.0).strict_starved_server_s == pytest.approx(1.0)


def test_a_rise_of_the_owed_level_is_owed_after_the_bound() -> None:
    """Rule (owed): when the supply comes to cover every r (or bids fall, or servers leave),
    the servers are owed r after the raise bound (1 s), like a rise of their own r: raised
    within it, not starved (the wait is measured); not raised by its end, starved from the
    rise (stale-aggregates, a violating interval)."""
    for raised_at, starved, grace, intervals in (
        (1.5, 0.0, 1.0, ()),
        (2.5, 3.0, 0.0, ((1.0, 2.5),)),
    ):
        ledger = PowerLedger(90)
        admitted(ledger, 0.0, 1, 45)  # a shortage: 45 each, floors (20) met
        admitted(ledger, 0.0, 2, 45)
        ledger.supply(1.0, 120)  # covers both r (50) from here
        ledger.cap(raised_at, 1, 50)
        ledger.cap(raised_at, 2, 50)
        f = ledger.figures(4.0)
        assert f.starved_server_s == pytest.approx(starved)
        assert f.exempt["stale-aggregates"]["starved_server_seconds"] == pytest.approx(starved)
        assert f.regime_grace_server_s == pytest.approx(grace)
        assert f.intervals == intervals and f.strict_starved_server_s == 0


def test_a_rise_of_the_owed_level_during_a_partition_is_owed_after_the_heal() -> None:
    """Rule (owed): while the network is partitioned within the bound of a rise of the
    owed level, the bound runs from the heal: no price crosses a cut (fuzz seed 27,200,676
    with supply steps: two servers shed at 0 W were cut off one-way when the supply rose,
    and a price raised them 0.3 s after the heal, 2 ms past a bound counted from the
    rise). Without the partition the bound runs from the rise: unmet, the wait counts as
    starved from the rise (``stale-aggregates``)."""
    split = [True]
    ledger = PowerLedger(30, partitioned=lambda: split[0])
    for n in (1, 2):
        admitted(ledger, 0.0, n, 0)  # shed: the supply covers neither floor (20 W each)
    ledger.supply(1.0, 200)  # covers every r (50 W each): r owed after the bound
    ledger.advance(1.5)
    split[0] = False  # healed at 1.5 s: owed from 2.5 s
    ledger.advance(2.2)
    ledger.cap(2.2, 1, 50)
    ledger.cap(2.2, 2, 50)
    f = ledger.figures(3.0)
    assert f.strict_starved_server_s == 0.0 == f.starved_server_s
    assert f.regime_grace_server_s == pytest.approx(2 * 1.2)
    alone = PowerLedger(30)
    for n in (1, 2):
        admitted(alone, 0.0, n, 0)
    alone.supply(1.0, 200)
    alone.advance(2.2)
    alone.cap(2.2, 1, 50)
    alone.cap(2.2, 2, 50)
    f = alone.figures(3.0)  # unmet by the bound: starved from the rise
    assert f.exempt["stale-aggregates"]["starved_server_seconds"] == pytest.approx(2 * 1.2)
    assert f.regime_grace_server_s == 0.0
    # The rise's stale-aggregates window (regime_s, 3 s) runs from the heal too, like the
    # bound (seed 36,800,639: raised by the broker's next round, 1.0003 s after the heal)
    late = [True]
    cut = PowerLedger(50, partitioned=lambda: late[0])
    for n in (1, 2):
        admitted(cut, 0.0, n, 25)  # floors (20 W) met, r (50 W) not: a shortage
    cut.supply(1.0, 200)
    cut.advance(3.5)
    late[0] = False  # healed at 3.5 s: owed from 4.5 s, stale-aggregates until 6.5 s
    cut.cap(5.0, 1, 50)
    cut.cap(5.0, 2, 50)
    f = cut.figures(6.0)
    assert f.strict_starved_server_s == 0.0  # (1.0: 2 x 0.5 s from 4.5 s, before)
    assert f.exempt["stale-aggregates"]["starved_server_seconds"] == pytest.approx(2 * 4.0)


def test_a_server_shed_below_the_floors_gets_the_bound_when_the_supply_rises() -> None:
    """Rule (owed): below the sum of floors a server may be shed (cap 0); when the supply
    rises to cover the floors it is owed its h after the raise bound, like every rise of
    the owed level (fuzz --supply-steps: 22 of 6,700 seeds failed at the very instant of
    such a rise while a cap of 0 counted as strict at once). Left at 0 past the bound, it
    is strict from there (and starved from the rise)."""
    for raised_at, strict in ((1.2, 0.0), (3.0, 1.0)):
        ledger = PowerLedger(30)  # below the floors (2 x 20): one shed
        admitted(ledger, 0.0, 1, 30)
        admitted(ledger, 0.0, 2, 0)
        ledger.supply(1.0, 60)  # covers both floors from here, not both r
        ledger.cap(raised_at, 1, 30)
        ledger.cap(raised_at, 2, 30)
        f = ledger.figures(4.0)
        assert f.strict_starved_server_s == pytest.approx(strict)
        assert bool(ledger.strict_events) == bool(strict)


def test_a_rise_of_r_is_owed_after_the_bound() -> None:
    ledger = PowerLedger(1000)
    admitted(ledger, 0.0, 1, 50)
    ledger.bid(1.0, 1, Bid(floor=20, required=70, maximum=100))
    ledger.cap(1.5, 1, 70)  # met within the bound
    ledger.bid(2.0, 1, Bid(floor=20, required=90, maximum=100))
    f = ledger.figures(4.0)  # not met: starved from 2.0 (the bound, then on) as slow-raise
    assert f.exempt["slow-raise"]["starved_server_seconds"] == pytest.approx(2.0)
    assert f.starved_server_s == pytest.approx(2.0)


def test_the_regime_follows_the_current_bids_not_the_lagging_owed_values() -> None:
    """Rule: what a server is owed (r or h) depends on whether S covers the sum of the
    current r; a rise still within its bound lags only that server's own owed r. (A
    shortage cleared for a rise must not count as starving the others.)"""
    ledger = PowerLedger(110)
    admitted(ledger, 0.0, 1, 55)
    admitted(ledger, 0.0, 2, 55)
    ledger.bid(1.0, 2, Bid(floor=20, required=70, maximum=100))  # sum r 120 > S 110
    ledger.cap(1.2, 1, 45)  # the shortage clearing: 45 + 65 <= 110, floors met
    ledger.cap(1.2, 2, 65)
    f = ledger.figures(3.0)
    assert f.starved_server_s == 0 and f.intervals == ()


# ---------------------------------------------------------------- canaries


CANARY: dict[str, Any] = {
    "scenario": {"name": "canary", "seed": 3, "duration": 16.0, "clusters": 2, "nodes": 3},
    "network": {"loss": 0.0},
    "supply": {"profile": "steps", "steps": [[0.0, 1000], [9.0, 700]]},
    "demand": {"profile": "steady", "required": 100},
}


class CapDroppingClient(ClientMachine):
    """Canary: drops its cap to 0 when its broker changes (a crash), instead of keeping it."""

    def _on_leader_elected(self, ev: LeaderElected, now: float) -> list[object]:
        was = self.broker
        out = super()._on_leader_elected(ev, now)
        if was and self.broker != was and self.allocation:
            out += self._set_allocation(0, "lease")
        return out


class CutDelayingBroker(BrokerMachine):
    """Canary: publishes a price that raises the caps at once but holds back every price
    that cuts them (a higher price than the last one it published)."""

    published: float | None = None

    def _held_back(self, actions: list[object]) -> list[object]:
        out = []
        for act in actions:
            price = getattr(getattr(act, "message", None), "price", None)
            if price is not None and self.published is not None and price > self.published:
                continue  # a cut: held back
            if price is not None:
                self.published = price
            out.append(act)
        return out

    def _on_clearing(self, sender: Any, msg: Any, now: float, incarnation: int = 0) -> list[object]:
        return self._held_back(super()._on_clearing(sender, msg, now, incarnation))

    def _on_deadline(self, ev: Any, now: float) -> list[object]:
        return self._held_back(super()._on_deadline(ev, now))  # its repeats too


def canary_run(**failures: Any) -> Any:
    doc = dict(CANARY, failures=[failures] if failures else [])
    return Simulation(parse_scenario(doc)).run()


def test_the_canary_scenario_holds_the_guarantee_with_the_real_machines() -> None:
    r = canary_run(at=8.0, action="crash_broker", cluster=1)
    assert r.violations == ()
    assert r.power.strict_overload_ws == 0 and r.power.strict_starved_server_s == 0


def test_canary_client_dropping_its_cap_at_a_broker_crash_is_caught(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.setattr(node_mod, "ClientMachine", CapDroppingClient)
    r = canary_run(at=8.0, action="crash_broker", cluster=1)
    assert r.power.strict_starved_server_s > 0
    assert any(v.invariant == "power-guarantee" and "below" in v.detail for v in r.violations)


def test_canary_broker_applying_raises_before_cuts_is_caught(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.setattr(node_mod, "BrokerMachine", CutDelayingBroker)
    r = canary_run()
    assert r.power.strict_overload_ws > 0
    assert any(v.invariant == "power-guarantee" and "> supply" in v.detail for v in r.violations)


@pytest.mark.parametrize(
    ("role", "mutant", "words"),
    [
        ("ClientMachine", CapDroppingClient, "below"),
        ("BrokerMachine", CutDelayingBroker, "> supply"),
    ],
)
def test_fuzz_catches_the_power_canaries(
    role: str, mutant: type, words: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    """``powergrid fuzz --supply-steps`` (the drawn data centres, their crashes, partitions,
    loss and supply changes) catches each canary by the strict power guarantee within the
    first 60 seeds (today: seeds 19 and 24; of seeds 0-59, 5 catch the broker canary; of
    0-29, 5 the client canary). Without supply steps the broker canary needs a cut that
    only a join or a crash makes: since the first price moved to ~0.84 s, only seeds 10
    and 1,045 of 0-1,499 caught it (the seeds were 109 and 114 at ~1.3 s)."""
    monkeypatch.setattr(node_mod, role, mutant)
    for seed in range(0, 60):
        r = run_datacentre(seed, supply_steps=True)
        if any(v.invariant == "power-guarantee" and words in v.detail for v in r.violations):
            return
    pytest.fail(f"{mutant.__name__} was not caught by the fuzz within 60 seeds")


def _one_cluster_loses_its_broker(raised_at: float, placed: bool) -> PowerLedger:
    """Cluster 1: server 1 (broker-capable) and 2; 1 leaves at 0.5 s, the supply rises to
    cover every r at 8.0 s, a broker-capable server 3 of the cluster starts at 12.0 s and
    2 is raised to its r at ``raised_at``."""
    servers = {1: (1, True, 20), 2: (1, False, 20), 3: (1, True, 20)}
    ledger = PowerLedger(40, servers=servers if placed else None)
    admitted(ledger, 0.0, 1, 20)
    admitted(ledger, 0.0, 2, 20)
    ledger.left(0.5, 1)
    ledger.supply(8.0, 1000)
    ledger.started(12.0, 3, BID)
    ledger.priced(12.1, 3, counted=True)
    ledger.cap(12.1, 3, 50)
    ledger.cap(raised_at, 2, 50)
    return ledger


def test_a_cluster_with_no_live_broker_capable_server_is_owed_a_bound_after_one_starts() -> None:
    """Rule (``no-broker``): only a broker-capable server can price its cluster (a client
    may not raise its own cap, lease expiry never raises one), so while a server's
    cluster has no live broker-capable server its starvation is ``no-broker``, and what
    it is owed is owed ``admission_s`` after one starts again (fuzz seed 35,300,249: the
    supply rose while the cluster's only broker-capable node was down). Without the
    placement the same run is ``stale-aggregates`` for three seconds after the rise and
    strict from 11.0 s."""
    f = _one_cluster_loses_its_broker(12.8, placed=True).figures(14.0)
    assert f.exempt["no-broker"]["starved_server_seconds"] == pytest.approx(4.8)  # 8.0-12.8
    assert f.strict_starved_server_s == 0.0 and f.intervals == ((8.0, 12.8),)
    late = _one_cluster_loses_its_broker(13.5, placed=True)
    f = late.figures(14.0)  # owed from 13.0 s, a bound after server 3 started
    assert f.exempt["no-broker"]["starved_server_seconds"] == pytest.approx(5.0)
    assert f.strict_starved_server_s == pytest.approx(0.5)
    assert late.strict_events[0].startswith("from t=13.000: 1 admitted server(s)")
    f = _one_cluster_loses_its_broker(12.8, placed=False).figures(14.0)
    assert f.exempt["stale-aggregates"]["starved_server_seconds"] == pytest.approx(4.0)
    assert f.strict_starved_server_s == pytest.approx(0.8)


def _an_island(placed: bool, raised_at: float | None) -> PowerLedger:
    """Five provisioned servers: cluster 1 is 1 (broker-capable) and 2, cluster 2 is 3
    (broker-capable), 4 and 5, which crash at 1.0 s; 3 starts again at 12.0 s. The supply
    (200 W) covers every floor (100 W) and, from 1.0 s, every live server's r. Server 1 is
    raised at 12.5 s, 2 at ``raised_at``."""
    servers = {1: (1, True, 20), 2: (1, False, 20), 3: (2, True, 20), 4: (2, False, 20)}
    servers[5] = (2, False, 20)
    ledger = PowerLedger(200, servers=servers if placed else None)
    for n in (1, 2, 3, 4, 5):
        admitted(ledger, 0.0, n, 40)
    for n in (3, 4, 5):
        ledger.crashed(1.0, n)
    ledger.started(12.0, 3, BID)
    ledger.priced(12.1, 3, counted=True)
    ledger.cap(12.1, 3, 50)
    ledger.cap(12.5, 1, 50)
    if raised_at is not None:
        ledger.cap(raised_at, 2, 50)
    return ledger


def test_servers_a_lead_counting_fewer_than_half_can_price_are_owed_their_floors() -> None:
    """Rule (``islanded``): while the live servers whose cluster has a live broker-capable
    server are fewer than half the provisioned ones, no lead can tell the others' crash
    from a cut in which they are a majority that may take all but these servers' floors:
    below r but not below h is ``islanded`` (fuzz seed 26,300,253). When that ends, the
    level they are owed rises after the raise bound, like any rise of the owed level."""
    f = _an_island(True, 12.9).figures(14.0)
    # (until 5.0 s the three dead servers' caps, 120 W on their leases, leave 80 W: held-cap)
    assert f.exempt["held-cap"]["starved_server_seconds"] == pytest.approx(2 * 4.0)
    assert f.exempt["islanded"]["starved_server_seconds"] == pytest.approx(2 * 7.0)
    assert f.strict_starved_server_s == 0.0 and f.intervals == ((5.0, 12.0),)
    assert f.regime_grace_server_s == pytest.approx(2 * 0.5 + 0.4)
    never = _an_island(True, None)
    f = never.figures(14.0)  # 2 unraised past the bound: from the rise, then strict
    assert f.exempt["stale-aggregates"]["starved_server_seconds"] == pytest.approx(1.5)
    assert f.strict_starved_server_s == pytest.approx(1.0)
    assert never.strict_events[0].startswith("from t=13.000: 1 admitted server(s)")
    f = _an_island(False, 12.9).figures(14.0)  # without the placement: strict from 8.0 s
    assert f.strict_starved_server_s == pytest.approx(4.5 + 4.9)  # raised at 12.5, 12.9 s
    # the dead servers' caps until 5.0 s (held-cap), the departed bids' window until 7.0 s
    assert f.exempt["held-cap"]["starved_server_seconds"] == pytest.approx(8.0)
    assert f.exempt["stale-aggregates"]["starved_server_seconds"] == pytest.approx(6.0)


def test_a_dead_servers_cap_on_its_lease_is_paid_before_the_floors() -> None:
    """Rule (``held-cap``): a crashed server draws its cap until its lease ends and no
    message lowers it, so the live servers are owed only the level the supply less those
    caps pays (fresh seed 41,005,695 with supply steps: the live servers' floors did not
    fit beside dead servers' caps on their leases);
    once the lease ends they are owed their floors again, within the raise bound."""
    ledger = PowerLedger(150)
    for n in (1, 2, 3):
        admitted(ledger, 0.0, n, 50)
    ledger.crashed(1.0, 3)  # 50 W on its lease until 5.0 s
    ledger.supply(2.0, 60)  # 60 - 50 = 10 W < the live floors, 40 W
    ledger.cap(2.0, 1, 5)
    ledger.cap(2.0, 2, 5)
    ledger.cap(5.5, 1, 20)  # the lease has ended: floors within the bound
    ledger.cap(5.5, 2, 20)
    f = ledger.figures(7.0)
    assert f.exempt["held-cap"]["starved_server_seconds"] == pytest.approx(2 * 3.0)
    assert f.regime_grace_server_s == pytest.approx(2 * 0.5)
    assert f.strict_starved_server_s == 0.0 and f.overload_ws == 0.0 and f.intervals == ()
