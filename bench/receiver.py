"""The loopback webhook receiver for the notifier benchmark.

It keeps tools/inbox.py's record (one JSON line per request in webhook.jsonl, with its arrival
time, its headers and its body) but is served by uvicorn (httptools, uvloop) instead of the
standard library's threaded server. tools/inbox.py takes about 150 requests/s here (raw httpx
into it: 146/s), which would cap Beacon and the baseline alike; this one is not the limit below a
few thousand a second, so the figures are the sender's.

    python -m bench.receiver --dir DIR --http-port P
"""

import argparse
import json
from datetime import UTC, datetime
from pathlib import Path

import uvicorn

OK = [(b"content-type", b"application/json")]


def receiver(path: Path):
    out = open(path, "a", buffering=1)  # noqa: SIM115 (open for the process; line-buffered: read as it grows)

    async def app(scope, receive, send):
        if scope["type"] != "http":
            return
        body, more = b"", True
        while more:
            message = await receive()
            body += message.get("body", b"")
            more = message.get("more_body", False)
        try:
            parsed = json.loads(body) if body else ""
        except ValueError:
            parsed = body.decode("utf-8", errors="replace")
        out.write(json.dumps({
            "received_at": datetime.now(UTC).isoformat(),
            "method": scope["method"],
            "path": scope["path"],
            "headers": {k.decode("latin-1"): v.decode("latin-1") for k, v in scope["headers"]},
            "body": parsed,
        }, ensure_ascii=False) + "\n")
        await send({"type": "http.response.start", "status": 200, "headers": OK})
        await send({"type": "http.response.body", "body": b'{"ok": true}'})

    return app


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--dir", required=True, type=Path)
    parser.add_argument("--host", default="127.0.0.1")
    parser.add_argument("--http-port", required=True, type=int)
    args = parser.parse_args()
    args.dir.mkdir(parents=True, exist_ok=True)
    uvicorn.run(receiver(args.dir / "webhook.jsonl"), host=args.host, port=args.http_port,
                lifespan="off", access_log=False, log_level="warning", backlog=1024)


if __name__ == "__main__":
    main()
