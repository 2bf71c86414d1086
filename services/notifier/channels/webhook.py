"""Webhook channel: a signed JSON POST.

Signature: `X-Beacon-Signature: v1=<hex HMAC-SHA256(secret, f"{timestamp}.{body}")>` where
timestamp is the `X-Beacon-Timestamp` header (Unix seconds) and body the exact bytes sent.
Signing the timestamp lets a receiver refuse replays older than its tolerance.
"""

import functools
import hashlib
import hmac
import json
import time
import urllib.request
from collections.abc import Sequence
from typing import Any

import aiohttp
from aiohttp.helpers import proxies_from_env
from yarl import URL

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


def classify_status(status: int, retry_after: str | None = None) -> DeliveryError | None:
    """None for 2xx. 408, 429 and 5xx are worth retrying; other answers are not."""
    if 200 <= status < 300:
        return None
    retryable = status in (408, 429) or status >= 500
    seconds = float(retry_after.strip()) if retry_after and retry_after.strip().isdigit() else None
    return DeliveryError(f"http_{status}", retryable=retryable, retry_after_s=seconds)


class SignedPoster:
    """POSTs signed JSON over one reused aiohttp session. Shared by the webhook and SMS channels.

    aiohttp, not httpx: with 64 sends in flight, httpx's pool managed about 180
    posts/s to a loopback receiver here and aiohttp about 4,000 (docs/performance.md).
    """

    def __init__(self, secret: str, timeout_s: float, previous: Sequence[str] = ()):
        if not secret:
            raise ValueError("a signing secret is required")
        # Signed with every secret, current first: a receiver holding either one accepts.
        self._secrets = [secret, *previous]
        self._timeout = aiohttp.ClientTimeout(total=timeout_s)
        self._session: aiohttp.ClientSession | None = None  # made on first use, in the loop
        # The environment's proxy (HTTP(S)_PROXY, NO_PROXY), read once: aiohttp's trust_env
        # reads it, and ~/.netrc, on a worker thread for every post (a fifth of the CPU).
        self._proxies = proxies_from_env()
        self._proxy_for = functools.lru_cache(maxsize=1024)(self._lookup_proxy)

    def _lookup_proxy(self, scheme: str, host: str | None) -> aiohttp.helpers.ProxyInfo | None:
        if host is not None and urllib.request.proxy_bypass(host):
            return None
        return self._proxies.get(scheme)

    def _client(self) -> aiohttp.ClientSession:
        if self._session is None or self._session.closed:
            # No connection limit of aiohttp's own (100): the worker's slots bound the sends, and
            # a send queued for a connection would spend its timeout waiting.
            self._session = aiohttp.ClientSession(
                connector=aiohttp.TCPConnector(limit=0), timeout=self._timeout,
                headers={"User-Agent": USER_AGENT}, trust_env=False)
        return self._session

    async def post(self, url: str, data: dict[str, Any], idempotency_key: str) -> None:
        if not idempotency_key.isascii() or not idempotency_key.isprintable():
            raise DeliveryError("bad_idempotency_key", retryable=False)  # not a valid header
        body = encode_json(data)
        timestamp = str(int(time.time()))
        headers = {
            "Content-Type": "application/json",
            "Idempotency-Key": idempotency_key,
            TIMESTAMP_HEADER: timestamp,
            SIGNATURE_HEADER: ", ".join(sign(s, timestamp, body) for s in self._secrets),
        }
        try:
            client = self._client()
            target = URL(url)
            proxy = self._proxy_for(target.scheme, target.host)
            # No redirects: one would re-send a signed alert elsewhere.
            async with client.post(target, data=body, headers=headers, allow_redirects=False,
                                   proxy=proxy.proxy if proxy else None,
                                   proxy_auth=proxy.proxy_auth if proxy else None) as response:
                await response.read()  # the connection goes back to the pool
                error = classify_status(response.status, response.headers.get("Retry-After"))
        except TimeoutError as exc:
            raise DeliveryError("timeout", retryable=True) from exc
        except (aiohttp.InvalidURL, aiohttp.NonHttpUrlClientError, ValueError) as exc:
            raise DeliveryError("bad_address", retryable=False) from exc
        except aiohttp.ClientConnectorError as exc:
            raise DeliveryError("connect_error", retryable=True) from exc
        except aiohttp.ClientError as exc:  # reset, protocol error: the receiver may be restarting
            raise DeliveryError("network_error", retryable=True) from exc
        if error is not None:
            raise error

    async def aclose(self) -> None:
        if self._session is not None:
            await self._session.close()


class WebhookChannel:
    """Sends `message.body` (codes only) to the contact's URL."""

    name = "webhook"

    def __init__(self, secret: str, timeout_s: float = 10.0, previous: Sequence[str] = ()):
        self._poster = SignedPoster(secret, timeout_s, previous)

    async def send(self, address: str, message: Message, idempotency_key: str) -> None:
        data = message.body or {"subject": message.subject, "text": message.text}
        await self._poster.post(address, data, idempotency_key)

    async def aclose(self) -> None:
        await self._poster.aclose()
