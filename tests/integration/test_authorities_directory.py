"""Directory administration on the real broker: validated, versioned, audited, and used at once."""

import asyncio
import json

from typer.testing import CliRunner

from services.cli import app
from tests.conftest import eventually
from tests.support.reports import report

CP = "commune:4:child_protection"


async def test_admin_changes_a_contact_and_escalation_uses_it(stack, inbox):
    entry = {
        "name": "Bảo vệ trẻ em – thử nghiệm", "tier": "commune", "agency": "child_protection",
        "unit_code": "4",
        "contacts": [{"channel": "webhook", "address": f"{inbox.http_url}/hooks/cp-desk"}],
        "supervisors": ["commune:4:people_committee"], "parent": "province:1:child_protection",
    }
    async with stack.client("admin") as admin:
        bad = await admin.put(f"/api/v1/authorities/{CP}", json={
            **entry, "contacts": [{"channel": "email", "address": "not-an-address"}],
            "parent": "province:999:child_protection"})
        assert bad.status_code == 422
        assert {tuple(e["loc"]) for e in bad.json()["detail"]} == {
            ("body", "contacts", 0, "address"), ("body", "parent")}, bad.text
        wrong_id = await admin.put(f"/api/v1/authorities/{CP}", json={**entry, "unit_code": "8"})
        assert wrong_id.status_code == 422 and "id" in wrong_id.text
        # A breach escalates to the parent: it must be above, in the same agency.
        police = {**entry, "agency": "police", "supervisors": []}
        down = await admin.put("/api/v1/authorities/province:1:police", json={
            **police, "tier": "province", "unit_code": "1", "parent": "commune:4:police"})
        assert down.status_code == 422 and "not above the province tier" in down.text
        across = await admin.put("/api/v1/authorities/commune:4:police", json=police)
        assert across.status_code == 422 and "not of the police agency" in across.text
        # ...over the same place: Ho Chi Minh City's police do not take a Hanoi commune's case.
        elsewhere = await admin.put("/api/v1/authorities/commune:4:police", json={
            **police, "parent": "province:79:police"})
        assert elsewhere.status_code == 422 and "does not cover commune 4" in elsewhere.text
        # Only the top tier may have none: a breach would stop at this authority.
        orphan = await admin.put(f"/api/v1/authorities/{CP}", json={**entry, "parent": None})
        assert orphan.status_code == 422, orphan.text
        assert orphan.json()["detail"][0]["loc"] == ["body", "parent"]
        # Routing never reaches an authority of a place that does not exist.
        nowhere = await admin.put("/api/v1/authorities/commune:999999:police", json={
            **police, "unit_code": "999999", "parent": "province:1:police"})
        assert nowhere.status_code == 422, nowhere.text
        assert nowhere.json()["detail"][0]["loc"] == ["body", "unit_code"]

        # Signed alerts go to receivers, not to the machines around the notifier.
        for url in ("http://169.254.169.254/latest/meta-data/", "http://u:pw@hooks.example.vn/a",
                    "http://0.0.0.0:22/"):
            aimed = await admin.put(f"/api/v1/authorities/{CP}", json={
                **entry, "contacts": [{"channel": "webhook", "address": url}]})
            assert aimed.status_code == 422, (url, aimed.text)
            assert aimed.json()["detail"][0]["loc"] == ["body", "contacts", 0, "address"]
        # The id may come with the entry (as `directory show` gives it), if it is the path's.
        other_id = await admin.put(f"/api/v1/authorities/{CP}", json={
            **entry, "id": "commune:8:child_protection"})
        assert other_id.status_code == 422 and other_id.json()["detail"][0]["loc"] == ["body", "id"]
        ok = await admin.put(f"/api/v1/authorities/{CP}", json={**entry, "id": CP})
        assert ok.status_code == 200, ok.text
        assert ok.json()["version"] == 1
        again = await admin.put(f"/api/v1/authorities/{CP}", json={**entry, "name": "Renamed"})
        assert again.json()["version"] == 2
        shown = (await admin.get(f"/api/v1/authorities/{CP}")).json()
        assert shown["source"] == "admin" and shown["authority"]["name"] == "Renamed"
        history = (await admin.get(f"/api/v1/authorities/{CP}/history")).json()
        assert [h["version"] for h in history] == [1, 2]
        assert history[0]["changed_by"] == "test-admin"
        generated = (await admin.get("/api/v1/authorities/commune:4:police")).json()
        assert generated["source"] == "generated"
        assert (await admin.get("/api/v1/authorities/commune:4:nobody")).status_code == 404
    async with stack.client("operator") as operator:
        assert (await operator.put(f"/api/v1/authorities/{CP}", json=entry)).status_code == 403

    async with stack.client("operator") as api:
        assert (await api.post("/api/v1/reports", json=report())).status_code == 202

    async def delivered_to_new_contact():
        return [r for r in inbox.requests() if r["path"] == "/hooks/cp-desk"]

    assert await eventually(delivered_to_new_contact)
    async with stack.client("auditor") as auditor:
        trail = (await auditor.get("/api/v1/audit", params={"case_id": CP})).json()
        unknown = (await auditor.get("/api/v1/audit",
                                     params={"case_id": "commune:4:nobody"})).json()
    # Changes and reads alike, refused ones too: an entry holds people's contact details.
    assert [(r["action"], r["outcome"]) for r in trail["items"]] == [
        *[("directory_change", "rejected")] * 7,
        ("directory_change", "ok"), ("directory_change", "ok"), ("read", "ok"), ("read", "ok")]
    assert [r["fields"] for r in trail["items"]][9:] == [["authority"], ["history"]]
    assert [(r["action"], r["outcome"]) for r in unknown["items"]] == [("read", "not_found")]


def answer(output: str):
    """The command's JSON answer (indented) among the stack's one-line JSON logs, which
    CliRunner captures too: it swaps the whole process's stdout."""
    return json.JSONDecoder().raw_decode(output[output.index("{\n"):])[0]


async def test_directory_cli(stack, tmp_path):
    entry = tmp_path / "entry.json"
    entry.write_text(json.dumps({
        "name": "Công an xã – trực ban", "tier": "commune", "agency": "police", "unit_code": "4",
        "contacts": [{"channel": "sms", "address": "+84900000001"}],
        "parent": "province:1:police"}))
    runner = CliRunner()
    env = {"BEACON_API_URL": stack.base_url, "BEACON_TOKEN": stack.tokens["admin"]}

    def run(*args):
        return runner.invoke(app, list(args), env=env)

    result = await asyncio.to_thread(run, "directory", "set", "commune:4:police", str(entry))
    assert result.exit_code == 0, result.output
    assert answer(result.output)["version"] == 1
    shown = await asyncio.to_thread(run, "directory", "show", "commune:4:police")
    assert answer(shown.output)["authority"]["contacts"][0]["address"] == "+84900000001"
    # The documented way to change contacts: show, edit, set the edited output as it is.
    edited = answer(shown.output)
    edited["authority"]["contacts"][0]["address"] = "+84900000002"
    entry.write_text(json.dumps(edited))
    again = await asyncio.to_thread(run, "directory", "set", "commune:4:police", str(entry))
    assert again.exit_code == 0 and answer(again.output)["version"] == 2, again.output
    entry.write_text(json.dumps({"name": "x", "tier": "hamlet", "agency": "police",
                                 "unit_code": "4", "contacts": []}))
    refused = await asyncio.to_thread(run, "directory", "set", "commune:4:police", str(entry))
    assert refused.exit_code == 1 and "tier" in refused.output
