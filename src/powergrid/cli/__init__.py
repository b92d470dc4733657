"""The ``powergrid`` command: one sub-command per job, each in its own module.

Sub-commands are registered lazily so that ``powergrid demo`` never imports
trio and ``powergrid --help`` stays fast. Each command module exposes
``add_arguments(parser)`` and ``run(args) -> int`` (the exit status).
"""

from __future__ import annotations

import argparse
import importlib
import sys
from collections.abc import Sequence

__all__ = ["main", "progress_wanted"]

# name -> (module, one-line help)
COMMANDS: dict[str, tuple[str, str]] = {
    "demo": ("powergrid.cli.simulate", "simulate the default data centre (what `make demo` runs)"),
    "simulate": (
        "powergrid.cli.simulate",
        "simulate a data centre from options or a TOML scenario",
    ),
    "fuzz": ("powergrid.cli.fuzz", "run seeded fault-injection runs and check the invariants"),
    "node": ("powergrid.cli.node", "run one real node over UDP multicast"),
    "keygen": ("powergrid.cli.keygen", "write a new key file for a data centre (mode 0600)"),
}


def progress_wanted(mode: str) -> bool:
    """Whether a ``--progress`` of ``mode`` (auto, on, off) draws a bar on stderr:
    ``auto`` only when stderr is a terminal, so no ``\\r`` frames reach a file or a pipe."""
    return mode == "on" or (mode == "auto" and sys.stderr.isatty())


def build_parser(selected: str | None = None) -> argparse.ArgumentParser:
    """The parser; only the ``selected`` command's module is imported."""
    parser = argparse.ArgumentParser(
        prog="powergrid",
        description="Group communication for a data-centre smart grid.",
    )
    sub = parser.add_subparsers(dest="command", metavar="COMMAND", required=True)
    for name, (module, help_text) in COMMANDS.items():
        cmd = sub.add_parser(name, help=help_text, description=help_text)
        cmd.set_defaults(_module=module)
        if name != selected:
            continue
        try:
            mod = importlib.import_module(module)
        except ImportError as exc:  # an optional part is missing
            cmd.set_defaults(_missing=str(exc))
            continue
        add = getattr(mod, f"add_{name}_arguments", None) or getattr(mod, "add_arguments", None)
        if add is not None:
            add(cmd)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    selected = next((a for a in argv if not a.startswith("-")), None)
    parser = build_parser(selected)
    args = parser.parse_args(argv)
    missing = getattr(args, "_missing", None)
    if missing:
        print(f"powergrid {args.command}: not available: {missing}", file=sys.stderr)
        return 2
    mod = importlib.import_module(args._module)
    run = getattr(mod, f"run_{args.command}", None) or mod.run
    status: int = run(args)
    return status


if __name__ == "__main__":
    sys.exit(main())
