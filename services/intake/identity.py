"""Identity at rest: encrypted (Fernet) and kept in intake's database only. Matching uses keyed
hashes (HMAC) so that a name or phone number can be compared without being stored or sent."""

import base64
import hashlib
import hmac
import json
import re
import unicodedata
from collections.abc import Sequence
from dataclasses import dataclass, field

from cryptography.fernet import Fernet, MultiFernet

from schemas.reports import Report


@dataclass
class Matching:
    """A report's hashes to look for among an open case's (`IdentityVault.matching`): a child's
    whole name of two words or more (`names`), or part of one (`parts`: one name the end of the
    other, or a given name alone; empty when the report names nobody), and the reporter's
    phone."""

    names: set[str] = field(default_factory=set)
    parts: set[str] = field(default_factory=set)
    reporters: list[str] = field(default_factory=list)


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

    def phone_hashes(self, phone: str) -> list[str]:
        """A reporter's phone number as stored hashes may hold it, under every key (a subject's
        request, docs/privacy.md): until `beacon keys rotate` has run, any of them."""
        return [hashed for key in self._hmac_keys if (hashed := self._phone(phone, key))]

    def name_hashes(self, name: str) -> list[str]:
        """A child's whole name as stored hashes may hold it, under every key; not its endings."""
        words = _words(name)
        return [self._name(words, key) for key in self._hmac_keys] if words else []

    def matching(self, report: Report, reporter: str | None) -> Matching:
        """The hashes to match this report on, under the current key and each previous one,
        since until `beacon keys rotate` has run, stored hashes may be under one of them."""
        names = [_words(c.name) for c in report.children if c.name]
        phone = report.reporter.phone if report.reporter else None
        found, reporters = Matching(), [reporter] if reporter else []
        for key in self._hmac_keys:
            for words in filter(None, names):
                # A given name alone ("An") is weak: age and setting must agree as well.
                (found.names if len(words) > 1 else found.parts).add(self._name(words, key))
                # Its whole name as the end of a case's name, or a case's name of two words or
                # more as the end of its: a case that knows only "An" is not found by "Trần Thị
                # An", who is another child as often as not.
                found.parts.add(self._name(words, key, "child-part"))
                found.parts.update(self._name(words[i:], key) for i in range(1, len(words) - 1))
            if key is not self._hmac_keys[0] and (hashed := self._phone(phone, key)) is not None:
                reporters.append(hashed)
        found.reporters = reporters
        return found

    def _children(self, names, key: bytes | None = None) -> list[str]:
        """Kept for each named child: its name's hash, and a hash of each ending of it ("Minh
        An" and "An" of "Nguyễn Minh An"), so that a caller who knows part of the name finds
        the case. Endings alone never match endings: "Trần Thị An" is not "Nguyễn Văn An"."""
        hashes = set()
        for words in filter(None, (_words(name) for name in names if name)):
            hashes.add(self._name(words, key))
            hashes.update(self._name(words[i:], key, "child-part") for i in range(1, len(words)))
        return sorted(hashes)

    def _name(self, words: list[str], key: bytes | None, kind: str = "child") -> str:
        return self.fingerprint(kind, " ".join(words), key)

    def _phone(self, phone: str | None, key: bytes | None = None) -> str | None:
        digits = "".join(ch for ch in phone or "" if ch.isdigit())
        return self.fingerprint("phone", digits[-9:], key) if digits else None


# Leading words that say "little one" or "child", not a name: "bé An" is An. Told apart with
# their accents: Châu and Bế are family names.
_NOT_NAMES = frozenset({"bé", "cháu", "em"})


def _words(name: str) -> list[str]:
    """A name's words as matching compares them; punctuation is spacing ("Minh-An.")."""
    spoken = [w for w in re.split(r"[^\w]+", unicodedata.normalize("NFC", name.casefold())) if w]
    while len(spoken) > 1 and spoken[0] in _NOT_NAMES:
        spoken = spoken[1:]
    return _normal(" ".join(spoken)).split()


def _fernet(secret: str) -> Fernet:
    key = hashlib.sha256(("beacon-identity:" + secret).encode()).digest()
    return Fernet(base64.urlsafe_b64encode(key))


def _normal(text: str) -> str:
    """Case, accents and spacing do not make two spellings of one name different people.
    Invisible format characters (a zero-width space pasted from a chat) count as spacing."""
    text = unicodedata.normalize("NFD", text.casefold().replace("đ", "d"))
    return " ".join("".join(" " if unicodedata.category(ch) == "Cf" else ch for ch in text
                            if not unicodedata.combining(ch)).split())
