"""Shared helpers of the benchmarks: arguments, CPU timing, percentiles, output.

Every bench script takes ``--json`` (print one JSON object on stdout) and
``--quick`` (tiny sizes, for the smoke test) and prints a human table
otherwise. Figures are measured in CPU seconds (``time.process_time``) or in
virtual seconds of the memory network; a rate is always shown next to a
baseline measured in the same run, never as a bare number to compare across
machines.
"""

from __future__ import annotations

import argparse
import gc
import json
import math
import socket
import sys
import time
from collections.abc import Callable, Sequence
from typing import Any

import attrs

from powergrid.events import Received
from powergrid.protocols.multicast import Deliver
from powergrid.types import Incarnation, NodeId
from powergrid.wire import Data

Row = tuple[str, Any, Any, Any, str]
"""A table row: figure, value, baseline (or None), ratio (or None), target (or "")."""


def parse_args(description: str) -> argparse.Namespace:
    """The common command line: ``--json`` and ``--quick``."""
    parser = argparse.ArgumentParser(description=description)
    parser.add_argument("--json", action="store_true", help="print one JSON object on stdout")
    parser.add_argument("--quick", action="store_true", help="tiny sizes (smoke test)")
    return parser.parse_args()


def cpu_time(fn: Callable[[], object]) -> tuple[float, object]:
    """Run ``fn`` once; its CPU seconds (process_time) and its result.

    Garbage left by earlier code is collected first, so it is not counted."""
    gc.collect()
    t0 = time.process_time()
    result = fn()
    return time.process_time() - t0, result


def best_rate(fn: Callable[[int], object], n: int, repeats: int = 3) -> float:
    """Calls per CPU second of ``fn(n)`` (which does ``n`` units), best of ``repeats``."""
    best = math.inf
    for _ in range(repeats):
        gc.collect()  # earlier garbage is not this loop's cost
        t0 = time.process_time()
        fn(n)
        best = min(best, time.process_time() - t0)
    return n / max(best, 1e-9)


def percentile(values: Sequence[float], q: float) -> float:
    """The ``q`` quantile (0..1) of ``values``, nearest rank; NaN if empty."""
    if not values:
        return math.nan
    ordered = sorted(values)
    rank = max(1, math.ceil(q * len(ordered)))
    return ordered[rank - 1]


@attrs.frozen(kw_only=True)
class _Bare:
    """The thinnest machine the contract allows: one event in, one action out."""

    def handle(self, event: Received, now: float) -> list[object]:
        msg = event.message
        assert isinstance(msg, Data)
        return [
            Deliver(
                origin=event.sender,
                incarnation=event.incarnation,
                seq=msg.seq,
                kind=msg.kind,
                payload=msg.payload,
            )
        ]


def baseline_rate(n: int) -> float:
    """Events per CPU second of a bare loop: build a frozen attrs ``Received``, call a
    machine whose ``handle`` returns ``[Deliver]``. The floor any machine pays."""
    machine = _Bare()
    msg = Data(seq=1, kind=0, payload=bytes(64))
    sender, inc = NodeId(1 << 16 | 1), Incarnation(1)

    def loop(k: int) -> None:
        handle = machine.handle
        for _ in range(k):
            handle(Received(sender=sender, incarnation=inc, message=msg), 0.0)

    return best_rate(loop, n)


def free_port(host: str = "127.0.0.1") -> int:
    """A UDP port the kernel reports free on ``host`` (IPv4 or IPv6) now (another
    process may take it later)."""
    family = socket.AF_INET6 if ":" in host else socket.AF_INET
    with socket.socket(family, socket.SOCK_DGRAM) as s:
        s.bind((host, 0))
        port: int = s.getsockname()[1]
        return port


def fmt(value: Any) -> str:
    """A figure for the table: 3 significant digits for floats, '-' for None."""
    if value is None:
        return "-"
    if isinstance(value, float):
        if math.isnan(value):
            return "n/a"
        if value == 0 or 0.001 <= abs(value) < 1e6:
            return f"{value:.3g}" if abs(value) < 1000 else f"{value:,.0f}"
        return f"{value:.3g}"
    if isinstance(value, int):
        return f"{value:,}"
    return str(value)


def print_table(title: str, rows: Sequence[Row], notes: Sequence[str] = ()) -> None:
    """A human table: figure, value, baseline, ratio, target; then notes."""
    header = ("figure", "value", "baseline", "ratio", "target")
    cells = [header, *((r[0], fmt(r[1]), fmt(r[2]), fmt(r[3]), r[4]) for r in rows)]
    widths = [max(len(c[i]) for c in cells) for i in range(5)]
    print(title)
    for i, c in enumerate(cells):
        print(
            "  ".join(c[k].ljust(widths[k]) if k == 0 else c[k].rjust(widths[k]) for k in range(5))
        )
        if i == 0:
            print("  ".join("-" * w for w in widths))
    for note in notes:
        print(f"  * {note}")


def emit(
    args: argparse.Namespace,
    result: dict[str, Any],
    title: str,
    rows: Sequence[Row],
    notes: Sequence[str] = (),
) -> None:
    """Print ``result`` as one JSON object (``--json``) or the table."""
    if args.json:
        json.dump(result, sys.stdout, sort_keys=True)
        sys.stdout.write("\n")
    else:
        print_table(title, rows, notes)
