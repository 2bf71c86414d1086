"""`beacon db upgrade`: Alembic, configured in code (no alembic.ini to keep in step)."""

from dataclasses import dataclass
from functools import cache
from pathlib import Path

from alembic import command
from alembic.config import Config
from alembic.script import ScriptDirectory
from sqlalchemy import make_url

from services.common.db import create_private


def alembic_config(url: str) -> Config:
    cfg = Config()
    cfg.set_main_option("script_location", str(Path(__file__).parent / "migrations"))
    cfg.set_main_option("sqlalchemy.url", url.replace("%", "%%"))
    return cfg


def upgrade(url: str, revision: str = "head") -> None:
    if url.startswith("sqlite"):
        path = make_url(url).database
        if path and path != ":memory:":
            create_private(path)  # before Alembic's engine makes it world-readable
    command.upgrade(alembic_config(url), revision)


def revision(url: str, message: str) -> None:
    command.revision(alembic_config(url), message=message, autogenerate=True)


@dataclass(frozen=True)
class Revisions:
    heads: frozenset[str]  # where `beacon db upgrade` takes a database
    known: frozenset[str]  # every revision of this release, heads included


@cache
def revisions() -> Revisions:
    script = ScriptDirectory.from_config(alembic_config("sqlite://"))
    return Revisions(frozenset(script.get_heads()),
                     frozenset(r.revision for r in script.walk_revisions()))
