"""Rule-pack versions and their publications: draft -> approved (by a second admin) -> published.

A version is immutable once uploaded (its YAML and hash). Publishing writes a row here (the history
an auditor reads) and a RulePackPublished record to the compacted rule-pack topic, which every
instance reads (services/escalation/pack_watcher.py). Rolling back publishes an earlier version.
"""

import hashlib
from datetime import datetime

from sqlalchemy import Boolean, Integer, String, Text, select
from sqlalchemy.ext.asyncio import AsyncSession
from sqlalchemy.orm import Mapped, mapped_column

from schemas.rulepack import RulePack
from services.common.db import Base, utcnow
from services.escalation.rulepack import RulePackError, parse_pack

DRAFT, APPROVED, BUILTIN = "draft", "approved", "builtin"


class RulePackVersion(Base):
    __tablename__ = "rulepacks"
    version: Mapped[str] = mapped_column(String(64), primary_key=True)
    text: Mapped[str] = mapped_column(Text)
    sha256: Mapped[str] = mapped_column(String(64))
    state: Mapped[str] = mapped_column(String(16))  # draft, approved, builtin (the configured one)
    uploaded_by: Mapped[str] = mapped_column(String(64))
    uploaded_at: Mapped[datetime]
    approved_by: Mapped[str | None] = mapped_column(String(64))
    approved_at: Mapped[datetime | None]


class RulePackPublication(Base):
    __tablename__ = "rulepack_publications"
    id: Mapped[int] = mapped_column(Integer, primary_key=True, autoincrement=True)
    event_id: Mapped[str] = mapped_column(String(64), unique=True)
    version: Mapped[str] = mapped_column(String(64), index=True)
    effective_at: Mapped[datetime]
    published_by: Mapped[str] = mapped_column(String(64))
    published_at: Mapped[datetime]
    reevaluate_open: Mapped[bool] = mapped_column(Boolean, default=False)
    rollback: Mapped[bool] = mapped_column(Boolean, default=False)


class Refused(Exception):
    """A lifecycle step that is not allowed; `status` is the HTTP answer."""

    def __init__(self, status: int, message: str):
        super().__init__(message)
        self.status = status


def sha256(text: str) -> str:
    return hashlib.sha256(text.encode()).hexdigest()


async def upload(session: AsyncSession, text: str, user_id: str) -> RulePackVersion:
    """Store a valid pack as a draft. RulePackError lists every problem; Refused(409) when the
    version exists with other content (a version names one pack, forever)."""
    pack = parse_pack(text, "upload")
    row = await session.get(RulePackVersion, pack.version)
    if row is not None:
        if row.sha256 != sha256(text):
            raise Refused(409, f"version {pack.version} exists with other content: "
                               "give the pack a new version")
        return row
    row = RulePackVersion(version=pack.version, text=text, sha256=sha256(text), state=DRAFT,
                          uploaded_by=user_id, uploaded_at=utcnow())
    session.add(row)
    return row


async def approve(session: AsyncSession, version: str, user_id: str) -> RulePackVersion:
    row = await get(session, version)
    if row.state != DRAFT:
        raise Refused(409, f"version {version} is {row.state}, not a draft")
    if row.uploaded_by == user_id:  # two-person rule
        raise Refused(403, "the admin who uploaded a pack cannot approve it")
    row.state, row.approved_by, row.approved_at = APPROVED, user_id, utcnow()
    return row


async def get(session: AsyncSession, version: str) -> RulePackVersion:
    row = await session.get(RulePackVersion, version)
    if row is None:
        raise Refused(404, f"no rule pack version {version}")
    return row


async def publishable(session: AsyncSession, version: str, rollback: bool) -> RulePackVersion:
    row = await get(session, version)
    if row.state == DRAFT:
        raise Refused(409, f"version {version} is not approved yet (two-person rule)")
    if rollback:
        earlier = await session.scalar(select(RulePackPublication.id).where(
            RulePackPublication.version == version).limit(1))
        if earlier is None and row.state != BUILTIN:
            raise Refused(409, f"version {version} was never published: publish it instead")
    return row


async def register_builtin(session: AsyncSession, pack: RulePack, text: str) -> None:
    """The pack a process was started with is an earlier version one can roll back to. One
    version is one text: a file changed without a new `version` would decide under rules that
    the version's record (what replay, rollback and the admin API serve) does not hold."""
    row = await session.get(RulePackVersion, pack.version)
    if row is None:
        session.add(RulePackVersion(version=pack.version, text=text, sha256=sha256(text),
                                    state=BUILTIN, uploaded_by="system", uploaded_at=utcnow()))
    elif row.sha256 != sha256(text):
        raise Refused(409, f"rule pack version {pack.version} is stored already with other "
                           f"content (sha256 {row.sha256[:12]}, this file {sha256(text)[:12]}): "
                           "give the changed pack a new `version`")


def parse(row: RulePackVersion) -> RulePack:
    try:
        return parse_pack(row.text, f"rulepack {row.version}")
    except RulePackError:  # stored packs were valid when uploaded; the model may have changed
        raise Refused(409, f"version {row.version} no longer validates") from None
