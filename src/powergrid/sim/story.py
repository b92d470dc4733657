"""The story of a run in plain words: what the scenario is, and what happened in it.

Theory of operation
-------------------
Everything here is read from the :class:`~powergrid.sim.scenario.Scenario`
and the :class:`~powergrid.sim.runner.SimResult` (no figure is typed), so
the text a person reads after ``make demo`` and the section of
``docs/simulator.md`` that ``docs/demo_section.py`` regenerates say the same
thing. :func:`scenario_items` lists what the run is (servers, network,
demand, supply with the times of its steps, the scheduled failures);
:func:`story_items` lists, in time order, what happened (the first
elections and the first market round, each scheduled failure and the
elections that followed, each supply step and the round that answered it,
and the outcome). Each item is ``(label, text)``; :func:`format_items`
prints them for a terminal, :func:`markdown` for the docs. Pure functions,
no I/O.
"""

from __future__ import annotations

import re
import textwrap
from collections.abc import Sequence

from powergrid.sim.failures import Marker, server_name
from powergrid.sim.runner import Election, Round, SimResult
from powergrid.sim.scenario import Failure, Scenario
from powergrid.types import BROKER_GROUP

__all__ = [
    "format_header",
    "format_items",
    "markdown",
    "scenario_items",
    "story_items",
    "title",
    "warnings",
]

Item = tuple[str, str]
"""``(label, text)``: a label (``"supply"``, ``"10.00 s"``) and a sentence or two."""

_WIDTH = 100
_UNIT = re.compile(r"(\d) (W|s|ms)\b")


def title(s: Scenario) -> str:
    """The run's one-line title."""
    return (
        f"{s.name}: {s.clusters} clusters x {s.nodes} servers, {s.duration:g} s of virtual "
        f"time, seed {s.seed}"
    )


def _s(t: float) -> str:
    return f"{t:.2f} s"


def _pct(x: float) -> str:
    return f"{x * 100:g}%"


def _role(group: int) -> str:
    return "lead broker" if group == BROKER_GROUP else f"broker of cluster {group}"


def _failure(f: Failure) -> str:
    act = f.action
    server = f"server c{f.cluster}.{f.node}"
    where = "every cluster" if f.cluster == 0 else f"cluster {f.cluster}"
    if act == "crash_lead":
        text = "the lead broker crashes"
    elif act == "crash_broker":
        text = f"the broker of cluster {f.cluster} crashes"
    elif act == "crash":
        text = f"{server} crashes"
    elif act == "restart":
        text = f"{server} restarts"
    elif act == "partition":
        text = f"cluster {f.cluster} is cut off from the rest of the network"
    elif act == "isolate":
        text = f"{server} is cut off from the rest of the network"
    elif act == "heal":
        text = "every partition heals"
    elif act == "join":
        text = f"{f.count} new server(s) join {where}"
    elif act == "leave":
        text = f"{f.count} server(s) of {where} leave"
    else:
        text = f"datagram loss becomes {_pct(f.loss)}"
    if f.restart_after > 0:
        text += f"; it restarts {f.restart_after:g} s later, at {f.at + f.restart_after:g} s"
    if f.heal_after > 0:
        text += f"; it heals {f.heal_after:g} s later, at {f.at + f.heal_after:g} s"
    return f"at {f.at:g} s {text}"


def _supply(s: Scenario) -> str:
    sp = s.supply
    if sp.profile == "constant":
        return f"a constant {s.supply_at(0.0)} W"
    if sp.profile == "solar":
        day = sp.period or s.duration
        return (
            f"solar: {sp.base} W at night, up to {sp.base + sp.peak} W at noon, a day lasting "
            f"{day:g} s"
        )
    steps = [f"{w} W from {t:g} s" for t, w in sp.steps]
    if len(steps) > 8:
        lo = min(w for _, w in sp.steps)
        hi = max(w for _, w in sp.steps)
        return f"{len(steps)} steps between {lo} W and {hi} W (from {sp.file or 'the file'})"
    return ", ".join(steps)


def warnings(s: Scenario) -> list[str]:
    """What in the scenario will hurt, said before the run: today, a supply of 0 W (the
    broker-capable servers have nothing to hand out: a lead broker then gives every
    server allocation 0, a shortage)."""
    sp = s.supply
    if sp.profile == "constant":
        zero = [0.0] if s.supply_at(0.0) == 0 else []
    elif sp.profile in ("steps", "file"):
        zero = [t for t, w in sp.steps if w == 0]
    else:
        zero = [0.0] if sp.base == 0 and sp.peak == 0 else []
    return [
        f"the supply is 0 W from {t:g} s: the broker-capable servers have no supply, so "
        "while it lasts the lead broker gives every server allocation 0 (a shortage)"
        for t in zero
    ]


def scenario_items(s: Scenario) -> list[Item]:
    """What the run is: servers, network, demand, supply, failures (from the scenario)."""
    d = s.demand
    net = s.network
    latency = f"a datagram takes {net.latency * 1000:g} ms"
    if net.jitter:
        latency += f" plus up to {net.jitter * 1000:g} ms of jitter"
    loss = f"{_pct(net.loss)} of datagrams are lost" if net.loss else "no datagram is lost"
    shape = {
        "steady": "steady",
        "diurnal": f"rising and falling by {_pct(d.amplitude)} over {d.period or s.duration:g} s",
        "random_walk": f"wandering within {_pct(d.amplitude)}",
        "batch": f"{_pct(d.fraction)} of the servers run batch jobs that come and go",
    }[d.profile]
    top = round(d.required * (1 + d.headroom))
    floor = round(d.required * d.floor_ratio)
    items: list[Item] = [
        (
            "servers",
            f"{s.clusters} clusters of {s.nodes} servers ({s.node_count} in all; server i of "
            f"cluster N is called cN.i). In each cluster {min(s.brokers, s.nodes)} may be "
            "elected its broker; the brokers elect one lead broker, which clears the market: "
            "it sets the price and every server's power cap.",
        ),
        ("network", f"{latency}; {loss}."),
        (
            "demand",
            f"each server requires about {d.required} W to run its work as promised ({shape}), "
            f"must keep at least {floor} W and could use up to {top} W; together about "
            f"{s.node_count * d.required} W required.",
        ),
        ("supply", _supply(s) + "."),
    ]
    if s.failures:
        items += [("failures", "; ".join(_failure(f) for f in s.failures) + ".")]
    else:
        items += [("failures", "none scheduled.")]
    items += [("WARNING", w[0].upper() + w[1:] + ".") for w in warnings(s)]
    return items


def _marker(m: Marker) -> str:
    """A scheduled event that happened, as a sentence without its final stop."""
    who = server_name(m.node) if m.node else "nobody"
    kind, _, rest = m.what.partition(" x")
    if m.what == "crash lead broker":
        return f"The lead broker {who} crashed"
    if m.what == "crash broker":
        return f"{who}, the {_role(m.group)}, crashed"
    if m.what == "crash":
        return f"Server {who} crashed"
    if m.what == "restart":
        return f"Server {who} restarted (a new life of the same id)"
    if m.what in ("partition", "isolate"):
        cut = f"cluster {m.group}" if m.what == "partition" else "a server"
        until = f" until {_s(m.until)}" if m.until is not None else ""
        return f"The network cut {cut} off{until}; each side may elect its own lead broker"
    if m.what == "heal":
        return "The network healed: every partition ended"
    where = "every cluster" if m.group <= 0 else f"cluster {m.group}"
    if kind == "join":
        return f"{rest} new server(s) joined {where}"
    if kind == "leave":
        return f"{rest} server(s) of {where} left gracefully"
    if m.what.startswith("loss "):
        return f"Datagram loss became {_pct(float(m.what[5:]))}"
    return m.what[0].upper() + m.what[1:]


def _first_round_after(rounds: Sequence[Round], t: float, supply: int) -> Round | None:
    return next((rd for rd in rounds if rd.t >= t and rd.supply == supply), None)


def _elections_text(elections: Sequence[Election], previous: dict[int, int]) -> list[str]:
    """One clause per election, in order; ``previous`` (group -> leader) is updated."""
    parts = []
    for e in elections:
        who = server_name(e.leader)
        if e.leaderless_s is not None:
            parts.append(
                f"{who} became {_role(e.group)} at {_s(e.t)}, after {e.leaderless_s:.2f} s "
                "without one"
            )
        elif e.group in previous and previous[e.group] != e.leader:
            parts.append(
                f"{who} took over as {_role(e.group)} from {server_name(previous[e.group])} at "
                f"{_s(e.t)} (the higher rank, then the higher id, wins)"
            )
        else:
            parts.append(f"{who} became {_role(e.group)} again at {_s(e.t)}")
        previous[e.group] = e.leader
    return parts


def _sentence(parts: list[str]) -> str:
    return "; ".join(parts) + "." if parts else ""


def story_items(r: SimResult) -> list[Item]:
    """What happened, in time order, in plain words (from the run's records)."""
    s = r.scenario
    events: list[tuple[float, int, Item]] = []
    previous: dict[int, int] = {}
    elections = sorted(r.elections, key=lambda e: e.t)
    markers = sorted(
        (m for m in r.markers if m.what not in ("supply",)), key=lambda m: (m.t, m.what)
    )
    first_marker = markers[0].t if markers else s.duration
    start = [e for e in elections if e.t < first_marker]
    clusters = [e for e in start if e.group != BROKER_GROUP and e.leaderless_s is not None]
    lead = [e for e in start if e.group == BROKER_GROUP]
    parts = []
    if clusters:
        lo = min(e.t for e in clusters)
        hi = max(e.t for e in clusters)
        parts.append(
            f"{len(clusters)} clusters elected their brokers between {_s(lo)} and {_s(hi)}"
        )
    for e in start:
        previous[e.group] = e.leader
    if lead:
        parts.append(
            f"the brokers made {server_name(lead[0].leader)} lead broker at {_s(lead[0].t)}"
        )
    if r.rounds:
        parts.append(f"the first market round cleared at {_s(r.rounds[0].t)}")
    else:
        parts.append("no market round was cleared")
    events.append((0.0, 0, ("start", _sentence(parts))))
    # scheduled failures and the elections up to the next one
    for i, m in enumerate(markers):
        end = markers[i + 1].t if i + 1 < len(markers) else s.duration + 1
        what = _marker(m)
        after = [e for e in elections if m.t <= e.t < end]
        clauses = _elections_text(after, previous)
        text = what + "." + (" Then " + _sentence(clauses) if clauses else "")
        if m.what.startswith("crash") and m.group == BROKER_GROUP:
            new = next((rd for rd in r.rounds if rd.t > m.t), None)
            if new is not None:
                text += (
                    f" The servers kept the caps of the last round until the new lead's first "
                    f"round at {_s(new.t)}."
                )
        events.append((m.t, 1, (_s(m.t), text)))
    # supply steps and the rounds that answered them
    sp = s.supply
    if sp.profile in ("steps", "file") and len(sp.steps) <= 8:
        before = sp.steps[0][1] if sp.steps else 0
        for t, watts in sp.steps:
            if t <= 0:
                before = watts
                continue
            word = "dropped" if watts < before else "rose"
            text = f"The supply {word} from {before} W to {watts} W."
            rd = _first_round_after(r.rounds, t, watts)
            if rd is None:
                text += " No round cleared it before the end."
            else:
                when = "at once" if rd.t - t < 0.05 else f"at the next round, {_s(rd.t)}"
                if rd.regime == "shortage":
                    text += (
                        f" That is below the {rd.demand_required} W the servers required: a "
                        f"shortage. The lead cleared {when} ({_s(rd.t)}): every server kept its "
                        f"floor, {rd.allocated} W were handed out and {rd.deficit} W of "
                        "required power went unmet (the deficit each price announces)."
                    )
                else:
                    text += (
                        f" The lead cleared {when}: {rd.allocated} W handed out, at least "
                        f"the {rd.demand_required} W required ({rd.regime} market)."
                    )
            events.append((t, 2, (_s(t), text)))
            before = watts
    events.sort(key=lambda x: (x[0], x[1]))
    items = [item for _, _, item in events]
    items.append(("outcome", _outcome(r)))
    return items


def _outcome(r: SimResult) -> str:
    by_regime: dict[str, int] = {}
    for rd in r.rounds:
        by_regime[rd.regime] = by_regime.get(rd.regime, 0) + 1
    kinds = ", ".join(f"{v} {k}" for k, v in sorted(by_regime.items()))
    parts = [f"{len(r.rounds)} market rounds" + (f" ({kinds})" if kinds else "")]
    p = r.power
    overload = p.overload_ws + p.overload_in_bound_ws
    if r.guarantee_violations:
        parts.append(
            f"the power promise did not hold at every instant: {r.guarantee_violations} "
            "interval(s), red on the plot, explained by the guarantee lines below"
        )
    elif r.rounds and not p.overload_ws and not p.starved_server_s:
        parts.append(
            "the power promise held at every instant: every server had at least what it "
            "was owed, and the caps stayed within the supply"
            + (" but for the reaction bound after a drop" if overload else "")
        )
    if overload:
        within = (
            f", {p.overload_in_bound_ws:.1f} of them within the reaction bound after a supply drop"
            if p.overload_in_bound_ws
            else ""
        )
        parts.append(
            f"the caps the servers held added up to more than the supply for "
            f"{overload:.1f} watt-seconds in all (by at most {p.max_excess_w} W){within}"
        )
    if p.starved_server_s:
        parts.append(
            f"servers held less than they were owed for {p.starved_server_s:.1f} "
            "server-seconds in all"
        )
    if r.stale_rounds:
        parts.append(
            f"{r.stale_rounds} rounds cleared by a lead broker that had already been replaced "
            "(the other side of a partition) were not counted"
        )
    checks = (
        "every invariant held"
        if not r.violations
        else f"{len(r.violations)} invariant violation(s), listed below"
    )
    return _sentence(parts)[:-1] + f". {checks[0].upper()}{checks[1:]}."


def format_items(items: Sequence[Item], *, width: int = _WIDTH) -> list[str]:
    """The items as indented, wrapped lines for a terminal."""
    label_w = max((len(label) for label, _ in items), default=0)
    lines = []
    for label, text in items:
        head = f"  {label:>{label_w}}  "
        kept = _UNIT.sub("\\1\0\\2", text)  # a number stays on the line of its unit
        wrapped = textwrap.wrap(
            kept, width=width, initial_indent=head, subsequent_indent=" " * len(head)
        )
        lines += [line.replace("\0", " ") for line in wrapped] or [head.rstrip()]
    return lines


def format_header(s: Scenario) -> str:
    """The title and what the run is, for a terminal: what a person reads first (and
    what ``powergrid simulate`` and ``demo`` print before they run)."""
    return "\n".join(
        [f"== {title(s)} ==", "", "What this run is:", *format_items(scenario_items(s))]
    )


def markdown(r: SimResult) -> str:
    """The scenario and the story as Markdown (``docs/simulator.md``, "Reading the demo")."""
    s = r.scenario
    lines = [f"The run: **{title(s)}**.", ""]
    lines += [f"* **{label}**: {text}" for label, text in scenario_items(s)]
    lines += ["", "What happened:", ""]
    lines += [f"* **{label}**: {text}" for label, text in story_items(r)]
    return "\n".join(lines) + "\n"
