"""Append-only audit trail: who did what to which record, when. IDs and field names, never values."""

from datetime import datetime

from sqlalchemy import JSON, Integer, String, and_, case, cast, event, func, or_, select
from sqlalchemy.ext.asyncio import AsyncSession
from sqlalchemy.orm import Mapped, mapped_column

from services.common.db import Base, add_bulk, utcnow


class AuditRecord(Base):
    __tablename__ = "audit_log"
    id: Mapped[int] = mapped_column(Integer, primary_key=True, autoincrement=True)
    at: Mapped[datetime] = mapped_column(index=True)
    user_id: Mapped[str] = mapped_column(String(64), index=True)
    role: Mapped[str] = mapped_column(String(16))
    # read, write, export, denied, rule_change, user_change, directory_change, erase, backup,
    # key_rotation
    action: Mapped[str] = mapped_column(String(32))
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


def naming(field: str):
    """Records naming `field` or a field under it: "identity" finds identity.children,
    identity.reporter... The fields are a JSON list, searched as its text: one expression
    for SQLite and PostgreSQL's json column alike."""
    fields = cast(AuditRecord.fields, String)
    return or_(fields.contains(f'"{field}"', autoescape=True),
               fields.contains(f'"{field}.', autoescape=True))


# A read is an opening of sealed data when its record names what was shown: the identity
# endpoint names identity.<part> (api/identity.py), the overrides endpoint override.reason.
# Told apart so, records written before this distinction count too.
OPENS_IDENTITY = and_(AuditRecord.action == "read", naming("identity"))
_KIND = case((OPENS_IDENTITY, "read identity"),
             (and_(AuditRecord.action == "read", naming("override.reason")),
              "read override reason"),
             else_=AuditRecord.action)


async def query(session: AsyncSession, *, case_id: str | None = None, user_id: str | None = None,
                action: str | None = None, field: str | None = None,
                since: datetime | None = None, until: datetime | None = None, limit: int = 100,
                offset: int = 0) -> tuple[int, list[AuditRecord]]:
    """Records in order; `field` keeps those naming that field or one under it."""
    q = select(AuditRecord)
    if field is not None:
        q = q.where(naming(field))
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
# refused with 503 (withdrawn; it is counted as a write if adopted later), an erasure of what
# was erased already.
FAILED = ("not_found", "rejected", "withdrawn", "already_erased")


async def access_report(session: AsyncSession, case_id: str) -> list[dict]:
    """Who touched a case: per user and role, how often by action (an identity opening counted
    as "read identity", apart from "read"), first and last time, and each identity opening with
    its time and the parts shown: who saw whom, for a breach notification."""
    rows = (await session.execute(
        select(AuditRecord.user_id, AuditRecord.role, _KIND, AuditRecord.outcome,
               func.count(), func.min(AuditRecord.at), func.max(AuditRecord.at))
        .where(AuditRecord.record == case_id)
        .group_by(AuditRecord.user_id, AuditRecord.role, _KIND, AuditRecord.outcome)
        .order_by(AuditRecord.user_id))).all()
    people: dict[tuple[str, str], dict] = {}
    for user, role, action, outcome, n, first, last in rows:
        p = people.setdefault((user, role), {"user_id": user, "role": role, "actions": {},
                                             "denied": 0, "failed": {}, "first_at": first,
                                             "last_at": last, "identity_openings": []})
        if outcome == "denied":
            p["denied"] += n
        elif outcome in FAILED:  # attempts that read or changed nothing: apart from the actions
            p["failed"][outcome] = p["failed"].get(outcome, 0) + n
        else:
            p["actions"][action] = p["actions"].get(action, 0) + n
        p["first_at"], p["last_at"] = min(p["first_at"], first), max(p["last_at"], last)
    openings = await session.execute(
        select(AuditRecord.user_id, AuditRecord.role, AuditRecord.at, AuditRecord.fields)
        .where(AuditRecord.record == case_id, OPENS_IDENTITY, AuditRecord.outcome.not_in(FAILED))
        .order_by(AuditRecord.id))
    for user, role, at, fields in openings:
        people[(user, role)]["identity_openings"].append({"at": at, "fields": fields})
    return list(people.values())
