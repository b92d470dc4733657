"""``powergrid keygen``: write a new key file for a data centre (docs/security.md).

One random 256-bit key (id 1 unless ``--key-id``), marked primary, in the
format :meth:`powergrid.auth.Keyring.from_file` reads, in a file created with
mode 0600. An existing file is refused unless ``--force``. The secret is never
printed. Exit 0 on success, 2 with a one-line message otherwise.
"""

from __future__ import annotations

import argparse
import sys

from powergrid.auth import write_key_file
from powergrid.errors import ConfigError

__all__ = ["add_arguments", "run"]


def add_arguments(parser: argparse.ArgumentParser) -> None:
    """The options of ``powergrid keygen``."""
    parser.add_argument("path", help="the key file to write (mode 0600)")
    parser.add_argument("--force", action="store_true", help="replace an existing file")
    parser.add_argument("--key-id", type=int, default=1, help="the key's id, 1..65535 (default 1)")


def run(args: argparse.Namespace) -> int:
    """Write the key file; the exit status."""
    try:
        write_key_file(args.path, key_id=args.key_id, force=args.force)
    except ConfigError as exc:
        print(f"powergrid keygen: {exc}", file=sys.stderr)
        return 2
    print(
        f"wrote key file {args.path} (key id {args.key_id}, 256 bits, mode 0600); "
        f"run nodes with --key-file {args.path}",
        file=sys.stderr,
    )
    return 0
