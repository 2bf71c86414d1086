"""decide(): facts + pack + directory + time -> Decision. Pure: the same input gives the same output."""

from datetime import datetime

from schemas.decisions import CaseFacts, Decision
from schemas.reports import aged_16_or_17
from schemas.rulepack import RulePack
from services.escalation.directory import Directory

from .calendar import _require_aware, deadline
from .conditions import Situation, any_holds
from .publicity import assess_publicity
from .routing import route
from .severity import assess_severity


def decide(facts: CaseFacts, pack: RulePack, directory: Directory, at: datetime,
           publicity_floor: str = "PA0") -> Decision:
    """`publicity_floor`: the case's publicity so far, which automation never lowers; unlike
    facts.publicity (what a person set) no rule builds on it."""
    _require_aware(at)
    s = Situation.of(facts)
    severity, severity_rules = assess_severity(facts, pack, s)
    publicity, publicity_rules = assess_publicity(facts, pack, s, publicity_floor)
    targets, routing_rules = route(facts, severity, publicity, pack, directory, at, s)
    # One validation of the whole decision is cheaper than building each Target on its own.
    return Decision.model_validate({
        "rulepack_version": pack.version,
        "severity": severity,
        "publicity": publicity,
        "targets": targets,
        "matched_rules": severity_rules + publicity_rules + routing_rules + _flags(facts),
    })


def _flags(facts: CaseFacts) -> list[str]:
    """Facts to flag, changing nothing."""
    return [AGE_16_17] if aged_16_or_17(facts.child_ages) else []


AGE_16_17 = "flag.age_16_17"


def milestone_deadlines(facts: CaseFacts, severity: str, pack: RulePack,
                        start: datetime | None = None) -> dict[str, datetime]:
    """Milestone id -> due time, counted from the first receipt (DOMAIN.md section 2), or from
    `start`: when the input that made it apply arrived, for one a later input brought."""
    s = Situation.of(facts)
    return {
        m.code: deadline(start or facts.first_received_at, m.within.iso, m.within.is_working_days,
                         cal=pack.calendar)
        for m in pack.milestones_for(severity)
        if not m.when or any_holds(m.when, s)
    }
