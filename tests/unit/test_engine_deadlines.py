"""Deadlines: exact clock durations, VN working days in local time, reminders, milestones."""

from datetime import UTC, datetime, timedelta
from zoneinfo import ZoneInfo

import holidays
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from schemas.decisions import CaseFacts
from schemas.reports import Location
from services.escalation.directory import build_directory
from services.escalation.engine import deadline, decide, milestone_deadlines, reminder_times
from services.escalation.rulepack import load_pack

VN = ZoneInfo("Asia/Ho_Chi_Minh")
PACK = load_pack("default")
DIRECTORY = build_directory(PACK)
HERE = Location(province_code=1, commune_code=4)


def vn(*args) -> datetime:
    return datetime(*args, tzinfo=VN)


@pytest.mark.parametrize(("within", "delta"), [
    ("PT15M", timedelta(minutes=15)), ("PT2H", timedelta(hours=2)), ("PT12H", timedelta(hours=12)),
    ("P1D", timedelta(days=1)), ("P1DT12H", timedelta(days=1, hours=12)), ("P20D", timedelta(days=20)),
])
def test_clock_durations_are_exact(within, delta):
    start = vn(2026, 2, 14, 23, 50)  # a Saturday in the Lunar New Year holidays: irrelevant
    assert deadline(start, within) == start + delta


WORKING = [
    # (start, days, due) - same local time on the Nth next working day
    (vn(2026, 11, 25, 9, 30), 1, vn(2026, 11, 26, 9, 30)),  # Wed -> Thu
    (vn(2026, 11, 27, 16, 30), 1, vn(2026, 11, 30, 16, 30)),  # Fri -> Mon
    # From a day off the count starts at the next working day: all of Monday, due Tuesday 00:00
    (vn(2026, 11, 28, 10, 0), 1, vn(2026, 12, 1, 0, 0)),  # Sat -> the end of Mon
    (vn(2026, 11, 29, 1, 0), 1, vn(2026, 12, 1, 0, 0)),  # Sun 01:00 -> the end of Mon
    (vn(2026, 2, 17, 10, 0), 1, vn(2026, 2, 24, 0, 0)),  # Tết day -> the end of Mon 23 Feb
    (vn(2026, 11, 25, 9, 30), 3, vn(2026, 11, 30, 9, 30)),  # Wed -> Mon
    (vn(2026, 11, 23, 8, 0), 1, vn(2026, 11, 25, 8, 0)),  # Mon -> Wed: 24 Nov is Vietnam Cultural Day
    (vn(2026, 2, 13, 15, 0), 1, vn(2026, 2, 23, 15, 0)),  # Fri before Tết -> Mon after it
    (vn(2026, 8, 21, 10, 0), 1, vn(2026, 8, 22, 10, 0)),  # a substituted working Saturday
    (vn(2026, 8, 28, 10, 0), 1, vn(2026, 9, 3, 10, 0)),  # over 31 Aug and National Day
    (vn(2026, 12, 31, 11, 0), 1, vn(2027, 1, 4, 11, 0)),  # over New Year into the next year
    (vn(2026, 11, 25, 9, 30), 5, vn(2026, 12, 2, 9, 30)),  # the 5-working-day case plan
]


@pytest.mark.parametrize(("start", "days", "due"), WORKING)
def test_working_days(start, days, due):
    assert deadline(start, f"P{days}D", working_days=True) == due


def test_working_days_count_in_local_time_whatever_the_input_zone():
    start = datetime(2026, 11, 26, 23, 0, tzinfo=UTC)  # Friday 06:00 in Hà Nội
    due = deadline(start, "P1D", working_days=True)
    assert due == vn(2026, 11, 30, 6, 0)
    assert due.tzinfo == UTC
    saturday = datetime(2026, 11, 27, 23, 0, tzinfo=UTC)  # Saturday 06:00 in Hà Nội
    assert deadline(saturday, "P1D", working_days=True) == vn(2026, 12, 1, 0, 0)


@given(st.integers(0, 2 * 365 * 24 * 60), st.integers(1, 5))
@settings(max_examples=300, deadline=None)
def test_n_working_days_always_hold_n_days_of_working_time(minutes, days):
    # Whatever the start (a night, a weekend, Tết), the authority gets N whole working days.
    from services.escalation.engine.calendar import _working_spans

    start = vn(2026, 1, 1) + timedelta(minutes=minutes)
    due = deadline(start, f"P{days}D", working_days=True, cal=PACK.calendar)
    spans = _working_spans(start.replace(tzinfo=None), due.replace(tzinfo=None), PACK.calendar)
    assert sum((end - begin for begin, end in spans), timedelta()) == timedelta(days=days)


def test_working_days_must_be_whole_days():
    with pytest.raises(ValueError):
        deadline(vn(2026, 11, 25, 9, 30), "PT4H", working_days=True)


def test_naive_times_are_refused():
    with pytest.raises(ValueError):
        deadline(datetime(2026, 11, 25, 9, 30), "PT15M")


def test_reminders_at_fractions_of_the_window():
    start = vn(2026, 11, 25, 9, 30)
    due = deadline(start, "PT15M")
    assert reminder_times(start, due, PACK.reminder_fractions) == [
        start + timedelta(minutes=7, seconds=30), start + timedelta(minutes=12)]


def test_working_day_reminders_skip_the_weekend():
    start = vn(2026, 11, 27, 16, 0)  # Friday 16:00, one working day: due Monday 16:00
    due = deadline(start, "P1D", working_days=True)
    assert due == vn(2026, 11, 30, 16, 0)
    # 24 working hours: Friday's last 8, then Monday's first 16. Not Sunday 04:00.
    assert reminder_times(start, due, [0.5, 0.8], working_days=True) == [
        vn(2026, 11, 30, 4, 0), vn(2026, 11, 30, 11, 12)]


@settings(max_examples=200, deadline=None)
@given(st.datetimes(min_value=datetime(2026, 1, 1), max_value=datetime(2027, 12, 1)),
       st.integers(1, 10), st.lists(st.floats(0.01, 0.99), min_size=1, max_size=3))
def test_working_day_reminders_fall_on_working_days_in_order(local, days, fractions):
    start = local.replace(tzinfo=VN)
    due = deadline(start, f"P{days}D", working_days=True)
    fractions = sorted(fractions)
    times = reminder_times(start, due, fractions, working_days=True)
    assert len(times) == len(fractions)
    assert all(start <= a <= b <= due for a, b in zip(times, [*times[1:], due], strict=True))
    calendar = holidays.country_holidays("VN")
    first, due_local = start.date(), due.astimezone(VN)
    last = due_local.date() - timedelta(days=due_local.time() == datetime.min.time())
    if not any(calendar.is_working_day(first + timedelta(days=n))
               for n in range((last - first).days + 1)):
        return  # no working time in the window at all (New Year's Day 00:00 to 2 Jan 00:00)
    for at in times:
        assert calendar.is_working_day(at.astimezone(VN).date())


def test_ack_due_counts_from_the_decision_time():
    received = vn(2026, 11, 25, 9, 30)
    later = received + timedelta(hours=3)
    f = CaseFacts(case_id="C-TEST", category="EMOTIONAL", location=HERE, setting="home",
                  child_ages=(10,), indicators=frozenset({"immediate_danger"}),
                  first_received_at=received)
    d = decide(f, PACK, DIRECTORY, later)
    assert {t.ack_due for t in d.targets if t.role == "act"} == {later + timedelta(minutes=15)}


def test_milestones_count_from_the_first_receipt():
    first = vn(2026, 11, 25, 9, 30)
    p1 = CaseFacts(case_id="C-TEST", category="EMOTIONAL", location=HERE, setting="home",
                   child_ages=(10,), first_received_at=first)
    assert milestone_deadlines(p1, "P1", PACK) == {"emergency_measure": first + timedelta(hours=12)}
    assert milestone_deadlines(p1, "P3", PACK) == {
        "initial_assessment": vn(2026, 11, 30, 9, 30),  # 3 working days from a Wednesday
        "case_plan": vn(2026, 12, 2, 9, 30),
    }
    crime = p1.model_copy(update={"indicators": frozenset({"crime"})})
    assert milestone_deadlines(crime, "P1", PACK)["police_verification"] == first + timedelta(days=20)
    assert milestone_deadlines(p1, "P5", PACK) == {}


def test_the_packs_days_off_and_working_days_win_over_the_holidays_package():
    """Dispatch 12729/VPCP-KGVX (25/12/2025): Friday 2/1/2026 off, Saturday 10/1/2026 worked.
    The package knew neither, so a P3 received the Friday before was due two days late."""
    assert not holidays.country_holidays("VN").get(datetime(2026, 1, 2).date())  # unknown there
    cal = PACK.calendar
    assert deadline(vn(2026, 1, 9, 16), "P1D", True, cal=cal) == vn(2026, 1, 10, 16)
    assert deadline(vn(2025, 12, 31, 16), "P3D", True, cal=cal) == vn(2026, 1, 7, 16)
    # Without the pack's days, as the package alone counts them.
    assert deadline(vn(2026, 1, 9, 16), "P1D", True) == vn(2026, 1, 12, 16)
    # Reminders count the working Saturday's office hours and skip the Friday off.
    [half] = reminder_times(vn(2026, 1, 9, 16), vn(2026, 1, 10, 16), [0.5], True, cal=cal)
    assert half == vn(2026, 1, 10, 11, 15)


def test_working_day_reminders_fall_in_office_hours():
    """Counted over whole days, a P3 received on Friday at 16:00 was reminded on Monday at
    04:00, and one received at 01:00 at 19:00 and 02:12: SMS nobody at a commune reads."""
    cal = PACK.calendar
    friday = vn(2026, 3, 6, 16)
    due = deadline(friday, "P1D", True, cal=cal)
    assert reminder_times(friday, due, [0.5, 0.8], True, cal=cal) == [
        vn(2026, 3, 9, 11, 15), vn(2026, 3, 9, 14, 6)]  # Monday 07:30 + 9.5 h of office time
    night = vn(2026, 3, 2, 1)
    assert reminder_times(night, deadline(night, "P1D", True, cal=cal), [0.5, 0.8], True,
                          cal=cal) == [vn(2026, 3, 2, 12, 15), vn(2026, 3, 2, 15, 6)]
    # A clock deadline's reminders run around the clock: a P2 at 23:00 is reminded at 23:30.
    late = vn(2026, 3, 2, 23)
    assert reminder_times(late, late + timedelta(hours=1), [0.5], cal=cal) == [
        late + timedelta(minutes=30)]


@given(st.integers(0, 2 * 365 * 24 * 60), st.integers(1, 5))
@settings(max_examples=300, deadline=None)
def test_working_day_reminders_are_in_office_hours_on_working_days_before_the_deadline(
        minutes, days):
    from services.escalation.engine.calendar import _is_working_day

    cal = PACK.calendar
    start = vn(2026, 1, 1) + timedelta(minutes=minutes)
    due = deadline(start, f"P{days}D", working_days=True, cal=cal)
    for at in reminder_times(start, due, PACK.reminder_fractions, True, cal=cal):
        local = at.astimezone(VN)
        assert start < at < due
        assert _is_working_day(local.date(), cal)
        assert cal.office_hours[0] <= local.time() <= cal.office_hours[1]
