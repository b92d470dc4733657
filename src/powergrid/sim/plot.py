"""The run on one time axis: supply, demand and allocation; price and regime; leaders.

matplotlib is an optional extra (``pip install 'powergrid[plot]'``);
:func:`plot` raises :class:`PlotUnavailable` with that advice when it is missing.
"""

from __future__ import annotations

import importlib
import os
from pathlib import Path
from typing import Any

from powergrid.errors import UsageError
from powergrid.sim.report import group_name
from powergrid.sim.runner import SimResult, server_name

__all__ = ["FORMATS", "INSTALL_HINT", "PlotUnavailable", "check_path", "plot", "plot_available"]

INSTALL_HINT = "pip install 'powergrid[plot]'  (or: pip install matplotlib)"

FORMATS = ("png", "pdf", "svg", "svgz", "jpg", "jpeg", "eps", "ps", "tif", "tiff", "webp")
"""File name suffixes :func:`plot` writes (matplotlib's Agg formats)."""

_REGIME_COLOUR = {"surplus": "#d8f0d8", "normal": "#f4f4f4", "shortage": "#f7d0d0"}
_MAX_GROUPS = 9


class PlotUnavailable(UsageError):
    """matplotlib is not installed."""


def plot_available() -> bool:
    """Whether matplotlib can be imported."""
    try:
        importlib.import_module("matplotlib")
    except ImportError:
        return False
    return True


def check_path(path: str | Path) -> Path:
    """``path`` if :func:`plot` can write it: a suffix of :data:`FORMATS` and a directory
    that exists (or can be made) and is writable. Call it before a run, not after.

    Raises :class:`~powergrid.errors.UsageError` with a one-line reason.
    """
    p = Path(path)
    suffix = p.suffix.lower().lstrip(".")
    if suffix not in FORMATS:
        raise UsageError(
            f"--plot {path}: the file name must end in .png "
            f"(or {', '.join('.' + f for f in FORMATS[1:])})"
        )
    if p.is_dir():
        raise UsageError(f"--plot {path}: is a directory; give a file name such as {p / 'run.png'}")
    try:
        p.parent.mkdir(parents=True, exist_ok=True)
    except OSError as exc:
        raise UsageError(f"--plot {path}: cannot make {p.parent}: {exc.strerror}") from None
    if not os.access(p.parent, os.W_OK) or (p.exists() and not os.access(p, os.W_OK)):
        raise UsageError(f"--plot {path}: not writable")
    return p


def _pyplot() -> Any:
    try:
        mpl: Any = importlib.import_module("matplotlib")
    except ImportError as exc:
        raise PlotUnavailable(
            f"plots need matplotlib, which is not installed: {INSTALL_HINT}"
        ) from exc
    mpl.use("Agg")
    return importlib.import_module("matplotlib.pyplot")


def plot(r: SimResult, path: str | Path) -> Path:
    """Draw ``r`` into the PNG (or any matplotlib format) ``path``; returns the path.

    Raises :class:`PlotUnavailable` if matplotlib is missing.
    """
    plt = _pyplot()
    s = r.scenario
    samples = r.samples
    ts = [x.t for x in samples]
    fig, (ax1, ax2, ax3) = plt.subplots(
        3, 1, figsize=(11, 8.5), sharex=True, gridspec_kw={"height_ratios": [3, 2, 2.2]}
    )
    fig.suptitle(
        f"{s.name}: {s.clusters} clusters x {s.nodes} nodes, seed {s.seed}, {s.network.loss:g} loss"
    )

    # 1. supply, demand, allocation
    kw = {"where": "post"}
    ax1.step(ts, [x.supply / 1000 for x in samples], color="black", lw=2, label="supply S", **kw)
    ax1.step(
        ts,
        [x.demand_max / 1000 for x in samples],
        color="tab:blue",
        ls=":",
        label="sum m (max)",
        **kw,
    )
    ax1.step(
        ts,
        [x.demand_required / 1000 for x in samples],
        color="tab:blue",
        label="sum r (required)",
        **kw,
    )
    ax1.step(
        ts,
        [x.allocation / 1000 for x in samples],
        color="tab:orange",
        label="sum of caps in force",
        **kw,
    )
    if r.rounds:
        ax1.plot(
            [rd.t for rd in r.rounds],
            [rd.allocated / 1000 for rd in r.rounds],
            ".",
            color="tab:red",
            ms=4,
            label="cleared per round",
        )
    for a, b in r.power.intervals:  # the guarantee's violating intervals, as the summary counts
        for ax in (ax1, ax2, ax3):
            ax.axvspan(a, max(b, a + s.duration / 2000), color="red", alpha=0.25, lw=0)
    ax1.set_ylabel("kW")
    ax1.set_ylim(bottom=0)
    ax1.legend(loc="upper right", fontsize=8, ncol=3)
    ax1.grid(alpha=0.3)

    # 2. price and regime (background colour per round)
    rounds = r.rounds
    for i, rd in enumerate(rounds):
        end = rounds[i + 1].t if i + 1 < len(rounds) else s.duration
        ax2.axvspan(rd.t, end, color=_REGIME_COLOUR.get(rd.regime, "white"), lw=0)
    if rounds:
        ax2.step(
            [rd.t for rd in rounds], [rd.price for rd in rounds], where="post", color="tab:purple"
        )
    ax2.set_ylabel("price")
    ax2.set_ylim(-0.05, 1.05)
    handles = [plt.Rectangle((0, 0), 1, 1, color=c, label=k) for k, c in _REGIME_COLOUR.items()]
    ax2.legend(
        handles=handles, loc="upper right", fontsize=8, ncol=3, title="regime", title_fontsize=8
    )
    ax2.grid(alpha=0.3)

    # 3. leaders per group, with crash and partition markers
    groups = sorted({g for x in samples for g, _ in x.leaders})
    shown = [g for g in groups if g == 0][:1] + [g for g in groups if g != 0][: _MAX_GROUPS - 1]
    row = {g: i for i, g in enumerate(reversed(shown))}
    cmap = plt.get_cmap("tab20")
    colour: dict[int, Any] = {}
    for g in shown:
        start = None
        who = 0
        for x in [*samples, None]:
            now = dict(x.leaders).get(g, 0) if x is not None else -1
            t = x.t if x is not None else s.duration
            if now != who:
                if who and start is not None:
                    c = colour.setdefault(who, cmap(len(colour) % 20))
                    ax3.plot([start, t], [row[g], row[g]], color=c, lw=6, solid_capstyle="butt")
                    ax3.text(start, row[g] + 0.22, server_name(who), fontsize=6)
                who, start = now, t
    for m in r.markers:
        if m.what.startswith(("crash", "restart")):
            crash = m.what.startswith("crash")
            colour_m = "red" if crash else "green"
            y = row.get(m.group, -0.6)
            ax3.plot([m.t], [y], "x" if crash else "^", color=colour_m, ms=9)
            ax3.axvline(m.t, color=colour_m, alpha=0.25, lw=1)
        elif m.what in ("partition", "isolate"):
            ax3.axvspan(
                m.t, m.until if m.until is not None else s.duration, color="gold", alpha=0.25
            )
            ax1.axvspan(
                m.t, m.until if m.until is not None else s.duration, color="gold", alpha=0.15
            )
    ax3.set_yticks(list(row.values()), [group_name(g) for g in row])
    ax3.set_ylim(-1, len(row))
    ax3.set_xlabel(
        "virtual time (s)   x crash   ^ restart   yellow: partition   "
        f"red: guarantee violated ({r.guarantee_violations} intervals)"
    )
    ax3.set_title("leader per group (label: cC.I = server I of cluster C)", fontsize=9)
    ax3.set_xlim(0, s.duration)
    if len(groups) > len(shown):
        ax3.text(
            0.99,
            0.02,
            f"{len(groups) - len(shown)} more clusters not shown",
            transform=ax3.transAxes,
            ha="right",
            fontsize=7,
        )
    fig.tight_layout()
    out = Path(path)
    out.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(out, dpi=110)
    plt.close(fig)
    return out
