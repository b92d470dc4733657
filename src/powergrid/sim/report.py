"""What a run means to a person (text), to a program (JSON) and as a picture of one failover.

:func:`summary` turns a :class:`~powergrid.sim.runner.SimResult` into one
JSON-ready dict (sorted keys; everything but ``wall`` is a pure function of
the scenario). :func:`format_summary` prints it for a person;
:func:`sequence_diagram` writes the messages around the first scheduled
crash of a leader as a Mermaid sequence diagram.
"""

from __future__ import annotations

from typing import Any

from powergrid.sim.power import describe
from powergrid.sim.runner import SimResult, quiet_message, server_name
from powergrid.sim.story import format_header, format_items, story_items, warnings
from powergrid.types import BROKER_GROUP, format_node

__all__ = ["format_summary", "group_name", "sequence_diagram", "summary"]


def group_name(group: int) -> str:
    """``"brokers"`` for the broker group, ``"cluster N"`` otherwise."""
    return "brokers" if group == BROKER_GROUP else f"cluster {group}"


def summary(r: SimResult) -> dict[str, Any]:
    """The run as one JSON object (see ``docs/simulator.md`` for every key)."""
    s = r.scenario
    rounds = r.rounds
    by_regime: dict[str, int] = {}
    for rd in rounds:
        by_regime[rd.regime] = by_regime.get(rd.regime, 0) + 1
    leaderless = [e.leaderless_s for e in r.elections if e.leaderless_s is not None]
    out: dict[str, Any] = {
        "scenario": {
            "name": s.name,
            "seed": s.seed,
            "clusters": s.clusters,
            "nodes_per_cluster": s.nodes,
            "nodes": s.node_count,
            "brokers_per_cluster": s.brokers,
            "duration_s": s.duration,
            "supply_profile": s.supply.profile,
            "demand_profile": s.demand.profile,
            "loss": s.network.loss,
            "latency_s": s.network.latency,
            "failures": len(s.failures),
        },
        "seed": s.seed,
        "warnings": warnings(s),
        "violations": [
            {
                "invariant": v.invariant,
                "time": round(v.time, 6),
                "detail": v.detail,
                "seed": v.seed,
                "replay": v.replay,
            }
            for v in r.violations
        ],
        "guarantee_violations": r.guarantee_violations,
        "elections": [
            {
                "t": round(e.t, 6),
                "group": e.group,
                "epoch": e.epoch,
                "leader": format_node(e.leader),
                "leaderless_s": e.leaderless_s,
            }
            for e in r.elections
        ],
        "max_leaderless_s": max(leaderless, default=None),
        "membership": {
            "views": len(r.membership),
            "joined": sum(m.joined for m in r.membership),
            "removed": sum(m.removed for m in r.membership),
            "removed_by_reason": r.removals,
            "changes": [
                {
                    "t": round(m.t, 6),
                    "group": m.group,
                    "view_id": m.view_id,
                    "size": m.size,
                    "joined": m.joined,
                    "removed": m.removed,
                }
                for m in r.membership
            ],
        },
        "rounds": [
            {
                "t": round(rd.t, 6),
                "epoch": rd.epoch,
                "round": rd.round,
                "regime": rd.regime,
                "price": rd.price,
                "supply": rd.supply,
                "demand_required": rd.demand_required,
                "demand_max": rd.demand_max,
                "allocated": rd.allocated,
                "deficit": rd.deficit,
                "clusters": rd.clusters,
                "bids": rd.bids,
            }
            for rd in rounds
        ],
        "market": {
            "rounds": len(rounds),
            "by_regime": dict(sorted(by_regime.items())),
            "max_deficit": max((rd.deficit for rd in rounds), default=0),
            "prices_applied": r.prices_applied,
            "stale_rounds": r.stale_rounds,
        },
        "power": r.power.as_json(),
        "messages": {
            "sent": r.sent_by_type,
            "delivered": r.delivered_by_type,
            "dropped": r.dropped_by_type,
            "total_sent": sum(r.sent_by_type.values()),
            "total_delivered": sum(r.delivered_by_type.values()),
            "total_dropped": sum(r.dropped_by_type.values()),
        },
        "retransmissions": r.retransmissions,
        "notifications": r.notifications,
        "faults": r.faults,
        "nodes": r.nodes,
        "virtual_s": r.virtual_s,
        "wall": {
            "wall_s": round(r.wall_s, 3),
            "events": r.events,
            "events_per_s": round(r.events / r.wall_s) if r.wall_s > 0 else None,
        },
    }
    if r.trace_hash is not None:
        out["trace_hash"] = r.trace_hash
    return out


def _table(rows: list[list[str]], indent: str = "  ") -> list[str]:
    widths = [max(len(row[i]) for row in rows) for i in range(len(rows[0]))]
    return [
        indent + "  ".join(c.rjust(w) for c, w in zip(row, widths, strict=True)) for row in rows
    ]


def _regime_changes(r: SimResult, limit: int) -> list[list[str]]:
    rows = [
        ["t", "epoch", "round", "regime", "price", "supply", "required", "handed out", "deficit"]
    ]
    last = None
    shown = 0
    for rd in r.rounds:
        key = (rd.regime, rd.epoch)
        if key == last:
            continue
        last = key
        shown += 1
        if shown > limit:
            continue
        rows.append(
            [
                f"{rd.t:.2f}",
                str(rd.epoch),
                str(rd.round),
                rd.regime,
                f"{rd.price:.3f}",
                str(rd.supply),
                str(rd.demand_required),
                str(rd.allocated),
                str(rd.deficit),
            ]
        )
    return rows


def format_summary(r: SimResult, *, header: bool = True) -> str:
    """The summary a person reads at the end of a run: the header (unless ``header`` is
    false: it was printed before the run), the story in plain words, then the tables."""
    data = summary(r)
    lines = [format_header(r.scenario), ""] if header else []
    lines += ["What happened:", *format_items(story_items(r)), ""]
    lines += [
        f"elections ({len(r.elections)}; 'without leader': how long the group had none "
        "before, '-' when a live leader was replaced):",
    ]
    rows = [["t", "group", "epoch", "leader", "without leader"]]
    for e in r.elections[:20]:
        gap = "-" if e.leaderless_s is None else f"{e.leaderless_s:.3f}s"
        leader = f"{server_name(e.leader)} {format_node(e.leader)}"
        rows.append([f"{e.t:.3f}", group_name(e.group), str(e.epoch), leader, gap])
    lines += _table(rows)
    if len(r.elections) > 20:
        lines.append(f"  ... {len(r.elections) - 20} more (see --json)")
    mem = data["membership"]
    reasons = ", ".join(f"{k} {v}" for k, v in mem["removed_by_reason"].items()) or "none"
    lines += [
        "",
        f"membership: {mem['views']} views installed, {mem['joined']} joins, "
        f"{mem['removed']} removals ({reasons})",
        "nodes: " + ", ".join(f"{k} {v}" for k, v in r.nodes.items()),
        "",
    ]
    market = data["market"]
    regimes = ", ".join(f"{k} {v}" for k, v in market["by_regime"].items()) or "none"
    lines.append(
        f"market: {market['rounds']} rounds ({regimes}); max deficit {market['max_deficit']} W; "
        f"{market['prices_applied']} prices applied"
    )
    if r.stale_rounds:
        lines.append(f"  {r.stale_rounds} rounds by a deposed lead left out")
    if r.rounds:
        lines.append("  rounds where the regime or the lead changed:")
        lines += _table(_regime_changes(r, 15), indent="    ")
    lines.append("")
    if r.violations:
        lines.append(f"VIOLATIONS: {len(r.violations)}")
        for v in r.violations[:10]:
            lines.append(f"  {v}")
        if len(r.violations) > 10:
            lines.append(f"  ... {len(r.violations) - 10} more (see --json)")
        lines.append(f"  replay: {r.violations[0].replay}")
    else:
        lines.append("violations: none")
    lines += _guarantee_lines(r)
    msgs = data["messages"]
    top = sorted(r.sent_by_type.items(), key=lambda kv: (-kv[1], kv[0]))
    lines += [
        "",
        f"messages: {msgs['total_sent']} sent, {msgs['total_delivered']} delivered, "
        f"{msgs['total_dropped']} dropped",
        "  by kind (sent): " + ", ".join(f"{k} {v}" for k, v in top),
        "retransmissions: " + ", ".join(f"{k} {v}" for k, v in r.retransmissions.items()),
        "faults: " + (", ".join(f"{k} {v}" for k, v in r.faults.items()) or "none"),
        f"time: {r.virtual_s:g} s virtual in {r.wall_s:.2f} s wall "
        f"({r.events} endpoint calls, {data['wall']['events_per_s']} per s)",
    ]
    if r.trace_hash is not None:
        lines.append(f"trace sha256: {r.trace_hash}")
    return "\n".join(lines)


def _guarantee_lines(r: SimResult) -> list[str]:
    """The guarantee in time: the same intervals the plot draws in red."""
    p = r.power
    lines = [
        f"guarantee violations (intervals with caps in force above the supply beyond the "
        f"reaction bound, or a server below what it is owed; red in the plot): "
        f"{r.guarantee_violations}",
        f"  {describe(p)}",
    ]
    exempt = [
        name + " " + ", ".join(f"{v:g} {k.replace('_', ' ')}" for k, v in fig.items())
        for name, fig in p.exempt.items()
        if any(fig.values())
    ]
    if exempt:
        lines.append(
            f"  of which exempt from the strict check (not yet held, docs/protocols/market.md): "
            f"{'; '.join(exempt)}"
        )
    return lines


def sequence_diagram(r: SimResult, *, limit: int = 80) -> str:
    """Markdown with a Mermaid sequence diagram of the first scheduled failover.

    Shows the messages delivered among the group's broker-capable nodes from
    the crash until one second after the last election of that group within
    7 s of it
    (routine heartbeats, acks and stability traffic left out), at most
    ``limit`` of them.
    """
    if r.failover is None:
        return (
            "# Failover\n\nThis run crashed no leader (add a crash_lead or crash_broker "
            "failure to the scenario), so there is no failover to draw.\n"
        )
    crash_t, group, crashed = r.failover
    after = [e.t for e in r.elections if e.group == group and crash_t < e.t <= crash_t + 7.0]
    elected = after[0] if after else None
    end = (after[-1] if after else crash_t + 6.0) + 1.0
    events = [c for c in r.capture if c.t <= end and not quiet_message(c.name)]
    people = sorted({c.src for c in events} | {c.dst for c in events} | {crashed})
    alias = {n: f"n{i}" for i, n in enumerate(people)}
    who = "lead broker" if group == BROKER_GROUP else "broker of " + group_name(group)
    title = f"Failover of the {who} ({format_node(crashed)}) at t={crash_t:.3f} s"
    lines = [f"# {title}", "", f"Scenario {r.scenario.name!r}, seed {r.scenario.seed}. ", ""]
    if elected is not None:
        lines.append(
            f"New leader first reported at t={elected:.3f} s "
            f"({elected - crash_t:.3f} s after the crash); {len(after)} election(s) of "
            f"this group within 7 s."
        )
    else:
        lines.append("No new leader was reported within the capture window.")
    lines += ["", "```mermaid", "sequenceDiagram"]
    for n in people:
        lines.append(f"    participant {alias[n]} as {format_node(n)}")
    shown = 0
    for c in events:
        if c.name == "CRASH":
            lines.append(f"    Note over {alias[c.src]}: t={c.t:.3f} crashed")
            continue
        if shown >= limit:
            continue
        shown += 1
        label = c.name if c.group < 0 else f"{c.name} [{group_name(c.group)}] t={c.t:.3f}"
        lines.append(f"    {alias[c.src]}->>{alias[c.dst]}: {label}")
    rest = sum(1 for c in events if c.name != "CRASH") - shown
    if rest > 0:
        lines.append(f"    Note over {alias[people[0]]}: ... {rest} more messages")
    lines += ["```", ""]
    return "\n".join(lines)
