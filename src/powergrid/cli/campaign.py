"""Fuzz campaigns: many seeds, in this process, in worker processes, or on a Dask cluster.

Theory of operation
-------------------
A seed's run (:func:`powergrid.sim.fuzzing.run_datacentre`) is pure: the same
seed and options give the same result in any process on any machine. So a
campaign splits its seeds into chunks, runs each chunk anywhere, and reduces
every run to an :data:`Outcome` (a small JSON-able dict: the seed, its fault
counts, messages, virtual time, power figures and first violation) that
travels back by pickle. :func:`summarize` then merges the outcomes **sorted by
seed**, so the summary is the same, figure for figure (float sums included,
being added in the same order), whether the seeds ran serially, in ``workers``
processes (:mod:`concurrent.futures`, ``spawn`` start method) or on a Dask
cluster (``dask.distributed``, the ``cluster`` extra); only the wall time and
the rate differ. Progress is reported per chunk as chunks finish, in any order.
"""

from __future__ import annotations

import concurrent.futures
import multiprocessing
from collections import Counter
from collections.abc import Callable, Iterator, Sequence
from typing import Any

from powergrid.errors import ConfigError
from powergrid.sim.fuzzing import power_totals, run_datacentre

__all__ = ["Outcome", "chunks", "run_campaign", "run_chunk", "summarize"]

Outcome = dict[str, Any]
"""One seed's result as a campaign keeps it: ``seed``, ``faults`` (kind -> count),
``messages``, ``virtual_s``, ``power`` (figures or None), ``exempted`` (cases an
invariant did not judge, by exemption name) and ``violation`` (the first violation as
JSON, or None)."""

CHUNKS_PER_WORKER = 8
"""Chunks a campaign cuts per worker at least: enough to balance seeds of unequal cost,
few enough that each chunk's round trip (pickling, scheduling) is small next to its runs."""
MAX_CHUNK = 250
"""Seeds in one chunk at most (about 2 minutes of one core at the default sizes), so
that a long campaign reports progress and spreads over every worker."""


def violation_json(v: Any) -> dict[str, Any]:
    """A :class:`~powergrid.sim.harness.Violation` as JSON: seed, invariant, virtual time
    (seconds), detail and the command that replays it."""
    return {
        "seed": v.seed,
        "invariant": v.invariant,
        "time": v.time,
        "detail": v.detail,
        "replay": v.replay,
    }


def run_chunk(seeds: Sequence[int], common: dict[str, Any]) -> list[Outcome]:
    """Run ``seeds`` with the options ``common`` (``run_datacentre``'s keywords) and
    return their outcomes; a top-level function, so that a process or a Dask worker can
    run it. Raises :class:`ConfigError` for options ``run_datacentre`` refuses."""
    out: list[Outcome] = []
    for seed in seeds:
        r = run_datacentre(seed, **common)
        out.append(
            {
                "seed": seed,
                "faults": dict(r.faults),
                "messages": r.messages,
                "virtual_s": r.virtual_time,
                "power": r.power,
                "exempted": dict(r.exempted),
                "violation": violation_json(r.violations[0]) if r.violations else None,
            }
        )
    return out


def chunks(seeds: range, parts: int) -> list[range]:
    """``seeds`` cut into at most ``parts`` consecutive ranges of nearly equal length."""
    n = len(seeds)
    parts = max(1, min(parts, n))
    size, extra = divmod(n, parts)
    out: list[range] = []
    at = seeds.start
    for k in range(parts):
        length = size + (k < extra)
        if length:
            out.append(range(at, at + length))
        at += length
    return out


def _serial(parts: list[range], common: dict[str, Any]) -> Iterator[list[Outcome]]:
    for part in parts:
        yield run_chunk(part, common)


def _processes(parts: list[range], common: dict[str, Any], workers: int) -> Iterator[list[Outcome]]:
    context = multiprocessing.get_context("spawn")  # no state inherited: as on another host
    with concurrent.futures.ProcessPoolExecutor(workers, mp_context=context) as pool:
        futures = [pool.submit(run_chunk, part, common) for part in parts]
        for done in concurrent.futures.as_completed(futures):
            yield done.result()


def _dask(parts: list[range], common: dict[str, Any], address: str) -> Iterator[list[Outcome]]:
    try:
        from dask.distributed import Client, LocalCluster, as_completed  # noqa: PLC0415
    except ImportError:
        raise ConfigError(
            "--dask needs Dask distributed: pip install 'powergrid[cluster]'"
        ) from None
    cluster = None
    if address.startswith("local"):
        n = address.partition(":")[2]
        if n and not n.isdigit():
            raise ConfigError(f"--dask {address}: give local or local:N (N worker processes)")
        cluster = LocalCluster(  # type: ignore[no-untyped-call]
            n_workers=int(n) if n else None,
            threads_per_worker=1,
            processes=True,
            dashboard_address=None,
        )
    try:
        try:
            client = Client(cluster if cluster is not None else address)  # type: ignore[no-untyped-call]
        except (OSError, TimeoutError) as exc:
            raise ConfigError(f"--dask {address}: cannot reach the scheduler ({exc})") from None
        with client:
            futures = client.map(run_chunk, parts, common=common, pure=False)
            for done in as_completed(futures):  # type: ignore[no-untyped-call]
                yield done.result()
    finally:
        if cluster is not None:
            cluster.close()


def run_campaign(
    seeds: range,
    common: dict[str, Any],
    *,
    workers: int = 1,
    dask: str | None = None,
    progress: Callable[[int, int], None] | None = None,
) -> list[Outcome]:
    """Run every seed of ``seeds`` with ``common`` options; the outcomes sorted by seed.

    ``workers`` > 1 runs chunks in that many processes; ``dask`` (a scheduler address
    such as ``tcp://10.0.0.5:8786``, or ``local`` / ``local:N`` for a cluster of N
    worker processes on this machine) runs them on a Dask cluster instead.
    ``progress(done, bad)`` is called after each chunk with the seeds done and how many
    of them failed. Raises :class:`ConfigError` for ``workers`` < 1, or ``dask``
    without Dask installed.
    """
    if workers < 1:
        raise ConfigError(f"--workers {workers}: give 1 or more processes")
    least = -(-len(seeds) // MAX_CHUNK)
    if dask is not None:
        parts = chunks(seeds, max(CHUNKS_PER_WORKER * max(workers, 16), least))
        source = _dask(parts, common, dask)
    elif workers > 1:
        parts = chunks(seeds, max(CHUNKS_PER_WORKER * workers, least))
        source = _processes(parts, common, workers)
    else:
        parts = chunks(seeds, max(1, len(seeds) // 4))  # progress every few seeds
        source = _serial(parts, common)
    outcomes: list[Outcome] = []
    bad = 0
    for batch in source:
        outcomes.extend(batch)
        bad += sum(o["violation"] is not None for o in batch)
        if progress is not None:
            progress(len(outcomes), bad)
    outcomes.sort(key=lambda o: o["seed"])
    return outcomes


def summarize(outcomes: Sequence[Outcome], start: int, wall: float) -> dict[str, Any]:
    """The campaign's summary: seeds, first seed, violations (in seed order), faults by
    kind, messages delivered, virtual seconds and power totals, with the wall time
    (seconds) and rate. ``outcomes`` must be sorted by seed (:func:`run_campaign`)."""
    faults: dict[str, int] = {}
    exempted: Counter[str] = Counter()
    for o in outcomes:
        for kind, count in o["faults"].items():
            faults[kind] = faults.get(kind, 0) + count
        exempted.update(o.get("exempted", {}))
    return {
        "power": power_totals(o["power"] for o in outcomes),
        "exempted": dict(sorted(exempted.items())),
        "seeds": len(outcomes),
        "start": start,
        "violations": [o["violation"] for o in outcomes if o["violation"] is not None],
        "faults": dict(sorted(faults.items())),
        "messages": sum(o["messages"] for o in outcomes),
        "virtual_s": sum(o["virtual_s"] for o in outcomes),
        "wall_s": wall,
        "seeds_per_s": len(outcomes) / wall if wall > 0 else 0.0,
    }
