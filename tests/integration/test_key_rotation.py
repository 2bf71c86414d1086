"""Key rotation on a real SQLite file: identity sealed under an old secret is re-sealed under the
new one, its hashes are made again, and the old secret can then be dropped."""

import getpass
import subprocess

import pytest
from cryptography.fernet import InvalidToken
from sqlalchemy import select

from schemas.reports import Report
from services.common.audit import AuditRecord
from services.intake.correlation import is_independent, match_open_case
from services.intake.identity import IdentityVault
from services.intake.key_rotation import RotationError, rotate
from services.intake.store import CaseView, ReportRow, SeverityOverrideRow
from tests.conftest import make_settings
from tests.integration import test_retention as rows
from tests.support.process import beacon
from tests.support.reports import report

OLD, NEW = "old-secret", "new-secret"


async def add_sealed(db, vault, case_id, names):
    """An open NEGLECT case in commune 4, one report per child name, sealed and hashed by
    `vault`, each reporter calling from 09120000<i>."""
    await rows.add_case(db, case_id, "open", days_ago=1, reports=0)
    async with db.writes() as s, s.begin():
        for i, name in enumerate(names):
            r = Report.model_validate(report(children=[{"age": 6, "sex": "female", "name": name}],
                       reporter={"name": "Trần Văn B", "phone": f"09120000{i:02d}",
                                 "relationship": "neighbour", "consent_to_contact": True}))
            s.add(ReportRow(report_id=f"R-{case_id}-{i}", case_id=case_id,
                            event_id=f"E-{case_id}-{i}", event="{}", published=True,
                            received_at=rows.NOW, submitted_by="op", identity=vault.seal(r),
                            reporter_fingerprint=vault.reporter_fingerprint(r),
                            child_fingerprints=vault.child_fingerprints(r), created_at=rows.NOW))
        case = await s.get(CaseView, case_id)
        case.child_fingerprints = sorted({vault.fingerprint("child", n) for n in names})


async def test_rotation_reseals_identity_and_remakes_the_hashes(sqlite_db, monkeypatch):
    monkeypatch.setattr("services.intake.key_rotation.BATCH", 2)  # a case across batches
    old = IdentityVault(OLD)
    await add_sealed(sqlite_db, old, "C-A", ["Nguyễn Thị A", "Lê Văn C", "Phạm Thị D"])
    await add_sealed(sqlite_db, old, "C-B", ["Hoàng Văn E"])
    before = {r.report_id: old.open(r.identity) for r in await rows.table(sqlite_db, ReportRow)}

    seen = []
    assert await rotate(sqlite_db, IdentityVault(NEW, [OLD]),
                        progress=lambda what, n: seen.append(n)) == (4, 0)
    assert seen == [2, 4]

    new_only = IdentityVault(NEW)
    for r in await rows.table(sqlite_db, ReportRow):
        assert new_only.open(r.identity) == before[r.report_id]  # the old key is not needed
        with pytest.raises(InvalidToken):
            old.open(r.identity)
        children, reporter = new_only.fingerprints(before[r.report_id])
        assert (r.child_fingerprints, r.reporter_fingerprint) == (children, reporter)
        assert reporter is not None and children and children != old.fingerprints(
            before[r.report_id])[0]
    cases = {c.case_id: c.child_fingerprints for c in await rows.table(sqlite_db, CaseView)}
    assert cases["C-A"] == new_only.fingerprints({"children": [
        {"name": n} for n in ("Nguyễn Thị A", "Lê Văn C", "Phạm Thị D")]})[0]
    assert cases["C-B"] == new_only.fingerprints({"children": [{"name": "Hoàng Văn E"}]})[0]

    # Run again (after a crash, say): everything already under the new key stays readable.
    assert await rotate(sqlite_db, IdentityVault(NEW, [OLD])) == (4, 0)
    assert all(new_only.open(r.identity) for r in await rows.table(sqlite_db, ReportRow))


async def test_rotation_reseals_override_reasons(sqlite_db, monkeypatch):
    monkeypatch.setattr("services.intake.key_rotation.BATCH", 2)
    old = IdentityVault(OLD)
    await rows.add_case(sqlite_db, "C-A", "open", days_ago=1, reports=0)
    reasons = [f"spoke to Trần Văn {n}" for n in range(3)]
    for n, reason in enumerate(reasons):
        await rows.add_override(sqlite_db, "C-A", n, reason=old.seal_text(reason))
    await rows.add_override(sqlite_db, "C-A", 3, reason=None)  # erased by retention

    seen = []
    assert await rotate(sqlite_db, IdentityVault(NEW, [OLD]),
                        progress=lambda what, n: seen.append((what, n))) == (0, 3)
    assert seen == [("override reasons", 2), ("override reasons", 3)]
    new_only = IdentityVault(NEW)
    stored = sorted(await rows.table(sqlite_db, SeverityOverrideRow), key=lambda o: o.update_id)
    assert [new_only.open_text(o.reason) for o in stored[:3]] == reasons
    assert stored[3].reason is None
    for o in stored[:3]:
        with pytest.raises(InvalidToken):
            old.open_text(o.reason)


async def test_a_reason_under_a_key_not_configured_stops_the_rotation(sqlite_db):
    await rows.add_case(sqlite_db, "C-A", "open", days_ago=1, reports=0)
    await rows.add_override(sqlite_db, "C-A", 0, reason=IdentityVault("lost-secret").seal_text("x"))
    with pytest.raises(RotationError, match="U-C-A-0"):
        await rotate(sqlite_db, IdentityVault(NEW, [OLD]))


async def test_identity_under_a_key_not_configured_stops_the_rotation(sqlite_db):
    await add_sealed(sqlite_db, IdentityVault("lost-secret"), "C-A", ["Nguyễn Thị A"])
    with pytest.raises(RotationError, match="R-C-A-0"):
        await rotate(sqlite_db, IdentityVault(NEW, [OLD]))
    async with sqlite_db.reads() as s:  # nothing half-done
        assert IdentityVault("lost-secret").open(await s.scalar(select(ReportRow.identity)))


async def test_beacon_keys_rotate(kafka_bootstrap, sqlite_db):
    await add_sealed(sqlite_db, IdentityVault(OLD), "C-A", ["Nguyễn Thị A"])
    await rows.add_override(sqlite_db, "C-A", 0, reason=IdentityVault(OLD).seal_text("checked"))
    settings = make_settings(kafka_bootstrap, sqlite_db.url, secret_key=NEW,
                             secret_key_previous=f" {OLD} ,another")
    done = beacon(settings, "keys", "rotate")
    assert done.stdout.strip() == "re-sealed 1 reports and 1 override reasons under the current key"
    assert "1 reports..." in done.stderr and "1 override reasons..." in done.stderr


async def test_before_the_rotation_has_run_a_report_still_matches_under_the_previous_key(
        sqlite_db):
    await add_sealed(sqlite_db, IdentityVault(OLD), "C-A", ["Nguyễn Thị A"])
    again = Report.model_validate(report(
        category="NEGLECT", children=[{"age": 6, "sex": "female", "name": "nguyen thi a"}],
        reporter={"phone": "0912000000", "consent_to_contact": False}))

    async def seen_by(vault):
        names = vault.matching(again, vault.reporter_fingerprint(again))
        async with sqlite_db.reader() as reads:
            return (await match_open_case(reads, again, names),
                    await is_independent(reads, "C-A", names.reporters))

    # The same child, called in again by the same reporter: the same case, not a new voice.
    assert await seen_by(IdentityVault(NEW, [OLD])) == ("C-A", False)
    # Without the previous key the stored hashes mean nothing: this is why it stays listed.
    assert await seen_by(IdentityVault(NEW)) == (None, True)


async def test_a_process_whose_key_opens_no_stored_identity_refuses_to_start(sqlite_db):
    """The secret key changed without listing the old one: intake started, and every stored
    identity then read as unreadable (200, empty) and repeat calls opened new cases."""
    from services import runtime
    from services.common.config import ConfigError

    await add_sealed(sqlite_db, IdentityVault(OLD), "C-1", ["Canarykid Le"])
    url = str(sqlite_db.engine.url)
    forgot = make_settings("127.0.0.1:1", url, secret_key=NEW)
    with pytest.raises(ConfigError, match="BEACON_SECRET_KEY_PREVIOUS"):
        await runtime.check_identity_key(forgot, sqlite_db)
    listed = make_settings("127.0.0.1:1", url, secret_key=NEW, secret_key_previous=OLD)
    await runtime.check_identity_key(listed, sqlite_db)  # opens: no complaint


async def test_beacon_keys_rotate_is_audited_with_its_outcome(kafka_bootstrap, sqlite_db):
    """A rotation opens every sealed identity: the trail says who ran it, when, and whether it
    finished."""
    settings = make_settings(kafka_bootstrap, sqlite_db.url, secret_key=NEW,
                             secret_key_previous=OLD)
    await add_sealed(sqlite_db, IdentityVault(OLD), "C-A", ["Nguyễn Thị A"])
    beacon(settings, "keys", "rotate")
    await add_sealed(sqlite_db, IdentityVault("lost-secret"), "C-B", ["Lê Văn C"])
    with pytest.raises(subprocess.CalledProcessError):
        beacon(settings, "keys", "rotate")
    async with sqlite_db.reads() as s:
        trail = (await s.execute(select(
            AuditRecord.user_id, AuditRecord.record, AuditRecord.fields, AuditRecord.outcome)
            .where(AuditRecord.action == "key_rotation").order_by(AuditRecord.id))).all()
    who, resealed = f"cli:{getpass.getuser()}", ["identity", "override.reason"]
    assert trail == [(who, "secret_key", resealed, "ok"), (who, "secret_key", resealed, "failed")]
