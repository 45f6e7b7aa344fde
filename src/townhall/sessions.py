"""Listener session ids the server issued, and keys for those it did not.

A listener's session id is what the audience port counts them by (``?sid=`` on every
stream and playlist request) and, since it is also their participant id, what the
control plane knows them by. The control plane issues it at sign-in, signed:

    <12 random characters>.<16 characters of HMAC-SHA256 over the Space and the id>

29 URL-safe characters, so it fits a query parameter as is. The MAC covers the Space
(an id issued for one Space counts nowhere else) and is 96 bits: guessing one is
hopeless. Any audience worker checks it with the key alone, no lookup: the key is
derived from the token secret (``session_key``), so a worker that holds it can check
session ids but not mint listener tokens.

A request whose ``sid`` does not verify (none, random, for another Space) is anonymous:
it counts by ``anonymous_session``, a key made of a keyed hash of the client's address
(its /64 for IPv6, which one subscriber gets whole) and of what tells its players
apart. The counters bound how many anonymous sessions one address may hold (see
``townhall.room.counting``). The address is hashed with the server's key, so the keys
neither reveal addresses nor can be precomputed by a client.
"""

from __future__ import annotations

import base64
import hashlib
import hmac
import ipaddress
import os
import secrets
from dataclasses import dataclass
from pathlib import Path

RANDOM_CHARS = 12
MAC_BYTES = 12
SESSION_ID_CHARS = RANDOM_CHARS + 1 + MAC_BYTES * 4 // 3
# Anonymous keys start with this; no issued id does (theirs is random, 12 characters).
ANONYMOUS_PREFIX = "a."
_KEY_LABEL = b"townhall listener session ids v1"
_REPORT_LABEL = b"townhall count reports v1"
SESSION_KEY_BYTES = 32
# Where an origin without a configured cluster key writes its own, in its data directory.
CLUSTER_SESSION_KEY_FILE = "cluster-session.key"


def session_key(token_secret: str) -> bytes:
    """The key session ids are signed with, derived from the token secret."""
    return hmac.new(token_secret.encode(), _KEY_LABEL, hashlib.sha256).digest()


def node_session_key(token_secret: str, key_file: str) -> bytes:
    """This node's session key: the cluster's, from ``key_file`` (every node of a
    cluster reads the same), or, with none, the one derived from the token secret."""
    return read_session_key(Path(key_file)) if key_file else session_key(token_secret)


def read_session_key(path: Path) -> bytes:
    """A session key file: the key in hex, on one line. ValueError if it is not one."""
    try:
        text = path.read_text().strip()
        key = bytes.fromhex(text)
    except (OSError, ValueError) as exc:
        raise ValueError(f"{path}: not a session key file ({exc})") from exc
    if len(key) != SESSION_KEY_BYTES:
        raise ValueError(f"{path}: a session key is {SESSION_KEY_BYTES} bytes in hex")
    return key


def write_session_key(path: Path, key: bytes) -> None:
    """Write ``key`` where only this user can read it (a key file for the edges)."""
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    # The mode above applies only to a new file: an existing one keeps its own, so it
    # is set before the key is written.
    os.fchmod(fd, 0o600)
    with os.fdopen(fd, "w") as f:
        f.write(key.hex() + "\n")


def report_key(key: bytes) -> bytes:
    """The key a node signs its count reports with, derived from the session key: a
    node that cannot check session ids cannot be believed about who listens either."""
    return hmac.new(key, _REPORT_LABEL, hashlib.sha256).digest()


@dataclass(frozen=True)
class SessionSigner:
    key: bytes

    def issue(self, space_id: str) -> str:
        random_part = secrets.token_urlsafe(9)  # 9 bytes: 12 URL-safe characters
        return f"{random_part}.{self._mac(space_id, random_part)}"

    def verify(self, space_id: str, session_id: str) -> bool:
        if len(session_id) != SESSION_ID_CHARS or session_id[RANDOM_CHARS] != ".":
            return False
        random_part, mac = session_id[:RANDOM_CHARS], session_id[RANDOM_CHARS + 1 :]
        return hmac.compare_digest(mac, self._mac(space_id, random_part))

    def anonymous(self, peer: str, detail: str) -> str:
        return anonymous_session(self.key, peer, detail)

    def _mac(self, space_id: str, random_part: str) -> str:
        msg = f"{space_id}\x00{random_part}".encode()
        digest = hmac.new(self.key, msg, hashlib.sha256).digest()[:MAC_BYTES]
        return base64.urlsafe_b64encode(digest).decode()


def anonymous_session(key: bytes, peer: str, detail: str) -> str:
    """``a.<address>.<detail>``: one anonymous session of the client at ``peer``."""
    key = key[:64]  # blake2b's longest key
    address = hashlib.blake2b(address_block(peer).encode(), digest_size=6, key=key).hexdigest()
    what = hashlib.blake2b(detail.encode(), digest_size=6, key=key).hexdigest()
    return f"{ANONYMOUS_PREFIX}{address}.{what}"


def anonymous_address(session_id: str) -> str | None:
    """The (hashed) address an anonymous session belongs to; None for any other id."""
    if not session_id.startswith(ANONYMOUS_PREFIX):
        return None
    return session_id.split(".", 2)[1]


def address_block(peer: str) -> str:
    """What one client holds: an IPv4 address, or the /64 an IPv6 subscriber is given."""
    if ":" not in peer:
        return peer  # IPv4 as the socket gave it (the common case, without a parse)
    try:
        ip = ipaddress.ip_address(peer)
    except ValueError:
        return peer
    if isinstance(ip, ipaddress.IPv6Address):
        if ip.ipv4_mapped is not None:
            return str(ip.ipv4_mapped)
        return str(ipaddress.IPv6Network((ip, 64), strict=False))
    return str(ip)
