"""Reading cases, and authorities' acknowledgements. Every read is scoped and audited."""

from datetime import datetime
from typing import Annotated, Literal

from fastapi import APIRouter, Depends, HTTPException, Query, Request, Response
from fastapi.exceptions import RequestValidationError
from pydantic import BaseModel, ConfigDict, Field, field_validator
from sqlalchemy import func, select

from schemas.events import Envelope, TargetAcknowledged
from schemas.reports import aged_16_or_17
from services.common import audit
from services.common.auth import Principal
from services.common.db import utcnow
from services.intake import readmodel, submission
from services.intake.api.deps import Body, Runtime, deny, fail, role
from services.intake.readmodel import holds_duty
from services.intake.store import CaseAuthority, CaseCategory, CaseView, in_scope

router = APIRouter(prefix="/api/v1", tags=["cases"])
READERS = ("operator", "supervisor", "authority")


class TimelineItem(BaseModel):
    at: datetime
    kind: str
    detail: dict


class TargetOut(BaseModel):
    """One authority on the case, as the read model holds it. Every key is always present."""
    authority_id: str
    tier: str | None = None
    agency: str | None = None
    role: Literal["act", "inform"]
    ack_within: str | None = Field(None, description="ISO-8601 duration, e.g. PT12H")
    working_days: bool = False
    ack_due: datetime | None = Field(None, description="deadline to acknowledge (act targets)")
    acknowledged_at: datetime | None = None
    acknowledged_by: str | None = None
    alert: str | None = Field(None, description="kind of the latest alert sent to it")
    escalation: str | None = Field(None, description="latest step of its acknowledgement's "
                                                     "clock: reminder, breach...")
    delivery: str | None = Field(None, description="outcome of the latest delivery")
    delivery_channel: str | None = None
    transferred_to: str | None = Field(None, description="authority it passed its duty to")
    transferred_from: str | None = None
    released: bool = Field(False, description="the lead agency released it from the case")

    @field_validator("working_days", "released", mode="before")
    @classmethod
    def _unset(cls, value):  # the read model stores null where a flag was cleared
        return bool(value)


class CaseOut(BaseModel):
    case_id: str
    status: str
    category: str = Field(description="the first report's category")
    categories: list[str] = Field(description="every category its reports gave: the first "
                                              "report's, then the others by code")
    setting: str
    province_code: int
    commune_code: int
    severity: str | None
    publicity: str | None
    acknowledged: bool
    rulepack_version: str | None
    first_received_at: datetime
    report_count: int
    independent_reports: int
    # "age_16_17": a child of 16 or 17, not a child in law but protected by criminal procedure
    # until 18 (DOMAIN.md section 2).
    flags: list[str] = []
    targets: list[TargetOut]
    timeline: list[TimelineItem] | None = None


class CasePage(BaseModel):
    items: list[CaseOut]
    total: int
    limit: int
    offset: int


def _out(case: CaseView, categories: list[str], timeline=None) -> CaseOut:
    return CaseOut(
        case_id=case.case_id, status=case.status, category=case.category,
        categories=categories, setting=case.setting,
        province_code=case.province_code, commune_code=case.commune_code, severity=case.severity,
        publicity=case.publicity, acknowledged=case.acknowledged,
        rulepack_version=case.rulepack_version, first_received_at=case.first_received_at,
        report_count=case.report_count, independent_reports=case.independent_reports,
        flags=["age_16_17"] if aged_16_or_17(case.child_ages or ()) else [],
        targets=[TargetOut.model_validate(t) for t in case.targets],
        timeline=None if timeline is None else [
            TimelineItem(at=t.at, kind=t.kind, detail=t.detail) for t in timeline],
    )


async def _may_read(session, who: Principal, case: CaseView) -> bool:
    if who.role == "authority":
        routed = await session.scalar(select(func.count()).select_from(CaseAuthority).where(
            CaseAuthority.case_id == case.case_id,
            CaseAuthority.authority_id.in_(who.authority_ids)))
        return bool(routed)
    return who.covers(case.province_code, case.commune_code)


async def readable_case(session, request: Request, who: Principal, case_id: str,
                        asks: list[str] | None = None) -> CaseView:
    """The case, if it exists (404) and the caller may read it (403); both recorded, naming
    `asks`, the fields the caller wanted of it (its identity, ...)."""
    case = await session.get(CaseView, case_id)
    if case is None:
        await fail(request, who, "read", case_id, "not_found", HTTPException(404, "no such case"),
                   asks)
    if not await _may_read(session, who, case):
        await deny(request, who, case_id, "this case is not routed to your authorities"
                   if who.role == "authority" else "this case is outside your jurisdiction", asks)
    return case


@router.get("/cases/{case_id}", response_model=CaseOut, responses={403: {}, 404: {}})
async def get_case(case_id: str, request: Request, rt: Runtime,
                   who: Annotated[Principal, Depends(role(*READERS))]):
    async with rt.db.reads() as session:
        case = await readable_case(session, request, who, case_id)
        categories = (await readmodel.categories(session, [case]))[case_id]
        out = _out(case, categories, await readmodel.timeline(session, case_id))
    await audit.write(rt.db, who.user_id, who.role, "read", case_id, list(CaseOut.model_fields))
    return out


class CaseFilters(BaseModel):
    """`GET /api/v1/cases`' query. A parameter it does not know is a 422: ignored, a misspelt
    filter (`?setting=home`, `?serverity=P1`) answered with every case as if it had filtered."""

    model_config = ConfigDict(extra="forbid")

    status: Literal["open", "closed"] | None = None
    severity: Literal["P1", "P2", "P3", "P4", "P5"] | None = None
    category: str | None = Field(None, max_length=64)
    province_code: int | None = Field(None, ge=1, le=999)
    commune_code: int | None = Field(None, ge=1, le=999_999)
    # For an authority, whether its own authorities have answered (not the whole case's).
    acknowledged: bool | None = None
    # Open, alerting cases where an authority that must act is past its deadline and has not
    # acknowledged (for an authority, one of its own): the duty officer's list of whom to call.
    overdue: bool | None = None
    limit: int = Field(50, ge=1, le=200)
    offset: int = Field(0, ge=0, le=1_000_000)


@router.get("/cases", response_model=CasePage)
async def list_cases(request: Request, rt: Runtime,
                     who: Annotated[Principal, Depends(role(*READERS))],
                     filters: Annotated[CaseFilters, Query()]):
    names = [name for name, _ in request.query_params.multi_items()]
    if repeated := sorted({name for name in names if names.count(name) > 1}):
        # `?status=open&status=closed` took the last and answered as if it were all asked.
        raise RequestValidationError([{"loc": ["query", name], "msg": "given more than once",
                                       "type": "value_error"} for name in repeated])
    query = select(CaseView)
    for column in ("status", "severity", "province_code", "commune_code"):
        if (value := getattr(filters, column)) is not None:
            query = query.where(getattr(CaseView, column) == value)
    if filters.category is not None:  # any of its reports': a supervisor looks for every such case
        query = query.where(CaseView.case_id.in_(select(CaseCategory.case_id).where(
            CaseCategory.category == filters.category)))
    mine = CaseAuthority.authority_id.in_(who.authority_ids)
    if filters.acknowledged is not None and who.role == "authority":
        # An authority asks about its own answer: a case others have yet to acknowledge is
        # not waiting for it.
        awaiting = CaseView.case_id.in_(select(CaseAuthority.case_id).where(
            mine, CaseAuthority.awaiting.is_(True)))
        query = query.where(~awaiting if filters.acknowledged else awaiting)
    elif filters.acknowledged is not None:
        query = query.where(CaseView.acknowledged == filters.acknowledged)
    if filters.overdue is not None:
        late = select(CaseAuthority.case_id).where(
            CaseAuthority.awaiting.is_(True), CaseAuthority.ack_due < utcnow(),
            *([mine] if who.role == "authority" else []))
        overdue = (CaseView.status == "open") & CaseView.case_id.in_(late) & (
            # Information only (P5): nobody is chased.
            func.coalesce(CaseView.severity, "").not_in(rt.pack.silent))
        query = query.where(overdue if filters.overdue else ~overdue)
    limit, offset = filters.limit, filters.offset
    if who.role == "authority":
        query = query.where(CaseView.case_id.in_(select(CaseAuthority.case_id).where(mine)))
    else:
        query = query.where(*in_scope(who))
    async with rt.db.reads() as session:
        total = await session.scalar(select(func.count()).select_from(query.subquery()))
        rows = (await session.scalars(
            # The case id breaks ties (reports are often entered to the minute): without it a
            # page boundary between equal times may skip or repeat a case on PostgreSQL.
            query.order_by(CaseView.first_received_at.desc(), CaseView.case_id.desc())
            .limit(limit).offset(offset))).all()
        categories = await readmodel.categories(session, rows)
    async with rt.db.writes() as session, session.begin():
        for case in rows:
            audit.record(session, who.user_id, who.role, "read", case.case_id, ["summary"])
    return CasePage(items=[_out(c, categories[c.case_id]) for c in rows], total=total or 0,
                    limit=limit, offset=offset)


async def acting_target(request: Request, rt, who: Principal, case_id: str,
                        authority_id: str, passing_on: bool = False) -> tuple[CaseView, dict]:
    """The case and the caller's authority's target on it, if that target holds the duty;
    otherwise 404 or 403 (either is audited). `passing_on`: a target whose transfer awaits the
    new authority's acknowledgement is let through too; it is still on the clock till then."""
    if authority_id not in who.authority_ids:
        await deny(request, who, case_id, "you do not answer for that authority")
    async with rt.db.reads() as session:
        case = await session.get(CaseView, case_id)
    if case is None:
        await fail(request, who, "write", case_id, "not_found", HTTPException(404, "no such case"))
    target = next((t for t in case.targets if t["authority_id"] == authority_id), None)
    if target is None:
        await deny(request, who, case_id, "this case is not routed to that authority")
    if not holds_duty(target):
        pending = holds_duty({**target, "transferred_to": None})  # passed on, not yet released
        if pending and passing_on:
            return case, target
        await deny(request, who, case_id, f"a transfer of this duty to {target['transferred_to']} "
                   "awaits its acknowledgement" if pending
                   else "only an authority that must act on the case may do this")
    return case, target


class Acknowledge(Body):
    authority_id: str


@router.post("/cases/{case_id}/acknowledgements", status_code=202, tags=["authorities"],
             responses={200: {"description": "acknowledged already"}, 403: {}, 404: {}, 409: {},
                        503: {}})
async def acknowledge(case_id: str, body: Acknowledge, request: Request, response: Response,
                      rt: Runtime, who: Annotated[Principal, Depends(role("authority"))]):
    """202 once the acknowledgement is on Kafka; 200 when the case shows this authority's
    acknowledgement already (a second click, a retry): recorded as replayed, nothing sent."""
    case, target = await acting_target(request, rt, who, case_id, body.authority_id)
    if case.status == "closed":  # its clocks have stopped: nothing is waiting for this answer
        await fail(request, who, "write", case_id, "rejected",
                   HTTPException(409, "the case is closed"))
    if target.get("acknowledged_at"):
        await audit.write(rt.db, who.user_id, who.role, "write", case_id, ["acknowledged"],
                          outcome="replayed")
        response.status_code = 200
        return {"case_id": case_id, "authority_id": body.authority_id}
    event = TargetAcknowledged(case_id=case_id, authority_id=body.authority_id,
                               by_user=who.user_id, at=utcnow())
    envelope = Envelope.wrap(event, submission.SOURCE)
    return await submission.accept(rt, who, envelope, None,
                                   {"case_id": case_id, "authority_id": body.authority_id}, None)
