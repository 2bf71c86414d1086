"""var/ holds the development secrets, tokens and database: Beacon makes it 0700 and each secret
0600 from the start, so that no other account can read one at any moment, even a process that
stops half-way; an existing var/ that lets others in is named at start and left as it is."""

import contextlib
import json
import os
import stat

import pytest
import structlog
from typer.testing import CliRunner

from services import cli
from services.common import config, migrate
from services.common.config import Settings


def _mode(path) -> int:
    return stat.S_IMODE(os.stat(path).st_mode)


class Killed(Exception):
    """The process stopped here (a Ctrl-C, a kill) before the next line ran."""


@pytest.fixture
def var(tmp_path, monkeypatch):
    """A fresh var/, with the usual umask; a chmod stops the process, as a kill at that moment
    would: what is on disk then is what another account could have read."""
    monkeypatch.setattr(config, "VAR", tmp_path / "var")
    old = os.umask(0o022)

    def killed(*args, **kwargs):
        raise Killed

    monkeypatch.setattr(os, "chmod", killed)
    yield tmp_path / "var"
    os.umask(old)


def test_a_development_secret_is_owner_only_from_the_start(var):
    settings = Settings(secret_key=None, webhook_secret=None, env="development")
    with contextlib.suppress(Killed):
        settings.secret("secret_key")
    assert _mode(var) == 0o700
    assert _mode(var / "secret_key.txt") == 0o600
    # Made once: every later call, and every process, reads the same one.
    key = settings.secret("secret_key")
    assert len(key) >= 32 and settings.secret("secret_key") == key
    assert sorted(p.name for p in var.iterdir()) == ["secret_key.txt"]  # no temporary left


def test_development_tokens_are_owner_only_from_the_start(var, monkeypatch):
    database = f"sqlite+aiosqlite:///{var.parent / 'dev.db'}"
    migrate.upgrade(database)
    monkeypatch.setenv("BEACON_DATABASE_URL", database)
    out = var / "dev-tokens.json"
    result = CliRunner().invoke(cli.app, ["users", "dev", "--out", str(out)])
    assert _mode(var) == 0o700 and _mode(out) == 0o600
    assert result.exit_code == 0, result.output
    first = json.loads(out.read_text())
    assert set(first) >= {"operator", "supervisor", "authority", "admin"}

    # A token file from before, readable by others: fresh tokens replace it, owner-only.
    fd = os.open(out, os.O_RDONLY)
    os.fchmod(fd, 0o644)
    os.close(fd)
    result = CliRunner().invoke(cli.app, ["users", "dev", "--out", str(out)])
    assert _mode(out) == 0o600
    assert result.exit_code == 0, result.output
    assert json.loads(out.read_text()) != first


def test_a_var_dir_readable_by_others_is_named_at_start_and_left_as_it_is(tmp_path,
                                                                          monkeypatch):
    from services.common import files  # new with this check

    var = tmp_path / "var"
    var.mkdir(mode=0o755)
    var.chmod(0o755)
    with structlog.testing.capture_logs() as logs:
        monkeypatch.setattr(files, "log", structlog.get_logger("beacon"))
        assert files.warn_wide_dir(var) == "0755"
    [said] = [e for e in logs if e["event"] == "var_dir_not_private"]
    assert said["log_level"] == "warning"
    assert said["path"] == str(var) and said["mode"] == "0755" and "chmod 700" in said["why"]
    assert _mode(var) == 0o755  # the operator's to change

    # Owner-only, or passage alone for a group (tools/postgres.sh as root, for the postgres
    # account): nothing to say.
    for mode in (0o700, 0o710):
        var.chmod(mode)
        with structlog.testing.capture_logs() as logs:
            assert files.warn_wide_dir(var) is None
        assert logs == []
    assert files.warn_wide_dir(tmp_path / "missing") is None


def test_the_development_inbox_run_first_makes_var_owner_only(tmp_path):
    """Its messages carry signed links that acknowledge a case; run before any Beacon process,
    it made var/ and var/inbox 0755."""
    from tools.inbox import Inbox

    var = tmp_path / "var"
    inbox = Inbox(var / "inbox").start()
    inbox.stop()
    assert [_mode(p) for p in (var, var / "inbox", var / "inbox" / "mail")] == [0o700] * 3
