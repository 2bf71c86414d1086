"""The `beacon` command: users and tokens, and a start-up that refuses bad configuration."""

import getpass
import json
import os
import socket
import stat
import sqlite3
import subprocess
from secrets import token_urlsafe

import httpx
from alembic.script import ScriptDirectory

from services.common import migrate
from tests.conftest import make_settings
from tests.support.process import BEACON, BeaconProcess, beacon, beacon_env


def _run(settings, *args, **env):
    return subprocess.run([BEACON, *args], env={**beacon_env(settings), **env},
                          capture_output=True, text=True, timeout=120)


def test_tokens_are_issued_stored_hashed_and_revoked(kafka_bootstrap, tmp_path):
    settings = make_settings(kafka_bootstrap, f"sqlite+aiosqlite:///{tmp_path / 'cli.db'}")
    beacon(settings, "db", "upgrade")
    token = beacon(settings, "users", "create", "op-1", "operator", "--scope", "province:1").stdout.strip()
    second = beacon(settings, "users", "token", "op-1").stdout.strip()
    assert token.startswith("bk_") and second.startswith("bk_") and token != second
    assert token.encode() not in (tmp_path / "cli.db").read_bytes()  # only its hash is stored
    again = _run(settings, "users", "create", "op-1", "operator")
    assert again.returncode == 1 and "exists" in again.stderr and "Traceback" not in again.stderr
    nobody = _run(settings, "users", "token", "nobody")
    assert nobody.returncode == 1 and "no user 'nobody'" in nobody.stderr

    bad_role = _run(settings, "users", "create", "x", "superuser")
    assert bad_role.returncode == 1 and "role must be one of" in bad_role.stderr
    bad_scope = _run(settings, "users", "create", "y", "operator", "--scope", "district:3")
    assert bad_scope.returncode == 1 and "scope" in bad_scope.stderr
    # A provincial admin would change the whole country's rule packs and directory.
    local_admin = _run(settings, "users", "create", "z", "admin", "--scope", "province:1")
    assert local_admin.returncode == 1 and "admin's scope must be national" in local_admin.stderr
    # A typo gives a user who sees nothing, or the wrong things: refused, naming the option.
    for args, says in (
        (["operator", "--scope", "province:999"], "--scope: no province with code 999"),
        (["operator", "--scope", "commune:99999999"], "--scope: no commune"),
        (["authority", "--scope", "commune:4", "--authority", "commune:9999:nope"],
         "--authority: unknown authority 'commune:9999:nope'"),
        (["authority", "--scope", "commune:4", "--authority", "commune:8:police"],
         "outside the scope commune:4"),
        (["authority", "--scope", "province:1"], "at least one authority id"),
        (["operator", "--authority", "commune:4:police"], "only an authority user"),
    ):
        refused = _run(settings, "users", "create", "w", *args)
        assert refused.returncode == 1 and says in refused.stderr, (args, refused.stderr)
    in_province = beacon(settings, "users", "create", "cp-1", "authority", "--scope", "province:1",
                         "--authority", "commune:4:child_protection").stdout
    assert in_province.strip().startswith("bk_")

    process = BeaconProcess(settings, "intake", tmp_path / "intake.log").start()
    try:
        def cases(tok):
            return httpx.get(f"{process.url}/api/v1/cases",
                             headers={"Authorization": f"Bearer {tok}"}).status_code

        assert cases(token) == 200 and cases(second) == 200
        assert "revoked 2" in beacon(settings, "users", "revoke", "op-1").stdout
        assert cases(token) == 401 and cases(second) == 401
    finally:
        process.stop()
    with sqlite3.connect(tmp_path / "cli.db") as conn:
        trail = conn.execute(
            "SELECT user_id, action, fields FROM audit_log WHERE record = 'op-1' ORDER BY id"
        ).fetchall()
    assert [action for _, action, _ in trail] == ["user_change"] * 3  # create, token, revoke
    with sqlite3.connect(tmp_path / "cli.db") as conn:
        # A revoked token still in use may be a stolen one: each attempt is on the trail.
        refused = conn.execute("SELECT user_id, action, record, outcome FROM audit_log "
                               "WHERE outcome = 'token_revoked'").fetchall()
    assert refused == [("op-1", "denied", "/api/v1/cases", "token_revoked")] * 2
    assert [json.loads(fields)[-1] for _, _, fields in trail] == [
        "token_issued", "token_issued", "tokens_revoked"]  # an auditor tells them apart
    assert all(user.startswith("cli:") for user, _, _ in trail)


def test_a_user_is_corrected_and_disabled_at_once(kafka_bootstrap, tmp_path):
    """An officer who moved commune kept the old one's cases, and one who left could only lose
    its tokens: there was no way to correct a user or to stop one (found by an admin's review)."""
    settings = make_settings(kafka_bootstrap, f"sqlite+aiosqlite:///{tmp_path / 'cli.db'}")
    beacon(settings, "db", "upgrade")
    token = beacon(settings, "users", "create", "cp-1", "authority", "--scope", "commune:4",
                   "--authority", "commune:4:child_protection").stdout.strip()
    # Checked as a new user is: a commune's officer cannot answer for another commune.
    refused = _run(settings, "users", "set", "cp-1", "--authority", "commune:8:child_protection")
    assert refused.returncode == 1 and "outside the scope commune:4" in refused.stderr
    nothing = _run(settings, "users", "set", "cp-1", "--scope", "commune:4")
    assert nothing.returncode == 1 and "nothing to change" in nothing.stderr
    moved = beacon(settings, "users", "set", "cp-1", "--scope", "commune:8",
                   "--authority", "commune:8:child_protection").stdout
    assert "changed scope, authorities of cp-1" in moved
    process = BeaconProcess(settings, "intake", tmp_path / "intake.log").start()
    try:
        def cases(path="/api/v1/cases"):
            return httpx.get(f"{process.url}{path}", headers={"Authorization": f"Bearer {token}"})

        assert cases().status_code == 200  # its token holds, with the new scope
        assert "disabled" in beacon(settings, "users", "disable", "cp-1").stdout
        assert cases().status_code == 401
        beacon(settings, "users", "enable", "cp-1")
        assert cases().status_code == 200
    finally:
        process.stop()
    with sqlite3.connect(tmp_path / "cli.db") as conn:
        user = conn.execute("SELECT scope, authority_ids FROM users WHERE id = 'cp-1'").fetchone()
        trail = [json.loads(f) for (f,) in conn.execute(
            "SELECT fields FROM audit_log WHERE record = 'cp-1' AND action = 'user_change' "
            "ORDER BY id")]
    assert user == ("commune:8", '["commune:8:child_protection"]')
    assert trail[1:] == [["authorities", "scope"], ["disabled"], ["enabled"]]
    with sqlite3.connect(tmp_path / "cli.db") as conn:
        refused = conn.execute("SELECT user_id, action, outcome FROM audit_log "
                               "WHERE record = '/api/v1/cases' AND action = 'denied'").fetchall()
    assert refused == [("cp-1", "denied", "user_disabled")]


def test_dev_users_write_the_token_file(kafka_bootstrap, tmp_path):
    settings = make_settings(kafka_bootstrap, f"sqlite+aiosqlite:///{tmp_path / 'dev.db'}")
    beacon(settings, "db", "upgrade")
    out = tmp_path / "dev-tokens.json"
    beacon(settings, "users", "dev", "--out", str(out))
    tokens = json.loads(out.read_text())
    assert set(tokens) >= {"operator", "supervisor", "authority", "admin"}
    refused = _run(settings, "users", "dev", "--out", str(out), BEACON_ENV="production",
                   BEACON_SECRET_KEY=token_urlsafe(32), BEACON_WEBHOOK_SECRET=token_urlsafe(32))
    assert refused.returncode == 2 and "production" in refused.stderr


def test_start_up_refuses_bad_configuration_with_a_clear_message(kafka_bootstrap, tmp_path):
    settings = make_settings(kafka_bootstrap, f"sqlite+aiosqlite:///{tmp_path / 'bad.db'}")
    # A database that refuses connections: said so, promptly, without its password.
    refused_db = "postgresql+asyncpg://beacon:hunter2pw@127.0.0.1:1/beacon"
    for command in (["run", "all"], ["db", "upgrade"], ["cases", "rebuild"],
                    ["users", "token", "op-1"], ["retention", "run"]):
        answer = _run(settings, *command, BEACON_DATABASE_URL=refused_db)
        assert answer.returncode == 2 and "cannot be reached" in answer.stderr, (command, answer)
        assert "hunter2pw" not in answer.stderr and "Traceback" not in answer.stderr

    bad_bootstrap = _run(settings, "run", "all", BEACON_KAFKA_BOOTSTRAP="localhost")
    assert bad_bootstrap.returncode == 2
    assert "BEACON_KAFKA_BOOTSTRAP" in bad_bootstrap.stderr and "host:port" in bad_bootstrap.stderr

    bad_port = _run(settings, "run", "all", BEACON_HTTP_PORT="99999")
    assert bad_port.returncode == 2 and "BEACON_HTTP_PORT" in bad_port.stderr
    with socket.socket() as taken:  # another program has the port: refused before anything runs
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        busy = _run(settings, "run", "all", BEACON_HTTP_PORT=str(taken.getsockname()[1]))
    assert busy.returncode == 2 and "cannot serve HTTP on 127.0.0.1" in busy.stderr
    assert '"started"' not in busy.stdout

    broken = tmp_path / "broken.yaml"
    broken.write_text("version: x\ntiers: [commune]\n")
    bad_pack = _run(settings, "run", "all", BEACON_RULEPACK=str(broken))
    assert bad_pack.returncode == 2 and "BEACON_RULEPACK: rule pack" in bad_pack.stderr

    missing_pack = _run(settings, "run", "all", BEACON_RULEPACK=str(tmp_path / "nope.yaml"))
    assert missing_pack.returncode == 2 and "nope.yaml" in missing_pack.stderr
    assert "BEACON_RULEPACK" in missing_pack.stderr  # the variable to fix, named

    unmigrated = _run(settings, "run", "all")
    assert unmigrated.returncode == 2 and "beacon db upgrade" in unmigrated.stderr
    # A database of the release before: started on it, the first report answered 500.
    [head] = migrate.revisions().heads
    previous = ScriptDirectory.from_config(migrate.alembic_config("sqlite://")).get_revision(
        head).down_revision
    migrate.upgrade(settings.database_url, previous)
    behind = _run(settings, "run", "all")
    assert behind.returncode == 2 and f"needs {head}" in behind.stderr, behind.stderr
    assert "beacon db upgrade" in behind.stderr

    beacon(settings, "db", "upgrade")
    no_kafka = _run(settings, "run", "all", BEACON_KAFKA_BOOTSTRAP="127.0.0.1:1")
    assert no_kafka.returncode == 2 and "Kafka at 127.0.0.1:1 is unreachable" in no_kafka.stderr

    production = _run(settings, "run", "all", BEACON_ENV="production", BEACON_SECRET_KEY="",
                      BEACON_WEBHOOK_SECRET=token_urlsafe(32))
    assert production.returncode == 2 and "BEACON_SECRET_KEY" in production.stderr
    real = {"BEACON_ENV": "production", "BEACON_SECRET_KEY": token_urlsafe(32),
            "BEACON_WEBHOOK_SECRET": token_urlsafe(32),
            "BEACON_PUBLIC_BASE_URL": "https://beacon.example.vn"}
    for refused, says in (
        ({"BEACON_SECRET_KEY": "change-me-identity-and-link-key-0123456789"}, "placeholder"),
        ({"BEACON_WEBHOOK_SECRET": "a" * 40}, "few different characters"),
        ({"BEACON_WEBHOOK_SECRET": "short"}, "BEACON_WEBHOOK_SECRET"),
        ({"BEACON_DATABASE_ULR": settings.database_url}, "BEACON_DATABASE_ULR"),  # misspelt
    ):
        answer = _run(settings, "run", "all", **{**real, **refused})
        assert answer.returncode == 2 and says in answer.stderr, answer.stderr
    bad_url = _run(settings, "run", "all", BEACON_DATABASE_URL="postgresql+asyncpg://u@host:abc/db")
    assert bad_url.returncode == 2 and "BEACON_DATABASE_URL: not a database URL" in bad_url.stderr
    bad_base = _run(settings, "run", "all", BEACON_PUBLIC_BASE_URL="beacon.example.vn")
    assert bad_base.returncode == 2 and "BEACON_PUBLIC_BASE_URL" in bad_base.stderr
    # These two gave a 64-line traceback from the notifier (found by an admin's review).
    for name, value in (("BEACON_SMTP_PORT", "99999"), ("BEACON_SMS_GATEWAY_URL", "notaurl")):
        bad = _run(settings, "run", "all", **{name: value})
        assert bad.returncode == 2 and name in bad.stderr, bad.stderr
        assert "Traceback" not in bad.stderr
    nowhere = _run(settings, "db", "backup", str(tmp_path / "no" / "such" / "dir.db"))
    assert nowhere.returncode == 2 and "cannot write" in nowhere.stderr
    assert "Traceback" not in nowhere.stderr
    unknown = _run(settings, "db", "upgrade", "--revision", "nonsense")
    assert unknown.returncode == 2 and "nonsense" in unknown.stderr
    assert "Traceback" not in unknown.stderr
    typo = _run(settings, "db", "upgrade", BEACON_LOG_LEVL="DEBUG")
    assert typo.returncode == 0 and "unknown variables ignored: BEACON_LOG_LEVL" in typo.stderr


def test_a_backup_is_a_consistent_copy_and_never_overwrites_one(kafka_bootstrap, tmp_path):
    settings = make_settings(kafka_bootstrap, f"sqlite+aiosqlite:///{tmp_path / 'live.db'}")
    beacon(settings, "db", "upgrade")
    with sqlite3.connect(tmp_path / "live.db") as running:  # as Beacon holds it open
        assert running.execute("PRAGMA journal_mode").fetchone() == ("wal",)
        beacon(settings, "users", "create", "op-9", "operator")  # in the write-ahead log
        done = beacon(settings, "db", "backup", str(tmp_path / "copy.db"))
        assert "backed up" in done.stdout and "pages" in done.stderr  # progress
    with sqlite3.connect(tmp_path / "copy.db") as copy:
        assert copy.execute("SELECT id FROM users").fetchall() == [("op-9",)]
    again = _run(settings, "db", "backup", str(tmp_path / "copy.db"))
    assert again.returncode == 2 and "exists" in again.stderr


def test_a_backup_is_owner_only_and_audited_by_its_file_name(kafka_bootstrap, tmp_path):
    """A backup is a full copy of the identity store: no other account reads it, and the trail
    says who took one and when (the file's name, not the directory it went to)."""
    settings = make_settings(kafka_bootstrap, f"sqlite+aiosqlite:///{tmp_path / 'live.db'}")
    beacon(settings, "db", "upgrade")
    (tmp_path / "offsite").mkdir()
    beacon(settings, "db", "backup", str(tmp_path / "offsite" / "beacon-2026-01-05.db"))
    assert stat.S_IMODE(os.stat(tmp_path / "offsite" / "beacon-2026-01-05.db").st_mode) == 0o600
    assert _run(settings, "db", "backup", str(tmp_path / "live.db")).returncode == 2  # exists
    with sqlite3.connect(tmp_path / "live.db") as conn:
        trail = conn.execute("SELECT user_id, role, action, record, outcome FROM audit_log "
                             "WHERE action = 'backup'").fetchall()
    assert trail == [(f"cli:{getpass.getuser()}", "admin", "backup", "beacon-2026-01-05.db", "ok")]
