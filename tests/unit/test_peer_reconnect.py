"""The clients' reconnect cores: the schedule, the speaker's watchdog and its verdicts."""

from __future__ import annotations

import random

import pytest

from townhall.peers.backoff import (
    RECONNECT_CAP_S,
    RECONNECT_JITTER_S,
    RECONNECT_STEPS_S,
    reconnect_delay,
)
from townhall.peers.speak import OfferVerdict, offer_verdict, stage_lost


class FixedRng(random.Random):
    """A uniform draw that always lands at ``share`` of its range."""

    def __init__(self, share: float) -> None:
        super().__init__(0)
        self.share = share

    def uniform(self, a: float, b: float) -> float:
        return a + (b - a) * self.share


def test_the_schedule_without_jitter_is_the_steps_then_the_cap() -> None:
    rng = FixedRng(0.0)
    delays = [reconnect_delay(n, rng) for n in range(8)]
    assert delays == [0.0, 0.3, 1.2, 2.7, 4.8, 7.0, 7.0, 7.0]
    assert tuple(delays[:5]) == RECONNECT_STEPS_S and delays[-1] == RECONNECT_CAP_S


def test_jitter_adds_up_to_one_second_to_every_step() -> None:
    rng = random.Random(7)
    for attempt in range(10):
        base = reconnect_delay(attempt, FixedRng(0.0))
        draws = [reconnect_delay(attempt, rng) - base for _ in range(200)]
        assert min(draws) >= 0.0 and max(draws) <= RECONNECT_JITTER_S
        assert max(draws) - min(draws) > 0.5, "the crowd is not spread"


def test_a_longer_retry_after_wins_and_a_shorter_one_does_not() -> None:
    rng = FixedRng(0.5)
    assert reconnect_delay(0, rng, retry_after_s=5.0) == 5.0
    assert reconnect_delay(5, rng, retry_after_s=1.0) == pytest.approx(7.5)


def test_a_speaker_hearing_the_mix_minus_is_on_stage() -> None:
    assert stage_lost(10.0, 0.0, 9.9, "connected", 1.5) is None
    assert stage_lost(10.0, 0.0, 8.6, "connected", 1.5) is None


def test_no_audio_for_the_limit_is_a_lost_stage() -> None:
    why = stage_lost(10.0, 0.0, 8.4, "connected", 1.5)
    assert why is not None and "no audio" in why


def test_a_fresh_connection_gets_the_limit_before_its_first_frame() -> None:
    assert stage_lost(11.0, 10.0, None, "connected", 1.5) is None
    assert stage_lost(11.6, 10.0, None, "connected", 1.5) is not None
    # A frame from the connection before does not count against the new one.
    assert stage_lost(11.0, 10.0, 2.0, "connected", 1.5) is None


@pytest.mark.parametrize("state", ["failed", "closed"])
def test_a_failed_or_closed_connection_is_lost_at_once(state: str) -> None:
    why = stage_lost(10.0, 9.99, 9.99, state, 1.5)
    assert why is not None and state in why


@pytest.mark.parametrize(
    ("status", "verdict"),
    [
        (None, OfferVerdict.RETRY),  # refused, reset, timed out
        (503, OfferVerdict.RETRY),  # the stage is restarting
        (409, OfferVerdict.RETRY),  # the stage is not open (yet again)
        (429, OfferVerdict.RETRY),
        (500, OfferVerdict.RETRY),
        (502, OfferVerdict.RETRY),
        (401, OfferVerdict.STOP),
        (403, OfferVerdict.STOP),  # removed, or moved to the audience
        (404, OfferVerdict.STOP),
        (400, OfferVerdict.STOP),
    ],
)
def test_offer_verdicts(status: int | None, verdict: OfferVerdict) -> None:
    assert offer_verdict(status) is verdict
