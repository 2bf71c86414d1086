"""Severity (DOMAIN.md section 3) on the default pack: defaults, raise rules, global rules, override."""

from datetime import datetime
from zoneinfo import ZoneInfo

import pytest
from hypothesis import given
from hypothesis import strategies as st

from schemas.decisions import CaseFacts
from schemas.reports import Child, Location, Report
from services.escalation.directory import build_directory
from services.escalation.engine import UnknownCategory, decide, lead_category
from services.escalation.engine.facts import facts_from_report
from services.escalation.rulepack import load_pack
from tests.support.reports import report

PACK = load_pack("default")
DIRECTORY = build_directory(PACK)
AT = datetime(2026, 11, 25, 9, 30, tzinfo=ZoneInfo("Asia/Ho_Chi_Minh"))
HERE = Location(province_code=1, commune_code=4)


def severity(category: str, indicators=(), ages=(10,), override=None) -> tuple[str, list[str]]:
    f = CaseFacts(case_id="C-TEST", category=category, location=HERE, setting="home",
                  child_ages=tuple(ages), indicators=frozenset(indicators),
                  severity_override=override, first_received_at=AT)
    d = decide(f, PACK, DIRECTORY, AT)
    return d.severity, d.matched_rules


DEFAULTS = {
    "SEX_ABUSE": "P1", "TRAFFICKING": "P1", "MISSING": "P2", "PHYS_VIOLENCE": "P2",
    "SELF_HARM": "P2", "ONLINE_ABUSE": "P2", "EXPLOITATION": "P2", "NEGLECT": "P3",
    "EMOTIONAL": "P3", "BULLYING": "P3", "CHILD_MARRIAGE": "P3", "INJURY": "P3", "HAZARD": "P4",
    "SPECIAL_CIRC": "P4", "INFO": "P5",
}


def test_the_pack_has_exactly_the_domain_taxonomy():
    assert PACK.category_codes == frozenset(DEFAULTS)
    assert {c: cat.default for c, cat in PACK.categories.items()} == DEFAULTS
    assert PACK.subcategories("INJURY") == {"drowning", "traffic", "fall", "burn", "poison",
                                           "electric", "animal"}


@pytest.mark.parametrize(("category", "expected"), sorted(DEFAULTS.items()))
def test_default_severity(category, expected):
    sev, rules = severity(category, ages=(15,))
    assert sev == expected
    assert rules[0] == f"severity.default.{category}"


RAISES = [
    ("MISSING", {}, (11,), "P1"),
    ("MISSING", {}, (12,), "P2"),
    ("MISSING", {"trafficking_suspected"}, (15,), "P1"),
    ("PHYS_VIOLENCE", {"serious_injury"}, (10,), "P1"),
    ("PHYS_VIOLENCE", {"ongoing"}, (10,), "P1"),
    ("PHYS_VIOLENCE", {}, (5,), "P1"),
    ("PHYS_VIOLENCE", {}, (6,), "P2"),
    ("SELF_HARM", {"plan_exists"}, (14,), "P1"),
    ("SELF_HARM", {"attempt_in_progress"}, (14,), "P1"),
    ("ONLINE_ABUSE", {"sextortion"}, (14,), "P1"),
    ("ONLINE_ABUSE", {"meeting_arranged"}, (14,), "P1"),
    ("EXPLOITATION", {"hazardous_work"}, (14,), "P1"),
    ("EXPLOITATION", {"confinement"}, (14,), "P1"),
    ("NEGLECT", {"abandoned_infant"}, (0,), "P1"),
    ("BULLYING", {"serious_injury"}, (12,), "P2"),
    ("BULLYING", {"self_harm_risk"}, (12,), "P2"),
    ("CHILD_MARRIAGE", {"marriage_imminent"}, (15,), "P2"),
    ("INJURY", {"death"}, (8,), "P1"),
    ("INJURY", {"serious_injury"}, (8,), "P1"),
    # an indicator that raises one category does nothing for another
    ("EMOTIONAL", {"serious_injury"}, (8,), "P3"),
    ("HAZARD", {"marriage_imminent"}, (8,), "P4"),
]


@pytest.mark.parametrize(("category", "indicators", "ages", "expected"), RAISES)
def test_raise_rules(category, indicators, ages, expected):
    sev, rules = severity(category, indicators, ages)
    assert sev == expected
    raised = [r for r in rules if ".raise." in r]
    assert bool(raised) == (expected != DEFAULTS[category])


@pytest.mark.parametrize("indicator", ["immediate_danger", "caregiver_is_abuser"])
@pytest.mark.parametrize("category", sorted(DEFAULTS))
def test_twelve_hour_rule_makes_every_category_p1(category, indicator):
    sev, rules = severity(category, {indicator})
    assert sev == "P1"
    assert "global.twelve_hour_rule" in rules


def test_age_rules_use_the_youngest_child():
    assert severity("PHYS_VIOLENCE", ages=(12, 4, 9))[0] == "P1"
    assert severity("MISSING", ages=(15, 11))[0] == "P1"


def test_an_unknown_age_raises_nothing_and_a_known_one_still_counts():
    # A report's unknown ages are left out of the facts (schemas.reports.Report.child_ages).
    assert severity("PHYS_VIOLENCE", ages=())[0] == "P2"
    assert severity("MISSING", ages=())[0] == "P2"
    assert severity("SEX_ABUSE", ages=())[0] == "P1"
    known = Report.model_validate(report(children=[{"sex": "male"}, {"age": 4}]))
    assert known.child_ages == [4] and facts_from_report(known).child_ages == (4,)
    assert Child().age is None


def test_the_highest_rule_wins_and_every_fired_rule_is_listed():
    sev, rules = severity("BULLYING", {"serious_injury", "immediate_danger"})
    assert sev == "P1"
    assert rules[:3] == ["severity.default.BULLYING", "BULLYING.raise.P2.indicators",
                         "global.twelve_hour_rule"]


@pytest.mark.parametrize("override", ["P1", "P3", "P5"])
def test_supervisor_override_wins_up_or_down(override):
    sev, rules = severity("SEX_ABUSE", {"immediate_danger"}, override=override)
    assert sev == override
    assert "severity.override" in rules


def test_override_to_p5_alerts_nobody():
    f = CaseFacts(case_id="C-TEST", category="SEX_ABUSE", location=HERE, setting="home",
                  child_ages=(5,), severity_override="P5", first_received_at=AT)
    assert decide(f, PACK, DIRECTORY, AT).targets == []


def test_unknown_category_is_an_error():
    with pytest.raises(UnknownCategory):
        severity("NOT_A_CATEGORY")


def test_unknown_indicators_are_ignored():
    assert severity("EMOTIONAL", {"something_new"})[0] == "P3"


def test_an_alert_names_the_most_severe_of_the_case_s_categories():
    # A neglect case (P3) linked to a report of sexual abuse (P1): health, brought in for it,
    # is told of sexual abuse, not neglect.
    assert lead_category("NEGLECT", ["SEX_ABUSE"], PACK) == "SEX_ABUSE"
    assert lead_category("NEGLECT", [], PACK) == "NEGLECT"
    assert lead_category("NEGLECT", ["NOT_IN_THE_PACK"], PACK) == "NEGLECT"


@given(st.lists(st.sampled_from(sorted(PACK.categories)), min_size=1, max_size=5))
def test_the_category_named_is_one_of_the_case_s_and_none_is_more_severe(codes):
    lead = lead_category(codes[0], codes[1:], PACK)
    assert lead in codes
    rank = {s: i for i, s in enumerate(("P1", "P2", "P3", "P4", "P5"))}
    assert all(rank[PACK.categories[lead].default] <= rank[PACK.categories[c].default]
               for c in codes)
    # The first of the most severe: a case's own category wins a tie.
    tied = [c for c in codes if PACK.categories[c].default == PACK.categories[lead].default]
    assert lead == tied[0]
