"""The default pack's routing matrix (DOMAIN.md section 5), one test per cell, and each addition."""

from datetime import datetime
from zoneinfo import ZoneInfo

import pytest

from schemas.decisions import CaseFacts, Decision
from schemas.reports import Location
from services.escalation.directory import build_directory
from services.escalation.engine import deadline, decide
from services.escalation.rulepack import load_pack

PACK = load_pack("default")
DIRECTORY = build_directory(PACK)
VN = ZoneInfo("Asia/Ho_Chi_Minh")
AT = datetime(2026, 11, 25, 9, 30, tzinfo=VN)  # a Wednesday, no holiday near
HERE = Location(province_code=1, commune_code=4)  # Phường Ba Đình, Hà Nội
ELSEWHERE = Location(province_code=48, commune_code=20242)  # Phường Hải Châu, Đà Nẵng
SAME_PROVINCE = Location(province_code=1, commune_code=70)  # Phường Hoàn Kiếm, Hà Nội

# A category and indicators that give each severity without any addition firing.
FOR_SEVERITY = {
    "P1": ("EMOTIONAL", {"immediate_danger"}),
    "P2": ("PHYS_VIOLENCE", set()),
    "P3": ("EMOTIONAL", set()),
    "P4": ("HAZARD", set()),
    "P5": ("INFO", set()),
}


def facts(**kw) -> CaseFacts:
    base = {"case_id": "C-TEST", "category": "EMOTIONAL", "location": HERE, "setting": "home",
                "child_ages": (10,), "first_received_at": AT, "linked_reports": (AT,)}
    base.update(kw)
    return CaseFacts(**base)


def run(f: CaseFacts) -> Decision:
    return decide(f, PACK, DIRECTORY, AT)


def cell_facts(severity: str, publicity: str, **kw) -> CaseFacts:
    category, indicators = FOR_SEVERITY[severity]
    kw.setdefault("category", category)
    kw["indicators"] = frozenset(indicators) | kw.get("indicators", frozenset())
    return facts(publicity=publicity, **kw)


def summary(d: Decision) -> set[tuple]:
    return {(t.tier, t.agency, t.role, t.ack_within, t.working_days) for t in d.targets}


def find(d: Decision, authority_id: str):
    [t] = [t for t in d.targets if t.authority_id == authority_id]
    return t


C_CP_15M = ("commune", "child_protection", "act", "PT15M", False)
C_POL_15M = ("commune", "police", "act", "PT15M", False)
P_CP_INFORM = ("province", "child_protection", "inform", None, False)
N_CP_INFORM = ("national", "child_protection", "inform", None, False)
C_CP_1H = ("commune", "child_protection", "act", "PT1H", False)
C_CP_1WD = ("commune", "child_protection", "act", "P1D", True)
P_CP_1WD = ("province", "child_protection", "act", "P1D", True)

MATRIX = {
    ("P1", "PA0"): {C_CP_15M, C_POL_15M, P_CP_INFORM},
    ("P1", "PA1"): {C_CP_15M, C_POL_15M, ("province", "child_protection", "act", "PT2H", False),
                    N_CP_INFORM},
    ("P1", "PA2"): {C_CP_15M, C_POL_15M, ("province", "child_protection", "act", "PT2H", False),
                    ("national", "child_protection", "act", "PT2H", False),
                    ("province", "police", "inform", None, False),
                    ("province", "health", "inform", None, False),
                    ("province", "education", "inform", None, False)},
    ("P2", "PA0"): {C_CP_1H, P_CP_INFORM},
    ("P2", "PA1"): {C_CP_1H, ("province", "child_protection", "act", "PT4H", False)},
    ("P2", "PA2"): {C_CP_1H, ("province", "child_protection", "act", "PT4H", False),
                    ("national", "child_protection", "act", "PT4H", False)},
    ("P3", "PA0"): {C_CP_1WD},
    ("P3", "PA1"): {C_CP_1WD, P_CP_1WD},
    ("P3", "PA2"): {C_CP_1WD, P_CP_1WD, N_CP_INFORM},
    ("P4", "PA0"): {("commune", "child_protection", "act", "P3D", True)},
    ("P4", "PA1"): {("commune", "child_protection", "act", "P3D", True), P_CP_INFORM},
    ("P4", "PA2"): {("commune", "child_protection", "act", "P3D", True), P_CP_1WD},
    ("P5", "PA0"): set(),
    ("P5", "PA1"): set(),
    ("P5", "PA2"): set(),
}


@pytest.mark.parametrize(("severity", "publicity"), sorted(MATRIX), ids=lambda v: v)
def test_matrix_cell(severity, publicity):
    d = run(cell_facts(severity, publicity))
    assert (d.severity, d.publicity) == (severity, publicity)
    assert summary(d) == MATRIX[(severity, publicity)]
    for t in d.targets:
        if t.role == "act":
            assert t.ack_due == deadline(AT, t.ack_within, t.working_days)
            assert t.rules and all(r.startswith(f"routing.{severity}.") for r in t.rules)
        else:
            assert t.ack_due is None
    assert not [r for r in d.matched_rules if r.startswith("additions.")]


def test_targets_resolve_to_the_incident_location():
    d = run(cell_facts("P1", "PA2"))
    ids = {t.authority_id for t in d.targets}
    assert {"commune:4:child_protection", "commune:4:police", "province:1:child_protection",
            "national:VN:child_protection", "province:1:education"} <= ids


def test_targets_are_sorted_by_tier_then_agency_then_role():
    d = run(cell_facts("P1", "PA2"))
    order = {t: i for i, t in enumerate(PACK.tiers)}
    keys = [(order[t.tier], t.agency, t.role, t.authority_id) for t in d.targets]
    assert keys == sorted(keys)


# --- additions ------------------------------------------------------------------------------


@pytest.mark.parametrize("category", ["SEX_ABUSE", "TRAFFICKING"])
def test_police_act_wherever_child_protection_acts_for_sex_abuse_and_trafficking(category):
    d = run(facts(category=category, publicity="PA1"))  # P1: commune 15 min, province 2 h
    police = find(d, "province:1:police")
    assert (police.role, police.ack_within) == ("act", "PT2H")
    assert "additions.police_with_child_protection" in police.rules
    assert find(d, "commune:4:police").ack_within == "PT15M"
    assert not [t for t in d.targets if t.tier == "national" and t.agency == "police"]


@pytest.mark.parametrize("indicator", ["death", "crime"])
def test_police_follow_child_protection_on_death_or_crime_with_the_same_deadline(indicator):
    d = run(facts(category="EMOTIONAL", indicators=frozenset({indicator}), publicity="PA1"))
    assert d.severity == "P3"
    police = {(t.tier, t.role, t.ack_within, t.working_days)
              for t in d.targets if t.agency == "police"}
    assert police == {("commune", "act", "P1D", True), ("province", "act", "P1D", True)}
    assert "additions.police_with_child_protection" in d.matched_rules


def test_police_reach_national_when_national_child_protection_acts():
    d = run(facts(category="TRAFFICKING", publicity="PA2"))
    national = find(d, "national:VN:police")
    assert (national.role, national.ack_within) == ("act", "PT2H")
    # province police were inform in the PA2 column: act wins
    assert find(d, "province:1:police").role == "act"


def test_sex_abuse_adds_commune_health_within_one_hour():
    d = run(facts(category="SEX_ABUSE"))
    health = find(d, "commune:4:health")
    assert (health.role, health.ack_within, health.working_days) == ("act", "PT1H", False)
    assert health.rules == ["additions.sex_abuse.commune_health"]


def test_online_abuse_adds_province_cyber_police_and_informs_national():
    d = run(facts(category="ONLINE_ABUSE", setting="online"))
    assert d.severity == "P2"
    cyber = find(d, "province:1:cyber_police")
    assert (cyber.role, cyber.ack_within) == ("act", "PT4H")
    assert find(d, "national:VN:child_protection").role == "inform"


@pytest.mark.parametrize(("setting", "agency"), [
    ("school", "education"), ("health_facility", "health"),
    ("care_facility", "child_protection"), ("service_provider", "child_protection"),
])
def test_institutional_takes_the_province_child_protection_deadline(setting, agency):
    d = run(cell_facts("P2", "PA1", setting=setting))  # province child_protection acts in 4 h
    owner = find(d, f"province:1:{agency}")
    assert (owner.role, owner.ack_within) == ("act", "PT4H")


@pytest.mark.parametrize(("setting", "agency"), [
    ("school", "education"), ("health_facility", "health"),
    ("care_facility", "child_protection"), ("service_provider", "child_protection"),
])
def test_institutional_is_one_working_day_without_a_province_act_target(setting, agency):
    d = run(cell_facts("P1", "PA0", setting=setting))  # province child_protection only informed
    owner = find(d, f"province:1:{agency}")
    assert (owner.role, owner.ack_within, owner.working_days) == ("act", "P1D", True)
    assert owner.ack_due == datetime(2026, 11, 26, 9, 30, tzinfo=VN)


def test_non_institutional_settings_add_no_sector_owner():
    for setting in ("home", "online", "public", "other"):
        d = run(cell_facts("P3", "PA0", setting=setting))
        assert summary(d) == {C_CP_1WD}


def test_second_location_in_another_province_targets_both_communes_and_informs_national():
    d = run(cell_facts("P2", "PA0", other_locations=(ELSEWHERE,)))
    there = find(d, "commune:20242:child_protection")
    assert (there.role, there.ack_within) == ("act", "PT1H")
    assert "additions.other_province" in there.rules
    assert find(d, "commune:4:child_protection").role == "act"
    assert find(d, "national:VN:child_protection").role == "inform"
    assert not [t for t in d.targets if t.authority_id.startswith("province:48:")]


def test_second_location_in_the_same_province_is_not_an_addition():
    d = run(cell_facts("P2", "PA0", other_locations=(SAME_PROVINCE,)))
    assert summary(d) == MATRIX[("P2", "PA0")]
    assert "additions.other_province" not in d.matched_rules


def test_police_mirror_reaches_the_second_commune():
    d = run(facts(category="SEX_ABUSE", other_locations=(ELSEWHERE,)))
    assert find(d, "commune:20242:police").role == "act"


# --- one entry per authority ----------------------------------------------------------------


def test_act_beats_inform_for_the_same_authority():
    d = run(cell_facts("P1", "PA0", setting="care_facility"))
    [cp] = [t for t in d.targets if t.authority_id == "province:1:child_protection"]
    assert cp.role == "act"
    assert cp.rules == ["routing.P1.PA0", "additions.institutional.care_and_service"]


def test_inform_after_act_keeps_act():
    d = run(facts(category="ONLINE_ABUSE", publicity="PA2"))  # national acts 4 h, addition informs
    national = find(d, "national:VN:child_protection")
    assert (national.role, national.ack_within) == ("act", "PT4H")


def test_shortest_deadline_wins():
    d = run(cell_facts("P1", "PA2", setting="school"))
    # education: inform (matrix), act with the province deadline (addition)
    edu = find(d, "province:1:education")
    assert (edu.role, edu.ack_within) == ("act", "PT2H")


def test_shortest_deadline_wins_across_clock_and_working_days():
    data = PACK.model_dump(by_alias=True)
    data["additions"].append({"id": "extra.slow", "when": [{"category_in": ["EMOTIONAL"]}],
                              "add": [{"tier": "commune", "agency": "child_protection",
                                       "role": "act", "ack": {"working_days": 3}}]})
    data["additions"].append({"id": "extra.fast", "when": [{"category_in": ["EMOTIONAL"]}],
                              "add": [{"tier": "commune", "agency": "child_protection",
                                       "role": "act", "ack": {"within": "PT5M"}}]})
    pack = type(PACK).model_validate(data)
    d = decide(facts(), pack, DIRECTORY, AT)
    cp = find(d, "commune:4:child_protection")
    assert (cp.ack_within, cp.working_days) == ("PT5M", False)
    assert cp.rules == ["routing.P3.PA0", "extra.slow", "extra.fast"]


def test_each_authority_appears_once():
    d = run(facts(category="SEX_ABUSE", setting="care_facility", publicity="PA2",
                  indicators=frozenset({"crime", "death"}), other_locations=(ELSEWHERE,)))
    ids = [t.authority_id for t in d.targets]
    assert len(ids) == len(set(ids))


@pytest.mark.parametrize("ages,flagged", [((16,), True), ((9, 17), True), ((15,), False),
                                          ((0, 5), False)])
def test_a_child_of_16_or_17_is_flagged_and_nothing_else_changes(ages, flagged):
    # DOMAIN 2: a child in law is under 16; flag 16-17 (criminal procedure protects under 18).
    d = run(facts(child_ages=ages))
    assert ("flag.age_16_17" in d.matched_rules) is flagged
    plain = run(facts(child_ages=(15,)))
    if flagged:
        assert (d.severity, d.publicity, d.targets) == (plain.severity, plain.publicity,
                                                         plain.targets)
