"""Delivery policy, pure (no I/O, no clock): retry timing, storm limits, bundling.

Callers pass `now`; randomness comes from an injectable `rng` so tests are deterministic.
"""

import random
from dataclasses import dataclass
from datetime import datetime, timedelta

from services.common import backoff

# Only a guard against a runaway: an alert with a deadline is tried until its deadline, 65-90
# tries (about 120 at the most) when every try fails at once; the guard must not end it sooner.
MAX_ATTEMPTS = 150
PER_CONTACT = 3  # attempts on one contact before falling back to the next
BUNDLE_WINDOW = timedelta(minutes=5)  # P3-P4 reminders to one recipient within this go together
BUNDLE_MAX = 10  # cases in one bundled message; more wait for the next one
# An SMS is held to two segments (render.SMS_MAX_SEGMENTS) and lists each case once, with its
# link (about 100 characters): two fit, folded to GSM-7 when Vietnamese needs it.
SMS_BUNDLE_MAX = 2
NEVER_LIMITED = frozenset({"P1"})  # DOMAIN: storm protection never delays a P1
NEVER_DELAYED = frozenset({"P1", "P2"})  # the notifier's choice: urgent alerts never wait
# The longest wait between tries: a receiver that comes back sees an urgent alert soon.
RETRY_CAP_S = {"P1": 30.0, "P2": 60.0}
DEFAULT_RETRY_CAP_S = 300.0
# A long window raises the cap to a share of it, so a 3-day window is not tried every 5 minutes.
TRIES_PER_WINDOW = 30
# DOMAIN.md's acknowledgement windows, in clock time: how long an alert that was already late
# when queued (a breach told to a supervisor, a missed milestone) is retried.
LATE_WINDOW = {"P1": timedelta(minutes=15), "P2": timedelta(hours=1),
               "P3": timedelta(hours=24), "P4": timedelta(hours=72)}


def next_attempt(
    attempt: int,
    now: datetime,
    deadline: datetime | None,
    base_s: float = 1.0,
    cap_s: float = 300.0,
    rng: random.Random | None = None,
    max_attempts: int = MAX_ATTEMPTS,
) -> datetime | None:
    """When to try again after `attempt` failed attempts, or None to stop trying this contact.

    Full jitter (a uniform wait in [0, bound]) spreads the retries of many alerts to one receiver
    that has just come back. The wait is cut at `deadline`, so the last try lands on it; at or past
    the deadline, or after `max_attempts`, it is None and the caller falls back or dead-letters.
    """
    if attempt < 1:
        raise ValueError("attempt counts failed attempts, starting at 1")
    if attempt >= max_attempts:
        return None
    if deadline is not None and now >= deadline:
        return None
    wait = (rng or random).uniform(0, backoff.exponential(attempt, base_s, cap_s))
    at = now + timedelta(seconds=wait)
    return min(at, deadline) if deadline is not None else at


@dataclass
class _Bucket:
    tokens: float
    updated: datetime


class RateLimiter:
    """A token bucket per recipient: `burst` messages at once, then `per_minute` a minute.

    P1 (every severity in `never_limited`) is always allowed. It still takes a token when one is
    there, so a P1 storm slows the lower severities to the same recipient but is never slowed.
    """

    def __init__(self, per_minute: float = 6.0, burst: int = 10, max_recipients: int = 100_000,
                 never_limited: frozenset[str] = NEVER_LIMITED):
        if per_minute <= 0 or burst < 1:
            raise ValueError("per_minute must be > 0 and burst >= 1")
        self.never_limited = never_limited
        self.rate_s = per_minute / 60.0
        self.burst = float(burst)
        self.max_recipients = max_recipients
        self._buckets: dict[str, _Bucket] = {}

    def _refill(self, recipient: str, now: datetime) -> _Bucket:
        bucket = self._buckets.get(recipient)
        if bucket is None:
            if len(self._buckets) >= self.max_recipients:
                self.prune(now)
            bucket = self._buckets[recipient] = _Bucket(self.burst, now)
        elapsed = max(0.0, (now - bucket.updated).total_seconds())
        bucket.tokens = min(self.burst, bucket.tokens + elapsed * self.rate_s)
        bucket.updated = max(bucket.updated, now)
        return bucket

    def allow(self, recipient: str, severity: str, now: datetime) -> bool:
        bucket = self._refill(recipient, now)
        if bucket.tokens >= 1:
            bucket.tokens -= 1
            return True
        return severity in self.never_limited

    def next_allowed(self, recipient: str, now: datetime) -> datetime:
        """When a refused message may go: the time the next token arrives."""
        bucket = self._refill(recipient, now)
        missing = max(0.0, 1 - bucket.tokens)
        return now + timedelta(seconds=missing / self.rate_s)

    def prune(self, now: datetime) -> None:
        """Forget recipients whose bucket has refilled: they are back to the default state."""
        full_after = self.burst / self.rate_s
        self._buckets = {
            r: b for r, b in self._buckets.items()
            if (now - b.updated).total_seconds() * self.rate_s + b.tokens < self.burst
            and (now - b.updated).total_seconds() < full_after
        }


def should_bundle(severity: str, kind: str) -> bool:
    """Only P3-P4 reminders wait to be bundled; alerts, breaches and higher severities never do."""
    return severity in ("P3", "P4") and kind == "reminder"


def bundle_max(channel: str) -> int:
    """The most cases one message on `channel` carries (a case's reminders count once)."""
    return SMS_BUNDLE_MAX if channel == "sms" else BUNDLE_MAX


def joins(cases: set[str], case_id: str, channel: str) -> bool:
    """Whether a reminder about `case_id` may join a bundle already about `cases`: one more
    reminder of a case it has costs nothing; split by reminder, two SMS had the same text."""
    return case_id in cases or len(cases) < bundle_max(channel)


def retry_deadline(severity: str, due: datetime | None, queued_at: datetime,
                   late: bool = False) -> datetime | None:
    """Until when a failed alert is retried: its deadline `due`, or, when it was late when
    queued, its severity's LATE_WINDOW from then. Late: `due` had passed by then, or `late`,
    an alert without a deadline of its own that tells of one missed (the tier up that had
    acknowledged, told the tier below did not): news that needs action soon, not just a notice.
    None (no deadline: an inform alert) means one round through its contacts."""
    if due is None and not late:
        return None
    if due is None or due <= queued_at:
        return queued_at + LATE_WINDOW.get(severity, LATE_WINDOW["P4"])
    return due


@dataclass(frozen=True)
class NextTry:
    """Where a failed delivery goes next: which contact, and when (None: dead-letter it)."""

    contact_index: int
    attempt: int  # attempts already made on that contact
    at: datetime | None


def after_failure(
    *,
    now: datetime,
    severity: str,
    deadline: datetime | None,
    queued_at: datetime,
    contacts: int,
    contact_index: int,
    attempt: int,
    attempts_total: int,
    retryable: bool,
    retry_after_s: float | None = None,
    per_contact: int = PER_CONTACT,
    max_attempts: int = MAX_ATTEMPTS,
    rng: random.Random | None = None,
) -> NextTry:
    """The retry and fallback rule, after `attempt` failures on the current contact.

    - A retryable failure is tried again on the same contact after a backoff, `per_contact`
      times; a permanent one (bad address, 4xx, SMTP 5xx) moves on at once.
    - Moving on to the next contact is immediate: another channel may well work now.
    - After the last contact, an alert with a deadline (retry_deadline) starts a new round after
      a backoff, until the deadline; one without (inform) has had its one round.
    - Past the deadline there are no more retries or rounds, but the round's remaining contacts
      are still tried, at once: an alert first tried late (the notifier was down) must not be
      dead-lettered on its first channel's failure while another channel would reach someone.
    Backoff waits are capped by severity (RETRY_CAP_S), or by the window from `queued_at` to the
    deadline over TRIES_PER_WINDOW when that is longer; a receiver's Retry-After is honoured
    within the cap and the deadline. `max_attempts` only stops a runaway.
    """
    stop = NextTry(contact_index, attempt, None)
    following = contact_index + 1
    if attempts_total >= max_attempts:
        return stop
    if deadline is not None and now >= deadline:
        return NextTry(following, 0, now) if following < contacts else stop
    cap = RETRY_CAP_S.get(severity, DEFAULT_RETRY_CAP_S)
    if deadline is not None:
        cap = max(cap, (deadline - queued_at).total_seconds() / TRIES_PER_WINDOW)

    def backoff() -> datetime | None:
        at = next_attempt(attempts_total, now, deadline, cap_s=cap, rng=rng,
                          max_attempts=max_attempts)
        if at is not None and retry_after_s:
            at = max(at, now + timedelta(seconds=min(retry_after_s, cap)))
            at = min(at, deadline) if deadline is not None else at
        return at

    if retryable and attempt < per_contact:
        return NextTry(contact_index, attempt, backoff())
    if following < contacts:
        return NextTry(following, 0, now)
    if deadline is None:
        return stop  # one round through the contacts
    return NextTry(0, 0, backoff())  # every contact failed: a new round, after a pause
