"""Smoke test of the benchmarks: each starts with --quick --json and prints its keys.

Benchmarks are never timed tests: this only checks that they run and report.
"""

from __future__ import annotations

import functools
import importlib
import json
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest

BENCH = Path(__file__).resolve().parent.parent / "bench"

KEYS = {
    "multicast_core": {
        "deliveries_per_cpu_s",
        "baseline_per_cpu_s",
        "ratio",
        "resent_per_lost_10pct",
        "peak_resend_buffer",
    },
    "membership": {"detect_median_s", "detect_p99_s", "wrongful_removals_per_node_hour"},
    "election": {"leader_crash", "worst_case"},
    "market": {
        "clear_seconds",
        "messages_per_round",
        "admission_latency_s",
        "overload_watt_seconds",
        "starved_server_seconds",
    },
    "udp": {
        "ratio_1_receiver",
        "ratio_3_receivers",
        "ratio_5pct_loss",
        "loss_1pct_ratio",
        "flow_slow_ratio",
        "flow_slow_lost",
        "flow_slow_removals",
        "noflow_slow_lost",
        "failover_median_s",
        "ratio_1_receiver_asyncio",
        "ratio_encrypted_vs_unkeyed",
        "ratio_signed_vs_unkeyed",
        "ratio_1mib_goodput",
    },
    "realnet": {
        "startup_s",
        "first_price_s",
        "quiet_datagrams_per_node_s",
        "detect_s",
        "leader_failover_s",
        "failover_s",
    },
    "scale": {
        "wall_s",
        "cpu_s",
        "peak_rss_mb",
        "growth_ratio",
        "cpu_growth_ratio",
        "baseline_growth_ratio",
    },
}


BENCHES = (*sorted(KEYS), "fanout")
ALONE = "realnet"
"""Times real processes' startup and failure detection: run alone, on an idle machine."""


def _start(name: str) -> subprocess.Popen[str]:
    return subprocess.Popen(
        [sys.executable, str(BENCH / f"{name}.py"), "--quick", "--json"],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )


@functools.cache
def _started() -> dict[str, subprocess.Popen[str]]:
    """Every bench but ``ALONE``, started at once: they mostly wait on real time (views
    forming, a failover), so together they take about as long as the slowest."""
    return {name: _start(name) for name in BENCHES if name != ALONE}


@pytest.fixture(scope="module", autouse=True)
def _stop_benches() -> Iterator[None]:
    yield
    if not _started.cache_info().currsize:
        return  # no test here started them (a run of other tests of this file)
    for proc in _started().values():
        if proc.poll() is None:
            proc.kill()
            proc.communicate()


@functools.cache
def _run(name: str) -> dict[str, object]:
    """The bench's JSON output (``ALONE`` runs once the others have ended)."""
    if name == ALONE:
        for other in _started():
            _run(other)
        proc = _start(name)
    else:
        proc = _started()[name]
    out, err = proc.communicate(timeout=120)
    assert proc.returncode == 0, f"bench/{name}.py exited {proc.returncode}: {err[-2000:]}"
    result: dict[str, object] = json.loads(out)
    return result


@pytest.mark.parametrize("name", sorted(KEYS))
def test_bench_prints_its_keys(name: str) -> None:
    """Each bench, run with --quick --json, prints one JSON object with its keys."""
    result = _run(name)
    assert KEYS[name] <= result.keys()


def test_fanout_bench_reports_both_modes() -> None:
    """bench/fanout.py (not in run_all): datagrams per send and goodput per group size and
    mode; with fan-out the sender sends more datagrams per group send than with multicast,
    and as many on IPv6 loopback as on IPv4 (the same protocol, ratio_ipv6 the goodputs')."""
    result = _run("fanout")
    per = result["datagrams_per_send"]
    assert isinstance(per, dict) and set(per) == {"multicast", "fanout", "fanout_ipv6"}
    assert set(per["fanout"]) == {"2", "3"} and per["fanout"]["3"] > per["multicast"]["3"]
    assert per["fanout_ipv6"]["3"] > per["multicast"]["3"]
    assert {"msgs_per_s", "ratio", "ratio_ipv6"} <= result.keys()


def test_membership_reports_loss_levels() -> None:
    """Wrongful removals are keyed by loss percent as strings "0", "10", "30"."""
    result = _run("membership")
    wrongful = result["wrongful_removals_per_node_hour"]
    assert isinstance(wrongful, dict)
    assert set(wrongful) == {"0", "10", "30"}


def test_election_reports_messages_and_seconds() -> None:
    """Election results map group size (string) to messages and seconds."""
    result = _run("election")
    for case in ("leader_crash", "worst_case"):
        table = result[case]
        assert isinstance(table, dict) and table
        for entry in table.values():
            assert {"messages", "seconds"} <= entry.keys()


def test_realnet_measures_every_figure_of_one_run() -> None:
    """realnet --quick: one run of 3 processes that did not time out, each figure a
    positive {median, max} with median <= max, and datagrams were counted."""
    result = _run("realnet")
    assert result["failed_runs"] == 0 and result["runs"] == 1
    for key in KEYS["realnet"]:
        fig = result[key]
        assert isinstance(fig, dict)
        assert 0 < fig["median"] <= fig["max"], key
    assert result["failover_s"] == result["leader_failover_s"]


def test_run_all_table(monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]) -> None:
    """run_all --quick --json gathers every bench into one set of rows (from the runs
    the tests above made: each bench runs once in the suite)."""
    monkeypatch.syspath_prepend(str(BENCH))
    monkeypatch.setattr(sys, "argv", ["run_all.py", "--quick", "--json"])
    run_all = importlib.import_module("run_all")
    quick: list[bool] = []

    def cached(name: str, q: bool) -> dict[str, object]:
        quick.append(q)
        return _run(name)

    run_all.main(run_bench=cached)
    result = json.loads(capsys.readouterr().out)
    assert set(result["benches"]) == set(KEYS) and quick == [True] * len(KEYS)
    assert all({"figure", "value", "target"} <= row.keys() for row in result["rows"])


def test_fingerprint_is_stable_and_compare_finds_a_changed_trace(tmp_path: Path) -> None:
    """bench/fingerprint.py: the same code gives the same fingerprint, and --compare exits 1
    and names the seed when one trace hash differs (the proof a refactor relies on)."""
    a, b = tmp_path / "a.json", tmp_path / "b.json"
    for out in (a, b):
        cmd = [sys.executable, str(BENCH / "fingerprint.py"), "--start", "5", "--seeds", "3"]
        subprocess.run([*cmd, "--procs", "1", "--out", str(out)], check=True, timeout=300)
    same = subprocess.run(
        [sys.executable, str(BENCH / "fingerprint.py"), "--compare", str(a), str(b)],
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )
    assert same.returncode == 0, same.stdout
    assert "trace hashes differing: 0" in same.stdout
    changed = json.loads(b.read_text())
    assert set(changed["fuzz"]) == {"5", "6", "7"}
    changed["fuzz"]["6"]["trace"] = "0" * 64
    b.write_text(json.dumps(changed))
    diff = subprocess.run(
        [sys.executable, str(BENCH / "fingerprint.py"), "--compare", str(a), str(b)],
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )
    assert diff.returncode == 1
    assert "trace hashes differing: 1" in diff.stdout and "seeds: 6" in diff.stdout


def test_market_reports_admission_latency_and_power_figures() -> None:
    """bench/market.py: admission latency of the joined servers as {"median", "p99", "max"}
    (FIGURES.md), and the power figures of the run with a supply drop and a broker crash."""
    result = _run("market")
    lat = result["admission_latency_s"]
    assert set(lat) == {"median", "p99", "max"}
    assert 0 < lat["median"] <= lat["p99"] <= lat["max"] < 5
    assert result["joins_admitted"] == result["joins"] > 0
    assert result["overload_watt_seconds"] >= 0 and result["starved_server_seconds"] >= 0
