"""Shared pytest options."""

from __future__ import annotations

from collections.abc import Iterator

import pytest

from powergrid.cli.processes import NodeProcesses


def pytest_addoption(parser: pytest.Parser) -> None:
    parser.addoption(
        "--rewrite-transcripts",
        action="store_true",
        default=False,
        help="rewrite the expected output of tests/testdata/*.txt with what the run printed",
    )


@pytest.fixture
def procs() -> Iterator[NodeProcesses]:
    """Real ``powergrid node`` processes, stopped (and reaped) at the end of the test."""
    with NodeProcesses() as p:
        yield p
