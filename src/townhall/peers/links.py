"""Parse the links townhall hands out: ``{control}/s/{space}/{page}#t={token}``."""

from __future__ import annotations

from dataclasses import dataclass
from urllib.parse import parse_qs, unquote, urlparse


@dataclass(frozen=True)
class StageLink:
    control_url: str
    space_id: str
    token: str


def parse_stage_link(link: str) -> StageLink:
    url = urlparse(link)
    parts = [p for p in url.path.split("/") if p]
    token = parse_qs(url.fragment).get("t", [""])[0]
    if url.scheme not in ("http", "https") or len(parts) < 2 or parts[0] != "s" or not token:
        raise ValueError(
            f"not a townhall stage link (want {{server}}/s/{{space}}/speak#t=TOKEN): {link}"
        )
    return StageLink(f"{url.scheme}://{url.netloc}", parts[1], unquote(token))
