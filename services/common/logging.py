"""Structured JSON logs. Identity never reaches a log line: the redaction processor drops it."""

import logging
import re
import sys

import structlog

# Keys that may carry identity. Dropped wherever they appear, at any depth.
IDENTITY_KEYS = frozenset(
    {"name", "child_name", "children", "reporter", "phone", "reporter_phone", "narrative",
     "address", "note", "identity", "body", "text", "email"}
)


# A signed link's token lets whoever holds it act for an authority: never in a log line (an
# access log line names the path it was used on).
_LINK_TOKEN = re.compile(r"/a/[^/\s\"'?#]+")
# Nor a query string's values: a client may put its bearer token there (`?access_token=`),
# and no Beacon endpoint needs one for the log to make sense. The names stay.
_QUERY_VALUE = re.compile(r"([?&][^=\s&#\"'?]+)=[^&\s#\"']*")


def redact(_logger, _method, event: dict) -> dict:
    return {k: _scrub(v) for k, v in event.items() if k not in IDENTITY_KEYS}


def _scrub(value):
    if isinstance(value, str):
        if "/a/" in value:
            value = _LINK_TOKEN.sub("/a/[token]", value)
        return _QUERY_VALUE.sub(r"\1=[redacted]", value) if "?" in value else value
    if isinstance(value, dict):
        return {k: _scrub(v) for k, v in value.items() if k not in IDENTITY_KEYS}
    if isinstance(value, list | tuple):
        return [_scrub(v) for v in value]
    return value


def configure(level: str = "INFO", stream=None) -> None:
    """JSON lines on `stream`: stdout for a service, stderr for a command whose output is its answer."""
    stream = stream or sys.stdout
    processors = [
        structlog.contextvars.merge_contextvars,  # case_id bound per message
        structlog.processors.add_log_level,
        structlog.processors.TimeStamper(fmt="iso", utc=True),
        redact,
        structlog.processors.format_exc_info,
        structlog.processors.JSONRenderer(ensure_ascii=False),
    ]
    structlog.configure(
        processors=processors,
        wrapper_class=structlog.make_filtering_bound_logger(logging.getLevelName(level)),
        logger_factory=structlog.PrintLoggerFactory(stream),
        cache_logger_on_first_use=True,
    )
    # Libraries log through the standard library: render them as JSON too.
    handler = logging.StreamHandler(stream)
    handler.setFormatter(
        structlog.stdlib.ProcessorFormatter(
            processors=[
                structlog.stdlib.ProcessorFormatter.remove_processors_meta,
                redact,
                structlog.processors.JSONRenderer(ensure_ascii=False),
            ],
            foreign_pre_chain=[
                structlog.stdlib.add_log_level,
                structlog.stdlib.add_logger_name,
                structlog.processors.TimeStamper(fmt="iso", utc=True),
                structlog.processors.format_exc_info,
            ],
        )
    )
    handler.addFilter(Repeats())
    root = logging.getLogger()
    root.handlers[:] = [handler]
    root.setLevel(level)
    for noisy in ("aiokafka", "aiosqlite", "httpx", "httpcore"):
        logging.getLogger(noisy).setLevel(max(logging.WARNING, logging.getLevelName(level)))


class Repeats(logging.Filter):
    """One line per aiokafka message and REPEAT_S, with how many like it were held back. With
    the broker down, aiokafka wrote about 150 lines a second per process ("Unable connect to
    node..."), burying Beacon's own lines, the ones with a case id. Other loggers (Beacon's
    own, uvicorn's access log) are never held back."""

    REPEAT_S = 10.0
    LOGGERS = ("aiokafka",)

    def __init__(self):
        super().__init__()
        self._seen: dict[tuple[str, object], tuple[float | None, int]] = {}

    def filter(self, record: logging.LogRecord) -> bool:
        if not record.name.startswith(self.LOGGERS):
            return True
        key = (record.name, record.msg)  # the message's template: one per kind of failure
        last, held = self._seen.get(key, (None, 0))
        if last is not None and record.created - last < self.REPEAT_S:
            self._seen[key] = (last, held + 1)
            return False
        if len(self._seen) > 1000:  # templates are few; ids formatted into msg are not
            self._seen.clear()
        self._seen[key] = (record.created, 0)
        if held:
            record.msg = f"{record.msg} (and {held} more like it in the last {self.REPEAT_S:g} s)"
        return True


def get_logger(name: str):
    return structlog.get_logger(name)
