"""Scripted multi-node stories: each tests/testdata/*.txt is run over the fake network and
its whole transcript compared with the file (powergrid.testing.transcript).

Rewrite the expected outputs after a deliberate change with
``pytest tests/test_transcripts.py --rewrite-transcripts`` (or ``POWERGRID_REWRITE=1``),
then read the diff: it is the change in behaviour.
"""

from __future__ import annotations

import difflib
import os
from pathlib import Path

import pytest

from powergrid.errors import UsageError
from powergrid.testing.transcript import Story, parse, run_file, run_script

DATA = Path(__file__).parent / "testdata"
SCRIPTS = sorted(DATA.glob("*.txt"))


@pytest.mark.parametrize("path", SCRIPTS, ids=[p.stem for p in SCRIPTS])
def test_transcript(path: Path, request: pytest.FixtureRequest) -> None:
    """The script's whole output is what the file says (or is rewritten when asked)."""
    expected, actual = run_file(path)
    rewrite = (
        request.config.getoption("--rewrite-transcripts")
        or os.environ.get("POWERGRID_REWRITE") == "1"
    )
    if rewrite:
        path.write_text(actual)
        return
    diff = "".join(
        difflib.unified_diff(
            expected.splitlines(True), actual.splitlines(True), "expected", "actual"
        )
    )
    assert actual == expected, f"{path.name} differs (rewrite with --rewrite-transcripts):\n{diff}"


def test_there_are_stories() -> None:
    """The four stories of issue 15 are in testdata."""
    assert {p.stem for p in SCRIPTS} >= {
        "election_leader_crash",
        "membership_join_leave_crash",
        "multicast_gap_repair",
        "market_round",
    }


def test_a_wrong_expectation_is_caught_and_rewritten_exactly() -> None:
    """A changed output line fails the comparison; running the script puts it back."""
    script = "add-nodes election 1 2\n----\nok\n\nstatus\n----\n1: leader leader=9 epoch=9\n"
    out = run_script(script)
    assert out != script
    assert out == (
        "add-nodes election 1 2\n----\nok\n\n"
        "status\n----\n1: follower leader=0 epoch=0\n2: follower leader=0 epoch=0\n"
    )
    assert run_script(out) == out  # a rewritten script is a fixed point


def test_comments_and_blank_outputs_survive_a_round_trip() -> None:
    text = "# a story\n# in two lines\nrun 1\n----\n\n# trailing note\n"
    blocks = parse(text)
    assert [b.command for b in blocks] == ["run 1", ""]
    assert run_script(text) == "# a story\n# in two lines\nrun 1\n----\nok\n\n# trailing note\n"


@pytest.mark.parametrize(
    ("script", "pattern"),
    [
        ("launch 1\n----\n", "unknown command 'launch'"),
        ("add-nodes toaster 1\n----\n", "unknown kind 'toaster'"),
        ("publish 1 x\n----\n", "no multicast machine at node 1"),
        ("run 1\n", "not followed by ----"),
    ],
)
def test_misuse_names_the_problem(script: str, pattern: str) -> None:
    with pytest.raises(UsageError, match=pattern):
        run_script(script)


def test_story_partition_cuts_and_heal_joins() -> None:
    """partition A | B: nodes on different sides stop hearing each other."""
    story = Story()
    story.execute("add-nodes multicast 1 2 3")
    story.execute("view 1 2 3 leader=1 epoch=1")
    story.execute("partition 1 2 | 3")
    story.execute("publish 1 x")
    assert story.execute("run 0.005") == [
        "0.001 2: Deliver(origin=1, incarnation=1, seq=1, kind=0, payload=b'x')"
    ]
    story.execute("heal")
    story.execute("run 2")
    assert story.execute("status 3") == ["3: delivered 1:1 2:0 3:0 buffer=0"]


def test_story_deliver_restart_and_network() -> None:
    """deliver runs only until nothing is in flight; restart is a new life; network sets
    the link (here: a fixed 5 ms)."""
    story = Story()
    story.execute("add-nodes multicast 1 2")
    story.execute("view 1 2 leader=1 epoch=1")
    story.execute("network latency=0.005")
    story.execute("publish 1 x")
    assert story.execute("deliver") == [
        "0.005 2: Deliver(origin=1, incarnation=1, seq=1, kind=0, payload=b'x')"
    ]
    assert story.net.now == 0.005 and story.execute("deliver") == ["ok"]
    story.execute("crash 2")
    assert story.execute("status 2") == ["2: down"]
    assert story.execute("restart 2") == ["2: incarnation 2"]
    assert story.net.up(2) and story.net.incarnation(2) == 2
