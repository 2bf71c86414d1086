"""The SQLite file holds sealed identity, token hashes and the audit trail: Beacon makes it, and
its -wal and -shm, owner-only, and says at start when an existing one is readable by others."""

import os
import stat
from types import SimpleNamespace

import structlog
from sqlalchemy import text

from services import runtime
from services.common import migrate
from services.common.db import Database


def _mode(path) -> int:
    return stat.S_IMODE(os.stat(path).st_mode)


async def test_a_database_beacon_creates_is_owner_only_with_its_wal_and_shm(tmp_path):
    db = Database(f"sqlite+aiosqlite:///{tmp_path / 'var' / 'beacon.db'}")
    try:
        async with db.writes() as session, session.begin():
            await session.execute(text("CREATE TABLE t (a INTEGER)"))
        files = sorted(p.name for p in (tmp_path / "var").iterdir())
        assert files == ["beacon.db", "beacon.db-shm", "beacon.db-wal"]
        assert {f: _mode(tmp_path / "var" / f) for f in files} == dict.fromkeys(files, 0o600)
        assert _mode(tmp_path / "var") == 0o700  # made for it: owner-only too
    finally:
        await db.dispose()


def test_a_database_db_upgrade_creates_is_owner_only(tmp_path):
    migrate.upgrade(f"sqlite+aiosqlite:///{tmp_path / 'migrated.db'}")  # Alembic's own engine
    assert _mode(tmp_path / "migrated.db") == 0o600


def test_an_existing_database_readable_by_others_is_named_at_start_and_left_as_it_is(
        tmp_path, monkeypatch):
    path = tmp_path / "old.db"
    path.touch()
    path.chmod(0o644)
    settings = SimpleNamespace(database_url=f"sqlite+aiosqlite:///{path}")
    with structlog.testing.capture_logs() as logs:
        monkeypatch.setattr(runtime, "log", structlog.get_logger("beacon"))
        assert runtime.warn_database_mode(settings) == "0644"
    [said] = [e for e in logs if e["event"] == "database_file_not_private"]
    assert said["path"] == str(path) and said["mode"] == "0644" and "chmod 600" in said["why"]
    assert _mode(path) == 0o644  # the operator's to change
    path.chmod(0o600)
    with structlog.testing.capture_logs() as logs:
        assert runtime.warn_database_mode(settings) is None
    assert logs == []
