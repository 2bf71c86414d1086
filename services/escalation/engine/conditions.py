"""Declarative conditions, evaluated against the facts of one case. No eval, no code in packs."""

from typing import NamedTuple

from schemas.decisions import CaseFacts
from schemas.reports import INSTITUTIONAL_SETTINGS
from schemas.rulepack import Condition


class Situation(NamedTuple):
    """What conditions can test, derived once per decision (a tuple: cheap to build)."""

    categories: frozenset[str]  # of all the case's reports
    settings: frozenset[str]  # of all the case's reports
    indicators: frozenset[str]
    youngest: int | None  # age rules use the youngest child (DOMAIN.md section 5)
    institutional: bool
    other_province: bool

    @classmethod
    def of(cls, facts: CaseFacts) -> "Situation":
        others = facts.other_locations
        province = facts.location.province_code
        settings = frozenset((facts.setting, *facts.other_settings))
        return cls(
            frozenset((facts.category, *facts.other_categories)),
            settings,
            facts.indicators,
            min(facts.child_ages) if facts.child_ages else None,
            not settings.isdisjoint(INSTITUTIONAL_SETTINGS),
            bool(others) and any(loc.province_code != province for loc in others),
        )


def holds(cond: Condition, s: Situation) -> bool:
    indicators, categories, settings, institutional, age_below, other_province = cond.clauses
    if indicators and s.indicators.isdisjoint(indicators):
        return False
    if categories and s.categories.isdisjoint(categories):
        return False
    if settings and s.settings.isdisjoint(settings):
        return False
    if institutional is not None and s.institutional != institutional:
        return False
    if age_below is not None and (s.youngest is None or s.youngest >= age_below):
        return False
    return not (other_province is not None and s.other_province != other_province)


def any_holds(conds: list[Condition], s: Situation) -> bool:
    return any(holds(c, s) for c in conds)
