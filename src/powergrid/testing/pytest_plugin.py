"""A pytest plugin: run an app's own code on a simulated data centre, in virtual time.

Registered through the ``pytest11`` entry point ``powergrid`` (pyproject.toml),
so every project that has powergrid installed gets these fixtures without a
conftest (``pytest -p no:powergrid`` turns them off):

* ``powergrid_seed`` (int): the seed a test's data centre uses: the
  ``--powergrid-seed`` option if given (to replay a run), else 0.
* ``sim_run``: ``sim_run(main, *, seed=None, loss=0.0)`` runs ``await main(dc)``
  with ``dc`` a fresh :class:`~powergrid.testing.apps.SimDatacenter` under
  :func:`~powergrid.testing.apps.run` (trio, a clock that jumps to the next
  deadline whenever every task waits) and returns what ``main`` returned.
  ``seed`` None takes ``powergrid_seed``. Raises what ``main`` raises, and
  ``ConfigError`` for a loss outside 0..1; one error out of trio's nurseries
  is raised as itself, not in an exception group. The seed and loss are added
  to the error as a note, so a failure can be replayed with ``--powergrid-seed``.

See docs/api.md (*Testing an app*) for a worked example.
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable
from typing import Any

import pytest

from powergrid.testing.apps import SimDatacenter, run, sim_datacenter

__all__ = ["SimRun", "powergrid_seed", "pytest_addoption", "sim_run"]

SimRun = Callable[..., Any]
"""The type of the ``sim_run`` fixture: ``(main, *, seed=None, loss=0.0) -> main's result``."""


def pytest_addoption(parser: pytest.Parser) -> None:
    """``--powergrid-seed N``: the seed of every ``sim_run`` that names none."""
    parser.addoption(
        "--powergrid-seed",
        type=int,
        default=None,
        help="seed of powergrid's simulated data centres (sim_run fixture); default 0",
    )


@pytest.fixture
def powergrid_seed(request: pytest.FixtureRequest) -> int:
    """The seed of this test's simulated data centre (``--powergrid-seed``, else 0)."""
    seed = request.config.getoption("--powergrid-seed")
    return 0 if seed is None else int(seed)


@pytest.fixture
def sim_run(powergrid_seed: int, request: pytest.FixtureRequest) -> SimRun:
    """Run ``await main(dc)`` on a simulated data centre in virtual time; see the module."""

    def sim_run(
        main: Callable[[SimDatacenter], Awaitable[Any]],
        *,
        seed: int | None = None,
        loss: float = 0.0,
    ) -> Any:
        chosen = powergrid_seed if seed is None else seed
        result: list[Any] = []

        async def body() -> None:
            async with sim_datacenter(seed=chosen, loss=loss) as dc:
                result.append(await main(dc))

        request.node.user_properties.append(("powergrid_seed", chosen))
        note = f"powergrid simulated data centre: seed {chosen}, loss {loss}"
        try:
            run(body)
        except BaseExceptionGroup as group:  # (trio's nurseries): one error is given as itself
            leaves = _leaves(group)
            error = leaves[0] if len(leaves) == 1 else group
            error.add_note(note)
            raise error from None
        except BaseException as error:
            error.add_note(note)
            raise
        return result[0]

    return sim_run


def _leaves(group: BaseExceptionGroup[Any]) -> list[BaseException]:
    out: list[BaseException] = []
    for exc in group.exceptions:
        out.extend(_leaves(exc) if isinstance(exc, BaseExceptionGroup) else [exc])
    return out
