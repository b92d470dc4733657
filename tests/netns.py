"""Real hosts for tests: Linux network namespaces joined by a bridge, and node processes.

:class:`Network` builds, for one test, a private Ethernet segment that touches
nothing of the host's own interfaces:

* a **bridge namespace** ``pg-<pid>-br`` holding the bridge ``br0`` (IGMP
  snooping off, so multicast is flooded to every port like a plain switch);
* one **host namespace** ``pg-<pid>-h<i>`` per host, with loopback up and an
  interface ``eth0`` (a veth) whose peer ``h<i>`` is a port of the bridge;
* addresses ``10.77.<pid % 200>.<i + 1>/24`` on the ``eth0``s (they exist only
  inside these namespaces) and a multicast route ``224.0.0.0/4 dev eth0``; with
  ``ipv6=True`` also ``fd00:77:<pid % 200>::<i + 1>/64`` (no duplicate address
  detection, so they are usable at once), for nodes started with ``ipv6=True``.

Every link is created directly inside its namespace (``ip link add ... netns``),
so the root namespace is never changed. Nodes run as
``ip netns exec NS python -m powergrid node --json --host ADDR --interface ADDR``;
their JSON lines are collected with :meth:`Network.pump` / :meth:`Network.until`.
:meth:`Network.cut` takes a host's bridge port down (the cable pulled at the
switch: the host keeps its address and routes and sees no carrier);
:meth:`Network.heal` brings it back.

Cleanup: :meth:`Network.close` (called by ``with``, and registered with
``atexit`` for a run that dies before it) kills every process it started, by
its pid, and deletes every namespace it created, which deletes their links.
Namespaces left by an earlier run that was killed outright (``pg-<pid>-...``
whose pid is no longer alive) are deleted when a new network is built.

:func:`unavailable` tells why a network cannot be built here (not Linux, not
root, no ``ip`` command, namespaces/bridge/veth refused), so tests can skip.
"""

from __future__ import annotations

import atexit
import os
import re
import shutil
import subprocess
import sys
from collections.abc import Callable
from typing import Any

import attrs

from powergrid.cli.processes import NodeProcesses
from powergrid.types import format_node, node_id

PID = os.getpid()
PREFIX = f"pg-{PID}"
_OURS = re.compile(r"^pg-(\d+)-(br|h\d+|probe)$")


class NetnsError(RuntimeError):
    """An ``ip`` command failed while building or changing the network."""


def _ip(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(["ip", *args], capture_output=True, text=True, timeout=10, check=False)


def _must(*args: str) -> None:
    done = _ip(*args)
    if done.returncode != 0:
        raise NetnsError(f"ip {' '.join(args)}: {done.stderr.strip() or done.returncode}")


def _namespaces() -> list[str]:
    done = _ip("netns", "list")
    return [line.split()[0] for line in done.stdout.splitlines() if line.strip()]


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


def sweep_stale() -> list[str]:
    """Delete namespaces ``pg-<pid>-...`` left by harness runs whose process is gone."""
    gone = []
    for ns in _namespaces():
        m = _OURS.match(ns)
        if m and int(m.group(1)) != PID and not _alive(int(m.group(1))):
            _ip("netns", "del", ns)
            gone.append(ns)
    return gone


def unavailable() -> str | None:
    """Why namespaces with a bridge and veths cannot be made here, or None if they can."""
    if not sys.platform.startswith("linux"):
        return "network namespaces need Linux"
    if os.geteuid() != 0:
        return "creating network namespaces needs root (CI runs the suite as root)"
    if shutil.which("ip") is None:
        return "the `ip` command (iproute2) is not installed"
    probe = f"{PREFIX}-probe"
    try:
        _must("netns", "add", probe)
    except (NetnsError, OSError, subprocess.TimeoutExpired) as exc:
        return f"cannot create a network namespace: {exc}"
    try:
        _must("-n", probe, "link", "add", "br0", "type", "bridge")
        _must("-n", probe, "link", "add", "v0", "type", "veth", "peer", "name", "v1")
    except (NetnsError, subprocess.TimeoutExpired) as exc:
        return f"cannot create a bridge or a veth pair in a namespace: {exc}"
    finally:
        _ip("netns", "del", probe)
    return None


@attrs.frozen(kw_only=True)
class Host:
    """One host: its namespace, address, and its port on the bridge."""

    index: int
    ns: str
    address: str
    bridge_port: str
    address6: str = ""


class Network:
    """A bridge and ``hosts`` host namespaces, and the node processes run in them.

    Use as a context manager; raises :class:`NetnsError` if an ``ip`` command fails
    (everything made so far is removed first).
    """

    def __init__(self, hosts: int, *, ipv6: bool = False) -> None:
        if not 1 <= hosts <= 250:
            raise ValueError(f"hosts {hosts} must be 1..250")
        self.subnet = f"10.77.{PID % 200}"
        self.bridge_ns = f"{PREFIX}-br"
        self.hosts = [
            Host(
                index=i,
                ns=f"{PREFIX}-h{i}",
                address=f"{self.subnet}.{i + 1}",
                bridge_port=f"h{i}",
                address6=f"fd00:77:{PID % 200}::{i + 1:x}" if ipv6 else "",
            )
            for i in range(hosts)
        ]
        self.nodes = NodeProcesses()
        self.procs = self.nodes.procs
        self.lines = self.nodes.lines
        self._made: list[str] = []
        self._closed = False
        atexit.register(self.close)
        try:
            self._build()
        except BaseException:
            self.close()
            raise

    def __enter__(self) -> Network:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    # ------------------------------------------------------------ topology

    def _add_ns(self, ns: str) -> None:
        _must("netns", "add", ns)
        self._made.append(ns)

    def _build(self) -> None:
        sweep_stale()
        br = self.bridge_ns
        self._add_ns(br)
        _must("-n", br, "link", "add", "br0", "type", "bridge", "mcast_snooping", "0")
        _must("-n", br, "link", "set", "br0", "up")
        for h in self.hosts:
            self._add_ns(h.ns)
            _must("-n", h.ns, "link", "set", "lo", "up")
            _must(
                "link", "add", "eth0", "netns", h.ns, "type", "veth",
                "peer", "name", h.bridge_port, "netns", br,
            )  # fmt: skip
            _must("-n", br, "link", "set", h.bridge_port, "master", "br0")
            _must("-n", br, "link", "set", h.bridge_port, "up")
            _must("-n", h.ns, "addr", "add", f"{h.address}/24", "dev", "eth0")
            if h.address6:
                _must("-n", h.ns, "addr", "add", f"{h.address6}/64", "dev", "eth0", "nodad")
            _must("-n", h.ns, "link", "set", "eth0", "up")
            _must("-n", h.ns, "route", "add", "224.0.0.0/4", "dev", "eth0")

    def multicast_off(self) -> None:
        """Clear the MULTICAST flag on every host's ``eth0`` and every bridge port, and drop the
        hosts' multicast routes: a network that carries no IP multicast (like most clouds)."""
        for h in self.hosts:
            _must("-n", h.ns, "link", "set", "dev", "eth0", "multicast", "off")
            _must("-n", h.ns, "route", "del", "224.0.0.0/4", "dev", "eth0")
            _must("-n", self.bridge_ns, "link", "set", "dev", h.bridge_port, "multicast", "off")
        _must("-n", self.bridge_ns, "link", "set", "dev", "br0", "multicast", "off")

    def multicast_flags(self) -> list[bool]:
        """Whether each host's ``eth0`` has the MULTICAST flag."""
        flags = []
        for h in self.hosts:
            done = _ip("-n", h.ns, "-o", "link", "show", "dev", "eth0")
            flags.append("MULTICAST" in done.stdout.split(">")[0])
        return flags

    def cut(self, host: Host) -> None:
        """Take the host's bridge port down: it hears nobody and nobody hears it."""
        _must("-n", self.bridge_ns, "link", "set", host.bridge_port, "down")

    def heal(self, host: Host) -> None:
        """Bring the host's bridge port back up."""
        _must("-n", self.bridge_ns, "link", "set", host.bridge_port, "up")

    # ------------------------------------------------------------ processes

    def start(self, host: Host, port: int, *opts: str, ipv6: bool = False) -> str:
        """Run ``powergrid node --json`` on ``host``; returns its id as the node prints it
        (``"addr:port"``; with ``ipv6``, on the host's IPv6 address, multicast on
        ``eth0``: ``"[::1]:9001"``, the id's low 32 bits). The node runs ``--insecure``
        unless ``opts`` give a ``--key-file``."""
        keyed = "--key-file" in opts
        address = host.address6 if ipv6 else host.address
        argv = self.nodes.node_command(
            "--host",
            address,
            "--interface",
            "eth0" if ipv6 else address,
            "--port",
            str(port),
            *(() if keyed else ("--insecure",)),
            *opts,
        )
        name = format_node(node_id(address, port))
        return self.nodes.spawn(name, ["ip", "netns", "exec", host.ns, *argv])

    def send(self, name: str, obj: object) -> None:
        """Write one JSON command to the node's stdin."""
        self.nodes.send(name, obj)

    def kill(self, name: str) -> None:
        """SIGKILL the node (a crash) and stop reading it."""
        self.nodes.kill(name)

    def pump(self, timeout: float) -> None:
        """Read whatever the nodes printed, waiting at most ``timeout`` seconds."""
        self.nodes.pump(timeout)

    def until(self, cond: Callable[[], bool], timeout: float, what: str) -> float:
        """Pump until ``cond()``; the seconds it took. Fails after ``timeout`` seconds."""
        return self.nodes.until(cond, timeout, what)

    def events(self, name: str, event: str, **match: object) -> list[dict[str, Any]]:
        """The node's lines of ``event`` whose fields equal ``match``."""
        return self.nodes.events(name, event, **match)

    # ------------------------------------------------------------ cleanup

    def close(self) -> None:
        """Kill every process started here, delete every namespace made here. Idempotent."""
        if self._closed:
            return
        self._closed = True
        self.nodes.stop(grace=0)
        for ns in reversed(self._made):
            _ip("netns", "del", ns)
        self._made.clear()
        atexit.unregister(self.close)
