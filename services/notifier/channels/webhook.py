"""Webhook channel: a signed JSON POST.

Signature: `X-Beacon-Signature: v1=<hex HMAC-SHA256(secret, f"{timestamp}.{body}")>` where
timestamp is the `X-Beacon-Timestamp` header (Unix seconds) and body the exact bytes sent.
Signing the timestamp lets a receiver refuse replays older than its tolerance.
"""

import hashlib
import hmac
import json
import time
from typing import Any

import httpx

from services.notifier.channels.base import DeliveryError, Message

SIGNATURE_HEADER = "X-Beacon-Signature"
TIMESTAMP_HEADER = "X-Beacon-Timestamp"
USER_AGENT = "beacon-notifier/1"


def _key(secret: str | bytes) -> bytes:
    return secret.encode() if isinstance(secret, str) else secret


def sign(secret: str | bytes, timestamp: str, body: bytes) -> str:
    mac = hmac.new(_key(secret), timestamp.encode() + b"." + body, hashlib.sha256)
    return "v1=" + mac.hexdigest()


def verify_signature(
    secret: str | bytes,
    timestamp: str,
    body: bytes | str,
    header: str,
    tolerance_s: float = 300,
    now: float | None = None,
) -> bool:
    """True when `header` holds a valid v1 signature of body at a timestamp within tolerance.

    The header may list several comma-separated signatures (a sender rotating its secret).
    """
    if isinstance(body, str):
        body = body.encode()
    try:
        ts = int(timestamp)
    except (TypeError, ValueError):
        return False
    now = time.time() if now is None else now
    if abs(now - ts) > tolerance_s:
        return False
    expected = sign(secret, str(ts), body)
    return any(
        hmac.compare_digest(expected.encode(), part.strip().encode())
        for part in (header or "").split(",")
    )


def encode_json(data: dict[str, Any]) -> bytes:
    # Compact and UTF-8: the signature covers these exact bytes.
    return json.dumps(data, ensure_ascii=False, separators=(",", ":")).encode()


def classify_status(response: httpx.Response) -> DeliveryError | None:
    """None for 2xx. 408, 429 and 5xx are worth retrying; other answers are not."""
    code = response.status_code
    if 200 <= code < 300:
        return None
    retryable = code in (408, 429) or code >= 500
    retry_after = None
    raw = response.headers.get("Retry-After")
    if raw and raw.strip().isdigit():
        retry_after = float(raw.strip())
    return DeliveryError(f"http_{code}", retryable=retryable, retry_after_s=retry_after)


class SignedPoster:
    """POSTs signed JSON with one reused client. Shared by the webhook and SMS channels."""

    def __init__(self, secret: str, timeout_s: float, client: httpx.AsyncClient | None = None):
        if not secret:
            raise ValueError("a signing secret is required")
        self._secret = secret
        self._client = client or httpx.AsyncClient(
            timeout=httpx.Timeout(timeout_s),
            follow_redirects=False,  # a redirect would re-send a signed alert elsewhere
            headers={"User-Agent": USER_AGENT},
        )

    async def post(self, url: str, data: dict[str, Any], idempotency_key: str) -> None:
        if not idempotency_key.isascii() or not idempotency_key.isprintable():
            raise DeliveryError("bad_idempotency_key", retryable=False)  # not a valid header
        body = encode_json(data)
        timestamp = str(int(time.time()))
        headers = {
            "Content-Type": "application/json",
            "Idempotency-Key": idempotency_key,
            TIMESTAMP_HEADER: timestamp,
            SIGNATURE_HEADER: sign(self._secret, timestamp, body),
        }
        try:
            response = await self._client.post(url, content=body, headers=headers)
        except httpx.TimeoutException as exc:
            raise DeliveryError("timeout", retryable=True) from exc
        except httpx.ConnectError as exc:
            raise DeliveryError("connect_error", retryable=True) from exc
        except httpx.UnsupportedProtocol as exc:
            raise DeliveryError("bad_address", retryable=False) from exc
        except httpx.InvalidURL as exc:
            raise DeliveryError("bad_address", retryable=False) from exc
        except httpx.TransportError as exc:  # reset, protocol error: the receiver may be restarting
            raise DeliveryError("network_error", retryable=True) from exc
        error = classify_status(response)
        if error is not None:
            raise error

    async def aclose(self) -> None:
        await self._client.aclose()


class WebhookChannel:
    """Sends `message.body` (codes only) to the contact's URL."""

    name = "webhook"

    def __init__(self, secret: str, timeout_s: float = 10.0,
                 client: httpx.AsyncClient | None = None):
        self._poster = SignedPoster(secret, timeout_s, client)

    async def send(self, address: str, message: Message, idempotency_key: str) -> None:
        data = message.body or {"subject": message.subject, "text": message.text}
        await self._poster.post(address, data, idempotency_key)

    async def aclose(self) -> None:
        await self._poster.aclose()
