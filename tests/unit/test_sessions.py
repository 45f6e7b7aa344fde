"""Signed listener session ids: issued by the server, checked by any worker with the key."""

from __future__ import annotations

import random
import string

from townhall.sessions import (
    SESSION_ID_CHARS,
    SessionSigner,
    address_block,
    anonymous_address,
    anonymous_session,
    session_key,
)

KEY = session_key("token secret")


def test_an_issued_id_verifies_for_its_space_only() -> None:
    signer = SessionSigner(KEY)
    sid = signer.issue("space1")
    assert len(sid) == SESSION_ID_CHARS == 29
    assert set(sid) <= set(string.ascii_letters + string.digits + "-_.")  # a query value as is
    assert signer.verify("space1", sid)
    assert not signer.verify("space2", sid)  # an id issued for one Space counts nowhere else
    assert not SessionSigner(session_key("another secret")).verify("space1", sid)


def test_forged_and_altered_ids_do_not_verify() -> None:
    signer = SessionSigner(KEY)
    sid = signer.issue("sp")
    rng = random.Random(7)
    alphabet = string.ascii_letters + string.digits + "-_"
    forged = ["", "x", "listener1", sid[:-1], sid + "A", sid.replace(".", "-")]
    forged += ["".join(rng.choice(alphabet) for _ in range(29)) for _ in range(1_000)]
    forged += [f"{sid[:12]}.{''.join(rng.choice(alphabet) for _ in range(16))}" for _ in range(100)]
    flipped = sid[:3] + ("A" if sid[3] != "A" else "B") + sid[4:]
    forged.append(flipped)  # the random part changed, the MAC kept
    assert not any(signer.verify("sp", f) for f in forged)


def test_the_key_is_derived_not_the_token_secret() -> None:
    # A worker holding it checks ids but cannot sign listener tokens (JWTs) with it.
    assert KEY != b"token secret" and len(KEY) == 32
    assert session_key("token secret") == KEY


def test_anonymous_keys_carry_the_address_hashed_and_never_look_issued() -> None:
    signer = SessionSigner(KEY)
    a = anonymous_session(KEY, "203.0.113.9", "VLC/3.0")
    b = anonymous_session(KEY, "203.0.113.9", "mpv")
    c = anonymous_session(KEY, "198.51.100.1", "VLC/3.0")
    assert anonymous_address(a) == anonymous_address(b) != anonymous_address(c)
    assert a != b and "203.0.113.9" not in a  # the address is not readable in the key
    assert not signer.verify("sp", a)
    assert anonymous_address(signer.issue("sp")) is None


def test_an_ipv6_subscriber_is_one_address_per_64() -> None:
    assert address_block("2001:db8:1:2::1") == address_block("2001:db8:1:2:ffff::9")
    assert address_block("2001:db8:1:2::1") != address_block("2001:db8:1:3::1")
    assert address_block("::ffff:192.0.2.1") == "192.0.2.1"
    assert address_block("192.0.2.1") == "192.0.2.1"
