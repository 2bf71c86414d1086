"""Local delivery receivers: an HTTP receiver (webhooks, SMS gateway) and an SMTP catcher.

    python tools/inbox.py --dir var/inbox --http-port 8025 --smtp-port 1025

HTTP: any GET/POST/PUT gets 200 {"ok": true}; each request is appended to <dir>/webhook.jsonl as
{"received_at", "method", "path", "headers", "body"}. SMTP: each message is written to
<dir>/mail/<unique>.eml. Runs until SIGINT/SIGTERM.

Tests import it: `Inbox(dir).start()` runs both on free loopback ports; `.stop()` ends them.
"""

import argparse
import json
import os
import signal
import socket
import sys
import threading
import time
import uuid
from datetime import UTC, datetime
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any, Self

from aiosmtpd.controller import Controller

MAX_BODY = 10 * 1024 * 1024


def _now() -> str:
    return datetime.now(UTC).isoformat()


def _log(event: str, **fields: Any) -> None:
    print(json.dumps({"event": event, "at": _now(), **fields}), flush=True)


def free_port(host: str = "127.0.0.1") -> int:
    with socket.socket() as s:
        s.bind((host, 0))
        return s.getsockname()[1]


# --- HTTP -------------------------------------------------------------------------------------


class _Handler(BaseHTTPRequestHandler):
    server: "InboxHTTPServer"
    protocol_version = "HTTP/1.1"  # keep-alive, as real receivers do
    disable_nagle_algorithm = True  # headers and body are two writes: no 40 ms delayed-ACK stall

    def _handle(self) -> None:
        length = int(self.headers.get("Content-Length") or 0)
        if length > MAX_BODY:
            self._answer(413, {"ok": False})
            return
        raw = self.rfile.read(length) if length else b""
        if self.server.raw_bodies is not None:
            self.server.raw_bodies.append(raw)
        try:
            body: Any = json.loads(raw) if raw else ""
        except ValueError:
            body = raw.decode("utf-8", errors="replace")
        self.server.record({
            "received_at": _now(),
            "method": self.command,
            "path": self.path,
            "headers": dict(self.headers.items()),
            "body": body,
        })
        status = self.server.status
        self._answer(status, {"ok": 200 <= status < 300})

    def _answer(self, status: int, payload: dict[str, Any]) -> None:
        data = json.dumps(payload).encode()
        self.send_response(status)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(data)))
        self.end_headers()
        self.wfile.write(data)

    do_GET = do_POST = do_PUT = _handle

    def log_message(self, format: str, *args: Any) -> None:  # quiet: the JSONL file is the log
        pass


def private_dirs(path: Path) -> Path:
    """`path` and its missing parents made owner-only (0700), as Beacon makes var/: the messages
    carry signed links that acknowledge a case. Run first, the inbox made var/ 0755."""
    for missing in [p for p in (*reversed(path.parents), path) if not p.exists()]:
        missing.mkdir(mode=0o700, exist_ok=True)
    return path


class InboxHTTPServer(ThreadingHTTPServer):
    daemon_threads = True
    request_queue_size = 128  # many deliveries in flight at once: the default 5 resets them

    def __init__(self, address: tuple[str, int], directory: Path):
        self.connections: set[socket.socket] = set()  # so that stop really drops keep-alives
        super().__init__(address, _Handler)
        private_dirs(directory)
        self.path = directory / "webhook.jsonl"
        self.status = 200  # tests may set another answer (e.g. 503) to exercise retries
        self.raw_bodies: list[bytes] | None = None  # tests set a list to keep exact bytes
        self._lock = threading.Lock()

    def get_request(self):
        conn, addr = super().get_request()
        self.connections.add(conn)
        return conn, addr

    def shutdown_request(self, request) -> None:
        self.connections.discard(request)
        super().shutdown_request(request)

    def record(self, row: dict[str, Any]) -> None:
        line = json.dumps(row, ensure_ascii=False) + "\n"
        with self._lock, open(self.path, "a", encoding="utf-8") as f:
            f.write(line)
            f.flush()

    @property
    def url(self) -> str:
        host, port = self.server_address[:2]
        return f"http://{host}:{port}"


def start_http(directory: str | Path, host: str = "127.0.0.1", port: int = 0) -> InboxHTTPServer:
    """Start the HTTP receiver in a background thread; port 0 picks a free one."""
    server = InboxHTTPServer((host, port), Path(directory))
    threading.Thread(
        target=server.serve_forever, kwargs={"poll_interval": 0.1}, name="inbox-http", daemon=True
    ).start()
    return server


def stop_http(server: InboxHTTPServer) -> None:
    """Down for real: no new connections, and open keep-alive connections are cut."""
    server.shutdown()
    server.server_close()
    for conn in list(server.connections):
        try:
            conn.shutdown(socket.SHUT_RDWR)
        except OSError:
            pass


# --- SMTP -------------------------------------------------------------------------------------


class MailDirHandler:
    """aiosmtpd handler: one .eml file per message."""

    def __init__(self, directory: str | Path):
        self.dir = private_dirs(Path(directory) / "mail")

    async def handle_DATA(self, server: Any, session: Any, envelope: Any) -> str:
        name = f"{time.time_ns()}-{uuid.uuid4().hex[:8]}.eml"
        tmp = self.dir / (name + ".tmp")
        data = envelope.original_content or envelope.content
        tmp.write_bytes(data if isinstance(data, bytes) else data.encode())
        os.replace(tmp, self.dir / name)  # readers never see a half-written file
        return "250 Message accepted for delivery"


def start_smtp(
    directory: str | Path, host: str = "127.0.0.1", port: int = 0, handler: Any = None
) -> Controller:
    """Start the SMTP catcher in its own thread; port 0 picks a free one."""
    controller = Controller(
        handler or MailDirHandler(directory), hostname=host, port=port or free_port(host)
    )
    controller.start()
    return controller


def stop_smtp(controller: Controller) -> None:
    controller.stop()


class Inbox:
    """Both receivers together, for tests: `with Inbox(tmp_path) as inbox: inbox.http_url`."""

    def __init__(self, directory: str | Path, host: str = "127.0.0.1", http_port: int = 0,
                 smtp_port: int = 0):
        self.dir = Path(directory)
        self.host, self._http_port, self._smtp_port = host, http_port, smtp_port
        self.http: InboxHTTPServer | None = None
        self.smtp: Controller | None = None

    def start(self) -> "Inbox":
        self.http = start_http(self.dir, self.host, self._http_port)
        self.smtp = start_smtp(self.dir, self.host, self._smtp_port)
        return self

    def stop(self) -> None:
        if self.http is not None:
            stop_http(self.http)
            self.http = None
        if self.smtp is not None:
            stop_smtp(self.smtp)
            self.smtp = None

    @property
    def http_url(self) -> str:
        assert self.http is not None
        return self.http.url

    @property
    def smtp_port(self) -> int:
        assert self.smtp is not None
        return self.smtp.port

    def requests(self) -> list[dict[str, Any]]:
        path = self.dir / "webhook.jsonl"
        if not path.exists():
            return []
        return [json.loads(line) for line in path.read_text(encoding="utf-8").splitlines() if line]

    def mails(self) -> list[Path]:
        return sorted((self.dir / "mail").glob("*.eml"))

    def __enter__(self) -> Self:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--dir", default="var/inbox")
    parser.add_argument("--host", default="127.0.0.1")
    parser.add_argument("--http-port", type=int, default=8025)
    parser.add_argument("--smtp-port", type=int, default=1025)
    args = parser.parse_args(argv)

    stop = threading.Event()
    for sig in (signal.SIGINT, signal.SIGTERM):
        signal.signal(sig, lambda *_: stop.set())
    try:
        inbox = Inbox(args.dir, args.host, args.http_port, args.smtp_port).start()
    except OSError as exc:
        _log("inbox.failed", error=type(exc).__name__, detail=str(exc))
        return 1
    _log("inbox.listening", dir=str(inbox.dir), http=inbox.http_url,
         smtp=f"{args.host}:{inbox.smtp_port}", webhook_log=str(inbox.dir / "webhook.jsonl"),
         mail_dir=str(inbox.dir / "mail"))
    try:
        while not stop.wait(0.5):
            pass
    finally:
        inbox.stop()
        _log("inbox.stopped")
    return 0


if __name__ == "__main__":
    sys.exit(main())
