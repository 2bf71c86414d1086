"""The admin CLI's answers when --url does not lead to Beacon."""

import threading
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

import pytest
from typer.testing import CliRunner

from services.cli import app


class _Page(BaseHTTPRequestHandler):
    def do_GET(self):  # noqa: N802 (the standard library's name)
        body = b"<html><body>Welcome to nginx!</body></html>"
        self.send_response(200)
        self.send_header("Content-Type", "text/html; charset=utf-8")
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)

    def log_message(self, *args):
        pass


@pytest.fixture
def not_beacon():
    server = ThreadingHTTPServer(("127.0.0.1", 0), _Page)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    yield f"http://127.0.0.1:{server.server_address[1]}"
    server.shutdown()
    server.server_close()


def test_a_server_that_is_not_beacon_is_named_not_printed(not_beacon):
    """A wrong --url (a web server's welcome page) printed the page as the list of rule packs."""
    result = CliRunner().invoke(app, ["rules", "list", "--url", not_beacon, "--token", "t"])
    assert result.exit_code == 2
    assert "nginx" not in result.output
    assert "answered HTTP 200 (text/html) where the Beacon API answers JSON" in result.output
