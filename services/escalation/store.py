"""Escalation's state: per case, its facts and targets; timers as rows with a due time."""

from datetime import datetime

from sqlalchemy import JSON, Boolean, Float, Index, Integer, String
from sqlalchemy.orm import Mapped, mapped_column

from services.common.db import Base


class EscalationCase(Base):
    __tablename__ = "esc_cases"
    case_id: Mapped[str] = mapped_column(String(40), primary_key=True)
    facts: Mapped[dict] = mapped_column(JSON)  # schemas.decisions.CaseFacts, as JSON
    human_publicity: Mapped[str] = mapped_column(String(4), default="PA0")
    severity: Mapped[str] = mapped_column(String(4))
    publicity: Mapped[str] = mapped_column(String(4))
    rulepack_version: Mapped[str] = mapped_column(String(64))
    decisions: Mapped[int] = mapped_column(Integer, default=0)
    updated_at: Mapped[datetime]
    closed_at: Mapped[datetime | None]  # closed with an outcome: no more timers, no re-evaluation
    outcome: Mapped[str | None] = mapped_column(String(32))


class EscalationTarget(Base):
    __tablename__ = "esc_targets"
    case_id: Mapped[str] = mapped_column(String(40), primary_key=True)
    authority_id: Mapped[str] = mapped_column(String(80), primary_key=True)
    tier: Mapped[str] = mapped_column(String(32))
    agency: Mapped[str] = mapped_column(String(32))
    role: Mapped[str] = mapped_column(String(8))
    ack_within: Mapped[str | None] = mapped_column(String(32))
    working_days: Mapped[bool] = mapped_column(Boolean, default=False)
    added_at: Mapped[datetime]
    ack_due: Mapped[datetime | None]
    acked_at: Mapped[datetime | None]
    acked_by: Mapped[str | None] = mapped_column(String(64))
    origin: Mapped[str] = mapped_column(String(16), default="decision")  # escalated, transfer
    transferred_to: Mapped[str | None] = mapped_column(String(80))  # a transfer is pending or done
    released_at: Mapped[datetime | None]  # its duty ended: the new authority acknowledged


class Timer(Base):
    __tablename__ = "esc_timers"
    id: Mapped[int] = mapped_column(Integer, primary_key=True, autoincrement=True)
    case_id: Mapped[str] = mapped_column(String(40))
    authority_id: Mapped[str] = mapped_column(String(80))
    kind: Mapped[str] = mapped_column(String(16))  # reminder, breach
    fraction: Mapped[float | None] = mapped_column(Float)
    due_at: Mapped[datetime]
    fired_at: Mapped[datetime | None]
    # fired, overtaken, escalated, acknowledged, transferred, rescheduled, closed,
    # information_only, not_in_directory
    outcome: Mapped[str | None] = mapped_column(String(16))
    attempts: Mapped[int] = mapped_column(Integer, default=0, server_default="0")  # failed fires

    __table_args__ = (Index("ix_esc_timers_due", "fired_at", "due_at"),
                      Index("ix_esc_timers_target", "case_id", "authority_id"))


class EscalationMilestone(Base):
    """A step of the case with a legal deadline (or none), and when it was done."""

    __tablename__ = "esc_milestones"
    case_id: Mapped[str] = mapped_column(String(40), primary_key=True)
    milestone: Mapped[str] = mapped_column(String(64), primary_key=True)
    authority_id: Mapped[str | None] = mapped_column(String(80))  # who is held to it
    due_at: Mapped[datetime | None]
    # When a later input brought it (the report of a danger, days after the first): it counts
    # from then, as a later decision counts it again. None: from the case's first receipt.
    counted_from: Mapped[datetime | None]
    scheduled_at: Mapped[datetime | None]
    done_at: Mapped[datetime | None]
    done_by: Mapped[str | None] = mapped_column(String(64))
    done_authority_id: Mapped[str | None] = mapped_column(String(80))
    outcome: Mapped[str | None] = mapped_column(String(32))
    missed_at: Mapped[datetime | None]


class MilestoneTimer(Base):
    """A milestone's reminders and deadline. Apart from acknowledgement timers: an
    acknowledgement never stops them, and they fall due hours or days later."""

    __tablename__ = "esc_milestone_timers"
    id: Mapped[int] = mapped_column(Integer, primary_key=True, autoincrement=True)
    case_id: Mapped[str] = mapped_column(String(40))
    milestone: Mapped[str] = mapped_column(String(64))
    authority_id: Mapped[str] = mapped_column(String(80))  # who is held to it
    fraction: Mapped[float] = mapped_column(Float)  # < 1: a reminder; 1.0: the deadline
    due_at: Mapped[datetime]
    fired_at: Mapped[datetime | None]
    # fired, done, rescheduled, closed, information_only, not_in_directory
    outcome: Mapped[str | None] = mapped_column(String(16))
    attempts: Mapped[int] = mapped_column(Integer, default=0, server_default="0")  # failed fires

    __table_args__ = (Index("ix_esc_milestone_timers_due", "fired_at", "due_at"),
                      Index("ix_esc_milestone_timers_case", "case_id", "milestone"))

