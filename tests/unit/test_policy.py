import itertools
import random
from datetime import UTC, datetime, timedelta

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from services.notifier.policy import (
    RateLimiter,
    backoff_bound,
    next_attempt,
    should_bundle,
)

T0 = datetime(2026, 11, 29, 2, 0, tzinfo=UTC)


class MaxRandom(random.Random):
    """Always the top of the jitter range, to see the bound itself."""

    def uniform(self, a, b):
        return b


@given(
    attempt=st.integers(1, 40),
    base=st.floats(0.1, 10),
    cap=st.floats(1, 3600),
    seed=st.integers(0, 2**32),
    deadline_s=st.one_of(st.none(), st.floats(-100, 10_000)),
)
@settings(max_examples=300)
def test_backoff_never_past_deadline_and_jitter_in_range(attempt, base, cap, seed, deadline_s):
    deadline = None if deadline_s is None else T0 + timedelta(seconds=deadline_s)
    at = next_attempt(attempt, T0, deadline, base_s=base, cap_s=cap, rng=random.Random(seed),
                      max_attempts=100)
    if deadline is not None and deadline <= T0:
        assert at is None
        return
    assert at is not None
    assert T0 <= at <= T0 + timedelta(seconds=backoff_bound(attempt, base, cap))
    assert (at - T0).total_seconds() <= cap + 1e-6
    if deadline is not None:
        assert at <= deadline


@given(base=st.floats(0.1, 10), cap=st.floats(1, 3600))
def test_backoff_bound_grows_until_the_cap(base, cap):
    bounds = [backoff_bound(a, base, cap) for a in range(1, 40)]
    assert all(b2 >= b1 for b1, b2 in itertools.pairwise(bounds))
    assert bounds[0] == min(base, cap)
    assert bounds[-1] == cap


def test_waits_grow_at_the_top_of_the_jitter():
    waits = [(next_attempt(a, T0, None, rng=MaxRandom()) - T0).total_seconds() for a in range(1, 12)]
    assert waits[:5] == [1, 2, 4, 8, 16]
    assert waits[-1] == 300


def test_jitter_spreads_retries():
    rng = random.Random(7)
    waits = {next_attempt(5, T0, None, rng=rng) for _ in range(50)}
    assert len(waits) > 40


def test_stops_after_the_attempt_cap_and_past_the_deadline():
    assert next_attempt(12, T0, None, max_attempts=12) is None
    assert next_attempt(11, T0, None, max_attempts=12) is not None
    assert next_attempt(1, T0, T0) is None
    assert next_attempt(1, T0, T0 - timedelta(seconds=1)) is None


def test_last_try_lands_on_the_deadline():
    deadline = T0 + timedelta(seconds=3)
    assert next_attempt(10, T0, deadline, rng=MaxRandom()) == deadline


def test_attempt_counts_from_one():
    with pytest.raises(ValueError):
        next_attempt(0, T0, None)


@given(n=st.integers(1, 500), gap_ms=st.integers(0, 5000))
@settings(max_examples=100)
def test_p1_is_never_rate_limited(n, gap_ms):
    limiter = RateLimiter(per_minute=1, burst=2)
    now = T0
    for _ in range(n):
        assert limiter.allow("auth-1", "P1", now)
        now += timedelta(milliseconds=gap_ms)


def test_lower_severities_are_limited_per_recipient():
    limiter = RateLimiter(per_minute=6, burst=3)
    assert [limiter.allow("a", "P3", T0) for _ in range(4)] == [True, True, True, False]
    assert limiter.allow("b", "P3", T0)  # another recipient has its own bucket
    assert limiter.next_allowed("a", T0) == T0 + timedelta(seconds=10)
    assert not limiter.allow("a", "P2", T0 + timedelta(seconds=9))
    assert limiter.allow("a", "P2", T0 + timedelta(seconds=10))


def test_a_p1_storm_slows_others_to_that_recipient_but_not_p1():
    limiter = RateLimiter(per_minute=6, burst=2)
    assert limiter.allow("a", "P1", T0) and limiter.allow("a", "P1", T0)
    assert not limiter.allow("a", "P2", T0)
    assert limiter.allow("a", "P1", T0)


def test_prune_forgets_refilled_buckets():
    limiter = RateLimiter(per_minute=60, burst=2)
    limiter.allow("a", "P3", T0)
    limiter.allow("b", "P3", T0 + timedelta(seconds=100))
    limiter.prune(T0 + timedelta(seconds=100))
    assert set(limiter._buckets) == {"b"}


@pytest.mark.parametrize("severity,kind,expected", [
    ("P3", "reminder", True), ("P4", "reminder", True),
    ("P1", "reminder", False), ("P2", "reminder", False),
    ("P3", "alert", False), ("P4", "breach", False), ("P3", "escalated", False),
    ("P4", "inform", False),
])
def test_only_p3_p4_reminders_are_bundled(severity, kind, expected):
    assert should_bundle(severity, kind) is expected
