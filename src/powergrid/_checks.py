"""Field checks of the configs, run when a config is built (attrs validators).

Each check raises :class:`~powergrid.errors.ConfigError` with a message that
names the class and the field, says what is allowed, and shows the value
given: ``NodeConfig.supply: must be a whole number of watts >= 0, got -100``.
A config is checked once, when it is built, so a wrong value fails where the
app wrote it rather than later when a node starts.

``bool`` is an ``int`` in Python; these checks refuse it where a number is
meant (``supply=True`` is a mistake, not 1 W), and refuse ``float`` where a
whole number is meant (``supply=1.5``), and a string anywhere a number is meant.
Relations between fields (``ack_timeout < bid_timeout``) and ranges that the field
validators leave open are checked by each config's ``__attrs_post_init__``, after its
fields, with :func:`config_error` or :func:`config_problem`; every message starts
with ``Class.field``.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from typing import Any

from powergrid.errors import ConfigError

__all__ = [
    "config_error",
    "config_problem",
    "flag",
    "instance",
    "integer",
    "number",
    "optional",
    "optional_callable",
    "real",
    "whole",
]

Validator = Callable[[Any, Any, Any], None]


def config_error(instance: object, field: str, problem: str, value: object) -> ConfigError:
    """``ConfigError("Class.field: problem, got value")``, to raise."""
    return ConfigError(f"{type(instance).__name__}.{field}: {problem}, got {value!r}")


def config_problem(instance: object, message: str) -> ConfigError:
    """``ConfigError("Class.message")``, to raise: ``message`` starts with the field's
    name (``heartbeat_interval is -1; set it above 0 seconds``), so the error names
    the config class and the field, as a check between fields must too."""
    return ConfigError(f"{type(instance).__name__}.{message}")


def _units(unit: str) -> str:
    return f" of {unit}" if unit else ""


def whole(lo: int | None = 0, hi: int | None = None, *, unit: str = "", why: str = "") -> Validator:
    """An ``int`` (not a bool) within ``lo..hi`` (None: unbounded on that side);
    ``why`` is said in parentheses after the range."""
    if lo is not None and hi is not None:
        bounds = f" in {lo}..{hi}"
    elif lo is not None:
        bounds = f" >= {lo}"
    elif hi is not None:
        bounds = f" <= {hi}"
    else:
        bounds = ""
    problem = f"must be a whole number{_units(unit)}{bounds}" + (f" ({why})" if why else "")

    def check(inst: Any, attribute: Any, value: Any) -> None:
        if (
            type(value) is not int
            or (lo is not None and value < lo)
            or (hi is not None and value > hi)
        ):
            raise config_error(inst, attribute.name, problem, value)

    return check


def number(
    lo: float | None = None,
    *,
    above: bool = False,
    below: float | None = None,
    unit: str = "seconds",
) -> Validator:
    """A finite ``int`` or ``float`` (not a bool) ``>= lo`` (``> lo`` if ``above``) and
    ``< below`` if given."""
    parts = []
    if lo is not None:
        parts.append(f"{'>' if above else '>='} {lo}")
    if below is not None:
        parts.append(f"< {below}")
    problem = f"must be a finite number{_units(unit)}" + (
        " " + " and ".join(parts) if parts else ""
    )

    def check(inst: Any, attribute: Any, value: Any) -> None:
        kind = type(value)
        if (
            (kind is not float and kind is not int)
            or not math.isfinite(value)
            or (lo is not None and (value <= lo if above else value < lo))
            or (below is not None and value >= below)
        ):
            raise config_error(inst, attribute.name, problem, value)

    return check


def flag(inst: Any, attribute: Any, value: Any) -> None:
    """``True`` or ``False`` (not 0, 1 or a string)."""
    if type(value) is not bool:
        raise config_error(inst, attribute.name, "must be True or False", value)


def _a(name: str) -> str:
    return ("an " if name[0] in "AEIO" else "a ") + name


def instance(cls: type, what: str = "") -> Validator:
    """An instance of ``cls``."""
    problem = f"must be {what or _a(cls.__name__)}"

    def check(inst: Any, attribute: Any, value: Any) -> None:
        if not isinstance(value, cls):
            raise config_error(inst, attribute.name, problem, value)

    return check


def optional(cls: type, what: str = "") -> Validator:
    """None or an instance of ``cls``."""
    problem = f"must be None or {what or _a(cls.__name__)}"

    def check(inst: Any, attribute: Any, value: Any) -> None:
        if value is not None and not isinstance(value, cls):
            raise config_error(inst, attribute.name, problem, value)

    return check


def real(inst: Any, attribute: Any, value: Any) -> None:
    """An ``int`` or ``float`` (not a bool, not a string); its range is the config's to check."""
    kind = type(value)
    if kind is not float and kind is not int:
        raise config_error(inst, attribute.name, "must be a number", value)


integer = whole(None)
"""An ``int`` (not a bool, not a float); its range is the config's to check."""


def optional_callable(inst: Any, attribute: Any, value: Any) -> None:
    """None or a callable."""
    if value is not None and not callable(value):
        raise config_error(inst, attribute.name, "must be None or a function", value)
