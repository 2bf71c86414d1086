"""What operators submit: the report (DOMAIN.md section 6) and its follow-ups.

These models hold identity (child names, reporter, narrative). They exist only at the intake
boundary; nothing past intake may carry them (see schemas/events.py).
"""

from typing import Annotated, Literal

from pydantic import AwareDatetime, BaseModel, ConfigDict, Field, StringConstraints

Severity = Literal["P1", "P2", "P3", "P4", "P5"]
Publicity = Literal["PA0", "PA1", "PA2"]
Setting = Literal[
    "home", "school", "care_facility", "health_facility", "service_provider", "online", "public",
    "other",
]
Channel = Literal["phone", "walk_in", "email", "web", "app", "letter", "other"]
INSTITUTIONAL_SETTINGS = frozenset({"school", "care_facility", "health_facility", "service_provider"})

Code = Annotated[str, StringConstraints(pattern=r"^[A-Za-z0-9_]{1,64}$")]
ShortText = Annotated[str, StringConstraints(max_length=200)]


class _Strict(BaseModel):
    model_config = ConfigDict(extra="forbid", str_strip_whitespace=True)


class Location(_Strict):
    """Administrative codes as vietnam-provinces gives them (post-2025 provinces and communes)."""

    # strict: `true` is not province 1
    province_code: int = Field(ge=1, le=999, strict=True)
    commune_code: int = Field(ge=1, le=999_999, strict=True)


def aged_16_or_17(ages) -> bool:
    """Not a child in law (under 16), but protected by criminal procedure until 18: flagged
    (DOMAIN.md section 2), changing nothing else."""
    return any(16 <= age <= 17 for age in ages)


class Child(_Strict):
    # A caller may not know it: null, rather than a guess that age rules would act on.
    age: int | None = Field(None, ge=0, le=17, strict=True,
                            description="Years, null when not known; under 16 is a child in law, "
                                        "16-17 flagged. An unknown age raises nothing (age rules "
                                        "use the youngest known age)")
    sex: Literal["female", "male", "other", "unknown"] = "unknown"
    name: ShortText | None = None


class Reporter(_Strict):
    name: ShortText | None = None
    phone: Annotated[str, StringConstraints(max_length=32)] | None = None
    relationship: ShortText | None = None
    consent_to_contact: bool = False


class Suspect(_Strict):
    relationship: ShortText | None = None
    still_has_access: bool | None = None


class Report(_Strict):
    received_at: AwareDatetime
    channel: Channel
    category: Code
    subcategory: Code | None = None
    location: Location
    other_locations: list[Location] = Field(default_factory=list, max_length=10)
    setting: Setting
    children: list[Child] = Field(min_length=1, max_length=30)
    indicators: list[Code] = Field(default_factory=list, max_length=50)
    publicity: Publicity = "PA0"
    narrative: Annotated[str, StringConstraints(max_length=20_000)] | None = None
    reporter: Reporter | None = None
    receiving_point: ShortText | None = None
    suspect: Suspect | None = None
    confidential: bool = False
    link_case_id: Annotated[str, StringConstraints(pattern=r"^C-[0-9A-Z]{6,32}$")] | None = Field(
        default=None, description="Attach this report to an existing case instead of matching"
    )
    # Matching by place, kind, time and age alone can take two unnamed children for one: the
    # operator, who heard the caller, has the last word.
    new_case: bool = Field(
        default=False, strict=True,
        description="Open a case of its own, never joining an open case: the operator knows it "
                    "is another incident (a report wrongly joined to a case is corrected by "
                    "sending it again with this set and a new Idempotency-Key)")

    @property
    def child_ages(self) -> list[int]:
        """The ages given; an unknown one is left out."""
        return [c.age for c in self.children if c.age is not None]


class SeverityOverride(_Strict):
    severity: Severity
    reason: Annotated[str, StringConstraints(min_length=3, max_length=500)]


class CaseUpdate(_Strict):
    """A follow-up on a case: new facts, publicity, or a supervisor's severity override."""

    indicators: list[Code] = Field(default_factory=list, max_length=50)
    publicity: Publicity | None = None
    severity_override: SeverityOverride | None = None
