"""Unit tests of powergrid.sim.invariants: hand-fed notifications, exact problems reported."""

from __future__ import annotations

import attrs

from powergrid.events import LeaderElected, Member, View, ViewChanged
from powergrid.node import MessageDelivered
from powergrid.protocols.election import ElectionStarted
from powergrid.protocols.market import Bid, MarketCleared, Regime
from powergrid.protocols.market.client import PriceUpdated
from powergrid.sim.fuzz import FuzzNetwork, NodeCrashed, NodeStarted
from powergrid.sim.harness import watches
from powergrid.sim.invariants import (
    TWIN_RESOLVE_S,
    AgreementValidity,
    BoundedBuffers,
    DataCentre,
    DeliveryIntegrity,
    ElectionsConverge,
    FifoPerSender,
    LeaderPerEpoch,
    MembersRemoved,
    NodeSpec,
    PriceBounds,
    Published,
    RequiredPowerMet,
    Sessions,
    StaleEpochRefused,
    SupplyRespected,
    ViewIdsGrow,
    app_payload,
    parse_payload,
)
from powergrid.types import Epoch, GroupId, Incarnation, NodeId

A, B, C = NodeId(1), NodeId(2), NodeId(3)
G = GroupId(1)
BID = Bid(floor=10, required=50, maximum=100)
INFO = DataCentre(
    nodes=tuple(NodeSpec(node=n, cluster=1, broker_capable=n != A, bid=BID) for n in (A, B, C)),
    supply=200,
    settle_at=5.0,
)
NET = FuzzNetwork(seed=0)


def start(invs: list, *nodes: int) -> None:
    for inv in invs:
        for n in nodes:
            inv.observe(0.0, NodeId(n), NodeStarted(node=NodeId(n), incarnation=Incarnation(1)))


def view(view_id: int, leader: int, *members: int, inc: int = 1) -> ViewChanged:
    ms = tuple(Member(node=NodeId(m), incarnation=Incarnation(inc)) for m in sorted(members))
    return ViewChanged(
        view=View(group=G, view_id=view_id, leader=NodeId(leader), epoch=Epoch(1), members=ms)
    )


def published(origin: int, seq: int, n: int | None = None) -> Published:
    payload = app_payload(origin, 1, seq if n is None else n)
    return Published(
        group=G, origin=NodeId(origin), incarnation=Incarnation(1), seq=seq, payload=payload
    )


def delivered(origin: int, seq: int, n: int | None = None) -> MessageDelivered:
    payload = app_payload(origin, 1, seq if n is None else n)
    return MessageDelivered(group=G, sender=NodeId(origin), seq=seq, payload=payload)


def agreement(info: DataCentre = INFO) -> tuple[Sessions, AgreementValidity]:
    """Sessions and the agreement invariant of ``info``, with A, B and C started."""
    s = Sessions(info)
    inv = AgreementValidity(info, s)
    start([s, inv], A, B, C)
    return s, inv


def everyone_joined(invs: list, t: float = 0.0) -> None:
    for inv in invs:
        for n in (A, B, C):
            inv.observe(t, n, view(1, B, A, B, C))


def test_payload_round_trip() -> None:
    """App payloads name their origin, incarnation and number; others are refused."""
    assert parse_payload(app_payload(7, 2, 9)) == (7, 2, 9)
    assert parse_payload(b"short") is None


def test_integrity_refuses_a_delivery_never_published() -> None:
    """Integrity: only published messages are delivered."""
    s = Sessions(INFO)
    inv = DeliveryIntegrity(INFO, s)
    start([s, inv], A, B, C)
    inv.observe(1.0, A, published(A, 1))
    inv.observe(1.0, B, delivered(A, 1))
    assert inv.check(NET) == []
    inv.observe(1.1, B, delivered(A, 2))
    assert inv.check(NET) == ["0.0.0.0:2 delivered #2 of 0.0.0.0:1 life 1 that was never published"]


def test_integrity_refuses_a_second_delivery() -> None:
    """Integrity: at most once per (origin, incarnation, seq) per receiver life."""
    s = Sessions(INFO)
    inv = DeliveryIntegrity(INFO, s)
    start([s, inv], A, B)
    inv.observe(1.0, A, published(A, 1))
    inv.observe(1.0, B, delivered(A, 1))
    inv.observe(1.2, B, delivered(A, 1))
    problems = inv.check(NET)
    assert len(problems) == 1 and problems[0].endswith("life 1 twice")
    # a new life of the receiver may deliver it again
    inv.observe(2.0, B, NodeCrashed(node=B, incarnation=Incarnation(1)))
    inv.observe(2.1, B, NodeStarted(node=B, incarnation=Incarnation(2)))
    inv.observe(2.2, B, delivered(A, 1))
    assert inv.check(NET) == []


def test_fifo_gap_while_both_stay_in_the_view() -> None:
    """FIFO: +1 steps while receiver and origin stay in the view; order always."""
    s = Sessions(INFO)
    inv = FifoPerSender(INFO, s)
    start([s, inv], A, B, C)
    everyone_joined([s, inv])
    inv.observe(2.0, B, delivered(A, 1))
    inv.observe(2.1, B, delivered(A, 3))
    problems = inv.check(NET)
    assert len(problems) == 1 and "right after #1" in problems[0]
    inv.observe(2.2, B, delivered(A, 2))
    problems = inv.check(NET)
    assert len(problems) == 1 and "after #3" in problems[0]


def test_fifo_gap_allowed_after_an_exclusion() -> None:
    """FIFO: a receiver excluded from the view (and readmitted) may skip."""
    s = Sessions(INFO)
    inv = FifoPerSender(INFO, s)
    start([s, inv], A, B, C)
    everyone_joined([s, inv])
    inv.observe(2.0, C, delivered(A, 1))
    for x in (s, inv):
        x.observe(2.5, B, view(2, B, A, B))  # the leader drops C
        x.observe(3.0, B, view(3, B, A, B, C))
        x.observe(3.0, C, view(3, B, A, B, C))
    inv.observe(3.1, C, delivered(A, 5))
    assert inv.check(NET) == []


def test_fifo_gap_allowed_over_history_from_before_the_receiver_joined() -> None:
    """FIFO: a joiner that fetched some history may skip history published before it was
    in the view (the multicast promises a joiner none of it: seeds 733, 1626); a skip of
    a message published while both were in the view is still a violation."""
    for published_at, problems in ((2.5, 0), (4.2, 1)):
        s = Sessions(INFO)
        inv = FifoPerSender(INFO, s)
        start([s, inv], A, B, C)
        for x in (s, inv):
            for n in (A, B):
                x.observe(0.0, n, view(1, B, A, B))
            for n in (A, B, C):
                x.observe(3.0, n, view(2, B, A, B, C))  # C joins at 3.0
        inv.observe(1.0, A, published(A, 1))
        inv.observe(published_at, A, published(A, 2))
        inv.observe(4.4, A, published(A, 3))
        inv.observe(4.5, C, delivered(A, 1))  # old history, fetched
        inv.observe(4.6, C, delivered(A, 3))
        found = inv.check(NET)
        assert len(found) == problems, (published_at, found)
        if problems:
            assert "right after #1 (t=4.500) though both stayed in the view" in found[0]


def test_validity_at_the_end() -> None:
    """Validity: a live origin's message reaches every live member in session."""
    s, inv = agreement()
    everyone_joined([s, inv])
    inv.observe(2.0, A, published(A, 1))
    inv.observe(2.0, B, delivered(A, 1))
    problems = inv.check_final(NET)
    assert len(problems) == 1 and problems[0].startswith("validity: #1 of 0.0.0.0:1")
    assert "0.0.0.0:3" in problems[0]
    inv.observe(2.1, C, delivered(A, 1))
    assert inv.check_final(NET) == []


def test_agreement_for_a_crashed_origin() -> None:
    """Agreement: for a crashed origin, all members in session deliver it or none."""
    s, inv = agreement()
    everyone_joined([s, inv])
    inv.observe(2.0, A, published(A, 1))
    inv.observe(2.1, A, NodeCrashed(node=A, incarnation=Incarnation(1)))
    s.observe(2.1, A, NodeCrashed(node=A, incarnation=Incarnation(1)))
    assert inv.check_final(NET) == []  # nobody got it: allowed
    inv.observe(2.0, B, delivered(A, 1))
    problems = inv.check_final(NET)
    assert len(problems) == 1 and problems[0].startswith("agreement: #1")


def test_validity_with_total_order_judges_the_members_the_origins_view_listed() -> None:
    """With total order, a member the origin's view did not list when the message was
    published is not judged, and is counted (``total-order-disjoint-views``): A, still
    in a view without C, publishes #1, which C (in a view with A) may have had to drop as
    late (fuzz seed 22,401,424: two members alone in views of their own). #2, published
    once A's view lists C, is judged: C missing it is a violation. Without total order
    both are judged."""
    ordered = attrs.evolve(INFO, total_order=True)
    for info, problems in ((ordered, 1), (INFO, 2)):
        s, inv = agreement(info)
        for x in (s, inv):
            for n in (A, B):
                x.observe(0.0, n, view(1, B, A, B))
            for n in (B, C):
                x.observe(0.5, n, view(2, B, A, B, C))  # A lags: still in view 1
        inv.observe(2.5, A, published(A, 1))
        for x in (s, inv):
            x.observe(3.0, A, view(2, B, A, B, C))
        inv.observe(4.5, A, published(A, 2))
        for seq in (1, 2):
            inv.observe(4.6, B, delivered(A, seq))
        found = inv.check_final(NET)
        assert len(found) == problems, found
        assert found[-1].startswith("validity: #2 of 0.0.0.0:1") and "0.0.0.0:3" in found[-1]
        assert inv.exempted == ({"total-order-disjoint-views": 1} if problems == 1 else {})


def test_a_member_whose_view_never_listed_the_origin_is_not_judged() -> None:
    """Agreement: C, cut off from its leader, never installs a view that lists A's life
    (seed 24,000,741), so A's messages are not judged at C (counted as
    ``never-in-view``); B, which listed A, still is. Once C installs a view with A, it
    is judged again."""
    s, inv = agreement()
    for x in (s, inv):
        for n in (B, C):
            x.observe(0.0, n, view(1, B, B, C))
        for n in (A, B):
            x.observe(0.1, n, view(2, B, A, B, C))  # C misses it (cut off)
    inv.observe(2.0, A, published(A, 1))
    assert inv.check_final(NET) == [
        "validity: #1 of 0.0.0.0:1 life 1 (published t=2.000) never delivered at 0.0.0.0:2"
    ]
    assert inv.exempted == {"never-in-view": 1}
    inv.observe(2.1, B, delivered(A, 1))
    assert inv.check_final(NET) == []
    inv.observe(3.0, C, view(2, B, A, B, C))
    assert inv.check_final(NET)[0].endswith("never delivered at 0.0.0.0:3")


def test_agreement_not_checked_for_a_life_whose_next_life_was_replaced_early() -> None:
    """Agreement: a member keeps one retired life per origin, so an origin that restarts
    twice within flush_grace of the first restart takes its first life's retired state
    with it; that life's messages are then not checked (seed 69352). Restarting once, or
    the second time after flush_grace, still is."""
    for second_restart, problems in ((None, 1), (3.0, 0), (2.5 + 2.0, 1)):
        s, inv = agreement()
        everyone_joined([s, inv])
        inv.observe(2.0, A, published(A, 1))
        inv.observe(2.0, B, delivered(A, 1))  # C missed it
        lives = [(2.1, 2.5, 2)]
        if second_restart is not None:
            lives.append((second_restart - 0.1, second_restart, 3))
        for down, up, inc in lives:
            for x in (s, inv):
                x.observe(down, A, NodeCrashed(node=A, incarnation=Incarnation(inc - 1)))
                x.observe(up, A, NodeStarted(node=A, incarnation=Incarnation(inc)))
        found = inv.check_final(NET)
        assert len(found) == problems, (second_restart, found)
        if problems:
            assert found[0].startswith("agreement: #1 of 0.0.0.0:1 life 1")


def test_view_ids_only_grow() -> None:
    """Membership: view ids only grow at each node."""
    inv = ViewIdsGrow(INFO)
    start([inv], A)
    inv.observe(1.0, A, view(2, B, A, B))
    inv.observe(1.1, A, view(2, B, A, B))
    assert inv.check(NET) == ["0.0.0.0:1 installed view 2 of group 1 after view 2"]


def test_no_live_node_removed_after_the_heal() -> None:
    """Membership: a leader removing a live member after settle + grace is a violation."""
    inv = MembersRemoved(INFO)
    start([inv], A, B, C)
    inv.observe(6.0, B, view(5, B, A, B, C))
    inv.observe(7.0, B, view(6, B, B, C))
    problems = inv.check(NET)
    assert len(problems) == 1 and "removed live 0.0.0.0:1" in problems[0]
    inv.observe(7.0, C, view(6, B, B, C))
    inv.observe(7.5, C, view(7, C, C))  # C leads alone and drops live B
    assert inv.check(NET) == [
        "leader 0.0.0.0:3 removed live 0.0.0.0:2 from group 1 (view 7) after the heal"
    ]


def test_two_winners_of_one_epoch() -> None:
    """Election safety (strict): at most one leader per (group, epoch)."""
    inv = LeaderPerEpoch(INFO, strict=True)
    start([inv], B, C)
    inv.observe(1.0, B, LeaderElected(group=G, leader=B, epoch=Epoch(1)))
    inv.observe(1.0, C, LeaderElected(group=G, leader=B, epoch=Epoch(1)))  # a follower
    assert inv.check(NET) == []
    inv.observe(1.1, C, LeaderElected(group=G, leader=C, epoch=Epoch(1)))
    assert inv.check(NET) == [
        "0.0.0.0:2 (t=1.000) and 0.0.0.0:3 (t=1.100) both won epoch 1 of group 1"
    ]
    assert inv.twins == 1


def test_tolerant_twins_must_resolve() -> None:
    """Election safety (tolerant): twins are flagged only if both still lead later."""
    inv = LeaderPerEpoch(INFO, strict=False, resolve_s=0.0)
    start([inv], B, C)
    inv.observe(0.0, B, LeaderElected(group=G, leader=B, epoch=Epoch(1)))
    inv.observe(0.0, C, LeaderElected(group=G, leader=C, epoch=Epoch(1)))
    assert inv.check(NET) == []  # neither runs in NET: both resolved
    assert inv.twins == 1


class Leading(LeaderPerEpoch):
    """LeaderPerEpoch whose twins lead while listed in ``leading`` (no real nodes needed)."""

    leading: frozenset[int] = frozenset((B, C))

    def _leads(self, network: FuzzNetwork, n: int, group: int, epoch: int) -> bool:
        return n in self.leading


def test_tolerant_twins_apart_get_resolve_s_from_their_contact() -> None:
    """Election safety (tolerant): twins that a cut keeps apart are not flagged while it
    lasts (without a quorum the election cannot resolve them: rule 7 needs a heartbeat
    to cross). Their resolve_s runs from the first moment they can reach each other both
    ways for contact_s; a shorter contact does not count (seed 88858: healed for 52 ms,
    no heartbeat crossed). Twins that both still lead resolve_s after the contact are
    flagged."""
    net = FuzzNetwork(seed=0)
    inv = Leading(INFO, strict=False)  # resolve_s TWIN_RESOLVE_S (1.5), contact_s 0.1
    start([inv], A, B, C)
    net.split([[B], [A, C]])
    net.run_until(2.2)
    inv.observe(2.2, C, LeaderElected(group=G, leader=C, epoch=Epoch(1)))
    assert inv.check(net) == []
    net.run_until(2.214)
    inv.observe(2.214, B, LeaderElected(group=G, leader=B, epoch=Epoch(1)))
    assert inv.check(net) == []
    net.run_until(3.425)
    net.heal()  # a contact of 52 ms: too short to count
    assert inv.check(net) == []
    net.run_until(3.477)
    net.split([[C], [A, B]])
    assert inv.check(net) == []
    net.run_until(4.75)  # 2.5 s after the second win, still cut apart: not flagged
    assert inv.check(net) == []
    net.run_until(4.861)
    net.heal()
    assert inv.check(net) == []
    net.run_until(4.961)  # in contact for contact_s: the clock runs from 4.861
    assert inv.check(net) == []
    net.run_until(6.36)
    assert inv.check(net) == []
    net.run_until(6.362)
    assert inv.check(net) == [
        "0.0.0.0:3 and 0.0.0.0:2 both still lead epoch 1 of group 1 1.5 s after they "
        "could reach each other (t=4.861; the second won it at t=2.214)"
    ]
    assert inv.twins == 1


def test_tolerant_twins_cut_apart_again_get_resolve_s_of_contact_in_all() -> None:
    """Election safety (tolerant): a cut that separates twins again stops their clock,
    and the next contact starts it where it stopped: they are flagged only once they
    could reach each other for resolve_s in all (seed 15,100,651 at 20 servers: in
    contact 0.5 s, apart, in contact again: flagged 1.5 s after the first contact
    although the way had been open for 0.53 s)."""
    net = FuzzNetwork(seed=0)
    inv = Leading(INFO, strict=False)  # resolve_s 1.5, contact_s 0.1
    start([inv], A, B, C)
    net.split([[B], [A, C]])
    inv.observe(0.0, C, LeaderElected(group=G, leader=C, epoch=Epoch(1)))
    inv.observe(0.0, B, LeaderElected(group=G, leader=B, epoch=Epoch(1)))
    assert inv.check(net) == []
    net.run_until(1.0)
    net.heal()
    assert inv.check(net) == []
    net.run_until(1.1)  # in contact for contact_s: the clock runs from 1.0
    assert inv.check(net) == []
    net.run_until(1.5)
    net.split([[B], [A, C]])  # 0.5 s of contact, then apart: the clock stops
    assert inv.check(net) == []
    net.run_until(3.0)  # 2.0 s after the first contact, 0.5 s of it in contact
    assert inv.check(net) == []
    net.heal()
    assert inv.check(net) == []
    net.run_until(3.1)
    assert inv.check(net) == []
    net.run_until(3.999)  # 0.5 + 0.999 s of contact
    assert inv.check(net) == []
    net.run_until(4.0)  # 1.5 s of contact in all
    assert inv.check(net) == [
        "0.0.0.0:3 and 0.0.0.0:2 both still lead epoch 1 of group 1 1.5 s after they "
        "could reach each other (t=3.000, after 0.500 s of contact before; the second "
        "won it at t=0.000)"
    ]


class Idle:
    """An endpoint that does nothing (so that the network can pause it)."""

    def __init__(self, node: NodeId) -> None:
        self.node_id = node

    def start(self, now: float) -> list[object]:
        return []

    def receive(self, data: bytes, now: float) -> list[object]:
        return []

    def handle_deadline(self, now: float) -> list[object]:
        return []

    def next_deadline(self) -> float | None:
        return None


def test_tolerant_twins_are_apart_while_either_is_paused() -> None:
    """Election safety (tolerant): a paused twin is frozen (it neither heartbeats nor
    hears the other's Coordinator, and its state cannot change), so a pause stops the
    clock like a cut: resolve_s counts contact with both running. The Hypothesis
    schedule of test_fuzz_protocols.py (test_hypothesis_twin_of_a_paused_lead) was
    flagged 1.5 s after the second win though the lead had been paused since before it
    and until the settle: no protocol resolves twins one of which executes nothing."""
    net = FuzzNetwork(seed=0)
    for n in (B, C):
        net.add(Idle(n))
    inv = Leading(INFO, strict=False)  # resolve_s 1.5, contact_s 0.1
    start([inv], A, B, C)
    inv.observe(0.0, B, LeaderElected(group=G, leader=B, epoch=Epoch(1)))
    assert net.pause(B)
    net.run_until(0.3)
    inv.observe(0.3, C, LeaderElected(group=G, leader=C, epoch=Epoch(1)))
    assert inv.check(net) == []
    net.run_until(2.0)  # connected, but B paused: apart
    assert inv.check(net) == []
    assert net.resume(B)
    assert inv.check(net) == []
    net.run_until(2.5)  # in contact, both running: the clock runs from 2.0
    assert inv.check(net) == []
    assert net.pause(C)  # 0.5 s of contact, then C pauses: the clock stops
    assert inv.check(net) == []
    net.run_until(5.0)
    assert inv.check(net) == []
    assert net.resume(C)
    assert inv.check(net) == []
    net.run_until(5.1)
    assert inv.check(net) == []
    net.run_until(5.999)  # 0.5 + 0.999 s of contact
    assert inv.check(net) == []
    net.run_until(6.0)
    assert inv.check(net) == [
        "0.0.0.0:2 and 0.0.0.0:3 both still lead epoch 1 of group 1 1.5 s after they "
        "could reach each other (t=5.000, after 0.500 s of contact before; the second "
        "won it at t=0.300)"
    ]


def test_tolerant_twins_in_contact_get_resolve_s_from_the_second_win() -> None:
    """Election safety (tolerant): twins that win while they can reach each other must
    resolve within resolve_s of the second win; twins that resolved in time are not
    flagged."""
    net = FuzzNetwork(seed=0)
    inv = Leading(INFO, strict=False)
    start([inv], A, B, C)
    inv.observe(0.0, C, LeaderElected(group=G, leader=C, epoch=Epoch(1)))
    inv.observe(0.0, B, LeaderElected(group=G, leader=B, epoch=Epoch(1)))
    assert inv.check(net) == []
    net.run_until(1.4)
    assert inv.check(net) == []
    inv.observe(1.4, C, LeaderElected(group=G, leader=C, epoch=Epoch(2)))
    inv.observe(1.4, B, LeaderElected(group=G, leader=B, epoch=Epoch(2)))
    assert inv.check(net) == []
    net.run_until(1.5)
    assert inv.check(net) == [
        "0.0.0.0:3 and 0.0.0.0:2 both still lead epoch 1 of group 1 1.5 s after they "
        "could reach each other (t=0.000; the second won it at t=0.000)"
    ]
    assert inv.slowest_s == 1.5  # what the bound is measured against
    inv.leading = frozenset((B,))  # C stepped down: epoch 2's twins resolved in time
    net.run_until(2.9)  # epoch 2's are due now (won at 1.4, in contact): judged, dropped
    assert inv.check(net) == []
    inv.leading = frozenset((B, C))
    net.run_until(9.0)
    assert inv.check(net) == []
    assert inv.twins == 2


def test_elections_must_stop() -> None:
    """Election liveness: no election starts in the last quiet_s seconds."""
    inv = ElectionsConverge(INFO)
    inv.observe(NET.now, C, ElectionStarted(group=G, epoch=Epoch(3)))
    problems = inv.check_final(NET)
    assert any("started an election" in p for p in problems)


def price(
    alloc: int,
    *,
    epoch: int = 1,
    rnd: int = 1,
    p: float = 0.5,
    local: bool = False,
    included: bool = True,
) -> PriceUpdated:
    return PriceUpdated(
        group=G,
        epoch=Epoch(epoch),
        round=rnd,
        price=p,
        regime=Regime.NORMAL,
        allocation=alloc,
        includes_latest_bid=included,
        local=local,
    )


def test_one_round_within_supply() -> None:
    """Market: the allocations of one round never exceed the supply."""
    inv = SupplyRespected(INFO)
    inv.observe(1.0, A, price(100))
    inv.observe(1.0, B, price(100))
    assert inv.check(NET) == []
    inv.observe(1.0, C, price(1))
    assert inv.check(NET) == ["round 1 of cluster 1 epoch 1 allocates 201 W > supply 200 W"]


def test_a_restarted_server_holds_no_cap_of_its_old_life() -> None:
    """Market: a server that restarts leaves the rounds it applied in its old life (its
    new life holds none of those caps), while a crash alone keeps its allocation counted
    (the cap stays in force on its lease). Seed 17,702,340: every server of a cluster
    restarted and the new broker's epoch 1, round 1 shared the old one's key."""
    inv = SupplyRespected(INFO)  # supply 200
    inv.observe(0.0, A, NodeStarted(node=A, incarnation=Incarnation(1)))
    inv.observe(1.0, A, price(100))
    inv.observe(2.0, A, NodeCrashed(node=A, incarnation=Incarnation(1)))
    inv.observe(3.0, B, price(101))
    assert inv.check(NET) == ["round 1 of cluster 1 epoch 1 allocates 201 W > supply 200 W"]
    inv = SupplyRespected(INFO)
    inv.observe(1.0, A, price(100))
    inv.observe(2.0, A, NodeCrashed(node=A, incarnation=Incarnation(1)))
    inv.observe(2.5, A, NodeStarted(node=A, incarnation=Incarnation(2)))
    inv.observe(3.0, B, price(101))
    inv.observe(3.0, C, price(99))
    assert inv.check(NET) == []
    inv.observe(3.0, A, price(1))
    assert inv.check(NET) == ["round 1 of cluster 1 epoch 1 allocates 201 W > supply 200 W"]


def test_a_client_following_a_restarted_broker_holds_no_cap_of_the_old_brokers_rounds() -> None:
    """Market: a client that applies a round not above one it applied in the same cluster
    epoch follows a new broker life (numbering from 1 again): its caps of the older
    life's rounds are replaced. Seed 24,006,660: C's cap of the old broker's round 2
    was counted with the new broker's round 2 (180 W > 152 W) though C had applied the
    new broker's round 1 since. Without that round 1, C still holds the old cap."""
    inv = SupplyRespected(INFO)  # supply 200
    inv.observe(1.0, C, price(100, rnd=2))  # the old broker's round 2
    inv.observe(5.0, C, price(50, rnd=1))  # the restarted broker's round 1
    inv.observe(6.0, A, price(60, rnd=2))
    inv.observe(6.0, B, price(60, rnd=2))
    assert inv.check(NET) == []
    inv.observe(6.0, C, price(81, rnd=2))
    assert inv.check(NET) == ["round 2 of cluster 1 epoch 1 allocates 201 W > supply 200 W"]
    inv = SupplyRespected(INFO)
    inv.observe(1.0, C, price(100, rnd=2))
    inv.observe(6.0, A, price(60, rnd=2))
    inv.observe(6.0, B, price(60, rnd=2))
    assert inv.check(NET) == ["round 2 of cluster 1 epoch 1 allocates 220 W > supply 200 W"]


def test_supply_steps_give_the_supply_in_force_and_its_range() -> None:
    """With supply steps the invariants judge against the supply in force: a round against
    the most within a lease back (a round cleared before a drop), the lead's floor for r
    against the least within 2 s (a price cleared before a rise)."""
    info = attrs.evolve(INFO, supply_steps=((2.0, 150), (4.0, 260)))  # supply 200 at first
    assert [info.supply_at(t) for t in (0.0, 1.99, 2.0, 3.0, 4.0, 9.0)] == [
        200,
        200,
        150,
        150,
        260,
        260,
    ]
    assert info.supply_range(1.0, 3.0) == (150, 200)
    assert info.supply_range(2.5, 3.5) == (150, 150)
    assert info.supply_range(0.0, 9.0) == (150, 260)
    inv = SupplyRespected(info)
    inv.observe(1.0, A, price(100))
    inv.observe(2.5, B, price(99))  # 199 W: within the 200 W of 1.0 s, before the drop
    assert inv.check(NET) == []
    inv.observe(7.5, C, price(100, rnd=2))
    inv.observe(7.5, A, price(161, rnd=2))  # 261 W > the 260 W in force since 4.0 s
    assert inv.check(NET) == ["round 2 of cluster 1 epoch 1 allocates 261 W > supply 260 W"]


def test_market_supply_tells_broker_lives_apart() -> None:
    """Market: a broker restarted while C was cut off wins its old epoch again and numbers
    its rounds from 1; C, not following the new life yet, holds the old life's round 1,
    which is not the new life's round 1 (fuzz seed 4 at 3 servers); likewise twin brokers
    of one epoch (seed 514). Clients that follow the same broker are summed as before."""
    inv = SupplyRespected(INFO)  # supply 200
    for n in (A, B, C):
        inv.observe(0.0, n, NodeStarted(node=n, incarnation=Incarnation(1)))
        inv.observe(0.5, n, LeaderElected(group=G, leader=A, epoch=Epoch(1)))
    inv.observe(1.0, C, price(64))
    inv.observe(2.0, A, NodeStarted(node=A, incarnation=Incarnation(2)))
    for n in (A, B):
        inv.observe(3.0, n, LeaderElected(group=G, leader=A, epoch=Epoch(1)))
    inv.observe(3.5, A, price(100))
    inv.observe(3.5, B, price(99))
    assert inv.check(NET) == []
    inv.observe(4.0, C, LeaderElected(group=G, leader=A, epoch=Epoch(1)))
    inv.observe(4.5, C, price(2))
    assert inv.check(NET) == ["round 1 of cluster 1 epoch 1 allocates 201 W > supply 200 W"]
    twins = SupplyRespected(INFO)  # B and A each won epoch 1 on a side of a cut (seed 514)
    for n in (A, B, C):
        twins.observe(0.0, n, NodeStarted(node=n, incarnation=Incarnation(1)))
    twins.observe(0.5, C, LeaderElected(group=G, leader=B, epoch=Epoch(1)))
    twins.observe(1.0, C, price(120))
    for n in (A, B):
        twins.observe(2.0, n, LeaderElected(group=G, leader=A, epoch=Epoch(1)))
        twins.observe(2.5, n, price(60))
    assert twins.check(NET) == []


def test_required_power_while_supply_allows() -> None:
    """Market: S >= sum r and the bid counted: every client gets at least r."""
    inv = RequiredPowerMet(INFO)
    inv.observe(1.0, A, price(49, included=False))
    inv.observe(1.0, A, price(49, local=True))
    assert inv.check(NET) == []
    inv.observe(1.0, A, price(49))
    assert len(inv.check(NET)) == 1


def test_required_power_counts_the_supply_the_lead_may_grant() -> None:
    """Market: the supply that counts is less what a lead round within 2 s held back for
    budgets still on their leases (MarketCleared.held) and for the join reserve."""
    inv = RequiredPowerMet(INFO)  # supply 200, sum r 150
    held = MarketCleared(
        epoch=Epoch(1),
        round=1,
        supply=200,
        regime=Regime.SHORTAGE,
        price=1.0,
        deficit=10,
        clusters=1,
        bids=3,
        allocated=140,
        held=60,
    )
    inv.observe(1.0, B, held)
    inv.observe(1.1, A, price(45))  # 200 - 60 < 150: a shortage the lead had to clear
    assert inv.check(NET) == []
    inv.observe(3.2, A, price(45, rnd=2))  # the hold is 2.2 s old: r is owed again
    assert len(inv.check(NET)) == 1


def test_price_bounds_and_stale_epochs() -> None:
    """Market: prices within the grid; a client never goes back to an older epoch."""
    bounds, stale = PriceBounds(INFO), StaleEpochRefused(INFO)
    for inv in (bounds, stale):
        start([inv], A)
        inv.observe(1.0, A, price(60, epoch=2, p=1.5))
        inv.observe(2.0, A, price(60, epoch=1))
    assert bounds.check(NET) == ["0.0.0.0:1 applied price 1.5 outside [0.0, 1.0]"]
    assert stale.check(NET) == ["0.0.0.0:1 applied a price of epoch 1 after one of epoch 2"]


def test_an_invariant_watches_the_types_it_acts_on() -> None:
    """Rule: the harness passes an invariant only the notification types it watches: those
    it registered, node starts and crashes; every type if it overrides observe; and every
    type to an invariant without a watches method."""
    elected = LeaderPerEpoch(INFO)
    assert watches(elected, LeaderElected)
    assert watches(elected, NodeStarted) and watches(elected, NodeCrashed)
    assert not watches(elected, ViewChanged) and not watches(elected, MessageDelivered)
    assert not watches(ViewIdsGrow(INFO), MessageDelivered)

    class Everything(ViewIdsGrow):
        def observe(self, time: float, node: NodeId, output: object) -> None:
            super().observe(time, node, output)

    assert watches(Everything(INFO), MessageDelivered)  # it overrides observe

    class Plain:
        name = "plain"

    assert watches(Plain(), MessageDelivered)  # type: ignore[arg-type]


def test_an_invariant_with_the_base_check_is_passive() -> None:
    """Rule: an invariant whose check only reports what observing found says so (passive),
    so the harness may skip it after an event without notifications; one that checks the
    network itself (or counts its calls) is not."""
    assert ViewIdsGrow(INFO).passive and MembersRemoved(INFO).passive
    assert not LeaderPerEpoch(INFO).passive
    assert not BoundedBuffers(INFO).passive


def test_twins_still_leading_past_the_measured_bound_are_flagged() -> None:
    """Issue 21: the tolerant bound is TWIN_RESOLVE_S (1.5 s; docs/protocols/election.md,
    *Twin bound*), not 2.5 s: twins in contact that both still lead 1.6 s after their
    contact are a violation (on main they passed until 2.5 s)."""
    net = FuzzNetwork(seed=0)
    inv = Leading(INFO, strict=False)
    start([inv], A, B, C)
    inv.observe(0.0, C, LeaderElected(group=G, leader=C, epoch=Epoch(1)))
    inv.observe(0.0, B, LeaderElected(group=G, leader=B, epoch=Epoch(1)))
    assert inv.check(net) == []
    net.run_until(1.6)
    assert inv.check(net) != []
    assert TWIN_RESOLVE_S == inv.resolve_s == 1.5
