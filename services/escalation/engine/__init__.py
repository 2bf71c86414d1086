"""The pure escalation engine: no I/O, no clock reads (`at` is passed in).

decide() applies DOMAIN.md sections 3-5 as the rule pack states them: severity, publicity,
targets with roles and absolute acknowledgement deadlines, and the rules that fired.
"""

from .calendar import add_working_days, deadline, reminder_times
from .decide import decide, milestone_deadlines
from .facts import facts_from_report
from .publicity import most_in_window
from .severity import UnknownCategory, lead_category, rules_severity

__all__ = [
    "UnknownCategory",
    "add_working_days",
    "deadline",
    "decide",
    "facts_from_report",
    "lead_category",
    "milestone_deadlines",
    "most_in_window",
    "reminder_times",
    "rules_severity",
]
