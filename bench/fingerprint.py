"""Behaviour fingerprint, for changes that must not change behaviour (not a benchmark).

    python bench/fingerprint.py --start 0 --seeds 2000 --out after.json
    python bench/fingerprint.py --compare before.json after.json

The first form runs fuzz seeds ``start .. start + seeds - 1`` of the drawn data
centre (``powergrid fuzz``'s, :func:`powergrid.sim.fuzzing.run_datacentre`) and
records each seed's trace SHA-256 and violations, then simulates every
scenario in ``examples/scenarios/`` and records the SHA-256 of its ``--trace``
file and of its ``--json`` summary (without the ``wall`` timings). Run it on
the code before and after a change (e.g. from two git worktrees) and compare:
a refactor is proven behaviour-preserving when every trace hash is the same.
A summary hash may differ while the trace is the same when the change only
adds a key to the summary; ``--compare`` prints both so the reader can tell.
``--procs`` runs seeds in parallel processes (default 2).
"""

from __future__ import annotations

import argparse
import hashlib
import json
import multiprocessing
import pathlib
import subprocess
import sys
import tempfile
from typing import Any

from powergrid.sim.fuzzing import run_datacentre

ROOT = pathlib.Path(__file__).resolve().parent.parent


def _seed(seed: int) -> tuple[int, str, list[str]]:
    r = run_datacentre(seed)
    return seed, r.trace_hash, [v.invariant for v in r.violations]


def _scenario(path: pathlib.Path, tmp: str) -> dict[str, str]:
    trace = pathlib.Path(tmp) / f"{path.stem}.jsonl"
    cmd = [sys.executable, "-m", "powergrid", "simulate", "--scenario", str(path)]
    cmd += ["--json", "--trace", str(trace), "--progress", "off"]
    p = subprocess.run(cmd, capture_output=True, text=True, check=False)
    lines = p.stdout.strip().splitlines()
    if p.returncode not in (0, 1) or not lines or not trace.exists():
        return {"error": f"exit {p.returncode}: {p.stderr[-300:]}"}
    summary = json.loads(lines[-1])
    summary.pop("wall", None)
    text = json.dumps(summary, sort_keys=True)
    return {
        "trace": hashlib.sha256(trace.read_bytes()).hexdigest(),
        "summary": hashlib.sha256(text.encode()).hexdigest(),
    }


def fingerprint(start: int, seeds: int, procs: int) -> dict[str, Any]:
    """The fingerprint of the code on ``sys.path`` (see the module docstring)."""
    with multiprocessing.Pool(procs) as pool:
        runs = pool.map(_seed, range(start, start + seeds), chunksize=10)
    with tempfile.TemporaryDirectory() as tmp:
        scenarios = {
            p.name: _scenario(p, tmp)
            for p in sorted((ROOT / "examples" / "scenarios").glob("*.toml"))
        }
    return {
        "fuzz": {str(s): {"trace": h, "violations": v} for s, h, v in runs},
        "scenarios": scenarios,
    }


def compare(before: dict[str, Any], after: dict[str, Any]) -> int:
    """Print the differences; 0 if every trace hash is the same, else 1."""
    common = sorted(set(before["fuzz"]) & set(after["fuzz"]), key=int)
    differ = [s for s in common if before["fuzz"][s]["trace"] != after["fuzz"][s]["trace"]]
    bad = [s for s in common if after["fuzz"][s]["violations"]]
    print(f"fuzz seeds compared: {len(common)}, trace hashes differing: {len(differ)}")
    if differ:
        print("  first differing seeds: " + ", ".join(differ[:20]))
    print(f"seeds with violations after: {len(bad)}")
    traces_differ = bool(differ)
    for name in sorted(set(before["scenarios"]) | set(after["scenarios"])):
        b, a = before["scenarios"].get(name, {}), after["scenarios"].get(name, {})
        same_trace = a.get("trace") is not None and a.get("trace") == b.get("trace")
        same_summary = a.get("summary") == b.get("summary")
        traces_differ |= not same_trace
        print(
            f"{name}: trace {'same' if same_trace else 'DIFFERENT'}, "
            f"summary {'same' if same_summary else 'different'}"
        )
    return 1 if traces_differ else 0


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--start", type=int, default=0, help="first seed (0)")
    parser.add_argument("--seeds", type=int, default=2000, help="how many seeds (2000)")
    parser.add_argument("--procs", type=int, default=2, help="parallel processes (2)")
    parser.add_argument("--out", type=pathlib.Path, help="write the fingerprint here")
    parser.add_argument("--compare", nargs=2, type=pathlib.Path, metavar=("BEFORE", "AFTER"))
    args = parser.parse_args()
    if args.compare:
        before, after = (json.loads(p.read_text()) for p in args.compare)
        return compare(before, after)
    if args.out is None:
        parser.error("give --out FILE (or --compare BEFORE AFTER)")
    result = fingerprint(args.start, args.seeds, args.procs)
    args.out.write_text(json.dumps(result, indent=0, sort_keys=True))
    print(f"wrote {args.out}: {len(result['fuzz'])} seeds, {len(result['scenarios'])} scenarios")
    return 0


if __name__ == "__main__":
    sys.exit(main())
