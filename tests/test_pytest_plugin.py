"""The pytest plugin (entry point pytest11 "powergrid"): an app's test through a lead
broker crash with the sim_run fixture, and the seed in a failure's report."""

from __future__ import annotations

from typing import Any

import pytest
import trio

import powergrid as pg
from powergrid.testing.apps import SimDatacenter, SimHandle
from powergrid.testing.pytest_plugin import SimRun


async def price_watcher(node: SimHandle, seen: list[tuple[float, Any]]) -> None:
    """The app under test: bids, keeps every price from a broker."""
    await node.set_bid(pg.Bid(floor=50, required=100, maximum=300))
    async for event in node.events():
        if isinstance(event, pg.PriceUpdated) and not event.local:
            seen.append((trio.current_time(), event))


def test_the_plugin_is_loaded_through_its_entry_point(pytestconfig: pytest.Config) -> None:
    """Rule: installing powergrid is enough; pytest loads the plugin by its entry point."""
    assert pytestconfig.pluginmanager.has_plugin("powergrid")


def test_an_app_sees_a_new_lead_brokers_price_after_a_crash(sim_run: SimRun) -> None:
    """Rule: sim_run runs the app's own code on a simulated data centre in virtual time:
    crash the lead broker, and the app must see the new lead's price within 6 s."""

    async def main(dc: SimDatacenter) -> list[tuple[float, Any]]:
        seen: list[tuple[float, Any]] = []
        dc.start(pg.NodeConfig(port=9002, broker_capable=True, rank=2, supply=1000))
        dc.start(pg.NodeConfig(port=9001, broker_capable=True, rank=1, supply=1000))
        app = dc.start(pg.NodeConfig(port=9100))
        async with trio.open_nursery() as nursery:
            nursery.start_soon(price_watcher, app, seen)
            await trio.sleep_until(10)
            dc.crash(pg.node_id("127.0.0.1", 9002))  # the lead broker
            await trio.sleep(8)
            nursery.cancel_scope.cancel()
        return seen

    seen = sim_run(main, seed=1, loss=0.01)
    before = [ev for t, ev in seen if t < 10]
    assert before, "no price before the crash"
    after = [t for t, ev in seen if t > 10 and ev.epoch > before[-1].epoch]
    assert after and after[0] - 10 < 6.0


def test_a_failure_names_its_seed(
    sim_run: SimRun, powergrid_seed: int, pytestconfig: pytest.Config
) -> None:
    """Rule: what main raises reaches the test, with the seed to replay it in a note;
    a run that names no seed takes powergrid_seed (--powergrid-seed, else 0)."""

    async def main(dc: SimDatacenter) -> None:
        await trio.sleep(1.5)
        raise LookupError("the app's own bug")

    with pytest.raises(LookupError) as info:
        sim_run(main, seed=7)
    assert "seed 7" in " ".join(info.value.__notes__)

    async def when(dc: SimDatacenter) -> float:
        await trio.sleep(2.0)
        return trio.current_time()

    assert sim_run(when) == 2.0  # virtual seconds, at once
    assert powergrid_seed == (pytestconfig.getoption("--powergrid-seed") or 0)
