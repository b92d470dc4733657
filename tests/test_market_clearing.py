"""Tests of powergrid.protocols.market.bids and .clearing (pure functions)."""

from __future__ import annotations

import itertools

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from powergrid import wire
from powergrid.errors import ConfigError, DecodeError, PayloadTooLargeError, UsageError
from powergrid.protocols.market import (
    FILL_ONE,
    FLOORS_CUT,
    MAX_GRID_POINTS,
    MAX_PRIORITY,
    Bid,
    ClearingResult,
    Grid,
    Regime,
    Totals,
    aggregate,
    allocate,
    budget,
    clear,
    combine,
    totals_from_message,
    totals_to_message,
)

GRID = Grid(price_min=0.0, price_max=1.0, points=5)

# ------------------------------------------------------------- strategies


@st.composite
def bids(draw: st.DrawFn, max_priority: int = 3) -> Bid:
    h = draw(st.integers(0, 500))
    r = h + draw(st.integers(0, 500))
    m = r + draw(st.integers(0, 1000))
    prio = draw(st.integers(0, max_priority))
    n = draw(st.integers(0, 4))
    prices = sorted(set(draw(st.lists(st.floats(-0.5, 1.5), min_size=n, max_size=n))))
    watts = sorted(
        (draw(st.integers(r, m)) for _ in prices),
        reverse=True,
    )
    return Bid(
        floor=h,
        required=r,
        maximum=m,
        priority=prio,
        corners=tuple(zip(prices, watts, strict=True)),
    )


grids = st.builds(
    lambda lo, width, points: Grid(price_min=lo, price_max=lo + width, points=points),
    st.floats(0, 100),
    st.floats(1, 100),
    st.integers(2, 40),
)
markets = st.tuples(grids, st.lists(bids(), min_size=1, max_size=30))
previous_regimes = st.sampled_from([None, Regime.SURPLUS, Regime.NORMAL, Regime.SHORTAGE])


def supply_for(draw: st.DrawFn, bs: list[Bid]) -> int:
    top = sum(b.maximum for b in bs)
    return draw(st.integers(0, top + top // 10 + 10))


# ------------------------------------------------------------------- bids


def test_grid_prices_are_even_and_end_exactly() -> None:
    """Grid rule: points prices evenly spaced from price_min to price_max inclusive."""
    assert GRID.prices == (0.0, 0.25, 0.5, 0.75, 1.0)
    assert Grid(price_min=1.0, price_max=3.0, points=2).prices == (1.0, 3.0)


@pytest.mark.parametrize(
    ("kwargs", "words"),
    [
        ({"price_min": 1.0, "price_max": 1.0}, r"Grid\.price_max must be a finite number above"),
        ({"price_max": float("nan")}, r"Grid\.price_max must be a finite number above"),
        ({"price_min": float("-inf")}, r"Grid\.price_min must be a finite number, got -inf"),
        ({"points": 1}, r"Grid\.points: must be a whole number in 2\.\."),
        ({"points": MAX_GRID_POINTS + 1}, "datagram"),
    ],
)
def test_grid_config_errors(kwargs: dict[str, float], words: str) -> None:
    """Grid rule: invalid grids raise ConfigError saying what to fix."""
    with pytest.raises(ConfigError, match=words):
        Grid(**kwargs)  # type: ignore[arg-type]


@pytest.mark.parametrize(
    ("kwargs", "words"),
    [
        ({"floor": 10, "required": 5, "maximum": 20}, "floor <= required"),
        ({"floor": 0, "required": 30, "maximum": 20}, "floor <= required"),
        ({"floor": -1, "required": 5, "maximum": 20}, r"Bid\.floor: .*>= 0, got -1"),
        ({"floor": 0, "required": 5, "maximum": 2**32}, "maximum <= 4294967295"),
        ({"floor": 0, "required": 5, "maximum": 20, "priority": 16}, r"Bid\.priority: .*got 16"),
        ({"floor": 0, "required": 5, "maximum": 20, "corners": ((0.1, 4),)}, "outside required"),
        ({"floor": 0, "required": 5, "maximum": 20, "corners": ((0.1, 6), (0.2, 7))}, "rise"),
        ({"floor": 0, "required": 5, "maximum": 20, "corners": ((0.2, 6), (0.1, 5))}, "strictly"),
        ({"floor": 0, "required": 5, "maximum": 20, "corners": ((float("inf"), 6),)}, "finite"),
        ({"floor": 0, "required": 5, "maximum": 20, "corners": [(i, 5) for i in range(9)]}, "8"),
        (
            {"floor": 0.5, "required": 5, "maximum": 20},
            r"Bid\.floor: must be a whole number of watts",
        ),
    ],
)
def test_invalid_bid_raises_config_error(kwargs: dict[str, object], words: str) -> None:
    """Bid rule: h <= r <= d(p) <= m, d never rising, priority 0..15, else ConfigError."""
    with pytest.raises(ConfigError, match=words):
        Bid(**kwargs)  # type: ignore[arg-type]


def test_invalid_wire_bid_is_refused_by_decode() -> None:
    """Bid rule: a peer's Bid that breaks the bid rules never decodes."""
    bad = wire.Bid(seq=1, floor=30, required=20, maximum=40, priority=0, lead_epoch=0, corners=())
    data = wire.encode(1, 5, 1, bad)
    with pytest.raises(DecodeError, match="floor <= required"):
        wire.decode(data)


def test_default_curve_ladder_is_exact() -> None:
    """Ladder rule: (m, floor(d(p_k))..., r); the default curve runs from m at p_min to r."""
    b = Bid(floor=50, required=100, maximum=200)
    assert b.ladder(GRID) == (200, 200, 175, 150, 125, 100, 100)
    b = Bid(floor=0, required=0, maximum=10)
    assert b.ladder(Grid(points=4)) == (10, 10, 6, 3, 0, 0)  # 10 - 10/3 = 6.67 -> 6


def test_corner_curve_ladder_is_flat_outside_and_linear_between() -> None:
    """Ladder rule: corners joined by lines, flat before the first and after the last."""
    b = Bid(floor=20, required=80, maximum=150, corners=((0.2, 150), (0.6, 90)))
    assert b.ladder(GRID) == (150, 150, 142, 105, 90, 90, 80)


@given(grids, bids())
def test_ladder_never_rises_and_stays_within_r_m(grid: Grid, bid: Bid) -> None:
    """Ladder rule: never rising, first m, last r, every rung within r..m, level(j) agrees."""
    ladder = bid.ladder(grid)
    assert ladder[0] == bid.maximum and ladder[-1] == bid.required
    assert all(a >= b for a, b in itertools.pairwise(ladder))
    assert [bid.level(j, grid) for j in range(len(ladder))] == list(ladder)


def test_bid_message_round_trip() -> None:
    """A bid survives to_message, the codec and from_message."""
    b = Bid(floor=1, required=2, maximum=9, priority=7, corners=((0.5, 5),))
    env = wire.decode(wire.encode(1, 5, 1, b.to_message(3)))
    assert isinstance(env.message, wire.Bid)
    assert env.message.seq == 3
    assert Bid.from_message(env.message) == b


# ------------------------------------------------------------- aggregates


def test_aggregate_sums_ladders_and_classes() -> None:
    """Aggregation rule: demand summed per grid price, (h, r, m) summed per class."""
    t = aggregate(
        [
            Bid(floor=50, required=100, maximum=200, priority=1),
            Bid(floor=20, required=80, maximum=150, corners=((0.2, 150), (0.6, 90))),
        ],
        GRID,
    )
    assert t.bids == 2
    assert t.demand == (350, 317, 255, 215, 190)
    assert t.classes[:2] == ((20, 80, 150), (50, 100, 200))
    assert (t.floor, t.required, t.maximum) == (70, 180, 350)
    assert t.rungs() == (350, 350, 317, 255, 215, 190, 180)


@given(markets)
def test_aggregate_message_round_trip(market: tuple[Grid, list[Bid]]) -> None:
    """Aggregate rule: totals survive the wire."""
    grid, bs = market
    t = aggregate(bs, grid)
    msg = totals_to_message(t, cluster=3, epoch=2, seq=9)
    env = wire.decode(wire.encode(0, 5, 1, msg))
    assert isinstance(env.message, wire.Aggregate)
    assert totals_from_message(env.message, grid) == t


def test_largest_aggregate_fits_one_datagram() -> None:
    """Aggregate rule: MAX_GRID_POINTS points with every class fits MAX_DATAGRAM."""
    grid = Grid(points=MAX_GRID_POINTS)
    bs = [Bid(floor=1, required=2, maximum=2**32 - 1, priority=p) for p in range(MAX_PRIORITY + 1)]
    msg = totals_to_message(aggregate(bs, grid), cluster=1, epoch=1, seq=1)
    assert len(wire.encode(0, 5, 1, msg)) <= wire.MAX_DATAGRAM
    too_big = Grid.__new__(Grid)  # bypass validation to show the limit is tight
    object.__setattr__(too_big, "points", MAX_GRID_POINTS + 1)
    object.__setattr__(too_big, "price_min", 0.0)
    object.__setattr__(too_big, "price_max", 1.0)
    object.__setattr__(too_big, "prices", tuple(float(i) for i in range(MAX_GRID_POINTS + 1)))
    msg = totals_to_message(aggregate(bs, too_big), cluster=1, epoch=1, seq=1)
    with pytest.raises(PayloadTooLargeError):
        wire.encode(0, 5, 1, msg)


def test_totals_from_message_refuses_another_grid() -> None:
    """Aggregate rule: an aggregate on another grid is refused (None)."""
    msg = totals_to_message(
        aggregate([Bid(floor=0, required=1, maximum=2)], GRID), cluster=1, epoch=1, seq=1
    )
    assert totals_from_message(msg, Grid(points=6)) is None


# --------------------------------------------------------- clearing rules

TWO = [
    Bid(floor=50, required=100, maximum=200, priority=1),
    Bid(floor=20, required=80, maximum=150, corners=((0.2, 150), (0.6, 90))),
]
TOTALS = aggregate(TWO, GRID)


def _allocs(result: ClearingResult) -> list[int]:
    return [allocate(b, result, GRID) for b in TWO]


def test_surplus_gives_maximum_at_minimum_price() -> None:
    """Surplus rule: S >= sum m -> price_min, everyone gets m."""
    r = clear(TOTALS, 350, GRID)
    assert r == ClearingResult(regime=Regime.SURPLUS, price=0.0)
    assert _allocs(r) == [200, 150]
    assert budget(TOTALS, r) == 350


def test_normal_interpolates_between_grid_prices() -> None:
    """Normal rule: the first rung with demand <= S, fill to make the total S, price between."""
    r = clear(TOTALS, 300, GRID)
    # rungs (350, 350, 317, 255, ...): 317 > 300 >= 255 -> rung 3, fill (300-255)/(317-255)
    assert r.regime is Regime.NORMAL and r.level == 3
    assert r.fill == (45 << 32) // 62
    assert r.price == pytest.approx(0.5 - 45 / 62 * 0.25)
    assert _allocs(r) == [168, 131]  # 150 + 25*45/62 = 168.1; 105 + 37*45/62 = 131.9
    assert budget(TOTALS, r) == 299


def test_normal_between_required_and_last_grid_price() -> None:
    """Normal rule: between d(price_max) and r the price is price_max, everyone >= r."""
    r = clear(TOTALS, 185, GRID)
    assert (r.regime, r.level, r.price) == (Regime.NORMAL, 6, 1.0)
    assert _allocs(r) == [100, 85]  # fill 1/2 between 90 and 80


def test_shortage_serves_floors_then_classes_from_the_top() -> None:
    """Shortage rule: floors first, then highest class, pro rata in the cut class."""
    r = clear(TOTALS, 150, GRID)
    assert r == ClearingResult(
        regime=Regime.SHORTAGE, price=1.0, level=0, fill=FILL_ONE // 2, deficit=30
    )
    assert _allocs(r) == [100, 50]  # class 1 gets r=100; class 0: 20 + 60/2


def test_shortage_below_floors_cuts_floors_pro_rata() -> None:
    """Shortage rule: S < sum h -> everyone gets floor(h * S / sum h)."""
    r = clear(TOTALS, 35, GRID)
    assert (r.level, r.fill, r.deficit) == (FLOORS_CUT, FILL_ONE // 2, 145)
    assert _allocs(r) == [25, 10]


def test_shortage_below_floors_pays_the_highest_class_first() -> None:
    """Shortage rule: S < sum h -> the highest class (where brokers put held caps) gets its
    floors first and the others share what is left pro rata (``FLOORS_CUT``); below its
    floors it is cut pro rata and the others get 0 (``FLOORS_CUT + 1``)."""
    held = Bid(floor=30, required=30, maximum=30, priority=MAX_PRIORITY)
    bs = [held, *TWO]  # floors 30 + 70
    t = aggregate(bs, GRID)
    r = clear(t, 65, GRID)  # 30 first, then 35 of 70: half of every other floor
    assert (r.level, r.fill) == (FLOORS_CUT, FILL_ONE // 2)
    assert [allocate(b, r, GRID) for b in bs] == [30, 25, 10] and budget(t, r) == 65
    r = clear(t, 15, GRID)  # the held 30 W alone exceed the supply
    assert (r.level, r.fill) == (FLOORS_CUT + 1, FILL_ONE // 2)
    assert [allocate(b, r, GRID) for b in bs] == [15, 0, 0] and budget(t, r) == 15


def test_negative_supply_is_usage_error() -> None:
    """Local misuse: a negative or float supply raises UsageError."""
    with pytest.raises(UsageError):
        clear(TOTALS, -1, GRID)
    with pytest.raises(UsageError):
        clear(TOTALS, 1.5, GRID)  # type: ignore[arg-type]


def test_empty_market_is_surplus() -> None:
    """Surplus rule: with no bids any supply is a surplus."""
    empty = combine([], GRID)
    assert clear(empty, 0, GRID).regime is Regime.SURPLUS


# ------------------------------------------------------------- hysteresis


def test_hysteresis_holds_shortage_inside_the_band() -> None:
    """Hysteresis rule: after a shortage, S in [sum r, (1+b) sum r) holds shortage at r each."""
    r = clear(TOTALS, 182, GRID, previous=Regime.SHORTAGE, band=0.02)  # 180 * 1.02 = 183.6
    assert r == ClearingResult(regime=Regime.SHORTAGE, price=1.0, level=0)
    assert _allocs(r) == [100, 80]
    assert clear(TOTALS, 184, GRID, previous=Regime.SHORTAGE).regime is Regime.NORMAL
    assert clear(TOTALS, 182, GRID, previous=Regime.NORMAL).regime is Regime.NORMAL


def test_hysteresis_enters_surplus_only_above_the_band() -> None:
    """Hysteresis rule: from normal, surplus needs S >= (1+b) sum m; meanwhile everyone gets m."""
    r = clear(TOTALS, 355, GRID, previous=Regime.NORMAL)  # 350 * 1.02 = 357
    assert r == ClearingResult(regime=Regime.NORMAL, price=0.0, level=1)
    assert _allocs(r) == [200, 150]
    assert clear(TOTALS, 357, GRID, previous=Regime.NORMAL).regime is Regime.SURPLUS
    assert clear(TOTALS, 350, GRID, previous=Regime.SURPLUS).regime is Regime.SURPLUS
    assert clear(TOTALS, 349, GRID, previous=Regime.SURPLUS).regime is Regime.NORMAL


@given(st.lists(st.integers(-3, 3), min_size=2, max_size=40))
def test_hysteresis_stops_flapping_at_a_boundary(wiggles: list[int]) -> None:
    """Hysteresis rule: S hovering within the band around sum r changes regime at most once."""
    previous: Regime | None = None
    changes = 0
    for w in wiggles:
        r = clear(TOTALS, 180 + w, GRID, previous=previous)
        if previous is not None and r.regime is not previous:
            changes += 1
        previous = r.regime
    assert changes <= 1


# ------------------------------------------------------------- properties


@st.composite
def cleared(draw: st.DrawFn) -> tuple[Grid, list[Bid], int, ClearingResult, Regime | None]:
    grid, bs = draw(markets)
    s = supply_for(draw, bs)
    previous = draw(previous_regimes)
    return grid, bs, s, clear(aggregate(bs, grid), s, grid, previous=previous), previous


@settings(max_examples=100)
@given(cleared())
def test_allocations_never_exceed_supply(
    case: tuple[Grid, list[Bid], int, ClearingResult, object],
) -> None:
    """Safety: the allocations every client computes from its own bid sum to at most S."""
    grid, bs, s, r, _ = case
    assert sum(allocate(b, r, grid) for b in bs) <= s


@settings(max_examples=100)
@given(cleared())
def test_required_power_whenever_supply_covers_it(
    case: tuple[Grid, list[Bid], int, ClearingResult, object],
) -> None:
    """Guarantee: while S >= sum r every client gets at least r (and at most m)."""
    grid, bs, s, r, _ = case
    for b in bs:
        a = allocate(b, r, grid)
        assert a <= b.maximum
        if s >= sum(x.required for x in bs):
            assert a >= b.required


@given(cleared())
def test_price_within_bounds(case: tuple[Grid, list[Bid], int, ClearingResult, object]) -> None:
    """Guarantee: price_min <= price <= price_max; surplus at the min, shortage at the max."""
    grid, _, _, r, _ = case
    assert grid.price_min <= r.price <= grid.price_max
    if r.regime is Regime.SURPLUS:
        assert r.price == grid.price_min
    if r.regime is Regime.SHORTAGE:
        assert r.price == grid.price_max


@given(markets, st.data())
def test_surplus_gives_everyone_maximum(
    market: tuple[Grid, list[Bid]], data: st.DataObject
) -> None:
    """Surplus rule: S >= sum m (no hysteresis) gives everyone m."""
    grid, bs = market
    top = sum(b.maximum for b in bs)
    s = data.draw(st.integers(top, 2 * top + 1))
    r = clear(aggregate(bs, grid), s, grid)
    assert r.regime is Regime.SURPLUS
    assert [allocate(b, r, grid) for b in bs] == [b.maximum for b in bs]


@given(markets, st.data())
def test_normal_total_is_supply_up_to_rounding(
    market: tuple[Grid, list[Bid]], data: st.DataObject
) -> None:
    """Normal rule: sum r <= S < sum m gives a total within one watt per bid (plus one) of S."""
    grid, bs = market
    req, top = sum(b.required for b in bs), sum(b.maximum for b in bs)
    if req >= top:
        return
    s = data.draw(st.integers(req, top - 1))
    r = clear(aggregate(bs, grid), s, grid)
    assert r.regime is Regime.NORMAL
    total = sum(allocate(b, r, grid) for b in bs)
    assert s - len(bs) - 1 <= total <= s


@settings(max_examples=100)
@given(st.tuples(grids, st.lists(bids(MAX_PRIORITY), min_size=1, max_size=30)), st.data())
def test_shortage_respects_priorities(market: tuple[Grid, list[Bid]], data: st.DataObject) -> None:
    """Shortage rule: floors first; a class gets above h only if every higher class gets r."""
    grid, bs = market
    req = sum(b.required for b in bs)
    if req == 0:
        return
    s = data.draw(st.integers(0, req - 1))
    r = clear(aggregate(bs, grid), s, grid)
    assert r.regime is Regime.SHORTAGE and r.deficit == req - s
    alloc = [allocate(b, r, grid) for b in bs]
    floors = sum(b.floor for b in bs)
    for a, b in zip(alloc, bs, strict=True):
        assert a <= b.required
        if s >= floors:
            assert a >= b.floor
        else:
            assert a <= b.floor
    for a1, b1 in zip(alloc, bs, strict=True):
        for a2, b2 in zip(alloc, bs, strict=True):
            if b1.priority > b2.priority and a2 > b2.floor:
                assert a1 == b1.required
            if b1.priority == MAX_PRIORITY and b2.priority < MAX_PRIORITY and a2 > 0:
                assert a1 >= b1.floor  # below the floors the highest class comes first


@settings(max_examples=100)
@given(markets, previous_regimes, st.data())
def test_more_supply_never_raises_the_price(
    market: tuple[Grid, list[Bid]], previous: Regime | None, data: st.DataObject
) -> None:
    """Monotonicity: for the same bids and previous regime, more supply never raises the price."""
    grid, bs = market
    t = aggregate(bs, grid)
    s1 = supply_for(data.draw, bs)
    s2 = s1 + data.draw(st.integers(0, 500))
    assert (
        clear(t, s2, grid, previous=previous).price <= clear(t, s1, grid, previous=previous).price
    )


@settings(max_examples=100)
@given(st.lists(st.tuples(st.integers(1, 4), bids()), min_size=1, max_size=30), grids, st.data())
def test_cluster_budgets_cover_allocations_and_sum_to_at_most_supply(
    tagged: list[tuple[int, Bid]], grid: Grid, data: st.DataObject
) -> None:
    """Budget rule: each cluster's budget covers its clients' allocations; budgets sum <= S."""
    clusters: dict[int, list[Bid]] = {}
    for c, b in tagged:
        clusters.setdefault(c, []).append(b)
    parts = {c: aggregate(bs, grid) for c, bs in clusters.items()}
    total = combine(parts.values(), grid)
    s = supply_for(data.draw, [b for _, b in tagged])
    r = clear(total, s, grid, previous=data.draw(previous_regimes))
    budgets = {c: budget(t, r) for c, t in parts.items()}
    assert sum(budgets.values()) <= s
    for c, bs in clusters.items():
        assert sum(allocate(b, r, grid) for b in bs) <= budgets[c]


@settings(max_examples=100)
@given(markets, st.data())
def test_local_reclear_stays_within_budget(
    market: tuple[Grid, list[Bid]], data: st.DataObject
) -> None:
    """Re-clearing one cluster with S = its budget keeps its allocations within the budget."""
    grid, bs = market
    t = aggregate(bs, grid)
    b = data.draw(st.integers(0, t.maximum + 10))
    r = clear(t, b, grid, previous=data.draw(previous_regimes))
    assert sum(allocate(x, r, grid) for x in bs) <= budget(t, r) <= b


def test_combine_equals_aggregate_of_all() -> None:
    """combine() of cluster totals equals the aggregate of all their bids."""
    a, b = TWO
    assert combine([aggregate([a], GRID), aggregate([b], GRID)], GRID) == TOTALS
    assert isinstance(TOTALS, Totals)
