"""The notifier: every alert becomes a durable delivery row, worked until delivered or dead.

The Kafka handler only records the alert (idempotent by alert id) and commits; the worker loop
claims due rows, sends, and records each outcome with its receipt event in one transaction, so a
crash or a receiver outage delays an alert but never loses it, and the receiver's Idempotency-Key
drops the repeat that a crash between sending and recording can cause.

Row states: pending (due at next_at) -> sending (leased until next_at) -> delivered | dead, or
back to pending for a retry. Receipts (DeliveryOutcome on the deliveries topic): `attempted` when
a row is leased for a send, then `delivered` or `failed`, and `dead_lettered` after the last try.
P3-P4 reminders wait up to BUNDLE_WINDOW and go to one contact as one message (docs/notifier.md).
"""

import asyncio
import hashlib
from dataclasses import dataclass, field
from datetime import datetime, timedelta
from types import SimpleNamespace
from typing import get_args

import structlog
from sqlalchemy import Row, bindparam, select, update

from schemas.events import (
    AlertKind, AlertRequested, Contact, DeliveryOutcome, Envelope, Topics,
)
from services.common import metrics, outbox
from services.common.db import add_bulk, is_postgres, log_failure, utcnow
from services.common.group_commit import GroupCommit
from services.common.links import sign_link
from services.notifier import policy
from services.notifier.channels import ChannelConfig, DeliveryError, aclose, build_channels
from services.notifier.render import Renderer
from services.notifier.store import Delivery

log = structlog.get_logger("beacon.notifier")
SERVICE = "notifier"
SOURCE = "beacon/notifier"
LINK_TTL = timedelta(days=7)
# Sends in flight. A claim fills the free slots once a quarter are free, so more slots mean
# fewer claim transactions per delivery: 128 against 64 gave about a tenth more deliveries/s.
CONCURRENCY = 128
# Jobs claimed and not yet recorded: sending, or sent and waiting for the group commit. Unbounded,
# the sends outran their records: with 6,000 alerts queued the last outcome was committed seconds
# after the last send, and a longer backlog would outlive its leases and be sent again.
UNRECORDED_MAX = 8 * CONCURRENCY
LEASE_MARGIN = timedelta(seconds=10)
RECORD_GATHER_S = 0.005  # outcomes recorded together; the messages themselves are already sent


@dataclass
class Job:
    """One message to send: a single alert, or a bundle of reminders to one contact."""

    members: list[tuple[Row, AlertRequested]]  # (the delivery row, its alert)
    contact: Contact
    lease: datetime  # the rows' next_at while leased: a record only counts if it still holds
    bundle: str | None = field(init=False, default=None)  # kept on its rows (`Delivery.bundle`)

    def __post_init__(self) -> None:
        # Named by its members, never carried over: the same rows sent again are the same key,
        # and a different set (a member dead, or held by another instance) is never taken by
        # the receiver for a repeat of the message it had.
        if len(self.members) > 1:
            ids = ",".join(sorted(a.alert_id for _, a in self.members))
            self.bundle = "bundle-" + hashlib.sha256(ids.encode()).hexdigest()[:32]

    @property
    def key(self) -> str:
        """The Idempotency-Key: the alert id, or the bundle's key."""
        return self.bundle or self.members[0][1].alert_id


class Notifier:
    def __init__(self, rt):
        self.rt = rt
        s = rt.settings
        secret, *previous = s.webhook_secrets()
        config = ChannelConfig(
            webhook_secret=secret, previous_secrets=previous, smtp_host=s.smtp_host,
            smtp_port=s.smtp_port, smtp_starttls=s.smtp_starttls, smtp_username=s.smtp_username,
            smtp_password=s.smtp_password, mail_from=s.mail_from,
            sms_gateway_url=s.sms_gateway_url, sms_secret=secret,
        )
        self.channels = build_channels(config)
        # The longest a send may take, whatever the channel: send() cuts it there.
        self.send_bound = timedelta(seconds=max(config.webhook_timeout_s, config.smtp_timeout_s,
                                                config.sms_timeout_s))
        self.link_secret = s.secret("secret_key")
        self.renderer = Renderer()
        self.limiter = policy.RateLimiter(never_limited=policy.NEVER_DELAYED)
        self.max_attempts = policy.MAX_ATTEMPTS
        self._wake = asyncio.Event()
        # SQLite runs on the loop, so a transaction never waits for the next send to finish:
        # the gather lets the sends finishing now be recorded together, not one by one.
        self._record_group = GroupCommit(rt.db.writes, gather_s=RECORD_GATHER_S,
                                         write=self._record_jobs)
        self._sending = 0  # sends in flight (slots taken)
        self._open = 0  # jobs claimed and not yet recorded: sending, or waiting for the commit
        self._urgent = False  # an urgent alert (P1, P2) or a fallback is due: any free slot will do

    @property
    def lease(self) -> timedelta:
        """A claimed row is sent again after its lease if its worker died. The lease outlasts the
        send bound, so a live worker is not doubled (the margin covers the claim and record)."""
        return self.send_bound + LEASE_MARGIN

    async def aclose(self) -> None:
        await aclose(self.channels)

    async def handle(self, envelopes: list[Envelope]) -> None:
        """Queue a batch of alerts in one transaction; repeats of queued alerts are dropped."""
        alerts = [a for e in envelopes if isinstance(a := e.payload(), AlertRequested)]
        if not alerts:
            return
        now = utcnow()
        async with self.rt.db.writes() as session, session.begin():
            known = set((await session.scalars(select(Delivery.alert_id).where(
                Delivery.alert_id.in_({a.alert_id for a in alerts})))).all())
            for alert in alerts:
                if alert.alert_id in known:
                    continue
                known.add(alert.alert_id)
                add_bulk(session, Delivery,
                         alert_id=alert.alert_id, case_id=alert.case_id,
                         authority_id=alert.authority_id, severity=alert.severity,
                         alert=alert.model_dump(mode="json"), status="pending", contact_index=0,
                         attempt=0, attempts_total=0, next_at=self._first_due(alert, now),
                         created_at=now, updated_at=now)
        self._urgent = self._urgent or any(a.severity in policy.NEVER_DELAYED for a in alerts)
        self._wake.set()

    def _first_due(self, alert: AlertRequested, now: datetime) -> datetime:
        if not policy.should_bundle(alert.severity, alert.kind):
            return now
        # Held for the window so that reminders to the same contact can join it.
        due = now + policy.BUNDLE_WINDOW
        if (deadline := _deadline(alert)) is not None:
            due = max(now, min(due, deadline))
        return due

    # --- the worker loop ---------------------------------------------------------------------

    async def run(self) -> None:
        """Claim what is due into free slots; a slow send never holds up the next P1.

        A slot is a send in flight: it frees when the send ends, before its outcome is recorded,
        so that waiting for the group commit does not keep the next sends from starting; but no
        more than UNRECORDED_MAX outcomes may wait for it."""
        tasks: set[asyncio.Task] = set()
        try:
            while True:
                self._wake.clear()
                room = self._room()
                jobs: list[Job] = []
                if self._worth_claiming(room):
                    self._urgent = False
                    try:
                        jobs = await self.claim(room)
                    except asyncio.CancelledError:
                        raise
                    except Exception as exc:
                        log_failure(log, "delivery_claim_failed", exc)
                self._sending += len(jobs)
                self._open += len(jobs)
                for job in jobs:
                    task = asyncio.create_task(self.send(job))
                    tasks.add(task)
                    task.add_done_callback(tasks.discard)
                if jobs and len(jobs) == room and self._worth_claiming(self._room()):
                    continue  # a full batch: more may be due
                try:  # not wait_for: on 3.11 it loses a cancel that comes as the event is set
                    async with asyncio.timeout(0.25):
                        await self._wake.wait()
                except TimeoutError:
                    # Nothing woke us, but a retry may have fallen due: any free slot will do,
                    # so it waits no longer than this, not for a quarter of the slots.
                    self._urgent = True
        finally:
            for task in tasks:
                task.cancel()  # their rows stay leased and are sent again after the lease
            await asyncio.gather(*tasks, return_exceptions=True)

    def _room(self) -> int:
        return min(CONCURRENCY - self._sending, UNRECORDED_MAX - self._open)

    def _slot_freed(self) -> None:
        self._sending = max(0, self._sending - 1)  # a send called directly took no slot
        self._claim_if_room()

    def _recorded(self) -> None:
        self._open = max(0, self._open - 1)
        self._claim_if_room()

    def _worth_claiming(self, room: int) -> bool:
        # Claim once a quarter of the slots are free, not at every finished send: a claim is a
        # transaction, and one per delivery made claiming the bottleneck. A new urgent alert
        # (P1, P2), or a fallback, takes any free slot at once.
        return room >= CONCURRENCY // 4 or (room > 0 and self._urgent)

    def _claim_if_room(self) -> None:
        if self._worth_claiming(self._room()):
            self._wake.set()

    async def claim(self, batch: int = CONCURRENCY) -> list[Job]:
        """Lease due rows (and the reminders that bundle with them), one `attempted` receipt each.

        Rate-limited rows are put back to when their recipient has a token again. A row still
        `sending` past its lease belonged to a worker that died: it is claimed again.
        """
        now = utcnow()
        jobs: list[Job] = []
        put_back: list[dict] = []
        unreadable: list[dict] = []
        async with self.rt.db.writes() as session, session.begin():
            postgres = is_postgres(session)
            taken: set[str] = set()
            for row in await self._due(session, now, batch, postgres):
                if row.alert_id in taken:
                    continue  # already in a bundle
                try:
                    alert, contact = _read(row)
                except (ValueError, IndexError) as exc:
                    # One row that no longer reads must not fail every claim, P1s included.
                    unreadable.append(self._unreadable(session, row, exc, now))
                    continue
                members = [(row, alert)]
                if row.status == "sending":
                    log.warning("lease_expired", alert_id=row.alert_id, case_id=row.case_id)
                if row.bundle:
                    # Sent before as a bundle (a crash, a failure): it goes again as the same
                    # message, so under the same key, and the receiver can drop the repeat.
                    members += await self._bundled(session, row, contact, taken, now, postgres)
                elif row.status == "pending" and policy.should_bundle(alert.severity, alert.kind):
                    members += await self._mates(session, row, contact, taken, postgres)
                recipient = f"{contact.channel}:{contact.address}"
                if not self.limiter.allow(recipient, alert.severity, now):
                    later = self.limiter.next_allowed(recipient, now)
                    put_back += [{"id": m.alert_id, "until": later} for m, _ in members]
                    continue
                job = Job(members, contact, now + self.lease)
                for m, a in members:
                    taken.add(m.alert_id)
                    self._receipt(session, a, "attempted", contact.channel, m.attempts_total + 1)
                jobs.append(job)
            # One statement for the claim, not an ORM object per row, and one per bundle (a single
            # alert's NULL clears the key of a bundle it was in before).
            leases: dict[str | None, list[str]] = {}
            for job in jobs:
                leases.setdefault(job.bundle, []).extend(m.alert_id for m, _ in job.members)
            for bundle, ids in leases.items():
                await session.execute(_LEASE, {"ids": ids, "until": now + self.lease, "at": now,
                                               "bundle": bundle})
            if put_back:
                await session.execute(_PUT_BACK, put_back)
            if unreadable:
                await session.execute(_FAILED, unreadable)
        if jobs or unreadable:
            self.rt.relays[SERVICE].poke()
        return jobs

    @staticmethod
    async def _due(session, now, batch: int, postgres: bool) -> list:
        """Pending rows and expired leases, most severe and oldest first, at most `batch`.

        A query per status, not one `status IN (..)`: one status lets the index give the order,
        so a claim reads `batch` rows, not every due row sorted (0.14 ms against 4.6 with 8,000
        due rows, as after a receiver outage)."""
        rows = []
        for query in (_DUE, _EXPIRED):
            query = query.with_for_update(skip_locked=True) if postgres else query
            rows += (await session.execute(query, {"now": now, "batch": batch})).all()
        return sorted(rows, key=lambda row: (row.severity, row.next_at))[:batch]

    @staticmethod
    async def _bundled(session, row, contact: Contact, taken: set[str], now: datetime,
                       postgres: bool) -> list:
        """The other rows of `row`'s bundle in its state: an expired lease's (leased together,
        so expired together), or a failed send's, due now or soon (their retries were jittered
        apart), on the same contact. New reminders do not join: that would change the key.
        Fallen back to a channel that carries fewer (webhook to SMS), it goes in parts that
        fit, each under a key of its own: the new receiver never had the whole."""
        query = _BUNDLED_EXPIRED if row.status == "sending" else _BUNDLED_PENDING
        query = query.with_for_update(skip_locked=True) if postgres else query
        members, cases = [], {row.case_id}
        for other in (await session.execute(query, {
                "bundle": row.bundle, "alert": row.alert_id, "now": now})).all():
            try:
                alert, mine = _read(other)
            except (ValueError, IndexError):
                continue  # claimed on its own, and dead-lettered there
            if (other.alert_id not in taken and _same(mine, contact)
                    and policy.joins(cases, alert.case_id, contact.channel)):
                members.append((other, alert))
                cases.add(alert.case_id)
        return members

    async def _mates(self, session, row, contact: Contact, taken: set[str],
                     postgres: bool) -> list[tuple]:
        """Other pending P3-P4 reminders to the same contact: they go now, in one message."""
        query = _MATES.with_for_update(skip_locked=True) if postgres else _MATES
        mates, cases = [], {row.case_id}
        for other in (await session.execute(query, {"authority": row.authority_id,
                                                     "alert": row.alert_id})).all():
            if other.alert_id in taken:
                continue
            try:
                alert, mine = _read(other)
            except (ValueError, IndexError):
                continue  # claimed on its own, and dead-lettered there
            if (policy.should_bundle(alert.severity, alert.kind) and _same(mine, contact)
                    and policy.joins(cases, alert.case_id, contact.channel)):
                mates.append((other, alert))
                cases.add(alert.case_id)
        return mates

    def _unreadable(self, session, row, exc: Exception, now: datetime) -> dict:
        """A stored alert that no longer reads (a contract change, a contact list without the
        contact it was on): dead-lettered at once, its receipt built from the row's columns.
        An unknown role counts as act, so that escalation still treats it as undelivered."""
        raw = row.alert if isinstance(row.alert, dict) else {}
        reason = f"unreadable: {type(exc).__name__}"
        log.error("dead_lettered", reason=reason, alert_id=row.alert_id, case_id=row.case_id)
        about = SimpleNamespace(  # what a receipt needs of an alert, from the row's columns
            alert_id=row.alert_id, case_id=row.case_id, authority_id=row.authority_id,
            role="inform" if raw.get("role") == "inform" else "act",
            kind=raw["kind"] if raw.get("kind") in get_args(AlertKind) else "alert")
        self._receipt(session, about, "dead_lettered", "none", row.attempts_total, reason)
        return {"id": row.alert_id, "at": now, "total": row.attempts_total,
                "attempt": row.attempt, "error": reason, "status": "dead",
                "contact": row.contact_index, "next": row.next_at}

    # --- sending and recording ---------------------------------------------------------------

    async def send(self, job: Job) -> None:
        now = utcnow()
        contact = job.contact
        alerts = [a for _, a in job.members]
        with structlog.contextvars.bound_contextvars(
            case_id=",".join(dict.fromkeys(a.case_id for a in alerts)),
            alert_id=job.key, bundled=len(alerts),
        ):
            try:
                error = note = None
                try:
                    channel = self.channels.get(contact.channel)
                    if channel is None:
                        raise DeliveryError(f"channel_{contact.channel}_disabled", retryable=False)
                    links = [sign_link(self.rt.settings.public_base_url, a.case_id, "view",
                                       a.authority_id, now + LINK_TTL, self.link_secret)
                             for a in alerts]
                    if len(alerts) == 1:
                        message = self.renderer.render(alerts[0], contact.channel, contact.lang,
                                                       links[0])
                    else:
                        message = self.renderer.render_bundle(list(zip(alerts, links, strict=True)),
                                                              contact.channel, contact.lang)
                    if message.render_error:
                        # The built-in text went instead of the template: sent, but reported.
                        note = f"render_fallback: {message.render_error}"[:200]
                        log.warning("render_fallback_used", channel=contact.channel,
                                    error=message.render_error)
                    # A channel's own timeouts may be per step (aiosmtplib's are per command),
                    # so a slow server could outlast the lease and have the row sent again.
                    async with asyncio.timeout(self.send_bound.total_seconds()):
                        await channel.send(contact.address, message, job.key)
                except DeliveryError as exc:
                    error = exc
                except TimeoutError:
                    error = DeliveryError("timeout", retryable=True)
                except Exception as exc:  # a bug in a channel must not lose the alert
                    log.exception("channel_crashed", channel=contact.channel)
                    error = DeliveryError(type(exc).__name__, retryable=True)
            finally:
                self._slot_freed()
            try:
                metrics.DELIVERIES.labels(contact.channel, "ok" if error is None else "error").inc()
                await self.record(job, error, note)
            except Exception:
                # Nothing recorded: the rows stay leased and are sent again after the lease.
                log.exception("delivery_record_failed", channel=contact.channel,
                              outcome="delivered" if error is None else error.reason)
            finally:
                self._recorded()

    async def record(self, job: Job, error: DeliveryError | None, note: str | None = None) -> None:
        """Record a send's outcome and receipts. Returns once committed, in one transaction with
        the outcomes of the sends finishing within RECORD_GATHER_S (group commit)."""
        await self._record_group((job, error, note))
        self.rt.relays[SERVICE].poke()
        if error is not None:
            self._urgent = True  # a fallback may be due at once
            self._wake.set()

    async def _record_jobs(self, session, outcomes: list[tuple[Job, DeliveryError | None,
                                                                str | None]]) -> list[None]:
        """A group's outcomes. The deliveries of one claim (one lease) are marked by one
        statement; failures row by row, as each needs the retry policy and they are few."""
        now = utcnow()
        delivered: dict[tuple, list[Job]] = {}  # (lease, note) -> jobs
        for job, error, note in outcomes:
            if error is None:
                delivered.setdefault((job.lease, note), []).append(job)
            else:
                await self._record_failure(session, job, error, now)
        for (lease, note), jobs in delivered.items():
            alerts = {a.alert_id: (a, job.contact.channel) for job in jobs for _, a in job.members}
            done = (await session.execute(_DELIVERED, {  # only where our lease still holds
                "ids": list(alerts), "until": lease, "at": now, "note": note})).all()
            for alert_id, attempts_total in done:
                alert, channel = alerts.pop(alert_id)
                self._receipt(session, alert, "delivered", channel, attempts_total, note)
                log.info("delivered", channel=channel, attempt=attempts_total,
                         alert_id=alert_id, case_id=alert.case_id)
            for alert_id, (alert, _) in alerts.items():
                # Our lease ran out and another worker took the row: its record counts.
                log.warning("lease_lost", alert_id=alert_id, case_id=alert.case_id)
        return [None] * len(outcomes)

    async def _record_failure(self, session, job: Job, error: DeliveryError,
                              now: datetime) -> None:
        channel = job.contact.channel
        alerts = {a.alert_id: a for _, a in job.members}
        query = _LEASED.with_for_update() if is_postgres(session) else _LEASED
        current = {d.alert_id: d for d in (await session.execute(
            query, {"ids": list(alerts), "until": job.lease})).all()}
        changes = []
        for alert_id, alert in alerts.items():
            d = current.get(alert_id)
            if d is None:
                log.warning("lease_lost", alert_id=alert_id, case_id=alert.case_id)
                continue
            attempts_total, attempt = d.attempts_total + 1, d.attempt + 1
            change = {"id": alert_id, "at": now, "total": attempts_total, "attempt": attempt,
                      "error": error.reason[:200], "status": "pending",
                      "contact": d.contact_index, "next": d.next_at}
            changes.append(change)
            self._receipt(session, alert, "failed", channel, attempts_total, error.reason)
            nxt = policy.after_failure(
                now=now, severity=alert.severity, queued_at=d.created_at,
                deadline=policy.retry_deadline(alert.severity, _deadline(alert), d.created_at),
                contacts=len(alert.contacts), contact_index=d.contact_index,
                attempt=attempt, attempts_total=attempts_total,
                retryable=error.retryable, retry_after_s=error.retry_after_s,
                max_attempts=self.max_attempts,
            )
            if nxt.at is None:
                change["status"] = "dead"
                self._receipt(session, alert, "dead_lettered", channel, attempts_total,
                              error.reason)
                log.error("dead_lettered", channel=channel, reason=error.reason,
                          attempts=attempts_total, alert_id=alert_id, case_id=alert.case_id)
                continue
            if nxt.contact_index != d.contact_index:
                log.warning("falling_back", channel=channel, reason=error.reason,
                            alert_id=alert_id, case_id=alert.case_id,
                            to=alert.contacts[nxt.contact_index].channel)
            change.update(next=nxt.at, contact=nxt.contact_index, attempt=nxt.attempt)
        if changes:
            await session.execute(_FAILED, changes)

    def _receipt(self, session, alert: AlertRequested, status: str, channel: str, attempt: int,
                 error: str | None = None) -> None:
        outbox.add(session, SERVICE, self.rt.settings.topic(Topics.DELIVERIES),
                   Envelope.wrap(DeliveryOutcome(
                       alert_id=alert.alert_id, case_id=alert.case_id,
                       authority_id=alert.authority_id, role=alert.role, kind=alert.kind,
                       status=status, channel=channel, attempt=attempt,
                       error=error[:200] if error else None), SOURCE))


def _read(row) -> tuple[AlertRequested, Contact]:
    """A row's alert and the contact it is on; ValueError or IndexError if it no longer reads."""
    alert = AlertRequested.model_validate(row.alert)
    return alert, alert.contacts[row.contact_index]


def _same(a: Contact, b: Contact) -> bool:
    return (a.channel, a.address) == (b.channel, b.address)


def _deadline(alert: AlertRequested) -> datetime | None:
    """The deadline an alert is about: its milestone's, else the acknowledgement's."""
    return alert.milestone_due if alert.milestone else alert.ack_due


# The worker's statements, built once: Core, not ORM objects, because the notifier runs them for
# every delivery and an ORM row costs several times a statement (docs/performance.md).
_T = Delivery.__table__


def _due_in(status: str):
    """Rows in `status` whose next_at has come, in the order of ix_deliveries_claim."""
    return (select(_T).where(_T.c.status == status,
                             _T.c.next_at <= bindparam("now", type_=_T.c.next_at.type))
            .order_by(_T.c.severity, _T.c.next_at).limit(bindparam("batch")))


_EXPIRED = _due_in("sending")  # a lease past its next_at: the worker that held it died
_DUE = _due_in("pending")
# Not rows of a bundle that failed: they go again with their own bundle (Notifier._bundled).
_MATES = (select(_T).where(_T.c.status == "pending", _T.c.authority_id == bindparam("authority"),
                           _T.c.severity.in_(("P3", "P4")), _T.c.alert_id != bindparam("alert"),
                           _T.c.bundle.is_(None))
          .order_by(_T.c.created_at).limit(policy.BUNDLE_MAX * 5))
_IDS = bindparam("ids", expanding=True)
# `status || ''`: the same test, but not one SQLite would look up in ix_deliveries_claim, which
# it otherwise prefers to the key, reading every leased row (8x the samples under py-spy).
_HELD = (_T.c.alert_id.in_(_IDS), _T.c.status.concat("") == "sending",
         _T.c.next_at == bindparam("until", type_=_T.c.next_at.type))
_LEASE = (update(_T).where(_T.c.alert_id.in_(_IDS))
          .values(status="sending", next_at=bindparam("until"), updated_at=bindparam("at"),
                  bundle=bindparam("bundle")))
# A bundle's other rows: P3-P4 rows in one status are few, and read by ix_deliveries_claim.
def _bundle_in(status: str, *where):
    return select(_T).where(_T.c.status == status, _T.c.severity.in_(("P3", "P4")),
                            _T.c.bundle == bindparam("bundle"),
                            _T.c.alert_id != bindparam("alert"), *where)


_BUNDLED_PENDING = _bundle_in("pending")
_BUNDLED_EXPIRED = _bundle_in("sending", _T.c.next_at <= bindparam("now", type_=_T.c.next_at.type))
_PUT_BACK = (update(_T).where(_T.c.alert_id == bindparam("id"))
             .values(status="pending", next_at=bindparam("until")))
_DELIVERED = (update(_T).where(*_HELD)
              .values(status="delivered", attempts_total=_T.c.attempts_total + 1,
                      last_error=bindparam("note"), updated_at=bindparam("at"))
              .returning(_T.c.alert_id, _T.c.attempts_total))
_LEASED = select(_T).where(*_HELD)
_FAILED = (update(_T).where(_T.c.alert_id == bindparam("id"))
           .values(status=bindparam("status"), next_at=bindparam("next"),
                   contact_index=bindparam("contact"), attempt=bindparam("attempt"),
                   attempts_total=bindparam("total"), last_error=bindparam("error"),
                   updated_at=bindparam("at")))
