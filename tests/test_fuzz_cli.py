"""``powergrid fuzz``: the command line, through powergrid.cli.main."""

from __future__ import annotations

import json
from typing import Any

import pytest

from powergrid import node
from powergrid.cli import main
from powergrid.protocols.multicast import Deliver, MulticastMachine

GOOD, BAD = 4, 0
"""Seeds of the 3-server data centre: GOOD passes; BAD is broken by a planted bug."""


class DeliverTwice(MulticastMachine):
    """A planted bug: every delivery is reported twice."""

    def handle(self, event: object, now: float) -> list[Any]:
        out = super().handle(event, now)
        return out + [a for a in out if type(a) is Deliver]


def test_seeds_summary_and_progress(capsys: pytest.CaptureFixture[str]) -> None:
    """A clean range exits 0 with a summary on stdout and a progress bar on stderr."""
    assert main(["fuzz", "--seeds", "1", "--start", str(GOOD), "--nodes", "3"]) == 0
    out, err = capsys.readouterr()
    assert out.startswith(f"1 seeds ({GOOD}..{GOOD}), 0 with violations")
    assert "faults:" in out and "messages delivered:" in out and "wall time:" in out
    assert "[" in err and "1/1 seeds" in err


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
