"""The 2020 three-tier pack routes too: commune -> district -> province -> national."""

from datetime import datetime
from zoneinfo import ZoneInfo

import pytest

from schemas.decisions import CaseFacts, Decision
from schemas.reports import Location
from services.escalation.directory import build_directory
from services.escalation.engine import decide
from services.escalation.rulepack import load_pack

PACK = load_pack("vn2020")
DIRECTORY = build_directory(PACK)
AT = datetime(2026, 11, 25, 9, 30, tzinfo=ZoneInfo("Asia/Ho_Chi_Minh"))
HERE = Location(province_code=1, commune_code=4)
DISTRICT = DIRECTORY.id_for("district", "child_protection", HERE).split(":")[1]
ELSEWHERE = Location(province_code=48, commune_code=20242)


def run(category="EMOTIONAL", publicity="PA0", indicators=(), setting="home", **kw) -> Decision:
    f = CaseFacts(case_id="C-TEST", category=category, location=HERE, setting=setting,
                  child_ages=(10,), indicators=frozenset(indicators), publicity=publicity,
                  first_received_at=AT, **kw)
    return decide(f, PACK, DIRECTORY, AT)


def roles(d: Decision) -> set[tuple]:
    return {(t.authority_id, t.role, t.ack_within) for t in d.targets}


def test_tiers_climb_through_the_district():
    assert PACK.tiers == ["commune", "district", "province", "national"]
    assert PACK.next_tier("commune") == "district"
    assert PACK.next_tier("district") == "province"
    assert PACK.next_tier("national") is None


CASES = [
    ("P2 PA0", {"category": "PHYS_VIOLENCE"}, {
        ("commune:4:child_protection", "act", "PT1H"),
        (f"district:{DISTRICT}:child_protection", "inform", None)}),
    ("P2 PA1", {"category": "PHYS_VIOLENCE", "publicity": "PA1"}, {
        ("commune:4:child_protection", "act", "PT1H"),
        (f"district:{DISTRICT}:child_protection", "act", "PT2H"),
        ("province:1:child_protection", "inform", None)}),
    ("P3 PA2", {"publicity": "PA2"}, {
        ("commune:4:child_protection", "act", "P1D"),
        (f"district:{DISTRICT}:child_protection", "act", "P1D"),
        ("province:1:child_protection", "act", "P1D"),
        ("national:VN:child_protection", "inform", None)}),
    ("P1 PA0", {"indicators": {"immediate_danger"}}, {
        ("commune:4:child_protection", "act", "PT15M"),
        ("commune:4:police", "act", "PT15M"),
        (f"district:{DISTRICT}:child_protection", "act", "PT1H"),
        ("province:1:child_protection", "inform", None)}),
    ("P4 PA2", {"category": "HAZARD", "publicity": "PA2"}, {
        ("commune:4:child_protection", "act", "P3D"),
        (f"district:{DISTRICT}:child_protection", "act", "P1D")}),
    ("P5", {"category": "INFO", "publicity": "PA2"}, set()),
]


@pytest.mark.parametrize(("name", "kw", "expected"), CASES, ids=[c[0] for c in CASES])
def test_routes(name, kw, expected):
    assert roles(run(**kw)) == expected


def test_school_goes_to_the_district_education_division():
    d = run(category="PHYS_VIOLENCE", publicity="PA1", setting="school")
    assert (f"district:{DISTRICT}:education", "act", "PT2H") in roles(d)


def test_police_follow_child_protection_to_the_district():
    d = run(category="TRAFFICKING")
    assert (f"district:{DISTRICT}:police", "act", "PT1H") in roles(d)


def test_other_province_targets_the_other_commune_and_its_district():
    d = run(category="PHYS_VIOLENCE", publicity="PA1", other_locations=(ELSEWHERE,))
    there = DIRECTORY.id_for("district", "child_protection", ELSEWHERE)
    ids = {t.authority_id for t in d.targets}
    assert {"commune:20242:child_protection", there, "national:VN:child_protection"} <= ids


def test_district_authorities_chain_to_the_province():
    commune = DIRECTORY.get("commune:4:child_protection")
    district = DIRECTORY.get(commune.parent)
    assert district.tier == "district"
    assert district.parent == "province:1:child_protection"
    assert district.supervisors == [f"district:{DISTRICT}:people_committee"]
