"""Identity kept for ever is the operator's legal decision, so intake starts; in production it
says so at start, naming the setting."""

import structlog

from services import runtime
from services.common.config import Settings

PRODUCTION = dict(env="production", database_url="postgresql+asyncpg://beacon@db/beacon",
                  public_base_url="https://beacon.example.vn",
                  secret_key="k" + "abcdefghijklmnopqrstuvwxyz0123456789",
                  webhook_secret="w" + "abcdefghijklmnopqrstuvwxyz0123456789")


def _said(monkeypatch, settings, services=frozenset({"intake"})) -> list[dict]:
    with structlog.testing.capture_logs() as logs:
        # A logger made now sees the capture (the module's is cached once logging is set up).
        monkeypatch.setattr(runtime, "log", structlog.get_logger("beacon"))
        runtime.warn_identity_kept(settings, services)
    return [e for e in logs if e["event"] == "identity_retention_off"]


def test_production_intake_says_identity_is_kept_for_ever(monkeypatch):
    [said] = _said(monkeypatch, Settings(**PRODUCTION))
    assert said["log_level"] == "warning"
    assert said["setting"] == "BEACON_RETENTION_IDENTITY_DAYS" and "for ever" in said["why"]


def test_no_warning_in_development_with_a_period_set_or_without_intake(monkeypatch):
    assert _said(monkeypatch, Settings(**{**PRODUCTION, "env": "development"})) == []
    assert _said(monkeypatch, Settings(**PRODUCTION, retention_identity_days=3650)) == []
    assert _said(monkeypatch, Settings(**PRODUCTION), frozenset({"notifier"})) == []
