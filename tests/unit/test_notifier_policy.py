"""services/notifier/policy.py: backoff and its bound, the retry and fallback rule
(after_failure), bundling, rate limits and the storm settings."""

import random
from datetime import UTC, datetime, timedelta

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from services.common.backoff import exponential
from services.notifier.policy import (
    DEFAULT_RETRY_CAP_S,
    LATE_WINDOW,
    MAX_ATTEMPTS,
    NEVER_DELAYED,
    RETRY_CAP_S,
    TRIES_PER_WINDOW,
    RateLimiter,
    after_failure,
    next_attempt,
    retry_deadline,
    should_bundle,
)

T0 = datetime(2026, 11, 29, 2, 0, tzinfo=UTC)
DUE = T0 + timedelta(minutes=15)


def fail(**kw):
    args = dict(now=T0, severity="P1", deadline=DUE, queued_at=T0, contacts=3, contact_index=0,
                attempt=1, attempts_total=1, retryable=True, rng=random.Random(1))
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


def test_the_deadline_ends_it_and_the_guard_stops_a_runaway():
    assert fail(now=DUE, contact_index=2).at is None
    assert fail(now=DUE, contact_index=2, retryable=False).at is None
    assert fail(now=DUE, deadline=DUE, contacts=1).at is None


def test_past_the_deadline_the_remaining_contacts_are_still_tried_at_once():
    # Queued in time, first tried late (the notifier was down): no retry of the same contact and
    # no new round, but another channel may still reach the authority.
    later = DUE + timedelta(minutes=5)
    for retryable in (True, False):
        nxt = fail(now=later, attempt=1, retryable=retryable)
        assert (nxt.contact_index, nxt.attempt, nxt.at) == (1, 0, later)
    assert fail(attempts_total=12).at is not None  # the old budget no longer ends it early
    assert fail(attempts_total=MAX_ATTEMPTS).at is None
    assert fail(max_attempts=3, attempts_total=3, retryable=False).at is None


def test_retry_after_is_honoured_within_the_cap_and_deadline():
    nxt = fail(severity="P3", retry_after_s=20)
    assert nxt.at >= T0 + timedelta(seconds=20)
    near = T0 + timedelta(seconds=5)
    assert fail(severity="P3", retry_after_s=20, deadline=near).at == near
    assert fail(severity="P1", retry_after_s=3600).at <= T0 + timedelta(seconds=RETRY_CAP_S["P1"])


def cap_of(severity: str, window: timedelta) -> float:
    return max(RETRY_CAP_S.get(severity, DEFAULT_RETRY_CAP_S),
               window.total_seconds() / TRIES_PER_WINDOW)


def test_the_cap_is_the_severitys_or_a_share_of_a_long_window():
    assert cap_of("P1", timedelta(minutes=15)) == 30  # a P1 retries at least every 30 s
    assert cap_of("P3", timedelta(minutes=15)) == 300
    assert cap_of("P4", timedelta(days=3)) == 8640  # not every 5 minutes for 3 days
    for at in (None, 3600):  # Retry-After stays within the widened cap
        nxt = fail(severity="P4", deadline=T0 + timedelta(days=3), attempts_total=20,
                   retry_after_s=at, rng=random.Random(5))
        assert T0 < nxt.at <= T0 + timedelta(seconds=8640)


@given(attempts=st.integers(1, 40), seed=st.integers(0, 2**32),
       severity=st.sampled_from(["P1", "P2", "P3", "P4"]),
       window_s=st.floats(60, 3 * 86400))
@settings(max_examples=200)
def test_alerts_wait_at_most_their_cap(attempts, seed, severity, window_s):
    window = timedelta(seconds=window_s)
    nxt = fail(severity=severity, attempt=1, attempts_total=attempts, rng=random.Random(seed),
               deadline=T0 + window)
    assert nxt.at is not None and nxt.at <= T0 + timedelta(seconds=cap_of(severity, window))


def test_retry_deadline():
    assert retry_deadline("P1", None, T0) is None  # inform: one round
    assert retry_deadline("P1", DUE, T0) == DUE
    # Late when queued: its severity's acknowledgement window (DOMAIN.md), from then.
    acks = {"P1": timedelta(minutes=15), "P2": timedelta(hours=1), "P3": timedelta(hours=24),
            "P4": timedelta(hours=72)}
    for severity, window in acks.items():
        assert retry_deadline(severity, T0, T0) == T0 + window
        assert retry_deadline(severity, T0 - timedelta(hours=5), T0) == T0 + window


@pytest.mark.parametrize("severity", ["P1", "P2", "P3", "P4"])
def test_an_alert_telling_of_a_missed_deadline_without_one_of_its_own_is_late(severity):
    """The tier up that had acknowledged, told the tier below did not, has no deadline of its
    own: one round through its contacts left the news undelivered on a receiver's blip."""
    assert retry_deadline(severity, None, T0, late=True) == T0 + LATE_WINDOW[severity]
    assert retry_deadline(severity, DUE, T0, late=True) == DUE  # one of its own, still to come
    assert retry_deadline(severity, None, T0) is None  # an inform alert: one round


def fail_until_dead(severity, deadline, queued_at, contacts, seed, fail_s=0.0, permanent=()):
    """Every try fails (`fail_s` after it starts; the tries numbered in `permanent` for good):
    the start time of each try, and the waits between them, until the policy gives up. A try that
    starts past the deadline is checked here: only a fallback to the next contact, at once."""
    rng = random.Random(seed)
    at, ci, att, tot, starts, waits = queued_at, 0, 0, 0, [], []
    previous = None  # (contact, the time the previous try failed)
    while True:
        if at > deadline:
            assert previous is not None and (ci, at) == (previous[0] + 1, previous[1])
        starts.append(at)
        now = at + timedelta(seconds=fail_s)
        tot += 1
        att += 1
        nxt = after_failure(now=now, severity=severity, deadline=deadline, queued_at=queued_at,
                            contacts=contacts, contact_index=ci, attempt=att, attempts_total=tot,
                            retryable=tot not in permanent, rng=rng)
        if nxt.at is None:
            return starts, waits
        previous = (ci, now)
        waits.append((nxt.at - now).total_seconds())
        ci, att, at = nxt.contact_index, nxt.attempt, nxt.at


@given(severity=st.sampled_from(["P1", "P2"]), window_s=st.floats(60, 12 * 3600),
       contacts=st.integers(1, 3), seed=st.integers(0, 2**32), fail_s=st.floats(0, 20),
       permanent=st.sets(st.integers(1, 40), max_size=10))
@settings(max_examples=100, deadline=None)
def test_an_urgent_alert_is_retried_until_its_deadline(severity, window_s, contacts, seed,
                                                       fail_s, permanent):
    window = timedelta(seconds=window_s)
    cap = cap_of(severity, window)
    starts, waits = fail_until_dead(severity, T0 + window, T0, contacts, seed, fail_s, permanent)
    assert len(starts) < MAX_ATTEMPTS  # the deadline ended it, not the runaway guard
    on_time = [s for s in starts if s <= T0 + window]  # after it, only fallbacks at once
    assert on_time[-1] >= T0 + window - timedelta(seconds=cap)  # within one cap of the deadline
    assert max(waits, default=0) <= cap + 1e-6  # never a longer pause: P1 15 min, every 30 s


@given(severity=st.sampled_from(["P1", "P2", "P3", "P4"]),
       window_s=st.floats(1, 3 * 86400), contacts=st.integers(1, 3), seed=st.integers(0, 2**32))
@settings(max_examples=100, deadline=None)
def test_tries_across_a_window_stay_bounded(severity, window_s, contacts, seed):
    # Every try fails at once, the most tries a window can hold: the cap grows with the window
    # (TRIES_PER_WINDOW), so a 3-day window holds about as many as a 15-minute one.
    deadline = T0 + timedelta(seconds=window_s)
    starts, _ = fail_until_dead(severity, deadline, T0, contacts, seed)
    assert starts[-1] == deadline  # ended by the deadline...
    assert len(starts) < MAX_ATTEMPTS  # ...well before the guard


@given(severity=st.sampled_from(["P1", "P2", "P3", "P4"]), late_s=st.floats(0, 3 * 86400),
       contacts=st.integers(2, 3), seed=st.integers(0, 2**32),
       first_permanent=st.booleans())
@settings(max_examples=100, deadline=None)
def test_a_late_alert_falls_back_and_is_retried_within_its_late_window(
        severity, late_s, contacts, seed, first_permanent):
    # A breach told to a supervisor, a missed milestone: its deadline passed before it was queued.
    deadline = retry_deadline(severity, T0 - timedelta(seconds=late_s), T0)
    assert deadline == T0 + LATE_WINDOW[severity]
    first = fail(severity=severity, deadline=deadline, contacts=contacts,
                 retryable=not first_permanent, rng=random.Random(seed))
    if first_permanent:
        assert (first.contact_index, first.attempt, first.at) == (1, 0, T0)  # the next, at once
    else:
        assert first.contact_index == 0 and T0 <= first.at <= deadline
    starts, _ = fail_until_dead(severity, deadline, T0, contacts, seed,
                                permanent={1} if first_permanent else ())
    assert all(T0 <= s <= deadline for s in starts)  # within its late window...
    assert starts[-1] == deadline  # ...until its end
    assert len(starts) < MAX_ATTEMPTS


def test_p2_is_never_delayed_by_the_notifiers_limiter():
    limiter = RateLimiter(per_minute=1, burst=1, never_limited=NEVER_DELAYED)
    assert all(limiter.allow("a", "P2", T0) for _ in range(50))
    assert not limiter.allow("a", "P3", T0)  # the P2 storm used the tokens


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
    assert T0 <= at <= T0 + timedelta(seconds=exponential(attempt, base, cap))
    assert (at - T0).total_seconds() <= cap + 1e-6
    if deadline is not None:
        assert at <= deadline


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
