"""Deadlines: clock durations are exact; working days follow the VN calendar in local time.

A working-day deadline ends at the same local time on the Nth next working day: a P3 report
received on Friday 16:00 with one working day to acknowledge is due Monday 16:00 (a holiday on
Monday moves it to Tuesday). One received on a weekend or a holiday counts from the next working
day's start: Sunday 01:00 plus one working day is Tuesday 00:00, the whole of Monday. Weekends
and public holidays come from the `holidays` package, including its substituted working Saturdays,
and from the pack's own `days_off` and `working_days` (the government's decisions the package
does not know), which win.
"""

from datetime import date, datetime, time, timedelta
from functools import cache, lru_cache
from zoneinfo import ZoneInfo

import holidays

from schemas.rulepack import Calendar, parse_clock_duration

VN = Calendar()  # Asia/Ho_Chi_Minh, the VN holidays, no days of the pack's own


@cache
def _calendar(country: str) -> holidays.HolidayBase:
    # Years are added on first lookup and kept: pure and deterministic, no I/O.
    return holidays.country_holidays(country)


@cache
def _zone(name: str) -> ZoneInfo:
    return ZoneInfo(name)


def _require_aware(moment: datetime) -> None:
    if moment.tzinfo is None or moment.utcoffset() is None:
        raise ValueError(f"{moment.isoformat()} has no time zone")


@lru_cache(maxsize=8192)
def _is_working_day(day: date, cal: Calendar) -> bool:
    # The package's check does its work afresh on each call, and a working-day window asks it
    # once per day (docs/performance.md, tenth round).
    if day in cal.days_off:
        return False
    return day in cal.working_days or _calendar(cal.holidays_country).is_working_day(day)


@lru_cache(maxsize=8192)
def _nth_working_day_after(day: date, days: int, cal: Calendar) -> date:
    counted = 0
    while counted < days:
        day += timedelta(days=1)
        if _is_working_day(day, cal):
            counted += 1
    return day


def add_working_days(start: datetime, days: int, cal: Calendar = VN) -> datetime:
    """The same local time on the Nth next working day. From a weekend or a holiday the count
    starts at the next working day's midnight, as for a paper received on a day off: one working
    day from Sunday night is the whole of Monday (due Tuesday 00:00), not Monday until 01:00."""
    _require_aware(start)
    local = start.astimezone(_zone(cal.timezone))
    if not _is_working_day(local.date(), cal):
        first = _nth_working_day_after(local.date(), 1, cal)
        local = datetime.combine(first, time(0), tzinfo=local.tzinfo)
    day = _nth_working_day_after(local.date(), days, cal)
    return datetime.combine(day, local.timetz()).astimezone(start.tzinfo)


def deadline(start: datetime, within: str, working_days: bool = False, *,
             cal: Calendar = VN) -> datetime:
    """When a deadline `within` (ISO-8601, e.g. PT15M; P3D with working_days=True) from `start` ends."""
    _require_aware(start)
    span = parse_clock_duration(within)
    if not working_days:
        return start + span
    if span.seconds or span.microseconds:
        raise ValueError(f"working-day deadline {within!r} must be whole days")
    return add_working_days(start, span.days, cal)


def reminder_times(start: datetime, due: datetime, fractions: list[float],
                   working_days: bool = False, *, cal: Calendar = VN) -> list[datetime]:
    """Reminder moments at these fractions of the span from start to due (e.g. [0.5, 0.8]).
    For a working-day deadline, fractions of the working time in it: weekends and holidays do
    not count, so a reminder never falls on a day nobody is at the desk; with the pack's
    `office_hours`, nor at an hour nobody is."""
    span = due - start
    if not working_days:
        return [start + span * f for f in fractions]
    _require_aware(start)
    zone = _zone(cal.timezone)
    spans = _working_spans(start.astimezone(zone).replace(tzinfo=None),
                           due.astimezone(zone).replace(tzinfo=None), cal)
    if cal.office_hours and (open_ := _office(spans, *cal.office_hours)):
        spans = open_
    total = sum((end - begin for begin, end in spans), timedelta())
    if not total:
        return [start + span * f for f in fractions]
    out = []
    for f in fractions:
        left, at = total * f, spans[-1][1]
        for begin, end in spans:
            if left < end - begin:  # at a span's very end: the next working day's start
                at = begin + left
                break
            left -= end - begin
        out.append(at.replace(tzinfo=zone).astimezone(start.tzinfo))
    return out


def _working_spans(start: datetime, due: datetime, cal: Calendar) -> list[tuple[datetime, datetime]]:
    """The parts of [start, due] (local, naive) that fall on working days."""
    spans, day = [], start.date()
    while day <= due.date():
        if _is_working_day(day, cal):
            midnight = datetime.combine(day, datetime.min.time())
            begin, end = max(start, midnight), min(due, midnight + timedelta(days=1))
            if end > begin:
                spans.append((begin, end))
        day += timedelta(days=1)
    return spans


def _office(spans: list[tuple[datetime, datetime]], opens: time,
            closes: time) -> list[tuple[datetime, datetime]]:
    """The parts of working-day spans within office hours."""
    out = []
    for begin, end in spans:
        day = begin.date()
        begin = max(begin, datetime.combine(day, opens))
        end = min(end, datetime.combine(day, closes))
        if end > begin:
            out.append((begin, end))
    return out
