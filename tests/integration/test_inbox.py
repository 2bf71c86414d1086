"""tools/inbox.py as a real process and in-process: what the HTTP receiver and SMTP catcher keep."""

import importlib.util
import json
import os
import signal
import smtplib
import subprocess
import sys
from concurrent.futures import ThreadPoolExecutor
from email.message import EmailMessage
from pathlib import Path

import httpx

ROOT = Path(__file__).resolve().parents[2]
_spec = importlib.util.spec_from_file_location("beacon_inbox", ROOT / "tools" / "inbox.py")
inbox = importlib.util.module_from_spec(_spec)
_spec.loader.exec_module(inbox)


def test_http_receiver_records_each_request(tmp_path):
    with inbox.Inbox(tmp_path) as box:
        r = httpx.post(box.http_url + "/hooks/a?x=1", json={"case_id": "C-1", "n": 1},
                       headers={"Idempotency-Key": "k1"})
        assert r.status_code == 200 and r.json() == {"ok": True}
        assert httpx.put(box.http_url + "/p", content=b"plain words").status_code == 200
        assert httpx.get(box.http_url + "/g").status_code == 200
        rows = box.requests()
    assert [r["method"] for r in rows] == ["POST", "PUT", "GET"]
    first = rows[0]
    assert set(first) == {"received_at", "method", "path", "headers", "body"}
    assert first["path"] == "/hooks/a?x=1"
    assert first["body"] == {"case_id": "C-1", "n": 1}
    assert first["headers"]["Idempotency-Key"] == "k1"
    assert rows[1]["body"] == "plain words"


def test_concurrent_requests_give_whole_lines(tmp_path):
    with inbox.Inbox(tmp_path) as box, httpx.Client() as client:
        def post(i):
            return client.post(box.http_url, json={"i": i, "pad": "x" * 5000}).status_code
        with ThreadPoolExecutor(16) as pool:
            assert set(pool.map(post, range(200))) == {200}
        rows = box.requests()  # json.loads on every line: none interleaved
    assert sorted(r["body"]["i"] for r in rows) == list(range(200))


def test_smtp_catcher_writes_eml_files(tmp_path):
    with inbox.Inbox(tmp_path) as box:
        for i in range(3):
            msg = EmailMessage()
            msg["From"], msg["To"], msg["Subject"] = "a@x.test", "b@y.test", f"n{i}"
            msg.set_content("hello")
            with smtplib.SMTP("127.0.0.1", box.smtp_port) as smtp:
                smtp.send_message(msg)
        files = box.mails()
    assert len(files) == 3 and len({f.name for f in files}) == 3
    assert all(f.suffix == ".eml" for f in files)
    assert b"Subject: n0" in b"".join(f.read_bytes() for f in files)


def test_status_can_be_set_for_fault_tests(tmp_path):
    with inbox.Inbox(tmp_path) as box:
        box.http.status = 503
        r = httpx.post(box.http_url, json={})
        assert r.status_code == 503 and r.json() == {"ok": False}


def test_runs_as_a_script_and_stops_on_sigterm(tmp_path):
    http_port, smtp_port = inbox.free_port(), inbox.free_port()
    proc = subprocess.Popen(
        [sys.executable, str(ROOT / "tools" / "inbox.py"), "--dir", str(tmp_path / "box"),
         "--http-port", str(http_port), "--smtp-port", str(smtp_port)],
        stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
    )
    try:
        started = json.loads(proc.stdout.readline())
        assert started["event"] == "inbox.listening"
        assert started["http"] == f"http://127.0.0.1:{http_port}"
        assert started["smtp"] == f"127.0.0.1:{smtp_port}"
        assert httpx.post(started["http"] + "/x", json={"a": 1}).status_code == 200
        with smtplib.SMTP("127.0.0.1", smtp_port) as smtp:
            smtp.sendmail("a@x.test", ["b@y.test"], "Subject: s\r\n\r\nbody\r\n")
        proc.send_signal(signal.SIGTERM)
        assert proc.wait(10) == 0
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
    rows = [json.loads(x) for x in (tmp_path / "box" / "webhook.jsonl").read_text().splitlines()]
    assert rows[0]["body"] == {"a": 1}
    assert len(list((tmp_path / "box" / "mail").glob("*.eml"))) == 1


def test_sigint_also_stops_it(tmp_path):
    proc = subprocess.Popen(
        [sys.executable, str(ROOT / "tools" / "inbox.py"), "--dir", str(tmp_path),
         "--http-port", str(inbox.free_port()), "--smtp-port", str(inbox.free_port())],
        stdout=subprocess.PIPE, text=True,
    )
    try:
        proc.stdout.readline()
        os.kill(proc.pid, signal.SIGINT)
        assert proc.wait(10) == 0
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()


def test_stopped_receiver_drops_open_keep_alive_connections(tmp_path):
    import httpx
    import pytest

    from tools.inbox import start_http, stop_http

    server = start_http(tmp_path)
    with httpx.Client() as client:  # one pooled keep-alive connection
        assert client.post(server.url + "/hooks/x", json={}).status_code == 200
        stop_http(server)
        with pytest.raises(httpx.TransportError):
            client.post(server.url + "/hooks/x", json={})
