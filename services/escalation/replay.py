"""Replay: what a draft rule pack would change on recorded cases. Pure: facts in, differences out.

Both sides are decided afresh from the same facts at the same moment, once under the pack in force
and once under the draft, so a difference is the rule change's doing and nothing else (not an
escalation or a transfer that happened to the case since).
"""

from dataclasses import dataclass, field
from datetime import datetime

from schemas.decisions import CaseFacts, Decision
from schemas.rulepack import RulePack
from services.escalation.engine import decide


@dataclass
class CaseChange:
    case_id: str
    severity: tuple[str, str] | None = None  # (in force, draft) when they differ
    publicity: tuple[str, str] | None = None
    targets_added: list[str] = field(default_factory=list)  # "role:authority_id"
    targets_removed: list[str] = field(default_factory=list)
    targets_changed: list[str] = field(default_factory=list)  # role or deadline differs

    def __bool__(self) -> bool:
        return bool(self.severity or self.publicity or self.targets_added
                    or self.targets_removed or self.targets_changed)


@dataclass
class ReplayReport:
    current_version: str
    draft_version: str
    compared: int = 0
    changed: int = 0
    failed: list[str] = field(default_factory=list)  # cases the draft cannot decide (unknown code)
    cases: list[CaseChange] = field(default_factory=list)


def _targets(d: Decision) -> dict[str, tuple[str, str | None]]:
    return {t.authority_id: (t.role, t.ack_within) for t in d.targets}


def compare(case_id: str, before: Decision, after: Decision) -> CaseChange:
    change = CaseChange(case_id)
    if before.severity != after.severity:
        change.severity = (before.severity, after.severity)
    if before.publicity != after.publicity:
        change.publicity = (before.publicity, after.publicity)
    old, new = _targets(before), _targets(after)
    change.targets_added = sorted(f"{new[a][0]}:{a}" for a in new.keys() - old.keys())
    change.targets_removed = sorted(f"{old[a][0]}:{a}" for a in old.keys() - new.keys())
    change.targets_changed = sorted(
        f"{old[a][0]}->{new[a][0]}:{a}" if old[a][0] != new[a][0] else f"{new[a][0]}:{a}"
        for a in old.keys() & new.keys() if old[a] != new[a])
    return change


def replay(cases: list[tuple[str, CaseFacts]], current: RulePack, current_directory,
           draft: RulePack, draft_directory, at: datetime, list_limit: int = 500) -> ReplayReport:
    report = ReplayReport(current.version, draft.version)
    for case_id, facts in cases:
        report.compared += 1
        try:
            after = decide(facts, draft, draft_directory, at)
        except (KeyError, ValueError):  # a category or place the draft does not know
            report.failed.append(case_id)
            continue
        before = decide(facts, current, current_directory, at)
        change = compare(case_id, before, after)
        if change:
            report.changed += 1
            if len(report.cases) < list_limit:
                report.cases.append(change)
    return report
