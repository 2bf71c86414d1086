"""The notifier: every alert becomes a durable delivery row, worked until delivered or dead.

The Kafka handler only records the alert (idempotent by alert id) and commits; the worker loop
claims due rows, sends, and records each outcome with its receipt event in one transaction, so a
crash or a receiver outage delays an alert but never loses it, and the receiver's Idempotency-Key
drops the repeat that a crash between sending and recording can cause.
"""

import asyncio
from datetime import timedelta

import structlog
from sqlalchemy import select

from schemas.events import AlertRequested, DeliveryOutcome, Envelope, Topics
from services.common import metrics, outbox
from services.common.db import utcnow
from services.common.links import sign_link
from services.notifier import policy
from services.notifier.channels import ChannelConfig, DeliveryError, aclose, build_channels
from services.notifier.render import render
from services.notifier.store import Delivery

log = structlog.get_logger("beacon.notifier")
SERVICE = "notifier"
SOURCE = "beacon/notifier"
LEASE = timedelta(seconds=60)  # a claimed row is retried after this if its worker died
PER_CONTACT = 3  # attempts on one contact before falling back to the next
LINK_TTL = timedelta(days=7)
CONCURRENCY = 64


class Notifier:
    def __init__(self, rt):
        self.rt = rt
        s = rt.settings
        secret = s.secret("webhook_secret")
        self.channels = build_channels(ChannelConfig(
            webhook_secret=secret, smtp_host=s.smtp_host, smtp_port=s.smtp_port,
            smtp_starttls=s.smtp_starttls, smtp_username=s.smtp_username,
            smtp_password=s.smtp_password, mail_from=s.mail_from,
            sms_gateway_url=s.sms_gateway_url, sms_secret=secret,
        ))
        self.link_secret = s.secret("secret_key")
        self.limiter = policy.RateLimiter()
        self._wake = asyncio.Event()
        self._slots = asyncio.Semaphore(CONCURRENCY)

    async def aclose(self) -> None:
        await aclose(self.channels)

    async def handle(self, envelope: Envelope) -> None:
        alert = envelope.payload()
        if not isinstance(alert, AlertRequested):
            return
        now = utcnow()
        async with self.rt.db.writes() as session, session.begin():
            if await session.get(Delivery, alert.alert_id):
                return  # a repeat of an alert already queued
            session.add(Delivery(
                alert_id=alert.alert_id, case_id=alert.case_id, authority_id=alert.authority_id,
                severity=alert.severity, alert=alert.model_dump(mode="json"), status="pending",
                contact_index=0, attempt=0, attempts_total=0, next_at=now, created_at=now,
                updated_at=now,
            ))
        self._wake.set()

    async def run(self) -> None:
        while True:
            try:
                claimed = await self.claim()
                if claimed:
                    await asyncio.gather(*(self._send(d) for d in claimed))
                    continue
            except asyncio.CancelledError:
                raise
            except Exception:
                log.exception("delivery_loop_failed")
            try:
                await asyncio.wait_for(self._wake.wait(), 0.25)
            except TimeoutError:
                pass
            self._wake.clear()

    async def claim(self, batch: int = CONCURRENCY) -> list[Delivery]:
        """Take due rows and lease them, so another worker (or this one after a crash) waits."""
        now = utcnow()
        async with self.rt.db.writes() as session, session.begin():
            query = (select(Delivery).where(Delivery.status == "pending", Delivery.next_at <= now)
                     .order_by(Delivery.severity, Delivery.next_at).limit(batch))
            if session.get_bind().dialect.name == "postgresql":
                query = query.with_for_update(skip_locked=True)
            rows = (await session.scalars(query)).all()
            for row in rows:
                row.next_at = now + LEASE
        return list(rows)

    async def _send(self, row: Delivery) -> None:
        alert = AlertRequested.model_validate(row.alert)
        contact = alert.contacts[row.contact_index]
        now = utcnow()
        with structlog.contextvars.bound_contextvars(case_id=alert.case_id, alert_id=alert.alert_id):
            if not self.limiter.allow(f"{contact.channel}:{contact.address}", alert.severity, now):
                await self._defer(row, now + timedelta(seconds=10))
                return
            error = None
            async with self._slots:
                try:
                    channel = self.channels.get(contact.channel)
                    if channel is None:
                        raise DeliveryError(f"channel_{contact.channel}_disabled", retryable=False)
                    link = sign_link(self.rt.settings.public_base_url, alert.case_id, "view",
                                     alert.authority_id, now + LINK_TTL, self.link_secret)
                    message = render(alert, contact.channel, "vi", link)
                    await channel.send(contact.address, message, alert.alert_id)
                except DeliveryError as exc:
                    error = exc
                except Exception as exc:  # a bug in a channel must not lose the alert
                    log.exception("channel_crashed", channel=contact.channel)
                    error = DeliveryError(type(exc).__name__, retryable=True)
            metrics.DELIVERIES.labels(contact.channel, "ok" if error is None else "error").inc()
            await self._record(row, alert, contact.channel, error)

    async def _defer(self, row: Delivery, when) -> None:
        async with self.rt.db.writes() as session, session.begin():
            current = await session.get(Delivery, row.alert_id)
            current.next_at = when

    async def _record(self, row: Delivery, alert: AlertRequested, channel: str,
                      error: DeliveryError | None) -> None:
        now = utcnow()
        async with self.rt.db.writes() as session, session.begin():
            d = await session.get(Delivery, row.alert_id)
            d.attempts_total += 1
            d.updated_at = now

            def receipt(status: str, reason: str | None = None) -> None:
                outbox.add(session, SERVICE, self.rt.settings.topic(Topics.DELIVERIES),
                           Envelope.wrap(DeliveryOutcome(
                               alert_id=alert.alert_id, case_id=alert.case_id,
                               authority_id=alert.authority_id, role=alert.role, kind=alert.kind,
                               status=status, channel=channel, attempt=d.attempts_total,
                               error=reason), SOURCE))

            if error is None:
                d.status, d.last_error = "delivered", None
                receipt("delivered")
                log.info("delivered", channel=channel, attempt=d.attempts_total)
            else:
                d.attempt += 1
                d.last_error = error.reason[:200]
                receipt("failed", error.reason)
                retry_at = None
                if error.retryable and d.attempt < PER_CONTACT:
                    retry_at = policy.next_attempt(d.attempts_total, now, alert.ack_due)
                if retry_at is not None:
                    d.next_at = retry_at
                elif self._fall_back(d, alert, now):
                    log.warning("falling_back", channel=channel, reason=error.reason)
                else:
                    d.status = "dead"
                    receipt("dead_lettered", error.reason)
                    log.error("dead_lettered", channel=channel, reason=error.reason,
                              attempts=d.attempts_total)
        self.rt.relays[SERVICE].poke()

    def _fall_back(self, d: Delivery, alert: AlertRequested, now) -> bool:
        """Next contact (wrapping round) while the deadline and the attempt budget allow."""
        if d.attempts_total >= policy.MAX_ATTEMPTS:
            return False
        if alert.ack_due is not None and now >= alert.ack_due:
            return False
        if alert.ack_due is None and d.attempts_total >= PER_CONTACT * len(alert.contacts):
            return False  # inform alerts: one round through the contacts
        d.contact_index = (d.contact_index + 1) % len(alert.contacts)
        d.attempt = 0
        d.next_at = now
        return True
