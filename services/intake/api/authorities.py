"""Authorities answering for a case: record a milestone, transfer the case to another authority.

Like an acknowledgement (cases.py), each accepted input is an event on the inputs topic; the
answer is 202 once the broker has it. Escalation holds the deadlines.
"""

from datetime import datetime
from typing import Annotated

from fastapi import APIRouter, Depends, HTTPException, Request, Response
from pydantic import BaseModel, Field
from sqlalchemy import select

from schemas.events import Envelope, MilestoneRecorded, TransferReason, TransferRequested
from schemas.reports import Location
from services.common import audit
from services.common.auth import Principal
from services.common.db import utcnow
from services.escalation import milestones, transfers
from services.escalation.store import EscalationMilestone
from services.intake import submission
from services.intake.api.cases import READERS, acting_target, readable_case
from services.intake.readmodel import holds_duty
from services.intake.api.deps import Body, Runtime, deny, fail, invalid, role

router = APIRouter(prefix="/api/v1", tags=["authorities"])


class RecordMilestone(Body):
    authority_id: str = Field(max_length=80)
    milestone: str = Field(max_length=64, description="emergency_measure, initial_assessment, "
                                                      "case_plan, case_closed, or a pack's own")
    outcome: str | None = Field(None, max_length=32, description="for case_closed: a code")


@router.post("/cases/{case_id}/milestones", status_code=202,
             responses={200: {"description": "recorded already"}, 403: {}, 404: {}, 409: {},
                        422: {}, 503: {}})
async def record_milestone(case_id: str, body: RecordMilestone, request: Request,
                           response: Response, rt: Runtime,
                           who: Annotated[Principal, Depends(role("authority"))]):
    """202 once the record is on Kafka; 200 when the step is recorded already (a second click,
    a retry): recorded as replayed, nothing sent, as for an acknowledgement."""
    # Until the authority it passed the case to acknowledges, the sender holds its milestones
    # (their clocks run on it): it must be able to record the 12-hour measure it took.
    case, _ = await acting_target(request, rt, who, case_id, body.authority_id, passing_on=True)
    problem = None  # each refusal of the input is recorded as "rejected", then answered
    if wrong := milestones.check_record(body.milestone, body.outcome, rt.pack):
        problem = invalid(wrong)
    elif case.status == "closed":
        problem = HTTPException(409, "the case is closed")
    if problem is not None:
        await fail(request, who, "write", case_id, "rejected", problem)
    async with rt.db.reads() as session:
        step = await session.get(EscalationMilestone, (case.case_id, body.milestone))
    holder = await _holder(rt, case, body.milestone, step)
    if holder is not None and holder != body.authority_id:
        # One agency's answer never stands for another's: the police may not record child
        # protection's emergency measure, nor close the case and stop every clock on it.
        await deny(request, who, case_id, f"{body.milestone} is for {holder} to record")
    if step is not None and step.done_at is not None:  # escalation keeps the first record
        await audit.write(rt.db, who.user_id, who.role, "write", case_id, ["milestone"],
                          outcome="replayed")
        response.status_code = 200
        return {"case_id": case_id, "milestone": body.milestone, "recorded_at": step.done_at}
    event = MilestoneRecorded(case_id=case_id, milestone=body.milestone,
                              authority_id=body.authority_id, by_user=who.user_id, at=utcnow(),
                              outcome=body.outcome)
    return await submission.accept(rt, who, Envelope.wrap(event, submission.SOURCE), None,
                                   {"case_id": case_id, "milestone": body.milestone}, None)


def _duties(case) -> list[milestones.Duty]:
    """The case's act targets, as the read model has them."""
    duties = []
    for t in case.targets:
        if t.get("role") == "act":
            tier, _, agency = t["authority_id"].split(":", 2)
            duties.append(milestones.Duty(t["authority_id"], tier, agency, holds_duty(t)))
    return duties


async def _holder(rt, case, milestone: str, row: EscalationMilestone | None) -> str | None:
    """Who records a milestone: the authority escalation holds to it (transfers move it; `row`),
    or, for a step with no deadline (closing the case), its owner among those that must act."""
    if row is not None and row.authority_id:
        return row.authority_id
    duties = _duties(case)
    home = milestones.home_ids(duties, rt.directory, Location(
        province_code=case.province_code, commune_code=case.commune_code))
    return milestones.owner(milestone, duties, rt.pack, home)


class MilestoneOut(BaseModel):
    milestone: str
    authority_id: str | None
    due_at: datetime | None
    done_at: datetime | None
    done_by: str | None
    outcome: str | None
    missed_at: datetime | None


@router.get("/cases/{case_id}/milestones", response_model=list[MilestoneOut],
            responses={403: {}, 404: {}})
async def list_milestones(case_id: str, request: Request, rt: Runtime,
                          who: Annotated[Principal, Depends(role(*READERS))]):
    async with rt.db.reads() as session:
        await readable_case(session, request, who, case_id)
        rows = (await session.scalars(select(EscalationMilestone).where(
            EscalationMilestone.case_id == case_id).order_by(EscalationMilestone.due_at))).all()
    await audit.write(rt.db, who.user_id, who.role, "read", case_id, ["milestones"])
    return [MilestoneOut(milestone=r.milestone, authority_id=r.authority_id, due_at=r.due_at,
                         done_at=r.done_at, done_by=r.done_by, outcome=r.outcome,
                         missed_at=r.missed_at) for r in rows]


class Transfer(Body):
    from_authority_id: str = Field(max_length=80)
    to_authority_id: str = Field(max_length=80)
    reason: TransferReason


@router.post("/cases/{case_id}/transfers", status_code=202,
             responses={403: {}, 404: {}, 409: {}, 422: {}, 503: {}})
async def transfer(case_id: str, body: Transfer, request: Request, rt: Runtime,
                   who: Annotated[Principal, Depends(role("authority"))]):
    case, _ = await acting_target(request, rt, who, case_id, body.from_authority_id)
    problem = None  # as for a milestone: recorded as "rejected", then answered
    if body.to_authority_id not in rt.directory:
        problem = invalid((("to_authority_id",), f"unknown authority {body.to_authority_id!r}"))
    elif why := transfers.refusal(body.from_authority_id, body.to_authority_id, _duties(case),
                                  rt.pack.escalation.supervisor_agency):
        problem = invalid((("to_authority_id",), why))
    elif case.status == "closed":
        problem = HTTPException(409, "the case is closed")
    if problem is not None:
        await fail(request, who, "write", case_id, "rejected", problem)
    event = TransferRequested(case_id=case_id, from_authority_id=body.from_authority_id,
                              to_authority_id=body.to_authority_id, reason=body.reason,
                              by_user=who.user_id, at=utcnow())
    return await submission.accept(rt, who, Envelope.wrap(event, submission.SOURCE), None,
                                   {"case_id": case_id, "to_authority_id": body.to_authority_id},
                                   None)
