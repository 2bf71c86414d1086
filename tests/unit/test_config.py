from services.common.config import Settings


def test_links_follow_the_port_unless_their_base_is_given(monkeypatch):
    # A port changed alone used to leave every link in a message, and the admin CLI, on 8000.
    for name in ("BEACON_PUBLIC_BASE_URL", "BEACON_HTTP_PORT", "BEACON_HTTP_HOST"):
        monkeypatch.delenv(name, raising=False)
    assert Settings().public_base_url == "http://127.0.0.1:8000"
    assert Settings(http_port=18100).public_base_url == "http://127.0.0.1:18100"
    assert Settings(http_host="0.0.0.0", http_port=9000).public_base_url == "http://127.0.0.1:9000"
    assert Settings(http_host="::1").public_base_url == "http://[::1]:8000"
    given = Settings(http_port=18100, public_base_url="https://beacon.example.gov.vn")
    assert given.public_base_url == "https://beacon.example.gov.vn"


def test_production_needs_the_address_recipients_open_links_at(monkeypatch):
    """Unset, every link in an alert pointed at the machine's own loopback: no officer could
    open a case or acknowledge from a message (found by an admin's review)."""
    import pytest
    from pydantic import ValidationError

    for name in ("BEACON_PUBLIC_BASE_URL", "BEACON_HTTP_PORT", "BEACON_HTTP_HOST"):
        monkeypatch.delenv(name, raising=False)
    production = dict(env="production", database_url="postgresql+asyncpg://beacon@db/beacon",
                      secret_key="k" + "abcdefghijklmnopqrstuvwxyz0123456789",
                      webhook_secret="w" + "abcdefghijklmnopqrstuvwxyz0123456789")
    with pytest.raises(ValidationError, match="BEACON_PUBLIC_BASE_URL must be set"):
        Settings(**production)
    given = Settings(**production, public_base_url="https://beacon.example.vn")
    assert given.public_base_url == "https://beacon.example.vn"
    assert Settings(**{**production, "env": "development"}).public_base_url.startswith(
        "http://127.0.0.1:")  # a developer's machine: its own address is the point
