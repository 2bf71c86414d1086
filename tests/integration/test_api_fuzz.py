"""Bad input never breaks the API: schemathesis generates requests from the OpenAPI document and
no answer may be a 5xx. Runs against a real `beacon run all` on the real broker."""

import re
import subprocess

import pytest

from tests.conftest import make_settings
from tests.support.process import ROOT, BeaconProcess, beacon


@pytest.fixture
def running(kafka_bootstrap, inbox, tmp_path):
    settings = make_settings(kafka_bootstrap, f"sqlite+aiosqlite:///{tmp_path / 'fuzz.db'}",
                             inbox)
    beacon(settings, "db", "upgrade")
    tokens = {role: beacon(settings, "users", "create", f"fuzz-{role}", role).stdout.strip()
              for role in ("operator", "supervisor")}
    process = BeaconProcess(settings, "all", tmp_path / "beacon.log").start()
    yield process, tokens
    process.stop()


@pytest.mark.parametrize("role", ["operator", "supervisor"])
def test_no_generated_request_gets_a_server_error(running, role, tmp_path):
    process, tokens = running
    result = subprocess.run(
        [str(ROOT / ".venv/bin/schemathesis"), "run", f"{process.url}/openapi.json",
         "--checks", "not_a_server_error", "--max-examples", "60", "--seed", "1",
         "--header", f"Authorization: Bearer {tokens[role]}", "--request-timeout", "20",
         # One worker: with two threads, hypothesis's concurrent ast.parse hit CPython 3.11's
         # "AST constructor recursion depth mismatch" SystemError (a CI run on 2026-11-29).
         "--workers", "1", "--suppress-health-check", "all"],
        capture_output=True, text=True, timeout=600, cwd=tmp_path,
    )
    out = result.stdout + result.stderr
    assert result.returncode == 0, out[-4000:]
    generated = int(re.search(r"(\d+) generated", out).group(1))
    assert generated >= 250, out[-2000:]  # two roles: over 500 in all
    log = (tmp_path / "beacon.log").read_text()
    assert '"unhandled"' not in log, "a request raised an unhandled error"
