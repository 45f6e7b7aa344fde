"""The JSON the control API answers with, built from records: links, descriptions."""

from __future__ import annotations

from dataclasses import dataclass
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
        ended = space.state == "ended"
        return {
            "id": space.id,
            "title": space.title,
            "description": space.description,
            "state": space.state,
            "scheduled_at": space.scheduled_at,
            "started_at": space.started_at,
            "ended_at": space.ended_at,
            "listen_link": f"{self.control_url}/s/{space.id}",
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
