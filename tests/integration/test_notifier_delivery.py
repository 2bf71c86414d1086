"""The delivery worker against a real SQLite file and the loopback receivers (no Kafka needed):
bundling, rate limits, receipts, the render fallback note and leases. The worker is stepped by
hand (claim, send), so nothing here sleeps, but for the tests of the worker loop and of slow
servers."""

import asyncio
import json
from datetime import UTC, datetime, timedelta
from email import message_from_bytes
from types import SimpleNamespace
from zoneinfo import ZoneInfo

import pytest
import pytest_asyncio
import structlog
from aiosmtpd.controller import Controller
from sqlalchemy import select, update

from schemas.events import AlertRequested, Contact, DeliveryOutcome, Envelope
from services.common.db import Base, Database, utcnow
from services.common.outbox import OutboxRow
from services.notifier import handlers, policy
from services.notifier.handlers import Notifier
from services.notifier.render import Renderer, fold_to_gsm7, sms_segments
from services.notifier.store import Delivery
from tests.conftest import make_settings
from tools.inbox import free_port


class _Relay:
    def poke(self) -> None:
        pass


@pytest_asyncio.fixture
async def notifier(tmp_path, inbox):
    settings = make_settings("127.0.0.1:1", f"sqlite+aiosqlite:///{tmp_path / 'n.db'}",
                             smtp_port=inbox.smtp_port, sms_gateway_url=inbox.http_url + "/sms")
    db = Database(settings.database_url)
    async with db.engine.begin() as conn:
        await conn.run_sync(Base.metadata.create_all,
                            tables=[Delivery.__table__, OutboxRow.__table__])
    n = Notifier(SimpleNamespace(settings=settings, db=db, relays={"notifier": _Relay()}))
    yield n
    await n.aclose()
    await db.dispose()


def alert(i, inbox, severity="P3", kind="reminder", authority="commune:4:child_protection",
          contacts=None, due=timedelta(hours=8), **kw):
    return AlertRequested(
        alert_id=f"C-{i}:{authority}:{kind}", case_id=f"C-{i}", authority_id=authority,
        tier="commune", agency="child_protection", role="act", kind=kind,
        category="NEGLECT", severity=severity, publicity="PA0",
        ack_due=datetime.now(UTC) + due if due else None,
        contacts=contacts or [Contact(channel="webhook", address=f"{inbox.http_url}/hooks/a")],
        rulepack_version="default@1", **kw,
    )


async def step(n: Notifier) -> int:
    """One turn of the worker: claim what is due and send it all."""
    jobs = await n.claim()
    for job in jobs:
        await n.send(job)
    return len(jobs)


async def make_due(n: Notifier, alert_id: str) -> None:
    async with n.rt.db.writes() as s, s.begin():
        await s.execute(update(Delivery).where(Delivery.alert_id == alert_id)
                        .values(next_at=utcnow() - timedelta(seconds=1)))


async def receipts(n: Notifier) -> list[DeliveryOutcome]:
    async with n.rt.db.reads() as s:
        rows = (await s.scalars(select(OutboxRow).order_by(OutboxRow.id))).all()
    return [Envelope.model_validate_json(r.payload).payload() for r in rows]


async def rows(n: Notifier) -> dict[str, Delivery]:
    async with n.rt.db.reads() as s:
        return {d.alert_id: d for d in (await s.scalars(select(Delivery))).all()}


async def test_p3_reminders_to_one_contact_go_as_one_message(notifier, inbox):
    reminders = [alert(i, inbox) for i in range(3)]
    for a in reminders:
        await notifier.handle([Envelope.wrap(a, "test")])
    assert await step(notifier) == 0  # held for the bundle window

    await make_due(notifier, reminders[0].alert_id)  # the first one's window has passed
    assert await step(notifier) == 1

    hooks = inbox.requests()
    assert len(hooks) == 1
    body = hooks[0]["body"]
    assert body["type"] == "beacon.alert.bundle"
    assert sorted(i["alert_id"] for i in body["items"]) == sorted(a.alert_id for a in reminders)
    assert hooks[0]["headers"]["Idempotency-Key"].startswith("bundle-")
    state = await rows(notifier)
    assert {d.status for d in state.values()} == {"delivered"}
    got = [(r.alert_id, r.status) for r in await receipts(notifier)]
    for a in reminders:  # one receipt per alert, each on its own case's timeline
        assert got.count((a.alert_id, "attempted")) == 1
        assert got.count((a.alert_id, "delivered")) == 1


async def test_a_bundle_by_email_is_one_mail(notifier, inbox):
    mail = [Contact(channel="email", address="cp.4@example.vn")]
    reminders = [alert(i, inbox, severity="P4", contacts=mail) for i in range(4)]
    for a in reminders:
        await notifier.handle([Envelope.wrap(a, "test")])
    await make_due(notifier, reminders[0].alert_id)
    assert await step(notifier) == 1
    [path] = inbox.mails()
    text = message_from_bytes(path.read_bytes()).get_payload(decode=True).decode()
    assert all(a.case_id in text for a in reminders)


async def test_a_contact_gets_messages_in_its_own_language(notifier, inbox):
    # docs/notifier.md promised vi and en, but every message went out in Vietnamese.
    english = [Contact(channel="email", address="cp.4@example.vn", lang="en")]
    vietnamese = [Contact(channel="email", address="cp.8@example.vn")]
    for i, contacts in ((1, english), (2, vietnamese)):
        await notifier.handle([Envelope.wrap(alert(i, inbox, severity="P1", kind="alert",
                                                   contacts=contacts), "test")])
    while await step(notifier):
        pass
    mails = {m["To"]: m for m in (message_from_bytes(p.read_bytes()) for p in inbox.mails())}
    assert mails["cp.4@example.vn"]["Content-Language"] == "en"
    assert "Acknowledge receipt by" in mails["cp.4@example.vn"].get_payload(decode=True).decode()
    assert mails["cp.8@example.vn"]["Content-Language"] == "vi"
    assert "Hạn xác nhận" in mails["cp.8@example.vn"].get_payload(decode=True).decode()


async def test_urgent_alerts_and_other_contacts_are_never_bundled_or_held(notifier, inbox):
    other = [Contact(channel="webhook", address=f"{inbox.http_url}/hooks/b")]
    alerts = [
        alert(1, inbox, severity="P1"), alert(2, inbox, severity="P2"),  # urgent reminders
        alert(3, inbox, kind="alert"), alert(4, inbox, kind="breach"),  # not reminders
    ]
    held = [alert(5, inbox), alert(6, inbox, contacts=other)]  # P3 reminders, two contacts
    for a in alerts + held:
        await notifier.handle([Envelope.wrap(a, "test")])
    assert await step(notifier) == 4
    assert sorted(r["body"]["alert_id"] for r in inbox.requests()) == sorted(
        a.alert_id for a in alerts)

    await make_due(notifier, held[0].alert_id)
    await make_due(notifier, held[1].alert_id)
    assert await step(notifier) == 2  # same authority, different contacts: two messages
    assert all(r["body"]["type"] == "beacon.alert" for r in inbox.requests())


async def test_a_bundle_holds_at_most_bundle_max(notifier, inbox):
    reminders = [alert(i, inbox) for i in range(policy.BUNDLE_MAX + 3)]
    for a in reminders:
        await notifier.handle([Envelope.wrap(a, "test")])
    for a in reminders:
        await make_due(notifier, a.alert_id)
    assert await step(notifier) == 2
    sizes = sorted(len(r["body"]["items"]) if "items" in r["body"] else 1
                   for r in inbox.requests())
    assert sizes == [3, policy.BUNDLE_MAX]


async def test_rate_limit_defers_p3_but_never_p1_or_p2(notifier, inbox):
    notifier.limiter = policy.RateLimiter(per_minute=6, burst=2,
                                          never_limited=policy.NEVER_DELAYED)
    slow = [alert(i, inbox, kind="alert") for i in range(4)]
    urgent = [alert(10 + i, inbox, kind="alert", severity=("P1", "P2")[i % 2]) for i in range(6)]
    for a in slow + urgent:
        await notifier.handle([Envelope.wrap(a, "test")])
    # Claimed by severity: the six urgent ones go and take the bucket's two tokens on the way.
    assert await step(notifier) == 6
    state = await rows(notifier)
    assert all(state[a.alert_id].status == "delivered" for a in urgent)
    waiting = [state[a.alert_id] for a in slow if state[a.alert_id].status == "pending"]
    assert len(waiting) == 4  # every P3 waits for a token
    assert all(d.next_at > utcnow() + timedelta(seconds=5) for d in waiting)
    assert not [r for r in await receipts(notifier)
                if r.alert_id in {d.alert_id for d in waiting}]  # no attempt, no receipt


async def test_render_failure_is_sent_plainly_and_reported(notifier, inbox, tmp_path):
    broken = tmp_path / "templates" / "vi"
    broken.mkdir(parents=True)
    (broken / "email_subject.j2").write_text("{{ no_such_field }}")
    notifier.renderer = Renderer(tmp_path / "templates")
    a = alert(1, inbox, severity="P1", kind="alert",
              contacts=[Contact(channel="email", address="cp.4@example.vn")])
    await notifier.handle([Envelope.wrap(a, "test")])
    assert await step(notifier) == 1

    assert len(inbox.mails()) == 1  # the alert still went, as the built-in text
    delivered = [r for r in await receipts(notifier) if r.status == "delivered"]
    assert delivered[0].channel == "email"
    assert delivered[0].error == "render_fallback: UndefinedError in vi/email_subject.j2"
    assert (await rows(notifier))[a.alert_id].last_error == delivered[0].error


async def test_receipts_trace_fallback_and_dead_letter(notifier, inbox):
    inbox.http.status = 404  # webhook and SMS gateway refuse for good
    a = alert(1, inbox, severity="P1", kind="alert", due=None, contacts=[
        Contact(channel="webhook", address=f"{inbox.http_url}/hooks/a"),
        Contact(channel="sms", address="+84900000001"),
    ])
    await notifier.handle([Envelope.wrap(a, "test")])
    assert await step(notifier) == 1
    assert await step(notifier) == 1  # the fallback is due at once
    got = [(r.status, r.channel, r.attempt, r.error) for r in await receipts(notifier)]
    assert got == [
        ("attempted", "webhook", 1, None), ("failed", "webhook", 1, "http_404"),
        ("attempted", "sms", 2, None), ("failed", "sms", 2, "http_404"),
        ("dead_lettered", "sms", 2, "http_404"),  # no deadline: one round through the contacts
    ]
    assert (await rows(notifier))[a.alert_id].status == "dead"


async def test_a_lost_lease_is_not_recorded_twice(notifier, inbox):
    a = alert(1, inbox, severity="P1", kind="alert")
    await notifier.handle([Envelope.wrap(a, "test")])
    [job] = await notifier.claim()
    # The lease runs out (the worker was stuck) and the row is claimed and delivered again.
    await make_due(notifier, a.alert_id)
    assert await step(notifier) == 1
    await notifier.send(job)  # the stuck worker finishes late
    statuses = [r.status for r in await receipts(notifier)]
    assert statuses == ["attempted", "attempted", "delivered"]
    hooks = inbox.requests()
    assert len(hooks) == 2 and {h["headers"]["Idempotency-Key"] for h in hooks} == {a.alert_id}
    assert (await rows(notifier))[a.alert_id].attempts_total == 1


async def test_a_claim_takes_the_most_severe_of_pending_and_expired_leases(notifier, inbox):
    stale = alert(1, inbox, severity="P2", kind="alert")
    await notifier.handle([Envelope.wrap(stale, "test")])
    await notifier.claim()  # its worker dies: the row stays leased
    await make_due(notifier, stale.alert_id)
    later = [alert(2, inbox, severity="P3", kind="alert"),
             alert(3, inbox, severity="P1", kind="alert")]
    for a in later:
        await notifier.handle([Envelope.wrap(a, "test")])
    # One slot at a time: the new P1, then the expired P2 lease, then the P3.
    order = [[m.alert_id for m, _ in job.members] for _ in range(3)
             for job in await notifier.claim(batch=1)]
    assert order == [[later[1].alert_id], [stale.alert_id], [later[0].alert_id]]


async def test_inbox_body_is_codes_only(notifier, inbox):
    a = alert(1, inbox, severity="P1", kind="alert")
    await notifier.handle([Envelope.wrap(a, "test")])
    await step(notifier)
    body = json.dumps(inbox.requests()[0]["body"])
    assert a.case_id in body and "NEGLECT" in body


async def test_sends_wait_when_too_many_outcomes_are_unrecorded(notifier, inbox, monkeypatch):
    """Sends free their slot before their outcome is committed, but only so far: past
    UNRECORDED_MAX the loop claims nothing more until records catch up. Unbounded, a long
    backlog sent faster than it was recorded and outlived its leases."""
    monkeypatch.setattr(handlers, "CONCURRENCY", 4)
    monkeypatch.setattr(handlers, "UNRECORDED_MAX", 8)
    gate, group = asyncio.Event(), notifier._record_group

    async def held(item):  # the database is slow to record
        await gate.wait()
        return await group(item)

    notifier._record_group = held
    queued = [alert(i, inbox, severity="P2", kind="alert") for i in range(20)]
    await notifier.handle([Envelope.wrap(a, "test") for a in queued])
    worker = asyncio.create_task(notifier.run())
    try:
        async with asyncio.timeout(10):
            while len(inbox.requests()) < 8:
                await asyncio.sleep(0.02)
        await asyncio.sleep(0.5)  # the worker has time to send more, were it allowed to
        assert len(inbox.requests()) == 8
        gate.set()
        async with asyncio.timeout(10):
            while len(inbox.requests()) < 20:
                await asyncio.sleep(0.02)
        async with asyncio.timeout(10):
            while any(r.status != "delivered" for r in (await rows(notifier)).values()):
                await asyncio.sleep(0.02)
    finally:
        worker.cancel()
        await asyncio.gather(worker, return_exceptions=True)
    assert len(inbox.requests()) == 20


def webhook_then_email(inbox, name="sup"):
    return [Contact(channel="webhook", address=f"{inbox.http_url}/hooks/{name}"),
            Contact(channel="email", address=f"{name}@example.vn")]


@pytest.mark.parametrize("late", [
    # a breach told to a supervisor: the target's ack_due has passed
    dict(kind="supervisor", due=timedelta(seconds=-1)),
    # a reminder about a milestone: its deadline is the milestone's, not the (met) ack_due
    dict(kind="reminder", due=timedelta(hours=-5), milestone="emergency_measure",
         milestone_due=datetime.now(UTC) + timedelta(hours=6)),
])
async def test_an_alert_past_its_ack_due_still_falls_back(notifier, inbox, late):
    a = alert(1, inbox, severity="P1", contacts=webhook_then_email(inbox), **late)
    await notifier.handle([Envelope.wrap(a, "test")])
    inbox.http.status = 404
    assert await step(notifier) == 1
    row = (await rows(notifier))[a.alert_id]
    assert (row.status, row.contact_index, row.last_error) == ("pending", 1, "http_404")
    assert await step(notifier) == 1  # the fallback, at once
    assert len(inbox.mails()) == 1
    assert [(r.status, r.channel) for r in await receipts(notifier)] == [
        ("attempted", "webhook"), ("failed", "webhook"),
        ("attempted", "email"), ("delivered", "email")]


async def test_a_late_alert_is_retried_within_its_severitys_window(notifier, inbox):
    a = alert(1, inbox, severity="P2", kind="supervisor", due=timedelta(hours=-2),
              contacts=[Contact(channel="webhook", address=f"{inbox.http_url}/hooks/sup")])
    await notifier.handle([Envelope.wrap(a, "test")])
    inbox.http.status = 503
    for _ in range(5):  # every retry on the one contact, none dead-lettered
        await make_due(notifier, a.alert_id)
        assert await step(notifier) == 1
    row = (await rows(notifier))[a.alert_id]
    assert row.status == "pending" and row.attempts_total == 5
    assert row.next_at <= row.created_at + policy.LATE_WINDOW["P2"]


NEWS = {  # alerts for information that bring news to act on, to one that has acknowledged
    "the tier below missed": dict(kind="escalated", about_authority_id="commune:4:child_protection",
                                  about_reason="deadline_missed", about_tier="commune"),
    "the case became P1": dict(kind="alert", cause="raised", previous_severity="P3"),
}


@pytest.mark.parametrize("news", NEWS)
async def test_the_tier_up_told_for_information_gets_the_news_after_a_receiver_outage(
        notifier, inbox, news):
    """A province that had acknowledged is told the commune did not (it must direct the commune
    now), or that the case became an emergency. The alert carries no deadline (the one the
    province met is not its to meet again), so it had one round through its contacts, three
    tries on a lone webhook, and was dead-lettered on a receiver's blip. It is retried as a
    late alert: within the severity's window."""
    a = alert(1, inbox, severity="P1", due=None, authority="province:1:child_protection",
              **NEWS[news]).model_copy(update={"role": "inform", "tier": "province"})
    await notifier.handle([Envelope.wrap(a, "test")])
    inbox.http.status = 503
    for _ in range(5):  # past one round of three tries on its one contact
        await make_due(notifier, a.alert_id)
        assert await step(notifier) == 1
    row = (await rows(notifier))[a.alert_id]
    assert row.status == "pending" and row.next_at <= row.created_at + policy.LATE_WINDOW["P1"]
    inbox.http.status = 200
    await make_due(notifier, a.alert_id)
    assert await step(notifier) == 1
    assert (await rows(notifier))[a.alert_id].status == "delivered"
    body = inbox.requests()[-1]["body"]
    assert (body["kind"], body["role"]) == (NEWS[news]["kind"], "inform")
    assert body["ack_due"] is None and body["ack_due_local"] is None


async def test_an_expired_bundle_goes_again_as_the_same_bundle(notifier, inbox):
    reminders = [alert(i, inbox) for i in range(3)]
    for a in reminders:
        await notifier.handle([Envelope.wrap(a, "test")])
    await make_due(notifier, reminders[0].alert_id)
    [job] = await notifier.claim()
    assert len(job.members) == 3
    # The bundle is sent, then the worker dies before recording it; its lease runs out.
    await notifier.channels["webhook"].send(job.contact.address, notifier.renderer.render_bundle(
        [(a, "http://x/a/t") for _, a in job.members], "webhook", "vi"), job.key)
    for a in reminders:
        await make_due(notifier, a.alert_id)
    [again] = await notifier.claim()
    assert again.key == job.key and len(again.members) == 3
    await notifier.send(again)
    hooks = inbox.requests()
    assert [h["headers"]["Idempotency-Key"] for h in hooks] == [job.key, job.key]
    assert all(len(h["body"]["items"]) == 3 for h in hooks)  # the receiver drops the repeat
    assert {d.status for d in (await rows(notifier)).values()} == {"delivered"}


class SlowSmtp:
    """An SMTP server that takes its time over every command (a tarpit, a loaded MTA)."""

    def __init__(self, delay_s: float):
        self.delay_s = delay_s

    async def handle_MAIL(self, server, session, envelope, address, mail_options):
        await asyncio.sleep(self.delay_s)
        envelope.mail_from = address
        return "250 OK"

    async def handle_RCPT(self, server, session, envelope, address, rcpt_options):
        await asyncio.sleep(self.delay_s)
        envelope.rcpt_tos.append(address)
        return "250 OK"

    async def handle_DATA(self, server, session, envelope):
        await asyncio.sleep(self.delay_s)
        return "250 OK"


async def test_a_slow_smtp_server_is_cut_at_the_send_bound_before_the_lease(notifier, inbox):
    # Each command answers within aiosmtplib's per-command timeout, the whole mail does not: the
    # send is cut at the notifier's bound, well inside the lease, and recorded as a failure.
    port = free_port()
    controller = Controller(SlowSmtp(0.7), hostname="127.0.0.1", port=port)
    controller.start()
    try:
        email = notifier.channels["email"]
        email._port, email._timeout = port, 1.0  # per command: as in production, the bound
        notifier.send_bound = timedelta(seconds=1.0)
        assert notifier.lease == notifier.send_bound + handlers.LEASE_MARGIN
        a = alert(1, inbox, severity="P1", kind="alert",
                  contacts=[Contact(channel="email", address="cp.4@example.vn")])
        await notifier.handle([Envelope.wrap(a, "test")])
        [job] = await notifier.claim()
        started = asyncio.get_running_loop().time()
        await notifier.send(job)
        took = asyncio.get_running_loop().time() - started
    finally:
        controller.stop()
    assert took >= 0.9  # it waited for the bound; the outcome below shows it was cut there
    row = (await rows(notifier))[a.alert_id]
    # Recorded under its own lease: a retry, not a row left leased to be sent again blindly.
    assert (row.status, row.attempts_total, row.last_error) == ("pending", 1, "timeout")
    assert [(r.status, r.error) for r in await receipts(notifier)] == [
        ("attempted", None), ("failed", "timeout")]


async def test_an_smtp_greeting_refusal_moves_to_the_next_contact(notifier, inbox):
    async def refuse(reader, writer):
        writer.write(b"554 5.7.1 no service for you\r\n")
        await writer.drain()
        await reader.read()  # until the client hangs up
        writer.close()

    server = await asyncio.start_server(refuse, "127.0.0.1", 0)
    notifier.channels["email"]._port = server.sockets[0].getsockname()[1]
    contacts = [Contact(channel="email", address="cp.4@example.vn"),
                Contact(channel="webhook", address=f"{inbox.http_url}/hooks/a")]
    a = alert(1, inbox, severity="P1", kind="alert", contacts=contacts)
    try:
        await notifier.handle([Envelope.wrap(a, "test")])
        assert await step(notifier) == 1
        assert await step(notifier) == 1  # permanent: the next contact at once
    finally:
        server.close()
    assert [(r.status, r.channel, r.error) for r in await receipts(notifier)] == [
        ("attempted", "email", None), ("failed", "email", "smtp_554"),
        ("attempted", "webhook", None), ("delivered", "webhook", None)]


async def test_a_failed_record_is_logged_not_raised(notifier, inbox, monkeypatch):
    async def broken(item):
        raise RuntimeError("database away")

    notifier._record_group = broken
    a = alert(1, inbox, severity="P1", kind="alert")
    await notifier.handle([Envelope.wrap(a, "test")])
    [job] = await notifier.claim()
    with structlog.testing.capture_logs(
            processors=[structlog.contextvars.merge_contextvars]) as logs:
        # A logger made now sees the capture (the service's logger is cached on first use).
        monkeypatch.setattr(handlers, "log", structlog.get_logger("beacon.notifier"))
        await notifier.send(job)  # does not raise
    [failed] = [e for e in logs if e["event"] == "delivery_record_failed"]
    assert failed["case_id"] == a.case_id and failed["log_level"] == "error"
    # Still leased: it is sent again after the lease.
    assert (await rows(notifier))[a.alert_id].status == "sending"
    assert notifier._open == 0


async def test_a_due_retry_takes_a_free_slot_without_waiting_for_a_quarter(notifier, inbox):
    a = alert(1, inbox, severity="P3", kind="alert")
    await notifier.handle([Envelope.wrap(a, "test")])
    notifier._urgent = False  # a retry falling due after its backoff: nothing wakes the loop
    notifier._sending = handlers.CONCURRENCY - 1  # one slot free, fewer than a quarter
    worker = asyncio.create_task(notifier.run())
    try:
        async with asyncio.timeout(2):
            while not inbox.requests():
                await asyncio.sleep(0.02)
    finally:
        worker.cancel()
        await asyncio.gather(worker, return_exceptions=True)


async def set_alert(n: Notifier, a: AlertRequested, **values) -> None:
    async with n.rt.db.writes() as s, s.begin():
        await s.execute(update(Delivery).where(Delivery.alert_id == a.alert_id).values(**values))


async def test_an_alert_first_tried_after_its_deadline_still_falls_back(notifier, inbox):
    # Queued in time (ack due in 15 min), tried only after the deadline: the notifier was down.
    a = alert(1, inbox, severity="P1", kind="alert", due=timedelta(minutes=15),
              contacts=webhook_then_email(inbox))
    await notifier.handle([Envelope.wrap(a, "test")])
    overdue = a.model_copy(update={"ack_due": datetime.now(UTC) - timedelta(minutes=5)})
    await set_alert(notifier, a, alert=overdue.model_dump(mode="json"),
                    created_at=utcnow() - timedelta(minutes=20))
    inbox.http.status = 503
    assert await step(notifier) == 1
    assert await step(notifier) == 1  # the e-mail, at once: not dead-lettered on the webhook
    assert len(inbox.mails()) == 1
    assert [(r.status, r.channel) for r in await receipts(notifier)] == [
        ("attempted", "webhook"), ("failed", "webhook"),
        ("attempted", "email"), ("delivered", "email")]


async def test_a_row_that_no_longer_reads_is_dead_lettered_and_the_rest_go(notifier, inbox):
    lost_contact, bad_json, p1 = (alert(i, inbox, severity="P1", kind="alert") for i in range(3))
    for a in (lost_contact, bad_json, p1):
        await notifier.handle([Envelope.wrap(a, "test")])
    await set_alert(notifier, lost_contact, contact_index=5)
    await set_alert(notifier, bad_json, alert={"kind": "alert", "role": "act"})
    assert await step(notifier) == 1  # the P1 goes; the claim is not failed by the other two
    state = await rows(notifier)
    assert state[p1.alert_id].status == "delivered" and len(inbox.requests()) == 1
    assert state[lost_contact.alert_id].status == state[bad_json.alert_id].status == "dead"
    dead = {r.alert_id: r for r in await receipts(notifier) if r.status == "dead_lettered"}
    assert dead[lost_contact.alert_id].error == "unreadable: IndexError"
    assert dead[bad_json.alert_id].error == "unreadable: ValidationError"
    assert dead[bad_json.alert_id].role == "act"  # so escalation treats it as undelivered
    assert await step(notifier) == 0  # and they are not claimed again


async def test_a_failed_bundle_goes_again_as_itself_under_its_key(notifier, inbox):
    first = [alert(i, inbox) for i in range(2)]
    for a in first:
        await notifier.handle([Envelope.wrap(a, "test")])
    await make_due(notifier, first[0].alert_id)
    inbox.http.status = 503
    assert await step(notifier) == 1  # the bundle fails (the receiver may still have kept it)
    inbox.http.status = 200
    newcomer = alert(9, inbox)
    await notifier.handle([Envelope.wrap(newcomer, "test")])
    await make_due(notifier, first[0].alert_id)  # one member's retry is due, the other's soon
    assert await step(notifier) == 1
    await make_due(notifier, newcomer.alert_id)
    assert await step(notifier) == 1
    hooks = [(h["headers"]["Idempotency-Key"], sorted(i["alert_id"] for i in h["body"]["items"])
              if "items" in h["body"] else [h["body"]["alert_id"]]) for h in inbox.requests()]
    bundle = sorted(a.alert_id for a in first)
    assert hooks[0] == hooks[1] and hooks[1][1] == bundle  # the same message, the same key
    assert hooks[2] == (newcomer.alert_id, [newcomer.alert_id])  # the newcomer on its own
    assert {d.status for d in (await rows(notifier)).values()} == {"delivered"}


async def test_part_of_an_expired_bundle_goes_under_a_key_of_its_own(notifier, inbox):
    reminders = [alert(i, inbox) for i in range(3)]
    for a in reminders:
        await notifier.handle([Envelope.wrap(a, "test")])
    await make_due(notifier, reminders[0].alert_id)
    [job] = await notifier.claim()
    # Its worker dies; another (on PostgreSQL, SKIP LOCKED) has re-leased one member meanwhile.
    for a in reminders[:2]:
        await make_due(notifier, a.alert_id)
    [again] = await notifier.claim()
    assert sorted(a.alert_id for _, a in again.members) == sorted(
        a.alert_id for a in reminders[:2])
    assert again.key not in (job.key, None)  # a receiver that had the three drops nothing


async def test_sms_reminders_are_bundled_two_to_a_message_within_two_segments(notifier, inbox):
    sms = [Contact(channel="sms", address="+84900000004")]
    reminders = [alert(i, inbox, contacts=sms) for i in range(5)]
    for a in reminders:
        await notifier.handle([Envelope.wrap(a, "test")])
    for a in reminders:
        await make_due(notifier, a.alert_id)
    assert await step(notifier) == 3
    texts = [r["body"]["text"] for r in inbox.requests()]
    assert sorted(t.count("http") for t in texts) == [1, 2, 2]
    assert all(sms_segments(t)[1] <= 2 for t in texts)


async def test_a_bundle_that_falls_back_to_sms_goes_in_parts_that_fit(notifier, inbox):
    # Bundled for the webhook (up to ten), which is down: by SMS it must still be two to a
    # message within two segments, not all five links in one seven-segment text.
    down = Contact(channel="webhook", address=f"http://127.0.0.1:{free_port()}/hooks/a")
    contacts = [down, Contact(channel="sms", address="+84900000004")]
    reminders = [alert(i, inbox, contacts=contacts) for i in range(5)]
    for a in reminders:
        await notifier.handle([Envelope.wrap(a, "test")])
    for _ in range(20):
        for a in reminders:
            await make_due(notifier, a.alert_id)
        await step(notifier)
        if {d.status for d in (await rows(notifier)).values()} == {"delivered"}:
            break
    texts = [r["body"]["text"] for r in inbox.requests()]
    assert sorted(t.count("http") for t in texts) == [1, 2, 2], texts
    assert all(sms_segments(t)[1] <= 2 for t in texts)


async def test_an_sms_bundle_counts_cases_not_reminders(notifier, inbox):
    # Two reminders each (the acknowledgement's and a milestone's) of two cases: one SMS about
    # the two cases, not two SMS with the same text.
    sms = [Contact(channel="sms", address="+84900000004")]
    reminders = [alert(i, inbox, contacts=sms).model_copy(update={"alert_id": f"C-{i}:{step}"})
                 for i in range(2) for step in ("reminder:1", "emergency_measure:2")]
    for a in reminders:
        await notifier.handle([Envelope.wrap(a, "test")])
        await make_due(notifier, a.alert_id)
    assert await step(notifier) == 1
    [text] = [r["body"]["text"] for r in inbox.requests()]
    assert text.count("http") == 2 and sms_segments(text)[1] <= 2
    assert {d.status for d in (await rows(notifier)).values()} == {"delivered"}


async def test_a_deadline_gone_by_when_the_message_is_sent_is_told_as_overdue(notifier, inbox):
    """A report entered late: the province's e-mail read "Please direct and support it now;
    acknowledge receipt by 12:42", sent at 12:46 (found by the day-in-the-life review). The
    worker renders when it sends, so a deadline already passed is told as overdue since then;
    the webhook body keeps its fields."""
    mail = Contact(channel="email", address="province.1@example.vn", lang="en")
    sms = Contact(channel="sms", address="+84900000001")
    hook = Contact(channel="webhook", address=f"{inbox.http_url}/hooks/province")
    missed = dict(kind="escalated", severity="P1", due=timedelta(minutes=-4),
                  milestone="emergency_measure", milestone_label="Biện pháp bảo vệ khẩn cấp",
                  milestone_name="Emergency protection measure",
                  milestone_due=datetime.now(UTC) - timedelta(minutes=5),
                  about_authority_id="commune:4:child_protection",
                  about_reason="milestone_missed", about_tier="commune")
    sent = [alert(i, inbox, contacts=[c], **missed) for i, c in enumerate((mail, sms, hook))]
    for a in sent:
        await notifier.handle([Envelope.wrap(a, "test")])
    while await step(notifier):
        pass
    due = sent[0].ack_due.astimezone(ZoneInfo("Asia/Ho_Chi_Minh"))
    [path] = inbox.mails()
    text = message_from_bytes(path.read_bytes()).get_payload(decode=True).decode()
    assert (f"Please direct and support it now; acknowledge receipt at once (overdue since "
            f"{due:%H:%M %d/%m/%Y}, Viet Nam time, UTC+7).") in text
    assert "acknowledge receipt by" not in text
    [texted] = [r["body"]["text"] for r in inbox.requests() if r["path"] == "/sms"]
    assert sms_segments(texted)[1] <= 2
    [body] = [r["body"] for r in inbox.requests() if r["path"] == "/hooks/province"]
    assert body["ack_due"] == sent[2].ack_due.isoformat() and "overdue" not in str(body)
    # A plain act alert, sent late, by SMS in Vietnamese.
    late = alert(9, inbox, severity="P1", kind="alert", due=timedelta(minutes=-4), contacts=[sms])
    await notifier.handle([Envelope.wrap(late, "test")])
    while await step(notifier):
        pass
    texted = [r["body"]["text"] for r in inbox.requests() if r["path"] == "/sms"][-1]
    due = late.ack_due.astimezone(ZoneInfo("Asia/Ho_Chi_Minh"))
    assert f"Xac nhan da tiep nhan ngay, da qua han tu {due:%H:%M %d/%m}." in fold_to_gsm7(texted)
