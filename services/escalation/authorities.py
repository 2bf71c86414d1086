"""What authorities do on a case: acknowledge, transfer it (the duty passes on once the new
authority acknowledges), record a milestone (closing the case is one)."""

from datetime import datetime

import structlog
from sqlalchemy import select, update

from schemas.events import (
    AckRecorded,
    MilestoneRecorded,
    TargetAcknowledged,
    TargetReleased,
    TargetTransferred,
    TransferRequested,
)
from services.common.db import utcnow
from services.escalation import milestones, transfers
from services.escalation.store import EscalationCase, EscalationMilestone, EscalationTarget, MilestoneTimer

log = structlog.get_logger("beacon.escalation")


class Authorities:
    """Part of the escalation service (handlers.Escalation), whose `rt` it uses."""

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
        self._alert(session, case, new, "alert", suffix=f"transfer:{old.authority_id}",
                    cause="transferred", from_authority=old.authority_id)
        self._schedule(session, new)

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
