"""Firing the timers that are due: reminders, breaches and milestone deadlines, a batch per
transaction (SKIP LOCKED on PostgreSQL, so instances share them), one by one when a batch
fails, and a timer that keeps failing put back for later, never dropped."""

from datetime import datetime, timedelta

import structlog
from sqlalchemy import select

from schemas.events import MilestoneMissed, TargetEscalated
from services.common import backoff, metrics
from services.common.db import database_fault, is_postgres, utcnow
from services.escalation.alerts import SERVICE
from services.escalation.store import (
    EscalationCase,
    EscalationMilestone,
    EscalationTarget,
    MilestoneTimer,
    Timer,
)

log = structlog.get_logger("beacon.escalation")


class Timers:
    """Part of the escalation service (handlers.Escalation), whose `rt` it uses."""

    async def fire_due(self, now: datetime | None = None, batch: int = 100) -> int:
        """Fire the timers that are due, a batch in one transaction. On PostgreSQL, instances
        share them (SKIP LOCKED)."""
        now = now or utcnow()
        fired = None
        try:
            async with self.rt.db.writes() as session, session.begin():
                due = [*await _due_timers(session, Timer, now, batch),
                       *await _due_timers(session, MilestoneTimer, now, batch)]
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
                        timers = await _due_timers(session, table, now, 1, timer_id)  # [] if taken
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
                timer.due_at = now + timedelta(seconds=backoff.exponential(timer.attempts + 1, 60, 3600))
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
        # Still the one to answer (no transfer pending): told its deadline passed.
        await self._breach(session, case, row, now, suffix=str(timer.id),
                           tell_holder=row.transferred_to is None)

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
            if gone:
                return
            if (m.due_at is not None and m.due_at <= now) or await session.scalar(
                    select(MilestoneTimer.id).where(  # fired late: a later step is due too
                        MilestoneTimer.case_id == timer.case_id,
                        MilestoneTimer.milestone == timer.milestone,
                        MilestoneTimer.fired_at.is_(None), MilestoneTimer.due_at > timer.due_at,
                        MilestoneTimer.due_at <= now).limit(1)):
                # As an acknowledgement's: on the timeline, but no message. The later step
                # says more, and a reminder fired after the deadline would tell it as still
                # to come (a report entered hours late, escalation catching up).
                timer.outcome = "overtaken"
            else:
                self._alert(session, case, row, "reminder", suffix=suffix, milestone=m)
            self._emit(session, TargetEscalated(case_id=case.case_id,
                                                authority_id=row.authority_id, step="reminder",
                                                fraction=timer.fraction,
                                                milestone=timer.milestone))
            return
        # Missed: like a missed acknowledgement, the holder, its supervisor chain and the next
        # tier up are told.
        log.warning("milestone_missed", milestone=timer.milestone, authority_id=row.authority_id)
        m.missed_at = now
        up = None
        if gone:
            self._unescalated(row.authority_id, "milestone_missed")
        else:
            # Kind `breach` with the milestone: the messages tell the step overdue, not the
            # acknowledgement. Unlike an acknowledgement's breach, also told to a holder whose
            # transfer awaits the new authority: it still holds the step, and it alone may
            # record it until then (docs/authorities.md, Transfer).
            told = await self._told_of(session, case, self.rt.directory.get(row.authority_id))
            self._alert(session, case, row, "breach", suffix=suffix, milestone=m, told_of=told)
            supervisors, up = told
            for supervisor in supervisors:
                self._alert(session, case, row, "supervisor", to=supervisor, suffix=suffix,
                            milestone=m, about=(row.authority_id, "milestone_missed"))
            if not supervisors and not up:
                self._unescalated(row.authority_id, "milestone_missed")
        if up:
            parent = await session.get(EscalationTarget, (case.case_id, up))  # not released
            if parent is not None and parent.role == "act":
                self._alert(session, case, parent, "escalated", suffix=suffix, milestone=m,
                            about=(row.authority_id, "milestone_missed"))
            else:
                await self._escalate(session, case, row, up, now, suffix,
                                     (row.authority_id, "milestone_missed"), milestone=m)
        self._emit(session, MilestoneMissed(case_id=case.case_id, milestone=timer.milestone,
                                            authority_id=row.authority_id, due_at=timer.due_at,
                                            to_authority_id=up))


async def _due_timers(session, table, now: datetime, batch: int,
                      timer_id: int | None = None) -> list:
    query = select(table).where(table.fired_at.is_(None), table.due_at <= now)
    if timer_id is not None:
        query = query.where(table.id == timer_id)
    query = query.order_by(table.due_at).limit(batch)
    if is_postgres(session):
        query = query.with_for_update(skip_locked=True)
    return list((await session.scalars(query)).all())
