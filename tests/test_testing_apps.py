"""powergrid.testing.apps: an app written against the public handle, tested on a simulated
data centre in virtual time, through a crash of its lead broker."""

from __future__ import annotations

import time

import trio

import powergrid as pg
from powergrid.testing.apps import SimHandle, run, sim_datacenter


async def price_watcher(
    node: SimHandle | pg.UdpHandle, seen: list[tuple[float, pg.PriceUpdated]]
) -> None:
    """The app under test: bid for power, and keep every price the node hears (virtual s)."""
    await node.set_bid(pg.Bid(floor=50, required=100, maximum=300))
    async for event in node.events():
        if isinstance(event, pg.PriceUpdated) and not event.local:
            seen.append((trio.current_time(), event))


def scenario(seed: int) -> tuple[list[tuple[float, pg.PriceUpdated]], float]:
    """Two brokers and the app; the lead broker crashes at 10 s; the app's prices and the time."""
    seen: list[tuple[float, pg.PriceUpdated]] = []
    crash_at = 10.0

    async def main() -> None:
        async with sim_datacenter(seed=seed, loss=0.01) as dc:
            dc.start(pg.NodeConfig(port=9002, broker_capable=True, rank=2, supply=1000))
            dc.start(pg.NodeConfig(port=9001, broker_capable=True, rank=1, supply=1000))
            app = dc.start(pg.NodeConfig(port=9100))
            async with trio.open_nursery() as nursery:
                nursery.start_soon(price_watcher, app, seen)
                await trio.sleep_until(crash_at)
                dc.crash(pg.node_id("127.0.0.1", 9002))
                await trio.sleep(8)
                nursery.cancel_scope.cancel()

    run(main)
    return seen, crash_at


def test_app_still_gets_a_price_after_its_lead_broker_crashes() -> None:
    """Rule (issue 18): an app's own test can say "crash the lead broker, then my app must
    see a price of a new lead within 6 s", and it runs in virtual time, fast."""
    t0 = time.perf_counter()
    seen, crash_at = scenario(seed=1)
    wall = time.perf_counter() - t0
    before = [ev for t, ev in seen if t < crash_at]
    after = [(t, ev) for t, ev in seen if t > crash_at and ev.epoch > before[-1].epoch]
    assert before and before[-1].allocation == 300  # 1000 W for one 300 W bid
    assert after, "no price of a new lead after the crash"
    assert after[0][0] - crash_at < 6.0
    assert wall < 5.0  # 18 virtual seconds


def test_the_same_seed_gives_the_same_run() -> None:
    """Rule: a seed fixes the run: the app sees the same prices at the same virtual times."""
    first, _ = scenario(seed=3)
    again, _ = scenario(seed=3)
    assert [(t, ev) for t, ev in first] == [(t, ev) for t, ev in again]
