"""Milestone deadlines from the pack, counted from the first receipt (DOMAIN.md sections 2-3)."""

from datetime import UTC, datetime, timedelta

import pytest

from schemas.decisions import CaseFacts
from schemas.reports import Location
from services.escalation.engine import milestone_deadlines
from services.escalation.rulepack import load_pack

FIRST = datetime(2026, 11, 30, 2, 0, tzinfo=UTC)  # Monday 09:00 in Ha Noi


def facts(category="PHYS_VIOLENCE", indicators=()) -> CaseFacts:
    return CaseFacts(case_id="C-TEST", category=category, location=Location(
        province_code=1, commune_code=4), setting="home", child_ages=(9,),
        indicators=frozenset(indicators), first_received_at=FIRST)


@pytest.mark.parametrize("pack", ["default", "vn2020"])
def test_deadlines_per_severity(pack):
    p = load_pack(pack)
    p1 = milestone_deadlines(facts(), "P1", p)
    assert p1["emergency_measure"] == FIRST + timedelta(hours=12)
    assert "initial_assessment" not in p1
    p2 = milestone_deadlines(facts(), "P2", p)
    assert p2["initial_assessment"] == FIRST + timedelta(hours=24)
    assert p2["case_plan"] == FIRST + timedelta(days=7)  # 5 working days from a Monday
    p3 = milestone_deadlines(facts(), "P3", p)
    assert p3["initial_assessment"] == FIRST + timedelta(days=3)  # Monday -> Thursday
    assert "emergency_measure" not in p3


@pytest.mark.parametrize(("category", "indicators"), [
    ("SEX_ABUSE", ()), ("TRAFFICKING", ()), ("PHYS_VIOLENCE", ("crime",))])
def test_a_crime_adds_police_verification(category, indicators):
    p = load_pack("default")
    due = milestone_deadlines(facts(category, indicators), "P1", p)
    assert due["police_verification"] == FIRST + timedelta(days=20)
    assert "police_verification" not in milestone_deadlines(facts(), "P2", p)


def test_a_step_is_named_from_the_pack_and_unnamed_when_the_pack_has_none():
    from services.escalation.milestones import rule

    pack = load_pack("default")
    measure = rule("emergency_measure", pack)
    assert (measure.label, measure.name) == ("Biện pháp bảo vệ khẩn cấp", "Emergency protection measure")
    assert rule("initial_assessment", pack).label == "Đánh giá ban đầu"  # a step with two rules
    assert rule("case_closed", pack) is None
