"""The machines' dispatch tables: a handler function by event (or message) type, per class.

A machine's ``handle`` looks the handler up in a dict kept on its class and
calls it with the machine. The dicts are the class's, not each instance's:
in a simulated data centre thousands of machines share them (one object,
warm in the cache, instead of a dict of bound methods per machine). They are
built from handler *names* for the class and again for every subclass, so an
override in a subclass is the handler its instances call.
"""

from __future__ import annotations

from typing import Any


def dispatch_tables(cls: type, **tables: dict[type[Any], str]) -> None:
    """Set on ``cls``, for each keyword, a dict from type to the function of that name as
    ``cls`` resolves it. Call it after the class body, and from ``__init_subclass__``."""
    for attr, names in tables.items():
        setattr(cls, attr, {kind: getattr(cls, name) for kind, name in names.items()})
