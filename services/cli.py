"""The `beacon` command."""

import asyncio
import json
import os
from enum import StrEnum
from pathlib import Path
from typing import Annotated

import typer

from services.common.config import VAR, ConfigError, get_settings

app = typer.Typer(no_args_is_help=True, help="Beacon: child-protection alerting and escalation.")
db_app = typer.Typer(no_args_is_help=True, help="The database.")
users_app = typer.Typer(no_args_is_help=True, help="Users and their bearer tokens.")
cases_app = typer.Typer(no_args_is_help=True, help="The case read model.")
retention_app = typer.Typer(no_args_is_help=True, help="Retention per record class.")
keys_app = typer.Typer(no_args_is_help=True, help="The secret key: rotation.")
app.add_typer(db_app, name="db")
app.add_typer(keys_app, name="keys")
app.add_typer(retention_app, name="retention")
app.add_typer(users_app, name="users")
app.add_typer(cases_app, name="cases")


def _rules_app():
    from services.escalation.rules_cli import app as rules
    from services.intake.admin_cli import add_rules_commands

    add_rules_commands(rules)  # the lifecycle: upload, replay, approve, publish, rollback
    return rules


def _admin_apps():
    from services.intake.admin_cli import audit_app, directory_app

    app.add_typer(directory_app, name="directory")
    app.add_typer(audit_app, name="audit")


app.add_typer(_rules_app(), name="rules",
              help="Rule packs: validate, test a report; upload, replay, approve, publish, roll back.")
_admin_apps()


class Service(StrEnum):
    all = "all"
    intake = "intake"
    escalation = "escalation"
    notifier = "notifier"


def _settings():
    try:
        return get_settings()
    except ConfigError as exc:
        typer.echo(str(exc), err=True)
        raise typer.Exit(2) from None


@app.command()
def run(service: Service, port: Annotated[int | None, typer.Option(help="HTTP port")] = None):
    """Run one service, or all of them in one process. Ctrl-C (SIGINT) or SIGTERM stops it."""
    import uvicorn

    from services import runtime
    from services.app import create_app
    from services.common.files import warn_wide_dir
    from services.common.http_limits import BoundedHttpToolsProtocol
    from services.common.logging import configure

    if port is not None:  # as BEACON_HTTP_PORT would: the links then follow it too
        os.environ["BEACON_HTTP_PORT"] = str(port)
    settings = _settings()
    configure(settings.log_level)
    warn_wide_dir(VAR)
    services = frozenset(runtime.SERVICES if service is Service.all else (service.value,))
    try:
        # The port first: a process that cannot serve must not join the consumer groups, fire
        # timers or deliver before it finds out.
        sock = _bind(settings.http_host, settings.http_port)
        rt = runtime.build(settings, services)
        asyncio.run(runtime.preflight(settings, services))
        config = uvicorn.Config(create_app(rt), log_config=None, lifespan="on",
                                timeout_graceful_shutdown=10, http=BoundedHttpToolsProtocol)
        server = uvicorn.Server(config)
        server.run(sockets=[sock])  # uvloop where installed: a database round trip costs a fifth
    except ConfigError as exc:
        typer.echo(str(exc), err=True)
        raise typer.Exit(2) from None
    if not server.started:
        raise typer.Exit(1)


def _bind(host: str, port: int):
    import socket

    sock = socket.socket(socket.AF_INET6 if ":" in host else socket.AF_INET, socket.SOCK_STREAM)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    try:
        sock.bind((host, port))
    except OSError as exc:
        sock.close()
        raise ConfigError(f"cannot serve HTTP on {host}:{port}: {exc.strerror or exc} "
                          "(BEACON_HTTP_HOST, BEACON_HTTP_PORT or --port)") from None
    return sock


@db_app.command("upgrade")
def db_upgrade(revision: str = "head"):
    """Create or migrate the tables (Alembic)."""
    from services.common.migrate import upgrade

    async def reachable(db):
        return None

    from alembic.util import CommandError

    settings = _settings()
    asyncio.run(_with_db(reachable, settings, migrated=False))  # exit 2 when it does not answer
    try:
        upgrade(settings.database_url, revision)
    except CommandError as exc:  # an unknown revision, say
        typer.echo(f"error: {exc}", err=True)
        raise typer.Exit(2) from None
    typer.echo(f"database at {revision}")


@db_app.command("backup")
def db_backup(path: Annotated[Path, typer.Argument(help="The file to write; must not exist")]):
    """A consistent copy of the SQLite database, taken while Beacon runs (SQLite's online
    backup). A copy of the file misses what its write-ahead log holds: a copy made so of a
    running Beacon held no report at all. On PostgreSQL, use pg_dump or continuous archiving
    (docs/operations.md)."""
    import sqlite3
    from contextlib import closing

    from sqlalchemy import make_url

    url = make_url(_settings().database_url)
    if url.get_backend_name() != "sqlite":
        typer.echo("beacon db backup copies a SQLite database; on PostgreSQL use pg_dump or "
                   "continuous archiving (docs/operations.md, Backup and restore)", err=True)
        raise typer.Exit(2)
    source = Path(url.database or "")
    if not source.is_file():
        typer.echo(f"no database at {source} (BEACON_DATABASE_URL)", err=True)
        raise typer.Exit(2)

    def progress(status, remaining, total):
        typer.echo(f"  {total - remaining}/{total} pages", err=True)

    async def copy(db):
        try:
            # Owner-only, as the database (db.create_private), and never over an existing file.
            os.close(os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600))
        except FileExistsError:
            typer.echo(f"{path} exists: give a new file, so that no backup is overwritten",
                       err=True)
            raise typer.Exit(2) from None
        except OSError as exc:  # no such directory, no permission: said, and recorded
            await _audit_cli(db, "backup", path.name, outcome="failed")
            typer.echo(f"cannot write {path}: {exc.strerror}", err=True)
            raise typer.Exit(2) from None
        # A copy of every sealed identity: each is recorded, with the file's name only.
        try:
            with closing(sqlite3.connect(source)) as live, closing(sqlite3.connect(path)) as out:
                live.backup(out, pages=4096, progress=progress)
        except sqlite3.Error:
            path.unlink()  # a partial copy is no backup, yet holds identity
            await _audit_cli(db, "backup", path.name, outcome="failed")
            raise
        await _audit_cli(db, "backup", path.name)

    try:
        asyncio.run(_with_db(copy, migrated=False))
    except sqlite3.Error as exc:
        typer.echo(f"error: backup failed: {exc}", err=True)
        raise typer.Exit(1) from None
    typer.echo(f"backed up {source} to {path}")


async def _with_db(fn, settings=None, migrated: bool = True):
    """`fn(db)` on the configured database, closed afterwards; exit 2 with a message when it
    cannot be reached or (`migrated`) is not migrated."""
    from services.common.db import Database
    from services.runtime import check_database

    db = Database((settings or _settings()).database_url)
    try:
        await check_database(db, migrated)
        return await fn(db)
    except ConfigError as exc:
        typer.echo(str(exc), err=True)
        raise typer.Exit(2) from None
    finally:
        await db.dispose()


async def _with_session(fn):
    async def in_transaction(db):
        async with db.writes() as session, session.begin():
            return await fn(session)

    return await _with_db(in_transaction)


@users_app.command("create")
def users_create(
    user_id: str, role: str,
    name: Annotated[str, typer.Option(help="Display name")] = "",
    scope: Annotated[str, typer.Option(help="national | province:<code> | commune:<code>")] = "national",
    authority: Annotated[list[str], typer.Option(help="Authority id (authority role)")] = [],  # noqa: B006
):
    """Create a user with a role and a jurisdiction scope, and print a first token."""
    from services.common import auth

    async def go(session):
        if await session.get(auth.User, user_id) is not None:
            raise ValueError(f"user {user_id!r} exists: issue it a token with `beacon users token`")
        if problems := await _user_problems(session, role, scope, list(authority)):
            raise ValueError("; ".join(problems))
        await auth.create_user(session, user_id, name or user_id, role, scope, list(authority))
        await session.flush()
        _audit_user(session, user_id, ["role", "scope", "authorities", "token_issued"])
        return await auth.issue_token(session, user_id, "first")

    typer.echo(_users(go))


@users_app.command("token")
def users_token(user_id: str, label: str = ""):
    """Issue a new bearer token for a user (printed once; only its hash is stored)."""
    from services.common import auth

    async def go(session):
        await _existing_user(session, user_id)
        _audit_user(session, user_id, ["token_issued"])
        return await auth.issue_token(session, user_id, label)

    typer.echo(_users(go))


@users_app.command("revoke")
def users_revoke(user_id: str):
    """Revoke every token of a user."""
    from services.common import auth

    async def go(session):
        await _existing_user(session, user_id)
        _audit_user(session, user_id, ["tokens_revoked"])
        return await auth.revoke_tokens(session, user_id)

    typer.echo(f"revoked {_users(go)} token(s)")


@users_app.command("set")
def users_set(
    user_id: str,
    role: Annotated[str | None, typer.Option(help="A new role")] = None,
    name: Annotated[str | None, typer.Option(help="A new display name")] = None,
    scope: Annotated[str | None, typer.Option(help="A new scope: national | province:<code> | "
                                                    "commune:<code>")] = None,
    authority: Annotated[list[str] | None, typer.Option(
        help="The authority ids it answers for, all of them (replaces the list)")] = None,
):
    """Correct a user (an officer who moved commune, a role given in error). It holds from the
    user's next request; its tokens stay valid. Checked as `create` checks a new user."""
    from services.common import auth

    async def go(session):
        user = await session.get(auth.User, user_id)
        if user is None:
            raise ValueError(f"no user {user_id!r}")
        new_role, new_scope = role or user.role, scope or user.scope
        # A user that stops being an authority answers for none; otherwise the list stands.
        new_authorities = (list(authority) if authority is not None
                           else list(user.authority_ids or []) if new_role == "authority" else [])
        if new_role not in auth.ROLES:
            raise ValueError(f"--role must be one of {', '.join(auth.ROLES)}")
        if new_role == "admin" and new_scope != "national":
            raise ValueError("--scope: an admin's scope must be national")
        auth.validate_scope(new_scope)
        if problems := await _user_problems(session, new_role, new_scope, new_authorities):
            raise ValueError("; ".join(problems))
        changed = [field for field, old, new in (
            ("role", user.role, new_role), ("name", user.name, name or user.name),
            ("scope", user.scope, new_scope),
            ("authorities", list(user.authority_ids or []), new_authorities)) if old != new]
        if not changed:
            raise ValueError("nothing to change: give --role, --name, --scope or --authority")
        user.role, user.name, user.scope = new_role, name or user.name, new_scope
        user.authority_ids = new_authorities
        _audit_user(session, user_id, changed)
        return changed

    typer.echo(f"changed {', '.join(_users(go))} of {user_id}")


@users_app.command("disable")
def users_disable(user_id: str):
    """Stop a user at once, every token with it (someone who left); `enable` undoes it. The
    user, and what the trail records of it, stay."""
    _set_disabled(user_id, True)


@users_app.command("enable")
def users_enable(user_id: str):
    """Let a disabled user in again, with the tokens it had that were not revoked."""
    _set_disabled(user_id, False)


def _set_disabled(user_id: str, disabled: bool) -> None:
    from services.common import auth

    async def go(session):
        user = await session.get(auth.User, user_id)
        if user is None:
            raise ValueError(f"no user {user_id!r}")
        if user.disabled != disabled:
            user.disabled = disabled
            _audit_user(session, user_id, ["disabled" if disabled else "enabled"])

    _users(go)
    typer.echo(f"{user_id} {'disabled' if disabled else 'enabled'}")


def _users(go):
    try:
        return asyncio.run(_with_session(go))
    except ValueError as exc:
        typer.echo(f"error: {exc}", err=True)
        raise typer.Exit(1) from None


async def _user_problems(session, role: str, scope: str, authorities: list[str]) -> list[str]:
    """What would give a user who sees nothing, or the wrong things: a scope naming no place,
    an authority that does not exist or lies outside the scope, authorities on another role."""
    from services.escalation.directory import build_directory
    from services.escalation.directory_admin import DirectoryEntry
    from services.escalation.rulepack import load_pack
    from services.intake.validation import province_of

    problems = []
    kind, _, code = scope.partition(":")
    if kind in ("province", "commune") and code.isdigit() and province_of(kind, int(code)) is None:
        problems.append(f"--scope: no {kind} with code {code}")
    if role != "authority" and authorities:
        problems.append(f"--authority: only an authority user answers for authorities, not {role}")
    if role == "authority" and not authorities:
        problems.append("--authority: an authority user answers for at least one authority id")
    if authorities:
        settings = _settings()
        known = build_directory(load_pack(settings.rulepack),
                                webhook_base=settings.demo_webhook_base)
        for authority_id in authorities:
            if authority_id not in known and await session.get(DirectoryEntry,
                                                               authority_id) is None:
                problems.append(f"--authority: unknown authority {authority_id!r}")
            elif not _in_scope(authority_id, kind, code):
                problems.append(f"--authority: {authority_id!r} is outside the scope {scope}")
    return problems


def _in_scope(authority_id: str, kind: str, code: str) -> bool:
    from services.intake.validation import province_of

    if kind == "national":
        return True
    tier, _, rest = authority_id.partition(":")
    unit = rest.partition(":")[0]
    if tier == "national":
        return False
    if tier not in ("commune", "province") or not unit.isdigit():
        return True  # a tier with no code to place (a district of the 2020 pack): not checked
    if kind == "commune":
        return tier == "commune" and unit == code
    return province_of(tier, int(unit)) == int(code)


async def _existing_user(session, user_id: str) -> None:
    from services.common import auth

    if await session.get(auth.User, user_id) is None:
        raise ValueError(f"no user {user_id!r}")


def _cli_user() -> str:
    """Who ran a command that the trail records: the operating-system account."""
    import getpass

    return f"cli:{getpass.getuser()}"


def _audit_user(session, user_id: str, fields: list[str]) -> None:
    """Who changed a user's access."""
    from services.common import audit

    audit.record(session, _cli_user(), "admin", "user_change", user_id, fields)


async def _audit_cli(db, action: str, record_id: str, fields: list[str] | None = None,
                     outcome: str = "ok") -> None:
    from services.common import audit

    await audit.write(db, _cli_user(), "admin", action, record_id[:64], fields, outcome)


DEV_USERS = {
    # role: (scope, authorities) - the demo case in README is in commune 4 of province 1 (Ha Noi).
    "operator": ("national", []),
    "supervisor": ("national", []),
    "authority": ("commune:4", ["commune:4:child_protection", "commune:4:police",
                                "commune:4:health"]),
    "admin": ("national", []),
    "auditor": ("national", []),
}


@users_app.command("dev")
def users_dev(out: Path = VAR / "dev-tokens.json"):
    """Create the local development users and write fresh tokens to var/dev-tokens.json."""
    from services.common import auth

    settings = _settings()
    if settings.env == "production":
        typer.echo("refusing to create development users with BEACON_ENV=production", err=True)
        raise typer.Exit(2)

    async def go(session):
        tokens = {}
        for role, (scope, authorities) in DEV_USERS.items():
            user_id = f"dev-{role}"
            if await session.get(auth.User, user_id) is None:
                await auth.create_user(session, user_id, f"Development {role}", role, scope,
                                       authorities)
                await session.flush()
            await auth.revoke_tokens(session, user_id)
            tokens[role] = await auth.issue_token(session, user_id, "dev")
        return tokens

    tokens = asyncio.run(_with_session(go))
    from services.common.files import private_dir, write_private

    private_dir(out.parent)
    write_private(out, json.dumps(tokens, indent=2) + "\n", replace=True)
    for role, token in tokens.items():
        typer.echo(f"  {role:<10} {token}")
    typer.echo(f"tokens written to {out}")


@cases_app.command("rebuild")
def cases_rebuild():
    """Rebuild the case read model by replaying the case events from Kafka."""
    from services import runtime
    from services.intake.rebuild import Incomplete, rebuild

    settings = _settings()
    try:
        asyncio.run(runtime.preflight(settings))  # the database and the broker answer
        n = asyncio.run(rebuild(settings))
    except ConfigError as exc:
        typer.echo(str(exc), err=True)
        raise typer.Exit(2) from None
    except Incomplete as exc:
        typer.echo(f"beacon cases rebuild: refused: {exc}", err=True)
        raise typer.Exit(1) from None
    typer.echo(f"rebuilt the read model from {n} events")


@retention_app.command("run")
def retention_run(dry_run: Annotated[bool, typer.Option(help="Count; change nothing")] = False):
    """Purge what each record class has outlived now (the services also do it every
    BEACON_RETENTION_INTERVAL_S). A class kept for ever (0 days) is not listed."""
    import sys

    from services import retention
    from services.common.logging import configure

    settings = _settings()
    configure(settings.log_level, stream=sys.stderr)
    counts = asyncio.run(_with_db(lambda db: retention.purge(
        db, settings, {"intake", "notifier"}, dry_run=dry_run,
        progress=lambda name, rows: typer.echo(f"  {name}: {rows} rows...", err=True)), settings))
    for name, rows in counts.items():
        typer.echo(f"{name}: {rows} rows {'due' if dry_run else 'purged'}")


@keys_app.command("rotate")
def keys_rotate():
    """Re-seal every report's identity under BEACON_SECRET_KEY and make its keyed hashes again,
    then every severity override's reason, opening each with that key or one in
    BEACON_SECRET_KEY_PREVIOUS. Then the previous keys can go (once the links signed with them
    have expired: 7 days)."""
    from services.intake.identity import IdentityVault
    from services.intake.key_rotation import RotationError, rotate

    settings = _settings()
    current, *previous = settings.secret_keys()
    resealed = ["identity", "override.reason"]

    async def go(db):
        # It opens and re-seals every identity: recorded, with whether it finished.
        try:
            done = await rotate(db, IdentityVault(current, previous),
                                progress=lambda what, n: typer.echo(f"  {n} {what}...", err=True))
        except RotationError:
            await _audit_cli(db, "key_rotation", "secret_key", resealed, outcome="failed")
            raise
        await _audit_cli(db, "key_rotation", "secret_key", resealed)
        return done

    try:
        reports, reasons = asyncio.run(_with_db(go, settings))
    except RotationError as exc:
        typer.echo(f"error: {exc}", err=True)
        raise typer.Exit(1) from None
    typer.echo(f"re-sealed {reports} reports and {reasons} override reasons under the current key")


if __name__ == "__main__":
    app()
