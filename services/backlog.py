"""Backlogs: what Beacon has waiting that should not wait, as Prometheus gauges, so that an
on-call engineer sees a stuck part while it is stuck (docs/operations.md, Health; the alerting
rules are docs/prometheus/beacon-rules.yml).

- timers due and not fired (escalation): the timer loop is stuck or down, where a timer fires
  within a second of its due time; and timers whose firing failed, put back to try again;
- alerts not delivered (notifier): the channels are down, or the notifier is behind;
- outbox events not on Kafka (escalation, notifier): the relay is stuck, the broker away;
- consumer lag: events on Kafka that a consumer group has not applied yet, by the positions
  it keeps in the database (services/common/positions.py) against the partitions' ends.

Each process refreshes the backlogs of the services it runs every REFRESH_S, one aggregate
query per table, rather than at each scrape: /metrics then never waits on the database (a
scrape while it is away still shows the counters), and the cost does not grow with the number
of scrapers. A refresh that fails leaves the gauges as they were, and
beacon_backlog_refreshed_timestamp_seconds stops moving, which a rule watches. Instances that
share a database report the same numbers: aggregate them with max, not sum.
"""

import asyncio
import time
from collections.abc import Iterable
from datetime import datetime
from typing import get_args

from aiokafka import TopicPartition
from prometheus_client import Gauge
from sqlalchemy import bindparam, func, literal_column, select

from schemas.reports import Severity
from services.common import metrics
from services.common.db import UTCDateTime, utcnow
from services.common.outbox import OutboxRow
from services.common.positions import ConsumerPosition
from services.escalation.store import MilestoneTimer, Timer
from services.notifier.store import Delivery

REFRESH_S = 15  # services/runtime.py refreshes every this; the rules' thresholds are minutes
TIMER_KINDS = ("reminder", "breach", "milestone")  # esc_timers.kind, and the milestone timers

_NOW = bindparam("now", type_=UTCDateTime())
_T, _M, _D = Timer.__table__, MilestoneTimer.__table__, Delivery.__table__
_O, _P = OutboxRow.__table__, ConsumerPosition.__table__
# Read by the due indexes (fired_at, due_at), as the timer loop reads them: only overdue rows.
_TIMERS_DUE = (select(_T.c.kind, func.count(), func.min(_T.c.due_at))
               .where(_T.c.fired_at.is_(None), _T.c.due_at <= _NOW).group_by(_T.c.kind))
_MILESTONES_DUE = (select(literal_column("'milestone'"), func.count(), func.min(_M.c.due_at))
                   .where(_M.c.fired_at.is_(None), _M.c.due_at <= _NOW))
# A timer whose firing failed is put back to fire later (timers._retry_later): not overdue,
# so only its attempts show it.
_TIMERS_RETRYING = (select(_T.c.kind, func.count()).where(_T.c.fired_at.is_(None),
                                                          _T.c.attempts > 0).group_by(_T.c.kind))
_MILESTONES_RETRYING = select(literal_column("'milestone'"), func.count()).where(
    _M.c.fired_at.is_(None), _M.c.attempts > 0)
# ix_deliveries_claim starts with status: the rows still to deliver, not the delivered history.
_UNDELIVERED = (select(_D.c.severity, func.count(), func.min(_D.c.created_at))
                .where(_D.c.status.in_(("pending", "sending"))).group_by(_D.c.severity))
# Rows are deleted once published: the table is the backlog.
_UNPUBLISHED = (select(_O.c.service, func.count(), func.min(_O.c.created_at))
                .where(_O.c.service.in_(bindparam("services", expanding=True)))
                .group_by(_O.c.service))
_APPLIED = select(_P.c.topic, _P.c.partition, _P.c.next_offset).where(
    _P.c.group_id == bindparam("group"), _P.c.topic.in_(bindparam("topics", expanding=True)))


async def refresh(rt) -> bool:
    """Refresh the gauges of the services `rt` runs. Returns False: done until the next period
    (runtime._every)."""
    async with asyncio.timeout(REFRESH_S):  # a broker that does not answer holds nothing up
        now = utcnow()
        async with rt.db.reader() as connection:  # Core statements: no ORM session needed
            if "escalation" in rt.parts:
                rows = [*(await connection.execute(_TIMERS_DUE, {"now": now})).all(),
                        *(await connection.execute(_MILESTONES_DUE, {"now": now})).all()]
                _show(metrics.TIMERS_OVERDUE, metrics.TIMERS_OVERDUE_AGE, TIMER_KINDS, rows, now)
                retrying = dict([*(await connection.execute(_TIMERS_RETRYING)).all(),
                                 *(await connection.execute(_MILESTONES_RETRYING)).all()])
                for kind in {*TIMER_KINDS, *retrying}:
                    metrics.TIMERS_RETRYING.labels(kind).set(retrying.get(kind, 0))
            if "notifier" in rt.parts:
                rows = (await connection.execute(_UNDELIVERED)).all()
                _show(metrics.UNDELIVERED, metrics.UNDELIVERED_AGE, get_args(Severity), rows, now)
            if rt.relays:
                rows = (await connection.execute(_UNPUBLISHED, {"services": list(rt.relays)})).all()
                _show(metrics.UNPUBLISHED, metrics.UNPUBLISHED_AGE, rt.relays, rows, now)
            applied = {c.group: (await connection.execute(
                _APPLIED, {"group": c.group, "topics": c.topics})).all() for c in rt.consumers}
        for consumer in rt.consumers:
            await _lag(consumer, applied[consumer.group])
    metrics.BACKLOG_REFRESHED.set(time.time())
    return False


def _show(count: Gauge, age: Gauge, labels: Iterable[str], rows, now: datetime) -> None:
    """Every label known, so that a backlog gone reads 0 rather than its last value."""
    found = {label: (n, oldest) for label, n, oldest in rows if n}
    for label in {*labels, *found}:
        n, oldest = found.get(label, (0, None))
        count.labels(label).set(n)
        # max: another process's clock may be a little ahead of this one's
        age.labels(label).set(max((now - oldest).total_seconds(), 0) if oldest else 0)


async def _lag(consumer, applied) -> None:
    """Events on each topic's partitions past what the group applied. No lag is known before a
    partition was first assigned (positions.Rewind writes its row), nor while the consumer is
    not running."""
    client = getattr(consumer.subscriber, "consumer", None)  # aiokafka's, once started
    if client is None:
        return
    positions = {TopicPartition(topic, partition): at for topic, partition, at in applied}
    ends = await client.end_offsets(list(positions)) if positions else {}
    lag = dict.fromkeys(consumer.topics, 0)
    for tp, end in ends.items():
        lag[tp.topic] += max(end - positions[tp], 0)
    for topic, events in lag.items():
        metrics.CONSUMER_LAG.labels(consumer.group, topic).set(events)
