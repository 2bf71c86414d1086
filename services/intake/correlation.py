"""Duplicate and related reports: a report about an open case joins it instead of opening another."""

from datetime import datetime, timedelta

from sqlalchemy import select
from sqlalchemy.ext.asyncio import AsyncSession

from schemas.reports import Report
from services.intake.store import CaseView, ReportRow

# Reports this far apart in the same commune and category are taken to be about one incident.
MATCH_WINDOW = timedelta(hours=72)


async def match_open_case(session: AsyncSession, report: Report,
                          child_fingerprints: list[str]) -> CaseView | None:
    candidates = (await session.scalars(
        select(CaseView)
        .where(
            CaseView.commune_code == report.location.commune_code,
            CaseView.category == report.category,
            CaseView.status == "open",
            CaseView.last_received_at >= report.received_at - MATCH_WINDOW,
            CaseView.first_received_at <= report.received_at + MATCH_WINDOW,
        )
        .order_by(CaseView.last_received_at.desc())
        .limit(20)
    )).all()
    mine = set(child_fingerprints)
    for case in candidates:
        theirs = set(case.child_fingerprints or ())
        # Where both sides name a child, the names must match; otherwise place, kind and time do.
        if not mine or not theirs or mine & theirs:
            return case
    return None


async def is_independent(session: AsyncSession, case_id: str, reporter_fingerprint: str | None) -> bool:
    """A second call from the same reporter is not a new, independent report."""
    if reporter_fingerprint is None:
        return True
    earlier = await session.scalar(
        select(ReportRow.report_id).where(
            ReportRow.case_id == case_id, ReportRow.reporter_fingerprint == reporter_fingerprint
        ).limit(1)
    )
    return earlier is None


def new_id(prefix: str, at: datetime | None = None) -> str:
    """Time-ordered, unguessable ids: C-... for cases, R-... for reports."""
    import secrets
    import time

    millis = int((at.timestamp() if at else time.time()) * 1000)
    return f"{prefix}-{_b32(millis, 9)}{_b32(secrets.randbits(40), 8)}"


def _b32(n: int, width: int) -> str:
    alphabet = "0123456789ABCDEFGHJKMNPQRSTVWXYZ"
    out = []
    for _ in range(width):
        n, r = divmod(n, 32)
        out.append(alphabet[r])
    return "".join(reversed(out))
