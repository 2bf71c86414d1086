"""Prometheus metrics, served at /metrics."""

from typing import get_args

from prometheus_client import Counter, Gauge, Histogram

from schemas.reports import Severity

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
# Every label at 0 from the start: a series that first appears at 1 has an increase() of 0 in
# Prometheus, so the first decisions after a restart looked like none, and
# BeaconDecisionsStalled paged (docs/prometheus/beacon-rules.yml).
for _label in get_args(Severity):
    DECISIONS.labels(_label)
for _label in ("true", "false"):
    REPORTS.labels(_label)

# Backlogs: what is waiting that should not be (services/backlog.py refreshes them every
# REFRESH_S from the database and the broker). Labels are codes, never a case or an authority.
TIMERS_OVERDUE = Gauge("beacon_timers_overdue", "Escalation timers due and not fired", ["kind"])
TIMERS_OVERDUE_AGE = Gauge("beacon_timers_overdue_oldest_seconds",
                           "How long the oldest overdue timer has been due (0: none)", ["kind"])
TIMERS_RETRYING = Gauge("beacon_timers_retrying",
                        "Escalation timers whose firing failed, put back to try again", ["kind"])
UNDELIVERED = Gauge("beacon_deliveries_undelivered",
                    "Alerts not yet delivered (pending, or being sent)", ["severity"])
UNDELIVERED_AGE = Gauge("beacon_deliveries_undelivered_oldest_seconds",
                        "Age of the oldest undelivered alert (0: none)", ["severity"])
UNPUBLISHED = Gauge("beacon_outbox_unpublished", "Outbox events not yet on Kafka", ["service"])
UNPUBLISHED_AGE = Gauge("beacon_outbox_unpublished_oldest_seconds",
                        "Age of the oldest unpublished outbox event (0: none)", ["service"])
CONSUMER_LAG = Gauge("beacon_consumer_lag",
                     "Events on Kafka the consumer group has not applied yet", ["group", "topic"])
BACKLOG_REFRESHED = Gauge("beacon_backlog_refreshed_timestamp_seconds",
                          "When the backlog gauges were last refreshed (Unix time)")
