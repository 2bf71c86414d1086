"""Recording what a send gave: delivered, or failed and tried again later, on the next contact,
or dead; each with its receipt on the deliveries topic, in one transaction."""

from datetime import datetime

import structlog

from schemas.events import AlertRequested, DeliveryOutcome, Envelope, Topics
from services.common import outbox
from services.common.db import is_postgres, utcnow
from services.notifier import SERVICE, SOURCE, policy, store
from services.notifier.channels import DeliveryError
from services.notifier.claims import Job

log = structlog.get_logger("beacon.notifier")


class Outcomes:
    """Part of the notifier (handlers.Notifier), whose state it uses."""

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
            done = (await session.execute(store.DELIVERED, {  # only where our lease still holds
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
        query = store.LEASED.with_for_update() if is_postgres(session) else store.LEASED
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
                deadline=policy.retry_deadline(alert.severity, alert_deadline(alert), d.created_at,
                                               late=_news(alert)),
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
            await session.execute(store.FAILED, changes)

    def _receipt(self, session, alert: AlertRequested, status: str, channel: str, attempt: int,
                 error: str | None = None) -> None:
        outbox.add(session, SERVICE, self.rt.settings.topic(Topics.DELIVERIES),
                   Envelope.wrap(DeliveryOutcome(
                       alert_id=alert.alert_id, case_id=alert.case_id,
                       authority_id=alert.authority_id, role=alert.role, kind=alert.kind,
                       status=status, channel=channel, attempt=attempt,
                       error=error[:200] if error else None), SOURCE))


def alert_deadline(alert: AlertRequested) -> datetime | None:
    """The deadline an alert is about: its milestone's, else the acknowledgement's."""
    return alert.milestone_due if alert.milestone else alert.ack_due


def _news(alert) -> bool:
    """An alert with no deadline of its own that brings news to act on: the tier below missed
    (`about_authority_id`), or the case got more severe (`cause`) for one that had acknowledged.
    It is retried for its severity's late window, not one round (policy.retry_deadline)."""
    return alert.about_authority_id is not None or alert.cause is not None
