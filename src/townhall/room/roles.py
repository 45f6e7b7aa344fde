"""The words of a Space that everything else shares: its lifecycle and its roles.

Kept apart from the Room's rules so events, tokens and adapters can name a role or a
state without importing the rules themselves.
"""

from __future__ import annotations

import enum


class SpaceState(enum.Enum):
    SCHEDULED = "scheduled"
    LIVE = "live"
    ENDED = "ended"


class Role(enum.Enum):
    """What a participant is in a Space; the values are the wire names (tokens, JSON)."""

    HOST = "host"
    COHOST = "cohost"
    SPEAKER = "speaker"
    LISTENER = "listener"


# The roles that hold a seat on the stage and may publish audio.
STAGE_ROLES = frozenset({Role.HOST, Role.COHOST, Role.SPEAKER})
