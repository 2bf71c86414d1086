"""Who a case is about: its reports' sealed identity, opened for those who must act on it.

Hotline operators and supervisors in the case's jurisdiction see all of it. An authority sees it
only for a case it must act on (an `act` target), and the reporter's name and phone only when the
reporter agreed to be contacted and did not ask for confidentiality. Everyone else gets 403.
Each opening is audited with the names of the fields shown, never their values, and the answer
is never cached (docs/privacy.md).
"""

from datetime import datetime
from typing import Annotated

import structlog
from cryptography.fernet import InvalidToken
from fastapi import APIRouter, Depends, Request, Response
from pydantic import BaseModel
from sqlalchemy import select

from services.common import audit
from services.common.auth import Principal
from services.intake.api.cases import readable_case
from services.intake.readmodel import holds_duty
from services.intake.api.deps import Runtime, deny, role
from services.intake.store import ReportRow, WithdrawnInput

router = APIRouter(prefix="/api/v1", tags=["cases"])
log = structlog.get_logger("beacon.intake")
SHOWN = ("children", "narrative", "suspect", "receiving_point", "reporter")
# A refusal names what was asked: the trail searched by field (`--field identity`) finds the
# refused attempts beside the openings.
ASKED = ("identity",)


class ReportIdentity(BaseModel):
    report_id: str
    received_at: datetime
    children: list[dict] = []
    narrative: str | None = None
    suspect: dict | None = None
    receiving_point: str | None = None
    reporter: dict | None = None
    reporter_withheld: bool = False  # confidential, or no consent to be contacted
    erased: bool = False  # by retention (docs/privacy.md)
    unreadable: bool = False  # sealed under a key that is not configured


class CaseIdentity(BaseModel):
    case_id: str
    reports: list[ReportIdentity]


@router.get("/cases/{case_id}/identity", response_model=CaseIdentity,
            responses={403: {}, 404: {}})
async def case_identity(case_id: str, request: Request, response: Response, rt: Runtime,
                        who: Annotated[Principal, Depends(role(
                            "operator", "supervisor", "authority", asks=ASKED))]):
    async with rt.db.reads() as session:
        case = await readable_case(session, request, who, case_id, list(ASKED))
        if who.role == "authority" and not must_act(case, who):
            await deny(request, who, case_id, "identity is shown only to those who must act",
                       list(ASKED))
        rows = (await session.execute(
            select(ReportRow.report_id, ReportRow.received_at, ReportRow.identity)
            .where(ReportRow.case_id == case_id,  # not a report refused with 503
                   ReportRow.event_id.not_in(select(WithdrawnInput.event_id)))
            .order_by(ReportRow.received_at))).all()
    reports = [_opened(rt.vault, row, who) for row in rows]
    shown = sorted({f"identity.{name}" for r in reports for name in SHOWN if getattr(r, name)})
    # Nothing to show (erased, unreadable, no report) is still an opening, told apart from a
    # read of the case by the field: the access report counts both as "read identity".
    await audit.write(rt.db, who.user_id, who.role, "read", case_id, shown or ["identity"])
    response.headers["Cache-Control"] = "no-store"
    return CaseIdentity(case_id=case_id, reports=reports)


def must_act(case, who: Principal) -> bool:
    """One of the caller's authorities is an act target of the case, and still holds it (not
    transferred to another authority, not released)."""
    return any(t.get("authority_id") in who.authority_ids and holds_duty(t) for t in case.targets)


def _opened(vault, row, who: Principal) -> ReportIdentity:
    out = ReportIdentity(report_id=row.report_id, received_at=row.received_at)
    if row.identity is None:
        out.erased = True
        return out
    try:
        identity = vault.open(row.identity)
    except InvalidToken:
        log.error("identity_unreadable", report_id=row.report_id)
        out.unreadable = True
        return out
    for name in SHOWN:
        if identity.get(name):
            setattr(out, name, identity[name])
    reporter = identity.get("reporter")
    # Sealed before the flag was kept: its absence counts as confidential.
    if who.role == "authority" and reporter and (
            identity.get("confidential", True) or not reporter.get("consent_to_contact")):
        out.reporter, out.reporter_withheld = None, True
    return out
