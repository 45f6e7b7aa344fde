"""Reading a server's ``/metrics``: the one way tests and benchmarks scrape it.

``/metrics`` on the control port takes the admin key (it names every Space the server
holds), so every scrape sends ``Authorization: Bearer <admin key>``, as a Prometheus
configured with ``authorization`` does.
"""

from __future__ import annotations

import httpx

METRICS_PATH = "/metrics"


def admin_headers(admin_key: str) -> dict[str, str]:
    return {"Authorization": f"Bearer {admin_key}"}


def scrape(control_url: str, admin_key: str, timeout_s: float = 10.0) -> str:
    """The metrics text; raises ``httpx.HTTPStatusError`` if the server refused."""
    resp = httpx.get(
        f"{control_url}{METRICS_PATH}", headers=admin_headers(admin_key), timeout=timeout_s
    )
    resp.raise_for_status()
    return resp.text


async def scrape_async(client: httpx.AsyncClient, control_url: str, admin_key: str) -> str:
    """The same with an open client (``control_url`` may be "" for an app transport)."""
    resp = await client.get(f"{control_url}{METRICS_PATH}", headers=admin_headers(admin_key))
    resp.raise_for_status()
    return resp.text
