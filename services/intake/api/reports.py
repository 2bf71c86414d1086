"""Operators' reports and follow-ups."""

from typing import Annotated

from fastapi import APIRouter, Depends, Header, HTTPException, Request
from fastapi.exceptions import RequestValidationError
from pydantic import BaseModel
from sqlalchemy import bindparam, select

from schemas.events import CaseUpdated, Envelope, ReportReceived
from schemas.reports import CaseUpdate, Report
from schemas.rulepack import PUBLICITIES
from services.common.auth import Principal
from services.common.db import utcnow
from services.intake import correlation, readmodel, submission
from services.intake.api.deps import Runtime, deny, fail, invalid, role
from services.intake.store import CaseView, ReportRow, SeverityOverrideRow
from services.intake.validation import check_codes, check_report

router = APIRouter(prefix="/api/v1", tags=["reports"])
SOURCE = submission.SOURCE

IdempotencyHeader = Annotated[
    str | None, Header(alias="Idempotency-Key", min_length=1, max_length=200,
                       description="Same key and body: the same answer. Other body: 409.")
]


class Accepted(BaseModel):
    case_id: str
    report_id: str
    new_case: bool
    linked: bool
    case_url: str


class UpdateAccepted(BaseModel):
    case_id: str
    update_id: str


@router.post("/reports", status_code=202, response_model=Accepted,
             responses={409: {}, 413: {}, 503: {"description": (
                 "event log down; Retry-After. Not accepted, unless its event reaches Kafka all "
                 "the same: retry with the same Idempotency-Key to get the one answer")}})
async def submit_report(
    report: Report, request: Request, rt: Runtime,
    who: Annotated[Principal, Depends(role("operator", "supervisor"))],
    idempotency_key: IdempotencyHeader = None,
):
    """A report as the hotline or a commune point received it (DOMAIN.md section 6). Each problem
    is a 422 naming its field: a code not in the active rule pack, a commune outside its province,
    a `received_at` more than 5 minutes in the future or more than 30 days ago (a report is
    entered when it is received), a `link_case_id` that is unknown or outside your jurisdiction,
    `new_case` with `link_case_id`."""
    idem = None
    if idempotency_key:
        idem = submission.Idempotency(idempotency_key, submission.body_hash(report.model_dump_json()))
    request.state.idempotency = idem  # a retry of an accepted report gets its answer (deps.fail)
    errors = check_report(report, rt.pack, utcnow())
    if errors:
        await fail(request, who, "write", request.url.path, "rejected", RequestValidationError(errors))
    if not who.covers(report.location.province_code, report.location.commune_code):
        await deny(request, who, request.url.path, "the location is outside your jurisdiction")

    submission.start_clock()
    if report.link_case_id:
        return await _submit(report, request, rt, who, idem)
    # Until this report's case is in the read model, another about the same incident must not
    # look: it would open a second case (several callers at once about one viral incident).
    try:
        async with rt.matching.hold(report.location.commune_code, report.category,
                                    submission.time_left()):
            return await _submit(report, request, rt, who, idem)
    except correlation.Busy:
        # The reports before it took the time (a broker that does not answer): 503 within the
        # same 5 s as theirs, not after all of theirs. Nothing was stored.
        await fail(request, who, "write", request.url.path, "withdrawn", submission.unavailable(
            "reports about the same place and kind are ahead of this one; try again"))


async def _submit(report: Report, request: Request, rt, who: Principal,
                  idem: submission.Idempotency | None) -> dict:
    children = rt.vault.child_fingerprints(report)
    reporter = rt.vault.reporter_fingerprint(report)
    matching = rt.vault.matching(report, reporter)
    case_id = (await _linked_case(request, rt, who, report.link_case_id) if report.link_case_id
               else None)
    async with rt.db.reader() as reads:  # the key is checked when it is written (submission)
        if case_id is None and not report.new_case:
            case_id = await correlation.match_open_case(reads, report, matching, rt.pack.silent)
        new_case = case_id is None
        independent = new_case or await correlation.is_independent(reads, case_id,
                                                                   matching.reporters)

    case_id = case_id or correlation.new_id("C")
    report_id = correlation.new_id("R")
    event = ReportReceived(
        case_id=case_id, report_id=report_id, new_case=new_case,
        received_at=report.received_at, channel=report.channel, category=report.category,
        subcategory=report.subcategory, location=report.location,
        other_locations=report.other_locations, setting=report.setting,
        child_ages=report.child_ages, indicators=report.indicators,
        publicity=report.publicity, independent=independent,
    )
    envelope = Envelope.wrap(event, SOURCE)
    row = dict(
        report_id=report_id, case_id=case_id, event_id=envelope.id,
        event=envelope.model_dump_json(), published=False, received_at=report.received_at,
        submitted_by=who.user_id, identity=rt.vault.seal(report),
        reporter_fingerprint=reporter, child_fingerprints=children,
        child_sexes=[child.sex for child in report.children], created_at=utcnow(),
    )
    response = Accepted(
        case_id=case_id, report_id=report_id, new_case=new_case, linked=not new_case,
        case_url=f"/api/v1/cases/{case_id}",
    ).model_dump()
    return await submission.accept(rt, who, envelope, row, response, idem,
                                   readmodel.Children(children, row["child_sexes"]),
                                   table=ReportRow)


async def _linked_case(request: Request, rt, who: Principal, case_id: str) -> str:
    """The case an operator links a report to. One outside the caller's jurisdiction is refused
    like an unknown one, so that its existence does not leak, and the attempt is audited. A
    closed case takes no more reports: its clocks have stopped, so a new report about the child
    opens a case of its own, routed and held to its deadlines afresh."""
    async with rt.db.reader() as reads:
        case = (await reads.execute(_CASE, {"case": case_id})).one_or_none()
    if case is not None and who.covers(case.province_code, case.commune_code):
        if case.status != "closed":
            return case.case_id
        action, outcome, why = ("write", "rejected", "the case is closed: send the report "
                                "without link_case_id to open a new case")
    else:  # the same answer either way; the trail tells the two apart
        action, outcome = ("denied", "denied") if case is not None else ("write", "not_found")
        why = "no such case"
    await fail(request, who, action, case_id, outcome, invalid((("link_case_id",), why)),
               ["link_case_id"])


_CASE = select(CaseView.case_id, CaseView.province_code, CaseView.commune_code,
               CaseView.status).where(CaseView.case_id == bindparam("case"))


@router.post("/cases/{case_id}/updates", status_code=202, response_model=UpdateAccepted,
             responses={403: {}, 404: {}, 409: {}, 503: {}})
async def update_case(
    case_id: str, update: CaseUpdate, request: Request, rt: Runtime,
    who: Annotated[Principal, Depends(role("operator", "supervisor"))],
    idempotency_key: IdempotencyHeader = None,
):
    idem = None
    if idempotency_key:
        idem = submission.Idempotency(
            idempotency_key, submission.body_hash(case_id + update.model_dump_json()))
    request.state.idempotency = idem  # a retry of an accepted update gets its answer (deps.fail)
    errors = check_codes(rt.pack, None, None, update.indicators)
    if errors:
        await fail(request, who, "write", case_id, "rejected", RequestValidationError(errors))
    async with rt.db.reads() as session:
        case = await session.get(CaseView, case_id)
    if case is None:
        await fail(request, who, "write", case_id, "not_found", HTTPException(404, "no such case"))
    if not who.covers(case.province_code, case.commune_code):
        await deny(request, who, case_id, "the case is outside your jurisdiction")
    if update.severity_override and who.role != "supervisor":
        await deny(request, who, case_id, "only a supervisor may override severity")
    if (update.publicity and case.publicity and who.role != "supervisor"
            and PUBLICITIES.index(update.publicity) < PUBLICITIES.index(case.publicity)):
        # Lowering it can drop the province from those who must act: a supervisor's call.
        await deny(request, who, case_id, "only a supervisor may lower publicity")
    if case.status == "closed":  # its clocks have stopped: a new report opens a new case
        await fail(request, who, "write", case_id, "rejected",
                   HTTPException(409, "the case is closed"))
    if not (update.indicators or update.publicity or update.severity_override):
        await fail(request, who, "write", case_id, "rejected", invalid(((), "nothing to update")))
    update_id = correlation.new_id("U")
    event = CaseUpdated(
        case_id=case_id, update_id=update_id, by_role=who.role, indicators=update.indicators,
        publicity=update.publicity,
        severity_override=update.severity_override.severity if update.severity_override else None,
        override_reason_given=update.severity_override is not None,
    )
    envelope = Envelope.wrap(event, SOURCE)
    response = UpdateAccepted(case_id=case_id, update_id=update_id).model_dump()
    table = row = None  # other follow-ups: the event waits on the idempotency key, if any
    if override := update.severity_override:  # the reason stays here, sealed (docs/privacy.md)
        table, row = SeverityOverrideRow, dict(
            update_id=update_id, case_id=case_id, event_id=envelope.id,
            event=envelope.model_dump_json(), published=False, severity=override.severity,
            reason=rt.vault.seal_text(override.reason), by_user=who.user_id, created_at=utcnow())
    return await submission.accept(rt, who, envelope, row, response, idem, table=table)
