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
from datetime import datetime, timedelta

import structlog
from sqlalchemy import select

from schemas.events import AlertRequested, Envelope
from services.common import metrics
from services.common.db import add_bulk, log_failure, utcnow
from services.common.group_commit import GroupCommit
from services.common.links import sign_link
from services.notifier import SERVICE, policy
from services.notifier.channels import ChannelConfig, DeliveryError, aclose, build_channels
from services.notifier.claims import CONCURRENCY, Claims, Job
from services.notifier.outcomes import Outcomes, alert_deadline
from services.notifier.render import Renderer
from services.notifier.store import Delivery

log = structlog.get_logger("beacon.notifier")
LINK_TTL = timedelta(days=7)
# Jobs claimed and not yet recorded: sending, or sent and waiting for the group commit. Unbounded,
# the sends outran their records: with 6,000 alerts queued the last outcome was committed seconds
# after the last send, and a longer backlog would outlive its leases and be sent again.
UNRECORDED_MAX = 8 * CONCURRENCY
LEASE_MARGIN = timedelta(seconds=10)
RECORD_GATHER_S = 0.005  # outcomes recorded together; the messages themselves are already sent


class Notifier(Claims, Outcomes):
    """The service: `handle` turns alerts into delivery rows; `run` claims the due ones
    (claims.py), sends them, and records each outcome (outcomes.py)."""

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
        if (deadline := alert_deadline(alert)) is not None:
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
                                                       links[0], now)
                    else:
                        message = self.renderer.render_bundle(list(zip(alerts, links, strict=True)),
                                                              contact.channel, contact.lang, now)
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
