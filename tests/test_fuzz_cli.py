"""``powergrid fuzz``: the command line, through powergrid.cli.main."""

from __future__ import annotations

import json
import re
import shlex
from typing import Any

import pytest

from powergrid import node
from powergrid.cli import main
from powergrid.protocols.multicast import Deliver, MulticastMachine
from powergrid.sim.fuzzing import MAX_NODES, replay_command, run_datacentre

GOOD, BAD = 4, 0
"""Seeds of the 3-server data centre: GOOD passes; BAD is broken by a planted bug."""


class DeliverTwice(MulticastMachine):
    """A planted bug: every delivery is reported twice."""

    def handle(self, event: object, now: float) -> list[Any]:
        out = super().handle(event, now)
        return out + [a for a in out if type(a) is Deliver]


def test_seeds_summary_and_progress(capsys: pytest.CaptureFixture[str]) -> None:
    """A clean range exits 0 with a summary on stdout; --progress on draws the bar on stderr."""
    args = ["fuzz", "--seeds", "1", "--start", str(GOOD), "--nodes", "3"]
    assert main([*args, "--progress", "on"]) == 0
    out, err = capsys.readouterr()
    assert out.startswith(f"1 seeds ({GOOD}..{GOOD}), 0 with violations")
    assert "faults:" in out and "messages delivered:" in out and "wall time:" in out
    assert "[" in err and "1/1 seeds" in err


def test_progress_only_on_a_terminal(capsys: pytest.CaptureFixture[str]) -> None:
    """Issue 19: stderr that is not a terminal (here a capture) gets no \\r frames."""
    assert main(["fuzz", "--seeds", "2", "--start", str(GOOD), "--nodes", "3"]) == 0
    out, err = capsys.readouterr()
    assert out.startswith("2 seeds")
    assert err == ""


def test_a_replay_carries_every_option_and_fails_again(
    capsys: pytest.CaptureFixture[str],
) -> None:
    """Issue 19: `fuzz --liveness 1` fails seed 0 (too short to converge); the replay it
    prints names --liveness and --nodes, and running it fails the same way."""
    args = ["fuzz", "--seeds", "1", "--nodes", "3", "--safety", "2", "--liveness", "1"]
    assert main([*args, "--json"]) == 1
    v = json.loads(capsys.readouterr().out)["violations"][0]
    assert v["replay"] == "powergrid fuzz --replay 0 --nodes 3 --safety 2.0 --liveness 1.0"
    assert main([*shlex.split(v["replay"])[1:], "--json"]) == 1
    again = json.loads(capsys.readouterr().out)["violations"][0]
    assert (again["invariant"], again["detail"]) == (v["invariant"], v["detail"])


def test_the_printed_test_runs_as_it_is(capsys: pytest.CaptureFixture[str]) -> None:
    """Issue 19: the pytest test a failing replay prints runs pasted into an empty
    module (no NameError for build or invariants) and fails with the same violation."""
    assert main(["fuzz", "--replay", "0", "--nodes", "3", "--liveness", "1"]) == 1
    out = capsys.readouterr().out
    first = out.index("from powergrid.sim.harness import run_seed")
    code = out[first : out.index("trace sha256")]
    invariant = out.split("FAIL seed 0: ", 1)[1].split(" at ", 1)[0]
    namespace: dict[str, Any] = {}
    exec(compile(code, "test_pasted.py", "exec"), namespace)
    with pytest.raises(AssertionError, match=invariant):
        namespace["test_fuzz_seed_0"]()


@pytest.mark.parametrize("nodes", ["0", "100000"])
def test_bad_node_count_is_one_line_before_the_run(
    capsys: pytest.CaptureFixture[str], nodes: str
) -> None:
    """Issue 19: --nodes outside 1..MAX_NODES exits 2 with one line naming the bound."""
    assert main(["fuzz", "--seeds", "1000", "--nodes", nodes]) == 2
    out, err = capsys.readouterr()
    assert out == ""
    assert err.count("\n") == 1
    assert err.startswith(f"powergrid fuzz: --nodes {nodes}: give 1..{MAX_NODES} servers")


def test_json_names_each_violation_with_its_replay(
    capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    """--json prints one object; a violation makes the exit status 1 and carries a replay."""
    monkeypatch.setattr(node, "MulticastMachine", DeliverTwice)
    status = main(["fuzz", "--seeds", "2", "--start", str(BAD), "--nodes", "3", "--json"])
    doc = json.loads(capsys.readouterr().out)
    assert status == 1
    assert doc["seeds"] == 2
    assert {"violations", "faults", "wall_s", "messages"} <= set(doc)
    v = doc["violations"][0]
    assert v["seed"] == BAD
    assert v["replay"] == f"powergrid fuzz --replay {BAD} --nodes 3"
    assert v["invariant"] == "multicast-integrity"


def test_replay_prints_the_trace(capsys: pytest.CaptureFixture[str]) -> None:
    """--replay re-runs one seed, prints its trace, report and hash; same hash twice."""
    assert main(["fuzz", "--replay", str(GOOD), "--nodes", "3"]) == 0
    first = capsys.readouterr().out
    assert first.splitlines()[0].startswith("{")  # JSON trace lines
    assert f"seed {GOOD} ok" in first
    main(["fuzz", "--replay", str(GOOD), "--nodes", "3"])
    second = capsys.readouterr().out

    def trace(text: str) -> list[str]:  # the report line holds the wall time
        return [line for line in text.splitlines() if line.startswith(("{", "trace sha256"))]

    assert trace(second) == trace(first)
    assert trace(first)[-1].startswith("trace sha256 ")


def test_bad_arguments(capsys: pytest.CaptureFixture[str]) -> None:
    """A negative seed count is refused with exit status 2."""
    assert main(["fuzz", "--seeds", "-1"]) == 2
    assert "--seeds" in capsys.readouterr().err


def test_fanout_runs_the_data_centre_without_multicast(capsys: pytest.CaptureFixture[str]) -> None:
    """Rule: --fanout runs the same seed with group sends fanned out as unicasts (so its
    trace differs from IP multicast's), the invariants hold, and a replay and the printed
    recipe carry the option."""
    for extra in ([], ["--fanout"]):
        args = ["fuzz", "--seeds", "1", "--start", str(GOOD), "--nodes", "3", "--json"]
        assert main([*args, *extra]) == 0
        out = json.loads(capsys.readouterr().out)
        assert out["violations"] == [] and out["messages"] > 0
    result = run_datacentre(GOOD, nodes=3, fanout=True)
    plain = run_datacentre(GOOD, nodes=3)
    assert result.ok and "fanout=True" in result.recipe and "fanout" not in plain.recipe
    assert replay_command(GOOD, fanout=True).endswith(" --fanout")
    assert result.trace_hash != plain.trace_hash


def _campaign(capsys: pytest.CaptureFixture[str], *extra: str) -> dict[str, Any]:
    """The --json summary of seeds 0-5 of the 3-server data centre (with ``extra``
    options), without its wall time and rate."""
    args = ["fuzz", "--seeds", "6", "--nodes", "3", "--safety", "2", "--liveness", "1"]
    main([*args, "--json", *extra])
    summary: dict[str, Any] = json.loads(capsys.readouterr().out)
    assert summary.pop("wall_s") > 0 and summary.pop("seeds_per_s") > 0
    return summary


def test_workers_merge_into_the_serial_summary(capsys: pytest.CaptureFixture[str]) -> None:
    """Issue 21: `--workers 2` runs the seeds in two processes and merges them into the
    summary a serial run gives, figure for figure (violations in seed order included:
    --liveness 1 makes some of these seeds fail, so the merge of failures is checked)."""
    serial = _campaign(capsys)
    assert serial["seeds"] == 6 and serial["violations"], "want some failures to merge"
    assert _campaign(capsys, "--workers", "2") == serial


def test_a_local_dask_cluster_merges_into_the_serial_summary(
    capsys: pytest.CaptureFixture[str],
) -> None:
    """Issue 21: `--dask local:1` runs the same campaign on a Dask cluster (one worker
    process on this machine) and gives the serial summary."""
    pytest.importorskip("distributed")
    serial = _campaign(capsys)
    assert _campaign(capsys, "--dask", "local:1") == serial


def test_bad_campaign_options_exit_2(capsys: pytest.CaptureFixture[str]) -> None:
    """Issue 21: --workers 0 and a malformed --dask are refused with one line, exit 2."""
    assert main(["fuzz", "--seeds", "1", "--workers", "0"]) == 2
    assert "--workers 0: give 1 or more" in capsys.readouterr().err
    pytest.importorskip("distributed")
    assert main(["fuzz", "--seeds", "1", "--dask", "local:x"]) == 2
    assert "--dask local:x: give local or local:N" in capsys.readouterr().err


def test_chunks_cover_every_seed_once_in_order() -> None:
    """Issue 21: a campaign's chunks are consecutive ranges that cover its seeds exactly
    once, nearly equal, never more chunks than seeds."""
    from powergrid.cli.campaign import chunks  # noqa: PLC0415

    for seeds, parts in ((range(10, 1_000_010), 4000), (range(5, 8), 16), (range(7, 20), 4)):
        got = chunks(seeds, parts)
        assert [s for part in got for s in part] == list(seeds)
        assert len(got) == min(parts, len(seeds))
        assert max(map(len, got)) - min(map(len, got)) <= 1
    assert chunks(range(0), 4) == []


def test_flow_runs_every_cluster_with_a_send_window(capsys: pytest.CaptureFixture[str]) -> None:
    """Rule: --flow runs the same seed with multicast flow control in every cluster (the
    apps burst, as far as the window takes), the invariants hold, and a replay and the
    printed recipe carry the option."""
    assert main(["fuzz", "--seeds", "1", "--start", str(GOOD), "--nodes", "3", "--flow"]) == 0
    assert "0 with violations" in capsys.readouterr().out
    result = run_datacentre(GOOD, nodes=3, flow=True)
    plain = run_datacentre(GOOD, nodes=3)
    assert result.ok and "flow=True" in result.recipe and "flow" not in plain.recipe
    assert replay_command(GOOD, flow=True).endswith(" --flow")
    assert result.trace_hash != plain.trace_hash


def test_supply_steps_change_the_supply_the_lead_clears(
    capsys: pytest.CaptureFixture[str],
) -> None:
    """Rule: --supply-steps changes the supply 1-3 times in the safety phase: the leads
    clear against each supply in turn, the invariants hold, and a replay and the printed
    recipe carry the option."""
    argv = ["fuzz", "--seeds", "1", "--start", str(GOOD), "--nodes", "3", "--supply-steps"]
    assert main(argv) == 0
    assert "0 with violations" in capsys.readouterr().out

    def supplies(**kw: Any) -> set[str]:
        r = run_datacentre(GOOD, nodes=3, keep_trace=True, **kw)
        assert r.ok
        return set(re.findall(r"MarketCleared\(.*?supply=(\d+)", "\n".join(r.trace_lines or ())))

    assert len(supplies()) == 1 and len(supplies(supply_steps=True)) >= 2
    result = run_datacentre(GOOD, nodes=3, supply_steps=True)
    assert "supply_steps=True" in result.recipe
    assert replay_command(GOOD, supply_steps=True).endswith(" --supply-steps")


def test_large_messages_in_a_totally_ordered_group_run(
    capsys: pytest.CaptureFixture[str],
) -> None:
    """--large with --total-order runs (an ordered group's large messages are ordered
    fragments): the invariants hold, and the recipe and replay hint carry both flags."""
    argv = ["fuzz", "--seeds", "1", "--start", str(GOOD), "--nodes", "3"]
    assert main([*argv, "--total-order", "--large"]) == 0
    assert "0 with violations" in capsys.readouterr().out
    result = run_datacentre(GOOD, nodes=3, total_order=True, large=True)
    ordered = run_datacentre(GOOD, nodes=3, total_order=True)
    assert result.ok and "total_order=True" in result.recipe and "large=True" in result.recipe
    assert replay_command(GOOD, total_order=True, large=True).endswith(" --total-order --large")
    assert result.trace_hash != ordered.trace_hash
