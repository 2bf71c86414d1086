"""Duplicate and related reports: a report about an open case joins it instead of opening another."""

import asyncio
import hashlib
from collections import defaultdict
from collections.abc import Sequence
from contextlib import asynccontextmanager
from datetime import datetime, timedelta

from sqlalchemy import bindparam, or_, select, text
from sqlalchemy.ext.asyncio import AsyncConnection

from schemas.reports import INSTITUTIONAL_SETTINGS, Report
from services.intake.identity import Matching
from services.intake.store import CaseView, ReportRow, WithdrawnInput

# Reports this far apart in the same commune and category are taken to be about one incident.
MATCH_WINDOW = timedelta(hours=72)
# Unnamed children whose ages differ by more than this are taken to be different children.
AGE_GAP = 2


async def match_open_case(reads: AsyncConnection, report: Report, names: Matching,
                          silent: Sequence[str] = ()) -> str | None:
    """The id of the open case this report is about, or None (`names`: the report's, as
    IdentityVault.matching gives them). A case naming the child in full, of an age that agrees,
    comes first; then the latest naming part of its name, with age and setting agreeing; then,
    unless both sides name children, the latest whose ages and setting agree. Cases of a
    `silent` severity (information only) are left out: a new call about one opens a case that
    alerts, rather than join a case that chases nobody."""
    candidates = (await reads.execute(_CANDIDATES, {
        "commune": report.location.commune_code, "category": report.category,
        "earliest": report.received_at - MATCH_WINDOW, "latest": report.received_at + MATCH_WINDOW,
        "silent": list(silent),
    })).all()
    ages, by_part, by_place = report.child_ages, None, None
    sexes = [child.sex for child in report.children]
    for case_id, fingerprints, case_ages, case_settings, case_sexes in candidates:
        theirs = set(fingerprints or ())
        if not _ages_agree(ages, case_ages or ()) or not _sexes_agree(sexes, case_sexes):
            continue  # a 14-year-old is not the 3-year-old of the same name, a boy not a girl
        if names.names & theirs:
            return case_id
        if not _settings_agree(report.setting, case_settings):
            continue
        if names.parts and theirs:  # both sides name children: part of a name must agree
            if by_part is None and names.parts & theirs:
                by_part = case_id
        elif by_place is None:
            by_place = case_id
    return by_part or by_place


def _ages_agree(ages, case_ages) -> bool:
    """Whether some child of the report could be some child of the case, callers' estimates of
    age differing by up to AGE_GAP years. A 12-year-old is not the 5-year-old of an open case:
    folded into it, the new child would get no alert and no emergency clock of its own."""
    if not ages or not case_ages:
        return True
    return any(abs(a - b) <= AGE_GAP for a in ages for b in case_ages)


KNOWN_SEXES = frozenset({"female", "male"})


def _sexes_agree(sexes, case_sexes) -> bool:
    """Whether some child of the report could be some child of the case by sex. An unnamed girl
    of 11 is not the boy of 10 of an open case: folded into it, she got no alert and no clock
    of her own. A child whose sex the caller did not know (or gave as other) could be anyone.
    A case's unknown widens it only while it is all the case knows, as with settings: one call
    that did not know must not open a girl's case to every boy. None: a case from before sexes
    were kept, which any report matches."""
    known = {sex for sex in case_sexes or () if sex in KNOWN_SEXES}
    if not sexes or not known or not set(sexes) <= KNOWN_SEXES:
        return True
    return bool(known & set(sexes))


def _settings_agree(setting: str, case_settings) -> bool:
    """A child at home is not the children of a kindergarten case in the same commune: folded
    into it, the child got no alert and no clock of its own. Callers name one institution
    differently (school, care facility), so those agree. A report's `other` agrees with any
    case; a case's agrees with any only while it is all the case knows (one `other` call must
    not open a kindergarten case to every child)."""
    known = {_place(s) for s in case_settings or () if s != "other"}
    if setting == "other" or not known:
        return True  # not known: a case from before settings were kept (None), or only `other`
    return _place(setting) in known


def _place(setting: str) -> str:
    return "institution" if setting in INSTITUTIONAL_SETTINGS else setting


async def is_independent(reads: AsyncConnection, case_id: str,
                         reporter_fingerprints: list[str]) -> bool:
    """A second call from the same reporter is not a new, independent report."""
    if not reporter_fingerprints:
        return True
    earlier = await reads.scalar(_SAME_REPORTER, {"case": case_id,
                                                  "reporters": reporter_fingerprints})
    return earlier is None


# Built once: every report runs them (docs/performance.md).
_CANDIDATES = (
    select(CaseView.case_id, CaseView.child_fingerprints, CaseView.child_ages, CaseView.settings,
           CaseView.child_sexes)
    .where(
        CaseView.commune_code == bindparam("commune"),
        CaseView.category == bindparam("category"),
        CaseView.status == "open",
        or_(CaseView.severity.is_(None),
            CaseView.severity.not_in(bindparam("silent", expanding=True))),
        CaseView.last_received_at >= bindparam("earliest"),
        CaseView.first_received_at <= bindparam("latest"),
    )
    # Every one in the window, however many: with only the latest 20, a repeat call about a
    # named child in a busy commune opened a second case.
    .order_by(CaseView.last_received_at.desc())
)
_SAME_REPORTER = select(ReportRow.report_id).where(
    ReportRow.case_id == bindparam("case"),
    ReportRow.reporter_fingerprint.in_(bindparam("reporters", expanding=True)),
    ReportRow.event_id.not_in(select(WithdrawnInput.event_id)),  # refused: no earlier report
).limit(1)


class Busy(Exception):  # noqa: N818 (a state, not an error of the caller's)
    """Reports about the same commune and category held the match for the whole wait."""


class MatchLocks:
    """One report at a time may look for, or open, the case of a (commune, category), until
    its case is in the read model: simultaneous calls about one incident then join one case.
    In this process an asyncio lock (at most one per commune and category). On PostgreSQL also
    a transaction-scoped advisory lock, so that intake instances sharing the database take
    turns too; it is released with its transaction whatever becomes of the request. Each held
    advisory lock keeps a connection, so at most SHARED_SLOTS are held at once and the pool
    keeps connections for the work done under them."""

    SHARED_SLOTS = 8

    def __init__(self, db):
        self._db = db
        self._local: defaultdict = defaultdict(asyncio.Lock)
        self._slots = asyncio.Semaphore(self.SHARED_SLOTS)
        self._shared = db.engine.dialect.name == "postgresql"

    @asynccontextmanager
    async def hold(self, commune_code: int, category: str, timeout: float):
        """Busy when it is not this report's turn within `timeout` seconds."""
        until = asyncio.get_running_loop().time() + timeout
        lock = self._local[(commune_code, category)]
        try:
            async with asyncio.timeout_at(until):
                await lock.acquire()
        except TimeoutError:
            raise Busy from None
        try:
            if not self._shared:
                yield
                return
            try:
                async with asyncio.timeout_at(until):
                    await self._slots.acquire()
            except TimeoutError:
                raise Busy from None
            try:
                async with self._db.engine.connect() as conn, conn.begin():
                    try:
                        async with asyncio.timeout_at(until):
                            await conn.execute(_ADVISORY_LOCK,
                                               {"key": _lock_key(commune_code, category)})
                    except TimeoutError:
                        await conn.invalidate()  # its query may still be waiting for the lock
                        raise Busy from None
                    yield
            finally:
                self._slots.release()
        finally:
            lock.release()


_ADVISORY_LOCK = text("SELECT pg_advisory_xact_lock(:key)")


def _lock_key(commune_code: int, category: str) -> int:
    digest = hashlib.blake2b(f"match:{commune_code}:{category}".encode(), digest_size=8).digest()
    return int.from_bytes(digest, "big", signed=True)  # PostgreSQL's bigint


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
