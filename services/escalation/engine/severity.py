"""Severity (DOMAIN.md section 3): the highest any rule gives; a supervisor's override wins."""

from schemas.decisions import CaseFacts
from schemas.rulepack import SEVERITIES, RulePack

from .conditions import Situation, any_holds

RANK = {sev: i for i, sev in enumerate(SEVERITIES)}  # P1 -> 0: lower is more severe
OVERRIDE_RULE = "severity.override"


class UnknownCategory(ValueError):
    pass


def assess_severity(facts: CaseFacts, pack: RulePack, s: Situation) -> tuple[str, list[str]]:
    category = pack.categories.get(facts.category)
    if category is None:
        raise UnknownCategory(f"category {facts.category!r} is not in rule pack {pack.version}")
    severity = category.default
    fired = [f"severity.default.{facts.category}"]
    for rule in (*category.raise_, *pack.global_rules):
        if any_holds(rule.when, s):
            fired.append(rule.id)
            if RANK[rule.to] < RANK[severity]:
                severity = rule.to
    if facts.severity_override is not None:
        severity = facts.severity_override
        fired.append(OVERRIDE_RULE)
    return severity, fired
