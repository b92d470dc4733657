"""Shared pytest options."""

from __future__ import annotations

import pytest


def pytest_addoption(parser: pytest.Parser) -> None:
    parser.addoption(
        "--rewrite-transcripts",
        action="store_true",
        default=False,
        help="rewrite the expected output of tests/testdata/*.txt with what the run printed",
    )
