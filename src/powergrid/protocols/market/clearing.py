"""One-pass market clearing: pure functions on integer watts, no state, no I/O.

Theory of operation
-------------------
A bid enters the market as its *ladder* (see :mod:`powergrid.protocols.market.bids`):
``L_0 = m``, ``L_k = floor(d(p_{k-1}))`` for the ``G`` grid prices, ``L_{G+1} = r``,
never rising. Summing ladders gives the :class:`Totals` ``A_0 = sum m >= A_1 >= ...
>= A_{G+1} = sum r``, plus ``(sum h, sum r, sum m)`` per priority class. Brokers
sum their clusters, the lead broker sums the brokers (:func:`combine`), and
:func:`clear` picks one :class:`ClearingResult` for a usable supply ``S``:

* **surplus** (``S >= sum m``): price ``price_min``; every bid gets ``m``.
* **normal** (``sum r <= S < sum m``): the first rung ``j`` (1..G+1) with
  ``A_j <= S``, and ``fill = floor((S - A_j) * 2**32 / (A_{j-1} - A_j))``; each
  bid gets ``L_j + floor((L_{j-1} - L_j) * fill / 2**32)``. The price is
  interpolated between the grid prices of rungs ``j`` and ``j-1`` (``price_min``
  on rung 1, ``price_max`` on rung G+1). Every bid gets at least ``r``; the
  total is ``S`` less the rounding (under one watt per bid).
* **shortage** (``S < sum r``): price ``price_max``, ``deficit = sum r - S``
  (saturating at :data:`DEFICIT_MAX`). If
  ``S >= sum h``: floors first, then whole classes from the highest priority
  down get ``r``; the class ``level`` that cannot be fully served gets
  ``h + floor((r - h) * fill / 2**32)`` with its pro-rata ``fill``; lower classes
  get ``h``. If ``S < sum h``, the highest class (``MAX_PRIORITY``, where brokers put
  the caps they hold for departed members) is served first: while ``S`` covers its
  floors (``level`` = :data:`FLOORS_CUT`) it gets ``h`` and everyone else
  ``floor(h * fill / 2**32)`` with ``fill = floor((S - its floors) * 2**32 / the
  others' floors)``; below them (``level = FLOORS_CUT + 1``) it gets
  ``floor(h * fill / 2**32)`` with ``fill = floor(S * 2**32 / its floors)`` and
  everyone else 0. With no bid in that class this is every floor cut pro rata.

Because every share is rounded *down* in integers, the allocations
(:func:`allocate`, each client from its own bid) sum to at most ``S``, exactly,
with no floating-point slack; :func:`budget` gives a cluster's share the same
way (the sum of budgets is at most ``S`` too).

Hysteresis (``band`` b, default 0.02): entering *surplus* needs
``S >= (1 + b) * sum m`` when the previous round was not already surplus (it is
left as soon as ``S < sum m``); leaving *shortage* needs ``S >= (1 + b) * sum r``
(it is entered as soon as ``S < sum r``). In the band, the regime holds: a held
shortage gives everyone exactly ``r`` (level 0, full fill, deficit 0); a normal
round with ``S >= sum m`` gives everyone ``m`` at ``price_min``. Safety never
depends on the band: no regime is ever kept beyond what ``S`` pays for.
"""

from __future__ import annotations

import enum
from collections.abc import Iterable
from typing import Any

import attrs

from powergrid import wire
from powergrid.errors import UsageError
from powergrid.protocols.market.bids import MAX_PRIORITY, Bid, Grid

__all__ = [
    "FILL_ONE",
    "FLOORS_CUT",
    "ClearingResult",
    "Regime",
    "Totals",
    "aggregate",
    "aggregate_ladders",
    "allocate",
    "budget",
    "clear",
    "combine",
    "totals_from_message",
    "totals_to_message",
]

FILL_ONE = wire.Clearing.FILL_ONE
"""A fill of ``FILL_ONE`` (2**32) is a whole share."""
FLOORS_CUT = MAX_PRIORITY + 1
"""Shortage ``level`` meaning that even the floors are cut pro rata (all but the highest
class's; ``FLOORS_CUT + 1``: that class's too, and the others get 0)."""

_CLASSES = MAX_PRIORITY + 1
_ZERO3 = (0, 0, 0)


class Regime(enum.IntEnum):
    """What a round's supply covers."""

    SURPLUS = 0
    NORMAL = 1
    SHORTAGE = 2


@attrs.frozen(kw_only=True)
class Totals:
    """Summed bids: ``demand`` at each grid price and ``(h, r, m)`` sums per class (watts)."""

    bids: int
    demand: tuple[int, ...]
    classes: tuple[tuple[int, int, int], ...]  # index = priority class, 16 entries

    @property
    def floor(self) -> int:
        """Sum of floors ``h``."""
        return sum(c[0] for c in self.classes)

    @property
    def required(self) -> int:
        """Sum of required ``r``."""
        return sum(c[1] for c in self.classes)

    @property
    def maximum(self) -> int:
        """Sum of maxima ``m``."""
        return sum(c[2] for c in self.classes)

    def rungs(self) -> tuple[int, ...]:
        """``(sum m, *demand, sum r)``: the summed ladder ``A_0..A_{G+1}``."""
        return (self.maximum, *self.demand, self.required)


def _totals(bids: int, columns: list[int], per_class: list[list[int]]) -> Totals:
    return Totals(
        bids=bids,
        demand=tuple(columns),
        classes=tuple((c[0], c[1], c[2]) for c in per_class),
    )


def aggregate_ladders(items: Iterable[tuple[Bid, tuple[int, ...]]], grid: Grid) -> Totals:
    """Sum bids whose ladders (``bid.ladder(grid)``) are already known."""
    per_class = [[0, 0, 0] for _ in range(_CLASSES)]
    ladders = []
    for bid, ladder in items:
        c = per_class[bid.priority]
        c[0] += bid.floor
        c[1] += bid.required
        c[2] += bid.maximum
        ladders.append(ladder)
    if not ladders:
        return _totals(0, [0] * grid.points, per_class)
    columns = [sum(col) for col in zip(*ladders, strict=True)]
    return _totals(len(ladders), columns[1:-1], per_class)


def aggregate(bids: Iterable[Bid], grid: Grid) -> Totals:
    """Sum ``bids`` on ``grid``."""
    return aggregate_ladders(((b, b.ladder(grid)) for b in bids), grid)


def combine(parts: Iterable[Totals], grid: Grid) -> Totals:
    """Sum the totals of several clusters (each must be on ``grid``)."""
    parts = list(parts)
    if not parts:
        return _totals(0, [0] * grid.points, [[0, 0, 0] for _ in range(_CLASSES)])
    columns = [sum(col) for col in zip(*(p.demand for p in parts), strict=True)]
    per_class = [
        [sum(col) for col in zip(*cs, strict=True)]
        for cs in zip(*(p.classes for p in parts), strict=True)
    ]
    return _totals(sum(p.bids for p in parts), columns, per_class)


def totals_to_message(totals: Totals, *, cluster: int, epoch: int, seq: int) -> wire.Aggregate:
    """``totals`` as aggregate ``seq`` of ``cluster``'s broker of ``epoch``."""
    mask = 0
    values = [wire.Watts(w) for w in totals.demand]
    for k, c in enumerate(totals.classes):
        if c != _ZERO3:
            mask |= 1 << k
            values.extend(wire.Watts(w) for w in c)
    return wire.Aggregate(
        cluster=cluster,
        epoch=epoch,
        seq=seq,
        bids=totals.bids,
        points=len(totals.demand),
        classes=mask,
        values=tuple(values),
    )


def totals_from_message(msg: wire.Aggregate, grid: Grid) -> Totals | None:
    """The totals a decoded aggregate carries, or None if it is on another grid."""
    n = msg.points
    if n != grid.points:
        return None
    values = [v.watts for v in msg.values]
    classes = []
    i = n
    for k in range(_CLASSES):
        if msg.classes >> k & 1:
            classes.append((values[i], values[i + 1], values[i + 2]))
            i += 3
        else:
            classes.append(_ZERO3)
    return Totals(bids=msg.bids, demand=tuple(values[:n]), classes=tuple(classes))


@attrs.frozen(kw_only=True)
class ClearingResult:
    """What a round decided: all a client needs, with its own bid, to know its watts.

    ``level`` and ``fill`` (of :data:`FILL_ONE`) are the share factors (see the
    module docstring); ``deficit`` is ``sum r - S`` in a shortage, else 0.
    """

    regime: Regime
    price: float
    level: int = 0
    fill: int = FILL_ONE
    deficit: int = 0

    @classmethod
    def checked(cls, msg: wire.Clearing | wire.Price, grid: Grid) -> ClearingResult | None:
        """The result a decoded Clearing or Price carries, or None if it is absurd on ``grid``.

        A Price multicast reaches every client of a cluster as one decoded message
        (see :mod:`powergrid.node`): the last message checked, and its answer, are
        kept and reused for the same message object on the same grid (both immutable).
        """
        last = _last_checked
        if msg is last[0] and grid is last[1]:
            cached: ClearingResult | None = last[2]
            return cached
        result = cls._check(msg, grid)
        last[0], last[1], last[2] = msg, grid, result
        return result

    @classmethod
    def _check(cls, msg: wire.Clearing | wire.Price, grid: Grid) -> ClearingResult | None:
        regime, price, level, fill = msg.regime, msg.price, msg.level, msg.fill
        if regime > 2 or not 0 <= fill <= FILL_ONE:
            return None
        if not grid.price_min <= price <= grid.price_max:
            return None
        r = Regime(regime)
        if r is Regime.NORMAL and not 1 <= level <= grid.points + 1:
            return None
        if r is Regime.SHORTAGE and not 0 <= level <= FLOORS_CUT + 1:
            return None
        return cls(regime=r, price=price, level=level, fill=fill, deficit=msg.deficit)


_last_checked: list[Any] = [None, None, None]
"""The last message :meth:`ClearingResult.checked`, its grid and the answer."""


def clear(
    totals: Totals,
    supply: int,
    grid: Grid,
    *,
    previous: Regime | None = None,
    band: float = 0.02,
) -> ClearingResult:
    """Clear one round: ``supply`` usable watts (int >= 0) against ``totals`` on ``grid``.

    ``previous`` is the regime of the last round, for the hysteresis ``band``
    (None: no hysteresis). Raises :class:`UsageError` for a negative or non-int supply.
    """
    if type(supply) is not int or supply < 0:
        raise UsageError(f"supply must be a non-negative int of watts, got {supply!r}")
    s = supply
    req = totals.required
    if s < req:
        return _shortage(totals, s, grid)
    if previous is Regime.SHORTAGE and s < req * (1.0 + band):
        return ClearingResult(regime=Regime.SHORTAGE, price=grid.price_max, level=0)
    top = totals.maximum
    if s >= top and (previous in (None, Regime.SURPLUS) or s >= top * (1.0 + band)):
        return ClearingResult(regime=Regime.SURPLUS, price=grid.price_min)
    if s >= top:
        return ClearingResult(regime=Regime.NORMAL, price=grid.price_min, level=1)
    rungs = totals.rungs()
    j = 1
    while rungs[j] > s:
        j += 1
    lo, hi = rungs[j], rungs[j - 1]
    fill = ((s - lo) << 32) // (hi - lo)
    g = grid.points
    if j == 1:
        price = grid.price_min
    elif j == g + 1:
        price = grid.price_max
    else:
        p_lo, p_hi = grid.prices[j - 2], grid.prices[j - 1]
        price = p_hi - (fill / FILL_ONE) * (p_hi - p_lo)
        price = min(grid.price_max, max(grid.price_min, price))
    return ClearingResult(regime=Regime.NORMAL, price=price, level=j, fill=fill)


DEFICIT_MAX = 2**64 - 1
"""A deficit saturates here (watts; what a Clearing or Price carries): without a key,
forged aggregates of several clusters, each valid, summed past it and made the lead broker's
Clearing raise ValueError when encoded."""


def _shortage(totals: Totals, s: int, grid: Grid) -> ClearingResult:
    deficit = min(totals.required - s, DEFICIT_MAX)
    floors = totals.floor
    if s < floors:
        top = totals.classes[MAX_PRIORITY][0]
        first = s >= top  # the highest class's floors fit: the others share what is left
        return ClearingResult(
            regime=Regime.SHORTAGE,
            price=grid.price_max,
            level=FLOORS_CUT if first else FLOORS_CUT + 1,
            fill=((s - top) << 32) // (floors - top) if first else (s << 32) // top,
            deficit=deficit,
        )
    left = s - floors
    level = 0
    fill = FILL_ONE
    for k in range(MAX_PRIORITY, -1, -1):
        h, r, _m = totals.classes[k]
        need = r - h
        if left >= need:
            left -= need
            continue
        level, fill = k, (left << 32) // need
        break
    return ClearingResult(
        regime=Regime.SHORTAGE, price=grid.price_max, level=level, fill=fill, deficit=deficit
    )


def allocate(bid: Bid, result: ClearingResult, grid: Grid) -> int:
    """The watts ``bid`` gets from ``result`` (the same rule that :func:`budget` sums)."""
    regime = result.regime
    if regime is Regime.SURPLUS:
        return bid.maximum
    fill = result.fill
    if regime is Regime.NORMAL:
        j = result.level
        lo = bid.level(j, grid)
        return lo + ((bid.level(j - 1, grid) - lo) * fill >> 32)
    level = result.level
    if level >= FLOORS_CUT:  # below the floors: the highest class first
        top = bid.priority == MAX_PRIORITY
        if level == FLOORS_CUT:
            return bid.floor if top else bid.floor * fill >> 32
        return bid.floor * fill >> 32 if top else 0
    if bid.priority > level:
        return bid.required
    if bid.priority == level:
        return bid.floor + ((bid.required - bid.floor) * fill >> 32)
    return bid.floor


def budget(totals: Totals, result: ClearingResult) -> int:
    """The watts the bids summed in ``totals`` get from ``result`` (>= their allocations' sum)."""
    regime = result.regime
    if regime is Regime.SURPLUS:
        return totals.maximum
    fill = result.fill
    if regime is Regime.NORMAL:
        rungs = totals.rungs()
        j = result.level
        return rungs[j] + ((rungs[j - 1] - rungs[j]) * fill >> 32)
    level = result.level
    if level >= FLOORS_CUT:
        top = totals.classes[MAX_PRIORITY][0]
        if level == FLOORS_CUT:
            return top + ((totals.floor - top) * fill >> 32)
        return top * fill >> 32
    total = 0
    for k, (h, r, _m) in enumerate(totals.classes):
        if k > level:
            total += r
        elif k == level:
            total += h + ((r - h) * fill >> 32)
        else:
            total += h
    return total
