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


class MilestoneRecorded(_Data):
    """An authority recorded a step of the case (DOMAIN.md section 2), e.g. emergency_measure."""

    case_id: str
    milestone: str  # a milestone id of the rule pack, or one of MILESTONES
    authority_id: str
    by_user: str
    at: datetime
    outcome: str | None = None  # a code, given when the case is closed


TransferReason = Literal["wrong_jurisdiction", "wrong_agency", "conflict_of_interest", "other"]


class TransferRequested(_Data):
    """An authority hands its duty on a case to another; the duty moves when the other acknowledges."""

    case_id: str
    from_authority_id: str
    to_authority_id: str
    reason: TransferReason  # a code: events carry no free text
    by_user: str
    at: datetime


# --- escalation -> everyone -----------------------------------------------------------------


class CaseDecided(_Data):
    case_id: str
    decision: Decision
    added: list[Target] = Field(default_factory=list)  # targets new in this decision
    changed: list[Target] = Field(default_factory=list)  # targets whose role or deadline changed
    cause: str  # the input event type that led to it


AlertKind = Literal["alert", "inform", "reminder", "breach", "supervisor", "escalated",
                   "closed"]
AlertCause = Literal["raised", "sooner", "must_act", "again", "reopened", "transferred"]


class Contact(_Data):
    channel: Literal["webhook", "email", "sms"]
    address: str
    demo: bool = False
    lang: Literal["vi", "en"] = "vi"  # the language of messages sent to this contact


class Label(_Data):
    """A rule pack's name for a code, so that messages say what the pack in force says."""

    vi: str
    en: str | None = None


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
    # Set when the alert is about a milestone (a step with a legal deadline, such as the
    # emergency measure), not about acknowledging: its id, the pack's label and its deadline.
    milestone: str | None = None
    milestone_label: str | None = None
    milestone_due: datetime | None = None
    # The pack's English name of the step, null when it gives none. Absent from events written
    # before it was added: the notifier then uses its own name of a shipped step.
    milestone_name: str | None = None
    # A supervisor or escalated alert: the authority that did not acknowledge by `ack_due`
    # (after a transfer, the one it went to), or could not be reached, or missed the milestone.
    about_authority_id: str | None = None
    about_reason: Literal["deadline_missed", "unreachable", "milestone_missed"] | None = None
    # The tier of `about_authority_id` (a tier of the pack, such as commune or district), so that
    # the tier up is told which tier missed ("Cấp xã", not "Cấp dưới"). Null when the directory
    # no longer has that authority; absent from events written before it was added.
    about_tier: str | None = None
    # The pack's names of `tier` and `about_tier` (`vi` as it reads after "cấp": xã). Null when
    # the pack names the tier by its id only, absent from events written before they were
    # added: the notifier then uses its own names of the shipped tiers.
    tier_label: Label | None = None
    about_tier_label: Label | None = None
    # A `breach` alert to the authority whose deadline passed: what escalation did about it, so
    # that its message claims no more. Whether its supervisors were told, and the tier up that
    # was told (null: none), with the pack's names of it. Null in other alerts, absent from
    # events written before they were added: the message then says neither.
    told_supervisors: bool | None = None
    told_tier: str | None = None
    told_tier_label: Label | None = None
    # The pack's names of the category and the agency. Absent from events written before
    # they were added: the notifier then falls back to its own names of the shipped codes.
    category_label: Label | None = None
    agency_label: Label | None = None
    # Where it happened (a code): an officer told of two cases of one category in a commune
    # tells a child at home from a kindergarten's. Absent from events written before it was added.
    setting: Setting | None = None
    # The directory's names of the recipient and of `about_authority_id` (an authority's name,
    # such as "Bảo vệ trẻ em – Phường Ba Đình", never a person's): a province officer told of
    # a silent commune could not tell which commune from its id. Absent from older events.
    authority_name: str | None = None
    about_authority_name: str | None = None
    # Why the authority is alerted (absent from a first alert and from older events): the
    # case got more severe (from `previous_severity`), its deadline came nearer, it must now
    # act where it was informed, the case alerts again after being information only, the case
    # was reopened, or another authority passed the case to it (`from_authority_id`; this may
    # be its first alert). An officer told "new alert" twice could not tell what changed.
    cause: AlertCause | None = None
    previous_severity: Severity | None = None
    from_authority_id: str | None = None
    from_authority_name: str | None = None


class TargetEscalated(_Data):
    case_id: str
    authority_id: str
    step: Literal["reminder", "breach", "supervisor", "escalated"]
    to_authority_id: str | None = None
    fraction: float | None = None
    # A reminder of a milestone's deadline (the 12-hour emergency measure), not of the
    # acknowledgement's: that step's id. Absent from events written before it was added.
    milestone: str | None = None


class AckRecorded(_Data):
    case_id: str
    authority_id: str
    by_user: str
    at: datetime
    case_acknowledged: bool


class MilestoneScheduled(_Data):
    """A legal deadline for a step of the case, counted from the first receipt."""

    case_id: str
    milestone: str
    authority_id: str  # who is held to it
    due_at: datetime


class MilestoneMissed(_Data):
    case_id: str
    milestone: str
    authority_id: str
    due_at: datetime
    to_authority_id: str | None = None  # the next tier up, now held to act


class TargetTransferred(_Data):
    case_id: str
    from_authority_id: str
    to_authority_id: str
    reason: TransferReason
    ack_due: datetime | None = None


class TargetReleased(_Data):
    """A target's duty ended: the authority it transferred the case to acknowledged."""

    case_id: str
    authority_id: str
    to_authority_id: str
    reason: Literal["transferred"] = "transferred"


class CaseReopened(_Data):
    """A closed case took an operator's input after all: a report linked to it, or a follow-up,
    accepted in the instant before intake learnt of the closure. Rather than leave that input
    unenforced, the case is open again: `authority_ids`, the authorities that must act, are to
    acknowledge again, and the milestones not yet done run from `at`."""

    case_id: str
    at: datetime
    cause: str  # the type of the input that reopened it
    authority_ids: list[str]


# --- admin -> every instance (compacted topic, keyed by pack version) -------------------------


class RulePackPublished(_Data):
    """A rule pack to be in force from `effective_at`. The in-force pack is the published one with
    the latest effective_at not in the future; publishing an earlier version again rolls back."""

    version: str
    sha256: str
    text: str  # the YAML, codes and labels only
    effective_at: datetime
    published_at: datetime
    published_by: str
    approved_by: str | None = None
    reevaluate_open: bool = False  # re-decide open cases under this pack when it takes effect


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
    "beacon.milestone.recorded": MilestoneRecorded,
    "beacon.transfer.requested": TransferRequested,
    "beacon.milestone.scheduled": MilestoneScheduled,
    "beacon.milestone.missed": MilestoneMissed,
    "beacon.target.transferred": TargetTransferred,
    "beacon.target.released": TargetReleased,
    "beacon.case.reopened": CaseReopened,
    "beacon.rulepack.published": RulePackPublished,
}
TYPE_OF: dict[type[_Data], str] = {v: k for k, v in EVENT_TYPES.items()}
SCHEMA_VERSION = 2  # v2: delivery outcomes carry role and kind; schemas/compat.py reads v1


def _subject(data: _Data) -> str:
    """The case id; a rule pack, which belongs to no case, is keyed by its version."""
    return data.version if isinstance(data, RulePackPublished) else data.case_id  # type: ignore[attr-defined]


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
            subject=_subject(data),
            dataschema=compat.dataschema(etype, SCHEMA_VERSION),
            data=data.model_dump(mode="json"),
        )

    def payload(self) -> _Data:
        """The typed payload at the current version (a previous-version one is upgraded); raises
        KeyError for an unknown type, ValueError for another version, ValidationError for bad data.

        A field this release does not know is dropped, not refused: a newer producer may add an
        optional one without a new version (docs/events.md), and during a rolling upgrade an
        older consumer dead-lettered every alert that carried one. Producers still cannot
        write an unknown field (`extra="forbid"`): an identity field is refused where it is made."""
        model = EVENT_TYPES[self.type]
        data = compat.upgrade(self.type, self.dataschema, self.data, SCHEMA_VERSION)
        if isinstance(data, dict):
            known = model.model_fields  # a class property: read once, not per field
            data = {k: v for k, v in data.items() if k in known}
        return model.model_validate(data)
