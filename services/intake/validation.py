"""Checks a report's codes against the active rule pack and the administrative units.

Pydantic checks the shape; this checks meaning. Each problem names its field, FastAPI-style.
"""

from datetime import datetime, timedelta
from functools import cache

from vietnam_provinces import Province, Ward

from schemas.reports import Location, Report

CLOCK_SKEW = timedelta(minutes=5)
# A report is entered when the hotline or a commune point receives it. An older received_at is a
# typo (a wrong year would make every deadline overdue at once).
MAX_AGE = timedelta(days=30)


@cache
def _units() -> tuple[frozenset[int], dict[int, int]]:
    provinces = frozenset(int(p.code) for p in Province.iter_all())
    commune_province = {int(w.code): int(w.province_code) for w in Ward.iter_all()}
    return provinces, commune_province


def province_of(kind: str, code: int) -> int | None:
    """The province of a province or commune code; None when there is no such unit."""
    provinces, commune_province = _units()
    if kind == "province":
        return code if code in provinces else None
    return commune_province.get(code)


def field_error(loc: tuple, msg: str, kind: str = "value_error") -> dict:
    """One problem in FastAPI's own 422 shape: the field's path in the body, what is wrong."""
    return {"loc": ["body", *loc], "msg": msg, "type": kind}


def check_location(loc: tuple, location: Location) -> list[dict]:
    provinces, commune_province = _units()
    if location.province_code not in provinces:
        return [field_error((*loc, "province_code"), f"unknown province code {location.province_code}")]
    province = commune_province.get(location.commune_code)
    if province is None:
        return [field_error((*loc, "commune_code"), f"unknown commune code {location.commune_code}")]
    if province != location.province_code:
        return [field_error((*loc, "commune_code"),
                       f"commune {location.commune_code} is in province {province}, "
                       f"not {location.province_code}")]
    return []


def check_codes(pack, category: str | None, subcategory: str | None,
                indicators: list[str]) -> list[dict]:
    """Codes the active pack does not know. The message never repeats what was sent: it could
    be anything typed in the wrong field (a name), and answers end up in proxies' logs."""
    errors = []
    if category is not None and category not in pack.category_codes:
        errors.append(field_error(("category",), "unknown category; expected one of "
                                                 f"{', '.join(sorted(pack.category_codes))}"))
    elif subcategory is not None and subcategory not in pack.subcategories(category):
        known = ", ".join(sorted(pack.subcategories(category))) or "none"
        errors.append(field_error(("subcategory",), f"unknown subcategory for {category} "
                                                    f"(it has: {known})"))
    for i, code in enumerate(indicators):
        if code not in pack.indicator_codes:
            errors.append(field_error(("indicators", i), "unknown indicator"))
    return errors


def check_report(report: Report, pack, now: datetime) -> list[dict]:
    errors = check_codes(pack, report.category, report.subcategory, report.indicators)
    errors += check_location(("location",), report.location)
    for i, other in enumerate(report.other_locations):
        errors += check_location(("other_locations", i), other)
    if report.new_case and report.link_case_id:
        errors.append(field_error(("new_case",), "cannot be true with link_case_id: a report "
                                                 "either opens a case or joins one"))
    if report.received_at > now + CLOCK_SKEW:
        errors.append(field_error(("received_at",), "is in the future"))
    elif report.received_at < now - MAX_AGE:
        errors.append(field_error(("received_at",), f"is more than {MAX_AGE.days} days ago; "
                                               "enter the time the report was received"))
    return errors
