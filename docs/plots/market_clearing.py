"""Draw docs/img/market_clearing.png: the worked example's demand curves and clearing point.

Run: ``.venv/bin/python docs/plots/market_clearing.py`` (needs the ``plot`` extra).
Every number comes from ``powergrid.protocols.market``: the same grid, bids and clearing
as the worked example in docs/protocols/market.md.
"""

from __future__ import annotations

from pathlib import Path

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt

from powergrid.protocols.market import Bid, Grid, aggregate, allocate, clear

GRID = Grid(price_min=0.0, price_max=1.0, points=5)
A = Bid(floor=50, required=100, maximum=200, priority=1)
B = Bid(floor=20, required=80, maximum=150, priority=0, corners=((0.2, 150), (0.6, 90)))
SUPPLY = 300


def main() -> None:
    totals = aggregate([A, B], GRID)
    result = clear(totals, SUPPLY, GRID)
    a, b = allocate(A, result, GRID), allocate(B, result, GRID)
    prices = [GRID.price_min + i * (GRID.price_max - GRID.price_min) / 400 for i in range(401)]
    fig, ax = plt.subplots(figsize=(7, 4.2))
    ax.step(
        [p for p in GRID.prices],
        totals.demand,
        where="post",
        color="tab:blue",
        label="aggregate demand on the grid",
    )
    ax.plot(
        prices, [A.demand(p, GRID) for p in prices], "--", color="tab:orange", label="bid A d(p)"
    )
    ax.plot(
        prices, [B.demand(p, GRID) for p in prices], "--", color="tab:green", label="bid B d(p)"
    )
    ax.axhline(SUPPLY, color="black", lw=1.5, label=f"supply S = {SUPPLY} W")
    ax.axhline(totals.required, color="tab:red", lw=1, ls=":", label=f"sum r = {totals.required} W")
    ax.plot([result.price], [a + b], "o", color="black", ms=8)
    ax.annotate(
        f"clearing: price {result.price:.3f}, {result.regime.name.lower()}\n"
        f"A gets {a} W, B gets {b} W (total {a + b} W)",
        (result.price, a + b),
        xytext=(result.price + 0.08, a + b + 40),
        arrowprops={"arrowstyle": "->"},
    )
    ax.set_xlabel("price")
    ax.set_ylabel("watts")
    ax.set_ylim(0, 420)
    ax.set_title("One-pass clearing of the worked example (S = 300 W)")
    ax.legend(loc="lower left", fontsize=8)
    ax.grid(alpha=0.3)
    out = Path(__file__).resolve().parent.parent / "img" / "market_clearing.png"
    fig.tight_layout()
    fig.savefig(out, dpi=110)
    print(out)


if __name__ == "__main__":
    main()
