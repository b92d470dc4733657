"""The machines' dispatch tables: a handler function by event (or message) type, per class.

A machine's ``handle`` looks the handler up in a dict kept on its class and
calls it with the machine. The dicts are the class's, not each instance's:
in a simulated data centre thousands of machines share them (one object,
warm in the cache, instead of a dict of bound methods per machine). They are
built from the handler *names* a class gives in ``_EVENTS`` and
``_MESSAGES``, for the class and again for every subclass, so an override in
a subclass is the handler its instances call.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any, ClassVar

from powergrid.errors import UsageError


class Dispatching:
    """Base of the machines: builds ``_on_event`` and ``_on_message`` (type -> function)
    from the names in ``_EVENTS`` and ``_MESSAGES`` when a class is defined."""

    __slots__ = ()

    _EVENTS: ClassVar[dict[type[Any], str]] = {}
    _MESSAGES: ClassVar[dict[type[Any], str]] = {}
    _on_event: ClassVar[dict[type[Any], Callable[..., list[Any]]]] = {}
    _on_message: ClassVar[dict[type[Any], Callable[..., list[Any]]]] = {}

    def __init_subclass__(cls, **kwargs: Any) -> None:
        super().__init_subclass__(**kwargs)
        cls._on_event = {kind: getattr(cls, name) for kind, name in cls._EVENTS.items()}
        cls._on_message = {kind: getattr(cls, name) for kind, name in cls._MESSAGES.items()}

    def handle(self, event: object, now: float) -> list[Any]:
        """Feed one event; returns the actions (``now``: seconds on the caller's clock).

        Raises :class:`~powergrid.errors.UsageError` for an event type the machine
        does not take (local misuse; peers reach a machine only through ``Received``).
        A machine whose ``handle`` does more defines its own.
        """
        handler = self._on_event.get(type(event))
        if handler is None:
            raise UsageError(f"{type(self).__name__} does not handle {type(event).__name__}")
        return handler(self, event, now)
