"""Severity (DOMAIN.md section 3): the highest any rule gives; a supervisor's override wins, until
the facts give more than they did when it was made."""

from schemas.decisions import CaseFacts
from schemas.rulepack import SEVERITIES, RulePack

from .conditions import Situation, any_holds

RANK = {sev: i for i, sev in enumerate(SEVERITIES)}  # P1 -> 0: lower is more severe
OVERRIDE_RULE = "severity.override"
OVERRIDE_LAPSED_RULE = "severity.override_lapsed"


class UnknownCategory(ValueError):
    pass


def assess_severity(facts: CaseFacts, pack: RulePack, s: Situation) -> tuple[str, list[str]]:
    """Every category the case's reports gave counts: the most severe default, and each one's
    raise rules (a report of sexual abuse linked to a neglect case makes it P1)."""
    severity, fired, rules = "P5", [], []
    for code in (facts.category, *facts.other_categories):
        category = pack.categories.get(code)
        if category is None:
            raise UnknownCategory(f"category {code!r} is not in rule pack {pack.version}")
        fired.append(f"severity.default.{code}")
        if RANK[category.default] < RANK[severity]:
            severity = category.default
        rules += category.raise_
    for rule in (*rules, *pack.global_rules):
        if any_holds(rule.when, s):
            fired.append(rule.id)
            if RANK[rule.to] < RANK[severity]:
                severity = rule.to
    basis = facts.override_basis
    if facts.severity_override is not None:
        if basis is not None and RANK[severity] < RANK[basis]:
            fired.append(OVERRIDE_LAPSED_RULE)  # more severe facts than the supervisor judged
        else:
            severity = facts.severity_override
            fired.append(OVERRIDE_RULE)
    return severity, fired


def rules_severity(facts: CaseFacts, pack: RulePack) -> str:
    """What the rules alone give, no override: an override's basis."""
    unjudged = facts.model_copy(update={"severity_override": None})
    return assess_severity(unjudged, pack, Situation.of(unjudged))[0]
