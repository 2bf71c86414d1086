"""A limit on the size of a request's head (request line and headers).

httptools, uvicorn's fast parser, has none, and uvicorn cannot set one: a client sending a
100 MB header held the event loop for half a minute (the parser joins the pieces as they
come), and with it every consumer, timer and delivery of a process that runs them. Bodies
have their own limit (app.BodyLimit).
"""

from uvicorn.protocols.http.httptools_impl import STATUS_LINE, HttpToolsProtocol

MAX_HEAD_BYTES = 64 * 1024  # browsers and proxies send a few KB; nginx refuses beyond 32 KB


class BoundedHttpToolsProtocol(HttpToolsProtocol):
    """uvicorn's httptools protocol, answering 431 and closing once a request's head passes
    MAX_HEAD_BYTES. Bytes are counted as they arrive, before the parser sees them."""

    def __init__(self, *args, **kwargs):
        super().__init__(*args, **kwargs)
        self._in_head, self._head_bytes, self._refused = True, 0, False

    def on_message_begin(self) -> None:
        super().on_message_begin()
        self._in_head, self._head_bytes = True, 0

    def on_headers_complete(self) -> None:
        self._in_head = False
        super().on_headers_complete()

    def data_received(self, data: bytes) -> None:
        if self._refused:
            return  # closing: what still arrives is dropped, not parsed
        if self._in_head:
            self._head_bytes += len(data)
            if self._head_bytes > MAX_HEAD_BYTES:
                self._refuse()
                return
        super().data_received(data)

    def _refuse(self) -> None:
        msg = b"request line and headers over %d bytes" % MAX_HEAD_BYTES
        self.transport.write(b"".join([
            STATUS_LINE[431], b"content-type: text/plain; charset=utf-8\r\n",
            b"content-length: %d\r\n" % len(msg), b"connection: close\r\n\r\n", msg]))
        self.transport.close()
        self._refused = True
