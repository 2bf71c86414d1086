"""Milestones of a case (DOMAIN.md section 2): which can be recorded, and who is held to each.

Pure: no I/O. The deadlines themselves come from the rule pack (engine.milestone_deadlines).
"""

from collections.abc import Container, Iterable
from dataclasses import dataclass

from schemas.reports import Location
from schemas.rulepack import Milestone, RulePack

# The steps the law names. A pack may add others (police_verification); a step without a
# deadline in the pack can still be recorded, it just holds nobody to a time.
EMERGENCY_MEASURE = "emergency_measure"
INITIAL_ASSESSMENT = "initial_assessment"
CASE_PLAN = "case_plan"
CASE_CLOSED = "case_closed"
MILESTONES = (EMERGENCY_MEASURE, INITIAL_ASSESSMENT, CASE_PLAN, CASE_CLOSED)

# How a case ends (Decree 56 Art. 30 review and closure), as codes: events carry no free text.
OUTCOMES = ("resolved", "referred", "no_protection_needed", "child_moved", "other")

# The agency that owns a milestone when it is not the case's lead agency. The pack has no field
# for it yet; police verification is the one step the default packs give another agency.
OWNER_AGENCY = {"police_verification": "police"}


@dataclass(frozen=True)
class Duty:
    """An act target as milestone ownership sees it."""

    authority_id: str
    tier: str
    agency: str
    active: bool  # act, not released by a transfer


def recordable(pack: RulePack) -> tuple[str, ...]:
    return tuple(dict.fromkeys((*MILESTONES, *(m.code for m in pack.milestones))))


def rule(milestone: str, pack: RulePack) -> Milestone | None:
    """The pack's first rule for a step, whose `label` and `name` messages call it; None for a
    step the pack gives no deadline."""
    return next((m for m in pack.milestones if m.code == milestone), None)


def check_record(milestone: str, outcome: str | None, pack: RulePack) -> tuple[tuple, str] | None:
    """What is wrong with recording this milestone, as (field path, problem), or None."""
    if milestone not in recordable(pack):
        return ("milestone",), f"unknown milestone {milestone!r} (known: {', '.join(recordable(pack))})"
    if milestone == CASE_CLOSED and outcome not in OUTCOMES:
        return ("outcome",), f"closing a case needs an outcome, one of {', '.join(OUTCOMES)}"
    if milestone != CASE_CLOSED and outcome is not None:
        return ("outcome",), "only case_closed takes an outcome"
    return None


def owner(milestone: str, duties: Iterable[Duty], pack: RulePack,
          home: Container[str] = frozenset()) -> str | None:
    """Who is held to a milestone: the lowest-tier active act target of the owning agency (the
    pack's first agency, child protection in the shipped packs); failing that, the lowest-tier
    active act target; None when nobody must act (P5). Within a tier, one at the incident's own
    place (`home`, home_ids) comes first: a second location adds that place's authorities to
    the case (DOMAIN.md section 5), but the commune where it happened assesses it."""
    rank = pack.tier_rank
    active = sorted((d for d in duties if d.active),
                    key=lambda d: (rank.get(d.tier, len(rank)), d.authority_id not in home,
                                   d.authority_id))
    agency = OWNER_AGENCY.get(milestone, next(iter(pack.agencies), None))
    for d in active:
        if d.agency == agency:
            return d.authority_id
    return active[0].authority_id if active else None


def home_ids(duties: Iterable[Duty], directory, location: Location) -> frozenset[str]:
    """The ids that the duties' tiers and agencies have at the incident's own location."""
    ids = set()
    for d in duties:
        try:
            ids.add(directory.id_for(d.tier, d.agency, location))
        except KeyError:  # a tier or agency no longer in the directory: not at home, then
            continue
    return frozenset(ids)
