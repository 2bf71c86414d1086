"""Deciding a case: a new report, a follow-up, a reopening, a re-evaluation under a new rule
pack. The pure engine decides; this applies the decision: targets, their clocks and alerts,
milestones, and the CaseDecided event with only what changed."""

import hashlib
from datetime import datetime
from types import SimpleNamespace

import structlog
from sqlalchemy import delete, or_, select, update

from schemas.decisions import CaseFacts, Decision, Target
from schemas.events import (
    CaseDecided,
    CaseReopened,
    CaseUpdated,
    Envelope,
    MilestoneScheduled,
    ReportReceived,
)
from schemas.rulepack import PUBLICITIES
from services.common import metrics
from services.common.db import add_bulk, claim_event, utcnow
from services.escalation import milestones
from services.escalation.alerts import SERVICE
from services.escalation.engine import decide, milestone_deadlines, rules_severity
from services.escalation.store import EscalationCase, EscalationMilestone, EscalationTarget, MilestoneTimer

log = structlog.get_logger("beacon.escalation")
PROGRESS_EVERY = 500  # cases re-evaluated between two progress lines


class Decisions:
    """Part of the escalation service (handlers.Escalation), whose `rt` it uses."""

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
        case.human_publicity = max(case.human_publicity, data.publicity, key=PUBLICITIES.index)
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
        await self._decide(session, case, facts, case.publicity, envelope.time, envelope.type,
                           received=data.received_at)

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
            self._alert(session, case, row, "alert", suffix=f"reopened:{case.decisions}",
                        cause="reopened")
            self._schedule(session, row)
        self._emit(session, CaseReopened(case_id=case.case_id, at=envelope.time,
                                         cause=envelope.type,
                                         authority_ids=[r.authority_id for r in rows]))
        log.warning("case_reopened", cause=envelope.type, authorities=len(rows))
        return facts.model_copy(update={"first_received_at": origin})

    async def _decide(self, session, case: EscalationCase, facts: CaseFacts, floor: str,
                      at: datetime, cause: str, fresh: bool = False,
                      received: datetime | None = None) -> None:
        """Decide under the pack in force. `at` is when intake accepted the input (so a
        redelivery decides the same), or when a re-evaluation ran. A `fresh` case has no rows
        yet, so nothing is read back (most inputs open a case: see docs/performance.md).
        `floor`: the publicity the decision may not go below. It is not what a person set
        (case.human_publicity), or rules such as the institutional step-up would build on their
        own earlier result and raise publicity at every re-decision. `received`: when a
        linked report was received, which a milestone it brings counts from (else `at`)."""
        facts = facts.model_copy(update={"publicity": case.human_publicity})
        decision = decide(facts, self.rt.pack, self.rt.directory, at, floor)
        raised_from = case.severity if decision.severity < case.severity else None  # P1 highest
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
                                                             raised_from, rearm)
        self._emit(session, CaseDecided(case_id=case.case_id, decision=decision, added=added,
                                        changed=changed, cause=cause))
        brought = await self._schedule_milestones(session, case, facts, decision.severity,
                                                  targets, fresh, received or at,
                                                  at if rearm else None)
        if raised_from:
            self._tell_raised(session, case, targets, raised_from, brought)
        metrics.DECISIONS.labels(decision.severity).inc()
        metrics.DECISION_LATENCY.observe(max((utcnow() - at).total_seconds(), 0.0))
        log.info("decided", severity=decision.severity, publicity=decision.publicity,
                 added=len(added), changed=len(changed))

    async def _apply_targets(self, session, case: EscalationCase, decision: Decision,
                             at: datetime, fresh: bool, raised_from: str | None,
                             rearm: bool = False,
                             ) -> tuple[list[EscalationTarget], list[Target], list[Target]]:
        """Only what changed is acted on: new targets, inform -> act, a shorter deadline, a
        higher severity (`raised_from`: the severity before). A target once told stays on the
        case: duties are never silently dropped. `rearm`: the case was information only, its
        clocks stopped; those yet to answer must answer within their window from `at`.
        Returns the case's target rows after the change, and the targets added and changed."""
        existing = {} if fresh else {t.authority_id: t for t in (await session.scalars(
            select(EscalationTarget).where(EscalationTarget.case_id == case.case_id))).all()}
        rows = dict(existing)
        added, changed, now_act = [], [], set()
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
                if row.role == "inform":
                    now_act.add(row.authority_id)
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
                    and (raised_from or row.authority_id in sooner)):
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
                    cause = ("again" if rearm and row.authority_id not in sooner
                             else "must_act" if row.authority_id in now_act
                             else "raised" if raised_from else "sooner")
                    self._alert(session, case, row, "alert", suffix=f"decision:{case.decisions}",
                                cause=cause, previous_severity=raised_from)
        return list(rows.values()), added, changed

    def _tell_raised(self, session, case: EscalationCase, targets: list[EscalationTarget],
                     raised_from: str, brought: dict[str, SimpleNamespace]) -> None:
        """Tell the act targets that have acknowledged that the case got more severe (those yet
        to answer are told by _apply_targets, with their deadline). They heard nothing, though
        one may now hold the 12-hour emergency measure: its first word was the reminder at
        half of it. The alert carries the step it now holds, if any (`brought`)."""
        for row in targets:
            if (row.role == "act" and row.acked_at is not None and row.released_at is None
                    and row.transferred_to is None and row.authority_id in self.rt.directory):
                self._alert(session, case, row, "alert", suffix=f"decision:{case.decisions}",
                            cause="raised", previous_severity=raised_from,
                            milestone=brought.get(row.authority_id))

    async def _schedule_milestones(self, session, case: EscalationCase, facts: CaseFacts,
                                   severity: str, targets: list[EscalationTarget],
                                   fresh: bool, received: datetime,
                                   rearm: datetime | None = None) -> dict[str, SimpleNamespace]:
        """Hold the case to the pack's milestone deadlines. A later decision adds milestones
        (P2 -> P1 adds the emergency measure), counted from `received`, when the input that
        made them apply was received: counted from a first report that did not know of the
        danger, the 12 hours had often passed when they were set, and were missed at once with
        no window to act in (Decree 56 Art. 26.3: 12 hours of receiving the information). A
        later decision may bring a deadline nearer (P3 -> P2: the initial assessment within
        24 h, not 3 working days), counted from where the milestone counts from, never
        further. `rearm`: the case was information only until then,
        its clocks stopped; a milestone neither done nor missed is held to its deadline again
        (at once, if it passed meanwhile). Returns, by holder, the earliest step this decision
        brought or brought nearer (a fresh case's are not news: they come with its alert)."""
        brought: dict[str, SimpleNamespace] = {}
        if case.closed_at is not None:
            return brought
        dues = milestone_deadlines(facts, severity, self.rt.pack)
        if not dues:
            return brought
        since = max(received, facts.first_received_at)
        working = {m.code: m.within.is_working_days
                   for m in self.rt.pack.milestones_for(severity)}
        known = {} if fresh else {m.milestone: m for m in (await session.scalars(
            select(EscalationMilestone).where(
                EscalationMilestone.case_id == case.case_id))).all()}
        duties = [milestones.Duty(t.authority_id, t.tier, t.agency, t.released_at is None)
                  for t in targets if t.role == "act"]
        home = milestones.home_ids(duties, self.rt.directory, facts.location)
        for mid, due in dues.items():
            m = known.get(mid)
            start = facts.first_received_at
            if m is not None and m.counted_from is not None:  # not pulled back to the first
                start = m.counted_from
                due = milestone_deadlines(facts, severity, self.rt.pack, start)[mid]
            if m is None:
                holder = milestones.owner(mid, duties, self.rt.pack, home)
                if holder is None:
                    continue
                if not fresh:
                    start = since  # seldom: computed only for a milestone a decision brings
                    due = milestone_deadlines(facts, severity, self.rt.pack, start)[mid]
                add_bulk(session, EscalationMilestone, case_id=case.case_id, milestone=mid,
                         authority_id=holder, due_at=due, scheduled_at=utcnow(),
                         counted_from=None if fresh else since)
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
            fractions = self.rt.pack.reminder_fractions
            reminders = self._reminder_times(start, due, working[mid])
            for fraction, when in zip([*fractions, 1.0], [*reminders, due], strict=True):
                if rearm and when <= rearm:  # passed while nobody was chased
                    if fraction < 1.0:
                        continue
                    when = rearm
                add_bulk(session, MilestoneTimer, case_id=case.case_id, milestone=mid,
                         authority_id=holder, fraction=fraction, due_at=when)
            self._emit(session, MilestoneScheduled(case_id=case.case_id, milestone=mid,
                                                   authority_id=holder, due_at=due))
            if not fresh and (holder not in brought or due < brought[holder].due_at):
                brought[holder] = SimpleNamespace(milestone=mid, due_at=due)
        return brought

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
