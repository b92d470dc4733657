"""Power safety in time: caps in force, the supply and what each server is owed, instant by instant.

Theory of operation
-------------------
A clearing being right is not enough; what counts is the **cap in force** of
every powered server at every instant of virtual time (``docs/protocols/market.md``,
"The guarantee in time"). :class:`PowerLedger` keeps that state and integrates
it exactly between changes (caps, lives, bids, supply), with running sums, so
every change costs O(1) (amortised O(log n) for its own timers):

* **cap in force** of a server: the allocation its client applies now
  (``AllocationChanged``; 0 before its first one). A crashed server keeps
  drawing its last cap until its lease ends (``lease_s`` after the last price
  it applied: the grantor's clock; the simulator has no drift), and leaves the
  sum only then. A restart inherits the old life's lease: the old cap stays in
  force until the new life applies a cap of its own or the lease ends. A server
  that leaves gracefully stops drawing at once. (A paused server is not
  seen by the ledger: its cap simply stays in force until its client acts.)
* **supply** S(t), given by :meth:`PowerLedger.supply`. A drop opens the
  **reaction bound**: overload within ``reaction_s`` of the drop is reported
  apart (``overload_in_bound_ws``); overload beyond it is a violation.
* **owed**: an *admitted* server (a price counted its bid in this life) is owed
  its required power r while the supply covers the r of every live server that
  bids (S >= the sum of r over the owed servers and the joining ones, those not
  owed yet), else its floor h while S covers every such h, else nothing (sums of
  their current bids). A joining server is powered (it draws its floor from the
  join reserve from the moment it joins, FIGURES) and its bid competes for the
  supply: the clearing that admits it may be a shortage, and that clearing
  reaches its servers at different instants (the lead's own client first). Judged
  over the admitted servers alone (the issue's wording), the first to apply a
  shortage share would be owed its r although the clearing in force everywhere a
  moment later rightly gives it less: no protocol applies one clearing at every
  server at once (fuzz seeds 22, 36 and 49 of the broker group's fast start). How
  long that reading would have counted a server as starved is measured
  (``joining_regime_server_s``). A
  server not admitted within ``admission_s`` of its start is owed from then on,
  and the ``admission_s`` it waited count as starved at once ("starved from the
  moment it was owed").
  A rise of r gets the same grace: the old r stays owed for ``admission_s``. So
  does a rise of the owed level (the regime: from h to r, or from nothing to h, when
  the supply rises, bids fall or servers leave): the servers are owed the new level
  once the bound has passed; if any is still below it then, the bound counts as
  starved (``stale-aggregates``) from the rise. Met within the bound, it is not
  starvation, and how long servers waited is measured (``regime_grace_server_s``). A
  server at 0 W at the rise (shed below the floors) gets the bound too; past it, a
  cap of 0 is strict as below. While the network is partitioned within the bound,
  the bound runs from the heal, and so does the rise's ``stale-aggregates`` window
  (``regime_s``): no price crosses a cut (fuzz seed 27,200,676 with
  supply steps: two servers shed at 0 W by a 1 W supply were cut off one-way when
  it rose to 1,571 W at 3.18 s; the cut healed at 3.88 s and a price raised them at
  4.185 s, 2 ms past a bound counted from the rise; seed 36,800,639: a server that
  missed its cluster's prices in flapping cuts until 4.93 s was raised 1.0003 s after
  the heal, by the broker's next round, strict while the window ran 1 s from the heal).
* **starved server-seconds**: the integral of the number of owed servers whose
  cap is below what they are owed. It is kept as two running counts (below r,
  below h) per exemption class, so the regime flips at no cost.

Every violating stretch (overload beyond the bound, or any starved server) is
recorded as an interval; :meth:`PowerLedger.figures` merges them, and their
number is the simulator's ``guarantee_violations``. The plot draws the same
intervals in red.

**Exemptions** (named here, in ``docs/protocols/market.md`` and measured in
:class:`PowerFigures`): the protocol does not hold the guarantee in every case yet.
A starved server is classed by why:

* ``no-broker``: its cluster has no live broker-capable server, or had none until less
  than ``admission_s`` ago (the bound runs from that server's start, as a heal's does).
  Only a broker-capable server can be its cluster's broker, a client may not raise its
  own cap and lease expiry never raises one (FIGURES), so nobody can price it: fuzz seed
  35,300,249 with supply steps, whose one cluster's only broker-capable node was down
  from 3.72 to 15.0 s while the supply rose to cover every ``r``. Needs the placement
  (``servers``: each provisioned server's cluster, broker-capability and floor);
* ``unadmitted``: no price of this life counted its bid yet (today a server
  gets 0 W until its bid is counted: the first seconds of a run, a join);
* ``uncounted``: it was admitted, but its latest price did not count its bid
  (a new broker's first rounds after a failover);
* ``slow-raise``: its bid rose and the rise was not met within ``admission_s``;
* ``older-bid``: its latest price counted an older bid of it than the current
  one (``includes_latest_bid`` false), so it got the older bid's share;
* ``stale-aggregates``: a rise of what servers are owed not met within the raise
  bound (counted from the rise), within ``regime_s`` of it, or
  of any owed r falling (the lead clears on aggregates up to two rounds old);
* ``departed-bids``: within ``bid_timeout_s`` of a crash or leave (the broker
  still counts the departed bid);
* ``held-cap``: a broker holds the cap of a member gone without powering off
  (``CapHeld``: it may still draw the most a recent price gave it, and nobody
  confirmed a cut), or a crashed server still draws its cap on its lease, and the
  supply less those holds and caps (beyond what the owed sums count of those nodes
  already) does not cover the owed level, and ``round_s`` after a broker's hold ends
  (the lead clears on aggregates a round or two old). No protocol can tell a member
  that crashed after applying its last price from one cut off before: giving the
  others their ``r`` overloads the supply in the first case; and no message lowers a
  dead server's cap, so any share the live servers get beyond what it leaves overloads
  the supply (fresh seed 41,005,695 with supply steps: the live servers' floors did not
  fit beside dead servers' caps still on their leases).
* ``islanded``: fewer than half the provisioned servers are live in a cluster with a
  live broker-capable server (the most any lead can count), and the server is below the
  level the supply owes but not below what an island is owed: its floor ``h`` while the
  supply covers every provisioned server's floor, else nothing. No protocol can do
  better: the lead's side cannot tell the others' crash from a cut in which they are
  alive, a majority, and have raised their bids so that the supply is exactly their
  ``r`` plus this side's floors; in the crash world (which that majority cannot tell
  from the cut) the ledger owes them their ``r``, so they hold it, and this side may hold
  no more than its floors without overload in the cut world (fuzz seed 26,300,253: a
  cluster's two broker-capable nodes crashed, the lead counted 3 of 7). Exactly half is
  not exempt (the lead clears within ``S / 2``). When the island ends, the level its
  servers are owed rises after the raise bound (``regime-grace``, not ``regime_s``).

An overload beyond the reaction bound is classed, in this order:
``partition`` (while the network is split, and one lease after),
``lead-change (one lease after a new lead epoch), ``supply-drop`` (``round_s``
after a drop), ``raise-before-cut`` (``skew_s`` after any cap rose: the clusters
apply one clearing at different instants), ``missed-price`` (a live client holds
the cap of an older price than its cluster's newest: its price was lost),
``lease-held`` (a client keeps a previous broker's cap on its lease while the
new broker has not counted its bid, and the new broker grants those watts).
What is left would be strict, but for ``dead-at-drop``: the part of the excess (at
most all of it) by which the caps of the servers that were already down at the last
supply drop, still in force on their leases, exceed the supply by themselves. No
message reaches a dead server, so no protocol lowers those caps before their leases
end, even by shedding every live server; what the live servers' caps add stays
strict (fresh seed 35,300,221 with supply steps: a server crashed at 6.43 s holding
305 W until 10.85 s, the supply fell to 91 W at 7.77 s).
The time windows are split exactly at their ends (the ledger sets a timer
there). Anything else is **strict**: the invariant :class:`PowerGuarantee`
fails on it. Every class is reported, so each exemption is measured.
"""

from __future__ import annotations

import heapq
import math
from collections.abc import Callable, Mapping
from typing import Any

import attrs

from powergrid.events import LeaderElected
from powergrid.protocols.market import Bid, CapHeld
from powergrid.protocols.market.client import AllocationChanged, PriceUpdated
from powergrid.sim.fuzz import FuzzNetwork, NodeCrashed, NodeStarted
from powergrid.types import BROKER_GROUP, NodeId

__all__ = [
    "EXEMPTIONS",
    "HeldCaps",
    "PowerBounds",
    "PowerFigures",
    "PowerGuarantee",
    "PowerLedger",
    "SupplySteps",
    "describe",
]

STRICT = "strict"
_CLASSES = (STRICT, "no-broker", "unadmitted", "uncounted", "slow-raise", "older-bid")
_OVERLOAD_EXCUSES = (
    "partition",
    "lead-change",
    "supply-drop",
    "raise-before-cut",
    "missed-price",
    "lease-held",
    "dead-at-drop",
)
_STARVED_EXCUSES = ("stale-aggregates", "departed-bids", "held-cap", "islanded")
_WINDOWS = (
    "partition",
    "lead-change",
    "supply-drop",
    "raise-before-cut",
    "regime-grace",
    "stale-aggregates",
    "departed-bids",
)
EXEMPTIONS = (
    "no-broker",
    "unadmitted",
    "uncounted",
    "slow-raise",
    "older-bid",
    *_STARVED_EXCUSES,
    *_OVERLOAD_EXCUSES,
)
"""The named exemptions of the strict check (see the module docstring)."""


class HeldCaps:
    """The caps brokers hold for departed members (``CapHeld``): the most per node, each
    counted until its end plus ``linger`` (a release ends it now, plus ``linger``)."""

    def __init__(self, linger: float = 0.0) -> None:
        self._linger = linger
        self._holds: dict[tuple[int, int], tuple[int, float]] = {}  # (group, node) -> W, end

    def __bool__(self) -> bool:
        return bool(self._holds)

    def note(self, t: float, ev: CapHeld) -> float | None:
        """Record ``ev``; the instant its hold stops counting (None: nothing held)."""
        key = (ev.group, ev.node)
        if ev.watts:
            self._holds[key] = (ev.watts, ev.until + self._linger)
        elif key in self._holds:
            self._holds[key] = (self._holds[key][0], t + self._linger)
        else:
            return None
        return self._holds[key][1]

    def most(self, t: float) -> dict[int, int]:
        """Node -> the most any broker holds for it at ``t``."""
        holds = self._holds
        for key in [k for k, (_, end) in holds.items() if end <= t]:
            del holds[key]
        out: dict[int, int] = {}
        for (_, node), (watts, _) in holds.items():
            out[node] = max(out.get(node, 0), watts)
        return out


@attrs.frozen(kw_only=True)
class PowerBounds:
    """The fixed figures (seconds) of ``FIGURES.md``.

    ``admission_s``: admission and raise latency bound; ``reaction_s``: how long
    overload may last after an announced supply drop; ``lease_s``: how long a
    crashed server keeps drawing its cap after its last price.
    """

    admission_s: float = 1.0
    reaction_s: float = 0.05
    lease_s: float = 5.0
    round_s: float = 2.0
    """Exemption ``supply-drop``: overload this long after a drop (two of today's rounds);
    ``held-cap``: a broker's hold counts this long after it ends, likewise."""
    skew_s: float = 1.5
    """Exemption ``raise-before-cut``: overload this soon after any cap was raised (a
    round, 1 s, plus the resend of a lost price: make-before-break is by time only, a
    client's raise 20 ms after its price, not by confirmed cuts)."""
    regime_s: float = 3.0
    """Exemption ``stale-aggregates``: starvation this soon after the owed level rose
    (the supply rose, or demand fell, past sum r or sum h) or any owed r fell: the
    lead clears on aggregates up to two rounds old."""
    bid_timeout_s: float = 7.0
    """Exemption ``departed-bids``: starvation this long after a crash or leave (the
    broker's bid timeout, 6 s, plus a round: the lead still counts the departed bid)."""


@attrs.frozen(kw_only=True)
class PowerFigures:
    """What a run measured (watts, seconds); see the module docstring."""

    overload_ws: float
    """Watt-seconds of caps in force above the supply beyond the reaction bound."""
    overload_in_bound_ws: float
    """Watt-seconds above the supply within the reaction bound after a drop."""
    max_excess_w: int
    starved_server_s: float
    admission_latency_s: dict[str, float | None]
    """``{"median", "p99", "max"}`` over the admitted lives (None: none admitted)."""
    unadmitted: int
    """Lives that ended (or the run ended) before any price counted their bid."""
    longest_without_price_s: float
    exempt: dict[str, dict[str, float]]
    """Per exemption: ``starved_server_s`` or ``overload_ws`` it accounts for."""
    strict_overload_ws: float
    strict_starved_server_s: float
    regime_grace_server_s: float
    """Server-seconds below a newly risen owed level (the regime rose: the supply rose,
    bids fell, servers left) within the raise bound, met within it (not starvation)."""
    joining_regime_server_s: float
    """Server-seconds an owed server was below r while S covered the owed servers' sum r
    but not the joining servers' besides (not starvation: see "owed"; measured because
    a regime judged over the admitted servers alone would count them)."""
    intervals: tuple[tuple[float, float], ...]
    """Merged violating intervals (overload beyond the bound or a starved server)."""

    @property
    def violations(self) -> int:
        """How many violating intervals there were (the simulator's ``guarantee_violations``)."""
        return len(self.intervals)

    def as_json(self) -> dict[str, Any]:
        """The figures as a JSON object (``intervals`` as ``[start, end]`` pairs)."""
        return {
            "overload_watt_seconds": round(self.overload_ws, 3),
            "overload_in_bound_watt_seconds": round(self.overload_in_bound_ws, 3),
            "max_excess_w": self.max_excess_w,
            "starved_server_seconds": round(self.starved_server_s, 3),
            "admission_latency_s": self.admission_latency_s,
            "unadmitted": self.unadmitted,
            "longest_without_price_s": round(self.longest_without_price_s, 3),
            "exempt": self.exempt,
            "strict_overload_watt_seconds": round(self.strict_overload_ws, 3),
            "strict_starved_server_seconds": round(self.strict_starved_server_s, 3),
            "joining_regime_server_seconds": round(self.joining_regime_server_s, 3),
            "regime_grace_server_seconds": round(self.regime_grace_server_s, 3),
            "violating_intervals": [[round(a, 6), round(b, 6)] for a, b in self.intervals],
        }


@attrs.define
class _Server:
    cap: int = 0
    floor: int = 0
    required: int = 0  # the bid's r
    owed_r: int = 0  # r as owed (a rise waits for the bound)
    owed_h: int = 0  # h as owed (likewise)
    live: bool = True
    owed: bool = False  # counts in the owed sums (admitted, or past the admission bound)
    admitted: bool = False
    counted: bool = False  # the latest price counted its bid
    started: float = 0.0
    last_price: float | None = None
    life: int = 0
    inherited: bool = False  # the cap is the previous life's, on its lease
    slow: bool = False  # a rise of its bid was not met within the bound (until it is)
    older: bool = False  # its latest price counted an older bid than its current one
    group: int = 0  # the cluster of its last price
    price_key: tuple[int, int] = (0, 0)  # (epoch, round) of its last price
    lease_end: float = 0.0
    at_drop: bool = False  # down at the last supply drop, its cap on its lease
    cls: str = STRICT  # the exemption class it was counted under in the below-counts
    cluster: int = 0  # the cluster it is placed in (0: the ledger was given no placement)


def _quantile(xs: list[float], q: float) -> float | None:
    if not xs:
        return None
    ys = sorted(xs)
    return round(ys[min(len(ys) - 1, int(q * len(ys)))], 6)


class PowerLedger:
    """The caps in force of a data centre over time (see the module docstring).

    Every input takes the virtual time ``t`` (never decreasing). ``partitioned``
    (called at each integration step) tells whether the network is split now.
    """

    def __init__(
        self,
        supply: int,
        *,
        bounds: PowerBounds | None = None,
        partitioned: Callable[[], bool] | None = None,
        servers: Mapping[int, tuple[int, bool, int]] | None = None,
    ) -> None:
        self.bounds = bounds if bounds is not None else PowerBounds()
        self._partitioned = partitioned
        self.supply_w = supply
        self._t = 0.0
        self._servers: dict[int, _Server] = {}
        self.cap_sum = 0
        self._owed_r = 0
        self._owed_h = 0
        self._sum_r = 0  # sum of the current r (and h) of the owed servers: the regime
        self._sum_h = 0
        self._below_r = dict.fromkeys(_CLASSES, 0)
        self._below_h = dict.fromkeys(_CLASSES, 0)
        self._reaction_until = -1.0
        self._dead_at_drop = 0  # sum of the caps of the servers down at the last drop
        self._dead_caps = 0  # sum of the caps of the dead servers still on their leases
        self._timers: list[tuple[float, int, str, int, int, str]] = []
        self._seq = 0
        self._over_in = 0.0
        self._over_by = dict.fromkeys((STRICT, *_OVERLOAD_EXCUSES), 0.0)
        self._windows = dict.fromkeys(_WINDOWS, -1e9)  # exemption -> when its window ends
        self._ticking: set[str] = set()
        self._newest: dict[int, tuple[int, int]] = {}  # cluster -> newest (epoch, round) applied
        self._level = 2  # what servers are owed: 2 r, 1 h, 0 nothing
        self._max_excess = 0
        self._starved = dict.fromkeys((*_CLASSES, *_STARVED_EXCUSES), 0.0)
        self._latency: list[float] = []
        self._unadmitted = 0
        self._join_r = 0  # sum of r (and h) of the live servers not owed yet: the regime
        self._join_h = 0
        self._joining_regime = 0.0  # starved server-s had the regime left those out
        self._grace = 0.0  # below the new level within the bound of a regime rise, met
        self._grace_pending = 0.0  # ... in the grace still open
        self._grace_from: float | None = None
        self._no_price = 0.0
        self._intervals: list[tuple[float, float]] = []
        self._open: float | None = None  # start of the open violating interval
        self.strict_events: list[str] = []
        """Descriptions of strict violations as they begin (the invariant drains it)."""
        self._strict_on = False
        # counted round_s past their end: the lead clears on aggregates a round or two old
        self._holds = HeldCaps(linger=self.bounds.round_s)
        # ``no-broker`` and ``islanded``: every provisioned server's (cluster, broker-capable,
        # floor); empty, neither exemption applies (the ledger knows no placement)
        self._placed = dict(servers) if servers is not None else {}
        self._floors = {n: f for n, (_, _, f) in self._placed.items()}  # latest known floor
        self._floor_sum = sum(self._floors.values())  # of every provisioned server
        self._capable_live: dict[int, int] = {}  # cluster -> its live broker-capable servers
        self._live_in: dict[int, int] = {}  # cluster -> its live servers
        # cluster -> (since, until): no live broker-capable server since ``since``; ``until``
        # inf while so, else the end of the bound after one started again
        self._brokerless: dict[int, tuple[float, float]] = {}
        self._reach = 0  # live servers whose cluster has a live broker-capable server
        self._island = 2  # the level owed at the last integration, ``islanded`` counted

    # ------------------------------------------------------------- state

    def held(self, t: float, ev: CapHeld) -> None:
        """A broker holds a departed member's cap, or released it (see ``held-cap``)."""
        self.advance(t)
        end = self._holds.note(t, ev)
        if end is not None:  # the integration splits exactly there
            self._timer(end, "held", 0, 0)

    def _held_beyond(self, t: float) -> tuple[int, int]:
        """Watts the brokers hold for departed members beyond what the owed sums of r,
        and of h, already count of those nodes (see ``held-cap``)."""
        dead = self._dead_caps  # no message lowers these before their leases end
        beyond_r = beyond_h = 0
        for node, watts in self._holds.most(t).items():
            srv = self._servers.get(node)
            if srv is not None and srv.live:  # its r and h are in the owed or joining sums
                beyond_r += max(0, watts - srv.required)
                beyond_h += max(0, watts - srv.floor)
            else:
                if srv is not None:  # dead, on its lease: counted once, the more of the two
                    watts = max(0, watts - srv.cap)
                beyond_r += watts
                beyond_h += watts
        return beyond_r + dead, beyond_h + dead

    def _starving(self) -> tuple[dict[str, int] | None, int]:
        """The below-counts that apply now, and the total starved count."""
        s = self.supply_w
        if s >= self._sum_r + self._join_r:
            counts = self._below_r
        elif s >= self._sum_h + self._join_h:
            counts = self._below_h
        else:
            return None, 0
        return counts, sum(counts.values())

    def _out(self, srv: _Server) -> None:
        """Take ``srv`` out of the owed sums and below-counts."""
        if srv.owed:
            self._owed_r -= srv.owed_r
            self._owed_h -= srv.owed_h
            self._sum_r -= srv.required
            self._sum_h -= srv.floor
            if srv.cap < srv.owed_r:
                self._below_r[srv.cls] -= 1
            if srv.cap < srv.owed_h:
                self._below_h[srv.cls] -= 1
        elif srv.live:
            self._join_r -= srv.required
            self._join_h -= srv.floor

    def _in(self, srv: _Server) -> None:
        """Put ``srv`` (back) into the owed sums and below-counts, classed as it is now."""
        if srv.owed:
            srv.cls = (
                "no-broker"
                if srv.cluster in self._brokerless
                else "unadmitted"
                if not srv.admitted
                else "uncounted"
                if not srv.counted
                else "slow-raise"
                if srv.slow
                else "older-bid"
                if srv.older
                else STRICT
            )
            self._owed_r += srv.owed_r
            self._owed_h += srv.owed_h
            self._sum_r += srv.required
            self._sum_h += srv.floor
            if srv.cap < srv.owed_r:
                self._below_r[srv.cls] += 1
            if srv.cap < srv.owed_h:
                self._below_h[srv.cls] += 1
        elif srv.live:
            self._join_r += srv.required
            self._join_h += srv.floor

    def _place(self, t: float, srv: _Server, node: int, delta: int) -> None:
        """A life of ``node`` began (``delta`` 1) or ended (-1): its cluster's live counts,
        and whether that cluster has a live broker-capable server (``no-broker``: from
        the instant it has none until ``admission_s`` after one starts again). O(n) when
        that changes (the cluster's servers are classed again), else O(clusters)."""
        place = self._placed.get(node)
        if place is None:
            return
        c, capable, _ = place
        srv.cluster = c
        live = self._live_in.get(c, 0) + delta
        self._live_in[c] = live
        brokers = self._capable_live.get(c, 0) + (delta if capable else 0)
        self._capable_live[c] = brokers
        self._reach = sum(n for k, n in self._live_in.items() if self._capable_live.get(k, 0))
        span = self._brokerless.get(c)
        if not brokers and live and span is None:
            self._brokerless[c] = (t, math.inf)
        elif brokers and span is not None and span[1] == math.inf:
            if span[0] < t:  # the bound runs from this start (none at a cold start)
                self._brokerless[c] = (span[0], t + self.bounds.admission_s)
                self._timer(t + self.bounds.admission_s, "broker", c, 0)
            else:
                del self._brokerless[c]
        else:
            return
        self._reclass(c)

    def _reclass(self, cluster: int) -> None:
        """Class the live servers of ``cluster`` again (O(n), when ``no-broker`` begins or ends)."""
        for srv in self._servers.values():
            if srv.live and srv.cluster == cluster:
                self._out(srv)
                self._in(srv)

    def _island_level(self) -> int:
        """What the servers a lead can count are owed at most (2 r, 1 h, 0 nothing; see
        ``islanded``): 2 unless the live servers whose cluster has a live broker-capable
        server are fewer than half the provisioned servers; then 1 while the supply covers
        every provisioned server's floor, else 0 (2 too when there are none: no island)."""
        n = len(self._placed)
        if not n or not self._reach or 2 * self._reach >= n:
            return 2
        return 1 if self.supply_w >= self._floor_sum else 0

    def _unpriceable(
        self, counts: dict[str, int], starved: int, level: int, dt: float
    ) -> tuple[dict[str, int], int, int, int]:
        """Take out of the below-counts the servers nobody can price (``no-broker``) and
        those below what a lead counting a majority would owe them but not below what an
        island's are owed (``islanded``), and account ``dt`` of both. Returns the counts
        left, their total, the level owed to them and how many were taken out."""
        nb = counts["no-broker"]
        island = self._island_level()
        if not nb and island >= level:
            return counts, starved, level, 0
        self._starved["no-broker"] += nb * dt
        rest = {**counts, "no-broker": 0}
        left = starved - nb
        isl = 0
        if island < level:
            if island == 1:  # owed r by the supply, the island's servers their floors only
                rest = {**self._below_h, "no-broker": 0}
                kept = sum(rest.values())
                isl, left = max(0, left - kept), kept
            else:
                rest = dict.fromkeys(rest, 0)
                isl, left = left, 0
            self._starved["islanded"] += isl * dt
            level = island
        return rest, left, level, nb + isl

    def _below_owed(self, srv: _Server) -> bool:
        """Whether ``srv`` is below what it is owed now (its class aside)."""
        counts, _ = self._starving()
        if counts is None:
            return False
        level = 2 if counts is self._below_r else 1
        if self._placed and srv.cls != "no-broker":
            level = min(level, self._island_level())
        if not level:
            return False
        return srv.cap < (srv.owed_r if level == 2 else srv.owed_h)

    def _timer(self, at: float, kind: str, node: int, life: int, name: str = "") -> None:
        self._seq += 1
        heapq.heappush(self._timers, (at, self._seq, kind, node, life, name))

    # ----------------------------------------------------------- integrate

    def advance(self, t: float) -> None:
        """Integrate up to ``t``, firing the ledger's own timers on the way."""
        timers = self._timers
        while timers and timers[0][0] <= t:
            at, _, kind, node, life, name = heapq.heappop(timers)
            self._integrate(at)
            self._fire(at, kind, node, life, name)
        self._integrate(t)

    def _integrate(self, t: float) -> None:
        """Account for the state that held over ``[last time, t)`` (a zero-length one counts
        for nothing: a price and the cap it sets arrive at one instant)."""
        dt = t - self._t
        if dt <= 0:
            return
        start = self._t
        excess = self.cap_sum - self.supply_w
        counts, starved = self._starving()
        if counts is not None and starved and (self._holds or self._dead_caps):
            counts, starved = self._after_holds(start, counts, starved, dt)
        if self._join_r and self.supply_w >= self._sum_r and counts is not self._below_r:
            # judged over the admitted servers alone, r would be owed here (see "owed")
            literal = sum(self._below_r.values()) - starved
            if literal > 0:
                self._joining_regime += literal * dt
        level = 0 if counts is None else 2 if counts is self._below_r else 1
        unpriced = 0
        island = level
        if counts is not None and starved and self._placed:
            counts, starved, island, unpriced = self._unpriceable(counts, starved, level, dt)
        elif self._placed and level:
            island = min(level, self._island_level())
        if level > self._level:
            self._window("stale-aggregates", start + self.bounds.regime_s)
            self._window("regime-grace", start + self.bounds.admission_s)
        elif island > self._island:  # an island's servers are owed more: the raise bound
            self._window("regime-grace", start + self.bounds.admission_s)
        if (
            start < self._windows["regime-grace"]
            and self._partitioned is not None
            and self._partitioned()
        ):  # no price crosses a cut: the rise's bound and window run from the heal
            self._window("regime-grace", t + self.bounds.admission_s)
            self._window("stale-aggregates", t + self.bounds.regime_s)
        self._level = level
        self._island = island
        over_from = None
        strict_over = False
        if excess > 0:
            self._max_excess = max(self._max_excess, excess)
            inside = min(dt, max(0.0, self._reaction_until - start))
            self._over_in += excess * inside
            if dt > inside:
                over_from = start + inside
                why = self._overload_excuse(start)
                if why == STRICT and self._dead_at_drop > self.supply_w:
                    dead = min(excess, self._dead_at_drop - self.supply_w)
                    self._over_by["dead-at-drop"] += dead * (dt - inside)
                    excess -= dead
                self._over_by[why] += excess * (dt - inside)
                strict_over = why == STRICT and excess > 0
        windows = self._windows
        if counts is not None and starved and start < windows["regime-grace"]:
            # owed the new level after the bound, a cap of 0 included (shed before the rise)
            self._grace_pending += starved * dt
            if self._grace_from is None:
                self._grace_from = start
            counts, starved = None, 0
        if counts is not None and starved:
            zero = (
                counts[STRICT] > 0
                and start < max(windows["stale-aggregates"], windows["departed-bids"])
                and self._strict_at_zero()
            )
            if start < windows["stale-aggregates"] and not zero:
                self._starved["stale-aggregates"] += starved * dt
                counts = None
            else:
                if counts[STRICT] and start < windows["departed-bids"] and not zero:
                    counts = dict(counts)
                    counts["departed-bids"] = counts.pop(STRICT)
                    counts[STRICT] = 0
                for c, k in counts.items():
                    self._starved[c] += k * dt
        bad_from = start if starved or unpriced else over_from
        if bad_from is not None:
            if self._open is None:
                self._open = bad_from
        elif self._open is not None:
            self._intervals.append((self._open, start))
            self._open = None
        strict_starved = counts[STRICT] if counts is not None else 0
        strict = strict_over or strict_starved > 0
        if strict and not self._strict_on:
            what = (
                f"caps in force {self.cap_sum} W > supply {self.supply_w} W"
                if strict_over
                else f"{strict_starved} admitted server(s) below what they are owed "
                f"(supply {self.supply_w} W; sum r {self._sum_r} W and sum h {self._sum_h} W "
                f"of theirs, {self._join_r} W and {self._join_h} W of the joining servers)"
            )
            self.strict_events.append(f"from t={start:.3f}: {what}")
        self._strict_on = strict
        self._t = t

    def _after_holds(
        self, start: float, counts: dict[str, int], starved: int, dt: float
    ) -> tuple[dict[str, int] | None, int]:
        """The below-counts left once the level the supply less the brokers' holds can
        pay is owed; the servers only the holds keep from their level are ``held-cap``."""
        s = self.supply_w
        beyond_r, beyond_h = self._held_beyond(start)
        pays_h = s - beyond_h >= self._sum_h + self._join_h
        if counts is self._below_r:
            if s - beyond_r >= self._sum_r + self._join_r:
                return counts, starved
            if pays_h:
                left = sum(self._below_h.values())
                self._starved["held-cap"] += (starved - left) * dt
                return (self._below_h, left) if left else (None, 0)
        elif pays_h:
            return counts, starved
        self._starved["held-cap"] += starved * dt
        return None, 0

    def _strict_at_zero(self) -> bool:
        """Whether an admitted, counted server owed power has a cap of 0: no stale aggregate
        or departed bid explains that (a clearing serves floors first). O(n), only while
        a window of those two exemptions is open and a server is starved."""
        return any(
            srv.owed and srv.cls == STRICT and srv.cap == 0 for srv in self._servers.values()
        )

    def _overload_excuse(self, start: float) -> str:
        """The named exemption an overload from ``start`` falls under, or :data:`STRICT`."""
        if self._partitioned is not None and self._partitioned():
            self._window("partition", self._t + self.bounds.lease_s)
            return "partition"
        windows = self._windows
        for name in ("partition", "lead-change", "supply-drop", "raise-before-cut"):
            if start < windows[name]:
                return name
        newest = self._newest  # O(n), but only for an overload nothing else excuses
        held = False
        for srv in self._servers.values():
            if srv.live and srv.price_key < newest.get(srv.group, srv.price_key):
                return "missed-price"
            held = held or (srv.live and not srv.counted and srv.cap > 0)
        return "lease-held" if held else STRICT

    def _window(self, name: str, end: float) -> None:
        """Extend the exemption window ``name`` to ``end``; a tick splits the integration there."""
        if end > self._windows[name]:
            self._windows[name] = end
            if name not in self._ticking:
                self._ticking.add(name)
                self._timer(end, "tick", 0, 0, name)

    def _fire(self, t: float, kind: str, node: int, life: int, name: str) -> None:
        if kind == "held":  # a hold stopped counting: advance integrated up to it
            return
        if kind == "broker":  # the bound after a cluster's broker-capable start has passed
            span = self._brokerless.get(node)
            if span is not None and span[1] <= t:
                del self._brokerless[node]
                self._reclass(node)
            return
        if kind == "tick":  # an exemption window ends (or was extended meanwhile)
            end = self._windows[name]
            if end > t:
                self._timer(end, "tick", 0, 0, name)
            else:
                self._ticking.discard(name)
                if name == "regime-grace":
                    self._grace_ends(t)
            return
        srv = self._servers.get(node)
        if srv is None or srv.life != life:
            return
        if kind == "lease":  # a crashed life's (or an inherited) cap leaves the sum
            if srv.live and not srv.inherited:
                return
            if srv.at_drop:
                self._dead_at_drop -= srv.cap
            if not srv.live:
                self._dead_caps -= srv.cap
            self._out(srv)
            self.cap_sum -= srv.cap
            srv.cap = 0
            srv.inherited = False
            self._in(srv)
            if not srv.live:
                del self._servers[node]
        elif kind == "admit" and srv.live and not srv.owed:
            self._out(srv)
            srv.owed = True  # owed from now on; the bound it waited counts as starved
            self._in(srv)
            if self._below_owed(srv):
                self._starved[srv.cls] += self.bounds.admission_s
                self._late(srv.started, t)
        elif kind == "raise" and srv.live and (srv.owed_r, srv.owed_h) != (srv.required, srv.floor):
            self._out(srv)
            srv.owed_r, srv.owed_h = srv.required, srv.floor
            srv.slow = srv.cap < srv.owed_r
            self._in(srv)
            if self._below_owed(srv):
                self._starved[srv.cls] += self.bounds.admission_s
                self._late(t - self.bounds.admission_s, t)

    def _grace_ends(self, t: float) -> None:
        """The bound of a regime rise has passed: a server still below the new level makes
        the wait starvation from the rise (``stale-aggregates``); else it was met in time."""
        pending, since = self._grace_pending, self._grace_from
        self._grace_pending, self._grace_from = 0.0, None
        if since is None:
            return
        counts, starved = self._starving()
        if counts is not None and starved and self._placed:
            level = 2 if counts is self._below_r else 1
            starved = self._unpriceable(counts, starved, level, 0.0)[1]
        if starved:
            self._starved["stale-aggregates"] += pending
            self._late(since, t)
        else:
            self._grace += pending

    def _late(self, since: float, t: float) -> None:
        """A retroactive violating stretch from ``since`` to ``t``."""
        self._intervals.append((since, t))

    # -------------------------------------------------------------- inputs

    def supply(self, t: float, watts: int) -> None:
        """The supply is ``watts`` from ``t`` on; a drop opens the reaction bound."""
        self.advance(t)
        if watts < self.supply_w:
            self._reaction_until = t + self.bounds.reaction_s
            self._window("supply-drop", t + self.bounds.round_s)
            dead = 0  # O(n) a drop: the servers no message can reach any more
            for srv in self._servers.values():
                srv.at_drop = not srv.live
                dead += srv.cap if srv.at_drop else 0
            self._dead_at_drop = dead
        self.supply_w = watts
        self._integrate(t)

    def lead_changed(self, t: float) -> None:
        """The broker group has a lead of a newer epoch from ``t`` on."""
        self.advance(t)
        self._window("lead-change", t + self.bounds.lease_s)

    def started(self, t: float, node: int, bid: Bid) -> None:
        """A life of ``node`` starts (first start, join or restart) with ``bid``."""
        self.advance(t)
        old = self._servers.get(node)
        srv = _Server(
            floor=bid.floor,
            required=bid.required,
            owed_r=bid.required,
            owed_h=bid.floor,
            started=t,
        )
        if old is not None:
            if old.live:  # a start without a crash: end the old life first
                self.crashed(t, node)
                old = self._servers.get(node)
            if old is not None:  # the old cap, still on its lease, is inherited
                self._dead_caps -= old.cap  # a live life may apply a cut
                if old.at_drop:  # ... so it is no longer out of reach
                    self._dead_at_drop -= old.cap
                srv.cap, srv.inherited, srv.life = old.cap, True, old.life + 1
                srv.last_price = old.last_price
                self._timer(old.lease_end, "lease", node, srv.life)
        self._servers[node] = srv
        self._in(srv)  # not owed yet: its bid joins the regime
        self._timer(t + self.bounds.admission_s, "admit", node, srv.life)
        self._floor_known(node, bid.floor)
        self._place(t, srv, node, 1)
        self._integrate(t)

    def _floor_known(self, node: int, floor: int) -> None:
        if node in self._floors:
            self._floor_sum += floor - self._floors[node]
            self._floors[node] = floor

    def bid(self, t: float, node: int, bid: Bid) -> None:
        """``node``'s bid is now ``bid`` (a rise of r is owed after the bound)."""
        self.advance(t)
        srv = self._servers.get(node)
        if srv is None or not srv.live:
            return
        self._out(srv)
        rises = (bid.required > srv.owed_r and srv.cap < bid.required) or (
            bid.floor > srv.owed_h and srv.cap < bid.floor
        )
        if rises:
            self._timer(t + self.bounds.admission_s, "raise", node, srv.life)
        if bid.required < srv.owed_r and srv.owed:
            # the lead still counts the higher r for a round or two
            self._window("stale-aggregates", t + self.bounds.regime_s)
        if not rises or bid.required <= srv.owed_r:
            srv.owed_r = bid.required
        if not rises or bid.floor <= srv.owed_h:
            srv.owed_h = bid.floor
        srv.required, srv.floor = bid.required, bid.floor
        self._in(srv)
        self._floor_known(node, bid.floor)
        self._integrate(t)

    def cap(self, t: float, node: int, watts: int) -> None:
        """``node`` applies the cap ``watts`` from ``t`` on."""
        self.advance(t)
        srv = self._servers.get(node)
        if srv is None or not srv.live:
            return
        self._out(srv)
        if watts > srv.cap:
            self._window("raise-before-cut", t + self.bounds.skew_s)
        self.cap_sum += watts - srv.cap
        srv.cap = watts
        srv.inherited = False
        if srv.owed_r < srv.required <= watts:
            srv.owed_r = srv.required  # the rise is met within its bound
        if srv.owed_h < srv.floor <= watts:
            srv.owed_h = srv.floor
        if srv.slow and watts >= srv.owed_r:
            srv.slow = False
        self._in(srv)
        self._integrate(t)

    def priced(
        self,
        t: float,
        node: int,
        counted: bool,
        key: tuple[int, int, int] = (0, 0, 0),
        *,
        latest: bool = True,
    ) -> None:
        """``node`` applied a valid price; ``counted``: the price counted its bid;
        ``key``: the price's (cluster, epoch, round); ``latest``: it counted the current bid."""
        self.advance(t)
        srv = self._servers.get(node)
        if srv is None or not srv.live:
            return
        srv.group, srv.price_key = key[0], key[1:]
        if srv.price_key > self._newest.get(srv.group, (0, 0)):
            self._newest[srv.group] = srv.price_key
        self._no_price = max(
            self._no_price,
            t
            - (
                srv.last_price
                if srv.last_price is not None and srv.last_price >= srv.started
                else srv.started
            ),
        )
        srv.last_price = t
        admitted = counted and not srv.admitted
        older = counted and not latest
        if admitted or counted != srv.counted or older != srv.older:
            # (Else nothing _in reads changes: out and in again would give the same sums.)
            self._out(srv)
            if admitted:
                srv.admitted = True
                self._latency.append(t - srv.started)
                srv.owed = True
            srv.counted = counted
            srv.older = older
            self._in(srv)
        self._integrate(t)

    def crashed(self, t: float, node: int) -> None:
        """``node``'s life ended without notice: its cap stays in force until its lease ends."""
        self.advance(t)
        srv = self._servers.get(node)
        if srv is None or not srv.live:
            return
        self._end(t, srv)
        srv.live = False
        self._place(t, srv, node, -1)
        if srv.last_price is not None and srv.last_price + self.bounds.lease_s > t and srv.cap:
            srv.lease_end = srv.last_price + self.bounds.lease_s
            self._timer(srv.lease_end, "lease", node, srv.life)
            self._dead_caps += srv.cap
        else:
            self.cap_sum -= srv.cap
            del self._servers[node]
        self._integrate(t)

    def left(self, t: float, node: int) -> None:
        """``node`` left and powered off: it stops drawing at once."""
        self.advance(t)
        srv = self._servers.pop(node, None)
        if srv is not None:
            if srv.live:
                self._end(t, srv)
                srv.live = False
                self._place(t, srv, node, -1)
            else:
                self._dead_caps -= srv.cap
            if srv.at_drop:
                self._dead_at_drop -= srv.cap
            self.cap_sum -= srv.cap
        self._integrate(t)

    def _end(self, t: float, srv: _Server) -> None:
        self._window("departed-bids", t + self.bounds.bid_timeout_s)
        self._out(srv)
        srv.owed = False
        if not srv.admitted:
            self._unadmitted += 1
        since = (
            srv.last_price
            if srv.last_price is not None and srv.last_price >= srv.started
            else srv.started
        )
        self._no_price = max(self._no_price, t - since)

    # -------------------------------------------------------------- output

    @property
    def starved_now(self) -> int:
        """How many owed servers are below what they are owed at the last integrated time."""
        return self._starving()[1]

    def figures(self, t: float) -> PowerFigures:
        """The figures up to ``t`` (integrates up to it; live lives count as ending there)."""
        self.advance(t)
        open_ = [(self._open, t)] if self._open is not None and t > self._open else []
        merged: list[tuple[float, float]] = []
        for a, b in sorted(self._intervals + open_):
            if merged and a <= merged[-1][1]:
                merged[-1] = (merged[-1][0], max(merged[-1][1], b))
            elif b > a:
                merged.append((a, b))
        no_price = self._no_price
        unadmitted = self._unadmitted
        for srv in self._servers.values():
            if srv.live:
                last = (
                    srv.last_price
                    if srv.last_price is not None and srv.last_price >= srv.started
                    else srv.started
                )
                no_price = max(no_price, t - last)
                unadmitted += not srv.admitted
        starved = self._starved
        return PowerFigures(
            overload_ws=sum(self._over_by.values()),
            overload_in_bound_ws=self._over_in,
            max_excess_w=max(0, self._max_excess),
            starved_server_s=sum(starved.values()),
            admission_latency_s={
                "median": _quantile(self._latency, 0.5),
                "p99": _quantile(self._latency, 0.99),
                "max": round(max(self._latency), 6) if self._latency else None,
            },
            unadmitted=unadmitted,
            longest_without_price_s=no_price,
            exempt={
                **{
                    c: {"starved_server_seconds": round(starved[c], 3)}
                    for c in (
                        "no-broker",
                        "unadmitted",
                        "uncounted",
                        "slow-raise",
                        "older-bid",
                        *_STARVED_EXCUSES,
                    )
                },
                **{
                    c: {"overload_watt_seconds": round(self._over_by[c], 3)}
                    for c in _OVERLOAD_EXCUSES
                },
            },
            strict_overload_ws=self._over_by[STRICT],
            strict_starved_server_s=starved[STRICT],
            joining_regime_server_s=self._joining_regime,
            regime_grace_server_s=self._grace + self._grace_pending,  # (a bound still open)
            intervals=tuple(merged),
        )


class SupplySteps:
    """Supply steps ``(t, watts)`` (sorted by ``t``) still to come; true while any is.
    The fuzz apps give their nodes the steps due (``Node.set_supply``), and
    :class:`PowerGuarantee` its ledger, each from one of these."""

    __slots__ = ("_pending",)

    def __init__(self, steps: tuple[tuple[float, int], ...]) -> None:
        self._pending = list(reversed(steps))  # the next last

    def __bool__(self) -> bool:
        return bool(self._pending)

    @property
    def next_at(self) -> float | None:
        """When the next step is due (None: no more)."""
        return self._pending[-1][0] if self._pending else None

    def due(self, t: float) -> list[tuple[float, int]]:
        """Take the steps due at or before ``t``, in order."""
        pending = self._pending
        out = []
        while pending and pending[-1][0] <= t:
            out.append(pending.pop())
        return out


class PowerGuarantee:
    """The power guarantee in time as an invariant (the fuzz harness and the simulator).

    Feeds a :class:`PowerLedger` from the notifications (``NodeStarted``,
    ``NodeCrashed``, ``AllocationChanged``, ``PriceUpdated``) and fails on
    every **strict** violation as it begins (named exemptions are measured in
    :meth:`figures`, not failed). ``bid_of(node)`` gives a starting life's bid; ``steps``
    (``(t, watts)``, sorted) the supply's changes after the first ``supply``; ``servers``
    every provisioned server's ``(cluster, broker-capable, floor)`` (``no-broker`` and
    ``islanded`` need it).
    """

    name = "power-guarantee"

    def __init__(
        self,
        supply: int,
        bid_of: Callable[[int], Bid],
        *,
        bounds: PowerBounds | None = None,
        network: FuzzNetwork | None = None,
        steps: tuple[tuple[float, int], ...] = (),
        servers: Mapping[int, tuple[int, bool, int]] | None = None,
    ) -> None:
        self._bid_of = bid_of
        self._network = network
        self.ledger = PowerLedger(supply, bounds=bounds, partitioned=self._split, servers=servers)
        self._lead_epoch = 0
        self._steps = SupplySteps(steps)

    def _supply_until(self, t: float) -> None:
        """Give the ledger the supply steps up to ``t`` (before anything later)."""
        for at, watts in self._steps.due(t):
            self.ledger.supply(at, watts)

    def _split(self) -> bool:
        return self._network is not None and self._network.partitioned

    def watches(self, kind: type) -> bool:
        """The notification types :meth:`observe` acts on."""
        return kind in (
            NodeStarted,
            NodeCrashed,
            AllocationChanged,
            PriceUpdated,
            LeaderElected,
            CapHeld,
        )

    def observe(self, time: float, node: NodeId, output: object) -> None:
        if self._steps:
            self._supply_until(time)
        ledger = self.ledger
        kind = type(output)
        if kind is AllocationChanged:
            ledger.cap(time, node, output.allocation)  # type: ignore[attr-defined]
        elif kind is PriceUpdated:
            pu: PriceUpdated = output  # type: ignore[assignment]
            ledger.priced(
                time,
                node,
                pu.counted,
                (pu.group, pu.epoch, pu.round),
                latest=pu.includes_latest_bid,
            )
        elif kind is NodeStarted:
            ledger.started(time, node, self._bid_of(node))
        elif kind is NodeCrashed:
            ledger.crashed(time, node)
        elif kind is LeaderElected:
            self._elected(time, output)  # type: ignore[arg-type]
        elif kind is CapHeld:
            ledger.held(time, output)  # type: ignore[arg-type]

    def _elected(self, time: float, out: LeaderElected) -> None:
        if out.group == BROKER_GROUP and out.epoch > self._lead_epoch:
            self._lead_epoch = out.epoch
            self.ledger.lead_changed(time)

    def check(self, network: FuzzNetwork) -> list[str]:
        """Strict violations that began since the last check (advances to ``network.now``)."""
        if self._network is None:
            self._network = network
        if self._steps:
            self._supply_until(network.now)
        self.ledger.advance(network.now)
        events = self.ledger.strict_events
        if not events:
            return []
        self.ledger.strict_events = []
        return events

    def check_final(self, network: FuzzNetwork) -> list[str]:
        return self.check(network)

    def figures(self, t: float) -> PowerFigures:
        """The ledger's figures up to ``t``."""
        return self.ledger.figures(t)


def describe(figures: PowerFigures) -> str:
    """One line of the figures for a summary."""
    lat = figures.admission_latency_s
    med = "-" if lat["median"] is None else f"{lat['median']:.2f}"
    worst = "-" if lat["max"] is None else f"{lat['max']:.2f}"
    return (
        f"overload {figures.overload_ws:.1f} W*s beyond the reaction bound "
        f"({figures.overload_in_bound_ws:.1f} within; max excess {figures.max_excess_w} W), "
        f"starved {figures.starved_server_s:.2f} server-s, admission median {med} s "
        f"max {worst} s, longest without a price {figures.longest_without_price_s:.2f} s"
    )
