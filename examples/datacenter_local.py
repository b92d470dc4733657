"""A small data centre on loopback: 2 clusters x 3 node processes, and a lead-broker failover.

Run: ``python examples/datacenter_local.py``. Every node is a separate
``python -m powergrid node --json`` process on 127.0.0.1 (multicast TTL 0,
ports from 46000 up, or ``--base PORT``). The script reads their JSON lines,
waits until a lead broker (the leader of broker group 0) is elected and
prices flow, kills the lead broker with SIGKILL, prints the failover (the new
leader lines) and the prices of the new epoch, then stops every process,
also on error or Ctrl-C. It gives up after 40 seconds. The data centre is
realm ``example-dc``, keyed: the script makes its key file with
``powergrid keygen`` in a temporary directory, removed at the end.
"""

from __future__ import annotations

import argparse
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable
from typing import Any

from powergrid.cli.processes import NodeProcesses

CLUSTERS = (1, 2)
PER_CLUSTER = 3
LIMIT = 40.0


class DataCentre:
    def __init__(self, base: int, key_file: str) -> None:
        self.base = base
        self.key_file = key_file
        self.nodes = NodeProcesses(on_event=self.show)
        self.procs = self.nodes.procs
        self.lines = self.nodes.lines
        self.shown: set[str] = set()  # the events printed as they are read
        self.t0 = time.monotonic()

    def start_all(self) -> None:
        for c in CLUSTERS:
            for k in range(PER_CLUSTER):
                port = self.base + 10 * c + k + 1
                opts = ["--group", str(c), "--maximum", str(200 + 50 * k), "--required", "100"]
                if k > 0:  # two broker-capable nodes per cluster, the higher rank wins
                    opts += ["--broker-capable", "--rank", str(k), "--supply", "900"]
                self.start(port, opts)

    def start(self, port: int, opts: list[str]) -> None:
        self.nodes.start(
            f"127.0.0.1:{port}", "--ttl", "0", "--port", str(port),
            "--group-port-base", str(self.base), "--realm", "example-dc",
            "--key-file", self.key_file, *opts,
        )  # fmt: skip

    def show(self, name: str, event: dict[str, Any]) -> None:
        if event["event"] in self.shown:
            self.say(f"{name} {event['event']}: {_fields(event)}")

    def wait(self, what: str, cond: Callable[[], Any], show: set[str]) -> Any:
        """Wait until ``cond()`` is true and return it, printing the ``show`` events meanwhile."""
        self.say(f"waiting for {what}")
        self.shown = show
        left = LIMIT - (time.monotonic() - self.t0)
        try:
            self.nodes.until(cond, left, what)
        except TimeoutError:
            raise TimeoutError(f"gave up waiting for {what}") from None
        return cond()

    def say(self, text: str) -> None:
        print(f"[{time.monotonic() - self.t0:6.2f}s] {text}", flush=True)

    def stop(self) -> None:
        self.nodes.stop()  # graceful: SIGTERM, the nodes leave their groups

    # ------------------------------------------------------------ queries

    def lead(self) -> tuple[str, int] | None:
        """The lead broker every broker agrees on and whose prices reached everyone."""
        heads = set()
        for n in self.alive():
            head = self.last(n, "leader", 0)
            if head is not None:
                heads.add((str(head["leader"]), int(head["epoch"])))
        if len(heads) != 1 or not all(self.of(n, "price") for n in self.alive()):
            return None
        return heads.pop()

    def alive(self) -> list[str]:
        return [n for n, p in self.procs.items() if p.poll() is None]

    def of(self, name: str, event: str, since: int = 0) -> list[dict[str, Any]]:
        return [e for e in self.lines[name][since:] if e["event"] == event]

    def last(self, name: str, event: str, group: int) -> dict[str, Any] | None:
        got = [e for e in self.of(name, event) if e.get("group") == group]
        return got[-1] if got else None


def _fields(event: dict[str, Any]) -> str:
    return ", ".join(f"{k}={v}" for k, v in event.items() if k not in ("t", "node", "event"))


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--base", type=int, default=46000, help="first port (default 46000)")
    base = parser.parse_args().base
    with tempfile.TemporaryDirectory() as tmp:
        key_file = f"{tmp}/example-dc.keys"
        subprocess.run([sys.executable, "-m", "powergrid", "keygen", key_file], check=True)
        return run(DataCentre(base, key_file))


def run(dc: DataCentre) -> int:
    """Start the data centre, kill its lead broker, show the failover; the exit status."""
    try:
        dc.start_all()
        dc.say(f"started {len(dc.procs)} nodes in clusters {CLUSTERS}")
        lead, epoch = dc.wait("a lead broker and its first prices", dc.lead, {"leader"})
        dc.say(f"lead broker {lead} (broker group epoch {epoch}); prices now:")
        for n in dc.alive():
            price = dc.of(n, "price")[-1]
            dc.say(f"  {n}: {_fields(price)}")
        mark = {n: len(dc.lines[n]) for n in dc.procs}
        dc.nodes.kill(lead)
        dc.say(f"killed {lead} with SIGKILL")
        group = dc.of(lead, "started")[0]["group"]

        def failed_over() -> bool:
            head = dc.lead()
            if head is None or head[0] == lead:
                return False
            # the lead's old cluster elected a new broker, and its prices carry the new epoch
            mates = [n for n in dc.alive() if dc.of(n, "started")[0]["group"] == group]
            new = [dc.last(n, "leader", group) for n in mates]
            if not all(e and e["leader"] != lead for e in new):
                return False
            if not all(dc.of(n, "price", mark[n]) for n in dc.alive()):
                return False  # every survivor printed a price since the kill (shown below)
            return all(
                any(p["epoch"] == e["epoch"] for p in dc.of(n, "price", mark[n]))
                for n, e in zip(mates, new, strict=True)
                if e is not None
            )

        dc.wait("the failover", failed_over, {"leader", "removed"})
        dc.say(f"new lead broker {dc.lead()}; prices of the new epoch:")
        for n in dc.alive():
            price = dc.of(n, "price", mark[n])[-1]
            dc.say(f"  {n}: {_fields(price)}")
        return 0
    except (TimeoutError, KeyboardInterrupt) as exc:
        dc.say(f"stopped: {exc or 'interrupted'}")
        return 1
    finally:
        dc.stop()
        dc.say("all processes stopped")


if __name__ == "__main__":
    sys.exit(main())
