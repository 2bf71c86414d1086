"""The rule-pack lifecycle on the real broker: upload, replay, two-person approval, publish to
running instances without a restart, roll back."""

import asyncio
from datetime import UTC, datetime, timedelta
from pathlib import Path

import pytest
from sqlalchemy import select

from services import runtime
from services.common import auth
from services.common.audit import AuditRecord
from services.escalation import packs_store
from services.escalation.rulepack import SHIPPED
from services.escalation.store import EscalationCase, EscalationTarget
from tests.conftest import eventually
from tests.support.reports import report

# The default pack with neglect made P2, its version left as it was.
EDITED_DEFAULT = Path(SHIPPED["default"]).read_text("utf-8").replace("default: P3", "default: P2", 1)

DRAFT = "test-2026.2"
P2_CP = "      - {tier: commune, agency: child_protection, role: act, ack: PT1H}\n"


def crafted_pack(version: str = DRAFT) -> str:
    """The default pack with two changes: commune police must act on P2 cases too, and
    EMOTIONAL abuse is P2 instead of P3."""
    text = SHIPPED["default"].read_text("utf-8")
    emotional = 'EMOTIONAL: {label: "Bạo lực tinh thần", name: "Emotional abuse", default: P3}'
    assert P2_CP in text and emotional in text
    text = text.replace("version: default-2026.5", f"version: {version}")
    police = "      - {tier: commune, agency: police, role: act, ack: PT1H}\n"
    text = text.replace(P2_CP, P2_CP + police)
    return text.replace(emotional, emotional.replace("P3", "P2"))


async def second_admin(stack) -> str:
    async with stack.rt.db.writes() as session, session.begin():
        await auth.create_user(session, "test-admin2", "Second admin", "admin")
        await session.flush()
        stack.tokens["admin2"] = await auth.issue_token(session, "test-admin2")
    return "admin2"


def without_emotional(version: str = DRAFT) -> str:
    """crafted_pack without the EMOTIONAL category."""
    return "\n".join(line for line in crafted_pack(version).split("\n")
                     if "EMOTIONAL:" not in line)


async def approved(stack, admin2: str, text: str, version: str = DRAFT) -> None:
    """`text` uploaded as a draft by one admin and approved by the other."""
    async with stack.client("admin") as admin:
        uploaded = await admin.post("/api/v1/rulepacks", json={"text": text})
        assert uploaded.status_code == 201, uploaded.text
    async with stack.client(admin2) as approver:
        assert (await approver.post(f"/api/v1/rulepacks/{version}/approval")).is_success


async def publish(stack, version: str = DRAFT, **body):
    async with stack.client("admin") as admin:
        return await admin.post(f"/api/v1/rulepacks/{version}/publication", json=body)


async def decided(stack, body: dict) -> str:
    async with stack.client("operator") as api:
        case_id = (await api.post("/api/v1/reports", json=body)).json()["case_id"]

    async def done():
        async with stack.rt.db.reads() as session:
            return await session.get(EscalationCase, case_id)

    await eventually(done)
    return case_id


def p2_at(commune: int) -> dict:
    """A P2 report (PHYS_VIOLENCE, age 8) in a commune of province 1: a report in the same
    commune and category would join the open case there, so each case gets its own commune."""
    return report(children=[{"age": 8}], indicators=[],
                  location={"province_code": 1, "commune_code": commune})


async def targets(stack, case_id: str) -> dict[str, str]:
    async with stack.rt.db.reads() as session:
        rows = (await session.scalars(select(EscalationTarget).where(
            EscalationTarget.case_id == case_id))).all()
    return {r.authority_id: r.role for r in rows}


async def test_uploader_cannot_approve(stack):
    other = await second_admin(stack)
    async with stack.client("admin") as admin:
        invalid = await admin.post("/api/v1/rulepacks", json={"text": "version: x\ntiers: []\n"})
        assert invalid.status_code == 422 and "tiers" in invalid.text
        problems = (await admin.post("/api/v1/rulepacks/validate",
                                     json={"text": crafted_pack()})).json()
        assert problems == []
        up = await admin.post("/api/v1/rulepacks", json={"text": crafted_pack()})
        assert up.status_code == 201 and up.json()["state"] == "draft"
        clash = await admin.post("/api/v1/rulepacks",
                                 json={"text": crafted_pack() + "\n# changed\n"})
        assert clash.status_code == 409  # a version names one pack
        assert (await admin.post(f"/api/v1/rulepacks/{DRAFT}/publication")).status_code == 409
        own = await admin.post(f"/api/v1/rulepacks/{DRAFT}/approval")
        assert own.status_code == 403
    async with stack.client(other) as admin2:
        approved = await admin2.post(f"/api/v1/rulepacks/{DRAFT}/approval")
        assert approved.status_code == 200 and approved.json()["approved_by"] == "test-admin2"
        assert (await admin2.get(f"/api/v1/rulepacks/{DRAFT}")).status_code == 200
        assert (await admin2.get("/api/v1/rulepacks")).status_code == 200
    async with stack.client("auditor") as auditor:
        trail = (await auditor.get("/api/v1/audit", params={"case_id": DRAFT})).json()["items"]
        listed = (await auditor.get("/api/v1/audit", params={"case_id": "rulepacks"})).json()
        refused = (await auditor.get("/api/v1/audit", params={"case_id": "rulepack"})).json()
    # Every attempt is recorded: the refused ones too (publishing before approval, approving
    # one's own upload, an invalid upload, a version uploaded twice).
    assert [(r["user_id"], r["action"], r["outcome"]) for r in trail] == [
        ("test-admin", "rule_change", "ok"), ("test-admin", "rule_change", "rejected"),
        ("test-admin", "denied", "denied"),
        ("test-admin2", "rule_change", "ok"), ("test-admin2", "read", "ok")]
    assert [(r["action"], r["outcome"]) for r in refused["items"]] == [
        ("rule_change", "rejected")] * 2
    assert [(r["user_id"], r["action"]) for r in listed["items"]] == [("test-admin2", "read")]


async def test_replay_lists_the_cases_a_change_would_touch(stack):
    p2 = await decided(stack, report(children=[{"age": 8}], indicators=[]))
    emotional = await decided(stack, report(category="EMOTIONAL", children=[{"age": 10}],
                                            indicators=[]))
    p1 = await decided(stack, report(category="SEX_ABUSE", children=[{"age": 10}], indicators=[]))
    async with stack.client("admin") as admin:
        assert (await admin.post("/api/v1/rulepacks", json={"text": crafted_pack()})).is_success
        answer = await admin.post(f"/api/v1/rulepacks/{DRAFT}/replay")
        assert answer.status_code == 200, answer.text
    result = answer.json()
    assert result["current_version"] == "default-2026.5" and result["draft_version"] == DRAFT
    assert result["compared"] == 3 and result["changed"] == 2 and result["failed"] == []
    by_case = {c["case_id"]: c for c in result["cases"]}
    assert set(by_case) == {p2, emotional}  # the SEX_ABUSE case (P1) is untouched
    assert by_case[p2]["severity"] is None
    assert by_case[p2]["targets_added"] == ["act:commune:4:police"]
    assert by_case[emotional]["severity"] == ["P3", "P2"]
    assert "act:commune:4:police" in by_case[emotional]["targets_added"]
    assert "inform:province:1:child_protection" in by_case[emotional]["targets_added"]
    assert by_case[emotional]["targets_changed"] == ["act:commune:4:child_protection"]
    assert p1 not in by_case
    # The admin read those two cases' decisions: each is in the audit trail, the third is not.
    async with stack.rt.db.reads() as session:
        read = (await session.scalars(select(AuditRecord.record).where(
            AuditRecord.user_id == "test-admin", AuditRecord.action == "read",
            AuditRecord.record.in_((p2, emotional, p1))))).all()
    assert sorted(read) == sorted([p2, emotional])


async def test_published_pack_takes_effect_without_restart_and_rollback_restores(stack):
    # A second escalation instance, as `beacon run escalation` would be: same database and topics.
    other = runtime.build(stack.rt.settings, frozenset({"escalation"}))
    await runtime.start(other)
    try:
        before = await decided(stack, p2_at(4))
        assert "commune:4:police" not in await targets(stack, before)
        await approved(stack, await second_admin(stack), crafted_pack())
        published = await publish(stack)
        assert published.status_code == 202, published.text

        async def in_force():
            return all(rt.pack.version == DRAFT for rt in (stack.rt, other))

        await eventually(in_force, timeout=5, interval=0.05)
        async with stack.client("admin") as admin:
            listed = {p["version"]: p for p in (await admin.get("/api/v1/rulepacks")).json()}
            assert listed[DRAFT]["in_force"] and listed["default-2026.5"]["state"] == "builtin"

        after = await decided(stack, p2_at(8))
        assert (await targets(stack, after))["commune:8:police"] == "act"
        async with stack.rt.db.reads() as session:
            assert (await session.get(EscalationCase, after)).rulepack_version == DRAFT
            # Open cases keep the routing they had: re-evaluation is the admin's choice.
            assert (await session.get(EscalationCase, before)).rulepack_version == "default-2026.5"
        assert "commune:4:police" not in await targets(stack, before)

        async with stack.client("admin") as admin:
            back = await admin.post("/api/v1/rulepacks/default-2026.5/rollback", json={})
            assert back.status_code == 202, back.text

            async def rolled_back():
                return all(rt.pack.version == "default-2026.5" for rt in (stack.rt, other))

            await eventually(rolled_back, timeout=5, interval=0.05)
        restored = await decided(stack, p2_at(25))
        assert "commune:25:police" not in await targets(stack, restored)

        # Publishing again, this time re-evaluating open cases: the earlier case gains police.
        async with stack.client("admin") as admin:
            again = await admin.post(f"/api/v1/rulepacks/{DRAFT}/rollback",
                                     json={"reevaluate_open": True})
            assert again.status_code == 202, again.text

        async def reevaluated():
            return (await targets(stack, before)).get("commune:4:police") == "act"

        await eventually(reevaluated, timeout=10)
    finally:
        await runtime.stop(other)


async def test_effective_time_in_the_future_waits(stack):
    admin2 = await second_admin(stack)
    async with stack.client("admin") as admin:
        await admin.post("/api/v1/rulepacks", json={"text": crafted_pack()})
    async with stack.client(admin2) as approver:
        await approver.post(f"/api/v1/rulepacks/{DRAFT}/approval")
    from datetime import timedelta

    from services.common.db import utcnow

    at = utcnow() + timedelta(seconds=3)
    async with stack.client("admin") as admin:
        # Far ahead is refused before anything is published (year 9999 was a 500, on Kafka).
        far = await admin.post(f"/api/v1/rulepacks/{DRAFT}/publication",
                               json={"effective_at": "9999-12-31T23:00:00-05:00"})
        assert far.status_code == 422
        assert far.json()["detail"][0]["loc"] == ["body", "effective_at"], far.text
        answer = await admin.post(f"/api/v1/rulepacks/{DRAFT}/publication",
                                  json={"effective_at": at.isoformat()})
        assert answer.status_code == 202
    await asyncio.sleep(1)
    assert stack.rt.pack.version == "default-2026.5"

    async def in_force():
        return stack.rt.pack.version == DRAFT

    await eventually(in_force, timeout=8, interval=0.1)


async def test_rules_cli_lifecycle(stack, tmp_path):
    from typer.testing import CliRunner

    from services.cli import app

    await second_admin(stack)
    path = tmp_path / "pack.yaml"
    path.write_text(crafted_pack("cli-2026.3"))
    runner = CliRunner()

    def run(role, *args):
        env = {"BEACON_API_URL": stack.base_url, "BEACON_TOKEN": stack.tokens[role]}
        return runner.invoke(app, ["rules", *args], env=env)

    broken = tmp_path / "broken.yaml"
    broken.write_text(crafted_pack("cli-broken") + "unknown_key: 1\n")
    refused = await asyncio.to_thread(run, "admin", "upload", str(broken))
    # Placed in the admin's file, as `rules validate` places it, not in "upload:LINE".
    assert refused.exit_code == 1 and f"{broken}:" in refused.output, refused.output
    assert "upload:" not in refused.output
    up = await asyncio.to_thread(run, "admin", "upload", str(path))
    assert up.exit_code == 0, up.output
    own = await asyncio.to_thread(run, "admin", "approve", "cli-2026.3")
    assert own.exit_code == 1 and "403" in own.output
    ok = await asyncio.to_thread(run, "admin2", "approve", "cli-2026.3")
    assert ok.exit_code == 0, ok.output
    replay = await asyncio.to_thread(run, "admin", "replay", "cli-2026.3")
    # CliRunner captures the whole process's stdout, the stack's logs too: look for the answer.
    assert replay.exit_code == 0 and '"draft_version": "cli-2026.3"' in replay.output
    naive = await asyncio.to_thread(run, "admin", "publish", "cli-2026.3",
                                    "--at", "2026-12-01T10:00:00")
    # The API's 422 as a place and a message, not a Python dict.
    assert naive.exit_code == 1 and "body.effective_at: " in naive.output
    assert "'loc'" not in naive.output
    pub = await asyncio.to_thread(run, "admin", "publish", "cli-2026.3")
    assert pub.exit_code == 0, pub.output

    async def in_force():
        return stack.rt.pack.version == "cli-2026.3"

    await eventually(in_force, timeout=5, interval=0.05)
    back = await asyncio.to_thread(run, "admin", "rollback", "default-2026.5")
    assert back.exit_code == 0, back.output


def test_in_force_is_latest_effective_not_in_future():
    """Pure: which publication is in force (no broker needed)."""
    from datetime import UTC, datetime, timedelta

    from schemas.events import RulePackPublished
    from services.escalation.pack_watcher import in_force

    t0 = datetime(2026, 11, 29, tzinfo=UTC)

    def pub(version, effective, published):
        return (f"e-{version}", RulePackPublished(
            version=version, sha256="x", text="", effective_at=t0 + timedelta(minutes=effective),
            published_at=t0 + timedelta(minutes=published), published_by="a"))

    pubs = {"a": pub("a", 0, 0), "b": pub("b", 10, 1), "c": pub("c", 60, 2)}
    assert in_force({}, t0) is None
    assert in_force(pubs, t0 + timedelta(minutes=5))[1].version == "a"
    assert in_force(pubs, t0 + timedelta(minutes=30))[1].version == "b"  # c is scheduled
    assert in_force(pubs, t0 + timedelta(minutes=61))[1].version == "c"
    pubs["a"] = pub("a", 20, 3)  # a rollback to a, effective after b
    assert in_force(pubs, t0 + timedelta(minutes=30))[1].version == "a"


async def test_a_pack_that_lacks_an_open_cases_category_is_not_published(stack):
    """In force, it could decide none of that case's follow-ups: each would be accepted (202),
    fail, and go to the dead-letter topic while the case showed nothing."""
    emotional = await decided(stack, report(category="EMOTIONAL", children=[{"age": 10}],
                                            indicators=[]))
    text = without_emotional()
    assert "EMOTIONAL:" not in text
    await approved(stack, await second_admin(stack), text)
    refused = await publish(stack)
    async with stack.client("admin") as admin:
        listed = {p["version"]: p for p in (await admin.get("/api/v1/rulepacks")).json()}
    assert refused.status_code == 409 and emotional in refused.text, refused.text
    assert not listed[DRAFT]["in_force"]


async def test_a_pack_that_drops_a_category_takes_effect_now_or_not_at_all(stack):
    """No case is open in EMOTIONAL now; but scheduled for tomorrow, cases could open in it
    meanwhile, and the pack could then decide none of their follow-ups."""
    await approved(stack, await second_admin(stack), without_emotional())
    tomorrow = (datetime.now(UTC) + timedelta(days=1)).isoformat()
    later = await publish(stack, effective_at=tomorrow)
    assert later.status_code == 409 and "EMOTIONAL" in later.text, later.text
    now = await publish(stack)
    assert now.status_code == 202, now.text


async def test_a_pack_that_drops_a_category_a_scheduled_pack_adds_takes_effect_now(stack):
    """Without EMOTIONAL now, with it from +1 h (scheduled), without it again from +2 h: cases
    opened in it between +1 h and +2 h would be stranded, as for the pack in force."""
    admin2 = await second_admin(stack)

    async def in_hours(version: str, text: str, hours: int) -> int:
        await approved(stack, admin2, text, version)
        at = (datetime.now(UTC) + timedelta(hours=hours)).isoformat()
        return (await publish(stack, version, **({"effective_at": at} if hours else {}))).status_code

    assert await in_hours("nox-1", without_emotional("nox-1"), 0) == 202
    assert await in_hours("withx-1", crafted_pack("withx-1"), 1) == 202

    async def scheduled():
        return "withx-1" in stack.rt.watcher.publications
    await eventually(scheduled)
    assert await in_hours("nox-2", without_emotional("nox-2"), 2) == 409


async def test_a_published_pack_stays_in_force_when_the_topics_are_lost(stack):
    """The broker's data lost, the topics made again: the configured pack came back in force,
    undoing what two admins had approved and published. The database records it."""
    await approved(stack, await second_admin(stack), crafted_pack())
    assert (await publish(stack)).status_code == 202

    async def published():
        async with stack.rt.db.reads() as session:
            return await session.scalar(select(packs_store.RulePackPublication.id))
    await eventually(published)
    lost = stack.rt.settings.model_copy(
        update={"topic_prefix": f"{stack.rt.settings.topic_prefix}lost."})
    other = runtime.build(lost, frozenset({"escalation"}))
    await runtime.start(other)
    try:
        assert other.pack.version == DRAFT
    finally:
        await runtime.stop(other)


async def test_replay_shows_a_weakened_deadline_and_policy(stack):
    """A draft that gives the 12-hour emergency measure 240 hours, escalates a breach nowhere
    and drops the 12-hour rule: the replay said `changed: 0` (no target differed)."""
    p1 = await decided(stack, report(category="SEX_ABUSE", children=[{"age": 10}], indicators=[]))
    text = SHIPPED["default"].read_text("utf-8").replace("version: default-2026.5",
                                                         "version: quiet-1")
    weakened = (text.replace("    within: PT12H\n    start: first_receipt",
                             "    within: PT240H\n    start: first_receipt")
                .replace("    act: PT12H ", "    act: PT240H")  # the table must agree
                .replace("on_breach: [supervisors, next_tier]", "on_breach: []"))
    start = weakened.index("global_rules:")
    weakened = weakened[:start] + "global_rules: []\n" + weakened[weakened.index("\npublicity:") + 1:]
    async with stack.client("admin") as admin:
        uploaded = await admin.post("/api/v1/rulepacks", json={"text": weakened})
        assert uploaded.status_code == 201, uploaded.text
        result = (await admin.post("/api/v1/rulepacks/quiet-1/replay")).json()
    assert result["pack_changes"] == [
        "escalation.on_breach: ['supervisors', 'next_tier'] -> []",
        "global rule global.twelve_hour_rule removed"]
    [case] = [c for c in result["cases"] if c["case_id"] == p1]
    [moved] = [m for m in case["milestones_changed"] if m.startswith("emergency_measure: ")]
    assert result["changed"] >= 1 and moved.count("->") == 1


async def test_a_pack_file_changed_without_a_new_version_is_refused_at_start(stack, tmp_path):
    """Edited in place (neglect made P2) under the version already stored, it started and decided
    as `default-2026.5`, while that version's record, which replay, rollback and the admin API
    serve, still said P3 (found by an admin's review)."""
    from services.common.config import ConfigError

    edited = tmp_path / "mine.yaml"
    edited.write_text(EDITED_DEFAULT, "utf-8")
    other = runtime.build(stack.rt.settings.model_copy(update={"rulepack": str(edited)}),
                          frozenset({"escalation"}))
    try:
        with pytest.raises(ConfigError, match="default-2026.5 is stored already with other content"):
            await runtime.start(other)
    finally:
        await runtime.stop(other)


async def test_a_process_started_with_another_pack_says_the_published_one_is_in_force(stack):
    """An admin set BEACON_RULEPACK to the 2020 pack and restarted: the published pack stayed in
    force, as the two-person rule wants, and nothing said so."""
    from unittest.mock import patch

    from services.escalation import pack_watcher

    await approved(stack, await second_admin(stack), crafted_pack())
    assert (await publish(stack)).status_code == 202

    async def in_force():
        return stack.rt.pack.version == DRAFT

    await eventually(in_force, timeout=5, interval=0.05)
    other = runtime.build(stack.rt.settings.model_copy(update={"rulepack": "vn2020"}),
                          frozenset({"escalation"}))
    try:
        with patch.object(pack_watcher, "log") as log:
            await runtime.start(other)
        assert other.pack.version == DRAFT
        [warned] = [c.kwargs for c in log.warning.call_args_list
                    if c.args == ("rulepack_setting_not_in_force",)]
        assert warned["configured"].startswith("vn2020") and warned["in_force"] == DRAFT
        assert f"beacon rules rollback {warned['configured']}" in warned["why"]
    finally:
        await runtime.stop(other)
