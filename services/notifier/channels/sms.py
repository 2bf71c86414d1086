"""SMS through an HTTP gateway: one provider-agnostic adapter, signed like the webhook.

Request (docs/notifier.md): POST <sms_gateway_url> with JSON
{"to", "text", "idempotency_key", "encoding": "gsm7"|"ucs2", "segments": n}. A provider with
another shape gets its own small adapter with the same `send` method.
"""

import math
import re
from collections.abc import Sequence

from services.notifier.channels.base import DeliveryError, Message
from services.notifier.channels.webhook import SignedPoster

# GSM 03.38 default alphabet; the extension table's characters cost two septets.
_GSM7_BASIC = set(
    "@£$¥èéùìòÇ\nØø\rÅåΔ_ΦΓΛΩΠΨΣΘΞÆæßÉ !\"#¤%&'()*+,-./0123456789:;<=>?"
    "¡ABCDEFGHIJKLMNOPQRSTUVWXYZÄÖÑÜ§¿abcdefghijklmnopqrstuvwxyzäöñüà"
)
_GSM7_EXT = set("^{}\\[~]|€\f")


def sms_segments(text: str) -> tuple[str, int]:
    """(encoding, segments) the text needs: GSM-7 160/153, UCS-2 70/67 per segment.

    Vietnamese with diacritics is outside GSM-7, so it goes as UCS-2.
    """
    if all(c in _GSM7_BASIC or c in _GSM7_EXT for c in text):
        units = sum(2 if c in _GSM7_EXT else 1 for c in text)
        single, part, encoding = 160, 153, "gsm7"
    else:
        units = len(text.encode("utf-16-le")) // 2  # characters beyond the BMP take two units
        single, part, encoding = 70, 67, "ucs2"
    if units <= single:
        return encoding, 1
    return encoding, math.ceil(units / part)


_NUMBER = re.compile(r"^\+?[0-9]{6,15}$")


def normalise_number(address: str) -> str:
    number = re.sub(r"[\s\-().]", "", address)
    if not _NUMBER.match(number):
        raise DeliveryError("bad_address", retryable=False)
    return number


class SmsGatewayChannel:
    name = "sms"

    def __init__(self, gateway_url: str, secret: str, timeout_s: float = 10.0,
                 previous: Sequence[str] = ()):
        if not gateway_url.startswith(("http://", "https://")):
            raise ValueError(f"sms_gateway_url must be an http(s) URL, got {gateway_url!r}")
        self._url = gateway_url
        self._poster = SignedPoster(secret, timeout_s, previous)

    async def send(self, address: str, message: Message, idempotency_key: str) -> None:
        encoding, segments = sms_segments(message.text)
        payload = {
            "to": normalise_number(address),
            "text": message.text,
            "idempotency_key": idempotency_key,
            "encoding": encoding,
            "segments": segments,
        }
        await self._poster.post(self._url, payload, idempotency_key)

    async def aclose(self) -> None:
        await self._poster.aclose()
