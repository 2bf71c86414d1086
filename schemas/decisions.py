"""The escalation engine's contract: the facts of a case in, a decision out. IDs and codes only."""

from datetime import datetime
from typing import Literal

from pydantic import BaseModel, ConfigDict, Field

from schemas.reports import Location, Publicity, Setting, Severity

Role = Literal["act", "inform"]


class CaseFacts(BaseModel):
    """Everything the engine may know about a case: no names, no narrative, no phone numbers."""

    model_config = ConfigDict(frozen=True)

    case_id: str
    category: str  # the first report's
    other_categories: tuple[str, ...] = ()  # linked reports' others: each can raise and add
    subcategory: str | None = None
    location: Location
    other_locations: tuple[Location, ...] = ()
    setting: Setting  # the first report's
    other_settings: tuple[Setting, ...] = ()  # linked reports' others: each can add authorities
    child_ages: tuple[int, ...]
    indicators: frozenset[str] = frozenset()
    publicity: Publicity = "PA0"  # the highest set by a person (report or update)
    severity_override: Severity | None = None  # a supervisor's, wins until changed...
    # ...or until facts more severe than it come in: the rules give more than they gave when it
    # was made (`override_basis`), or a category or indicator not among those it was made on
    # (`override_judged`) gives more. A judgement of the facts then does not hide a legal
    # emergency reported since.
    override_basis: Severity | None = None
    override_judged: frozenset[str] | None = None
    linked_reports: tuple[datetime, ...] = ()  # receipt times of the case's independent reports
    first_received_at: datetime  # the 12-hour clock starts here (DOMAIN.md section 2)


class Target(BaseModel):
    tier: str
    agency: str
    authority_id: str
    role: Role
    ack_within: str | None = Field(None, description="ISO-8601 duration, e.g. PT15M or P1D")
    working_days: bool = Field(False, description="ack_within counts working days (VN calendar)")
    ack_due: datetime | None = Field(None, description="Absolute deadline, from the decision time")
    rules: list[str] = Field(default_factory=list, description="Rule ids that made this target")


class Decision(BaseModel):
    rulepack_version: str
    severity: Severity
    publicity: Publicity
    targets: list[Target]
    matched_rules: list[str]
