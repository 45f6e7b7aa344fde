"""The JSON the control API answers with, built from records: links, descriptions."""

from __future__ import annotations

import time
from dataclasses import dataclass
from datetime import UTC, datetime
from urllib.parse import quote

from townhall.room.record import LinkRecord
from townhall.store import SpaceRecord


@dataclass(frozen=True)
class SpaceViews:
    """Renders Spaces for clients; knows the public URLs people are given."""

    control_url: str
    audience_url: str

    def link(self, space_id: str, page: str, token: str) -> str:
        """A page link carrying its token in the fragment, which never reaches a server log."""
        return f"{self.control_url}/s/{space_id}/{page}#t={quote(token)}"

    def describe(self, space: SpaceRecord) -> dict[str, object]:
        audience = self.audience_url
        cancelled = is_cancelled(space)
        ended = space.state == "ended" and not cancelled  # a cancelled Space has no replay
        return {
            "id": space.id,
            "title": space.title,
            "description": space.description,
            "state": space.state,
            "cancelled": cancelled,
            "host_name": space.host_name,
            "listed": space.listed,
            "scheduled_at": space.scheduled_at,
            "started_at": space.started_at,
            "ended_at": space.ended_at,
            "listen_link": f"{self.control_url}/s/{space.id}",
            "replay_link": f"{self.control_url}/s/{space.id}/replay" if ended else None,
            "calendar_link": f"{self.control_url}/spaces/{space.id}.ics",
            "audience": {
                "ogg": f"{audience}/live/{space.id}.ogg",
                "hls": f"{audience}/live/{space.id}/index.m3u8",
                "events": f"{audience}/events/{space.id}",
            },
            "replay": {
                "ogg": f"{audience}/replay/{space.id}.ogg",
                "hls": f"{audience}/replay/{space.id}/index.m3u8",
            }
            if ended
            else None,
        }

    def created(self, space: SpaceRecord, host_token: str, speaker_token: str) -> dict[str, object]:
        return {
            **self.describe(space),
            "host_link": self.link(space.id, "host", host_token),
            "speaker_link": self.link(space.id, "speak", speaker_token),
            "host_token": host_token,
        }

    def summary(self, space: SpaceRecord) -> dict[str, object]:
        """One line of the public list: what the front page shows, no stream URLs."""
        cancelled = is_cancelled(space)
        return {
            "id": space.id,
            "title": space.title,
            "host_name": space.host_name,
            "state": space.state,
            "cancelled": cancelled,
            "scheduled_at": space.scheduled_at,
            "started_at": space.started_at,
            "ended_at": space.ended_at,
            "listen_link": f"{self.control_url}/s/{space.id}",
            "replay_link": f"{self.control_url}/s/{space.id}/replay"
            if space.state == "ended" and not cancelled
            else None,
        }

    def calendar(self, space: SpaceRecord, now: float | None = None) -> str | None:
        """The Space as an iCalendar file (RFC 5545), or None with no time to give."""
        start = space.scheduled_at or space.started_at
        if start is None:
            return None
        status = "CANCELLED" if is_cancelled(space) else "CONFIRMED"
        url = f"{self.control_url}/s/{space.id}"
        description = "\n\n".join(x for x in (space.description, f"Listen: {url}") if x)
        lines = [
            "BEGIN:VCALENDAR",
            "VERSION:2.0",
            "PRODID:-//townhall//Spaces//EN",
            "CALSCALE:GREGORIAN",
            "METHOD:PUBLISH",
            "BEGIN:VEVENT",
            f"UID:{space.id}@townhall",
            f"DTSTAMP:{_ical_time(time.time() if now is None else now)}",
            f"DTSTART:{_ical_time(start)}",
            f"DURATION:PT{CALENDAR_DURATION_MIN}M",
            f"SUMMARY:{ical_text(space.title)}",
            f"DESCRIPTION:{ical_text(description)}",
            f"ORGANIZER;CN={_ical_param(space.host_name)}:mailto:noreply@townhall.invalid",
            f"URL:{url}",
            f"LOCATION:{ical_text(url)}",
            f"STATUS:{status}",
            "END:VEVENT",
            "END:VCALENDAR",
        ]
        return "".join(fold_ical_line(line) + "\r\n" for line in lines)

    @staticmethod
    def link_info(link: LinkRecord) -> dict[str, object]:
        """An invitation link as the host sees it: never its token or its holder's key."""
        return {
            "participant_id": link.participant_id,
            "name": link.name,
            "role": link.role.value,
            "claimed": bool(link.holder),
            "revoked": link.revoked,
            "generation": link.generation,
            "issued_at": link.issued_at,
        }

    def client_config(self) -> dict[str, str]:
        """What the web pages need to know that the page's own URL does not tell them."""
        return {"audience_url": self.audience_url}


# How long a calendar entry blocks: a Space has no planned end.
CALENDAR_DURATION_MIN = 60
# RFC 5545 section 3.1: lines are folded at 75 octets, continued after CRLF + one space.
_ICAL_LINE_OCTETS = 75


def is_cancelled(space: SpaceRecord) -> bool:
    """Ended without ever going live: nothing was said, there is no replay."""
    return space.state == "ended" and space.started_at is None


def ical_text(value: str) -> str:
    """A TEXT value (RFC 5545 section 3.3.11): backslash, semicolon, comma and line
    breaks escaped."""
    out = value.replace("\\", "\\\\").replace(";", "\\;").replace(",", "\\,")
    return out.replace("\r\n", "\\n").replace("\n", "\\n").replace("\r", "\\n")


def _ical_param(value: str) -> str:
    """A parameter value: quoted, as a name may hold ':' ';' ','; DQUOTE is not allowed."""
    clean = "".join(c for c in value if c != '"' and (c >= " " or c == "\t"))
    return f'"{clean}"'


def _ical_time(unix_s: float) -> str:
    return datetime.fromtimestamp(unix_s, UTC).strftime("%Y%m%dT%H%M%SZ")


def fold_ical_line(line: str) -> str:
    """Fold a content line at 75 octets without splitting a UTF-8 character."""
    data = line.encode()
    if len(data) <= _ICAL_LINE_OCTETS:
        return line
    parts: list[str] = []
    limit = _ICAL_LINE_OCTETS
    while data:
        cut = min(limit, len(data))
        while cut < len(data) and (data[cut] & 0xC0) == 0x80:  # inside a character
            cut -= 1
        parts.append(data[:cut].decode())
        data = data[cut:]
        limit = _ICAL_LINE_OCTETS - 1  # the leading space counts
    return "\r\n ".join(parts)
