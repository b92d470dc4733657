"""The library's errors.

One base class, :class:`PowergridError`, and two families under it, as in h11:

* :class:`LocalError`: *you* did something wrong (a bad config, an illegal
  command, a payload too large to send). Raised at once, from the call that
  was wrong, with a message that says what to fix.
* :class:`RemoteError`: a *peer* sent something wrong. Only the codec raises
  it (:class:`DecodeError`); machines catch nothing because they never see
  undecodable input, and they drop-and-count stale or hostile messages instead
  of raising. A :class:`RemoteError` never escapes a machine's ``handle``.
"""

from __future__ import annotations

__all__ = [
    "ConfigError",
    "DecodeError",
    "LocalError",
    "PayloadTooLargeError",
    "PowergridError",
    "RemoteError",
    "UsageError",
]


class PowergridError(Exception):
    """Base class of every error this library raises on purpose."""


class LocalError(PowergridError):
    """The caller misused the library; the message says what to fix."""


class ConfigError(LocalError, ValueError):
    """A configuration value, or a relation between values, is invalid."""


class UsageError(LocalError):
    """A command is illegal in the machine's current state (or its arguments are)."""


class PayloadTooLargeError(LocalError, ValueError):
    """An encoded datagram would exceed :data:`powergrid.wire.MAX_DATAGRAM` bytes."""


class RemoteError(PowergridError):
    """A peer sent something this node cannot accept."""


class DecodeError(RemoteError, ValueError):
    """A datagram is truncated, oversized, of an unknown version or type, or inconsistent."""
