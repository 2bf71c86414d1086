"""Each channel against real loopback servers: tools/inbox.py's HTTP receiver and aiosmtpd."""

import asyncio
import importlib.util
import re
import socket
from datetime import UTC, datetime, timedelta
from email import message_from_bytes, policy
from pathlib import Path

import pytest
from aiosmtpd.controller import Controller

from schemas.events import AlertRequested, Contact
from services.common.config import Settings
from services.common.links import sign_link
from services.notifier.channels import (
    ChannelConfig,
    DeliveryError,
    EmailChannel,
    Message,
    SmsGatewayChannel,
    WebhookChannel,
    aclose,
    build_channels,
    verify_signature,
)
from services.notifier.channels.email import IDEMPOTENCY_HEADER
from services.notifier.render import render, sms_segments

ROOT = Path(__file__).resolve().parents[2]
_spec = importlib.util.spec_from_file_location("beacon_inbox", ROOT / "tools" / "inbox.py")
inbox_mod = importlib.util.module_from_spec(_spec)
_spec.loader.exec_module(inbox_mod)

SECRET = "test-webhook-secret"
SMS_SECRET = "test-sms-secret"
CANARY = "0987654321"
DUE = datetime(2026, 11, 29, 2, 45, tzinfo=UTC)


@pytest.fixture
def inbox(tmp_path):
    box = inbox_mod.Inbox(tmp_path).start()
    box.http.raw_bodies = []
    yield box
    box.stop()


def alert(**kw) -> AlertRequested:
    data = {
        "alert_id": "al-7", "case_id": "C-01KB2X7Q9M3N8P4R5S6T7V8W9X",
        "authority_id": "vn-01-00004-child_protection", "tier": "commune", "agency": "child_protection",
        "role": "act", "kind": "alert", "category": "SEX_ABUSE", "severity": "P1", "publicity": "PA0",
        "ack_due": DUE, "contacts": [Contact(channel="sms", address=CANARY)],
        "rulepack_version": "default@1",
    }
    data.update(kw)
    return AlertRequested(**data)


def link(a: AlertRequested) -> str:
    return sign_link("http://127.0.0.1:8000", a.case_id, "view", a.authority_id,
                     DUE + timedelta(days=7), "link-secret")


def dead_port() -> int:
    return inbox_mod.free_port()  # bound then released: nothing listens there


def headers_of(row) -> dict[str, str]:
    return {k.lower(): v for k, v in row["headers"].items()}


# --- webhook --------------------------------------------------------------------------------


async def test_webhook_arrives_signed_with_idempotency_key(inbox):
    a = alert()
    channel = WebhookChannel(SECRET, timeout_s=5)
    try:
        await channel.send(inbox.http_url + "/hooks/commune-4", render(a, "webhook", "vi", link(a)),
                           a.alert_id)
    finally:
        await channel.aclose()
    [row] = inbox.requests()
    [raw] = inbox.http.raw_bodies
    h = headers_of(row)
    assert row["method"] == "POST" and row["path"] == "/hooks/commune-4"
    assert h["content-type"] == "application/json"
    assert h["idempotency-key"] == a.alert_id
    assert verify_signature(SECRET, h["x-beacon-timestamp"], raw, h["x-beacon-signature"])
    assert not verify_signature("wrong", h["x-beacon-timestamp"], raw, h["x-beacon-signature"])
    assert not verify_signature(SECRET, h["x-beacon-timestamp"], raw + b" ",
                                h["x-beacon-signature"])
    assert row["body"]["case_id"] == a.case_id and row["body"]["severity"] == "P1"
    assert CANARY not in raw.decode()


async def test_signature_tolerance_refuses_old_timestamps(inbox):
    channel = WebhookChannel(SECRET)
    try:
        await channel.send(inbox.http_url, Message("", "", {"a": 1}), "k")
    finally:
        await channel.aclose()
    h = headers_of(inbox.requests()[0])
    raw = inbox.http.raw_bodies[0]
    ts = int(h["x-beacon-timestamp"])
    assert verify_signature(SECRET, str(ts), raw, h["x-beacon-signature"], 300, now=ts + 299)
    assert not verify_signature(SECRET, str(ts), raw, h["x-beacon-signature"], 300, now=ts + 301)
    # a receiver rotating secrets may get several signatures in one header
    both = "v1=deadbeef, " + h["x-beacon-signature"]
    assert verify_signature(SECRET, str(ts), raw, both, now=ts)


async def test_during_a_secret_rotation_both_secrets_sign(inbox):
    """BEACON_WEBHOOK_SECRET_PREVIOUS: receivers still on the old secret and those already on the
    new one both accept every webhook and SMS-gateway request; a third secret does not."""
    settings = Settings(secret_key="k", webhook_secret="new-secret",
                        webhook_secret_previous=" old-secret, ")
    secret, *previous = settings.webhook_secrets()
    assert (secret, previous) == ("new-secret", ["old-secret"])
    channels = build_channels(ChannelConfig(
        webhook_secret=secret, previous_secrets=previous, smtp_host=None,
        sms_gateway_url=inbox.http_url + "/sms", sms_secret=secret))
    try:
        await channels["webhook"].send(inbox.http_url + "/hooks/a", Message("", "", {"a": 1}), "k1")
        await channels["sms"].send("+84901234567", Message("", "Beacon test", None), "k2")
    finally:
        await aclose(channels)
    assert len(inbox.requests()) == 2
    for row, raw in zip(inbox.requests(), inbox.http.raw_bodies, strict=True):
        h = headers_of(row)
        ts, header = h["x-beacon-timestamp"], h["x-beacon-signature"]
        assert verify_signature("new-secret", ts, raw, header)
        assert verify_signature("old-secret", ts, raw, header)
        assert not verify_signature("other-secret", ts, raw, header)


@pytest.mark.parametrize("status,retryable", [
    (503, True), (500, True), (429, True), (408, True), (400, False), (404, False), (410, False),
])
async def test_webhook_status_classes(inbox, status, retryable):
    inbox.http.status = status
    channel = WebhookChannel(SECRET)
    try:
        with pytest.raises(DeliveryError) as err:
            await channel.send(inbox.http_url, Message("", "", {"a": 1}), "k")
    finally:
        await channel.aclose()
    assert err.value.retryable is retryable
    assert err.value.reason == f"http_{status}"


async def test_webhook_to_a_server_that_is_down_is_retryable():
    channel = WebhookChannel(SECRET, timeout_s=2)
    try:
        with pytest.raises(DeliveryError) as err:
            await channel.send(f"http://127.0.0.1:{dead_port()}/", Message("", "", {"a": 1}), "k")
    finally:
        await channel.aclose()
    assert err.value.retryable and err.value.reason == "connect_error"


async def test_webhook_to_a_server_that_never_answers_times_out():
    with socket.socket() as listener:  # accepts connections into its backlog, never replies
        listener.bind(("127.0.0.1", 0))
        listener.listen(8)
        channel = WebhookChannel(SECRET, timeout_s=0.3)
        try:
            with pytest.raises(DeliveryError) as err:
                await channel.send(f"http://127.0.0.1:{listener.getsockname()[1]}/",
                                   Message("", "", {"a": 1}), "k")
        finally:
            await channel.aclose()
    assert err.value.retryable and err.value.reason == "timeout"


async def test_webhook_bad_address_is_permanent():
    channel = WebhookChannel(SECRET)
    try:
        with pytest.raises(DeliveryError) as err:
            await channel.send("ftp://example.org/x", Message("", "", {"a": 1}), "k")
    finally:
        await channel.aclose()
    assert not err.value.retryable


async def test_webhook_uses_the_environment_proxy_unless_no_proxy_covers_the_host(monkeypatch):
    """HTTP_PROXY / HTTPS_PROXY and NO_PROXY hold, as for any HTTP client on the host."""
    request_lines = []

    async def proxy(reader, writer):  # a forward proxy that answers for the origin itself
        head = await reader.readuntil(b"\r\n\r\n")
        request_lines.append(head.split(b"\r\n")[0].decode())
        length = int(re.search(rb"(?i)content-length: *(\d+)", head).group(1))
        await reader.readexactly(length)
        writer.write(b"HTTP/1.1 200 OK\r\nContent-Length: 0\r\nConnection: close\r\n\r\n")
        await writer.drain()
        writer.close()

    server = await asyncio.start_server(proxy, "127.0.0.1", 0)
    for name in ("NO_PROXY", "no_proxy", "HTTPS_PROXY", "https_proxy", "http_proxy"):
        monkeypatch.delenv(name, raising=False)
    monkeypatch.setenv("HTTP_PROXY", f"http://127.0.0.1:{server.sockets[0].getsockname()[1]}")
    url = "http://alerts.example.invalid/hooks/commune-4"
    try:
        channel = WebhookChannel(SECRET, timeout_s=5)
        try:
            await channel.send(url, Message("", "", {"a": 1}), "k-1")
        finally:
            await channel.aclose()
        assert request_lines == [f"POST {url} HTTP/1.1"]

        monkeypatch.setenv("NO_PROXY", "alerts.example.invalid")
        channel = WebhookChannel(SECRET, timeout_s=5)
        try:
            with pytest.raises(DeliveryError) as err:  # direct: the name does not resolve
                await channel.send(url, Message("", "", {"a": 1}), "k-2")
        finally:
            await channel.aclose()
        assert err.value.reason == "connect_error"
        assert len(request_lines) == 1
    finally:
        server.close()
        await server.wait_closed()


async def test_webhook_recovers_when_the_receiver_comes_back(tmp_path):
    port = dead_port()
    channel = WebhookChannel(SECRET, timeout_s=2)
    url = f"http://127.0.0.1:{port}/"
    try:
        with pytest.raises(DeliveryError):
            await channel.send(url, Message("", "", {"a": 1}), "same-key")
        box = inbox_mod.Inbox(tmp_path, http_port=port).start()
        try:
            await channel.send(url, Message("", "", {"a": 1}), "same-key")
        finally:
            box.stop()
    finally:
        await channel.aclose()
    [row] = box.requests()
    assert headers_of(row)["idempotency-key"] == "same-key"


# --- e-mail ---------------------------------------------------------------------------------


async def test_email_arrives_as_an_eml_file(inbox):
    a = alert()
    channel = EmailChannel("127.0.0.1", inbox.smtp_port, "Beacon <beacon@alerts.example.vn>")
    sent = render(a, "email", "vi", link(a))
    await channel.send("officer@commune4.example.vn", sent, a.alert_id)
    [eml] = inbox.mails()
    mail = message_from_bytes(eml.read_bytes(), policy=policy.default)
    assert mail["Message-ID"] == "<al-7@alerts.example.vn>"
    assert mail[IDEMPOTENCY_HEADER] == a.alert_id
    assert mail["To"] == "officer@commune4.example.vn"
    assert mail["Subject"] == sent.subject  # every space kept (no folding between words)
    assert "Xâm hại tình dục" in mail["Subject"] and a.case_id in mail["Subject"]


async def test_long_headers_arrive_whole(inbox):
    """A long Vietnamese subject read back with its spaces, and a long key as one plain line
    that a mail filter can match: folding had given "Bạolực" and encoded-word pieces."""
    a = alert(category="PHYS_VIOLENCE", kind="escalated")
    key = f"{a.case_id}:commune:8:child_protection:escalated:undelivered:commune:4:police"
    sent = render(a, "email", "vi", link(a))
    assert len(sent.subject) > 78
    await EmailChannel("127.0.0.1", inbox.smtp_port, "b@x.test").send("o@y.test", sent, key)
    [eml] = inbox.mails()
    raw = eml.read_bytes()
    assert f"{IDEMPOTENCY_HEADER}: {key}".encode() in raw.splitlines()  # one line, as sent
    mail = message_from_bytes(raw, policy=policy.default)
    assert mail["Subject"] == sent.subject and "Bạo lực thể chất" in mail["Subject"]
    [date] = [line for line in raw.splitlines() if line.startswith(b"Date: ")]
    assert date.endswith(b" +0000")  # UTC, not "-0000" (a zone unknown)
    body = mail.get_content()
    assert link(a) in body and "09:45 29/11/2026" in body
    assert CANARY not in eml.read_text(errors="replace")


async def test_email_message_id_is_stable_per_key(inbox):
    channel = EmailChannel("127.0.0.1", inbox.smtp_port, "b@x.test")
    weird = "alert id/with spaces"
    for _ in range(2):
        await channel.send("o@y.test", Message("s", "t"), weird)
    ids = {message_from_bytes(f.read_bytes())["Message-ID"] for f in inbox.mails()}
    assert len(ids) == 1 and " " not in ids.pop()


class Refuse:
    def __init__(self, at: str, answer: str):
        self.at, self.answer = at, answer

    async def handle_RCPT(self, server, session, envelope, address, rcpt_options):
        if self.at == "rcpt":
            return self.answer
        envelope.rcpt_tos.append(address)
        return "250 OK"

    async def handle_DATA(self, server, session, envelope):
        return self.answer if self.at == "data" else "250 OK"


@pytest.mark.parametrize("at,answer,retryable", [
    ("rcpt", "550 5.1.1 mailbox unavailable", False),
    ("rcpt", "451 4.3.0 try again later", True),
    ("data", "554 5.7.1 rejected", False),
    ("data", "452 4.3.1 insufficient storage", True),
])
async def test_smtp_refusals(at, answer, retryable):
    port = inbox_mod.free_port()
    controller = Controller(Refuse(at, answer), hostname="127.0.0.1", port=port)
    controller.start()
    try:
        with pytest.raises(DeliveryError) as err:
            await EmailChannel("127.0.0.1", port, "b@x.test").send(
                "o@y.test", Message("s", "t"), "k")
    finally:
        controller.stop()
    assert err.value.retryable is retryable
    assert err.value.reason == "smtp_" + answer[:3]


async def test_smtp_down_is_retryable():
    with pytest.raises(DeliveryError) as err:
        await EmailChannel("127.0.0.1", dead_port(), "b@x.test", timeout_s=2).send(
            "o@y.test", Message("s", "t"), "k")
    assert err.value.retryable


async def test_starttls_required_but_not_offered_is_permanent(inbox):
    channel = EmailChannel("127.0.0.1", inbox.smtp_port, "b@x.test", starttls=True)
    with pytest.raises(DeliveryError) as err:
        await channel.send("o@y.test", Message("s", "t"), "k")
    assert not err.value.retryable
    assert inbox.mails() == []


async def test_bad_email_address_is_permanent(inbox):
    with pytest.raises(DeliveryError) as err:
        await EmailChannel("127.0.0.1", inbox.smtp_port, "b@x.test").send(
            "not-an-address", Message("s", "t"), "k")
    assert not err.value.retryable


# --- SMS gateway ----------------------------------------------------------------------------


async def test_sms_gateway_request_shape(inbox):
    a = alert()
    message = render(a, "sms", "vi", link(a))
    channel = SmsGatewayChannel(inbox.http_url + "/sms", SMS_SECRET)
    try:
        await channel.send("+84 912 345 678", message, a.alert_id)
    finally:
        await channel.aclose()
    [row] = inbox.requests()
    [raw] = inbox.http.raw_bodies
    h = headers_of(row)
    assert row["path"] == "/sms"
    assert set(row["body"]) == {"to", "text", "idempotency_key", "encoding", "segments"}
    assert row["body"]["to"] == "+84912345678"
    assert row["body"]["text"] == message.text
    assert row["body"]["idempotency_key"] == a.alert_id == h["idempotency-key"]
    assert (row["body"]["encoding"], row["body"]["segments"]) == sms_segments(message.text)
    assert row["body"]["segments"] <= 2
    assert verify_signature(SMS_SECRET, h["x-beacon-timestamp"], raw, h["x-beacon-signature"])


async def test_sms_english_goes_as_gsm7(inbox):
    a = alert()
    channel = SmsGatewayChannel(inbox.http_url + "/sms", SMS_SECRET)
    try:
        await channel.send("0912345678", render(a, "sms", "en", link(a)), "k")
    finally:
        await channel.aclose()
    assert inbox.requests()[0]["body"]["encoding"] == "gsm7"


async def test_sms_bad_number_is_permanent_and_gateway_down_is_retryable(inbox):
    channel = SmsGatewayChannel(inbox.http_url + "/sms", SMS_SECRET)
    try:
        with pytest.raises(DeliveryError) as err:
            await channel.send("call me", Message("", "x"), "k")
        assert not err.value.retryable
    finally:
        await channel.aclose()
    assert inbox.requests() == []
    down = SmsGatewayChannel(f"http://127.0.0.1:{dead_port()}/sms", SMS_SECRET)
    try:
        with pytest.raises(DeliveryError) as err:
            await down.send("0912345678", Message("", "x"), "k")
        assert err.value.retryable
    finally:
        await down.aclose()


# --- registry -------------------------------------------------------------------------------


async def test_build_channels_sends_through_each(inbox):
    config = ChannelConfig(
        webhook_secret=SECRET, smtp_host="127.0.0.1", smtp_port=inbox.smtp_port,
        mail_from="beacon@x.test", sms_gateway_url=inbox.http_url + "/sms", sms_secret=SMS_SECRET,
    )
    channels = build_channels(config)
    assert set(channels) == {"webhook", "email", "sms"}
    a = alert()
    try:
        await asyncio.gather(
            channels["webhook"].send(inbox.http_url + "/hook",
                                     render(a, "webhook", "vi", link(a)), a.alert_id),
            channels["email"].send("o@y.test", render(a, "email", "vi", link(a)), a.alert_id),
            channels["sms"].send("0912345678", render(a, "sms", "vi", link(a)), a.alert_id),
        )
    finally:
        await aclose(channels)
    assert len(inbox.requests()) == 2 and len(inbox.mails()) == 1
    everything = (inbox.dir / "webhook.jsonl").read_text() + inbox.mails()[0].read_text()
    assert CANARY not in everything


def test_build_channels_rejects_bad_configuration():
    with pytest.raises(ValueError):
        ChannelConfig(webhook_secret="")
    with pytest.raises(ValueError):
        build_channels(ChannelConfig(webhook_secret="s", sms_gateway_url="http://g/sms"))
    with pytest.raises(ValueError):
        build_channels(ChannelConfig(webhook_secret="s", sms_gateway_url="g/sms", sms_secret="x"))
    with pytest.raises(ValueError):
        build_channels(ChannelConfig(webhook_secret="s", smtp_username="u"))
    only_webhook = build_channels(ChannelConfig(webhook_secret="s", smtp_host=None))
    assert set(only_webhook) == {"webhook"}
    asyncio.run(aclose(only_webhook))
