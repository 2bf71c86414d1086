"""Public attention (DOMAIN.md section 4): the highest of every source; never below facts.publicity
(what a person set) nor below `floor` (the case's level so far: it only goes up automatically)."""

from datetime import datetime, timedelta

from schemas.decisions import CaseFacts
from schemas.rulepack import PUBLICITIES, RulePack

from .conditions import Situation, any_holds

LEVEL = {pub: i for i, pub in enumerate(PUBLICITIES)}  # PA0 -> 0
SET_BY_PERSON_RULE = "publicity.set_by_person"
KEPT_RULE = "publicity.kept"


def most_in_window(times: tuple[datetime, ...], window: timedelta) -> int:
    """The largest number of reports inside any sliding window of this length (ends inclusive)."""
    ordered = sorted(times)
    best, first = 0, 0
    for last, t in enumerate(ordered):
        while t - ordered[first] > window:
            first += 1
        best = max(best, last - first + 1)
    return best


def assess_publicity(facts: CaseFacts, pack: RulePack, s: Situation,
                     floor: str = "PA0") -> tuple[str, list[str]]:
    level = LEVEL[facts.publicity]
    fired = [SET_BY_PERSON_RULE] if level > 0 else []
    for rule in pack.publicity.indicator_rules:
        if any_holds(rule.when, s):
            fired.append(rule.id)
            level = max(level, LEVEL[rule.to])
    correlated = pack.publicity.correlated_reports
    if correlated.thresholds and len(facts.linked_reports) > 1:
        count = most_in_window(facts.linked_reports, correlated.window_td)
        for th in correlated.thresholds:
            if count >= th.at_least:
                fired.append(th.id)
                level = max(level, LEVEL[th.to])
    # One level up from what the other sources give, so it runs last.
    for rule in pack.publicity.step_up:
        if any_holds(rule.when, s):
            fired.append(rule.id)
            level = min(level + rule.levels, len(PUBLICITIES) - 1)
    # The floor is applied after the step-up, not stepped up itself: re-deciding the same facts
    # must give the same level, not one more each time.
    if LEVEL[floor] > level:
        fired.append(KEPT_RULE)
        level = LEVEL[floor]
    return PUBLICITIES[level], fired
