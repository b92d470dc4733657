"""The example apps (examples/trio_app.py, examples/asyncio_app.py): a trio process and an
asyncio process join one keyed loopback cluster and each prints the other's multicast.

``powergrid keygen`` does not exist yet, so the test writes the key file itself
(one random 32-byte key, mode 600) in the format docs/security.md gives.
"""

from __future__ import annotations

import os
import secrets
import socket
import subprocess
import sys
from pathlib import Path

import pytest

HOST = "127.0.0.1"
EXAMPLES = Path(__file__).resolve().parent.parent / "examples"


def free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as s:
        s.bind((HOST, 0))
        port: int = s.getsockname()[1]
        return port


@pytest.mark.parametrize("app", ["trio_app.py", "asyncio_app.py"])
def test_example_apps_are_short_and_use_only_top_level_imports(app: str) -> None:
    """Rule (issue 18): each example app is under 30 lines and imports only ``powergrid``."""
    lines = (EXAMPLES / app).read_text().splitlines()
    assert len(lines) < 30
    imports = [ln for ln in lines if ln.startswith(("import ", "from "))]
    assert [ln for ln in imports if "powergrid" in ln] == ["import powergrid as pg"]


def test_trio_and_asyncio_apps_exchange_multicasts(tmp_path: Path) -> None:
    """Rule (issue 18): the trio app and the asyncio app, one process each, join the same
    keyed cluster on loopback and each receives the other's hello."""
    key_file = tmp_path / "keys"
    key_file.write_text(f"1 hex:{secrets.token_hex(32)}\n")
    os.chmod(key_file, 0o600)
    base = str(free_port())
    ports = {"trio": free_port(), "asyncio": free_port()}
    procs = {
        name: subprocess.Popen(
            [sys.executable, str(EXAMPLES / f"{name}_app.py"), str(port), base, "6", key_file],
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
        )
        for name, port in ports.items()
    }
    out: dict[str, str] = {}
    try:
        for name, proc in procs.items():
            stdout, stderr = proc.communicate(timeout=30)
            assert proc.returncode == 0, stderr
            out[name] = stdout
    finally:
        for proc in procs.values():
            proc.kill()
    trio_addr, asyncio_addr = (f"{HOST}:{ports[n]}" for n in ("trio", "asyncio"))
    assert out["trio"].splitlines() == [f"{asyncio_addr} hello from asyncio {asyncio_addr}"]
    assert out["asyncio"].splitlines() == [f"{trio_addr} hello from trio {trio_addr}"]
