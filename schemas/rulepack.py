"""The rule pack: severity, publicity, routing and escalation rules as data (DOMAIN.md sections 3-5).

A pack is YAML that validates against `RulePack`. Conditions are declarative (lists of codes and
a few typed tests), never code. Cross-references (unknown agency, tier, indicator...) are checked by
services/escalation/rulepack.py, which also reports every problem with its file line.
"""

import itertools
import re
from datetime import date, time, timedelta
from functools import cached_property
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field, PrivateAttr, field_validator, model_validator

from schemas.reports import Publicity, Setting, Severity

SEVERITIES: tuple[Severity, ...] = ("P1", "P2", "P3", "P4", "P5")  # highest first
PUBLICITIES: tuple[Publicity, ...] = ("PA0", "PA1", "PA2")  # lowest first

# Days, hours, minutes, seconds only: years and months have no fixed length.
_CLOCK = re.compile(r"^P(?!$)(?:(\d+)W)?(?:(\d+)D)?(?:T(?=\d)(?:(\d+)H)?(?:(\d+)M)?(?:(\d+)S)?)?$")


def parse_clock_duration(text: str) -> timedelta:
    """PT15M, PT2H, P1D, P1DT12H -> timedelta; ValueError for anything else."""
    m = _CLOCK.match(text)
    if not m:
        raise ValueError(f"{text!r} is not an ISO-8601 duration like PT15M, PT2H or P1D")
    weeks, days, hours, minutes, seconds = (int(g) if g else 0 for g in m.groups())
    return timedelta(weeks=weeks, days=days, hours=hours, minutes=minutes, seconds=seconds)


MAX_DEADLINE = timedelta(days=366)


class _Pack(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)


class Deadline(_Pack):
    """A clock duration (`PT15M`) or a count of working days (`{working_days: 1}`).

    In YAML a bare string is a clock duration. Working days end at the same local time on the
    Nth next working day (docs/rules.md).
    """

    within: str | None = None
    working_days: int | None = Field(None, ge=1, le=60)

    @model_validator(mode="before")
    @classmethod
    def _bare_string(cls, value: Any) -> Any:
        return {"within": value} if isinstance(value, str) else value

    @model_validator(mode="after")
    def _one_kind(self) -> "Deadline":
        # Checked here, not on the field: an error's place is then the deadline itself
        # (`milestones[0].within`), not `within.within` for the YAML's bare string.
        if (self.within is None) == (self.working_days is None):
            raise ValueError("give either a clock duration (PT15M) or {working_days: N}")
        if self.within is not None:
            clock = parse_clock_duration(self.within)
            if clock <= timedelta(0):
                raise ValueError("a deadline must be longer than zero")
            if clock > MAX_DEADLINE:
                raise ValueError("a deadline of more than a year is surely a typing error")
        return self

    @property
    def iso(self) -> str:
        """ISO-8601 form for Target.ack_within (working days as PnD with working_days=True)."""
        return self.within if self.within is not None else f"P{self.working_days}D"

    @property
    def is_working_days(self) -> bool:
        return self.working_days is not None

    @cached_property
    def clock(self) -> timedelta | None:
        return parse_clock_duration(self.within) if self.within is not None else None


class Condition(_Pack):
    """Every clause given must hold; a list clause holds when any of its codes matches."""

    any_indicator: list[str] = Field(default_factory=list)
    category_in: list[str] = Field(default_factory=list)
    setting_in: list[Setting] = Field(default_factory=list)
    institutional: bool | None = None
    age_below: int | None = Field(None, ge=1, le=18, description="youngest child younger than")
    other_province: bool | None = Field(None, description="a second location in another province")

    @model_validator(mode="after")
    def _not_empty(self) -> "Condition":
        if not self.model_fields_set:
            raise ValueError("a condition needs at least one clause")
        return self

    @cached_property
    def clauses(self) -> tuple:
        """The clauses as sets, for the engine's hot path (decide() runs thousands of times a second)."""
        return (frozenset(self.any_indicator), frozenset(self.category_in), frozenset(self.setting_in),
                self.institutional, self.age_below, self.other_province)


class _Rule(_Pack):
    """A named rule that fires when any of its `when` conditions holds (a single mapping is one)."""

    id: str = Field(min_length=1, max_length=100)
    when: list[Condition] = Field(min_length=1)

    @field_validator("when", mode="before")
    @classmethod
    def _one_or_many(cls, value: Any) -> Any:
        return [value] if isinstance(value, dict) else value


class RaiseRule(_Rule):
    """Raise severity to `to` (never lowers it)."""

    to: Severity


class Category(_Pack):
    label: str = Field(description="Vietnamese label, used in messages")
    name: str | None = None  # English name, for messages in English
    default: Severity
    subcategories: list[str] = Field(default_factory=list)
    raise_: list[RaiseRule] = Field(default_factory=list, alias="raise")


class SeverityLevel(_Pack):
    meaning: str
    alert: bool = True  # False: information only, nobody is alerted (P5)
    acknowledge: Deadline | None = None
    act: Deadline | None = None


class Tier(_Pack):
    """A rung of the ladder. In YAML a bare id (`commune`), or `{id, label, name}` to name it in
    messages: `label` in Vietnamese as it reads after "cấp" (xã), `name` in English as it reads
    before "level" (commune). A tier the pack does not name is named by the notifier's own
    names of the shipped tiers, else by its id."""

    id: str
    label: str | None = Field(description="Vietnamese name, after \"cấp\" in messages")
    name: str | None = None

    @model_validator(mode="before")
    @classmethod
    def _bare_id(cls, value: Any) -> Any:
        return {"id": value, "label": None} if isinstance(value, str) else value

    @field_validator("label")
    @classmethod
    def _without_cap(cls, value: str | None) -> str | None:
        # Messages say "cấp {label}": a label "Cấp xã" read "cấp Cấp xã".
        if value is not None and value.casefold().startswith("cấp "):
            raise ValueError('write the tier without "cấp", which messages add: "xã", not "cấp xã"')
        return value


class Agency(_Pack):
    label: str = Field(description="Vietnamese name, used in authority names and messages")
    name: str | None = None  # English name, for docs, pages and messages in English


class PublicityRule(_Rule):
    to: Publicity


class CorrelatedThreshold(_Pack):
    id: str
    at_least: int = Field(ge=2)
    to: Publicity


class CorrelatedReports(_Pack):
    window: str = "PT24H"
    thresholds: list[CorrelatedThreshold] = Field(default_factory=list)

    @field_validator("window")
    @classmethod
    def _duration(cls, value: str) -> str:
        if parse_clock_duration(value) <= timedelta(0):
            raise ValueError("the window must be longer than zero")
        return value

    @model_validator(mode="after")
    def _more_never_less(self) -> "CorrelatedReports":
        # Publicity is never lowered automatically: a fourth report must not give less than
        # a third gave.
        by_count = sorted(self.thresholds, key=lambda t: t.at_least)
        for fewer, more in itertools.pairwise(by_count):
            if PUBLICITIES.index(more.to) < PUBLICITIES.index(fewer.to):
                raise ValueError(f"{more.id}: at least {more.at_least} reports give {more.to}, "
                                 f"less than {fewer.to} for {fewer.at_least}")
        return self

    @cached_property
    def window_td(self) -> timedelta:
        return parse_clock_duration(self.window)


class StepUpRule(_Rule):
    """Raise publicity by `levels` above what the other sources give (capped at the top level)."""

    levels: int = Field(1, ge=1, le=2)


class PublicityRules(_Pack):
    indicator_rules: list[PublicityRule] = Field(default_factory=list)
    correlated_reports: CorrelatedReports = Field(default_factory=CorrelatedReports)
    step_up: list[StepUpRule] = Field(default_factory=list)


class SameAs(_Pack):
    tier: str
    agency: str


class TargetSpec(_Pack):
    """One (tier, agency) a rule targets, resolved through the directory by the case's location."""

    tier: str
    agency: str
    role: Literal["act", "inform"]
    ack: Deadline | None = None
    # Take the deadline of this act target when the case has one; `ack` is the fallback.
    ack_same_as: SameAs | None = None

    @model_validator(mode="after")
    def _ack_only_for_act(self) -> "TargetSpec":
        if self.role == "act" and self.ack is None:
            raise ValueError("an act target needs an ack deadline")
        if self.role == "inform" and (self.ack is not None or self.ack_same_as is not None):
            raise ValueError("an inform target has no ack deadline")
        return self


class Mirror(_Pack):
    """Add `agency` as act at every tier and place where `of` is act, with the same deadline."""

    of: str
    agency: str


class Addition(_Rule):
    """Targets added on top of the routing matrix, in the order the pack lists them."""

    add: list[TargetSpec] = Field(default_factory=list)
    mirror: Mirror | None = None
    # Tiers whose targets so far are repeated at each named location in another province.
    also_at_other_locations: list[str] = Field(default_factory=list)

    @model_validator(mode="after")
    def _does_something(self) -> "Addition":
        if not (self.add or self.mirror or self.also_at_other_locations):
            raise ValueError("an addition needs add, mirror or also_at_other_locations")
        return self


class EscalationPolicy(_Pack):
    reminder_fractions: list[float] = Field(default_factory=lambda: [0.5, 0.8])
    on_breach: list[Literal["supervisors", "next_tier"]] = Field(
        default_factory=lambda: ["supervisors", "next_tier"]
    )
    next_tier_ack: Literal["same_window"] = "same_window"
    supervisor_agency: str = "people_committee"  # the authority a unit's officers answer to

    @field_validator("reminder_fractions")
    @classmethod
    def _fractions(cls, value: list[float]) -> list[float]:
        if any(not 0 < f < 1 for f in value) or value != sorted(set(value)):
            raise ValueError("reminder fractions must be increasing, each between 0 and 1")
        return value


class Milestone(_Pack):
    """A deadline for a step of the case (not an acknowledgement), counted from first receipt."""

    id: str
    step: str | None = None  # the milestone an authority records; the id when not given
    label: str = Field(description="Vietnamese name of the step, used in messages")
    name: str | None = None  # English name, for messages in English
    severities: list[Severity] = Field(min_length=1)
    when: list[Condition] = Field(default_factory=list)  # empty: always; else any of them holds
    within: Deadline
    start: Literal["first_receipt"] = "first_receipt"
    note: str | None = None

    @field_validator("when", mode="before")
    @classmethod
    def _one_or_many(cls, value: Any) -> Any:
        return [value] if isinstance(value, dict) else value

    @property
    def code(self) -> str:
        """One step may have a deadline per severity: several rules, one step code (what an
        authority records and alerts carry as `milestone`). Not `name`: that is the English one."""
        return self.step or self.id


class Calendar(_Pack):
    """Where working days are counted. `days_off` and `working_days` are the government's
    decisions for a year that the holidays package does not know (yet): a bridge day off, and
    the Saturday worked to repay it. A deadline is law, so they are data an admin can add."""

    timezone: str = "Asia/Ho_Chi_Minh"
    holidays_country: str = "VN"
    days_off: tuple[date, ...] = ()
    working_days: tuple[date, ...] = ()
    # When offices are open, local time. Reminders of working-day deadlines fall in it: counted
    # over whole days they came at 02:00 and 04:00, when no commune officer reads an SMS.
    # Clock deadlines (P1, P2: minutes and hours) run around the clock, their reminders too.
    office_hours: tuple[time, time] | None = None

    @field_validator("office_hours", mode="before")
    @classmethod
    def _as_text(cls, value: Any) -> Any:
        # YAML reads an unquoted 17:00 as the number 1020 (base 60), which would pass as
        # 00:17:00: only "HH:MM" text is taken.
        if value is not None and not (isinstance(value, list | tuple) and all(
                isinstance(v, time) or isinstance(v, str) and re.fullmatch(r"\d\d:\d\d(:\d\d)?", v)
                for v in value)):
            raise ValueError('office_hours must be two quoted local times, e.g. ["07:30", "17:00"]')
        return value

    @model_validator(mode="after")
    def _not_both(self) -> "Calendar":
        if both := sorted(set(self.days_off) & set(self.working_days)):
            raise ValueError("a day cannot be both a day off and a working day: "
                             + ", ".join(d.isoformat() for d in both))
        if self.office_hours and not self.office_hours[0] < self.office_hours[1]:
            raise ValueError("office_hours: the opening must come before the closing, "
                             "within one day")
        return self


RoutingCell = list[TargetSpec]


class RulePack(_Pack):
    # It names the pack in URLs (/api/v1/rulepacks/{version}) and in every decision.
    version: str = Field(min_length=1, max_length=64, pattern=r"^[A-Za-z0-9][A-Za-z0-9._@-]*$")
    description: str | None = None
    calendar: Calendar = Field(default_factory=Calendar)
    # `tiers` in YAML; the ids alone are `tiers`, below.
    ladder: list[Tier] = Field(min_length=1, alias="tiers")
    agencies: dict[str, Agency]
    indicators: dict[str, str] = Field(description="indicator code -> Vietnamese label")
    severities: dict[Severity, SeverityLevel]
    categories: dict[str, Category]
    global_rules: list[RaiseRule] = Field(default_factory=list)
    publicity: PublicityRules = Field(default_factory=PublicityRules)
    routing_columns_add: bool = True  # each publicity column adds to the one on its left
    routing: dict[Severity, dict[Publicity, RoutingCell]]
    additions: list[Addition] = Field(default_factory=list)
    escalation: EscalationPolicy = Field(default_factory=EscalationPolicy)
    milestones: list[Milestone] = Field(default_factory=list)

    _cells: dict[tuple[str, str], list[tuple[str, TargetSpec]]] = PrivateAttr(default_factory=dict)

    def model_post_init(self, context: Any) -> None:
        # Precompute each cell's targets (with the columns to its left) once: decide() is hot.
        for sev, row in self.routing.items():
            so_far: list[tuple[str, TargetSpec]] = []
            for pub in PUBLICITIES:
                own = [(f"routing.{sev}.{pub}", spec) for spec in row.get(pub, [])]
                so_far = so_far + own if self.routing_columns_add else own
                self._cells[(sev, pub)] = so_far

    # --- the API the engine and services use ---------------------------------------------

    @property
    def tiers(self) -> list[str]:
        """The tiers' ids, lowest first."""
        return [t.id for t in self.ladder]

    @property
    def tier_names(self) -> dict[str, Tier]:
        """The tiers the pack names (with a `label`), by id."""
        return {t.id: t for t in self.ladder if t.label is not None}

    @property
    def category_codes(self) -> frozenset[str]:
        return frozenset(self.categories)

    @property
    def indicator_codes(self) -> frozenset[str]:
        return frozenset(self.indicators)

    def subcategories(self, category: str) -> frozenset[str]:
        return frozenset(self.categories[category].subcategories)

    @property
    def reminder_fractions(self) -> list[float]:
        return list(self.escalation.reminder_fractions)

    @cached_property
    def memo(self) -> dict:
        """Derived data the engine keeps per pack (routing plans); not part of the pack itself."""
        return {}

    @cached_property
    def tier_rank(self) -> dict[str, int]:
        return {tier: i for i, tier in enumerate(self.tiers)}

    @cached_property
    def silent(self) -> tuple[str, ...]:
        """The severities that alert nobody (`alert: false`: P5, information only)."""
        return tuple(code for code, level in self.severities.items() if not level.alert)

    def next_tier(self, tier: str) -> str | None:
        i = self.tiers.index(tier)
        return self.tiers[i + 1] if i + 1 < len(self.tiers) else None

    def cell_targets(self, severity: str, publicity: str) -> list[tuple[str, TargetSpec]]:
        """(rule id, target) for a matrix cell, including the columns to its left when they add."""
        return self._cells.get((severity, publicity), [])

    def milestones_for(self, severity: str) -> list[Milestone]:
        return [m for m in self.milestones if severity in m.severities]
