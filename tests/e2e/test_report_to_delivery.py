"""The walking skeleton, real all the way: report -> Kafka -> decision -> webhook -> case."""

import asyncio
import json

from aiokafka import AIOKafkaConsumer

from schemas.events import Topics
from services.notifier.channels import verify_signature
from tests.conftest import eventually
from tests.support.reports import CANARIES, report


async def test_p1_report_is_routed_and_delivered(stack, inbox):
    async with stack.client("operator") as api:
        answer = await api.post("/api/v1/reports", json=report(), headers={"Idempotency-Key": "e2e-1"})
        assert answer.status_code == 202, answer.text
        case_id = answer.json()["case_id"]

        async def delivered():
            case = (await api.get(f"/api/v1/cases/{case_id}")).json()
            acts = {t["authority_id"]: t for t in case["targets"] if t.get("role") == "act"}
            done = all(t.get("delivery") == "delivered" for t in acts.values())
            return case if len(acts) >= 2 and done else None

        case = await eventually(delivered)

    assert case["severity"] == "P1"
    roles = {t["authority_id"]: t["role"] for t in case["targets"]}
    assert roles["commune:4:child_protection"] == "act"
    assert roles["commune:4:police"] == "act"
    assert roles["province:1:child_protection"] == "inform"
    cp = next(t for t in case["targets"] if t["authority_id"] == "commune:4:child_protection")
    assert cp["ack_within"] == "PT15M" and cp["ack_due"]
    kinds = [e["kind"] for e in case["timeline"]]
    assert kinds[0] == "report_received"
    assert "case_decided" in kinds and "delivery_delivered" in kinds

    hooks = [r for r in inbox.requests() if r["path"] == "/hooks/commune:4:child_protection"]
    assert len(hooks) == 1
    headers = {k.lower(): v for k, v in hooks[0]["headers"].items()}
    assert headers["idempotency-key"] == f"{case_id}:commune:4:child_protection:alert"
    body = json.dumps(hooks[0]["body"], ensure_ascii=False, separators=(",", ":"))
    assert verify_signature("test-webhook-secret", headers["x-beacon-timestamp"], body,
                            headers["x-beacon-signature"])
    assert hooks[0]["body"]["case_id"] == case_id


async def test_identity_never_leaves_intake(stack, inbox, capfd):
    async with stack.client("operator") as api:
        case_id = (await api.post("/api/v1/reports", json=report())).json()["case_id"]

        async def delivered():
            case = (await api.get(f"/api/v1/cases/{case_id}")).json()
            return any(t.get("delivery") == "delivered" for t in case["targets"])

        await eventually(delivered)
        case_text = (await api.get(f"/api/v1/cases/{case_id}")).text

    # Every topic, every delivered message, the case API.
    settings = stack.rt.settings
    consumer = AIOKafkaConsumer(*[settings.topic(t) for t in Topics.ALL],
                                bootstrap_servers=settings.kafka_bootstrap,
                                auto_offset_reset="earliest", enable_auto_commit=False)
    await consumer.start()
    try:
        seen = b""
        for _ in range(10):
            batch = await consumer.getmany(timeout_ms=500)
            seen += b"".join(r.value for records in batch.values() for r in records)
    finally:
        await consumer.stop()
    assert case_id.encode() in seen  # the events are there...
    delivered_text = (inbox.dir / "webhook.jsonl").read_text()
    delivered_text += "".join(p.read_text(errors="replace") for p in inbox.mails())
    logged = "".join(capfd.readouterr())
    assert "report_received" in logged or "decided" in logged  # the stack did log...
    for canary in CANARIES:  # ...and no identity in any of it
        assert canary not in logged
        assert canary.encode() not in seen
        assert canary not in delivered_text
        assert canary not in case_text


async def test_same_idempotency_key_same_answer_other_body_conflict(stack):
    body = report()
    async with stack.client("operator") as api:
        first = await api.post("/api/v1/reports", json=body, headers={"Idempotency-Key": "k-1"})
        again = await api.post("/api/v1/reports", json=body, headers={"Idempotency-Key": "k-1"})
        other = await api.post("/api/v1/reports", json={**body, "category": "NEGLECT"},
                               headers={"Idempotency-Key": "k-1"})
    assert first.status_code == 202 and again.status_code == 202
    assert again.json() == first.json()
    assert other.status_code == 409


async def test_concurrent_requests_with_one_key_open_one_case(stack):
    """A client that retries before its first attempt is answered: one report, never two."""
    body = report()
    async with stack.client("operator") as api:
        answers = await asyncio.gather(*(
            api.post("/api/v1/reports", json=body, headers={"Idempotency-Key": "k-race"})
            for _ in range(8)))
        assert {a.status_code for a in answers} <= {202, 409}
        accepted = {a.json()["report_id"] for a in answers if a.status_code == 202}
        assert len(accepted) == 1, [a.text for a in answers]
        case_id = next(a.json()["case_id"] for a in answers if a.status_code == 202)
        case = (await api.get(f"/api/v1/cases/{case_id}")).json()
    assert case["report_count"] == 1


async def test_bad_input_is_refused_with_the_field(stack):
    async with stack.client("operator") as api:
        cases = {
            "category": report(category="NOT_A_CATEGORY"),
            "commune_code": report(location={"province_code": 1, "commune_code": 26734}),
            "received_at": report(received_at="2099-01-01T00:00:00+00:00"),
            "age": report(children=[{"age": 19}]),
            "indicators": report(indicators=["not_an_indicator"]),
        }
        for field, body in cases.items():
            answer = await api.post("/api/v1/reports", json=body)
            assert answer.status_code == 422, (field, answer.text)
            assert field in answer.text, (field, answer.text)
        big = report(narrative="x" * 300_000)
        assert (await api.post("/api/v1/reports", json=big)).status_code == 413
    async with stack.client() as anonymous:
        assert (await anonymous.post("/api/v1/reports", json=report())).status_code == 401


async def test_authority_sees_only_cases_routed_to_it(stack):
    async with stack.client("operator") as api:
        case_id = (await api.post("/api/v1/reports", json=report())).json()["case_id"]

        async def routed():
            case = (await api.get(f"/api/v1/cases/{case_id}")).json()
            return case["targets"]

        await eventually(routed)
    async with stack.client("authority") as mine:
        assert (await mine.get(f"/api/v1/cases/{case_id}")).status_code == 200
    async with stack.client("authority_elsewhere") as other:
        assert (await other.get(f"/api/v1/cases/{case_id}")).status_code == 403
