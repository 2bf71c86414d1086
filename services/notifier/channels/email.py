"""E-mail over SMTP (aiosmtplib): plain text, one connection per message.

The Message-ID is derived from the idempotency key, so a repeat of one alert carries the same
Message-ID and mail systems (and people) can recognise it.
"""

import hashlib
import re
from email import policy
from email.message import EmailMessage
from email.utils import formatdate, parseaddr

import aiosmtplib

from services.notifier.channels.base import DeliveryError, Message

IDEMPOTENCY_HEADER = "X-Beacon-Idempotency-Key"
# Headers on one line up to RFC 5322's limit: Python's folding at 78 splits a Vietnamese
# subject into encoded words that readers join without the space between them ("Bạolực"),
# and breaks a long idempotency key into encoded pieces that a filter cannot match.
WIRE = policy.SMTP.clone(max_line_length=998)
_SAFE_KEY = re.compile(r"^[A-Za-z0-9._-]{1,128}$")


def message_id(idempotency_key: str, domain: str = "beacon.local") -> str:
    local = idempotency_key if _SAFE_KEY.match(idempotency_key) else (
        hashlib.sha256(idempotency_key.encode()).hexdigest()[:40]
    )
    return f"<{local}@{domain}>"


def _domain(address: str) -> str:
    part = address.rpartition("@")[2].strip(" >")
    return part if re.match(r"^[A-Za-z0-9.-]+$", part or "") else "beacon.local"


def _classify(exc: Exception) -> DeliveryError:
    """4xx answers and lost connections are worth retrying; 5xx refusals are final."""
    if isinstance(exc, aiosmtplib.SMTPRecipientsRefused):
        codes = [r.code for r in exc.recipients]
        permanent = bool(codes) and all(500 <= c < 600 for c in codes)
        code = codes[0] if codes else 0
        return DeliveryError(f"smtp_{code}", retryable=not permanent)
    if isinstance(exc, aiosmtplib.SMTPResponseException):  # the greeting (554) included
        code = exc.code
        return DeliveryError(f"smtp_{code}", retryable=not (500 <= code < 600))
    if isinstance(exc, (aiosmtplib.SMTPConnectError, aiosmtplib.SMTPConnectTimeoutError)):
        return DeliveryError("connect_error", retryable=True)
    if isinstance(exc, (aiosmtplib.SMTPTimeoutError, aiosmtplib.SMTPReadTimeoutError)):
        return DeliveryError("timeout", retryable=True)
    if isinstance(exc, aiosmtplib.SMTPServerDisconnected):
        return DeliveryError("disconnected", retryable=True)
    if isinstance(exc, aiosmtplib.SMTPNotSupported):  # e.g. STARTTLS asked but not offered
        return DeliveryError("smtp_not_supported", retryable=False)
    if isinstance(exc, OSError):
        return DeliveryError("connect_error", retryable=True)
    if isinstance(exc, aiosmtplib.SMTPException):
        # Client-side refusals (e.g. STARTTLS or AUTH not offered): configuration, not luck.
        return DeliveryError("smtp_config", retryable=False)
    return DeliveryError("smtp_error", retryable=True)


class EmailChannel:
    name = "email"

    def __init__(
        self, host: str, port: int, mail_from: str, *, starttls: bool = False,
        username: str | None = None, password: str | None = None, timeout_s: float = 20.0,
    ):
        if (username is None) != (password is None):
            raise ValueError("smtp_username and smtp_password go together")
        self._host, self._port, self._from = host, port, mail_from
        self._starttls, self._username, self._password = starttls, username, password
        self._timeout = timeout_s

    def build(self, address: str, message: Message, idempotency_key: str) -> EmailMessage:
        mail = EmailMessage()
        mail["From"] = self._from
        mail["To"] = address
        mail["Subject"] = message.subject
        mail["Date"] = formatdate(usegmt=True)
        mail["Message-ID"] = message_id(idempotency_key, _domain(self._from))
        mail[IDEMPOTENCY_HEADER] = idempotency_key
        mail["Auto-Submitted"] = "auto-generated"  # RFC 3834: no auto-replies to alerts
        mail.set_content(message.text, charset="utf-8")
        mail["Content-Language"] = message.lang  # after: set_content drops Content-* headers
        return mail

    async def send(self, address: str, message: Message, idempotency_key: str) -> None:
        if "@" not in address or any(c in address for c in "\r\n"):
            raise DeliveryError("bad_address", retryable=False)
        mail = self.build(address, message, idempotency_key)
        try:
            await aiosmtplib.send(
                mail.as_bytes(policy=WIRE),  # aiosmtplib would fold with its own policy
                sender=parseaddr(self._from)[1], recipients=[address],
                hostname=self._host,
                port=self._port,
                start_tls=self._starttls,  # explicit: no opportunistic upgrade surprises
                use_tls=False,
                username=self._username,
                password=self._password,
                timeout=self._timeout,
            )
        except (aiosmtplib.SMTPException, OSError) as exc:
            raise _classify(exc) from exc

    async def aclose(self) -> None:  # nothing held between messages
        return None
