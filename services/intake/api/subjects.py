"""A data subject's requests, for supervisors (PDP Law 91/2025; docs/privacy.md): find the reports
that name a person within the caller's jurisdiction, and erase one report's identity.

The person's phone number or the child's name come in a POST body, so that they appear in no
URL and no access log; nothing here logs a body. Each search and each erasure (or attempt) is
audited with field names and codes, never the values, and a search's answer is never cached.
"""

from datetime import datetime
from typing import Annotated, Literal

from fastapi import APIRouter, Depends, HTTPException, Request, Response
from pydantic import BaseModel, Field, field_validator, model_validator

from services.common import audit
from services.common.auth import Principal
from services.intake import subjects
from services.intake.api.deps import Body, Runtime, deny, fail, role
from services.intake.store import CaseView

router = APIRouter(prefix="/api/v1", tags=["subject requests"])
# A refusal names identity, as an erasure does: the trail searched by field finds it.
Supervisor = Annotated[Principal, Depends(role("supervisor", asks=("identity",)))]


class IdentitySearch(Body):
    """At least one of them. A phone number is matched on its last nine digits; a child's name
    whole (case, accents and spacing aside), not a part of it."""

    reporter_phone: str | None = Field(None, max_length=40)
    child_name: str | None = Field(None, max_length=200)

    @field_validator("reporter_phone")
    @classmethod
    def _digits(cls, value):
        if value is not None and not any(ch.isdigit() for ch in value):
            raise ValueError("a phone number needs digits")
        return value

    @field_validator("child_name")
    @classmethod
    def _letters(cls, value):
        if value is not None and not any(ch.isalnum() for ch in value):
            raise ValueError("a name needs letters")
        return value

    @model_validator(mode="after")
    def _something(self):
        if self.reporter_phone is None and self.child_name is None:
            raise ValueError("give reporter_phone, child_name or both")
        return self


class FoundReport(BaseModel):
    report_id: str
    case_id: str
    received_at: datetime
    matched: list[Literal["child_name", "reporter_phone"]]


class SearchAnswer(BaseModel):
    reports: list[FoundReport]
    more: bool = Field(description=f"more reports match than the {subjects.FOUND_AT_MOST} "
                                   "shown, the newest: narrow the search (a person's name and "
                                   "phone together)")


@router.post("/identity/search", response_model=SearchAnswer, responses={403: {}, 422: {}})
async def search_identity(body: IdentitySearch, request: Request, response: Response,
                          rt: Runtime, who: Supervisor):
    """The reports whose reporter's phone or child's name is this, in cases within the caller's
    jurisdiction, newest first, at most 100."""
    found, more = await subjects.find(rt.db, rt.vault, who, body.reporter_phone, body.child_name)
    given = [name for name in ("child_name", "reporter_phone") if getattr(body, name)]
    matched: dict[str, set[str]] = {}
    for report in found:
        matched.setdefault(report.case_id, set()).update(report.matched)
    async with rt.db.writes() as session, session.begin():
        # Under the path (the record id must name no one), and under each case it revealed,
        # so that a case's access report shows who found it through a person.
        audit.record(session, who.user_id, who.role, "search_identity", request.url.path, given)
        for case_id, keys in sorted(matched.items()):
            audit.record(session, who.user_id, who.role, "search_identity", case_id, sorted(keys))
    response.headers["Cache-Control"] = "no-store"  # it ties a person to cases
    return SearchAnswer(reports=[FoundReport(**vars(f)) for f in found], more=more)


class Erasure(Body):
    reason: subjects.Reason


class Erased(BaseModel):
    case_id: str
    report_id: str
    reason: str
    erased: bool = Field(description="false: nothing was left to erase (asked before, or "
                                     "erased by retention)")


@router.post("/cases/{case_id}/reports/{report_id}/erasure", response_model=Erased,
             responses={403: {}, 404: {}, 422: {}})
async def erase_report(case_id: str, report_id: str, body: Erasure, request: Request,
                       rt: Runtime, who: Supervisor):
    """Erase one report's identity (children, reporter, narrative, suspect, receiving point),
    its hashes and its children's sexes. The case, its events and timeline stay."""
    why = ["identity", f"reason:{body.reason}"]  # a refusal's record: what was asked, and why
    async with rt.db.reads() as session:
        case = await session.get(CaseView, case_id)
    if case is None:
        await fail(request, who, "erase", case_id, "not_found", HTTPException(404, "no such case"),
                   why)
    if not who.covers(case.province_code, case.commune_code):
        await deny(request, who, case_id, "this case is outside your jurisdiction", why)
    if await subjects.case_of(rt.db, report_id) != case_id:
        await fail(request, who, "erase", case_id, "not_found",
                   HTTPException(404, "no such report in this case"), why)
    erased = await subjects.erase(rt.db, who, case_id, report_id, body.reason)
    return Erased(case_id=case_id, report_id=report_id, reason=body.reason, erased=erased)
