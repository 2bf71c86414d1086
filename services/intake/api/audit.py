"""The audit trail for auditors: append-only, queried by case, user, action and time, and a
per-case access report. Reading the trail is itself recorded. Auditors act within their scope: a
non-national auditor reads only the trail of a case in its jurisdiction."""

from datetime import UTC, datetime
from typing import Annotated

from fastapi import APIRouter, Depends, Query, Request
from fastapi.exceptions import RequestValidationError
from pydantic import BaseModel

from services.common import audit
from services.common.auth import Principal
from services.intake.api.cases import readable_case
from services.intake.api.deps import Runtime, deny, role

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


async def _in_scope(request: Request, rt, who: Principal, case_id: str | None) -> None:
    """Refuse, as a case read does (404, or 403 recorded), what is outside the auditor's scope."""
    if who.scope == "national":
        return  # every record, a case's or not: unchanged
    if case_id is None:
        # Pack versions and authorities belong to no jurisdiction, so nothing scopes them.
        await deny(request, who, request.url.path,
                   f"an auditor scoped to {who.scope}, not national, must name a case (case_id) "
                   "in its jurisdiction: records not tied to a case (rule packs, directory "
                   "entries) cannot be scoped")
    async with rt.db.reads() as session:
        await readable_case(session, request, who, case_id)


@router.get("", response_model=AuditPage, responses={403: {}, 404: {}})
async def trail(request: Request, rt: Runtime, who: Auditor,
                case_id: str | None = Query(None, max_length=64,
                                            description="or any record: a pack version..."),
                user_id: str | None = Query(None, max_length=64),
                action: str | None = Query(None, max_length=32),
                field: str | None = Query(None, max_length=64, description=(
                    "records naming this field or one under it: `identity` with `action=read` "
                    "gives the identity openings")),
                since: Annotated[datetime | None, Query(description=WHEN + " From then on.")] = None,
                until: Annotated[datetime | None, Query(description=WHEN + " Before then.")] = None,
                limit: int = Query(100, ge=1, le=1000), offset: int = Query(0, ge=0, le=1_000_000)):
    since, until = _utc("since", since), _utc("until", until)
    await _in_scope(request, rt, who, case_id)
    async with rt.db.reads() as session:
        total, rows = await audit.query(session, case_id=case_id, user_id=user_id, action=action,
                                        field=field, since=since, until=until, limit=limit,
                                        offset=offset)
    await audit.write(rt.db, who.user_id, who.role, "export", (case_id or "audit")[:64],
                      ["audit_trail"])
    return AuditPage(items=[AuditOut.model_validate(r, from_attributes=True) for r in rows],
                     total=total, limit=limit, offset=offset)


@router.get("/cases/{case_id}/access", responses={403: {}, 404: {}})
async def access_report(case_id: str, request: Request, rt: Runtime, who: Auditor):
    """Who read, wrote or was refused this case, how often, first and last time; who opened
    its identity, each time."""
    await _in_scope(request, rt, who, case_id)
    async with rt.db.reads() as session:
        people = await audit.access_report(session, case_id)
    await audit.write(rt.db, who.user_id, who.role, "export", case_id[:64], ["access_report"])
    return {"case_id": case_id, "accessed_by": people}
