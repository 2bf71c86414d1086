"""Signed, expiring links to a case: `{base_url}/a/{token}`.

token = `{case_id}.{action}.{expiry}.{signature}`
- case_id percent-escaped (so it cannot contain the "." separator), action a short word such as
  "view" or "ack", expiry Unix seconds in base 36;
- signature = first 16 bytes of HMAC-SHA256(secret, "v1|case_id|authority_id|action|expiry"),
  base64url without padding (22 characters).

The recipient authority is bound into the signature but not written in the link: a link verifies
only for the authority it was sent to, and an SMS stays short. It grants one thing, checked and
logged by the page behind it (services/intake/api/links.py): the codes the message carried and an
acknowledgement for that authority, until it expires. Anything more needs signing in.
"""

import base64
import hashlib
import hmac
import re
from dataclasses import dataclass
from datetime import UTC, datetime
from urllib.parse import quote, unquote, urlsplit

_ACTION = re.compile(r"^[a-z][a-z_]{0,15}$")
_B36 = "0123456789abcdefghijklmnopqrstuvwxyz"
SIG_BYTES = 16  # 128 bits: unguessable, and short enough for SMS


@dataclass(frozen=True)
class LinkClaims:
    case_id: str
    action: str
    authority_id: str
    expires_at: datetime


def _b36(n: int) -> str:
    out = ""
    while True:
        n, r = divmod(n, 36)
        out = _B36[r] + out
        if n == 0:
            return out


def _mac(secret: str | bytes, case_id: str, authority_id: str, action: str, exp: int) -> str:
    key = secret.encode() if isinstance(secret, str) else secret
    msg = f"v1|{case_id}|{authority_id}|{action}|{exp}".encode()
    digest = hmac.new(key, msg, hashlib.sha256).digest()[:SIG_BYTES]
    return base64.urlsafe_b64encode(digest).rstrip(b"=").decode()


def _escape(value: str) -> str:
    return quote(value, safe="").replace(".", "%2E")


def sign_link(
    base_url: str, case_id: str, action: str, authority_id: str, expires_at: datetime,
    secret: str | bytes,
) -> str:
    if not secret:
        raise ValueError("a link secret is required")
    if not _ACTION.match(action):
        raise ValueError(f"bad link action {action!r}")
    if expires_at.tzinfo is None:
        raise ValueError("expires_at must be timezone-aware")
    exp = int(expires_at.timestamp())
    token = ".".join(
        [_escape(case_id), action, _b36(exp), _mac(secret, case_id, authority_id, action, exp)]
    )
    return f"{base_url.rstrip('/')}/a/{token}"


def verify_link(
    link: str, *, authority_id: str, secret: str | bytes, now: datetime,
    action: str | None = None,
) -> LinkClaims | None:
    """The claims when `link` (a URL or its token) is genuine, unexpired, for this authority and,
    when given, for this action; otherwise None."""
    token = urlsplit(link).path.rsplit("/", 1)[-1] if "/" in link else link
    parts = token.split(".")
    if len(parts) != 4 or not secret:
        return None
    raw_case, act, exp36, sig = parts
    if not _ACTION.match(act) or (action is not None and act != action):
        return None
    try:
        exp = int(exp36, 36)
    except ValueError:
        return None
    case_id = unquote(raw_case)
    expected = _mac(secret, case_id, authority_id, act, exp)
    if not hmac.compare_digest(expected.encode(), sig.encode()):
        return None
    expires_at = datetime.fromtimestamp(exp, UTC)
    if now >= expires_at:
        return None
    return LinkClaims(case_id=case_id, action=act, authority_id=authority_id, expires_at=expires_at)
