"""Run ``powergrid node --json`` processes (or any JSON-lines command) and read what they print.

Theory of operation: each process is started with its stdin and stdout as
pipes (stderr is inherited) under a name chosen by the caller, and its stdout
is made non-blocking and registered in one selector. :meth:`NodeProcesses.pump`
waits at most ``timeout`` seconds for output, reads what is there, splits it
into lines and parses each complete line as one JSON object; for every name
it keeps the events in order (:attr:`~NodeProcesses.lines`) and, alongside,
the ``time.monotonic()`` reading at which each was read
(:attr:`~NodeProcesses.timed`). An unterminated last line is kept back until
its newline arrives, and dropped if the process ends first. A line that is not
JSON raises ``ValueError``: the commands run here print JSON lines only.
:meth:`~NodeProcesses.until` pumps until a condition over those lines holds,
or raises ``TimeoutError``. Commands go to a process's stdin as one JSON object
a line (:meth:`~NodeProcesses.send`). :meth:`~NodeProcesses.kill` is a crash
(SIGKILL); :meth:`~NodeProcesses.stop` ends everything (SIGTERM, a grace
period, then SIGKILL) and closes the pipes; it is idempotent, and leaving the
``with`` block calls it.

This is a helper for tests, benchmarks and examples that run real processes;
it reads a clock and blocks, so it is no part of the sans-IO core. Standard
library only.
"""

from __future__ import annotations

import contextlib
import json
import os
import selectors
import subprocess
import sys
import time
from collections.abc import Callable, Sequence
from typing import Any

__all__ = ["NodeProcesses"]

Event = dict[str, Any]


class NodeProcesses:
    """Processes that print JSON lines, by name, and every line each printed so far.

    ``prefix`` goes in front of every command (e.g. ``["ip", "netns", "exec",
    "ns1"]``); ``python`` is the interpreter :meth:`start` runs powergrid with;
    ``on_event(name, event)``, if given, is called for each line as it is read.
    """

    def __init__(
        self,
        prefix: Sequence[str] = (),
        python: str = sys.executable,
        on_event: Callable[[str, Event], None] | None = None,
    ) -> None:
        self.prefix = list(prefix)
        self.python = python
        self.on_event = on_event
        self.procs: dict[str, subprocess.Popen[bytes]] = {}
        """The processes by name (read-only for callers: poll, wait, send_signal)."""
        self.lines: dict[str, list[Event]] = {}
        """Each process's parsed lines, in the order printed."""
        self.timed: dict[str, list[tuple[float, Event]]] = {}
        """The same lines, each with the monotonic time (seconds) it was read."""
        self._buf: dict[str, bytes] = {}
        self._sel = selectors.DefaultSelector()
        self._stopped = False

    def __enter__(self) -> NodeProcesses:
        return self

    def __exit__(self, *exc: object) -> None:
        self.stop()

    # ------------------------------------------------------------ processes

    def node_command(self, *args: str) -> list[str]:
        """The argv of ``python -m powergrid node --json *args`` (without the prefix)."""
        return [self.python, "-m", "powergrid", "node", "--json", *args]

    def start(self, name: str, *args: str) -> str:
        """Run ``powergrid node --json *args`` as ``name``; returns ``name``."""
        return self.spawn(name, self.node_command(*args))

    def spawn(self, name: str, argv: Sequence[str]) -> str:
        """Run ``[*prefix, *argv]`` as ``name``; returns ``name``.

        Raises ``ValueError`` if the name is taken, ``OSError`` if it cannot run.
        """
        if self._stopped:
            raise ValueError("these processes were stopped; make a new NodeProcesses")
        if name in self.procs:
            raise ValueError(f"a process named {name!r} was already started")
        proc = subprocess.Popen(
            [*self.prefix, *argv], stdin=subprocess.PIPE, stdout=subprocess.PIPE
        )
        assert proc.stdout is not None
        os.set_blocking(proc.stdout.fileno(), False)
        self._sel.register(proc.stdout, selectors.EVENT_READ, name)
        self.procs[name] = proc
        self.lines[name] = []
        self.timed[name] = []
        self._buf[name] = b""
        return name

    def send(self, name: str, obj: object) -> None:
        """Write ``obj`` as one JSON line to the process's stdin."""
        stdin = self.procs[name].stdin
        assert stdin is not None
        stdin.write(json.dumps(obj).encode() + b"\n")
        stdin.flush()

    def kill(self, name: str) -> None:
        """SIGKILL the process (a crash), reap it, and stop reading it."""
        proc = self.procs[name]
        proc.kill()
        proc.wait()
        self._forget(name)

    def _forget(self, name: str) -> None:
        stdout = self.procs[name].stdout
        assert stdout is not None
        with contextlib.suppress(KeyError, ValueError):
            self._sel.unregister(stdout)

    # ------------------------------------------------------------ reading

    def pump(self, timeout: float) -> None:
        """Read whatever the processes printed, waiting at most ``timeout`` seconds."""
        if not self._sel.get_map():
            time.sleep(max(timeout, 0.0))
            return
        for key, _ in self._sel.select(timeout):
            now = time.monotonic()
            name: str = key.data
            chunk = key.fileobj.read()  # type: ignore[union-attr]
            if chunk is None:  # spurious wake-up
                continue
            if not chunk:  # end of file: the process closed stdout or exited
                self._forget(name)
                self._buf[name] = b""
                continue
            *done, self._buf[name] = (self._buf[name] + chunk).split(b"\n")
            for raw in done:
                if raw:
                    event: Event = json.loads(raw)
                    self.lines[name].append(event)
                    self.timed[name].append((now, event))
                    if self.on_event is not None:
                        self.on_event(name, event)

    def until(self, cond: Callable[[], object], timeout: float, what: str) -> float:
        """Pump until ``cond()`` is true; the seconds it took.

        Raises ``TimeoutError`` naming ``what`` (with each process's last lines
        other than prices) if ``cond()`` is still false after ``timeout`` seconds.
        """
        start = time.monotonic()
        end = start + timeout
        while not cond():
            left = end - time.monotonic()
            if left <= 0:
                tail = {
                    n: [e for e in lines if e.get("event") != "price"][-8:]
                    for n, lines in self.lines.items()
                }
                raise TimeoutError(f"timed out after {timeout} s waiting for {what}: {tail}")
            self.pump(min(left, 0.05))
        return time.monotonic() - start

    def events(self, name: str, event: str, **match: object) -> list[Event]:
        """The process's lines of ``event`` whose fields equal ``match``."""
        return [e for _, e in self.timed_events(name, event, **match)]

    def timed_events(self, name: str, event: str, **match: object) -> list[tuple[float, Event]]:
        """Like :meth:`events`, each with the monotonic time it was read."""
        return [
            (t, e)
            for t, e in self.timed[name]
            if e.get("event") == event and all(e.get(k) == v for k, v in match.items())
        ]

    # ------------------------------------------------------------ cleanup

    def stop(self, grace: float = 3.0) -> None:
        """End every process and close the pipes. Idempotent.

        Running processes get SIGTERM (a powergrid node then leaves its groups)
        and ``grace`` seconds in all to exit; SIGKILL ends the rest. With
        ``grace`` 0 they are killed at once.
        """
        if self._stopped:
            return
        self._stopped = True
        running = [p for p in self.procs.values() if p.poll() is None]
        if grace > 0:
            for proc in running:
                proc.terminate()
        end = time.monotonic() + grace
        for proc in running:
            with contextlib.suppress(subprocess.TimeoutExpired):
                proc.wait(timeout=max(end - time.monotonic(), 0.0))
            if proc.poll() is None:
                proc.kill()
                proc.wait()
        for proc in self.procs.values():
            for f in (proc.stdin, proc.stdout):
                if f is not None:
                    with contextlib.suppress(OSError):
                        f.close()
        self._sel.close()
