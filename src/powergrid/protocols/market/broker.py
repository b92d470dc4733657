"""The market broker: collects its cluster's bids, reports them, passes prices on.

Theory of operation
-------------------
**Guarantees.** While this node is its cluster's broker (``LeaderElected`` of
the cluster names it), every ``round_interval`` seconds it sums the bids it
holds into aggregate number ``seq`` (1, 2, ... per broker epoch) and sends it
to the lead broker. For each :class:`~powergrid.wire.Clearing` of the current
lead (epoch fencing: an older lead epoch is refused) that names this cluster's
aggregate of this broker's epoch (and gives that aggregate the budget the
entry names: a twin broker of the same epoch numbers its aggregates alike),
it multicasts a :class:`~powergrid.wire.Price`
to the cluster, stamped with its own cluster epoch and round number and with
the lead's (epoch, round) of that clearing, carrying the lead's share factors
unchanged. If no clearing comes for ``lead_timeout``
seconds, it clears its own cluster each round within its last budget (the
watts the lead gave the cluster last time), so the cluster never draws more
than it was granted (its price names the lead's clearing that granted that
budget); with no budget yet it publishes nothing. Every price names the cluster's
budget and the supply the lead cleared it against (``Price.budget``, ``Price.supply``).

**Assumptions.** The node passes it ``LeaderElected`` for the cluster and for
the broker group, ``ViewChanged`` of the cluster, and the ``Bid`` and
``Clearing`` messages it receives. A bid is accepted only from a member of the
current view (in the incarnation the view names; before any view, from
anyone) and is soft state: dropped ``bid_timeout`` seconds after it was last
heard, or at once when the view names its node in a newer incarnation (the
old life is dead). Sending to itself (a broker that is also the lead) is the
node's job.

**Joins.** A joining node learns its broker (``LeaderElected``) before the
view naming it reaches the broker; its bid then waits (newest per node, at
most 1,024 nodes, for ``bid_timeout``) for the view that names it in that
incarnation, which takes and acknowledges it, instead of for its next refresh.

**A bid counts until it expires.** A client that holds a ``BidAck`` takes its
share of every price whose aggregate is at or after the acknowledged one; it
cannot tell that the broker stopped counting it. So a bid is never dropped
because its node left the view (a partition, a false suspicion: the node may
be alive and still hear the cluster's prices, or hear them again after the
heal, before its next refresh is re-acknowledged). It keeps being counted,
and is refused refreshes while its node is out of the view, until it expires
``bid_timeout`` after it was last heard; the client stops counting on an
acknowledgement before that (``ClientConfig.ack_timeout``). The cost is that
a crashed server's bid holds its share for up to ``bid_timeout``. A node that
left **gracefully** (``MemberLeft`` with reason ``"left"``, after the view
without it) has powered off and never takes a share again: its bid goes at once.

**Caps held for departed members.** A member removed as crashed (or gone
unannounced, or replaced by a newer life) may still draw the cap of the last price
it applied, until that price's lease ends: a dead agent cannot apply a cut, and a
restarted one inherits its old life's lease until its new life applies a price. The
broker keeps the results it priced in the last ``hold_for`` seconds; when such a
member goes, its **held cap** is the most any of them gave its bid, and until
``hold_for`` after the last price it sent, the aggregates count that node as
demanding at least that much at every price (its ladder, ``h``, ``r`` and ``m``
raised to it; a node whose bid expired counts as exactly that). So the cluster's
budget pays for the watts it may still draw, and the others' caps come down to make
room (at once within the budget, by a local price, or by the lead's clearing, which
the aggregate reaches at once): nobody is given watts whose cut nobody confirmed.
(Fuzz seeds 26,300,012 and 26,300,049 with supply steps: a server crashed holding a
surplus cap, the supply fell, and the lead, counting its bid at the new price, gave
the survivors the watts it still drew: 78 W over the supply, strict 2 s after the drop.)

**Held caps come first.** A held cap is aggregated in the highest priority class
(``MAX_PRIORITY``), raised into ``h``, ``r`` and every rung, so every clearing rule gives
it at least itself but one: a floors cut pays that class's floors first and cuts only
the others' (``FLOORS_CUT``), unless the held caps alone exceed the supply
(``FLOORS_CUT + 1``), which gives them ``h * fill``, and a dead server cannot apply
that cut. So such a clearing (or a local one) is priced as a local clearing of the bids
alone against the budget less the held caps (0 W if they take it all): the cluster's
live servers share what the holds leave, never the watts a departed member may still
draw (fresh seed 35,300,221 with supply steps: a server crashed holding 305 W, the
supply fell to 91 W, and the floors cut gave the two live servers 20 W of it). Across
clusters the class does the same at the lead (fresh seed 41,006,724 with supply steps:
one fill for every floor gave a cluster holding a dead server's cap less than that cap,
and the others the rest: 354 W in force over a 258 W supply).

**Cuts are confirmed.** A member that crashed is a member until the failure detector
says so (about a second), and a price that cuts it meanwhile is never applied: it keeps
drawing the old cap, while the others' caps leave it only the new one. So every price
notes each counted member it gives less than the most that member may draw (its
``ceiling``: the cap of its last :class:`~powergrid.wire.Applied`, or more if a price
since gave more), and the member's client confirms such a cut with an ``Applied``
(a datagram per cut, not per price; see the market client). A cut not confirmed within
``confirm_within`` (0.3 s) is held like a departed member's cap, at the most the member
may draw (its ceiling, and no more than any price of the last ``hold_for`` gave it), and
the aggregate goes to the lead at once; the lead clears at once when a cluster's held
caps rise beyond its budget. A late ``Applied`` of that round ends the hold, and so does a
bid that says it (every bid names the last price its client applied). What a
member confirmed also bounds its hold when it departs, instead of the most of the last
``hold_for`` (fresh seed 41,002,802 with supply steps: a server crashed, and before it
was detected the next clearing gave it 13 W of the 35 W it still drew; the others' caps
left no room for those 22 W: 18 W over the supply, strict after the drop's window).

**Driving.** Inputs: ``LeaderElected``, ``ViewChanged``, ``MemberLeft``, ``Received`` and
``DeadlineReached``. Outputs: ``Send(client, BidAck)``, ``Send(lead, Aggregate)``,
``Send(lead, Clearing)`` (forwarded to a new lead) and ``Multicast(Price)``. A new
broker starts empty and sends its first aggregate ``gather`` (0.1 s) after its
election, not a full round: clients re-send their bids when they learn the new
broker, and a message delay or two rebuilds its state (a bid that comes later is
counted the next round). When it learns of a new lead (or lead epoch) it sends it
an aggregate at once, so the new lead's first round, ``gather`` after its
election, has every cluster's.

**Raises at once.** A counted client's new bid whose ``r`` exceeds its cap
under the last price is gathered ``raise_gather`` with the others of that
instant, then the next aggregate goes to the lead at once, and while the
budget covers the cluster's new ``sum r`` the broker prices it itself within
the budget (a local price: nobody falls below ``r``); beyond the budget the
lead clears it (it clears at once for a raise). At most ``_MAX_REPRICES`` a
round; a clearing must name one of the last ``_KEEP_AGGREGATES`` aggregates.

**Budgets in force.** It keeps the datagrams of the followed lead's last round
(every cluster's budget) and sends them to a new lead (another node) when it
learns of it, with its aggregate: a lead that never heard that round (a
restarted node, elected as it joins the broker group) learns the budgets in
force at the clusters it has not heard from yet and reserves them.

**Lead lives.** A lead that restarts and wins its epoch again (nobody remembers a
higher one) numbers its rounds from 1: a clearing of the followed lead from a newer
incarnation than the one heard so far starts the round count anew, and one from an
older incarnation is stale (fresh seed 32,300,167: rounds 1-10 of a restarted lead
were dropped as duplicates of its dead life's round 16, and a cluster went without a
price for the last 10 s of the run).

**Failover continuity.** A broker-capable node's broker overhears its
cluster's ``Price`` while another node is the broker. When it becomes the
broker itself it republishes the last price it heard (within
``republish_within`` of hearing it) at once under its own epoch, as round 1,
flagged ``FLAG_REPUBLISHED``: a price of the new epoch reaches every client a
message delay after the election, not a round later. It counts no bid, so it
changes no cap: a client that
held a counted cap keeps it on its lease (``carried``), and the republished
price never renews a lease (the lead's hold of the old budget ends with it).

**Timeouts.** ``round_interval`` (1 s), ``bid_timeout`` (6 s; make it exceed
the clients' refresh interval, 2 s by default, at least twice), ``lead_timeout``
(3 s, more than ``round_interval``), ``hold_for`` (5.5 s: the clients' ``lease``
plus a margin for the price's delivery), ``confirm_within`` (0.3 s: a price's
delivery, a repeat and the ``Applied`` back, at the latencies the simulator draws).
"""

from __future__ import annotations

import bisect

import attrs

from powergrid import wire
from powergrid._checks import config_problem, instance, real
from powergrid._dispatch import Dispatching
from powergrid.errors import ConfigError
from powergrid.events import (
    DeadlineReached,
    LeaderElected,
    MemberLeft,
    Multicast,
    Received,
    Send,
    ViewChanged,
    member_maps,
)
from powergrid.protocols.leadership import Leadership, Verdict
from powergrid.protocols.market.bids import DEFAULT_GRID, MAX_PRIORITY, Bid, Grid
from powergrid.protocols.market.clearing import (
    FLOORS_CUT,
    ClearingResult,
    Regime,
    Totals,
    aggregate_ladders,
    allocate,
    budget,
    clear,
    totals_to_message,
)
from powergrid.protocols.market.repeat import Repeater, check_round_settings, earliest
from powergrid.types import BROKER_GROUP, Epoch, GroupId, Incarnation, NodeId

__all__ = ["BrokerConfig", "BrokerMachine", "BrokerStats", "CapHeld"]

_MAX_WAITING = 1024
"""Bids of nodes not in the view yet kept for the view that may name them (one each): a
whole cluster's at a cold start, when every server learns its broker a moment before the
first view names it (with 64, a 100-server cluster's 35 others waited for a retry and the
lead's second round: 140 of the 10 x 100 data centre's servers admitted at 1.85 s)."""

_MAX_REPRICES = 3
"""Raises repriced at most this often a round (each sends an aggregate besides the round's)."""

_KEEP_AGGREGATES = 3
"""Aggregates whose totals are kept to check a clearing against (the latest included): a
raise's aggregate goes 20 ms after the raise, so at most one or two can pass the lead's
clearing of an earlier one on the way."""

_EARLIER_BIDS = 8
"""A client's earlier bids kept to tell what a price of an older aggregate gave it (a
departed member's held cap, see "Caps held for departed members")."""

_MAX_KEPT = 64
"""Datagrams of the last lead round kept to pass on to a new lead (54 clusters each)."""


@attrs.frozen(kw_only=True)
class BrokerConfig:
    """Broker timing (seconds), the price grid, the hysteresis band of local clearing.

    Raises :class:`ConfigError` unless all times are > 0, ``bid_timeout`` and
    ``lead_timeout`` exceed ``round_interval``, and ``0 <= band < 1``.
    """

    grid: Grid = attrs.field(default=DEFAULT_GRID, validator=instance(Grid))
    round_interval: float = attrs.field(default=1.0, validator=real)
    bid_timeout: float = attrs.field(default=6.0, validator=real)
    lead_timeout: float = attrs.field(default=3.0, validator=real)
    band: float = attrs.field(default=0.02, validator=real)
    gather: float = attrs.field(default=0.1, validator=real)
    """The first aggregate, this long after the election (s; at most ``round_interval``)."""
    republish_within: float = attrs.field(default=5.0, validator=real)
    """A heard price this recent is republished at once by a new broker (s; 0: never)."""
    repeat_after: float = attrs.field(default=0.01, validator=real)
    """Each price and aggregate is sent once more this much later (s; 0: never; see ``repeat``)."""
    raise_gather: float = attrs.field(default=0.02, validator=real)
    """A raise is repriced this long after it arrives, with the others of that instant (s)."""
    hold_for: float = attrs.field(default=5.5, validator=real)
    """A departed member's cap is held this long after the last price (s; at least the
    clients' ``lease`` plus a price's delivery; see "Caps held for departed members")."""
    confirm_within: float = attrs.field(default=0.3, validator=real)
    """A member whose ``Applied`` of a price that cut it has not come this long after the
    price is held at the most it may draw (s; see "Cuts are confirmed")."""

    def __attrs_post_init__(self) -> None:
        if not self.round_interval > 0:
            raise config_problem(self, f"round_interval must be > 0 s, got {self.round_interval}")
        if not self.bid_timeout > self.round_interval:
            raise config_problem(
                self,
                f"bid_timeout ({self.bid_timeout} s) must exceed round_interval "
                f"({self.round_interval} s), or bids expire between rounds",
            )
        if not self.lead_timeout > self.round_interval:
            raise config_problem(
                self,
                f"lead_timeout ({self.lead_timeout} s) must exceed round_interval "
                f"({self.round_interval} s), or every round looks like a lost lead",
            )
        check_round_settings(self)
        if not self.republish_within >= 0:
            raise config_problem(
                self, f"republish_within must be >= 0 s, got {self.republish_within}"
            )
        if not self.hold_for > 0:
            raise config_problem(self, f"hold_for must be > 0 s, got {self.hold_for}")
        if not 0 < self.confirm_within < self.hold_for:
            raise config_problem(
                self, f"confirm_within must be in (0, hold_for) s, got {self.confirm_within}"
            )
        if not 0 < self.raise_gather < self.round_interval:
            raise config_problem(
                self, f"raise_gather must be in (0, round_interval) s, got {self.raise_gather}"
            )


@attrs.define
class BrokerStats:
    """Counters; every dropped peer message is counted in exactly one ``dropped_*``."""

    bids_accepted: int = 0
    bids_refreshed: int = 0
    bids_expired: int = 0
    bids_left: int = 0
    bids_departed: int = 0
    """Bids dropped at once because their node left gracefully (it powered off)."""
    bids_waited: int = 0
    """Bids of a joining node that came before the view naming it, taken when it did."""
    caps_held: int = 0
    """Departed members (crashed, gone unannounced, replaced) whose cap is held out of the
    budget until its lease ends (see "Caps held for departed members")."""
    cuts_confirmed: int = 0
    """``Applied`` messages that confirmed a cut (see "Cuts are confirmed")."""
    cuts_unconfirmed: int = 0
    """Members held because no ``Applied`` confirmed a price that cut them in time."""
    holds_confirmed: int = 0
    """Such holds ended by a late ``Applied``."""
    aggregates_sent: int = 0
    aggregates_early: int = 0
    """Aggregates sent at a view that admitted joiners whose bids waited for it, besides
    the round's (also in ``aggregates_sent`` when a lead is known)."""
    prices_sent: int = 0
    prices_overheard: int = 0
    prices_republished: int = 0
    clearings_forwarded: int = 0
    """Datagrams of the last lead round sent to a new lead (see "Budgets in force")."""
    local_clearings: int = 0
    shed_for_holds: int = 0
    """Clearings that cut the floors of departed members' held caps (they alone exceeded
    the supply), priced instead within the budget less those caps (see "Held caps come
    first")."""
    raises_repriced: int = 0
    """Raises of a counted client's ``r`` above its cap sent to the lead at once, with a
    price of our own within our budget when it covers the cluster's new ``sum r``."""
    rounds_without_budget: int = 0
    clearings_without_us: int = 0
    clearings_not_ours: int = 0
    """Entries naming our cluster, epoch and an aggregate number whose budget is not what
    our aggregate of that number gets: a twin broker's of the same epoch (refused)."""
    dropped_stale: int = 0
    dropped_early: int = 0
    """Clearings of a newer (or foreign) lead epoch than the election named: not passed
    on, and the epoch is not followed (the lead's Coordinator is on its way)."""
    dropped_duplicate: int = 0
    dropped_foreign: int = 0
    dropped_invalid: int = 0
    dropped_not_member: int = 0
    dropped_unexpected: int = 0


@attrs.frozen(kw_only=True)
class CapHeld:
    """Notification: the broker of ``group`` holds ``watts`` out of its budget for
    ``node``, a member gone without powering off, until ``until`` (see "Caps held for
    departed members"); ``watts`` 0: the hold ended before that (the node is back in
    the view, or a price counts its new life)."""

    group: GroupId
    node: NodeId
    watts: int
    until: float


@attrs.frozen
class _Hold:
    """A departed member's cap, counted until ``until`` (see "Caps held ..."), or a
    member's whose cut of price round ``cut`` nobody confirmed (see "Cuts are confirmed")."""

    cap: int
    until: float
    incarnation: Incarnation  # the life that holds it
    cut: int = 0  # the price round whose Applied ends the hold (0: a departed member's)


@attrs.define
class _Cap:
    """What a member life may draw of our prices, as far as its ``Applied`` tell."""

    incarnation: Incarnation
    ceiling: int  # its last confirmed cap, or more if a price since gave it more
    cut: int = 0  # the first price round that cut it below ``ceiling``, unconfirmed (0: none)
    cut_at: float = 0.0  # when that price went


@attrs.define
class _Held:
    incarnation: Incarnation
    seq: int
    bid: Bid
    ladder: tuple[int, ...]
    first_aggregate: int
    heard_at: float
    earlier: tuple[tuple[int, Bid], ...] = ()
    """This life's bids before, as (first aggregate, bid), oldest first (a few)."""

    def counted_at(self, aggregate: int) -> Bid | None:
        """The bid of this life that aggregate ``aggregate`` counted, if known."""
        if self.first_aggregate <= aggregate:
            return self.bid
        for first, bid in reversed(self.earlier):
            if first <= aggregate:
                return bid
        return None


class BrokerMachine(Dispatching):
    """The market broker of cluster ``cluster`` on node ``me`` (see the module docstring)."""

    __slots__ = (
        "_active",
        "_agg_repeat",
        "_agg_seq",
        "_bids",
        "_brokers",
        "_budget",
        "_budget_from",
        "_budget_supply",
        "_caps",
        "_cluster",
        "_config",
        "_confirm_at",
        "_heard",
        "_holds",
        "_kept",
        "_lead_heard_at",
        "_lead_inc",
        "_lead_round",
        "_leadership",
        "_local",
        "_local_regime",
        "_me",
        "_members",
        "_price_round",
        "_priced",
        "_raised",
        "_raw",
        "_recent",
        "_repeat",
        "_reprice_at",
        "_result",
        "_round_at",
        "_totals",
        "_waiting",
        "stats",
    )

    _EVENTS = {
        LeaderElected: "_on_leader_elected",
        ViewChanged: "_on_view_changed",
        MemberLeft: "_on_member_left",
        Received: "_on_received",
        DeadlineReached: "_on_deadline",
    }

    def __init__(self, me: NodeId, cluster: GroupId, config: BrokerConfig | None = None) -> None:
        if cluster == BROKER_GROUP:
            raise ConfigError("a broker serves a cluster (group 1 and up), not the broker group")
        self._me = me
        self._cluster = cluster
        self._config = config if config is not None else BrokerConfig()
        self.stats = BrokerStats()
        self._active = False
        # the cluster's leader and epoch (the highest seen; ours while active)
        self._leadership = Leadership()
        self._members: dict[int, int] | None = None  # node -> incarnation, of the view
        self._bids: dict[NodeId, _Held] = {}
        # bids of nodes not in the view yet (a join: the bid outruns the view), newest each
        self._waiting: dict[NodeId, tuple[Received, wire.Bid, float]] = {}
        self._agg_seq = 0
        self._totals: Totals | None = None
        # the aggregates before the last, newest first (numbers - 1, - 2, ...; a raise sends
        # one besides the round's, so a clearing may name one of those)
        self._recent: list[Totals] = []
        # the same aggregates (the latest first) without the held caps, the bids alone: None
        # where no cap was held (the aggregate is the bids alone), so no copy is kept
        self._raw: list[Totals | None] = []
        self._brokers = Leadership()  # the broker group's: the lead broker and its epoch
        self._lead_round = 0
        self._lead_inc = 0  # the incarnation of the lead whose rounds _lead_round counts
        self._lead_heard_at = 0.0
        self._budget: int | None = None
        self._budget_from = (0, 0)  # the lead's (epoch, round) that granted _budget
        self._budget_supply = 0  # the supply that clearing was made against (0: not known)
        self._round_at: float | None = None
        self._repeat = Repeater(self._config.repeat_after)  # each price, sent twice
        self._agg_repeat = Repeater(self._config.repeat_after)  # each aggregate, likewise
        self._price_round = 0
        self._local_regime: Regime | None = None
        self._local = False
        self._result: ClearingResult | None = None  # the last clearing priced
        self._raised = 0  # raises repriced this round (at most _MAX_REPRICES)
        self._reprice_at: float | None = None  # when the raises gathered are repriced
        self._heard: tuple[wire.Price, float] | None = None  # last Price of our cluster, when
        self._kept: list[wire.Clearing] = []  # the last lead round's datagrams, for a new lead
        # (when, result, aggregate, round) of the prices sent within hold_for, oldest first
        self._priced: list[tuple[float, ClearingResult, int, int]] = []
        self._holds: dict[NodeId, _Hold] = {}  # departed members' caps in force
        self._caps: dict[NodeId, _Cap] = {}  # what each member may draw (see "Cuts ...")
        self._confirm_at: float | None = None  # when the first unconfirmed cut is due

    # ------------------------------------------------------------ read-only state

    @property
    def active(self) -> bool:
        """Whether this node is its cluster's broker now."""
        return self._active

    @property
    def epoch(self) -> Epoch:
        """This broker's cluster epoch (the highest seen while inactive)."""
        return self._leadership.epoch

    @property
    def lead(self) -> NodeId:
        """The lead broker followed (0: none known)."""
        return self._brokers.leader or NodeId(0)

    @property
    def budget(self) -> int | None:
        """The watts the lead last gave this cluster (None: never)."""
        return self._budget

    @property
    def bidders(self) -> tuple[NodeId, ...]:
        """The nodes whose bids are held, sorted."""
        return tuple(sorted(self._bids))

    @property
    def aggregate_seq(self) -> int:
        """The number of the last aggregate made."""
        return self._agg_seq

    @property
    def totals(self) -> Totals | None:
        """The last aggregate made."""
        return self._totals

    @property
    def clearing_locally(self) -> bool:
        """Whether the last round found the lead lost and cleared the cluster alone."""
        return self._active and self._local

    # ------------------------------------------------------------------ driving

    def next_deadline(self) -> float | None:
        """The next round or price repeat, while active."""
        if not self._active:
            return None
        return earliest(
            self._round_at,
            self._repeat.at,
            self._agg_repeat.at,
            self._reprice_at,
            self._confirm_at,
        )

    # ---------------------------------------------------------------- handlers

    def _on_leader_elected(self, ev: LeaderElected, now: float) -> list[object]:
        if ev.group == BROKER_GROUP:
            verdict = self._brokers.obey(ev.leader, ev.epoch)
            if verdict is Verdict.STALE:
                self.stats.dropped_stale += 1
            elif verdict.follow:
                self._lead_round = 0  # a new lead (or epoch) numbers its rounds anew
                self._lead_inc = 0
                if self._active:
                    out = self._forward()
                    if self._totals is not None:
                        out += self._aggregate(now)  # its first round has ours
                    return out
            return []
        if ev.group != self._cluster:
            return []
        verdict = self._leadership.obey(ev.leader, ev.epoch)
        if verdict is Verdict.STALE:
            self.stats.dropped_stale += 1
            return []
        if ev.leader == self._me:
            if not self._active or verdict is Verdict.NEWER:
                self._activate(now)
                out = self._republish(now)
                self._repeat.arm(out, now)
                return out
        else:
            self._deactivate()
        return []

    def _on_view_changed(self, ev: ViewChanged, now: float) -> list[object]:
        view = ev.view
        if view.group != self._cluster:
            return []
        self._members = member_maps(view.members)[1]  # shared: read only
        out: list[object] = []
        for node in sorted(
            n for n, h in self._holds.items() if not h.cut and self._members.get(n) == h.incarnation
        ):
            out.append(self._release(node, now))  # back in the view: it hears our prices
        for node in sorted(self._bids):
            # Only a newer life in the view proves the bidder dead; a node out of
            # the view may be alive and still count on its bid: it stays until it
            # expires (see "A bid counts until it expires").
            incarnation = self._members.get(node)
            if incarnation is not None and incarnation != self._bids[node].incarnation:
                out += self._hold(node, self._bids.pop(node), now)  # a restart inherits it
                self.stats.bids_left += 1
        accepted = self.stats.bids_accepted
        for node in sorted(self._waiting):  # joiners whose bid came before this view
            rx, bid, heard = self._waiting[node]
            if now - heard >= self._config.bid_timeout:
                del self._waiting[node]
            elif self._members.get(node) == rx.incarnation:
                del self._waiting[node]
                self.stats.bids_waited += 1
                out += self._on_bid(rx, bid, heard)
        if self.stats.bids_accepted > accepted and self._totals is not None:
            # Joiners counted now go to the lead at once, not at this broker's next round:
            # the lead's next clearing counts them (admission within a round of the view).
            self.stats.aggregates_early += 1
            out += self._aggregate(now)
        return out

    def _on_member_left(self, ev: MemberLeft, now: float) -> list[object]:
        node = ev.node
        held = self._bids.get(node)
        if (
            ev.group != self._cluster
            or held is None
            or (self._members is not None and node in self._members)
        ):
            return []
        if ev.reason == "left":
            # A graceful leave: the node powered off, so it draws nothing and will never
            # take a share of a price again (a new life bids anew): its bid goes at once
            # instead of holding its share until it expires (see "A bid counts until it
            # expires", which is about nodes that may still be alive).
            del self._bids[node]
            self.stats.bids_departed += 1
            return []
        return self._hold(node, held, now)

    def _on_received(self, ev: Received, now: float) -> list[object]:
        msg = ev.message
        if type(msg) is wire.Bid:
            return self._on_bid(ev, msg, now)
        if type(msg) is wire.Clearing:
            return self._on_clearing(ev.sender, msg, now, ev.incarnation)
        if type(msg) is wire.Price:
            return self._on_price(ev.sender, msg, now)
        if type(msg) is wire.Applied:
            return self._on_applied(ev, msg, now)
        self.stats.dropped_unexpected += 1
        return []

    def _on_applied(self, ev: Received, msg: wire.Applied, now: float) -> list[object]:
        """A member applied price round ``msg.round``: its cap is ``msg.cap`` (see "Cuts are
        confirmed")."""
        if not self._active:
            self.stats.dropped_unexpected += 1
            return []
        return self._confirmed(ev, msg.epoch, msg.round, msg.cap, now)

    def _confirmed(
        self, ev: Received, epoch: int, round_: int, watts: int, now: float
    ) -> list[object]:
        """``ev``'s sender applied our price round ``round_`` of ``epoch`` and draws at most
        ``watts`` from it on (an ``Applied``, or a bid's ``applied_*``; see "Cuts are
        confirmed")."""
        if epoch != self._leadership.epoch:
            self.stats.dropped_stale += 1
            return []
        node = ev.sender
        cap = self._caps.get(node)
        if cap is None or cap.incarnation != ev.incarnation:
            self.stats.dropped_unexpected += 1
            return []
        if round_ == 0 or round_ > self._price_round:
            self.stats.dropped_invalid += 1
            return []
        if cap.cut and round_ >= cap.cut:
            cap.cut = 0
            self.stats.cuts_confirmed += 1
        held = self._bids.get(node)
        ceiling = watts
        grid = self._config.grid
        for _, result, aggregate, rnd in self._priced:
            bid = None if held is None or rnd <= round_ else held.counted_at(aggregate)
            if bid is not None:  # a price sent since, that it may apply next
                ceiling = max(ceiling, allocate(bid, result, grid))
        cap.ceiling = ceiling
        hold = self._holds.get(node)
        if hold is not None and hold.cut and round_ >= hold.cut:
            self.stats.holds_confirmed += 1
            return [self._release(node, now)]
        return []

    def _on_price(self, sender: NodeId, msg: wire.Price, now: float) -> list[object]:
        """Overheard: our cluster's broker's price, kept to republish (Failover continuity)."""
        leadership = self._leadership
        if self._active or sender != leadership.leader or msg.epoch != leadership.epoch:
            self.stats.dropped_unexpected += 1
            return []
        self._heard = (msg, now)
        self.stats.prices_overheard += 1
        return []

    def _on_bid(self, ev: Received, msg: wire.Bid, now: float) -> list[object]:
        if not self._active:
            self.stats.dropped_unexpected += 1
            return []
        node = ev.sender
        if self._members is not None and self._members.get(node) != ev.incarnation:
            # A joining node learns its broker before the view that names it reaches the
            # broker: its bid waits for that view (bounded) instead of its next refresh.
            if node in self._waiting or len(self._waiting) < _MAX_WAITING:
                self._waiting[node] = (ev, msg, now)
            self.stats.dropped_not_member += 1
            return []
        held = self._bids.get(node)
        if held is not None and held.incarnation == ev.incarnation:
            if msg.seq < held.seq:
                self.stats.dropped_stale += 1
                return []
            if msg.seq == held.seq:
                held.heard_at = now
                self.stats.bids_refreshed += 1
                return [self._ack(node, held), *self._reconfirmed(ev, msg, now)]
        if msg.seq == 0 or msg.problem() is not None:
            self.stats.dropped_invalid += 1
            return []
        try:
            bid = Bid.from_message(msg)
        except ConfigError:
            self.stats.dropped_invalid += 1
            return []
        old = held if held is not None and held.incarnation == ev.incarnation else None
        held = _Held(
            incarnation=ev.incarnation,
            seq=msg.seq,
            bid=bid,
            ladder=bid.ladder(self._config.grid),
            first_aggregate=self._agg_seq + 1,
            heard_at=now,
            earlier=()
            if old is None
            else (*old.earlier, (old.first_aggregate, old.bid))[-_EARLIER_BIDS:],
        )
        self._bids[node] = held
        self.stats.bids_accepted += 1
        out: list[object] = [self._ack(node, held), *self._reconfirmed(ev, msg, now)]
        if old is not None and self._raise_due(old.bid, bid):
            self._reprice_soon(now)
        return out

    def _reconfirmed(self, ev: Received, msg: wire.Bid, now: float) -> list[object]:
        """A bid says again what its client applied last, if anything of ours: the
        confirmation that a lost ``Applied`` did not bring (see "Cuts are confirmed")."""
        if not msg.applied_round or msg.applied_epoch != self._leadership.epoch:
            return []
        cap = self._caps.get(ev.sender)
        if cap is None or cap.incarnation != ev.incarnation:
            return []
        return self._confirmed(ev, msg.applied_epoch, msg.applied_round, msg.applied_cap, now)

    def _on_clearing(
        self, sender: NodeId, msg: wire.Clearing, now: float, incarnation: int = 0
    ) -> list[object]:
        if not self._active:
            self.stats.dropped_unexpected += 1
            return []
        brokers = self._brokers
        if msg.epoch != brokers.epoch:
            # The lead epoch is the election's (LeaderElected of the broker group): a
            # clearing never moves it, so a forged one cannot fence out the real lead.
            if brokers.stale(msg.epoch):
                self.stats.dropped_stale += 1
            else:
                self.stats.dropped_early += 1
            return []
        if sender != brokers.leader:
            self.stats.dropped_foreign += 1
            return []
        if incarnation != self._lead_inc:
            if incarnation < self._lead_inc:
                self.stats.dropped_stale += 1  # the dead life's, late
                return []
            # A restarted lead that won its epoch again numbers its rounds from 1.
            self._lead_inc = incarnation
            self._lead_round = 0
        self._keep(msg)
        self._lead_heard_at = now
        self._local = False
        entries = msg.entries
        mine: int = self._cluster
        i = bisect.bisect_left(entries, mine, key=lambda e: e.cluster)
        if i == len(entries) or entries[i].cluster != self._cluster:
            self.stats.clearings_without_us += 1
            return []
        entry = entries[i]
        if msg.round <= self._lead_round:
            self.stats.dropped_duplicate += 1
            return []
        if entry.epoch != self._leadership.epoch or not 0 < entry.aggregate <= self._agg_seq:
            self.stats.clearings_without_us += 1
            return []
        result = ClearingResult.checked(msg, self._config.grid)
        if result is None:
            self.stats.dropped_invalid += 1
            return []
        kept = (self._totals, *self._recent)  # numbers _agg_seq, _agg_seq - 1, ...
        back = self._agg_seq - entry.aggregate  # >= 0, checked above
        ours = kept[back] if back < len(kept) else None
        if ours is None or budget(ours, result) != entry.budget:
            # A twin broker of our epoch (two sides of a cut) numbers its aggregates
            # like us; the lead cleared its aggregate, not ours, and its price would give
            # our bids a share nobody budgeted (fresh seed 19,802,049: 304 W of 130 W).
            self.stats.clearings_not_ours += 1
            return []
        self._lead_round = msg.round
        self._budget = entry.budget
        self._budget_from = (msg.epoch, msg.round)
        self._budget_supply = msg.supply
        self._local_regime = result.regime
        shed = self._holds_first(result, self._raw[back] or ours, entry.budget, now)
        if shed is not None:
            self.stats.shed_for_holds += 1
        out: list[object] = [
            self._price(shed or result, entry.aggregate, now, local=shed is not None)
        ]
        self._repeat.arm(out, now)
        return out + self._release_replaced(entry.aggregate, now)

    def _on_deadline(self, ev: DeadlineReached, now: float) -> list[object]:
        if not self._active:
            return []
        repeat = self._repeat.due(now) + self._agg_repeat.due(now)
        if self._confirm_at is not None and now >= self._confirm_at:
            repeat += self._hold_unconfirmed(now)
        if self._round_at is not None and now >= self._round_at:
            return repeat + self._round(now)
        if self._reprice_at is not None and now >= self._reprice_at:
            return repeat + self._reprice(now)
        return repeat

    def _round(self, now: float) -> list[object]:
        """One broker round: expire bids, aggregate, and re-clear alone if the lead is lost."""
        cfg = self._config
        assert self._round_at is not None
        nxt = self._round_at + cfg.round_interval
        self._round_at = nxt if nxt > now else now + cfg.round_interval
        self._raised = 0
        self._reprice_at = None  # this round's aggregate carries the raises gathered
        for node in sorted(self._bids):
            if now - self._bids[node].heard_at >= cfg.bid_timeout:
                del self._bids[node]
                self.stats.bids_expired += 1
        for node in [n for n, hold in self._holds.items() if hold.until <= now]:
            del self._holds[node]
        actions = self._aggregate(now)
        self._local = now - self._lead_heard_at >= cfg.lead_timeout
        if self._local:
            if self._budget is None:
                self.stats.rounds_without_budget += 1
            else:
                self.stats.local_clearings += 1
                self._clear_locally(actions, now)
        return actions

    # ----------------------------------------------------------------- helpers

    def _raise_due(self, old: Bid, new: Bid) -> bool:
        """Whether a counted client's new bid asks more than its cap under our last price
        (see "Raises at once"): at most ``_MAX_REPRICES`` a round, while a lead is known."""
        return (
            self._raised < _MAX_REPRICES
            and self._result is not None
            and self._budget is not None
            and bool(self._brokers.leader)
            and new.required > allocate(old, self._result, self._config.grid)
        )

    def _reprice(self, now: float) -> list[object]:
        """A raise: the next aggregate goes to the lead now, and when our budget covers the
        cluster's new ``sum r`` we price it ourselves within the budget at once."""
        self._raised += 1
        self._reprice_at = None
        self.stats.raises_repriced += 1
        actions = self._aggregate(now)
        assert self._totals is not None and self._budget is not None
        if self._totals.required <= self._budget:  # else the lead clears it: nobody below r
            self._clear_locally(actions, now)
        return actions

    def _clear_locally(self, actions: list[object], now: float) -> None:
        """Clear our last aggregate within our budget and add its local price to ``actions``
        (their repeat armed): the lead lost, or a raise our budget covers."""
        cfg = self._config
        assert self._totals is not None and self._budget is not None
        result = clear(
            self._totals, self._budget, cfg.grid, previous=self._local_regime, band=cfg.band
        )
        self._local_regime = result.regime
        shed = self._holds_first(result, self._raw[0] or self._totals, self._budget, now)
        if shed is not None:
            self.stats.shed_for_holds += 1
            result = shed
        price = self._price(result, self._agg_seq, now, local=True)
        self._repeat.arm([price], now)
        actions += [price, *self._release_replaced(self._agg_seq, now)]

    def _aggregate(self, now: float) -> list[object]:
        """Sum the bids held into the next aggregate; send it to the lead, if one is known."""
        self._agg_seq += 1
        grid = self._config.grid
        raw = aggregate_ladders(
            ((self._bids[n].bid, self._bids[n].ladder) for n in sorted(self._bids)), grid
        )
        totals = aggregate_ladders(self._with_holds(now), grid) if self._holds else raw
        if self._totals is not None:
            self._recent = [self._totals, *self._recent[: _KEEP_AGGREGATES - 2]]
        self._raw = [None if totals is raw else raw, *self._raw[: _KEEP_AGGREGATES - 1]]
        self._totals = totals
        lead = self._brokers.leader
        if not lead:
            return []
        msg = totals_to_message(
            totals, cluster=self._cluster, epoch=self._leadership.epoch, seq=self._agg_seq
        )
        self.stats.aggregates_sent += 1
        out: list[object] = [Send(to=lead, message=msg)]
        self._agg_repeat.arm(out, now, Send)
        return out

    def _hold(self, node: NodeId, held: _Held, now: float) -> list[object]:
        """``node``'s life of ``held`` went without powering off: hold the most our prices
        of the last ``hold_for`` gave it, until ``hold_for`` after the last of them (it
        applied none later), and have the lead hear of it at once (a raise's path)."""
        old = self._holds.get(node)
        if old is not None and old.until > now:
            if old.cut:  # held for a cut it never confirmed: now for its departure
                self._holds[node] = attrs.evolve(old, cut=0)
            return []  # held since an earlier departure: it applied none of our prices since
        cap = self._most(node, held, now)
        confirm = self._caps.get(node)
        if confirm is not None:
            confirm.cut = 0  # the hold covers a cut it did not confirm
        if not cap:
            return []  # it may draw nothing of ours
        self.stats.caps_held += 1
        return [self._start_hold(node, cap, held.incarnation, now)]

    def _start_hold(
        self, node: NodeId, cap: int, incarnation: Incarnation, now: float, cut: int = 0
    ) -> CapHeld:
        """Hold ``cap`` for ``node`` until ``hold_for`` after our last price (it applied none
        later), and have the lead hear of it at once (a raise's path)."""
        until = self._priced[-1][0] + self._config.hold_for
        self._holds[node] = _Hold(cap=cap, until=until, incarnation=incarnation, cut=cut)
        self._reprice_soon(now)
        return CapHeld(group=self._cluster, node=node, watts=cap, until=until)

    def _most(self, node: NodeId, held: _Held, now: float) -> int:
        """The most ``node``'s life of ``held`` may draw of our prices: the most any of the
        last ``hold_for`` gave it, and no more than its confirmed cap and what the prices
        since gave it (see "Cuts are confirmed")."""
        horizon = now - self._config.hold_for
        grid = self._config.grid
        most = 0
        for t, result, aggregate, _ in self._priced:
            bid = held.counted_at(aggregate)
            if t > horizon and bid is not None:  # else it took 0 W of that price
                most = max(most, allocate(bid, result, grid))
        cap = self._caps.get(node)
        if cap is not None and cap.incarnation == held.incarnation:
            most = min(most, cap.ceiling)
        return most

    def _expect(self, result: ClearingResult, aggregate: int, now: float) -> None:
        """Price round ``_price_round`` (of ``result`` for ``aggregate``) went: note each
        member it cut below what it may draw, whose ``Applied`` must come within
        ``confirm_within`` (see "Cuts are confirmed")."""
        grid = self._config.grid
        caps = self._caps
        rnd = self._price_round
        for node in sorted(self._bids):
            held = self._bids[node]
            bid = held.counted_at(aggregate)
            if bid is None:
                continue  # it takes nothing of this price: nothing to confirm
            watts = allocate(bid, result, grid)
            cap = caps.get(node)
            if cap is None or cap.incarnation != held.incarnation:
                caps[node] = _Cap(incarnation=held.incarnation, ceiling=watts)
            elif watts >= cap.ceiling:
                cap.ceiling = watts
                cap.cut = 0  # whatever it applied, it may draw at most this now
            elif not cap.cut:
                cap.cut = rnd
                cap.cut_at = now
                if self._confirm_at is None:
                    self._confirm_at = now + self._config.confirm_within
        if len(caps) > len(self._bids):
            for node in [n for n in caps if n not in self._bids and n not in self._holds]:
                del caps[node]

    def _hold_unconfirmed(self, now: float) -> list[object]:
        """Hold the members whose cut was not confirmed within ``confirm_within``, at the
        most they may draw (see "Cuts are confirmed"); set the next such deadline."""
        out: list[object] = []
        within = self._config.confirm_within
        first: float | None = None
        for node in sorted(self._caps):
            cap = self._caps[node]
            if not cap.cut:
                continue
            if cap.cut_at + within > now:  # (the sum the deadline was set to: no rounding)
                first = cap.cut_at if first is None else min(first, cap.cut_at)
                continue
            held = self._bids.get(node)
            rnd, cap.cut = cap.cut, 0
            if held is None or held.incarnation != cap.incarnation or node in self._holds:
                continue
            watts = self._most(node, held, now)
            if watts:
                self.stats.cuts_unconfirmed += 1
                out.append(self._start_hold(node, watts, held.incarnation, now, cut=rnd))
        self._confirm_at = None if first is None else first + within
        return out

    def _release(self, node: NodeId, now: float) -> CapHeld:
        """End ``node``'s hold before its time; the watts go back to the others at once
        (a raise's path: the aggregate to the lead, a local price within the budget)."""
        del self._holds[node]
        self._reprice_soon(now)
        return CapHeld(group=self._cluster, node=node, watts=0, until=now)

    def _holds_first(
        self, result: ClearingResult, raw: Totals, budget_w: int, now: float
    ) -> ClearingResult | None:
        """The result to price instead of ``result`` when it cuts floors while we hold
        departed members' caps (see "Held caps come first"), else None: ``raw`` (the bids
        of the aggregate priced, without the holds) cleared against ``budget_w`` less the
        held caps. Every other rule gives a held cap, raised into ``h``, ``r`` and every
        rung, at least itself; a floors cut gives it ``h * fill``, but a dead server cannot
        apply a cut."""
        if result.regime is not Regime.SHORTAGE or result.level != FLOORS_CUT + 1:
            return None
        held = sum(h.cap for h in self._holds.values() if h.until > now)
        if not held:
            return None
        return clear(raw, max(0, budget_w - held), self._config.grid)

    def _reprice_soon(self, now: float) -> None:
        """Reprice ``raise_gather`` from now (with what else comes meanwhile), unless one
        is pending or this round repriced enough (the path of a raise and of a hold)."""
        if self._active and self._reprice_at is None and self._raised < _MAX_REPRICES:
            self._reprice_at = now + self._config.raise_gather

    def _release_replaced(self, aggregate: int, now: float) -> list[object]:
        """End the holds of nodes whose newer life aggregate ``aggregate`` counts: it
        applies the price just sent in place of its old life's cap."""
        out: list[object] = []
        for node in sorted(self._holds):
            held = self._bids.get(node)
            if (
                held is not None
                and held.incarnation != self._holds[node].incarnation
                and held.first_aggregate <= aggregate
            ):
                out.append(self._release(node, now))
        return out

    def _with_holds(self, now: float) -> list[tuple[Bid, tuple[int, ...]]]:
        """Each bid with its ladder, a held cap raising its node's (see "Caps held")."""
        items: list[tuple[Bid, tuple[int, ...]]] = []
        holds = self._holds
        for node in sorted(self._bids.keys() | holds.keys()):
            held = self._bids.get(node)
            hold = holds.get(node)
            if hold is None or hold.until <= now:
                if held is not None:
                    items.append((held.bid, held.ladder))
                continue
            cap = hold.cap
            if held is None:
                bid = Bid(floor=cap, required=cap, maximum=cap, priority=MAX_PRIORITY)
                items.append((bid, bid.ladder(self._config.grid)))
                continue
            b = held.bid
            items.append(
                (
                    Bid(
                        floor=max(b.floor, cap),
                        required=max(b.required, cap),
                        maximum=max(b.maximum, cap),
                        priority=MAX_PRIORITY,
                    ),
                    tuple(max(w, cap) for w in held.ladder),
                )
            )
        return items

    def _keep(self, msg: wire.Clearing) -> None:
        """Keep the datagrams of the followed lead's last round (``msg`` is of its epoch)."""
        kept = self._kept
        if kept and kept[0].epoch == msg.epoch and kept[0].round > msg.round:
            return  # an older round's (a late repeat)
        if not kept or kept[0].epoch != msg.epoch or kept[0].round != msg.round:
            self._kept = [msg]
        elif msg not in kept and len(kept) < _MAX_KEPT:
            kept.append(msg)

    def _forward(self) -> list[object]:
        """A new lead was elected: send it the last round of the lead before (budgets in
        force that the new lead may not have heard; see "Budgets in force")."""
        lead = self._brokers.leader
        if not lead or lead == self._me or not self._kept:
            return []
        if self._kept[0].epoch == self._brokers.epoch:
            return []  # the new lead's own round
        self.stats.clearings_forwarded += len(self._kept)
        return [Send(to=lead, message=msg) for msg in self._kept]

    def _republish(self, now: float) -> list[object]:
        """A new broker's first price: the last one heard, under our epoch (counting no bid)."""
        heard, self._heard = self._heard, None
        if heard is None or now - heard[1] >= self._config.republish_within:
            return []
        msg, _ = heard
        self._price_round += 1
        self.stats.prices_sent += 1
        self.stats.prices_republished += 1
        return [
            Multicast(
                message=wire.Price(
                    epoch=self._leadership.epoch,
                    round=self._price_round,
                    regime=msg.regime,
                    flags=msg.flags | wire.Price.FLAG_REPUBLISHED,
                    price=msg.price,
                    level=msg.level,
                    fill=msg.fill,
                    deficit=msg.deficit,
                    aggregate=1,
                    lead_epoch=msg.lead_epoch,
                    lead_round=msg.lead_round,
                    budget=msg.budget,
                    supply=msg.supply,
                )
            )
        ]

    def _activate(self, now: float) -> None:
        self._active = True
        self._bids.clear()
        self._waiting.clear()
        self._holds.clear()
        self._priced.clear()
        self._caps.clear()
        self._confirm_at = None
        self._agg_seq = 0
        self._totals = None
        self._recent = []
        self._raw = []
        self._price_round = 0
        self._lead_round = 0
        self._lead_inc = 0
        self._lead_heard_at = now
        self._budget = None
        self._budget_from = (0, 0)
        self._budget_supply = 0
        self._local_regime = None
        self._local = False
        self._result = None
        self._raised = 0
        self._reprice_at = None
        self._round_at = now + self._config.gather

    def _deactivate(self) -> None:
        self._active = False
        self._kept = []
        self._bids.clear()
        self._waiting.clear()
        self._holds.clear()
        self._priced.clear()
        self._caps.clear()
        self._confirm_at = None
        self._totals = None
        self._recent = []
        self._raw = []
        self._round_at = None
        self._reprice_at = None
        self._repeat.cancel()
        self._agg_repeat.cancel()
        # No longer the broker, the node leaves the broker group: the lead epoch known
        # came from that group's election, which is gone. Its next stack starts from 0.
        self._brokers.forget()
        self._lead_round = 0
        self._lead_inc = 0

    def _ack(self, node: NodeId, held: _Held) -> Send:
        return Send(
            to=node,
            message=wire.BidAck(
                epoch=self._leadership.epoch, seq=held.seq, aggregate=held.first_aggregate
            ),
        )

    def _price(
        self, result: ClearingResult, aggregate: int, now: float, *, local: bool
    ) -> Multicast:
        self._result = result
        priced = self._priced
        horizon = now - self._config.hold_for
        while priced and priced[0][0] <= horizon:
            del priced[0]
        self._price_round += 1
        priced.append((now, result, aggregate, self._price_round))
        self._expect(result, aggregate, now)
        self.stats.prices_sent += 1
        return Multicast(
            message=wire.Price(
                epoch=self._leadership.epoch,
                round=self._price_round,
                regime=int(result.regime),
                flags=wire.Price.FLAG_LOCAL if local else 0,
                price=result.price,
                level=result.level,
                fill=result.fill,
                deficit=result.deficit,
                aggregate=aggregate,
                lead_epoch=self._budget_from[0],
                lead_round=self._budget_from[1],
                budget=self._budget or 0,
                supply=self._budget_supply,
            )
        )
