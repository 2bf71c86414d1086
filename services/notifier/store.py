"""The notifier's durable queue: one row per alert, worked until delivered or dead-lettered."""

from datetime import datetime

from sqlalchemy import JSON, Index, Integer, String
from sqlalchemy.orm import Mapped, mapped_column

from services.common.db import Base


class Delivery(Base):
    __tablename__ = "deliveries"
    alert_id: Mapped[str] = mapped_column(String(200), primary_key=True)
    case_id: Mapped[str] = mapped_column(String(40), index=True)
    authority_id: Mapped[str] = mapped_column(String(80))
    severity: Mapped[str] = mapped_column(String(4))
    alert: Mapped[dict] = mapped_column(JSON)  # the AlertRequested payload: codes only
    # pending (due at next_at), sending (leased until next_at), delivered, dead
    status: Mapped[str] = mapped_column(String(16), default="pending")
    contact_index: Mapped[int] = mapped_column(Integer, default=0)
    attempt: Mapped[int] = mapped_column(Integer, default=0)  # attempts on the current contact
    attempts_total: Mapped[int] = mapped_column(Integer, default=0)
    next_at: Mapped[datetime]
    last_error: Mapped[str | None] = mapped_column(String(200))  # or the render fallback note
    # The Idempotency-Key of the bundle it was last leased in: after a crash the same rows go
    # again as the same bundle under the same key.
    bundle: Mapped[str | None] = mapped_column(String(64))
    created_at: Mapped[datetime]
    updated_at: Mapped[datetime]

    __table_args__ = (
        # the claim's order (severity, then due time) within a status: read in index order
        Index("ix_deliveries_claim", "status", "severity", "next_at"),
        # a recipient's pending reminders, bundled into one message
        Index("ix_deliveries_recipient", "authority_id", "status", "created_at"),
    )
