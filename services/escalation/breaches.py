"""A missed deadline or an act alert that reached nobody: the target's supervisor chain is
told, and the next tier up is held to the same window."""

from datetime import datetime

import structlog
from sqlalchemy import select, update

from schemas.directory import Authority
from schemas.events import DeliveryOutcome, TargetEscalated
from services.common import metrics
from services.common.db import utcnow
from services.escalation.store import EscalationCase, EscalationMilestone, EscalationTarget, Timer

log = structlog.get_logger("beacon.escalation")
# Failed tries after which an act alert counts as unreached and its target is escalated. A P1
# reaches it in about two minutes of failures (the notifier's backoff is capped at 30 s).
UNREACHED_AFTER = 12


class Breaches:
    """Part of the escalation service (handlers.Escalation), whose `rt` it uses."""

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
                      now: datetime, suffix: str, reason: str = "deadline_missed",
                      tell_holder: bool = False) -> None:
        """Tell the target's supervisor chain, then hold the next tier up to the same window;
        first, with `tell_holder`, the target itself that its deadline passed, and who was told.
        The authority they are told of is the one silent: after a transfer, the new one."""
        told = await self._told_of(session, case, self.rt.directory.get(row.authority_id))
        if tell_holder:
            self._alert(session, case, row, "breach", suffix=suffix, told_of=told)
        self._emit(session, TargetEscalated(case_id=case.case_id, authority_id=row.authority_id,
                                            step="breach", fraction=1.0))
        supervisors, parent = told
        about = (row.transferred_to or row.authority_id, reason)
        for supervisor in supervisors:
            self._alert(session, case, row, "supervisor", to=supervisor, suffix=suffix,
                        about=about)
        if parent:
            await self._escalate(session, case, row, parent, now, suffix, about)
        elif not supervisors:  # the top of the ladder (national), or a pack that climbs none
            self._unescalated(row.authority_id, reason)

    async def _told_of(self, session, case: EscalationCase,
                       authority: Authority) -> tuple[list[str], str | None]:
        """Who is told of a deadline `authority` missed, by the pack's `on_breach`: its
        supervisors, and the authority one tier up (None: none, or one that passed its duty on
        by a transfer). The authority's own breach alert says the same, so that it claims no
        more than was done."""
        steps = self.rt.pack.escalation.on_breach
        parent = authority.parent if "next_tier" in steps else None
        if parent is not None:
            held = await session.get(EscalationTarget, (case.case_id, parent))
            if held is not None and held.released_at is not None:
                parent = None
        return (authority.supervisors if "supervisors" in steps else []), parent

    def _unescalated(self, authority_id: str, reason: str) -> None:
        """A missed deadline nobody can be told of: the top of the ladder, a pack that climbs
        none, or an authority routed under an earlier pack or directory (a district, since
        abolished), whose supervisors and tier above are unknown. Its case has the new pack's
        targets only if the publication re-decided the open cases (`reevaluate_open`): so the
        hotline's duty officer is told, by this metric and log line."""
        metrics.BREACHES_UNESCALATED.inc()
        gone = authority_id not in self.rt.directory
        log.error("breach_unescalated", authority_id=authority_id, reason=reason,
                  why="the authority is no longer in the directory" if gone
                  else "no supervisor and no tier above to tell")

    async def _escalate(self, session, case: EscalationCase, row: EscalationTarget,
                        parent_id: str, now: datetime, suffix: str,
                        about: tuple[str, str],
                        milestone: EscalationMilestone | None = None) -> None:
        """The next tier up is told and held to the same ack window from now: it becomes an act
        target, or, already one, keeps the earlier of its own deadline and that one.
        `milestone`: the step `row` missed, which the alert names."""
        parent = await session.get(EscalationTarget, (case.case_id, parent_id))  # not released
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
        self._alert(session, case, parent, "escalated", suffix=suffix, about=about,
                    milestone=milestone)
        if due is not None:
            self._schedule(session, parent)
