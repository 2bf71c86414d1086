"""`beacon rules validate` and `beacon rules test` (ARCHITECTURE.md, command line)."""

import json
from pathlib import Path

from typer.testing import CliRunner

from services.escalation.rulepack import SHIPPED
from services.escalation.rules_cli import app

runner = CliRunner()

REPORT = {
    "received_at": "2026-11-27T16:30:00+07:00",
    "channel": "phone",
    "category": "PHYS_VIOLENCE",
    "subcategory": None,
    "location": {"province_code": 1, "commune_code": 4},
    "other_locations": [],
    "setting": "home",
    "children": [{"age": 5, "sex": "female", "name": "..."}],
    "indicators": ["ongoing"],
    "publicity": "PA0",
    "narrative": "free text",
    "reporter": {"name": "...", "phone": "...", "relationship": "neighbour", "consent_to_contact": True},
}


def write(tmp_path: Path, data, name="report.json") -> str:
    path = tmp_path / name
    path.write_text(data if isinstance(data, str) else json.dumps(data), encoding="utf-8")
    return str(path)


def test_validate_ok():
    for pack in ("default", "vn2020", str(SHIPPED["default"])):
        result = runner.invoke(app, ["validate", pack])
        assert result.exit_code == 0, result.output
        assert result.output.startswith("OK") and result.output.count("\n") == 1


def test_validate_reports_each_error_with_its_place(tmp_path):
    text = SHIPPED["default"].read_text(encoding="utf-8")
    text = text.replace("agency: police, role: act, ack: PT15M}", "agency: polise, role: act, ack: PT15M}")
    text = text.replace("supervisor_agency: people_committee", "supervisor_agency: committee")
    path = write(tmp_path, text, "bad.yaml")
    result = runner.invoke(app, ["validate", path])
    assert result.exit_code == 1
    lines = result.stdout.splitlines()
    assert any(line.startswith(f"{path}:") and "routing.P1.PA0[1].agency: unknown agency 'polise'"
               in line for line in lines)
    assert any("escalation.supervisor_agency: unknown agency 'committee'" in line for line in lines)
    assert lines[-1] == f"2 problem(s) in {path}"


def test_validate_reports_structure_errors(tmp_path):
    text = SHIPPED["default"].read_text(encoding="utf-8")
    path = write(tmp_path, text.replace("ack: {working_days: 3}}", "ack: {working_days: 0}}"), "bad.yaml")
    result = runner.invoke(app, ["validate", path])
    assert result.exit_code == 1
    assert "routing.P4.PA0[0].ack.working_days" in result.stdout


def test_validate_missing_file():
    result = runner.invoke(app, ["validate", "/nonexistent.yaml"])
    assert result.exit_code == 1 and "cannot read" in result.output


def test_validate_a_pack_that_is_not_utf8(tmp_path):
    path = tmp_path / "pack.yaml"
    path.write_bytes(b"\xff\xfeversion: x\n")  # saved as UTF-16 by an editor, say
    result = runner.invoke(app, ["validate", str(path)])
    assert result.exit_code == 1 and "not UTF-8" in result.output and str(path) in result.output
    tested = runner.invoke(app, ["test", str(path), "--report", write(tmp_path, REPORT)])
    assert tested.exit_code == 1 and "not UTF-8" in tested.output


def test_test_prints_the_decision(tmp_path):
    result = runner.invoke(app, ["test", "default", "--report", write(tmp_path, REPORT)])
    assert result.exit_code == 0, result.output
    out = json.loads(result.stdout)
    assert {"rulepack_version", "severity", "publicity", "targets", "matched_rules"} <= set(out)
    assert (out["rulepack_version"], out["severity"], out["publicity"]) == ("default-2026.5", "P1", "PA0")
    first = out["targets"][0]
    assert {"tier", "agency", "authority_id", "role", "ack_within"} <= set(first)
    assert first == {**first, "tier": "commune", "agency": "child_protection",
                     "authority_id": "commune:4:child_protection", "role": "act",
                     "ack_within": "PT15M", "ack_due": "2026-11-27T16:45:00+07:00"}
    assert "PHYS_VIOLENCE.raise.P1.indicators" in out["matched_rules"]


def test_test_at_and_working_days(tmp_path):
    report = {**REPORT, "category": "EMOTIONAL", "indicators": []}
    result = runner.invoke(app, ["test", str(SHIPPED["default"]), "--report", write(tmp_path, report),
                                 "--at", "2026-11-27T17:00:00+07:00"])
    assert result.exit_code == 0, result.output
    [target] = json.loads(result.stdout)["targets"]
    assert (target["ack_within"], target["working_days"], target["ack_due"]) == (
        "P1D", True, "2026-11-30T17:00:00+07:00")


def test_test_vn2020(tmp_path):
    result = runner.invoke(app, ["test", "vn2020", "--report", write(tmp_path, REPORT)])
    assert result.exit_code == 0, result.output
    tiers = {t["tier"] for t in json.loads(result.stdout)["targets"]}
    assert "district" in tiers


def test_test_invalid_report_names_the_field(tmp_path):
    bad = {**REPORT, "children": [{"age": 30}]}
    result = runner.invoke(app, ["test", "default", "--report", write(tmp_path, bad)])
    assert result.exit_code == 1
    assert "children[0].age" in result.output


def test_test_unknown_category_indicator_location(tmp_path):
    for bad, field in [({"category": "NOPE"}, "category"), ({"indicators": ["nope"]}, "indicators"),
                       ({"location": {"province_code": 79, "commune_code": 4}}, "location")]:
        result = runner.invoke(app, ["test", "default", "--report", write(tmp_path, {**REPORT, **bad})])
        assert result.exit_code == 1, bad
        assert field in result.output


def test_test_bad_at_and_bad_json(tmp_path):
    path = write(tmp_path, REPORT)
    result = runner.invoke(app, ["test", "default", "--report", path, "--at", "yesterday"])
    assert result.exit_code == 1 and "--at" in result.output
    result = runner.invoke(app, ["test", "default", "--report", path, "--at", "2026-11-27T17:00:00"])
    assert result.exit_code == 1 and "time zone" in result.output
    result = runner.invoke(app, ["test", "default", "--report", write(tmp_path, "{not json", "x.json")])
    assert result.exit_code == 1 and "not valid JSON" in result.output
