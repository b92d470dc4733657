"""Tests for powergrid.cli.processes: a fake child (``python -c``) stands in for a node."""

from __future__ import annotations

import signal
import sys
import time
from typing import Any

import pytest

from powergrid.cli.processes import NodeProcesses

# Prints a hello line with its argv, then answers each stdin line: "half" prints
# a line and half a line, "rest" the other half and a line, "exit" ends it,
# anything else is echoed.
CHILD = r"""
import json, signal, sys
if "--ignore-term" in sys.argv:
    signal.signal(signal.SIGTERM, signal.SIG_IGN)
def out(text):
    sys.stdout.write(text)
    sys.stdout.flush()
out(json.dumps({"event": "hello", "argv": sys.argv[1:]}) + "\n")
for line in sys.stdin:
    got = json.loads(line)
    if got == "half":
        out('{"event": "one"}\n{"event": "split", ')
    elif got == "rest":
        out('"n": 1}\n{"event": "after"}\n')
    elif got == "exit":
        break
    else:
        out(json.dumps({"event": "echo", "got": got}) + "\n")
"""


def child(*args: str) -> list[str]:
    return [sys.executable, "-c", CHILD, *args]


def test_lines_are_parsed_in_order_with_read_times_and_sends_reach_stdin() -> None:
    """Rule: each JSON line is kept in order, with the monotonic time it was read;
    send writes one JSON line to the child's stdin; events filters by event and fields."""
    seen: list[tuple[str, dict[str, Any]]] = []
    with NodeProcesses(on_event=lambda n, e: seen.append((n, e))) as p:
        before = time.monotonic()
        assert p.spawn("a", child("x")) == "a"
        p.until(lambda: p.lines["a"], 10, "hello")
        p.send("a", {"cmd": "multicast", "data": "é"})
        p.send("a", [1, 2])
        p.until(lambda: len(p.events("a", "echo")) == 2, 10, "two echoes")
        after = time.monotonic()
        assert p.lines["a"] == [
            {"event": "hello", "argv": ["x"]},
            {"event": "echo", "got": {"cmd": "multicast", "data": "é"}},
            {"event": "echo", "got": [1, 2]},
        ]
        assert [e for _, e in p.timed["a"]] == p.lines["a"]
        times = [t for t, _ in p.timed["a"]]
        assert before <= times[0] <= times[1] <= times[2] <= after
        assert p.events("a", "echo", got=[1, 2]) == [{"event": "echo", "got": [1, 2]}]
        assert p.timed_events("a", "hello") == [p.timed["a"][0]]
        assert seen == [("a", e) for e in p.lines["a"]]


def test_a_partial_line_waits_for_its_newline() -> None:
    """Rule: an unterminated line is held back until its newline arrives."""
    with NodeProcesses() as p:
        p.spawn("a", child())
        p.until(lambda: p.lines["a"], 10, "hello")
        p.send("a", "half")
        p.until(lambda: p.events("a", "one"), 10, "the whole line")
        p.pump(0.05)
        assert p.lines["a"] == [{"event": "hello", "argv": []}, {"event": "one"}]
        p.send("a", "rest")
        p.until(lambda: p.events("a", "after"), 10, "the rest")
        assert p.lines["a"][2:] == [{"event": "split", "n": 1}, {"event": "after"}]


def test_start_runs_powergrid_node_json_after_the_prefix() -> None:
    """Rule: start runs [*prefix, python, -m, powergrid, node, --json, *args]."""
    with NodeProcesses(prefix=child(), python="PY") as p:
        assert p.node_command("--port", "1") == [
            "PY",
            "-m",
            "powergrid",
            "node",
            "--json",
            "--port",
            "1",
        ]
        p.start("n", "--port", "1")
        p.until(lambda: p.lines["n"], 10, "hello")
        assert p.lines["n"] == [
            {"event": "hello", "argv": ["PY", "-m", "powergrid", "node", "--json", "--port", "1"]}
        ]
        with pytest.raises(ValueError, match="already started"):
            p.start("n")


def test_kill_is_sigkill_and_the_lines_stay() -> None:
    """Rule: kill sends SIGKILL, reaps the process and stops reading it; the
    other processes and everyone's lines are kept."""
    with NodeProcesses() as p:
        p.spawn("a", child("a"))
        p.spawn("b", child("b"))
        p.until(lambda: p.lines["a"] and p.lines["b"], 10, "hellos")
        p.kill("a")
        assert p.procs["a"].returncode == -signal.SIGKILL
        p.send("b", 7)
        p.until(lambda: p.events("b", "echo"), 10, "b's echo")
        assert p.lines["a"] == [{"event": "hello", "argv": ["a"]}]
        assert p.procs["b"].poll() is None


def test_end_of_output_is_forgotten_and_until_times_out() -> None:
    """Rule: a process that exits is read to its end and then no longer selected;
    until raises TimeoutError naming what it waited for."""
    with NodeProcesses() as p:
        p.spawn("a", child())
        p.until(lambda: p.lines["a"], 10, "hello")
        p.send("a", "exit")
        assert p.procs["a"].wait(timeout=10) == 0
        p.pump(0.1)  # reads the end of file
        start = time.monotonic()
        with pytest.raises(TimeoutError, match="waiting for nothing"):
            p.until(lambda: False, 0.1, "nothing")
        assert time.monotonic() - start < 1.0
        assert p.lines["a"] == [{"event": "hello", "argv": []}]


def test_stop_terminates_then_kills_and_is_idempotent() -> None:
    """Rule: stop sends SIGTERM, SIGKILLs what is left after the grace period,
    closes the pipes; a second stop does nothing; no start after a stop."""
    p = NodeProcesses()
    p.spawn("soft", child())
    p.spawn("hard", child("--ignore-term"))
    p.until(lambda: p.lines["soft"] and p.lines["hard"], 10, "hellos")
    p.stop(grace=0.3)
    assert p.procs["soft"].returncode == -signal.SIGTERM
    assert p.procs["hard"].returncode == -signal.SIGKILL
    assert all(f is not None and f.closed for q in p.procs.values() for f in (q.stdin, q.stdout))
    p.stop()
    with pytest.raises(ValueError, match="stopped"):
        p.spawn("again", child())


def test_stop_with_no_grace_kills_at_once() -> None:
    """Rule: stop(grace=0) SIGKILLs every running process."""
    with NodeProcesses() as p:
        p.spawn("a", child())
        p.until(lambda: p.lines["a"], 10, "hello")
        p.stop(grace=0)
        assert p.procs["a"].returncode == -signal.SIGKILL
