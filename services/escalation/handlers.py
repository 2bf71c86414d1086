"""The escalation service: decide on each input, hold act targets to their deadlines.

A batch of inputs is applied in one transaction (one at a time when the batch fails): the inbox
rows (so a redelivered event does nothing), the cases' facts and targets, their timers, and the
events they cause (outbox). The Kafka offset is committed only after that transaction.
"""

import asyncio
import hashlib
from datetime import datetime, timedelta
from types import SimpleNamespace

import structlog
from sqlalchemy import delete, or_, select, update
from sqlalchemy.ext.asyncio import AsyncSession

from schemas.decisions import CaseFacts, Decision, Target
from schemas.events import (
    AckRecorded,
    AlertRequested,
    CaseDecided,
    CaseReopened,
    CaseUpdated,
    DeliveryOutcome,
    Envelope,
    Label,
    MilestoneMissed,
    MilestoneRecorded,
    MilestoneScheduled,
    ReportReceived,
    TargetAcknowledged,
    TargetEscalated,
    TargetReleased,
    TargetTransferred,
    Topics,
    TransferRequested,
)
from services.common import metrics, outbox
from services.common.db import (
    add_bulk, claim_event, claim_events, database_fault, is_postgres, utcnow,
)
from services.escalation import milestones, transfers
from services.escalation.engine import (
    deadline, decide, milestone_deadlines, reminder_times, rules_severity,
)
from services.escalation.store import (
    EscalationCase,
    EscalationMilestone,
    EscalationTarget,
    MilestoneTimer,
    Timer,
)

log = structlog.get_logger("beacon.escalation")
SERVICE = "escalation"
SOURCE = "beacon/escalation"
PUBLICITY = ("PA0", "PA1", "PA2")


class Escalation:
    def __init__(self, rt):
        self.rt = rt

    # --- inputs ---------------------------------------------------------------------------

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

    async def _on_report(self, session, envelope: Envelope, data: ReportReceived,
                         cases: dict[str, EscalationCase]) -> None:
        case = cases.get(data.case_id)
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
            cases[case.case_id] = case
            await self._decide(session, case, facts, case.publicity, envelope.time, envelope.type,
                               fresh=True)
            return
        old = CaseFacts.model_validate(case.facts)
        case.human_publicity = _max_publicity(case.human_publicity, data.publicity)
        # A linked report's own place counts like the places it names (a commune in another
        # province is told too: DOMAIN 5). Compared, not hashed: a Location is not hashable.
        places = list(old.other_locations)
        for place in (data.location, *data.other_locations):
            if place != old.location and place not in places:
                places.append(place)
        facts = old.model_copy(update={
            "other_locations": tuple(places),
            "other_categories": tuple(dict.fromkeys(
                (*old.other_categories, data.category) if data.category != old.category
                else old.other_categories)),
            "other_settings": tuple(dict.fromkeys(
                (*old.other_settings, data.setting) if data.setting != old.setting
                else old.other_settings)),
            "child_ages": (*old.child_ages, *data.child_ages),
            "indicators": old.indicators | set(data.indicators),
            "linked_reports": (*old.linked_reports, *linked),
            "first_received_at": min(old.first_received_at, data.received_at),
        })
        if case.closed_at is not None:
            facts = await self._reopen(session, case, facts, data.received_at, envelope)
        await self._decide(session, case, facts, case.publicity, envelope.time, envelope.type)

    async def _on_update(self, session, envelope: Envelope, data: CaseUpdated) -> None:
        case = await session.get(EscalationCase, data.case_id, with_for_update=True)
        if case is None:
            log.warning("update_for_unknown_case")
            return
        old = CaseFacts.model_validate(case.facts)
        changes: dict = {"indicators": old.indicators | set(data.indicators)}
        floor = case.publicity
        if data.publicity is not None:  # a person may lower publicity; automation may not
            case.human_publicity = floor = data.publicity
        if data.severity_override is not None:
            changes["severity_override"] = data.severity_override
            judged = old.model_copy(update=changes)
            changes["override_basis"] = rules_severity(judged, self.rt.pack)
            changes["override_judged"] = frozenset(
                {judged.category, *judged.other_categories, *judged.indicators})
        facts = old.model_copy(update=changes)
        if case.closed_at is not None:
            facts = await self._reopen(session, case, facts, envelope.time, envelope)
        await self._decide(session, case, facts, floor, envelope.time, envelope.type)

    async def _reopen(self, session, case: EscalationCase, facts: CaseFacts, origin: datetime,
                      envelope: Envelope) -> CaseFacts:
        """An operator's input reached a case closed an instant before (intake had not yet
        learnt of the closure). It was accepted, so it is enforced: the case opens again, every
        authority that must act is alerted and asked to acknowledge anew, and the milestones not
        done (the closure among them) run again from `origin`, this input's receipt."""
        case.closed_at = case.outcome = None
        await session.execute(delete(EscalationMilestone).where(
            EscalationMilestone.case_id == case.case_id,
            or_(EscalationMilestone.done_at.is_(None),
                EscalationMilestone.milestone == milestones.CASE_CLOSED)))
        rows = (await session.scalars(select(EscalationTarget).where(
            EscalationTarget.case_id == case.case_id, EscalationTarget.role == "act",
            EscalationTarget.released_at.is_(None)))).all()
        for row in rows:
            row.acked_at = row.acked_by = None
            row.ack_due, row.added_at = self._due(envelope.time, row), envelope.time
            self._alert(session, case, row, "alert", suffix=f"reopened:{case.decisions}")
            self._schedule(session, row)
        self._emit(session, CaseReopened(case_id=case.case_id, at=envelope.time,
                                         cause=envelope.type,
                                         authority_ids=[r.authority_id for r in rows]))
        log.warning("case_reopened", cause=envelope.type, authorities=len(rows))
        return facts.model_copy(update={"first_received_at": origin})

    def _due(self, start: datetime, row: EscalationTarget) -> datetime:
        """When an act target asked to answer from `start` must answer: its window again."""
        if row.ack_within:
            return deadline(start, row.ack_within, row.working_days,
                            timezone=self.rt.pack.calendar.timezone,
                            country=self.rt.pack.calendar.holidays_country)
        return start + ((row.ack_due - row.added_at) if row.ack_due else _DEFAULT_WINDOW)

    async def _decide(self, session, case: EscalationCase, facts: CaseFacts, floor: str,
                      at: datetime, cause: str, fresh: bool = False) -> None:
        """Decide under the pack in force. `at` is when intake accepted the input (so a
        redelivery decides the same), or when a re-evaluation ran. A `fresh` case has no rows
        yet, so nothing is read back (most inputs open a case: see docs/performance.md).
        `floor`: the publicity the decision may not go below. It is not what a person set
        (case.human_publicity), or rules such as the institutional step-up would build on their
        own earlier result and raise publicity at every re-decision."""
        facts = facts.model_copy(update={"publicity": case.human_publicity})
        decision = decide(facts, self.rt.pack, self.rt.directory, at, floor)
        raised = decision.severity < case.severity  # P1 is the highest
        # Information only (P5: "no alert"), as a supervisor may judge a duplicate or a hoax:
        # nobody is chased any more. Should a later fact make it alert again, every clock not
        # done runs again from then.
        was_silent = not fresh and not self._alerting(case.severity)
        silent = not self._alerting(decision.severity)
        if silent and not was_silent and not fresh:  # a fresh case has no clocks yet
            await self._stop_clocks(session, case.case_id, "information_only")
            log.info("case_information_only")
        rearm = was_silent and not silent
        case.facts = facts.model_dump(mode="json")
        case.severity, case.publicity = decision.severity, decision.publicity
        case.rulepack_version = decision.rulepack_version
        case.decisions += 1
        case.updated_at = utcnow()
        targets, added, changed = await self._apply_targets(session, case, decision, at, fresh,
                                                             raised, rearm)
        self._emit(session, CaseDecided(case_id=case.case_id, decision=decision, added=added,
                                        changed=changed, cause=cause))
        await self._schedule_milestones(session, case, facts, decision.severity, targets, fresh,
                                        at if rearm else None)
        metrics.DECISIONS.labels(decision.severity).inc()
        metrics.DECISION_LATENCY.observe(max((utcnow() - at).total_seconds(), 0.0))
        log.info("decided", severity=decision.severity, publicity=decision.publicity,
                 added=len(added), changed=len(changed))

    async def _apply_targets(self, session, case: EscalationCase, decision: Decision,
                             at: datetime, fresh: bool, raised: bool, rearm: bool = False,
                             ) -> tuple[list[EscalationTarget], list[Target], list[Target]]:
        """Only what changed is acted on: new targets, inform -> act, a shorter deadline, a
        higher severity (`raised`). A target once told stays on the case: duties are never
        silently dropped. `rearm`: the case was information only, its clocks stopped; those
        yet to answer must answer within their window from `at`. Returns the case's target
        rows after the change, and the targets added and changed."""
        existing = {} if fresh else {t.authority_id: t for t in (await session.scalars(
            select(EscalationTarget).where(EscalationTarget.case_id == case.case_id))).all()}
        rows = dict(existing)
        added, changed = [], []
        for t in decision.targets:
            row = existing.get(t.authority_id)
            if row is None:
                values = dict(
                    case_id=case.case_id, authority_id=t.authority_id, tier=t.tier,
                    agency=t.agency, role=t.role, ack_within=t.ack_within,
                    working_days=t.working_days, added_at=at, ack_due=t.ack_due, origin="decision")
                add_bulk(session, EscalationTarget, **values)
                # What follows only reads it: a plain object, since building an unattached ORM
                # object was a twentieth of a decision.
                row = SimpleNamespace(**values, acked_at=None, released_at=None)
                rows[t.authority_id] = row
                added.append(t)
                self._alert(session, case, row, "alert" if t.role == "act" else "inform")
            elif t.role == "act" and row.acked_at is None and row.released_at is None and (
                row.role == "inform" or (t.ack_due and row.ack_due and t.ack_due < row.ack_due)
            ):
                row.role, row.ack_within, row.working_days = "act", t.ack_within, t.working_days
                row.ack_due, row.added_at = t.ack_due, at
                await self._cancel_timers(session, row, "rescheduled")
                changed.append(t)
            else:
                continue
            if row.role == "act" and row.ack_due is not None:
                self._schedule(session, row)
        # A target already on the case that has yet to answer is told when it must answer
        # sooner or the case got more severe; the decision count keeps each alert id apart.
        sooner = {t.authority_id for t in changed}
        for row in existing.values():
            if (row.role == "act" and row.acked_at is None and row.released_at is None
                    and (raised or row.authority_id in sooner)):
                if row.authority_id not in self.rt.directory:
                    # Routed under an earlier pack or directory (a district, since abolished):
                    # no contacts to tell; the decision's own targets are told instead.
                    log.warning("target_not_in_directory", authority_id=row.authority_id)
                    continue
                if rearm and row.authority_id not in sooner:
                    row.ack_due, row.added_at = self._due(at, row), at
                    self._schedule(session, row)
                    changed.append(Target(  # the case's read model shows the new deadline
                        tier=row.tier, agency=row.agency, authority_id=row.authority_id,
                        role="act", ack_within=row.ack_within, working_days=row.working_days,
                        ack_due=row.ack_due, rules=["severity.alerting_again"]))
                if row.transferred_to is None:  # a sender cannot acknowledge: its receiver is told
                    self._alert(session, case, row, "alert", suffix=f"decision:{case.decisions}")
        return list(rows.values()), added, changed

    def _alerting(self, severity: str) -> bool:
        return severity not in self.rt.pack.silent

    async def _stop_clocks(self, session, case_id: str, why: str) -> None:
        """Stop every clock of a case: closed, or become information only."""
        for table in (Timer, MilestoneTimer):
            await session.execute(update(table).where(
                table.case_id == case_id, table.fired_at.is_(None)
            ).values(fired_at=utcnow(), outcome=why))

    async def _on_ack(self, session, data: TargetAcknowledged) -> None:
        row = await session.get(EscalationTarget, (data.case_id, data.authority_id))
        if row is None or row.acked_at is not None:
            return
        if row.transferred_to is not None and row.released_at is None:
            # Sent with its transfer, taken after it (intake refuses it once the transfer
            # shows): it would stop the clock that holds the new authority to the case.
            log.warning("ack_ignored", authority_id=data.authority_id,
                        why=f"its transfer to {row.transferred_to} awaits acknowledgement")
            return
        row.acked_at, row.acked_by = data.at, data.by_user
        await self._cancel_timers(session, row, "acknowledged")
        # A transfer completes when the new authority acknowledges: only then does the first
        # authority's duty end (its timers kept running until now). Along a chain (A to B, B to
        # C), C's acknowledgement ends every duty handed on to it.
        handing = {data.authority_id}
        while handing:
            handed = (await session.scalars(select(EscalationTarget).where(
                EscalationTarget.case_id == data.case_id,
                EscalationTarget.transferred_to.in_(handing),
                EscalationTarget.released_at.is_(None),
                EscalationTarget.authority_id != data.authority_id))).all()
            for old in handed:
                await self._release(session, old, row, data.at)
            await session.flush()  # released rows are not read again: a cycle ends here
            handing = {old.authority_id for old in handed}
        pending = await session.scalar(select(EscalationTarget.authority_id).where(
            EscalationTarget.case_id == data.case_id, EscalationTarget.role == "act",
            EscalationTarget.acked_at.is_(None), EscalationTarget.released_at.is_(None)).limit(1))
        self._emit(session, AckRecorded(case_id=data.case_id, authority_id=data.authority_id,
                                        by_user=data.by_user, at=data.at,
                                        case_acknowledged=pending is None))

    async def _release(self, session, old: EscalationTarget, new: EscalationTarget,
                       at: datetime) -> None:
        old.released_at = at
        await self._cancel_timers(session, old, "transferred")
        # Milestones the first authority was held to pass to the new one, deadlines unchanged.
        await session.execute(update(EscalationMilestone).where(
            EscalationMilestone.case_id == old.case_id,
            EscalationMilestone.authority_id == old.authority_id,
            EscalationMilestone.done_at.is_(None)).values(authority_id=new.authority_id))
        await session.execute(update(MilestoneTimer).where(
            MilestoneTimer.case_id == old.case_id, MilestoneTimer.authority_id == old.authority_id,
            MilestoneTimer.fired_at.is_(None)).values(authority_id=new.authority_id))
        self._emit(session, TargetReleased(case_id=old.case_id, authority_id=old.authority_id,
                                           to_authority_id=new.authority_id))

    # --- transfers ------------------------------------------------------------------------

    async def _on_transfer(self, session, data: TransferRequested) -> None:
        case = await session.get(EscalationCase, data.case_id)
        old = await session.get(EscalationTarget, (data.case_id, data.from_authority_id))
        if case is None or old is None or case.closed_at is not None or old.released_at:
            log.warning("transfer_ignored", authority_id=data.from_authority_id)
            return
        if old.transferred_to == data.to_authority_id:
            return
        try:
            recipient = self.rt.directory.get(data.to_authority_id)
        except KeyError:
            log.warning("transfer_to_unknown_authority", authority_id=data.to_authority_id)
            return
        if old.transferred_to is not None:
            # Sent with others at once, before the first took effect: a duty goes to one place.
            why = f"already transferred to {old.transferred_to}"
        else:
            duties = [milestones.Duty(t.authority_id, t.tier, t.agency, t.released_at is None)
                      for t in (await session.scalars(select(EscalationTarget).where(
                          EscalationTarget.case_id == data.case_id,
                          EscalationTarget.role == "act"))).all()]
            why = transfers.refusal(old.authority_id, recipient.id, duties,
                                    self.rt.pack.escalation.supervisor_agency)
        if why:
            log.warning("transfer_ignored", authority_id=old.authority_id,
                        to_authority_id=recipient.id, reason=why)
            return
        due = self._due(data.at, old)  # the same window the first one had (1 h for P2...)
        new = await session.get(EscalationTarget, (data.case_id, data.to_authority_id))
        old.transferred_to = data.to_authority_id
        if new is not None:
            # Handed back to an authority that had passed the case on (released since, or
            # not yet): the duty is its again, as the read model shows it.
            if new.released_at is not None:
                # Its acknowledgement answered for a duty it has since handed on: it must
                # be told the case is back, and answer again, within a window from now.
                new.acked_at = new.acked_by = new.ack_due = None
            new.released_at = new.transferred_to = None
        if new is None:
            new = EscalationTarget(
                case_id=case.case_id, authority_id=recipient.id, tier=recipient.tier,
                agency=recipient.agency, role="act", ack_within=old.ack_within,
                working_days=old.working_days, added_at=data.at, ack_due=due, origin="transfer")
            session.add(new)
        elif new.acked_at is None:
            await self._cancel_timers(session, new, "rescheduled")
            new.role, new.ack_within, new.working_days = "act", old.ack_within, old.working_days
            new.added_at, new.ack_due = data.at, min(due, new.ack_due or due)
        self._emit(session, TargetTransferred(
            case_id=case.case_id, from_authority_id=old.authority_id,
            to_authority_id=recipient.id, reason=data.reason,
            ack_due=None if new.acked_at else new.ack_due))
        if new.acked_at is not None:  # it already answers for the case: the duty moves now
            await self._release(session, old, new, data.at)
            return
        self._alert(session, case, new, "alert", suffix=f"transfer:{old.authority_id}")
        self._schedule(session, new)

    # --- milestones -----------------------------------------------------------------------

    async def _schedule_milestones(self, session, case: EscalationCase, facts: CaseFacts,
                                   severity: str, targets: list[EscalationTarget],
                                   fresh: bool, rearm: datetime | None = None) -> None:
        """Hold the case to the pack's milestone deadlines. A later decision adds milestones
        (P2 -> P1 adds the emergency measure) and may bring a deadline nearer (P3 -> P2: the
        initial assessment within 24 h, not 3 working days), never further. `rearm`: the case
        was information only until then, its clocks stopped; a milestone neither done nor
        missed is held to its deadline again (at once, if it passed meanwhile)."""
        if case.closed_at is not None:
            return
        dues = milestone_deadlines(facts, severity, self.rt.pack)
        if not dues:
            return
        working = {m.name: m.within.is_working_days
                   for m in self.rt.pack.milestones_for(severity)}
        known = {} if fresh else {m.milestone: m for m in (await session.scalars(
            select(EscalationMilestone).where(
                EscalationMilestone.case_id == case.case_id))).all()}
        duties = [milestones.Duty(t.authority_id, t.tier, t.agency, t.released_at is None)
                  for t in targets if t.role == "act"]
        home = milestones.home_ids(duties, self.rt.directory, facts.location)
        for mid, due in dues.items():
            m = known.get(mid)
            if m is None:
                holder = milestones.owner(mid, duties, self.rt.pack, home)
                if holder is None:
                    continue
                add_bulk(session, EscalationMilestone, case_id=case.case_id, milestone=mid,
                         authority_id=holder, due_at=due, scheduled_at=utcnow())
            elif (m.done_at is None and m.missed_at is None and m.due_at is not None
                  and due < m.due_at and m.authority_id is not None):
                holder, m.due_at = m.authority_id, due
                await session.execute(update(MilestoneTimer).where(
                    MilestoneTimer.case_id == case.case_id, MilestoneTimer.milestone == mid,
                    MilestoneTimer.fired_at.is_(None)).values(fired_at=utcnow(),
                                                              outcome="rescheduled"))
            elif (rearm and m.done_at is None and m.missed_at is None and m.due_at is not None
                  and m.authority_id is not None):
                holder, due = m.authority_id, m.due_at
            else:
                continue
            start = facts.first_received_at
            fractions = self.rt.pack.reminder_fractions
            reminders = self._reminder_times(start, due, working[mid])
            for fraction, at in zip([*fractions, 1.0], [*reminders, due], strict=True):
                if rearm and at <= rearm:  # passed while nobody was chased
                    if fraction < 1.0:
                        continue
                    at = rearm
                add_bulk(session, MilestoneTimer, case_id=case.case_id, milestone=mid,
                         authority_id=holder, fraction=fraction, due_at=at)
            self._emit(session, MilestoneScheduled(case_id=case.case_id, milestone=mid,
                                                   authority_id=holder, due_at=due))

    async def _on_milestone(self, session, data: MilestoneRecorded) -> None:
        case = await session.get(EscalationCase, data.case_id)
        if case is None:
            log.warning("milestone_for_unknown_case")
            return
        row = await session.get(EscalationMilestone, (data.case_id, data.milestone))
        if row is None:
            row = EscalationMilestone(case_id=data.case_id, milestone=data.milestone)
            session.add(row)
        elif row.done_at is not None:
            return  # recorded before
        row.done_at, row.done_by = data.at, data.by_user
        row.done_authority_id, row.outcome = data.authority_id, data.outcome
        await session.execute(update(MilestoneTimer).where(
            MilestoneTimer.case_id == data.case_id, MilestoneTimer.milestone == data.milestone,
            MilestoneTimer.fired_at.is_(None)).values(fired_at=utcnow(), outcome="done"))
        if data.milestone == milestones.CASE_CLOSED:
            case.closed_at, case.outcome = data.at, data.outcome
            await self._stop_clocks(session, data.case_id, "closed")
            # Every clock on the case has stopped: each other authority held to it is told, so
            # that no agency's duty ends without its knowing.
            for row in (await session.scalars(select(EscalationTarget).where(
                    EscalationTarget.case_id == data.case_id, EscalationTarget.role == "act",
                    EscalationTarget.released_at.is_(None),
                    EscalationTarget.authority_id != data.authority_id))).all():
                if row.authority_id not in self.rt.directory:  # routed under an earlier pack
                    log.warning("target_not_in_directory", authority_id=row.authority_id)
                    continue
                # The decision count keeps a second close (after a reopening) apart.
                self._alert(session, case, row, "closed", suffix=str(case.decisions))

    async def _milestone_due(self, session, timer: MilestoneTimer, now: datetime) -> None:
        case = await session.get(EscalationCase, timer.case_id)
        if case is None:
            return
        m = await session.get(EscalationMilestone, (timer.case_id, timer.milestone))
        if m is None or m.done_at is not None or case.closed_at is not None:
            return
        row = await session.get(EscalationTarget, (timer.case_id, timer.authority_id))
        if row is None:
            return
        suffix = f"{timer.milestone}:{timer.id}"
        gone = row.authority_id not in self.rt.directory  # routed under an earlier pack
        if gone:
            timer.outcome = "not_in_directory"
        if (timer.fraction or 0) < 1.0:
            if not gone:
                self._alert(session, case, row, "reminder", suffix=suffix, milestone=m)
            return
        # Missed: like a missed acknowledgement, the supervisor chain and the next tier up.
        log.warning("milestone_missed", milestone=timer.milestone, authority_id=row.authority_id)
        m.missed_at = now
        up = None
        if gone:
            self._unescalated(row.authority_id, "milestone_missed")
        else:
            authority = self.rt.directory.get(row.authority_id)
            steps = self.rt.pack.escalation.on_breach
            if "supervisors" in steps:
                for supervisor in authority.supervisors:
                    self._alert(session, case, row, "supervisor", to=supervisor, suffix=suffix,
                                milestone=m, about=(row.authority_id, "milestone_missed"))
            up = authority.parent if "next_tier" in steps else None
        if up:
            parent = await session.get(EscalationTarget, (case.case_id, up))
            if parent is not None and parent.role == "act" and parent.released_at is None:
                self._alert(session, case, parent, "escalated", suffix=suffix, milestone=m,
                            about=(row.authority_id, "milestone_missed"))
            else:
                await self._escalate(session, case, row, up, now, suffix,
                                     (row.authority_id, "milestone_missed"))
        self._emit(session, MilestoneMissed(case_id=case.case_id, milestone=timer.milestone,
                                            authority_id=row.authority_id, due_at=timer.due_at,
                                            to_authority_id=up))

    # --- a new rule pack ------------------------------------------------------------------

    async def reevaluate_open(self, publication_id: str) -> int:
        """Re-decide every open case under the pack now in force, once per publication (several
        instances may try: the inbox row makes each case's re-evaluation happen once)."""
        async with self.rt.db.reads() as session:
            ids = (await session.scalars(select(EscalationCase.case_id).where(
                EscalationCase.closed_at.is_(None),
                EscalationCase.rulepack_version != self.rt.pack.version))).all()
        done = 0
        log.info("reevaluating_open_cases", total=len(ids), rulepack=self.rt.pack.version)
        for n, case_id in enumerate(ids, 1):
            if n % PROGRESS_EVERY == 0:  # a long pass says how far it is
                log.info("reevaluating_open_cases", done=n, total=len(ids))
            key = hashlib.sha256(f"{publication_id}|{case_id}".encode()).hexdigest()
            with structlog.contextvars.bound_contextvars(case_id=case_id):
                try:
                    done += await self._reevaluate(case_id, key)
                except Exception:
                    # Not claimed, so tried again at the next start; the other cases go on.
                    log.exception("reevaluation_failed", rulepack=self.rt.pack.version)
        if done:
            self.rt.relays[SERVICE].poke()
        log.info("open_cases_reevaluated", count=done, rulepack=self.rt.pack.version)
        return done

    async def _reevaluate(self, case_id: str, key: str) -> int:
        async with self.rt.db.writes() as session, session.begin():
            if not await claim_event(session, "escalation-reevaluate", key):
                return 0  # done before, or by another instance
            case = await session.get(EscalationCase, case_id, with_for_update=True)
            if (case is None or case.closed_at is not None
                    or case.rulepack_version == self.rt.pack.version):
                return 0  # decided under this pack already (opened since it came into force)
            await self._decide(session, case, CaseFacts.model_validate(case.facts),
                               case.publicity, utcnow(), "beacon.rulepack.published")
            return 1

    # --- timers ---------------------------------------------------------------------------

    def _schedule(self, session, row: EscalationTarget) -> None:
        for fraction, due in zip(self.rt.pack.reminder_fractions,
                                 self._reminder_times(row.added_at, row.ack_due,
                                                      row.working_days), strict=True):
            add_bulk(session, Timer, case_id=row.case_id, authority_id=row.authority_id,
                     kind="reminder", fraction=fraction, due_at=due)
        add_bulk(session, Timer, case_id=row.case_id, authority_id=row.authority_id,
                 kind="breach", fraction=1.0, due_at=row.ack_due)

    def _reminder_times(self, start: datetime, due: datetime,
                        working_days: bool) -> list[datetime]:
        pack = self.rt.pack
        return reminder_times(start, due, pack.reminder_fractions, working_days,
                              timezone=pack.calendar.timezone,
                              country=pack.calendar.holidays_country)

    async def _cancel_timers(self, session, row: EscalationTarget, why: str) -> None:
        """Stop a target's acknowledgement clock (its milestone clocks run on)."""
        await session.execute(update(Timer).where(
            Timer.case_id == row.case_id, Timer.authority_id == row.authority_id,
            Timer.fired_at.is_(None)).values(fired_at=utcnow(), outcome=why))

    async def fire_due(self, now: datetime | None = None, batch: int = 100) -> int:
        """Fire the timers that are due, a batch in one transaction. On PostgreSQL, instances
        share them (SKIP LOCKED)."""
        now = now or utcnow()
        fired = None
        try:
            async with self.rt.db.writes() as session, session.begin():
                due = [*await _due(session, Timer, now, batch),
                       *await _due(session, MilestoneTimer, now, batch)]
                for timer in due:
                    await self._fire_timer(session, timer, now)
            fired = len(due)
        except Exception as exc:
            if database_fault(exc):
                raise  # the database, not a timer: the loop waits for it
            # A timer that cannot fire fails every batch it is in, and, the most overdue, it is
            # in every batch: fire them one by one so that it holds back no other.
            log.warning("timer_batch_failed", exc_info=True)
        if fired is None:  # out of the except block: a timer's failure is not chained to this
            fired = await self._fire_one_by_one(now, batch)
        if fired:
            self.rt.relays[SERVICE].poke()
        return fired

    async def _fire_one_by_one(self, now: datetime, batch: int) -> int:
        async with self.rt.db.reads() as session:
            due = [(table, timer_id, case_id) for table in (Timer, MilestoneTimer)
                   for timer_id, case_id in (await session.execute(
                       select(table.id, table.case_id)
                       .where(table.fired_at.is_(None), table.due_at <= now)
                       .order_by(table.due_at).limit(batch))).all()]
        fired = 0
        for table, timer_id, case_id in due:
            with structlog.contextvars.bound_contextvars(case_id=case_id):
                try:
                    async with self.rt.db.writes() as session, session.begin():
                        timers = await _due(session, table, now, 1, timer_id)  # [] if taken
                        for timer in timers:
                            await self._fire_timer(session, timer, now)
                    fired += len(timers)
                except Exception:
                    log.exception("timer_failed", table=table.__tablename__, timer_id=timer_id)
                    await self._retry_later(table, timer_id, now)
        return fired

    async def _retry_later(self, table: type[Timer] | type[MilestoneTimer], timer_id: int,
                           now: datetime) -> None:
        """Put a timer that failed back, to fire later. It is not dropped: it is a duty to alert
        someone about a child (a reminder, a missed deadline), and the cause may pass (a
        directory or pack put right). It waits longer each time, so it costs the others little."""
        async with self.rt.db.writes() as session, session.begin():
            timer = await session.get(table, timer_id)
            if timer is not None and timer.fired_at is None:
                timer.due_at = now + min(_RETRY_FIRST * 2 ** min(timer.attempts, 6), _RETRY_MAX)
                timer.attempts += 1

    async def _fire_timer(self, session, timer: Timer | MilestoneTimer, now: datetime) -> None:
        timer.fired_at, timer.outcome = now, "fired"
        metrics.TIMERS.labels(timer.kind if isinstance(timer, Timer) else "milestone").inc()
        with structlog.contextvars.bound_contextvars(case_id=timer.case_id):
            case = await session.get(EscalationCase, timer.case_id)  # the handlers' get: cached
            if case is not None and not self._alerting(case.severity):
                timer.outcome = "information_only"  # a clock a transfer or a reopening started
                return
            if isinstance(timer, Timer):
                await self._fire(session, timer, now)
            else:
                await self._milestone_due(session, timer, now)

    async def _fire(self, session, timer: Timer, now: datetime) -> None:
        case = await session.get(EscalationCase, timer.case_id)
        row = await session.get(EscalationTarget, (timer.case_id, timer.authority_id))
        if (row is None or case is None or row.acked_at is not None
                or row.released_at is not None or case.closed_at is not None):
            return
        if row.authority_id not in self.rt.directory:
            timer.outcome = "not_in_directory"
            if timer.kind == "breach":
                self._unescalated(row.authority_id, "deadline_missed")
            return
        if timer.kind == "reminder":
            if row.transferred_to is not None:
                # Passed on and waiting for the new authority, which is reminded itself: this
                # one can no longer acknowledge, so a reminder would ask the impossible. Its
                # breach still fires, should the new one never answer.
                timer.outcome = "transferred"
            elif await session.scalar(select(Timer.id).where(  # fired late: a later step is due
                    Timer.case_id == timer.case_id, Timer.authority_id == timer.authority_id,
                    Timer.fired_at.is_(None), Timer.due_at > timer.due_at,
                    Timer.due_at <= now).limit(1)):
                # On the timeline, but no message: the later step says more, and three
                # messages in one second are noise.
                timer.outcome = "overtaken"
            else:
                self._alert(session, case, row, "reminder", suffix=str(timer.id))
            self._emit(session, TargetEscalated(case_id=case.case_id,
                                                authority_id=row.authority_id,
                                                step="reminder", fraction=timer.fraction))
            return
        log.warning("ack_deadline_missed", authority_id=row.authority_id)
        if row.transferred_to is None:  # still the one to answer: told its deadline passed
            self._alert(session, case, row, "breach", suffix=str(timer.id))
        await self._breach(session, case, row, now, suffix=str(timer.id))

    async def _on_undeliverable(self, session, data: DeliveryOutcome) -> None:
        """An act alert that reached nobody is escalated now, not at its deadline: after
        UNREACHED_AFTER failed tries (the notifier goes on trying until the deadline), or when
        it is dead-lettered sooner. Once: the first of the two escalates."""
        if data.status == "failed":
            unreached = data.attempt == UNREACHED_AFTER
        else:  # dead-lettered: unless its UNREACHED_AFTER-th failure escalated it already
            unreached = data.attempt < UNREACHED_AFTER
        if not unreached:
            return
        row = await session.get(EscalationTarget, (data.case_id, data.authority_id))
        case = await session.get(EscalationCase, data.case_id)
        if (row is None or case is None or row.acked_at is not None or row.role != "act"
                or row.released_at is not None or case.closed_at is not None
                or not self._alerting(case.severity)):
            return  # as for a timer: no duty is left to escalate
        if row.authority_id not in self.rt.directory:
            self._unescalated(row.authority_id, "unreachable")
            return
        # One breach per deadline: the unreached target is escalated now, or was at its
        # deadline already; its deadline's own breach then has nothing new to tell.
        breach = (Timer.case_id == row.case_id, Timer.authority_id == row.authority_id,
                  Timer.kind == "breach", Timer.due_at == row.ack_due)
        if await session.scalar(select(Timer.id).where(
                *breach, Timer.outcome.in_(("fired", "escalated")))):
            return  # at its deadline, or unreached already (another of its alerts failing)
        log.warning("act_alert_undeliverable", authority_id=row.authority_id)
        # Named after the unreached target: a supervisor over two of them is told of each.
        await self._breach(session, case, row, utcnow(), suffix=f"undelivered:{row.authority_id}",
                           reason="unreachable")
        await session.execute(update(Timer).where(*breach, Timer.fired_at.is_(None)).values(
            fired_at=utcnow(), outcome="escalated"))

    async def _breach(self, session, case: EscalationCase, row: EscalationTarget,
                      now: datetime, suffix: str, reason: str = "deadline_missed") -> None:
        """Tell the target's supervisor chain, then hold the next tier up to the same window.
        The authority they are told of is the one silent: after a transfer, the new one."""
        self._emit(session, TargetEscalated(case_id=case.case_id, authority_id=row.authority_id,
                                            step="breach", fraction=1.0))
        authority = self.rt.directory.get(row.authority_id)
        steps = self.rt.pack.escalation.on_breach
        about = (row.transferred_to or row.authority_id, reason)
        supervisors = authority.supervisors if "supervisors" in steps else []
        for supervisor in supervisors:
            self._alert(session, case, row, "supervisor", to=supervisor, suffix=suffix,
                        about=about)
        if "next_tier" in steps and authority.parent:
            await self._escalate(session, case, row, authority.parent, now, suffix, about)
        elif not supervisors:  # the top of the ladder (national), or a pack that climbs none
            self._unescalated(row.authority_id, reason)

    def _unescalated(self, authority_id: str, reason: str) -> None:
        """A missed deadline nobody can be told of: the top of the ladder, a pack that climbs
        none, or an authority routed under an earlier pack or directory (a district, since
        abolished), whose supervisors and tier above are unknown. The new pack's own targets
        were routed and alerted when the cases were re-decided under it."""
        metrics.BREACHES_UNESCALATED.inc()
        gone = authority_id not in self.rt.directory
        log.error("breach_unescalated", authority_id=authority_id, reason=reason,
                  why="the authority is no longer in the directory" if gone
                  else "no supervisor and no tier above to tell")

    async def _escalate(self, session, case: EscalationCase, row: EscalationTarget,
                        parent_id: str, now: datetime, suffix: str,
                        about: tuple[str, str]) -> None:
        """The next tier up is told and held to the same ack window from now: it becomes an act
        target, or, already one, keeps the earlier of its own deadline and that one."""
        parent = await session.get(EscalationTarget, (case.case_id, parent_id))
        if parent is not None and parent.released_at is not None:
            return  # a transfer passed its duty to another authority
        due = self._due(now, row)
        if parent is None:
            authority = self.rt.directory.get(parent_id)
            parent = EscalationTarget(
                case_id=case.case_id, authority_id=parent_id, tier=authority.tier,
                agency=authority.agency, role="act", ack_within=row.ack_within,
                working_days=row.working_days, added_at=now, ack_due=due, origin="escalated")
            session.add(parent)
        elif parent.role != "act":
            parent.role, parent.ack_within, parent.working_days = (
                "act", row.ack_within, row.working_days)
            parent.added_at, parent.ack_due, parent.origin = now, due, "escalated"
        elif parent.acked_at is None and (parent.ack_due is None or due < parent.ack_due):
            await self._cancel_timers(session, parent, "rescheduled")
            parent.added_at, parent.ack_due = now, due
        else:
            due = None  # it has answered, or must answer sooner anyway: its clock stands
        self._emit(session, TargetEscalated(case_id=case.case_id, authority_id=row.authority_id,
                                            step="escalated", to_authority_id=parent_id))
        self._alert(session, case, parent, "escalated", suffix=suffix, about=about)
        if due is not None:
            self._schedule(session, parent)

    # --- events ---------------------------------------------------------------------------

    def _alert(self, session, case: EscalationCase, row: EscalationTarget, kind: str,
               to: str | None = None, suffix: str = "",
               milestone: EscalationMilestone | None = None,
               about: tuple[str, str] | None = None) -> None:
        """`milestone`: the alert is about that step's deadline, not about acknowledging.
        `about`: for a supervisor or the tier up, the authority that missed `row`'s deadline
        or could not be reached, and which of the two."""
        recipient = self.rt.directory.get(to or row.authority_id)
        alert_id = ":".join(p for p in (case.case_id, recipient.id, kind, suffix) if p)
        # News of the close, or a supervisor told of an officer's silence: the recipient has
        # nothing to acknowledge (a supervisor is not a target of the case).
        told = kind in ("closed", "supervisor")
        category = self.rt.pack.categories.get(case.facts["category"])
        agency = self.rt.pack.agencies.get(recipient.agency)
        self._emit(session, AlertRequested(
            alert_id=alert_id, case_id=case.case_id, authority_id=recipient.id,
            tier=recipient.tier, agency=recipient.agency, role="inform" if told else row.role,
            kind=kind, category=case.facts["category"], severity=case.severity,
            publicity=case.publicity, ack_due=None if kind == "closed" else row.ack_due,
            contacts=recipient.contacts,
            rulepack_version=case.rulepack_version,
            milestone=milestone.milestone if milestone else None,
            milestone_label=milestones.label(milestone.milestone, self.rt.pack) if milestone
            else None,
            milestone_due=milestone.due_at if milestone else None,
            about_authority_id=about[0] if about else None,
            about_reason=about[1] if about else None,
            category_label=Label(vi=category.label, en=category.name) if category else None,
            agency_label=Label(vi=agency.label, en=agency.name) if agency else None,
            setting=case.facts.get("setting"),
        ), topic=Topics.ALERTS)

    def _emit(self, session: AsyncSession, data, topic: str = Topics.CASES) -> None:
        outbox.add(session, SERVICE, self.rt.settings.topic(topic), Envelope.wrap(data, SOURCE))


PROGRESS_EVERY = 500  # cases re-evaluated between two progress lines
# Failed tries after which an act alert counts as unreached and its target is escalated. A P1
# reaches it in about two minutes of failures (the notifier's backoff is capped at 30 s).
UNREACHED_AFTER = 12
_DEFAULT_WINDOW = timedelta(hours=1)  # an act target always has a window; this is a backstop
_RETRY_FIRST, _RETRY_MAX = timedelta(minutes=1), timedelta(hours=1)  # a timer that failed


async def _due(session, table, now: datetime, batch: int, timer_id: int | None = None) -> list:
    query = select(table).where(table.fired_at.is_(None), table.due_at <= now)
    if timer_id is not None:
        query = query.where(table.id == timer_id)
    query = query.order_by(table.due_at).limit(batch)
    if is_postgres(session):
        query = query.with_for_update(skip_locked=True)
    return list((await session.scalars(query)).all())


def _max_publicity(a: str, b: str) -> str:
    return max(a, b, key=PUBLICITY.index)
