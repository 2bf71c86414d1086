"""Admins change the routing rules safely: upload a draft, validate, replay it over recorded cases,
have a second admin approve it, publish it with an effective time, roll back to an earlier one.
Every step is in the audit trail (action `rule_change`, record = the pack version)."""

import asyncio
from datetime import datetime, timedelta
from typing import Annotated

from fastapi import APIRouter, Depends, HTTPException, Query, Request
from pydantic import BaseModel, Field
from sqlalchemy import select

from schemas.decisions import CaseFacts
from schemas.events import Envelope, RulePackPublished, Topics
from services.common import audit, kafka
from services.common.auth import Principal
from services.common.db import utcnow
from services.escalation import packs_store, replay
from services.escalation.directory import build_directory
from services.escalation.rulepack import RulePackError, parse_pack, validate_pack_text
from services.escalation.store import EscalationCase
from services.intake.api.deps import Body, Runtime, deny, fail, invalid, role

router = APIRouter(prefix="/api/v1/rulepacks", tags=["admins"])
Admin = Annotated[Principal, Depends(role("admin"))]
MAX_PAST = timedelta(minutes=1)  # an effective time a little in the past is "now"
MAX_AHEAD = timedelta(days=366)  # a pack is scheduled for a date in force, not for ever


class PackText(Body):
    text: str = Field(max_length=200_000, description="The rule pack as YAML (docs/rules.md)")


class Problem(BaseModel):
    place: str
    message: str


class PackOut(BaseModel):
    version: str
    state: str
    sha256: str
    uploaded_by: str
    uploaded_at: datetime
    approved_by: str | None
    approved_at: datetime | None
    in_force: bool = False


class Publish(Body):
    effective_at: datetime | None = Field(None, description="Default: now. Time zone required.")
    reevaluate_open: bool = Field(False, description="Re-decide open cases under this pack")


def _out(row, rt) -> PackOut:
    return PackOut(version=row.version, state=row.state, sha256=row.sha256,
                   uploaded_by=row.uploaded_by, uploaded_at=row.uploaded_at,
                   approved_by=row.approved_by, approved_at=row.approved_at,
                   in_force=row.version == rt.pack.version)


async def _refused(request: Request, who: Principal, version: str, exc: packs_store.Refused):
    """Every refused step is in the trail, as every attempt is (docs/admin.md)."""
    if exc.status == 403:
        await deny(request, who, version, str(exc))
    await _rejected(request, who, version, HTTPException(exc.status, str(exc)))


async def _rejected(request: Request, who: Principal, version: str, error: Exception):
    status = getattr(error, "status_code", 422)  # a RequestValidationError has none
    outcome = {404: "not_found", 503: "withdrawn"}.get(status, "rejected")
    await fail(request, who, "rule_change", version, outcome, error)


def _audit(session, who: Principal, version: str, step: str) -> None:
    audit.record(session, who.user_id, who.role, "rule_change", version, [step])


@router.get("", response_model=list[PackOut])
async def list_packs(rt: Runtime, who: Admin):
    async with rt.db.reads() as session:
        rows = (await session.scalars(select(packs_store.RulePackVersion)
                                      .order_by(packs_store.RulePackVersion.uploaded_at))).all()
    await audit.write(rt.db, who.user_id, who.role, "read", "rulepacks", ["versions"])
    return [_out(r, rt) for r in rows]


@router.post("/validate", response_model=list[Problem])
async def validate(body: PackText, who: Admin):
    """The problems of a pack, each with its place; empty when it is valid. Stores nothing."""
    problems = await asyncio.to_thread(validate_pack_text, body.text, "upload")  # CPU-bound
    return [Problem(place=p, message=m) for p, m in problems]


@router.post("", status_code=201, response_model=PackOut, responses={409: {}, 422: {}})
async def upload(body: PackText, request: Request, rt: Runtime, who: Admin):
    try:
        async with rt.db.writes() as session, session.begin():
            row = await packs_store.upload(session, body.text, who.user_id)
            _audit(session, who, row.version, "upload")
    except RulePackError as exc:
        await _rejected(request, who, "rulepack", HTTPException(
            422, [{"place": p, "message": m} for p, m in exc.errors]))
    except packs_store.Refused as exc:
        await _refused(request, who, "rulepack", exc)
    return _out(row, rt)


@router.get("/{version}")
async def show(version: str, request: Request, rt: Runtime, who: Admin):
    async with rt.db.reads() as session:
        try:
            row = await packs_store.get(session, version)
        except packs_store.Refused as exc:
            await _refused(request, who, version, exc)
        pubs = (await session.scalars(select(packs_store.RulePackPublication).where(
            packs_store.RulePackPublication.version == version)
            .order_by(packs_store.RulePackPublication.id))).all()
    await audit.write(rt.db, who.user_id, who.role, "read", version, ["publications", "text"])
    return {**_out(row, rt).model_dump(mode="json"), "text": row.text,
            "publications": [{"effective_at": p.effective_at, "published_by": p.published_by,
                              "published_at": p.published_at, "rollback": p.rollback,
                              "reevaluate_open": p.reevaluate_open} for p in pubs]}


@router.post("/{version}/replay")
async def replay_pack(version: str, request: Request, rt: Runtime, who: Admin,
                      open_only: bool = False, limit: int = Query(500, ge=1, le=5000)):
    """What this version would change, compared with the pack in force, on the recorded cases:
    the cases whose severity, publicity, targets or milestone deadlines differ, counted and
    listed; and what changes for every case alike (`pack_changes`: the escalation policy,
    global rules)."""
    async with rt.db.reads() as session:
        try:
            row = await packs_store.get(session, version)
            draft = packs_store.parse(row)
        except packs_store.Refused as exc:
            await _refused(request, who, version, exc)
        query = select(EscalationCase.case_id, EscalationCase.facts)
        if open_only:
            query = query.where(EscalationCase.closed_at.is_(None))
        cases = [(cid, CaseFacts.model_validate(f))
                 for cid, f in (await session.execute(query.order_by(EscalationCase.case_id)))]
    current, current_dir = rt.pack, rt.directory
    draft_dir = build_directory(draft, webhook_base=rt.settings.demo_webhook_base)
    # Pure but CPU-bound: off the event loop, so the API keeps answering during a big replay.
    report = await asyncio.to_thread(replay.replay, cases, current, current_dir, draft,
                                     draft_dir, utcnow(), limit)
    async with rt.db.writes() as session, session.begin():
        _audit(session, who, version, "replay")
        for c in report.cases:  # each case listed is a read of its decision, recorded as one
            audit.record(session, who.user_id, who.role, "read", c.case_id,
                         ["severity", "publicity", "targets"])
    return {
        "current_version": report.current_version, "draft_version": report.draft_version,
        "compared": report.compared, "changed": report.changed, "failed": report.failed,
        "pack_changes": report.pack_changes,
        "cases": [{"case_id": c.case_id,
                   "severity": list(c.severity) if c.severity else None,
                   "publicity": list(c.publicity) if c.publicity else None,
                   "targets_added": c.targets_added, "targets_removed": c.targets_removed,
                   "targets_changed": c.targets_changed,
                   "milestones_changed": c.milestones_changed} for c in report.cases],
    }


@router.post("/{version}/approval", response_model=PackOut, responses={403: {}, 409: {}})
async def approve(version: str, request: Request, rt: Runtime, who: Admin):
    try:
        async with rt.db.writes() as session, session.begin():
            row = await packs_store.approve(session, version, who.user_id)
            _audit(session, who, version, "approve")
    except packs_store.Refused as exc:
        await _refused(request, who, version, exc)
    return _out(row, rt)


def _categories_until(rt, effective: datetime) -> set[str]:
    """The categories cases may open in before `effective`: the pack in force's, and those of
    every pack scheduled to come into force before then."""
    codes = set(rt.pack.category_codes)
    for _, pub in rt.watcher.publications.values():
        if utcnow() < pub.effective_at < effective:
            try:
                codes |= parse_pack(pub.text, f"rulepack {pub.version}").category_codes
            except RulePackError:
                pass  # it will not come into force either (pack_watcher)
    return codes


async def _publish(request: Request, rt, who: Principal, version: str, body: Publish,
                   rollback: bool) -> dict:
    now = utcnow()
    effective = body.effective_at or now
    if effective.tzinfo is None:
        await _rejected(request, who, version,
                        invalid((("effective_at",), "give a time zone, e.g. +07:00")))
    if effective < now - MAX_PAST:
        await _rejected(request, who, version,
                        invalid((("effective_at",), "in the past; publish now or later")))
    if effective > now + MAX_AHEAD:
        await _rejected(request, who, version,
                        invalid((("effective_at",), "more than a year ahead")))
    effective = max(effective, now)
    async with rt.db.reads() as session:
        try:
            row = await packs_store.publishable(session, version, rollback)
            pack = packs_store.parse(row)
        except packs_store.Refused as exc:
            await _refused(request, who, version, exc)
        open_cases = (await session.execute(select(EscalationCase.case_id, EscalationCase.facts)
                                            .where(EscalationCase.closed_at.is_(None)))).all()
    # In force, a pack that lacks an open case's category could decide none of its follow-ups:
    # each would be accepted, fail and go to the dead-letter topic. Checked now, so it must
    # come into force now: until a later time, cases could still open in the categories.
    dropped = sorted(_categories_until(rt, effective) - pack.category_codes)
    if dropped and effective > now:
        await _rejected(request, who, version, HTTPException(409, (
            f"{row.version} lacks categories of the pack in force ({', '.join(dropped)}); "
            "cases may open in them until it takes effect, and it could decide none of their "
            "follow-ups. Publish it without effective_at, to take effect now.")))
    stranded = sorted(case_id for case_id, facts in open_cases
                      if not {facts["category"], *facts.get("other_categories", ())}
                      <= pack.category_codes)
    if stranded:
        await _rejected(request, who, version, HTTPException(409, (
            f"{len(stranded)} open case(s) have a category that {row.version} lacks, so it "
            f"could not decide their follow-ups: {', '.join(stranded[:20])}"
            f"{' ...' if len(stranded) > 20 else ''}. Keep those categories in the pack, or "
            "close the cases first.")))
    event = RulePackPublished(version=row.version, sha256=row.sha256, text=row.text,
                              effective_at=effective, published_at=now, published_by=who.user_id,
                              approved_by=row.approved_by, reevaluate_open=body.reevaluate_open)
    envelope = Envelope.wrap(event, "beacon/intake")
    try:
        await asyncio.wait_for(kafka.publish(rt.broker, rt.settings.topic(Topics.RULEPACKS),
                                             envelope), 5)
    except Exception:
        await _rejected(request, who, version, HTTPException(
            503, "the event log is unavailable; nothing was published",
            headers={"Retry-After": "5"}))
    async with rt.db.writes() as session, session.begin():
        session.add(packs_store.RulePackPublication(
            event_id=envelope.id, version=row.version, effective_at=effective,
            published_by=who.user_id, published_at=now, reevaluate_open=body.reevaluate_open,
            rollback=rollback))
        _audit(session, who, version, "rollback" if rollback else "publish")
    return {"version": row.version, "effective_at": effective, "rollback": rollback,
            "reevaluate_open": body.reevaluate_open}


@router.post("/{version}/publication", status_code=202, responses={409: {}, 503: {}})
async def publish(version: str, request: Request, rt: Runtime, who: Admin,
                  body: Publish | None = None):
    """Publish an approved version; every instance takes it up at `effective_at`."""
    return await _publish(request, rt, who, version, body or Publish(), rollback=False)


@router.post("/{version}/rollback", status_code=202, responses={409: {}, 503: {}})
async def rollback(version: str, request: Request, rt: Runtime, who: Admin,
                   body: Publish | None = None):
    """Put an earlier published version (or the configured one) back in force."""
    return await _publish(request, rt, who, version, body or Publish(), rollback=True)
