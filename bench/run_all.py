"""Run every benchmark (each in a subprocess, with --json) and print one table.

Each row: the figure, its value, its baseline where there is one (measured in
the same run, or a published anchor), the ratio, and the target. ``--json``
prints the same rows and every bench's full output as one JSON object;
``--quick`` passes ``--quick`` on (tiny sizes).
"""

from __future__ import annotations

import json
import subprocess
import sys
from collections.abc import Callable
from pathlib import Path
from typing import Any

from _common import Row, emit, parse_args
from realnet import rows as realnet_rows

HERE = Path(__file__).resolve().parent
BENCHES = ("multicast_core", "membership", "election", "market", "udp", "realnet", "scale")


def run(name: str, quick: bool) -> dict[str, Any]:
    """One bench's JSON output."""
    cmd = [sys.executable, str(HERE / f"{name}.py"), "--json", *(["--quick"] if quick else [])]
    done = subprocess.run(cmd, check=True, capture_output=True, text=True)
    result: dict[str, Any] = json.loads(done.stdout)
    return result


def rows(res: dict[str, dict[str, Any]]) -> list[Row]:
    """The table: one row per figure."""
    mc, mb, el, mk, ud, rn, sc = (res[b] for b in BENCHES)
    out: list[Row] = [
        (
            "multicast deliveries/CPU s (0% loss)",
            mc["deliveries_per_cpu_s"],
            mc["baseline_per_cpu_s"],
            mc["ratio"],
            "ratio >= 0.25",
        ),
        (
            "multicast Xmit per lost copy (10% loss)",
            mc["resent_per_lost_10pct"],
            None,
            None,
            "<= 1.5",
        ),
        ("multicast peak resend buffer (msgs)", mc["peak_resend_buffer"], None, None, "<= 10,000"),
        (
            "membership detection median (s)",
            mb["detect_median_s"],
            5.5,
            mb["detect_median_s"] / 5.5,
            "< Akka 5.5 s",
        ),
        ("membership detection p99 (s)", mb["detect_p99_s"], None, None, ""),
    ]
    for loss, v in sorted(mb["wrongful_removals_per_node_hour"].items(), key=lambda kv: int(kv[0])):
        out.append(
            (
                f"membership wrongful removals/node-h ({loss}% loss)",
                v,
                None,
                None,
                "0 at 0%" if loss == "0" else "",
            )
        )
    for case in ("leader_crash", "worst_case"):
        sizes = sorted(el[case], key=int)
        big = sizes[-1]
        out.append(
            (
                f"election {case} n={big}: messages",
                el[case][big]["messages"],
                None,
                None,
                "" if case == "worst_case" else "O(1)",
            )
        )
        out.append((f"election {case} n={big}: seconds", el[case][big]["seconds"], None, None, ""))
    for n, s in sorted(mk["clear_seconds"].items(), key=lambda kv: int(kv[0])):
        out.append((f"market clear {n} bids (s)", s, None, None, ""))
    out.append(
        (
            f"market messages/round ({mk['data_centre']})",
            mk["messages_per_round"],
            mk["estimate_n_plus_3b"],
            mk["messages_per_round"] / mk["estimate_n_plus_3b"],
            "<= 1.1 x (N + 3B)",
        )
    )
    out.append(("market bid change -> price (s)", mk["bid_to_price_s"], None, None, ""))
    power = mk  # (its admission, overload and starvation keys are top-level)
    out.append(
        (
            "market join -> admitted, p99 (s)",
            power["admission_latency_s"]["p99"],
            None,
            None,
            "<= 1.0",
        )
    )
    out.append(
        ("market overload beyond the bound (W*s)", power["overload_watt_seconds"], None, None, "0")
    )
    out.append(("market starved (server-s)", power["starved_server_seconds"], None, None, "0"))
    for r, key, target in ((1, "ratio_1_receiver", 0.85), (3, "ratio_3_receivers", 0.6)):
        out.append(
            (
                f"UDP multicast goodput msgs/s, {r} receiver(s)",
                ud["goodput"][f"powergrid_{r}"]["msgs_per_s"],
                ud["goodput"][f"raw_{r}"]["msgs_per_s"],
                ud[key],
                f"ratio >= {target}",
            )
        )
    for pct, key, target in ((5, "ratio_5pct_loss", 0.5), (1, "loss_1pct_ratio", 0.7)):
        out.append(
            (
                f"UDP multicast goodput msgs/s, 3 receivers, {pct}% loss",
                ud["goodput"][f"powergrid_3_loss{pct}"]["msgs_per_s"],
                ud["goodput"]["raw_3"]["msgs_per_s"],
                ud[key],
                f"ratio >= {target}",
            )
        )
    phases = ud["failover_phases_median_s"]
    out.append(
        (
            "UDP failover kill -9 -> republished new-epoch price, median (s)",
            phases["republished"],
            None,
            None,
            "<= 1.0",
        )
    )
    out.append(
        (
            "UDP failover kill -9 -> counted new-epoch price, median (s)",
            ud["failover_median_s"],
            None,
            None,
            "<= 1.0",
        )
    )
    out.extend(realnet_rows(rn))
    duration = sc["duration_s"]
    sizes = sorted(sc["wall_s"], key=int)
    for n in sizes:
        target = "<= 60 s" if n == "10000" else ""
        out.append(
            (f"simulate {n} nodes x {duration:g} s: CPU s", sc["cpu_s"][n], None, None, target)
        )
        out.append(
            (f"simulate {n} nodes x {duration:g} s: wall s", sc["wall_s"][n], None, None, "")
        )
        out.append((f"simulate {n} nodes: peak RSS (MB)", sc["peak_rss_mb"][n], None, None, ""))
    out.append(
        (
            f"simulate growth {sizes[0]} -> {sizes[-1]} nodes (CPU, linear = 10)",
            sc["cpu_growth_ratio"],
            None,
            None,
            "<= 12",
        )
    )
    return out


def main(run_bench: Callable[[str, bool], dict[str, Any]] = run) -> None:
    """Run every bench with ``run_bench(name, quick)`` and print the table (or JSON)."""
    args = parse_args(__doc__.splitlines()[0])
    res = {name: run_bench(name, args.quick) for name in BENCHES}
    table = rows(res)
    result = {
        "rows": [
            dict(zip(("figure", "value", "baseline", "ratio", "target"), r, strict=True))
            for r in table
        ],
        "benches": res,
    }
    emit(
        args,
        result,
        "powergrid benchmarks (baselines measured in the same run or published anchors)",
        table,
    )


if __name__ == "__main__":
    main()
