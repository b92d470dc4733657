"""Bids, demand curves and the shared price grid (pure values, no state).

A client's :class:`Bid` says, in whole watts, what its server needs: its floor
``h`` (keep it alive), its required power ``r`` (run its work as promised), its
maximum ``m`` (all it can use), its priority class (0..15, higher is more
important) and a demand curve ``d(price)`` with ``h <= r <= d(p) <= m``, never
rising with the price. The curve is a few corner points ``(price, watts)``
joined by straight lines and flat beyond the first and last corner; with no
corners it is the straight line from ``m`` at ``price_min`` to ``r`` at
``price_max``.

All machines share one :class:`Grid` of ``points`` prices from ``price_min``
to ``price_max``. Clearing never looks at a curve between grid points: a bid
enters the market as its *ladder*, the ``points + 2`` watts
``(m, d(p_0), ..., d(p_{G-1}), r)``, each rounded down to a whole watt and
never rising. Watts are integers so that allocations can be computed exactly
(see :mod:`powergrid.protocols.market.clearing`).
"""

from __future__ import annotations

import itertools
import math
from collections.abc import Iterable

import attrs

from powergrid import wire
from powergrid._checks import config_problem, real, whole
from powergrid.errors import ConfigError

__all__ = [
    "DEFAULT_GRID",
    "MAX_CORNERS",
    "MAX_GRID_POINTS",
    "MAX_PRIORITY",
    "Bid",
    "Corner",
    "Grid",
]

Corner = wire.Corner
MAX_PRIORITY = wire.Bid.MAX_PRIORITY
"""Priority classes are 0..MAX_PRIORITY (15)."""
MAX_CORNERS = wire.Bid.MAX_CORNERS
"""A curve has at most this many corners (8)."""

_AGGREGATE_EMPTY = len(
    wire.encode_body(
        wire.Aggregate(cluster=1, epoch=0, seq=1, bids=0, points=0, classes=0, values=())
    )
)
MAX_GRID_POINTS = (wire.MAX_PAYLOAD - _AGGREGATE_EMPTY) // 8 - 3 * (MAX_PRIORITY + 1)
"""The most grid points an :class:`~powergrid.wire.Aggregate` with every class fits (118)."""


@attrs.frozen(kw_only=True)
class Grid:
    """The price grid every machine of one market shares.

    ``points`` prices, evenly spaced from ``price_min`` to ``price_max``
    (finite, ``price_min < price_max``; 2 <= ``points`` <= :data:`MAX_GRID_POINTS`).
    Raises :class:`ConfigError`.
    """

    price_min: float = attrs.field(default=0.0, validator=real)
    price_max: float = attrs.field(default=1.0, validator=real)
    points: int = attrs.field(
        default=32, validator=whole(2, MAX_GRID_POINTS, why="an Aggregate must fit one datagram")
    )
    prices: tuple[float, ...] = attrs.field(init=False, eq=False, repr=False)

    def __attrs_post_init__(self) -> None:
        lo, hi = self.price_min, self.price_max
        if not -1e300 < lo < 1e300:
            raise config_problem(self, f"price_min must be a finite number, got {lo}")
        if not lo < hi < 1e300:
            raise config_problem(
                self, f"price_max must be a finite number above price_min ({lo}), got {hi}"
            )
        n = self.points - 1
        prices = (*(lo + (hi - lo) * k / n for k in range(n)), hi)
        object.__setattr__(self, "prices", prices)


DEFAULT_GRID = Grid()
"""The grid of every config that names none: one object, shared (a Grid is immutable)."""


def _corners(cs: Iterable[tuple[float, int]]) -> tuple[Corner, ...]:
    return tuple(Corner(float(p), w) for p, w in cs)


@attrs.frozen(kw_only=True)
class Bid:
    """What one server asks of the market; watts are non-negative integers.

    Raises :class:`ConfigError` (saying what to fix) unless
    ``0 <= floor <= required <= maximum < 2**32``, ``0 <= priority <= 15`` and the
    corners (at most 8, prices rising strictly, watts never rising, each within
    ``required..maximum``) are valid.
    """

    floor: int = attrs.field(validator=whole(0, unit="watts"))
    required: int = attrs.field(validator=whole(0, unit="watts"))
    maximum: int = attrs.field(validator=whole(0, unit="watts"))
    priority: int = attrs.field(default=0, validator=whole(0, 15))
    corners: tuple[Corner, ...] = attrs.field(default=(), converter=_corners)

    def __attrs_post_init__(self) -> None:
        for c in self.corners:
            if type(c.watts) is not int:
                raise ConfigError(f"Bid.corners: curve watts must be ints, got {c.watts!r}")
        bad = wire.Bid.check(self.floor, self.required, self.maximum, self.priority, self.corners)
        if bad is not None:
            raise ConfigError(f"Bid: {bad}")

    def demand(self, price: float, grid: Grid) -> float:
        """``d(price)`` in watts (not rounded): what this bid wants at ``price``.

        Finite and within ``required..maximum`` for every finite ``price`` and any valid
        corners, however far apart (no intermediate value overflows).
        """
        cs = self.corners
        if not cs:
            lo, hi = grid.price_min, grid.price_max
            if price <= lo:
                return float(self.maximum)
            if price >= hi:
                return float(self.required)
            return self.maximum - (self.maximum - self.required) * (price - lo) / (hi - lo)
        if price <= cs[0].price:
            return float(cs[0].watts)
        for (p0, w0), (p1, w1) in itertools.pairwise(cs):
            if price <= p1:
                # Here p0 < price <= p1, so 0 <= t <= 1, and t is exactly 1 at p1: segments
                # meet exactly and d never rises. Corners are any finite floats (a peer's
                # bid): when p1 - p0 overflows, halve everything first (exact at that size)
                # so that no difference is infinite and t is never inf / inf = NaN.
                span = p1 - p0
                if span == math.inf:
                    t = (price * 0.5 - p0 * 0.5) / (p1 * 0.5 - p0 * 0.5)
                else:
                    t = (price - p0) / span
                return w0 + (w1 - w0) * t
        return float(cs[-1].watts)

    def level(self, j: int, grid: Grid) -> int:
        """Rung ``j`` of the ladder: ``m`` for 0, ``floor(d(p_{j-1}))`` for 1..G, ``r`` for G+1."""
        if j <= 0:
            return self.maximum
        g = grid.points
        if j > g:
            return self.required
        if not self.corners:
            # m - (m - r) * k / (G - 1) rounded down, exactly, in integers
            k, n = j - 1, g - 1
            return self.maximum - (-(-(self.maximum - self.required) * k // n))
        w = int(self.demand(grid.prices[j - 1], grid))
        return min(self.maximum, max(self.required, w))

    def ladder(self, grid: Grid) -> tuple[int, ...]:
        """``(m, floor(d(p_0)), ..., floor(d(p_{G-1})), r)``: never rising, within ``r..m``."""
        return tuple(self.level(j, grid) for j in range(grid.points + 2))

    def to_message(
        self, seq: int, lead_epoch: int = 0, applied: tuple[int, int, int] = (0, 0, 0)
    ) -> wire.Bid:
        """This bid as wire bid number ``seq``, from a client whose last applied price
        came from the lead broker of ``lead_epoch`` (0: none), and whose last counted price
        applied was ``applied`` (its broker's epoch, its round, the cap; zeros: none)."""
        return wire.Bid(
            seq=seq,
            floor=self.floor,
            required=self.required,
            maximum=self.maximum,
            priority=self.priority,
            lead_epoch=lead_epoch,
            applied_epoch=applied[0],
            applied_round=applied[1],
            applied_cap=applied[2],
            corners=self.corners,
        )

    @classmethod
    def from_message(cls, msg: wire.Bid) -> Bid:
        """The bid a decoded (hence already checked) wire bid carries."""
        return cls(
            floor=msg.floor,
            required=msg.required,
            maximum=msg.maximum,
            priority=msg.priority,
            corners=msg.corners,
        )
