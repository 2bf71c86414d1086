"""Replay: what a draft rule pack would change on recorded cases. Pure: facts in, differences out.

Both sides are decided afresh from the same facts at the same moment, once under the pack in force
and once under the draft, so a difference is the rule change's doing and nothing else (not an
escalation or a transfer that happened to the case since).
"""

from dataclasses import dataclass, field
from datetime import datetime

from schemas.decisions import CaseFacts, Decision
from schemas.rulepack import RulePack
from services.escalation.engine import decide, milestone_deadlines


@dataclass
class CaseChange:
    case_id: str
    severity: tuple[str, str] | None = None  # (in force, draft) when they differ
    publicity: tuple[str, str] | None = None
    targets_added: list[str] = field(default_factory=list)  # "role:authority_id"
    targets_removed: list[str] = field(default_factory=list)
    targets_changed: list[str] = field(default_factory=list)  # role or deadline differs
    # "emergency_measure: <due> -> <due>" (None where the pack holds the case to no such step)
    milestones_changed: list[str] = field(default_factory=list)

    def __bool__(self) -> bool:
        return bool(self.severity or self.publicity or self.targets_added
                    or self.targets_removed or self.targets_changed or self.milestones_changed)


@dataclass
class ReplayReport:
    current_version: str
    draft_version: str
    compared: int = 0
    changed: int = 0
    failed: list[str] = field(default_factory=list)  # cases the draft cannot decide (unknown code)
    cases: list[CaseChange] = field(default_factory=list)
    # What changes for every case alike, so no case shows it: the escalation policy, and global
    # rules (the 12-hour rule) dropped or changed.
    pack_changes: list[str] = field(default_factory=list)


def pack_changes(current: RulePack, draft: RulePack) -> list[str]:
    out = []
    for name in type(current.escalation).model_fields:
        old, new = getattr(current.escalation, name), getattr(draft.escalation, name)
        if old != new:
            out.append(f"escalation.{name}: {old} -> {new}")
    old_rules = {r.id: r for r in current.global_rules}
    new_rules = {r.id: r for r in draft.global_rules}
    out += [f"global rule {i} removed" for i in sorted(old_rules.keys() - new_rules.keys())]
    out += [f"global rule {i} added" for i in sorted(new_rules.keys() - old_rules.keys())]
    out += [f"global rule {i} changed" for i in sorted(old_rules.keys() & new_rules.keys())
            if old_rules[i] != new_rules[i]]
    return out


def _targets(d: Decision) -> dict[str, tuple[str, str | None]]:
    return {t.authority_id: (t.role, t.ack_within) for t in d.targets}


def _milestones(facts: CaseFacts, d: Decision, pack: RulePack,
                since: datetime | None = None) -> dict[str, str]:
    return {m: due.isoformat()
            for m, due in milestone_deadlines(facts, d.severity, pack, since).items()}


def compare(case_id: str, before: Decision, after: Decision,
            milestones: tuple[dict[str, str], dict[str, str]] = ({}, {})) -> CaseChange:
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
    was, will = milestones
    change.milestones_changed = sorted(f"{m}: {was.get(m)} -> {will.get(m)}"
                                       for m in was.keys() | will.keys() if was.get(m) != will.get(m))
    return change


def replay(cases: list[tuple[str, CaseFacts]], current: RulePack, current_directory,
           draft: RulePack, draft_directory, at: datetime, list_limit: int = 500) -> ReplayReport:
    report = ReplayReport(current.version, draft.version,
                          pack_changes=pack_changes(current, draft))
    for case_id, facts in cases:
        report.compared += 1
        try:
            after = decide(facts, draft, draft_directory, at)
        except (KeyError, ValueError):  # a category or place the draft does not know
            report.failed.append(case_id)
            continue
        before = decide(facts, current, current_directory, at)
        held = _milestones(facts, before, current)
        # One the draft brings counts from when it takes effect, as escalation counts it.
        brought = _milestones(facts, after, draft, max(at, facts.first_received_at))
        will = {m: due if m in held else brought[m]
                for m, due in _milestones(facts, after, draft).items()}
        change = compare(case_id, before, after, (held, will))
        if change:
            report.changed += 1
            if len(report.cases) < list_limit:
                report.cases.append(change)
    return report
