"""Which transfers of a duty are allowed (pure). Intake refuses the others with a 422 naming
`to_authority_id`; escalation, which holds the case's duties as they are, ignores any that
reach it all the same (several sent at once, before the first had taken effect)."""

from collections.abc import Iterable

from services.escalation.milestones import Duty


def refusal(sender: str, recipient: str, duties: Iterable[Duty],
            supervisor_agency: str | None) -> str | None:
    """Why `sender` may not pass its duty to `recipient`, or None. `duties`: the case's act
    targets."""
    s_tier, _, s_agency = sender.split(":", 2)
    r_tier, _, r_agency = recipient.split(":", 2)
    if recipient == sender:
        return "transfer to another authority"
    if r_tier != s_tier:
        # Sideways (another commune, another agency); a higher tier is reached by escalation
        # when nobody answers, not by handing the duty up.
        return f"a transfer goes to another {s_tier} authority; higher tiers are reached by escalation"
    if r_agency == supervisor_agency:
        return f"{recipient} supervises the officers of its unit; it does not take a case's duty"
    if r_agency != s_agency and any(d.authority_id == recipient and d.active for d in duties):
        # Its one acknowledgement would then answer for two agencies (DOMAIN.md section 5).
        return f"{recipient} must already act on this case for its own agency"
    return None
