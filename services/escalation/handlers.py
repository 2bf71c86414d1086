"""The escalation service: decide on each input, hold act targets to their deadlines.

A batch of inputs is applied in one transaction (one at a time when the batch fails): the inbox
rows (so a redelivered event does nothing), the cases' facts and targets, their timers, and the
events they cause (outbox). The Kafka offset is committed only after that transaction.
"""

import asyncio

import structlog
from sqlalchemy import select

from schemas.events import (
    CaseUpdated,
    DeliveryOutcome,
    Envelope,
    MilestoneRecorded,
    ReportReceived,
    TargetAcknowledged,
    TransferRequested,
)
from services.common.db import claim_events
from services.escalation.alerts import SERVICE, Alerts
from services.escalation.authorities import Authorities
from services.escalation.breaches import Breaches
from services.escalation.clocks import Clocks
from services.escalation.decisions import Decisions
from services.escalation.store import EscalationCase
from services.escalation.timers import Timers


class Escalation(Decisions, Authorities, Timers, Breaches, Clocks, Alerts):
    """The service: each part of the work is a module of its own (decisions, authorities,
    timers, breaches, clocks, alerts); this class joins them and dispatches the inputs."""

    def __init__(self, rt):
        self.rt = rt

    async def handle(self, envelopes: list[Envelope]) -> None:
        """Apply a batch of inputs in one transaction (the Kafka consumer's batch)."""
        async with self.rt.db.writes() as session, session.begin():
            new = await claim_events(session, SERVICE, [e.id for e in envelopes])
            # The batch's cases in one query; a case absent here is new, so a batch of new
            # cases reads nothing more and is written in one flush at commit.
            # Locked on PostgreSQL, where a re-evaluation may write the same case meanwhile.
            cases = {c.case_id: c for c in (await session.scalars(select(EscalationCase).where(
                EscalationCase.case_id.in_({e.subject for e in envelopes}))
                .with_for_update())).all()}
            for envelope in envelopes:
                if envelope.id not in new:
                    continue  # a repeat: this event was applied before
                new.discard(envelope.id)
                with structlog.contextvars.bound_contextvars(case_id=envelope.subject):
                    await self._apply(session, envelope, cases)
                await asyncio.sleep(0)  # SQLite runs on the loop: let requests in between
        self.rt.relays[SERVICE].poke()

    async def _apply(self, session, envelope: Envelope, cases: dict[str, EscalationCase]) -> None:
        data = envelope.payload()
        match data:
            case ReportReceived():
                await self._on_report(session, envelope, data, cases)
            case CaseUpdated():
                await self._on_update(session, envelope, data)
            case TargetAcknowledged():
                await self._on_ack(session, data)
            case MilestoneRecorded():
                await self._on_milestone(session, data)
            case TransferRequested():
                await self._on_transfer(session, data)
            case DeliveryOutcome(status="failed" | "dead_lettered", role="act"):
                await self._on_undeliverable(session, data)
