"""A data subject's requests (PDP Law 91/2025): find the reports that name a person, by the keyed
hashes intake matches on (nothing is opened), and erase one report's identity, as retention
erases a closed case's. Identity never travels on Kafka, so an erasure publishes nothing: the
case, its events and its timeline hold codes only and stay (docs/privacy.md)."""

from dataclasses import dataclass
from datetime import datetime
from typing import Literal

from sqlalchemy import String, cast, or_, select

from services.common import audit
from services.common.auth import Principal
from services.intake.identity import IdentityVault
from services.intake.store import CaseView, ReportRow, WithdrawnInput, in_scope
from services.retention import ERASED

FOUND_AT_MOST = 100
# Why an erasure was asked, as codes: free text could name the child.
Reason = Literal["subject_request", "entered_in_error", "court_order"]

_REPORTS, _CASES = ReportRow.__table__, CaseView.__table__
# A report refused with 503 is not one of its case's (services/intake/submission.py).
_OF_A_CASE = _REPORTS.c.event_id.not_in(select(WithdrawnInput.event_id))


@dataclass
class Found:
    report_id: str
    case_id: str
    received_at: datetime
    matched: list[str]  # "child_name", "reporter_phone"


async def find(db, vault: IdentityVault, who: Principal, reporter_phone: str | None,
               child_name: str | None) -> tuple[list[Found], bool]:
    """The reports of cases in the caller's scope whose reporter's phone or one of whose
    children's whole name has these hashes, newest first, at most FOUND_AT_MOST; and whether
    more match."""
    phones = set(vault.phone_hashes(reporter_phone)) if reporter_phone else set()
    names = set(vault.name_hashes(child_name)) if child_name else set()
    wanted = [_REPORTS.c.reporter_fingerprint.in_(sorted(phones))] if phones else []
    # The child hashes are a JSON list: looked for in its text, where each (hex) is quoted, on
    # SQLite and PostgreSQL alike. A scan, but of one rare, supervised request.
    wanted += [cast(_REPORTS.c.child_fingerprints, String).like(f'%"{h}"%') for h in sorted(names)]
    if not wanted:
        return [], False
    async with db.reads() as session:
        rows = (await session.execute(
            select(_REPORTS.c.report_id, _REPORTS.c.case_id, _REPORTS.c.received_at,
                   _REPORTS.c.reporter_fingerprint, _REPORTS.c.child_fingerprints)
            .join(_CASES, _CASES.c.case_id == _REPORTS.c.case_id)
            .where(or_(*wanted), _OF_A_CASE, *in_scope(who))
            .order_by(_REPORTS.c.received_at.desc(), _REPORTS.c.report_id.desc())
            .limit(FOUND_AT_MOST + 1))).all()
    found = []
    for row in rows[:FOUND_AT_MOST]:
        hits = (("child_name", names & set(row.child_fingerprints or ())),
                ("reporter_phone", row.reporter_fingerprint in phones))
        found.append(Found(row.report_id, row.case_id, row.received_at,
                           [key for key, hit in hits if hit]))
    return found, len(rows) > FOUND_AT_MOST


async def case_of(db, report_id: str) -> str | None:
    """The case a report is one of (None: no such report, or one refused with 503)."""
    async with db.reads() as session:
        return await session.scalar(select(_REPORTS.c.case_id).where(
            _REPORTS.c.report_id == report_id, _OF_A_CASE))


async def erase(db, who: Principal, case_id: str, report_id: str, reason: Reason) -> bool:
    """Erase a report's identity, its hashes and its children's sexes, and make its case's
    child hashes and sexes again from its other reports, so that the erased child's name no
    longer joins a new report to the case. Audited in the same transaction, with the reason
    code and the report id. False when there was nothing left to erase (asked before, or
    erased by retention): the attempt is recorded all the same."""
    async with db.writes() as session, session.begin():
        # The case row first, as the read model and the retention purge lock it (PostgreSQL):
        # a report joining the case meanwhile adds its hashes after these are made, not under
        # them, and a purge of the case waits (or is waited for) instead of deadlocking.
        await session.execute(select(_CASES.c.case_id).where(_CASES.c.case_id == case_id)
                              .with_for_update())
        held = (await session.execute(
            select(_REPORTS.c.identity, _REPORTS.c.reporter_fingerprint,
                   _REPORTS.c.child_fingerprints, _REPORTS.c.child_sexes)
            .where(_REPORTS.c.report_id == report_id))).one()
        erased = any(value not in (None, []) for value in held)
        await session.execute(
            _REPORTS.update().where(_REPORTS.c.report_id == report_id)
            # Sexes [], not None: None is "not kept", which widens the case to any sex once
            # another report is erased or the read model is rebuilt.
            .values(identity=None, reporter_fingerprint=None, child_fingerprints=[],
                    child_sexes=[]))
        others = (await session.execute(
            select(_REPORTS.c.child_fingerprints, _REPORTS.c.child_sexes)
            .where(_REPORTS.c.case_id == case_id, _REPORTS.c.report_id != report_id,
                   _OF_A_CASE))).all()
        sexes = [row.child_sexes for row in others]
        await session.execute(_CASES.update().where(_CASES.c.case_id == case_id).values(
            child_fingerprints=sorted({h for row in others for h in row.child_fingerprints or ()}),
            # As the read model keeps them: one report that did not keep them makes them unknown.
            child_sexes=None if None in sexes else sorted({s for given in sexes for s in given})))
        audit.record(session, who.user_id, who.role, "erase", case_id,
                     [*(ERASED if erased else []), f"reason:{reason}", f"report:{report_id}"],
                     outcome="ok" if erased else "already_erased")
    return erased
