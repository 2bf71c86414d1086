"""Public attention (DOMAIN.md section 4) on the default pack."""

from datetime import datetime, timedelta
from zoneinfo import ZoneInfo

import pytest

from schemas.decisions import CaseFacts
from schemas.reports import Location
from services.escalation.directory import build_directory
from services.escalation.engine import decide, most_in_window
from services.escalation.rulepack import load_pack

PACK = load_pack("default")
DIRECTORY = build_directory(PACK)
AT = datetime(2026, 11, 25, 9, 30, tzinfo=ZoneInfo("Asia/Ho_Chi_Minh"))
HERE = Location(province_code=1, commune_code=4)
H = timedelta(hours=1)


def publicity(publicity="PA0", indicators=(), setting="home", reports=(AT,),
              floor="PA0") -> tuple[str, list[str]]:
    f = CaseFacts(case_id="C-TEST", category="EMOTIONAL", location=HERE, setting=setting,
                  child_ages=(10,), indicators=frozenset(indicators), publicity=publicity,
                  linked_reports=tuple(reports), first_received_at=min(reports))
    d = decide(f, PACK, DIRECTORY, AT, floor)
    return d.publicity, d.matched_rules


def test_none_by_default():
    assert publicity() == ("PA0", ["severity.default.EMOTIONAL", "routing.P3.PA0"])


@pytest.mark.parametrize("level", ["PA1", "PA2"])
def test_set_by_a_person(level):
    pub, rules = publicity(level)
    assert pub == level and "publicity.set_by_person" in rules


def test_media_indicators():
    assert publicity(indicators={"media_local"})[0] == "PA1"
    assert publicity(indicators={"media_national"})[0] == "PA2"
    assert publicity(indicators={"media_local", "media_national"})[0] == "PA2"


def test_never_below_what_a_person_set():
    assert publicity("PA2", indicators={"media_local"})[0] == "PA2"


def test_three_correlated_reports_within_24h_make_pa1():
    pub, rules = publicity(reports=(AT, AT + 5 * H, AT + 24 * H))
    assert pub == "PA1" and "publicity.correlated.3_in_24h" in rules


def test_three_reports_spread_over_more_than_24h_do_not():
    assert publicity(reports=(AT, AT + 12 * H, AT + 24 * H + timedelta(seconds=1)))[0] == "PA0"


def test_ten_correlated_reports_make_pa2():
    pub, rules = publicity(reports=[AT + i * H for i in range(10)])
    assert pub == "PA2"
    assert {"publicity.correlated.3_in_24h", "publicity.correlated.10_in_24h"} <= set(rules)


def test_the_busiest_window_counts_not_the_total():
    spread = [AT + i * 30 * H for i in range(12)]  # 12 reports, never 2 in one day
    assert publicity(reports=spread)[0] == "PA0"
    assert most_in_window(tuple(spread), 24 * H) == 1
    burst = spread + [AT + 30 * H + i * timedelta(minutes=1) for i in range(1, 9)]
    assert most_in_window(tuple(burst), 24 * H) == 9
    assert publicity(reports=burst)[0] == "PA1"


@pytest.mark.parametrize("setting", ["school", "care_facility", "health_facility", "service_provider"])
def test_institutional_with_staff_suspected_goes_one_level_up(setting):
    assert publicity(indicators={"staff_suspected"}, setting=setting)[0] == "PA1"
    assert publicity("PA1", indicators={"staff_suspected"}, setting=setting)[0] == "PA2"
    assert publicity("PA2", indicators={"staff_suspected"}, setting=setting)[0] == "PA2"
    pub, rules = publicity(indicators={"staff_suspected", "media_local"}, setting=setting)
    assert pub == "PA2" and "publicity.institutional_staff_suspected" in rules


def test_the_case_level_so_far_is_a_floor_not_stepped_up():
    # A re-decision passes the case's level (PA1 from the step-up): it stays PA1, not PA2.
    pub, rules = publicity(indicators={"staff_suspected"}, setting="school", floor="PA1")
    assert pub == "PA1"
    assert "publicity.set_by_person" not in rules and "publicity.kept" not in rules
    # Kept when the rules give less now (a new pack), and said so.
    pub, rules = publicity(floor="PA2")
    assert pub == "PA2" and "publicity.kept" in rules and "publicity.set_by_person" not in rules


def test_staff_suspected_outside_an_institution_changes_nothing():
    assert publicity(indicators={"staff_suspected"}, setting="home")[0] == "PA0"


def test_publicity_never_lowers_severity():
    f = CaseFacts(case_id="C-TEST", category="SEX_ABUSE", location=HERE, setting="home",
                  child_ages=(10,), publicity="PA2", first_received_at=AT)
    assert decide(f, PACK, DIRECTORY, AT).severity == "P1"
