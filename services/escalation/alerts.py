"""What the escalation service tells: alerts to authorities (AlertRequested, on the alerts
topic) and the case's events (on the cases topic), both through the transactional outbox."""

from sqlalchemy.ext.asyncio import AsyncSession

from schemas.directory import Authority
from schemas.events import AlertRequested, Envelope, Label, Topics
from services.common import outbox
from services.escalation import milestones
from services.escalation.engine import lead_category
from services.escalation.store import EscalationCase, EscalationMilestone, EscalationTarget

SERVICE = "escalation"
SOURCE = "beacon/escalation"


class Alerts:
    """Part of the escalation service (handlers.Escalation), whose `rt` it uses."""

    def _alerting(self, severity: str) -> bool:
        return severity not in self.rt.pack.silent

    def _alert(self, session, case: EscalationCase, row: EscalationTarget, kind: str,
               to: str | None = None, suffix: str = "",
               milestone: EscalationMilestone | None = None,
               about: tuple[str, str] | None = None, cause: str | None = None,
               previous_severity: str | None = None, from_authority: str | None = None,
               told_of: tuple[list[str], str | None] | None = None) -> None:
        """`milestone`: the alert is about that step's deadline, not about acknowledging.
        `about`: for a supervisor or the tier up, the authority that missed `row`'s deadline
        or could not be reached, and which of the two. `cause`: why an authority already on
        the case is alerted again (schemas.events.AlertRequested). `told_of`: for a breach,
        the supervisors and the tier up told of it (Breaches._told_of), which its message
        names: a pack may tell neither, and the national tier has no tier above."""
        recipient = self.rt.directory.get(to or row.authority_id)
        alert_id = ":".join(p for p in (case.case_id, recipient.id, kind, suffix) if p)
        # News of the close, a supervisor told of an officer's silence, the tier up told of the
        # tier below's when it has acknowledged the case itself, or an authority that has
        # acknowledged told the case got more severe: the recipient has nothing to acknowledge
        # (a supervisor is not a target of the case). The tier up was asked to acknowledge
        # again, by a deadline it had met. A step to take (`milestone`) is still a duty.
        told = kind in ("closed", "supervisor") or (row.acked_at is not None and (
            kind == "escalated" or (cause == "raised" and milestone is None)))
        # Nor a deadline to acknowledge by, once acknowledged: the tier up was shown the one it
        # had met, as if to meet it again, and the notifier retried the alert until then. A
        # supervisor is shown the one missed; of a missed step, the step's (milestone_due).
        due = (None if kind == "closed" or row.acked_at is not None
               or (kind == "supervisor" and milestone is not None) else row.ack_due)
        lead = lead_category(case.facts["category"], case.facts.get("other_categories", ()),
                             self.rt.pack)
        category = self.rt.pack.categories.get(lead)
        agency = self.rt.pack.agencies.get(recipient.agency)
        step = milestones.rule(milestone.milestone, self.rt.pack) if milestone else None
        about_authority = self._known(about[0]) if about else None
        sender = self._known(from_authority) if from_authority else None
        supervisors, parent = told_of or ([], None)
        up = self._known(parent) if parent else None
        self._emit(session, AlertRequested(
            alert_id=alert_id, case_id=case.case_id, authority_id=recipient.id,
            tier=recipient.tier, agency=recipient.agency, role="inform" if told else row.role,
            kind=kind, category=lead, severity=case.severity,
            publicity=case.publicity, ack_due=due,
            contacts=recipient.contacts,
            rulepack_version=case.rulepack_version,
            milestone=milestone.milestone if milestone else None,
            milestone_label=step.label if step else None,
            milestone_due=milestone.due_at if milestone else None,
            milestone_name=step.name if step else None,
            about_authority_id=about[0] if about else None,
            about_reason=about[1] if about else None,
            about_tier=about_authority.tier if about_authority else None,
            tier_label=self._tier_label(recipient.tier),
            about_tier_label=self._tier_label(about_authority.tier) if about_authority else None,
            told_supervisors=bool(supervisors) if told_of is not None else None,
            told_tier=up.tier if up else None,
            told_tier_label=self._tier_label(up.tier) if up else None,
            category_label=Label(vi=category.label, en=category.name) if category else None,
            agency_label=Label(vi=agency.label, en=agency.name) if agency else None,
            setting=case.facts.get("setting"),
            authority_name=recipient.name,
            about_authority_name=about_authority.name if about_authority else None,
            cause=cause, previous_severity=previous_severity,
            from_authority_id=from_authority,
            from_authority_name=sender.name if sender else None,
        ), topic=Topics.ALERTS)

    def _tier_label(self, tier: str) -> Label | None:
        """The pack's names of a tier; None when it gives none (the notifier has its own)."""
        given = self.rt.pack.tier_names.get(tier)
        return Label(vi=given.label, en=given.name) if given else None

    def _known(self, authority_id: str) -> Authority | None:
        try:
            return self.rt.directory.get(authority_id)
        except KeyError:  # routed under an earlier pack or directory: its id is all there is
            return None

    def _emit(self, session: AsyncSession, data, topic: str = Topics.CASES) -> None:
        outbox.add(session, SERVICE, self.rt.settings.topic(topic), Envelope.wrap(data, SOURCE))
