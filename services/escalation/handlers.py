"""The escalation service: decide on each input, hold act targets to their deadlines.

Each input is applied in one transaction: the inbox row (so a redelivered event does nothing),
the case's facts and targets, its timers, and the events it causes (outbox). The Kafka offset is
committed only after that transaction.
"""

from datetime import datetime

import structlog
from sqlalchemy import select, update
from sqlalchemy.ext.asyncio import AsyncSession

from schemas.decisions import CaseFacts, Decision, Target
from schemas.events import (
    AckRecorded,
    AlertRequested,
    CaseDecided,
    CaseUpdated,
    DeliveryOutcome,
    Envelope,
    ReportReceived,
    TargetAcknowledged,
    TargetEscalated,
    Topics,
)
from services.common import outbox
from services.common.db import claim_event, utcnow
from services.escalation.engine import deadline, decide, reminder_times
from services.escalation.store import EscalationCase, EscalationTarget, Timer

log = structlog.get_logger("beacon.escalation")
SERVICE = "escalation"
SOURCE = "beacon/escalation"
PUBLICITY = ("PA0", "PA1", "PA2")


class Escalation:
    def __init__(self, rt):
        self.rt = rt

    # --- inputs ---------------------------------------------------------------------------

    async def handle(self, envelope: Envelope) -> None:
        async with self.rt.db.writes() as session, session.begin():
            if not await claim_event(session, SERVICE, envelope.id):
                return
            data = envelope.payload()
            match data:
                case ReportReceived():
                    await self._on_report(session, envelope, data)
                case CaseUpdated():
                    await self._on_update(session, envelope, data)
                case TargetAcknowledged():
                    await self._on_ack(session, data)
                case DeliveryOutcome(status="dead_lettered", role="act"):
                    await self._on_undeliverable(session, data)
        self.rt.relays[SERVICE].poke()

    async def _on_report(self, session, envelope: Envelope, data: ReportReceived) -> None:
        case = await session.get(EscalationCase, data.case_id)
        linked = (data.received_at,) if data.independent else ()
        if case is None:
            facts = CaseFacts(
                case_id=data.case_id, category=data.category, subcategory=data.subcategory,
                location=data.location, other_locations=tuple(data.other_locations),
                setting=data.setting, child_ages=tuple(data.child_ages),
                indicators=frozenset(data.indicators), publicity=data.publicity,
                linked_reports=linked, first_received_at=data.received_at,
            )
            case = EscalationCase(case_id=data.case_id, human_publicity=data.publicity,
                                  severity="P5", publicity="PA0", rulepack_version="",
                                  decisions=0, facts={}, updated_at=utcnow())
            session.add(case)
        else:
            old = CaseFacts.model_validate(case.facts)
            case.human_publicity = _max_publicity(case.human_publicity, data.publicity)
            facts = old.model_copy(update={
                "other_locations": tuple(dict.fromkeys((*old.other_locations, *data.other_locations))),
                "child_ages": (*old.child_ages, *data.child_ages),
                "indicators": old.indicators | set(data.indicators),
                "linked_reports": (*old.linked_reports, *linked),
                "first_received_at": min(old.first_received_at, data.received_at),
            })
        await self._decide(session, envelope, case, facts, floor=case.publicity)

    async def _on_update(self, session, envelope: Envelope, data: CaseUpdated) -> None:
        case = await session.get(EscalationCase, data.case_id)
        if case is None:
            log.warning("update_for_unknown_case")
            return
        old = CaseFacts.model_validate(case.facts)
        changes: dict = {"indicators": old.indicators | set(data.indicators)}
        floor = case.publicity
        if data.publicity is not None:  # a person may lower publicity; automation may not
            case.human_publicity = data.publicity
            floor = data.publicity
        if data.severity_override is not None:
            changes["severity_override"] = data.severity_override
        await self._decide(session, envelope, case, old.model_copy(update=changes), floor=floor)

    async def _decide(self, session, envelope: Envelope, case: EscalationCase, facts: CaseFacts,
                      floor: str) -> None:
        facts = facts.model_copy(update={
            "publicity": _max_publicity(case.human_publicity, floor)})
        # Deadlines run from when intake accepted the input: a redelivery decides the same.
        decision = decide(facts, self.rt.pack, self.rt.directory, envelope.time)
        case.facts = facts.model_dump(mode="json")
        case.severity, case.publicity = decision.severity, decision.publicity
        case.rulepack_version = decision.rulepack_version
        case.decisions += 1
        case.updated_at = utcnow()
        added, changed = await self._apply_targets(session, case, decision, envelope.time)
        self._emit(session, CaseDecided(case_id=case.case_id, decision=decision, added=added,
                                        changed=changed, cause=envelope.type))
        log.info("decided", severity=decision.severity, publicity=decision.publicity,
                 added=len(added), changed=len(changed))

    async def _apply_targets(self, session, case: EscalationCase, decision: Decision,
                             at: datetime) -> tuple[list[Target], list[Target]]:
        """Only what changed is acted on: new targets, inform -> act, a shorter deadline.
        A target once told stays on the case: duties are never silently dropped."""
        existing = {t.authority_id: t for t in (await session.scalars(
            select(EscalationTarget).where(EscalationTarget.case_id == case.case_id))).all()}
        added, changed = [], []
        for t in decision.targets:
            row = existing.get(t.authority_id)
            if row is None:
                row = EscalationTarget(
                    case_id=case.case_id, authority_id=t.authority_id, tier=t.tier,
                    agency=t.agency, role=t.role, ack_within=t.ack_within,
                    working_days=t.working_days, added_at=at, ack_due=t.ack_due, origin="decision")
                session.add(row)
                added.append(t)
                self._alert(session, case, row, "alert" if t.role == "act" else "inform")
            elif t.role == "act" and row.acked_at is None and (
                row.role == "inform" or (t.ack_due and row.ack_due and t.ack_due < row.ack_due)
            ):
                upgraded = row.role == "inform"
                row.role, row.ack_within, row.working_days = "act", t.ack_within, t.working_days
                row.ack_due, row.added_at = t.ack_due, at
                await self._cancel_timers(session, row, "rescheduled")
                changed.append(t)
                if upgraded:
                    self._alert(session, case, row, "alert")
            else:
                continue
            if row.role == "act" and row.ack_due is not None:
                self._schedule(session, row)
        return added, changed

    async def _on_ack(self, session, data: TargetAcknowledged) -> None:
        row = await session.get(EscalationTarget, (data.case_id, data.authority_id))
        if row is None or row.acked_at is not None:
            return
        row.acked_at, row.acked_by = data.at, data.by_user
        await self._cancel_timers(session, row, "acknowledged")
        await session.flush()
        pending = await session.scalar(select(EscalationTarget.authority_id).where(
            EscalationTarget.case_id == data.case_id, EscalationTarget.role == "act",
            EscalationTarget.acked_at.is_(None)).limit(1))
        self._emit(session, AckRecorded(case_id=data.case_id, authority_id=data.authority_id,
                                        by_user=data.by_user, at=data.at,
                                        case_acknowledged=pending is None))

    # --- timers ---------------------------------------------------------------------------

    def _schedule(self, session, row: EscalationTarget) -> None:
        for fraction, due in zip(self.rt.pack.reminder_fractions,
                                 reminder_times(row.added_at, row.ack_due,
                                                self.rt.pack.reminder_fractions), strict=True):
            session.add(Timer(case_id=row.case_id, authority_id=row.authority_id, kind="reminder",
                              fraction=fraction, due_at=due))
        session.add(Timer(case_id=row.case_id, authority_id=row.authority_id, kind="breach",
                          fraction=1.0, due_at=row.ack_due))

    async def _cancel_timers(self, session, row: EscalationTarget, why: str) -> None:
        await session.execute(update(Timer).where(
            Timer.case_id == row.case_id, Timer.authority_id == row.authority_id,
            Timer.fired_at.is_(None)).values(fired_at=utcnow(), outcome=why))

    async def fire_due(self, now: datetime | None = None, batch: int = 100) -> int:
        """Fire the timers that are due. On PostgreSQL, instances share them (SKIP LOCKED)."""
        now = now or utcnow()
        async with self.rt.db.writes() as session, session.begin():
            query = (select(Timer).where(Timer.fired_at.is_(None), Timer.due_at <= now)
                     .order_by(Timer.due_at).limit(batch))
            if session.get_bind().dialect.name == "postgresql":
                query = query.with_for_update(skip_locked=True)
            timers = (await session.scalars(query)).all()
            for timer in timers:
                timer.fired_at, timer.outcome = now, "fired"
                await self._fire(session, timer, now)
        if timers:
            self.rt.relays[SERVICE].poke()
        return len(timers)

    async def _fire(self, session, timer: Timer, now: datetime) -> None:
        row = await session.get(EscalationTarget, (timer.case_id, timer.authority_id))
        case = await session.get(EscalationCase, timer.case_id)
        if row is None or case is None or row.acked_at is not None:
            return
        with structlog.contextvars.bound_contextvars(case_id=timer.case_id):
            if timer.kind == "reminder":
                self._alert(session, case, row, "reminder", suffix=str(timer.id))
                self._emit(session, TargetEscalated(case_id=case.case_id,
                                                    authority_id=row.authority_id,
                                                    step="reminder", fraction=timer.fraction))
                return
            log.warning("ack_deadline_missed", authority_id=row.authority_id)
            await self._breach(session, case, row, now, suffix=str(timer.id))

    async def _on_undeliverable(self, session, data: DeliveryOutcome) -> None:
        """An act alert that reached nobody is escalated now, not at its deadline."""
        row = await session.get(EscalationTarget, (data.case_id, data.authority_id))
        case = await session.get(EscalationCase, data.case_id)
        if row is None or case is None or row.acked_at is not None or row.role != "act":
            return
        log.warning("act_alert_undeliverable", authority_id=row.authority_id)
        await self._breach(session, case, row, utcnow(), suffix="undelivered")

    async def _breach(self, session, case: EscalationCase, row: EscalationTarget,
                      now: datetime, suffix: str) -> None:
        """Tell the target's supervisor chain, then hold the next tier up to the same window."""
        self._emit(session, TargetEscalated(case_id=case.case_id, authority_id=row.authority_id,
                                            step="breach", fraction=1.0))
        authority = self.rt.directory.get(row.authority_id)
        for supervisor in authority.supervisors:
            self._alert(session, case, row, "supervisor", to=supervisor, suffix=suffix)
        if authority.parent:
            await self._escalate(session, case, row, authority.parent, now)

    async def _escalate(self, session, case: EscalationCase, row: EscalationTarget,
                        parent_id: str, now: datetime) -> None:
        """The next tier up becomes an act target with the same ack window."""
        existing = await session.get(EscalationTarget, (case.case_id, parent_id))
        if existing is not None and existing.role == "act":
            return  # already holding the next tier to a deadline
        parent = self.rt.directory.get(parent_id)
        due = (deadline(now, row.ack_within, row.working_days) if row.ack_within
               else now + (row.ack_due - row.added_at))
        if existing is None:
            existing = EscalationTarget(
                case_id=case.case_id, authority_id=parent_id, tier=parent.tier,
                agency=parent.agency, role="act", ack_within=row.ack_within,
                working_days=row.working_days, added_at=now, ack_due=due, origin="escalated")
            session.add(existing)
        else:
            existing.role, existing.ack_within, existing.working_days = (
                "act", row.ack_within, row.working_days)
            existing.added_at, existing.ack_due, existing.origin = now, due, "escalated"
        self._emit(session, TargetEscalated(case_id=case.case_id, authority_id=row.authority_id,
                                            step="escalated", to_authority_id=parent_id))
        self._alert(session, case, existing, "escalated")
        self._schedule(session, existing)

    # --- events ---------------------------------------------------------------------------

    def _alert(self, session, case: EscalationCase, row: EscalationTarget, kind: str,
               to: str | None = None, suffix: str = "") -> None:
        recipient = self.rt.directory.get(to or row.authority_id)
        alert_id = ":".join(p for p in (case.case_id, recipient.id, kind, suffix) if p)
        self._emit(session, AlertRequested(
            alert_id=alert_id, case_id=case.case_id, authority_id=recipient.id,
            tier=recipient.tier, agency=recipient.agency, role=row.role, kind=kind,
            category=CaseFacts.model_validate(case.facts).category, severity=case.severity,
            publicity=case.publicity, ack_due=row.ack_due, contacts=recipient.contacts,
            rulepack_version=case.rulepack_version,
        ), topic=Topics.ALERTS)

    def _emit(self, session: AsyncSession, data, topic: str = Topics.CASES) -> None:
        outbox.add(session, SERVICE, self.rt.settings.topic(topic), Envelope.wrap(data, SOURCE))


def _max_publicity(a: str, b: str) -> str:
    return max(a, b, key=PUBLICITY.index)
