"""The notifier's retry and fallback rule (policy.after_failure) and its storm settings."""

import random
from datetime import UTC, datetime, timedelta

from hypothesis import given, settings
from hypothesis import strategies as st

from services.notifier.policy import (
    NEVER_DELAYED,
    RETRY_CAP_S,
    RateLimiter,
    after_failure,
)

T0 = datetime(2026, 11, 29, 2, 0, tzinfo=UTC)
DUE = T0 + timedelta(minutes=15)


def fail(**kw):
    args = dict(now=T0, severity="P1", deadline=DUE, contacts=3, contact_index=0, attempt=1,
                attempts_total=1, retryable=True, rng=random.Random(1))
    args.update(kw)
    return after_failure(**args)


def test_a_retryable_failure_stays_on_the_contact_after_a_backoff():
    nxt = fail()
    assert (nxt.contact_index, nxt.attempt) == (0, 1)
    assert T0 <= nxt.at <= T0 + timedelta(seconds=1)


def test_a_permanent_failure_moves_to_the_next_contact_at_once():
    nxt = fail(retryable=False)
    assert (nxt.contact_index, nxt.attempt, nxt.at) == (1, 0, T0)


def test_after_per_contact_tries_the_next_contact_goes_at_once():
    nxt = fail(attempt=3, attempts_total=3)
    assert (nxt.contact_index, nxt.at) == (1, T0)


def test_after_the_last_contact_a_new_round_waits():
    nxt = fail(contact_index=2, attempt=3, attempts_total=9)
    assert nxt.contact_index == 0 and nxt.at is not None and nxt.at > T0


def test_one_contact_is_not_hammered_when_it_wraps_round():
    nxt = fail(contacts=1, attempt=3, attempts_total=3, rng=random.Random(3))
    assert nxt.contact_index == 0 and nxt.at > T0


def test_an_alert_without_deadline_has_one_round():
    assert fail(deadline=None, contact_index=2, attempt=3, attempts_total=9).at is None
    assert fail(deadline=None, contact_index=2, retryable=False, attempts_total=3).at is None
    assert fail(deadline=None, contact_index=1, retryable=False).at == T0


def test_the_budget_and_the_deadline_end_it():
    assert fail(attempts_total=12).at is None
    assert fail(max_attempts=3, attempts_total=3, retryable=False).at is None
    assert fail(now=DUE).at is None


def test_retry_after_is_honoured_within_the_cap_and_deadline():
    nxt = fail(severity="P3", retry_after_s=20)
    assert nxt.at >= T0 + timedelta(seconds=20)
    near = T0 + timedelta(seconds=5)
    assert fail(severity="P3", retry_after_s=20, deadline=near).at == near
    assert fail(severity="P1", retry_after_s=3600).at <= T0 + timedelta(seconds=RETRY_CAP_S["P1"])


@given(attempts=st.integers(1, 11), seed=st.integers(0, 2**32),
       severity=st.sampled_from(["P1", "P2", "P3", "P4"]))
@settings(max_examples=200)
def test_urgent_alerts_wait_at_most_their_cap(attempts, seed, severity):
    nxt = fail(severity=severity, attempt=1, attempts_total=attempts, rng=random.Random(seed),
               deadline=T0 + timedelta(days=3))
    cap = RETRY_CAP_S.get(severity, 300)
    assert nxt.at is not None and nxt.at <= T0 + timedelta(seconds=cap)


def test_p2_is_never_delayed_by_the_notifiers_limiter():
    limiter = RateLimiter(per_minute=1, burst=1, never_limited=NEVER_DELAYED)
    assert all(limiter.allow("a", "P2", T0) for _ in range(50))
    assert not limiter.allow("a", "P3", T0)  # the P2 storm used the tokens
