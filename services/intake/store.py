"""Intake's tables: reports (identity sealed), severity overrides (reason sealed), idempotency
keys, and the case read model."""

from datetime import datetime

from sqlalchemy import JSON, Boolean, ForeignKey, Index, Integer, LargeBinary, String, UniqueConstraint
from sqlalchemy.orm import Mapped, mapped_column

from services.common.db import Base


class ReportRow(Base):
    __tablename__ = "reports"
    report_id: Mapped[str] = mapped_column(String(40), primary_key=True)
    case_id: Mapped[str] = mapped_column(String(40), index=True)
    event_id: Mapped[str] = mapped_column(String(64), unique=True)
    event: Mapped[str] = mapped_column(String)  # the intake event as published (codes only)
    published: Mapped[bool] = mapped_column(Boolean, default=False, index=True)
    received_at: Mapped[datetime]
    submitted_by: Mapped[str] = mapped_column(String(64))
    # Fernet-encrypted names and narrative; None once erased by retention (services/retention.py)
    identity: Mapped[bytes | None] = mapped_column(LargeBinary)
    reporter_fingerprint: Mapped[str | None] = mapped_column(String(64))
    child_fingerprints: Mapped[list] = mapped_column(JSON, default=list)
    # Its children's sexes, for duplicate matching (never on Kafka); None once erased, and for
    # a report from before they were kept.
    child_sexes: Mapped[list | None] = mapped_column(JSON)
    created_at: Mapped[datetime]


class SeverityOverrideRow(Base):
    """A supervisor's severity override. Its event carries the severity only: the reason is free
    text that may name people, so it stays here, sealed like a report's identity."""

    __tablename__ = "severity_overrides"
    update_id: Mapped[str] = mapped_column(String(40), primary_key=True)
    case_id: Mapped[str] = mapped_column(String(40), index=True)
    event_id: Mapped[str] = mapped_column(String(64), unique=True)
    event: Mapped[str] = mapped_column(String)  # the CaseUpdated event as published (codes only)
    published: Mapped[bool] = mapped_column(Boolean, default=False, index=True)
    severity: Mapped[str] = mapped_column(String(4))
    # Fernet-encrypted; None once erased by retention (services/retention.py)
    reason: Mapped[bytes | None] = mapped_column(LargeBinary)
    by_user: Mapped[str] = mapped_column(String(64))
    created_at: Mapped[datetime]


class WithdrawnInput(Base):
    """An input refused with 503 after its publish failed. The broker may have taken its event
    all the same (its acknowledgement lost), so its rows stay, unpublished, until the event
    turns up on Kafka (the input is adopted: accepted after all) or the retention purge removes
    them (services/intake/submission.py)."""

    __tablename__ = "withdrawn_inputs"
    event_id: Mapped[str] = mapped_column(String(64), primary_key=True)
    case_id: Mapped[str] = mapped_column(String(40))
    user_id: Mapped[str] = mapped_column(String(64))
    role: Mapped[str] = mapped_column(String(16))
    key: Mapped[str | None] = mapped_column(String(200))  # its Idempotency-Key, if any
    withdrawn_at: Mapped[datetime] = mapped_column(index=True)


class IdempotencyKey(Base):
    __tablename__ = "idempotency_keys"
    user_id: Mapped[str] = mapped_column(String(64), primary_key=True)
    key: Mapped[str] = mapped_column(String(200), primary_key=True)
    body_hash: Mapped[str] = mapped_column(String(64))
    response: Mapped[dict] = mapped_column(JSON)
    # A follow-up's event until it is on Kafka (a report's is on its ReportRow, an override's on
    # its SeverityOverrideRow): what a retry or the start-up sweep publishes again if the request
    # died half-way. Codes only, no identity.
    event: Mapped[str | None] = mapped_column(String)
    created_at: Mapped[datetime]


class CaseView(Base):
    """A case as the API shows it, built from the case events (IDs and codes only)."""

    __tablename__ = "cases"
    case_id: Mapped[str] = mapped_column(String(40), primary_key=True)
    category: Mapped[str] = mapped_column(String(64), index=True)
    province_code: Mapped[int] = mapped_column(Integer, index=True)
    commune_code: Mapped[int] = mapped_column(Integer, index=True)
    setting: Mapped[str] = mapped_column(String(32))
    status: Mapped[str] = mapped_column(String(16), default="open", index=True)
    first_received_at: Mapped[datetime]
    last_received_at: Mapped[datetime]
    report_count: Mapped[int] = mapped_column(Integer, default=0)
    independent_reports: Mapped[int] = mapped_column(Integer, default=0)
    severity: Mapped[str | None] = mapped_column(String(4), index=True)
    publicity: Mapped[str | None] = mapped_column(String(4))
    rulepack_version: Mapped[str | None] = mapped_column(String(64))
    acknowledged: Mapped[bool] = mapped_column(Boolean, default=False)
    targets: Mapped[list] = mapped_column(JSON, default=list)
    child_fingerprints: Mapped[list] = mapped_column(JSON, default=list)
    # The ages its reports gave (duplicate matching); None for a case from before they were kept.
    child_ages: Mapped[list | None] = mapped_column(JSON, default=list)
    # The settings its reports gave (duplicate matching); None for a case from before they were.
    settings: Mapped[list | None] = mapped_column(JSON, default=list)
    # The children's sexes its reports gave (duplicate matching); None: not known.
    child_sexes: Mapped[list | None] = mapped_column(JSON)
    updated_at: Mapped[datetime]

    __table_args__ = (Index("ix_cases_match", "commune_code", "category", "status"),)


def in_scope(who) -> list:
    """`Principal.covers` as SQL conditions on the cases table: none for national scope."""
    kind, _, code = who.scope.partition(":")
    if kind == "province":
        return [CaseView.province_code == int(code)]
    if kind == "commune":
        return [CaseView.commune_code == int(code)]
    return []


class CaseAuthority(Base):
    """Which authorities a case was routed to: an authority user sees only these cases. Also
    whether each still owes its acknowledgement, and by when, so that the case list can ask
    "awaiting mine" and "overdue" in SQL (the targets' JSON reads differently on each database)."""

    __tablename__ = "case_authorities"
    case_id: Mapped[str] = mapped_column(ForeignKey("cases.case_id"), primary_key=True)
    authority_id: Mapped[str] = mapped_column(String(80), primary_key=True, index=True)
    awaiting: Mapped[bool] = mapped_column(Boolean, default=False)
    ack_due: Mapped[datetime | None] = mapped_column(index=True)


class CaseCategory(Base):
    """Every category a case's reports gave: a case opened as neglect that took a linked report
    of sexual abuse is found by `?category=SEX_ABUSE` (cases.category is the first report's)."""

    __tablename__ = "case_categories"
    case_id: Mapped[str] = mapped_column(String(40), primary_key=True)
    category: Mapped[str] = mapped_column(String(64), primary_key=True, index=True)


class TimelineEntry(Base):
    __tablename__ = "timeline"
    id: Mapped[int] = mapped_column(Integer, primary_key=True, autoincrement=True)
    case_id: Mapped[str] = mapped_column(String(40), index=True)
    at: Mapped[datetime]
    kind: Mapped[str] = mapped_column(String(40))
    detail: Mapped[dict] = mapped_column(JSON, default=dict)
    event_id: Mapped[str] = mapped_column(String(64))

    __table_args__ = (UniqueConstraint("event_id", "kind", name="uq_timeline_event_kind"),)


class ParkedEvent(Base):
    """A case event that reached the read model before the report that opens its case: the
    consumer reads the topics together, with no order between them. Kept here, already claimed,
    until the report arrives; then applied in the order it came (services/intake/readmodel.py)."""

    __tablename__ = "readmodel_parked"
    id: Mapped[int] = mapped_column(Integer, primary_key=True, autoincrement=True)
    case_id: Mapped[str] = mapped_column(String(40), index=True)
    envelope: Mapped[str] = mapped_column(String)  # its JSON: codes only, as on Kafka
    parked_at: Mapped[datetime]
