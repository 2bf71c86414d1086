"""Identity at rest: encrypted (Fernet) and kept in intake's database only. Matching uses keyed
hashes (HMAC) so that a name or phone number can be compared without being stored or sent."""

import base64
import hashlib
import hmac
import json
import unicodedata

from cryptography.fernet import Fernet

from schemas.reports import Report


class IdentityVault:
    def __init__(self, secret: str):
        key = hashlib.sha256(("beacon-identity:" + secret).encode()).digest()
        self._fernet = Fernet(base64.urlsafe_b64encode(key))
        self._hmac_key = hashlib.sha256(("beacon-fingerprint:" + secret).encode()).digest()

    def seal(self, report: Report) -> bytes:
        """The report's identity and narrative, encrypted; everything else travels as codes."""
        identity = report.model_dump(
            mode="json",
            include={"children", "reporter", "narrative", "suspect", "receiving_point"},
        )
        return self._fernet.encrypt(json.dumps(identity, ensure_ascii=False).encode())

    def open(self, token: bytes) -> dict:
        return json.loads(self._fernet.decrypt(token))

    def fingerprint(self, kind: str, value: str) -> str:
        return hmac.new(self._hmac_key, f"{kind}:{_normal(value)}".encode(), "sha256").hexdigest()

    def child_fingerprints(self, report: Report) -> list[str]:
        return sorted({self.fingerprint("child", c.name) for c in report.children if c.name})

    def reporter_fingerprint(self, report: Report) -> str | None:
        phone = report.reporter.phone if report.reporter else None
        digits = "".join(ch for ch in phone or "" if ch.isdigit())
        return self.fingerprint("phone", digits[-9:]) if digits else None


def _normal(text: str) -> str:
    """Case, accents and spacing do not make two spellings of one name different people."""
    text = unicodedata.normalize("NFD", text.casefold().replace("đ", "d"))
    return " ".join("".join(ch for ch in text if not unicodedata.combining(ch)).split())
