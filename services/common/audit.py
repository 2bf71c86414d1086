"""Append-only audit trail: who did what to which record, when. IDs and field names, never values."""

from datetime import datetime

from sqlalchemy import JSON, Integer, String, event, func, select
from sqlalchemy.ext.asyncio import AsyncSession
from sqlalchemy.orm import Mapped, mapped_column

from services.common.db import Base, add_bulk, utcnow


class AuditRecord(Base):
    __tablename__ = "audit_log"
    id: Mapped[int] = mapped_column(Integer, primary_key=True, autoincrement=True)
    at: Mapped[datetime] = mapped_column(index=True)
    user_id: Mapped[str] = mapped_column(String(64), index=True)
    role: Mapped[str] = mapped_column(String(16))
    action: Mapped[str] = mapped_column(String(32))  # read, write, export, rule_change, denied
    record: Mapped[str] = mapped_column(String(64), index=True)  # a case id, pack version, user id
    fields: Mapped[list] = mapped_column(JSON, default=list)
    outcome: Mapped[str] = mapped_column(String(16), default="ok")  # ok, denied, replayed...


def record(session: AsyncSession, user_id: str, role: str, action: str, record_id: str,
           fields: list[str] | None = None, outcome: str = "ok") -> None:
    add_bulk(session, AuditRecord, at=utcnow(), user_id=user_id, role=role, action=action,
             record=record_id, fields=sorted(fields or []), outcome=outcome)


async def write(db, user_id: str, role: str, action: str, record_id: str,
                fields: list[str] | None = None, outcome: str = "ok") -> None:
    """One record in a transaction of its own: a read, or an attempt that changed nothing."""
    async with db.writes() as session, session.begin():
        record(session, user_id, role, action, record_id, fields, outcome)


@event.listens_for(AuditRecord, "before_update")
@event.listens_for(AuditRecord, "before_delete")
def _append_only(mapper, connection, target) -> None:
    # The trail is evidence: nothing in Beacon changes or removes a record once written.
    raise PermissionError("the audit trail is append-only")


async def query(session: AsyncSession, *, case_id: str | None = None, user_id: str | None = None,
                action: str | None = None, since: datetime | None = None,
                until: datetime | None = None, limit: int = 100,
                offset: int = 0) -> tuple[int, list[AuditRecord]]:
    q = select(AuditRecord)
    for column, value in ((AuditRecord.record, case_id), (AuditRecord.user_id, user_id),
                          (AuditRecord.action, action)):
        if value is not None:
            q = q.where(column == value)
    if since is not None:
        q = q.where(AuditRecord.at >= since)
    if until is not None:
        q = q.where(AuditRecord.at < until)
    total = await session.scalar(select(func.count()).select_from(q.subquery()))
    rows = (await session.scalars(q.order_by(AuditRecord.id).limit(limit).offset(offset))).all()
    return total or 0, list(rows)


# Outcomes of attempts that did nothing: no such case, an input refused as it stood, an input
# refused with 503 (withdrawn; it is counted as a write if adopted later).
FAILED = ("not_found", "rejected", "withdrawn")


async def access_report(session: AsyncSession, case_id: str) -> list[dict]:
    """Who touched a case: per user and role, how often by action, first and last time."""
    rows = (await session.execute(
        select(AuditRecord.user_id, AuditRecord.role, AuditRecord.action, AuditRecord.outcome,
               func.count(), func.min(AuditRecord.at), func.max(AuditRecord.at))
        .where(AuditRecord.record == case_id)
        .group_by(AuditRecord.user_id, AuditRecord.role, AuditRecord.action, AuditRecord.outcome)
        .order_by(AuditRecord.user_id))).all()
    people: dict[tuple[str, str], dict] = {}
    for user, role, action, outcome, n, first, last in rows:
        p = people.setdefault((user, role), {"user_id": user, "role": role, "actions": {},
                                             "denied": 0, "failed": {}, "first_at": first,
                                             "last_at": last})
        if outcome == "denied":
            p["denied"] += n
        elif outcome in FAILED:  # attempts that read or changed nothing: apart from the actions
            p["failed"][outcome] = p["failed"].get(outcome, 0) + n
        else:
            p["actions"][action] = p["actions"].get(action, 0) + n
        p["first_at"], p["last_at"] = min(p["first_at"], first), max(p["last_at"], last)
    return list(people.values())
