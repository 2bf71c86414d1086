"""A data subject's requests (PDP Law 91/2025): find the reports that name a person, by the keyed
hashes intake matches on (nothing is opened), and erase one report's identity, as retention
erases a closed case's. Identity never travels on Kafka, so an erasure publishes nothing: the
case, its events and its timeline hold codes only and stay (docs/privacy.md)."""

from dataclasses import dataclass
from datetime import datetime

from sqlalchemy import String, cast, or_, select

from services.common.auth import Principal
from services.intake.identity import IdentityVault
from services.intake.store import CaseView, ReportRow, WithdrawnInput

FOUND_AT_MOST = 100

_REPORTS, _CASES = ReportRow.__table__, CaseView.__table__
# A report refused with 503 is not one of its case's (services/intake/submission.py).
_OF_A_CASE = _REPORTS.c.event_id.not_in(select(WithdrawnInput.event_id))


@dataclass
class Found:
    report_id: str
    case_id: str
    received_at: datetime
    matched: list[str]  # "child_name", "reporter_phone"


def in_scope(who: Principal) -> list:
    """`Principal.covers` as SQL on the cases table."""
    kind, _, code = who.scope.partition(":")
    if kind == "province":
        return [_CASES.c.province_code == int(code)]
    if kind == "commune":
        return [_CASES.c.commune_code == int(code)]
    return []


async def find(db, vault: IdentityVault, who: Principal, reporter_phone: str | None,
               child_name: str | None) -> list[Found]:
    """The reports of cases in the caller's scope whose reporter's phone or one of whose
    children's whole name has these hashes, newest first, at most FOUND_AT_MOST."""
    phones = set(vault.phone_hashes(reporter_phone)) if reporter_phone else set()
    names = set(vault.name_hashes(child_name)) if child_name else set()
    wanted = [_REPORTS.c.reporter_fingerprint.in_(sorted(phones))] if phones else []
    # The child hashes are a JSON list: looked for in its text, where each (hex) is quoted, on
    # SQLite and PostgreSQL alike. A scan, but of one rare, supervised request.
    wanted += [cast(_REPORTS.c.child_fingerprints, String).like(f'%"{h}"%') for h in sorted(names)]
    if not wanted:
        return []
    async with db.reads() as session:
        rows = (await session.execute(
            select(_REPORTS.c.report_id, _REPORTS.c.case_id, _REPORTS.c.received_at,
                   _REPORTS.c.reporter_fingerprint, _REPORTS.c.child_fingerprints)
            .join(_CASES, _CASES.c.case_id == _REPORTS.c.case_id)
            .where(or_(*wanted), _OF_A_CASE, *in_scope(who))
            .order_by(_REPORTS.c.received_at.desc(), _REPORTS.c.report_id.desc())
            .limit(FOUND_AT_MOST))).all()
    found = []
    for row in rows:
        hits = (("child_name", names & set(row.child_fingerprints or ())),
                ("reporter_phone", row.reporter_fingerprint in phones))
        found.append(Found(row.report_id, row.case_id, row.received_at,
                           [key for key, hit in hits if hit]))
    return found

