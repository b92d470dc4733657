"""``powergrid keygen`` and secure-by-default ``powergrid node`` (docs/cli.md, docs/security.md)."""

from __future__ import annotations

import os
import stat
import subprocess
import sys
from pathlib import Path

import pytest
from toys import free_port

from powergrid import cli
from powergrid.auth import Keyring, new_key_text
from powergrid.cli.node import NO_KEY, build_configs
from powergrid.cli.processes import NodeProcesses
from powergrid.errors import ConfigError


def _mode(path: Path) -> int:
    return stat.S_IMODE(path.stat().st_mode)


def test_keygen_writes_a_0600_key_file_the_keyring_reads(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """Rule: keygen writes one random 32-byte primary key, mode 0600 even under umask 0,
    in the format Keyring.from_file reads, and never prints the secret."""
    old = os.umask(0)
    try:
        assert cli.main(["keygen", str(tmp_path / "a.keys")]) == 0
        assert cli.main(["keygen", str(tmp_path / "b.keys"), "--key-id", "7"]) == 0
    finally:
        os.umask(old)
    out = capsys.readouterr()
    a, b = Keyring.from_file(tmp_path / "a.keys"), Keyring.from_file(tmp_path / "b.keys")
    assert _mode(tmp_path / "a.keys") == _mode(tmp_path / "b.keys") == 0o600
    assert (a.primary, a.key_ids, b.primary, b.key_ids) == (1, (1,), 7, (7,))
    secret = a.keys[0][1]
    assert len(secret) == 32 and secret != b.keys[0][1]
    assert secret.hex() not in out.out + out.err and "a.keys" in out.err


def test_keygen_refuses_to_overwrite_unless_forced(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """Rule: an existing file is left as it is (exit 2, one line) unless --force, which
    replaces it whole with a new key, still mode 0600."""
    path = tmp_path / "dc.keys"
    path.write_text("precious\n")
    assert cli.main(["keygen", str(path)]) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "exists; give --force" in err
    assert path.read_text() == "precious\n"
    path.chmod(0o644)
    assert cli.main(["keygen", str(path), "--force"]) == 0
    assert _mode(path) == 0o600 and Keyring.from_file(path).primary == 1
    assert sorted(p.name for p in tmp_path.iterdir()) == ["dc.keys"]  # no temp file left
    assert cli.main(["keygen", str(path), "--key-id", "0", "--force"]) == 2
    assert "key id 0" in capsys.readouterr().err


def test_new_key_text_is_the_documented_format() -> None:
    """Rule: '<id> hex:<64 hex digits> primary', with comments, parsed back to the key."""
    text = new_key_text(3, secret=bytes(range(32)))
    assert f"3 hex:{bytes(range(32)).hex()} primary\n" in text
    assert Keyring.parse(text) == Keyring(primary=3, keys={3: bytes(range(32))})


def _args(*argv: str) -> object:
    return cli.build_parser("node").parse_args(["node", "--port", "9100", *argv])


def test_node_needs_a_key_unless_insecure(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """Rule: secure by default: without --key-file or $POWERGRID_KEYS the node refuses to
    start with one line naming keygen and --insecure; --insecure runs unkeyed; both at
    once are refused."""
    with pytest.raises(ConfigError) as exc:
        build_configs(_args(), environ={})  # type: ignore[arg-type]
    assert str(exc.value) == NO_KEY and "powergrid keygen" in NO_KEY and "--insecure" in NO_KEY
    node, _ = build_configs(_args("--insecure"), environ={})  # type: ignore[arg-type]
    assert node.keyring is None
    key = tmp_path / "k"
    assert cli.main(["keygen", str(key)]) == 0
    node, _ = build_configs(_args("--key-file", str(key)), environ={})  # type: ignore[arg-type]
    assert node.keyring == Keyring.from_file(key)
    with pytest.raises(ConfigError, match="--insecure or a key"):
        build_configs(_args("--key-file", str(key), "--insecure"), environ={})  # type: ignore[arg-type]
    env = {k: v for k, v in os.environ.items() if k != "POWERGRID_KEYS"}
    argv = [sys.executable, "-m", "powergrid", "node", "--port", "9100", "--duration", "5"]
    done = subprocess.run(argv, capture_output=True, text=True, timeout=30, env=env, check=False)
    assert done.returncode == 2 and done.stdout == ""
    assert done.stderr == f"powergrid node: {NO_KEY}\n"


def test_nodes_keyed_by_a_keygen_file_form_a_group_an_insecure_one_stays_out(
    procs: NodeProcesses, tmp_path: Path
) -> None:
    """Rule: two processes with one keygen key file report authenticated and form one view;
    an --insecure node on the same ports is never in it."""
    key = tmp_path / "dc.keys"
    assert cli.main(["keygen", str(key)]) == 0
    common = ["--ttl", "0", "--group-port-base", str(free_port()), "--broker-capable"]
    ports = [free_port() for _ in range(3)]
    keyed = [
        procs.start(f"k{i}", "--port", str(p), "--key-file", str(key), "--rank", str(i), *common)
        for i, p in enumerate(ports[:2])
    ]
    intruder = procs.start("x", "--port", str(ports[2]), "--insecure", "--rank", "9", *common)
    want = {f"127.0.0.1:{p}" for p in ports[:2]}

    def members(name: str) -> set[str]:
        views = procs.events(name, "view", group=1)
        return set(views[-1]["members"]) if views else set()

    procs.until(lambda: all(members(n) == want for n in keyed), 20, "the keyed view")
    for n in keyed:
        assert procs.events(n, "started")[0]["authenticated"] is True
        assert all(f"127.0.0.1:{ports[2]}" not in v["members"] for v in procs.events(n, "view"))
    assert procs.events(intruder, "started")[0]["authenticated"] is False
