"""Identity at rest: encrypted (Fernet) and kept in intake's database only. Matching uses keyed
hashes (HMAC) so that a name or phone number can be compared without being stored or sent."""

import base64
import hashlib
import hmac
import json
import unicodedata

from collections.abc import Sequence

from cryptography.fernet import Fernet, MultiFernet

from schemas.reports import Report


class IdentityVault:
    """Seals with the current secret; opens with it or any previous one (key rotation)."""

    def __init__(self, secret: str, previous: Sequence[str] = ()):
        self._fernet = MultiFernet([_fernet(key) for key in (secret, *previous)])
        self._hmac_keys = [hashlib.sha256(("beacon-fingerprint:" + key).encode()).digest()
                           for key in (secret, *previous)]  # the current one first

    def seal(self, report: Report) -> bytes:
        """The report's identity and narrative, encrypted; everything else travels as codes.
        The confidentiality flag goes with them: it decides who may see the reporter."""
        identity = report.model_dump(
            mode="json",
            include={"children", "reporter", "narrative", "suspect", "receiving_point",
                     "confidential"},
        )
        return self._fernet.encrypt(json.dumps(identity, ensure_ascii=False).encode())

    def open(self, token: bytes) -> dict:
        return json.loads(self._fernet.decrypt(token))

    def seal_text(self, text: str) -> bytes:
        """Free text that may name people (a severity override's reason), encrypted."""
        return self._fernet.encrypt(text.encode())

    def open_text(self, token: bytes) -> str:
        return self._fernet.decrypt(token).decode()

    def reseal(self, token: bytes) -> bytes:
        """The same identity (or text) sealed under the current secret."""
        return self._fernet.rotate(token)

    def fingerprint(self, kind: str, value: str, key: bytes | None = None) -> str:
        return hmac.new(key or self._hmac_keys[0], f"{kind}:{_normal(value)}".encode(),
                        "sha256").hexdigest()

    def child_fingerprints(self, report: Report) -> list[str]:
        return self._children(c.name for c in report.children)

    def reporter_fingerprint(self, report: Report) -> str | None:
        return self._phone(report.reporter.phone if report.reporter else None)

    def fingerprints(self, identity: dict) -> tuple[list[str], str | None]:
        """The child and reporter hashes of an opened identity (as `open` returns it)."""
        return (self._children(c.get("name") for c in identity.get("children") or []),
                self._phone((identity.get("reporter") or {}).get("phone")))

    def matching(self, report: Report, children: list[str],
                 reporter: str | None) -> tuple[list[str], list[str]]:
        """The hashes to match this report on: its own (`children`, `reporter`, under the current
        key) and those under each previous key, since until `beacon keys rotate` has run, stored
        hashes may be under one of them."""
        names = [c.name for c in report.children]
        phone = report.reporter.phone if report.reporter else None
        every_child, reporters = set(children), [reporter] if reporter else []
        for key in self._hmac_keys[1:]:
            every_child.update(self._children(names, key))
            if (hashed := self._phone(phone, key)) is not None:
                reporters.append(hashed)
        return sorted(every_child), reporters

    def _children(self, names, key: bytes | None = None) -> list[str]:
        return sorted({self.fingerprint("child", name, key) for name in names if name})

    def _phone(self, phone: str | None, key: bytes | None = None) -> str | None:
        digits = "".join(ch for ch in phone or "" if ch.isdigit())
        return self.fingerprint("phone", digits[-9:], key) if digits else None


def _fernet(secret: str) -> Fernet:
    key = hashlib.sha256(("beacon-identity:" + secret).encode()).digest()
    return Fernet(base64.urlsafe_b64encode(key))


def _normal(text: str) -> str:
    """Case, accents and spacing do not make two spellings of one name different people.
    Invisible format characters (a zero-width space pasted from a chat) count as spacing."""
    text = unicodedata.normalize("NFD", text.casefold().replace("đ", "d"))
    return " ".join("".join(" " if unicodedata.category(ch) == "Cf" else ch for ch in text
                            if not unicodedata.combining(ch)).split())
