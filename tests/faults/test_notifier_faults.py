"""Delivery faults on the real broker (issue 5, point 6), checked the way a user would: what
reached the receivers (keys counted in the inbox) and which receipts reached Kafka.

Alerts are put straight onto the alerts topic, as escalation would, so each test chooses the
authority's contacts; the last tests run the whole stack to see the case timeline and escalation.
"""

import asyncio
import os
import signal
import subprocess
import sys
import time
from datetime import UTC, datetime, timedelta
from email import message_from_bytes
from pathlib import Path

import httpx
import pytest
import pytest_asyncio
from aiokafka import AIOKafkaConsumer, AIOKafkaProducer

from schemas.events import AlertRequested, Contact, DeliveryOutcome, Envelope, Topics
from services.notifier.channels.email import IDEMPOTENCY_HEADER
from services.notifier.handlers import CONCURRENCY
from tests.conftest import eventually, make_settings, start_stack
from tests.support.brokers import free_port
from tests.support.reports import report
from tools.inbox import _Handler, start_http, start_smtp, stop_http, stop_smtp

ROOT = Path(__file__).resolve().parents[2]
AUTHORITY = "commune:4:child_protection"


# --- helpers ------------------------------------------------------------------------------------


class Receipts:
    """Every DeliveryOutcome on the deliveries topic, collected in the background."""

    def __init__(self, bootstrap: str, topic: str):
        self.consumer = AIOKafkaConsumer(topic, bootstrap_servers=bootstrap, group_id=None,
                                         auto_offset_reset="earliest", enable_auto_commit=False)
        self.seen: list[DeliveryOutcome] = []

    async def __aenter__(self):
        await self.consumer.start()
        self.task = asyncio.create_task(self._collect())
        return self

    async def _collect(self):
        while True:
            batch = await self.consumer.getmany(timeout_ms=200)
            for records in batch.values():
                self.seen += [Envelope.model_validate_json(r.value).payload() for r in records]

    async def __aexit__(self, *exc):
        self.task.cancel()
        await asyncio.gather(self.task, return_exceptions=True)
        await self.consumer.stop()

    def of(self, alert_id: str) -> list[tuple[str, str, str | None]]:
        return [(r.status, r.channel, r.error) for r in self.seen if r.alert_id == alert_id]


async def feed(bootstrap: str, topic: str, alerts: list[AlertRequested]) -> None:
    producer = AIOKafkaProducer(bootstrap_servers=bootstrap, acks="all")
    await producer.start()
    try:
        await asyncio.gather(*(
            producer.send_and_wait(topic, Envelope.wrap(a, "test").model_dump_json().encode(),
                                   key=a.case_id.encode())
            for a in alerts))
    finally:
        await producer.stop()


def make_alert(tag: str, i: int, contacts: list[Contact], severity="P1", role="act",
               due: timedelta | None = timedelta(minutes=15)) -> AlertRequested:
    case_id = f"C-{tag}-{i:04d}"
    return AlertRequested(
        alert_id=f"{case_id}:{AUTHORITY}:alert", case_id=case_id, authority_id=AUTHORITY,
        tier="commune", agency="child_protection", role=role,
        kind="alert" if role == "act" else "inform", category="PHYS_VIOLENCE",
        severity=severity, publicity="PA0",
        ack_due=datetime.now(UTC) + due if due else None, contacts=contacts,
        rulepack_version="default@1",
    )


def delivered_keys(inbox) -> list[tuple[str, str]]:
    """(channel, idempotency key) of everything the receivers got, repeats included."""
    got = [("sms" if r["path"] == "/sms" else "webhook", r["headers"].get("Idempotency-Key"))
           for r in inbox.requests()]
    got += [("email", message_from_bytes(p.read_bytes())[IDEMPOTENCY_HEADER])
            for p in inbox.mails()]
    return got


def demo_contacts(inbox, name: str) -> list[Contact]:
    """Like the demo directory: webhook, then e-mail, then SMS, all on the inbox."""
    return [Contact(channel="webhook", address=f"{inbox.http_url}/hooks/{name}"),
            Contact(channel="email", address=f"{name}@example.vn"),
            Contact(channel="sms", address="+84900000001")]


class Refuse550:
    """An SMTP server that refuses every recipient for good."""

    async def handle_RCPT(self, server, session, envelope, address, rcpt_options):
        return "550 5.1.1 mailbox unavailable"


def refuse_smtp(inbox) -> None:
    port = inbox.smtp_port
    stop_smtp(inbox.smtp)
    inbox.smtp = start_smtp(inbox.dir, port=port, handler=Refuse550())


@pytest_asyncio.fixture
async def notifier_stack(kafka_bootstrap, inbox, tmp_path):
    settings = make_settings(kafka_bootstrap, f"sqlite+aiosqlite:///{tmp_path / 'beacon.db'}",
                             inbox)
    running = await start_stack(settings, ("notifier",))
    async with Receipts(kafka_bootstrap, settings.topic(Topics.DELIVERIES)) as receipts:
        running.receipts = receipts
        yield running
    await running.stop()


# --- a. the webhook receiver down for 30 s -------------------------------------------------------


@pytest.mark.timeout(90)
async def test_webhook_down_30s_every_alert_delivered_once_per_key(notifier_stack, inbox):
    settings, receipts = notifier_stack.rt.settings, notifier_stack.receipts
    topic = settings.topic(Topics.ALERTS)
    port = inbox.http.server_address[1]
    # The HTTP receiver (webhooks and the SMS gateway) goes down before anything was sent, so
    # no kept-alive connection outlives it.
    stop_http(inbox.http)
    down_at = time.monotonic()
    # W: authorities whose only contact is the webhook: they must get it once it is back.
    # F: demo contacts: the alert should not wait for the webhook, e-mail is there.
    only_webhook = [make_alert("w", i, [Contact(channel="webhook",
                                                address=f"{inbox.http_url}/hooks/w{i}")])
                    for i in range(10)]
    with_fallback = [make_alert("f", i, demo_contacts(inbox, f"f{i}"), severity="P2")
                     for i in range(10)]
    await feed(settings.kafka_bootstrap, topic, only_webhook + with_fallback)

    async def fallback_done():
        return sum(k[0] == "email" for k in delivered_keys(inbox)) == len(with_fallback)

    await eventually(fallback_done, timeout=20)
    fallback_s = time.monotonic() - down_at
    assert not any(("delivered", "webhook", None) in receipts.of(a.alert_id)
                   for a in only_webhook)  # nothing got through while it was down

    await asyncio.sleep(max(0.0, 30 - (time.monotonic() - down_at)))
    inbox.http = start_http(inbox.dir, port=port)  # back, at the same address
    up_at = time.monotonic()
    after = [make_alert("r", i, demo_contacts(inbox, f"r{i}")) for i in range(5)]
    await feed(settings.kafka_bootstrap, topic, after)
    everyone = only_webhook + with_fallback + after

    async def all_delivered():
        keys = {k for _, k in delivered_keys(inbox)}
        return keys >= {a.alert_id for a in everyone}

    await eventually(all_delivered, timeout=45)
    recovered_s = time.monotonic() - up_at

    got = delivered_keys(inbox)
    keys = [k for _, k in got]
    assert sorted(set(keys)) == sorted(a.alert_id for a in everyone)  # none lost, none stray
    assert len(keys) == len(set(keys)), "a receiver got an alert twice"
    channel = {key: ch for ch, key in got}
    assert {channel[a.alert_id] for a in only_webhook} == {"webhook"}
    assert {channel[a.alert_id] for a in with_fallback} == {"email"}
    assert {channel[a.alert_id] for a in after} == {"webhook"}

    async def receipted():
        return all(("delivered", channel[a.alert_id], None) in receipts.of(a.alert_id)
                   for a in everyone)

    await eventually(receipted, timeout=10)
    for a in only_webhook:  # the outage is on each alert's record, then one delivery
        trail = receipts.of(a.alert_id)
        assert ("failed", "webhook", "connect_error") in trail
        assert [s for s, _, _ in trail].count("delivered") == 1
    assert not [r for r in receipts.seen if r.status == "dead_lettered"]
    print(f"fallback to e-mail within {fallback_s:.1f} s; webhook-only alerts delivered "
          f"{recovered_s:.1f} s after the receiver came back; "
          f"{sum(s == 'failed' for r in receipts.seen for s in [r.status])} failed attempts")


# --- b. the notifier killed mid-stream ------------------------------------------------------------


class SlowHandler(_Handler):
    """Records the request, then answers late: a kill lands while deliveries are in flight."""

    def _answer(self, status, payload):
        time.sleep(0.5)
        super()._answer(status, payload)


def _env(settings, inbox) -> dict[str, str]:
    return {
        **os.environ,
        "PYTHONPATH": str(ROOT),
        "BEACON_KAFKA_BOOTSTRAP": settings.kafka_bootstrap,
        "BEACON_DATABASE_URL": settings.database_url,
        "BEACON_TOPIC_PREFIX": settings.topic_prefix,
        "BEACON_CONSUMER_GROUP_PREFIX": settings.consumer_group_prefix,
        "BEACON_SECRET_KEY": "test-secret-key",
        "BEACON_WEBHOOK_SECRET": "test-webhook-secret",
        "BEACON_DEMO_WEBHOOK_BASE": inbox.http_url,
        "BEACON_SMTP_PORT": str(inbox.smtp_port),
        "BEACON_SMS_GATEWAY_URL": inbox.http_url + "/sms",
    }


async def _ready(port: int, proc: subprocess.Popen) -> None:
    async with httpx.AsyncClient() as client:
        async def ready():
            assert proc.poll() is None, "the notifier exited during start-up"
            try:
                return (await client.get(f"http://127.0.0.1:{port}/readyz")).status_code == 200
            except httpx.TransportError:
                return False

        await eventually(ready, timeout=40)


@pytest.mark.timeout(90)
async def test_notifier_killed_mid_stream_loses_no_alert(kafka_bootstrap, inbox, tmp_path):
    settings = make_settings(kafka_bootstrap, f"sqlite+aiosqlite:///{tmp_path / 'notifier.db'}")
    env = _env(settings, inbox)
    beacon = str(Path(sys.executable).parent / "beacon")
    await asyncio.to_thread(subprocess.run, [beacon, "db", "upgrade"], env=env, cwd=ROOT,
                            check=True, timeout=60, capture_output=True)
    inbox.http.RequestHandlerClass = SlowHandler
    port = free_port()
    log = (tmp_path / "notifier.log").open("ab")  # closed below; the process writes to it

    def start() -> subprocess.Popen:
        return subprocess.Popen([beacon, "run", "notifier", "--port", str(port)], env=env,
                                cwd=ROOT, stdout=log, stderr=subprocess.STDOUT)

    alerts = [make_alert("k", i, [Contact(channel="webhook",
                                          address=f"{inbox.http_url}/hooks/k{i % 7}")])
              for i in range(300)]
    wanted = {a.alert_id for a in alerts}
    proc = start()
    try:
        await _ready(port, proc)
        async with Receipts(kafka_bootstrap, settings.topic(Topics.DELIVERIES)) as receipts:
            await feed(kafka_bootstrap, settings.topic(Topics.ALERTS), alerts)

            async def some_arrived():
                return len(inbox.requests()) >= 40

            await eventually(some_arrived, timeout=30, interval=0.02)
            proc.send_signal(signal.SIGKILL)  # kill -9: no clean shutdown, leases left behind
            await asyncio.to_thread(proc.wait, 10)
            at_kill = len({r["headers"]["Idempotency-Key"] for r in inbox.requests()})
            assert at_kill < len(alerts), "the kill did not land mid-stream"

            proc = start()

            async def all_arrived():
                return {r["headers"]["Idempotency-Key"] for r in inbox.requests()} >= wanted

            await eventually(all_arrived, timeout=60)

            async def all_receipted():  # the receipts of the killed process are not lost either
                return {r.alert_id for r in receipts.seen if r.status == "delivered"} >= wanted

            # Those in flight at the kill are sent again when their lease ends.
            await eventually(all_receipted, timeout=45)
    finally:
        proc.send_signal(signal.SIGTERM)
        try:
            await asyncio.to_thread(proc.wait, 15)
        except subprocess.TimeoutExpired:
            proc.kill()
        log.close()

    keys = [r["headers"]["Idempotency-Key"] for r in inbox.requests()]
    assert set(keys) == wanted  # nothing lost, nothing stray
    repeats = len(keys) - len(set(keys))
    # A repeat is an alert the receiver got but the killed process never recorded: about what
    # was in flight (one worker's slots), and each carries its alert's key to drop it by.
    assert repeats <= CONCURRENCY
    print(f"{len(alerts)} alerts; {at_kill} delivered before kill -9; after restart all "
          f"{len(wanted)} delivered, {repeats} repeats with the same Idempotency-Key")


# --- c. SMTP refusing -----------------------------------------------------------------------------


@pytest.mark.timeout(60)
async def test_smtp_refusing_falls_back_to_the_next_contact(notifier_stack, inbox):
    refuse_smtp(inbox)
    settings, receipts = notifier_stack.rt.settings, notifier_stack.receipts
    mail_first = [Contact(channel="email", address="cp.4@example.vn"),
                  Contact(channel="webhook", address=f"{inbox.http_url}/hooks/cp4"),
                  Contact(channel="sms", address="+84900000001")]
    alert = make_alert("s", 1, mail_first)
    await feed(settings.kafka_bootstrap, settings.topic(Topics.ALERTS), [alert])

    async def delivered():
        return ("delivered", "webhook", None) in receipts.of(alert.alert_id)

    await eventually(delivered, timeout=20)
    assert receipts.of(alert.alert_id) == [
        ("attempted", "email", None), ("failed", "email", "smtp_550"),  # refused for good:
        ("attempted", "webhook", None), ("delivered", "webhook", None),  # fallback at once
    ]
    assert delivered_keys(inbox) == [("webhook", alert.alert_id)]
    assert inbox.mails() == []


# --- d. every contact failing ---------------------------------------------------------------------


@pytest.mark.timeout(60)
async def test_all_contacts_failing_is_dead_lettered(notifier_stack, inbox):
    refuse_smtp(inbox)
    inbox.http.status = 404  # webhooks and the SMS gateway refuse too
    settings, receipts = notifier_stack.rt.settings, notifier_stack.receipts
    act = make_alert("d", 1, demo_contacts(inbox, "d1"), due=timedelta(seconds=4))
    inform = make_alert("d", 2, demo_contacts(inbox, "d2"), severity="P3", role="inform",
                        due=None)
    await feed(settings.kafka_bootstrap, settings.topic(Topics.ALERTS), [act, inform])

    async def dead():
        return all(any(s == "dead_lettered" for s, _, _ in receipts.of(a.alert_id))
                   for a in (act, inform))

    await eventually(dead, timeout=30)
    # The inform alert: one round through its contacts, then the dead letter.
    assert [s for s in receipts.of(inform.alert_id) if s[0] != "attempted"] == [
        ("failed", "webhook", "http_404"), ("failed", "email", "smtp_550"),
        ("failed", "sms", "http_404"), ("dead_lettered", "sms", "http_404")]
    # The act alert: rounds until its deadline, then the dead letter (escalation acts on it).
    trail = receipts.of(act.alert_id)
    assert trail[-1][0] == "dead_lettered" and trail.count(trail[-1]) == 1
    assert {c for s, c, _ in trail if s == "failed"} == {"webhook", "email", "sms"}
    assert not any(s == "delivered" for s, _, _ in trail)
    dead_receipt = next(r for r in receipts.seen
                        if r.alert_id == act.alert_id and r.status == "dead_lettered")
    assert dead_receipt.role == "act" and dead_receipt.attempt == len(
        [t for t in trail if t[0] == "failed"])


async def test_undeliverable_act_alert_is_on_the_timeline_and_escalated(stack, inbox):
    refuse_smtp(inbox)
    inbox.http.status = 404
    # One round through the contacts, so the test does not wait for the retry budget.
    stack.rt.parts["notifier"].max_attempts = 3
    async with stack.client("operator") as api:
        answer = await api.post("/api/v1/reports", json=report())
        assert answer.status_code == 202, answer.text
        case_id = answer.json()["case_id"]

        async def escalated():
            # Receipts and escalations reach the read model by two topics: wait for both.
            case = (await api.get(f"/api/v1/cases/{case_id}")).json()
            kinds = {(e["kind"], e["detail"].get("authority_id")) for e in case["timeline"]}
            done = {("target_escalated", AUTHORITY), ("delivery_dead_lettered", AUTHORITY)}
            return case if done <= kinds else None

        case = await eventually(escalated, timeout=60)

    mine = [e for e in case["timeline"]
            if e["detail"].get("authority_id") == AUTHORITY and e["kind"].startswith("delivery_")]
    failed = [(e["detail"]["channel"], e["detail"]["error"]) for e in mine
              if e["kind"] == "delivery_failed"]
    assert ("webhook", "http_404") in failed
    assert ("email", "smtp_550") in failed  # the refused e-mail shows on the timeline
    assert ("sms", "http_404") in failed
    assert any(e["kind"] == "delivery_dead_lettered" for e in mine)
    assert any(e["kind"] == "delivery_attempted" for e in mine)
    target = next(t for t in case["targets"] if t["authority_id"] == AUTHORITY)
    assert target["delivery"] == "dead_lettered"
    # Escalated now, not at its 15-minute deadline.
    assert target["escalation"] in ("breach", "escalated")
    assert any(e["kind"] == "target_escalated" and e["detail"]["step"] == "breach"
               and e["detail"]["authority_id"] == AUTHORITY for e in case["timeline"])
