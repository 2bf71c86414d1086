"""`beacon rules`: validate a rule pack, and try one on a report (ARCHITECTURE.md, command line).

Validation problems go to stdout (they are the command's answer); `test` keeps stdout for the
decision JSON and writes problems to stderr.
"""

import json
from datetime import datetime
from pathlib import Path
from typing import Annotated

import typer
from pydantic import ValidationError

from schemas.reports import Report
from services.escalation.directory import build_directory
from services.escalation.engine import decide, facts_from_report
from services.escalation.rulepack import RulePackError, field_path, load_pack

app = typer.Typer(help="Rule packs: validate them, try them on a report.", no_args_is_help=True)


@app.command()
def validate(path: Annotated[str, typer.Argument(help="A YAML rule pack, or default / vn2020")]) -> None:
    """Check a rule pack; print each problem as `place: message`."""
    try:
        pack = load_pack(path)
    except RulePackError as exc:
        for place, message in exc.errors:
            typer.echo(f"{place}: {message}")
        typer.echo(f"{len(exc.errors)} problem(s) in {path}")
        raise typer.Exit(1) from None
    typer.echo(f"OK: {path} is a valid rule pack (version {pack.version})")


def _fail(message: str) -> None:
    typer.echo(message, err=True)
    raise typer.Exit(1)


def _read_report(path: Path) -> Report:
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
    except OSError as exc:
        _fail(f"{path}: cannot read: {exc.strerror or exc}")
    except json.JSONDecodeError as exc:
        _fail(f"{path}:{exc.lineno}: not valid JSON: {exc.msg}")
    try:
        return Report.model_validate(data)
    except ValidationError as exc:
        for err in exc.errors(include_url=False):
            typer.echo(f"{path}: {field_path(tuple(err['loc']))}: {err['msg']}", err=True)
        raise typer.Exit(1) from None


@app.command()
def test(
    pack_path: Annotated[str, typer.Argument(metavar="PATH|default", help="A rule pack or a shipped name")],
    report: Annotated[Path, typer.Option("--report", help="A report as JSON (DOMAIN.md section 6)")],
    at: Annotated[
        str | None, typer.Option("--at", help="Decision time, ISO-8601; default received_at")
    ] = None,
) -> None:
    """Decide on one report with a rule pack and print the decision as JSON."""
    try:
        pack = load_pack(pack_path)
    except RulePackError as exc:
        for place, message in exc.errors:
            typer.echo(f"{place}: {message}", err=True)
        raise typer.Exit(1) from None
    parsed = _read_report(report)
    when = parsed.received_at
    if at is not None:
        try:
            when = datetime.fromisoformat(at)
        except ValueError:
            _fail(f"--at: {at!r} is not an ISO-8601 date and time")
        if when.tzinfo is None:
            _fail(f"--at: {at!r} needs a time zone offset, e.g. +07:00")
    if parsed.category not in pack.category_codes:
        _fail(f"{report}: category: {parsed.category!r} is not in rule pack {pack.version}")
    if parsed.subcategory is not None and parsed.subcategory not in pack.subcategories(parsed.category):
        _fail(f"{report}: subcategory: {parsed.subcategory!r} is not a subcategory of {parsed.category}")
    unknown = sorted(set(parsed.indicators) - pack.indicator_codes)
    if unknown:
        _fail(f"{report}: indicators: unknown to rule pack {pack.version}: {', '.join(unknown)}")
    try:
        decision = decide(facts_from_report(parsed), pack, build_directory(pack), when)
    except KeyError as exc:  # a location the directory does not know
        _fail(f"{report}: location: {exc.args[0]}")
    typer.echo(json.dumps(decision.model_dump(mode="json"), ensure_ascii=False, indent=2))
