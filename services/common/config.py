"""Configuration from BEACON_* environment variables, validated once at start-up."""

import os
import sys
from functools import lru_cache
from pathlib import Path
from typing import Literal
from urllib.parse import urlsplit

from pydantic import Field, ValidationError, field_validator, model_validator
from pydantic_settings import BaseSettings, SettingsConfigDict
from sqlalchemy import make_url

ROOT = Path(__file__).resolve().parents[2]
VAR = ROOT / "var"  # development state: secrets, tokens, the default database (owner-only)


class ConfigError(SystemExit):
    """Raised at start-up: the process exits with a clear message instead of a traceback."""


class Settings(BaseSettings):
    model_config = SettingsConfigDict(env_prefix="BEACON_", extra="ignore")

    kafka_bootstrap: str = "127.0.0.1:9092"
    database_url: str = f"sqlite+aiosqlite:///{VAR / 'beacon.db'}"
    http_host: str = "127.0.0.1"
    http_port: int = Field(8000, ge=1, le=65535)
    rulepack: str = "default"
    public_base_url: str = "http://127.0.0.1:8000"
    env: Literal["development", "production"] = "development"
    log_level: Literal["DEBUG", "INFO", "WARNING", "ERROR"] = "INFO"

    # Secrets. In development they are generated once under var/; production must set them.
    secret_key: str | None = Field(None, description="Encrypts identity at rest; signs links")
    # Earlier secret keys, comma-separated: they still open identity and verify links, and
    # `beacon keys rotate` moves everything to the current key (docs/privacy.md).
    secret_key_previous: str | None = None
    webhook_secret: str | None = None
    webhook_secret_previous: str | None = None  # comma-separated: still signed with, in rotation

    # Where the demo directory's contacts point (the local receivers that `make run` starts).
    demo_webhook_base: str = "http://127.0.0.1:8025"
    smtp_host: str = "127.0.0.1"
    smtp_port: int = Field(1025, ge=1, le=65535)
    smtp_starttls: bool = False
    smtp_username: str | None = None
    smtp_password: str | None = None
    mail_from: str = "beacon@localhost"
    sms_gateway_url: str = "http://127.0.0.1:8025/sms"

    # Retention per record class, in days; 0 keeps the class for ever (services/retention.py).
    retention_identity_days: int = Field(0, ge=0, description="A closed case's identity")
    retention_idempotency_days: int = Field(30, ge=0)
    retention_withdrawn_days: int = Field(30, ge=0, description="Inputs refused with 503")
    retention_deliveries_days: int = Field(90, ge=0, description="Finished delivery rows")
    retention_interval_s: float = Field(3600, gt=0)

    max_body_bytes: int = Field(256 * 1024, ge=1024)
    timer_interval_s: float = Field(0.25, gt=0, le=5)
    consumer_group_prefix: str = "beacon"
    topic_prefix: str = ""

    @field_validator("kafka_bootstrap")
    @classmethod
    def _bootstrap(cls, v: str) -> str:
        for hp in v.split(","):
            host, _, port = hp.strip().rpartition(":")
            if not host or not port.isdigit():
                raise ValueError(f"expected host:port[,host:port...], got {hp!r}")
        return v

    @field_validator("database_url")
    @classmethod
    def _database(cls, v: str) -> str:
        if not v.startswith(("sqlite+aiosqlite://", "postgresql+asyncpg://")):
            raise ValueError("use sqlite+aiosqlite:///PATH or postgresql+asyncpg://USER@HOST/DB")
        try:
            make_url(v)
        except ValueError as exc:  # a port that is not a number, say
            raise ValueError(f"not a database URL: {exc}") from None
        return v

    @field_validator("sms_gateway_url")
    @classmethod
    def _gateway(cls, v: str) -> str:
        parts = urlsplit(v)
        if v and parts.scheme not in ("http", "https") or not parts.hostname:
            raise ValueError(f"expected http(s)://HOST[:PORT]/PATH, got {v!r}")
        return v

    @field_validator("public_base_url")
    @classmethod
    def _public(cls, v: str) -> str:
        parts = urlsplit(v)
        if parts.scheme not in ("http", "https") or not parts.hostname:
            raise ValueError(f"expected http(s)://HOST[:PORT], got {v!r}: it begins every link "
                             "in a message")
        return v

    @model_validator(mode="after")
    def _links_follow_the_port(self) -> "Settings":
        """Unset, links point at where this process serves: a port changed alone moved the
        API but left every link, and the admin CLI, on 8000."""
        if "public_base_url" not in self.model_fields_set:
            if self.env == "production":  # every alert's link would open nothing
                raise ValueError("BEACON_PUBLIC_BASE_URL must be set when BEACON_ENV=production: "
                                 "it begins every link in a message, and unset it is this "
                                 "machine's own address, which no recipient can open")
            host = "127.0.0.1" if self.http_host in ("0.0.0.0", "::", "") else self.http_host
            host = f"[{host}]" if ":" in host else host
            self.public_base_url = f"http://{host}:{self.http_port}"
        return self

    @model_validator(mode="after")
    def _production(self) -> "Settings":
        """Production refuses what only suits a developer's machine, before anything runs."""
        if self.env != "production":
            return self
        for name, guards in (("secret_key", "opens sealed identity and signs links"),
                             ("webhook_secret", "signs webhooks and SMS-gateway requests")):
            value = getattr(self, name)
            # Few distinct characters: "aaaa...", "xxxx...", "1234123412341234..." typed by hand.
            if value and (len(value) < 32 or "change-me" in value or len(set(value)) < 12):
                raise ValueError(
                    f"BEACON_{name.upper()} is a placeholder, shorter than 32 characters or made "
                    f"of few different characters; it "
                    f"{guards}, so whoever knows it can forge them (make one with python -c "
                    "'import secrets; print(secrets.token_urlsafe(32))')")
        if "database_url" not in self.model_fields_set:
            raise ValueError("BEACON_DATABASE_URL must be set when BEACON_ENV=production (the "
                             "default is a SQLite file inside the installation)")
        return self

    def secret(self, name: str) -> str:
        """A secret from the environment, or in development one generated once under var/."""
        value = getattr(self, name)
        if value:
            return value
        if self.env == "production":
            raise ConfigError(f"BEACON_{name.upper()} must be set when BEACON_ENV=production")
        path = VAR / f"{name}.txt"
        if not path.exists():
            import secrets

            from services.common.files import private_dir, write_private

            private_dir(VAR)
            write_private(path, secrets.token_urlsafe(32))  # kept if another process was first
        return path.read_text().strip()

    def secret_keys(self) -> list[str]:
        """The current secret key first, then the previous ones."""
        return self._rotating("secret_key")

    def webhook_secrets(self) -> list[str]:
        """The current webhook secret first, then the previous ones."""
        return self._rotating("webhook_secret")

    def _rotating(self, name: str) -> list[str]:
        previous = [k.strip() for k in (getattr(self, f"{name}_previous") or "").split(",")]
        return [self.secret(name), *[k for k in previous if k]]

    def topic(self, name: str) -> str:
        return f"{self.topic_prefix}{name}"

    def group(self, service: str) -> str:
        return f"{self.consumer_group_prefix}-{service}"


# BEACON_* variables read by the tools, not by the services (tools/, the Makefile, tests).
TOOL_VARIABLES = frozenset({"BEACON_API_URL", "BEACON_TOKEN", "BEACON_KAFKA_PORT",
                            "BEACON_KAFKA_HEAP", "BEACON_PG_PORT", "BEACON_TEST_POSTGRES_URL"})


@lru_cache
def get_settings() -> Settings:
    try:
        settings = Settings()
    except ValidationError as exc:
        lines = [f"  {_variable(e['loc'])}{e['msg'].removeprefix('Value error, ')}"
                 for e in exc.errors()]
        raise ConfigError("Beacon configuration is invalid:\n" + "\n".join(lines)) from None
    if unknown := unknown_variables(os.environ):
        # A misspelt name is otherwise ignored, and its default (a SQLite file, a local broker)
        # used in its place.
        names = ", ".join(unknown)
        if settings.env == "production":
            raise ConfigError(f"Beacon configuration is invalid:\n  unknown variables: {names}")
        print(f"beacon: warning: unknown variables ignored: {names}", file=sys.stderr)
    return settings


def unknown_variables(environ) -> list[str]:
    known = {f"BEACON_{name.upper()}" for name in Settings.model_fields} | TOOL_VARIABLES
    return sorted(k for k in environ if k.startswith("BEACON_") and k not in known)


def _variable(loc: tuple) -> str:
    return f"BEACON_{'_'.join(str(p) for p in loc).upper()}: " if loc else ""
