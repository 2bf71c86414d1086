"""/metrics counts what an operator watches (docs/operations.md): reports accepted, decisions,
timers fired, events published, dead letters. Counters are per process and this test's stack
shares its process with others, so each check is a difference."""

from datetime import timedelta

from aiokafka import AIOKafkaProducer
from prometheus_client.parser import text_string_to_metric_families

from schemas.events import Topics
from services.common.db import utcnow
from tests.conftest import eventually
from tests.support.reports import report


async def _counts(stack) -> dict[str, float]:
    async with stack.client() as anyone:  # no token: a scraper's view
        text = (await anyone.get("/metrics")).text
    counts: dict[str, float] = {}
    for family in text_string_to_metric_families(text):
        for sample in family.samples:
            if sample.name.startswith("beacon_") and sample.name.endswith("_total"):
                counts[sample.name] = counts.get(sample.name, 0) + sample.value
    return counts


async def test_metrics_count_reports_decisions_events_timers_and_dead_letters(stack):
    before = await _counts(stack)
    async with stack.client("operator") as api:
        assert (await api.post("/api/v1/reports", json=report())).status_code == 202
    producer = AIOKafkaProducer(bootstrap_servers=stack.rt.settings.kafka_bootstrap, acks="all")
    await producer.start()
    try:
        await producer.send_and_wait(stack.rt.settings.topic(Topics.INPUTS), b"not json",
                                     key=b"C-GARBLED")
    finally:
        await producer.stop()

    async def decided():
        return (await _counts(stack)).get("beacon_decisions_total", 0) > before.get(
            "beacon_decisions_total", 0)

    await eventually(decided)  # its timers are armed: fire them as if a month had passed
    while await stack.rt.parts["escalation"].fire_due(now=utcnow() + timedelta(days=30)):
        pass

    async def counted():
        after = await _counts(stack)
        grown = {name for name, value in after.items() if value > before.get(name, 0)}
        wanted = {"beacon_reports_accepted_total", "beacon_decisions_total",
                  "beacon_outbox_published_total", "beacon_dead_letters_total",
                  "beacon_timers_fired_total"}
        return wanted <= grown

    assert await eventually(counted)


async def test_metrics_show_each_service_s_backlog_from_the_start(stack):
    """The backlog gauges (services/backlog.py) are refreshed by the process itself: at start
    each consumer group's lag is shown, and the timers, deliveries and outbox read 0."""
    settings = stack.rt.settings

    async def shown():
        async with stack.client() as anyone:
            text = (await anyone.get("/metrics")).text
        samples = {(s.name, tuple(sorted(s.labels.items()))): s.value
                   for family in text_string_to_metric_families(text) for s in family.samples}
        groups = {dict(labels)["group"] for name, labels in samples
                  if name == "beacon_consumer_lag"}
        wanted = {settings.group(g) for g in ("intake-readmodel", "escalation", "notifier")}
        return wanted <= groups and samples

    samples = await eventually(shown)
    assert samples[("beacon_timers_overdue", (("kind", "breach"),))] == 0
    assert samples[("beacon_deliveries_undelivered", (("severity", "P1"),))] == 0
    assert samples[("beacon_outbox_unpublished", (("service", "escalation"),))] == 0
    assert samples[("beacon_backlog_refreshed_timestamp_seconds", ())] > 0
