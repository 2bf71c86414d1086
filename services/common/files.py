"""Owner-only directories and files for what Beacon keeps on disk: var/ in development (the
secret key, the webhook secret, development tokens, the SQLite database). Each is made with its
mode from the start: a file written and then chmod-ed can be read by another account between
the two."""

import contextlib
import os
import stat
import tempfile
from pathlib import Path

import structlog

log = structlog.get_logger("beacon")


def private_dir(path: Path) -> Path:
    """`path`, made 0700 if it is missing (and its missing parents, with the usual mode). An
    existing directory keeps its mode: warn_wide_dir says at start if it is wider."""
    os.makedirs(path, mode=0o700, exist_ok=True)
    return path


def write_private(path: Path, text: str, *, replace: bool = False) -> bool:
    """Write `text` to `path` as an owner-only (0600) file, whole: a 0600 temporary file beside
    it is written, then put in its place. An existing file is replaced when `replace`, and is
    otherwise kept (False): two processes making the same secret at once then both use the
    first one's, never half of it."""
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.")  # 0600, O_EXCL
    try:
        with os.fdopen(fd, "w") as f:
            f.write(text)
        if replace:
            os.replace(tmp, path)
        else:
            os.link(tmp, path)  # refuses an existing path, as O_EXCL would
        return True
    except FileExistsError:
        return False
    finally:
        with contextlib.suppress(FileNotFoundError):
            os.unlink(tmp)


def warn_wide_dir(path: Path) -> str | None:
    """Say at start when `path` (var/) lets other accounts in: made before Beacon made it 0700,
    or widened since. Returns its mode then. It is not changed: a server the tools run as
    another account (PostgreSQL, as root) may need its way in, and a chmod would cut it off.
    Passage alone for the group (x without r or w) is not reported: it lists nothing, and
    tools/postgres.sh gives it to the postgres account when run as root."""
    try:
        mode = stat.S_IMODE(os.stat(path).st_mode)
    except FileNotFoundError:
        return None
    if not mode & 0o067:
        return None
    log.warning("var_dir_not_private", path=str(path), mode=f"{mode:04o}",
                why="other accounts can reach what it holds (development secrets and tokens, "
                    "the database, the broker's data) wherever a file's own mode lets them: "
                    "chmod 700 it (docs/operations.md, Data protection at start)")
    return f"{mode:04o}"
