"""CaseFacts from a single report: what the CLI and tests decide on (no identity is kept)."""

from schemas.decisions import CaseFacts
from schemas.reports import Report


def facts_from_report(report: Report, case_id: str = "C-TEST") -> CaseFacts:
    return CaseFacts(
        case_id=case_id,
        category=report.category,
        subcategory=report.subcategory,
        location=report.location,
        other_locations=tuple(report.other_locations),
        setting=report.setting,
        child_ages=tuple(report.child_ages),
        indicators=frozenset(report.indicators),
        publicity=report.publicity,
        linked_reports=(report.received_at,),
        first_received_at=report.received_at,
    )
