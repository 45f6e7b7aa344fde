"""Small cores behind the control plane: tokens, rate limits, the store, the config."""

from __future__ import annotations

from pathlib import Path

import jwt
import pytest

from townhall.cli import _parser, server_config
from townhall.config import ServerConfig, from_env
from townhall.errors import BadRequest, Forbidden, NotFound, Unauthorized
from townhall.ratelimit import RateLimited, RateLimiter
from townhall.room.roles import Role
from townhall.store import Store
from townhall.tokens import TokenIssuer

SECRET = "a-test-secret-that-is-32-bytes-long"
ISSUER = TokenIssuer(SECRET)


def test_a_token_carries_space_role_and_identity() -> None:
    token = ISSUER.issue("sp1", Role.SPEAKER, "Ada", participant_id="p1", now=1_000.0, ttl_s=60)
    claims = jwt.decode(token, SECRET, algorithms=["HS256"], options={"verify_exp": False})
    assert (claims["space"], claims["role"], claims["sub"], claims["exp"]) == (
        "sp1",
        "speaker",
        "p1",
        1060,
    )
    grant = ISSUER.verify(ISSUER.issue("sp1", Role.HOST, "H", participant_id="h"), "sp1")
    assert (grant.role, grant.participant_id, grant.name) == (Role.HOST, "h", "H")


@pytest.mark.parametrize(
    ("token", "space", "error", "says"),
    [
        (ISSUER.issue("sp1", Role.HOST, "H", ttl_s=-5), "sp1", Unauthorized, "expired"),
        (
            TokenIssuer("another-secret-of-at-least-32-bytes!").issue("sp1", Role.HOST, "H"),
            "sp1",
            Unauthorized,
            "invalid",
        ),
        ("not-a-jwt", "sp1", Unauthorized, "invalid"),
        (ISSUER.issue("sp2", Role.HOST, "H"), "sp1", Forbidden, "another space"),
        (
            jwt.encode({"space": "sp1", "role": "admin", "sub": "x", "exp": 2**40}, SECRET),
            "sp1",
            Unauthorized,
            "role",
        ),
        (
            jwt.encode({"space": "sp1", "role": "host", "sub": "x"}, SECRET),
            "sp1",
            Unauthorized,
            "exp",
        ),
    ],
)
def test_bad_tokens_are_refused_with_a_reason(
    token: str, space: str, error: type, says: str
) -> None:
    with pytest.raises(error, match=says):
        ISSUER.verify(token, space)


def test_every_role_travels_by_its_wire_name() -> None:
    for role in Role:
        token = ISSUER.issue("sp1", role, "R")
        claims = jwt.decode(token, SECRET, algorithms=["HS256"])
        assert claims["role"] == role.value
        assert ISSUER.verify(token, "sp1").role is role
    unhashable = jwt.encode({"space": "sp1", "role": ["host"], "sub": "x", "exp": 2**40}, SECRET)
    with pytest.raises(Unauthorized, match="role"):
        ISSUER.verify(unhashable, "sp1")


def test_rate_limiter_allows_a_burst_then_refills_at_its_rate() -> None:
    limiter = RateLimiter(rate_per_s=2.0, burst_actions=3)
    for _ in range(3):
        limiter.take("alice", now=0.0)
    with pytest.raises(RateLimited) as refused:
        limiter.take("alice", now=0.0)
    assert refused.value.status == 429 and refused.value.retry_after_s == pytest.approx(0.5)
    limiter.take("bob", now=0.0)  # keys are independent
    limiter.take("alice", now=0.5)  # one token back after half a second


def test_rate_limiter_memory_is_bounded() -> None:
    limiter = RateLimiter(rate_per_s=1.0, burst_actions=1, max_keys=100)
    for i in range(1_000):
        limiter.take(f"ip{i}", now=0.0)
    assert len(limiter._buckets) == 100


def test_the_store_keeps_spaces_and_settings(tmp_path: Path) -> None:
    store = Store(tmp_path / "db.sqlite3")
    key = store.setting("admin_key", "first")
    assert store.setting("admin_key", "second") == key == "first"  # stable across starts
    space = store.create_space("Town hall", "about", scheduled_at=123.0)
    assert (space.state, space.title, space.scheduled_at) == ("scheduled", "Town hall", 123.0)
    store.set_state(space.id, "live", 200.0)
    store.set_state(space.id, "ended", 300.0)
    again = Store(tmp_path / "db.sqlite3").space(space.id)
    assert (again.state, again.started_at, again.ended_at) == ("ended", 200.0, 300.0)
    with pytest.raises(NotFound):
        store.space("nope")


def test_config_from_environment_then_flags() -> None:
    env = {
        "TOWNHALL_CONTROL_PORT": "9000",
        "TOWNHALL_DATA_DIR": "/srv/th",
        "TOWNHALL_HOST": "0.0.0.0",
    }
    config = from_env(ServerConfig(), env)
    assert (config.control_port, config.data_dir, config.host) == (9000, Path("/srv/th"), "0.0.0.0")
    assert config.control_url == "http://0.0.0.0:9000"
    args = _parser().parse_args(
        ["serve", "--audience-port", "9100", "--stream-flush-interval-s", "1"]
    )
    flagged = server_config(args)
    assert flagged.audience_port == 9100
    assert flagged.audience.channel.fanout.flush_interval_s == 1.0
    assert flagged.audience.worker_nice == ServerConfig().audience.worker_nice == 8
    nice = server_config(_parser().parse_args(["serve", "--audience-worker-nice", "0"]))
    assert nice.audience.worker_nice == 0


def test_errors_carry_their_wire_meaning() -> None:
    assert BadRequest("x").to_json() == {"error": "bad_request", "detail": "x"}
    assert (BadRequest.status, Unauthorized.status, Forbidden.status, NotFound.status) == (
        400,
        401,
        403,
        404,
    )
