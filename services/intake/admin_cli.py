"""`beacon rules upload|list|replay|approve|publish|rollback`, `beacon directory ...`,
`beacon audit ...`: thin clients of the admin API, so that the two-person rule, validation and the
audit trail are the API's and the CLI cannot go around them.

The API is at --url (BEACON_API_URL, default BEACON_PUBLIC_BASE_URL); the caller's bearer token is
--token (BEACON_TOKEN).
"""

import json
from pathlib import Path
from typing import Annotated

import httpx
import typer

Url = Annotated[str | None, typer.Option("--url", envvar="BEACON_API_URL",
                                         help="Beacon API base URL")]
Token = Annotated[str, typer.Option("--token", envvar="BEACON_TOKEN",
                                    help="Your bearer token (`beacon users token`)")]


def _client(url: str | None, token: str) -> httpx.Client:
    if url is None:
        from services.common.config import get_settings

        url = get_settings().public_base_url
    return httpx.Client(base_url=url, headers={"Authorization": f"Bearer {token}"}, timeout=60)


def _problem(item: object, source: str | None = None) -> str:
    """One line per problem: a pack's `{place, message}`, or FastAPI's `{loc, msg}`. The API
    places an uploaded pack's problems in `upload:LINE`; `source` (the file) replaces that, so
    that the line reads as `beacon rules validate` writes it and an editor can jump to it."""
    if not isinstance(item, dict):
        return str(item)
    if "loc" in item:
        return f"{'.'.join(str(p) for p in item['loc'])}: {item.get('msg', '')}"
    place = str(item.get("place", ""))
    if source and (place == "upload" or place.startswith("upload:")):
        place = source + place.removeprefix("upload")
    return f"{place}: {item.get('message', item)}"


def _call(url: str | None, token: str, method: str, path: str, source: str | None = None,
          **kwargs) -> object:
    try:
        with _client(url, token) as api:
            answer = api.request(method, path, **kwargs)
    except httpx.HTTPError as exc:
        typer.echo(f"error: cannot reach the Beacon API at {api.base_url} ({exc}); "
                   "give --url or BEACON_API_URL", err=True)
        raise typer.Exit(2) from None
    kind = answer.headers.get("content-type", "")
    if not kind.startswith("application/json"):
        # Every answer of the Beacon API is JSON: this is another server (a wrong port, a proxy's
        # error page), whose body would print as if it were Beacon's answer.
        typer.echo(f"error: {answer.url} answered HTTP {answer.status_code} "
                   f"({kind.split(';')[0] or 'no content type'}) where the Beacon API answers "
                   "JSON: is --url (BEACON_API_URL) Beacon's?", err=True)
        raise typer.Exit(2)
    body = answer.json()
    if answer.status_code >= 400:
        detail = body.get("detail", body) if isinstance(body, dict) else body
        if isinstance(detail, list):
            for item in detail:
                typer.echo(_problem(item, source), err=True)
        else:
            typer.echo(f"error {answer.status_code}: {detail}", err=True)
        raise typer.Exit(1)
    return body


def _print(body: object) -> None:
    typer.echo(json.dumps(body, ensure_ascii=False, indent=2, default=str))


def _read(path: Path) -> str:
    try:
        return path.read_text(encoding="utf-8")
    except OSError as exc:
        typer.echo(f"{path}: cannot read: {exc.strerror or exc}", err=True)
        raise typer.Exit(1) from None


def add_rules_commands(rules: typer.Typer) -> None:
    @rules.command("upload")
    def upload(path: Path, token: Token, url: Url = None) -> None:
        """Upload a rule pack as a draft (it must validate); a second admin approves it."""
        _print(_call(url, token, "POST", "/api/v1/rulepacks", source=str(path),
                     json={"text": _read(path)}))

    @rules.command("list")
    def list_(token: Token, url: Url = None) -> None:
        """Every version: draft, approved or builtin, and which is in force."""
        _print(_call(url, token, "GET", "/api/v1/rulepacks"))

    @rules.command("replay")
    def replay(version: str, token: Token, url: Url = None,
               open_only: Annotated[bool, typer.Option(help="Open cases only")] = False) -> None:
        """What VERSION would change on the recorded cases, against the pack in force."""
        _print(_call(url, token, "POST", f"/api/v1/rulepacks/{version}/replay",
                     params={"open_only": open_only}))

    @rules.command("approve")
    def approve(version: str, token: Token, url: Url = None) -> None:
        """Approve a draft (not your own: two-person rule)."""
        _print(_call(url, token, "POST", f"/api/v1/rulepacks/{version}/approval"))

    def _publication(at: str | None, reevaluate: bool) -> dict:
        return {"effective_at": at, "reevaluate_open": reevaluate}

    At = Annotated[str | None, typer.Option("--at", help="Effective time, ISO-8601 with zone")]
    Reevaluate = Annotated[bool, typer.Option("--reevaluate-open",
                                              help="Re-decide open cases under it")]

    @rules.command("publish")
    def publish(version: str, token: Token, url: Url = None, at: At = None,
                reevaluate_open: Reevaluate = False) -> None:
        """Publish an approved version; every instance takes it up at --at (default now)."""
        _print(_call(url, token, "POST", f"/api/v1/rulepacks/{version}/publication",
                     json=_publication(at, reevaluate_open)))

    @rules.command("rollback")
    def rollback(version: str, token: Token, url: Url = None, at: At = None,
                 reevaluate_open: Reevaluate = False) -> None:
        """Put an earlier published version back in force."""
        _print(_call(url, token, "POST", f"/api/v1/rulepacks/{version}/rollback",
                     json=_publication(at, reevaluate_open)))


directory_app = typer.Typer(no_args_is_help=True,
                            help="The authority directory: admins' entries over the generated one.")


@directory_app.command("show")
def directory_show(authority_id: str, token: Token, url: Url = None) -> None:
    """An authority as escalation sees it, and whether an admin's entry is in force."""
    _print(_call(url, token, "GET", f"/api/v1/authorities/{authority_id}"))


@directory_app.command("set")
def directory_set(authority_id: str,
                  entry: Annotated[Path, typer.Argument(help="JSON: name, tier, agency, "
                                                             "unit_code, contacts, ...; or the "
                                                             "output of `show`, edited")],
                  token: Token, url: Url = None) -> None:
    """Add an authority or change one (validated, versioned, audited)."""
    try:
        body = json.loads(_read(entry))
    except json.JSONDecodeError as exc:
        typer.echo(f"{entry}:{exc.lineno}: not valid JSON: {exc.msg}", err=True)
        raise typer.Exit(1) from None
    if isinstance(body, dict) and "authority" in body and "source" in body:
        body = body["authority"]  # `beacon directory show` output, edited: its entry
    _print(_call(url, token, "PUT", f"/api/v1/authorities/{authority_id}", json=body))


@directory_app.command("history")
def directory_history(authority_id: str, token: Token, url: Url = None) -> None:
    """Every version of an authority's entry: who changed it, when."""
    _print(_call(url, token, "GET", f"/api/v1/authorities/{authority_id}/history"))


audit_app = typer.Typer(no_args_is_help=True, help="The audit trail (auditor role).")


WHEN = "ISO 8601: a date (2026-01-01) or a time; without a zone, UTC"


@audit_app.command("query")
def audit_query(token: Token, url: Url = None,
                case: Annotated[str | None, typer.Option(help="Case id (or pack version)")] = None,
                user: Annotated[str | None, typer.Option(help="User id")] = None,
                action: Annotated[str | None, typer.Option(
                    help="read, write, denied, export, user_change, directory_change, backup, "
                         "key_rotation...")] = None,
                field: Annotated[str | None, typer.Option(
                    help="Records naming this field or one under it: --action read --field "
                         "identity gives the identity openings")] = None,
                since: Annotated[str | None, typer.Option(help=WHEN)] = None,
                until: Annotated[str | None, typer.Option(help=WHEN)] = None,
                limit: int = 100) -> None:
    """Audit records by case, user, action and time."""
    params = {k: v for k, v in {"case_id": case, "user_id": user, "action": action,
                                "field": field, "since": since, "until": until,
                                "limit": limit}.items()
              if v is not None}
    _print(_call(url, token, "GET", "/api/v1/audit", params=params))


@audit_app.command("access")
def audit_access(case_id: str, token: Token, url: Url = None) -> None:
    """Who accessed a case, how often, first and last time; each opening of its identity."""
    _print(_call(url, token, "GET", f"/api/v1/audit/cases/{case_id}/access"))
