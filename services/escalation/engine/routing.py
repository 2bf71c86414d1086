"""Targets (DOMAIN.md section 5): the matrix cell, then the additions, one entry per authority.

Routing runs in two steps:
- plan: which (tier, agency) at which place (0 = the incident's location, k = the k-th location
  named in another province), with which role, deadline and rules. A plan depends only on the
  severity, the publicity, the additions that fire and how many other-province locations there
  are, so it is worked out once per pack and reused (decide() runs thousands of times a second);
- place: resolve each slot to an authority through the directory, turn deadlines into absolute
  times from `at`, and merge slots that land on the same authority.
When rules make an authority both act and inform it is act, with the shortest deadline any rule
gives, compared as absolute times so that clock durations and working days compare fairly.
"""

from dataclasses import dataclass
from datetime import datetime
from typing import Any

from schemas.decisions import CaseFacts
from schemas.rulepack import Addition, Deadline, RulePack, TargetSpec
from services.escalation.directory import Directory

from .calendar import add_working_days
from .conditions import Situation, any_holds

Where = int  # 0: the incident's location; k: the k-th other location in another province


@dataclass(slots=True)
class _Slot:
    tier: str
    agency: str
    where: Where
    role: str
    acks: list[Deadline]  # candidate deadlines of an act slot; the earliest wins when placed
    rules: list[str]

    def fields(self, ack: Deadline | None) -> dict[str, Any]:
        """Target fields that do not depend on place or time (a fresh dict each call)."""
        return {
            "tier": self.tier,
            "agency": self.agency,
            "role": self.role,
            "ack_within": ack.iso if ack is not None else None,
            "working_days": ack is not None and ack.working_days is not None,
            "rules": self.rules,  # shared with the plan: never mutated after planning
        }

    def merge(self, role: str, acks: list[Deadline], rules: list[str]) -> None:
        self.rules.extend(r for r in rules if r not in self.rules)
        if role == "act":
            self.role = "act"  # act beats inform
            self.acks.extend([a for a in acks if a not in self.acks])


class _Plan:
    def __init__(self) -> None:
        self.slots: dict[tuple[str, str, Where], _Slot] = {}

    def add(self, tier: str, agency: str, where: Where, role: str, acks: list[Deadline],
            rules: list[str]) -> None:
        acks = acks if role == "act" else []
        slot = self.slots.get((tier, agency, where))
        if slot is None:
            self.slots[(tier, agency, where)] = _Slot(tier, agency, where, role, list(acks), list(rules))
        else:
            slot.merge(role, acks, rules)

    def add_spec(self, spec: TargetSpec, rules: list[str]) -> None:
        acks = [spec.ack] if spec.ack is not None else []
        if spec.ack_same_as is not None:
            same = self.slots.get((spec.ack_same_as.tier, spec.ack_same_as.agency, 0))
            if same is not None and same.role == "act":
                acks = same.acks
        self.add(spec.tier, spec.agency, 0, spec.role, acks, rules)


def plan(pack: RulePack, severity: str, publicity: str, s: Situation,
         elsewhere: int) -> tuple[list[_Slot], list[str]]:
    """The plan for this case, from the pack's memo: the additions that fire are part of the key."""
    fired = 0
    for i, addition in enumerate(pack.additions):
        if any_holds(addition.when, s):
            fired |= 1 << i
    key = ("routing-plan", severity, publicity, fired, elsewhere)
    found = pack.memo.get(key)
    if found is None:
        additions = tuple(a for i, a in enumerate(pack.additions) if fired & (1 << i))
        found = pack.memo[key] = _make_plan(pack, severity, publicity, additions, elsewhere)
    return found


def _make_plan(pack: RulePack, severity: str, publicity: str, additions: tuple[Addition, ...],
               elsewhere: int) -> tuple[list[_Slot], list[str]]:
    if not pack.severities[severity].alert:
        return [], []
    p = _Plan()
    fired: list[str] = []
    for rule_id, spec in pack.cell_targets(severity, publicity):
        if rule_id not in fired:
            fired.append(rule_id)
        p.add_spec(spec, [rule_id])
    for addition in additions:
        fired.append(addition.id)
        for spec in addition.add:
            p.add_spec(spec, [addition.id])
        for tier in addition.also_at_other_locations:
            for s in [s for s in p.slots.values() if s.tier == tier and s.where == 0]:
                for where in range(1, elsewhere + 1):
                    p.add(tier, s.agency, where, s.role, s.acks, s.rules + [addition.id])
        if addition.mirror is not None:
            of, agency = addition.mirror.of, addition.mirror.agency
            for s in [s for s in p.slots.values() if s.agency == of and s.role == "act"]:
                p.add(s.tier, agency, s.where, "act", s.acks, [addition.id])
    rank = pack.tier_rank
    slots = sorted(p.slots.values(), key=lambda s: (rank[s.tier], s.agency, s.role, s.where))
    return slots, fired


def route(facts: CaseFacts, severity: str, publicity: str, pack: RulePack, directory: Directory,
          at: datetime, s: Situation) -> tuple[list[dict[str, Any]], list[str]]:
    """Target fields (sorted by tier, agency, role, authority) and the routing rules that fired."""
    here = facts.location
    places = [here, *(loc for loc in facts.other_locations if loc.province_code != here.province_code)]
    slots, fired = plan(pack, severity, publicity, s, len(places) - 1)

    dues: dict[int, datetime] = {}  # by id(deadline): the pack outlives the decision

    def due(ack: Deadline) -> datetime:
        found = dues.get(id(ack))
        if found is None:
            if ack.working_days is None:
                found = at + ack.clock
            else:
                found = add_working_days(at, ack.working_days, pack.calendar)
            dues[id(ack)] = found
        return found

    placed: dict[str, dict[str, Any]] = {}
    for slot in slots:
        aid = directory.id_for(slot.tier, slot.agency, places[slot.where])
        acks = slot.acks
        ack = (acks[0] if len(acks) == 1 else min(acks, key=due)) if acks else None
        ack_due = due(ack) if ack is not None else None
        t = placed.get(aid)
        if t is None:
            placed[aid] = {**slot.fields(ack), "authority_id": aid, "ack_due": ack_due}
            continue
        # Two places landed on one authority (the national tier, say): merge as the plan does.
        t["rules"] = t["rules"] + [r for r in slot.rules if r not in t["rules"]]
        if ack_due is not None and (t["ack_due"] is None or ack_due < t["ack_due"]):
            t.update(slot.fields(ack), rules=t["rules"], ack_due=ack_due)

    targets = list(placed.values())  # the plan is sorted: with one place nothing moves
    if len(places) > 1:
        rank = pack.tier_rank
        targets.sort(key=lambda t: (rank[t["tier"]], t["agency"], t["role"], t["authority_id"]))
    return targets, fired
