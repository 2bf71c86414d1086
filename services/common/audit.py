"""Append-only audit trail: who did what to which record, when. IDs and field names, never values."""

from datetime import datetime

from sqlalchemy import JSON, Integer, String
from sqlalchemy.ext.asyncio import AsyncSession
from sqlalchemy.orm import Mapped, mapped_column

from services.common.db import Base, utcnow


class AuditRecord(Base):
    __tablename__ = "audit_log"
    id: Mapped[int] = mapped_column(Integer, primary_key=True, autoincrement=True)
    at: Mapped[datetime] = mapped_column(index=True)
    user_id: Mapped[str] = mapped_column(String(64), index=True)
    role: Mapped[str] = mapped_column(String(16))
    action: Mapped[str] = mapped_column(String(32))  # read, write, export, rule_change, denied
    record: Mapped[str] = mapped_column(String(64), index=True)  # a case id, pack version, user id
    fields: Mapped[list] = mapped_column(JSON, default=list)
    outcome: Mapped[str] = mapped_column(String(16), default="ok")


def record(session: AsyncSession, user_id: str, role: str, action: str, record_id: str,
           fields: list[str] | None = None, outcome: str = "ok") -> None:
    session.add(AuditRecord(
        at=utcnow(), user_id=user_id, role=role, action=action, record=record_id,
        fields=sorted(fields or []), outcome=outcome,
    ))
