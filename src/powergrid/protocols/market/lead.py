"""The lead broker: clears the whole market once per round, and at once when the supply drops.

Theory of operation
-------------------
**Guarantees.** While this node is the lead broker (``LeaderElected`` of the
broker group names it), every ``round_interval`` seconds it sums the latest
aggregate of every cluster heard from within ``aggregate_timeout``, clears them
once against the usable supply ``S`` (:func:`~powergrid.protocols.market.clearing.clear`,
with hysteresis from the previous round), and multicasts round ``round``'s
:class:`~powergrid.wire.Clearing` to the broker group, stamped with its epoch
(brokers refuse older epochs). The clearing names, for each cluster, the
aggregate it cleared (cluster epoch and number) and the cluster's budget; the
budgets and the clients' allocations sum to at most ``S``. When the clusters
do not fit one datagram the round is split over several Clearings with the
same round number.

**Assumptions.** The node passes it ``LeaderElected`` of the broker group and
the ``Aggregate`` and ``Clearing`` messages it receives. Aggregates are kept
(newest per cluster: a higher cluster epoch replaces a lower one, a lower one
is refused) even while this node is not the lead, so a new lead can clear in
its first round.

**Supply drops.** A :class:`SupplyChanged` that lowers the supply clears a
round at once (with the aggregates held, next round number), so the caps in
force come down within one message delay, not one ``round_interval``; the
periodic rounds keep their schedule. A rise waits for the next round (the
caps in force are already within the higher supply, and a supply that moves
every second, solar, would otherwise double the Clearing traffic while it
rises), unless it newly covers the sum of ``r`` (or of ``h``) of the aggregates
held: from that instant the servers are owed their ``r`` (or ``h``), so it
clears at once (``rounds_on_supply_rise``).

**Raises.** An aggregate whose ``sum r`` exceeds the budget its cluster was
last given, while its servers are owed more than that budget (their ``sum r``
while the supply covers every ``r``, else their ``sum h`` while it covers
every ``h``), clears at once, or half a round after the last clearing if that
comes before the next round (``rounds_on_raise``): the brokers send a raise
at once, so a rise is priced within half a round, not after two. An aggregate of a
cluster epoch no round has cleared yet (a new broker's first, or a cluster new to the
lead) brings the next round forward to ``gather`` later: its servers have no price of
that broker, and a restarted broker-capable node's cluster waited up to a round for
one (fresh seeds 38,300,721, 38,301,092, 40,100,538 and 41,006,884 with supply steps:
priced more than 1 s after that node's start). The round schedule moves with it.

**Held caps rise.** An aggregate whose highest class (where brokers put the caps they
hold for departed members and for cuts nobody confirmed) grew, while its cluster's budget
is below its ``sum r``, clears at once (``rounds_on_hold``), as a supply drop does: those
caps may be drawn now, and the others make room; at most once a ``gather`` (0.1 s: a flood
of forged aggregates made every datagram a round). The raise rule would not clear it below
the floors, where nobody is owed anything (fresh seed 41,002,802 with supply steps).

**Reserve for silent clusters.** Clients keep their caps for a lease after
the last price and then fall back to at most their required power, and a
broker cut off from the lead re-clears its cluster within its last budget: a
cluster that has gone silent still draws up to the budget it was last given.
So the lead remembers the last budget of every cluster, from its own rounds
and from the ``Clearing`` messages of other leads it overhears in the broker
group, and while a cluster it holds no aggregate of was budgeted within
``reserve_timeout``, it clears the others against ``S`` minus that budget
(``MarketCleared.reserved``). A new lead thus leaves room for the clusters it
has not heard from yet, and a lead that loses a cluster does not hand its
watts to the others at once. The reserve never cuts into the required power of
the clusters it clears (``reserved <= S - sum r`` of those), so a supply that
covers every server's ``r`` still gives each counted bid at least ``r``; but
when every budget reserved came from a shortage clearing (each at most its
servers' ``sum r``), cutting below the held clusters' ``sum r`` means the whole
data centre is short, and the reserve yields only to their floors
(``reserved <= S - sum h``). The brokers forward the last round they heard to a
new lead (see the broker), which learns it like an overheard Clearing; a budget
this lead gave a broker epoch is never replaced by an older lead's. Every Price
names its cluster's budget too, and the lead machine (given its node's
``cluster``) overhears its own cluster's prices from the broker: a node that becomes
the lead after its cluster's broker crashed as the lead never heard that lead's
Clearings (it was not in the broker group), but it knows the budget in force.

**Grantors wait out leases.** A budget given to a cluster stays in force at
its clients for their lease after the price that carried it, whatever the
lead does next: a client that has not been counted by a new broker keeps its
cap on that lease, and a server that crashed keeps drawing its cap until its
lease ends. So when a cluster's aggregates start to come from a newer cluster
epoch (its broker changed: the old one may have crashed with its own server's
bid, which nobody counts any more), the budget last given under the older
epoch, by this lead or by another one overheard, is **held**: it is kept out
of the supply cleared until ``lease * (1 + drift) + lease_margin`` after it
was given (``MarketCleared.held``). It is credited with the share of it the
servers the new epoch counts again held (the old clearing applied to their
bids, less a watt each for rounding; nothing if that clearing is not known, as
for a budget passed on), so it is mostly what a crashed server or a client not
counted yet still draws. Like the reserve, it never cuts into the required
power of the servers cleared (at most ``S - join reserve - sum r``): the hold
is conservative (a budget passed on is held whole), and holding it whole made
the fuzz find live servers below ``r`` while the supply covered them (seeds
7700000, 7700016 with ``--safety 15``). In a shortage (the supply short of the
counted servers' ``sum r`` alone) they are owed their floors only, and the hold yields
only to those (at most ``S - join reserve - sum h``; fresh seed 41,001,153: a broker
crashed holding 71 W, and a shortage clearing of its new epoch held nothing and gave
those watts to the others); below their floors nobody is owed anything (the floors are
cut) and it yields to nobody (fresh seed 41,007,050: it yielded to floors nobody was
owed, 36 W over an 80 W supply). The overlap the yielding leaves is measured: the
simulator's strict check has no exemption for a crashed server's lease any more.

**Unconfirmed cuts.** A clearing that gives a cluster less than a grant still in force
there does not make the cut happen: its broker may have crashed (nobody prices it), so
its clients keep their caps on their leases. So the higher grant stays on record beside
the lower one until the cut is **confirmed**: an aggregate of that broker epoch
numbered two past the one the cut cleared (the broker was alive after the cut reached it:
it prices a clearing at once, and it sends an aggregate a round); rounds that keep the
cut do not move that target on. When that epoch ends unconfirmed, the hold is the higher
grant while its lease runs, then the last one. Fresh seed 41,005,687 with supply steps: a
broker crashed, the drop's clearing cut its cluster from 614 to 207 W, nobody priced the
cut, and the old epoch's hold was the cut budget: a dead server's 220 W overlapped the
others' new caps, 109 W over the supply until its lease ended.

**Budgets are passed on.** A round's Clearing also names, with aggregate 0, the
last budget of every cluster it reserves for (silent, or not heard yet): no
broker takes such an entry as a clearing, but a lead that overhears it learns
the budget (keeping its own, older date of it if it knew it already), so a
lead that takes over from a lead that took over still holds what the first
granted (the lead-broker election may change the lead twice in a failover).

**Join reserve.** ``provisioned`` servers (0: none) may be powered, each with a
floor of at most ``floor_provision`` watts, provisioned within the firm supply;
one that no price counts draws that floor (a client with
``ClientConfig.floor_reserve``: from the moment it joins). The lead never hands
out the floors of the servers the aggregates it holds do not count: it clears
``S - max(0, provisioned - bids counted) * floor_provision``
(``MarketCleared.join_reserve``), so a joining server's floor is always covered
and the market trades above the floors; once every server is counted nothing
is held back. It yields to the servers that run: where keeping it whole would
put counted servers below their ``r`` while the supply covers that ``r``, only
what is left above their ``sum r`` is kept; in a shortage it ranks with the
floors (kept whole while the counted floors fit beside it).

**Islanding.** A lead cannot tell a crashed server from one cut off with a twin
lead of its own (bully elections on both sides of a partition each elect one,
often in the same epoch). So, with ``provisioned`` set, a round whose aggregates
count fewer than half the provisioned servers is **not cleared** (``rounds_islanded``):
a lead on the other side of the cut may count the majority, and it keeps only the
floors of the servers it does not count (the join reserve) for them. The lead tries
again ``gather`` later, so a lead that has heard only the first aggregates of a new
epoch clears as soon as a majority is in. At most one side of a cut counts a
majority of distinct servers; that side keeps the other's floors; the other side
grants nothing new, and its servers keep the caps in force on their leases. A round
that counts **exactly half** clears within half the supply (``rounds_at_half``): the
other side counts at most the other half, so it grants nothing or, at exactly half
too, at most the other half (with every other deduction still made: the reserve for
the clusters not heard, the lease holds, the join reserve), and only while that half
covers the ``r`` of the servers it counts (else it is islanded as above: a half that
cut its own servers below ``r`` while the whole supply covers every ``r`` would starve
them, fresh seed 36,310,041 at its start). An aggregate that makes a majority brings
the next round forward to ``gather`` later. Not
covered: a bid counted on both sides (a broker still counts a bid for
``bid_timeout`` after its server was cut away), so two sides can each count a
majority for a few seconds after a cut; a supply that does not cover the counted
servers' ``r`` (or, in a shortage, their floors) beside the join reserve, which then
gives way; and a cut that outlasts a lease: a client then falls to ``min(cap, r)``,
more than the floor the majority keeps for it.

**Driving.** Inputs: :class:`SupplyChanged` and :class:`SteppedDown`
(commands), ``LeaderElected``, ``Received`` and ``DeadlineReached``.
Outputs: ``Multicast(Clearing)`` and the notification :class:`MarketCleared`.
The first round comes ``gather`` (0.1 s) after the election, long enough for
the brokers' aggregates (each broker sends one at once when it learns of a new
lead), not a full ``round_interval``.

**Timeouts.** ``round_interval`` (1 s), ``aggregate_timeout`` (3 s, more than
``round_interval``): a cluster silent that long is left out (its broker is
gone; it re-clears alone within its last budget, if it is alive at all).
``reserve_timeout`` (10 s, 0 turns the reserve off): a cluster last budgeted
that long ago is taken for gone and its reserve released; if it is only cut
off, its caps and the others' can then overlap.
"""

from __future__ import annotations

import attrs

from powergrid import wire
from powergrid._checks import config_problem, instance, real, whole
from powergrid._dispatch import Dispatching
from powergrid.errors import UsageError
from powergrid.events import DeadlineReached, LeaderElected, Multicast, Received
from powergrid.protocols.leadership import Leadership, Verdict
from powergrid.protocols.market.bids import DEFAULT_GRID, MAX_PRIORITY, Grid
from powergrid.protocols.market.clearing import (
    ClearingResult,
    Regime,
    Totals,
    budget,
    clear,
    combine,
    totals_from_message,
)
from powergrid.protocols.market.repeat import Repeater, check_round_settings, earliest
from powergrid.types import BROKER_GROUP, Epoch, NodeId, epoch_newer

__all__ = [
    "MAX_CLEARING_ENTRIES",
    "LeadBrokerMachine",
    "LeadConfig",
    "LeadStats",
    "MarketCleared",
    "SteppedDown",
    "SupplyChanged",
]

_CLEARING_EMPTY = len(
    wire.encode_body(
        wire.Clearing(
            epoch=1, round=1, regime=0, price=0.0, level=0, fill=0, deficit=0, supply=0, entries=()
        )
    )
)
MAX_CLEARING_ENTRIES = (wire.MAX_PAYLOAD - _CLEARING_EMPTY) // 24
"""Clusters per Clearing datagram (54); more are split over several datagrams."""


@attrs.frozen(kw_only=True)
class SupplyChanged:
    """Command: the usable supply is now ``watts`` (int >= 0).

    A drop clears a round at once (while this node is the lead); a rise takes
    effect from the next round on, or at once if it newly covers the sum of r
    (or of h) of the aggregates held.
    """

    watts: int


@attrs.frozen(kw_only=True)
class SteppedDown:
    """This node left the broker group (it is no longer its cluster's broker): stop clearing.

    Without it a lead that lost its cluster would keep clearing rounds that can
    no longer reach anyone until it heard of the next lead broker.
    """


@attrs.frozen(kw_only=True)
class MarketCleared:
    """Notification: round ``round`` of ``epoch`` cleared ``bids`` bids of ``clusters`` clusters."""

    epoch: Epoch
    round: int
    supply: int
    regime: Regime
    price: float
    deficit: int
    clusters: int
    bids: int
    allocated: int
    reserved: int = 0
    """Watts held back for clusters budgeted lately but not cleared in this round."""
    held: int = 0
    """Watts of budgets given under an older cluster epoch, held until their lease ends."""
    join_reserve: int = 0
    """Watts of the join reserve not handed out (floors not counted in this round)."""


@attrs.frozen(kw_only=True)
class LeadConfig:
    """Lead broker timing (seconds), the price grid and the hysteresis ``band``.

    Raises :class:`ConfigError` unless ``round_interval > 0``,
    ``aggregate_timeout > round_interval``, ``reserve_timeout >= 0``,
    ``0 <= band < 1``, ``0 < gather <= round_interval``, ``lease > 0``,
    ``lease_margin >= 0``, ``drift >= 0``, ints ``provisioned >= 0`` and ``floor_provision >= 0``.
    """

    grid: Grid = attrs.field(default=DEFAULT_GRID, validator=instance(Grid))
    round_interval: float = attrs.field(default=1.0, validator=real)
    aggregate_timeout: float = attrs.field(default=3.0, validator=real)
    reserve_timeout: float = attrs.field(default=10.0, validator=real)
    band: float = attrs.field(default=0.02, validator=real)
    gather: float = attrs.field(default=0.1, validator=real)
    """The first round of an epoch, this long after the election (s)."""
    lease: float = attrs.field(default=5.0, validator=real)
    """The clients' lease (``ClientConfig.lease``, s): how long a budget stays in force."""
    lease_margin: float = attrs.field(default=0.5, validator=real)
    """Epsilon added to a lease before its watts are reused (message delay, s)."""
    drift: float = attrs.field(default=0.0, validator=real)
    repeat_after: float = attrs.field(default=0.01, validator=real)
    """Each round's Clearings are multicast once more this much later (s; 0: never)."""
    """rho: the clock drift assumed between a holder and the lead (0.01 = 1 %)."""
    provisioned: int = attrs.field(default=0, validator=whole(0))
    """Servers that may be powered (see "Join reserve" and "Islanding"; 0: unknown)."""
    floor_provision: int = attrs.field(default=0, validator=whole(0))
    """Watts provisioned for each one's floor: at least any server's floor."""

    def __attrs_post_init__(self) -> None:
        if not self.round_interval > 0:
            raise config_problem(self, f"round_interval must be > 0 s, got {self.round_interval}")
        if not self.aggregate_timeout > self.round_interval:
            raise config_problem(
                self,
                f"aggregate_timeout ({self.aggregate_timeout} s) must exceed round_interval "
                f"({self.round_interval} s), or live clusters drop out between rounds",
            )
        if not self.reserve_timeout >= 0:
            raise config_problem(
                self, f"reserve_timeout must be >= 0 s, got {self.reserve_timeout}"
            )
        check_round_settings(self)
        if not self.lease > 0:
            raise config_problem(self, f"lease must be > 0 s, got {self.lease}")
        for name in ("lease_margin", "drift"):
            value = getattr(self, name)
            if not value >= 0:
                raise config_problem(self, f"{name} must be >= 0, got {value}")
        for name in ("provisioned", "floor_provision"):
            value = getattr(self, name)
            if type(value) is not int or value < 0:
                raise config_problem(self, f"{name} must be an int >= 0, got {value!r}")

    @property
    def hold(self) -> float:
        """How long after it was given a budget's watts stay in force (s)."""
        return self.lease * (1 + self.drift) + self.lease_margin


@attrs.define
class LeadStats:
    """Counters; every dropped peer message is counted in exactly one ``dropped_*``."""

    rounds_cleared: int = 0
    rounds_empty: int = 0
    rounds_on_supply_drop: int = 0
    rounds_on_supply_rise: int = 0
    """Rounds cleared at once because a rise newly covered the sum of r (or of h)."""
    rounds_on_raise: int = 0
    """Rounds brought forward because a cluster's ``sum r`` rose above its budget."""
    rounds_on_hold: int = 0
    """Rounds cleared at once because a cluster's held caps rose beyond its budget's reach
    (its aggregate's highest class grew while the budget is below its ``sum r``)."""
    rounds_islanded: int = 0
    """Rounds not cleared: the aggregates held count fewer than half the provisioned servers."""
    rounds_at_half: int = 0
    """Rounds cleared within half the supply: the aggregates held count exactly half the
    provisioned servers."""
    rounds_with_reserve: int = 0
    rounds_with_hold: int = 0
    clearings_overheard: int = 0
    prices_overheard: int = 0
    """Our cluster's prices from its broker (another node), whose budgets we learn."""
    clearings_sent: int = 0
    aggregates_accepted: int = 0
    aggregates_expired: int = 0
    dropped_stale: int = 0
    dropped_duplicate: int = 0
    dropped_invalid: int = 0
    dropped_unexpected: int = 0


@attrs.define
class _Latest:
    epoch: int
    seq: int
    totals: Totals
    heard_at: float


@attrs.define
class _Grant:
    budget: int
    at: float
    epoch: int = 0  # the cluster epoch of the aggregate it cleared
    result: ClearingResult | None = None  # the clearing that gave it (None: not known)
    lead: int = 0  # our lead epoch when we gave it (0: another lead's, learnt)
    # The higher grant of this epoch that a later one of ours cut, until the cut is
    # confirmed (an aggregate of this epoch numbered ``confirm`` or later; see
    # "Unconfirmed cuts").
    unconfirmed: _Grant | None = None
    confirm: int = 0

    def in_force(self) -> _Grant:
        """The grant whose caps may be in force: the higher one of an unconfirmed cut."""
        top = self.unconfirmed
        return top if top is not None and top.budget > self.budget else self


def _owed(supply: int, totals: Totals, of: Totals) -> int:
    """What the servers summed in ``of`` (some of those in ``totals``) are owed while the
    supply covers ``totals``: their ``r`` while it covers every ``r``, their floors while it
    covers every floor, else nothing (the floors are cut)."""
    if supply >= totals.required:
        return of.required
    return of.floor if supply >= totals.floor else 0


def check_supply(watts: object) -> int:
    """``watts`` if it is a supply (a whole number of watts >= 0), else ``UsageError``."""
    if type(watts) is not int or watts < 0:
        raise UsageError(f"supply must be a non-negative int of watts, got {watts!r}")
    return watts


class LeadBrokerMachine(Dispatching):
    """The lead broker's market on node ``me``, with usable supply ``supply`` watts.

    Raises :class:`UsageError` for a negative or non-int supply.
    """

    __slots__ = (
        "_active",
        "_cleared_at",
        "_cluster",
        "_clusters",
        "_config",
        "_granted",
        "_half",
        "_held",
        "_leadership",
        "_me",
        "_previous",
        "_repeat",
        "_result",
        "_round",
        "_round_at",
        "_supply",
        "stats",
    )

    _EVENTS = {
        SupplyChanged: "_on_supply_changed",
        SteppedDown: "_on_stepped_down",
        LeaderElected: "_on_leader_elected",
        Received: "_on_received",
        DeadlineReached: "_on_deadline",
    }

    def __init__(
        self, me: NodeId, supply: int, config: LeadConfig | None = None, *, cluster: int = 0
    ) -> None:
        self._me = me
        self._cluster = cluster  # this node's cluster, whose prices it overhears (0: none)
        self._supply = check_supply(supply)
        self._config = config if config is not None else LeadConfig()
        self.stats = LeadStats()
        self._active = False
        self._leadership = Leadership()  # the broker group's leader and epoch
        self._round = 0
        self._round_at: float | None = None
        self._cleared_at = float("-inf")  # when the last round was cleared
        self._half = False  # the last round counted exactly half the provisioned servers
        self._previous: Regime | None = None
        self._result: ClearingResult | None = None
        self._clusters: dict[int, _Latest] = {}
        self._granted: dict[int, _Grant] = {}  # cluster -> last budget given it, and when
        self._held: dict[int, list[_Grant]] = {}  # cluster -> budgets of older epochs in force
        self._repeat = Repeater(self._config.repeat_after)  # each round's Clearings, twice

    # ------------------------------------------------------------ read-only state

    @property
    def active(self) -> bool:
        """Whether this node is the lead broker now."""
        return self._active

    @property
    def epoch(self) -> Epoch:
        """The lead epoch (the highest seen while inactive)."""
        return self._leadership.epoch

    @property
    def supply(self) -> int:
        """The usable supply, watts."""
        return self._supply

    @property
    def round(self) -> int:
        """The last round cleared in this epoch (0: none)."""
        return self._round

    @property
    def result(self) -> ClearingResult | None:
        """The last round's result."""
        return self._result

    @property
    def clusters(self) -> tuple[int, ...]:
        """The clusters whose aggregates are held, sorted."""
        return tuple(sorted(self._clusters))

    # ------------------------------------------------------------------ driving

    def next_deadline(self) -> float | None:
        """The next round or Clearing repeat, while active."""
        return earliest(self._round_at, self._repeat.at) if self._active else None

    # ---------------------------------------------------------------- handlers

    def _on_supply_changed(self, ev: SupplyChanged, now: float) -> list[object]:
        watts = check_supply(ev.watts)
        old, self._supply = self._supply, watts
        if not self._active or not self._clusters or watts == old:
            return []
        if watts < old:
            self.stats.rounds_on_supply_drop += 1
            return self._clear(now)
        # A rise clears at once only when it newly covers the sum of r (or of h) of
        # the aggregates held: the servers are owed more from that instant on.
        cfg = self._config
        totals = combine((self._clusters[c].totals for c in sorted(self._clusters)), cfg.grid)
        if any(old < need <= watts for need in (totals.required, totals.floor)):
            self.stats.rounds_on_supply_rise += 1
            return self._clear(now)
        return []

    def _on_leader_elected(self, ev: LeaderElected, now: float) -> list[object]:
        if ev.group != BROKER_GROUP:
            return []
        verdict = self._leadership.obey(ev.leader, ev.epoch)
        if verdict is Verdict.STALE:
            self.stats.dropped_stale += 1
            return []
        if ev.leader == self._me:
            if not self._active or verdict is Verdict.NEWER:
                self._active = True
                self._round = 0
                self._previous = None
                self._round_at = now + self._config.gather
                self._repeat.cancel()  # an older epoch's Clearings
        else:
            self._active = False
            self._round_at = None
            self._repeat.cancel()
        return []

    def _on_stepped_down(self, ev: SteppedDown, now: float) -> list[object]:
        self._active = False
        self._round_at = None
        self._repeat.cancel()
        # The node left the broker group: the epoch known came from that group's election,
        # which is gone; the next stack's election starts from 0 (it may win epoch 1 again).
        self._leadership.forget()
        for grant in self._granted.values():
            grant.lead = 0  # so no budget of a later lead (epochs anew) is taken for older
        return []

    def _on_received(self, ev: Received, now: float) -> list[object]:
        msg = ev.message
        if type(msg) is wire.Clearing:
            return self._on_clearing(ev.sender, msg, now)
        if type(msg) is wire.Price:
            return self._on_price(msg, now)
        if type(msg) is not wire.Aggregate:
            self.stats.dropped_unexpected += 1
            return []
        totals = totals_from_message(msg, self._config.grid)
        if totals is None or msg.problem() is not None:
            self.stats.dropped_invalid += 1
            return []
        held = self._clusters.get(msg.cluster)
        if held is not None:
            if epoch_newer(held.epoch, msg.epoch) or (
                msg.epoch == held.epoch and msg.seq < held.seq
            ):
                self.stats.dropped_stale += 1
                return []
            if msg.epoch == held.epoch and msg.seq == held.seq:
                self.stats.dropped_duplicate += 1
                return []
        held_before = (
            held.totals.classes[MAX_PRIORITY][0]
            if held is not None and held.epoch == msg.epoch
            else None
        )
        self._clusters[msg.cluster] = _Latest(
            epoch=msg.epoch, seq=msg.seq, totals=totals, heard_at=now
        )
        self.stats.aggregates_accepted += 1
        grant = self._granted.get(msg.cluster)
        if grant is not None and grant.epoch != msg.epoch:
            grant = None  # this cluster epoch was not cleared yet
        if grant is not None and msg.seq >= grant.confirm:
            grant.unconfirmed = None  # the broker was heard after the cut reached it
        if not self._active or self._round_at is None:
            return []
        if (grant is None and totals.bids) or (
            self._half
            and 2 * sum(self._clusters[c].totals.bids for c in sorted(self._clusters))
            > self._config.provisioned
        ):
            # soon: a cluster epoch not cleared yet, whose servers wait for a price (see
            # "Raises"); or a majority, where the last round cleared within half the supply
            self._round_at = min(self._round_at, now + self._config.gather)
        if grant is not None and grant.budget < totals.required:
            if held_before is not None and totals.classes[MAX_PRIORITY][0] > held_before:
                return self._hold_rose(now)
            return self._raise(grant.budget, totals, now)
        return []

    def _hold_rose(self, now: float) -> list[object]:
        """A cluster's held caps rose beyond its budget: clear now, or ``gather`` after the
        last clearing if that is later (so forged aggregates cannot make every datagram a
        round), as for a supply drop (see "Held caps rise")."""
        out = self._bring_forward(self._cleared_at + self._config.gather, now)
        if out is None:
            return []
        self.stats.rounds_on_hold += 1
        return out

    def _raise(self, given: int, cluster: Totals, now: float) -> list[object]:
        """A cluster's ``sum r`` rose above the budget ``given`` it: if its servers are owed
        more than that (their ``sum r`` while the supply covers every ``r``, else their
        ``sum h`` while it covers every ``h``), clear now, or half a round after the last
        clearing (see "Raises")."""
        cfg = self._config
        totals = combine((self._clusters[c].totals for c in sorted(self._clusters)), cfg.grid)
        if given >= _owed(self._supply, totals, cluster):
            return []
        out = self._bring_forward(max(now, self._cleared_at + cfg.round_interval / 2), now)
        if out is None:
            return []
        self.stats.rounds_on_raise += 1
        return out

    def _bring_forward(self, at: float, now: float) -> list[object] | None:
        """Clear at ``at`` (at once if it has come) when that is before the next round: the
        clearing's actions, or [] with the round moved to ``at``; None if it is not sooner."""
        assert self._round_at is not None
        if at >= self._round_at:
            return None
        if at > now:
            self._round_at = at
            return []
        return self._clear(now)

    def _on_clearing(self, sender: NodeId, msg: wire.Clearing, now: float) -> list[object]:
        """Overheard: another lead's budgets, in force at its clusters (see the reserve)."""
        if msg.problem() is not None:
            self.stats.dropped_invalid += 1
            return []
        if sender == self._me:
            self.stats.dropped_unexpected += 1
            return []
        self.stats.clearings_overheard += 1
        granted = self._granted
        checked = ClearingResult.checked(msg, self._config.grid)  # (one per message)
        lead = msg.epoch
        for e in msg.entries:  # (one per cluster, at every broker: kept lean)
            old = granted.get(e.cluster)
            if old is None or old.epoch != e.epoch:  # a cluster (epoch) new to us
                result = None if e.aggregate == 0 else checked
                grant = _Grant(budget=e.budget, at=now, epoch=e.epoch, result=result)
                self._grant(e.cluster, grant)
                continue
            if e.aggregate == 0:
                continue  # a budget we know of, passed on: it was given no later than ours
            if old.lead and old.lead != lead and epoch_newer(old.lead, lead):
                continue  # an older lead's budget (forwarded late): ours replaced it
            # The same cluster epoch: _grant would put a new grant in its place, and
            # nothing else refers to the one in _granted (_held keeps replaced grants
            # only), so it is updated in place (no object per entry). A learnt grant's
            # lead is 0, and epoch_newer(0, x) is False: asked only for one of ours.
            old.budget = e.budget
            old.at = now
            old.result = checked
            old.lead = 0
        return []

    def _on_price(self, msg: wire.Price, now: float) -> list[object]:
        """Overheard: our cluster's price from its broker, another node. The budget it names
        is in force at our cluster's clients, learnt like an overheard Clearing: if that
        broker crashes as the lead, this node may be the next lead and never have heard
        its Clearings (see "Budgets in force")."""
        cluster = self._cluster
        if not cluster or not msg.budget or msg.flags & wire.Price.FLAG_REPUBLISHED:
            # (A republished price renews no cap, and names a budget of an older epoch.)
            self.stats.dropped_unexpected += 1
            return []
        result = ClearingResult.checked(msg, self._config.grid)
        if result is None:
            self.stats.dropped_invalid += 1
            return []
        old = self._granted.get(cluster)
        if old is not None and (old.lead or epoch_newer(old.epoch, msg.epoch)):
            self.stats.dropped_stale += 1  # our own grant, or a newer broker's
            return []
        self.stats.prices_overheard += 1
        self._grant(cluster, _Grant(budget=msg.budget, at=now, epoch=msg.epoch, result=result))
        return []

    def _grant(self, cluster: int, grant: _Grant) -> None:
        """Record ``grant``; the one it replaces is held if it was of an older cluster epoch."""
        old = self._granted.get(cluster)
        if old is not None and old.epoch != grant.epoch:
            if epoch_newer(old.epoch, grant.epoch):
                return  # an older broker's budget (a stale lead's): the newer one stands
            kept = old.in_force()
            if grant.at - kept.at >= self._config.hold:
                kept = old  # the higher grant's lease has ended: only the last one runs
            if kept.budget:
                self._held.setdefault(cluster, []).append(kept)
        self._granted[cluster] = grant

    def _holding(self, now: float) -> int:
        """Watts of older-epoch budgets whose lease still runs (expired ones are forgotten),
        less what the servers counted again under the new epoch drew of them at least."""
        hold = self._config.hold
        total = 0
        for cluster in sorted(self._held):
            live = [g for g in self._held[cluster] if now - g.at < hold]
            if not live:
                del self._held[cluster]
                continue
            self._held[cluster] = live
            # The servers the new broker counts again held their share of the old
            # budget (the old clearing applied to their bids, less a watt each for
            # rounding), and draw the new one instead once priced anew: credit that.
            latest = self._clusters.get(cluster)
            credit = 0
            if latest is not None and all(g.result is not None for g in live):
                t = latest.totals
                credit = max(
                    0, min(budget(t, g.result) for g in live if g.result is not None) - t.bids
                )
            total += max(0, sum(g.budget for g in live) - credit)
        return total

    def _on_deadline(self, ev: DeadlineReached, now: float) -> list[object]:
        if not self._active:
            return []
        repeat = self._repeat.due(now)
        if self._round_at is None or now < self._round_at:
            return repeat
        cfg = self._config
        nxt = self._round_at + cfg.round_interval
        self._round_at = nxt if nxt > now else now + cfg.round_interval
        return repeat + self._clear(now)

    def _silent(self, now: float) -> tuple[int, bool]:
        """The budgets of clusters budgeted within reserve_timeout but not held now, and
        whether every one of them came from a shortage clearing (each then at most its
        servers' sum r; see "Reserve for silent clusters")."""
        timeout = self._config.reserve_timeout
        reserve = 0
        short = True  # every silent budget is at most its servers' sum r
        for cluster in sorted(self._granted):
            grant = self._granted[cluster]
            if now - grant.at >= timeout:
                del self._granted[cluster]
            elif cluster not in self._clusters:
                reserve += grant.budget
                result = grant.result
                short = short and result is not None and result.regime is Regime.SHORTAGE
        return reserve, short

    @staticmethod
    def _reserve(totals: Totals, silent: int, short: bool, usable: int) -> int:
        """Watts held back for the silent clusters (``silent``, see :meth:`_silent`): at
        most ``usable`` minus the held clusters' sum r, or minus their sum h when every
        such budget came from a shortage clearing (see "Reserve for silent clusters")."""
        line = totals.floor if short else totals.required
        return min(silent, max(0, usable - line))

    def _join_reserve(self, totals: Totals, running: int = 0) -> int:
        """Watts kept for the floors of the servers the aggregates do not count (see
        "Join reserve"): whole, unless that would put the servers that run below what
        they need while the supply covers it (the counted servers' ``r`` and ``running``,
        the silent clusters' budgets the reserve keeps for them); then only what is left
        above that. (In a shortage the counted servers are owed their floors only, so it
        is kept whole while their floors fit.)"""
        cfg = self._config
        want = max(0, cfg.provisioned - totals.bids) * cfg.floor_provision
        supply = self._supply
        need = totals.required + running
        if supply - want >= need:
            return want
        if supply >= need:
            # The silent clusters' caps are in force (on their leases, or re-cleared within
            # their budgets); the joiners' floors only may be: these yield first.
            return supply - need
        if supply - want >= totals.required or supply < totals.required:
            return min(want, max(0, supply - totals.floor))
        return supply - totals.required

    def _clear(self, now: float) -> list[object]:
        """Clear one round now with the aggregates held (expiring the silent ones)."""
        cfg = self._config
        for cluster in sorted(self._clusters):
            if now - self._clusters[cluster].heard_at >= cfg.aggregate_timeout:
                del self._clusters[cluster]
                self.stats.aggregates_expired += 1
        if not self._clusters:
            self.stats.rounds_empty += 1
            return []
        order = sorted(self._clusters)
        totals = combine((self._clusters[c].totals for c in order), cfg.grid)
        half = cfg.provisioned > 0 and 2 * totals.bids == cfg.provisioned
        if (half and self._supply // 2 < totals.required) or (
            not half and 2 * totals.bids <= cfg.provisioned
        ):
            # Islanded: a majority of the servers may run under a twin lead on the other
            # side of a cut, which keeps only our servers' floors for them (its join
            # reserve). Grant nothing; try again soon (see "Islanding"). Exactly half
            # grants within half the supply, and only while that covers its servers' r.
            self.stats.rounds_islanded += 1
            if self._round_at is not None:
                self._round_at = min(self._round_at, now + cfg.gather)
            return []
        # Record this round's epochs first, so a broker change is held in this round.
        before = {c: self._granted.get(c) for c in order}
        for c in order:
            held_c = self._clusters[c]
            self._grant(c, _Grant(budget=0, at=now, epoch=held_c.epoch, lead=self.epoch))
        silent, short = self._silent(now)
        # What of the silent budgets the reserve keeps beside the counted servers' r: all
        # of shortage budgets (their servers' r is demand too), else what the r leaves.
        running = silent if short else min(silent, max(0, self._supply - totals.required))
        joining = self._join_reserve(totals, running)
        # The hold never cuts the counted servers below what they are owed.
        supply = self._supply
        owed = _owed(supply, totals, totals)
        holding = min(self._holding(now), max(0, supply - joining - owed - running))
        usable = max(0, supply - holding - joining)
        reserved = self._reserve(totals, silent, short, usable)
        if reserved:
            self.stats.rounds_with_reserve += 1
        if holding:
            self.stats.rounds_with_hold += 1
        clearable = max(0, usable - reserved)
        if half:
            # Exactly half: the other side counts at most the other half, so it grants
            # nothing or, if it counts exactly half too, at most its half of the supply.
            # Clear within ours (see "Islanding"); an aggregate that makes a majority
            # brings the next round forward (_on_received).
            clearable = min(clearable, self._supply // 2)
            self.stats.rounds_at_half += 1
        self._half = half
        result = clear(totals, clearable, cfg.grid, previous=self._previous, band=cfg.band)
        self._previous = result.regime
        self._result = result
        self._cleared_at = now
        self._round += 1
        self.stats.rounds_cleared += 1
        entries = [  # budgets still in force at clusters we do not clear: passed on
            wire.ClearingEntry(cluster=c, epoch=g.epoch, aggregate=0, budget=g.budget)
            for c, g in sorted(self._granted.items())
            if c not in self._clusters and g.budget
        ]
        allocated = 0
        for c in order:
            held = self._clusters[c]
            share = budget(held.totals, result)
            allocated += share
            grant = _Grant(budget=share, at=now, epoch=held.epoch, result=result, lead=self.epoch)
            prev = before[c]
            if prev is not None and prev.epoch == held.epoch:
                top = prev.in_force()
                if share < top.budget:  # a cut: the higher grant stays until it is confirmed
                    pending = top is not prev  # (an earlier cut, still unconfirmed)
                    grant.unconfirmed = top if pending else attrs.evolve(prev, unconfirmed=None)
                    grant.confirm = prev.confirm if pending else held.seq + 2
            self._granted[c] = grant
            entries.append(
                wire.ClearingEntry(cluster=c, epoch=held.epoch, aggregate=held.seq, budget=share)
            )
        entries.sort(key=lambda e: e.cluster)
        actions: list[object] = []
        for i in range(0, len(entries), MAX_CLEARING_ENTRIES):
            actions.append(
                Multicast(
                    message=wire.Clearing(
                        epoch=self._leadership.epoch,
                        round=self._round,
                        regime=int(result.regime),
                        price=result.price,
                        level=result.level,
                        fill=result.fill,
                        deficit=result.deficit,
                        supply=self._supply,
                        entries=tuple(entries[i : i + MAX_CLEARING_ENTRIES]),
                    )
                )
            )
            self.stats.clearings_sent += 1
        actions.append(
            MarketCleared(
                epoch=self._leadership.epoch,
                round=self._round,
                supply=self._supply,
                regime=result.regime,
                price=result.price,
                deficit=result.deficit,
                clusters=len(order),
                bids=totals.bids,
                allocated=allocated,
                reserved=reserved,
                held=holding,
                join_reserve=joining,
            )
        )
        self._repeat.arm(actions, now)
        return actions
