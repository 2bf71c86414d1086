"""The audit trail for auditors: append-only, queried by case, user, action and time, and a
per-case access report. Reading the trail is itself recorded."""

from datetime import UTC, datetime
from typing import Annotated

from fastapi import APIRouter, Depends, Query
from fastapi.exceptions import RequestValidationError
from pydantic import BaseModel

from services.common import audit
from services.common.auth import Principal
from services.intake.api.deps import Runtime, role

router = APIRouter(prefix="/api/v1/audit", tags=["auditors"])
Auditor = Annotated[Principal, Depends(role("auditor"))]


class AuditOut(BaseModel):
    id: int
    at: datetime
    user_id: str
    role: str
    action: str
    record: str
    fields: list[str]
    outcome: str


class AuditPage(BaseModel):
    items: list[AuditOut]
    total: int
    limit: int
    offset: int


WHEN = "ISO 8601: a date (2026-01-01) or a time; without a zone, UTC."


def _utc(name: str, value: datetime | None) -> datetime | None:
    if value is None:
        return None
    if value.tzinfo is None:
        return value.replace(tzinfo=UTC)
    try:
        return value.astimezone(UTC)
    except OverflowError:  # 0001-01-01T00:00:00+05:00 is before year 1 in UTC
        raise RequestValidationError([{"loc": ["query", name], "msg": "out of range",
                                       "type": "value_error"}]) from None


@router.get("", response_model=AuditPage)
async def trail(rt: Runtime, who: Auditor,
                case_id: str | None = Query(None, max_length=64,
                                            description="or any record: a pack version..."),
                user_id: str | None = Query(None, max_length=64),
                action: str | None = Query(None, max_length=32),
                since: Annotated[datetime | None, Query(description=WHEN + " From then on.")] = None,
                until: Annotated[datetime | None, Query(description=WHEN + " Before then.")] = None,
                limit: int = Query(100, ge=1, le=1000), offset: int = Query(0, ge=0, le=1_000_000)):
    since, until = _utc("since", since), _utc("until", until)
    async with rt.db.reads() as session:
        total, rows = await audit.query(session, case_id=case_id, user_id=user_id, action=action,
                                        since=since, until=until, limit=limit, offset=offset)
    async with rt.db.writes() as session, session.begin():
        audit.record(session, who.user_id, who.role, "export", (case_id or "audit")[:64],
                     ["audit_trail"])
    return AuditPage(items=[AuditOut.model_validate(r, from_attributes=True) for r in rows],
                     total=total, limit=limit, offset=offset)


@router.get("/cases/{case_id}/access")
async def access_report(case_id: str, rt: Runtime, who: Auditor):
    """Who read, wrote or was refused this case, how often, first and last time."""
    async with rt.db.reads() as session:
        people = await audit.access_report(session, case_id)
    async with rt.db.writes() as session, session.begin():
        audit.record(session, who.user_id, who.role, "export", case_id[:64], ["access_report"])
    return {"case_id": case_id, "accessed_by": people}
