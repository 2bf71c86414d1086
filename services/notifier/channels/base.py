"""What every delivery channel shares: the message, the error, the protocol and the settings."""

from dataclasses import dataclass, field
from typing import Any, Protocol, runtime_checkable

from pydantic import BaseModel, ConfigDict, Field


@dataclass(frozen=True)
class Message:
    """A rendered, PII-free message. Each channel uses the parts it needs."""

    subject: str  # e-mail subject
    text: str  # e-mail body and SMS text
    body: dict[str, Any] = field(default_factory=dict)  # webhook JSON (codes only)
    lang: str = "vi"
    # Set when a template failed and the built-in plain message was used instead: the alert is
    # still sent, and the caller records this short error class (never message content).
    render_error: str | None = None


class DeliveryError(Exception):
    """A failed delivery. `reason` is a short error class safe for logs and events."""

    def __init__(self, reason: str, *, retryable: bool, retry_after_s: float | None = None):
        super().__init__(reason)
        self.reason = reason
        self.retryable = retryable
        self.retry_after_s = retry_after_s  # a receiver's Retry-After, when it gave one

    def __repr__(self) -> str:
        return f"DeliveryError({self.reason!r}, retryable={self.retryable})"


@runtime_checkable
class Channel(Protocol):
    name: str

    async def send(self, address: str, message: Message, idempotency_key: str) -> None:
        """Deliver once or raise DeliveryError. Receivers drop repeats by idempotency_key."""

    async def aclose(self) -> None: ...


class ChannelConfig(BaseModel):
    """Delivery settings. A channel whose endpoint is unset is simply not built."""

    model_config = ConfigDict(extra="forbid")

    webhook_secret: str = Field(min_length=1)
    # Earlier secrets, signed with too while receivers move to the new one (docs/notifier.md).
    # They sign SMS-gateway requests as well when sms_secret is the webhook secret, as in Beacon.
    previous_secrets: list[str] = []
    webhook_timeout_s: float = Field(10.0, gt=0)
    smtp_host: str | None = "127.0.0.1"
    smtp_port: int = Field(1025, ge=1, le=65535)
    smtp_starttls: bool = False
    smtp_username: str | None = None
    smtp_password: str | None = None
    smtp_timeout_s: float = Field(20.0, gt=0)
    mail_from: str = "beacon@localhost"
    sms_gateway_url: str | None = None
    sms_secret: str | None = None
    sms_timeout_s: float = Field(10.0, gt=0)
