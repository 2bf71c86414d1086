"""An act target's clock: its answer-by time, its reminder and breach timers (rows that
services/escalation/timers.py fires), and stopping them."""

from datetime import datetime, timedelta

from sqlalchemy import update

from services.common.db import add_bulk, utcnow
from services.escalation.engine import deadline, reminder_times
from services.escalation.store import EscalationTarget, MilestoneTimer, Timer

_DEFAULT_WINDOW = timedelta(hours=1)  # an act target always has a window; this is a backstop


class Clocks:
    """Part of the escalation service (handlers.Escalation), whose `rt` it uses."""

    def _due(self, start: datetime, row: EscalationTarget) -> datetime:
        """When an act target asked to answer from `start` must answer: its window again."""
        if row.ack_within:
            return deadline(start, row.ack_within, row.working_days, cal=self.rt.pack.calendar)
        return start + ((row.ack_due - row.added_at) if row.ack_due else _DEFAULT_WINDOW)

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
                              cal=pack.calendar)

    async def _cancel_timers(self, session, row: EscalationTarget, why: str) -> None:
        """Stop a target's acknowledgement clock (its milestone clocks run on)."""
        await session.execute(update(Timer).where(
            Timer.case_id == row.case_id, Timer.authority_id == row.authority_id,
            Timer.fired_at.is_(None)).values(fired_at=utcnow(), outcome=why))

    async def _stop_clocks(self, session, case_id: str, why: str) -> None:
        """Stop every clock of a case: closed, or become information only."""
        for table in (Timer, MilestoneTimer):
            await session.execute(update(table).where(
                table.case_id == case_id, table.fired_at.is_(None)
            ).values(fired_at=utcnow(), outcome=why))
