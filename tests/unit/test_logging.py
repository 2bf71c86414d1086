"""Log lines as production writes them (services.common.logging.configure): JSON, with identity
and signed-link tokens taken out wherever they appear."""

import io
import json
import logging

import structlog

from services.common.logging import Repeats, configure

TOKEN = "C-1M8NGKYRFMXWVAP3B.view.tpnuqq.spCtMmrs--mFTBgPO_-iOQ"


def _lines(write) -> list[dict]:
    stream = io.StringIO()
    configure("INFO", stream=stream)
    try:
        write()
    finally:
        configure("INFO")
    return [json.loads(line) for line in stream.getvalue().splitlines()]


def test_a_link_token_is_in_no_log_line():
    def write():
        # uvicorn's access log line, and our own line naming a path.
        logging.getLogger("uvicorn.access").info('%s - "%s %s HTTP/%s" %d', "127.0.0.1:1",
                                                 "POST", f"/a/{TOKEN}", "1.1", 202)
        structlog.get_logger("beacon").error("unhandled", path=f"/a/{TOKEN}?x=1",
                                             urls=[f"http://h/a/{TOKEN}"])
    lines = _lines(write)
    assert len(lines) == 2
    text = json.dumps(lines)
    assert "spCtMmrs" not in text and "tpnuqq" not in text
    assert lines[0]["event"] == '127.0.0.1:1 - "POST /a/[token] HTTP/1.1" 202'
    assert lines[1]["path"] == "/a/[token]?x=[redacted]"
    assert lines[1]["urls"] == ["http://h/a/[token]"]


def test_a_token_in_a_query_string_is_in_no_log_line():
    def write():
        logging.getLogger("uvicorn.access").info(
            '%s - "%s %s HTTP/%s" %d', "127.0.0.1:1", "GET",
            "/api/v1/cases?access_token=bk_Secret123&status=open", "1.1", 401)
    [line] = _lines(write)
    assert line["event"] == ('127.0.0.1:1 - "GET /api/v1/cases?access_token=[redacted]'
                             '&status=[redacted] HTTP/1.1" 401')


def test_a_flood_of_broker_errors_is_one_line_per_ten_seconds():
    def write():
        conn = logging.getLogger("aiokafka.conn")
        for _ in range(150):  # about a second of a broker outage, per process
            conn.error("Unable connect to node with id %s: %s", 1, "Connect call failed")
        for _ in range(3):  # the access log is never held back
            logging.getLogger("uvicorn.access").info('%s - "%s %s HTTP/%s" %d', "127.0.0.1:1",
                                                     "GET", "/healthz", "1.1", 200)
    lines = _lines(write)
    assert [line["logger"] for line in lines] == ["aiokafka.conn"] + ["uvicorn.access"] * 3


def test_the_next_line_says_how_many_were_held_back():
    repeats = Repeats()

    def record(at: float) -> logging.LogRecord:
        r = logging.LogRecord("aiokafka.conn", logging.ERROR, "", 0, "Unable connect to %s",
                              ("node 1",), None)
        r.created = at
        return r

    passed = [r for r in (record(t / 10) for t in range(0, 250, 5)) if repeats.filter(r)]
    assert [r.created for r in passed] == [0.0, 10.0, 20.0]
    assert passed[1].getMessage() == ("Unable connect to node 1 (and 19 more like it in the "
                                      "last 10 s)")


def test_identity_keys_are_dropped_at_any_depth():
    def write():
        structlog.get_logger("beacon").info("received", case_id="C-1", report={
            "children": [{"name": "Canary Child"}], "reporter": {"phone": "0911000111"},
            "category": "NEGLECT"}, search={"reporter_phone": "0911000222"})
    [line] = _lines(write)
    assert line["case_id"] == "C-1" and line["report"] == {"category": "NEGLECT"}
    assert "Canary" not in json.dumps(line) and "0911000111" not in json.dumps(line)
    assert "0911000222" not in json.dumps(line)  # a subject's search (docs/privacy.md)


def test_a_loop_failing_on_an_absent_database_logs_one_short_line():
    # During a PostgreSQL restart each loop failed four times a second with a full traceback:
    # megabytes a minute. The database away is said in one line; anything else keeps its trace.
    from services.common.db import log_failure

    log = structlog.get_logger("test")
    with structlog.testing.capture_logs() as logs:
        log_failure(log, "delivery_claim_failed", ConnectionRefusedError(111, "refused"))
        log_failure(log, "delivery_claim_failed", KeyError("bug"))
    away, bug = logs
    assert away["log_level"] == "warning" and away["database"] == "unavailable"
    assert "exc_info" not in away
    assert bug["log_level"] == "error" and isinstance(bug["exc_info"], KeyError)
