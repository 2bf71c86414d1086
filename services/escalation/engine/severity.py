"""Severity (DOMAIN.md section 3): the highest any rule gives; a supervisor's override wins, until
facts more severe than the override are reported after it."""

from collections.abc import Iterable

from schemas.decisions import CaseFacts
from schemas.rulepack import SEVERITIES, RulePack

from .conditions import Situation, any_holds, holds

RANK = {sev: i for i, sev in enumerate(SEVERITIES)}  # P1 -> 0: lower is more severe
OVERRIDE_RULE = "severity.override"
OVERRIDE_LAPSED_RULE = "severity.override_lapsed"


class UnknownCategory(ValueError):
    pass


def lead_category(category: str, others: Iterable[str], pack: RulePack) -> str:
    """The category an alert names: of the case's own (`category`) and those its linked reports
    brought (`others`), the one of the most severe default, the first on a tie. The case keeps
    its first as its label, but health, brought in by a linked report of sexual abuse, was
    told of "neglect"."""
    codes = [c for c in (category, *others) if c in pack.categories]
    return min(codes, key=lambda c: RANK[pack.categories[c].default], default=category)


def assess_severity(facts: CaseFacts, pack: RulePack, s: Situation) -> tuple[str, list[str]]:
    """Every category the case's reports gave counts: the most severe default, and each one's
    raise rules (a report of sexual abuse linked to a neglect case makes it P1)."""
    severity, fired, rules, held = "P5", [], [], []
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
            held.append(rule)
            if RANK[rule.to] < RANK[severity]:
                severity = rule.to
    if facts.severity_override is not None:
        if _lapsed(facts, severity, held, pack, s):
            fired.append(OVERRIDE_LAPSED_RULE)
        else:
            severity = facts.severity_override
            fired.append(OVERRIDE_RULE)
    return severity, fired


def _lapsed(facts: CaseFacts, severity: str, held: list, pack: RulePack, s: Situation) -> bool:
    """Whether facts more severe than the override came in after it was made: the rules give
    more than it, and more than they gave then (`override_basis`); or a fact reported since
    (`override_judged`) gives more than it: a category by its default, or a category or
    indicator by which a rule holds. A judgement of the facts it saw never hides a legal
    emergency reported later, even one of a kind already on the case."""
    over = RANK[facts.severity_override]
    basis, judged = facts.override_basis, facts.override_judged
    if basis is not None and RANK[severity] < min(RANK[basis], over):
        return True
    if judged is None:  # made before these were recorded: it stands until changed
        return False
    categories = s.categories - judged
    indicators = s.indicators - judged
    if any(RANK[pack.categories[c].default] < over for c in categories):
        return True
    return any(RANK[rule.to] < over and holds(c, s)
               and not (c.clauses[0].isdisjoint(indicators) and c.clauses[1].isdisjoint(categories))
               for rule in held for c in rule.when)


def rules_severity(facts: CaseFacts, pack: RulePack) -> str:
    """What the rules alone give, no override: an override's basis."""
    unjudged = facts.model_copy(update={"severity_override": None})
    return assess_severity(unjudged, pack, Situation.of(unjudged))[0]
