"""The market client: one server's side of the power market.

Theory of operation
-------------------
**Guarantees.** The client reports its latest :class:`~powergrid.protocols.market.bids.Bid`
to its cluster's broker, and turns each fresh price into its allocation (watts,
an int) with :func:`~powergrid.protocols.market.clearing.allocate`, applied to the bid the
price actually cleared, so the cluster's allocations never exceed what the
clearing paid for. It applies only prices of the cluster epoch it follows, the
one the election named (fencing: an older one is stale; a newer one is early,
and never moves the epoch, so a forged price cannot fence out the real
broker), and never the same round twice. It tells the app whether
the price included its latest bid. Without fresh prices it keeps its last
allocation for ``lease`` seconds, then falls back to ``min(allocation, r)`` and
never raises it again until a fresh price arrives.

**Assumptions.** The node passes it ``LeaderElected`` of its cluster (who the
broker is, in which epoch) and the market messages it receives (:class:`~powergrid.wire.Price`
multicast by the broker, :class:`~powergrid.wire.BidAck` unicast by it). Bids
travel as plain datagrams (:class:`~powergrid.events.Send`) and the broker's
``BidAck`` is their one acknowledgement, end to end: a bid not acknowledged
``bid_retry`` after it was sent goes again, the wait doubling up to
``refresh_interval``, until an ack of it arrives or a newer bid replaces it. The
broker keeps the highest ``seq`` of each client life, so a late or reordered older
bid changes nothing; a broker that a bid never reaches is replaced by the election.
(Before, bids went by reliable unicast and were acknowledged twice, a unicast
``UAck`` and the ``BidAck``: 1,516 messages per round in the 10 x 100 market bench,
495 of them ``UAck``; now 1,021, and 1,030 with each aggregate sent twice.)

**Driving.** Inputs: :class:`BidChanged` (command), ``LeaderElected``,
``Received`` and ``DeadlineReached``. Outputs: ``Send(broker, Bid)``, ``Send(broker, Applied)``
and the notifications :class:`PriceUpdated` (every applied price) and
:class:`AllocationChanged` (whenever the allocation's value changes).

Bid numbering: each new bid gets the next ``seq``; a refresh every
``refresh_interval`` seconds repeats the current one (soft state at the
broker). The broker's ``BidAck(seq, aggregate)`` says from which of its
aggregates on the bid counts; a ``Price`` names the aggregate it cleared, so
the bid the price applies to is the newest one acknowledged at or before it.
If none was, the client was not counted, and the clearing budgeted nothing
for it (the counted bids share all of ``S`` in a normal market or a
shortage, and a surplus may have no watt to spare): it takes **0 W** from
that price, whatever the regime, until a round counts it. This is what keeps
the cluster's allocations within the clearing's total; the cost is a
server without power for the round or two until its first bid is counted
(a new server, or a bid that reached a new broker after its first
aggregate). A new broker
(a newer epoch, learned from ``LeaderElected``) gets the current bid at once.

**Floors from the join reserve** (``floor_reserve``, off by default). With it,
a server that no price counts (it just joined, the first seconds of a run, a
new broker that has not counted it yet) draws its floor ``h`` instead of 0 W:
from its first bid on, and from every price that does not count it. Those
floors are provisioned within the firm supply: the lead never hands out the
floors of the servers its aggregates do not count (``LeadConfig.provisioned``
and ``floor_provision``), so the market trades only
above them. Turn it on only with a lead whose ``join_reserve`` covers every
such floor. A republished price (``FLAG_REPUBLISHED``: a new broker's first,
see the broker's "Failover continuity") counts no bid.

**Unacknowledged bids.** A newer bid whose ``BidAck`` has not arrived (in
flight, or lost: acks are plain datagrams, asked again by the next resend) may
already be the one the broker counted in the price's aggregate, in place of
the acknowledged one. So a price gives the lesser of the shares of the
acknowledged bid and of every newer unacknowledged one: a lowered bid is
never paid at its old, higher share (a raise waits for its ack, as before).

**Make-before-break, by the latency bound** (``raise_after``, 20 ms). A price
that lowers the allocation applies at once; one that raises it applies (and
its :class:`PriceUpdated` is emitted) ``raise_after`` later, unless a newer
price replaces it first. The cuts of the same clearing reach the other
clients within two message delays (and a repeat, see
:mod:`~powergrid.protocols.market.repeat`), so the raise they pay for lands
after them. Release is by time, not by a confirmed cut; a client that never
applies its cut (crashed, not detected yet) is covered by the broker instead, which
holds the cap of a member whose cut is not confirmed (next).

**Cuts are confirmed.** A counted price whose cap is below the most the broker may think
we draw (the highest cap since our last ``Applied``, the ``ceiling``) is confirmed to the
broker with :class:`~powergrid.wire.Applied` (epoch, round, the cap drawn from it on: a
raise waiting for ``raise_after`` counts as applied), once, as a plain datagram; so is any
counted price that follows a round we never took (it may have given us more). The broker
holds a member whose cut is not confirmed within its ``confirm_within`` at the most it may
draw (broker, "Cuts are confirmed"). Every bid (each refresh) says the same of the last
counted price applied (``applied_*``), so a lost ``Applied`` costs the others that hold
until the next refresh at most; a raise or an unchanged cap sends nothing.

**A cap outlives its broker.** After a failover (a new broker followed while
the lease of the last applied price runs), a price of the new broker that does
not count the bid yet allocates it nothing (``PriceUpdated.allocation`` 0,
``carried``) but keeps the cap in force instead of dropping it to 0 W, until the
lease of the last price that did runs out (uncounted prices do not renew it);
expiry then gives ``min(cap, r)`` as usual and never raises. The new broker
does not budget those watts yet (issue 16: grantors that wait out leases are
still to come), so the carried cap may overlap the new clearing for the round
or two until the bid is counted; the simulator measures that overlap.

**Supply drops without a price.** The node tells the client the supply in force
(:class:`~powergrid.protocols.market.lead.SupplyChanged`, as it tells the lead
machine), and every price names its cluster's ``budget`` and the ``supply`` the lead
cleared that budget against. A drop reaches the lead at the same instant and it
clears at once, so a price of the new supply follows within a message delay. But a
client whose cluster lost its broker (``LeaderLost``, no ``LeaderElected`` since) is
priced by nobody: if its cluster has no broker-capable node left, nobody ever will,
and the others of its cluster may be dead, still drawing their caps on their leases.
So once the node's supply has been below the supply of the price whose cap is in
force for ``drop_grace`` (1.5 s), and the client has had no broker for as long (a
failover elects the next broker sooner), it takes the whole cut of its cluster's budget
on itself: its cap becomes at most
``allocation - budget * (1 - supply_now / supply_then)`` (0 W if that is below 0;
``AllocationChanged`` cause ``"supply"``), and so does every later price of an older
supply. Every cluster's budget scaled by one factor fits the new supply (a clearing's
budgets sum to at most its supply), whichever of a cluster's servers are alive to
apply it. The cut never raises a cap; a price of the new supply (or a higher one) is
applied as usual. Only without a broker: a broker cut off from the lead keeps
pricing its cluster, and a client that cut itself then would starve while the
overload it saves is the partition's (fresh seeds 40,100,000-40,100,599 with
``--safety 15`` and supply steps: 11 failed, all strict starvation, when a client cut
itself whenever no price at all came within the grace; 0 when it cut itself only
without a broker, 1 as built). And only ``drop_grace`` after the broker's loss: a
failover elects the next broker sooner (fresh seed 41,002,165: a client cut itself to
0 W 0.08 s after losing its crashed broker, while a broker-capable node of its cluster
lived to succeed it). Fresh seeds 38,301,324 and 38,300,174 with ``--safety 15``: a
cluster's broker-capable nodes crashed, the supply fell, and a surviving client held
118 W and 197 W beyond the supply for the rest of its lease. The cost, measured in
docs/protocols/market.md: a client cut to 0 W starves until a broker prices it again,
which a restarted broker may not do within the simulator's 1 s.

**Broker lives.** A broker that restarts and wins its cluster's epoch again
(a restarted node leads a cluster of itself first, and nobody remembers a
higher epoch) numbers its rounds and aggregates from 1. The election reports
the same (leader, epoch), so a price or ack of the followed broker in its
epoch from a newer incarnation than the one heard so far makes the client
follow it anew (rounds and acks forgotten, the bid sent again:
``broker_restarts``); one from an older incarnation is dropped as stale.

**Acknowledgements go stale.** The broker drops a bid it has not heard for
its ``bid_timeout`` (6 s), without telling the client (whose refreshes may be
cut off while its prices still arrive). So an acknowledgement counts only
while it is fresh: a price counts the bid acknowledged at or before its
aggregate only if that bid's latest ``BidAck`` arrived less than
``ack_timeout`` (5 s) ago; otherwise the bid may have expired before the
aggregate was made, and the price gives 0 W like any uncounted bid. Every
refresh is acknowledged again, which renews it; a repeated ``BidAck`` that
names a later aggregate (the broker dropped the bid and took it anew) raises
the bid's first counted aggregate. Safe as long as ``ack_timeout`` plus the
time an ack takes to arrive stays below the broker's ``bid_timeout``.

**Timeouts.** ``refresh_interval`` (default 2 s): resend the bid. ``bid_retry``
(default 0.1 s): resend a bid not acknowledged yet (doubling up to
``refresh_interval``). ``lease``
(default 5 s): hold the last allocation this long after the last applied price.
The lease must outlast a few of the broker's rounds (1 s by default).
``ack_timeout`` (default 5 s, more than ``refresh_interval``, less than the
broker's ``bid_timeout`` by more than an ack's delay): how long a
``BidAck`` proves the bid is counted. ``drop_grace`` (default 1.5 s: more than a
lost price's resend by the broker's next round, less than the simulator's 2 s
``supply-drop`` window): how long a supply drop, and the loss of the broker, wait
before the client cuts itself.
"""

from __future__ import annotations

from typing import Literal

import attrs

from powergrid import wire
from powergrid._checks import config_problem, flag, instance, real
from powergrid._dispatch import Dispatching
from powergrid.errors import UsageError
from powergrid.events import DeadlineReached, LeaderElected, LeaderLost, Received, Send
from powergrid.protocols.leadership import Leadership, Verdict
from powergrid.protocols.market.bids import DEFAULT_GRID, Bid, Grid
from powergrid.protocols.market.clearing import ClearingResult, Regime, allocate
from powergrid.protocols.market.lead import SupplyChanged, check_supply
from powergrid.types import Epoch, GroupId, NodeId, incarnation_newer

__all__ = [
    "AllocationChanged",
    "BidChanged",
    "ClientConfig",
    "ClientMachine",
    "ClientStats",
    "PriceUpdated",
]

_KEEP_BIDS = 8
"""Unacknowledged-or-uncleared bids remembered (older ones can no longer be priced)."""


@attrs.frozen(kw_only=True)
class BidChanged:
    """Command: this server's bid is now ``bid`` (report it to the broker)."""

    bid: Bid


@attrs.frozen(kw_only=True)
class PriceUpdated:
    """Notification: a fresh price of ``group``'s broker was applied.

    ``allocation`` (watts) is this server's power cap from now on;
    ``includes_latest_bid`` says whether the clearing counted the current bid;
    ``local`` says the broker cleared its cluster alone (lead broker lost);
    ``counted`` says the clearing counted some bid of this server (its latest
    or an earlier one): False means it got 0 W for want of a counted bid;
    ``carried``: the price allocated nothing (not counted) but the server keeps
    the cap of a previous broker's counted price in force, on its lease (see
    "A cap outlives its broker"), so its cap stays above ``allocation``. A client
    without a broker cuts the share of a price of an older supply (see "Supply drops
    without a price"): its cap, in ``AllocationChanged``, is then below ``allocation``.
    ``epoch`` and ``round`` are the cluster broker's (``round`` restarts at 1 with a
    new broker); ``lead_epoch`` and ``lead_round`` name the lead broker's clearing
    the price comes from (:class:`~powergrid.wire.Price`; 0 only where a test builds
    the notification by hand).
    """

    group: GroupId
    epoch: Epoch
    round: int
    price: float
    regime: Regime
    allocation: int
    includes_latest_bid: bool
    deficit: int = 0
    local: bool = False
    counted: bool = False
    carried: bool = False
    lead_epoch: Epoch = attrs.field(default=Epoch(0))
    lead_round: int = 0


# Every applied price builds one (see wire.record_builder: the same object, about twice
# as fast); positional, in field order.
_new_price_updated = wire.record_builder(PriceUpdated)


@attrs.frozen(kw_only=True)
class AllocationChanged:
    """Notification: this server's power cap is now ``allocation`` watts, because of ``cause``."""

    group: GroupId
    allocation: int
    cause: Literal["price", "lease", "bid", "reserve", "supply"]


@attrs.frozen(kw_only=True)
class ClientConfig:
    """Client timing (seconds) and the market's price grid. Raises :class:`ConfigError`."""

    grid: Grid = attrs.field(default=DEFAULT_GRID, validator=instance(Grid))
    refresh_interval: float = attrs.field(default=2.0, validator=real)
    bid_retry: float = attrs.field(default=0.1, validator=real)
    """A bid not acknowledged this long after it was sent goes again (s; the wait
    doubles up to ``refresh_interval``)."""
    lease: float = attrs.field(default=5.0, validator=real)
    ack_timeout: float = attrs.field(default=5.0, validator=real)
    floor_reserve: bool = attrs.field(default=False, validator=flag)
    """Draw the floor while no price counts the bid (see "Floors from the join reserve")."""
    raise_after: float = attrs.field(default=0.02, validator=real)
    """A price that raises the cap is applied this much later (s; 0: at once; see
    "Make-before-break")."""
    drop_grace: float = attrs.field(default=1.5, validator=real)
    """How long a supply drop, and the loss of the broker, wait before the client cuts its
    own cap (s; see "Supply drops without a price")."""

    def __attrs_post_init__(self) -> None:
        if not self.refresh_interval > 0:
            raise config_problem(
                self, f"refresh_interval must be > 0 s, got {self.refresh_interval}"
            )
        if not 0 < self.bid_retry <= self.refresh_interval:
            raise config_problem(
                self,
                f"bid_retry must be in (0, refresh_interval] s, got {self.bid_retry}",
            )
        if not self.lease > 0:
            raise config_problem(self, f"lease must be > 0 s, got {self.lease}")
        if not 0 <= self.raise_after < self.lease:
            raise config_problem(
                self, f"raise_after must be in [0, lease) s, got {self.raise_after}"
            )
        if not 0 < self.drop_grace < self.lease:
            raise config_problem(self, f"drop_grace must be in (0, lease) s, got {self.drop_grace}")
        if not self.ack_timeout > self.refresh_interval:
            raise config_problem(
                self,
                f"ack_timeout ({self.ack_timeout} s) must exceed refresh_interval "
                f"({self.refresh_interval} s), or acks go stale between refreshes",
            )


@attrs.define
class ClientStats:
    """Counters; every dropped peer message is counted in exactly one ``dropped_*``."""

    bids_sent: int = 0
    bids_resent: int = 0
    """Bids sent again because no ``BidAck`` of them had come ``bid_retry`` after (also in
    ``bids_sent``)."""
    prices_applied: int = 0
    applied_sent: int = 0
    """``Applied`` sent to the broker: a price cut the cap, or came after a missed round."""
    prices_carried: int = 0
    """Prices of a new broker that did not count the bid yet, while the cap of the previous
    broker's counted price stayed in force on its lease."""
    acks_renewed: int = 0
    broker_restarts: int = 0
    """Prices or acks of the broker followed from a newer life (it restarted and won the
    same epoch again): followed anew, its rounds and acks counted from scratch."""
    prices_with_stale_ack: int = 0
    leases_expired: int = 0
    supply_cuts: int = 0
    """Caps (and shares of prices of an older supply) cut by the client itself: a supply
    drop and the broker's loss, both ``drop_grace`` old (see "Supply drops without a
    price")."""
    dropped_stale: int = 0
    dropped_early: int = 0
    """Prices of a newer (or foreign) epoch than the election named: not applied, and the
    epoch is not followed (its broker's Coordinator is on its way; its next round counts)."""
    dropped_duplicate: int = 0
    dropped_foreign: int = 0
    dropped_invalid: int = 0
    dropped_no_bid: int = 0
    dropped_unexpected: int = 0


class ClientMachine(Dispatching):
    """The market client of node ``me`` in cluster ``cluster`` (see the module docstring)."""

    __slots__ = (
        "_acked_at",
        "_acks",
        "_allocation",
        "_applied",
        "_bids",
        "_broker_life",
        "_carry",
        "_ceiling",
        "_cluster",
        "_config",
        "_counted",
        "_cut_at",
        "_drop_at",
        "_grant",
        "_includes_latest",
        "_lead_epoch",
        "_leadership",
        "_lease_until",
        "_lost_at",
        "_me",
        "_price",
        "_refresh_at",
        "_regime",
        "_release",
        "_retry",
        "_round",
        "_seq",
        "_supply",
        "stats",
    )

    _EVENTS = {
        BidChanged: "_on_bid_changed",
        Received: "_on_received",
        LeaderElected: "_on_leader_elected",
        DeadlineReached: "_on_deadline",
        SupplyChanged: "_on_supply_changed",
        LeaderLost: "_on_leader_lost",
    }

    def __init__(
        self,
        me: NodeId,
        cluster: GroupId,
        config: ClientConfig | None = None,
        *,
        supply: int = 0,
    ) -> None:
        self._me = me
        self._cluster = cluster
        self._config = config if config is not None else ClientConfig()
        self.stats = ClientStats()
        self._leadership = Leadership()  # the broker (cluster leader) followed, and its epoch
        self._seq = 0
        self._bids: dict[int, Bid] = {}  # seq -> bid, for seqs that a price may still clear
        self._acks: dict[int, int] = {}  # seq -> first aggregate of the current broker counting it
        self._acked_at: dict[int, float] = {}  # seq -> when its latest BidAck arrived
        self._refresh_at: float | None = None
        self._retry: tuple[float, float] | None = None  # an unacked bid: (when again, wait)
        self._round = 0
        # the most the broker may think we draw: our last Applied's cap, or more if a price
        # since gave more (None: no price of this broker yet; see "Cuts are confirmed")
        self._ceiling: int | None = None
        self._applied = (0, 0, 0)  # the last counted price applied: (epoch, round, cap)
        self._broker_life = 0  # the followed broker's incarnation (0: not heard from yet)
        self._allocation: int | None = None
        self._lease_until: float | None = None
        self._price: float | None = None
        self._regime: Regime | None = None
        self._includes_latest = False
        self._carry = False  # the cap of a previous broker's counted price, on its lease
        self._counted = False  # the last applied price counted a bid of ours
        # a raise: when it applies, and its grant (see _grant_cap)
        self._release: tuple[float, PriceUpdated, tuple[int, int, int] | None] | None = None
        self._lead_epoch = 0  # the lead epoch of the last price taken (0: none), in our bids
        self._supply = supply  # the node's supply in force (0: not told)
        # The counted price whose cap is in force: (allocation, budget, supply), and when
        # the node's supply fell below its supply (see "Supply drops without a price").
        self._grant: tuple[int, int, int] | None = None
        self._drop_at: float | None = None
        self._cut_at: float | None = None  # see _arm
        self._lost_at: float | None = None  # LeaderLost of our cluster, no LeaderElected since

    # ------------------------------------------------------------ read-only state

    @property
    def bid(self) -> Bid | None:
        """The current bid, or None before the first :class:`BidChanged`."""
        return self._bids.get(self._seq)

    @property
    def bid_seq(self) -> int:
        """The current bid's number (0: none yet)."""
        return self._seq

    @property
    def broker(self) -> NodeId:
        """The broker followed (0: none known)."""
        return self._leadership.leader or NodeId(0)

    @property
    def epoch(self) -> Epoch:
        """The cluster epoch followed; prices of older epochs are refused."""
        return self._leadership.epoch

    @property
    def allocation(self) -> int | None:
        """This server's power cap in watts, or None before the first price."""
        return self._allocation

    @property
    def price(self) -> float | None:
        """The last applied price."""
        return self._price

    @property
    def regime(self) -> Regime | None:
        """The regime of the last applied price."""
        return self._regime

    @property
    def includes_latest_bid(self) -> bool:
        """Whether the last applied price counted the current bid."""
        return self._includes_latest

    @property
    def lease_expired(self) -> bool:
        """Whether the allocation has fallen back for want of fresh prices."""
        return self._allocation is not None and self._lease_until is None

    # ------------------------------------------------------------------ driving

    def next_deadline(self) -> float | None:
        """The next refresh, resend, lease expiry or raise to apply, whichever is first."""
        # (Asked after every event the client takes: four fields compared in line, the
        # first of equal times kept, as min() would.)
        best = self._refresh_at
        retry = self._retry
        if retry is not None and (best is None or retry[0] < best):
            best = retry[0]
        lease = self._lease_until
        if lease is not None and (best is None or lease < best):
            best = lease
        release = self._release
        if release is not None and (best is None or release[0] < best):
            best = release[0]
        cut = self._cut_at
        if cut is not None and (best is None or cut < best):
            best = cut
        return best

    # ---------------------------------------------------------------- handlers

    def _on_bid_changed(self, ev: BidChanged, now: float) -> list[object]:
        if not isinstance(ev.bid, Bid):
            raise UsageError(f"BidChanged needs a market Bid, got {ev.bid!r}")
        if self._seq and self._bids.get(self._seq) == ev.bid:
            return []
        self._seq += 1
        self._bids[self._seq] = ev.bid
        if len(self._bids) > _KEEP_BIDS:
            oldest = min(self._bids)
            del self._bids[oldest]
            self._acks.pop(oldest, None)
            self._acked_at.pop(oldest, None)
        actions = self._send_bid(now)
        if self._config.floor_reserve and not self._counted and not self._carry:
            # drawing from the join reserve: its floor, whatever it is now
            actions += self._set_allocation(ev.bid.floor, "reserve")
        elif self.lease_expired and self._allocation is not None:
            actions += self._set_allocation(min(self._allocation, ev.bid.required), "bid")
        return actions

    def _on_leader_lost(self, ev: LeaderLost, now: float) -> list[object]:
        if ev.group != self._cluster:
            return []
        if self._lost_at is None:
            self._lost_at = now
            self._arm(now)
        return []

    def _on_leader_elected(self, ev: LeaderElected, now: float) -> list[object]:
        if ev.group != self._cluster:
            return []
        self._lost_at = None
        self._arm(now)
        verdict = self._leadership.obey(ev.leader, ev.epoch)
        if verdict is Verdict.STALE:
            self.stats.dropped_stale += 1
            return []
        if verdict is Verdict.SAME:
            return []
        self._broker_life = 0  # learnt from its first price or ack
        return self._follow(now)

    def _on_received(self, ev: Received, now: float) -> list[object]:
        msg = ev.message
        # (From the broker life heard so far, the common case, _restarted has nothing to say.)
        known = ev.incarnation == self._broker_life
        if type(msg) is wire.Price:
            out = [] if known else self._restarted(ev, msg.epoch, now)
            if out is None:
                return []
            prices = self._on_price(ev.sender, msg, now)
            return out + prices if out else prices
        if type(msg) is wire.BidAck:
            out = [] if known else self._restarted(ev, msg.epoch, now)
            return [] if out is None else out + self._on_bid_ack(ev.sender, msg, now)
        self.stats.dropped_unexpected += 1
        return []

    def _restarted(self, ev: Received, epoch: int, now: float) -> list[object] | None:
        """A message of the broker followed, in its epoch, from a newer life than the one
        heard so far: it restarted and won the same epoch again (a cluster of itself
        first), and numbers its rounds and aggregates from 1: follow it anew. None for
        an older life's late datagram (its rounds may be above the new life's)."""
        if ev.sender != self._leadership.leader or epoch != self._leadership.epoch:
            return []
        life = self._broker_life
        if life == ev.incarnation:
            return []
        if life and not incarnation_newer(ev.incarnation, life):
            self.stats.dropped_stale += 1
            return None
        self._broker_life = ev.incarnation
        if not life:
            return []  # the first we hear of this broker
        self.stats.broker_restarts += 1
        return self._follow(now)

    def _on_bid_ack(self, sender: NodeId, msg: wire.BidAck, now: float) -> list[object]:
        if msg.epoch != self._leadership.epoch or msg.epoch == 0:
            self.stats.dropped_stale += 1
        elif sender != self._leadership.leader:
            self.stats.dropped_foreign += 1
        elif msg.seq not in self._bids:
            self.stats.dropped_invalid += 1
        else:
            # Renewed by every ack; a later first aggregate means the broker
            # dropped the bid and took it anew (see "Acknowledgements go stale").
            if msg.seq in self._acks:
                self.stats.acks_renewed += 1
            self._acks[msg.seq] = max(self._acks.get(msg.seq, 0), msg.aggregate)
            self._acked_at[msg.seq] = now
            if msg.seq == self._seq:
                self._retry = None  # the broker holds the current bid
        return []

    def _on_price(self, sender: NodeId, msg: wire.Price, now: float) -> list[object]:
        actions: list[object] = []
        leadership = self._leadership
        if msg.epoch != leadership.epoch or msg.epoch == 0:
            # The epoch is the election's (LeaderElected). A price never moves it: a forged
            # price of a newer epoch would otherwise fence out the real broker for good.
            if msg.epoch == 0 or leadership.stale(msg.epoch):
                self.stats.dropped_stale += 1
            else:
                self.stats.dropped_early += 1
            return actions
        if sender != leadership.leader:
            self.stats.dropped_foreign += 1
            return actions
        if msg.round <= self._round:
            self.stats.dropped_duplicate += 1
            return actions
        missed = msg.round != self._round + 1  # a round we never took: it may have cut us
        result = ClearingResult.checked(msg, self._config.grid)
        if result is None:
            self.stats.dropped_invalid += 1
            return actions
        bid = self.bid
        if bid is None:
            self._round = msg.round
            self.stats.dropped_no_bid += 1
            return actions
        self._round = msg.round
        seq = 0  # the newest bid the aggregate counted (seqs start at 1)
        for acked, agg in self._acks.items():
            if agg <= msg.aggregate and acked > seq:
                seq = acked
        if msg.flags & wire.Price.FLAG_REPUBLISHED:
            seq = 0  # a new broker's republished price: it counts no bid
        if seq and now - self._acked_at[seq] >= self._config.ack_timeout:
            seq = 0  # the broker may have expired the bid before this aggregate
            self.stats.prices_with_stale_ack += 1
        if seq:
            allocation = allocate(self._bids[seq], result, self._config.grid)
            # A newer bid not acknowledged yet may be the one the broker counted (its ack
            # is on its way, or lost): take the lesser share (see "Unacknowledged bids").
            if seq != self._seq:  # (no bid is newer than the current one)
                for newer in sorted(s for s in self._bids if s > seq and s not in self._acks):
                    allocation = min(
                        allocation, allocate(self._bids[newer], result, self._config.grid)
                    )
            self._includes_latest = seq == self._seq
            if len(self._bids) > 1:  # (seq's own bid is one of them)
                for old in [s for s in self._bids if s < seq]:
                    del self._bids[old]
                    self._acks.pop(old, None)
                    self._acked_at.pop(old, None)
        else:  # not counted, or not surely: the clearing budgeted nothing for us
            allocation = bid.floor if self._config.floor_reserve else 0  # the join reserve's
            self._includes_latest = False
        self._counted = bool(seq)
        carried = not seq and self._carry and (self._allocation or 0) > allocation
        if carried:  # a new broker has not counted us yet: keep the old cap on its lease
            self.stats.prices_carried += 1
        else:
            self._carry = False
            self._lease_until = now + self._config.lease
        self.stats.prices_applied += 1
        if msg.lead_epoch:
            self._lead_epoch = msg.lead_epoch
        self._price = result.price
        self._regime = result.regime
        update = _new_price_updated(
            self._cluster,  # group
            self._leadership.epoch,  # epoch
            msg.round,  # round
            result.price,  # price
            result.regime,  # regime
            allocation,  # allocation
            self._includes_latest,  # includes_latest_bid
            result.deficit,  # deficit
            bool(msg.flags & wire.Price.FLAG_LOCAL),  # local
            bool(seq),  # counted
            carried,  # carried
            Epoch(msg.lead_epoch),  # lead_epoch
            msg.lead_round,  # lead_round
        )
        self._release = None  # a newer price replaces a raise not applied yet
        grant = (allocation, msg.budget, msg.supply) if seq else None
        after = self._config.raise_after
        if not carried and after > 0 and allocation > (self._allocation or 0):
            # Make-before-break: the cuts this raise is paid by land within the latency
            # bound (and a repeat); the raise (and its PriceUpdated) waits that long.
            self._release = (now + after, update, grant)
            if seq:  # (the raise counts as applied: the broker may think we draw it now)
                actions += self._confirm(msg.round, allocation, missed)
            return actions
        actions.append(update)
        if not carried:
            actions += self._grant_cap(grant, allocation, now)
        if seq:
            actions += self._confirm(msg.round, self._allocation or 0, missed)
        return actions

    def _confirm(self, round_: int, cap: int, missed: bool) -> list[object]:
        """A counted price of round ``round_`` leaves us drawing at most ``cap``: tell the
        broker if that is below the most it may think we draw, or if we missed a round
        (see "Cuts are confirmed")."""
        self._applied = (self._leadership.epoch, round_, cap)  # every refresh says it again
        ceiling = self._ceiling
        if not missed and (ceiling is None or cap >= ceiling):
            self._ceiling = cap if ceiling is None else max(ceiling, cap)
            return []
        self._ceiling = cap
        broker = self._leadership.leader
        if not broker:
            return []
        self.stats.applied_sent += 1
        msg = wire.Applied(epoch=self._leadership.epoch, round=round_, cap=cap)
        return [Send(to=broker, message=msg)]

    def _on_deadline(self, ev: DeadlineReached, now: float) -> list[object]:
        actions: list[object] = []
        if self._release is not None and now >= self._release[0]:
            _, update, grant = self._release
            self._release = None
            actions.append(update)
            actions += self._grant_cap(grant, update.allocation, now)
        if self._refresh_at is not None and now >= self._refresh_at:
            actions += self._send_bid(now)
        elif self._retry is not None and now >= self._retry[0]:
            self.stats.bids_resent += 1
            actions += self._send_bid(now, min(2 * self._retry[1], self._config.refresh_interval))
        if self._lease_until is not None and now >= self._lease_until:
            self._lease_until = None
            self._carry = False
            self.stats.leases_expired += 1
            bid = self.bid
            if self._allocation is not None and bid is not None:
                actions += self._set_allocation(min(self._allocation, bid.required), "lease")
        if self._cut_at is not None and now >= self._cut_at:
            self._cut_at = None
            if self._allocation is not None:
                actions += self._apply(self._allocation, "supply", now)
        return actions

    def _on_supply_changed(self, ev: SupplyChanged, now: float) -> list[object]:
        self._supply = check_supply(ev.watts)
        self._note_drop(now)
        if self._allocation is None:
            return []
        return self._apply(self._allocation, "supply", now)  # a drop after the grace: now

    # ----------------------------------------------------------------- helpers

    def _follow(self, now: float) -> list[object]:
        """A new broker (or broker life) is followed: forget the old one's acks and rounds,
        send it the bid."""
        self._carry = self._lease_until is not None  # a cap in force on its lease
        self._release = None  # the old broker's raise: its round is forgotten
        self._acks.clear()
        self._acked_at.clear()
        self._round = 0
        self._ceiling = None
        self._applied = (0, 0, 0)
        return self._send_bid(now)

    def _send_bid(self, now: float, wait: float | None = None) -> list[object]:
        """Send the current bid to the broker, again after ``wait`` (s; default
        ``bid_retry``) unless its ``BidAck`` comes first; the next refresh is
        ``refresh_interval`` on."""
        bid = self.bid
        broker = self._leadership.leader
        if bid is None or not broker:
            self._refresh_at = self._retry = None
            return []
        cfg = self._config
        self._refresh_at = now + cfg.refresh_interval
        wait = cfg.bid_retry if wait is None else wait
        self._retry = (now + wait, wait)
        self.stats.bids_sent += 1
        return [Send(to=broker, message=bid.to_message(self._seq, self._lead_epoch, self._applied))]

    def _grant_cap(
        self,
        grant: tuple[int, int, int] | None,
        allocation: int,
        now: float,
    ) -> list[object]:
        """Apply a price's ``allocation``; ``grant`` (its allocation, budget and supply; None:
        it counted no bid) becomes the cap in force, cut at once if :meth:`_capped` says so
        (see "Supply drops without a price")."""
        self._grant = grant
        self._note_drop(now)
        return self._apply(allocation, "price", now)

    def _apply(
        self, allocation: int, cause: Literal["price", "supply"], now: float
    ) -> list[object]:
        """Make ``allocation`` the cap (for ``cause``), or less if :meth:`_capped` cuts it."""
        capped = self._capped(allocation, now)
        if capped < allocation:
            self.stats.supply_cuts += 1
            return self._set_allocation(capped, "supply")
        return self._set_allocation(allocation, cause)

    def _note_drop(self, now: float) -> None:
        """Note when the node's supply fell below the supply of the cap in force, or forget
        it when it is not below; then arm the cut (:meth:`_arm`)."""
        grant, supply = self._grant, self._supply
        if grant is None or not supply or supply >= grant[2]:
            self._drop_at = None
        elif self._drop_at is None:
            self._drop_at = now
        self._arm(now)

    def _arm(self, now: float) -> None:
        """The cut's deadline: ``drop_grace`` after both the drop and the broker's loss (None
        when one is missing, or when it has passed: the callers then cut at once)."""
        at = self._cut_from()
        self._cut_at = at if at is not None and at > now else None

    def _cut_from(self) -> float | None:
        """When the cut applies: ``drop_grace`` after the later of the drop and the loss of
        the broker (None while either is missing)."""
        if self._drop_at is None or self._lost_at is None:
            return None
        return max(self._drop_at, self._lost_at) + self._config.drop_grace

    def _capped(self, allocation: int, now: float) -> int:
        """``allocation`` less the whole cut of the cluster's budget that the supply drop
        in force asks (0 at least), once the drop and the broker's loss are both
        ``drop_grace`` old; else ``allocation``."""
        grant, at = self._grant, self._cut_from()
        if grant is None or at is None or now < at:
            return allocation
        granted, budget, then = grant
        cut = -(-budget * (then - self._supply) // then)  # (rounded up)
        return max(0, min(allocation, granted - cut))

    def _set_allocation(
        self, allocation: int, cause: Literal["price", "lease", "bid", "reserve", "supply"]
    ) -> list[object]:
        if allocation == self._allocation:
            return []
        self._allocation = allocation
        return [AllocationChanged(group=self._cluster, allocation=allocation, cause=cause)]
