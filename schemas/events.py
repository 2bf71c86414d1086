"""Event contracts: a CloudEvents 1.0 envelope around versioned, PII-free payloads.

Every case event is keyed by case id so that one case's events stay in order on one partition.
Only the intake event is written by intake; it too carries codes only: identity stays in intake's
database (docs/events.md says why).
"""

from datetime import UTC, datetime
from typing import Any, Literal
from uuid import uuid4

from pydantic import BaseModel, ConfigDict, Field

from schemas import compat
from schemas.decisions import Decision, Target
from schemas.reports import Location, Publicity, Setting, Severity


class Topics:
    INPUTS = "beacon.inputs"  # human inputs accepted by intake
    CASES = "beacon.cases"  # decisions and case state changes, written by escalation
    ALERTS = "beacon.alerts"  # messages escalation asks the notifier to deliver
    DELIVERIES = "beacon.deliveries"  # delivery outcomes, written by the notifier
    RULEPACKS = "beacon.rulepacks"  # the active rule pack (compacted)
    DEADLETTER = "beacon.deadletter"  # what could not be parsed or processed, reason in headers

    ALL = (INPUTS, CASES, ALERTS, DELIVERIES, RULEPACKS, DEADLETTER)


class _Data(BaseModel):
    model_config = ConfigDict(extra="forbid")


# --- intake -> escalation -------------------------------------------------------------------


class ReportReceived(_Data):
    """A report accepted by intake, as codes. Identity never leaves intake's database."""

    case_id: str
    report_id: str
    new_case: bool
    received_at: datetime
    channel: str
    category: str
    subcategory: str | None = None
    location: Location
    other_locations: list[Location] = Field(default_factory=list)
    setting: Setting
    child_ages: list[int]
    indicators: list[str] = Field(default_factory=list)
    publicity: Publicity = "PA0"
    independent: bool = True  # False when an operator linked a repeat call from the same reporter


class CaseUpdated(_Data):
    case_id: str
    update_id: str
    by_role: str
    indicators: list[str] = Field(default_factory=list)
    publicity: Publicity | None = None
    severity_override: Severity | None = None
    override_reason_given: bool = False


class TargetAcknowledged(_Data):
    case_id: str
    authority_id: str
    by_user: str
    at: datetime


# --- escalation -> everyone -----------------------------------------------------------------


class CaseDecided(_Data):
    case_id: str
    decision: Decision
    added: list[Target] = Field(default_factory=list)  # targets new in this decision
    changed: list[Target] = Field(default_factory=list)  # targets whose role or deadline changed
    cause: str  # the input event type that led to it


AlertKind = Literal["alert", "inform", "reminder", "breach", "supervisor", "escalated"]


class Contact(_Data):
    channel: Literal["webhook", "email", "sms"]
    address: str
    demo: bool = False


class AlertRequested(_Data):
    """Escalation asks the notifier to tell one authority something about a case."""

    alert_id: str  # stable: the notifier's idempotency key
    case_id: str
    authority_id: str
    tier: str
    agency: str
    role: Literal["act", "inform"]
    kind: AlertKind
    category: str
    severity: Severity
    publicity: Publicity
    ack_due: datetime | None = None
    contacts: list[Contact]
    rulepack_version: str


class TargetEscalated(_Data):
    case_id: str
    authority_id: str
    step: Literal["reminder", "breach", "supervisor", "escalated"]
    to_authority_id: str | None = None
    fraction: float | None = None


class AckRecorded(_Data):
    case_id: str
    authority_id: str
    by_user: str
    at: datetime
    case_acknowledged: bool


# --- notifier -> everyone -------------------------------------------------------------------

DeliveryStatus = Literal["attempted", "delivered", "failed", "dead_lettered"]


class DeliveryOutcome(_Data):
    alert_id: str
    case_id: str
    authority_id: str
    role: Literal["act", "inform"]
    kind: AlertKind
    status: DeliveryStatus
    channel: str
    attempt: int
    error: str | None = None  # a class of error, never message content


EVENT_TYPES: dict[str, type[_Data]] = {
    "beacon.report.received": ReportReceived,
    "beacon.case.updated": CaseUpdated,
    "beacon.target.acknowledged": TargetAcknowledged,
    "beacon.case.decided": CaseDecided,
    "beacon.alert.requested": AlertRequested,
    "beacon.target.escalated": TargetEscalated,
    "beacon.ack.recorded": AckRecorded,
    "beacon.delivery.outcome": DeliveryOutcome,
}
TYPE_OF: dict[type[_Data], str] = {v: k for k, v in EVENT_TYPES.items()}
SCHEMA_VERSION = 2  # v2: delivery outcomes carry role and kind; schemas/compat.py reads v1


class Envelope(BaseModel):
    """CloudEvents 1.0 structured-mode envelope."""

    model_config = ConfigDict(extra="allow")

    specversion: Literal["1.0"] = "1.0"
    id: str = Field(default_factory=lambda: uuid4().hex)
    source: str
    type: str
    time: datetime = Field(default_factory=lambda: datetime.now(UTC))
    subject: str  # the case id
    datacontenttype: Literal["application/json"] = "application/json"
    dataschema: str
    data: dict[str, Any]

    @classmethod
    def wrap(cls, data: _Data, source: str, event_id: str | None = None) -> "Envelope":
        etype = TYPE_OF[type(data)]
        return cls(
            id=event_id or uuid4().hex,
            source=source,
            type=etype,
            subject=data.case_id,  # type: ignore[attr-defined]
            dataschema=compat.dataschema(etype, SCHEMA_VERSION),
            data=data.model_dump(mode="json"),
        )

    def payload(self) -> _Data:
        """The typed payload at the current version (a previous-version one is upgraded); raises
        KeyError for an unknown type, ValueError for another version, ValidationError for bad data."""
        model = EVENT_TYPES[self.type]
        return model.model_validate(compat.upgrade(self.type, self.dataschema, self.data,
                                                   SCHEMA_VERSION))
