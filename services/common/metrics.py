"""Prometheus metrics, served at /metrics."""

from prometheus_client import Counter, Histogram

REPORTS = Counter("beacon_reports_accepted_total", "Reports accepted (202)", ["new_case"])
PUBLISH_FAILURES = Counter("beacon_intake_publish_failures_total", "Inputs refused with 503")
DECISIONS = Counter("beacon_decisions_total", "Decisions made", ["severity"])
TIMERS = Counter("beacon_timers_fired_total", "Escalation timers fired", ["kind"])
BREACHES_UNESCALATED = Counter("beacon_breaches_unescalated_total",
                               "Missed deadlines with nobody above the authority to tell")
DELIVERIES = Counter("beacon_deliveries_total", "Delivery attempts", ["channel", "outcome"])
DEAD_LETTERS = Counter("beacon_dead_letters_total", "Messages sent to the dead-letter topic")
OUTBOX = Counter("beacon_outbox_published_total", "Outbox events published", ["service"])
DECISION_LATENCY = Histogram("beacon_decision_seconds", "Input accepted -> decision committed")
