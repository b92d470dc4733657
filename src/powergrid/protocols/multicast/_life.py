"""Origin lives: one object per life of an origin, its phase, and the table of phase changes.

Theory of operation
-------------------
Everything that decides *which phase* an origin's life is in is here, as data
(h11's ``_state.py`` is the model). A *life* (:class:`OriginLife`) is one
incarnation of one origin's stream as this member knows it, and its
:class:`Phase` says what the machine does with it:

* ``LIVE``: the origin's current life, listed by the view (or there is no view
  yet): delivered, repaired, reported in Status, digested in Stable.
* ``DEPARTING``: the current life, but the view does not list it (the origin
  left, or this life is not admitted yet, or it is forged): all of the above for
  ``flush_grace`` (until ``gone_at``), unless a view lists it by then (rule 22, 2).
* ``RETIRED``: a past life that a newer incarnation replaced (a restart): kept in
  the origin's one retired slot for ``flush_grace``, still delivered, repaired
  from the group and answering Naks (rule 23).
* ``HEARSAY``: a past life the coordinator knows only from members' Status: it
  holds and delivers nothing of it, only digests its highest and, from the
  members' reports, where nobody holds it any more (rules 24, 16).
* ``DROPPED``: the state was dropped after its grace; only ``(stable,
  delivered)`` is remembered, in :class:`Tombstones`, so a life that comes back
  resumes after what was delivered (rule 22).
* ``ABSENT``: nothing is known of the life (never seen, or forgotten).

:data:`TRANSITIONS` maps ``(phase, trigger)`` to the next phase; :func:`next_phase`
is the only way a phase changes. A pair missing from the table is a bug in this
package, raised as :class:`IllegalTransitionError`: peer input never reaches one,
for every path driven by a message checks the phase it acts on first.

A life's stream has one more state that is not a phase: ``delivered ==
PENDING`` while a joiner does not know where the stream starts (rule 18); a
pending life can be LIVE or DEPARTING, and is abandoned, not retired, when a
newer life replaces it. Whether a life has a gap (a Nak timer, ``nak_due``) is
likewise orthogonal: LIVE, DEPARTING and RETIRED lives can have one.

Assumes incarnations only grow. Driven by :class:`~._lives.Lives`, the registry
that keeps the indexes of lives by phase.
"""

from __future__ import annotations

import enum
import math
from collections.abc import Mapping
from typing import Final

from powergrid.protocols.multicast._config import Stored
from powergrid.types import incarnation_newer
from powergrid.wire import KIND_APP


class Phase(enum.Enum):
    """Where one life of an origin is (see the module docstring)."""

    ABSENT = "absent"
    LIVE = "live"
    DEPARTING = "departing"
    RETIRED = "retired"
    HEARSAY = "hearsay"
    DROPPED = "dropped"


class Trigger(enum.Enum):
    """What moves a life from one phase to another."""

    LISTED = "listed"
    """A view lists the life (or, for a life that starts, there is no view yet)."""
    UNLISTED = "unlisted"
    """A view that does not list the life is installed (or is in force when it starts)."""
    REPLACED = "replaced"
    """A newer incarnation of the origin starts while this life's stream has started."""
    ABANDONED = "abandoned"
    """A newer incarnation starts while this life's start is still unknown (pending)."""
    SUPERSEDED = "superseded"
    """Another past life of the origin takes its one retired slot."""
    HEARD = "heard"
    """A member reports a past life this coordinator has no state of."""
    GRACE_OVER = "grace_over"
    """``flush_grace`` has passed since the life left the view or was replaced."""
    DEPOSED = "deposed"
    """This node stops coordinating (its hearsay lives were digest state only)."""
    EVICTED = "evicted"
    """The memory of dropped lives is full (4096 origins, 4 lives each): the oldest goes."""


_P = Phase
_T = Trigger

TRANSITIONS: Final[Mapping[tuple[Phase, Trigger], Phase]] = {
    # a life begins: from nothing, or resumed from what a dropped life left (rule 22)
    (_P.ABSENT, _T.LISTED): _P.LIVE,
    (_P.ABSENT, _T.UNLISTED): _P.DEPARTING,
    (_P.DROPPED, _T.LISTED): _P.LIVE,
    (_P.DROPPED, _T.UNLISTED): _P.DEPARTING,
    # views come and go (rule 22)
    (_P.LIVE, _T.UNLISTED): _P.DEPARTING,
    (_P.DEPARTING, _T.LISTED): _P.LIVE,
    (_P.DEPARTING, _T.GRACE_OVER): _P.DROPPED,
    # restarts (rules 1, 23)
    (_P.LIVE, _T.REPLACED): _P.RETIRED,
    (_P.DEPARTING, _T.REPLACED): _P.RETIRED,
    (_P.LIVE, _T.ABANDONED): _P.ABSENT,
    (_P.DEPARTING, _T.ABANDONED): _P.ABSENT,
    (_P.RETIRED, _T.SUPERSEDED): _P.ABSENT,
    (_P.RETIRED, _T.GRACE_OVER): _P.DROPPED,
    # hearsay lives, at the coordinator only (rule 24)
    (_P.ABSENT, _T.HEARD): _P.HEARSAY,
    (_P.HEARSAY, _T.SUPERSEDED): _P.ABSENT,
    (_P.HEARSAY, _T.GRACE_OVER): _P.ABSENT,
    (_P.HEARSAY, _T.DEPOSED): _P.ABSENT,
    # the memory of dropped lives is bounded
    (_P.DROPPED, _T.EVICTED): _P.ABSENT,
}
"""``(phase, trigger) -> next phase``: every phase change there is. See :func:`next_phase`."""

CURRENT: Final = frozenset({Phase.LIVE, Phase.DEPARTING})
"""Phases of an origin's current life (the one ``Lives.current`` maps it to)."""
PAST: Final = frozenset({Phase.RETIRED, Phase.HEARSAY})
"""Phases of an origin's past life (the one ``Lives.retired`` maps it to)."""


class IllegalTransitionError(RuntimeError):
    """A phase change that :data:`TRANSITIONS` does not allow: a bug in this package."""


def next_phase(phase: Phase, trigger: Trigger) -> Phase:
    """The phase a life in ``phase`` moves to on ``trigger``.

    Raises :class:`IllegalTransitionError` if the table has no such change.
    """
    try:
        return TRANSITIONS[phase, trigger]
    except KeyError:
        raise IllegalTransitionError(f"a {phase.value} life cannot be {trigger.value}") from None


def stored(kind: int, payload: bytes) -> bytes | tuple[int, bytes]:
    """What :attr:`OriginLife.buf` keeps of a message: an app message's payload alone,
    for a tuple per message kept would be one more object per message for the garbage
    collector to count and promote (a stream keeps up to ``max_buffer`` of them), else
    ``(kind, payload)``."""
    return payload if kind == KIND_APP else (kind, payload)


def unstored(value: bytes | tuple[int, bytes]) -> tuple[int, bytes]:
    """``(kind, payload)`` of what :func:`stored` kept."""
    return value if isinstance(value, tuple) else (KIND_APP, value)


class OriginLife:
    """What this member knows of one life (incarnation) of one origin's stream."""

    __slots__ = (
        "asked_at",
        "buf",
        "buf_low",
        "claimed",
        "delivered",
        "gone_at",
        "group_round",
        "held",
        "highest",
        "incarnation",
        "last_nak",
        "nak_due",
        "origin",
        "phase",
        "reported",
        "scan",
        "seen",
        "stable",
        "tries",
    )

    def __init__(self, origin: int, incarnation: int, start: int, phase: Phase) -> None:
        self.origin = origin
        self.incarnation = incarnation
        self.phase = phase  # changed only through next_phase
        self.delivered = start  # PENDING until the start is known
        self.highest = max(start, 0)
        self.stable = max(start, 0)
        self.seen = max(start, 0)  # the highest seq of a Data or Xmit of this life received
        self.held: dict[int, Stored] = {}
        # delivered, not yet stable, seqs buf_low..delivered: seq -> the payload of an
        # app message (KIND_APP), else (kind, payload); read with unstored()
        self.buf: dict[int, bytes | tuple[int, bytes]] = {}
        self.buf_low = start + 1
        self.nak_due: float | None = None  # the Nak timer (rules 5, 6), set while a gap lasts
        self.asked_at: float | None = None  # the last Nak, until a delivery answers it
        self.last_nak = -math.inf  # when every missing range was last asked (a re-ask)
        # every seq up to here is delivered, held or asked in a Nak: a missing seq above
        # it is a *fresh* gap, asked at once, not at the next re-ask (rule 5)
        self.scan = max(start, 0)
        self.tries = 0
        self.group_round = 0
        self.claimed = 0  # a stable point a Stable named beyond what was seen (rule 25)
        self.reported = 0  # delivered, as the last Status this node sent told (rule 27)
        self.gone_at: float | None = None  # end of flush_grace (DEPARTING, RETIRED, HEARSAY)


MAX_TOMBSTONES: Final = 4096
"""Dropped origins whose delivered and stable points are remembered (the latest)."""
TOMBSTONE_LIVES: Final = 4
"""Lives remembered per dropped origin (the latest incarnations)."""


class Tombstones:
    """What is left of DROPPED lives: per origin and incarnation, ``(stable, delivered)``.

    Bounded: the latest :data:`MAX_TOMBSTONES` origins, :data:`TOMBSTONE_LIVES` lives
    each (the rest are EVICTED). Each life's apart from the others', so a later life's
    survives an earlier one started again (fuzz seed 64959).
    """

    __slots__ = ("_lives",)

    def __init__(self) -> None:
        self._lives: dict[int, dict[int, tuple[int, int]]] = {}

    def remember(self, life: OriginLife) -> None:
        """Keep ``(stable, delivered)`` of ``life``, which has just been DROPPED."""
        origin = life.origin
        lives = self._lives.pop(origin, None)  # put back last: the most recent origin
        if lives is None:
            if len(self._lives) >= MAX_TOMBSTONES:
                del self._lives[next(iter(self._lives))]
                next_phase(Phase.DROPPED, Trigger.EVICTED)
            lives = {}
        lives[life.incarnation] = (life.stable, life.delivered)
        while len(lives) > TOMBSTONE_LIVES:
            del lives[min(lives)]
            next_phase(Phase.DROPPED, Trigger.EVICTED)
        self._lives[origin] = lives

    def revive(self, origin: int, incarnation: int) -> tuple[int, int] | None:
        """Take (and forget) the ``(stable, delivered)`` of a dropped life, if remembered."""
        lives = self._lives.get(origin)
        if lives is None:
            return None
        known = lives.pop(incarnation, None)
        if not lives:
            del self._lives[origin]
        return known

    def covers(self, origin: int, incarnation: int) -> bool:
        """Whether a life of ``origin`` at or after ``incarnation`` was dropped."""
        lives = self._lives.get(origin)
        return lives is not None and any(not incarnation_newer(incarnation, life) for life in lives)
